//! Pages our Pub/Sub service's observation API (`/_rig/v1/projects/P/history`, see
//! `rig/pubsub-service/src/observe.rs`) into rig-verify's history, as the run goes: raw
//! publishes annotated with their plan item (`rig_item`), deliveries with their attempt,
//! acks, nacks, lease extensions, expiries, revocations, dead-letter forwards, streams, pulls
//! and the faults the service injected. What the runner needs while the run goes — is the
//! worker ready, has an item been delivered, how many raw messages are settled — is kept
//! beside the records.
//!
//! Over HTTP, so the same code reads the service in process (local target) and in its
//! container.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use pubsub_service::history::{self as service, Consumer};
use rig_verify::history::{
    self as h, DeadLetterForward, Delivery, Event, Extend, Pull, ReadyVia, ServiceFault,
    ServiceFaultKind, Settle, StreamClose, StreamOpen,
};

use super::names::Names;
use super::task::Task;

/// Records per page asked for (the service's most).
const PAGE: usize = pubsub_service::history::MAX_PAGE;
/// How often an empty history is asked again.
const POLL: Duration = Duration::from_millis(40);
/// How long the service may fail to answer before the run stops: its history would have a
/// hole.
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(30);

/// What the runner follows of the run while it goes.
#[derive(Debug, Default)]
pub struct Observed {
    /// The mapped records, with the service's wall-clock time.
    pub records: Vec<(u64, Event)>,
    /// The raw messages the producer published, by message id: their item.
    pub item_of: HashMap<String, u64>,
    /// Whether each raw message is settled (acked for good or dead-lettered).
    settled: HashMap<String, bool>,
    pub unsettled: u64,
    pub raw_published: u64,
    /// Raw messages that became settled at least once (the producer's flow control).
    pub settled_once: u64,
    /// Highest delivery attempt seen per item and per ordering key.
    pub item_attempt: HashMap<u64, u32>,
    pub key_attempt: HashMap<String, u32>,
    pub last_delivery_ms: u64,
    /// The last ack or dead-letter forward of a raw message.
    pub last_settle_ms: u64,
    /// Streams opened and pulls made on the raw subscription: (time, how).
    pub pulls: Vec<(u64, ReadyVia)>,
    /// Records the service dropped (its history holds at most 500,000 per project).
    pub dropped: u64,
    /// Why the service could not be read, when it could not.
    pub failure: Option<String>,
    /// The last service record read.
    cursor: u64,
}

impl Observed {
    /// Whether the worker opened a stream on or pulled the raw subscription at or after `since_ms`.
    pub fn pulled_since(&self, since_ms: u64) -> Option<ReadyVia> {
        self.pulls
            .iter()
            .rev()
            .take_while(|(at, _)| *at >= since_ms)
            .last()
            .map(|(_, via)| *via)
    }

    fn settle(&mut self, message_id: &str, at_ms: u64) {
        if let Some(done) = self.settled.get_mut(message_id)
            && !*done
        {
            *done = true;
            self.unsettled -= 1;
            self.settled_once += 1;
            self.last_settle_ms = at_ms;
        }
    }

    fn unsettle(&mut self, message_id: &str) {
        if let Some(done) = self.settled.get_mut(message_id)
            && *done
        {
            *done = false;
            self.unsettled += 1;
        }
    }
}

/// The annotations of the plan's raw publishes (`Plan::annotate`, with the payload digests):
/// what the recorder adds to the service's publish record of each item.
pub type Annotations = Vec<h::Publish>;

pub struct Recorder {
    pub observed: Arc<Mutex<Observed>>,
    http: reqwest::Client,
    url: String,
    _task: Task,
}

