//! The reference ingest worker — what the sync engine's background worker does, and the system
//! the scenarios put under test:
//! stream-pull `events.raw` → validate → resolve a claim-checked payload → append to the ledger
//! (idempotent on event_id) → publish to `events.merged` with the same ordering key → ack.
//!
//! Failure handling:
//! - transient failures (database, GCS, publish) nack; after the subscription's
//!   `max_delivery_attempts` Pub/Sub's dead-letter policy takes the message to `events.dlq`;
//! - bad input (unreadable headers, invalid JSON, over-long fields, a missing or modified
//!   claim object, a conflicting event_id) is never stored: the worker publishes it to
//!   `events.dlq` with a `dead_letter_reason` and acks it;
//! - per-key order is kept by the worker too: once a key's message fails, later messages of
//!   that key are nacked until it is stored or given up to the dead-letter policy, because
//!   Pub/Sub may deliver them before the failed message's redelivery. Each such nack counts as
//!   a delivery attempt of the later message: on an ordered, dead-lettering subscription a key
//!   that fails 5 times in a row can push a healthy message to the dead-letter topic;
//! - a key's loop takes what is queued for the key at once (up to [`KEY_BATCH`] messages),
//!   appends their events with one statement and publishes them to merged together, with the
//!   outcome one-by-one processing would have (see [`Core::run_batch`]). The one difference:
//!   messages behind a failure may already be stored by that statement (their redelivery is
//!   an idempotent replay, after the failed one), and their `before_append` fault may already
//!   have been asked;
//! - messages carrying the probe attribute are dropped: on the real service the subscription
//!   filter keeps them away, the emulator does not apply filters;
//! - in acceptance mode (`WorkerOptions::acceptance`, staging acceptance on an acceptance
//!   subscription) it is the other way round: only the probes of one acceptance run are
//!   processed, other probes are released for their runs, and rows go only to an acceptance
//!   database. What it publishes keeps the probe attribute, so it reaches only the
//!   acceptance subscriptions of `events.merged` and `events.dlq`.

mod acceptance;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::ShutdownBehavior;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_storage::client::Storage;
use tokio::sync::mpsc;

use crate::Connections;
use crate::claim_check::{self, ClaimError};
use crate::envelope::{self, PayloadSource};
use crate::event_store::{AppendError, Appended, EventStore, NewEvent};

pub use acceptance::AcceptanceMode;
use rig_topology::Topology;

/// On a graceful stop, how long the worker hands back what its client holds, and the quiet
/// spell that ends it early (see `hand_back_buffered`).
const HAND_BACK_LIMIT: Duration = Duration::from_secs(2);
const HAND_BACK_QUIET: Duration = Duration::from_millis(50);
/// How long a key's loop waits for its next message before it ends.
const KEY_IDLE: Duration = Duration::from_secs(30);
/// How many event ids the worker remembers as published to merged (see `Core::published`).
const PUBLISHED_MEMORY: usize = 100_000;
/// How many queued messages of one key a key loop takes at once (by default). Their events are appended
/// with one statement and published to merged together: one database round trip and one
/// publish batch per key and turn instead of one of each per message, which is what bounded
/// the worker (the publisher holds each batch up to 10 ms to fill it). Bounded so that one
/// busy key yields to the others and its statement stays small.
pub const KEY_BATCH: usize = 100;
/// Payload bytes a group holds before it is appended (claim-checked payloads are fetched
/// into memory first).
const GROUP_BYTES: usize = 16 * 1024 * 1024;

