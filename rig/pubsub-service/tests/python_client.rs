//! The service driven by Google's Python client (`pip install google-cloud-pubsub`), which
//! speaks gRPC for everything, admin included, and acknowledges, nacks and extends leases with
//! unary calls while its stream is open. Fails, saying how to install it, when the package is
//! absent (`./x install` installs it).

use std::process::Command;
use std::time::Duration;

use pubsub_service::PubsubService;

const SCRIPT: &str = r#"
import json, os, sys, threading, time
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.pubsub_v1.types import DeadLetterPolicy, RetryPolicy

project = "py-project"
publisher = pubsub_v1.PublisherClient(
    publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
subscriber = pubsub_v1.SubscriberClient()
topic = publisher.topic_path(project, "py-topic")
dlq = publisher.topic_path(project, "py-dlq")
sub = subscriber.subscription_path(project, "py-ordered")
filtered = subscriber.subscription_path(project, "py-filtered")
publisher.create_topic(name=topic)
publisher.create_topic(name=dlq)
subscriber.create_subscription(request={
    "name": sub, "topic": topic, "enable_message_ordering": True, "ack_deadline_seconds": 20,
    "dead_letter_policy": DeadLetterPolicy(dead_letter_topic=dlq, max_delivery_attempts=5),
    "retry_policy": RetryPolicy(minimum_backoff={"seconds": 0, "nanos": 10_000_000},
                                maximum_backoff={"seconds": 0, "nanos": 50_000_000}),
})
subscriber.create_subscription(request={"name": filtered, "topic": topic,
                                        "filter": 'attributes.kind = "probe"'})
got = subscriber.get_subscription(subscription=sub)
result = {"read_back": [got.enable_message_ordering, got.ack_deadline_seconds,
                        got.dead_letter_policy.max_delivery_attempts]}
try:
    subscriber.create_subscription(request={"name": subscriber.subscription_path(project, "py-bad"),
                                            "topic": topic, "filter": "attributes:"})
    result["bad_filter"] = "accepted"
except exceptions.InvalidArgument as e:
    result["bad_filter"] = "INVALID_ARGUMENT"

for i in range(1, 4):
    publisher.publish(topic, str(i).encode(), ordering_key="k").result()
publisher.publish(topic, b"probe", kind="probe").result()

processed, deliveries, lock, done = [], [], threading.Lock(), threading.Event()
state = {"failures": 1, "blocked": False}
def callback(message):
    n = message.data.decode()
    if n == "probe":  # no filter on this subscription: it gets the probe too
        message.ack(); return
    with lock:
        deliveries.append([n, message.delivery_attempt])
        if state["blocked"] and n != "2":
            message.nack(); return
        if n == "2" and state["failures"] > 0:
            state["failures"] -= 1; state["blocked"] = True
            message.nack(); return
        state["blocked"] = False
        processed.append(n)
        message.ack()
        if len(processed) == 3:
            done.set()
future = subscriber.subscribe(sub, callback=callback)
done.wait(20)
future.cancel()
result["processed"] = processed
result["deliveries"] = deliveries
pulled = subscriber.pull(request={"subscription": filtered, "max_messages": 10}, timeout=10)
result["filtered"] = sorted(m.message.data.decode() for m in pulled.received_messages)
print(json.dumps(result))
"#;

/// Runs a Python script against a fresh service with `PUBSUB_EMULATOR_HOST` set, and returns
/// the JSON object on its last line of output. Fails, saying how to install it, when Google's
/// Python client is missing: these tests must never pass by not running.
async fn run_python(script: &'static str, timeout: Duration) -> serde_json::Value {
    let probe = Command::new("python3")
        .args(["-c", "import google.cloud.pubsub_v1"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "Google's Python client is not installed: `pip install google-cloud-pubsub` (or `./x install`): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ),
        Err(e) => panic!(
            "python3 cannot run ({e}): install Python 3 and `pip install google-cloud-pubsub` (or `./x install`)"
        ),
    }
    let service = PubsubService::start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("starting pubsub-service");
    let host = service.emulator_host();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", script])
            .env("PUBSUB_EMULATOR_HOST", host)
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .output()
    });
    let out = tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| panic!("the Python client did not finish within {timeout:?}"))
        .expect("join")
        .expect("python3 ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stderr}\n{stdout}");
    drop(service);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON result ({e}):\n{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_administers_publishes_and_streams_in_order() {
    let result = run_python(SCRIPT, Duration::from_secs(120)).await;
    assert_eq!(result["read_back"], serde_json::json!([true, 20, 5]));
    assert_eq!(result["bad_filter"], "INVALID_ARGUMENT");
    assert_eq!(
        result["processed"],
        serde_json::json!(["1", "2", "3"]),
        "deliveries: {}",
        result["deliveries"]
    );
    assert_eq!(result["filtered"], serde_json::json!(["probe"]));
}

/// The ordering page: "Redelivery of a message triggers redelivery of all subsequent messages
/// for that key, even acknowledged ones" (<https://cloud.google.com/pubsub/docs/ordering>).
/// The Python client nacks with a unary ModifyAckDeadline(0) while its stream is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_nack_on_an_ordered_key_brings_back_the_message_and_the_rest_of_its_key() {
    let result = run_python(
        include_str!("python/ordered_nack.py"),
        Duration::from_secs(90),
    )
    .await;
    let deliveries: Vec<String> = result["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    let nacked: Vec<usize> = deliveries
        .iter()
        .enumerate()
        .filter(|(_, d)| *d == "k:3")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        nacked.len(),
        2,
        "k:3 nacked once must come back once: {deliveries:?}"
    );
    let mut after: Vec<&str> = Vec::new();
    for d in &deliveries[nacked[1] + 1..] {
        if !after.contains(&d.as_str()) {
            after.push(d);
        }
    }
    let later: Vec<String> = (4..10).map(|i| format!("k:{i}")).collect();
    assert_eq!(
        after, later,
        "after k:3's redelivery the key's later messages (acknowledged ones included) come again, in order: {deliveries:?}"
    );
}

