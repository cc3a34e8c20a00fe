//! The rig used the wrong way, as a new user does by mistake: a backbone that is gone, an
//! env file that is stale, shared or unwritable, endpoints nobody serves, no Google
//! credentials, a signal at any moment of any command. Each must end quickly with one clear
//! line per cause, the exit status the command's `--help` states, and nothing left behind;
//! and no check may pass for want of an answer.

mod support;
use support::processes::{ProcStat, descendants, signal, still_running, wait_exit};
use support::rig_dirs;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rig_events::event_store::DbConfig;
use rig_events::pubsub::{PubsubConnection, PubsubImplementation};
use rig_events::storage::StorageConnection;
use rig_harness::environment::Environment;
use rig_harness::report::Outcome;

fn the_rig() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rig"));
    command.env("RIG_LOG", "rig=info");
    for variable in [
        "RIG_TARGET",
        "PUBSUB_EMULATOR_HOST",
        "STORAGE_EMULATOR_HOST",
        "GOOGLE_CLOUD_PROJECT",
        "RIG_BACKBONE_PID",
        "PROPTEST_CASES",
        "RIG_FIDELITY_RECORD",
    ] {
        command.env_remove(variable);
    }
    command
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A server that accepts connections and never says a word: what a hung service looks like.
fn black_hole() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// A server that greets every connection with a few bytes and then says nothing more: it
/// passes a probe, and hangs whatever asks it something.
fn stalling() -> u16 {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n");
            held.push(stream);
        }
    });
    port
}

