//! The service's state: topics, subscriptions (each a `SubscriptionState`), snapshots, topic
//! retention and the observation history. Transport-free (gRPC and REST both call it through
//! `service.rs`) and driven by the `now` its callers pass, so tests run it on virtual time.
//!
//! Admin semantics and their sources:
//! - resources, defaults, update masks: <https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.topics>,
//!   <https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions>;
//! - detaching: `Subscription.detached` — "Detached subscriptions don't receive messages from
//!   their topic and don't retain any backlog. `Pull` and `StreamingPull` requests will return
//!   FAILED_PRECONDITION" (<https://cloud.google.com/pubsub/docs/detach-subscriptions>);
//! - retention, snapshots and seek: <https://cloud.google.com/pubsub/docs/replay-overview>;
//! - ack ids: an ack id belongs to the subscription that delivered it; the real service refuses
//!   another subscription's with INVALID_ARGUMENT ("You have passed a subscription that does
//!   not belong to the given ack ID").
//!
//! Delivery itself (leases, ordering, retries, dead letters) is `subscription.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Result, ServiceError};
use crate::faults::FaultPlan;
use crate::filter::Filter;
use crate::history::{Consumer, Event, History, Page, Transport, WallClock, project_of};
use crate::limits;
use crate::proto::{self, PubsubMessage, ReceivedMessage, Snapshot, Subscription, Topic};
use crate::snapshot::{self, SnapshotState};
use crate::subscription::{
    ConsumerId, DEFAULT_MAX_BACKOFF, DEFAULT_MIN_BACKOFF, DeadLetter, Retained, Settled,
    SubscriptionState, duration_of,
};

/// Where a deleted topic's subscriptions point (what the real service reports).
pub const DELETED_TOPIC: &str = "_deleted-topic_";

const DEFAULT_EXPIRATION: Duration = Duration::from_secs(31 * 24 * 3600);
const MIN_EXPIRATION: Duration = Duration::from_secs(24 * 3600);

struct TopicState {
    topic: Topic,
    uid: u64,
    subscriptions: BTreeSet<String>,
    snapshots: BTreeSet<String>,
    /// With `message_retention_duration` set: every message of the window, oldest first.
    retained: VecDeque<(u64, Retained)>,
}

impl TopicState {
    fn prune(&mut self, now: Instant) {
        let Some(window) = self
            .topic
            .message_retention_duration
            .as_ref()
            .map(duration_of)
        else {
            self.retained.clear();
            return;
        };
        while self
            .retained
            .front()
            .is_some_and(|(_, r)| r.published + window <= now)
        {
            self.retained.pop_front();
        }
    }
}

/// All topics, subscriptions and snapshots.
pub struct Broker {
    topics: HashMap<String, TopicState>,
    subscriptions: HashMap<String, SubscriptionState>,
    snapshots: HashMap<String, SnapshotState>,
    next_message_id: u64,
    next_ack_id: u64,
    next_consumer: ConsumerId,
    next_uid: u64,
    clock: WallClock,
    history: History,
    /// Wakes every stream when the service stops or a subscription goes away.
    pub closing: Arc<Notify>,
}

impl Default for Broker {
    fn default() -> Self {
        Self::new(WallClock::now())
    }
}

/// Which ack ids of a request failed, for exactly-once delivery's per-id errors.
#[derive(Debug, Default)]
pub struct AckOutcome {
    pub invalid: Vec<String>,
}

enum AckIdProblem {
    Malformed,
    /// Issued by another subscription (or one since deleted).
    Foreign,
}

/// Ack ids read `{subscription uid}-{lease number}`: opaque to clients, but the service can
/// tell another subscription's ids from its own.
fn parse_ack_id(id: &str, uid: u64) -> std::result::Result<u64, AckIdProblem> {
    let (sub, n) = id.split_once('-').ok_or(AckIdProblem::Malformed)?;
    let sub: u64 = sub.parse().map_err(|_| AckIdProblem::Malformed)?;
    let n: u64 = n.parse().map_err(|_| AckIdProblem::Malformed)?;
    if sub != uid {
        return Err(AckIdProblem::Foreign);
    }
    Ok(n)
}