/// What the worker reads and writes, taken from the Terraform topology.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub subscription: String,
    pub merged_topic: String,
    pub dead_letter_topic: String,
    pub probe_attribute: Option<String>,
    /// The subscription's dead-letter attempts: after a failure on this attempt the key is
    /// released, because the service dead-letters the message.
    pub max_delivery_attempts: Option<u32>,
    /// Connections to the event store.
    pub connections: u32,
    /// How many queued messages of one key are taken at once ([`KEY_BATCH`]; 1 processes a
    /// key's messages one at a time, which the pipeline benchmark measures as its before).
    pub key_batch: usize,
    /// How long a key stays blocked behind a failed message that does not come back (it may
    /// have gone to another worker): the retry policy's longest backoff plus a margin.
    pub block_timeout: Duration,
    /// Check claim-checked payloads against their size and SHA-256. Only the scenarios'
    /// mutation test turns this off, to show the oversized-payload scenario catches it.
    pub verify_claims: bool,
    /// Staging acceptance: process only this run's probes (see the module docs).
    pub acceptance: Option<AcceptanceMode>,
}

impl WorkerOptions {
    /// The worker on `events.raw`, as the topology declares it.
    pub fn from_topology(topology: &Topology) -> anyhow::Result<Self> {
        // The raw topic is the one the probes go to: the validation subscription's.
        let raw = topology
            .validation_subscription()
            .map(|s| s.topic.clone())
            .context("the Terraform declares no validation subscription, so no raw topic")?;
        let subscription = topology
            .worker_subscription(&raw)
            .with_context(|| format!("the Terraform declares no worker subscription on {raw}"))?;
        let dead_letter = subscription.dead_letter.clone().with_context(|| {
            format!(
                "{} has no dead-letter policy in the Terraform",
                subscription.name
            )
        })?;
        let merged_topic = topology
            .topics
            .iter()
            .map(|t| t.name.clone())
            .find(|t| t != &raw && t != &dead_letter.topic)
            .context("the Terraform declares no merged topic")?;
        Ok(Self {
            subscription: subscription.name.clone(),
            merged_topic,
            dead_letter_topic: dead_letter.topic,
            probe_attribute: topology.probe_attribute(),
            max_delivery_attempts: Some(dead_letter.max_delivery_attempts),
            connections: 4,
            key_batch: KEY_BATCH,
            block_timeout: subscription
                .retry
                .as_ref()
                .map_or(Duration::from_secs(600), |r| r.maximum_backoff)
                + Duration::from_secs(5),
            verify_claims: true,
            acceptance: None,
        })
    }
}

