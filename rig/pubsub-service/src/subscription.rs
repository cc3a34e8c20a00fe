//! One subscription's delivery state: its backlog of unacknowledged messages, their leases,
//! ordering keys, retries and dead-lettering, and the acknowledged messages it retains for
//! seeking. Transport-free and driven by the `now` its callers pass (see `broker.rs`).
//!
//! Sources:
//! - leases, deadlines, ModifyAckDeadline: <https://cloud.google.com/pubsub/docs/lease-management>;
//! - ordering keys: <https://cloud.google.com/pubsub/docs/ordering> — a key's messages are
//!   delivered in publish order; "redelivery of a message triggers redelivery of all
//!   subsequent messages for that key, even acknowledged ones"; while a key has messages
//!   outstanding to a streaming-pull subscriber, its further messages go to that subscriber
//!   (the affinity the ordered-delivery launch article states:
//!   <https://medium.com/google-cloud/google-cloud-pub-sub-ordered-delivery-1e4181f60bc8>).
//!   A unary Pull has no subscriber identity to be affine to, so a key with messages
//!   outstanding to a Pull is held until they are acknowledged, nacked or expired;
//! - retry policy: <https://cloud.google.com/pubsub/docs/handling-failures#retry_policy>;
//! - dead-letter policy: <https://cloud.google.com/pubsub/docs/handling-failures#dead_letter_topic>,
//!   attributes from <https://cloud.google.com/pubsub/docs/dead-letter-topics#track-delivery-attempts>;
//! - filters: <https://cloud.google.com/pubsub/docs/subscription-message-filter>;
//! - retained acknowledged messages: `retain_acked_messages` and `message_retention_duration`
//!   in <https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions>.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The per-message maps, hashed with foldhash: several lookups per delivery and per
/// acknowledgement, where SipHash's resistance to chosen keys buys nothing in a local
/// stand-in (`cargo bench --bench pubsub`).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::faults::{Fault, FaultPlan};
use crate::filter::Filter;
use crate::history::{Consumer, Event, FaultKind, Transport};
use crate::limits;
use crate::proto::{PubsubMessage, ReceivedMessage, Subscription};

/// Attributes the dead-letter forwarding adds.
pub const DEAD_LETTER_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";
pub const DEAD_LETTER_SUBSCRIPTION: &str = "CloudPubSubDeadLetterSourceSubscription";
pub const DEAD_LETTER_SUBSCRIPTION_PROJECT: &str = "CloudPubSubDeadLetterSourceSubscriptionProject";
pub const DEAD_LETTER_PUBLISH_TIME: &str = "CloudPubSubDeadLetterSourceTopicPublishTime";

pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The delay before redelivery number `failures` (1 = the first redelivery): `minimum`
/// doubled per earlier failure, capped at `maximum`.
pub fn backoff(minimum: Duration, maximum: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    minimum
        .checked_mul(1u32 << doublings)
        .unwrap_or(maximum)
        .min(maximum)
}

pub fn duration_of(d: &prost_types::Duration) -> Duration {
    if d.seconds < 0 || d.nanos < 0 {
        return Duration::ZERO;
    }
    Duration::new(d.seconds as u64, d.nanos as u32)
}

/// A stream or a unary Pull request; both draw from one counter, so ids never collide.
pub type ConsumerId = u64;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outstanding {
    pub messages: u64,
    pub bytes: u64,
}

/// A message as retained: for seeking, snapshots and topic retention.
#[derive(Debug, Clone)]
pub struct Retained {
    pub message: Arc<PubsubMessage>,
    /// When it was published, on the broker's clock.
    pub published: Instant,
}

#[derive(Debug)]
struct Lease {
    ack_id: u64,
    deadline: Instant,
    consumer: ConsumerId,
    transport: Transport,
}

#[derive(Debug)]
struct Pending {
    message: Arc<PubsubMessage>,
    /// `limits::message_bytes` of the message, for flow control: taken once, not per lease.
    bytes: u64,
    published: Instant,
    attempts: i32,
    available_at: Instant,
    lease: Option<Lease>,
    /// In `schedule` at `available_at`.
    scheduled: bool,
    /// Acknowledged while an earlier message of its ordering key is still outstanding: it
    /// stays, to be delivered again if that earlier one fails.
    acked: bool,
}

