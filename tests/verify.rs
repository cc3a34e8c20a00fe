//! `rig verify` on real workers: the reference worker run as a process (`rig worker`), the
//! Python worker on Google's client and the PHP SuiteX-style worker each pass every property
//! under every fault; each deliberately broken worker fails with the anomaly it is named for;
//! a worker that leaves poison to the subscription's dead-letter policy passes; bad input
//! exits 2 and leaves nothing running.
//!
//! The plans are as small as still proves each property: a few hundred events, every fault
//! once for the workers that must pass, only the fault a mutation needs for the broken ones.
//! The default run (about 10,000 events) is the benchmark's (`cargo bench --bench verify`).
//! The files of each run stay in `target/tmp/verify/<test>/` (summary.txt, results.json,
//! run.svg, history.jsonl, the worker's stderr) for a failure to be read.

mod support;
use support::processes::wait_for;
use support::{dev_topology, runtime};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rig_harness::targets::TargetKind;
use rig_harness::verify::{self, Options, Outcome, PlanSource};
use rig_verify::AnomalyKind;
use rig_verify::history::{Event, History, ServiceFaultKind};
use rig_verify::plan::{FaultKind, Hold, Plan, PlanConfig, PlannedFault, Trigger};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rig() -> &'static str {
    env!("CARGO_BIN_EXE_rig")
}

fn out_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("verify")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Every fault kind once, on a workload just big enough that each lands while events are in
/// flight and each Pub/Sub fault hits a few messages: 800 events on 30 keys, 30 poison, a few
/// claim-checked payloads and producer retries.
fn every_fault() -> PlanConfig {
    PlanConfig {
        events: 800,
        aggregates: 30,
        claim_checked_permille: 25,
        retry_permille: 20,
        poison: 30,
        faults: FaultKind::ALL.to_vec(),
        ack_deadline_ms: 10_000,
        quiet_ms: 1_500,
        drain_bound_ms: 30_000,
    }
}

/// No faults: what a mutation shows without help.
fn no_faults() -> PlanConfig {
    PlanConfig {
        events: 300,
        aggregates: 12,
        claim_checked_permille: 25,
        retry_permille: 30,
        poison: 20,
        faults: Vec::new(),
        ack_deadline_ms: 10_000,
        quiet_ms: 1_000,
        drain_bound_ms: 10_000,
    }
}

fn run(test: &str, worker: &str, plan: PlanSource) -> Outcome {
    let mut options = Options::new(worker, dev_topology(), &out_dir(test));
    options.plan = plan;
    run_with(test, options)
}

fn run_with(test: &str, options: Options) -> Outcome {
    let started = Instant::now();
    let outcome = runtime()
        .block_on(verify::run(&options))
        .unwrap_or_else(|e| panic!("{test}: the run could not be made: {e}"));
    // Shown at the end of the run (.config/nextest.toml): what each worker did.
    println!(
        "{test}: {} in {:.1} s\n{}",
        if outcome.passed() { "PASS" } else { "FAIL" },
        started.elapsed().as_secs_f64(),
        outcome.summary
    );
    outcome
}

fn seeded(seed: u64, config: PlanConfig) -> PlanSource {
    PlanSource::Seed { seed, config }
}

/// How many Pub/Sub faults our service injected in the run, by kind.
fn service_faults(out: &Path) -> Vec<(ServiceFaultKind, usize)> {
    let history = History::load(&out.join("history.jsonl")).expect("the run's history");
    [
        ServiceFaultKind::Duplicate,
        ServiceFaultKind::StreamReset,
        ServiceFaultKind::Delay,
        ServiceFaultKind::LostAck,
    ]
    .into_iter()
    .map(|kind| {
        let n = history
            .records
            .iter()
            .filter(|r| matches!(&r.event, Event::ServiceFault(f) if f.fault == kind))
            .count();
        (kind, n)
    })
    .collect()
}