/// Points where a scenario can make the worker fail as a real one would.
pub trait Faults: Send + Sync {
    /// Called once per delivery of a valid event, before the append. (The key loop asks it
    /// for each message of a batch before the batch's one statement: a later message that an
    /// earlier failure then holds back has been asked too.)
    fn before_append(&self, _event_id: uuid::Uuid, _attempt: u32) -> Fault {
        Fault::None
    }
    /// Called after a successful append, before publishing to merged and acking.
    fn after_append(&self, _event_id: uuid::Uuid, _attempt: u32) -> Fault {
        Fault::None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Fail this delivery: nack it.
    Nack,
}

/// No faults: production behaviour.
pub struct NoFaults;
impl Faults for NoFaults {}

#[derive(Debug, Default)]
pub struct WorkerStats {
    pub stored: AtomicU64,
    pub already_stored: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub probes_dropped: AtomicU64,
    pub nacked: AtomicU64,
    /// Later messages of a blocked key, nacked to come back after the failed one.
    pub deferred: AtomicU64,
    /// Acceptance mode: messages that were not this run's (other probes released, copies of
    /// real traffic acknowledged unprocessed).
    pub not_ours: AtomicU64,
    /// Append statements (each for a batch of a key's events).
    pub appends: AtomicU64,
}

impl WorkerStats {
    pub fn summary(&self) -> String {
        format!(
            "stored {}, already stored {}, dead-lettered {}, probes dropped {}, nacked {}, deferred {}, not ours {}, in {} append statements",
            self.stored.load(Ordering::Relaxed),
            self.already_stored.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
            self.probes_dropped.load(Ordering::Relaxed),
            self.nacked.load(Ordering::Relaxed),
            self.deferred.load(Ordering::Relaxed),
            self.not_ours.load(Ordering::Relaxed),
            self.appends.load(Ordering::Relaxed),
        )
    }
}

/// How one delivery ended.
enum Disposition {
    Ack,
    /// Failed for a reason a retry may cure (the database or GCS unavailable, ...).
    Nack(String),
}

/// What the worker needs of a delivery: its attempt number, and settling it. The subscriber's
/// [`Handler`] in production; the unit tests record the outcome instead.
trait Delivery: Send {
    /// The delivery attempt as the service counts it (1 when it does not count).
    fn attempt(&self) -> u32;
    fn ack(self);
    fn nack(self);
}

impl Delivery for Handler {
    fn attempt(&self) -> u32 {
        self.delivery_attempt()
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(1)
    }
    fn ack(self) {
        Handler::ack(self)
    }
    fn nack(self) {
        Handler::nack(self)
    }
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

struct Core {
    options: WorkerOptions,
    store: EventStore,
    storage: Storage,
    merged: Publisher,
    dead_letters: Publisher,
    faults: Arc<dyn Faults>,
    stats: Arc<WorkerStats>,
    /// Events this process already published to merged, so a redelivery of a stored event
    /// is not published twice. (After a restart the set is empty: merged is at-least-once.)
    published: Mutex<HashSet<uuid::Uuid>>,
    stopping: AtomicBool,
    /// The environment's payload bucket: the only one a claim check may point into.
    payload_bucket: String,
}

pub struct Worker {
    core: Arc<Core>,
    env: Connections,
}

impl Worker {
    pub async fn connect(
        env: &Connections,
        options: WorkerOptions,
        faults: Arc<dyn Faults>,
    ) -> anyhow::Result<Self> {
        if let Some(acceptance) = &options.acceptance {
            anyhow::ensure!(
                options.probe_attribute.is_some(),
                "acceptance mode needs the Terraform's probe attribute, and it declares none"
            );
            acceptance.admit_database(&env.event_store.database)?;
        }
        let store = EventStore::connect(&env.event_store, options.connections)
            .await
            .with_context(|| {
                format!(
                    "connecting to the event store as {}",
                    env.event_store.username
                )
            })?;
        let core = Core {
            store,
            storage: env.storage.client().await?,
            merged: env.pubsub.publisher(&options.merged_topic).await?,
            dead_letters: env.pubsub.publisher(&options.dead_letter_topic).await?,
            faults,
            stats: Arc::default(),
            published: Mutex::default(),
            stopping: AtomicBool::new(false),
            payload_bucket: env.bucket.clone(),
            options,
        };
        Ok(Self {
            core: Arc::new(core),
            env: env.clone(),
        })
    }

    pub fn stats(&self) -> Arc<WorkerStats> {
        self.core.stats.clone()
    }

