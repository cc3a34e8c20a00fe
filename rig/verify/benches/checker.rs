//! The checker over a synthetic history of 100,000 events on 1,000 keys (a correct run of the
//! model, with every fault kind once, poison and producer retries), as it would be re-run
//! offline on saved files: the files' sizes, the time to read them and the time to check.
//! Prints figures; asserts nothing about time (the target is ≤ 2 s on a 2-core machine).
//!
//! `cargo bench -p rig-verify --bench checker` (`RIG_VERIFY_BENCH_EVENTS` to change the size).

use std::time::Instant;

use rig_verify::model::{self, ModelOptions};
use rig_verify::plan::{Plan, PlanConfig};
use rig_verify::{History, Snapshot, check};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: u64 = std::env::var("RIG_VERIFY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let config = PlanConfig {
        events,
        aggregates: 1_000,
        poison: 90,
        ..PlanConfig::default()
    };
    let made = Instant::now();
    let plan = Plan::generate(2026, &config, &model::fixtures());
    let (history, snapshot) = model::simulate(&plan, &ModelOptions::default());
    println!(
        "synthetic run: {} items on {} keys, {} records, {} rows, {} on merged, {} dead letters (made in {:.2} s)",
        plan.items.len(),
        plan.aggregates.len(),
        history.records.len(),
        snapshot.ledger.len(),
        snapshot.merged.len(),
        snapshot.dead_letters.len(),
        made.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let (history_path, snapshot_path) = (
        dir.path().join("history.jsonl"),
        dir.path().join("snapshot.json"),
    );
    history.save(&history_path)?;
    snapshot.save(&snapshot_path)?;
    println!(
        "files: history.jsonl {:.1} MB, snapshot.json {:.1} MB",
        std::fs::metadata(&history_path)?.len() as f64 / 1e6,
        std::fs::metadata(&snapshot_path)?.len() as f64 / 1e6
    );

    let mut check_times = Vec::new();
    let mut load_times = Vec::new();
    for _ in 0..3 {
        let loaded = Instant::now();
        let history = History::load(&history_path)?;
        let snapshot = Snapshot::load(&snapshot_path)?;
        load_times.push(loaded.elapsed().as_secs_f64());
        let checked = Instant::now();
        let verdict = check(&history, &snapshot);
        check_times.push(checked.elapsed().as_secs_f64());
        if !verdict.passed() {
            return Err(format!(
                "the model's correct run failed: {:?}",
                verdict.failing_kinds()
            )
            .into());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (check_s, load_s) = (median(&mut check_times), median(&mut load_times));
    println!("check: {check_s:.3} s median of 3 ({check_times:.3?}); target ≤ 2 s");
    println!(
        "load both files: {load_s:.3} s median of 3; load + check {:.3} s",
        check_s + load_s
    );
    Ok(())
}
