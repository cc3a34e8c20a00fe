//! Property-based scenarios: each states one guarantee of the backbone as an invariant and
//! checks it over generated inputs against a deployed environment. They see only endpoints and
//! credentials (an [`Environment`]), so the same code runs against any target.
//!
//! Each case deploys its own scope (Pub/Sub project, databases, bucket) on the shared
//! backbone, so scenarios and cases are isolated from each other whatever the order. On a
//! backbone that provisions nothing (GCP's dev and staging) the staging-safe scenarios run on
//! the fixed acceptance resources instead, each case marked as its own ([`acceptance`]).

pub mod acceptance;
pub mod catalogue;
pub mod dead_letter;
pub mod fidelity;
pub mod fixtures;
pub mod isolation;
pub mod mutations;
pub mod ordering;
pub mod oversized;
pub mod restart;
pub mod suite;
pub mod support;
pub mod uniqueness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use rig_harness::backbone::Backbone;
use rig_harness::divergence::Divergence;
use rig_harness::environment::Environment;
use rig_harness::report::Outcome;
use rig_topology::Topology;

/// What a scenario runs against: the backbone, and the world as the Terraform and the
/// migrations describe it (mutation tests hand in a broken copy).
#[derive(Clone)]
pub struct World {
    pub topology: Topology,
    /// `None`: the repository's `migrations/` (embedded); `Some`: a mutated copy.
    pub migrator: Option<Arc<sqlx::migrate::Migrator>>,
    /// Points `DB_EVENT_STORE_*` at the primary database, as a misconfigured deploy would.
    pub event_store_points_at_primary: bool,
    /// Whether the worker verifies claim-checked payloads (always, except in a mutation test).
    pub verify_claims: bool,
}

impl World {
    /// The world as the repository describes it.
    pub fn from_repository(environment: &str) -> anyhow::Result<Self> {
        Ok(Self {
            topology: Topology::of_repository(environment)?,
            migrator: None,
            event_store_points_at_primary: false,
            verify_claims: true,
        })
    }
}

/// Everything a scenario run needs.
pub struct Context {
    pub backbone: Arc<Backbone>,
    pub world: World,
    pub runtime: tokio::runtime::Handle,
    /// Generated cases per scenario: `PROPTEST_CASES` when set, else the scenario's default.
    pub cases: Option<u32>,
    /// Seed of the case generator; printed on failure so the run can be replayed.
    pub seed: [u8; 32],
    /// Prefix of every scope this run deploys (unique per run and mutation).
    pub scope_prefix: String,
    /// Shrink a failure to a minimal case (off for mutation tests, which only need the failure,
    /// and on GCP, where every try waits on the real service's backoff).
    pub shrink: bool,
    /// On a backbone that provisions nothing: the acceptance run every case shares.
    pub acceptance: Option<Arc<acceptance::AcceptanceRun>>,
    /// Set when the run is interrupted: cases not yet started are not run.
    pub stop: Arc<AtomicBool>,
}

impl Context {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Deploys a fresh, isolated scope for one case.
    pub async fn deploy(&self, name: &str) -> anyhow::Result<Environment> {
        let scope = format!("{}-{name}", self.scope_prefix);
        let deployment = self
            .backbone
            .deploy_with(
                &scope,
                &self.world.topology,
                self.world
                    .migrator
                    .as_deref()
                    .unwrap_or(&rig_events::event_store::MIGRATOR),
            )
            .await?;
        let mut env = deployment.environment;
        if self.world.event_store_points_at_primary {
            env.event_store = env.primary.clone();
        }
        Ok(env)
    }

    /// The world of one case: a freshly deployed scope, or on a shared acceptance backbone the
    /// fixed acceptance resources with the case's marks ([`support::Case`]).
    pub async fn case(&self, name: &str) -> anyhow::Result<support::Case> {
        let Some(run) = &self.acceptance else {
            let env = self.deploy(name).await?;
            return Ok(support::Case {
                name: name.to_string(),
                env,
                wiring: support::Wiring::of(self)?,
                mark: None,
                patience: None,
            });
        };
        let mark = run.mark(name);
        Ok(support::Case {
            name: name.to_string(),
            env: run.environment.clone(),
            wiring: support::Wiring::acceptance(self, &mark, &run.databases)?,
            mark: Some(mark),
            patience: Some(run.timeout),
        })
    }
}

