//! Append throughput into the local event store, all in one run on one backbone so the figures
//! compare: batched (`EventStore::append_batch`, goal >= 60,000 events/s over 100k
//! unique events), one INSERT per event (`EventStore::append`, 1 and 4 connections), and
//! Laravel Eloquent's per-event `create` (laravel/bin/bench_eloquent.php) as the baseline.
//! Prints figures; asserts nothing about time. `cargo bench --bench append`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::Utc;
use rig_events::event_store::{Appended, DbConfig, EventStore, NewEvent};
use rig_harness::backbone::Backbone;
use rig_harness::environment::Environment;
use rig_harness::targets::TargetKind;
use rig_topology::Topology;
use tokio::sync::Mutex;

const BATCHED_EVENTS: usize = 100_000;
/// Events per `append_batch` call (the store cuts each call into multi-row INSERTs itself).
const CHUNK: usize = 5_000;
const SINGLE_ROW_EVENTS: usize = 10_000;
const WRITERS: usize = 4;
const ELOQUENT_EVENTS: &str = "2000";
const TARGET_BATCHED: f64 = 60_000.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let topology = Topology::of_repository("dev")?;
    let (_backbone, deployment) = Backbone::up(TargetKind::Local, "bench", &topology)
        .await
        .context("bringing up the local backbone")?;
    let env = deployment.environment;
    println!("event store: {}", env.engine);
    println!(
        "machine: {} core(s); {}",
        cores(),
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    );

    let store = EventStore::connect(&env.event_store, WRITERS as u32).await?;
    let mut expected = 0;

    let single_1 = single_rows(&store, SINGLE_ROW_EVENTS, 1).await?;
    expected += SINGLE_ROW_EVENTS;
    report(
        "one INSERT per event, 1 connection",
        SINGLE_ROW_EVENTS,
        single_1,
    );

    let single_4 = single_rows(&store, SINGLE_ROW_EVENTS, WRITERS).await?;
    expected += SINGLE_ROW_EVENTS;
    report(
        &format!("one INSERT per event, {WRITERS} connections"),
        SINGLE_ROW_EVENTS,
        single_4,
    );

    let batched = batched(&store).await?;
    expected += BATCHED_EVENTS;
    report(
        &format!("append_batch ({CHUNK} per call, {WRITERS} writers)"),
        BATCHED_EVENTS,
        batched,
    );
    let stored = store.count().await?;
    ensure!(
        stored == expected as i64,
        "{stored} rows in the ledger, expected {expected}"
    );

    let eloquent = eloquent(&env);
    match &eloquent {
        Ok(rate) => println!(
            "{:<48} {:>10.0} events/s  ({ELOQUENT_EVENTS} events)",
            "Laravel Eloquent create(), 1 connection", rate
        ),
        Err(why) => println!(
            "{:<48} skipped: {why}",
            "Laravel Eloquent create(), 1 connection"
        ),
    }

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let batched_rate = rate(BATCHED_EVENTS, batched);
    println!();
    println!(
        "batched / one-row-per-INSERT: {:.1}x (1 connection), {:.1}x ({WRITERS} connections)",
        batched_rate / rate(SINGLE_ROW_EVENTS, single_1),
        batched_rate / rate(SINGLE_ROW_EVENTS, single_4)
    );
    if let Ok(eloquent) = eloquent {
        println!("batched / Eloquent: {:.1}x", batched_rate / eloquent);
    }
    println!(
        "target: batched >= {TARGET_BATCHED:.0} events/s: {}",
        if batched_rate >= TARGET_BATCHED {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn report(what: &str, events: usize, took: Duration) {
    println!(
        "{what:<48} {:>10.0} events/s  ({events} events in {:.2} s)",
        events as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
}

/// NetSuite-shaped events (~600 bytes of JSON), each with a fresh event_id.
fn events(n: usize, offset: usize) -> Vec<NewEvent> {
    const TYPES: [&str; 5] = [
        "salesOrder",
        "customer",
        "invoice",
        "itemFulfillment",
        "vendorBill",
    ];
    (offset..offset + n)
        .map(|i| {
            let record_type = TYPES[i % TYPES.len()];
            let internal_id = (10_000 + i / 2).to_string();
            let lines: Vec<serde_json::Value> = (1..=1 + i % 3)
                .map(|l| serde_json::json!({ "line": l, "item": { "id": (500 + l).to_string() }, "quantity": 1 + (i + l) % 5, "rate": 9.99 * l as f64 }))
                .collect();
            NewEvent {
                account_id: format!("{:07}_SB{}", 4_000_000 + i % 3, 1 + i % 2),
                event_id: uuid::Uuid::new_v4(),
                aggregate_type: record_type.into(),
                aggregate_id: internal_id.clone(),
                payload: serde_json::json!({
                    "recordType": record_type,
                    "id": internal_id,
                    "operation": if i % 4 == 0 { "create" } else { "update" },
                    "fields": {
                        "entity": { "id": (200 + i % 50).to_string(), "refName": format!("Customer {}", 200 + i % 50) },
                        "subsidiary": { "id": "1", "refName": "Parent Company" },
                        "currency": { "id": "1", "refName": "USD" },
                        "tranDate": "2026-11-27",
                        "status": "Pending Fulfillment",
                        "memo": "Synced from NetSuite — café",
                    },
                    "sublists": { "item": lines },
                    "meta": { "source": "netsuite", "trigger": "afterSubmit", "sequence": i },
                })
                .to_string(),
                created_at: Utc::now(),
            }
        })
        .collect()
}

/// Splits `work` between `writers` tasks that take items from one queue until it is empty.
async fn run_writers<T, F, Fut>(writers: usize, work: Vec<T>, job: F) -> anyhow::Result<Duration>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let queue = Arc::new(Mutex::new(work.into_iter()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let queue = Arc::clone(&queue);
            let job = job.clone();
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().await.next();
                    match next {
                        Some(item) => job(item).await?,
                        None => return Ok::<_, anyhow::Error>(()),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

async fn single_rows(store: &EventStore, n: usize, writers: usize) -> anyhow::Result<Duration> {
    let work = events(n, 0);
    let store = store.clone();
    run_writers(writers, work, move |event| {
        let store = store.clone();
        async move {
            let outcome = store.append(&event).await?;
            ensure!(
                outcome == Appended::Stored,
                "a fresh event was reported as {outcome:?}"
            );
            Ok(())
        }
    })
    .await
}

async fn batched(store: &EventStore) -> anyhow::Result<Duration> {
    let all = events(BATCHED_EVENTS, 0);
    let chunks: Vec<Vec<NewEvent>> = all.chunks(CHUNK).map(<[NewEvent]>::to_vec).collect();
    let store = store.clone();
    run_writers(WRITERS, chunks, move |chunk| {
        let store = store.clone();
        async move {
            let outcomes = store.append_batch(&chunk).await?;
            for outcome in outcomes {
                let outcome = outcome?;
                ensure!(
                    outcome == Appended::Stored,
                    "a fresh event was reported as {outcome:?}"
                );
            }
            Ok(())
        }
    })
    .await
}

/// Eloquent's rate from laravel/bin/bench_eloquent.php, or why it could not run.
fn eloquent(env: &Environment) -> Result<f64, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("laravel/bin/bench_eloquent.php");
    let worker: &DbConfig = &env.event_store;
    let output = Command::new("php")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(
            worker
                .env_vars("DB_EVENT_STORE_")
                .into_iter()
                .filter(|(k, _)| !k.ends_with("_CONNECTION")),
        )
        .arg(script)
        .arg(ELOQUENT_EVENTS)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("php not found: apt-get install --no-install-recommends php-cli php-mysql php-illuminate-database".into());
        }
        Err(e) => return Err(format!("running php: {e}")),
    };
    if !output.status.success() {
        return Err(format!(
            "bench_eloquent.php exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("bench_eloquent.php output is not JSON: {e}"))?;
    result["events_per_sec"]
        .as_f64()
        .ok_or_else(|| format!("no events_per_sec in {result}"))
}