/// Parses a request's ack ids. A unary request with a malformed or foreign id is refused as a
/// whole, before anything changes (as the real service refuses it); on a stream such ids are
/// just invalid, like expired ones.
fn parse_ack_ids(
    subscription: &str,
    ack_ids: &[String],
    uid: u64,
    strict: bool,
) -> Result<Vec<Option<u64>>> {
    let mut out = Vec::with_capacity(ack_ids.len());
    for id in ack_ids {
        match parse_ack_id(id, uid) {
            Ok(n) => out.push(Some(n)),
            Err(_) if !strict => out.push(None),
            Err(AckIdProblem::Malformed) => {
                return Err(ServiceError::invalid(format!(
                    "Invalid ack ID {id:?}: it is not an ack ID this service issued."
                )));
            }
            Err(AckIdProblem::Foreign) => {
                return Err(ServiceError::invalid(format!(
                    "You have passed a subscription that does not belong to the given ack ID (resource={subscription}, ack ID {id:?})."
                )));
            }
        }
    }
    Ok(out)
}

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn before(a: &prost_types::Timestamp, b: &prost_types::Timestamp) -> bool {
    (a.seconds, a.nanos) < (b.seconds, b.nanos)
}

impl Broker {
    pub fn new(clock: WallClock) -> Self {
        Self {
            topics: HashMap::new(),
            subscriptions: HashMap::new(),
            snapshots: HashMap::new(),
            next_message_id: 0,
            next_ack_id: 0,
            next_consumer: 0,
            next_uid: 0,
            history: History::with_clock(clock),
            clock,
            closing: Arc::new(Notify::new()),
        }
    }

    pub fn new_consumer(&mut self) -> ConsumerId {
        self.next_consumer += 1;
        self.next_consumer
    }

    fn new_uid(&mut self) -> u64 {
        self.next_uid += 1;
        self.next_uid
    }

    /// Moves what a subscription recorded into the history.
    pub fn flush(&mut self, subscription: &str, now: Instant) {
        let Some(sub) = self.subscriptions.get_mut(subscription) else {
            return;
        };
        if sub.events.is_empty() {
            return;
        }
        let events = std::mem::take(&mut sub.events);
        for (transport, event) in events {
            self.history.push(&sub.project, now, transport, event);
        }
    }

    fn record(
        &mut self,
        name: &str,
        now: Instant,
        transport: Transport,
        event: impl FnOnce() -> Event,
    ) {
        let project = project_of(name);
        if self.history.is_recording(project) {
            let project = project.to_string();
            self.history.push(&project, now, transport, event());
        }
    }

    // ---- observation ---------------------------------------------------------------------

    /// Starts recording `project`'s history; returns the last sequence number so far.
    pub fn history_start(&mut self, project: &str) -> u64 {
        let last = self.history.start(project);
        for sub in self.subscriptions.values_mut() {
            if sub.project == project {
                sub.recording = true;
            }
        }
        last
    }

    pub fn history_stop(&mut self, project: &str) {
        self.history.stop(project);
        for sub in self.subscriptions.values_mut() {
            if sub.project == project {
                sub.recording = false;
                sub.events.clear();
            }
        }
    }

    pub fn history_clear(&mut self, project: &str) {
        self.history_stop(project);
        self.history.clear(project);
    }

    pub fn history_page(&self, project: &str, after: u64, limit: usize) -> Page {
        self.history.page(project, after, limit)
    }

    // ---- topics -------------------------------------------------------------------------

