//! Expands a seed into a plan file: `cargo run -p rig-verify --example plan -- SEED OUT.json
//! [EVENTS [AGGREGATES [CLAIM_PERMILLE]]]` (the default plan: about 10,000 events, every fault kind once).

use std::path::Path;

use rig_verify::plan::{Fixtures, Plan, PlanConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(seed), Some(out)) = (args.first(), args.get(1)) else {
        return Err("usage: plan SEED OUT.json [EVENTS [AGGREGATES [CLAIM_PERMILLE]]]".into());
    };
    let mut config = PlanConfig::default();
    if let Some(events) = args.get(2) {
        config.events = events.parse()?;
    }
    if let Some(aggregates) = args.get(3) {
        config.aggregates = aggregates.parse()?;
    }
    if let Some(permille) = args.get(4) {
        config.claim_checked_permille = permille.parse()?;
    }
    let fixtures = Fixtures::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))?;
    let plan = Plan::generate(seed.parse()?, &config, &fixtures);
    plan.save(Path::new(out))?;
    println!(
        "{out}: {} items on {} aggregates, {} faults",
        plan.items.len(),
        plan.aggregates.len(),
        plan.faults.len()
    );
    Ok(())
}
