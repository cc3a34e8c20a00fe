//! Poison never stops the worker: every message of `fixtures/bad/` against a running worker
//! is dead-lettered with its reason beside valid events stored in order, and whatever
//! validation accepts the real ledger stores (docs/reliability.md).

mod support;
use support::{deployed, dev_topology};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use rig_events::envelope;
use rig_events::event_store::{Appended, EventStore, NewEvent};
use rig_events::storage::StorageConnection;
use rig_events::worker::NoFaults;
use scenarios::fixtures::{self, Aggregate};
use scenarios::support::{Collector, RunningWorker, Wiring, wait_for};
use serde_json::Value;

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
    let Wiring {
        options,
        raw_topic: raw,
        dead_letters: dlq_subscription,
        ..
    } = Wiring::from_topology(&topology).expect("the worker's wiring from the Terraform");
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