    /// Pulls until `shutdown` turns true (then finishes what is in hand and nacks what is
    /// queued), or until the stream fails (the error is returned: callers decide to restart).
    pub async fn run(
        self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<WorkerStats>> {
        let subscriber = self.env.pubsub.subscriber().await?;
        let path = self
            .env
            .pubsub
            .subscription_path(&self.core.options.subscription);
        let mut stream = subscriber
            .subscribe(path.clone())
            .set_max_outstanding_messages(20_000i64)
            .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
            .build();
        let shutdown_token = stream.shutdown_token();
        let mut keys: HashMap<String, mpsc::UnboundedSender<(Message, Handler)>> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        let result = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            // Finished per-key loops and single deliveries are reaped as we go.
            while tasks.try_join_next().is_some() {}
            let next = tokio::select! {
                changed = shutdown.changed() => {
                    // A dropped sender means nobody can stop us any more: stop now.
                    if changed.is_err() {
                        break Ok(());
                    }
                    continue;
                }
                next = stream.next() => next,
            };
            let (message, handler) = match next {
                None => break Err(anyhow::anyhow!("the stream on {path} ended")),
                Some(Err(e)) => {
                    break Err(anyhow::Error::new(e).context(format!("streaming pull on {path}")));
                }
                Some(Ok(delivery)) => delivery,
            };
            if let Some(attr) = &self.core.options.probe_attribute {
                let stats = &self.core.stats;
                match (&self.core.options.acceptance, message.attributes.get(attr)) {
                    (None, Some(_)) => {
                        stats.probes_dropped.fetch_add(1, Ordering::Relaxed);
                        handler.ack();
                        continue;
                    }
                    (Some(mode), Some(value)) if *value == mode.probe_value => {}
                    // Another run's (or case's) probe: released for whoever runs it.
                    (Some(_), Some(_)) => {
                        stats.not_ours.fetch_add(1, Ordering::Relaxed);
                        handler.nack();
                        continue;
                    }
                    // Real traffic on an acceptance subscription (a service that ignores the
                    // filter): this copy is not the worker's to store; the worker subscription
                    // has its own.
                    (Some(_), None) => {
                        stats.not_ours.fetch_add(1, Ordering::Relaxed);
                        handler.ack();
                        continue;
                    }
                    (None, None) => {}
                }
            }
            if message.ordering_key.is_empty() {
                let core = self.core.clone();
                tasks.spawn(async move { core.deliver(message, handler).await });
                continue;
            }
            let key = message.ordering_key.clone();
            let mut delivery = (message, handler);
            // A key's loop ends after a quiet spell; a closed channel means "start another".
            for _ in 0..2 {
                let sender = keys.entry(key.clone()).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tasks.spawn(self.core.clone().key_loop(rx));
                    tx
                });
                match sender.send(delivery) {
                    Ok(()) => break,
                    Err(mpsc::error::SendError(returned)) => {
                        keys.remove(&key);
                        delivery = returned;
                    }
                }
            }
        };
        self.core.stopping.store(true, Ordering::SeqCst);
        if result.is_ok() {
            hand_back_buffered(&mut stream).await;
        }
        drop(keys);
        while tasks.join_next().await.is_some() {}
        // Every handle is consumed by now; this waits for their acks and nacks to reach the
        // service. Dropping the stream instead could lose them, and the messages would stay
        // leased until their ack deadline.
        if tokio::time::timeout(Duration::from_secs(10), shutdown_token.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("pending acks/nacks on {path} were not confirmed within 10s");
        }
        result.map(|()| self.core.stats.clone())
    }
}

/// On a graceful stop, nacks what the client has already received but not handed over. Left
/// alone, each stays leased until the lease the client last asked for runs out (up to a
/// minute), and an ordered key waits that long before its next subscriber gets it. A nack
/// makes it deliverable again at once, in order ("specifying zero might immediately make the
/// message available for delivery to another subscriber client":
/// <https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions/modifyAckDeadline>).
/// Bounded, since the service
/// keeps sending while flow control allows; what is left still comes back when its lease ends.
async fn hand_back_buffered(stream: &mut google_cloud_pubsub::subscriber::MessageStream) {
    let until = Instant::now() + HAND_BACK_LIMIT;
    let mut handed_back = 0u64;
    while Instant::now() < until {
        match tokio::time::timeout(HAND_BACK_QUIET, stream.next()).await {
            Ok(Some(Ok((_, handler)))) => {
                handler.nack();
                handed_back += 1;
            }
            // Quiet, ended or failed: nothing more to hand back.
            _ => break,
        }
    }
    if handed_back > 0 {
        tracing::info!("stopping: handed back {handed_back} message(s) received but not started");
    }
}

impl Core {
    /// A message without an ordering key: a batch of one, with nothing to block.
    async fn deliver(self: Arc<Self>, message: Message, handler: Handler) {
        self.run_batch(vec![(message, handler)], &mut None).await;
    }

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

