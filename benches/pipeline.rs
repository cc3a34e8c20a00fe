//! End-to-end throughput of the reference worker, raw → event store → merged, beside the
//! emulator's bare receive rate measured in the same run on a subscription configured exactly
//! like the worker's (issue 4's goal: the worker reaches at least 90 % of it).
//! Prints figures; asserts nothing about time. `cargo bench --bench pipeline`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rig::event_store::EventStore;
use rig::producer::Producer;
use rig::targets::{Backbone, TargetKind};
use rig::topology::Topology;
use rig::worker::{NoFaults, WorkerOptions};
use scenarios::fixtures::{self, Aggregate};
use scenarios::support::{Collector, RunningWorker};

const EVENTS: usize = 10_000;
const KEYS: u16 = 100;
const GOAL: f64 = 0.90;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let topology = Topology::of_repository("dev")?;
    let (_backbone, deployment) = Backbone::up(TargetKind::Local, "pipeline", &topology)
        .await
        .context("bringing up the local backbone")?;
    let env = deployment.environment;
    let options = WorkerOptions::from_topology(&topology)?;
    let worker_spec = topology
        .subscription(&options.subscription)
        .cloned()
        .context("the worker subscription is not in the Terraform")?;
    let raw_topic = worker_spec.topic.clone();

    // The baseline reads a twin of the worker's subscription: same ordering, policies, filter.
    let mut baseline_spec = worker_spec.clone();
    baseline_spec.name = format!("{}.baseline", worker_spec.name);
    env.pubsub
        .subscription_admin()
        .await?
        .create_subscription()
        .with_request(env.pubsub.subscription_model(&baseline_spec))
        .send()
        .await?;

    let events: Vec<_> = (0..EVENTS)
        .map(|i| {
            let key = (i as u16) % KEYS;
            fixtures::event(
                &Aggregate {
                    account: (key % 3) as u8,
                    record: usize::from(key % 4),
                    id: key,
                },
                i as u32,
            )
        })
        .collect();
    let started = Instant::now();
    Producer::connect(&env, &raw_topic)
        .await?
        .publish_all(&events)
        .await?;
    let publish = started.elapsed();
    println!(
        "published {EVENTS} events over {KEYS} keys in {:.2}s",
        publish.as_secs_f64()
    );

    // 1. Bare receive: ack as fast as messages arrive.
    let started = Instant::now();
    let baseline = Collector::start(&env, &baseline_spec.name).await?;
    if !wait(Duration::from_secs(120), || async {
        baseline.len() >= EVENTS
    })
    .await
    {
        bail!(
            "the baseline received {} of {EVENTS} within 120s",
            baseline.len()
        );
    }
    let bare = started.elapsed();
    baseline.stop().await;

    // 2. The worker: validate, append, publish to merged, ack — until every event is stored
    //    and on merged.
    let merged_spec = topology
        .worker_subscription(&options.merged_topic)
        .context("no subscription on the merged topic")?;
    let merged = Collector::start(&env, &merged_spec.name).await?;
    let store = EventStore::connect(&env.event_store, 2).await?;
    let started = Instant::now();
    let worker = RunningWorker::start(&env, options, Arc::new(NoFaults)).await?;
    let done = wait(Duration::from_secs(300), || async {
        store.count().await.unwrap_or(0) as usize >= EVENTS && merged.len() >= EVENTS
    })
    .await;
    let pipeline = started.elapsed();
    let stats = worker.stop().await?;
    merged.stop().await;
    if !done {
        bail!("the worker did not finish within 300s: {}", stats.summary());
    }

    let bare_rate = EVENTS as f64 / bare.as_secs_f64();
    let pipeline_rate = EVENTS as f64 / pipeline.as_secs_f64();
    println!("event store engine: {}", env.engine);
    println!(
        "Pub/Sub bare receive (1 subscriber, ordered):  {bare_rate:>8.0} msg/s  ({:.2}s)",
        bare.as_secs_f64()
    );
    println!(
        "worker raw → event store → merged:            {pipeline_rate:>8.0} events/s  ({:.2}s)",
        pipeline.as_secs_f64()
    );
    println!(
        "ratio: {:.0} % of the bare receive rate (goal ≥ {:.0} %): {}",
        100.0 * pipeline_rate / bare_rate,
        100.0 * GOAL,
        if pipeline_rate >= GOAL * bare_rate {
            "reached"
        } else {
            "NOT reached"
        }
    );
    println!("worker: {}", stats.summary());
    Ok(())
}

async fn wait<F, Fut>(limit: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    scenarios::support::wait_for(limit, &mut done).await
}
