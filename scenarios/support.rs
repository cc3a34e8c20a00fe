//! What the scenarios share: running workers, collecting a subscription, injecting faults,
//! waiting without hanging.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::ShutdownToken;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::acceptance::Mark;
use super::fixtures::{self, Aggregate};
use rig_events::event_store::{EventStore, NewEvent, StoredEvent};
use rig_events::producer::Producer;
use rig_events::worker::AcceptanceMode;
use rig_events::worker::{Fault, Faults, Worker, WorkerOptions, WorkerStats};
use rig_harness::acceptance::Belongs;
use rig_harness::environment::Environment;

/// Polls `done` every 100 ms until it returns true or `limit` passes; returns whether it did.
pub async fn wait_for<F, Fut>(limit: Duration, done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_every(Duration::from_millis(100), limit, done).await
}

/// [`wait_for`], polling every `poll` (benchmarks poll finely, so the poll does not pad what
/// they time).
pub async fn wait_for_every<F, Fut>(poll: Duration, limit: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if done().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(poll).await;
    }
}

/// A worker running in the background.
pub struct RunningWorker {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<Arc<WorkerStats>>>,
    pub stats: Arc<WorkerStats>,
}

impl RunningWorker {
    pub async fn start(
        env: &Environment,
        options: WorkerOptions,
        faults: Arc<dyn Faults>,
    ) -> anyhow::Result<Self> {
        let worker = Worker::connect(&env.connections(), options, faults).await?;
        let stats = worker.stats();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(worker.run(stopped));
        Ok(Self { stop, task, stats })
    }

    /// Cuts the worker off wherever it is — mid-append, between the append and the publish to
    /// merged, before an ack — as a crash would. (In-process, its leases are released as its
    /// handlers drop; a killed process leaves them to expire instead.)
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Whether the worker's loop ended by itself (a stream failure).
    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the worker and describes how it ran, for failure messages: its counters, or
    /// the error its stream ended with.
    pub async fn stop_and_describe(self) -> String {
        self.stop()
            .await
            .map(|s| s.summary())
            .unwrap_or_else(|e| format!("{e:#}"))
    }

    /// Stops the worker (in-hand work finishes, queued messages are nacked) and returns how
    /// its run ended: `Err` carries a stream failure.
    pub async fn stop(self) -> anyhow::Result<Arc<WorkerStats>> {
        let _ = self.stop.send(true);
        match tokio::time::timeout(Duration::from_secs(20), self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(anyhow::anyhow!("the worker task panicked: {join}")),
            Err(_) => Err(anyhow::anyhow!("the worker did not stop within 20s")),
        }
    }
}

/// Everything delivered on a subscription, acknowledged and kept in arrival order.
/// It runs in its own task: a stream's `next()` must not be cancelled by other work (a
/// cancelled first call can leave the stream unable to deliver); only the final stop cancels it.
pub struct Collector {
    messages: Arc<Mutex<Vec<Message>>>,
    error: Arc<Mutex<Option<String>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    token: ShutdownToken,
}

impl Collector {
    pub async fn start(env: &Environment, subscription: &str) -> anyhow::Result<Self> {
        Self::start_marked(env, subscription, None).await
    }