/// How one scenario ended.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    pub name: &'static str,
    pub target: String,
    pub cases: u32,
    pub outcome: Outcome,
    pub took: Duration,
    /// Why it failed (with the shrunk case and how to replay it), or what it measured.
    pub message: String,
    pub divergences: Vec<Divergence>,
    pub figures: Vec<String>,
}

impl ScenarioReport {
    /// A scenario this backbone cannot run, and why: reported as skipped, never as a pass.
    pub fn skipped(name: &'static str, target: String, why: String) -> Self {
        ScenarioReport {
            name,
            target,
            cases: 0,
            outcome: Outcome::Skipped,
            took: Duration::ZERO,
            message: why,
            divergences: Vec::new(),
            figures: Vec::new(),
        }
    }
}

/// What one case found besides pass/fail.
#[derive(Default)]
pub struct CaseNotes {
    pub divergences: Vec<Divergence>,
    pub figures: Vec<String>,
}

pub struct Scenario {
    pub name: &'static str,
    /// The invariant, in one sentence, as reports show it.
    pub invariant: &'static str,
    /// What its generated cases put the backbone through, for docs/scenarios.md.
    pub conditions: &'static str,
    pub default_cases: u32,
    pub run: fn(&Context) -> ScenarioReport,
    /// Why it cannot run on the fixed acceptance resources of GCP (it needs resources of
    /// its own, or writes where an acceptance run may not); `None`: staging-safe.
    pub not_on_gcp: Option<&'static str>,
}

/// Cases per scenario on GCP unless `--cases`/`PROPTEST_CASES` says otherwise: each waits on
/// the real service's backoff (minutes in staging).
pub const GCP_DEFAULT_CASES: u32 = 1;

/// Every scenario, in the order reports list them.
pub fn all() -> Vec<Scenario> {
    vec![
        ordering::SCENARIO,
        ordering::UNDER_PUBSUB_FAULTS,
        dead_letter::ORDERED,
        dead_letter::UNORDERED,
        dead_letter::BAD_INPUT,
        uniqueness::SCENARIO,
        isolation::SCENARIO,
        oversized::SCENARIO,
        restart::SCENARIO,
    ]
}

pub fn find(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.name == name)
}

/// A fresh seed, or the one in `RIG_SCENARIO_SEED` (64 hex digits) to replay a failure.
pub fn seed_from_env() -> anyhow::Result<[u8; 32]> {
    match std::env::var("RIG_SCENARIO_SEED") {
        Ok(hex) => {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<Result<_, _>>()
                .map_err(|_| anyhow::anyhow!("RIG_SCENARIO_SEED must be 64 hex digits"))?;
            bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("RIG_SCENARIO_SEED must be 64 hex digits (32 bytes)"))
        }
        Err(_) => Ok(*uuid::Uuid::new_v4().as_bytes()).map(|a: [u8; 16]| {
            let b = *uuid::Uuid::new_v4().as_bytes();
            let mut seed = [0u8; 32];
            seed[..16].copy_from_slice(&a);
            seed[16..].copy_from_slice(&b);
            seed
        }),
    }
}

/// `PROPTEST_CASES`, if set: a number of cases, at least 1.
pub fn cases_from_env() -> anyhow::Result<Option<u32>> {
    match std::env::var("PROPTEST_CASES") {
        Ok(v) => match v.parse::<u32>() {
            Ok(0) => anyhow::bail!(
                "PROPTEST_CASES=0: a scenario needs at least one case (`rig scenarios --list` lists them without running any)"
            ),
            Ok(n) => Ok(Some(n)),
            Err(_) => anyhow::bail!("PROPTEST_CASES must be a number, got {v:?}"),
        },
        Err(_) => Ok(None),
    }
}

