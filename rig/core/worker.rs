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
//! - messages carrying the probe attribute are dropped: on the real service the subscription
//!   filter keeps them away, the emulator does not apply filters;
//! - in acceptance mode (`WorkerOptions::acceptance`, staging acceptance on an acceptance
//!   subscription) it is the other way round: only the probes of one acceptance run are
//!   processed, other probes are released for their runs, and rows go only to an acceptance
//!   database. What it publishes keeps the probe attribute, so it reaches only the
//!   acceptance subscriptions of `events.merged` and `events.dlq`.

use std::collections::{HashMap, HashSet};
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

use crate::claim_check::{self, ClaimError};
use crate::envelope::{self, PayloadSource};
use crate::environment::Environment;
use crate::event_store::{AppendError, Appended, EventStore};
use crate::topology::Topology;

/// How long a key's loop waits for its next message before it ends.
const KEY_IDLE: Duration = Duration::from_secs(30);
/// How many event ids the worker remembers as published to merged (see `Core::published`).
const PUBLISHED_MEMORY: usize = 100_000;

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
    /// How long a key stays blocked behind a failed message that does not come back (it may
    /// have gone to another worker): the retry policy's longest backoff plus a margin.
    pub block_timeout: Duration,
    /// Check claim-checked payloads against their size and SHA-256. Only the scenarios'
    /// mutation test turns this off, to show the oversized-payload scenario catches it.
    pub verify_claims: bool,
    /// Staging acceptance: process only this run's probes (see the module docs).
    pub acceptance: Option<crate::acceptance::AcceptanceMode>,
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
    /// Called once per delivery of a valid event, before the append.
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
}

impl WorkerStats {
    pub fn summary(&self) -> String {
        format!(
            "stored {}, already stored {}, dead-lettered {}, probes dropped {}, nacked {}, deferred {}, not ours {}",
            self.stored.load(Ordering::Relaxed),
            self.already_stored.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
            self.probes_dropped.load(Ordering::Relaxed),
            self.nacked.load(Ordering::Relaxed),
            self.deferred.load(Ordering::Relaxed),
            self.not_ours.load(Ordering::Relaxed),
        )
    }
}

/// How one delivery ended.
enum Disposition {
    Ack,
    /// Failed for a reason a retry may cure (the database or GCS unavailable, ...).
    Nack(String),
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
    env: Environment,
}

