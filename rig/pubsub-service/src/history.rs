//! The observation history: what the service did, per project, for a black-box checker.
//!
//! Recording is off until a project asks for it (`start`), so ordinary use pays one boolean
//! test per event and no memory. Each project's records carry their own gapless sequence
//! (1, 2, 3, ... from the first `start`), so a reader that pages with `after` knows it missed
//! nothing; when a project holds more than [`MAX_RECORDS`] the oldest go and `dropped` says
//! how many.
//!
//! Transport-free like the broker: the broker pushes events with the `now` it was given; the
//! wall-clock time of a record is that `now` mapped through the anchor taken when the history
//! was made, so virtual time in tests gives deterministic timestamps.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Most records one project keeps; older ones are dropped (and counted).
pub const MAX_RECORDS: usize = 500_000;
/// Most records one page returns.
pub const MAX_PAGE: usize = 10_000;
/// Records per page when the reader does not say.
pub const DEFAULT_PAGE: usize = 1_000;

/// The path a request came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// On a StreamingPull stream.
    GrpcStream,
    /// A unary gRPC call.
    GrpcUnary,
    /// HTTP/JSON.
    Rest,
}

/// Who received a delivery: one StreamingPull stream, or one unary Pull request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consumer {
    Stream(u64),
    Pull(u64),
}

/// A fault the service injected (see `faults.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// An ack was accepted but the message will be delivered again.
    Duplicate,
    /// A stream was ended with UNAVAILABLE.
    StreamReset,
    /// A published message was made deliverable later.
    Delay,
    /// An ack was dropped: the message comes back when its lease ends.
    LostAck,
}

/// One thing the service did. Serialized flat, with `event` naming the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "event",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    /// A message was accepted on a topic.
    Publish {
        topic: String,
        message_id: String,
        ordering_key: String,
        attributes: BTreeMap<String, String>,
        data_bytes: usize,
        /// RFC 3339, as the message carries it.
        publish_time: String,
    },
    /// A message was leased to a consumer.
    Deliver {
        subscription: String,
        message_id: String,
        ordering_key: String,
        ack_id: String,
        /// 0 without a dead-letter policy, as the subscriber sees it.
        delivery_attempt: i32,
        consumer: Consumer,
    },
    /// An acknowledgement took effect.
    Ack {
        subscription: String,
        message_id: String,
        ordering_key: String,
        ack_id: String,
    },
    /// A ModifyAckDeadline of 0: the delivery failed and counts as an attempt.
    Nack {
        subscription: String,
        message_id: String,
        ordering_key: String,
        ack_id: String,
    },
    /// A ModifyAckDeadline above 0: the lease now ends `seconds` from the request.
    Extend {
        subscription: String,
        message_id: String,
        ack_id: String,
        seconds: i32,
    },
    /// An ack or deadline change named an ack id that no longer leases anything (expired,
    /// revoked, already acked) or never did; it changed nothing.
    Stale {
        subscription: String,
        ack_id: String,
    },
    /// A batch leased to a stream could not be sent (the stream was already gone): its
    /// messages went back at once, the attempt not counted.
    Undelivered {
        subscription: String,
        message_id: String,
        ack_id: String,
    },
    /// A lease ran out before an ack: a failed delivery.
    LeaseExpired {
        subscription: String,
        message_id: String,
        ordering_key: String,
        ack_id: String,
        delivery_attempt: i32,
    },
    /// A leased (or acknowledged) later message of an ordering key went back to be delivered
    /// again, because an earlier message of its key failed (`because` is that message).
    Revoked {
        subscription: String,
        message_id: String,
        ordering_key: String,
        /// Empty when the message had been acknowledged.
        ack_id: String,
        because: String,
    },
    /// A message used its last delivery attempt and was published to the dead-letter topic.
    DeadLetter {
        subscription: String,
        message_id: String,
        ordering_key: String,
        attempts: i32,
        dead_letter_topic: String,
    },
    StreamOpened {
        subscription: String,
        stream: u64,
    },
    StreamClosed {
        subscription: String,
        stream: u64,
        reason: String,
    },
    /// A unary Pull request arrived (before any message is chosen for it).
    PullRequest {
        subscription: String,
        pull: u64,
        max_messages: i32,
    },
    /// A Seek changed which messages are acknowledged.
    Seek {
        subscription: String,
        /// RFC 3339 time, or the snapshot's name.
        target: String,
        /// Messages unacknowledged after the seek.
        backlog: usize,
    },
    /// An injected fault.
    Fault {
        subscription: String,
        fault: FaultKind,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message_id: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        ack_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
    },
}