impl Recorder {
    /// Switches recording on for `names.project` and follows it from the first record on.
    pub async fn start(
        endpoint: &str,
        names: Names,
        annotations: Arc<Annotations>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the observation API's HTTP client")?;
        let base = format!("{endpoint}/_rig/v1/projects/{}/history", names.project);
        let started: serde_json::Value = http
            .post(format!("{base}:start"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| {
                format!("switching on the Pub/Sub service's history at {base}:start (rig verify needs our own Pub/Sub service)")
            })?
            .json()
            .await
            .context("reading the answer to history:start")?;
        let after = started["last"].as_u64().unwrap_or(0);
        let observed = Arc::new(Mutex::new(Observed::default()));
        let task = Task::spawn(follow(
            http.clone(),
            base.clone(),
            after,
            names,
            annotations,
            observed.clone(),
        ));
        Ok(Self {
            observed,
            http,
            url: base,
            _task: task,
        })
    }

    /// Runs `f` on what has been observed so far.
    pub fn with<T>(&self, f: impl FnOnce(&Observed) -> T) -> T {
        match self.observed.lock() {
            Ok(o) => f(&o),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Waits until everything the service recorded up to now has been read, then stops
    /// recording and hands back the records.
    pub async fn finish(self) -> anyhow::Result<Observed> {
        let last: serde_json::Value = self
            .http
            .post(format!("{}:start", self.url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .context("asking the Pub/Sub service where its history stands")?
            .json()
            .await
            .context("reading the answer to history:start")?;
        let last = last["last"].as_u64().unwrap_or(0);
        let started = std::time::Instant::now();
        loop {
            if let Some(failure) = self.with(|o| o.failure.clone()) {
                anyhow::bail!("{failure}");
            }
            if self.cursor() >= last {
                break;
            }
            if started.elapsed() > UNREACHABLE_LIMIT {
                anyhow::bail!(
                    "the Pub/Sub service's history was not read up to record {last} within {UNREACHABLE_LIMIT:?}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
        let _ = self.http.post(format!("{}:stop", self.url)).send().await;
        drop(self._task);
        // The follower is aborted; what it read is taken out from under the lock.
        let observed = match self.observed.lock() {
            Ok(mut o) => std::mem::take(&mut *o),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        if observed.dropped > 0 {
            anyhow::bail!(
                "the Pub/Sub service dropped {} history records (it keeps at most {}): use a smaller plan (--events)",
                observed.dropped,
                pubsub_service::history::MAX_RECORDS
            );
        }
        Ok(observed)
    }

    fn cursor(&self) -> u64 {
        self.with(|o| o.cursor)
    }
}

async fn follow(
    http: reqwest::Client,
    base: String,
    mut after: u64,
    names: Names,
    annotations: Arc<Annotations>,
    observed: Arc<Mutex<Observed>>,
) {
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let page = http
            .get(&base)
            .query(&[("after", after.to_string()), ("limit", PAGE.to_string())])
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        let page: Result<service::Page, String> = match page {
            Ok(response) => response.json().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match page {
            Ok(page) => {
                failing_since = None;
                let more = page.more;
                after = page.next;
                if let Ok(mut o) = observed.lock() {
                    o.dropped = page.dropped;
                    for record in page.records {
                        map(&names, &annotations, record, &mut o);
                    }
                    o.cursor = after;
                }
                if !more {
                    tokio::time::sleep(POLL).await;
                }
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > UNREACHABLE_LIMIT {
                    if let Ok(mut o) = observed.lock() {
                        o.failure = Some(format!(
                            "the Pub/Sub service's history could not be read for {UNREACHABLE_LIMIT:?} at {base}: {e}"
                        ));
                    }
                    return;
                }
                tokio::time::sleep(POLL * 5).await;
            }
        }
    }
}

fn transport(t: service::Transport) -> h::Transport {
    match t {
        service::Transport::GrpcStream => h::Transport::GrpcStream,
        service::Transport::GrpcUnary => h::Transport::GrpcUnary,
        service::Transport::Rest => h::Transport::Rest,
    }
}

fn consumer_id(c: Consumer) -> u64 {
    match c {
        Consumer::Stream(n) | Consumer::Pull(n) => n,
    }
}

fn some(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// One service record as the history's events (none for what the checker does not read:
/// other subscriptions, stale acks, seeks; two for an injected lost ack or duplicate: the ack
/// the worker sent, then the fault that undid it).
fn map(names: &Names, annotations: &Annotations, record: service::Record, o: &mut Observed) {
    let at = record.time_ms;
    let via = transport(record.transport);
    let settle = |subscription: &str, ack_id: String, message_id: String| Settle {
        subscription: names.short(subscription).to_string(),
        ack_id,
        message_id: some(message_id),
        consumer: None,
        transport: Some(via),
    };
    let raw = |subscription: &str| subscription == names.raw_subscription_path;
    let event = match record.event {
        service::Event::Publish {
            topic,
            message_id,
            ordering_key,
            attributes,
            data_bytes,
            ..
        } => {
            if topic == names.raw_topic_path {
                let item = attributes
                    .get(rig_verify::ITEM_ATTRIBUTE)
                    .and_then(|n| n.parse::<u64>().ok());
                let mut publish = item
                    .and_then(|n| annotations.get(n as usize))
                    .cloned()
                    .unwrap_or_default();
                publish.topic = names.raw_topic.clone();
                publish.message_id = message_id.clone();
                publish.ordering_key = ordering_key;
                publish.transport = Some(via);
                if let Some(n) = item {
                    o.item_of.insert(message_id.clone(), n);
                }
                o.settled.insert(message_id, false);
                o.unsettled += 1;
                o.raw_published += 1;
                Event::Publish(Box::new(publish))
            } else if topic == names.merged_topic_path || topic == names.dead_letter_topic_path {
                Event::Publish(Box::new(h::Publish {
                    topic: names.short(&topic).to_string(),
                    message_id,
                    ordering_key,
                    transport: Some(via),
                    payload_bytes: Some(data_bytes as u64),
                    attributes,
                    ..Default::default()
                }))
            } else {
                return;
            }
        }
        service::Event::Deliver {
            subscription,
            message_id,
            ordering_key,
            ack_id,
            delivery_attempt,
            consumer,
        } if raw(&subscription) => {
            let attempt = u32::try_from(delivery_attempt).unwrap_or(0).max(1);
            o.last_delivery_ms = at;
            o.unsettle(&message_id);
            if let Some(&item) = o.item_of.get(&message_id) {
                let best = o.item_attempt.entry(item).or_default();
                *best = (*best).max(attempt);
            }
            let best = o.key_attempt.entry(ordering_key.clone()).or_default();
            *best = (*best).max(attempt);
            Event::Delivery(Delivery {
                subscription: names.raw_subscription.clone(),
                message_id,
                ordering_key,
                ack_id,
                attempt,
                consumer: consumer_id(consumer),
                transport: Some(via),
            })
        }
        service::Event::Ack {
            subscription,
            message_id,
            ack_id,
            ..
        } if raw(&subscription) => {
            o.settle(&message_id, at);
            Event::Ack(settle(&subscription, ack_id, message_id))
        }
        service::Event::Nack {
            subscription,
            message_id,
            ack_id,
            ..
        } if raw(&subscription) => Event::Nack(settle(&subscription, ack_id, message_id)),
        service::Event::Extend {
            subscription,
            message_id,
            ack_id,
            seconds,
        } if raw(&subscription) => Event::Extend(Extend {
            settle: settle(&subscription, ack_id, message_id),
            seconds: u32::try_from(seconds).unwrap_or(0),
        }),
        service::Event::LeaseExpired {
            subscription,
            message_id,
            ack_id,
            ..
        } if raw(&subscription) => Event::Expiry(settle(&subscription, ack_id, message_id)),
        service::Event::Revoked {
            subscription,
            message_id,
            ack_id,
            ..
        } if raw(&subscription) => {
            o.unsettle(&message_id);
            Event::Revoked(settle(&subscription, ack_id, message_id))
        }
        service::Event::DeadLetter {
            subscription,
            message_id,
            attempts,
            dead_letter_topic,
            ..
        } if raw(&subscription) => {
            o.settle(&message_id, at);
            Event::DeadLetterForward(DeadLetterForward {
                subscription: names.raw_subscription.clone(),
                message_id,
                attempts: u32::try_from(attempts).unwrap_or(0),
                dead_letter_topic: names.short(&dead_letter_topic).to_string(),
            })
        }
        service::Event::StreamOpened {
            subscription,
            stream,
        } if raw(&subscription) => {
            o.pulls.push((at, ReadyVia::StreamOpen));
            Event::StreamOpen(StreamOpen {
                subscription: names.raw_subscription.clone(),
                consumer: stream,
            })
        }
        service::Event::StreamClosed {
            subscription,
            stream,
            reason,
        } if raw(&subscription) => Event::StreamClose(StreamClose {
            subscription: names.raw_subscription.clone(),
            consumer: stream,
            status: some(reason),
        }),
        service::Event::PullRequest {
            subscription,
            pull,
            max_messages,
        } if raw(&subscription) => {
            o.pulls.push((at, ReadyVia::Pull));
            Event::Pull(Pull {
                subscription: names.raw_subscription.clone(),
                consumer: Some(pull),
                messages: u32::try_from(max_messages).unwrap_or(0),
                transport: Some(via),
            })
        }
        service::Event::Fault {
            subscription,
            fault,
            message_id,
            ack_id,
            ..
        } if raw(&subscription) => {
            let kind = match fault {
                service::FaultKind::Duplicate => ServiceFaultKind::Duplicate,
                service::FaultKind::StreamReset => ServiceFaultKind::StreamReset,
                service::FaultKind::Delay => ServiceFaultKind::Delay,
                service::FaultKind::LostAck => ServiceFaultKind::LostAck,
            };
            if matches!(
                kind,
                ServiceFaultKind::Duplicate | ServiceFaultKind::LostAck
            ) {
                // The worker's ack reached the service, which then undid it: the history
                // has the ack, then the fault (the checker reads them in that order).
                o.records.push((
                    at,
                    Event::Ack(settle(&subscription, ack_id, message_id.clone())),
                ));
            }
            Event::ServiceFault(ServiceFault {
                subscription: names.raw_subscription.clone(),
                fault: kind,
                message_id: some(message_id),
            })
        }
        _ => return,
    };
    o.records.push((at, event));
}
