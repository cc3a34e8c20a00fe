//! Resource limits: at the limit accepted, past it refused with the real service's code.
//! Single messages go through the official publisher; requests the official client never
//! builds (1001 messages, over 10 MB in one request) go over raw gRPC.

use std::collections::HashMap;

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::model::Message;

use super::{Behaviour, DEAD_LETTER, LIMITS, SUBSCRIPTION_API};
use crate::scope::{
    Findings, Scope, Verdict, code_of, expect_code, grpc_code, message, publish_code,
};
use crate::wire::PubsubMessage;

pub fn behaviours() -> Vec<Behaviour> {
    vec![
        Behaviour {
            name: "limits::message_size_10mb",
            expectation: "A message of just under 10 MB is accepted; a message over 10 MB is refused with INVALID_ARGUMENT",
            source: LIMITS,
            check: message_size,
        },
        Behaviour {
            name: "limits::publish_request_size_10mb",
            expectation: "A publish request over 10 MB in total (two 5.5 MB messages) is refused with INVALID_ARGUMENT",
            source: LIMITS,
            check: request_size,
        },
        Behaviour {
            name: "limits::messages_per_publish_request_1000",
            expectation: "A publish request of 1000 messages is accepted; one of 1001 is refused with INVALID_ARGUMENT",
            source: LIMITS,
            check: messages_per_request,
        },
        Behaviour {
            name: "limits::attributes_per_message_100",
            expectation: "A message with 100 attributes is accepted; one with 101 is refused with INVALID_ARGUMENT",
            source: LIMITS,
            check: attributes_per_message,
        },
        Behaviour {
            name: "limits::attribute_key_256_bytes",
            expectation: "An attribute key of 256 bytes is accepted; one of 257 bytes is refused with INVALID_ARGUMENT",
            source: LIMITS,
            check: attribute_key_size,
        },
        Behaviour {
            name: "limits::attribute_value_1024_bytes",
            expectation: "An attribute value of 1024 bytes is accepted; one of 1025 bytes is refused with INVALID_ARGUMENT",
            source: LIMITS,
            check: attribute_value_size,
        },
        Behaviour {
            name: "limits::ordering_key_1024_bytes",
            expectation: "An ordering key of 1024 bytes is accepted; one of 1025 bytes is refused with INVALID_ARGUMENT",
            source: LIMITS,
            check: ordering_key_size,
        },
        Behaviour {
            name: "limits::ack_deadline_10_to_600_seconds",
            expectation: "Subscriptions accept ack_deadline_seconds of 10 and 600; 9 and 601 are refused with INVALID_ARGUMENT",
            source: SUBSCRIPTION_API,
            check: ack_deadline_bounds,
        },
        Behaviour {
            name: "limits::max_delivery_attempts_5_to_100",
            expectation: "A dead-letter policy accepts max_delivery_attempts of 5 and 100; 4 and 101 are refused with INVALID_ARGUMENT",
            source: DEAD_LETTER,
            check: max_delivery_attempts_bounds,
        },
    ]
}

/// Publishes one message through the official client (its own publisher, so a refused message
/// pauses nothing else) and returns the service's answer.
async fn publish_one(scope: &Scope, topic: &str, m: Message) -> Result<String, Option<Code>> {
    let publisher = scope.publisher(topic).await.map_err(|_| None)?;
    match tokio::time::timeout(crate::scope::PATIENCE, publisher.publish(m)).await {
        Ok(result) => result.map_err(|e| publish_code(&e)),
        Err(_) => Err(None),
    }
}

/// The limit accepted, one past it refused with INVALID_ARGUMENT.
async fn at_and_past(scope: &Scope, what: &str, at_limit: Message, past_limit: Message) -> Verdict {
    let topic = scope.create_topic("limit").await?;
    let mut findings = Findings::default();
    match publish_one(scope, &topic, at_limit).await {
        Ok(_) => {}
        Err(code) => findings.check(false, || format!("{what} at the limit refused ({code:?})")),
    }
    findings.add(expect_code(
        &format!("{what} past the limit"),
        publish_one(scope, &topic, past_limit).await,
        Code::InvalidArgument,
    ));
    findings.verdict()
}

fn data(bytes: usize) -> Message {
    Message::new().set_data(bytes::Bytes::from(vec![b'x'; bytes]))
}

fn message_size(scope: &Scope) -> Verdict {
    // "10 MB" is 10,000,000 bytes in the documentation and 10 MiB in the service's own error
    // messages: accept below both, refuse above both.
    scope.block_on(at_and_past(
        scope,
        "a message",
        data(9_900_000),
        data(10 * 1024 * 1024 + 1024),
    ))
}

