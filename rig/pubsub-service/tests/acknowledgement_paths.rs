//! Acks, nacks and deadline changes arrive on the StreamingPull stream (as the Java and Go
//! clients send them) or as unary calls (as the Python and Rust clients send them), for
//! messages leased by a stream or by a unary Pull: each path behaves alike.
//! Sources: <https://cloud.google.com/pubsub/docs/lease-management>,
//! <https://cloud.google.com/pubsub/docs/ordering>,
//! <https://cloud.google.com/pubsub/docs/handling-failures>,
//! <https://cloud.google.com/pubsub/docs/exactly-once-delivery>.

mod common;

use common::{Grpc, keyed, next_batch, receive, service, text};
use pubsub_service::proto;

const TOPIC: &str = "projects/paths/topics/orders";

fn subscription(name: &str) -> proto::Subscription {
    proto::Subscription {
        name: format!("projects/paths/subscriptions/{name}"),
        topic: TOPIC.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_on_the_stream_brings_back_the_key_as_a_unary_nack_does() {
    let service = service().await;
    let grpc = Grpc::connect(&service).await;
    grpc.topic(TOPIC).await;
    for (name, on_stream) in [("nack-stream", true), ("nack-unary", false)] {
        let sub = grpc
            .subscription(proto::Subscription {
                enable_message_ordering: true,
                ..subscription(name)
            })
            .await;
        let (tx, mut stream) = grpc.stream(&sub.name, 0).await;
        let published: Vec<_> = (0..4).map(|i| keyed(&format!("k:{i}"), "k")).collect();
        grpc.publish(TOPIC, published).await;
        let first = receive(&mut stream, 4).await;
        let data: Vec<String> = first.iter().map(text).collect();
        assert_eq!(data, ["k:0", "k:1", "k:2", "k:3"]);
        // k:2 and k:3 acknowledged first (unary), then k:1 nacked.
        grpc.ack(
            &sub.name,
            vec![
                first[0].ack_id.clone(),
                first[2].ack_id.clone(),
                first[3].ack_id.clone(),
            ],
        )
        .await
        .expect("ack");
        if on_stream {
            tx.send(proto::StreamingPullRequest {
                modify_deadline_ack_ids: vec![first[1].ack_id.clone()],
                modify_deadline_seconds: vec![0],
                ..Default::default()
            })
            .await
            .expect("stream nack");
        } else {
            grpc.modack(&sub.name, vec![first[1].ack_id.clone()], 0)
                .await
                .expect("unary nack");
        }
        let again: Vec<String> = receive(&mut stream, 3).await.iter().map(text).collect();
        assert_eq!(
            again,
            ["k:1", "k:2", "k:3"],
            "{name}: the nacked message and the later ones, acknowledged included"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_leased_by_a_unary_pull_is_acknowledged_on_a_stream_and_vice_versa() {
    let service = service().await;
    let grpc = Grpc::connect(&service).await;
    grpc.topic(TOPIC).await;
    let sub = grpc.subscription(subscription("mixed")).await;
    grpc.publish(TOPIC, vec![keyed("pulled", "")]).await;
    let pulled = grpc.pull(&sub.name, 10).await.expect("pull");
    assert_eq!(pulled.iter().map(text).collect::<Vec<_>>(), ["pulled"]);
    let (tx, mut stream) = grpc.stream(&sub.name, 0).await;
    tx.send(proto::StreamingPullRequest {
        ack_ids: vec![pulled[0].ack_id.clone()],
        ..Default::default()
    })
    .await
    .expect("stream ack");
    grpc.publish(TOPIC, vec![keyed("streamed", "")]).await;
    let streamed = next_batch(&mut stream).await;
    assert_eq!(streamed.iter().map(text).collect::<Vec<_>>(), ["streamed"]);
    grpc.ack(&sub.name, vec![streamed[0].ack_id.clone()])
        .await
        .expect("unary ack of a streamed message");
    drop(tx);
    // Both acks took: nothing comes back, even after the 10 s lease would have ended.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    assert!(grpc.pull(&sub.name, 10).await.expect("pull").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_extension_on_either_path_keeps_the_lease() {
    let service = service().await;
    let grpc = Grpc::connect(&service).await;
    grpc.topic(TOPIC).await;
    let sub = grpc.subscription(subscription("extend")).await;
    let (tx, mut stream) = grpc.stream(&sub.name, 0).await;
    grpc.publish(TOPIC, vec![keyed("a", ""), keyed("b", "")])
        .await;
    let got = receive(&mut stream, 2).await;
    tx.send(proto::StreamingPullRequest {
        modify_deadline_ack_ids: vec![got[0].ack_id.clone()],
        modify_deadline_seconds: vec![30],
        ..Default::default()
    })
    .await
    .expect("stream extension");
    grpc.modack(&sub.name, vec![got[1].ack_id.clone()], 30)
        .await
        .expect("unary extension");
    // Past the stream's 10 s deadline: nothing redelivered.
    let quiet = tokio::time::timeout(std::time::Duration::from_secs(12), stream.message()).await;
    assert!(
        quiet.is_err(),
        "redelivered despite the extension: {quiet:?}"
    );
    grpc.ack(&sub.name, got.iter().map(|r| r.ack_id.clone()).collect())
        .await
        .expect("both still leased");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_on_either_path_count_as_attempts_until_the_dead_letter() {
    let service = service().await;
    let grpc = Grpc::connect(&service).await;
    grpc.topic(TOPIC).await;
    grpc.topic("projects/paths/topics/dead").await;
    let dead = grpc
        .subscription(proto::Subscription {
            topic: "projects/paths/topics/dead".into(),
            ..subscription("dead-inspect")
        })
        .await;
    let sub = grpc
        .subscription(proto::Subscription {
            dead_letter_policy: Some(proto::DeadLetterPolicy {
                dead_letter_topic: "projects/paths/topics/dead".into(),
                max_delivery_attempts: 5,
            }),
            ..subscription("dead-letters")
        })
        .await;
    let (tx, mut stream) = grpc.stream(&sub.name, 0).await;
    grpc.publish(TOPIC, vec![keyed("poison", "")]).await;
    for attempt in 1..=5 {
        let got = next_batch(&mut stream).await;
        assert_eq!(got[0].delivery_attempt, attempt);
        if attempt % 2 == 0 {
            grpc.modack(&sub.name, vec![got[0].ack_id.clone()], 0)
                .await
                .expect("unary nack");
        } else {
            tx.send(proto::StreamingPullRequest {
                modify_deadline_ack_ids: vec![got[0].ack_id.clone()],
                modify_deadline_seconds: vec![0],
                ..Default::default()
            })
            .await
            .expect("stream nack");
        }
    }
    let mut copy = Vec::new();
    for _ in 0..50 {
        copy = grpc.pull(&dead.name, 10).await.expect("pull");
        if !copy.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let m = copy
        .first()
        .and_then(|r| r.message.clone())
        .expect("dead-lettered");
    assert_eq!(
        m.attributes["CloudPubSubDeadLetterSourceDeliveryCount"],
        "5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ack_ids_are_refused_on_unary_calls_and_ignored_on_the_stream() {
    let service = service().await;
    let grpc = Grpc::connect(&service).await;
    grpc.topic(TOPIC).await;
    let a = grpc.subscription(subscription("ids-a")).await;
    let b = grpc.subscription(subscription("ids-b")).await;
    grpc.publish(TOPIC, vec![keyed("m", "")]).await;
    let from_b = grpc.pull(&b.name, 1).await.expect("pull b");
    for (what, ids) in [
        ("empty", vec![]),
        ("malformed", vec!["garbage".to_string()]),
        ("another subscription's", vec![from_b[0].ack_id.clone()]),
    ] {
        let ack = grpc.ack(&a.name, ids.clone()).await.expect_err(what);
        assert_eq!(ack.code(), tonic::Code::InvalidArgument, "ack, {what}");
        let modack = grpc.modack(&a.name, ids, 0).await.expect_err(what);
        assert_eq!(
            modack.code(),
            tonic::Code::InvalidArgument,
            "modack, {what}"
        );
    }
    let (tx, mut stream) = grpc.stream(&a.name, 0).await;
    tx.send(proto::StreamingPullRequest {
        ack_ids: vec!["garbage".into(), from_b[0].ack_id.clone()],
        ..Default::default()
    })
    .await
    .expect("stream ack");
    let got = next_batch(&mut stream).await;
    assert_eq!(
        got.iter().map(text).collect::<Vec<_>>(),
        ["m"],
        "the stream lives on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_reports_each_stale_ack_id() {
    let service = service().await;
    let grpc = Grpc::connect(&service).await;
    grpc.topic(TOPIC).await;
    let sub = grpc
        .subscription(proto::Subscription {
            enable_exactly_once_delivery: true,
            ..subscription("exactly-once")
        })
        .await;
    grpc.publish(TOPIC, vec![keyed("m", "")]).await;
    let got = grpc.pull(&sub.name, 1).await.expect("pull");
    grpc.ack(&sub.name, vec![got[0].ack_id.clone()])
        .await
        .expect("ack");
    let again = grpc
        .ack(&sub.name, vec![got[0].ack_id.clone()])
        .await
        .expect_err("a second ack of the same id");
    assert_eq!(again.code(), tonic::Code::InvalidArgument);
    assert!(
        !again.details().is_empty(),
        "an ErrorInfo names the failed id"
    );
}
