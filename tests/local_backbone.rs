//! Integration tests of the `rig` library against the local backbone: every test starts its own
//! backbone (emulators and two MariaDB servers as child processes, ~1.5 s) and checks one
//! promise of it: provisioning equals the Terraform, the ledger's schema and grants, idempotent
//! appends, and that nothing outlives teardown. The `rig` command's end-to-end tests are in
//! `tests/cli.rs`.
//!
//! Needs what `./x install` installs (Java + the Pub/Sub emulator, fake-gcs-server, MariaDB); a
//! missing binary fails the test with the package to install.

mod support;
use support::processes::{ProcStat, proc_stat, still_running};
use support::{connect, deployed, dev_topology, event, runtime};

use std::collections::HashMap;
use std::path::PathBuf;

use rig_events::event_store::{
    AppendError, Appended, DbConfig, EventStore, NewEvent, mysql_error_number,
};
use rig_harness::backbone::Backbone;
use rig_harness::process::process_alive;
use rig_harness::targets::TargetKind;
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

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("stored payload is not JSON ({e}): {text}"))
}

/// Checks the environment `rig up` printed is usable: the worker reaches the ledger through
// ---------------------------------------------------------------------------------------------
// Provisioning
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_read_back_from_the_emulators_equals_the_topology() {
    let (_backbone, env) = deployed("provisioning").await;
    let topology = &dev_topology();

    let differences = rig_harness::readback::read_back_pubsub(&env.pubsub, topology)
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
    let differences = rig_harness::readback::read_back_pubsub(&env.pubsub, &altered)
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
  `account_id` varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
  `event_id` char(36) NOT NULL,
  `aggregate_type` varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
  `aggregate_id` varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
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
// No processes left after teardown
// ---------------------------------------------------------------------------------------------

/// A replay is "already stored" only if every field the ledger keeps is
/// the same (created_at to the second it keeps); aggregate ids compare exactly — `Coll`,
/// `coll` and `Coll ` are three streams, on both the worker's lookups and the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_compare_every_field_and_aggregate_ids_compare_exactly() {
    use rig_events::event_store::AppendError;
    let (_backbone, env) = deployed("exact").await;
    let store = EventStore::connect(&env.event_store, 2).await.unwrap();
    let base = scenarios::fixtures::event(
        &scenarios::fixtures::Aggregate {
            account: 1,
            record: 0,
            id: 1,
        },
        1,
    );
    assert_eq!(store.append(&base).await.unwrap(), Appended::Stored);
    let later = NewEvent {
        created_at: base.created_at + chrono::Duration::seconds(1),
        ..base.clone()
    };
    match store.append(&later).await {
        Err(AppendError::Conflict { differs, .. }) => assert_eq!(differs, "created_at"),
        other => panic!("a replay with another created_at: {other:?}"),
    }
    // Within the second the ledger keeps, it is the same event.
    let fraction = NewEvent {
        created_at: base.created_at + chrono::Duration::milliseconds(400),
        ..base.clone()
    };
    assert_eq!(
        store.append(&fraction).await.unwrap(),
        Appended::AlreadyStored
    );
    for (field, changed) in [
        (
            "aggregate_id",
            NewEvent {
                aggregate_id: format!("{} ", base.aggregate_id),
                ..base.clone()
            },
        ),
        (
            "account_id",
            NewEvent {
                account_id: base.account_id.to_lowercase(),
                ..base.clone()
            },
        ),
    ] {
        match store.append(&changed).await {
            Err(AppendError::Conflict { differs, .. }) => assert_eq!(differs, field),
            other => panic!("a replay with another {field}: {other:?}"),
        }
    }

    let ids = ["Coll", "coll", "Coll ", "COLL"];
    for id in ids {
        let event = NewEvent {
            aggregate_id: id.to_string(),
            event_id: uuid::Uuid::new_v4(),
            ..base.clone()
        };
        assert_eq!(store.append(&event).await.unwrap(), Appended::Stored);
    }
    for id in ids {
        let stream = store
            .stream(&base.account_id, &base.aggregate_type, id)
            .await
            .unwrap();
        let got: Vec<&str> = stream.iter().map(|e| e.aggregate_id.as_str()).collect();
        assert_eq!(got, vec![id], "the stream of {id:?}");
    }
}

/// The processes and temp dir of a running backbone, as seen before it goes away.
fn observe(backbone: &Backbone) -> (Vec<(String, u32, ProcStat)>, PathBuf) {
    let processes = backbone.processes();
    // pubsub-service runs in process; Google's emulator is a child of its own.
    let expected = match backbone.pubsub() {
        rig_events::pubsub::PubsubImplementation::GoogleEmulator => 4,
        _ => 3,
    };
    assert_eq!(
        processes.len(),
        expected,
        "gcs, two databases and (if Google's emulator) pubsub: {processes:?}"
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
