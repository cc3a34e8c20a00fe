//! A run as data: the [`History`] of everything the backbone saw, in the order it saw it, and
//! the [`Snapshot`] of what the stores hold at the end.
//!
//! On disk a history is JSON lines: the [`Header`] on the first line, then one [`Record`] per
//! line, `{"seq":…,"at_ms":…,"kind":"delivery",…}`. The Pub/Sub service's own records
//! (publish, delivery, ack, nack, extend, expiry, dead-letter forward, streams, pulls, its
//! injected faults) map one to one onto [`Event`]; the runner adds the producer's annotations
//! to the raw publishes (which plan item, poison or not, claim-checked, a retry), the fault
//! windows it opened and closed, the worker's lifecycle and ledger progress samples. The
//! snapshot is one JSON document.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::FileError;
use crate::terms::{Aggregate, FaultKind};

/// The history and snapshot format this build reads and writes.
pub const VERSION: u32 = 1;

/// What the checker needs to know about the run besides its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    pub raw_topic: String,
    /// The worker's (ordered, dead-lettering) subscription on the raw topic.
    pub raw_subscription: String,
    pub merged_topic: String,
    pub dead_letter_topic: String,
    /// The raw subscription's dead-letter policy.
    pub max_delivery_attempts: u32,
    /// How long after the last fault healed the backlog must have drained.
    pub drain_bound_ms: u64,
    /// The worker command line, as run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The command that replays this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
}

/// One recorded occurrence. `seq` orders the records (the Pub/Sub service's sequence numbers,
/// with the runner's own records merged in); `at_ms` is wall-clock milliseconds since the
/// Unix epoch, for explanations and the picture only: the checker never orders by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A message accepted on a topic: the producer's on the raw topic (annotated by the
    /// runner), the worker's on the merged and dead-letter topics.
    Publish(Box<Publish>),
    /// A message handed to a subscriber.
    Delivery(Delivery),
    Ack(Settle),
    /// ModifyAckDeadline with 0 seconds.
    Nack(Settle),
    /// ModifyAckDeadline with more than 0 seconds.
    Extend(Extend),
    /// A lease ran out before its ack.
    Expiry(Settle),
    /// A later message of an ordering key went back to be delivered again (its lease, or its
    /// acknowledgement, taken back) because an earlier message of its key failed: it is
    /// unsettled until redelivered and acked.
    Revoked(Settle),
    /// The subscription's dead-letter policy forwarded a message.
    DeadLetterForward(DeadLetterForward),
    StreamOpen(StreamOpen),
    StreamClose(StreamClose),
    /// A unary (gRPC or REST) pull.
    Pull(Pull),
    /// A fault the Pub/Sub service injected (set by the subscription's `rig-fault-*` labels).
    /// The service records a lost ack after the ack it dropped, and a duplicate before the
    /// delivery it causes.
    ServiceFault(ServiceFault),
    /// A planned fault began (the runner's record).
    FaultStart(FaultEdge),
    /// A planned fault healed.
    FaultEnd(FaultEdge),
    WorkerStart(WorkerStart),
    WorkerReady(WorkerReady),
    WorkerExit(WorkerExit),
    /// A sample of how far the run has got (the ledger's row count), for the picture and for
    /// progress-triggered faults.
    Progress(Progress),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    GrpcStream,
    GrpcUnary,
    Rest,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    pub topic: String,
    pub message_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ordering_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// The plan's item this message carries (the producer's publishes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u64>,
    /// The event's id as the plan made it (a canonical UUID), also when a poison case spells
    /// it otherwise on the wire or leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Aggregate>,
    /// Set when the message is bad input on purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poison: Option<Poison>,
    /// The payload went through the bucket; the message carries a reference.
    #[serde(default, skip_serializing_if = "is_false")]
    pub claim_checked: bool,
    /// A producer retry: the same event as this earlier item, published again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<u64>,
    /// SHA-256 of the event's payload in [`crate::plan::canonical_json`] form (the fetched payload
    /// for a claim-checked one): what its ledger row must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<u64>,
    /// The message's attributes where they matter (the worker's dead letters: the reason).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poison {
    /// The corpus case (`fixtures/bad/<case>.json`).
    pub case: String,
    pub why: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub subscription: String,
    pub message_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ordering_key: String,
    pub ack_id: String,
    /// The delivery attempt as the service counts it (1 for the first).
    pub attempt: u32,
    /// The stream (or unary pull caller) the message went to.
    pub consumer: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

