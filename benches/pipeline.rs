//! End-to-end throughput of the reference worker, raw → event store → merged, beside Pub/Sub's
//! bare receive rate measured in the same run on a subscription configured exactly like the
//! worker's. The goal: at least 10,000 events/s.
//!
//! 50,000 events over 500 keys, in three rounds: each round measures every figure once, each
//! on its own scope of one local backbone (own Pub/Sub project, database), and the summary is
//! the median of the rounds, with the worker's rate as a share of the bare receive rate of the
//! same round (a run of a few seconds each, so that one slow second of a shared machine moves
//! a figure by a few per cent, not twofold). `RIG_BENCH_EVENTS` and `RIG_BENCH_ROUNDS` change
//! the size. The figures:
//! - the bare receive rate (ack only), the baseline;
//! - the worker taking one message of a key at a time (`key_batch` 1: how it worked before);
//! - the worker as it runs (a key's queued messages batched: one INSERT, publishes together);
//! - the same with the event store's commits flushed to disk
//!   (`innodb_flush_log_at_trx_commit=1`, Cloud SQL's setting; the rig's servers run with 2).
//!
//! Also printed: CPU seconds of this process (which runs our Pub/Sub service, the worker and
//! the merged subscriber) and of the service processes, and the load average, because the
//! machine is shared. Asserts nothing about time. `cargo bench --bench pipeline`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rig_events::event_store::{EventStore, NewEvent};
use rig_events::producer::Producer;
use rig_events::worker::{NoFaults, WorkerOptions, WorkerStats};
use rig_harness::backbone::Backbone;
use rig_harness::environment::Environment;
use rig_harness::targets::TargetKind;
use rig_topology::Topology;
use scenarios::fixtures::{self, Aggregate};
use scenarios::support::{Collector, RunningWorker, wait_for_every};
use sqlx::{ConnectOptions, Connection, Executor};

const DEFAULT_EVENTS: usize = 50_000;
const DEFAULT_ROUNDS: usize = 3;
/// Events per ordering key, as in the earlier 10,000-over-100 run.
const EVENTS_PER_KEY: usize = 100;
const GOAL: f64 = 10_000.0;
/// How often completion is checked: the figures are around a second, so a coarser poll
/// would add up to its own length to them.
const POLL: Duration = Duration::from_millis(10);