    /// On a shared acceptance subscription (`mark` given) only the case's messages are kept;
    /// the rest of this run's are acknowledged too (left over, nobody else wants them), other
    /// runs' probes are released for them, and copies of real traffic (a service that ignores
    /// the filter) are acknowledged on this subscription only.
    pub async fn start_marked(
        env: &Environment,
        subscription: &str,
        mark: Option<Mark>,
    ) -> anyhow::Result<Self> {
        let subscriber = env.pubsub.subscriber().await?;
        let mut stream = subscriber
            .subscribe(env.pubsub.subscription_path(subscription))
            .build();
        let token = stream.shutdown_token();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let error = Arc::new(Mutex::new(None));
        let (stop, mut stopped) = watch::channel(false);
        let (sink, failure) = (messages.clone(), error.clone());
        let task = tokio::spawn(async move {
            let _keep = subscriber;
            loop {
                let next = tokio::select! {
                    _ = stopped.changed() => break,
                    next = stream.next() => next,
                };
                match next {
                    Some(Ok((message, handler))) => {
                        match mark.as_ref().map(|m| m.belongs(&message)) {
                            None | Some(Belongs::Ours) => {}
                            Some(Belongs::OtherRun) => {
                                handler.nack();
                                continue;
                            }
                            Some(Belongs::ThisRun | Belongs::NotProbe) => {
                                handler.ack();
                                continue;
                            }
                        }
                        handler.ack();
                        if let Ok(mut all) = sink.lock() {
                            all.push(message);
                        }
                    }
                    Some(Err(e)) => {
                        if let Ok(mut f) = failure.lock() {
                            *f = Some(format!("{e:?}"));
                        }
                        break;
                    }
                    None => break,
                }
            }
        });
        Ok(Self {
            messages,
            error,
            stop,
            task,
            token,
        })
    }

    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.messages.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    pub async fn stop(self) -> Vec<Message> {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        // The acknowledgements reach the service before this returns: on a shared acceptance
        // subscription nothing is to stay unacknowledged.
        let _ = tokio::time::timeout(Duration::from_secs(10), self.token.shutdown()).await;
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// How often an event fails before it is appended: a number of deliveries, or every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failures {
    Times(u32),
    Always,
}

/// A scripted set of failures, and a record of every delivery attempt the worker saw.
#[derive(Default)]
pub struct FaultPlan {
    before_append: HashMap<uuid::Uuid, Failures>,
    after_append_once: HashMap<uuid::Uuid, ()>,
    seen: Mutex<HashMap<uuid::Uuid, Vec<u32>>>,
    failed_after: Mutex<HashMap<uuid::Uuid, bool>>,
}

impl FaultPlan {
    pub fn fail_before_append(&mut self, event_id: uuid::Uuid, failures: Failures) {
        self.before_append.insert(event_id, failures);
    }

    /// The first successful append of `event_id` is followed by a nack, as if the worker had
    /// crashed before acknowledging: the message comes back, already stored.
    pub fn fail_once_after_append(&mut self, event_id: uuid::Uuid) {
        self.after_append_once.insert(event_id, ());
    }

    /// The delivery attempts (as Pub/Sub numbered them) that reached the append step.
    pub fn attempts(&self, event_id: &uuid::Uuid) -> Vec<u32> {
        self.seen
            .lock()
            .ok()
            .and_then(|s| s.get(event_id).cloned())
            .unwrap_or_default()
    }
}

impl Faults for FaultPlan {
    fn before_append(&self, event_id: uuid::Uuid, attempt: u32) -> Fault {
        let tries = match self.seen.lock() {
            Ok(mut seen) => {
                let attempts = seen.entry(event_id).or_default();
                attempts.push(attempt);
                attempts.len() as u32
            }
            Err(_) => return Fault::None,
        };
        match self.before_append.get(&event_id) {
            Some(Failures::Always) => Fault::Nack,
            Some(Failures::Times(n)) if tries <= *n => Fault::Nack,
            _ => Fault::None,
        }
    }

    fn after_append(&self, event_id: uuid::Uuid, _attempt: u32) -> Fault {
        if !self.after_append_once.contains_key(&event_id) {
            return Fault::None;
        }
        match self.failed_after.lock() {
            Ok(mut failed) if !failed.contains_key(&event_id) => {
                failed.insert(event_id, true);
                Fault::Nack
            }
            _ => Fault::None,
        }
    }
}

/// The event id a message carries, if any.
pub fn event_id_of(message: &Message) -> Option<uuid::Uuid> {
    message
        .attributes
        .get(rig_events::envelope::EVENT_ID)
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
}

/// Event ids of each key in arrival order.
pub fn by_key<I: IntoIterator<Item = (String, uuid::Uuid)>>(
    items: I,
) -> HashMap<String, Vec<uuid::Uuid>> {
    let mut map: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
    for (key, id) in items {
        map.entry(key).or_default().push(id);
    }
    map
}

/// Each key's event ids on `messages` in arrival order, every event at its first appearance
/// only: where Pub/Sub's at-least-once delivery allows repeats, a gap or a reordering still
/// shows.
pub fn first_copies_by_key(messages: &[Message]) -> HashMap<String, Vec<uuid::Uuid>> {
    let mut seen = std::collections::HashSet::new();
    by_key(messages.iter().filter_map(|m| {
        let id = event_id_of(m)?;
        seen.insert(id).then(|| (m.ordering_key.clone(), id))
    }))
}

/// Runs an async block on the scenario runtime from a test thread.
pub fn block_on<F: Future>(ctx: &super::Context, f: F) -> F::Output {
    ctx.runtime.block_on(f)
}

/// The worker's side of a deployed environment, all read from its Terraform.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub options: rig_events::worker::WorkerOptions,
    /// The topic the worker's subscription reads: where producers publish.
    pub raw_topic: String,
    /// The subscription that keeps dead letters.
    pub dead_letters: String,
    /// The subscription downstream consumers read merged events from.
    pub merged: String,
}