/// One ordering key's unsettled messages, in publish order. `seqs[..delivered]` have been
/// delivered (each leased, or acknowledged behind an outstanding earlier one) and the first
/// of them is always leased; `seqs[delivered]` is the key's next candidate.
///
/// While any of its messages is leased, a key belongs to that one consumer.
#[derive(Debug, Default)]
struct KeyQueue {
    seqs: VecDeque<u64>,
    delivered: usize,
    consumer: Option<ConsumerId>,
    /// The key's message in `schedule`, if any (its first undelivered one).
    scheduled: Option<u64>,
}

/// A message to publish to a dead-letter topic.
#[derive(Debug)]
pub struct DeadLetter {
    pub topic: String,
    pub message: PubsubMessage,
}

/// What a failed delivery turned into.
enum Failure {
    Redeliver,
    DeadLetter(DeadLetter),
}

/// How an acknowledgement or deadline change of one (well-formed, own) ack id went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Done,
    /// The ack id leases nothing: expired, revoked, already acknowledged.
    Stale,
}

pub struct SubscriptionState {
    pub config: Subscription,
    /// Unique for the life of the service; ack ids carry it.
    pub uid: u64,
    /// The topic's uid (0 once the topic is deleted): a topic re-created under the same name
    /// is another topic.
    pub topic_uid: u64,
    pub project: String,
    filter: Option<Filter>,
    faults: Option<FaultPlan>,
    pub notify: Arc<Notify>,
    messages: HashMap<u64, Pending>,
    /// Deliverable candidates by (time, publish sequence): every undelivered message on an
    /// unordered subscription; each key's first undelivered message on an ordered one.
    schedule: BTreeSet<(Instant, u64)>,
    leases: HashMap<u64, u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    keys: HashMap<String, KeyQueue>,
    consumers: HashMap<ConsumerId, Outstanding>,
    /// Acknowledged messages kept for Seek (with `retain_acked_messages`), by sequence.
    retained: BTreeMap<u64, Retained>,
    /// Reused by every acknowledgement for the messages it settles: no allocation per ack.
    settling: Vec<u64>,
    /// Whether the project's history is recording; `events` is filled only then.
    pub recording: bool,
    pub events: Vec<(Transport, Event)>,
}

impl SubscriptionState {
    pub fn new(
        config: Subscription,
        uid: u64,
        topic_uid: u64,
        filter: Option<Filter>,
        faults: Option<FaultPlan>,
    ) -> Self {
        let project = crate::history::project_of(&config.name).to_string();
        Self {
            config,
            uid,
            topic_uid,
            project,
            filter,
            faults,
            notify: Arc::new(Notify::new()),
            messages: HashMap::default(),
            schedule: BTreeSet::new(),
            leases: HashMap::default(),
            deadlines: BTreeSet::new(),
            keys: HashMap::default(),
            consumers: HashMap::default(),
            retained: BTreeMap::new(),
            settling: Vec::new(),
            recording: false,
            events: Vec::new(),
        }
    }

    fn ordered(&self) -> bool {
        self.config.enable_message_ordering
    }

    pub fn exactly_once(&self) -> bool {
        self.config.enable_exactly_once_delivery
    }

    pub fn set_faults(&mut self, faults: Option<FaultPlan>) {
        self.faults = faults;
    }

    pub fn outstanding(&self, consumer: ConsumerId) -> Outstanding {
        self.consumers.get(&consumer).copied().unwrap_or_default()
    }

    /// Unacknowledged messages (leased or not), oldest first.
    pub fn backlog_len(&self) -> usize {
        self.messages.values().filter(|p| !p.acked).count()
    }

    fn emit(&mut self, transport: Transport, event: impl FnOnce(&Self) -> Event) {
        if self.recording {
            let e = event(self);
            self.events.push((transport, e));
        }
    }

    /// Whether a message could be delivered now (flow control aside).
    pub fn has_deliverable(&self, now: Instant) -> bool {
        self.schedule.first().is_some_and(|(t, _)| *t <= now)
    }

