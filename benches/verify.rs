//! A default `rig verify` run on the reference worker, timed: the default plan (about 10,000
//! events on 200 keys, 90 poison, claim-checked payloads and producer retries, every fault
//! kind once) on the local target, with `rig worker` as the worker process. Prints each phase
//! and the total (the figure to hold: at most 60 s on a 2-core machine) and the verdict;
//! asserts nothing about time, but fails when a property fails.
//!
//! `cargo bench --bench verify` (the bench profile builds `rig` optimised). `RIG_VERIFY_SEED`
//! picks another plan; the run's files stay in `target/verify-bench/`.

use std::path::Path;
use std::time::Instant;

use rig_harness::verify::{self, Options, PlanSource};
use rig_topology::Topology;
use rig_verify::plan::PlanConfig;

const GOAL_SECONDS: f64 = 60.0;

fn main() -> Result<(), String> {
    let seed: u64 = std::env::var("RIG_VERIFY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let topology = Topology::of_repository("dev").map_err(|e| format!("the dev topology: {e}"))?;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/verify-bench");
    let _ = std::fs::remove_dir_all(&out);
    let mut options = Options::new(
        &format!("{} worker", env!("CARGO_BIN_EXE_rig")),
        topology,
        &out,
    );
    let config = PlanConfig::default();
    println!(
        "rig verify, reference worker (`rig worker`), local target, seed {seed}: {} events on {} keys, {} poison, faults {}",
        config.events,
        config.aggregates,
        config.poison,
        config
            .faults
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    options.plan = PlanSource::Seed { seed, config };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a tokio runtime: {e}"))?;
    let outcome = runtime
        .block_on(verify::run(&options))
        .map_err(|e| format!("the run could not be made: {e}"))?;
    let wall = started.elapsed().as_secs_f64();
    for (phase, took) in &outcome.phases {
        println!("  {phase:<28} {:>7.2} s", took.as_secs_f64());
    }
    let f = &outcome.verdict.figures;
    println!(
        "  {} raw messages published, {} deliveries, {} rows, {} dead letters, {} worker starts",
        f.published, f.deliveries, f.rows, f.dead_letters, f.worker_starts
    );
    let late = outcome.faults.iter().filter(|f| f.late).count();
    println!(
        "total {wall:.1} s (goal ≤ {GOAL_SECONDS:.0} s: {}), {} faults injected ({late} late), load before {}",
        if wall <= GOAL_SECONDS {
            "met"
        } else {
            "MISSED"
        },
        outcome.faults.len(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    print!("{}", outcome.summary);
    if outcome.passed() {
        Ok(())
    } else {
        Err(format!(
            "a property failed; see {}",
            out.join("summary.txt").display()
        ))
    }
}
