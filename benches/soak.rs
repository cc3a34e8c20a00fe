//! Soak: 100,000 events over 1,000 keys through `rig worker` (a separate process, as it runs
//! in production) at a steady publish rate, with faults on: the event store frozen for 2 s and
//! GCS frozen for 2 s, alternately every 15 s; 1 % of the events go through the claim check.
//! Prints counts, throughput, p99 publish→merged latency and the worker's RSS over time (which
//! must stay flat: read it, the bench asserts nothing about time or memory).
//!
//! `cargo bench --bench soak` (SOAK_EVENTS, SOAK_KEYS, SOAK_RATE override the sizes).
//!
//! Worker restarts are not among the faults: on Google's emulator a replaced worker receives
//! nothing more (`scenario::worker_restart`), so the soak would only measure that divergence.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rig_events::envelope;
use rig_events::event_store::EventStore;
use rig_events::producer::Producer;
use rig_events::worker::WorkerOptions;
use rig_harness::backbone::Backbone;
use rig_harness::targets::TargetKind;
use rig_topology::Topology;
use scenarios::fixtures::{self, Aggregate};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn signal(pid: u32, sig: libc::c_int) {
    let _ = rig_harness::process::send_signal(pid, sig);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = setting("SOAK_EVENTS", 100_000);
    let keys = setting("SOAK_KEYS", 1_000);
    let rate = setting("SOAK_RATE", 1_000);
    let topology = Topology::of_repository("dev")?;
    let (backbone, deployment) = Backbone::up(TargetKind::Local, "soak", &topology)
        .await
        .context("bringing up the local backbone")?;
    let env = deployment.environment;
    let options = WorkerOptions::from_topology(&topology)?;
    let raw = topology
        .subscription(&options.subscription)
        .map(|s| s.topic.clone())
        .context("the raw topic")?;
    let merged_subscription = topology
        .worker_subscription(&options.merged_topic)
        .map(|s| s.name.clone())
        .context("a subscription on merged")?;
    let pid_of = |name: &str| {
        backbone
            .processes()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, pid, _)| pid)
    };
    let database = pid_of("event-store-db").context("the event store process")?;
    let gcs = pid_of("fake-gcs-server").context("the GCS process")?;

    // A supervised child: it dies with the bench, whatever stops the bench.
    let mut command = Command::new(env!("CARGO_BIN_EXE_rig"));
    command
        .args(["worker", "-e", "dev"])
        .envs(env.env_vars())
        .env("RIG_LOG", "rig=warn");
    let log = std::env::temp_dir().join(format!("rig-soak-worker-{}.log", std::process::id()));
    let worker = rig_harness::process::Service::spawn("rig-worker", command, &log)
        .context("starting `rig worker`")?;
    let worker_pid = worker.pid();

    // publish → first arrival on merged, per event.
    let published: Arc<Mutex<HashMap<uuid::Uuid, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let duplicates = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let subscriber = env.pubsub.subscriber().await?;
    let mut stream = subscriber
        .subscribe(env.pubsub.subscription_path(&merged_subscription))
        .build();
    let (sent, lat, dup) = (published.clone(), latencies.clone(), duplicates.clone());
    let reader = tokio::spawn(async move {
        while let Some(Ok((message, handler))) = stream.next().await {
            handler.ack();
            let id = message
                .attributes
                .get(envelope::EVENT_ID)
                .and_then(|s| uuid::Uuid::parse_str(s).ok());
            let Some(id) = id else { continue };
            let at = sent.lock().ok().and_then(|mut m| m.remove(&id));
            match at {
                Some(at) => lat.lock().map(|mut l| l.push(at.elapsed())).unwrap_or(()),
                None => {
                    dup.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });

    let inline = Producer::connect(&env.connections(), &raw).await?;
    let claimed = Producer::connect(&env.connections(), &raw)
        .await?
        .with_threshold(0);
    let store = EventStore::connect(&env.event_store_admin, 1).await?;
    let started = Instant::now();
    println!(
        "soak: {total} events over {keys} keys at {rate}/s; faults: event store and GCS frozen 2 s, alternately every 15 s"
    );
    println!(
        "{:>8} {:>10} {:>10} {:>12}",
        "t (s)", "published", "stored", "worker RSS"
    );
    let batch = (rate / 10).max(1);
    let mut next_fault = Instant::now() + Duration::from_secs(15);
    let mut fault_database = true;
    let mut next_report = Instant::now();
    let mut rss_samples = Vec::new();
    let mut i = 0usize;
    while i < total || store.count().await.unwrap_or(0) < total as i64 {
        let tick = Instant::now();
        if i < total {
            let end = (i + batch).min(total);
            let events: Vec<_> = (i..end)
                .map(|n| {
                    let key = n % keys;
                    fixtures::event(
                        &Aggregate {
                            account: (key % 3) as u8,
                            record: key % 4,
                            id: key as u16,
                        },
                        (n / keys) as u32 + 1,
                    )
                })
                .collect();
            if let Ok(mut m) = published.lock() {
                for e in &events {
                    m.insert(e.event_id, Instant::now());
                }
            }
            let (claim, plain): (Vec<_>, Vec<_>) = events
                .into_iter()
                .enumerate()
                .partition(|(k, _)| (i + k).is_multiple_of(100));
            let plain: Vec<_> = plain.into_iter().map(|(_, e)| e).collect();
            let claim: Vec<_> = claim.into_iter().map(|(_, e)| e).collect();
            // Per key, the claim-checked event may overtake a plain one published in the same
            // batch only if both are on one key: with batch ≤ keys they never are.
            inline.publish_all(&plain).await?;
            claimed.publish_all(&claim).await?;
            i = end;
        }
        if Instant::now() >= next_fault {
            let (pid, name) = if fault_database {
                (database, "event store")
            } else {
                (gcs, "GCS")
            };
            signal(pid, libc::SIGSTOP);
            tokio::time::sleep(Duration::from_secs(2)).await;
            signal(pid, libc::SIGCONT);
            println!("         fault: {name} frozen for 2 s");
            fault_database = !fault_database;
            next_fault = Instant::now() + Duration::from_secs(15);
        }
        if Instant::now() >= next_report {
            let rss = rss_kib(worker_pid).unwrap_or(0);
            rss_samples.push(rss);
            println!(
                "{:>8.0} {:>10} {:>10} {:>9} MiB",
                started.elapsed().as_secs_f64(),
                i,
                store.count().await.unwrap_or(0),
                rss / 1024
            );
            next_report = Instant::now() + Duration::from_secs(10);
        }
        if started.elapsed() > Duration::from_secs(30 + (total / rate.max(1)) as u64 * 3) {
            println!("stopped waiting: the ledger did not reach {total}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed())).await;
    }
    let elapsed = started.elapsed();
    // Let merged catch up.
    for _ in 0..100 {
        if published.lock().map(|m| m.is_empty()).unwrap_or(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader.abort();
    let stored = store.count().await?;
    let distinct: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT event_id) FROM event_store")
        .fetch_one(store.pool())
        .await?;
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let missing_merged = published.lock().map(|m| m.len()).unwrap_or(0);
    println!();
    println!("published            {total}");
    println!("stored               {stored} ({distinct} distinct event_ids)");
    println!(
        "on merged            {} first copies, {} extra copies, {missing_merged} never seen",
        lat.len(),
        duplicates.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "throughput           {:.0} events/s stored over {:.1} s",
        stored as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "latency publish→merged  p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    let (first, last) = (
        rss_samples
            .iter()
            .skip(1)
            .take(3)
            .copied()
            .max()
            .unwrap_or(0),
        rss_samples.iter().rev().take(3).copied().max().unwrap_or(0),
    );
    println!(
        "worker RSS           {} MiB early, {} MiB at the end, max {} MiB",
        first / 1024,
        last / 1024,
        rss_samples.iter().max().copied().unwrap_or(0) / 1024
    );
    drop(worker);
    println!("(the worker's log: {})", log.display());
    Ok(())
}