/// Every nack is a delivery attempt: "ModifyAckDeadline 0" counts for the dead-letter policy
/// (<https://cloud.google.com/pubsub/docs/handling-failures#dead_letter_topic>).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_nacks_count_as_attempts_until_the_message_is_dead_lettered() {
    let result = run_python(
        include_str!("python/dead_letter.py"),
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        result["attempts"],
        serde_json::json!([1, 2, 3, 4, 5]),
        "{result}"
    );
    let copy = &result["dead_letter"];
    assert_eq!(copy["data"], "poison", "{result}");
    assert_eq!(copy["attributes"]["origin"], "test");
    assert_eq!(
        copy["attributes"]["CloudPubSubDeadLetterSourceDeliveryCount"],
        "5"
    );
    assert_eq!(
        copy["attributes"]["CloudPubSubDeadLetterSourceSubscription"],
        "source-sub"
    );
}

/// The client extends the lease of a message its callback still holds
/// (<https://cloud.google.com/pubsub/docs/lease-management>): no redelivery at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_lease_extensions_keep_a_slow_message_leased() {
    let result = run_python(
        include_str!("python/lease_extension.py"),
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        result["deliveries"],
        serde_json::json!(["slow"]),
        "{result}"
    );
}

/// <https://cloud.google.com/pubsub/docs/exactly-once-delivery>
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_exactly_once_acks_are_confirmed_and_expired_ids_refused() {
    let result = run_python(
        include_str!("python/exactly_once.py"),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        result["deliveries"],
        serde_json::json!(["once"]),
        "{result}"
    );
    assert_eq!(result["ack"], "SUCCESS", "{result}");
    assert_eq!(result["stale_ack"], "INVALID_ARGUMENT", "{result}");
    assert_eq!(result["fresh_ack"], "accepted");
}

/// Fault labels changed over gRPC on a live subscription take effect at once and stop when
/// removed (the REST path: `tests/observation.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fault_label_updates_over_grpc_take_effect_at_once() {
    let result = run_python(
        include_str!("python/fault_labels.py"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        result["rounds"],
        serde_json::json!([["m"], ["m"], ["m"], []]),
        "duplicated while the label is set, then no more: {result}"
    );
    assert_eq!(result["labels"], serde_json::json!({}));
}