    /// One ordering key's messages, in order. Once a message fails, the key is blocked: later
    /// messages of the key are nacked (not stored) until the failed one comes back and is
    /// stored, or has had its last attempt. Holding them instead would deadlock: an ordered
    /// subscription does not redeliver the failed message while later messages of its key are
    /// outstanding.
    ///
    /// The loop takes what is queued for its key at once (up to `key_batch`) and hands it to
    /// [`Core::run_batch`], which keeps exactly these rules message by message.
    async fn key_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(Message, Handler)>) {
        let mut blocked: Option<(String, Instant)> = None;
        loop {
            let next = match tokio::time::timeout(KEY_IDLE, rx.recv()).await {
                Ok(next) => next,
                // Idle and not waiting for a redelivery: end, so that keys seen once do not
                // each keep a task and a channel for the life of the worker.
                Err(_) if blocked.is_none() => break,
                Err(_) => continue,
            };
            let Some(first) = next else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < self.options.key_batch.max(1) {
                match rx.try_recv() {
                    Ok(delivery) => batch.push(delivery),
                    Err(_) => break,
                }
            }
            self.run_batch(batch, &mut blocked).await;
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
    async fn run_batch<D: Delivery>(
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
            if blocked
                .as_ref()
                .is_some_and(|(_, since)| since.elapsed() > self.options.block_timeout)
            {
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

    /// Steps 2 and 3 of [`Core::run_batch`] for a group of checked events, in order.
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
                match self.store.append_batch(&events).await {
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
                Some(future) => future.await.map(|_| ()),
                None => Ok(()),
            });
        }
        let mut run = run.into_iter().zip(results);
        for (m, result) in run.by_ref() {
            if let Err(e) = result {
                tracing::debug!(event_id = %m.event.event_id, "publishing a run to merged: {e}; one at a time now");
                self.merged.resume_publish(m.message.ordering_key.clone());
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
                self.publish_merged(&m).await.map(|_| ())
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
                    self.merged.resume_publish(m.message.ordering_key.clone());
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
    fn publish_merged<D>(&self, m: &Member<D>) -> google_cloud_pubsub::publisher::PublishFuture {
        self.merged.publish(
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
                match claim_check::fetch(&self.storage, claim, self.options.verify_claims).await {
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
                *blocked = (!last_attempt).then(|| (message.message_id.clone(), Instant::now()));
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
        match self.dead_letters.publish(dead).await {
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

/// Runs the worker until `stop` resolves, restarting it (with backoff) when its stream fails,
/// and logging progress every 10 seconds.
pub async fn run_until(
    env: &Connections,
    topology: &Topology,
    stop: impl std::future::Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let options = WorkerOptions::from_topology(topology)?;
    tracing::info!(
        subscription = %options.subscription,
        merged = %options.merged_topic,
        dead_letters = %options.dead_letter_topic,
        "worker starting on project {}",
        env.pubsub.project_id
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let env = env.clone();
    let mut supervisor = tokio::spawn(async move {
        let mut stop_rx = stop_rx;
        let mut backoff = Duration::from_secs(1);
        loop {
            if *stop_rx.borrow() {
                return Ok::<_, anyhow::Error>(());
            }
            // Connecting can fail too (database down, wrong password): say so and retry.
            let worker = match Worker::connect(&env, options.clone(), Arc::new(NoFaults)).await {
                Ok(worker) => worker,
                Err(e) => {
                    tracing::warn!("{e:#}; retrying in {backoff:?}");
                    pause(backoff, &mut stop_rx).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            let stats = worker.stats();
            let progress = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    tracing::info!("{}", stats.summary());
                }
            });
            let result = worker.run(stop_rx.clone()).await;
            progress.abort();
            match result {
                Ok(stats) => {
                    tracing::info!("worker stopped: {}", stats.summary());
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!("{e:#}; restarting in {backoff:?}");
                    pause(backoff, &mut stop_rx).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    });
    tokio::select! {
        signal = stop => {
            tracing::info!("{signal}: finishing in-hand messages");
            let _ = stop_tx.send(true);
            supervisor.await?
        }
        ended = &mut supervisor => ended?,
    }
}

/// Waits `backoff`, or less if a stop is asked for meanwhile.
async fn pause(backoff: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = tokio::time::timeout(backoff, stop.changed()).await;
}