/// Every property passed, every fault kind was injected on time, and each Pub/Sub fault
/// actually hit messages (a stream reset only where the worker streams).
fn assert_passes_under_every_fault(test: &str, outcome: &Outcome, streams: bool) {
    assert!(
        outcome.passed(),
        "{test}: a property failed:\n{}",
        outcome.summary
    );
    let kinds: Vec<FaultKind> = outcome.faults.iter().map(|f| f.kind).collect();
    for kind in FaultKind::ALL {
        assert!(
            kinds.contains(&kind),
            "{test}: fault {kind} was not injected:\n{}",
            outcome.summary
        );
    }
    let late: Vec<String> = outcome
        .faults
        .iter()
        .filter(|f| f.late)
        .map(|f| format!("{}#{}", f.kind, f.id))
        .collect();
    assert!(
        late.is_empty(),
        "{test}: faults fired late, when the run had settled (they proved nothing): {late:?}\n{}",
        outcome.summary
    );
    let injected = service_faults(&outcome.out);
    for (kind, n) in &injected {
        if *kind == ServiceFaultKind::StreamReset && !streams {
            continue;
        }
        assert!(
            *n > 0,
            "{test}: the Pub/Sub service injected no {kind:?} while its fault was on: {injected:?}"
        );
    }
    println!("{test}: Pub/Sub faults injected: {injected:?}");
}

fn assert_fails_with(test: &str, outcome: &Outcome, anomaly: AnomalyKind) {
    assert_eq!(outcome.exit_code(), 1, "{test}:\n{}", outcome.summary);
    assert!(
        outcome.verdict.failing_kinds().contains(&anomaly),
        "{test}: expected the anomaly {anomaly}, found {:?}:\n{}",
        outcome.verdict.failing_kinds(),
        outcome.summary
    );
}

// ---------------------------------------------------------------------------------------------
// Workers that must pass every property under every fault
// ---------------------------------------------------------------------------------------------

#[test]
fn the_reference_worker_passes_every_property_under_every_fault() {
    let test = "the_reference_worker_passes_every_property_under_every_fault";
    let outcome = run(
        test,
        &format!("{} worker", rig()),
        seeded(21, every_fault()),
    );
    assert_passes_under_every_fault(test, &outcome, true);
}

#[test]
fn the_python_worker_passes_every_property_under_every_fault() {
    let test = "the_python_worker_passes_every_property_under_every_fault";
    let outcome = run(
        test,
        "python3 workers/python/worker.py",
        seeded(22, every_fault()),
    );
    assert_passes_under_every_fault(test, &outcome, true);
}

#[test]
fn the_php_worker_passes_every_property_under_every_fault() {
    let test = "the_php_worker_passes_every_property_under_every_fault";
    let outcome = run(
        test,
        "php laravel/bin/worker.php",
        seeded(23, every_fault()),
    );
    // REST pulls: no stream to reset.
    assert_passes_under_every_fault(test, &outcome, false);
}

/// Replicas share the subscription; a worker fault hits one of them (the fault's id picks it)
/// while the other goes on.
#[test]
fn two_replicas_pass_while_one_is_killed_and_the_other_stopped() {
    let test = "two_replicas_pass_while_one_is_killed_and_the_other_stopped";
    let mut options = Options::new(&format!("{} worker", rig()), dev_topology(), &out_dir(test));
    options.replicas = 2;
    options.plan = seeded(
        26,
        PlanConfig {
            faults: vec![FaultKind::WorkerKill, FaultKind::WorkerTerm],
            // A killed replica's keys come back only when its 10 s leases run out.
            drain_bound_ms: 30_000,
            ..no_faults()
        },
    );
    let outcome = run_with(test, options);
    assert!(outcome.passed(), "{test}:\n{}", outcome.summary);
    let history = History::load(&outcome.out.join("history.jsonl")).expect("the history");
    let mut started: Vec<u32> = history
        .records
        .iter()
        .filter_map(|r| match &r.event {
            Event::WorkerStart(s) => Some(s.replica),
            _ => None,
        })
        .collect();
    started.sort_unstable();
    started.dedup();
    assert_eq!(started, [0, 1], "{test}: both replicas ran");
    assert_eq!(
        outcome.verdict.figures.worker_starts, 4,
        "{test}: two starts, two restarts"
    );
}