/// The real service answers INVALID_ARGUMENT ("The value for request_size is too large ...
/// the maximum value is 10000000" over gRPC, "Request payload size exceeds the limit: 10485760
/// bytes" over REST), as users report in GoogleCloudPlatform/pubsub#267 and apache/beam#19384.
fn request_size(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("reqsize").await?;
        let big = || PubsubMessage {
            data: vec![b'x'; 5_500_000],
            ..Default::default()
        };
        let result = scope.wire().publish(&topic, vec![big(), big()]).await;
        if let Err(status) = &result
            && status.message().starts_with("no answer")
        {
            return Err(format!("a publish request of 11 MB: {}", status.message()));
        }
        expect_code(
            "a publish request of 11 MB",
            result.map_err(|s| Some(grpc_code(&s))),
            Code::InvalidArgument,
        )
    })
}

fn messages_per_request(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("count").await?;
        let batch = |n: usize| -> Vec<PubsubMessage> {
            (0..n)
                .map(|i| PubsubMessage {
                    data: format!("m{i}").into_bytes(),
                    ..Default::default()
                })
                .collect()
        };
        let mut findings = Findings::default();
        match scope.wire().publish(&topic, batch(1000)).await {
            Ok(ids) => findings.check(ids.len() == 1000, || {
                format!(
                    "1000 messages published, {} message ids returned",
                    ids.len()
                )
            }),
            Err(s) => findings.check(false, || {
                format!(
                    "1000 messages in one request refused: {:?} {}",
                    grpc_code(&s),
                    s.message()
                )
            }),
        }
        findings.add(expect_code(
            "1001 messages in one request",
            scope
                .wire()
                .publish(&topic, batch(1001))
                .await
                .map_err(|s| Some(grpc_code(&s))),
            Code::InvalidArgument,
        ));
        findings.verdict()
    })
}

fn with_attributes(n: usize) -> Message {
    let attributes: HashMap<String, String> =
        (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect();
    message("m").set_attributes(attributes)
}

fn attributes_per_message(scope: &Scope) -> Verdict {
    scope.block_on(at_and_past(
        scope,
        "attributes per message",
        with_attributes(100),
        with_attributes(101),
    ))
}

fn attribute_key_size(scope: &Scope) -> Verdict {
    scope.block_on(at_and_past(
        scope,
        "an attribute key",
        message("m").set_attributes([("k".repeat(256), "v")]),
        message("m").set_attributes([("k".repeat(257), "v")]),
    ))
}

fn attribute_value_size(scope: &Scope) -> Verdict {
    scope.block_on(at_and_past(
        scope,
        "an attribute value",
        message("m").set_attributes([("k", "v".repeat(1024))]),
        message("m").set_attributes([("k", "v".repeat(1025))]),
    ))
}

fn ordering_key_size(scope: &Scope) -> Verdict {
    scope.block_on(at_and_past(
        scope,
        "an ordering key",
        message("m").set_ordering_key("o".repeat(1024)),
        message("m").set_ordering_key("o".repeat(1025)),
    ))
}

fn ack_deadline_bounds(scope: &Scope) -> Verdict {
    scope.block_on(async {
        scope.create_topic("ackbounds").await?;
        let mut findings = Findings::default();
        for seconds in [10, 600, 9, 601] {
            let result = scope
                .try_create_subscription(
                    scope
                        .subscription(&format!("ackbounds-{seconds}"), "ackbounds")
                        .set_ack_deadline_seconds(seconds),
                )
                .await;
            if (10..=600).contains(&seconds) {
                if let Err(e) = result {
                    findings.check(false, || format!("ack deadline {seconds} s refused: {e}"));
                }
            } else {
                findings.add(expect_code(
                    &format!("ack deadline {seconds} s"),
                    result.map_err(|e| code_of(&e)),
                    Code::InvalidArgument,
                ));
            }
        }
        findings.verdict()
    })
}

fn max_delivery_attempts_bounds(scope: &Scope) -> Verdict {
    use google_cloud_pubsub::model::DeadLetterPolicy;
    scope.block_on(async {
        scope.create_topic("dlbounds").await?;
        let dlq = scope.create_topic("dlbounds-dlq").await?;
        let mut findings = Findings::default();
        for attempts in [5, 100, 4, 101] {
            let result = scope
                .try_create_subscription(
                    scope
                        .subscription(&format!("dlbounds-{attempts}"), "dlbounds")
                        .set_dead_letter_policy(
                            DeadLetterPolicy::new()
                                .set_dead_letter_topic(dlq.clone())
                                .set_max_delivery_attempts(attempts),
                        ),
                )
                .await;
            if (5..=100).contains(&attempts) {
                if let Err(e) = result {
                    findings.check(false, || {
                        format!("max_delivery_attempts {attempts} refused: {e}")
                    });
                }
            } else {
                findings.add(expect_code(
                    &format!("max_delivery_attempts {attempts}"),
                    result.map_err(|e| code_of(&e)),
                    Code::InvalidArgument,
                ));
            }
        }
        findings.verdict()
    })
}
