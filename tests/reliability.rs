//! Nothing lost, no one let in (issue 9): poison messages against a running worker, accepted ⇒
//! storable against the real ledger, passwordless accounts, private files, clean stops.
//! Each test starts its own backbone (or `rig up`) and needs the same binaries as
//! `tests/local_backbone.rs`.

mod support;
use support::processes::{signal, wait_exit};
use support::{connect, deployed, dev_topology};

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use rig_events::envelope;
use rig_events::event_store::{Appended, DbConfig, EventStore, NewEvent};
use rig_events::storage::StorageConnection;
use rig_events::worker::{NoFaults, WorkerOptions};
use rig_harness::targets::{Service, ServiceControl};
use scenarios::fixtures::{self, Aggregate};
use scenarios::support::{Collector, RunningWorker, wait_for};
use serde_json::Value;
use sqlx::{ConnectOptions, Row};

const MARKER: &str = "corpus_case";

/// One hostile message from `fixtures/bad/`.
struct Case {
    name: String,
    spec: Value,
}

fn corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bad");
    let mut cases: Vec<Case> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a readable corpus file");
            Case {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                spec: serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            }
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// Builds a case's message from a valid event (`rig_harness::verify::poison`, as `rig verify`
/// does), uploading the claim object it needs.
async fn hostile_message(
    case: &Case,
    event: &NewEvent,
    bucket: &str,
    storage: &google_cloud_storage::client::Storage,
) -> Message {
    let built = rig_harness::verify::poison::message(&case.spec, &case.name, event, bucket)
        .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
    if let Some((object, bytes)) = built.upload {
        storage
            .write_object(
                StorageConnection::bucket_path(bucket),
                object,
                bytes::Bytes::from(bytes),
            )
            .send_buffered()
            .await
            .unwrap_or_else(|e| panic!("{}: uploading its claim object: {e}", case.name));
    }
    let mut message = built.message;
    message.attributes.insert(MARKER.into(), case.name.clone());
    message
}

