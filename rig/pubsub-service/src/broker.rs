//! The service's state: topics, subscriptions and each subscription's backlog of unacked
//! messages with their leases. Transport-free (gRPC and REST both call it) and driven by
//! the `now` its callers pass, so tests can run it on virtual time.
//!
//! Delivery semantics and their sources:
//! - at-least-once, ack deadlines, expiry and modifyAckDeadline:
//!   <https://cloud.google.com/pubsub/docs/lease-management>, <https://cloud.google.com/pubsub/docs/subscriber>;
//! - ordering keys: <https://cloud.google.com/pubsub/docs/ordering> — a key's messages are
//!   delivered in publish order; when one is nacked or its deadline expires it is redelivered
//!   together with every later message of its key, in order;
//! - retry policy: <https://cloud.google.com/pubsub/docs/handling-failures#retry_policy> —
//!   without one, redelivery is immediate; with one, the delay grows exponentially from
//!   `minimum_backoff` (10 s when unset) to `maximum_backoff` (600 s when unset);
//! - dead-letter policy: <https://cloud.google.com/pubsub/docs/handling-failures#dead_letter_topic>
//!   — `delivery_attempt` on every delivery; after `max_delivery_attempts` failed deliveries
//!   the message goes to the dead-letter topic with the `CloudPubSubDeadLetterSource*`
//!   attributes (<https://cloud.google.com/pubsub/docs/dead-letter-topics#track-delivery-attempts>),
//!   also on ordered subscriptions, after which the key goes on;
//! - filters: <https://cloud.google.com/pubsub/docs/subscription-message-filter> —
//!   non-matching messages are acknowledged at once and never delivered;
//! - exactly-once: <https://cloud.google.com/pubsub/docs/exactly-once-delivery> — an ack
//!   with an expired or unknown ack id fails.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Result, ServiceError};
use crate::faults::{Fault, FaultPlan};
use crate::filter::Filter;
use crate::limits;
use crate::proto::{self, PubsubMessage, ReceivedMessage, Subscription, Topic};

/// Where a deleted topic's subscriptions point (what the real service reports).
pub const DELETED_TOPIC: &str = "_deleted-topic_";

/// Attributes the dead-letter forwarding adds.
pub const DEAD_LETTER_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";
pub const DEAD_LETTER_SUBSCRIPTION: &str = "CloudPubSubDeadLetterSourceSubscription";
pub const DEAD_LETTER_SUBSCRIPTION_PROJECT: &str = "CloudPubSubDeadLetterSourceSubscriptionProject";
pub const DEAD_LETTER_PUBLISH_TIME: &str = "CloudPubSubDeadLetterSourceTopicPublishTime";

const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(10);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(600);

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

/// One subscriber connection (a streaming pull) or the unary Pull callers, for flow control.
pub type ConsumerId = u64;
/// Unary Pull's leases belong to no stream.
pub const UNARY: ConsumerId = 0;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outstanding {
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug)]
struct Lease {
    ack_id: u64,
    deadline: Instant,
    consumer: ConsumerId,
}

#[derive(Debug)]
struct Pending {
    message: Arc<PubsubMessage>,
    attempts: i32,
    available_at: Instant,
    lease: Option<Lease>,
    /// In `schedule` at `available_at`.
    scheduled: bool,
}

/// One ordering key's unacked messages, in publish order. The leased ones are always a
/// prefix: a key is delivered in order, and a failure un-leases from the failed message on.
///
/// While any of its messages is leased, a key belongs to that one consumer: the real service
/// delivers a key's messages to one subscriber stream at a time (otherwise two workers could
/// process a key's messages concurrently and out of order).
#[derive(Debug, Default)]
struct KeyQueue {
    seqs: VecDeque<u64>,
    leased: usize,
    consumer: Option<ConsumerId>,
    /// The key's message in `schedule`, if any (its first unleased one).
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

pub struct SubscriptionState {
    pub config: Subscription,
    filter: Option<Filter>,
    faults: Option<FaultPlan>,
    pub notify: Arc<Notify>,
    messages: HashMap<u64, Pending>,
    /// Deliverable candidates by (time, publish sequence): every unleased message on an
    /// unordered subscription; each key's first unleased message on an ordered one.
    schedule: BTreeSet<(Instant, u64)>,
    leases: HashMap<u64, u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    keys: HashMap<String, KeyQueue>,
    consumers: HashMap<ConsumerId, Outstanding>,
}

impl SubscriptionState {
    fn new(config: Subscription, filter: Option<Filter>, faults: Option<FaultPlan>) -> Self {
        Self {
            config,
            filter,
            faults,
            notify: Arc::new(Notify::new()),
            messages: HashMap::new(),
            schedule: BTreeSet::new(),
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            keys: HashMap::new(),
            consumers: HashMap::new(),
        }
    }

    fn ordered(&self) -> bool {
        self.config.enable_message_ordering
    }

    pub fn exactly_once(&self) -> bool {
        self.config.enable_exactly_once_delivery
    }

    pub fn outstanding(&self, consumer: ConsumerId) -> Outstanding {
        self.consumers.get(&consumer).copied().unwrap_or_default()
    }

    /// Whether a message could be delivered now (flow control aside).
    pub fn has_deliverable(&self, now: Instant) -> bool {
        self.schedule.first().is_some_and(|(t, _)| *t <= now)
    }

    /// The stream-reset fault: decided once per batch a stream is about to receive.
    pub fn roll_stream_reset(&mut self) -> bool {
        self.roll(Fault::StreamReset)
    }

    fn roll(&mut self, fault: Fault) -> bool {
        self.faults.as_mut().is_some_and(|f| f.roll(fault))
    }