/// One record of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// 1, 2, 3, ... per project, without gaps.
    pub seq: u64,
    /// Wall clock, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub transport: Transport,
    #[serde(flatten)]
    pub event: Event,
}

/// A page of records after a cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub records: Vec<Record>,
    /// Pass as `after` to read on: the last record's `seq` (or `after` when none).
    pub next: u64,
    /// Whether more records follow `next` already.
    pub more: bool,
    pub recording: bool,
    /// Records dropped so far because the project held more than [`MAX_RECORDS`].
    pub dropped: u64,
}

#[derive(Default)]
struct ProjectHistory {
    recording: bool,
    next_seq: u64,
    records: VecDeque<Record>,
    dropped: u64,
}

/// Maps the broker's clock to wall-clock time: `at` and `wall` name the same moment, and a
/// later `now` is `wall + (now - at)`. Virtual time in tests thus gives deterministic
/// wall-clock times (publish times, record stamps).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    at: Instant,
    wall: SystemTime,
}

impl WallClock {
    pub fn new(at: Instant, wall: SystemTime) -> Self {
        Self { at, wall }
    }

    pub fn now() -> Self {
        Self::new(Instant::now(), SystemTime::now())
    }

    pub fn wall(&self, now: Instant) -> SystemTime {
        self.wall + now.saturating_duration_since(self.at)
    }
}

/// Every project's history.
pub struct History {
    clock: WallClock,
    projects: HashMap<String, ProjectHistory>,
}

impl Default for History {
    fn default() -> Self {
        Self::new(Instant::now(), SystemTime::now())
    }
}

impl History {
    /// Records are stamped on the wall clock `WallClock::new(at, wall)` maps to.
    pub fn new(at: Instant, wall: SystemTime) -> Self {
        Self::with_clock(WallClock::new(at, wall))
    }

    pub fn with_clock(clock: WallClock) -> Self {
        Self {
            clock,
            projects: HashMap::new(),
        }
    }

    pub fn is_recording(&self, project: &str) -> bool {
        self.projects.get(project).is_some_and(|p| p.recording)
    }

    /// Starts (or keeps) recording `project`; returns the last sequence number used so far,
    /// so that a reader starting now reads `after` it.
    pub fn start(&mut self, project: &str) -> u64 {
        let p = self.projects.entry(project.to_string()).or_default();
        p.recording = true;
        p.next_seq
    }

    /// Stops recording; what was recorded stays readable.
    pub fn stop(&mut self, project: &str) {
        if let Some(p) = self.projects.get_mut(project) {
            p.recording = false;
        }
    }

    /// Forgets the project's records (and stops recording); sequence numbers start over.
    pub fn clear(&mut self, project: &str) {
        self.projects.remove(project);
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        self.clock
            .wall(now)
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64
    }

    /// Appends one event to `project`'s history, if it is recording.
    pub fn push(&mut self, project: &str, now: Instant, transport: Transport, event: Event) {
        let time_ms = self.wall_ms(now);
        let Some(p) = self.projects.get_mut(project).filter(|p| p.recording) else {
            return;
        };
        p.next_seq += 1;
        p.records.push_back(Record {
            seq: p.next_seq,
            time_ms,
            transport,
            event,
        });
        if p.records.len() > MAX_RECORDS {
            p.records.pop_front();
            p.dropped += 1;
        }
    }

    /// Up to `limit` records of `project` with `seq > after`, oldest first.
    pub fn page(&self, project: &str, after: u64, limit: usize) -> Page {
        let limit = limit.clamp(1, MAX_PAGE);
        let Some(p) = self.projects.get(project) else {
            return Page {
                records: Vec::new(),
                next: after,
                more: false,
                recording: false,
                dropped: 0,
            };
        };
        // Sequence numbers are gapless, so the first wanted record's index is arithmetic.
        let first_seq = p.records.front().map_or(p.next_seq + 1, |r| r.seq);
        let start = after.saturating_add(1).saturating_sub(first_seq) as usize;
        let records: Vec<Record> = p.records.iter().skip(start).take(limit).cloned().collect();
        let next = records.last().map_or(after.max(first_seq - 1), |r| r.seq);
        Page {
            more: next < p.next_seq,
            next,
            records,
            recording: p.recording,
            dropped: p.dropped,
        }
    }
}

