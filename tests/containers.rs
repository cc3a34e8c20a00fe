//! The containers target end to end: `rig validate` and the scenarios on it, what
//! differs between the MariaDB stand-in and MySQL 8.4 (each test states what it expects of
//! each engine), and that no container outlives its rig — on SIGTERM, on SIGKILL (the reaper),
//! on a panic (drop), and left by a rig that is gone (the next start's sweep).
//!
//! Needs a Docker engine. Without one every test here prints `SKIPPED <test>: <why>` and
//! returns: the README's commands must pass on a machine without Docker. The first run on a
//! machine builds the images (`compose/images.sh`, a few minutes); later runs reuse them.

mod support;
use support::processes::{signal, wait_for};
use support::{connect, dev_topology, runtime};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rig_events::event_store::{DbConfig, EVENT_STORE_PREFIX, mysql_error_number};
use rig_harness::backbone::Backbone;
use rig_harness::containers::{self, LABEL_HOST, LABEL_PID, LABEL_RUN, LABEL_SERVICE};
use rig_harness::targets::TargetKind;
use sqlx::{ConnectOptions, Connection, Row};

/// Whether a Docker engine answers; if not, says loudly which test is skipped and why.
fn engine_or_skip(test: &str) -> bool {
    match containers::engine_version() {
        Ok(_) => true,
        Err(why) => {
            println!(
                "SKIPPED {test}: {why}. The containers target needs a Docker engine: start dockerd to run this test"
            );
            false
        }
    }
}

fn the_rig() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rig"));
    command.env("RIG_LOG", "rig=info");
    command
}

/// Ids of every container (running or not) with `label=value`.
fn containers_labelled(label: &str, value: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}={value}")])
        .output()
        .expect("running docker ps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn container_exists(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "--format", "{{.Id}}", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// `rig validate` and the scenarios
// ---------------------------------------------------------------------------------------------

const MUST_PASS: [&str; 9] = [
    "bring up and provision the containers backbone",
    "primary database observed before",
    "subscriptions match the Terraform",
    "publish a probe to events.raw",
    "read the probe from the validation subscription",
    "insert a dummy row via DB_EVENT_STORE_*",
    "the ledger refuses UPDATE and DELETE",
    "worker credentials are refused on the primary",
    "primary database untouched and not restarted",
];
/// The Pub/Sub emulator ignores filters (a divergence); our service, the containers target's
/// default, keeps them and must pass.
const PASS_OR_DIVERGENCE: &str = "the worker subscription does not see probes";

#[test]
fn containers_rig_validate_passes_and_names_the_engine() {
    if !engine_or_skip("containers_rig_validate_passes_and_names_the_engine") {
        return;
    }
    let output = the_rig()
        .args(["validate", "--target", "containers"])
        .output()
        .expect("running `rig validate --target containers`");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "rig validate --target containers failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let banner = stdout
        .lines()
        .find(|l| l.starts_with("target: containers"))
        .unwrap_or_else(|| panic!("no banner naming the containers target:\n{stdout}"));
    // MariaDB is the stand-in and must say so; MySQL (the official image) must not.
    if banner.contains("MariaDB") {
        assert!(
            banner.contains("container stand-in for Cloud SQL MySQL 8.4"),
            "{banner}"
        );
    } else {
        assert!(banner.contains("engine: MySQL 8."), "{banner}");
    }
    for check in MUST_PASS {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(check))
            .unwrap_or_else(|| panic!("no `{check}` row:\n{stdout}"));
        assert_eq!(
            line[check.len()..].split_whitespace().next(),
            Some("PASS"),
            "{line}"
        );
    }
    assert!(
        banner.contains("pubsub: pubsub-service"),
        "the containers target runs our Pub/Sub service unless RIG_PUBSUB says otherwise: {banner}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with(PASS_OR_DIVERGENCE))
        .unwrap_or_else(|| panic!("no `{PASS_OR_DIVERGENCE}` row:\n{stdout}"));
    assert_eq!(
        line[PASS_OR_DIVERGENCE.len()..].split_whitespace().next(),
        Some("PASS"),
        "{line}"
    );
}

/// Our Pub/Sub service's binary from this build, which the containers target makes its
/// image from; `None` when this build did not make it (a build of the root package's tests
/// alone).
fn pubsub_service_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test> -> target/<profile>/pubsub-service
    let binary = exe.parent()?.parent()?.join("pubsub-service");
    binary.is_file().then_some(binary)
}

