//! How a message's delivery attempt is counted: "1 + (number of NACKs) + (number of
//! ack_deadline exceeds) for this message" (`ReceivedMessage.delivery_attempt`,
//! <https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1#receivedmessage>).
//! On an ordered subscription a later message of a key is redelivered whenever an earlier one
//! fails (<https://cloud.google.com/pubsub/docs/ordering>); those redeliveries are no failure
//! of its own and must not raise its attempt — nor bring it nearer the dead-letter policy.

mod common;

use common::{Grpc, keyed, service, text};
use pubsub_service::proto;

const TOPIC: &str = "projects/attempts/topics/orders";
const DLQ: &str = "projects/attempts/topics/orders-dlq";

/// Found by `rig verify`: a PHP worker saw a valid event's fifth attempt after four
/// redeliveries behind Pub/Sub duplicates, and gave it up, when the service counted every
/// delivery of `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_redelivered_behind_an_earlier_failure_keeps_its_attempt() {
    let service = service().await;
    let grpc = Grpc::connect(&service).await;
    grpc.topic(TOPIC).await;
    grpc.topic(DLQ).await;
    let sub = grpc
        .subscription(proto::Subscription {
            name: "projects/attempts/subscriptions/worker".into(),
            topic: TOPIC.into(),
            enable_message_ordering: true,
            dead_letter_policy: Some(proto::DeadLetterPolicy {
                dead_letter_topic: DLQ.into(),
                max_delivery_attempts: 5,
            }),
            ..Default::default()
        })
        .await;
    grpc.publish(TOPIC, vec![keyed("a", "k"), keyed("b", "k")])
        .await;
    // `a` fails four times; each failure sends `b` back too.
    for round in 1..=4 {
        let got = grpc.pull(&sub.name, 10).await.expect("pull");
        assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(got[0].delivery_attempt, round, "a's attempt");
        grpc.modack(&sub.name, vec![got[0].ack_id.clone()], 0)
            .await
            .expect("nack a");
    }
    let got = grpc.pull(&sub.name, 10).await.expect("pull");
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(got[0].delivery_attempt, 5, "a failed four times");
    assert_eq!(
        got[1].delivery_attempt, 1,
        "b was never nacked and never outlived its deadline: its attempt is still 1"
    );
}
