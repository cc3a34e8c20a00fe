//! The scenarios and their mutation tests as one libtest-compatible harness, so `cargo test`
//! and `cargo nextest run` list and run each by name (`scenario::ordering`,
//! `mutation::dead_letter_after_6_attempts`, ...).
//!
//! One local backbone per test process, started on first use and stopped when the harness
//! ends (nextest runs each test in its own process, so each gets its own). Each scenario case
//! deploys its own isolated scope on it.
//!
//! `RIG_FIDELITY_RECORD=1` records each scenario's result into the matrix of
//! `docs/fidelity.md` (the column of the Pub/Sub the backbone runs), and
//! `fidelity::doc_is_current` fails when that matrix is stale.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use rig_harness::backbone::Backbone;
use rig_harness::report::Outcome;
use rig_harness::targets::TargetKind;
use scenarios::{self, Runner, ScenarioReport, World};

struct Shared {
    runtime: tokio::runtime::Runtime,
    backbone: Mutex<Option<Result<Arc<Backbone>, String>>>,
    world: Result<World, String>,
    seed: [u8; 32],
    cases: Option<u32>,
}

impl Shared {
    fn backbone(&self) -> Result<Arc<Backbone>, Failed> {
        let mut slot = self
            .backbone
            .lock()
            .map_err(|_| Failed::from("backbone lock poisoned"))?;
        if slot.is_none() {
            let started = self
                .runtime
                .block_on(Backbone::start(TargetKind::Local))
                .map(Arc::new)
                .map_err(|e| format!("starting the local backbone: {e:#}"));
            if let Ok(backbone) = &started {
                eprintln!(
                    "local backbone up; event store engine: {}; pubsub: {}",
                    backbone.engine(),
                    backbone.pubsub()
                );
            }
            *slot = Some(started);
        }
        slot.clone()
            .unwrap_or_else(|| Err("unreachable".into()))
            .map_err(Failed::from)
    }
}

impl Shared {
    fn runner(&self, backbone: Arc<Backbone>) -> Runner {
        Runner {
            backbone,
            runtime: self.runtime.handle().clone(),
            seed: self.seed,
            cases: self.cases,
            acceptance: None,
            stop: Default::default(),
        }
    }
}

/// Records a scenario's result into the matrix when `RIG_FIDELITY_RECORD=1`.
fn record(backbone: &Backbone, report: &ScenarioReport) -> Result<(), Failed> {
    if !scenarios::fidelity::recording() {
        return Ok(());
    }
    let column = scenarios::fidelity::Column::of(backbone.pubsub(), false).map_err(Failed::from)?;
    let label = format!(
        "`cargo nextest run --test scenarios`, event store {}, {}",
        backbone.engine(),
        chrono::Utc::now().format("%Y-%m-%d")
    );
    scenarios::fidelity::record(column, &label, &[report])
        .map_err(|e| Failed::from(format!("recording the result: {e}")))
}

fn verdict(report: ScenarioReport) -> Result<Completion, Failed> {
    for figure in &report.figures {
        println!("    figure: {figure}");
    }
    match report.outcome {
        Outcome::Pass => Ok(Completion::Completed),
        Outcome::Divergence => {
            let reasons: Vec<String> = report.divergences.iter().map(|d| d.to_string()).collect();
            eprintln!("DIVERGENCE in {}: {}", report.name, reasons.join(" | "));
            Ok(Completion::ignored_with(format!(
                "DIVERGENCE: {}",
                reasons.join(" | ")
            )))
        }
        Outcome::Skipped => Ok(Completion::ignored_with(report.message)),
        Outcome::Fail => Err(Failed::from(report.message)),
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    // RIG_LOG=rig=debug shows every delivery the workers see.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("RIG_LOG") {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    }
    let setup = || -> anyhow::Result<Shared> {
        Ok(Shared {
            runtime: tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?,
            backbone: Mutex::new(None),
            world: World::from_repository("dev").map_err(|e| format!("{e:#}")),
            seed: scenarios::seed_from_env()?,
            cases: scenarios::cases_from_env()?,
        })
    };
    let shared = match setup() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut trials = Vec::new();
    for scenario in scenarios::all() {
        let shared = shared.clone();
        trials.push(Trial::ignorable_test(
            format!("scenario::{}", scenario.name),
            move || {
                let world = shared.world.clone().map_err(Failed::from)?;
                let backbone = shared.backbone()?;
                let report = shared
                    .runner(backbone.clone())
                    .scenario(&scenario, world, "t");
                record(&backbone, &report)?;
                verdict(report)
            },
        ));
    }
    for mutation in scenarios::mutations::all() {
        let shared = shared.clone();
        trials.push(Trial::ignorable_test(
            format!("mutation::{}", mutation.name),
            move || {
                let world = shared.world.clone().map_err(Failed::from)?;
                let backbone = shared.backbone()?;
                verdict(shared.runner(backbone).mutation(&mutation, &world))
            },
        ));
    }
    trials.push(Trial::test("fidelity::doc_is_current", || {
        scenarios::fidelity::staleness().map_err(Failed::from)
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    // The trials are gone; dropping the last reference stops every process of the backbone.
    if let Ok(shared) = Arc::try_unwrap(shared) {
        if let Ok(mut slot) = shared.backbone.lock() {
            slot.take();
        }
        shared
            .runtime
            .shutdown_timeout(std::time::Duration::from_secs(5));
    }
    conclusion.exit_code()
}