/// Poison nacked on every delivery and left to the subscription's dead-letter policy (its
/// copies carry the service's delivery count and no reason) is correct: it passes, under a
/// worker kill and Pub/Sub duplicates too.
#[test]
fn a_worker_that_only_nacks_poison_passes() {
    let test = "a_worker_that_only_nacks_poison_passes";
    let config = PlanConfig {
        poison: 12,
        faults: vec![FaultKind::WorkerKill, FaultKind::PubsubDuplicates],
        // Each poison message waits out the retry policy's backoffs before the policy takes it.
        drain_bound_ms: 40_000,
        ..no_faults()
    };
    let outcome = run(
        test,
        "python3 fixtures/workers/correct/nacks_poison.py",
        seeded(24, config),
    );
    assert!(outcome.passed(), "{test}:\n{}", outcome.summary);
    let dead = outcome.verdict.property(rig_verify::Property::DeadLetters);
    assert!(
        outcome.verdict.figures.dead_letters_by_policy > 0
            && outcome.verdict.figures.dead_letters_by_worker == 0,
        "{test}: the policy should have dead-lettered the poison: {dead:?}"
    );
}

/// The containers target: the same services as containers, faults through `docker stop`,
/// `docker start`, `pause` and `unpause`, our Pub/Sub service in its container.
#[test]
fn the_reference_worker_passes_every_property_under_every_fault_on_the_containers_target() {
    let test =
        "the_reference_worker_passes_every_property_under_every_fault_on_the_containers_target";
    if let Err(why) = rig_harness::containers::engine_version() {
        println!(
            "SKIPPED {test}: {why}. The containers target needs a Docker engine: start dockerd to run this test"
        );
        return;
    }
    // target/<profile>/deps/<test> -> target/<profile>/pubsub-service
    let Some(binary) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("pubsub-service")))
        .filter(|b| b.is_file())
    else {
        println!(
            "SKIPPED {test}: this build has no pubsub-service binary next to the test; run the workspace's tests (`./x test`, `cargo nextest run --workspace`) or `cargo build -p pubsub-service` first"
        );
        return;
    };
    let out = out_dir(test);
    let plan = out.with_extension("plan.json");
    write_plan(&plan, 25, every_fault());
    let started = Instant::now();
    let output = Command::new(rig())
        .args(["verify", "--target", "containers", "--out"])
        .arg(&out)
        .arg("--plan")
        .arg(&plan)
        .arg("--worker")
        .arg(format!("{} worker", rig()))
        .current_dir(root())
        .env("RIG_PUBSUB", "pubsub-service")
        .env("RIG_PUBSUB_SERVICE_BIN", &binary)
        .stdin(Stdio::null())
        .output()
        .expect("running rig verify --target containers");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "{test}: {} in {:.1} s\n{stdout}",
        output.status,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(output.status.code(), Some(0), "{test}:\n{stdout}\n{stderr}");
    assert!(stdout.contains("PASS: replay with:"), "{stdout}");
    assert!(
        !stdout.contains("fired late"),
        "{test}: a fault fired late:\n{stdout}"
    );
}

fn write_plan(path: &Path, seed: u64, config: PlanConfig) -> Plan {
    let fixtures = rig_verify::plan::Fixtures::load(&root().join("fixtures")).expect("fixtures");
    let plan = Plan::generate(seed, &config, &fixtures);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("a directory for the plan");
    plan.save(path).expect("writing the plan");
    plan
}

// ---------------------------------------------------------------------------------------------
// Broken workers: each fails with the anomaly it is named for
// ---------------------------------------------------------------------------------------------

fn broken(name: &str) -> String {
    format!("python3 fixtures/workers/broken/{name}.py")
}

/// Acking before the append: what fails between the two is lost — here the appends in flight
/// when the event store is killed, and whatever the worker holds when it is killed (the
/// window between an ack and its append is milliseconds long, so the database kill is what
/// makes the loss certain).
#[test]
fn a_worker_that_acks_before_the_append_loses_events() {
    let test = "a_worker_that_acks_before_the_append_loses_events";
    let out = out_dir(test);
    let plan_file = out.with_extension("plan.json");
    let mut plan = write_plan(
        &plan_file,
        31,
        PlanConfig {
            events: 600,
            ..no_faults()
        },
    );
    let fault = |id, kind, stored| PlannedFault {
        id,
        kind,
        target: kind.default_target().into(),
        trigger: Trigger::Stored(stored),
        hold: Hold::Instant,
        labels: Default::default(),
    };
    plan.faults = vec![
        fault(1, FaultKind::EventStoreKill, 200),
        fault(2, FaultKind::WorkerKill, 400),
    ];
    plan.save(&plan_file).expect("writing the plan");
    let mut options = Options::new(&broken("ack_before_append"), dev_topology(), &out);
    options.plan = PlanSource::File(plan_file);
    let outcome = run_with(test, options);
    assert_fails_with(test, &outcome, AnomalyKind::Lost);
}

