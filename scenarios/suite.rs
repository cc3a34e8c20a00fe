//! `rig scenarios`: the scenarios (and mutation tests) as one run with a results table and,
//! for CI systems, JUnit XML. With `--target gcp` the staging-safe scenarios run on the dev or
//! staging acceptance resources (see [`crate::acceptance`]); the others are reported as not
//! run, with the reason.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use super::acceptance::AcceptanceRun;
use super::fidelity::{self, Column};
use super::{Runner, ScenarioReport, World, all, cases_from_env, mutations, seed_from_env};
use rig_harness::backbone::Backbone;
use rig_harness::provision::DEFAULT_SCOPE;
use rig_harness::report::{JunitCase, Outcome, Table, junit, seconds};
use rig_harness::targets::{Access, GcpOptions, TargetKind};

pub struct Options {
    pub environment: String,
    pub target: TargetKind,
    /// The local target's Pub/Sub.
    pub pubsub: rig_events::pubsub::PubsubImplementation,
    pub names: Vec<String>,
    pub mutations: bool,
    pub cases: Option<u32>,
    pub junit: Option<PathBuf>,
    /// With `--target gcp`: the project (`--project`) and `--allow-prod` (prod is refused
    /// anyway: it has no acceptance resources).
    pub gcp: Option<GcpOptions>,
    /// With `--target gcp`: the longest one wait of a case may take (default from the
    /// Terraform's retry policy).
    pub timeout: Option<Duration>,
    /// With `--target gcp`: how long the final drain waits for nothing more of the run.
    pub drain: Option<Duration>,
    /// Record the scenarios' results into docs/fidelity/scenarios/ (`--record-fidelity`, or
    /// `RIG_FIDELITY_RECORD=1`).
    pub record_fidelity: bool,
}

/// Reaches the GCP backbone `options` name, refusing prod, and prepares the acceptance run.
async fn reach_gcp(options: &Options, world: &World) -> anyhow::Result<(Backbone, AcceptanceRun)> {
    let gcp = options
        .gcp
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--target gcp needs --project (or GOOGLE_CLOUD_PROJECT)"))?;
    let spec = gcp.spec()?;
    if gcp.admit(&spec)? == Access::ReadOnly {
        anyhow::bail!(
            "refusing scenarios on {}: they publish probes and write acceptance rows, and {} has no acceptance resources; `rig drift --allow-prod` reads it without writing",
            gcp.environment,
            gcp.environment
        );
    }
    let backbone = Backbone::reach_gcp(&gcp).await?;
    let deployment = backbone
        .deploy(DEFAULT_SCOPE, &world.topology)
        .await
        .context("naming the acceptance resources")?;
    let run = AcceptanceRun::new(
        deployment.environment,
        &world.topology,
        spec.event_store.acceptance_databases.clone(),
        options.timeout,
        options.drain,
    )?;
    Ok((backbone, run))
}

/// A run ready to go: its backbone started (or reached), everything refused that would be.
pub struct Prepared {
    world: World,
    seed: [u8; 32],
    cases: Option<u32>,
    backbone: Arc<Backbone>,
    acceptance: Option<Arc<AcceptanceRun>>,
    column: Option<Column>,
    stop: Arc<AtomicBool>,
}

/// Stops a run from outside the thread that runs it.
#[derive(Clone)]
pub struct Stopper {
    backbone: Arc<Backbone>,
    stop: Arc<AtomicBool>,
}

impl Stopper {
    /// No scenario or case starts any more, and what the backbone started is stopped and its
    /// temp dir removed at once: the case under way fails fast against dead services, and
    /// the rig need not wait for it.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.backbone.abort();
    }
}

impl Prepared {
    pub fn stopper(&self) -> Stopper {
        Stopper {
            backbone: self.backbone.clone(),
            stop: self.stop.clone(),
        }
    }
}