    pub fn create_topic(&mut self, mut topic: Topic) -> Result<Topic> {
        limits::resource_id(&topic.name, "topics")?;
        if self.topics.contains_key(&topic.name) {
            return Err(ServiceError::already_exists("Topic", &topic.name));
        }
        check_topic_fields(&topic)?;
        limits::check_retention("topic", topic.message_retention_duration.as_ref())?;
        topic.state = proto::topic::State::Active as i32;
        let uid = self.new_uid();
        self.topics.insert(
            topic.name.clone(),
            TopicState {
                topic: topic.clone(),
                uid,
                subscriptions: BTreeSet::new(),
                snapshots: BTreeSet::new(),
                retained: VecDeque::new(),
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

    pub fn update_topic(&mut self, topic: Topic, mask: &[String], now: Instant) -> Result<Topic> {
        limits::resource_id(&topic.name, "topics")?;
        if mask.is_empty() {
            return Err(ServiceError::invalid(
                "The update_mask in the UpdateTopicRequest must be set, and must contain a non-empty paths list.",
            ));
        }
        let state = self
            .topics
            .get_mut(&topic.name)
            .ok_or_else(|| ServiceError::not_found("Topic", &topic.name))?;
        let mut next = state.topic.clone();
        for path in mask {
            match path.as_str() {
                "labels" => next.labels = topic.labels.clone(),
                "message_retention_duration" => {
                    next.message_retention_duration = topic.message_retention_duration
                }
                "message_storage_policy" => {
                    next.message_storage_policy = topic.message_storage_policy.clone()
                }
                "kms_key_name" => next.kms_key_name = topic.kms_key_name.clone(),
                "schema_settings" => next.schema_settings = topic.schema_settings.clone(),
                "ingestion_data_source_settings" => {
                    next.ingestion_data_source_settings =
                        topic.ingestion_data_source_settings.clone()
                }
                "message_transforms" => next.message_transforms = topic.message_transforms.clone(),
                other => {
                    return Err(ServiceError::invalid(format!(
                        "Invalid update_mask provided in the UpdateTopicRequest: {other} is not a known Topic field."
                    )));
                }
            }
        }
        check_topic_fields(&next)?;
        limits::check_retention("topic", next.message_retention_duration.as_ref())?;
        state.topic = next.clone();
        state.prune(now);
        Ok(next)
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

    /// The topic's subscriptions, detached ones left out (they are no longer the topic's).
    pub fn topic_subscriptions(&self, topic: &str) -> Result<Vec<String>> {
        limits::resource_id(topic, "topics")?;
        self.topics
            .get(topic)
            .map(|t| t.subscriptions.iter().cloned().collect())
            .ok_or_else(|| ServiceError::not_found("Topic", topic))
    }

    pub fn topic_snapshots(&self, topic: &str) -> Result<Vec<String>> {
        limits::resource_id(topic, "topics")?;
        self.topics
            .get(topic)
            .map(|t| t.snapshots.iter().cloned().collect())
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
                sub.topic_uid = 0;
            }
        }
        Ok(())
    }

    /// Publishes `messages` to `topic`; returns their ids.
    pub fn publish(
        &mut self,
        topic: &str,
        messages: Vec<PubsubMessage>,
        transport: Transport,
        now: Instant,
    ) -> Result<Vec<String>> {
        limits::resource_id(topic, "topics")?;
        limits::check_publish(&messages)?;
        let publish_time = timestamp(self.clock.wall(now));
        let recording = self.history.is_recording(project_of(topic));
        let state = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| ServiceError::not_found("Topic", topic))?;
        let retains = state.topic.message_retention_duration.is_some();
        let mut ids = Vec::with_capacity(messages.len());
        let mut published = Vec::with_capacity(messages.len());
        for mut m in messages {
            self.next_message_id += 1;
            let seq = self.next_message_id;
            m.message_id = seq.to_string();
            m.publish_time = Some(publish_time);
            ids.push(m.message_id.clone());
            let m = Arc::new(m);
            if retains {
                state.retained.push_back((
                    seq,
                    Retained {
                        message: m.clone(),
                        published: now,
                    },
                ));
            }
            published.push((seq, m));
        }
        state.prune(now);
        for name in &state.snapshots {
            if let Some(snap) = self.snapshots.get_mut(name) {
                for (seq, m) in &published {
                    snap.messages.insert(
                        *seq,
                        Retained {
                            message: m.clone(),
                            published: now,
                        },
                    );
                }
            }
        }
        for name in &state.subscriptions {
            if let Some(sub) = self.subscriptions.get_mut(name) {
                for (seq, m) in &published {
                    sub.enqueue(*seq, m.clone(), now, now, transport);
                }
            }
        }
        let subscriptions: Vec<String> = state
            .subscriptions
            .iter()
            .filter(|s| {
                self.subscriptions
                    .get(*s)
                    .is_some_and(|s| !s.events.is_empty())
            })
            .cloned()
            .collect();
        if recording {
            let project = project_of(topic).to_string();
            for (_, m) in &published {
                self.history.push(
                    &project,
                    now,
                    transport,
                    Event::Publish {
                        topic: topic.to_string(),
                        message_id: m.message_id.clone(),
                        ordering_key: m.ordering_key.clone(),
                        attributes: m
                            .attributes
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        data_bytes: m.data.len(),
                        publish_time: publish_time.to_string(),
                    },
                );
            }
        }
        for name in subscriptions {
            self.flush(&name, now);
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
        let topic_uid = self
            .topics
            .get(&s.topic)
            .map(|t| t.uid)
            .ok_or_else(|| ServiceError::not_found("Topic", &s.topic))?;
        let (filter, faults) = normalise_subscription(&mut s)?;
        self.check_dead_letter_topic(&s)?;
        if !s.detached
            && let Some(t) = self.topics.get_mut(&s.topic)
        {
            t.subscriptions.insert(s.name.clone());
        }
        let uid = self.new_uid();
        let mut state = SubscriptionState::new(s.clone(), uid, topic_uid, filter, faults);
        state.recording = self.history.is_recording(&state.project);
        self.subscriptions.insert(s.name.clone(), state);
        Ok(self.view(s))
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

    /// A subscription as the API reports it: with its topic's retention.
    fn view(&self, mut s: Subscription) -> Subscription {
        s.topic_message_retention_duration = self
            .topics
            .get(&s.topic)
            .and_then(|t| t.topic.message_retention_duration);
        s
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

    /// The subscription, if messages may be pulled from it.
    fn attached_mut(&mut self, name: &str) -> Result<&mut SubscriptionState> {
        let sub = self.subscription_mut(name)?;
        if sub.config.detached {
            return Err(ServiceError::failed_precondition(
                "Subscription is detached.",
            ));
        }
        Ok(sub)
    }

    pub fn get_subscription(&self, name: &str) -> Result<Subscription> {
        let s = self.subscription(name)?.config.clone();
        Ok(self.view(s))
    }

    pub fn update_subscription(
        &mut self,
        update: Subscription,
        mask: &[String],
    ) -> Result<Subscription> {
        if mask.is_empty() {
            return Err(ServiceError::invalid(
                "The update_mask in the UpdateSubscriptionRequest must be set, and must contain a non-empty paths list.",
            ));
        }
        let current = self.subscription(&update.name)?.config.clone();
        let mut next = current.clone();
        for path in mask {
            match path.as_str() {
                "ack_deadline_seconds" => next.ack_deadline_seconds = update.ack_deadline_seconds,
                "retain_acked_messages" => {
                    next.retain_acked_messages = update.retain_acked_messages
                }
                "message_retention_duration" => {
                    next.message_retention_duration = update.message_retention_duration
                }
                "labels" => next.labels = update.labels.clone(),
                "expiration_policy" => next.expiration_policy = update.expiration_policy,
                "dead_letter_policy" => next.dead_letter_policy = update.dead_letter_policy.clone(),
                "retry_policy" => next.retry_policy = update.retry_policy,
                "push_config" => next.push_config = update.push_config.clone(),
                "enable_exactly_once_delivery" => {
                    next.enable_exactly_once_delivery = update.enable_exactly_once_delivery
                }
                "bigquery_config" | "cloud_storage_config" | "bigtable_config" => {
                    next.bigquery_config = update.bigquery_config.clone();
                    next.cloud_storage_config = update.cloud_storage_config.clone();
                    next.bigtable_config = update.bigtable_config.clone();
                }
                "message_transforms" => next.message_transforms = update.message_transforms.clone(),
                "filter" => {
                    return Err(ServiceError::invalid(
                        "A subscription's filter cannot be changed after creation.",
                    ));
                }
                field @ ("enable_message_ordering" | "topic" | "detached") => {
                    return Err(ServiceError::invalid(format!(
                        "Invalid update_mask provided in the UpdateSubscriptionRequest: the {field} field in the Subscription is not mutable."
                    )));
                }
                other => {
                    return Err(ServiceError::invalid(format!(
                        "Invalid update_mask provided in the UpdateSubscriptionRequest: {other} is not a known Subscription field."
                    )));
                }
            }
        }
        let (_, faults) = normalise_subscription(&mut next)?;
        self.check_dead_letter_topic(&next)?;
        let sub = self.subscription_mut(&update.name)?;
        if !next.retain_acked_messages {
            sub.drop_retained();
        }
        sub.config = next.clone();
        // Takes effect at once: the next delivery, ack or batch rolls under the new plan.
        sub.set_faults(faults);
        Ok(self.view(next))
    }

    pub fn list_subscriptions(&self, project: &str) -> Vec<Subscription> {
        let prefix = format!("projects/{project}/subscriptions/");
        let mut subs: Vec<Subscription> = self
            .subscriptions
            .values()
            .filter(|s| s.config.name.starts_with(&prefix))
            .map(|s| self.view(s.config.clone()))
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

    /// Detaches the subscription from its topic: its backlog goes, it gets no more messages,
    /// pulls fail with FAILED_PRECONDITION, and its topic no longer lists it.
    pub fn detach_subscription(&mut self, name: &str) -> Result<()> {
        let sub = self.subscription_mut(name)?;
        sub.config.detached = true;
        sub.purge();
        sub.drop_retained();
        let topic = sub.config.topic.clone();
        if let Some(t) = self.topics.get_mut(&topic) {
            t.subscriptions.remove(name);
        }
        self.closing.notify_waiters();
        Ok(())
    }

    // ---- delivery -----------------------------------------------------------------------

    /// Expires leases and snapshots everywhere and forwards what that dead-letters.
    pub fn tick(&mut self, now: Instant) {
        let mut dead = Vec::new();
        let mut touched = Vec::new();
        for (name, sub) in self.subscriptions.iter_mut() {
            if sub.next_deadline().is_some_and(|d| d <= now) {
                dead.extend(sub.expire(now));
                touched.push(name.clone());
            }
        }
        for name in touched {
            self.flush(&name, now);
        }
        self.expire_snapshots(now);
        for (d, transport) in dead {
            self.forward(d, transport, now);
        }
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let leases = self
            .subscriptions
            .values()
            .filter_map(SubscriptionState::next_deadline)
            .min();
        let snapshots = self.snapshots.values().map(|s| s.expires_at).min();
        match (leases, snapshots) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn forward(&mut self, d: DeadLetter, transport: Transport, now: Instant) {
        let mut m = d.message;
        m.message_id.clear();
        m.publish_time = None;
        if let Err(e) = self.publish(&d.topic, vec![m], transport, now) {
            // The real service keeps retrying; a missing dead-letter topic loses it here.
            tracing::warn!("dead-letter forwarding to {} failed: {e}", d.topic);
        }
    }

    /// A StreamingPull opens on `subscription`: its consumer id.
    pub fn open_stream(&mut self, subscription: &str, now: Instant) -> Result<ConsumerId> {
        self.attached_mut(subscription)?;
        let stream = self.new_consumer();
        self.record(subscription, now, Transport::GrpcStream, || {
            Event::StreamOpened {
                subscription: subscription.to_string(),
                stream,
            }
        });
        Ok(stream)
    }

    pub fn close_stream(
        &mut self,
        subscription: &str,
        stream: ConsumerId,
        reason: &str,
        now: Instant,
    ) {
        if let Some(sub) = self.subscriptions.get_mut(subscription) {
            sub.end_consumer(stream);
        }
        self.record(subscription, now, Transport::GrpcStream, || {
            Event::StreamClosed {
                subscription: subscription.to_string(),
                stream,
                reason: reason.to_string(),
            }
        });
    }

    /// A unary Pull arrives: its consumer id (one per request, so that a key it leases is held
    /// for it alone).
    pub fn pull_request(
        &mut self,
        subscription: &str,
        max_messages: i32,
        transport: Transport,
        now: Instant,
    ) -> Result<ConsumerId> {
        self.attached_mut(subscription)?;
        let pull = self.new_consumer();
        self.record(subscription, now, transport, || Event::PullRequest {
            subscription: subscription.to_string(),
            pull,
            max_messages,
        });
        Ok(pull)
    }

    /// Leases messages of `subscription` to `consumer`.
    #[allow(clippy::too_many_arguments)]
    pub fn pull(
        &mut self,
        subscription: &str,
        consumer: Consumer,
        transport: Transport,
        max_messages: usize,
        max_bytes: u64,
        lease: Duration,
        now: Instant,
    ) -> Result<Vec<ReceivedMessage>> {
        let mut next_ack_id = self.next_ack_id;
        let sub = self.attached_mut(subscription)?;
        let dead = if sub.next_deadline().is_some_and(|d| d <= now) {
            sub.expire(now)
        } else {
            Vec::new()
        };
        let out = sub.take(
            now,
            consumer,
            transport,
            max_messages,
            max_bytes,
            lease,
            &mut next_ack_id,
        );
        self.next_ack_id = next_ack_id;
        self.flush(subscription, now);
        for (d, t) in dead {
            self.forward(d, t, now);
        }
        Ok(out)
    }

    /// Ack ids of a batch that never reached its stream: their messages go back at once.
    pub fn undelivered(&mut self, subscription: &str, ack_ids: &[String], now: Instant) {
        let Some(sub) = self.subscriptions.get_mut(subscription) else {
            return;
        };
        let uid = sub.uid;
        for id in ack_ids {
            if let Ok(n) = parse_ack_id(id, uid) {
                sub.undelivered(n, now);
            }
        }
        self.flush(subscription, now);
    }

    pub fn acknowledge(
        &mut self,
        subscription: &str,
        ack_ids: &[String],
        transport: Transport,
        now: Instant,
    ) -> Result<AckOutcome> {
        let sub = self.subscription_mut(subscription)?;
        let strict = transport != Transport::GrpcStream;
        let parsed = parse_ack_ids(subscription, ack_ids, sub.uid, strict)?;
        let mut outcome = AckOutcome::default();
        for (id, n) in ack_ids.iter().zip(parsed) {
            let done = n.is_some_and(|n| sub.ack(n, now, transport) == Settled::Done);
            if !done {
                outcome.invalid.push(id.clone());
            }
        }
        self.flush(subscription, now);
        Ok(outcome)
    }

    /// Sets the deadline of each ack id to `seconds` from now; `0` is a nack.
    pub fn modify_ack_deadline(
        &mut self,
        subscription: &str,
        ack_ids: &[String],
        seconds: i32,
        transport: Transport,
        now: Instant,
    ) -> Result<AckOutcome> {
        limits::check_modify_deadline(seconds)?;
        let sub = self.subscription_mut(subscription)?;
        let strict = transport != Transport::GrpcStream;
        let parsed = parse_ack_ids(subscription, ack_ids, sub.uid, strict)?;
        let mut outcome = AckOutcome::default();
        let mut dead = Vec::new();
        for (id, n) in ack_ids.iter().zip(parsed) {
            let Some(n) = n else {
                outcome.invalid.push(id.clone());
                continue;
            };
            let (settled, d) = sub.modify(n, seconds, now, transport);
            if settled == Settled::Stale {
                outcome.invalid.push(id.clone());
            }
            dead.extend(d);
        }
        self.flush(subscription, now);
        for d in dead {
            self.forward(d, transport, now);
        }
        Ok(outcome)
    }

    // ---- snapshots and seek -------------------------------------------------------------

    pub fn create_snapshot(
        &mut self,
        mut name: String,
        subscription: &str,
        labels: HashMap<String, String>,
        now: Instant,
    ) -> Result<Snapshot> {
        if subscription.is_empty() {
            return Err(ServiceError::not_found("Subscription", subscription));
        }
        let sub = self.subscription(subscription)?;
        if name.is_empty() {
            // "If the name is not provided in the request, the server will assign a random
            // name for this snapshot on the same project as the subscription."
            name = format!(
                "projects/{}/snapshots/snapshot-{}",
                sub.project,
                self.next_uid + 1
            );
        }
        limits::resource_id(&name, "snapshots")?;
        if self.snapshots.contains_key(&name) {
            return Err(ServiceError::already_exists("Snapshot", &name));
        }
        let messages = sub.unacked();
        let oldest = messages.values().map(|r| r.published).min();
        let expires_at = snapshot::expiry(oldest, now)?;
        let config = Snapshot {
            name: name.clone(),
            topic: sub.config.topic.clone(),
            expire_time: Some(timestamp(self.clock.wall(expires_at))),
            labels,
        };
        let topic_uid = sub.topic_uid;
        if let Some(t) = self.topics.get_mut(&config.topic)
            && t.uid == topic_uid
        {
            t.snapshots.insert(name.clone());
        }
        self.new_uid();
        self.snapshots.insert(
            name,
            SnapshotState {
                config: config.clone(),
                topic_uid,
                messages,
                expires_at,
            },
        );
        Ok(config)
    }

    pub fn get_snapshot(&self, name: &str) -> Result<Snapshot> {
        limits::resource_id(name, "snapshots")?;
        self.snapshots
            .get(name)
            .map(|s| s.config.clone())
            .ok_or_else(|| ServiceError::not_found("Snapshot", name))
    }

    pub fn list_snapshots(&self, project: &str) -> Vec<Snapshot> {
        let prefix = format!("projects/{project}/snapshots/");
        let mut all: Vec<Snapshot> = self
            .snapshots
            .values()
            .filter(|s| s.config.name.starts_with(&prefix))
            .map(|s| s.config.clone())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Updates `labels` and `expire_time` (an expiry no later than the snapshot's own).
    pub fn update_snapshot(&mut self, update: Snapshot, mask: &[String]) -> Result<Snapshot> {
        limits::resource_id(&update.name, "snapshots")?;
        if mask.is_empty() {
            return Err(ServiceError::invalid(
                "The update_mask in the UpdateSnapshotRequest must be set, and must contain a non-empty paths list.",
            ));
        }
        let snap = self
            .snapshots
            .get_mut(&update.name)
            .ok_or_else(|| ServiceError::not_found("Snapshot", &update.name))?;
        let mut next = snap.config.clone();
        let mut expires_at = snap.expires_at;
        for path in mask {
            match path.as_str() {
                "labels" => next.labels = update.labels.clone(),
                "expire_time" => {
                    let want = update.expire_time.ok_or_else(|| {
                        ServiceError::invalid("expire_time is in the update_mask but not set.")
                    })?;
                    let current = next.expire_time.unwrap_or_default();
                    if before(&current, &want) {
                        return Err(ServiceError::invalid(
                            "A snapshot's expire_time can only be moved earlier: its lifetime is bounded by its backlog.",
                        ));
                    }
                    let earlier =
                        Duration::from_secs((current.seconds - want.seconds).max(0) as u64);
                    expires_at = expires_at.checked_sub(earlier).unwrap_or(expires_at);
                    next.expire_time = Some(want);
                }
                "name" | "topic" => {
                    return Err(ServiceError::invalid(format!(
                        "Invalid update_mask provided in the UpdateSnapshotRequest: the {path} field in the Snapshot is not mutable."
                    )));
                }
                other => {
                    return Err(ServiceError::invalid(format!(
                        "Invalid update_mask provided in the UpdateSnapshotRequest: {other} is not a known Snapshot field."
                    )));
                }
            }
        }
        snap.config = next.clone();
        snap.expires_at = expires_at;
        Ok(next)
    }

    pub fn delete_snapshot(&mut self, name: &str) -> Result<()> {
        limits::resource_id(name, "snapshots")?;
        let snap = self
            .snapshots
            .remove(name)
            .ok_or_else(|| ServiceError::not_found("Snapshot", name))?;
        if let Some(t) = self.topics.get_mut(&snap.config.topic) {
            t.snapshots.remove(name);
        }
        Ok(())
    }

    fn expire_snapshots(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .snapshots
            .iter()
            .filter(|(_, s)| s.expires_at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            // Already known to exist: the error cannot happen.
            let _ = self.delete_snapshot(&name);
        }
    }

    /// Seeks `subscription` to a time (messages published before it become acknowledged, the
    /// rest unacknowledged, among those the subscription retains) or to a snapshot (its
    /// messages become the unacknowledged backlog). Every outstanding ack id dies.
    pub fn seek(
        &mut self,
        subscription: &str,
        target: Option<proto::seek_request::Target>,
        transport: Transport,
        now: Instant,
    ) -> Result<()> {
        let sub = self.subscription(subscription)?;
        if sub.config.detached {
            return Err(ServiceError::failed_precondition(
                "Subscription is detached.",
            ));
        }
        let mut all = sub.unacked();
        all.extend(sub.acknowledged());
        let (backlog, acknowledged, shown) = match target {
            None => {
                return Err(ServiceError::invalid(
                    "A Seek needs a target: a time or a snapshot.",
                ));
            }
            Some(proto::seek_request::Target::Time(at)) => {
                if let Some(t) = self.topics.get(&sub.config.topic)
                    && t.uid == sub.topic_uid
                {
                    for (seq, r) in &t.retained {
                        if sub.matches(&r.message) {
                            all.entry(*seq).or_insert_with(|| r.clone());
                        }
                    }
                }
                let (acknowledged, backlog): (BTreeMap<u64, Retained>, BTreeMap<u64, Retained>) =
                    all.into_iter().partition(|(_, r)| {
                        r.message
                            .publish_time
                            .as_ref()
                            .is_some_and(|p| before(p, &at))
                    });
                (backlog, acknowledged, at.to_string())
            }
            Some(proto::seek_request::Target::Snapshot(name)) => {
                limits::resource_id(&name, "snapshots")?;
                let snap = self
                    .snapshots
                    .get(&name)
                    .ok_or_else(|| ServiceError::not_found("Snapshot", &name))?;
                if snap.topic_uid == 0 || snap.topic_uid != sub.topic_uid {
                    return Err(ServiceError::failed_precondition(format!(
                        "The subscription's topic {} is different from that of the snapshot {}; they must match for Seek to work (a topic deleted and re-created under the same name is another topic).",
                        sub.config.topic, snap.config.topic
                    )));
                }
                let backlog = snap.messages.clone();
                let acknowledged = all
                    .into_iter()
                    .filter(|(seq, _)| !backlog.contains_key(seq))
                    .collect();
                (backlog, acknowledged, name)
            }
        };
        let sub = self.subscription_mut(subscription)?;
        sub.reset(backlog, acknowledged, now);
        let size = sub.backlog_len();
        self.record(subscription, now, transport, || Event::Seek {
            subscription: subscription.to_string(),
            target: shown,
            backlog: size,
        });
        self.closing.notify_waiters();
        Ok(())
    }
}

fn check_topic_fields(topic: &Topic) -> Result<()> {
    if topic.schema_settings.is_some() {
        return Err(ServiceError::unsupported("Topic schema_settings (schemas)"));
    }
    if topic.ingestion_data_source_settings.is_some() {
        return Err(ServiceError::unsupported(
            "Topic ingestion_data_source_settings (ingestion)",
        ));
    }
    if !topic.message_transforms.is_empty() {
        return Err(ServiceError::unsupported("Topic message_transforms"));
    }
    Ok(())
}

/// What this service delivers: pull only.
fn supported_delivery(s: &Subscription) -> Result<()> {
    if s.bigquery_config.is_some()
        || s.cloud_storage_config.is_some()
        || s.bigtable_config.is_some()
    {
        return Err(ServiceError::unsupported(
            "Export subscriptions (BigQuery, Cloud Storage, Bigtable)",
        ));
    }
    if s.push_config.as_ref().is_some_and(|p| {
        !p.push_endpoint.is_empty() || p.authentication_method.is_some() || p.wrapper.is_some()
    }) {
        return Err(ServiceError::unsupported("Push delivery"));
    }
    if !s.message_transforms.is_empty() {
        return Err(ServiceError::unsupported("Subscription message_transforms"));
    }
    Ok(())
}

/// Validates a subscription and fills the defaults the real service reports back.
fn normalise_subscription(s: &mut Subscription) -> Result<(Option<Filter>, Option<FaultPlan>)> {
    supported_delivery(s)?;
    s.ack_deadline_seconds = limits::check_subscription_ack_deadline(s.ack_deadline_seconds)?;
    limits::check_retention("subscription", s.message_retention_duration.as_ref())?;
    let filter = Filter::parse(&s.filter)
        .map_err(|e| ServiceError::invalid(e.to_string()).with_source(e))?;
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
            seconds: limits::DEFAULT_RETENTION.as_secs() as i64,
            nanos: 0,
        });
    }
    match &mut s.expiration_policy {
        None => {
            s.expiration_policy = Some(proto::ExpirationPolicy {
                ttl: Some(prost_types::Duration {
                    seconds: DEFAULT_EXPIRATION.as_secs() as i64,
                    nanos: 0,
                }),
            });
        }
        // "If expiration_policy is set, but expiration_policy.ttl is not set, the subscription
        // never expires"; a zero ttl says the same.
        Some(p) if p.ttl.is_some_and(|t| t.seconds == 0 && t.nanos == 0) => p.ttl = None,
        // "The minimum allowed value for expiration_policy.ttl is 1 day."
        Some(p)
            if p.ttl
                .as_ref()
                .is_some_and(|t| duration_of(t) < MIN_EXPIRATION) =>
        {
            return Err(ServiceError::invalid(
                "Invalid expiration_policy.ttl: the minimum is 1 day (86400s).",
            ));
        }
        Some(_) => {}
    }
    // A subscription without push configuration is a pull subscription, reported as such.
    s.push_config.get_or_insert_with(proto::PushConfig::default);
    s.state = proto::subscription::State::Active as i32;
    let faults = FaultPlan::from_labels(&s.labels)?;
    Ok((filter, faults))
}

#[cfg(test)]
mod tests;