/// The scenarios that wait out Pub/Sub's backoffs (~16 s each): each runs on a stack of its
/// own, beside the others, so that the suite does not wait on all of them in a row.
const DEAD_LETTER_SCENARIOS: [&str; 2] = ["dead_letter_ordered", "dead_letter_unordered"];

/// Every scenario on the containers target, on our Pub/Sub service in a container, in three
/// tests (three stacks side by side): each must pass, with no divergence (the production
/// configuration is proven in containers too). Google's emulator's divergences are shown by
/// `rig_scenarios_on_google_emulator_pass_or_report_its_divergence` (tests/cli.rs): here its
/// ordering stall made the scenarios take ~50 s or ~190 s by chance.
#[test]
fn containers_dead_letter_ordered_passes_on_our_pubsub_service() {
    scenarios_pass_on_our_pubsub_service(
        "containers_dead_letter_ordered_passes_on_our_pubsub_service",
        &DEAD_LETTER_SCENARIOS[..1],
    );
}

/// See [`containers_dead_letter_ordered_passes_on_our_pubsub_service`].
#[test]
fn containers_dead_letter_unordered_passes_on_our_pubsub_service() {
    scenarios_pass_on_our_pubsub_service(
        "containers_dead_letter_unordered_passes_on_our_pubsub_service",
        &DEAD_LETTER_SCENARIOS[1..],
    );
}

/// See [`containers_dead_letter_ordered_passes_on_our_pubsub_service`].
#[test]
fn containers_other_scenarios_pass_on_our_pubsub_service() {
    let others: Vec<&str> = scenarios::all()
        .iter()
        .map(|s| s.name)
        .filter(|name| !DEAD_LETTER_SCENARIOS.contains(name))
        .collect();
    scenarios_pass_on_our_pubsub_service(
        "containers_other_scenarios_pass_on_our_pubsub_service",
        &others,
    );
}

