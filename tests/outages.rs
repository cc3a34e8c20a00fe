//! Nothing lost across outages while the worker runs: GCS unavailable, the event store
//! killed and restarted, the event store frozen past the ack deadline
//! (docs/reliability.md).

mod support;
use support::{deployed, dev_topology};

use std::sync::Arc;
use std::time::Duration;

use rig_events::envelope::{self};
use rig_events::event_store::{EventStore, NewEvent};
use rig_events::worker::NoFaults;
use rig_harness::targets::{Service, ServiceControl};
use scenarios::fixtures::{self, Aggregate};
use scenarios::support::{Collector, RunningWorker, Wiring, wait_for};

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
    let Wiring {
        options,
        raw_topic: raw,
        merged: merged_subscription,
        dead_letters: dlq_subscription,
    } = Wiring::from_topology(&topology).expect("the worker's wiring from the Terraform");
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
    services
        .freeze(Service::Storage)
        .await
        .expect("freezing GCS");
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
    services
        .freeze(Service::Storage)
        .await
        .expect("freezing GCS");
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
    let Wiring {
        options,
        raw_topic: raw,
        dead_letters: dlq_subscription,
        ..
    } = Wiring::from_topology(&topology).expect("the worker's wiring from the Terraform");
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
