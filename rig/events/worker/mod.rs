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
//!   outcome one-by-one processing would have (see `batch::Ingest::run_batch`). The one difference:
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
mod batch;
pub mod health;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::envelope::ClaimRef;
use crate::event_store::{AppendError, Appended, EventStore, NewEvent};
use batch::{Delivery, Ingest, Io, PublishError};

pub use acceptance::AcceptanceMode;
use rig_topology::Topology;

/// On a graceful stop, how long the worker hands back what its client holds, and the quiet
/// spell that ends it early (see `hand_back_buffered`).
const HAND_BACK_LIMIT: Duration = Duration::from_secs(2);
const HAND_BACK_QUIET: Duration = Duration::from_millis(50);
/// How long a key's loop waits for its next message before it ends.
const KEY_IDLE: Duration = Duration::from_secs(30);
/// How many event ids the worker remembers as published to merged (see `Ingest::published`).
const PUBLISHED_MEMORY: usize = 100_000;
/// How many queued messages of one key a key loop takes at once (by default). Their events are appended
/// with one statement and published to merged together: one database round trip and one
/// publish batch per key and turn instead of one of each per message, which is what bounded
/// the worker (the publisher holds each batch up to 10 ms to fill it). Bounded so that one
/// busy key yields to the others and its statement stays small.
pub const KEY_BATCH: usize = 100;

/// How far the worker's client extends a lease at a time: the least Pub/Sub takes. The client
/// keeps extending while a message is in hand (a stalled database holds nothing up), and a
/// crashed worker's keys go to its replacement after this long rather than the client's
/// default minute (measured: a SIGKILL with the default held every key for 57 s).
pub const LEASE_EXTENSION: Duration = Duration::from_secs(10);

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
    /// How far the client extends a lease at a time ([`LEASE_EXTENSION`]): what a crash costs,
    /// since a dead worker's messages — and on an ordered subscription every later message of
    /// their keys — come back only once their lease runs out.
    pub lease_extension: Duration,
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
            lease_extension: LEASE_EXTENSION,
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

/// The worker's I/O: the ingest logic's [`Io`] on the real clients.
struct Clients {
    store: EventStore,
    storage: Storage,
    merged: Publisher,
    dead_letters: Publisher,
}

impl Io for Clients {
    fn fetch_claim(
        &self,
        claim: &ClaimRef,
        verify: bool,
    ) -> impl Future<Output = Result<String, ClaimError>> + Send {
        claim_check::fetch(&self.storage, claim, verify)
    }

    fn append(
        &self,
        events: &[NewEvent],
    ) -> impl Future<Output = Result<Vec<Result<Appended, AppendError>>, sqlx::Error>> + Send {
        self.store.append_batch(events)
    }

    fn publish_merged(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<(), PublishError>> + Send + 'static {
        let published = self.merged.publish(message);
        async move {
            published
                .await
                .map(|_| ())
                .map_err(|e| PublishError::from(Box::new(e)))
        }
    }

    fn resume_merged(&self, ordering_key: &str) {
        self.merged.resume_publish(ordering_key);
    }

    fn publish_dead_letter(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<(), PublishError>> + Send {
        let published = self.dead_letters.publish(message);
        async move {
            published
                .await
                .map(|_| ())
                .map_err(|e| PublishError::from(Box::new(e)))
        }
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

pub struct Worker {
    core: Arc<Ingest<Clients>>,
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
        let clients = Clients {
            store,
            storage: env.storage.client().await?,
            merged: env.pubsub.publisher(&options.merged_topic).await?,
            dead_letters: env.pubsub.publisher(&options.dead_letter_topic).await?,
        };
        let core = Ingest::new(options, clients, faults, env.bucket.clone());
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
            .set_max_lease_extension(self.core.options.lease_extension)
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
                tasks.spawn(deliver(core, message, handler));
                continue;
            }
            let key = message.ordering_key.clone();
            let mut delivery = (message, handler);
            // A key's loop ends after a quiet spell; a closed channel means "start another".
            for _ in 0..2 {
                let sender = keys.entry(key.clone()).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tasks.spawn(key_loop(self.core.clone(), rx));
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

/// A message without an ordering key: a batch of one, with nothing to block.
async fn deliver(ingest: Arc<Ingest<Clients>>, message: Message, handler: Handler) {
    ingest.run_batch(vec![(message, handler)], &mut None).await;
}

/// One ordering key's messages, in order. Once a message fails, the key is blocked: later
/// messages of the key are nacked (not stored) until the failed one comes back and is
/// stored, or has had its last attempt. Holding them instead would deadlock: an ordered
/// subscription does not redeliver the failed message while later messages of its key are
/// outstanding.
///
/// The loop takes what is queued for its key at once (up to `key_batch`) and hands it to
/// `Ingest::run_batch`, which keeps exactly these rules message by message.
async fn key_loop(
    ingest: Arc<Ingest<Clients>>,
    mut rx: mpsc::UnboundedReceiver<(Message, Handler)>,
) {
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
        while batch.len() < ingest.options.key_batch.max(1) {
            match rx.try_recv() {
                Ok(delivery) => batch.push(delivery),
                Err(_) => break,
            }
        }
        ingest.run_batch(batch, &mut blocked).await;
    }
}

/// Runs the worker until `stop` resolves, restarting it (with backoff) when its stream fails,
/// logging progress every 10 seconds, and warning about a dependency that does not answer or
/// refuses (see [`health`]) when it starts and every `warn_every` while it lasts.
pub async fn run_until(
    env: &Connections,
    topology: &Topology,
    warn_every: Duration,
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
    let watchdog = tokio::spawn(health::watch(env.clone(), warn_every));
    let _watchdog = AbortOnDrop(watchdog);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let env = env.clone();
    let mut supervisor = tokio::spawn(async move {
        let mut stop_rx = stop_rx;
        let mut backoff = Duration::from_secs(1);
        // The watchdog repeats what stays wrong; here only the first failure of a streak is
        // a warning.
        let mut failing = false;
        loop {
            if *stop_rx.borrow() {
                return Ok::<_, anyhow::Error>(());
            }
            // Connecting can fail too (database down, wrong password): say so and retry.
            let worker = match Worker::connect(&env, options.clone(), Arc::new(NoFaults)).await {
                Ok(worker) => worker,
                Err(e) => {
                    if failing {
                        tracing::debug!("{e:#}; retrying in {backoff:?}");
                    } else {
                        tracing::warn!("{e:#}; retrying in {backoff:?}");
                    }
                    failing = true;
                    pause(backoff, &mut stop_rx).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            failing = false;
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

/// A task that ends with its owner, however the owner ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits `backoff`, or less if a stop is asked for meanwhile.
async fn pause(backoff: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = tokio::time::timeout(backoff, stop.changed()).await;
}