/// An ack, a nack or a lease expiry of one delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settle {
    pub subscription: String,
    pub ack_id: String,
    /// The service resolves the ack id when it can; the checker falls back to the delivery
    /// that handed out `ack_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extend {
    #[serde(flatten)]
    pub settle: Settle,
    pub seconds: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterForward {
    /// The source subscription.
    pub subscription: String,
    pub message_id: String,
    /// Delivery attempts as the service counted them (its
    /// `CloudPubSubDeadLetterSourceDeliveryCount`).
    pub attempts: u32,
    pub dead_letter_topic: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOpen {
    pub subscription: String,
    pub consumer: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamClose {
    pub subscription: String,
    pub consumer: u64,
    /// The gRPC status it ended with, if not OK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    pub subscription: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<u64>,
    /// How many messages the request asked for at most (what it got are its deliveries).
    pub messages: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceFaultKind {
    Duplicate,
    StreamReset,
    Delay,
    LostAck,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFault {
    pub subscription: String,
    pub fault: ServiceFaultKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// One edge of a planned fault's window; `fault` is the plan's fault id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEdge {
    pub fault: u32,
    pub fault_kind: FaultKind,
    pub target: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStart {
    pub replica: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyVia {
    /// Our Pub/Sub service saw it open a streaming pull on the raw subscription.
    StreamOpen,
    /// ... or pull it.
    Pull,
    /// It printed the ready line on stdout.
    ReadyLine,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReady {
    pub replica: u32,
    pub via: ReadyVia,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerExit {
    pub replica: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The runner stopped it (a planned fault or the end of the run).
    #[serde(default, skip_serializing_if = "is_false")]
    pub expected: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Rows in the ledger.
    pub stored: u64,
}

/// The recorded run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub header: Header,
    pub records: Vec<Record>,
}

impl History {
    pub fn new(header: Header) -> Self {
        Self {
            header,
            records: Vec::new(),
        }
    }

    /// Appends `event` with the next sequence number.
    pub fn push(&mut self, at_ms: u64, event: Event) {
        let seq = self.records.last().map_or(1, |r| r.seq + 1);
        self.records.push(Record { seq, at_ms, event });
    }

    pub fn write_jsonl(&self, out: &mut impl Write) -> Result<(), serde_json::Error> {
        serde_json::to_writer(&mut *out, &self.header)?;
        out.write_all(b"\n").map_err(serde_json::Error::io)?;
        for record in &self.records {
            serde_json::to_writer(&mut *out, record)?;
            out.write_all(b"\n").map_err(serde_json::Error::io)?;
        }
        Ok(())
    }

    /// Reads JSON lines; `path` names the source in errors. Blank lines are skipped.
    pub fn read_jsonl(input: impl BufRead, path: &Path) -> Result<History, FileError> {
        let mut header: Option<Header> = None;
        let mut records = Vec::new();
        for (index, line) in input.lines().enumerate() {
            let line = line.map_err(|e| FileError::io(path, "reading", e))?;
            if line.trim().is_empty() {
                continue;
            }
            match &header {
                None => {
                    let h: Header = serde_json::from_str(&line)
                        .map_err(|e| FileError::parse(path, index, e))?;
                    if h.version != VERSION {
                        return Err(FileError::invalid(
                            path,
                            format!("line {}", index + 1),
                            format!(
                                "history version {} (this build reads version {VERSION})",
                                h.version
                            ),
                        ));
                    }
                    header = Some(h);
                }
                Some(_) => records.push(
                    serde_json::from_str::<Record>(&line)
                        .map_err(|e| FileError::parse(path, index, e))?,
                ),
            }
        }
        let header = header.ok_or_else(|| {
            FileError::invalid(
                path,
                "line 1",
                "empty: a history starts with its header line".into(),
            )
        })?;
        Ok(History { header, records })
    }

    pub fn load(path: &Path) -> Result<History, FileError> {
        let file = std::fs::File::open(path).map_err(|e| FileError::io(path, "opening", e))?;
        Self::read_jsonl(BufReader::new(file), path)
    }

    pub fn save(&self, path: &Path) -> Result<(), FileError> {
        let file = std::fs::File::create(path).map_err(|e| FileError::io(path, "creating", e))?;
        let mut out = BufWriter::new(file);
        self.write_jsonl(&mut out)
            .map_err(|e| FileError::io(path, "writing", e.into()))?;
        out.flush().map_err(|e| FileError::io(path, "writing", e))
    }
}

/// What the stores hold once the run has settled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u32,
    /// Every row of `event_store`.
    pub ledger: Vec<LedgerRow>,
    /// Every message that reached `events.merged`, in arrival order.
    pub merged: Vec<TopicMessage>,
    /// Every message that reached `events.dlq`, in arrival order.
    pub dead_letters: Vec<TopicMessage>,
    pub primary: Primary,
    pub timings: Timings,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerRow {
    pub id: u64,
    pub event_id: String,
    pub account_id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// SHA-256 of the stored payload in [`crate::plan::canonical_json`] form.
    pub payload_sha256: String,
    pub payload_bytes: u64,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicMessage {
    pub message_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ordering_key: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sha256: Option<String>,
    #[serde(default)]
    pub data_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at_ms: Option<u64>,
}

/// The primary (SuiteX) database, which the worker must never touch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Primary {
    pub before: DatabaseState,
    pub after: DatabaseState,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseState {
    /// `CHECKSUM TABLE` over every table, combined.
    pub checksum: String,
    /// Rows per table.
    pub rows: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    /// When the runner healed the last fault (the history's last `fault_end` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults_healed_at_ms: Option<u64>,
    /// When the runner saw the raw subscription's backlog empty (informational: the checker
    /// derives the drain from the records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_drained_at_ms: Option<u64>,
    /// Unacknowledged messages on the raw subscription at the end, as the service counts
    /// them: more than 0 means the backlog never drained, whatever the records say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_backlog_at_end: Option<u64>,
}

impl Snapshot {
    pub fn load(path: &Path) -> Result<Snapshot, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError::io(path, "reading", e))?;
        let snapshot: Snapshot =
            serde_json::from_str(&text).map_err(|e| FileError::parse(path, 0, e))?;
        if snapshot.version != VERSION {
            return Err(FileError::invalid(
                path,
                "version",
                format!(
                    "snapshot version {} (this build reads version {VERSION})",
                    snapshot.version
                ),
            ));
        }
        Ok(snapshot)
    }

    pub fn save(&self, path: &Path) -> Result<(), FileError> {
        let file = std::fs::File::create(path).map_err(|e| FileError::io(path, "creating", e))?;
        let mut out = BufWriter::new(file);
        serde_json::to_writer(&mut out, self)
            .map_err(|e| FileError::io(path, "writing", e.into()))?;
        out.flush().map_err(|e| FileError::io(path, "writing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            version: VERSION,
            seed: Some(7),
            raw_topic: "events.raw".into(),
            raw_subscription: "events.raw.worker".into(),
            merged_topic: "events.merged".into(),
            dead_letter_topic: "events.dlq".into(),
            max_delivery_attempts: 5,
            drain_bound_ms: 30_000,
            worker: Some("python3 worker.py".into()),
            replay: None,
        }
    }

    #[test]
    fn a_history_round_trips_through_json_lines() {
        let mut history = History::new(header());
        history.push(
            10,
            Event::Publish(Box::new(Publish {
                topic: "events.raw".into(),
                message_id: "1".into(),
                ordering_key: "A:salesorder:1".into(),
                item: Some(0),
                event_id: Some("0b5c1b4e-8a8e-4a4e-9f0e-1a2b3c4d5e6f".into()),
                claim_checked: true,
                ..Default::default()
            })),
        );
        history.push(
            11,
            Event::Delivery(Delivery {
                subscription: "events.raw.worker".into(),
                message_id: "1".into(),
                ack_id: "a1".into(),
                attempt: 1,
                consumer: 3,
                transport: Some(Transport::GrpcStream),
                ..Default::default()
            }),
        );
        history.push(
            12,
            Event::Extend(Extend {
                settle: Settle {
                    subscription: "events.raw.worker".into(),
                    ack_id: "a1".into(),
                    ..Default::default()
                },
                seconds: 60,
            }),
        );
        history.push(
            13,
            Event::FaultStart(FaultEdge {
                fault: 1,
                fault_kind: FaultKind::EventStoreFreeze,
                target: "event_store".into(),
            }),
        );
        let mut bytes = Vec::new();
        history.write_jsonl(&mut bytes).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.contains(r#""kind":"delivery""#), "{text}");
        assert!(text.contains(r#""transport":"grpc-stream""#), "{text}");
        let back = History::read_jsonl(&bytes[..], Path::new("h.jsonl")).unwrap();
        assert_eq!(back, history);
    }

    #[test]
    fn a_bad_line_is_named_with_its_line_and_column() {
        let text = format!(
            "{}\n{}\n{}\n",
            serde_json::to_string(&header()).unwrap(),
            r#"{"seq":1,"at_ms":5,"kind":"ack","subscription":"s","ack_id":"a"}"#,
            r#"{"seq":2,"at_ms":6,"kind":"acknowledge","subscription":"s"}"#,
        );
        let err = History::read_jsonl(text.as_bytes(), Path::new("run/history.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("run/history.jsonl:3:"), "{err}");
        assert!(err.contains("unknown variant `acknowledge`"), "{err}");
        assert!(err.contains("expected one of"), "{err}");
    }

    #[test]
    fn another_version_is_refused() {
        let mut h = header();
        h.version = 2;
        let text = serde_json::to_string(&h).unwrap();
        let err = History::read_jsonl(text.as_bytes(), Path::new("h"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("history version 2"), "{err}");
        let empty = History::read_jsonl(&b""[..], Path::new("h"))
            .unwrap_err()
            .to_string();
        assert!(empty.contains("header line"), "{empty}");
    }

    #[test]
    fn a_snapshot_round_trips_and_names_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        let snapshot = Snapshot {
            version: VERSION,
            ledger: vec![LedgerRow {
                id: 1,
                event_id: "e".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        snapshot.save(&path).unwrap();
        assert_eq!(Snapshot::load(&path).unwrap(), snapshot);
        std::fs::write(&path, "{\"version\":1,\n\"ledgr\":[]}").unwrap();
        let err = Snapshot::load(&path).unwrap_err().to_string();
        assert!(err.contains("snapshot.json:2:"), "{err}");
        assert!(err.contains("unknown field `ledgr`"), "{err}");
    }
}
