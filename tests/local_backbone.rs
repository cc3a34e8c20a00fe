//! Integration tests against the local backbone (issue 3): every test starts its own backbone
//! (emulators and two MariaDB servers as child processes, ~1.5 s) and checks one promise of it:
//! provisioning equals the Terraform, the ledger's schema and grants, idempotent appends,
//! `rig validate` end to end, and that nothing outlives teardown.
//!
//! Needs what `./x install` installs (Java + the Pub/Sub emulator, fake-gcs-server, MariaDB); a
//! missing binary fails the test with the package to install.

mod support;
use support::{connect, deployed, dev_topology};

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use rig::environment::Environment;
use rig::event_store::{
    AppendError, Appended, DbConfig, EVENT_STORE_PREFIX, EventStore, NewEvent, PRIMARY_PREFIX,
    mysql_error_number,
};
use rig::process::process_alive;
use rig::targets::{Backbone, TargetKind};
use sqlx::mysql::MySqlConnection;
use sqlx::{ConnectOptions, Connection, Row};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs `sql` and returns the server's error number; panics if the statement succeeded.
async fn refused(conn: &mut MySqlConnection, sql: &'static str) -> u16 {
    match sqlx::query(sql).execute(conn).await {
        Ok(done) => panic!(
            "`{sql}` was allowed ({} rows affected)",
            done.rows_affected()
        ),
        Err(e) => mysql_error_number(&e)
            .unwrap_or_else(|| panic!("`{sql}` failed without a server error: {e}")),
    }
}

/// The error number of a refused login; panics if the login succeeded.
async fn login_refused(config: &DbConfig) -> u16 {
    match config.connect_options().connect().await {
        Ok(conn) => {
            let _ = conn.close().await;
            panic!(
                "{} could log in to {}:{}/{}",
                config.username, config.host, config.port, config.database
            )
        }
        Err(e) => mysql_error_number(&e)
            .unwrap_or_else(|| panic!("login failed without a server error: {e}")),
    }
}

fn event(aggregate_id: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        account_id: "TSTDRV1000001".into(),
        event_id: Uuid::new_v4(),
        aggregate_type: "salesorder".into(),
        aggregate_id: aggregate_id.into(),
        payload: payload.to_string(),
        created_at: Utc::now(),
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("stored payload is not JSON ({e}): {text}"))
}

/// A process as /proc shows it: state letter, parent pid and start time (to tell a reused pid
/// from the original process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    ppid: u32,
    start_time: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Every live descendant of `root`, through /proc's parent links.
fn descendants(root: u32) -> Vec<(u32, ProcStat)> {
    let all: Vec<(u32, ProcStat)> = std::fs::read_dir("/proc")
        .expect("reading /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .collect();
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for &(pid, stat) in &all {
            if stat.ppid == parent && stat.state != 'Z' {
                found.push((pid, stat));
                parents.push(pid);
            }
        }
    }
    found
}

/// Whether the process seen as `stat` still runs. A zombie counts as gone: after the rig is
/// SIGKILLed its children are reparented to this machine's init, which may reap them late, and
/// a zombie holds no port, file or memory.
fn still_running(pid: u32, seen: ProcStat) -> bool {
    match proc_stat(pid) {
        Some(now) => now.start_time == seen.start_time && now.state != 'Z' && now.state != 'X',
        None => false,
    }
}

/// Polls `done` until it holds or `limit` passes; returns whether it held.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn the_rig() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rig"));
    // The rig's own logs are not under test; keep them readable in failures.
    command.env("RIG_LOG", "rig=info");
    command
}

/// `rig up` started, with the environment it printed and the temp dir its logs named.
struct RigUp {
    child: Child,
    vars: HashMap<String, String>,
    stderr_path: PathBuf,
    _stderr_dir: tempfile::TempDir,
}

impl RigUp {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The rig's temp dir, from the `log /tmp/backbone-rig-XXXX/<service>.log` lines.
    fn work_dirs(&self) -> BTreeSet<PathBuf> {
        self.stderr()
            .lines()
            .filter_map(|line| line.split(" log ").nth(1))
            .filter_map(|path| PathBuf::from(path.trim()).parent().map(PathBuf::from))
            .collect()
    }
}

