//! What the scenarios share: running workers, collecting a subscription, injecting faults,
//! waiting without hanging.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use google_cloud_pubsub::model::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use rig::environment::Environment;
use rig::worker::{Fault, Faults, Worker, WorkerOptions, WorkerStats};

/// Polls `done` every 100 ms until it returns true or `limit` passes; returns whether it did.
pub async fn wait_for<F, Fut>(limit: Duration, mut done: F) -> bool
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
        tokio::time::sleep(Duration::from_millis(100)).await;
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
        let worker = Worker::connect(env, options, faults).await?;
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
}

impl Collector {
    pub async fn start(env: &Environment, subscription: &str) -> anyhow::Result<Self> {
        let subscriber = env.pubsub.subscriber().await?;
        let mut stream = subscriber
            .subscribe(env.pubsub.subscription_path(subscription))
            .build();
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
        .get(rig::envelope::EVENT_ID)
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

/// Runs an async block on the scenario runtime from a test thread.
pub fn block_on<F: Future>(ctx: &super::Context, f: F) -> F::Output {
    ctx.runtime.block_on(f)
}

/// The worker's side of a deployed environment, all read from its Terraform.
pub struct Wiring {
    pub options: rig::worker::WorkerOptions,
    /// The topic the worker's subscription reads: where producers publish.
    pub raw_topic: String,
    /// The subscription that keeps dead letters.
    pub dead_letters: String,
    /// The subscription downstream consumers read merged events from.
    pub merged: String,
}

impl Wiring {
    pub fn of(ctx: &super::Context) -> anyhow::Result<Self> {
        let topology = &ctx.world.topology;
        let mut options = WorkerOptions::from_topology(topology)?;
        options.verify_claims = ctx.world.verify_claims;
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
}
