//! Writes the history and snapshot of a correct run (the model's, `rig_verify::model`) into
//! DIR, to see the files' format and a passing report: `cargo run -p rig-verify --example
//! model -- DIR [SEED [EVENTS]]`, then `--example check -- DIR`.

use std::path::Path;

use rig_verify::model::{self, ModelOptions};
use rig_verify::plan::{Plan, PlanConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(Path::new) else {
        return Err("usage: model DIR [SEED [EVENTS]]".into());
    };
    let seed = args.get(1).map_or(Ok(1), |s| s.parse())?;
    let events = args.get(2).map_or(Ok(2_000), |s| s.parse())?;
    let config = PlanConfig {
        events,
        aggregates: 50,
        poison: 5,
        ..PlanConfig::default()
    };
    let plan = Plan::generate(seed, &config, &model::fixtures());
    let (history, snapshot) = model::simulate(
        &plan,
        &ModelOptions {
            seed,
            ..ModelOptions::default()
        },
    );
    std::fs::create_dir_all(dir)?;
    plan.save(&dir.join("plan.json"))?;
    history.save(&dir.join("history.jsonl"))?;
    snapshot.save(&dir.join("snapshot.json"))?;
    println!(
        "{}: {} records, {} rows",
        dir.display(),
        history.records.len(),
        snapshot.ledger.len()
    );
    Ok(())
}