    /// The stream-reset fault: decided once per batch a stream is about to receive.
    pub fn roll_stream_reset(&mut self, stream: ConsumerId) -> bool {
        let reset = self.roll(Fault::StreamReset);
        if reset {
            self.emit(Transport::GrpcStream, |s| Event::Fault {
                subscription: s.config.name.clone(),
                fault: FaultKind::StreamReset,
                message_id: String::new(),
                ack_id: String::new(),
                stream: Some(stream),
                delay_ms: None,
            });
        }
        reset
    }

    fn roll(&mut self, fault: Fault) -> bool {
        self.faults.as_mut().is_some_and(|f| f.roll(fault))
    }

    fn ack_id(&self, n: u64) -> String {
        format!("{}-{n}", self.uid)
    }

    /// A newly published message; `transport` is the publish request's.
    pub fn enqueue(
        &mut self,
        seq: u64,
        message: Arc<PubsubMessage>,
        published: Instant,
        now: Instant,
        transport: Transport,
    ) {
        if !self.matches(&message) {
            // Acknowledged by the service at once: never delivered, never an attempt.
            return;
        }
        let mut available_at = now;
        if self.roll(Fault::Delay) {
            let delay = self.faults.as_ref().map_or(Duration::ZERO, |f| f.delay);
            available_at += delay;
            self.emit(transport, |s| Event::Fault {
                subscription: s.config.name.clone(),
                fault: FaultKind::Delay,
                message_id: message.message_id.clone(),
                ack_id: String::new(),
                stream: None,
                delay_ms: Some(delay.as_millis() as u64),
            });
        }
        self.insert(seq, message, published, available_at);
    }

