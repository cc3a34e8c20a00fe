//! The ingest logic of one ordering key's batch, apart from its I/O: what to append, publish,
//! dead-letter, ack and nack, and in which order. Everything it asks of the world goes through
//! [`Io`] (the event store, the bucket, the publishers, the clock), so its tests run on plain
//! values and virtual time, the way `pubsub-service`'s broker is tested; the worker's module
//! plugs in the real clients.
//!
//! The rules, message by message, are the ones in the worker's module docs and
//! docs/reliability.md ("Batches").

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use google_cloud_pubsub::model::Message;

use super::{Fault, Faults, PUBLISHED_MEMORY, WorkerOptions, WorkerStats};
use crate::claim_check::ClaimError;
use crate::envelope::{self, ClaimRef, PayloadSource};
use crate::event_store::{AppendError, Appended, NewEvent};

/// Payload bytes a group holds before it is appended (claim-checked payloads are fetched
/// into memory first).
const GROUP_BYTES: usize = 16 * 1024 * 1024;

/// Why a publish failed (the client's error, kept as the source).
pub(super) type PublishError = Box<dyn std::error::Error + Send + Sync>;

/// What the ingest logic asks of the world. The worker's implementation is its clients
/// (`super::Clients`); the tests' keeps a ledger and the topics in memory.
pub(super) trait Io: Send + Sync + 'static {
    /// Reads a claim-checked payload (checked against its size and SHA-256 when `verify`).
    fn fetch_claim(
        &self,
        claim: &ClaimRef,
        verify: bool,
    ) -> impl Future<Output = Result<String, ClaimError>> + Send;
    /// Appends `events` with one statement: each event's outcome, or the statement's failure.
    fn append(
        &self,
        events: &[NewEvent],
    ) -> impl Future<Output = Result<Vec<Result<Appended, AppendError>>, sqlx::Error>> + Send;
    /// Publishes to `events.merged`. The future owns what it needs, so several can be in
    /// flight at once.
    fn publish_merged(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<(), PublishError>> + Send + 'static;
    /// After a failed publish the client pauses the ordering key: let it go on.
    fn resume_merged(&self, ordering_key: &str);
    fn publish_dead_letter(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
    fn now(&self) -> Instant;
}

/// How one delivery ended.
pub(super) enum Disposition {
    Ack,
    /// Failed for a reason a retry may cure (the database or GCS unavailable, ...).
    Nack(String),
}

/// What the worker needs of a delivery: its attempt number, and settling it. The subscriber's
/// [`Handler`] in production; the unit tests record the outcome instead.
pub(super) trait Delivery: Send {
    /// The delivery attempt as the service counts it (1 when it does not count).
    fn attempt(&self) -> u32;
    fn ack(self);
    fn nack(self);
}

/// How checking a message before the append ended.
enum Prepared {
    /// A valid event, to append.
    Event(NewEvent),
    /// Bad input: to be dead-lettered with this reason.
    Bad(String),
    /// A failure a retry may cure: to be nacked with this reason.
    Failed(String),
}

/// A checked message of a batch, on its way to the ledger and merged.
struct Member<D> {
    message: Message,
    delivery: D,
    attempt: u32,
    event: NewEvent,
    appending: Appending,
    /// Whether the `after_append` fault was asked (once per delivery).
    checked: bool,
    /// How it is to be settled on its own, once decided (kept if it has to wait its turn).
    own: Option<Own>,
}

impl<D> Member<D> {
    /// Whether its append failed in a way a retry may cure, so that coming round again it is
    /// appended again.
    fn retry_append(&self) -> bool {
        matches!(
            self.appending,
            Appending::Failed(_) | Appending::Done(Err(AppendError::Database(_)))
        )
    }
}

/// Where a member's event is in the ledger.
enum Appending {
    /// Not appended (yet, or again).
    Pending,
    /// The statement's outcome for this event.
    Done(Result<Appended, AppendError>),
    /// The statement failed as a whole (the database unavailable, ...).
    Failed(String),
}

/// An appended event that is not simply published: it is settled on its own, after what
/// precedes it.
enum Own {
    Nack(String),
    DeadLetter(String),
}

/// The failed message `message` has to wait for, if its key is blocked by another one.
fn blocker_of(blocked: &Option<(String, Instant)>, message: &Message) -> Option<String> {
    blocked
        .as_ref()
        .filter(|(blocker, _)| *blocker != message.message_id)
        .map(|(blocker, _)| blocker.clone())
}

/// The ingest logic with its I/O: one per worker, shared by its key loops.
pub(super) struct Ingest<I> {
    pub(super) options: WorkerOptions,
    pub(super) io: I,
    faults: Arc<dyn Faults>,
    pub(super) stats: Arc<WorkerStats>,
    /// Events this process already published to merged, so a redelivery of a stored event
    /// is not published twice. (After a restart the set is empty: merged is at-least-once.)
    published: Mutex<HashSet<uuid::Uuid>>,
    pub(super) stopping: AtomicBool,
    /// The environment's payload bucket: the only one a claim check may point into.
    payload_bucket: String,
}

impl<I: Io> Ingest<I> {
    pub(super) fn new(
        options: WorkerOptions,
        io: I,
        faults: Arc<dyn Faults>,
        payload_bucket: String,
    ) -> Self {
        Self {
            options,
            io,
            faults,
            stats: Arc::default(),
            published: Mutex::default(),
            stopping: AtomicBool::new(false),
            payload_bucket,
        }
    }
}

impl<I: Io> Ingest<I> {
    /// Whether this is the message's last attempt before the service dead-letters it.
    fn last_attempt(&self, attempt: u32) -> bool {
        self.options
            .max_delivery_attempts
            .is_some_and(|max| attempt >= max)
    }

    /// A failure on the last attempt is dead-lettered by the worker itself, with its reason:
    /// the message's fate never passes to the service's dead-letter policy, which the
    /// emulator cannot carry out on an ordered subscription (its stream fails, and every later
    /// event of every key with it) and which would record no reason. Only if that publish
    /// fails too is the message nacked and left to the policy.
    async fn settle(
        &self,
        message: &Message,
        attempt: u32,
        disposition: Disposition,
    ) -> Disposition {
        match disposition {
            Disposition::Nack(reason) if self.last_attempt(attempt) => {
                let reason = format!(
                    "given up on delivery attempt {attempt} (the subscription's last): {reason}"
                );
                self.dead_letter(message, &reason, attempt).await
            }
            other => other,
        }
    }

    /// Handles consecutive deliveries of one key with the outcome processing them one by one
    /// would have, but with one INSERT for the valid events and their publishes to merged in
    /// flight together:
    ///
    /// 1. in order, each message is checked (decoded, claim fetched, validated, the
    ///    `before_append` fault asked) and joins the group to append, until one ends before
    ///    the append (bad input, a transient failure): the group before it is settled first
    ///    (steps 2–3), then that message — dead-lettered, or nacked and blocking the key;
    /// 2. the group is appended with one statement ([`EventStore::append_batch`]);
    /// 3. in order: the `after_append` fault, then runs of events are published to merged
    ///    together (the ordering key keeps their order) and acked; after a failed publish
    ///    the rest of the run goes one at a time, so only a message that fails on its own is
    ///    nacked; an event the ledger refuses is dead-lettered once what precedes it is acked.
    ///
    /// Whatever comes after a failure is deferred as in one-by-one processing (nacked, or
    /// dead-lettered on its last attempt), even if the group's statement already stored it:
    /// its redelivery finds it stored (an idempotent replay), after the failed one.
    pub(super) async fn run_batch<D: Delivery>(
        &self,
        batch: Vec<(Message, D)>,
        blocked: &mut Option<(String, Instant)>,
    ) {
        let mut group: Vec<Member<D>> = Vec::new();
        let mut group_bytes = 0;
        for (message, delivery) in batch {
            if self.stopping.load(Ordering::SeqCst) {
                delivery.nack();
                continue;
            }
            // Another worker may have taken over the failed message; don't wait forever.
            if blocked.as_ref().is_some_and(|(_, since)| {
                self.io.now().saturating_duration_since(*since) > self.options.block_timeout
            }) {
                *blocked = None;
            }
            let attempt = delivery.attempt();
            if let Some(blocker) = blocker_of(blocked, &message) {
                self.defer(&message, delivery, attempt, &blocker).await;
                continue;
            }
            // The failed message is back: it runs, and blocks again only if it fails again.
            *blocked = None;
            match self.prepare(&message, attempt).await {
                Prepared::Event(event) => {
                    group_bytes += event.payload.len();
                    group.push(Member {
                        message,
                        delivery,
                        attempt,
                        event,
                        appending: Appending::Pending,
                        checked: false,
                        own: None,
                    });
                    // Fetched claim-checked payloads are held until the append: bounded.
                    if group_bytes >= GROUP_BYTES {
                        self.store_and_publish(std::mem::take(&mut group), blocked)
                            .await;
                        group_bytes = 0;
                    }
                }
                Prepared::Bad(reason) => {
                    self.store_and_publish(std::mem::take(&mut group), blocked)
                        .await;
                    group_bytes = 0;
                    if let Some(blocker) = blocker_of(blocked, &message) {
                        self.defer(&message, delivery, attempt, &blocker).await;
                        continue;
                    }
                    let disposition = self.dead_letter(&message, &reason, attempt).await;
                    self.finish(&message, delivery, attempt, disposition, blocked)
                        .await;
                }
                Prepared::Failed(reason) => {
                    self.store_and_publish(std::mem::take(&mut group), blocked)
                        .await;
                    group_bytes = 0;
                    if let Some(blocker) = blocker_of(blocked, &message) {
                        self.defer(&message, delivery, attempt, &blocker).await;
                        continue;
                    }
                    let disposition = Disposition::Nack(reason);
                    self.finish(&message, delivery, attempt, disposition, blocked)
                        .await;
                }
            }
        }
        self.store_and_publish(group, blocked).await;
    }

    /// Steps 2 and 3 of [`Ingest::run_batch`] for a group of checked events, in order.
    async fn store_and_publish<D: Delivery>(
        &self,
        group: Vec<Member<D>>,
        blocked: &mut Option<(String, Instant)>,
    ) {
        let mut queue: VecDeque<Member<D>> = group.into();
        while !queue.is_empty() {
            if let Some((blocker, _)) = blocked.clone() {
                for m in queue.drain(..) {
                    self.defer(&m.message, m.delivery, m.attempt, &blocker)
                        .await;
                }
                return;
            }
            // Everything not appended yet, with one statement. (After a failure that was given
            // up on its last attempt the rest comes round again: a transient outcome is retried.)
            for m in queue.iter_mut() {
                if m.retry_append() {
                    m.appending = Appending::Pending;
                    m.own = None;
                }
            }
            let fresh: Vec<usize> = (0..queue.len())
                .filter(|&i| matches!(queue[i].appending, Appending::Pending))
                .collect();
            if !fresh.is_empty() {
                let events: Vec<NewEvent> = fresh.iter().map(|&i| queue[i].event.clone()).collect();
                self.stats.appends.fetch_add(1, Ordering::Relaxed);
                match self.io.append(&events).await {
                    Ok(outcomes) => {
                        for (i, outcome) in fresh.into_iter().zip(outcomes) {
                            match outcome {
                                Ok(Appended::Stored) => {
                                    self.stats.stored.fetch_add(1, Ordering::Relaxed)
                                }
                                Ok(Appended::AlreadyStored) => {
                                    self.stats.already_stored.fetch_add(1, Ordering::Relaxed)
                                }
                                Err(_) => 0,
                            };
                            queue[i].appending = Appending::Done(outcome);
                        }
                    }
                    // Nothing is known of any of them: the first of them fails (once what
                    // precedes it is settled), the rest wait behind it.
                    Err(e) => {
                        let reason = format!("event store: {e}");
                        for i in fresh {
                            queue[i].appending = Appending::Failed(reason.clone());
                        }
                    }
                }
            }
            // In order: runs of stored events go to merged together; an event that needs
            // handling of its own ends the run, which is settled before it.
            let mut run: Vec<Member<D>> = Vec::new();
            while let Some(mut m) = queue.pop_front() {
                let own = match (m.own.take(), &m.appending) {
                    (Some(own), _) => Some(own),
                    (None, Appending::Failed(reason)) => {
                        tracing::warn!(event_id = %m.event.event_id, "{reason}");
                        Some(Own::Nack(reason.clone()))
                    }
                    (None, Appending::Done(Err(AppendError::Database(e)))) => {
                        tracing::warn!(event_id = %m.event.event_id, "event store: {e}");
                        Some(Own::Nack(format!("event store: {e}")))
                    }
                    (None, Appending::Done(Err(e))) => Some(Own::DeadLetter(e.to_string())),
                    (None, Appending::Done(Ok(_))) if !m.checked => {
                        m.checked = true;
                        (self.faults.after_append(m.event.event_id, m.attempt) == Fault::Nack)
                            .then(|| Own::Nack("a fault injected after the append".into()))
                    }
                    (None, _) => None,
                };
                let Some(own) = own else {
                    run.push(m);
                    continue;
                };
                let rest = self.publish_run(std::mem::take(&mut run), blocked).await;
                if !rest.is_empty() || blocked.is_some() {
                    m.own = Some(own);
                    queue.push_front(m);
                    for r in rest.into_iter().rev() {
                        queue.push_front(r);
                    }
                    break;
                }
                let disposition = match own {
                    Own::Nack(reason) => Disposition::Nack(reason),
                    Own::DeadLetter(reason) => {
                        self.dead_letter(&m.message, &reason, m.attempt).await
                    }
                };
                self.finish(&m.message, m.delivery, m.attempt, disposition, blocked)
                    .await;
                // Blocked: the rest is deferred. Given up on its last attempt instead: what
                // the failed statement left unknown is appended again before it goes on.
                if blocked.is_some() || queue.iter().any(Member::retry_append) {
                    break;
                }
            }
            let rest = self.publish_run(run, blocked).await;
            for r in rest.into_iter().rev() {
                queue.push_front(r);
            }
        }
    }

    /// Publishes a run of stored events to merged together and acks them in order. A publish
    /// request is refused whole, so after a failure (the client then pauses the key: it is
    /// resumed) the rest of the run is published one at a time, as one-by-one processing
    /// would: the first that fails on its own is nacked. Returns what follows it, unsettled,
    /// when it blocks the key.
    async fn publish_run<D: Delivery>(
        &self,
        run: Vec<Member<D>>,
        blocked: &mut Option<(String, Instant)>,
    ) -> Vec<Member<D>> {
        if run.is_empty() {
            return run;
        }
        // An event this process already published is not published again; neither is a
        // second copy within the run (a producer's retry).
        let mut in_run = HashSet::new();
        let futures: Vec<_> = run
            .iter()
            .map(|m| {
                let id = m.event.event_id;
                (!self.was_published(id) && in_run.insert(id)).then(|| self.publish_merged(m))
            })
            .collect();
        // Each publish is on its way already; awaiting in order costs no extra round trip.
        let mut results = Vec::with_capacity(futures.len());
        for future in futures {
            results.push(match future {
                Some(future) => future.await,
                None => Ok(()),
            });
        }
        let mut run = run.into_iter().zip(results);
        for (m, result) in run.by_ref() {
            if let Err(e) = result {
                tracing::debug!(event_id = %m.event.event_id, "publishing a run to merged: {e}; one at a time now");
                self.io.resume_merged(&m.message.ordering_key);
                let mut rest = vec![m];
                rest.extend(run.map(|(m, _)| m));
                return self.publish_one_by_one(rest, blocked).await;
            }
            self.remember_published(m.event.event_id);
            self.finish(&m.message, m.delivery, m.attempt, Disposition::Ack, blocked)
                .await;
        }
        Vec::new()
    }

    /// Publishes to merged and acks one event after another until one fails: it is nacked
    /// and, if that blocks the key, what follows is returned unsettled.
    async fn publish_one_by_one<D: Delivery>(
        &self,
        run: Vec<Member<D>>,
        blocked: &mut Option<(String, Instant)>,
    ) -> Vec<Member<D>> {
        let mut run = run.into_iter();
        while let Some(m) = run.next() {
            let result = if self.was_published(m.event.event_id) {
                Ok(())
            } else {
                self.publish_merged(&m).await
            };
            match result {
                Ok(()) => {
                    self.remember_published(m.event.event_id);
                    self.finish(&m.message, m.delivery, m.attempt, Disposition::Ack, blocked)
                        .await;
                }
                Err(e) => {
                    let topic = &self.options.merged_topic;
                    tracing::warn!(event_id = %m.event.event_id, "publishing to {topic}: {e}");
                    self.io.resume_merged(&m.message.ordering_key);
                    let disposition = Disposition::Nack(format!("publishing to {topic}: {e}"));
                    self.finish(&m.message, m.delivery, m.attempt, disposition, blocked)
                        .await;
                    // Given up on its last attempt, it blocks nothing: the key goes on.
                    if blocked.is_some() {
                        return run.collect();
                    }
                }
            }
        }
        Vec::new()
    }

    /// The stored event on its way to merged, with the raw message's data and ordering key.
    fn publish_merged<D>(
        &self,
        m: &Member<D>,
    ) -> impl Future<Output = Result<(), PublishError>> + Send + 'static {
        self.io.publish_merged(
            Message::new()
                .set_data(m.message.data.clone())
                .set_ordering_key(m.message.ordering_key.clone())
                .set_attributes(envelope::merged_attributes(&m.message.attributes, &m.event)),
        )
    }

    /// Checks one message up to the append: decoded, its claim-checked payload fetched and
    /// verified, validated, and the `before_append` fault asked.
    async fn prepare(&self, message: &Message, attempt: u32) -> Prepared {
        let envelope = match envelope::decode(message) {
            Ok(e) => e,
            Err(reason) => return Prepared::Bad(reason),
        };
        let payload = match &envelope.payload {
            PayloadSource::Inline(p) => p.clone(),
            // The worker's identity may read more than this bucket: a reference elsewhere
            // would make it fetch, and store, whatever the publisher points at.
            PayloadSource::Claim(claim) if claim.bucket != self.payload_bucket => {
                return Prepared::Bad(format!(
                    "claim reference {} is outside the payload bucket {}",
                    claim.uri(),
                    self.payload_bucket
                ));
            }
            PayloadSource::Claim(claim) => {
                match self.io.fetch_claim(claim, self.options.verify_claims).await {
                    Ok(p) => p,
                    Err(ClaimError::Rejected(reason)) => return Prepared::Bad(reason),
                    Err(ClaimError::Transient(e)) => {
                        tracing::warn!(event_id = %envelope.event_id, "claim check: {e}");
                        return Prepared::Failed(format!("claim check: {e}"));
                    }
                }
            }
        };
        let key_check = envelope::check_ordering_key(message, &envelope);
        let event = envelope.into_event(payload);
        if let Err(invalid) = event.validate() {
            return Prepared::Bad(invalid.reason);
        }
        if let Err(reason) = key_check {
            return Prepared::Bad(reason);
        }
        if self.faults.before_append(event.event_id, attempt) == Fault::Nack {
            return Prepared::Failed("a fault injected before the append".into());
        }
        Prepared::Event(event)
    }

    /// Settles a processed delivery: acked (the key moves on), or nacked (the key is blocked
    /// behind it, unless this was its last attempt: then the service dead-letters it).
    async fn finish<D: Delivery>(
        &self,
        message: &Message,
        delivery: D,
        attempt: u32,
        disposition: Disposition,
        blocked: &mut Option<(String, Instant)>,
    ) {
        let disposition = self.settle(message, attempt, disposition).await;
        tracing::debug!(
            key = %message.ordering_key,
            message_id = %message.message_id,
            attempt,
            ack = matches!(disposition, Disposition::Ack),
            "delivery"
        );
        match disposition {
            Disposition::Ack => {
                delivery.ack();
                *blocked = None;
            }
            Disposition::Nack(_) => {
                self.stats.nacked.fetch_add(1, Ordering::Relaxed);
                delivery.nack();
                // Only a failed dead-letter publish on the last attempt ends here: then
                // the service dead-letters it, and the key moves on.
                let last_attempt = self.last_attempt(attempt);
                *blocked = (!last_attempt).then(|| (message.message_id.clone(), self.io.now()));
            }
        }
    }

    /// A later message of a blocked key: nacked, to come back after the failed one (or
    /// dead-lettered with the reason if this was its last attempt).
    async fn defer<D: Delivery>(
        &self,
        message: &Message,
        delivery: D,
        attempt: u32,
        blocker: &str,
    ) {
        self.stats.deferred.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(key = %message.ordering_key, message_id = %message.message_id, "deferred behind a failed message");
        let held = Disposition::Nack(format!(
            "held back behind message {blocker} of the same ordering key, which had not been stored; dead-lettered rather than stored out of order: replay it after that one"
        ));
        match self.settle(message, attempt, held).await {
            Disposition::Ack => delivery.ack(),
            Disposition::Nack(_) => delivery.nack(),
        }
    }

    fn was_published(&self, event_id: uuid::Uuid) -> bool {
        self.published
            .lock()
            .map(|set| set.contains(&event_id))
            .unwrap_or(false)
    }

    fn remember_published(&self, event_id: uuid::Uuid) {
        if let Ok(mut set) = self.published.lock() {
            // Bounded: forgetting only risks a duplicate on merged, which is at-least-once.
            if set.len() >= PUBLISHED_MEMORY {
                set.clear();
            }
            set.insert(event_id);
        }
    }

    /// Sends bad input to the dead-letter topic with its reason; acks only once that publish
    /// succeeded, so nothing is lost if the dead-letter topic is unavailable.
    async fn dead_letter(&self, message: &Message, reason: &str, attempt: u32) -> Disposition {
        let mut attributes = envelope::dead_letter_attributes(
            &message.attributes,
            reason,
            &self.options.subscription,
            &message.message_id,
        );
        attributes.insert(
            envelope::DEAD_LETTER_DELIVERY_ATTEMPT.into(),
            attempt.to_string(),
        );
        let dead = Message::new()
            .set_data(message.data.clone())
            .set_attributes(attributes);
        match self.io.publish_dead_letter(dead).await {
            Ok(_) => {
                tracing::info!(message_id = %message.message_id, "dead-lettered: {reason}");
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                Disposition::Ack
            }
            Err(e) => {
                tracing::warn!("publishing to {}: {e}", self.options.dead_letter_topic);
                Disposition::Nack(format!(
                    "dead-lettering ({reason}) failed: publishing to {}: {e}",
                    self.options.dead_letter_topic
                ))
            }
        }
    }
}

