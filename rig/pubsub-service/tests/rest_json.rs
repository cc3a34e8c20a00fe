//! The REST surface in the proto3 JSON mapping (<https://protobuf.dev/programming-guides/json/>,
//! <https://cloud.google.com/pubsub/docs/reference/rest>), what gcloud and REST clients read;
//! snapshots and seek over REST; what is not implemented answers 501.

mod common;

use common::{Http, service};
use reqwest::Method;
use serde_json::json;

const P: &str = "/v1/projects/rest";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_read_back_in_the_proto3_json_mapping() {
    let service = service().await;
    let http = Http::new(&service);
    let topic = http
        .ok(
            Method::PUT,
            &format!("{P}/topics/orders"),
            Some(json!({"messageRetentionDuration": "600s"})),
        )
        .await;
    assert_eq!(topic["state"], "ACTIVE", "enums by name: {topic}");
    assert_eq!(topic["messageRetentionDuration"], "600s");
    let sub = http
        .ok(
            Method::PUT,
            &format!("{P}/subscriptions/orders-sub"),
            Some(json!({
                "topic": "projects/rest/topics/orders",
                "ack_deadline_seconds": "20",
                "retryPolicy": {"minimumBackoff": "2.5s", "maximumBackoff": "10s"},
            })),
        )
        .await;
    assert_eq!(sub["state"], "ACTIVE");
    assert_eq!(sub["ackDeadlineSeconds"], 20);
    assert_eq!(sub["retryPolicy"]["minimumBackoff"], "2.500s", "{sub}");
    assert_eq!(sub["retryPolicy"]["maximumBackoff"], "10s");
    assert_eq!(
        sub["expirationPolicy"]["ttl"], "2678400s",
        "the default expiration"
    );
    assert_eq!(sub["messageRetentionDuration"], "604800s");
    assert_eq!(sub["topicMessageRetentionDuration"], "600s");
    assert_eq!(sub["pushConfig"], json!({}));
    let listed = http
        .ok(Method::GET, &format!("{P}/subscriptions"), None)
        .await;
    assert_eq!(listed["subscriptions"][0]["state"], "ACTIVE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_take_either_base64_alphabet_and_unknown_fields_are_refused() {
    let service = service().await;
    let http = Http::new(&service);
    http.ok(Method::PUT, &format!("{P}/topics/bytes"), None)
        .await;
    http.ok(
        Method::PUT,
        &format!("{P}/subscriptions/bytes-sub"),
        Some(json!({"topic": "projects/rest/topics/bytes"})),
    )
    .await;
    // 0xfb 0xff 0xbf: "-_-_" in the URL-safe alphabet, "+/+/" in the standard one.
    let published = http
        .ok(
            Method::POST,
            &format!("{P}/topics/bytes:publish"),
            Some(json!({"messages": [{"data": "-_-_"}, {"data": "aGk"}]})),
        )
        .await;
    assert_eq!(published["messageIds"].as_array().map(Vec::len), Some(2));
    let pulled = http
        .ok(
            Method::POST,
            &format!("{P}/subscriptions/bytes-sub:pull"),
            Some(json!({"maxMessages": 10, "returnImmediately": true})),
        )
        .await;
    let data: Vec<&str> = pulled["receivedMessages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|r| r["message"]["data"].as_str())
        .collect();
    assert_eq!(data, ["+/+/", "aGk="]);
    for (path, body) in [
        (
            format!("{P}/topics/unknown-field"),
            json!({"colour": "red"}),
        ),
        (
            format!("{P}/subscriptions/unknown-nested"),
            json!({"topic": "projects/rest/topics/bytes", "retryPolicy": {"minimumBackof": "1s"}}),
        ),
    ] {
        let (status, answer) = http.call(Method::PUT, &path, Some(body)).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(answer["error"]["status"], "INVALID_ARGUMENT");
    }
    let (status, answer) = http
        .call(
            Method::POST,
            &format!("{P}/topics/bytes:publish"),
            Some(json!({"messages": [{"data": "not base64!"}]})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_implemented_answers_501_never_a_wrong_success() {
    let service = service().await;
    let http = Http::new(&service);
    http.ok(Method::PUT, &format!("{P}/topics/plain"), None)
        .await;
    let cases = [
        (Method::GET, format!("{P}/schemas"), None),
        (
            Method::POST,
            format!("{P}/schemas"),
            Some(json!({"type": "AVRO"})),
        ),
        (Method::GET, format!("{P}/topics/plain:getIamPolicy"), None),
        (
            Method::POST,
            format!("{P}/topics/plain:setIamPolicy"),
            Some(json!({})),
        ),
        (
            Method::PUT,
            format!("{P}/subscriptions/pushed"),
            Some(
                json!({"topic": "projects/rest/topics/plain", "pushConfig": {"pushEndpoint": "https://example.com/p"}}),
            ),
        ),
        (
            Method::PUT,
            format!("{P}/subscriptions/exported"),
            Some(
                json!({"topic": "projects/rest/topics/plain", "bigqueryConfig": {"table": "p.d.t"}}),
            ),
        ),
        (
            Method::PUT,
            format!("{P}/topics/schematic"),
            Some(json!({"schemaSettings": {"schema": "projects/rest/schemas/s"}})),
        ),
    ];
    for (method, path, body) in cases {
        let (status, answer) = http.call(method.clone(), &path, body).await;
        assert_eq!(status, 501, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["status"], "UNIMPLEMENTED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_seek_over_rest() {
    let service = service().await;
    let http = Http::new(&service);
    http.ok(Method::PUT, &format!("{P}/topics/replay"), None)
        .await;
    http.ok(
        Method::PUT,
        &format!("{P}/subscriptions/replay-sub"),
        Some(json!({"topic": "projects/rest/topics/replay", "retainAckedMessages": true})),
    )
    .await;
    let publish = |data: &'static str| {
        let http = &http;
        async move {
            http.ok(
                Method::POST,
                &format!("{P}/topics/replay:publish"),
                Some(json!({"messages": [{"data": data}]})),
            )
            .await
        }
    };
    let pull_and_ack = || {
        let http = &http;
        async move {
            let pulled = http
                .ok(
                    Method::POST,
                    &format!("{P}/subscriptions/replay-sub:pull"),
                    Some(json!({"maxMessages": 10, "returnImmediately": true})),
                )
                .await;
            let received = pulled["receivedMessages"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ids: Vec<&str> = received
                .iter()
                .filter_map(|r| r["ackId"].as_str())
                .collect();
            if !ids.is_empty() {
                http.ok(
                    Method::POST,
                    &format!("{P}/subscriptions/replay-sub:acknowledge"),
                    Some(json!({"ackIds": ids})),
                )
                .await;
            }
            received
                .iter()
                .filter_map(|r| r["message"]["data"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        }
    };
    publish("b25l").await;
    let snap = http
        .ok(
            Method::PUT,
            &format!("{P}/snapshots/before-two"),
            Some(json!({"subscription": "projects/rest/subscriptions/replay-sub", "labels": {"why": "incident"}})),
        )
        .await;
    assert_eq!(snap["topic"], "projects/rest/topics/replay");
    assert!(
        snap["expireTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{snap}"
    );
    assert_eq!(pull_and_ack().await, ["b25l"]);
    publish("dHdv").await;
    assert_eq!(pull_and_ack().await, ["dHdv"]);
    http.ok(
        Method::POST,
        &format!("{P}/subscriptions/replay-sub:seek"),
        Some(json!({"snapshot": "projects/rest/snapshots/before-two"})),
    )
    .await;
    assert_eq!(
        pull_and_ack().await,
        ["b25l", "dHdv"],
        "the snapshot's and the later message"
    );
    http.ok(
        Method::POST,
        &format!("{P}/subscriptions/replay-sub:seek"),
        Some(json!({"time": "1970-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(
        pull_and_ack().await,
        ["b25l", "dHdv"],
        "retained acknowledged messages replayed"
    );
    http.ok(
        Method::POST,
        &format!("{P}/subscriptions/replay-sub:seek"),
        Some(json!({"time": "2999-01-01T00:00:00Z"})),
    )
    .await;
    assert!(
        pull_and_ack().await.is_empty(),
        "seeking to the future purges"
    );
    let listed = http.ok(Method::GET, &format!("{P}/snapshots"), None).await;
    assert_eq!(listed["snapshots"][0]["labels"]["why"], "incident");
    let by_topic = http
        .ok(Method::GET, &format!("{P}/topics/replay/snapshots"), None)
        .await;
    assert_eq!(
        by_topic["snapshots"],
        json!(["projects/rest/snapshots/before-two"])
    );
    let patched = http
        .ok(
            Method::PATCH,
            &format!("{P}/snapshots/before-two"),
            Some(json!({"snapshot": {"labels": {"why": "done"}}, "updateMask": "labels"})),
        )
        .await;
    assert_eq!(patched["labels"]["why"], "done");
    http.ok(Method::DELETE, &format!("{P}/snapshots/before-two"), None)
        .await;
    let (status, _) = http
        .call(Method::GET, &format!("{P}/snapshots/before-two"), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_and_detach_over_rest_get_the_documented_errors() {
    let service = service().await;
    let http = Http::new(&service);
    http.ok(Method::PUT, &format!("{P}/topics/acks"), None)
        .await;
    http.ok(
        Method::PUT,
        &format!("{P}/subscriptions/acks-sub"),
        Some(json!({"topic": "projects/rest/topics/acks"})),
    )
    .await;
    for ids in [json!([]), json!(["garbage"])] {
        let (status, answer) = http
            .call(
                Method::POST,
                &format!("{P}/subscriptions/acks-sub:acknowledge"),
                Some(json!({"ackIds": ids})),
            )
            .await;
        assert_eq!(status, 400, "{ids}: {answer}");
    }
    http.ok(
        Method::POST,
        &format!("{P}/subscriptions/acks-sub:detach"),
        None,
    )
    .await;
    let (status, answer) = http
        .call(
            Method::POST,
            &format!("{P}/subscriptions/acks-sub:pull"),
            Some(json!({"maxMessages": 1})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["status"].clone()),
        (400, json!("FAILED_PRECONDITION"))
    );
    let under_topic = http
        .ok(Method::GET, &format!("{P}/topics/acks/subscriptions"), None)
        .await;
    assert_eq!(
        under_topic,
        json!({}),
        "a detached subscription is not its topic's any more"
    );
    let got = http
        .ok(Method::GET, &format!("{P}/subscriptions/acks-sub"), None)
        .await;
    assert_eq!(got["detached"], true);
}