    pub fn matches(&self, message: &PubsubMessage) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| f.matches(&message.attributes))
    }

    fn insert(&mut self, seq: u64, message: Arc<PubsubMessage>, published: Instant, at: Instant) {
        let key = message.ordering_key.clone();
        self.messages.insert(
            seq,
            Pending {
                bytes: limits::message_bytes(&message) as u64,
                message,
                published,
                attempts: 0,
                available_at: at,
                lease: None,
                scheduled: false,
                acked: false,
            },
        );
        if self.ordered() && !key.is_empty() {
            let queue = self.keys.entry(key.clone()).or_default();
            // Publish order is sequence order; a seek restores older messages in order too.
            if queue.seqs.back().is_none_or(|last| *last < seq) {
                queue.seqs.push_back(seq);
            } else {
                let at = queue.seqs.partition_point(|s| *s < seq);
                queue.seqs.insert(at, seq);
            }
            self.schedule_key(&key);
        } else {
            self.schedule_message(seq);
        }
        self.notify.notify_waiters();
    }

    fn schedule_message(&mut self, seq: u64) {
        if let Some(p) = self.messages.get_mut(&seq)
            && !p.scheduled
            && p.lease.is_none()
            && !p.acked
        {
            p.scheduled = true;
            self.schedule.insert((p.available_at, seq));
        }
    }

    fn unschedule_message(&mut self, seq: u64) {
        if let Some(p) = self.messages.get_mut(&seq)
            && p.scheduled
        {
            p.scheduled = false;
            self.schedule.remove(&(p.available_at, seq));
        }
    }

    /// Makes the key's first undelivered message (and only it) a candidate.
    fn schedule_key(&mut self, key: &str) {
        let Some(queue) = self.keys.get(key) else {
            return;
        };
        let candidate = queue.seqs.get(queue.delivered).copied();
        if let Some(previous) = queue.scheduled
            && Some(previous) != candidate
        {
            self.unschedule_message(previous);
        }
        if let Some(seq) = candidate {
            self.schedule_message(seq);
        }
        if let Some(queue) = self.keys.get_mut(key) {
            queue.scheduled = candidate;
        }
    }

    /// The message `seq`, when it is ordered by a key: its Arc lends the key (a refcount,
    /// not a copy of the key, on every delivery and acknowledgement).
    fn keyed_message(&self, seq: u64) -> Option<Arc<PubsubMessage>> {
        let p = self.messages.get(&seq)?;
        (self.ordered() && !p.message.ordering_key.is_empty()).then(|| Arc::clone(&p.message))
    }

    /// Leases up to `max_messages` deliverable messages (and about `max_bytes`) to
    /// `consumer` for `lease` each.
    #[allow(clippy::too_many_arguments)]
    pub fn take(
        &mut self,
        now: Instant,
        consumer: Consumer,
        transport: Transport,
        max_messages: usize,
        max_bytes: u64,
        lease: Duration,
        next_ack_id: &mut u64,
    ) -> Vec<ReceivedMessage> {
        let consumer_id = match consumer {
            Consumer::Stream(id) | Consumer::Pull(id) => id,
        };
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let with_attempts = self.config.dead_letter_policy.is_some();
        let mut cursor: Option<(Instant, u64)> = None;
        while out.len() < max_messages && bytes < max_bytes {
            let next = match cursor {
                None => self.schedule.first().copied(),
                Some(c) => self
                    .schedule
                    .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                    .next()
                    .copied(),
            };
            let Some((at, seq)) = next else {
                break;
            };
            if at > now {
                break;
            }
            let keyed = self.keyed_message(seq);
            if let Some(m) = &keyed
                && self
                    .keys
                    .get(&m.ordering_key)
                    .and_then(|q| q.consumer)
                    .is_some_and(|c| c != consumer_id)
            {
                // Another consumer holds this key; leave it for that one.
                cursor = Some((at, seq));
                continue;
            }
            self.schedule.remove(&(at, seq));
            *next_ack_id += 1;
            let n = *next_ack_id;
            let ack_id = self.ack_id(n);
            let Some(p) = self.messages.get_mut(&seq) else {
                continue;
            };
            p.scheduled = false;
            p.attempts += 1;
            let deadline = now + lease;
            p.lease = Some(Lease {
                ack_id: n,
                deadline,
                consumer: consumer_id,
                transport,
            });
            let size = p.bytes;
            bytes += size;
            let delivered = ReceivedMessage {
                ack_id,
                message: Some((*p.message).clone()),
                delivery_attempt: if with_attempts { p.attempts } else { 0 },
            };
            self.leases.insert(n, seq);
            self.deadlines.insert((deadline, n));
            if let Consumer::Stream(id) = consumer {
                let o = self.consumers.entry(id).or_default();
                o.messages += 1;
                o.bytes += size;
            }
            if let Some(m) = keyed {
                let key = &m.ordering_key;
                if let Some(q) = self.keys.get_mut(key) {
                    q.delivered += 1;
                    q.consumer = Some(consumer_id);
                }
                self.schedule_key(key);
            }
            self.emit(transport, |s| Event::Deliver {
                subscription: s.config.name.clone(),
                message_id: delivered
                    .message
                    .as_ref()
                    .map(|m| m.message_id.clone())
                    .unwrap_or_default(),
                ordering_key: delivered
                    .message
                    .as_ref()
                    .map(|m| m.ordering_key.clone())
                    .unwrap_or_default(),
                ack_id: delivered.ack_id.clone(),
                delivery_attempt: delivered.delivery_attempt,
                consumer,
            });
            out.push(delivered);
        }
        out
    }

    /// When the next thing happens on its own: a message becoming deliverable or a lease
    /// expiring.
    pub fn next_event(&self) -> Option<Instant> {
        let a = self.schedule.first().map(|(t, _)| *t);
        let b = self.next_deadline();
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Treats every lease past its deadline as a failed delivery; returns the dead letters,
    /// each with the transport its last delivery went by.
    pub fn expire(&mut self, now: Instant) -> Vec<(DeadLetter, Transport)> {
        let mut dead = Vec::new();
        while let Some(&(deadline, ack_id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let transport = self
                .lease_transport(ack_id)
                .unwrap_or(Transport::GrpcStream);
            self.emit(transport, |s| {
                let (message_id, ordering_key, attempts) = s.leased_message(ack_id);
                Event::LeaseExpired {
                    subscription: s.config.name.clone(),
                    message_id,
                    ordering_key,
                    ack_id: s.ack_id(ack_id),
                    delivery_attempt: attempts,
                }
            });
            let failed = self.fail(ack_id, now, true, transport);
            // `fail` drops the deadline with the lease; one whose lease is already gone must
            // not stop the loop.
            self.deadlines.remove(&(deadline, ack_id));
            dead.extend(failed.map(|d| (d, transport)));
        }
        dead
    }

    fn lease_transport(&self, ack_id: u64) -> Option<Transport> {
        let seq = self.leases.get(&ack_id)?;
        self.messages.get(seq)?.lease.as_ref().map(|l| l.transport)
    }

    /// (message id, ordering key, attempts as the subscriber sees them) of a leased message.
    fn leased_message(&self, ack_id: u64) -> (String, String, i32) {
        self.leases
            .get(&ack_id)
            .and_then(|seq| self.messages.get(seq))
            .map(|p| {
                let attempts = if self.config.dead_letter_policy.is_some() {
                    p.attempts
                } else {
                    0
                };
                (
                    p.message.message_id.clone(),
                    p.message.ordering_key.clone(),
                    attempts,
                )
            })
            .unwrap_or_default()
    }

    /// Drops a lease, returning the message's sequence; the consumer's outstanding count
    /// goes down.
    fn release(&mut self, ack_id: u64) -> Option<u64> {
        let seq = self.leases.remove(&ack_id)?;
        let p = self.messages.get_mut(&seq)?;
        let lease = p.lease.take()?;
        self.deadlines.remove(&(lease.deadline, ack_id));
        let size = p.bytes;
        if let Some(o) = self.consumers.get_mut(&lease.consumer) {
            o.messages = o.messages.saturating_sub(1);
            o.bytes = o.bytes.saturating_sub(size);
        }
        Some(seq)
    }

    /// A nack, an expired deadline, or an injected duplicate (`counts` false: not a failure
    /// of the subscriber, so no backoff and never a dead letter).
    fn fail(
        &mut self,
        ack_id: u64,
        now: Instant,
        counts: bool,
        transport: Transport,
    ) -> Option<DeadLetter> {
        let seq = self.release(ack_id)?;
        let failure = if counts {
            self.judge(seq, now)
        } else {
            if let Some(p) = self.messages.get_mut(&seq) {
                p.available_at = now;
            }
            Failure::Redeliver
        };
        let key = self.keyed_message(seq).map(|m| m.ordering_key.clone());
        let dead = match failure {
            Failure::DeadLetter(d) => {
                self.emit(transport, |s| {
                    let p = s.messages.get(&seq);
                    Event::DeadLetter {
                        subscription: s.config.name.clone(),
                        message_id: p.map(|p| p.message.message_id.clone()).unwrap_or_default(),
                        ordering_key: p
                            .map(|p| p.message.ordering_key.clone())
                            .unwrap_or_default(),
                        attempts: p.map_or(0, |p| p.attempts),
                        dead_letter_topic: d.topic.clone(),
                    }
                });
                Some(d)
            }
            Failure::Redeliver => None,
        };
        match key {
            Some(key) => {
                self.restart_key_after(&key, seq, now, transport);
                if dead.is_some() {
                    if let Some(q) = self.keys.get_mut(&key)
                        && let Some(position) = q.seqs.iter().position(|s| *s == seq)
                    {
                        q.seqs.remove(position);
                    }
                    self.settle_message(seq, now);
                    self.drop_key_if_empty(&key);
                }
                self.schedule_key(&key);
            }
            None => {
                if dead.is_some() {
                    self.settle_message(seq, now);
                } else {
                    self.schedule_message(seq);
                }
            }
        }
        self.notify.notify_waiters();
        dead
    }

    /// The failed message `seq` and every later delivered message of its key (leased or
    /// acknowledged) go back to be delivered again, in order; their ack ids die.
    fn restart_key_after(&mut self, key: &str, seq: u64, now: Instant, transport: Transport) {
        let Some(queue) = self.keys.get(key) else {
            return;
        };
        let Some(position) = queue.seqs.iter().position(|s| *s == seq) else {
            return;
        };
        let later: Vec<u64> = queue
            .seqs
            .iter()
            .skip(position + 1)
            .take(queue.delivered.saturating_sub(position + 1))
            .copied()
            .collect();
        let because = self
            .messages
            .get(&seq)
            .map(|p| p.message.message_id.clone())
            .unwrap_or_default();
        for later in later {
            let (lease, was_acked) = match self.messages.get(&later) {
                Some(p) => (p.lease.as_ref().map(|l| l.ack_id), p.acked),
                None => (None, false),
            };
            if let Some(a) = lease {
                self.release(a);
            }
            if let Some(p) = self.messages.get_mut(&later) {
                p.acked = false;
                p.available_at = now;
                // Taken back for an earlier message's failure, not its own: the attempt is
                // "1 + NACKs + ack deadline exceeds" of this message (ReceivedMessage,
                // https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1#receivedmessage),
                // so the redelivery to come must not count as a new one.
                if lease.is_some() || was_acked {
                    p.attempts = (p.attempts - 1).max(0);
                }
            }
            if lease.is_some() || was_acked {
                let ack_id = lease.map(|a| self.ack_id(a)).unwrap_or_default();
                self.emit(transport, |s| {
                    let p = s.messages.get(&later);
                    Event::Revoked {
                        subscription: s.config.name.clone(),
                        message_id: p.map(|p| p.message.message_id.clone()).unwrap_or_default(),
                        ordering_key: key.to_string(),
                        ack_id,
                        because: because.clone(),
                    }
                });
            }
        }
        if let Some(q) = self.keys.get_mut(key) {
            q.delivered = position;
            if position == 0 {
                q.consumer = None;
            }
        }
    }

    fn drop_key_if_empty(&mut self, key: &str) {
        if self.keys.get(key).is_some_and(|q| q.seqs.is_empty()) {
            self.keys.remove(key);
        }
    }

    /// Decides what a failed delivery of `seq` becomes: dead letter, or a redelivery after
    /// the retry policy's backoff.
    fn judge(&mut self, seq: u64, now: Instant) -> Failure {
        let Some(p) = self.messages.get_mut(&seq) else {
            return Failure::Redeliver;
        };
        if let Some(policy) = &self.config.dead_letter_policy
            && p.attempts >= policy.max_delivery_attempts
        {
            let mut message = (*p.message).clone();
            let (project, id) =
                limits::resource_id(&self.config.name, "subscriptions").unwrap_or(("", ""));
            message
                .attributes
                .insert(DEAD_LETTER_DELIVERY_COUNT.into(), p.attempts.to_string());
            message
                .attributes
                .insert(DEAD_LETTER_SUBSCRIPTION.into(), id.to_string());
            message
                .attributes
                .insert(DEAD_LETTER_SUBSCRIPTION_PROJECT.into(), project.to_string());
            if let Some(t) = &message.publish_time {
                message
                    .attributes
                    .insert(DEAD_LETTER_PUBLISH_TIME.into(), t.to_string());
            }
            return Failure::DeadLetter(DeadLetter {
                topic: policy.dead_letter_topic.clone(),
                message,
            });
        }
        let delay = match &self.config.retry_policy {
            None => Duration::ZERO,
            Some(r) => backoff(
                r.minimum_backoff
                    .as_ref()
                    .map_or(DEFAULT_MIN_BACKOFF, duration_of),
                r.maximum_backoff
                    .as_ref()
                    .map_or(DEFAULT_MAX_BACKOFF, duration_of),
                p.attempts.max(1) as u32,
            ),
        };
        p.available_at = now + delay;
        Failure::Redeliver
    }

    /// An acknowledgement of a well-formed ack id of this subscription.
    pub fn ack(&mut self, ack_id: u64, now: Instant, transport: Transport) -> Settled {
        if !self.leases.contains_key(&ack_id) {
            self.emit(transport, |s| Event::Stale {
                subscription: s.config.name.clone(),
                ack_id: s.ack_id(ack_id),
            });
            return Settled::Stale;
        }
        if self.roll(Fault::LostAck) {
            // The subscriber believes it acked; the lease simply runs out (sooner when the
            // plan says the ack was lost just before the deadline).
            self.fault_event(ack_id, FaultKind::LostAck, transport);
            if let Some(lease) = self.faults.as_ref().and_then(|f| f.lost_ack_lease) {
                self.extend(ack_id, now + lease);
            }
            return Settled::Done;
        }
        if self.roll(Fault::Duplicate) {
            self.fault_event(ack_id, FaultKind::Duplicate, transport);
            self.fail(ack_id, now, false, transport);
            return Settled::Done;
        }
        self.emit(transport, |s| {
            let (message_id, ordering_key, _) = s.leased_message(ack_id);
            Event::Ack {
                subscription: s.config.name.clone(),
                message_id,
                ordering_key,
                ack_id: s.ack_id(ack_id),
            }
        });
        let Some(seq) = self.release(ack_id) else {
            return Settled::Stale;
        };
        match self.keyed_message(seq) {
            Some(message) => self.ack_ordered(&message.ordering_key, seq, now),
            None => {
                self.unschedule_message(seq);
                self.settle_message(seq, now);
            }
        }
        self.notify.notify_waiters();
        Settled::Done
    }

    /// An ordered message acknowledged: settled for good once nothing earlier of its key is
    /// outstanding (on exactly-once subscriptions always, as an acknowledged message is never
    /// resent there); otherwise kept, acknowledged, behind the earlier ones.
    fn ack_ordered(&mut self, key: &str, seq: u64, now: Instant) {
        let exactly_once = self.exactly_once();
        let mut settled = std::mem::take(&mut self.settling);
        settled.clear();
        let Some(q) = self.keys.get_mut(key) else {
            return;
        };
        let Some(position) = q.seqs.iter().position(|s| *s == seq) else {
            return;
        };
        if position == 0 || exactly_once {
            q.seqs.remove(position);
            q.delivered = q.delivered.saturating_sub(1);
            settled.push(seq);
            if position == 0 {
                // Acknowledged followers of the front are settled with it.
                while q.delivered > 0
                    && let Some(&front) = q.seqs.front()
                    && self.messages.get(&front).is_some_and(|p| p.acked)
                {
                    q.seqs.pop_front();
                    q.delivered -= 1;
                    settled.push(front);
                }
            }
        } else if let Some(p) = self.messages.get_mut(&seq) {
            p.acked = true;
        }
        if q.delivered == 0
            || q.seqs
                .front()
                .is_some_and(|f| self.messages.get(f).is_none_or(|p| p.lease.is_none()))
        {
            q.consumer = None;
        }
        for &s in &settled {
            self.settle_message(s, now);
        }
        self.settling = settled;
        self.drop_key_if_empty(key);
        self.schedule_key(key);
    }

    /// A message leaves the backlog for good; kept for seeking when the subscription retains
    /// acknowledged messages.
    fn settle_message(&mut self, seq: u64, now: Instant) {
        let Some(p) = self.messages.remove(&seq) else {
            return;
        };
        if self.config.retain_acked_messages {
            self.retained.insert(
                seq,
                Retained {
                    message: p.message,
                    published: p.published,
                },
            );
            self.prune_retained(now);
        }
    }

    /// Drops retained acknowledged messages older than the retention window.
    pub fn prune_retained(&mut self, now: Instant) {
        let window = self
            .config
            .message_retention_duration
            .as_ref()
            .map_or(limits::DEFAULT_RETENTION, duration_of);
        while let Some((&seq, r)) = self.retained.first_key_value() {
            if r.published + window > now {
                break;
            }
            self.retained.remove(&seq);
        }
    }

    fn fault_event(&mut self, ack_id: u64, fault: FaultKind, transport: Transport) {
        self.emit(transport, |s| Event::Fault {
            subscription: s.config.name.clone(),
            fault,
            message_id: s.leased_message(ack_id).0,
            ack_id: s.ack_id(ack_id),
            stream: None,
            delay_ms: None,
        });
    }

    /// A ModifyAckDeadline of one well-formed ack id of this subscription: `0` nacks, more
    /// extends the lease to that many seconds from now.
    pub fn modify(
        &mut self,
        ack_id: u64,
        seconds: i32,
        now: Instant,
        transport: Transport,
    ) -> (Settled, Option<DeadLetter>) {
        if !self.leases.contains_key(&ack_id) {
            self.emit(transport, |s| Event::Stale {
                subscription: s.config.name.clone(),
                ack_id: s.ack_id(ack_id),
            });
            return (Settled::Stale, None);
        }
        if seconds == 0 {
            self.emit(transport, |s| {
                let (message_id, ordering_key, _) = s.leased_message(ack_id);
                Event::Nack {
                    subscription: s.config.name.clone(),
                    message_id,
                    ordering_key,
                    ack_id: s.ack_id(ack_id),
                }
            });
            let dead = self.fail(ack_id, now, true, transport);
            (Settled::Done, dead)
        } else {
            self.emit(transport, |s| Event::Extend {
                subscription: s.config.name.clone(),
                message_id: s.leased_message(ack_id).0,
                ack_id: s.ack_id(ack_id),
                seconds,
            });
            self.extend(ack_id, now + Duration::from_secs(seconds as u64));
            (Settled::Done, None)
        }
    }

    /// A delivery that never left the service (its stream was gone before the batch was
    /// sent): the message goes back at once, and the attempt does not count.
    pub fn undelivered(&mut self, ack_id: u64, now: Instant) {
        let Some(seq) = self.leases.get(&ack_id).copied() else {
            return;
        };
        self.emit(Transport::GrpcStream, |s| Event::Undelivered {
            subscription: s.config.name.clone(),
            message_id: s.leased_message(ack_id).0,
            ack_id: s.ack_id(ack_id),
        });
        if let Some(p) = self.messages.get_mut(&seq) {
            p.attempts = (p.attempts - 1).max(0);
        }
        self.fail(ack_id, now, false, Transport::GrpcStream);
    }

    fn extend(&mut self, ack_id: u64, deadline: Instant) -> bool {
        let Some(seq) = self.leases.get(&ack_id).copied() else {
            return false;
        };
        let Some(lease) = self.messages.get_mut(&seq).and_then(|p| p.lease.as_mut()) else {
            return false;
        };
        self.deadlines.remove(&(lease.deadline, ack_id));
        lease.deadline = deadline;
        self.deadlines.insert((deadline, ack_id));
        true
    }

    pub fn end_consumer(&mut self, consumer: ConsumerId) {
        // Its leases stay until their deadlines, as on the real service.
        self.consumers.remove(&consumer);
    }

    /// Empties the backlog: every lease and ack id dies (detach, seek).
    pub fn purge(&mut self) {
        self.messages.clear();
        self.schedule.clear();
        self.leases.clear();
        self.deadlines.clear();
        self.keys.clear();
        for o in self.consumers.values_mut() {
            *o = Outstanding::default();
        }
        self.notify.notify_waiters();
    }

    /// Every message the subscription still has to deliver or has leased (not the
    /// acknowledged ones an ordering key keeps), by sequence.
    pub fn unacked(&self) -> BTreeMap<u64, Retained> {
        self.messages
            .iter()
            .filter(|(_, p)| !p.acked)
            .map(|(seq, p)| {
                (
                    *seq,
                    Retained {
                        message: p.message.clone(),
                        published: p.published,
                    },
                )
            })
            .collect()
    }

    /// The acknowledged messages kept for seeking, plus those an ordering key keeps.
    pub fn acknowledged(&self) -> BTreeMap<u64, Retained> {
        let mut all = self.retained.clone();
        for (seq, p) in self.messages.iter().filter(|(_, p)| p.acked) {
            all.insert(
                *seq,
                Retained {
                    message: p.message.clone(),
                    published: p.published,
                },
            );
        }
        all
    }

    /// What a seek decided: `backlog` becomes the unacknowledged messages (those the filter
    /// lets through), `acknowledged` the retained acknowledged ones (kept only with
    /// `retain_acked_messages`). Every lease dies.
    pub fn reset(
        &mut self,
        backlog: BTreeMap<u64, Retained>,
        acknowledged: BTreeMap<u64, Retained>,
        now: Instant,
    ) {
        self.purge();
        self.retained.clear();
        if self.config.retain_acked_messages {
            self.retained = acknowledged;
            self.prune_retained(now);
        }
        for (seq, r) in backlog {
            if self.matches(&r.message) {
                self.insert(seq, r.message, r.published, now);
            }
        }
    }

    /// Forgets retained acknowledged messages (when `retain_acked_messages` is switched off).
    pub fn drop_retained(&mut self) {
        self.retained.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum() {
        let s = Duration::from_secs;
        let got: Vec<Duration> = (1..=6).map(|n| backoff(s(1), s(10), n)).collect();
        assert_eq!(got, vec![s(1), s(2), s(4), s(8), s(10), s(10)]);
        assert_eq!(backoff(s(0), s(0), 3), s(0));
        assert_eq!(backoff(s(600), s(600), 100), s(600));
    }
}