/// Why a scenario is not run on a backbone that provisions nothing and has no acceptance run.
pub const NEEDS_SCOPES: &str = "not run: every case deploys an isolated scope of its own, and this target provisions nothing; use `--target local` or `containers`, or `--target gcp` for the staging-safe scenarios on the acceptance resources";

/// Why a scenario of an interrupted run ended.
pub const INTERRUPTED: &str = "not run to the end: the run was interrupted";

/// Runs `check` over cases drawn from `strategy`, shrinking a failure to a minimal case.
/// `check` returns `Err(reason)` when the invariant is violated.
pub fn property<S, F>(ctx: &Context, scenario: &Scenario, strategy: S, check: F) -> ScenarioReport
where
    S: Strategy,
    S::Value: std::fmt::Debug,
    F: Fn(&Context, usize, &S::Value) -> Result<CaseNotes, String>,
{
    let started = Instant::now();
    let default_cases = if ctx.acceptance.is_some() {
        GCP_DEFAULT_CASES
    } else {
        scenario.default_cases
    };
    // Zero cases are refused where the count is given (`--cases`, PROPTEST_CASES).
    let cases = ctx.cases.unwrap_or(default_cases).max(1);
    let config = Config {
        cases,
        max_shrink_iters: if ctx.shrink { 24 } else { 0 },
        max_shrink_time: 60_000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &ctx.seed));
    let notes = Mutex::new(CaseNotes::default());
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&strategy, |case| {
        if ctx.stopped() {
            return Err(TestCaseError::fail(INTERRUPTED));
        }
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let case_started = Instant::now();
        // On GCP a case takes minutes: say where the run is.
        if ctx.acceptance.is_some() {
            eprintln!("  {} case {} of {cases} ...", scenario.name, n + 1);
        }
        let verdict = check(ctx, n, &case);
        if ctx.acceptance.is_some() {
            eprintln!(
                "  {} case {}: {} in {}",
                scenario.name,
                n + 1,
                if verdict.is_ok() { "passed" } else { "failed" },
                rig_harness::report::seconds(case_started.elapsed())
            );
        }
        match verdict {
            Ok(found) => {
                if let Ok(mut all) = notes.lock() {
                    all.divergences.extend(found.divergences);
                    all.figures.extend(found.figures);
                }
                Ok(())
            }
            Err(reason) => Err(TestCaseError::fail(reason)),
        }
    });
    let notes = notes.into_inner().unwrap_or_default();
    let mut divergences = notes.divergences;
    divergences.dedup();
    let (outcome, message) = match result {
        // An interrupted run decides nothing: neither a failing case nor a seed to replay.
        _ if ctx.stopped() => (Outcome::Skipped, INTERRUPTED.to_string()),
        Ok(()) if !divergences.is_empty() => (
            Outcome::Divergence,
            "the emulator could not decide the invariant; see the divergences".to_string(),
        ),
        Ok(()) => (Outcome::Pass, scenario.invariant.to_string()),
        Err(TestError::Fail(reason, case)) => (
            Outcome::Fail,
            format!(
                "invariant violated: {reason}\n{} failing case: {case:#?}\nreplay: RIG_SCENARIO_SEED={} {}",
                if ctx.shrink { "minimal" } else { "the" },
                rig_events::envelope::hex(&ctx.seed),
                if ctx.acceptance.is_some() {
                    format!(
                        "rig scenarios --target gcp --project P --environment E --cases {cases} {}",
                        scenario.name
                    )
                } else {
                    format!(
                        "PROPTEST_CASES={cases} cargo test --test scenarios -- --exact scenario::{}",
                        scenario.name
                    )
                }
            ),
        ),
        Err(TestError::Abort(reason)) => (Outcome::Fail, format!("aborted: {reason}")),
    };
    ScenarioReport {
        name: scenario.name,
        target: ctx.backbone.kind().to_string(),
        cases: counter.load(std::sync::atomic::Ordering::SeqCst) as u32,
        outcome,
        took: started.elapsed(),
        message,
        divergences,
        figures: notes.figures,
    }
}