/// The batch path on plain values: the batches a test chooses, an in-memory ledger and topics,
/// failures scripted per test, and a clock that moves only when told.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;
    use crate::worker::NoFaults;

    /// How each delivery was settled, in the order it happened.
    #[derive(Clone, Default)]
    struct Settled(Arc<Mutex<Vec<(String, &'static str)>>>);

    impl Settled {
        fn take(&self) -> Vec<(String, &'static str)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    struct Fake {
        id: String,
        attempt: u32,
        settled: Settled,
    }

    impl Delivery for Fake {
        fn attempt(&self) -> u32 {
            self.attempt
        }
        fn ack(self) {
            self.settled.0.lock().unwrap().push((self.id, "ack"));
        }
        fn nack(self) {
            self.settled.0.lock().unwrap().push((self.id, "nack"));
        }
    }

    /// Fails the listed events on their first delivery, before or after the append.
    #[derive(Default)]
    struct FirstAttempt {
        before: HashSet<uuid::Uuid>,
        after: HashSet<uuid::Uuid>,
    }

    impl Faults for FirstAttempt {
        fn before_append(&self, event_id: uuid::Uuid, attempt: u32) -> Fault {
            if attempt == 1 && self.before.contains(&event_id) {
                Fault::Nack
            } else {
                Fault::None
            }
        }
        fn after_append(&self, event_id: uuid::Uuid, attempt: u32) -> Fault {
            if attempt == 1 && self.after.contains(&event_id) {
                Fault::Nack
            } else {
                Fault::None
            }
        }
    }

    /// The ledger, the topics, the bucket and the clock, in memory. Publishing imitates the
    /// real client and service where the logic depends on them: an attribute key over 256
    /// bytes is refused, and a refused publish pauses its ordering key until resumed.
    #[derive(Default)]
    struct Memory {
        ledger: Mutex<Vec<NewEvent>>,
        statements: AtomicUsize,
        /// Every statement fails (the database is down, or the worker may not INSERT).
        statements_fail: AtomicBool,
        merged: Arc<Mutex<Vec<Message>>>,
        paused: Arc<Mutex<HashSet<String>>>,
        dead_letters: Mutex<Vec<Message>>,
        dead_letters_fail: AtomicBool,
        objects: Mutex<HashMap<String, String>>,
        storage_down: AtomicBool,
        elapsed: Mutex<Duration>,
        origin: Option<Instant>,
    }

    impl Memory {
        fn new() -> Memory {
            Memory {
                origin: Some(Instant::now()),
                ..Memory::default()
            }
        }

        fn advance(&self, by: Duration) {
            *self.elapsed.lock().unwrap() += by;
        }

        fn ledger_ids(&self) -> Vec<uuid::Uuid> {
            self.ledger
                .lock()
                .unwrap()
                .iter()
                .map(|e| e.event_id)
                .collect()
        }

        fn merged_ids(&self) -> Vec<uuid::Uuid> {
            event_ids(&self.merged.lock().unwrap())
        }

        fn dead_letter_reasons(&self) -> HashMap<uuid::Uuid, String> {
            self.dead_letters
                .lock()
                .unwrap()
                .iter()
                .map(|d| {
                    (
                        d.attributes[envelope::EVENT_ID].parse().unwrap(),
                        d.attributes[envelope::DEAD_LETTER_REASON].clone(),
                    )
                })
                .collect()
        }
    }

    impl Io for Memory {
        fn fetch_claim(
            &self,
            claim: &ClaimRef,
            _verify: bool,
        ) -> impl Future<Output = Result<String, ClaimError>> + Send {
            let result = if self.storage_down.load(Ordering::SeqCst) {
                Err(ClaimError::Transient("503 Service Unavailable".into()))
            } else {
                self.objects
                    .lock()
                    .unwrap()
                    .get(&claim.object)
                    .cloned()
                    .ok_or_else(|| ClaimError::Rejected(format!("{} not found", claim.uri())))
            };
            std::future::ready(result)
        }

        fn append(
            &self,
            events: &[NewEvent],
        ) -> impl Future<Output = Result<Vec<Result<Appended, AppendError>>, sqlx::Error>> + Send
        {
            self.statements.fetch_add(1, Ordering::SeqCst);
            let result = if self.statements_fail.load(Ordering::SeqCst) {
                Err(sqlx::Error::PoolTimedOut)
            } else {
                let mut ledger = self.ledger.lock().unwrap();
                Ok(events
                    .iter()
                    .map(|e| {
                        e.validate()?;
                        match ledger.iter().find(|s| s.event_id == e.event_id) {
                            None => {
                                ledger.push(e.clone());
                                Ok(Appended::Stored)
                            }
                            Some(stored) => match stored.differences(e) {
                                None => Ok(Appended::AlreadyStored),
                                Some(differs) => Err(AppendError::Conflict {
                                    event_id: e.event_id,
                                    differs,
                                }),
                            },
                        }
                    })
                    .collect())
            };
            std::future::ready(result)
        }

        fn publish_merged(
            &self,
            message: Message,
        ) -> impl Future<Output = Result<(), PublishError>> + Send + 'static {
            let mut paused = self.paused.lock().unwrap();
            let result = if paused.contains(&message.ordering_key) {
                Err(PublishError::from("the ordering key is paused"))
            } else if message.attributes.keys().any(|k| k.len() > 256) {
                paused.insert(message.ordering_key.clone());
                Err(PublishError::from(
                    "INVALID_ARGUMENT: attribute key too long",
                ))
            } else {
                self.merged.lock().unwrap().push(message);
                Ok(())
            };
            std::future::ready(result)
        }

        fn resume_merged(&self, ordering_key: &str) {
            self.paused.lock().unwrap().remove(ordering_key);
        }

        fn publish_dead_letter(
            &self,
            message: Message,
        ) -> impl Future<Output = Result<(), PublishError>> + Send {
            let result = if self.dead_letters_fail.load(Ordering::SeqCst) {
                Err(PublishError::from("UNAVAILABLE"))
            } else {
                self.dead_letters.lock().unwrap().push(message);
                Ok(())
            };
            std::future::ready(result)
        }

        fn now(&self) -> Instant {
            self.origin.unwrap() + *self.elapsed.lock().unwrap()
        }
    }

    const MAX_ATTEMPTS: u32 = 5;

    struct Rig {
        ingest: Ingest<Memory>,
        settled: Settled,
    }

    impl Rig {
        fn new(faults: impl Faults + 'static) -> Rig {
            let options = WorkerOptions {
                subscription: "events.raw.worker".into(),
                merged_topic: "events.merged".into(),
                dead_letter_topic: "events.dlq".into(),
                probe_attribute: None,
                max_delivery_attempts: Some(MAX_ATTEMPTS),
                connections: 1,
                key_batch: super::super::KEY_BATCH,
                block_timeout: Duration::from_secs(15),
                verify_claims: true,
                lease_extension: super::super::LEASE_EXTENSION,
                acceptance: None,
            };
            Rig {
                ingest: Ingest::new(options, Memory::new(), Arc::new(faults), "bucket".into()),
                settled: Settled::default(),
            }
        }

        fn io(&self) -> &Memory {
            &self.ingest.io
        }

        /// One batch, as the key loop would hand it over.
        async fn batch(
            &self,
            messages: &[(&str, &Message)],
            attempt: u32,
            blocked: &mut Option<(String, Instant)>,
        ) -> Vec<(String, &'static str)> {
            let batch = messages
                .iter()
                .map(|(id, m)| {
                    let delivery = Fake {
                        id: id.to_string(),
                        attempt,
                        settled: self.settled.clone(),
                    };
                    ((*m).clone().set_message_id(*id), delivery)
                })
                .collect();
            self.ingest.run_batch(batch, blocked).await;
            self.settled.take()
        }
    }

    fn events(n: usize) -> Vec<NewEvent> {
        let aggregate_id = format!("SO-{}", uuid::Uuid::new_v4().simple());
        (0..n)
            .map(|i| NewEvent {
                account_id: "TSTDRV1000001".into(),
                event_id: uuid::Uuid::new_v4(),
                aggregate_type: "salesorder".into(),
                aggregate_id: aggregate_id.clone(),
                payload: format!(r#"{{"revision":{i}}}"#),
                created_at: chrono::Utc::now(),
            })
            .collect()
    }

    fn ids(events: &[&NewEvent]) -> Vec<uuid::Uuid> {
        events.iter().map(|e| e.event_id).collect()
    }

    fn event_ids(messages: &[Message]) -> Vec<uuid::Uuid> {
        messages
            .iter()
            .map(|m| {
                m.attributes[envelope::EVENT_ID]
                    .parse()
                    .expect("an event_id attribute")
            })
            .collect()
    }

    fn settled(ids: &[&str], how: &'static str) -> Vec<(String, &'static str)> {
        ids.iter().map(|id| (id.to_string(), how)).collect()
    }

    fn named<'m>(names: &[&'m str], messages: &'m [Message]) -> Vec<(&'m str, &'m Message)> {
        names.iter().copied().zip(messages).collect()
    }

    #[tokio::test]
    async fn a_failure_before_the_append_mid_batch_blocks_the_rest_of_the_key() {
        let e = events(6);
        let rig = Rig::new(FirstAttempt {
            before: HashSet::from([e[2].event_id]),
            ..FirstAttempt::default()
        });
        let m: Vec<Message> = e.iter().map(envelope::inline_message).collect();
        let names = ["m1", "m2", "m3", "m4", "m5", "m6"];
        let all = named(&names, &m);
        let mut blocked = None;

        let first = rig.batch(&all, 1, &mut blocked).await;
        let mut expected = settled(&names[..2], "ack");
        expected.extend(settled(&names[2..], "nack"));
        assert_eq!(
            first, expected,
            "m3 fails: m1 and m2 acked, m4..m6 held back"
        );
        assert_eq!(blocked.as_ref().map(|(b, _)| b.as_str()), Some("m3"));
        assert_eq!(rig.io().ledger_ids(), ids(&[&e[0], &e[1]]));
        assert_eq!(rig.ingest.stats.deferred.load(Ordering::Relaxed), 3);

        // The service redelivers m3 first, then the rest of the key.
        let again = rig.batch(&all[2..], 2, &mut blocked).await;
        assert_eq!(again, settled(&names[2..], "ack"));
        assert!(blocked.is_none());
        let in_order: Vec<&NewEvent> = e.iter().collect();
        assert_eq!(rig.io().ledger_ids(), ids(&in_order));
        assert_eq!(
            rig.io().merged_ids(),
            ids(&in_order),
            "merged: in order, once each"
        );
    }

    #[tokio::test]
    async fn a_failure_after_the_append_mid_batch_holds_back_what_the_statement_stored() {
        let e = events(5);
        let rig = Rig::new(FirstAttempt {
            after: HashSet::from([e[1].event_id]),
            ..FirstAttempt::default()
        });
        let m: Vec<Message> = e.iter().map(envelope::inline_message).collect();
        let names = ["m1", "m2", "m3", "m4", "m5"];
        let all = named(&names, &m);
        let mut blocked = None;

        let first = rig.batch(&all, 1, &mut blocked).await;
        let mut expected = settled(&names[..1], "ack");
        expected.extend(settled(&names[1..], "nack"));
        assert_eq!(
            first, expected,
            "m2 fails after its append: m3..m5 held back"
        );
        assert_eq!(blocked.as_ref().map(|(b, _)| b.as_str()), Some("m2"));
        // One statement stored them all, in order; only m1 went on to merged.
        let in_order: Vec<&NewEvent> = e.iter().collect();
        assert_eq!(rig.io().ledger_ids(), ids(&in_order));
        assert_eq!(rig.io().statements.load(Ordering::SeqCst), 1);
        assert_eq!(rig.io().merged_ids(), ids(&[&e[0]]));

        let again = rig.batch(&all[1..], 2, &mut blocked).await;
        assert_eq!(again, settled(&names[1..], "ack"));
        assert_eq!(
            rig.io().ledger_ids(),
            ids(&in_order),
            "replays store nothing"
        );
        assert_eq!(rig.ingest.stats.already_stored.load(Ordering::Relaxed), 4);
        assert_eq!(
            rig.io().merged_ids(),
            ids(&in_order),
            "merged: in order, once each"
        );
    }

    #[tokio::test]
    async fn a_publish_refused_mid_batch_fails_only_its_own_message_and_its_last_attempt_lets_the_key_go_on()
     {
        let e = events(3);
        let rig = Rig::new(NoFaults);
        // An attribute key over Pub/Sub's 256 bytes: the worker passes attributes on to
        // merged, where the service refuses it (and the client pauses the key).
        let mut refused = envelope::inline_message(&e[1]);
        refused.attributes.insert("k".repeat(300), "v".into());
        let m = [
            envelope::inline_message(&e[0]),
            refused,
            envelope::inline_message(&e[2]),
        ];
        let names = ["m1", "m2", "m3"];
        let all = named(&names, &m);
        let mut blocked = None;

        let first = rig.batch(&all, 1, &mut blocked).await;
        let mut expected = settled(&names[..1], "ack");
        expected.extend(settled(&names[1..], "nack"));
        assert_eq!(
            first, expected,
            "m2 is refused at publish: m1 is published on its own; m3 held back"
        );
        assert_eq!(blocked.as_ref().map(|(b, _)| b.as_str()), Some("m2"));
        assert!(
            rig.io().paused.lock().unwrap().is_empty(),
            "the key was resumed after the refusal"
        );

        // The subscription's last attempt: m2 is given up (dead-lettered with the reason),
        // and m3 is published after it.
        let again = rig.batch(&all[1..], MAX_ATTEMPTS, &mut blocked).await;
        assert_eq!(again, settled(&names[1..], "ack"));
        assert!(blocked.is_none());
        assert_eq!(rig.io().ledger_ids(), ids(&[&e[0], &e[1], &e[2]]));
        assert_eq!(rig.io().merged_ids(), ids(&[&e[0], &e[2]]));
        let reasons = rig.io().dead_letter_reasons();
        let reason = &reasons[&e[1].event_id];
        assert_eq!(reasons.len(), 1);
        assert!(
            reason.contains("given up on delivery attempt") && reason.contains("publishing to"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_failed_statement_nacks_its_first_message_and_on_the_last_attempt_each_is_tried_in_turn()
     {
        let e = events(3);
        let rig = Rig::new(NoFaults);
        rig.io().statements_fail.store(true, Ordering::SeqCst);
        let m: Vec<Message> = e.iter().map(envelope::inline_message).collect();
        let names = ["m1", "m2", "m3"];
        let all = named(&names, &m);
        let mut blocked = None;

        let first = rig.batch(&all, 1, &mut blocked).await;
        assert_eq!(
            first,
            settled(&names, "nack"),
            "m1 fails, m2 and m3 held back"
        );
        assert_eq!(blocked.as_ref().map(|(b, _)| b.as_str()), Some("m1"));
        assert_eq!(rig.ingest.stats.deferred.load(Ordering::Relaxed), 2);

        // On their last attempt each is tried again, fails and is given up, in order.
        let statements = rig.io().statements.load(Ordering::SeqCst);
        let given_up = rig.batch(&all, MAX_ATTEMPTS, &mut blocked).await;
        assert_eq!(given_up, settled(&names, "ack"));
        assert_eq!(
            rig.io().statements.load(Ordering::SeqCst) - statements,
            3,
            "one statement per message once the one before it was given up"
        );
        let reasons = rig.io().dead_letter_reasons();
        assert_eq!(
            event_ids(&rig.io().dead_letters.lock().unwrap()),
            ids(&[&e[0], &e[1], &e[2]])
        );
        for reason in reasons.values() {
            assert!(
                reason.contains("given up") && reason.contains("event store"),
                "{reason}"
            );
        }

        // The database is back: a replay stores them, in order.
        rig.io().statements_fail.store(false, Ordering::SeqCst);
        let replay = rig.batch(&all, 1, &mut blocked).await;
        assert_eq!(replay, settled(&names, "ack"));
        assert_eq!(rig.io().ledger_ids(), ids(&[&e[0], &e[1], &e[2]]));
    }

    #[tokio::test]
    async fn bad_input_mid_batch_is_dead_lettered_and_its_neighbours_stored_in_order() {
        let e = events(6);
        let rig = Rig::new(NoFaults);
        // e[0] is in the ledger already; the batch brings a different event under its id.
        rig.io().ledger.lock().unwrap().push(e[0].clone());
        let mut conflicting = e[0].clone();
        conflicting.payload = r#"{"revision":"rewritten"}"#.into();
        let unreadable = envelope::inline_message(&e[3]).set_data("{not json");
        let m = [
            envelope::inline_message(&e[1]),
            envelope::inline_message(&e[2]),
            unreadable,
            envelope::inline_message(&conflicting),
            envelope::inline_message(&e[4]),
            envelope::inline_message(&e[5]),
        ];
        let names = ["m1", "m2", "bad", "conflict", "m5", "m6"];
        let all = named(&names, &m);
        let mut blocked = None;

        let settled_now = rig.batch(&all, 1, &mut blocked).await;
        assert_eq!(settled_now, settled(&names, "ack"));
        assert!(blocked.is_none(), "bad input does not block its key");
        assert_eq!(
            rig.io().ledger_ids(),
            ids(&[&e[0], &e[1], &e[2], &e[4], &e[5]])
        );
        assert_eq!(rig.io().merged_ids(), ids(&[&e[1], &e[2], &e[4], &e[5]]));
        let reasons = rig.io().dead_letter_reasons();
        assert_eq!(reasons.len(), 2, "dead letters: {reasons:?}");
        assert!(
            reasons[&e[3].event_id].contains("JSON"),
            "{:?}",
            reasons[&e[3].event_id]
        );
        assert!(
            reasons[&e[0].event_id].contains("different content"),
            "{:?}",
            reasons[&e[0].event_id]
        );
    }

    #[tokio::test]
    async fn a_blocked_key_lets_go_once_the_failed_message_stays_away_past_the_block_timeout() {
        let e = events(3);
        let rig = Rig::new(FirstAttempt {
            before: HashSet::from([e[0].event_id]),
            ..FirstAttempt::default()
        });
        let m: Vec<Message> = e.iter().map(envelope::inline_message).collect();
        let names = ["m1", "m2", "m3"];
        let all = named(&names, &m);
        let mut blocked = None;
        rig.batch(&all, 1, &mut blocked).await;
        assert_eq!(blocked.as_ref().map(|(b, _)| b.as_str()), Some("m1"));

        // m1 went to another worker: m2 and m3 come back alone, still blocked behind it...
        rig.io().advance(Duration::from_secs(5));
        let held = rig.batch(&all[1..], 2, &mut blocked).await;
        assert_eq!(held, settled(&names[1..], "nack"));
        // ...until the block timeout has passed on the (virtual) clock.
        rig.io().advance(Duration::from_secs(11));
        let released = rig.batch(&all[1..], 3, &mut blocked).await;
        assert_eq!(released, settled(&names[1..], "ack"));
        assert_eq!(rig.io().ledger_ids(), ids(&[&e[1], &e[2]]));
    }

    #[tokio::test]
    async fn a_claim_check_the_bucket_cannot_serve_now_is_retried_and_a_missing_object_is_dead_lettered()
     {
        let e = events(2);
        let rig = Rig::new(NoFaults);
        let claim = ClaimRef {
            bucket: "bucket".into(),
            object: "payloads/a".into(),
            size: e[0].payload.len() as u64,
            sha256: envelope::sha256_hex(e[0].payload.as_bytes()),
        };
        rig.io()
            .objects
            .lock()
            .unwrap()
            .insert(claim.object.clone(), e[0].payload.clone());
        let missing = ClaimRef {
            object: "payloads/missing".into(),
            ..claim.clone()
        };
        let m = [
            envelope::claim_message(&e[0], &claim),
            envelope::claim_message(&e[1], &missing),
        ];
        let names = ["claimed", "missing"];
        let all = named(&names, &m);
        let mut blocked = None;

        rig.io().storage_down.store(true, Ordering::SeqCst);
        let down = rig.batch(&all, 1, &mut blocked).await;
        assert_eq!(
            down,
            settled(&names, "nack"),
            "GCS unavailable: retried, the key held"
        );
        assert!(rig.io().ledger_ids().is_empty());

        rig.io().storage_down.store(false, Ordering::SeqCst);
        let up = rig.batch(&all, 2, &mut blocked).await;
        assert_eq!(up, settled(&names, "ack"));
        assert_eq!(
            rig.io().ledger_ids(),
            ids(&[&e[0]]),
            "the payload, fetched, is stored"
        );
        assert_eq!(
            rig.io().ledger.lock().unwrap()[0].payload,
            e[0].payload,
            "what is stored is the object, not the reference"
        );
        let reasons = rig.io().dead_letter_reasons();
        assert!(reasons[&e[1].event_id].contains("not found"), "{reasons:?}");
    }

    #[tokio::test]
    async fn a_dead_letter_that_cannot_be_published_on_the_last_attempt_is_left_to_the_policy() {
        let e = events(2);
        let rig = Rig::new(NoFaults);
        rig.io().dead_letters_fail.store(true, Ordering::SeqCst);
        let unreadable = envelope::inline_message(&e[0]).set_data("{not json");
        let m = [unreadable, envelope::inline_message(&e[1])];
        let names = ["bad", "next"];
        let all = named(&names, &m);
        let mut blocked = None;

        let first = rig.batch(&all, 1, &mut blocked).await;
        assert_eq!(
            first,
            settled(&names, "nack"),
            "the DLQ is down: nacked, the key held"
        );
        assert_eq!(blocked.as_ref().map(|(b, _)| b.as_str()), Some("bad"));

        // Its last attempt: still no DLQ. Nacked, the service's policy dead-letters it, and the
        // key goes on instead of waiting for a message that will not come back.
        let last = rig.batch(&all, MAX_ATTEMPTS, &mut blocked).await;
        assert_eq!(last[0], ("bad".to_string(), "nack"));
        assert_eq!(last[1], ("next".to_string(), "ack"));
        assert!(blocked.is_none());
        assert_eq!(rig.io().ledger_ids(), ids(&[&e[1]]));
    }

    #[tokio::test]
    async fn a_stored_event_is_published_to_merged_once_per_process_however_often_it_comes() {
        let e = events(2);
        let rig = Rig::new(NoFaults);
        let m: Vec<Message> = e.iter().map(envelope::inline_message).collect();
        // A producer's retry in the same batch, then a redelivery of both.
        let retry = [("a", &m[0]), ("a-retry", &m[0]), ("b", &m[1])];
        let mut blocked = None;
        assert_eq!(rig.batch(&retry, 1, &mut blocked).await.len(), 3);
        let redelivery = [("a", &m[0]), ("b", &m[1])];
        assert_eq!(
            rig.batch(&redelivery, 2, &mut blocked).await,
            settled(&["a", "b"], "ack")
        );
        assert_eq!(rig.io().ledger_ids(), ids(&[&e[0], &e[1]]));
        assert_eq!(rig.io().merged_ids(), ids(&[&e[0], &e[1]]));
    }

    #[tokio::test]
    async fn a_stopping_worker_nacks_what_it_has_not_started() {
        let e = events(2);
        let rig = Rig::new(NoFaults);
        rig.ingest.stopping.store(true, Ordering::SeqCst);
        let m: Vec<Message> = e.iter().map(envelope::inline_message).collect();
        let names = ["m1", "m2"];
        let mut blocked = None;
        assert_eq!(
            rig.batch(&named(&names, &m), 1, &mut blocked).await,
            settled(&names, "nack")
        );
        assert!(rig.io().ledger_ids().is_empty());
        assert_eq!(rig.io().statements.load(Ordering::SeqCst), 0);
    }
}