/// Every message of `fixtures/bad/` between two valid events of its own aggregate: each bad one
/// is dead-lettered by the worker with a reason naming its problem and writes no row; every
/// valid one is stored once, in order; the worker's stream never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_message_is_dead_lettered_with_its_reason_and_the_valid_ones_around_it_are_stored_in_order()
 {
    let cases = corpus();
    assert!(
        cases.len() >= 60,
        "fixtures/bad/ holds {} cases",
        cases.len()
    );
    let (_backbone, env) = deployed("corpus").await;
    let topology = dev_topology();
    let options = WorkerOptions::from_topology(&topology).expect("worker options");
    let raw = topology
        .subscription(&options.subscription)
        .map(|s| s.topic.clone())
        .expect("the raw topic");
    let dlq_subscription = topology
        // The operators' subscription: the acceptance one admits probes only.
        .worker_subscription(&options.dead_letter_topic)
        .map(|s| s.name.clone())
        .expect("a subscription on the dead-letter topic");
    let dlq = Collector::start(&env, &dlq_subscription).await.unwrap();
    let storage = env.storage.client().await.unwrap();
    let publisher = env.pubsub.publisher(&raw).await.unwrap();
    let mut valid: Vec<(String, NewEvent, NewEvent)> = Vec::new();
    let mut bad_ids = Vec::new();
    let mut refused_at_publish = std::collections::BTreeSet::new();
    for (i, case) in cases.iter().enumerate() {
        let aggregate = Aggregate {
            account: 1,
            record: i,
            id: i as u16,
        };
        let before = fixtures::event(&aggregate, 1);
        let hostile = fixtures::event(&aggregate, 2);
        let after = fixtures::event(&aggregate, 3);
        let message = hostile_message(case, &hostile, &env.bucket, &storage).await;
        bad_ids.push((case.name.clone(), hostile.event_id));
        // One at a time: the client batches a key's messages into one request, and a request
        // the service refuses takes every message in it down.
        publisher
            .publish(envelope::inline_message(&before))
            .await
            .expect("publishing a valid event to events.raw");
        let key = message.ordering_key.clone();
        match publisher.publish(message).await {
            Ok(_) => {}
            // A Pub/Sub that enforces the real service's limits (ours, and GCP) refuses some
            // hostile messages at the door: they never reach the worker, which is as good as
            // a dead letter. Google's emulator accepts them all.
            Err(e) if format!("{e:?}").contains("InvalidArgument") => {
                refused_at_publish.insert(case.name.clone());
                // The client pauses a key after a failed publish until told to go on.
                publisher.resume_publish(key);
            }
            Err(e) => panic!("publishing {} to events.raw: {e:?}", case.name),
        }
        publisher
            .publish(envelope::inline_message(&after))
            .await
            .expect("publishing a valid event to events.raw");
        valid.push((case.name.clone(), before, after));
    }
    let store = EventStore::connect(&env.event_store, 2).await.unwrap();
    let worker = RunningWorker::start(&env, options, Arc::new(NoFaults))
        .await
        .unwrap();
    let expected_rows = valid.len() * 2;
    let marked = |m: &Message| m.attributes.contains_key(MARKER);
    wait_for(Duration::from_secs(120), || async {
        worker.finished()
            || (store.count().await.unwrap_or(0) as usize >= expected_rows
                && dlq.messages().iter().filter(|m| marked(m)).count()
                    >= cases.len() - refused_at_publish.len())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = worker.stop().await;
    let letters = dlq.stop().await;
    let rows = store.all().await.unwrap();

    let mut violations = Vec::new();
    if let Err(e) = &stats {
        violations.push(format!("the worker's stream failed: {e:#}"));
    }
    for (case, (name, bad_id)) in cases.iter().zip(&bad_ids) {
        let expect = case.spec["expect"].as_str().expect("`expect` in the case");
        if rows.iter().any(|r| r.event_id == *bad_id) {
            violations.push(format!("{name}: stored"));
        }
        let reasons: Vec<&String> = letters
            .iter()
            .filter(|m| m.attributes.get(MARKER) == Some(name))
            .filter_map(|m| m.attributes.get(envelope::DEAD_LETTER_REASON))
            .collect();
        match reasons.first() {
            None if refused_at_publish.contains(name) => {}
            None => violations.push(format!("{name}: not dead-lettered with a reason")),
            Some(reason) if !reason.contains(expect) => {
                violations.push(format!("{name}: reason {reason:?} does not say {expect:?}"))
            }
            Some(reason) if reason.len() > envelope::MAX_ATTRIBUTE_VALUE_BYTES => {
                violations.push(format!("{name}: reason over 1,024 bytes"))
            }
            Some(_) => {}
        }
    }
    for (name, before, after) in &valid {
        let position = |e: &NewEvent| {
            let found: Vec<u64> = rows
                .iter()
                .filter(|r| r.event_id == e.event_id)
                .map(|r| r.id)
                .collect();
            found
        };
        match (position(before).as_slice(), position(after).as_slice()) {
            ([b], [a]) if b < a => {}
            (b, a) => violations.push(format!(
                "{name}: the valid events around it have rows {b:?} and {a:?} (want one each, in order)"
            )),
        }
    }
    if rows.len() != expected_rows {
        violations.push(format!(
            "{} rows stored, {expected_rows} valid events sent",
            rows.len()
        ));
    }
    assert!(
        violations.is_empty(),
        "{} violation(s):\n{}\nworker: {}",
        violations.len(),
        violations.join("\n"),
        stats.map(|s| s.summary()).unwrap_or_default()
    );
}

/// Accepted ⇒ storable: random events, many near the limits, go through `validate()`; every
/// one it accepts is stored by MariaDB without a refusal, and reads back as the same event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_validation_accepts_the_ledger_stores() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, TestRng, TestRunner};
    let (_backbone, env) = deployed("storable").await;
    let store = EventStore::connect(&env.event_store, 2).await.unwrap();
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = rig_fuzz::event_strategy();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..600 {
        let event = strategy
            .new_tree(&mut runner)
            .expect("a generated event")
            .current();
        if event.validate().is_err() {
            refused += 1;
            continue;
        }
        accepted += 1;
        match store.append(&event).await {
            Ok(Appended::Stored) => {}
            other => panic!("validate() accepted {event:?}, the ledger answered {other:?}"),
        }
        let back = store.find(&[event.event_id]).await.unwrap();
        let stored = back[&event.event_id].as_new_event();
        assert_eq!(
            event.differences(&stored),
            None,
            "{event:?} read back as {stored:?}"
        );
    }
    assert!(
        accepted > 100 && refused > 20,
        "the generator should produce both kinds: {accepted} accepted, {refused} refused"
    );
}

#[path = "fuzz_events.rs"]
mod rig_fuzz;

/// `config`'s server, reached at `host` as `user` with an empty password.
fn login(config: &DbConfig, host: &str, user: &str) -> DbConfig {
    DbConfig {
        host: host.to_string(),
        username: user.to_string(),
        password: String::new(),
        database: String::new(),
        ..config.clone()
    }
}

/// Issue 9, item 7: no account of either server opens without a password — root over TCP
/// (IPv4 and IPv6 loopback) and over the socket — and the rig's dir and everything in it is
/// the rig user's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_database_account_opens_without_a_password_and_the_rig_dir_is_private() {
    let (backbone, env) = deployed("accounts").await;
    // Every service logs into the rig's dir.
    let dir = backbone.processes()[0]
        .2
        .parent()
        .expect("a log inside the rig's dir")
        .to_path_buf();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} has mode {mode:o}", dir.display());
    for (name, admin) in [
        ("event-store-db", &env.event_store_admin),
        ("primary-db", &env.primary_admin),
    ] {
        let socket = dir.join(format!("{name}.sock"));
        assert!(socket.exists(), "{} is missing", socket.display());
        let mut attempts = Vec::new();
        for host in ["127.0.0.1", "::1"] {
            for user in [
                "root",
                "",
                "mysql",
                "mariadb.sys",
                "rig_admin",
                "sync_worker",
            ] {
                let config = login(admin, host, user);
                attempts.push((
                    format!("{user}@{host}"),
                    config.connect_options().connect().await.map(|_| ()),
                ));
            }
        }
        for user in ["root", "", "rig_admin"] {
            let options = sqlx::mysql::MySqlConnectOptions::new()
                .socket(&socket)
                .username(user);
            attempts.push((
                format!("{user} over {name}.sock"),
                options.connect().await.map(|_| ()),
            ));
        }
        let opened: Vec<&String> = attempts
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(who, _)| who)
            .collect();
        assert!(
            opened.is_empty(),
            "{name}: logged in without a password as {opened:?}"
        );
        // Every account left is one the rig made, with a password, or the locked system one.
        let mut conn = connect(admin).await;
        let accounts: Vec<(String, String)> = sqlx::query(
            "SELECT CAST(User AS CHAR), CAST(Host AS CHAR) FROM mysql.user \
             WHERE User <> 'mariadb.sys' AND (authentication_string = '' AND Password = '')",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        assert!(
            accounts.is_empty(),
            "{name}: accounts without a password: {accounts:?}"
        );
    }
}