/// Everything that can be refused is refused here, before anything starts; then the backbone
/// is started (or reached). Async, so that a signal can drop it half-way and the start-up's
/// own clean-up runs.
pub async fn prepare(options: &Options) -> anyhow::Result<Prepared> {
    if options.target == TargetKind::Env {
        anyhow::bail!(
            "refusing `rig scenarios --target env`: every case deploys an isolated scope of its own, and a backbone described by the environment provisions nothing; use `--target local` or `containers`, or `--target gcp` for the staging-safe scenarios on GCP's acceptance resources"
        );
    }
    if options.cases == Some(0) {
        anyhow::bail!(
            "--cases 0: a scenario needs at least one case (`rig scenarios --list` lists them without running any)"
        );
    }
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
    let record = options.record_fidelity || fidelity::recording();
    if record && options.target == TargetKind::Gcp {
        // A stand-in for GCP is refused before anything is reached.
        let pubsub = rig_events::pubsub::PubsubImplementation::behind(
            rig_harness::targets::GcpEndpoints::from_env()
                .pubsub
                .as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
        Column::of(pubsub, true).map_err(|e| anyhow::anyhow!("--record-fidelity: {e}"))?;
    }
    let (backbone, acceptance) = if options.target == TargetKind::Gcp {
        eprintln!("reaching the {} backbone in GCP...", options.environment);
        let (backbone, run) = reach_gcp(options, &world).await?;
        (Arc::new(backbone), Some(Arc::new(run)))
    } else {
        eprintln!("starting the {} backbone...", options.target);
        let backbone = Backbone::start_with(options.target, options.pubsub)
            .await
            .context("starting the backbone")?;
        (Arc::new(backbone), None)
    };
    // Decided before anything runs: a run that cannot be recorded says so first.
    let column = if record {
        Some(
            Column::of(backbone.pubsub(), acceptance.is_some())
                .map_err(|e| anyhow::anyhow!("--record-fidelity: {e}"))?,
        )
    } else {
        None
    };
    Ok(Prepared {
        world,
        seed,
        cases,
        backbone,
        acceptance,
        column,
        stop: Arc::default(),
    })
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

/// Runs the selection on the prepared backbone and prints the table; returns whether nothing
/// failed. Call it from a thread outside the runtime (it blocks on `runtime`).
pub fn run(
    options: &Options,
    prepared: Prepared,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<bool> {
    let Prepared {
        world,
        seed,
        cases,
        backbone,
        acceptance,
        column,
        stop,
    } = prepared;
    let selected = |name: &str| options.names.is_empty() || options.names.iter().any(|n| n == name);
    eprintln!(
        "event store engine: {}   pubsub: {}",
        backbone.engine(),
        backbone.pubsub()
    );
    if let Some(run) = &acceptance {
        eprintln!(
            "acceptance run {}: every message carries {}={}<case>, rows go to {} under account ids {}.<case>.*; each wait up to {}s, then the acceptance subscriptions are drained until nothing of the run arrives for {}s",
            run.run_id,
            run.probe_attribute,
            run.run_prefix(),
            run.environment.event_store.database,
            run.run_id,
            run.timeout.as_secs(),
            run.drain_quiet.as_secs()
        );
    }
    let runner = Runner {
        backbone: backbone.clone(),
        runtime: runtime.clone(),
        seed,
        cases,
        acceptance: acceptance.clone(),
        stop: stop.clone(),
    };
    let mut reports: Vec<(&str, ScenarioReport)> = Vec::new();
    for scenario in all().iter().filter(|s| selected(s.name)) {
        eprintln!("scenario {} ...", scenario.name);
        let report = runner.scenario(scenario, world.clone(), "cli");
        eprintln!("  {} in {}", label(&report), seconds(report.took));
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
            eprintln!("  {} in {}", label(&report), seconds(report.took));
            reports.push(("mutation", report));
        }
    }
    if stop.load(Ordering::SeqCst) {
        // Interrupted: nothing was decided, so nothing is printed, recorded or reported.
        return Ok(false);
    }
    // Whatever the run left on the acceptance subscriptions is consumed before it ends.
    let drained = acceptance.as_ref().map(|run| {
        eprintln!(
            "draining the acceptance subscriptions (until nothing of {} arrives for {}s)...",
            run.run_id,
            run.drain_quiet.as_secs()
        );
        runtime.block_on(run.drain(&world.topology))
    });
    println!(
        "target: {}   event store engine: {}   pubsub: {}",
        backbone.services().target,
        backbone.engine(),
        backbone.pubsub()
    );
    if let Some(run) = &acceptance {
        println!(
            "acceptance run: {}   rows: {} (account ids {}.*)",
            run.run_id, run.environment.event_store.database, run.run_id
        );
    }
    println!();
    print!("{}", render(&reports));
    let drained_ok = match &drained {
        None => true,
        Some(Ok(subscriptions)) => {
            println!("\nacceptance subscriptions drained:");
            for d in subscriptions {
                println!("  {d}");
            }
            true
        }
        Some(Err(e)) => {
            println!(
                "\nFAILED to drain the acceptance subscriptions: {e:#}; this run's messages may stay there unacknowledged (they expire after the subscription's retention)"
            );
            false
        }
    };
    if let Some(column) = column {
        let scenario_reports: Vec<&ScenarioReport> = reports
            .iter()
            .filter(|(kind, _)| *kind == "scenario")
            .map(|(_, r)| r)
            .collect();
        let label = match &acceptance {
            Some(run) => format!(
                "`rig scenarios --target gcp` on {} ({}), run {}, {}",
                options.environment,
                run.environment.pubsub.project_id,
                run.run_id,
                chrono::Utc::now().format("%Y-%m-%d")
            ),
            None => format!(
                "`rig scenarios` on the {} target, event store {}, {}",
                options.target,
                backbone.engine(),
                chrono::Utc::now().format("%Y-%m-%d")
            ),
        };
        fidelity::record(column, &label, &scenario_reports)
            .map_err(|e| anyhow::anyhow!("recording into docs/fidelity/scenarios: {e}"))?;
        eprintln!(
            "recorded into docs/fidelity/scenarios/{}.json and docs/fidelity.md",
            column.id()
        );
    }
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
    Ok(drained_ok && reports.iter().all(|(_, r)| r.outcome != Outcome::Fail))
}

/// The result as the table shows it: a scenario this backbone cannot run is NOT RUN.
fn label(report: &ScenarioReport) -> &'static str {
    match report.outcome {
        Outcome::Skipped => "NOT RUN",
        other => other.label(),
    }
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
            label(r).into(),
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
        if r.outcome == Outcome::Skipped {
            out.push_str(&format!("\n{} — {}\n", r.name, r.message));
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
        "\n{} passed, {} failed, {} divergence(s), {} not run\n",
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::Divergence),
        count(Outcome::Skipped)
    ));
    out
}