impl Wiring {
    pub fn of(ctx: &super::Context) -> anyhow::Result<Self> {
        let mut wiring = Self::from_topology(&ctx.world.topology)?;
        wiring.options.verify_claims = ctx.world.verify_claims;
        Ok(wiring)
    }

    /// The reference worker wired from `topology` as the Terraform declares it.
    pub fn from_topology(topology: &rig_topology::Topology) -> anyhow::Result<Self> {
        let options = WorkerOptions::from_topology(topology)?;
        let raw_topic = topology
            .subscription(&options.subscription)
            .map(|s| s.topic.clone())
            .ok_or_else(|| anyhow::anyhow!("{} is not in the Terraform", options.subscription))?;
        // The operators' dead-letter subscription, not the acceptance one: that one only
        // admits probes (its filter), which a service that applies filters enforces.
        let dead_letters = topology
            .subscriptions_on(&options.dead_letter_topic)
            .find(|s| !s.is_acceptance())
            .map(|s| s.name.clone())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the Terraform declares no subscription on {}",
                    options.dead_letter_topic
                )
            })?;
        let merged = topology
            .worker_subscription(&options.merged_topic)
            .map(|s| s.name.clone())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the Terraform declares no subscription on {}",
                    options.merged_topic
                )
            })?;
        Ok(Self {
            options,
            raw_topic,
            dead_letters,
            merged,
        })
    }

    /// The same wiring on the Terraform's acceptance subscriptions (dev and staging): the
    /// worker in acceptance mode on `events.raw.acceptance`, merged events and dead letters
    /// read back on `events.merged.acceptance` and `events.dlq.acceptance`. Ordering,
    /// dead-letter and retry settings are the acceptance subscription's, which the Terraform
    /// makes the worker's (`acceptance-mirrors-worker`).
    pub fn acceptance(
        ctx: &super::Context,
        mark: &Mark,
        databases: &[String],
    ) -> anyhow::Result<Self> {
        let Wiring {
            mut options,
            raw_topic,
            ..
        } = Self::of(ctx)?;
        let topology = &ctx.world.topology;
        let on = |topic: &str| {
            topology.acceptance_subscription(topic).ok_or_else(|| {
                anyhow::anyhow!(
                    "the Terraform declares no acceptance subscription on {topic}: set acceptance_enabled = true (dev and staging)"
                )
            })
        };
        let raw = on(&raw_topic)?;
        options.subscription = raw.name.clone();
        options.max_delivery_attempts = raw.dead_letter.as_ref().map(|d| d.max_delivery_attempts);
        if let Some(retry) = &raw.retry {
            options.block_timeout = retry.maximum_backoff + Duration::from_secs(5);
        }
        options.acceptance = Some(AcceptanceMode {
            probe_value: mark.value.clone(),
            databases: databases.to_vec(),
        });
        Ok(Self {
            dead_letters: on(&options.dead_letter_topic)?.name.clone(),
            merged: on(&options.merged_topic)?.name.clone(),
            options,
            raw_topic,
        })
    }
}

/// One case's world: where it runs, the worker's wiring, and — on a shared acceptance
/// backbone — what marks its messages and rows as its own (`mark`). Locally every case has
/// its own scope and no mark, and each method is the plain thing.
pub struct Case {
    /// Unique within the run (`ordering-0`).
    pub name: String,
    pub env: Environment,
    pub wiring: Wiring,
    pub mark: Option<Mark>,
    /// On a shared backbone: the longest one wait may take (the local limit is the floor).
    pub(crate) patience: Option<Duration>,
}