fn scenarios_pass_on_our_pubsub_service(test: &str, names: &[&str]) {
    if !engine_or_skip(test) {
        return;
    }
    let Some(binary) = pubsub_service_binary() else {
        println!(
            "SKIPPED {test}: this build has no pubsub-service binary next to the test; run the workspace's tests (`./x test`, `cargo nextest run --workspace`) or `cargo build -p pubsub-service` first"
        );
        return;
    };
    let output = the_rig()
        .args(["scenarios", "--target", "containers", "--cases", "1"])
        .args(names)
        .env("RIG_PUBSUB", "pubsub-service")
        .env("RIG_PUBSUB_SERVICE_BIN", &binary)
        .output()
        .expect("running `rig scenarios --target containers`");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown at the end of the run (see .config/nextest.toml): the table.
    println!("{stdout}");
    assert!(
        output.status.success(),
        "rig scenarios --target containers failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("pubsub: pubsub-service"), "{stdout}");
    for name in names {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"));
        assert_eq!(
            row.split_whitespace().nth(2),
            Some("containers"),
            "{row}\n{stdout}"
        );
        // Our service has no excused defects: every scenario runs and passes.
        assert!(
            row.contains("PASS"),
            "a scenario did not pass: {row}\n{stdout}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// MariaDB stand-in vs MySQL 8.4: what each engine must show
// ---------------------------------------------------------------------------------------------

#[test]
fn containers_engine_differences_are_what_each_engine_should_show() {
    if !engine_or_skip("containers_engine_differences_are_what_each_engine_should_show") {
        return;
    }
    runtime().block_on(async {
        let backbone = Backbone::start(TargetKind::Containers)
            .await
            .unwrap_or_else(|e| panic!("starting the containers backbone: {e:#}"));
        let deployment = backbone
            .deploy("engine-differences", &dev_topology())
            .await
            .unwrap_or_else(|e| panic!("deploying: {e:#}"));
        let env = deployment.environment;
        let mariadb = env.engine.starts_with("MariaDB");
        assert!(
            mariadb || env.engine.starts_with("MySQL 8."),
            "unexpected engine: {}",
            env.engine
        );

        let mut admin = connect(&env.event_store_admin).await;
        // The payload column: MariaDB's JSON is LONGTEXT with a json_valid CHECK; MySQL's is native.
        let ddl: String = sqlx::query("SHOW CREATE TABLE event_store")
            .fetch_one(&mut admin)
            .await
            .expect("SHOW CREATE TABLE")
            .get(1);
        let payload = ddl
            .lines()
            .find(|l| l.trim_start().starts_with("`payload`"))
            .unwrap_or_else(|| panic!("no payload column:\n{ddl}"));
        if mariadb {
            assert!(
                payload.contains("longtext") && ddl.contains("json_valid(`payload`)"),
                "MariaDB keeps JSON as LONGTEXT + CHECK (json_valid): {payload}\n{ddl}"
            );
        } else {
            assert!(payload.contains(" json "), "MySQL 8 has a native JSON type: {payload}");
        }

        // Invalid JSON: MariaDB's CHECK says 4025, MySQL 8 says 3140.
        let invalid = sqlx::query(
            "INSERT INTO event_store (account_id, event_id, aggregate_type, aggregate_id, payload, created_at)
             VALUES ('a', '00000000-0000-4000-8000-000000000001', 't', 'i', '{not json', NOW())",
        )
        .execute(&mut admin)
        .await
        .expect_err("invalid JSON must be refused by the ledger");
        let expected = if mariadb { 4025 } else { 3140 };
        assert_eq!(
            mysql_error_number(&invalid),
            Some(expected),
            "{}: invalid JSON is error {expected}: {invalid}",
            env.engine
        );

        // The worker's login: MySQL 8.4 defaults to caching_sha2_password (the client needs
        // sqlx's `mysql-rsa` over plain TCP); MariaDB uses mysql_native_password.
        let plugin: String = sqlx::query("SELECT plugin FROM mysql.user WHERE user = 'sync_worker'")
            .fetch_one(&mut admin)
            .await
            .expect("the worker's auth plugin")
            .get(0);
        let expected = if mariadb {
            "mysql_native_password"
        } else {
            "caching_sha2_password"
        };
        assert_eq!(plugin, expected, "{}", env.engine);
        let mut worker = connect(&env.event_store).await;
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_store")
            .fetch_one(&mut worker)
            .await
            .expect("the worker reads the ledger");
        assert_eq!(rows, 0);
        worker.close().await.ok();
        admin.close().await.ok();
    });
}

// ---------------------------------------------------------------------------------------------
// No container outlives its rig
// ---------------------------------------------------------------------------------------------

/// `rig up --target containers`, its printed environment, and its containers (by pid label).
struct RigUp {
    child: Child,
    vars: HashMap<String, String>,
}

impl Drop for RigUp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rig_up_containers() -> RigUp {
    let mut child = the_rig()
        .args(["up", "--target", "containers"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting `rig up --target containers`");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut up = RigUp {
        child,
        vars: HashMap::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|e| {
                panic!("`rig up --target containers` printed no DB_PASSWORD ({e})")
            });
        let Some((name, value)) = line.strip_prefix("export ").and_then(|l| l.split_once('='))
        else {
            panic!("non-export line on stdout: {line}");
        };
        let value = value.trim_matches('\'').replace(r"'\''", "'");
        up.vars.insert(name.to_string(), value);
        if name == "DB_PASSWORD" {
            return up;
        }
    }
}

/// Starts `rig up`, checks its environment reaches the containers, and returns it with the ids
/// of its four containers.
fn rig_up_with_containers() -> (RigUp, Vec<String>) {
    let up = rig_up_containers();
    let pid = up.child.id().to_string();
    let ids = containers_labelled(LABEL_PID, &pid);
    assert_eq!(
        ids.len(),
        4,
        "four containers labelled with pid {pid}: {ids:?}"
    );
    let worker = DbConfig::from_lookup(EVENT_STORE_PREFIX, |k| up.vars.get(k).cloned())
        .expect("DB_EVENT_STORE_* as printed");
    runtime().block_on(async {
        let conn = worker
            .connect_options()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("the printed worker credentials reach the container: {e}"));
        conn.close().await.ok();
    });
    (up, ids)
}

#[test]
fn containers_rig_up_removes_its_containers_on_sigterm() {
    if !engine_or_skip("containers_rig_up_removes_its_containers_on_sigterm") {
        return;
    }
    let (mut up, ids) = rig_up_with_containers();
    signal(up.child.id(), libc::SIGTERM);
    let status = up.child.wait().expect("waiting for rig up");
    assert!(status.success(), "rig up exits 0 on SIGTERM: {status}");
    // Removed before the rig exited (by drop), not later by the reaper.
    let left: Vec<_> = ids.iter().filter(|id| container_exists(id)).collect();
    assert!(left.is_empty(), "containers outlived `rig up`: {left:?}");
}

#[test]
fn containers_of_a_sigkilled_rig_are_removed_by_its_reaper() {
    if !engine_or_skip("containers_of_a_sigkilled_rig_are_removed_by_its_reaper") {
        return;
    }
    let (mut up, ids) = rig_up_with_containers();
    signal(up.child.id(), libc::SIGKILL);
    up.child.wait().expect("waiting for rig up");
    let gone = wait_for(Duration::from_secs(30), || {
        ids.iter().all(|id| !container_exists(id))
    });
    let left: Vec<_> = ids.iter().filter(|id| container_exists(id)).collect();
    assert!(
        gone,
        "the reaper left containers of a SIGKILLed rig: {left:?}"
    );
}

#[test]
fn containers_of_a_panicking_owner_are_removed_on_unwind() {
    if !engine_or_skip("containers_of_a_panicking_owner_are_removed_on_unwind") {
        return;
    }
    let ids: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let seen = ids.clone();
    let runtime = runtime();
    let outcome = runtime.block_on(runtime.spawn(async move {
        let backbone = Backbone::start(TargetKind::Containers)
            .await
            .unwrap_or_else(|e| panic!("starting the containers backbone: {e:#}"));
        if let Ok(mut seen) = seen.lock() {
            seen.extend(backbone.containers().into_iter().map(|(_, id)| id));
        }
        panic!("a test failing while it holds a containers backbone");
    }));
    assert!(
        outcome.is_err_and(|e| e.is_panic()),
        "the task was meant to panic"
    );
    let ids: Vec<String> = ids.lock().expect("ids").clone();
    assert_eq!(ids.len(), 4, "{ids:?}");
    let left: Vec<_> = ids.iter().filter(|id| container_exists(id)).collect();
    assert!(left.is_empty(), "containers outlived a panic: {left:?}");
}

/// A container labelled with a rig that is gone (pid dead, this host) is removed by the next
/// start's sweep; one whose rig is alive, or that belongs to another host, is not touched.
#[test]
fn containers_left_by_a_gone_rig_are_swept_and_live_ones_kept() {
    if !engine_or_skip("containers_left_by_a_gone_rig_are_swept_and_live_ones_kept") {
        return;
    }
    let images = containers::ensure_images(containers::PubsubImage::from_env().expect("choice"))
        .expect("the images");
    let mut dead = Command::new("true").spawn().expect("spawning true");
    let dead_pid = dead.id();
    dead.wait().expect("reaping true");
    let host = containers::host_name();
    let create = |pid: u32, host: &str, service: &str| -> String {
        // Created, never started: the sweep judges labels, not state.
        let out = Command::new("docker")
            .args(["create", "--label"])
            .arg(format!("{LABEL_RUN}=sweep-test-{}", std::process::id()))
            .arg("--label")
            .arg(format!("{LABEL_PID}={pid}"))
            .arg("--label")
            .arg(format!("{LABEL_HOST}={host}"))
            .arg("--label")
            .arg(format!("{LABEL_SERVICE}={service}"))
            .arg(&images.fake_gcs)
            .output()
            .expect("docker create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let abandoned = create(dead_pid, &host, "abandoned");
    let alive = create(std::process::id(), &host, "alive");
    let foreign = create(dead_pid, "another-host", "foreign");
    // Another test process starting a rig may sweep the abandoned one first: either way it
    // must be gone, and the others must stay.
    containers::remove_abandoned().expect("the sweep");
    let abandoned_left = container_exists(&abandoned);
    let alive_kept = container_exists(&alive);
    let foreign_kept = container_exists(&foreign);
    let _ = Command::new("docker")
        .args(["rm", "-f", &abandoned, &alive, &foreign])
        .output();
    assert!(!abandoned_left, "a gone rig's container survived the sweep");
    assert!(alive_kept, "the sweep removed a live rig's container");
    assert!(foreign_kept, "the sweep removed another host's container");
}

// ---------------------------------------------------------------------------------------------
// compose/
// ---------------------------------------------------------------------------------------------

/// Removes the test's compose stack however the test ends.
struct ComposeStack {
    env: Vec<(String, String)>,
}

impl Drop for ComposeStack {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(containers::compose_dir().join("up.sh"))
            .arg("down")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `compose/up.sh` starts the stack and prints the same `export` lines as `rig up`; `rig
/// validate --target env` then passes on them, and `compose/up.sh down` removes the stack.
#[test]
fn compose_up_prints_an_environment_that_validates() {
    if !engine_or_skip("compose_up_prints_an_environment_that_validates") {
        return;
    }
    let port = || {
        rig_harness::services::free_port()
            .expect("a free port")
            .to_string()
    };
    let project = format!("backbone-rig-test-{}", std::process::id());
    let stack = ComposeStack {
        env: vec![
            ("RIG_COMPOSE_PROJECT".into(), project.clone()),
            ("RIG_COMPOSE_PUBSUB_PORT".into(), port()),
            ("RIG_COMPOSE_GCS_PORT".into(), port()),
            ("RIG_COMPOSE_EVENT_STORE_PORT".into(), port()),
            ("RIG_COMPOSE_PRIMARY_PORT".into(), port()),
            ("RIG_BIN".into(), env!("CARGO_BIN_EXE_rig").into()),
        ],
    };
    let up = Command::new("bash")
        .arg(containers::compose_dir().join("up.sh"))
        .envs(stack.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("running compose/up.sh");
    let stdout = String::from_utf8_lossy(&up.stdout);
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(
        up.status.success(),
        "compose/up.sh failed ({}):\n{stderr}",
        up.status
    );
    let vars: HashMap<String, String> = stdout
        .lines()
        .map(|line| {
            let (name, value) = line
                .strip_prefix("export ")
                .and_then(|l| l.split_once('='))
                .unwrap_or_else(|| panic!("non-export line on stdout: {line}"));
            (name.to_string(), value.trim_matches('\'').to_string())
        })
        .collect();
    for name in [
        "PUBSUB_EMULATOR_HOST",
        "STORAGE_EMULATOR_HOST",
        "GOOGLE_CLOUD_PROJECT",
        "DB_EVENT_STORE_PASSWORD",
        "DB_PASSWORD",
    ] {
        assert!(vars.contains_key(name), "no {name} in:\n{stdout}");
    }
    assert!(
        stderr.contains("stand-in for Cloud SQL MySQL 8.4") || stderr.contains("engine: MySQL 8."),
        "the engine is named (and a stand-in says so):\n{stderr}"
    );
    let validate = the_rig()
        .args(["validate", "--target", "env"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&vars)
        .output()
        .expect("running rig validate --target env");
    let report = String::from_utf8_lossy(&validate.stdout);
    assert!(
        validate.status.success(),
        "rig validate on the compose stack failed:\n{report}\n{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    drop(stack);
    assert!(
        containers_labelled("com.docker.compose.project", &project).is_empty(),
        "compose/up.sh down left containers of {project}"
    );
}

// ---------------------------------------------------------------------------------------------
// `--target auto`
// ---------------------------------------------------------------------------------------------

/// The banner line of `rig validate --target auto` run with `envs`; the run must pass.
fn validate_auto(envs: &[(&str, &str)]) -> String {
    let output = the_rig()
        .args(["validate", "--target", "auto"])
        .envs(envs.iter().copied())
        .output()
        .expect("running rig validate --target auto");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rig validate --target auto failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find(|l| l.starts_with("target: "))
        .unwrap_or_else(|| panic!("no banner:\n{stdout}"))
        .to_string()
}

/// `auto` takes the local target when no engine answers (here: DOCKER_HOST names nothing), and
/// the containers target when one does.
#[test]
fn auto_takes_containers_when_an_engine_answers_and_local_otherwise() {
    let banner = validate_auto(&[("DOCKER_HOST", "unix:///nonexistent/docker.sock")]);
    assert!(banner.starts_with("target: local"), "{banner}");
    if !engine_or_skip("auto_takes_containers_when_an_engine_answers (the containers half)") {
        return;
    }
    let banner = validate_auto(&[]);
    assert!(banner.starts_with("target: containers"), "{banner}");
}