    fn enqueue(&mut self, seq: u64, message: Arc<PubsubMessage>, now: Instant) {
        if self
            .filter
            .as_ref()
            .is_some_and(|f| !f.matches(&message.attributes))
        {
            // Acknowledged by the service at once: never delivered, never an attempt.
            return;
        }
        let mut available_at = now;
        if self.roll(Fault::Delay) {
            available_at += self.faults.as_ref().map_or(Duration::ZERO, |f| f.delay);
        }
        let key = message.ordering_key.clone();
        self.messages.insert(
            seq,
            Pending {
                message,
                attempts: 0,
                available_at,
                lease: None,
                scheduled: false,
            },
        );
        if self.ordered() && !key.is_empty() {
            self.keys
                .entry(key.clone())
                .or_default()
                .seqs
                .push_back(seq);
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

    /// Makes the key's first unleased message (and only it) a candidate.
    fn schedule_key(&mut self, key: &str) {
        let Some(queue) = self.keys.get(key) else {
            return;
        };
        let candidate = queue.seqs.get(queue.leased).copied();
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

    fn message_key(&self, seq: u64) -> Option<String> {
        let p = self.messages.get(&seq)?;
        (self.ordered() && !p.message.ordering_key.is_empty())
            .then(|| p.message.ordering_key.clone())
    }

    /// Leases up to `max_messages` deliverable messages (and about `max_bytes`) to
    /// `consumer` for `lease` each.
    pub fn take(
        &mut self,
        now: Instant,
        consumer: ConsumerId,
        max_messages: usize,
        max_bytes: u64,
        lease: Duration,
        next_ack_id: &mut u64,
    ) -> Vec<ReceivedMessage> {
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
            let key = self.message_key(seq);
            if let Some(k) = &key
                && self
                    .keys
                    .get(k)
                    .and_then(|q| q.consumer)
                    .is_some_and(|c| c != consumer)
            {
                // Another stream holds this key; leave it for that one.
                cursor = Some((at, seq));
                continue;
            }
            self.schedule.remove(&(at, seq));
            let Some(p) = self.messages.get_mut(&seq) else {
                continue;
            };
            p.scheduled = false;
            *next_ack_id += 1;
            let ack_id = *next_ack_id;
            p.attempts += 1;
            let deadline = now + lease;
            p.lease = Some(Lease {
                ack_id,
                deadline,
                consumer,
            });
            let size = limits::message_bytes(&p.message) as u64;
            bytes += size;
            let delivered = ReceivedMessage {
                ack_id: ack_id.to_string(),
                message: Some((*p.message).clone()),
                delivery_attempt: if with_attempts { p.attempts } else { 0 },
            };
            self.leases.insert(ack_id, seq);
            self.deadlines.insert((deadline, ack_id));
            let o = self.consumers.entry(consumer).or_default();
            o.messages += 1;
            o.bytes += size;
            if let Some(key) = key {
                if let Some(q) = self.keys.get_mut(&key) {
                    q.leased += 1;
                    q.consumer = Some(consumer);
                }
                self.schedule_key(&key);
            }
            out.push(delivered);
        }
        out
    }

    /// When the next thing happens on its own: a message becoming deliverable or a lease
    /// expiring.
    pub fn next_event(&self) -> Option<Instant> {
        let a = self.schedule.first().map(|(t, _)| *t);
        let b = self.deadlines.first().map(|(t, _)| *t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Treats every lease past its deadline as a failed delivery.
    fn expire(&mut self, now: Instant) -> Vec<DeadLetter> {
        let mut dead = Vec::new();
        while let Some(&(deadline, ack_id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            if let Some(d) = self.fail(ack_id, now, true) {
                dead.push(d);
            }
        }
        dead
    }

    /// Drops a lease, returning the message's sequence; the consumer's outstanding count
    /// goes down.
    fn release(&mut self, ack_id: u64) -> Option<u64> {
        let seq = self.leases.remove(&ack_id)?;
        let p = self.messages.get_mut(&seq)?;
        let lease = p.lease.take()?;
        self.deadlines.remove(&(lease.deadline, ack_id));
        let size = limits::message_bytes(&p.message) as u64;
        if let Some(o) = self.consumers.get_mut(&lease.consumer) {
            o.messages = o.messages.saturating_sub(1);
            o.bytes = o.bytes.saturating_sub(size);
        }
        Some(seq)
    }

    /// A nack, an expired deadline, or a `0` modifyAckDeadline. `backoff` is false for
    /// injected duplicates, which are not failures of the subscriber.
    fn fail(&mut self, ack_id: u64, now: Instant, counts: bool) -> Option<DeadLetter> {
        let seq = self.release(ack_id)?;
        let failure = if counts {
            self.judge(seq, now)
        } else {
            if let Some(p) = self.messages.get_mut(&seq) {
                p.available_at = now;
            }
            Failure::Redeliver
        };
        let key = self.message_key(seq);
        let mut dead = None;
        if let Failure::DeadLetter(d) = failure {
            dead = Some(d);
        }
        match key {
            Some(key) => {
                // The failed message and every later message of its key go back, in order.
                let position = self
                    .keys
                    .get(&key)
                    .and_then(|q| q.seqs.iter().position(|s| *s == seq));
                if let Some(position) = position {
                    let revoked: Vec<u64> = self
                        .keys
                        .get(&key)
                        .map(|q| {
                            q.seqs
                                .iter()
                                .skip(position + 1)
                                .take(q.leased.saturating_sub(position + 1))
                                .copied()
                                .collect()
                        })
                        .unwrap_or_default();
                    for later in revoked {
                        let later_ack = self
                            .messages
                            .get(&later)
                            .and_then(|p| p.lease.as_ref().map(|l| l.ack_id));
                        if let Some(a) = later_ack {
                            self.release(a);
                        }
                        if let Some(p) = self.messages.get_mut(&later) {
                            p.available_at = now;
                        }
                    }
                    if let Some(q) = self.keys.get_mut(&key) {
                        q.leased = position;
                        if position == 0 {
                            q.consumer = None;
                        }
                        if dead.is_some() {
                            q.seqs.remove(position);
                        }
                    }
                }
                if dead.is_some() {
                    self.messages.remove(&seq);
                    self.drop_key_if_empty(&key);
                }
                self.schedule_key(&key);
            }
            None => {
                if dead.is_some() {
                    self.messages.remove(&seq);
                } else {
                    self.schedule_message(seq);
                }
            }
        }
        self.notify.notify_waiters();
        dead
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
                    .insert(DEAD_LETTER_PUBLISH_TIME.into(), rfc3339(t));
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

    fn ack(&mut self, ack_id: u64, now: Instant) -> bool {
        if !self.leases.contains_key(&ack_id) {
            return false;
        }
        if self.roll(Fault::LostAck) {
            // The subscriber believes it acked; the lease simply runs out (sooner when the
            // plan says the ack was lost just before the deadline).
            if let Some(lease) = self.faults.as_ref().and_then(|f| f.lost_ack_lease) {
                self.extend(ack_id, now + lease);
            }
            return true;
        }
        if self.roll(Fault::Duplicate) {
            self.fail(ack_id, now, false);
            return true;
        }
        let Some(seq) = self.release(ack_id) else {
            return false;
        };
        if let Some(key) = self.message_key(seq)
            && let Some(q) = self.keys.get_mut(&key)
            && let Some(position) = q.seqs.iter().position(|s| *s == seq)
        {
            q.seqs.remove(position);
            if position < q.leased {
                q.leased -= 1;
            }
            if q.leased == 0 {
                q.consumer = None;
            }
            self.drop_key_if_empty(&key);
        }
        self.unschedule_message(seq);
        self.messages.remove(&seq);
        self.notify.notify_waiters();
        true
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

    fn purge(&mut self) {
        self.messages.clear();
        self.schedule.clear();
        self.leases.clear();
        self.deadlines.clear();
        self.keys.clear();
        self.notify.notify_waiters();
    }
}

fn rfc3339(t: &prost_types::Timestamp) -> String {
    t.to_string()
}

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

struct TopicState {
    topic: Topic,
    subscriptions: BTreeSet<String>,
}

/// All topics and subscriptions.
#[derive(Default)]
pub struct Broker {
    topics: HashMap<String, TopicState>,
    subscriptions: HashMap<String, SubscriptionState>,
    next_message_id: u64,
    next_ack_id: u64,
    next_consumer: ConsumerId,
    /// Wakes every stream when the service stops or a subscription goes away.
    pub closing: Arc<Notify>,
}

/// Which ack ids of a request failed, for exactly-once delivery's per-id errors.
#[derive(Debug, Default)]
pub struct AckOutcome {
    pub invalid: Vec<String>,
}

fn parse_ack_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

impl Broker {
    pub fn new_consumer(&mut self) -> ConsumerId {
        self.next_consumer += 1;
        self.next_consumer
    }

    // ---- topics -------------------------------------------------------------------------

    pub fn create_topic(&mut self, mut topic: Topic) -> Result<Topic> {
        limits::resource_id(&topic.name, "topics")?;
        if self.topics.contains_key(&topic.name) {
            return Err(ServiceError::already_exists("Topic", &topic.name));
        }
        check_topic_fields(&topic)?;
        topic.state = proto::topic::State::Active as i32;
        self.topics.insert(
            topic.name.clone(),
            TopicState {
                topic: topic.clone(),
                subscriptions: BTreeSet::new(),
            },
        );
        Ok(topic)
    }

    pub fn get_topic(&self, name: &str) -> Result<Topic> {
        limits::resource_id(name, "topics")?;
        self.topics
            .get(name)
            .map(|t| t.topic.clone())
            .ok_or_else(|| ServiceError::not_found("Topic", name))
    }

    pub fn update_topic(&mut self, topic: Topic, mask: &[String]) -> Result<Topic> {
        limits::resource_id(&topic.name, "topics")?;
        check_topic_fields(&topic)?;
        let state = self
            .topics
            .get_mut(&topic.name)
            .ok_or_else(|| ServiceError::not_found("Topic", &topic.name))?;
        if mask.is_empty() {
            return Err(ServiceError::invalid("The update_mask is required."));
        }
        for path in mask {
            match path.as_str() {
                "labels" => state.topic.labels = topic.labels.clone(),
                "message_retention_duration" | "messageRetentionDuration" => {
                    state.topic.message_retention_duration = topic.message_retention_duration
                }
                "message_storage_policy" | "messageStoragePolicy" => {
                    state.topic.message_storage_policy = topic.message_storage_policy.clone()
                }
                "kms_key_name" | "kmsKeyName" => {
                    state.topic.kms_key_name = topic.kms_key_name.clone()
                }
                other => {
                    return Err(ServiceError::invalid(format!(
                        "Invalid update_mask path {other:?} for a topic."
                    )));
                }
            }
        }
        Ok(state.topic.clone())
    }

    pub fn list_topics(&self, project: &str) -> Vec<Topic> {
        let prefix = format!("projects/{project}/topics/");
        let mut topics: Vec<Topic> = self
            .topics
            .values()
            .filter(|t| t.topic.name.starts_with(&prefix))
            .map(|t| t.topic.clone())
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    pub fn topic_subscriptions(&self, topic: &str) -> Result<Vec<String>> {
        limits::resource_id(topic, "topics")?;
        self.topics
            .get(topic)
            .map(|t| t.subscriptions.iter().cloned().collect())
            .ok_or_else(|| ServiceError::not_found("Topic", topic))
    }

    pub fn delete_topic(&mut self, name: &str) -> Result<()> {
        limits::resource_id(name, "topics")?;
        let state = self
            .topics
            .remove(name)
            .ok_or_else(|| ServiceError::not_found("Topic", name))?;
        for s in state.subscriptions {
            if let Some(sub) = self.subscriptions.get_mut(&s) {
                sub.config.topic = DELETED_TOPIC.into();
            }
        }
        Ok(())
    }

    pub fn detach_subscription(&mut self, name: &str) -> Result<()> {
        limits::resource_id(name, "subscriptions")?;
        let sub = self
            .subscriptions
            .get_mut(name)
            .ok_or_else(|| ServiceError::not_found("Subscription", name))?;
        sub.config.detached = true;
        sub.purge();
        let topic = sub.config.topic.clone();
        if let Some(t) = self.topics.get_mut(&topic) {
            t.subscriptions.remove(name);
        }
        Ok(())
    }

    /// Publishes `messages` (already checked against the limits) to `topic`; returns their
    /// ids.
    pub fn publish(
        &mut self,
        topic: &str,
        messages: Vec<PubsubMessage>,
        now: Instant,
    ) -> Result<Vec<String>> {
        limits::resource_id(topic, "topics")?;
        limits::check_publish(&messages)?;
        let state = self
            .topics
            .get(topic)
            .ok_or_else(|| ServiceError::not_found("Topic", topic))?;
        let subscriptions: Vec<String> = state.subscriptions.iter().cloned().collect();
        let publish_time = timestamp(SystemTime::now());
        let mut ids = Vec::with_capacity(messages.len());
        for mut m in messages {
            self.next_message_id += 1;
            let seq = self.next_message_id;
            m.message_id = seq.to_string();
            m.publish_time = Some(publish_time);
            ids.push(m.message_id.clone());
            let m = Arc::new(m);
            for s in &subscriptions {
                if let Some(sub) = self.subscriptions.get_mut(s) {
                    sub.enqueue(seq, m.clone(), now);
                }
            }
        }
        Ok(ids)
    }

    // ---- subscriptions ------------------------------------------------------------------

    pub fn create_subscription(&mut self, mut s: Subscription) -> Result<Subscription> {
        limits::resource_id(&s.name, "subscriptions")?;
        limits::resource_id(&s.topic, "topics")?;
        if self.subscriptions.contains_key(&s.name) {
            return Err(ServiceError::already_exists("Subscription", &s.name));
        }
        if !self.topics.contains_key(&s.topic) {
            return Err(ServiceError::not_found("Topic", &s.topic));
        }
        let (filter, faults) = normalise_subscription(&mut s)?;
        self.check_dead_letter_topic(&s)?;
        if let Some(t) = self.topics.get_mut(&s.topic) {
            t.subscriptions.insert(s.name.clone());
        }
        self.subscriptions.insert(
            s.name.clone(),
            SubscriptionState::new(s.clone(), filter, faults),
        );
        Ok(s)
    }

    /// "The operation will fail if the topic does not exist" (`DeadLetterPolicy.dead_letter_topic`,
    /// <https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions#deadletterpolicy>).
    /// The page names no code; NOT_FOUND is what the service answers for any other missing topic.
    /// A dead-letter topic deleted later is another matter: its dead letters are dropped.
    fn check_dead_letter_topic(&self, s: &Subscription) -> Result<()> {
        match &s.dead_letter_policy {
            Some(p) if !self.topics.contains_key(&p.dead_letter_topic) => Err(
                ServiceError::not_found("Dead-letter topic", &p.dead_letter_topic),
            ),
            _ => Ok(()),
        }
    }

    pub fn subscription(&self, name: &str) -> Result<&SubscriptionState> {
        limits::resource_id(name, "subscriptions")?;
        self.subscriptions
            .get(name)
            .ok_or_else(|| ServiceError::not_found("Subscription", name))
    }

    pub fn subscription_mut(&mut self, name: &str) -> Result<&mut SubscriptionState> {
        limits::resource_id(name, "subscriptions")?;
        self.subscriptions
            .get_mut(name)
            .ok_or_else(|| ServiceError::not_found("Subscription", name))
    }

    pub fn get_subscription(&self, name: &str) -> Result<Subscription> {
        self.subscription(name).map(|s| s.config.clone())
    }

    pub fn update_subscription(
        &mut self,
        update: Subscription,
        mask: &[String],
    ) -> Result<Subscription> {
        if mask.is_empty() {
            return Err(ServiceError::invalid("The update_mask is required."));
        }
        let current = self.subscription(&update.name)?.config.clone();
        let mut next = current.clone();
        for path in mask {
            match path.as_str() {
                "ack_deadline_seconds" | "ackDeadlineSeconds" => {
                    next.ack_deadline_seconds = update.ack_deadline_seconds
                }
                "retain_acked_messages" | "retainAckedMessages" => {
                    next.retain_acked_messages = update.retain_acked_messages
                }
                "message_retention_duration" | "messageRetentionDuration" => {
                    next.message_retention_duration = update.message_retention_duration
                }
                "labels" => next.labels = update.labels.clone(),
                "expiration_policy" | "expirationPolicy" => {
                    next.expiration_policy = update.expiration_policy
                }
                "dead_letter_policy" | "deadLetterPolicy" => {
                    next.dead_letter_policy = update.dead_letter_policy.clone()
                }
                "retry_policy" | "retryPolicy" => next.retry_policy = update.retry_policy,
                "push_config" | "pushConfig" => next.push_config = update.push_config.clone(),
                "enable_exactly_once_delivery" | "enableExactlyOnceDelivery" => {
                    next.enable_exactly_once_delivery = update.enable_exactly_once_delivery
                }
                "filter" => {
                    return Err(ServiceError::invalid(
                        "A subscription's filter cannot be changed after creation.",
                    ));
                }
                "enable_message_ordering" | "enableMessageOrdering" => {
                    return Err(ServiceError::invalid(
                        "A subscription's message ordering cannot be changed after creation.",
                    ));
                }
                other => {
                    return Err(ServiceError::invalid(format!(
                        "Invalid update_mask path {other:?} for a subscription."
                    )));
                }
            }
        }
        let (_, faults) = normalise_subscription(&mut next)?;
        self.check_dead_letter_topic(&next)?;
        let sub = self.subscription_mut(&update.name)?;
        sub.config = next.clone();
        sub.faults = faults;
        Ok(next)
    }

    pub fn list_subscriptions(&self, project: &str) -> Vec<Subscription> {
        let prefix = format!("projects/{project}/subscriptions/");
        let mut subs: Vec<Subscription> = self
            .subscriptions
            .values()
            .filter(|s| s.config.name.starts_with(&prefix))
            .map(|s| s.config.clone())
            .collect();
        subs.sort_by(|a, b| a.name.cmp(&b.name));
        subs
    }

    pub fn delete_subscription(&mut self, name: &str) -> Result<()> {
        limits::resource_id(name, "subscriptions")?;
        let sub = self
            .subscriptions
            .remove(name)
            .ok_or_else(|| ServiceError::not_found("Subscription", name))?;
        if let Some(t) = self.topics.get_mut(&sub.config.topic) {
            t.subscriptions.remove(name);
        }
        sub.notify.notify_waiters();
        self.closing.notify_waiters();
        Ok(())
    }

    // ---- delivery -----------------------------------------------------------------------

    /// Expires leases everywhere and forwards what that dead-letters.
    pub fn tick(&mut self, now: Instant) {
        let mut dead = Vec::new();
        for sub in self.subscriptions.values_mut() {
            dead.extend(sub.expire(now));
        }
        self.forward(dead, now);
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.subscriptions
            .values()
            .filter_map(|s| s.deadlines.first().map(|(t, _)| *t))
            .min()
    }

    fn forward(&mut self, dead: Vec<DeadLetter>, now: Instant) {
        for d in dead {
            let mut m = d.message;
            m.message_id.clear();
            m.publish_time = None;
            if let Err(e) = self.publish(&d.topic, vec![m], now) {
                // The real service keeps retrying; a missing dead-letter topic loses it here.
                tracing::warn!("dead-letter forwarding to {} failed: {e}", d.topic);
            }
        }
    }

    /// Leases messages of `subscription` to `consumer`.
    #[allow(clippy::too_many_arguments)]
    pub fn pull(
        &mut self,
        subscription: &str,
        consumer: ConsumerId,
        max_messages: usize,
        max_bytes: u64,
        lease: Duration,
        now: Instant,
    ) -> Result<Vec<ReceivedMessage>> {
        let mut next_ack_id = self.next_ack_id;
        let sub = self.subscription_mut(subscription)?;
        let dead = sub.expire(now);
        let out = sub.take(
            now,
            consumer,
            max_messages,
            max_bytes,
            lease,
            &mut next_ack_id,
        );
        self.next_ack_id = next_ack_id;
        self.forward(dead, now);
        Ok(out)
    }

    pub fn acknowledge(
        &mut self,
        subscription: &str,
        ack_ids: &[String],
        now: Instant,
    ) -> Result<AckOutcome> {
        let sub = self.subscription_mut(subscription)?;
        let mut outcome = AckOutcome::default();
        for id in ack_ids {
            let ok = parse_ack_id(id).is_some_and(|a| sub.ack(a, now));
            if !ok {
                outcome.invalid.push(id.clone());
            }
        }
        Ok(outcome)
    }

    /// Sets the deadline of each ack id to `seconds` from now; `0` is a nack.
    pub fn modify_ack_deadline(
        &mut self,
        subscription: &str,
        ack_ids: &[String],
        seconds: i32,
        now: Instant,
    ) -> Result<AckOutcome> {
        limits::check_modify_deadline(seconds)?;
        let sub = self.subscription_mut(subscription)?;
        let mut outcome = AckOutcome::default();
        let mut dead = Vec::new();
        for id in ack_ids {
            let Some(a) = parse_ack_id(id).filter(|a| sub.leases.contains_key(a)) else {
                outcome.invalid.push(id.clone());
                continue;
            };
            if seconds == 0 {
                dead.extend(sub.fail(a, now, true));
            } else {
                sub.extend(a, now + Duration::from_secs(seconds as u64));
            }
        }
        self.forward(dead, now);
        Ok(outcome)
    }
}

fn check_topic_fields(topic: &Topic) -> Result<()> {
    if topic.schema_settings.is_some() {
        return Err(ServiceError::unsupported("Topic schema_settings"));
    }
    if topic.ingestion_data_source_settings.is_some() {
        return Err(ServiceError::unsupported(
            "Topic ingestion_data_source_settings",
        ));
    }
    if !topic.message_transforms.is_empty() {
        return Err(ServiceError::unsupported("Topic message_transforms"));
    }
    Ok(())
}

/// What this service delivers: pull only. The same answer over gRPC and REST (whose
/// conversion drops these fields, so it asks before converting).
pub(crate) fn supported_delivery(export: bool, push: bool, transforms: bool) -> Result<()> {
    if export {
        return Err(ServiceError::unsupported(
            "Export subscriptions (BigQuery, Cloud Storage, Bigtable)",
        ));
    }
    if push {
        return Err(ServiceError::unsupported("Push delivery"));
    }
    if transforms {
        return Err(ServiceError::unsupported("Subscription message_transforms"));
    }
    Ok(())
}

/// Validates a subscription and fills the defaults the real service reports back.
fn normalise_subscription(s: &mut Subscription) -> Result<(Option<Filter>, Option<FaultPlan>)> {
    supported_delivery(
        s.bigquery_config.is_some()
            || s.cloud_storage_config.is_some()
            || s.bigtable_config.is_some(),
        s.push_config
            .as_ref()
            .is_some_and(|p| !p.push_endpoint.is_empty()),
        !s.message_transforms.is_empty(),
    )?;
    s.ack_deadline_seconds = limits::check_subscription_ack_deadline(s.ack_deadline_seconds)?;
    let filter = Filter::parse(&s.filter).map_err(|e| ServiceError::invalid(e.to_string()))?;
    if let Some(p) = &mut s.dead_letter_policy {
        if p.dead_letter_topic.is_empty() {
            return Err(ServiceError::invalid(
                "A dead_letter_policy needs a dead_letter_topic.",
            ));
        }
        limits::resource_id(&p.dead_letter_topic, "topics")?;
        if p.max_delivery_attempts == 0 {
            p.max_delivery_attempts = limits::DEFAULT_DELIVERY_ATTEMPTS;
        }
        if !(limits::MIN_DELIVERY_ATTEMPTS..=limits::MAX_DELIVERY_ATTEMPTS)
            .contains(&p.max_delivery_attempts)
        {
            return Err(ServiceError::invalid(format!(
                "Invalid max_delivery_attempts {}: it must be between {} and {}.",
                p.max_delivery_attempts,
                limits::MIN_DELIVERY_ATTEMPTS,
                limits::MAX_DELIVERY_ATTEMPTS
            )));
        }
    }
    if let Some(r) = &mut s.retry_policy {
        let min = r.minimum_backoff.get_or_insert(prost_types::Duration {
            seconds: DEFAULT_MIN_BACKOFF.as_secs() as i64,
            nanos: 0,
        });
        let min = duration_of(min);
        let max = r.maximum_backoff.get_or_insert(prost_types::Duration {
            seconds: DEFAULT_MAX_BACKOFF.as_secs() as i64,
            nanos: 0,
        });
        let max = duration_of(max);
        if min > DEFAULT_MAX_BACKOFF || max > DEFAULT_MAX_BACKOFF || min > max {
            return Err(ServiceError::invalid(format!(
                "Invalid retry_policy {min:?}..{max:?}: both backoffs must be between 0 and 600 s, the minimum not above the maximum."
            )));
        }
    }
    if s.message_retention_duration.is_none() {
        s.message_retention_duration = Some(prost_types::Duration {
            seconds: 7 * 24 * 3600,
            nanos: 0,
        });
    }
    if s.expiration_policy.is_none() {
        s.expiration_policy = Some(proto::ExpirationPolicy {
            ttl: Some(prost_types::Duration {
                seconds: 31 * 24 * 3600,
                nanos: 0,
            }),
        });
    }
    s.state = proto::subscription::State::Active as i32;
    let faults = FaultPlan::from_labels(&s.labels)?;
    Ok((filter, faults))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "projects/p/subscriptions/sub";
    const TOPIC: &str = "projects/p/topics/top";
    const DLQ: &str = "projects/p/topics/dlq";
    const LEASE: Duration = Duration::from_secs(10);

    fn broker(configure: impl FnOnce(&mut Subscription)) -> Broker {
        let mut b = Broker::default();
        for t in [TOPIC, DLQ] {
            b.create_topic(Topic {
                name: t.into(),
                ..Default::default()
            })
            .unwrap();
        }
        let mut s = Subscription {
            name: SUB.into(),
            topic: TOPIC.into(),
            ..Default::default()
        };
        configure(&mut s);
        b.create_subscription(s).unwrap();
        b.create_subscription(Subscription {
            name: "projects/p/subscriptions/dlq-inspect".into(),
            topic: DLQ.into(),
            ..Default::default()
        })
        .unwrap();
        b
    }

    fn publish(b: &mut Broker, key: &str, data: &str, now: Instant) {
        b.publish(
            TOPIC,
            vec![PubsubMessage {
                data: data.as_bytes().to_vec().into(),
                ordering_key: key.into(),
                ..Default::default()
            }],
            now,
        )
        .unwrap();
    }

    fn pull(b: &mut Broker, consumer: ConsumerId, now: Instant) -> Vec<(String, String, i32)> {
        b.pull(SUB, consumer, 100, u64::MAX, LEASE, now)
            .unwrap()
            .into_iter()
            .map(|r| {
                let m = r.message.unwrap_or_default();
                (
                    String::from_utf8_lossy(&m.data).into_owned(),
                    r.ack_id,
                    r.delivery_attempt,
                )
            })
            .collect()
    }

    fn data(got: &[(String, String, i32)]) -> Vec<&str> {
        got.iter().map(|(d, _, _)| d.as_str()).collect()
    }

    fn nack(b: &mut Broker, ack_id: &str, now: Instant) {
        b.modify_ack_deadline(SUB, &[ack_id.to_string()], 0, now)
            .unwrap();
    }

    fn ordered(s: &mut Subscription) {
        s.enable_message_ordering = true;
    }

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum() {
        let s = Duration::from_secs;
        let got: Vec<Duration> = (1..=6).map(|n| backoff(s(1), s(10), n)).collect();
        assert_eq!(got, vec![s(1), s(2), s(4), s(8), s(10), s(10)]);
        assert_eq!(backoff(s(0), s(0), 3), s(0));
        assert_eq!(backoff(s(600), s(600), 100), s(600));
    }

    #[test]
    fn a_nack_brings_back_the_message_and_the_rest_of_its_key_in_order() {
        let now = Instant::now();
        let mut b = broker(ordered);
        for d in ["1", "2", "3"] {
            publish(&mut b, "k", d, now);
        }
        publish(&mut b, "other", "x", now);
        let first = pull(&mut b, 1, now);
        assert_eq!(data(&first), vec!["1", "2", "3", "x"]);
        b.acknowledge(SUB, &[first[0].1.clone()], now).unwrap();
        nack(&mut b, &first[1].1, now);
        // 3's old ack id was revoked with the nack of 2.
        let stale = b.acknowledge(SUB, &[first[2].1.clone()], now).unwrap();
        assert_eq!(stale.invalid, vec![first[2].1.clone()]);
        let again = pull(&mut b, 1, now);
        assert_eq!(data(&again), vec!["2", "3"]);
    }

    #[test]
    fn a_key_stays_with_one_stream_while_it_has_leased_messages() {
        let now = Instant::now();
        let mut b = broker(ordered);
        publish(&mut b, "k", "k1", now);
        let a = pull(&mut b, 1, now);
        assert_eq!(data(&a), vec!["k1"]);
        publish(&mut b, "k", "k2", now);
        publish(&mut b, "j", "j1", now);
        assert_eq!(
            data(&pull(&mut b, 2, now)),
            vec!["j1"],
            "k belongs to stream 1"
        );
        assert_eq!(data(&pull(&mut b, 1, now)), vec!["k2"]);
    }

    #[test]
    fn the_retry_policy_delays_redelivery_from_the_first_nack() {
        let now = Instant::now();
        let mut b = broker(|s| {
            s.retry_policy = Some(proto::RetryPolicy {
                minimum_backoff: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                maximum_backoff: Some(prost_types::Duration {
                    seconds: 3,
                    nanos: 0,
                }),
            })
        });
        publish(&mut b, "", "m", now);
        let mut t = now;
        for wait in [1, 2, 3, 3] {
            let got = pull(&mut b, 1, t);
            assert_eq!(data(&got), vec!["m"]);
            nack(&mut b, &got[0].1, t);
            let just_before = t + Duration::from_secs(wait) - Duration::from_millis(1);
            assert!(
                pull(&mut b, 1, just_before).is_empty(),
                "redelivered before {wait}s"
            );
            t += Duration::from_secs(wait);
        }
        assert_eq!(data(&pull(&mut b, 1, t)), vec!["m"]);
    }

    #[test]
    fn without_a_retry_policy_redelivery_is_immediate() {
        let now = Instant::now();
        let mut b = broker(|_| {});
        publish(&mut b, "", "m", now);
        let got = pull(&mut b, 1, now);
        nack(&mut b, &got[0].1, now);
        assert_eq!(data(&pull(&mut b, 1, now)), vec!["m"]);
    }

    #[test]
    fn an_expired_deadline_counts_as_a_failed_attempt() {
        let now = Instant::now();
        let mut b = broker(|s| {
            s.dead_letter_policy = Some(proto::DeadLetterPolicy {
                dead_letter_topic: DLQ.into(),
                max_delivery_attempts: 5,
            })
        });
        publish(&mut b, "", "m", now);
        let first = pull(&mut b, 1, now);
        assert_eq!(first[0].2, 1);
        assert!(pull(&mut b, 1, now + LEASE - Duration::from_millis(1)).is_empty());
        let later = now + LEASE;
        b.tick(later);
        let second = pull(&mut b, 1, later);
        assert_eq!((second[0].0.as_str(), second[0].2), ("m", 2));
        let expired = b.acknowledge(SUB, &[first[0].1.clone()], later).unwrap();
        assert_eq!(
            expired.invalid.len(),
            1,
            "the first ack id expired with its lease"
        );
    }

    #[test]
    fn an_ordered_message_is_dead_lettered_after_its_last_attempt_and_the_key_goes_on() {
        let now = Instant::now();
        let mut b = broker(|s| {
            s.enable_message_ordering = true;
            s.dead_letter_policy = Some(proto::DeadLetterPolicy {
                dead_letter_topic: DLQ.into(),
                max_delivery_attempts: 5,
            });
        });
        publish(&mut b, "k", "poison", now);
        publish(&mut b, "k", "next", now);
        for attempt in 1..=5 {
            let got = pull(&mut b, 1, now);
            assert_eq!(data(&got), vec!["poison", "next"]);
            assert_eq!(got[0].2, attempt);
            nack(&mut b, &got[0].1, now);
        }
        assert_eq!(data(&pull(&mut b, 1, now)), vec!["next"]);
        let dead = b
            .pull(
                "projects/p/subscriptions/dlq-inspect",
                9,
                10,
                u64::MAX,
                LEASE,
                now,
            )
            .unwrap();
        assert_eq!(dead.len(), 1);
        let m = dead[0].message.clone().unwrap_or_default();
        assert_eq!(&m.data[..], b"poison");
        assert_eq!(m.ordering_key, "k");
        assert_eq!(m.attributes[DEAD_LETTER_DELIVERY_COUNT], "5");
        assert_eq!(m.attributes[DEAD_LETTER_SUBSCRIPTION], "sub");
        assert_eq!(m.attributes[DEAD_LETTER_SUBSCRIPTION_PROJECT], "p");
    }

    #[test]
    fn filtered_out_messages_are_never_delivered_nor_counted() {
        let now = Instant::now();
        let mut b = broker(|s| s.filter = "attributes:keep".into());
        b.publish(
            TOPIC,
            vec![
                PubsubMessage {
                    data: b"drop".to_vec().into(),
                    ..Default::default()
                },
                PubsubMessage {
                    data: b"keep".to_vec().into(),
                    attributes: [("keep".to_string(), "1".to_string())].into(),
                    ..Default::default()
                },
            ],
            now,
        )
        .unwrap();
        assert_eq!(data(&pull(&mut b, 1, now)), vec!["keep"]);
    }

    #[test]
    fn flow_control_counts_what_a_stream_holds() {
        let now = Instant::now();
        let mut b = broker(|_| {});
        for d in ["1", "2", "3"] {
            publish(&mut b, "", d, now);
        }
        let got = b.pull(SUB, 1, 2, u64::MAX, LEASE, now).unwrap();
        assert_eq!(got.len(), 2);
        let sub = b.subscription(SUB).unwrap();
        assert_eq!(sub.outstanding(1).messages, 2);
        b.acknowledge(SUB, &[got[0].ack_id.clone()], now).unwrap();
        assert_eq!(b.subscription(SUB).unwrap().outstanding(1).messages, 1);
    }

    #[test]
    fn bad_configuration_gets_the_real_errors() {
        let mut b = broker(|_| {});
        let mut s = Subscription {
            name: "projects/p/subscriptions/sub2".into(),
            topic: TOPIC.into(),
            ack_deadline_seconds: 9,
            ..Default::default()
        };
        assert_eq!(
            b.create_subscription(s.clone()).unwrap_err().code,
            tonic::Code::InvalidArgument
        );
        s.ack_deadline_seconds = 0;
        s.topic = "projects/p/topics/none".into();
        assert_eq!(
            b.create_subscription(s.clone()).unwrap_err().code,
            tonic::Code::NotFound
        );
        s.topic = TOPIC.into();
        s.filter = "attributes:".into();
        let e = b.create_subscription(s.clone()).unwrap_err();
        assert_eq!(e.code, tonic::Code::InvalidArgument);
        assert!(e.message.contains("position 11"), "{}", e.message);
        s.filter.clear();
        s.dead_letter_policy = Some(proto::DeadLetterPolicy {
            dead_letter_topic: DLQ.into(),
            max_delivery_attempts: 101,
        });
        assert_eq!(
            b.create_subscription(s.clone()).unwrap_err().code,
            tonic::Code::InvalidArgument
        );
        // The dead-letter topic must exist, at creation and at an update.
        s.dead_letter_policy = Some(proto::DeadLetterPolicy {
            dead_letter_topic: "projects/p/topics/no-such-dlq".into(),
            max_delivery_attempts: 5,
        });
        let e = b.create_subscription(s.clone()).unwrap_err();
        assert_eq!(e.code, tonic::Code::NotFound);
        assert!(e.message.contains("no-such-dlq"), "{}", e.message);
        let update = Subscription {
            name: SUB.into(),
            dead_letter_policy: s.dead_letter_policy.clone(),
            ..Default::default()
        };
        assert_eq!(
            b.update_subscription(update, &["dead_letter_policy".into()])
                .unwrap_err()
                .code,
            tonic::Code::NotFound
        );
        assert!(
            b.get_subscription(SUB)
                .unwrap()
                .dead_letter_policy
                .is_none()
        );
        s.dead_letter_policy = None;
        assert_eq!(
            b.create_subscription(s.clone())
                .unwrap()
                .ack_deadline_seconds,
            10
        );
        assert_eq!(
            b.create_subscription(s).unwrap_err().code,
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            b.create_topic(Topic {
                name: "projects/p/topics/ab".into(),
                ..Default::default()
            })
            .unwrap_err()
            .code,
            tonic::Code::InvalidArgument,
            "ids need 3+ characters"
        );
    }

    fn with_labels(labels: &[(&str, &str)]) -> Broker {
        let labels: std::collections::HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        broker(move |s| s.labels = labels)
    }

    #[test]
    fn a_lost_ack_brings_the_message_back_after_its_deadline() {
        let now = Instant::now();
        let mut b = with_labels(&[("rig-fault-lost-ack-permille", "1000")]);
        publish(&mut b, "", "m", now);
        let got = pull(&mut b, 1, now);
        let outcome = b.acknowledge(SUB, &[got[0].1.clone()], now).unwrap();
        assert!(
            outcome.invalid.is_empty(),
            "the subscriber sees a successful ack"
        );
        assert!(pull(&mut b, 1, now + LEASE - Duration::from_millis(1)).is_empty());
        b.tick(now + LEASE);
        assert_eq!(data(&pull(&mut b, 1, now + LEASE)), vec!["m"]);
    }

    #[test]
    fn a_lost_ack_with_a_short_lease_comes_back_when_that_lease_ends() {
        let now = Instant::now();
        let mut b = with_labels(&[
            ("rig-fault-lost-ack-permille", "1000"),
            ("rig-fault-lost-ack-lease-ms", "200"),
        ]);
        publish(&mut b, "", "m", now);
        let got = pull(&mut b, 1, now);
        let acked = now + Duration::from_millis(50);
        b.acknowledge(SUB, &[got[0].1.clone()], acked).unwrap();
        b.tick(acked + Duration::from_millis(199));
        assert!(pull(&mut b, 1, acked + Duration::from_millis(199)).is_empty());
        b.tick(acked + Duration::from_millis(200));
        assert_eq!(
            data(&pull(&mut b, 1, acked + Duration::from_millis(200))),
            vec!["m"]
        );
    }

    #[test]
    fn a_duplicate_is_delivered_again_after_its_ack() {
        let now = Instant::now();
        let mut b = with_labels(&[("rig-fault-duplicate-permille", "1000")]);
        publish(&mut b, "", "m", now);
        let got = pull(&mut b, 1, now);
        b.acknowledge(SUB, &[got[0].1.clone()], now).unwrap();
        assert_eq!(data(&pull(&mut b, 1, now)), vec!["m"]);
    }

    #[test]
    fn a_delayed_message_is_not_deliverable_before_its_delay() {
        let now = Instant::now();
        let mut b = with_labels(&[("rig-fault-delay-ms", "250")]);
        publish(&mut b, "", "m", now);
        assert!(pull(&mut b, 1, now + Duration::from_millis(249)).is_empty());
        assert_eq!(
            data(&pull(&mut b, 1, now + Duration::from_millis(250))),
            vec!["m"]
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let run = |seed: &str| {
            let now = Instant::now();
            let mut b = with_labels(&[
                ("rig-fault-seed", seed),
                ("rig-fault-duplicate-permille", "500"),
            ]);
            let mut redelivered = Vec::new();
            for i in 0..40 {
                publish(&mut b, "", &i.to_string(), now);
                let got = pull(&mut b, 1, now);
                b.acknowledge(SUB, &[got[0].1.clone()], now).unwrap();
                let mut again = pull(&mut b, 1, now);
                redelivered.push(!again.is_empty());
                // Ack duplicates (which may duplicate again) until none is left.
                while !again.is_empty() {
                    for (_, ack, _) in again {
                        b.acknowledge(SUB, &[ack], now).unwrap();
                    }
                    again = pull(&mut b, 1, now);
                }
            }
            redelivered
        };
        assert_eq!(run("7"), run("7"));
        assert_ne!(run("7"), run("8"));
        assert!(run("7").iter().any(|d| *d) && run("7").iter().any(|d| !*d));
    }

    #[test]
    fn unknown_fault_labels_are_refused() {
        let mut b = broker(|_| {});
        let e = b
            .create_subscription(Subscription {
                name: "projects/p/subscriptions/faulty".into(),
                topic: TOPIC.into(),
                labels: [("rig-fault-typo".to_string(), "1".to_string())].into(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e.code, tonic::Code::InvalidArgument);
    }
}