impl Case {
    /// Whether this case shares its backbone (GCP's acceptance resources).
    pub fn is_shared(&self) -> bool {
        self.mark.is_some()
    }

    /// The `seq`-th change of `aggregate` (see [`fixtures::event`]), its account id marked.
    pub fn event(&self, aggregate: &Aggregate, seq: u32) -> NewEvent {
        let mut event = fixtures::event(aggregate, seq);
        if let Some(mark) = &self.mark {
            event.account_id = mark.account(&event.account_id);
        }
        event
    }

    /// `message` with the case's probe attribute, for a scenario that publishes by hand.
    pub fn marked(&self, mut message: Message) -> Message {
        if let Some(mark) = &self.mark {
            message
                .attributes
                .insert(mark.attribute.clone(), mark.value.clone());
        }
        message
    }

    /// A producer on `topic` whose every message carries the case's probe attribute.
    pub async fn producer(&self, topic: &str) -> anyhow::Result<Producer> {
        let producer = Producer::connect(&self.env.connections(), topic).await?;
        Ok(match &self.mark {
            Some(mark) => producer.with_attribute(&mark.attribute, &mark.value),
            None => producer,
        })
    }

    /// Collects the case's messages on `subscription` (see [`Collector::start_marked`]).
    pub async fn collector(&self, subscription: &str) -> anyhow::Result<Collector> {
        Collector::start_marked(&self.env, subscription, self.mark.clone()).await
    }

    /// The case's rows in the event store (on a shared ledger: its accounts only).
    pub async fn ledger(&self) -> anyhow::Result<Ledger> {
        Ok(Ledger {
            store: EventStore::connect(&self.env.event_store, 2).await?,
            account_prefix: self.mark.as_ref().map(|m| m.account_prefix.clone()),
        })
    }

    /// `local`, or on a shared backbone the run's patience if that is longer.
    pub fn limit(&self, local: Duration) -> Duration {
        self.patience.map_or(local, |p| p.max(local))
    }

    /// [`wait_for`] up to [`Case::limit`]`(local)`; on a shared backbone it says every 30 s
    /// what it is waiting for.
    pub async fn wait_for<F, Fut>(&self, what: &str, local: Duration, done: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let limit = self.limit(local);
        if !self.is_shared() {
            return wait_for(limit, done).await;
        }
        let started = Instant::now();
        let name = self.name.clone();
        let what = what.to_string();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                eprintln!(
                    "    {name}: waiting for {what} ({}s of at most {}s)",
                    started.elapsed().as_secs(),
                    limit.as_secs()
                );
            }
        });
        let reached = wait_for(limit, done).await;
        ticker.abort();
        reached
    }

    /// Says what a case waits for, on a shared backbone only (for loops of their own).
    pub fn progress(&self, line: &str) {
        if self.is_shared() {
            eprintln!("    {}: {line}", self.name);
        }
    }
}

/// The event store as one case sees it: on a shared ledger only the rows of the case's
/// accounts, so earlier runs' rows (the ledger is append-only) never count.
pub struct Ledger {
    store: EventStore,
    account_prefix: Option<String>,
}

impl Ledger {
    pub async fn count(&self) -> Result<i64, sqlx::Error> {
        match &self.account_prefix {
            None => self.store.count().await,
            Some(prefix) => self.store.count_with_account_prefix(prefix).await,
        }
    }

    pub async fn all(&self) -> Result<Vec<StoredEvent>, sqlx::Error> {
        match &self.account_prefix {
            None => self.store.all().await,
            Some(prefix) => self.store.all_with_account_prefix(prefix).await,
        }
    }

    /// The stored rows for these event ids (unique random UUIDs: no other case has them).
    pub async fn find(
        &self,
        event_ids: &[uuid::Uuid],
    ) -> Result<HashMap<uuid::Uuid, StoredEvent>, sqlx::Error> {
        self.store.find(event_ids).await
    }
}