impl Drop for RigUp {
    fn drop(&mut self) {
        // Only matters when an assertion failed before the test stopped the rig itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rig up` and reads stdout until the last export line (`DB_PASSWORD`).
fn rig_up() -> RigUp {
    let stderr_dir = tempfile::tempdir().expect("temp dir for the rig's stderr");
    let stderr_path = stderr_dir.path().join("rig-up.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("creating the stderr file");
    let mut child = the_rig()
        .arg("up")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("starting `rig up`");
    let stdout = child.stdout.take().expect("rig up's stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut up = RigUp {
        child,
        vars: HashMap::new(),
        stderr_path,
        _stderr_dir: stderr_dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(remaining) {
            Ok(line) => line,
            Err(e) => panic!(
                "`rig up` printed no DB_PASSWORD export ({e}); stderr:\n{}",
                up.stderr()
            ),
        };
        let (name, value) = line
            .strip_prefix("export ")
            .and_then(|rest| rest.split_once('='))
            .unwrap_or_else(|| panic!("`rig up` printed a non-export line on stdout: {line}"));
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or_else(|| panic!("export value not single-quoted: {line}"))
            .replace(r"'\''", "'");
        up.vars.insert(name.to_string(), value);
        if name == "DB_PASSWORD" {
            return up;
        }
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a child this test started; no memory is involved.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}) failed: {}",
        std::io::Error::last_os_error()
    );
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the rig") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the rig did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// Checks the environment `rig up` printed is usable: the worker reaches the ledger through
/// `DB_EVENT_STORE_*`, the app reaches the primary through `DB_*`.
fn assert_printed_env_works(vars: &HashMap<String, String>) {
    for name in [
        "PUBSUB_EMULATOR_HOST",
        "STORAGE_EMULATOR_HOST",
        "GOOGLE_CLOUD_PROJECT",
    ] {
        assert!(
            vars.contains_key(name),
            "`rig up` did not print {name}: {vars:?}"
        );
    }
    let worker = DbConfig::from_lookup(EVENT_STORE_PREFIX, |k| vars.get(k).cloned())
        .expect("DB_EVENT_STORE_* as printed");
    let app =
        DbConfig::from_lookup(PRIMARY_PREFIX, |k| vars.get(k).cloned()).expect("DB_* as printed");
    assert_eq!(worker.username, "sync_worker");
    runtime().block_on(async {
        let store = EventStore::connect(&worker, 1)
            .await
            .expect("connecting with DB_EVENT_STORE_*");
        let e = event("SO-UP", serde_json::json!({ "from": "rig up test" }));
        assert_eq!(
            store.append(&e).await.expect("append via DB_EVENT_STORE_*"),
            Appended::Stored
        );
        assert_eq!(store.count().await.expect("count"), 1);
        let mut primary = connect(&app).await;
        let accounts: i64 = sqlx::query("SELECT COUNT(*) FROM tenant_accounts")
            .fetch_one(&mut primary)
            .await
            .expect("querying the primary with DB_*")
            .get(0);
        assert_eq!(accounts, 3, "the primary's seeded tenant accounts");
    });
}

// ---------------------------------------------------------------------------------------------
// Provisioning
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_read_back_from_the_emulators_equals_the_topology() {
    let (_backbone, env) = deployed("provisioning").await;
    let topology = &dev_topology();

    let differences = rig::readback::read_back_pubsub(&env.pubsub, topology)
        .await
        .expect("reading the subscriptions back");
    assert!(
        differences.is_empty(),
        "the emulator differs from the Terraform: {differences:#?}"
    );

    let topics = env.pubsub.topic_admin().await.expect("topic admin client");
    for topic in &topology.topics {
        let path = env.pubsub.topic_path(&topic.name);
        let got = topics
            .get_topic()
            .set_topic(path.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("topic {path} was not provisioned: {e}"));
        assert_eq!(got.name, path);
    }

    // The read-back must be able to fail: a topology asking for 6 attempts is not what runs.
    let mut altered = topology.clone();
    let changed = altered
        .subscriptions
        .iter_mut()
        .find_map(|s| s.dead_letter.as_mut().map(|d| (s.name.clone(), d)))
        .expect("the dev topology has a dead-letter policy");
    let (name, policy) = changed;
    assert_eq!(
        policy.max_delivery_attempts, 5,
        "the epic asks for 5 attempts"
    );
    policy.max_delivery_attempts = 6;
    let differences = rig::readback::read_back_pubsub(&env.pubsub, &altered)
        .await
        .expect("reading the subscriptions back");
    assert_eq!(
        differences.len(),
        1,
        "exactly the altered field differs: {differences:#?}"
    );
    assert!(
        differences[0].starts_with(&format!("{name}: dead_letter_policy"))
            && differences[0].contains("after 5")
            && differences[0].contains("after 6"),
        "{differences:#?}"
    );

    // The payload bucket exists on fake-gcs-server under this deployment's name.
    let endpoint = env
        .storage
        .endpoint
        .clone()
        .expect("the local target uses fake-gcs-server");
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
        .get(format!("{endpoint}/storage/v1/b/{}", env.bucket))
        .send()
        .await
        .expect("reading the bucket");
    assert!(
        response.status().is_success(),
        "bucket {} missing: {}",
        env.bucket,
        response.status()
    );
    let body: serde_json::Value = response.json().await.expect("bucket JSON");
    assert_eq!(body["name"], env.bucket.as_str());
}

// ---------------------------------------------------------------------------------------------
// Schema and grants
// ---------------------------------------------------------------------------------------------

/// What MariaDB 10.11 shows for `migrations/` (and for the Laravel migration: see
/// tests/laravel_parity.rs). MySQL 8.4 prints `bigint unsigned` and a native `json` column.
const MARIADB_EVENT_STORE_DDL: &str = "CREATE TABLE `event_store` (
  `id` bigint(20) unsigned NOT NULL AUTO_INCREMENT,
  `account_id` varchar(255) NOT NULL,
  `event_id` char(36) NOT NULL,
  `aggregate_type` varchar(255) NOT NULL,
  `aggregate_id` varchar(255) NOT NULL,
  `payload` longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL CHECK (json_valid(`payload`)),
  `created_at` timestamp NOT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `event_store_event_id_unique` (`event_id`),
  KEY `event_store_account_id_aggregate_type_aggregate_id_index` (`account_id`,`aggregate_type`,`aggregate_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci";

/// `SHOW CREATE TABLE event_store` without the AUTO_INCREMENT counter.
async fn show_create_table(conn: &mut MySqlConnection) -> String {
    let row = sqlx::query("SHOW CREATE TABLE event_store")
        .fetch_one(conn)
        .await
        .expect("SHOW CREATE TABLE event_store");
    let ddl: String = row.try_get(1).expect("the Create Table column");
    strip_auto_increment(&ddl)
}

fn strip_auto_increment(ddl: &str) -> String {
    match ddl.find(" AUTO_INCREMENT=") {
        Some(start) => {
            let digits = ddl[start + " AUTO_INCREMENT=".len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .count();
            format!(
                "{}{}",
                &ddl[..start],
                &ddl[start + " AUTO_INCREMENT=".len() + digits..]
            )
        }
        None => ddl.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_store_schema_is_the_epics_table_with_append_only_triggers() {
    let (_backbone, env) = deployed("schema").await;
    assert!(
        env.engine.starts_with("MariaDB"),
        "this expected DDL is MariaDB's; engine: {}",
        env.engine
    );
    let mut admin = connect(&env.event_store_admin).await;
    assert_eq!(show_create_table(&mut admin).await, MARIADB_EVENT_STORE_DDL);

    let triggers: Vec<(String, String, String, String)> = sqlx::query(
        "SELECT TRIGGER_NAME, EVENT_MANIPULATION, ACTION_TIMING, ACTION_STATEMENT \
         FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? AND EVENT_OBJECT_TABLE = 'event_store' \
         ORDER BY TRIGGER_NAME",
    )
    .bind(&env.event_store_admin.database)
    .fetch_all(&mut admin)
    .await
    .expect("reading the triggers")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect();
    let expected = |name: &str, event: &str| {
        (
            name.to_string(),
            event.to_string(),
            "BEFORE".to_string(),
            format!(
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'event_store is append-only: {event} is refused'"
            ),
        )
    };
    assert_eq!(
        triggers,
        vec![
            expected("event_store_no_delete", "DELETE"),
            expected("event_store_no_update", "UPDATE")
        ]
    );

    // The strip helper is what the comparison rests on: check it on a counter-bearing DDL.
    assert_eq!(
        strip_auto_increment("x) ENGINE=InnoDB AUTO_INCREMENT=42 DEFAULT"),
        "x) ENGINE=InnoDB DEFAULT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_keep_the_worker_to_select_and_insert_and_the_servers_apart() {
    let (_backbone, env) = deployed("grants").await;
    let mut worker = connect(&env.event_store).await;

    // Allowed: SELECT and INSERT.
    let inserted = sqlx::query(
        "INSERT INTO event_store (account_id, event_id, aggregate_type, aggregate_id, payload, created_at) \
         VALUES ('TSTDRV1', ?, 'customer', 'C-1', '{\"n\":1}', NOW())",
    )
    .bind(Uuid::new_v4().hyphenated().to_string())
    .execute(&mut worker)
    .await
    .expect("the worker may INSERT");
    assert_eq!(inserted.rows_affected(), 1);
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM event_store")
        .fetch_one(&mut worker)
        .await
        .expect("the worker may SELECT")
        .get(0);
    assert_eq!(count, 1);

    // Refused: anything that changes or removes rows, and any DDL.
    for (sql, expected) in [
        ("UPDATE event_store SET aggregate_id = 'C-2'", 1142),
        ("DELETE FROM event_store", 1142),
        ("REPLACE INTO event_store SELECT * FROM event_store", 1142),
        ("TRUNCATE TABLE event_store", 1142),
        ("DROP TABLE event_store", 1142),
        ("CREATE TABLE event_store_copy (id INT)", 1142),
        ("ALTER TABLE event_store ADD COLUMN extra INT", 1142),
        ("CREATE INDEX extra_index ON event_store (account_id)", 1142),
        (
            "CREATE TRIGGER sneaky BEFORE INSERT ON event_store FOR EACH ROW SET NEW.account_id = 'x'",
            1142,
        ),
        ("CREATE DATABASE elsewhere", 1044),
    ] {
        assert_eq!(
            refused(&mut worker, sql).await,
            expected,
            "`{sql}` as the worker"
        );
    }
    let row = sqlx::query("SELECT COUNT(*), MIN(aggregate_id) FROM event_store")
        .fetch_one(&mut worker)
        .await
        .expect("reading back");
    assert_eq!(
        (row.get::<i64, _>(0), row.get::<String, _>(1)),
        (1, "C-1".to_string())
    );

    // Even the admin cannot change or remove rows: the triggers refuse (1644, SQLSTATE 45000).
    let mut admin = connect(&env.event_store_admin).await;
    assert_eq!(
        refused(&mut admin, "UPDATE event_store SET aggregate_id = 'C-2'").await,
        1644
    );
    assert_eq!(refused(&mut admin, "DELETE FROM event_store").await, 1644);
    let still: String = sqlx::query("SELECT aggregate_id FROM event_store")
        .fetch_one(&mut admin)
        .await
        .expect("reading back as admin")
        .get(0);
    assert_eq!(still, "C-1");

    // The worker's credentials do not open the primary server, with or without a database.
    let worker_on_primary = DbConfig {
        username: env.event_store.username.clone(),
        password: env.event_store.password.clone(),
        ..env.primary.clone()
    };
    assert_eq!(login_refused(&worker_on_primary).await, 1045);
    assert_eq!(
        login_refused(&worker_on_primary.with_database("")).await,
        1045
    );

    // The app's credentials do not open the event store server.
    let app_on_event_store = DbConfig {
        username: env.primary.username.clone(),
        password: env.primary.password.clone(),
        ..env.event_store.clone()
    };
    assert_eq!(login_refused(&app_on_event_store).await, 1045);
    assert_eq!(
        login_refused(&app_on_event_store.with_database("")).await,
        1045
    );

    // The primary has no event store table at all.
    let mut app = connect(&env.primary).await;
    let tables: i64 = sqlx::query(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME = 'event_store'",
    )
    .fetch_one(&mut app)
    .await
    .expect("listing the primary's tables")
    .get(0);
    assert_eq!(tables, 0);
}

// ---------------------------------------------------------------------------------------------
// Appends
// ---------------------------------------------------------------------------------------------

fn assert_conflict(outcome: &Result<Appended, AppendError>, id: Uuid, field: &str) {
    match outcome {
        Err(AppendError::Conflict { event_id, differs }) => {
            assert_eq!(*event_id, id);
            assert!(
                differs.contains(field),
                "conflict should name {field}: {differs}"
            );
        }
        other => panic!("expected a conflict on {field} for {id}, got {other:?}"),
    }
}

fn assert_invalid(outcome: &Result<Appended, AppendError>, reason: &str) {
    match outcome {
        Err(AppendError::Invalid(e)) => {
            assert!(e.reason.contains(reason), "{e} should mention {reason}")
        }
        other => panic!("expected an invalid event ({reason}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_idempotent_and_conflicts_overwrite_nothing() {
    let (_backbone, env) = deployed("appends").await;
    let store = EventStore::connect(&env.event_store, 4)
        .await
        .expect("connecting as the worker");

    // One at a time.
    let first = event(
        "SO-1",
        serde_json::json!({ "status": "open", "lines": [1, 2] }),
    );
    assert_eq!(
        store.append(&first).await.expect("first append"),
        Appended::Stored
    );
    assert_eq!(
        store.append(&first).await.expect("replay"),
        Appended::AlreadyStored
    );
    let reformatted = NewEvent {
        payload: r#"{ "lines": [1,2], "status": "open" }"#.into(),
        ..first.clone()
    };
    assert_eq!(
        store
            .append(&reformatted)
            .await
            .expect("replay with reordered JSON"),
        Appended::AlreadyStored,
        "the same JSON value is the same event"
    );
    let other_payload = NewEvent {
        payload: serde_json::json!({ "status": "closed" }).to_string(),
        ..first.clone()
    };
    assert_conflict(
        &store.append(&other_payload).await,
        first.event_id,
        "payload",
    );
    let other_aggregate = NewEvent {
        aggregate_id: "SO-9".into(),
        ..first.clone()
    };
    assert_conflict(
        &store.append(&other_aggregate).await,
        first.event_id,
        "aggregate_id",
    );
    let too_long = NewEvent {
        account_id: "x".repeat(256),
        ..event("SO-2", serde_json::json!({}))
    };
    assert_invalid(
        &store.append(&too_long).await,
        "account_id is 256 characters",
    );
    assert_invalid(
        &store
            .append(&NewEvent {
                payload: "{not json".into(),
                ..event("SO-2", serde_json::json!({}))
            })
            .await,
        "payload is not valid JSON",
    );
    assert_eq!(
        store.count().await.expect("count"),
        1,
        "only the first event is stored"
    );

    // A second stored event, for a batch entry that conflicts with the ledger twice.
    let second = event("SO-3", serde_json::json!({ "n": 3 }));
    assert_eq!(
        store.append(&second).await.expect("second append"),
        Appended::Stored
    );

    // In one batch: new, replayed, conflicting, invalid and in-batch duplicates.
    let a = event("SO-A", serde_json::json!({ "n": "a" }));
    let b = event("SO-B", serde_json::json!({ "n": "b" }));
    let c = event("SO-C", serde_json::json!({ "n": "c" }));
    let second_changed = NewEvent {
        payload: serde_json::json!({ "n": 33 }).to_string(),
        ..second.clone()
    };
    let batch = vec![
        a.clone(),             // 0 new
        first.clone(),         // 1 replay of a stored event
        other_payload.clone(), // 2 conflicts (ledger and entry 1)
        NewEvent {
            payload: "[1,".into(),
            ..event("SO-X", serde_json::json!({}))
        }, // 3 invalid
        b.clone(),             // 4 new
        a.clone(),             // 5 identical in-batch duplicate of 0
        NewEvent {
            aggregate_id: "SO-B2".into(),
            ..b.clone()
        }, // 6 differs from entry 4
        c.clone(),             // 7 new
        second_changed.clone(), // 8 conflicts with the ledger
        second_changed.clone(), // 9 same as 8: conflicts with the ledger too
        second.clone(),        // 10 after a conflicting copy, identical to the ledger
    ];
    let outcomes = store
        .append_batch(&batch)
        .await
        .expect("the batch reaches the database");
    assert_eq!(
        outcomes.len(),
        batch.len(),
        "one outcome per event, in input order"
    );
    assert_eq!(
        outcomes[0].as_ref().ok(),
        Some(&Appended::Stored),
        "{:?}",
        outcomes[0]
    );
    assert_eq!(
        outcomes[1].as_ref().ok(),
        Some(&Appended::AlreadyStored),
        "{:?}",
        outcomes[1]
    );
    assert_conflict(&outcomes[2], first.event_id, "payload");
    assert_invalid(&outcomes[3], "payload is not valid JSON");
    assert_eq!(
        outcomes[4].as_ref().ok(),
        Some(&Appended::Stored),
        "{:?}",
        outcomes[4]
    );
    assert_eq!(
        outcomes[5].as_ref().ok(),
        Some(&Appended::AlreadyStored),
        "{:?}",
        outcomes[5]
    );
    assert_conflict(&outcomes[6], b.event_id, "aggregate_id");
    assert_eq!(
        outcomes[7].as_ref().ok(),
        Some(&Appended::Stored),
        "{:?}",
        outcomes[7]
    );
    assert_conflict(&outcomes[8], second.event_id, "payload");
    // Later copies in a batch are judged against the ledger, like any replay.
    assert_conflict(&outcomes[9], second.event_id, "payload");
    assert_eq!(
        outcomes[10].as_ref().ok(),
        Some(&Appended::AlreadyStored),
        "{:?}",
        outcomes[10]
    );

    // Replaying the whole batch stores nothing new and gives the same verdicts.
    let replayed = store
        .append_batch(&batch)
        .await
        .expect("replaying the batch");
    for (i, (again, before)) in replayed.iter().zip(&outcomes).enumerate() {
        match (again, before) {
            (Ok(Appended::AlreadyStored), Ok(_)) => {}
            (Err(AppendError::Conflict { .. }), Err(AppendError::Conflict { .. }))
            | (Err(AppendError::Invalid(_)), Err(AppendError::Invalid(_))) => {}
            other => panic!("entry {i} on replay: {other:?}"),
        }
    }

    // The ledger holds exactly the five events, each as first written.
    let rows = store.all().await.expect("reading the ledger");
    let by_id: HashMap<Uuid, _> = rows.iter().map(|r| (r.event_id, r)).collect();
    assert_eq!(rows.len(), 5, "{rows:#?}");
    for original in [&first, &second, &a, &b, &c] {
        let stored = by_id
            .get(&original.event_id)
            .unwrap_or_else(|| panic!("{} missing from the ledger", original.event_id));
        assert_eq!(stored.aggregate_id, original.aggregate_id);
        assert_eq!(stored.account_id, original.account_id);
        assert_eq!(
            json(&stored.payload),
            json(&original.payload),
            "{} was overwritten",
            original.event_id
        );
    }
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "ledger order is id order");
}

// ---------------------------------------------------------------------------------------------
// `rig validate`
// ---------------------------------------------------------------------------------------------

/// The checks `rig validate` must pass on the local backbone.
const MUST_PASS: [&str; 9] = [
    "bring up and provision the local backbone",
    "primary database observed before",
    "subscriptions match the Terraform",
    "publish a probe to events.raw",
    "read the probe from the validation subscription",
    "insert a dummy row via DB_EVENT_STORE_*",
    "the ledger refuses UPDATE and DELETE",
    "worker credentials are refused on the primary",
    "primary database untouched and not restarted",
];
/// The emulator delivers probes despite the worker subscription's filter (FINDINGS): this check
/// may only report a divergence, never a failure.
const PASS_OR_DIVERGENCE: &str = "the worker subscription does not see probes";

#[test]
fn rig_validate_passes_end_to_end_as_a_table_and_as_json() {
    let output = the_rig()
        .arg("validate")
        .output()
        .expect("running `rig validate`");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "rig validate failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("event store engine: MariaDB"),
        "the banner names the stand-in:\n{stdout}"
    );
    for check in MUST_PASS {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(check))
            .unwrap_or_else(|| panic!("no `{check}` row:\n{stdout}"));
        let result = line[check.len()..].split_whitespace().next();
        assert_eq!(result, Some("PASS"), "{line}");
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with(PASS_OR_DIVERGENCE))
        .unwrap_or_else(|| panic!("no `{PASS_OR_DIVERGENCE}` row:\n{stdout}"));
    assert!(
        matches!(
            line[PASS_OR_DIVERGENCE.len()..].split_whitespace().next(),
            Some("PASS" | "DIVERGENCE")
        ),
        "{line}"
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");

    let output = the_rig()
        .args(["validate", "--json"])
        .output()
        .expect("running `rig validate --json`");
    assert!(
        output.status.success(),
        "rig validate --json failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "--json is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let checks = report["checks"].as_array().expect("a `checks` array");
    let outcome = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["outcome"].as_str())
            .unwrap_or_else(|| panic!("no check `{name}` in {report:#}"))
    };
    for check in MUST_PASS {
        assert_eq!(outcome(check), "pass", "{check}");
    }
    assert!(matches!(outcome(PASS_OR_DIVERGENCE), "pass" | "divergence"));
    assert!(
        report["engine"]
            .as_str()
            .is_some_and(|e| e.contains("stand-in")),
        "{report:#}"
    );
    assert!(checks.iter().all(|c| c["took"].is_number()), "{report:#}");
}

// ---------------------------------------------------------------------------------------------
// No processes left after teardown
// ---------------------------------------------------------------------------------------------

/// The processes and temp dir of a running backbone, as seen before it goes away.
fn observe(backbone: &Backbone) -> (Vec<(String, u32, ProcStat)>, PathBuf) {
    let processes = backbone.processes();
    assert_eq!(
        processes.len(),
        4,
        "pubsub, gcs and two databases: {processes:?}"
    );
    let dir = processes[0]
        .2
        .parent()
        .expect("logs live in the backbone's dir")
        .to_path_buf();
    assert!(
        dir.is_dir(),
        "{} should exist while the backbone runs",
        dir.display()
    );
    let seen = processes
        .into_iter()
        .map(|(name, pid, log)| {
            assert_eq!(
                log.parent(),
                Some(dir.as_path()),
                "{name}'s log is in the backbone's dir"
            );
            let stat =
                proc_stat(pid).unwrap_or_else(|| panic!("{name} (pid {pid}) is not running"));
            assert!(process_alive(pid), "{name} (pid {pid}) is not running");
            (name, pid, stat)
        })
        .collect();
    (seen, dir)
}

fn assert_all_gone(seen: &[(String, u32, ProcStat)], dir: &std::path::Path) {
    for (name, pid, stat) in seen {
        assert!(
            !still_running(*pid, *stat),
            "{name} (pid {pid}) outlived its backbone"
        );
        assert!(
            !process_alive(*pid)
                || proc_stat(*pid).is_some_and(|s| s.start_time != stat.start_time)
        );
    }
    assert!(!dir.exists(), "{} outlived its backbone", dir.display());
}

#[test]
fn dropping_a_backbone_stops_every_process_and_removes_its_dir() {
    let rt = runtime();
    let backbone = rt
        .block_on(Backbone::start(TargetKind::Local))
        .unwrap_or_else(|e| panic!("starting the local backbone: {e:#}"));
    let (seen, dir) = observe(&backbone);
    drop(backbone);
    // Drop kills and reaps synchronously: no waiting allowed here.
    assert_all_gone(&seen, &dir);
}

#[test]
fn a_panic_while_holding_a_backbone_stops_every_process() {
    let (tx, rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let rt = runtime();
        let backbone = rt
            .block_on(Backbone::start(TargetKind::Local))
            .unwrap_or_else(|e| panic!("starting the local backbone: {e:#}"));
        let _ = tx.send(observe(&backbone));
        panic!("deliberate panic while holding a backbone");
    });
    let joined = holder.join();
    let (seen, dir) = rx
        .recv()
        .expect("the holder thread panicked before its backbone was up (see its message above)");
    let message = joined.expect_err("the holder thread must panic");
    assert_eq!(
        message.downcast_ref::<&str>(),
        Some(&"deliberate panic while holding a backbone")
    );
    assert_all_gone(&seen, &dir);
}

/// Starts `rig up`, checks the printed environment, notes its children, and sends `sig`.
/// Returns the children as seen before, the temp dirs, and the exit status.
fn rig_up_then(
    sig: libc::c_int,
) -> (
    Vec<(u32, ProcStat)>,
    BTreeSet<PathBuf>,
    std::process::ExitStatus,
) {
    let mut up = rig_up();
    assert_printed_env_works(&up.vars);
    let children = descendants(up.child.id());
    assert!(
        children.len() >= 4,
        "`rig up` should have pubsub, gcs and two database processes: {children:?}\n{}",
        up.stderr()
    );
    let dirs = up.work_dirs();
    assert_eq!(
        dirs.len(),
        1,
        "one temp dir named in the rig's stderr: {dirs:?}\n{}",
        up.stderr()
    );
    signal(up.child.id(), sig);
    let status = wait_exit(&mut up.child, Duration::from_secs(30));
    (children, dirs, status)
}

/// Sends `sig` to `rig up` and checks the orderly stop: exit 0, every child reaped before the
/// rig exits (nothing may be left, not even briefly), the temp dir removed.
fn assert_orderly_stop(sig: libc::c_int, name: &str) {
    let (children, dirs, status) = rig_up_then(sig);
    assert!(
        status.success(),
        "rig up should exit 0 after {name}: {status}"
    );
    let left: Vec<_> = children
        .iter()
        .filter(|(pid, stat)| still_running(*pid, *stat))
        .collect();
    assert!(left.is_empty(), "children outlived `rig up`: {left:?}");
    for dir in &dirs {
        assert!(!dir.exists(), "{} outlived `rig up`", dir.display());
    }
}

#[test]
fn rig_up_stops_everything_on_sigterm() {
    assert_orderly_stop(libc::SIGTERM, "SIGTERM");
}

#[test]
fn rig_up_children_die_with_a_sigkilled_rig() {
    use std::os::unix::process::ExitStatusExt;
    let (children, dirs, status) = rig_up_then(libc::SIGKILL);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    // PR_SET_PDEATHSIG delivers SIGKILL to each child when the rig dies; it is asynchronous.
    let gone = wait_for(Duration::from_secs(10), || {
        children
            .iter()
            .all(|(pid, stat)| !still_running(*pid, *stat))
    });
    let left: Vec<_> = children
        .iter()
        .filter(|(pid, stat)| still_running(*pid, *stat))
        .collect();
    assert!(gone, "children outlived a SIGKILLed `rig up`: {left:?}");
    // A SIGKILLed process runs no cleanup, so its temp dir stays: remove it here.
    for dir in &dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `rig validate --target env` validates whatever the environment points at — the toggle for
/// staging and prod. Here it points at a running `rig up`, with only the printed variables.
#[test]
fn rig_validate_targets_what_the_environment_points_at() {
    let mut up = rig_up();
    let output = the_rig()
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RIG_LOG", "rig=warn")
        .envs(&up.vars)
        .args(["validate", "--target", "env"])
        .output()
        .expect("running `rig validate --target env`");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rig validate --target env failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("target: environment variables"), "{stdout}");
    for check in [
        "publish a probe to events.raw",
        "read the probe from the validation subscription",
        "insert a dummy row via DB_EVENT_STORE_*",
        "worker credentials are refused on the primary",
        "primary database untouched and not restarted",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(check))
            .unwrap_or_else(|| panic!("no `{check}` row:\n{stdout}"));
        assert!(line.contains("PASS"), "{line}");
    }
    // Without the variables it says which one is missing instead of guessing.
    let bare = the_rig()
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["validate", "--target", "env"])
        .output()
        .expect("running `rig validate --target env` without variables");
    assert!(!bare.status.success());
    assert!(
        String::from_utf8_lossy(&bare.stderr).contains("GOOGLE_CLOUD_PROJECT is not set"),
        "{}",
        String::from_utf8_lossy(&bare.stderr)
    );
    signal(up.child.id(), libc::SIGTERM);
    let status = wait_exit(&mut up.child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

/// `rig scenarios` runs the scenarios on its own backbone, prints the results table and writes
/// JUnit XML; an unknown name is an error that says where the names are.
#[test]
fn rig_scenarios_prints_a_results_table_and_junit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junit = dir.path().join("scenarios.xml");
    let output = the_rig()
        .args(["scenarios", "bad_input", "--cases", "1", "--junit"])
        .arg(&junit)
        .output()
        .expect("running `rig scenarios`");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let header = stdout
        .lines()
        .find(|l| l.starts_with("scenario "))
        .unwrap_or_else(|| panic!("no table header:\n{stdout}"));
    for column in ["target", "cases", "result", "time", "known divergence"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(stdout.contains("event store engine: "), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("bad_input "))
        .unwrap_or_else(|| panic!("no bad_input row:\n{stdout}"));
    assert!(row.contains("local") && row.contains("PASS"), "{row}");
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file");
    assert!(xml.contains("<testcase name=\"bad_input\""), "{xml}");
    assert!(xml.contains("tests=\"1\" failures=\"0\""), "{xml}");

    let unknown = the_rig()
        .args(["scenarios", "no_such_scenario"])
        .output()
        .expect("running `rig scenarios` with an unknown name");
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("rig scenarios --list"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}

/// `rig worker` ingests what is published on the backbone the environment describes (here a
/// `rig up`), oversized payloads included, and stops cleanly on SIGTERM.
#[test]
fn rig_worker_ingests_what_is_published_until_sigterm() {
    use rig::pubsub::PubsubConnection;
    use rig::storage::StorageConnection;
    use scenarios::fixtures::{self, Aggregate};

    let mut up = rig_up();
    let vars = up.vars.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr_path = dir.path().join("worker.stderr");
    let mut worker = the_rig()
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RIG_LOG", "rig=info")
        .envs(&vars)
        .arg("worker")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("worker stderr file"))
        .spawn()
        .expect("starting `rig worker`");

    let var = |name: &str| {
        vars.get(name)
            .cloned()
            .unwrap_or_else(|| panic!("`rig up` printed no {name}"))
    };
    let worker_db = DbConfig::from_lookup(EVENT_STORE_PREFIX, |k| vars.get(k).cloned())
        .expect("DB_EVENT_STORE_*");
    let app_db = DbConfig::from_lookup(PRIMARY_PREFIX, |k| vars.get(k).cloned()).expect("DB_*");
    let env = Environment {
        target: "env".into(),
        capabilities: rig::targets::Capabilities {
            provisions: false,
            owns_primary: false,
        },
        backbone_environment: "dev".into(),
        scope: "default".into(),
        pubsub: PubsubConnection {
            endpoint: Some(format!("http://{}", var("PUBSUB_EMULATOR_HOST"))),
            project_id: var("GOOGLE_CLOUD_PROJECT"),
        },
        storage: StorageConnection {
            endpoint: Some(var("STORAGE_EMULATOR_HOST")),
            project_id: var("GOOGLE_CLOUD_PROJECT"),
        },
        bucket: var("BACKBONE_PAYLOAD_BUCKET"),
        event_store: worker_db.clone(),
        event_store_admin: worker_db.clone(),
        primary: app_db.clone(),
        primary_admin: app_db,
        engine: String::new(),
    };
    let mut events: Vec<NewEvent> = (0..20u16)
        .map(|i| {
            fixtures::event(
                &Aggregate {
                    account: 0,
                    record: usize::from(i % 4),
                    id: i % 4,
                },
                u32::from(i),
            )
        })
        .collect();
    let mut big = fixtures::event(
        &Aggregate {
            account: 1,
            record: 0,
            id: 77,
        },
        1,
    );
    big.payload = serde_json::json!({ "blob": "x".repeat(300 * 1024) }).to_string();
    events.push(big.clone());

    runtime().block_on(async {
        rig::producer::Producer::connect(&env, "events.raw")
            .await
            .expect("a producer on events.raw")
            .publish_all(&events)
            .await
            .expect("publishing");
        let store = EventStore::connect(&worker_db, 1)
            .await
            .expect("connecting to the event store");
        let deadline = Instant::now() + Duration::from_secs(60);
        while store.count().await.expect("count") < events.len() as i64 {
            assert!(
                Instant::now() < deadline,
                "the worker stored {} of {} events in 60s; its log:\n{}",
                store.count().await.unwrap_or(-1),
                events.len(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stored = store
            .find(&[big.event_id])
            .await
            .expect("reading the big event");
        assert_eq!(
            stored.get(&big.event_id).map(|row| row.payload.len()),
            Some(big.payload.len()),
            "the claim-checked payload is stored whole"
        );
        for first in &events[..4] {
            let same_aggregate = |e: &&NewEvent| {
                (&e.account_id, &e.aggregate_type, &e.aggregate_id)
                    == (
                        &first.account_id,
                        &first.aggregate_type,
                        &first.aggregate_id,
                    )
            };
            let want: Vec<Uuid> = events
                .iter()
                .filter(same_aggregate)
                .map(|e| e.event_id)
                .collect();
            let got: Vec<Uuid> = store
                .stream(
                    &first.account_id,
                    &first.aggregate_type,
                    &first.aggregate_id,
                )
                .await
                .expect("reading an aggregate")
                .iter()
                .map(|row| row.event_id)
                .collect();
            assert_eq!(
                got, want,
                "aggregate {} in publish order",
                first.aggregate_id
            );
        }
    });

    signal(worker.id(), libc::SIGTERM);
    let status = wait_exit(&mut worker, Duration::from_secs(30));
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(status.success(), "rig worker exited {status}:\n{log}");
    assert!(log.contains("worker stopped"), "{log}");
    signal(up.child.id(), libc::SIGTERM);
    let status = wait_exit(&mut up.child, Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

#[test]
fn rig_up_stops_everything_on_ctrl_c() {
    // Ctrl-C in a terminal is SIGINT: the same orderly stop as SIGTERM.
    assert_orderly_stop(libc::SIGINT, "SIGINT");
}