fn the_rig() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rig"));
    command.env("RIG_LOG", "rig=info");
    command
}

/// Issue 9, item 8: an env file that exists with mode 0644 is 0600 once passwords are in it.
#[test]
fn an_existing_world_readable_env_file_is_made_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let env_file = tmp.path().join("backbone.env");
    std::fs::write(&env_file, "# old\n").unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = the_rig()
        .args(["up", "--env-file"])
        .arg(&env_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting `rig up`");
    let stdout = child.stdout.take().unwrap();
    let printed = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("export DB_PASSWORD="));
    // The file is written right after stdout: give it a moment.
    let ready = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(&env_file).is_ok_and(|t| t.contains("DB_PASSWORD="))
    });
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777;
    signal(child.id(), libc::SIGTERM);
    let _ = wait_exit(&mut child, Duration::from_secs(30));
    assert!(printed && ready, "rig up wrote no environment");
    assert_eq!(mode, 0o600, "the env file has mode {mode:o}");
}

/// The rig's dirs (not the shared datadir template) under `tmp`.
fn rig_dirs(tmp: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(tmp)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with("backbone-rig-") && !n.starts_with("backbone-rig-datadir-")
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 9, item 9: SIGTERM or SIGHUP at any moment of start-up — while the datadirs are being
/// copied, the servers starting, the users being made — leaves no dir behind once the rig
/// has exited. Runs in its own TMPDIR so other rigs' dirs don't count.
#[test]
fn a_signal_at_any_moment_of_start_up_leaves_no_temp_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let mut left = Vec::new();
    // The first run builds this TMPDIR's datadir template; the others copy it.
    let moments = [1500u64, 100, 200, 300, 400, 500, 700];
    for (i, ms) in moments.iter().enumerate() {
        let sig = if i % 2 == 0 {
            libc::SIGTERM
        } else {
            libc::SIGHUP
        };
        let mut child = the_rig()
            .arg("up")
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting `rig up`");
        std::thread::sleep(Duration::from_millis(*ms));
        signal(child.id(), sig);
        let status = wait_exit(&mut child, Duration::from_secs(30));
        let dirs = rig_dirs(tmp.path());
        if !dirs.is_empty() {
            left.push(format!("signal {sig} at {ms} ms ({status}): {dirs:?}"));
            for d in dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    assert!(left.is_empty(), "dirs left behind:\n{}", left.join("\n"));
}

/// Issue 9, items 5 and 6: a replay is "already stored" only if every field the ledger keeps is
/// the same (created_at to the second it keeps); aggregate ids compare exactly — `Coll`,
/// `coll` and `Coll ` are three streams, on both the worker's lookups and the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_compare_every_field_and_aggregate_ids_compare_exactly() {
    use rig_events::event_store::AppendError;
    let (_backbone, env) = deployed("exact").await;
    let store = EventStore::connect(&env.event_store, 2).await.unwrap();
    let base = fixtures::event(
        &Aggregate {
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

/// What the target does to its own services: kill, restart, freeze, thaw.
fn control(backbone: &rig_harness::backbone::Backbone) -> &dyn ServiceControl {
    backbone
        .control()
        .expect("the local target controls its services")
}

/// Faults while the worker runs: GCS unavailable (stopped) during claim-check uploads and
/// downloads, the event store server SIGKILLed and restarted. Every valid event is stored
/// exactly once in per-key order, reaches events.merged at least once in order, and nothing
/// is dead-lettered (each outage is shorter than the retries it costs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_outages_and_a_database_restart_lose_nothing() {
    let (backbone, env) = deployed("faults").await;
    let topology = dev_topology();
    let options = WorkerOptions::from_topology(&topology).expect("worker options");
    let raw = topology
        .subscription(&options.subscription)
        .map(|s| s.topic.clone())
        .expect("the raw topic");
    let merged_subscription = topology
        .worker_subscription(&options.merged_topic)
        .map(|s| s.name.clone())
        .expect("a subscription on merged");
    let dlq_subscription = topology
        // The operators' subscription: the acceptance one admits probes only.
        .worker_subscription(&options.dead_letter_topic)
        .map(|s| s.name.clone())
        .expect("a subscription on the dead-letter topic");
    let services = control(&backbone);
    let merged = Collector::start(&env, &merged_subscription).await.unwrap();
    let dlq = Collector::start(&env, &dlq_subscription).await.unwrap();
    let inline = rig_events::producer::Producer::connect(&env.connections(), &raw)
        .await
        .unwrap();
    // Every payload through the bucket.
    let claimed = rig_events::producer::Producer::connect(&env.connections(), &raw)
        .await
        .unwrap()
        .with_threshold(0);
    let keys: Vec<Aggregate> = (0..10)
        .map(|k| Aggregate {
            account: 2,
            record: k,
            id: 100 + k as u16,
        })
        .collect();
    let batch = |from: u32, to: u32| -> Vec<NewEvent> {
        (from..to)
            .flat_map(|seq| keys.iter().map(move |k| fixtures::event(k, seq)))
            .collect()
    };

    // Upload while GCS is stopped: the producer must fail (or not finish), not publish a
    // reference to an object that was never written.
    let first = batch(1, 3);
    services.freeze(Service::Storage).await.expect("freezing GCS");
    let during_outage =
        tokio::time::timeout(Duration::from_secs(3), claimed.publish_all(&first)).await;
    services.thaw(Service::Storage).await.expect("thawing GCS");
    assert!(
        !matches!(during_outage, Ok(Ok(_))),
        "claim-checked events were published while GCS was stopped"
    );
    claimed
        .publish_all(&first)
        .await
        .expect("publishing once GCS is back");
    let mut events = first.clone();

    let store = EventStore::connect(&env.event_store_admin, 2)
        .await
        .unwrap();
    let worker = RunningWorker::start(&env, options, Arc::new(NoFaults))
        .await
        .unwrap();
    // Downloads while GCS is stopped: the worker waits or retries.
    let second = batch(3, 6);
    claimed.publish_all(&second).await.unwrap();
    events.extend(second);
    services.freeze(Service::Storage).await.expect("freezing GCS");
    tokio::time::sleep(Duration::from_secs(3)).await;
    services.thaw(Service::Storage).await.expect("thawing GCS");

    // The database killed and restarted while inline events flow.
    let third = batch(6, 20);
    inline.publish_all(&third).await.unwrap();
    events.extend(third);
    wait_for(Duration::from_secs(30), || async {
        store.count().await.unwrap_or(0) >= 70
    })
    .await;
    // Killed, then a batch published while it is down, so appends fail mid-stream (a fast
    // Pub/Sub would drain a batch published before the kill in milliseconds).
    services
        .kill(Service::EventStore)
        .await
        .expect("killing the event store");
    let fourth = batch(20, 70);
    inline.publish_all(&fourth).await.unwrap();
    events.extend(fourth);
    // Down longer than the pool's 10 s acquire timeout: a shorter outage can be absorbed by
    // an append waiting for a connection, and then nothing is nacked.
    tokio::time::sleep(Duration::from_secs(11)).await;
    services
        .restart(Service::EventStore)
        .await
        .expect("restarting the event store");

    let total = events.len();
    let settled = wait_for(Duration::from_secs(90), || async {
        store.count().await.unwrap_or(0) as usize >= total
            && merged
                .messages()
                .iter()
                .filter_map(scenarios::support::event_id_of)
                .collect::<std::collections::HashSet<_>>()
                .len()
                >= total
    })
    .await;
    let counters = worker.stats.clone();
    let stats = worker.stop_and_describe().await;
    let merged = merged.stop().await;
    let dead = dlq.stop().await;
    assert!(
        counters.nacked.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the database restart was never felt (nothing nacked): the fault did not land mid-stream; worker: {stats}"
    );
    let rows = store.all().await.unwrap();

    let key_of = |a: &str, t: &str, i: &str| envelope::ordering_key(a, t, i);
    let want = scenarios::support::by_key(events.iter().map(|e| {
        (
            key_of(&e.account_id, &e.aggregate_type, &e.aggregate_id),
            e.event_id,
        )
    }));
    let got = scenarios::support::by_key(rows.iter().map(|r| {
        (
            key_of(&r.account_id, &r.aggregate_type, &r.aggregate_id),
            r.event_id,
        )
    }));
    let mut seen = std::collections::HashSet::new();
    let on_merged = scenarios::support::by_key(merged.iter().filter_map(|m| {
        let id = scenarios::support::event_id_of(m)?;
        seen.insert(id).then(|| (m.ordering_key.clone(), id))
    }));
    let reasons: Vec<&String> = dead
        .iter()
        .filter_map(|m| m.attributes.get(envelope::DEAD_LETTER_REASON))
        .collect();
    assert!(
        settled && got == want && on_merged == want && reasons.is_empty(),
        "settled {settled}; {} of {total} rows, ledger in order per key: {}, merged in order per key: {}; dead letters: {reasons:?}; worker: {stats}",
        rows.len(),
        got == want,
        on_merged == want
    );
}

/// The event store stalls (SIGSTOP) for longer than the subscription's ack deadline while the
/// worker is appending: the client keeps the leases, nothing is redelivered into a duplicate,
/// nothing is dead-lettered, and every event is stored once in order when the server resumes.
/// The topology's ack deadline is shortened to 10 s in this test's copy so the stall stays
/// short; everything else is the dev Terraform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_stall_past_the_ack_deadline_loses_and_duplicates_nothing() {
    const ACK_DEADLINE: u32 = 10;
    let mut topology = dev_topology();
    for s in &mut topology.subscriptions {
        s.ack_deadline_seconds = ACK_DEADLINE;
    }
    let (backbone, deployment) = rig_harness::backbone::Backbone::up(
        rig_harness::targets::TargetKind::Local,
        "stall",
        &topology,
    )
    .await
    .unwrap_or_else(|e| panic!("bringing up the backbone: {e:#}"));
    let env = deployment.environment;
    let options = WorkerOptions::from_topology(&topology).expect("worker options");
    let raw = topology
        .subscription(&options.subscription)
        .map(|s| s.topic.clone())
        .expect("the raw topic");
    let dlq_subscription = topology
        // The operators' subscription: the acceptance one admits probes only.
        .worker_subscription(&options.dead_letter_topic)
        .map(|s| s.name.clone())
        .expect("a subscription on the dead-letter topic");
    let services = control(&backbone);
    let dlq = Collector::start(&env, &dlq_subscription).await.unwrap();
    let events: Vec<NewEvent> = (1..=30)
        .flat_map(|seq| {
            (0..10).map(move |k| {
                fixtures::event(
                    &Aggregate {
                        account: 0,
                        record: k,
                        id: 200 + k as u16,
                    },
                    seq,
                )
            })
        })
        .collect();
    let store = EventStore::connect(&env.event_store_admin, 1)
        .await
        .unwrap();
    let producer = rig_events::producer::Producer::connect(&env.connections(), &raw)
        .await
        .unwrap();
    producer.publish_all(&events[..100]).await.unwrap();
    let worker = RunningWorker::start(&env, options, Arc::new(NoFaults))
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), || async {
        store.count().await.unwrap_or(0) >= 100
    })
    .await;
    // Stopped with the rest in flight: the worker's appends hang on the frozen server.
    producer.publish_all(&events[100..]).await.unwrap();
    services
        .freeze(Service::EventStore)
        .await
        .expect("freezing the event store");
    tokio::time::sleep(Duration::from_secs(u64::from(ACK_DEADLINE) + 5)).await;
    services
        .thaw(Service::EventStore)
        .await
        .expect("thawing the event store");
    let total = events.len();
    let settled = wait_for(Duration::from_secs(60), || async {
        store.count().await.unwrap_or(0) as usize >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = worker.stop_and_describe().await;
    let dead = dlq.stop().await;
    let rows = store.all().await.unwrap();
    let key_of = |a: &str, t: &str, i: &str| envelope::ordering_key(a, t, i);
    let want = scenarios::support::by_key(events.iter().map(|e| {
        (
            key_of(&e.account_id, &e.aggregate_type, &e.aggregate_id),
            e.event_id,
        )
    }));
    let got = scenarios::support::by_key(rows.iter().map(|r| {
        (
            key_of(&r.account_id, &r.aggregate_type, &r.aggregate_id),
            r.event_id,
        )
    }));
    assert!(
        settled && got == want && dead.is_empty(),
        "settled {settled}; {} rows of {total}, in order per key: {}; {} dead letter(s); worker: {stats}",
        rows.len(),
        got == want,
        dead.len()
    );
}
