//! `rig scenarios`: the scenarios (and mutation tests) as one run with a results table and,
//! for CI systems, JUnit XML.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use super::{Runner, ScenarioReport, World, all, cases_from_env, mutations, seed_from_env};
use rig::report::{JunitCase, Outcome, Table, junit, seconds};
use rig::targets::{Backbone, TargetKind};

pub struct Options {
    pub environment: String,
    pub target: TargetKind,
    /// The local target's Pub/Sub.
    pub pubsub: rig::pubsub::PubsubImplementation,
    pub names: Vec<String>,
    pub mutations: bool,
    pub cases: Option<u32>,
    pub junit: Option<PathBuf>,
}

pub fn list() -> String {
    let mut table = Table::new(&["name", "kind", "guarantee"]);
    for s in all() {
        table.row(vec![s.name.into(), "scenario".into(), s.invariant.into()]);
    }
    for m in mutations::all() {
        table.row(vec![
            m.name.into(),
            format!("mutation of {}", m.scenario),
            m.what.into(),
        ]);
    }
    table.render()
}

/// Runs the selection on a fresh backbone and prints the table; returns whether nothing failed.
/// Call it from a thread outside the runtime (it blocks on `runtime`).
pub fn run(options: &Options, runtime: tokio::runtime::Handle) -> anyhow::Result<bool> {
    let world = World::from_repository(&options.environment)?;
    let seed = seed_from_env()?;
    let cases = options.cases.or(cases_from_env()?);
    let known: Vec<&str> = all()
        .iter()
        .map(|s| s.name)
        .chain(mutations::all().iter().map(|m| m.name))
        .collect();
    for name in &options.names {
        if !known.contains(&name.as_str()) {
            anyhow::bail!(
                "no scenario or mutation named `{name}`: `rig scenarios --list` shows them"
            );
        }
    }
    let selected = |name: &str| options.names.is_empty() || options.names.iter().any(|n| n == name);
    eprintln!("starting the {} backbone...", options.target);
    let backbone = Arc::new(
        runtime
            .block_on(Backbone::start_with(options.target, options.pubsub))
            .context("starting the backbone")?,
    );
    eprintln!(
        "event store engine: {}   pubsub: {}",
        backbone.engine(),
        backbone.pubsub()
    );
    let runner = Runner {
        backbone: backbone.clone(),
        runtime,
        seed,
        cases,
    };
    let mut reports: Vec<(&str, ScenarioReport)> = Vec::new();
    for scenario in all().iter().filter(|s| selected(s.name)) {
        eprintln!("scenario {} ...", scenario.name);
        let report = runner.scenario(scenario, world.clone(), "cli");
        eprintln!("  {} in {}", report.outcome.label(), seconds(report.took));
        reports.push(("scenario", report));
    }
    let run_mutations = options.mutations
        || options
            .names
            .iter()
            .any(|n| mutations::all().iter().any(|m| m.name == n));
    if run_mutations {
        for mutation in mutations::all()
            .iter()
            .filter(|m| options.mutations || selected(m.name))
        {
            eprintln!("mutation {} ...", mutation.name);
            let report = runner.mutation(mutation, &world);
            eprintln!("  {} in {}", report.outcome.label(), seconds(report.took));
            reports.push(("mutation", report));
        }
    }
    println!(
        "target: {}   event store engine: {}   pubsub: {}\n",
        options.target,
        backbone.engine(),
        backbone.pubsub()
    );
    print!("{}", render(&reports));
    if let Some(path) = &options.junit {
        let cases: Vec<JunitCase> = reports
            .iter()
            .map(|(kind, r)| JunitCase {
                name: r.name.to_string(),
                classname: format!("rig.{kind}"),
                outcome: r.outcome,
                took: r.took,
                message: if r.divergences.is_empty() {
                    r.message.clone()
                } else {
                    r.divergences
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(" | ")
                },
            })
            .collect();
        let suite = format!("backbone-rig scenarios (pubsub: {})", backbone.pubsub());
        std::fs::write(path, junit(&suite, &cases))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("JUnit report written to {}", path.display());
    }
    drop(runner);
    drop(backbone);
    Ok(reports.iter().all(|(_, r)| r.outcome != Outcome::Fail))
}

fn render(reports: &[(&str, ScenarioReport)]) -> String {
    let mut table = Table::new(&[
        "scenario",
        "kind",
        "target",
        "cases",
        "result",
        "time",
        "known divergence",
    ]);
    for (kind, r) in reports {
        table.row(vec![
            r.name.into(),
            (*kind).into(),
            r.target.clone(),
            r.cases.to_string(),
            r.outcome.label().into(),
            seconds(r.took),
            {
                let mut named: Vec<String> = r
                    .divergences
                    .iter()
                    .map(|d| format!("{} / {}", d.service, d.feature))
                    .collect();
                named.dedup();
                named.join("; ")
            },
        ]);
    }
    let mut out = table.render();
    for (_, r) in reports {
        if r.outcome == Outcome::Fail {
            out.push_str(&format!("\n{} FAILED:\n{}\n", r.name, r.message));
        }
        for d in &r.divergences {
            out.push_str(&format!("\n{} — divergence: {d}\n", r.name));
        }
        for f in &r.figures {
            out.push_str(&format!("\n{} — {f}\n", r.name));
        }
    }
    let count = |o: Outcome| reports.iter().filter(|(_, r)| r.outcome == o).count();
    out.push_str(&format!(
        "\n{} passed, {} failed, {} divergence(s)\n",
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::Divergence)
    ));
    out
}