/// The variables `rig up` exports, every endpoint at `port`.
fn environment_at(port: u16) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = [
        ("PUBSUB_EMULATOR_HOST", format!("127.0.0.1:{port}")),
        ("RIG_PUBSUB", "pubsub-service".into()),
        ("STORAGE_EMULATOR_HOST", format!("http://127.0.0.1:{port}")),
        ("GOOGLE_CLOUD_PROJECT", "backbone-dev".into()),
        ("BACKBONE_ENVIRONMENT", "dev".into()),
        (
            "BACKBONE_PAYLOAD_BUCKET",
            "suitex-payload-snapshots-dev".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (prefix, database, user) in [
        ("DB_EVENT_STORE_", "events", "sync_worker"),
        ("DB_", "suitex", "suitex_app"),
    ] {
        for (key, value) in [
            ("CONNECTION", "mysql".to_string()),
            ("HOST", "127.0.0.1".into()),
            ("PORT", port.to_string()),
            ("DATABASE", database.into()),
            ("USERNAME", user.into()),
            ("PASSWORD", "x".into()),
        ] {
            vars.insert(format!("{prefix}{key}"), value);
        }
    }
    vars
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command` to its end, timing it.
fn timed(command: &mut Command) -> (Output, Duration) {
    let started = Instant::now();
    let output = command.output().expect("running the rig");
    (output, started.elapsed())
}

// ---------------------------------------------------------------------------------------------
// A check passes only on evidence
// ---------------------------------------------------------------------------------------------

fn dead_environment(port: u16) -> Environment {
    let db = |database: &str, username: &str| DbConfig {
        connection: "mysql".into(),
        host: "127.0.0.1".into(),
        port,
        database: database.into(),
        username: username.into(),
        password: "x".into(),
    };
    Environment {
        target: "environment variables".into(),
        capabilities: rig_harness::targets::Capabilities {
            provisions: false,
            owns_primary: false,
        },
        backbone_environment: "dev".into(),
        scope: "default".into(),
        pubsub: PubsubConnection {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            project_id: "backbone-dev".into(),
            implementation: PubsubImplementation::PubsubService,
        },
        storage: StorageConnection {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            project_id: "backbone-dev".into(),
        },
        bucket: "suitex-payload-snapshots-dev".into(),
        event_store: db("events", "sync_worker"),
        event_store_admin: db("events", "sync_worker"),
        primary: db("suitex", "suitex_app"),
        primary_admin: db("suitex", "suitex_app"),
        engine: "as configured".into(),
    }
}

/// Validation against a backbone that is gone: every check is about a live service, so none
/// may pass — in particular "worker credentials are refused on the primary" on a refused
/// connection — and none may wait out its own timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_against_dead_endpoints_passes_nothing_and_says_why_quickly() {
    let env = dead_environment(closed_port());
    let topology = support::dev_topology();
    let started = Instant::now();
    let validation = rig_harness::validate::run(&env, &topology, Vec::new(), Vec::new()).await;
    let took = started.elapsed();
    let passed: Vec<_> = validation
        .checks
        .iter()
        .filter(|c| c.outcome == Outcome::Pass)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    assert!(
        passed.is_empty(),
        "checks passed against dead endpoints:\n{}",
        passed.join("\n")
    );
    assert!(!validation.passed(), "{}", validation.render());
    for check in &validation.checks {
        assert!(
            check.detail.contains("not attempted") && check.detail.contains("nothing listens"),
            "{}: {}",
            check.name,
            check.detail
        );
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// Against servers that accept connections and never answer, nothing passes either, and the
/// silence is told as quickly as a refused connection: a timeout is not a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_against_silent_servers_counts_no_timeout_as_a_refusal() {
    let env = dead_environment(black_hole());
    let topology = support::dev_topology();
    let started = Instant::now();
    let validation = rig_harness::validate::run(&env, &topology, Vec::new(), Vec::new()).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        validation
            .checks
            .iter()
            .all(|c| c.detail.contains("no answer within")),
        "{}",
        validation.render()
    );
    let passed: Vec<_> = validation
        .checks
        .iter()
        .filter(|c| c.outcome == Outcome::Pass)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    assert!(passed.is_empty(), "{}", passed.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Unreachable means fast and named
// ---------------------------------------------------------------------------------------------

/// Each endpoint's variable on its own line, within seconds, exit 2, no table.
fn assert_named_quickly(output: &Output, took: Duration, variables: &[&str]) {
    let stderr = text(&output.stderr);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(8), "took {took:?}:\n{stderr}");
    assert!(!stdout.contains("PASS"), "{stdout}");
    for variable in variables {
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error: ") && l.contains(variable))
            .unwrap_or_else(|| panic!("no line names {variable}:\n{stderr}"));
        assert!(line.contains("127.0.0.1:"), "{line}");
    }
}

#[test]
fn validate_on_a_dead_environment_names_each_endpoint_within_seconds() {
    let (output, took) = timed(
        the_rig()
            .envs(environment_at(closed_port()))
            .args(["validate", "--target", "env"]),
    );
    assert_named_quickly(
        &output,
        took,
        &[
            "PUBSUB_EMULATOR_HOST=",
            "STORAGE_EMULATOR_HOST=",
            "DB_EVENT_STORE_HOST/DB_EVENT_STORE_PORT=",
            "DB_HOST/DB_PORT=",
        ],
    );
}

#[test]
fn validate_on_servers_that_never_answer_names_them_within_seconds() {
    let (output, took) = timed(
        the_rig()
            .envs(environment_at(black_hole()))
            .args(["validate", "--target", "env"]),
    );
    assert_named_quickly(
        &output,
        took,
        &[
            "PUBSUB_EMULATOR_HOST=",
            "DB_EVENT_STORE_HOST/DB_EVENT_STORE_PORT=",
        ],
    );
    assert!(text(&output.stderr).contains("no answer within"));
}

#[test]
fn provision_without_a_stack_names_each_flag_within_seconds() {
    let dead = format!("127.0.0.1:{}", closed_port());
    let (output, took) = timed(
        the_rig()
            .env("RIG_MYSQL_ROOT_PASSWORD", "x")
            .args(["provision", "--pubsub"])
            .arg(format!("http://{dead}"))
            .arg("--storage")
            .arg(format!("http://{dead}"))
            .args(["--event-store-db", &dead, "--primary-db", &dead]),
    );
    assert_named_quickly(
        &output,
        took,
        &[
            "--pubsub=",
            "--storage=",
            "--event-store-db=",
            "--primary-db=",
        ],
    );
}

#[test]
fn worker_on_a_dead_environment_names_each_endpoint_and_does_not_start() {
    let (output, took) = timed(the_rig().envs(environment_at(closed_port())).arg("worker"));
    assert_named_quickly(
        &output,
        took,
        &[
            "PUBSUB_EMULATOR_HOST=",
            "STORAGE_EMULATOR_HOST=",
            "DB_EVENT_STORE_HOST/DB_EVENT_STORE_PORT=",
        ],
    );
    assert!(!text(&output.stderr).contains("stored 0"));
}

#[test]
fn worker_names_every_unset_variable_at_once() {
    let (output, _) = timed(
        the_rig()
            .arg("worker")
            .env_remove("DB_EVENT_STORE_HOST")
            .env_remove("DB_EVENT_STORE_DATABASE")
            .env_remove("DB_EVENT_STORE_USERNAME"),
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for name in [
        "GOOGLE_CLOUD_PROJECT",
        "DB_EVENT_STORE_HOST",
        "DB_EVENT_STORE_DATABASE",
        "DB_EVENT_STORE_USERNAME",
    ] {
        assert!(
            stderr.contains(&format!("error: {name} is not set")),
            "{name}:\n{stderr}"
        );
    }
}

#[test]
fn drift_with_a_dead_standin_names_it_within_seconds() {
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let mut command = the_rig();
    command.args([
        "drift",
        "--project",
        "suitex-staging",
        "--environment",
        "staging",
    ]);
    for (variable, _) in rig_drift::live::ENDPOINT_VARIABLES {
        command.env(variable, &dead);
    }
    command.env_remove("DB_EVENT_STORE_HOST");
    let (output, took) = timed(&mut command);
    assert_named_quickly(&output, took, &["RIG_GCP_SQLADMIN_ENDPOINT="]);
}

/// `GCE_METADATA_HOST` at a closed port, no ADC file, no GOOGLE_APPLICATION_CREDENTIALS: what
/// a laptop without `gcloud auth` looks like (its metadata server does not resolve).
fn without_credentials(command: &mut Command, home: &Path) {
    command
        .env("HOME", home)
        .env("GCE_METADATA_HOST", format!("127.0.0.1:{}", closed_port()))
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("CLOUDSDK_CONFIG");
    for (variable, _) in rig_drift::live::ENDPOINT_VARIABLES {
        command.env_remove(variable);
    }
}

fn assert_says_how_to_get_credentials(output: &Output, took: Duration) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(15), "took {took:?}:\n{stderr}");
    for remedy in [
        "gcloud auth application-default login",
        "--impersonate-service-account",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ] {
        assert!(stderr.contains(remedy), "{remedy} missing:\n{stderr}");
    }
    assert!(!stderr.contains("transient"), "{stderr}");
}

#[test]
fn validate_on_gcp_without_credentials_fails_within_seconds_saying_what_to_do() {
    let home = tempfile::tempdir().expect("a HOME without gcloud files");
    let mut command = the_rig();
    without_credentials(&mut command, home.path());
    let vars = environment_at(stalling());
    command
        .envs(vars.iter().filter(|(k, _)| k.starts_with("DB_")))
        .env("DB_EVENT_STORE_DATABASE", "events_acceptance")
        .args([
            "validate",
            "--target",
            "gcp",
            "--project",
            "suitex-dev",
            "--environment",
            "dev",
        ]);
    let (output, took) = timed(&mut command);
    assert_says_how_to_get_credentials(&output, took);
}

#[test]
fn drift_without_credentials_fails_within_seconds_saying_what_to_do() {
    let home = tempfile::tempdir().expect("a HOME without gcloud files");
    let mut command = the_rig();
    without_credentials(&mut command, home.path());
    command.env_remove("DB_EVENT_STORE_HOST").args([
        "drift",
        "--project",
        "suitex-staging",
        "--environment",
        "staging",
    ]);
    let (output, took) = timed(&mut command);
    assert_says_how_to_get_credentials(&output, took);
}

/// A metadata server that hands out tokens (a GCE VM's) is the credential: `rig drift` takes
/// it and goes on to read, instead of refusing.
#[test]
fn a_metadata_server_that_answers_is_used() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the metadata stand-in");
    let host = listener.local_addr().expect("its address").to_string();
    let tokens = Arc::new(AtomicUsize::new(0));
    let asked = tokens.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let n = stream.read(&mut request).unwrap_or(0);
            let request = String::from_utf8_lossy(&request[..n]).to_string();
            let body = if request.contains("/token") {
                asked.fetch_add(1, Ordering::SeqCst);
                r#"{"access_token":"from-metadata","expires_in":3600,"token_type":"Bearer"}"#
            } else {
                "default"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nMetadata-Flavor: Google\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let home = tempfile::tempdir().expect("a HOME without gcloud files");
    let silent = format!("http://127.0.0.1:{}", stalling());
    let mut command = the_rig();
    without_credentials(&mut command, home.path());
    // Every API but Resource Manager at a silent stand-in: the one Google read takes the
    // metadata server's token; nothing here can reach Google, so the read then fails.
    for (variable, _) in rig_drift::live::ENDPOINT_VARIABLES {
        if *variable != "RIG_GCP_RESOURCEMANAGER_ENDPOINT" {
            command.env(variable, &silent);
        }
    }
    let mut child = command
        .env("GCE_METADATA_HOST", &host)
        .env_remove("DB_EVENT_STORE_HOST")
        .args([
            "drift",
            "--project",
            "suitex-staging",
            "--environment",
            "staging",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting rig drift");
    // Its stderr as it comes: the credentials line is logged once the whole pre-flight (the
    // token and the endpoints) is done, which may be after the token was asked; a signal
    // before that line would end the run before what is checked here had happened.
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut all = seen.lock().unwrap_or_else(|p| p.into_inner());
                all.push_str(&line);
                all.push('\n');
            }
        })
    };
    let credentials_line = format!("the metadata server at http://{host}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(tokens.load(Ordering::SeqCst) > 0
        && seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&credentials_line))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(child.id(), libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let _ = reader.join();
    let stderr = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        tokens.load(Ordering::SeqCst) > 0,
        "no token was asked of the metadata server ({status}):\n{stderr}"
    );
    assert!(!stderr.contains("no Google credentials"), "{stderr}");
    assert!(stderr.contains(&credentials_line), "{stderr}");
    // It went on to read (and was interrupted there), rather than refusing.
    assert_eq!(status.code(), Some(143), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// An env file belongs to one backbone
// ---------------------------------------------------------------------------------------------

/// `rig up --env-file`, until the file holds the environment.
struct Up {
    child: Child,
    file: PathBuf,
    vars: HashMap<String, String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_exports(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

fn up_with_env_file(file: &Path, tmp: &Path) -> Up {
    // Held by `Up` from the start: a failed assertion below still kills and reaps it.
    let mut up = Up {
        child: the_rig()
            .args(["up", "--env-file"])
            .arg(file)
            .env("TMPDIR", tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting rig up"),
        file: file.to_path_buf(),
        vars: HashMap::new(),
    };
    let stdout = up.child.stdout.take().expect("piped stdout");
    let printed = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("export DB_PASSWORD="));
    assert!(printed, "rig up printed no environment");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mark = format!("export RIG_BACKBONE_PID='{}'", up.child.id());
    loop {
        let contents = std::fs::read_to_string(file).unwrap_or_default();
        if contents.contains(&mark) && contents.contains("DB_PASSWORD=") {
            up.vars = parse_exports(&contents);
            return up;
        }
        assert!(Instant::now() < deadline, "the env file was not written");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_backbone_is_refused_the_first_ones_env_file_and_the_file_goes_with_its_backbone() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("backbone.env");
    let mut first = up_with_env_file(&file, tmp.path());
    let owner = first.child.id().to_string();
    assert_eq!(first.vars.get("RIG_BACKBONE_PID"), Some(&owner));
    let before = std::fs::read_to_string(&file).expect("the first env file");

    let (second, took) = timed(
        the_rig()
            .args(["up", "--env-file"])
            .arg(&file)
            .env("TMPDIR", tmp.path()),
    );
    let stderr = text(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(3), "refused only after {took:?}");
    assert!(
        stderr.contains(&format!("belongs to the backbone of `rig up` pid {owner}")),
        "{stderr}"
    );
    assert!(stderr.contains("--replace-env-file"), "{stderr}");
    assert!(text(&second.stdout).is_empty(), "nothing was started");
    assert_eq!(std::fs::read_to_string(&file).ok(), Some(before));

    signal(first.child.id(), libc::SIGTERM);
    let status = wait_exit(&mut first.child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(!first.file.exists(), "the env file outlived its backbone");
    assert!(rig_dirs(tmp.path()).is_empty());
}

#[test]
fn a_stale_env_file_is_named_before_anything_is_tried() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("backbone.env");
    let mut up = up_with_env_file(&file, tmp.path());
    let vars = up.vars.clone();
    let pid = up.child.id();
    // SIGKILL: no clean-up runs, so the file stays, as after a crash or a closed laptop.
    signal(pid, libc::SIGKILL);
    let _ = wait_exit(&mut up.child, Duration::from_secs(10));
    for args in [&["validate", "--target", "env"][..], &["worker"][..]] {
        let (output, took) = timed(the_rig().envs(&vars).args(args));
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(took < Duration::from_secs(3), "{args:?} took {took:?}");
        assert!(
            stderr.contains(&format!("`rig up` pid {pid}) is gone")),
            "{args:?}: {stderr}"
        );
        assert!(!text(&output.stdout).contains("PASS"));
    }
    // The next rig up takes the stale file over.
    let again = up_with_env_file(&file, tmp.path());
    assert_eq!(
        again.vars.get("RIG_BACKBONE_PID"),
        Some(&again.child.id().to_string())
    );
    drop(again);
    for dir in rig_dirs(tmp.path()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn an_env_file_that_cannot_be_written_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().expect("temp dir");
    // /proc takes no new files, even from root; a missing directory takes none either.
    for (path, says) in [
        (PathBuf::from("/proc/backbone.env"), "cannot write in /proc"),
        (
            tmp.path().join("missing/backbone.env"),
            "missing does not exist",
        ),
    ] {
        let (output, took) = timed(
            the_rig()
                .args(["up", "--env-file"])
                .arg(&path)
                .env("TMPDIR", tmp.path()),
        );
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{says}: {stderr}");
        assert!(
            took < Duration::from_secs(2),
            "{took:?}: something was started first"
        );
        assert!(!stderr.contains("backbone up"), "{stderr}");
        assert!(rig_dirs(tmp.path()).is_empty(), "{stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals are refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn scenarios_on_target_env_are_refused_not_failed() {
    let (output, took) =
        timed(
            the_rig()
                .envs(environment_at(closed_port()))
                .args(["scenarios", "--target", "env"]),
        );
    let stderr = text(&output.stderr);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        stderr.contains("refusing `rig scenarios --target env`"),
        "{stderr}"
    );
    for wrong in ["failing case", "RIG_SCENARIO_SEED", "FAIL"] {
        assert!(
            !stdout.contains(wrong) && !stderr.contains(wrong),
            "{wrong}:\n{stdout}\n{stderr}"
        );
    }
}

#[test]
fn zero_cases_are_refused() {
    let (output, _) = timed(the_rig().args(["scenarios", "bad_input", "--cases", "0"]));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--cases 0"), "{stderr}");
    let (output, _) = timed(
        the_rig()
            .args(["scenarios", "bad_input"])
            .env("PROPTEST_CASES", "0"),
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
}

// ---------------------------------------------------------------------------------------------
// Every command honours SIGINT, SIGTERM and SIGHUP at any moment
// ---------------------------------------------------------------------------------------------

fn exit_code_of(sig: libc::c_int) -> i32 {
    128 + sig
}

/// Starts `command` (in its own TMPDIR) and sends each signal at each moment; the rig must
/// exit within `limit` with 128 + the signal's number (or, for a command whose normal end is
/// a signal, `also_ok`), leave no child running and no temp dir behind.
fn signal_at_moments(
    name: &str,
    make: impl Fn(&Path) -> Command,
    moments: &[u64],
    limit: Duration,
    also_ok: Option<i32>,
) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    let mut wrong = Vec::new();
    for (i, ms) in moments.iter().enumerate() {
        let sig = signals[i % signals.len()];
        let mut child = make(tmp.path())
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        std::thread::sleep(Duration::from_millis(*ms));
        let children: Vec<(u32, ProcStat)> = descendants(child.id());
        signal(child.id(), sig);
        let started = Instant::now();
        let status = wait_exit(&mut child, limit + Duration::from_secs(20));
        let took = started.elapsed();
        let code = status.code();
        if !(code == Some(exit_code_of(sig)) || (also_ok.is_some() && code == also_ok)) {
            wrong.push(format!("{name}: signal {sig} at {ms} ms: {status}"));
        }
        if took > limit {
            wrong.push(format!(
                "{name}: signal {sig} at {ms} ms: exited after {took:?}"
            ));
        }
        let alive: Vec<_> = children
            .iter()
            .filter(|(pid, stat)| still_running(*pid, *stat))
            .collect();
        if !alive.is_empty() {
            wrong.push(format!(
                "{name}: signal {sig} at {ms} ms: children left {alive:?}"
            ));
        }
        let dirs = rig_dirs(tmp.path());
        if !dirs.is_empty() {
            wrong.push(format!(
                "{name}: signal {sig} at {ms} ms: dirs left {dirs:?}"
            ));
            for d in dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn provision_stops_on_a_signal_at_any_moment() {
    let silent = stalling();
    let dead = closed_port();
    signal_at_moments(
        "rig provision",
        |_| {
            let mut command = the_rig();
            command
                .env("RIG_MYSQL_ROOT_PASSWORD", "x")
                .args(["provision", "--wait-for-services", "60", "--pubsub"])
                .arg(format!("http://127.0.0.1:{silent}"))
                .arg("--storage")
                .arg(format!("http://127.0.0.1:{dead}"))
                .args([
                    "--event-store-db",
                    &format!("127.0.0.1:{silent}"),
                    "--primary-db",
                    &format!("127.0.0.1:{silent}"),
                ]);
            command
        },
        &[100, 700, 2500],
        Duration::from_secs(3),
        None,
    );
}

#[test]
fn validate_stops_on_a_signal_at_any_moment() {
    // On the local target: during start-up (datadirs, servers), provisioning and the checks.
    signal_at_moments(
        "rig validate",
        |_| {
            let mut command = the_rig();
            command.arg("validate");
            command
        },
        &[1500, 150, 400, 800, 1200, 2500],
        Duration::from_secs(10),
        None,
    );
    // Against servers that hang after their greeting: during the checks' waits.
    let silent = stalling();
    signal_at_moments(
        "rig validate --target env",
        move |_| {
            let mut command = the_rig();
            command
                .envs(environment_at(silent))
                .args(["validate", "--target", "env"]);
            command
        },
        &[200, 2000],
        Duration::from_secs(3),
        None,
    );
}

#[test]
fn drift_stops_on_a_signal_at_any_moment() {
    let silent = format!("http://127.0.0.1:{}", stalling());
    signal_at_moments(
        "rig drift",
        move |_| {
            let mut command = the_rig();
            command.args([
                "drift",
                "--project",
                "suitex-staging",
                "--environment",
                "staging",
            ]);
            for (variable, _) in rig_drift::live::ENDPOINT_VARIABLES {
                command.env(variable, &silent);
            }
            command.env_remove("DB_EVENT_STORE_HOST");
            command
        },
        &[100, 600, 2000],
        Duration::from_secs(3),
        None,
    );
}

#[test]
fn scenarios_stop_on_a_signal_at_any_moment_and_leave_no_datadir() {
    signal_at_moments(
        "rig scenarios",
        |_| {
            let mut command = the_rig();
            command.args(["scenarios", "ordering", "--cases", "3"]);
            command
        },
        // Start-up (the first builds this TMPDIR's datadir template), then mid-scenario.
        &[2500, 200, 700, 3000, 6000],
        Duration::from_secs(12),
        None,
    );
}

#[test]
fn worker_stops_on_a_signal_at_any_moment() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("backbone.env");
    let up = up_with_env_file(&file, tmp.path());
    let vars = up.vars.clone();
    // During its start-up checks a signal interrupts it (128 + n); once it runs, a signal is
    // its normal end (0).
    signal_at_moments(
        "rig worker",
        move |_| {
            let mut command = the_rig();
            command.envs(&vars).arg("worker");
            command
        },
        &[100, 300, 1500, 4000],
        Duration::from_secs(8),
        Some(0),
    );
    drop(up);
}

// ---------------------------------------------------------------------------------------------
// The long-running worker says when it is stuck
// ---------------------------------------------------------------------------------------------

#[test]
fn the_worker_warns_with_cause_and_variable_when_its_backbone_goes_away_and_repeats_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("backbone.env");
    let mut up = up_with_env_file(&file, tmp.path());
    let vars = up.vars.clone();
    let log = tmp.path().join("worker.log");
    let mut worker = the_rig()
        .envs(&vars)
        .args(["worker", "--warn-every", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the worker's log"))
        .spawn()
        .expect("starting rig worker");
    std::thread::sleep(Duration::from_secs(2));
    let healthy = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!healthy.contains("unusable"), "{healthy}");
    signal(up.child.id(), libc::SIGTERM);
    let _ = wait_exit(&mut up.child, Duration::from_secs(30));
    let pubsub = format!(
        "PUBSUB_EMULATOR_HOST={}",
        vars.get("PUBSUB_EMULATOR_HOST").expect("exported")
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while Instant::now() < deadline {
        seen = std::fs::read_to_string(&log).unwrap_or_default();
        if seen.contains("Pub/Sub still unusable")
            && seen.contains("the event store still unusable")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(worker.id(), libc::SIGTERM);
    let status = wait_exit(&mut worker, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let first = seen
        .lines()
        .find(|l| l.contains("Pub/Sub unusable"))
        .unwrap_or_else(|| panic!("no warning about Pub/Sub:\n{seen}"));
    assert!(
        first.contains("WARN") && first.contains(&pubsub) && first.contains("cannot connect"),
        "{first}"
    );
    let database = seen
        .lines()
        .find(|l| l.contains("the event store unusable"))
        .unwrap_or_else(|| panic!("no warning about the event store:\n{seen}"));
    assert!(database.contains("DB_EVENT_STORE_HOST/PORT="), "{database}");
    assert!(
        seen.contains("Pub/Sub still unusable after"),
        "the warning was not repeated:\n{seen}"
    );
}

#[test]
fn the_worker_refuses_to_start_on_a_login_the_event_store_refuses() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("backbone.env");
    let up = up_with_env_file(&file, tmp.path());
    let (output, took) = timed(
        the_rig()
            .envs(&up.vars)
            .env("DB_EVENT_STORE_PASSWORD", "wrong")
            .arg("worker"),
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(stderr.contains("error 1045"), "{stderr}");
    assert!(stderr.contains("DB_EVENT_STORE_PASSWORD"), "{stderr}");
    drop(up);
}

// ---------------------------------------------------------------------------------------------
// Readable output
// ---------------------------------------------------------------------------------------------

#[test]
fn topology_prints_a_summary_and_json_for_tools() {
    let (output, _) = timed(the_rig().args(["topology", "-e", "dev"]));
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.lines().count() < 40, "{stdout}");
    assert!(!stdout.contains("Topology {"), "a debug dump:\n{stdout}");
    assert!(stdout.contains("events.raw.worker"), "{stdout}");
    assert!(stdout.contains("events.dlq after 5 attempts"), "{stdout}");
    let (output, _) = timed(the_rig().args(["topology", "-e", "dev", "--json"]));
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("rig topology --json is JSON");
    let subscriptions = json["subscriptions"].as_array().expect("subscriptions");
    let worker = subscriptions
        .iter()
        .find(|s| s["name"] == "events.raw.worker")
        .expect("the worker subscription");
    assert_eq!(worker["dead_letter"]["max_delivery_attempts"], 5);
    assert!(worker["retry"]["maximum_backoff_seconds"].is_number());
}

#[test]
fn every_subcommand_states_its_exit_statuses_in_its_help() {
    for command in [
        "up",
        "validate",
        "scenarios",
        "worker",
        "drift",
        "provision",
        "topology",
    ] {
        let (output, _) = timed(the_rig().args([command, "--help"]));
        let help = text(&output.stdout);
        assert!(help.contains("Exit status:"), "{command}:\n{help}");
        assert!(help.contains("  2 "), "{command}:\n{help}");
        if command != "topology" {
            assert!(help.contains("130, 143, 129"), "{command}:\n{help}");
        }
    }
}