/// Runs scenarios and mutation tests on one backbone with one seed.
#[derive(Clone)]
pub struct Runner {
    pub backbone: Arc<Backbone>,
    pub runtime: tokio::runtime::Handle,
    pub seed: [u8; 32],
    pub cases: Option<u32>,
    /// On a backbone that provisions nothing (GCP): the acceptance run the cases share.
    pub acceptance: Option<Arc<acceptance::AcceptanceRun>>,
    /// Set when the run is interrupted (see [`Context::stop`]).
    pub stop: Arc<AtomicBool>,
}

impl Runner {
    /// Runs one scenario with `world`; a failure is shrunk to a minimal case (locally).
    pub fn scenario(
        &self,
        scenario: &Scenario,
        world: World,
        scope_prefix: &str,
    ) -> ScenarioReport {
        if self.stop.load(Ordering::SeqCst) {
            return self.not_run(scenario.name, INTERRUPTED.into());
        }
        if self.acceptance.is_some()
            && let Some(reason) = scenario.not_on_gcp
        {
            return self.not_run(scenario.name, format!("not run on GCP: {reason}"));
        }
        if self.acceptance.is_none() && !self.backbone.capabilities().provisions {
            return self.not_run(scenario.name, NEEDS_SCOPES.into());
        }
        let shrink = self.acceptance.is_none();
        self.run(scenario, world, scope_prefix, shrink)
    }

    /// A report for something this backbone cannot run: never a pass.
    fn not_run(&self, name: &'static str, message: String) -> ScenarioReport {
        ScenarioReport::skipped(name, self.backbone.kind().to_string(), message)
    }

    fn run(
        &self,
        scenario: &Scenario,
        world: World,
        scope_prefix: &str,
        shrink: bool,
    ) -> ScenarioReport {
        let ctx = Context {
            backbone: self.backbone.clone(),
            world,
            runtime: self.runtime.clone(),
            cases: self.cases,
            seed: self.seed,
            scope_prefix: scope_prefix.to_string(),
            shrink,
            acceptance: self.acceptance.clone(),
            stop: self.stop.clone(),
        };
        (scenario.run)(&ctx)
    }

    /// Runs a mutation: its scenario against the broken world, without shrinking. The
    /// report's outcome is `Pass` when the scenario failed, as it must.
    pub fn mutation(&self, mutation: &mutations::Mutation, world: &World) -> ScenarioReport {
        if self.stop.load(Ordering::SeqCst) {
            return self.not_run(mutation.name, INTERRUPTED.into());
        }
        if self.acceptance.is_some() {
            return self.not_run(
                mutation.name,
                "not run on GCP: a mutation test deploys a broken copy of the Terraform, the migrations or the wiring, and GCP is deployed by Terraform only".into(),
            );
        }
        let started = Instant::now();
        let failed_to_build = |message: String| ScenarioReport {
            name: mutation.name,
            target: self.backbone.kind().to_string(),
            cases: 0,
            outcome: Outcome::Fail,
            took: started.elapsed(),
            message,
            divergences: Vec::new(),
            figures: Vec::new(),
        };
        let Some(scenario) = find(mutation.scenario) else {
            return failed_to_build(format!(
                "mutation names an unknown scenario `{}`",
                mutation.scenario
            ));
        };
        let (broken, _copies) = match (mutation.build)(world) {
            Ok(built) => built,
            Err(e) => return failed_to_build(format!("building the mutation: {e:#}")),
        };
        let report = self.run(
            &scenario,
            broken,
            &format!("m-{}", mutation.name.replace('_', "-")),
            false,
        );
        let (outcome, message) = match report.outcome {
            Outcome::Fail => (
                Outcome::Pass,
                format!("{} failed as it must with {}", scenario.name, mutation.what),
            ),
            other => (
                Outcome::Fail,
                format!(
                    "{} did not fail with {} (it reported {}): the scenario does not guard what it claims",
                    scenario.name,
                    mutation.what,
                    other.label()
                ),
            ),
        };
        ScenarioReport {
            name: mutation.name,
            outcome,
            message,
            took: started.elapsed(),
            ..report
        }
    }
}
