//! The observation API: a per-project history switched on from outside the process
//! (`/_rig/v1/projects/{project}/history`) or in process (`RunningService::history*`), and
//! fault labels changed on a live subscription.

mod common;

use std::time::Duration;

use common::{Grpc, Http, keyed, next_batch, service, text};
use pubsub_service::history::{Consumer, Event, FaultKind, Transport};
use pubsub_service::proto;
use reqwest::Method;
use serde_json::{Value, json};

fn events(page: &Value) -> Vec<String> {
    page["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_switched_on_and_read_over_http() {
    let service = service().await;
    let http = Http::new(&service);
    let p = "/v1/projects/watched";
    http.ok(Method::PUT, &format!("{p}/topics/tone"), None)
        .await;
    http.ok(
        Method::PUT,
        &format!("{p}/subscriptions/sone"),
        Some(json!({"topic": "projects/watched/topics/tone"})),
    )
    .await;
    let before = http
        .ok(Method::GET, "/_rig/v1/projects/watched/history", None)
        .await;
    assert_eq!(before["records"], json!([]), "off by default");
    assert_eq!(before["recording"], false);
    let started = http
        .ok(
            Method::POST,
            "/_rig/v1/projects/watched/history:start",
            None,
        )
        .await;
    assert_eq!(started, json!({"recording": true, "last": 0}));
    http.ok(
        Method::POST,
        &format!("{p}/topics/tone:publish"),
        Some(json!({"messages": [{"data": "YQ==", "orderingKey": "k", "attributes": {"a": "1"}}]})),
    )
    .await;
    let pulled = http
        .ok(
            Method::POST,
            &format!("{p}/subscriptions/sone:pull"),
            Some(json!({"maxMessages": 5})),
        )
        .await;
    let ack_id = pulled["receivedMessages"][0]["ackId"].clone();
    http.ok(
        Method::POST,
        &format!("{p}/subscriptions/sone:acknowledge"),
        Some(json!({"ackIds": [ack_id]})),
    )
    .await;
    let page = http
        .ok(
            Method::GET,
            "/_rig/v1/projects/watched/history?after=0&limit=2",
            None,
        )
        .await;
    assert_eq!(events(&page), ["publish", "pull-request"]);
    assert_eq!(page["more"], true);
    let publish = &page["records"][0];
    assert_eq!(publish["seq"], 1);
    assert_eq!(publish["transport"], "rest");
    assert_eq!(publish["topic"], "projects/watched/topics/tone");
    assert_eq!(publish["orderingKey"], "k");
    assert_eq!(publish["attributes"], json!({"a": "1"}));
    assert_eq!(publish["dataBytes"], 1);
    assert!(
        publish["timeMs"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000)
    );
    let rest = http
        .ok(
            Method::GET,
            &format!("/_rig/v1/projects/watched/history?after={}", page["next"]),
            None,
        )
        .await;
    assert_eq!(events(&rest), ["deliver", "ack"]);
    assert!(rest["records"][0]["consumer"]["pull"].as_u64().is_some());
    assert_eq!(rest["records"][1]["ackId"], ack_id);
    assert_eq!(rest["more"], false);
    // Another project's traffic is not in this history.
    http.ok(Method::PUT, "/v1/projects/elsewhere/topics/ttwo", None)
        .await;
    http.ok(
        Method::POST,
        "/v1/projects/elsewhere/topics/ttwo:publish",
        Some(json!({"messages": [{"data": "YQ=="}]})),
    )
    .await;
    let after = http
        .ok(
            Method::GET,
            "/_rig/v1/projects/watched/history?after=4",
            None,
        )
        .await;
    assert_eq!(after["records"], json!([]));
    http.ok(Method::POST, "/_rig/v1/projects/watched/history:stop", None)
        .await;
    http.ok(Method::DELETE, "/_rig/v1/projects/watched/history", None)
        .await;
    let cleared = http
        .ok(Method::GET, "/_rig/v1/projects/watched/history", None)
        .await;
    assert_eq!(cleared["records"], json!([]));
    let (status, _) = http.call(Method::GET, "/_rig/v1/nothing", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_in_process_tells_streams_unary_acks_and_readiness_apart() {
    let service = service().await;
    let grpc = Grpc::connect(&service).await;
    let topic = "projects/inproc/topics/top";
    grpc.topic(topic).await;
    let sub = grpc
        .subscription(proto::Subscription {
            name: "projects/inproc/subscriptions/sub".into(),
            topic: topic.into(),
            ..Default::default()
        })
        .await;
    assert_eq!(service.history_start("inproc"), 0);
    let (tx, mut stream) = grpc.stream(&sub.name, 0).await;
    grpc.publish(topic, vec![keyed("m", "")]).await;
    let got = next_batch(&mut stream).await;
    grpc.ack(&sub.name, vec![got[0].ack_id.clone()])
        .await
        .expect("unary ack");
    drop(tx);
    drop(stream);
    let mut records = Vec::new();
    for _ in 0..50 {
        records = service.history("inproc", 0, 100).records;
        if records
            .iter()
            .any(|r| matches!(r.event, Event::StreamClosed { .. }))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let summary: Vec<(Transport, &'static str)> = records
        .iter()
        .map(|r| {
            let kind = match &r.event {
                Event::StreamOpened { .. } => "opened",
                Event::Publish { .. } => "publish",
                Event::Deliver { consumer, .. } => {
                    assert!(matches!(consumer, Consumer::Stream(_)));
                    "deliver"
                }
                Event::Ack { .. } => "ack",
                Event::StreamClosed { .. } => "closed",
                _ => "other",
            };
            (r.transport, kind)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Transport::GrpcStream, "opened"),
            (Transport::GrpcUnary, "publish"),
            (Transport::GrpcStream, "deliver"),
            (Transport::GrpcUnary, "ack"),
            (Transport::GrpcStream, "closed"),
        ]
    );
}

/// The rig's fault labels are ordinary subscription labels: changing them with
/// UpdateSubscription (mask `labels`) takes effect on a live subscription at once, and removing
/// them stops the faults. Here over REST, as the official Rust client's admin sends it; the
/// Python client test does the same over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_labels_updated_over_rest_apply_to_a_live_stream_at_once() {
    let service = service().await;
    let grpc = Grpc::connect(&service).await;
    let http = Http::new(&service);
    let topic = "projects/faulty/topics/top";
    grpc.topic(topic).await;
    let sub = grpc
        .subscription(proto::Subscription {
            name: "projects/faulty/subscriptions/sub".into(),
            topic: topic.into(),
            ..Default::default()
        })
        .await;
    service.history_start("faulty");
    let (_tx, mut stream) = grpc.stream(&sub.name, 0).await;
    let labels = |value: Value| {
        let http = &http;
        async move {
            http.ok(
                Method::PATCH,
                "/v1/projects/faulty/subscriptions/sub",
                Some(json!({"subscription": {"labels": value}, "updateMask": "labels"})),
            )
            .await
        }
    };
    labels(json!({"rig-fault-duplicate-permille": "1000"})).await;
    grpc.publish(topic, vec![keyed("dup", "")]).await;
    let first = next_batch(&mut stream).await;
    grpc.ack(&sub.name, vec![first[0].ack_id.clone()])
        .await
        .expect("ack");
    let again = next_batch(&mut stream).await;
    assert_eq!(
        again.iter().map(text).collect::<Vec<_>>(),
        ["dup"],
        "duplicated"
    );
    labels(json!({})).await;
    grpc.ack(&sub.name, vec![again[0].ack_id.clone()])
        .await
        .expect("ack");
    let quiet = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
    assert!(
        quiet.is_err(),
        "no fault once the labels are removed: {quiet:?}"
    );
    let faults: Vec<FaultKind> = service
        .history("faulty", 0, 1000)
        .records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Fault { fault, .. } => Some(*fault),
            _ => None,
        })
        .collect();
    assert_eq!(faults, [FaultKind::Duplicate]);
}