impl Worker {
    pub async fn connect(
        env: &Environment,
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

impl Core {
    async fn deliver(self: Arc<Self>, message: Message, handler: Handler) {
        let attempt = handler
            .delivery_attempt()
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(1);
        let disposition = self.process(&message, attempt).await;
        match self.settle(&message, attempt, disposition).await {
            Disposition::Ack => handler.ack(),
            Disposition::Nack(_) => {
                self.stats.nacked.fetch_add(1, Ordering::Relaxed);
                handler.nack()
            }
        }
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

    /// One ordering key's messages, strictly one after another. Once a message fails, the
    /// key is blocked: later messages of the key are nacked (not stored) until the failed one
    /// comes back and is stored, or has had its last attempt. Holding them instead would
    /// deadlock: an ordered subscription does not redeliver the failed message while later
    /// messages of its key are outstanding.
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
            let Some((message, handler)) = next else {
                break;
            };
            if self.stopping.load(Ordering::SeqCst) {
                drop(handler); // dropping a handler nacks it
                continue;
            }
            // Another worker may have taken over the failed message; don't wait forever.
            if blocked
                .as_ref()
                .is_some_and(|(_, since)| since.elapsed() > self.options.block_timeout)
            {
                blocked = None;
            }
            let attempt = handler
                .delivery_attempt()
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(1);
            if let Some((blocker, _)) = &blocked
                && *blocker != message.message_id
            {
                self.stats.deferred.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(key = %message.ordering_key, message_id = %message.message_id, "deferred behind a failed message");
                let held = Disposition::Nack(format!(
                    "held back behind message {blocker} of the same ordering key, which had not been stored; dead-lettered rather than stored out of order: replay it after that one"
                ));
                match self.settle(&message, attempt, held).await {
                    Disposition::Ack => handler.ack(),
                    Disposition::Nack(_) => handler.nack(),
                }
                continue;
            }
            let disposition = self.process(&message, attempt).await;
            let disposition = self.settle(&message, attempt, disposition).await;
            tracing::debug!(
                key = %message.ordering_key,
                message_id = %message.message_id,
                attempt,
                ack = matches!(disposition, Disposition::Ack),
                "delivery"
            );
            match disposition {
                Disposition::Ack => {
                    handler.ack();
                    blocked = None;
                }
                Disposition::Nack(_) => {
                    self.stats.nacked.fetch_add(1, Ordering::Relaxed);
                    handler.nack();
                    // Only a failed dead-letter publish on the last attempt ends here: then
                    // the service dead-letters it, and the key moves on.
                    let last_attempt = self.last_attempt(attempt);
                    blocked = (!last_attempt).then(|| (message.message_id.clone(), Instant::now()));
                }
            }
        }
    }

    async fn process(&self, message: &Message, attempt: u32) -> Disposition {
        let envelope = match envelope::decode(message) {
            Ok(e) => e,
            Err(reason) => return self.dead_letter(message, &reason, attempt).await,
        };
        let payload = match &envelope.payload {
            PayloadSource::Inline(p) => p.clone(),
            // The worker's identity may read more than this bucket: a reference elsewhere
            // would make it fetch, and store, whatever the publisher points at.
            PayloadSource::Claim(claim) if claim.bucket != self.payload_bucket => {
                let reason = format!(
                    "claim reference {} is outside the payload bucket {}",
                    claim.uri(),
                    self.payload_bucket
                );
                return self.dead_letter(message, &reason, attempt).await;
            }
            PayloadSource::Claim(claim) => {
                match claim_check::fetch(&self.storage, claim, self.options.verify_claims).await {
                    Ok(p) => p,
                    Err(ClaimError::Rejected(reason)) => {
                        return self.dead_letter(message, &reason, attempt).await;
                    }
                    Err(ClaimError::Transient(e)) => {
                        tracing::warn!(event_id = %envelope.event_id, "claim check: {e}");
                        return Disposition::Nack(format!("claim check: {e}"));
                    }
                }
            }
        };
        let key_check = envelope::check_ordering_key(message, &envelope);
        let event = envelope.into_event(payload);
        if let Err(invalid) = event.validate() {
            return self.dead_letter(message, &invalid.reason, attempt).await;
        }
        if let Err(reason) = key_check {
            return self.dead_letter(message, &reason, attempt).await;
        }
        if self.faults.before_append(event.event_id, attempt) == Fault::Nack {
            return Disposition::Nack("a fault injected before the append".into());
        }
        let appended = match self.store.append(&event).await {
            Ok(a) => a,
            Err(AppendError::Database(e)) => {
                tracing::warn!(event_id = %event.event_id, "event store: {e}");
                return Disposition::Nack(format!("event store: {e}"));
            }
            Err(
                e @ (AppendError::Invalid(_)
                | AppendError::Conflict { .. }
                | AppendError::Refused { .. }),
            ) => {
                return self.dead_letter(message, &e.to_string(), attempt).await;
            }
        };
        match appended {
            Appended::Stored => self.stats.stored.fetch_add(1, Ordering::Relaxed),
            Appended::AlreadyStored => self.stats.already_stored.fetch_add(1, Ordering::Relaxed),
        };
        if self.faults.after_append(event.event_id, attempt) == Fault::Nack {
            return Disposition::Nack("a fault injected after the append".into());
        }
        let already_published = self
            .published
            .lock()
            .map(|set| set.contains(&event.event_id))
            .unwrap_or(false);
        if !already_published {
            let merged = Message::new()
                .set_data(message.data.clone())
                .set_ordering_key(message.ordering_key.clone())
                .set_attributes(envelope::merged_attributes(&message.attributes, &event));
            if let Err(e) = self.merged.publish(merged).await {
                tracing::warn!(event_id = %event.event_id, "publishing to {}: {e}", self.options.merged_topic);
                self.merged.resume_publish(message.ordering_key.clone());
                return Disposition::Nack(format!(
                    "publishing to {}: {e}",
                    self.options.merged_topic
                ));
            }
            if let Ok(mut set) = self.published.lock() {
                // Bounded: forgetting only risks a duplicate on merged, which is at-least-once.
                if set.len() >= PUBLISHED_MEMORY {
                    set.clear();
                }
                set.insert(event.event_id);
            }
        }
        Disposition::Ack
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
    env: &Environment,
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