fn setting(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?}: expected a number")),
        Err(_) => Ok(default),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = setting("RIG_BENCH_EVENTS", DEFAULT_EVENTS)?.max(EVENTS_PER_KEY);
    let rounds = setting("RIG_BENCH_ROUNDS", DEFAULT_ROUNDS)?.max(1);
    let keys = u16::try_from((total / EVENTS_PER_KEY).max(1)).unwrap_or(u16::MAX);
    let topology = Topology::of_repository("dev")?;
    let backbone = Backbone::start(TargetKind::Local)
        .await
        .context("bringing up the local backbone")?;
    let options = WorkerOptions::from_topology(&topology)?;
    let events: Vec<NewEvent> = (0..total)
        .map(|i| {
            let key = (i % usize::from(keys)) as u16;
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
    println!(
        "{total} events over {keys} ordering keys, {rounds} round(s); event store engine: {}",
        backbone.engine()
    );
    let one_at_a_time = WorkerOptions {
        key_batch: 1,
        ..options.clone()
    };
    let variants = [
        (
            "worker, one message of a key at a time (before)",
            one_at_a_time,
            false,
        ),
        (
            "worker, a key's queued messages batched",
            options.clone(),
            false,
        ),
        (
            "the same, commits flushed to disk (=1)",
            options.clone(),
            true,
        ),
    ];
    let mut bare_rates = Vec::new();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut shares: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        println!("round {}:", round + 1);
        let bare = bare_receive(&backbone, &topology, &options, &events, round).await?;
        let bare_rate = total as f64 / bare.as_secs_f64();
        bare_rates.push(bare_rate);
        println!(
            "  Pub/Sub bare receive (1 subscriber, ordered, ack only): {bare_rate:>7.0} msg/s     ({:.2}s)",
            bare.as_secs_f64()
        );
        for (i, (name, options, durable)) in variants.iter().enumerate() {
            let scope = round * variants.len() + i;
            let run = worker_run(
                &backbone,
                &topology,
                options.clone(),
                &events,
                scope,
                *durable,
            )
            .await?;
            let rate = total as f64 / run.took.as_secs_f64();
            println!(
                "  {name:<52} {rate:>7.0} events/s  ({:.2}s; {:.0} % of bare receive; CPU: this process {:.2}s, services {:.2}s; load {})",
                run.took.as_secs_f64(),
                100.0 * rate / bare_rate,
                run.cpu.0,
                run.cpu.1,
                run.load.trim(),
            );
            println!("      {}", run.stats.summary());
            rates[i].push(rate);
            shares[i].push(rate / bare_rate);
        }
    }
    println!("median of {rounds} round(s):");
    println!(
        "  Pub/Sub bare receive: {:.0} msg/s (rounds: {})",
        median(&bare_rates),
        bare_rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (i, (name, ..)) in variants.iter().enumerate() {
        println!(
            "  {name:<52} {:>7.0} events/s, {:.0} % of the same round's bare receive (rounds: {})",
            median(&rates[i]),
            100.0 * median(&shares[i]),
            rates[i]
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (before, batched, durable) = (median(&rates[0]), median(&rates[1]), median(&rates[2]));
    println!(
        "batched: {:.1}x one at a time; goal >= {GOAL:.0} events/s: {} (with commits flushed: {})",
        batched / before,
        if batched >= GOAL {
            "reached"
        } else {
            "NOT reached"
        },
        if durable >= GOAL {
            "reached"
        } else {
            "NOT reached"
        },
    );
    Ok(())
}

/// Ack-only receive of the events on a twin of the worker's subscription (same ordering,
/// policies, filter), in its own scope.
async fn bare_receive(
    backbone: &Backbone,
    topology: &Topology,
    options: &WorkerOptions,
    events: &[NewEvent],
    round: usize,
) -> anyhow::Result<Duration> {
    let env = backbone
        .deploy(&format!("pipeline-bare-{round}"), topology)
        .await?
        .environment;
    let worker_spec = topology
        .subscription(&options.subscription)
        .cloned()
        .context("the worker subscription is not in the Terraform")?;
    let mut twin = worker_spec.clone();
    twin.name = format!("{}.baseline", worker_spec.name);
    env.pubsub
        .subscription_admin()
        .await?
        .create_subscription()
        .with_request(env.pubsub.subscription_model(&twin))
        .send()
        .await?;
    publish(&env, &worker_spec.topic, events).await?;
    let started = Instant::now();
    let baseline = Collector::start(&env, &twin.name).await?;
    if !wait_for_every(POLL, Duration::from_secs(120), || async {
        baseline.len() >= events.len()
    })
    .await
    {
        bail!(
            "the baseline received {} of {} within 120s",
            baseline.len(),
            events.len()
        );
    }
    let took = started.elapsed();
    baseline.stop().await;
    Ok(took)
}

struct Run {
    took: Duration,
    stats: Arc<WorkerStats>,
    /// CPU seconds of this process and of the service processes during the run.
    cpu: (f64, f64),
    load: String,
}

/// The worker from its start until every event is stored and on merged.
async fn worker_run(
    backbone: &Backbone,
    topology: &Topology,
    options: WorkerOptions,
    events: &[NewEvent],
    n: usize,
    durable: bool,
) -> anyhow::Result<Run> {
    let env = backbone
        .deploy(&format!("pipeline-{n}"), topology)
        .await?
        .environment;
    let raw_topic = topology
        .subscription(&options.subscription)
        .map(|s| s.topic.clone())
        .context("the worker subscription is not in the Terraform")?;
    publish(&env, &raw_topic, events).await?;
    set_flush_at_commit(&env, if durable { 1 } else { 2 }).await?;
    let merged_spec = topology
        .worker_subscription(&options.merged_topic)
        .context("no subscription on the merged topic")?;
    let merged = Collector::start(&env, &merged_spec.name).await?;
    let store = EventStore::connect(&env.event_store, 1).await?;
    let cpu_before = cpu(backbone);
    let started = Instant::now();
    let worker = RunningWorker::start(&env, options, Arc::new(NoFaults)).await?;
    // Merged is only published to after the append: once it holds every event, the count
    // confirms the ledger does too.
    let done = wait_for_every(POLL, Duration::from_secs(300), || async {
        merged.len() >= events.len() && store.count().await.unwrap_or(0) as usize >= events.len()
    })
    .await;
    let took = started.elapsed();
    let cpu_after = cpu(backbone);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let stats = worker.stop().await?;
    merged.stop().await;
    set_flush_at_commit(&env, 2).await?;
    if !done {
        bail!("the worker did not finish within 300s: {}", stats.summary());
    }
    Ok(Run {
        took,
        stats,
        cpu: (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1),
        load: load
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    })
}

async fn publish(env: &Environment, topic: &str, events: &[NewEvent]) -> anyhow::Result<()> {
    Producer::connect(&env.connections(), topic)
        .await?
        .publish_all(events)
        .await?;
    Ok(())
}

/// The event store server's `innodb_flush_log_at_trx_commit` (a global: runs are sequential).
async fn set_flush_at_commit(env: &Environment, value: u8) -> anyhow::Result<()> {
    let mut admin = env.event_store_admin.connect_options().connect().await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "SET GLOBAL innodb_flush_log_at_trx_commit = {value}"
        )))
        .await?;
    admin.close().await?;
    Ok(())
}

/// CPU seconds (user + system) used so far by this process and by the backbone's services.
fn cpu(backbone: &Backbone) -> (f64, f64) {
    let services = backbone.processes().iter().map(|p| cpu_of(p.1)).sum();
    (cpu_of(std::process::id()), services)
}

fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime, in clock ticks (100 per second on Linux).
    (ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)) / 100.0
}