/// The project of `projects/{project}/...`.
pub fn project_of(name: &str) -> &str {
    name.strip_prefix("projects/")
        .and_then(|r| r.split('/').next())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_opened(n: u64) -> Event {
        Event::StreamOpened {
            subscription: "projects/p/subscriptions/s".into(),
            stream: n,
        }
    }

    #[test]
    fn nothing_is_kept_for_a_project_that_is_not_recording() {
        let now = Instant::now();
        let mut h = History::new(now, UNIX_EPOCH);
        h.push("p", now, Transport::GrpcStream, stream_opened(1));
        assert!(h.page("p", 0, 10).records.is_empty());
        assert!(
            h.projects.is_empty(),
            "no memory for a project never started"
        );
    }

    #[test]
    fn records_are_numbered_per_project_and_stamped_from_the_anchor() {
        let now = Instant::now();
        let mut h = History::new(now, UNIX_EPOCH + Duration::from_secs(1000));
        assert_eq!(h.start("p"), 0);
        h.start("q");
        h.push("p", now, Transport::GrpcStream, stream_opened(1));
        h.push("q", now, Transport::Rest, stream_opened(2));
        h.push(
            "p",
            now + Duration::from_millis(250),
            Transport::GrpcUnary,
            stream_opened(3),
        );
        let page = h.page("p", 0, 10);
        let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(page.records[0].time_ms, 1_000_000);
        assert_eq!(page.records[1].time_ms, 1_000_250);
        assert_eq!(page.records[1].transport, Transport::GrpcUnary);
        assert_eq!(h.page("q", 0, 10).records.len(), 1);
        assert_eq!(
            h.start("p"),
            2,
            "a second start reports where the history stands"
        );
    }

    #[test]
    fn pages_follow_the_cursor_without_gaps() {
        let now = Instant::now();
        let mut h = History::new(now, UNIX_EPOCH);
        h.start("p");
        for i in 0..25 {
            h.push("p", now, Transport::GrpcStream, stream_opened(i));
        }
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = h.page("p", after, 10);
            seen.extend(page.records.iter().map(|r| r.seq));
            after = page.next;
            if !page.more {
                break;
            }
        }
        assert_eq!(seen, (1..=25).collect::<Vec<_>>());
        let empty = h.page("p", 25, 10);
        assert!(empty.records.is_empty());
        assert_eq!(empty.next, 25);
    }

    #[test]
    fn stopping_keeps_what_was_recorded_and_clearing_forgets_it() {
        let now = Instant::now();
        let mut h = History::new(now, UNIX_EPOCH);
        h.start("p");
        h.push("p", now, Transport::GrpcStream, stream_opened(1));
        h.stop("p");
        h.push("p", now, Transport::GrpcStream, stream_opened(2));
        let page = h.page("p", 0, 10);
        assert_eq!(page.records.len(), 1);
        assert!(!page.recording);
        h.clear("p");
        assert!(h.page("p", 0, 10).records.is_empty());
    }

    #[test]
    fn records_serialize_flat_with_the_event_kind() {
        let r = Record {
            seq: 7,
            time_ms: 42,
            transport: Transport::GrpcStream,
            event: Event::Deliver {
                subscription: "projects/p/subscriptions/s".into(),
                message_id: "3".into(),
                ordering_key: "k".into(),
                ack_id: "1-9".into(),
                delivery_attempt: 2,
                consumer: Consumer::Stream(4),
            },
        };
        let v = serde_json::to_value(&r).expect("serializes");
        assert_eq!(v["event"], "deliver");
        assert_eq!(v["transport"], "grpc-stream");
        assert_eq!(v["messageId"], "3");
        assert_eq!(v["deliveryAttempt"], 2);
        assert_eq!(v["consumer"], serde_json::json!({"stream": 4}));
        let back: Record = serde_json::from_value(v).expect("deserializes");
        assert_eq!(back, r);
    }

    #[test]
    fn the_oldest_records_go_past_the_cap() {
        let now = Instant::now();
        let mut h = History::new(now, UNIX_EPOCH);
        h.start("p");
        for i in 0..(MAX_RECORDS as u64 + 3) {
            h.push("p", now, Transport::GrpcStream, stream_opened(i));
        }
        let page = h.page("p", 0, 2);
        assert_eq!(page.dropped, 3);
        assert_eq!(page.records[0].seq, 4);
        assert!(page.more);
    }
}