#[test]
fn a_worker_that_works_a_keys_messages_concurrently_reorders_them() {
    let test = "a_worker_that_works_a_keys_messages_concurrently_reorders_them";
    let outcome = run(test, &broken("concurrent_keys"), seeded(32, no_faults()));
    assert_fails_with(test, &outcome, AnomalyKind::Reordered);
}

#[test]
fn a_worker_that_acks_poison_without_dead_lettering_it_loses_it_from_the_dlq() {
    let test = "a_worker_that_acks_poison_without_dead_lettering_it_loses_it_from_the_dlq";
    let outcome = run(test, &broken("poison_acked"), seeded(33, no_faults()));
    assert_fails_with(test, &outcome, AnomalyKind::PoisonNotDeadLettered);
}

#[test]
fn a_worker_that_stores_the_claim_reference_is_caught() {
    let test = "a_worker_that_stores_the_claim_reference_is_caught";
    let outcome = run(test, &broken("stores_reference"), seeded(34, no_faults()));
    assert_fails_with(test, &outcome, AnomalyKind::ClaimReferenceStored);
}

#[test]
fn a_worker_that_writes_to_the_primary_is_caught() {
    let test = "a_worker_that_writes_to_the_primary_is_caught";
    let outcome = run(test, &broken("writes_primary"), seeded(35, no_faults()));
    assert_fails_with(test, &outcome, AnomalyKind::PrimaryWrite);
}

/// Producer retries are redeliveries of stored events: answered with an error, they never
/// settle.
#[test]
fn a_worker_that_errors_on_a_redelivery_never_drains() {
    let test = "a_worker_that_errors_on_a_redelivery_never_drains";
    let outcome = run(
        test,
        &broken("errors_on_redelivery"),
        seeded(36, no_faults()),
    );
    assert_fails_with(test, &outcome, AnomalyKind::NeverDrains);
}

// ---------------------------------------------------------------------------------------------
// The command line: exit statuses, bad input, nothing left behind
// ---------------------------------------------------------------------------------------------

/// `rig verify` with its own temp dir and a mark in its environment, which every process it
/// starts inherits: what is left afterwards is found by the mark.
struct Cli {
    mark: String,
    tmp: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        Self {
            mark: uuid::Uuid::new_v4().simple().to_string(),
            tmp: tempfile::tempdir().expect("a temp dir"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(rig());
        command
            .arg("verify")
            .args(args)
            .current_dir(root())
            .env("TMPDIR", self.tmp.path())
            .env("RIG_VERIFY_TEST_MARK", &self.mark)
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running rig verify")
    }

    /// Processes that carry the mark: started by that `rig verify` and still running.
    fn marked_processes(&self) -> Vec<String> {
        let needle = format!("RIG_VERIFY_TEST_MARK={}", self.mark);
        std::fs::read_dir("/proc")
            .expect("reading /proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
            })
            .filter(|pid| {
                // A zombie holds nothing.
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| Some(s[s.rfind(')')? + 2..].chars().next()? != 'Z'))
                    .unwrap_or(false)
            })
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!(
                    "{pid}: {}",
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                )
            })
            .collect()
    }

    /// The rig's temp dirs left in its TMPDIR (the MariaDB datadir template is a cache kept
    /// on purpose).
    fn temp_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| {
                        n.starts_with("backbone-rig-") && !n.starts_with("backbone-rig-datadir-")
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn assert_nothing_left(&self, test: &str) {
        // The rig has exited; what it started dies with it (PR_SET_PDEATHSIG) within moments.
        let gone = wait_for(Duration::from_secs(10), || {
            self.marked_processes().is_empty()
        });
        assert!(
            gone,
            "{test}: processes left running: {:?}",
            self.marked_processes()
        );
        assert!(
            self.temp_dirs().is_empty(),
            "{test}: temp dirs left: {:?}",
            self.temp_dirs()
        );
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn an_unknown_worker_command_is_bad_input() {
    let test = "an_unknown_worker_command_is_bad_input";
    let cli = Cli::new();
    let out = out_dir(test);
    let started = Instant::now();
    let output = cli.run(&[
        "--worker",
        "no-such-worker-anywhere --flag",
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown command `no-such-worker-anywhere`") && stderr.contains("PATH"),
        "{}",
        text(&output)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused before any backbone is started"
    );
    cli.assert_nothing_left(test);
}

#[test]
fn a_worker_that_dies_at_once_is_bad_input_with_its_stderr() {
    let test = "a_worker_that_dies_at_once_is_bad_input_with_its_stderr";
    let cli = Cli::new();
    let out = out_dir(test);
    let output = cli.run(&[
        "--worker",
        "sh -c 'echo cannot connect to the event store >&2; exit 3'",
        "--events",
        "50",
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("exited before it was ready")
            && stderr.contains("exit status: 3")
            && stderr.contains("cannot connect to the event store"),
        "{}",
        text(&output)
    );
    cli.assert_nothing_left(test);
}

#[test]
fn a_plan_file_that_does_not_parse_is_bad_input() {
    let test = "a_plan_file_that_does_not_parse_is_bad_input";
    let cli = Cli::new();
    let out = out_dir(test);
    std::fs::create_dir_all(&out).expect("the output directory");
    let plan = out.join("broken-plan.json");
    std::fs::write(&plan, "{\n  \"version\": 1,\n  \"seed\": \"seven\"\n}\n").expect("a plan");
    let output = cli.run(&[
        "--worker",
        "python3 workers/python/worker.py",
        "--plan",
        plan.to_str().expect("a UTF-8 path"),
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not parse") && stderr.contains("broken-plan.json:3:"),
        "{}",
        text(&output)
    );
    cli.assert_nothing_left(test);
}

/// A property failure exits 1 (not 2), and the report's last line replays the run.
#[test]
fn a_failed_property_exits_1_and_says_how_to_replay() {
    let test = "a_failed_property_exits_1_and_says_how_to_replay";
    let cli = Cli::new();
    let out = out_dir(test);
    let output = cli.run(&[
        "--worker",
        &broken("poison_acked"),
        "--seed",
        "37",
        "--events",
        "100",
        "--faults",
        "none",
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("FAIL  dead-letters") && stdout.contains("poison-not-dead-lettered"),
        "{}",
        text(&output)
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("FAIL: replay with: rig verify --worker")
            && last.contains(&format!("--plan '{}/plan.json'", out.display())),
        "{last}"
    );
    for file in [
        "summary.txt",
        "junit.xml",
        "results.json",
        "run.svg",
        "history.jsonl",
        "snapshot.json",
        "plan.json",
    ] {
        assert!(out.join(file).is_file(), "{test}: no {file}");
    }
    cli.assert_nothing_left(test);
}

/// SIGTERM in the middle of a run: exit 143, and the worker, the services and the temp dir
/// are gone.
#[test]
fn a_signal_stops_the_run_and_leaves_nothing_behind() {
    let test = "a_signal_stops_the_run_and_leaves_nothing_behind";
    let cli = Cli::new();
    let out = out_dir(test);
    let mut child = cli
        .command(&[
            "--worker",
            "python3 workers/python/worker.py",
            "--events",
            "2000",
            "--out",
            out.to_str().expect("a UTF-8 path"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting rig verify");
    let ready = wait_for(Duration::from_secs(120), || {
        std::fs::read_to_string(out.join("worker-0.stdout")).is_ok_and(|s| s.contains("READY"))
    });
    assert!(ready, "{test}: the worker never started");
    support::processes::signal(child.id(), libc::SIGTERM);
    let status = support::processes::wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(143), "{status}");
    cli.assert_nothing_left(test);
}

#[test]
fn the_gcp_target_is_refused_with_what_to_do_instead() {
    let cli = Cli::new();
    let output = cli.run(&[
        "--worker",
        "python3 workers/python/worker.py",
        "--target",
        "gcp",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("acceptance resources") && stderr.contains("--target local"),
        "{}",
        text(&output)
    );
}

#[test]
fn the_target_kinds_the_runner_takes() {
    // The library refuses what the CLI refuses: a backbone it did not bring up.
    let mut options = Options::new("true", dev_topology(), &out_dir("target_kinds"));
    options.target = TargetKind::Env;
    let err = runtime()
        .block_on(verify::run(&options))
        .expect_err("the env target is refused");
    assert!(matches!(err, verify::Error::BadInput(_)), "{err}");
}
