//! Delivery: ordering, redelivery, dead-lettering, retry backoff, ack deadlines, exactly-once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use google_cloud_pubsub::model::{self, Message};
use proptest::prelude::*;

use super::{Behaviour, DEAD_LETTER, EXACTLY_ONCE, LEASES, ORDERING, property};
use crate::scope::{Decision, Findings, PATIENCE, Scope, Verdict, grpc_code, message};

pub fn behaviours() -> Vec<Behaviour> {
    vec![
        Behaviour {
            name: "ordering::per_key_publish_order",
            expectation: "On a subscription with message ordering, messages with the same ordering key are delivered in the order they were published (property: random keys and interleavings)",
            source: ORDERING,
            check: per_key_publish_order,
        },
        Behaviour {
            name: "ordering::nacked_message_redelivered_before_rest_of_key",
            expectation: "After a nack on an ordered subscription, that message is redelivered before any later message of its key, and the key then continues in order (property: random key lengths and nacked positions)",
            source: ORDERING,
            check: nacked_message_redelivered_before_rest_of_key,
        },
        Behaviour {
            name: "dead_letter::unordered_after_max_delivery_attempts",
            expectation: "With a dead-letter policy (max 5 attempts) every delivery carries delivery_attempt 1..5; after the 5th nack the message is forwarded to the dead-letter topic with CloudPubSubDeadLetterSourceDeliveryCount=5, ...SourceSubscription, ...SourceSubscriptionProject and ...SourceTopicPublishTime, data and attributes intact, and not delivered again",
            source: DEAD_LETTER,
            check: dead_letter_unordered,
        },
        Behaviour {
            name: "dead_letter::ordered_after_max_delivery_attempts_key_continues",
            expectation: "On an ordered subscription the same dead-letter policy applies: the failing message goes to the dead-letter topic with the CloudPubSubDeadLetterSource* attributes after 5 attempts, and its key's next message is delivered after that",
            source: DEAD_LETTER,
            check: dead_letter_ordered,
        },
        Behaviour {
            name: "delivery::no_delivery_attempt_without_dead_letter_policy",
            expectation: "delivery_attempt is set only on subscriptions with a dead-letter policy; without one it is absent (0)",
            source: DEAD_LETTER,
            check: no_delivery_attempt_without_dead_letter_policy,
        },
        Behaviour {
            name: "retry_policy::backoff_from_first_redelivery",
            expectation: "With a retry policy, a nacked message is redelivered after an exponential backoff between minimum_backoff and maximum_backoff, starting with the first redelivery",
            source: DEAD_LETTER,
            check: backoff_from_first_redelivery,
        },
        Behaviour {
            name: "ack_deadline::expiry_redelivers",
            expectation: "A message not acknowledged within the subscription's ack deadline is redelivered, and not before the deadline",
            source: LEASES,
            check: ack_deadline_expiry_redelivers,
        },
        Behaviour {
            name: "ack_deadline::modify_extends_and_zero_redelivers",
            expectation: "ModifyAckDeadline extends a message's deadline past the subscription's (no redelivery at the old deadline); a deadline of 0 makes it available for redelivery at once",
            source: LEASES,
            check: modify_ack_deadline,
        },
        Behaviour {
            name: "exactly_once::ack_confirmed_and_not_redelivered",
            expectation: "On an exactly-once subscription an acknowledgement returns success, and an acknowledged message is not redelivered",
            source: EXACTLY_ONCE,
            check: exactly_once_ack_confirmed,
        },
        Behaviour {
            name: "exactly_once::expired_ack_id_refused",
            expectation: "On an exactly-once subscription, acknowledging with an ack id whose deadline expired (the message was redelivered with a new one) fails; the new ack id succeeds",
            source: EXACTLY_ONCE,
            check: exactly_once_expired_ack_id_refused,
        },
    ]
}

fn keyed(data: &str, key: &str) -> Message {
    message(data).set_ordering_key(key.to_string())
}

fn seconds(s: f64) -> google_cloud_wkt::Duration {
    google_cloud_wkt::Duration::clamp(s.trunc() as i64, (s.fract() * 1e9) as i32)
}

/// `count` messages per key, interleaved in the order given by `interleave` (indexes into the
/// keys). Returns what to publish, in order.
fn keyed_sequence(per_key: &[usize], interleave: &[usize]) -> Vec<(String, String)> {
    let mut next = vec![0usize; per_key.len()];
    let mut out = Vec::new();
    let mut cursor = interleave.iter().cycle();
    let total: usize = per_key.iter().sum();
    while out.len() < total {
        let Some(&pick) = cursor.next() else { break };
        // The picked key, or the next one that still has messages.
        let key = (0..per_key.len())
            .map(|i| (pick + i) % per_key.len())
            .find(|&k| next[k] < per_key[k]);
        let Some(key) = key else { break };
        out.push((format!("k{key}"), format!("k{key}-{}", next[key])));
        next[key] += 1;
    }
    out
}

fn sequence_strategy() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(1usize..8, 1..4).prop_flat_map(|per_key| {
        let keys = per_key.len();
        (Just(per_key), prop::collection::vec(0..keys, 1..12))
    })
}

fn per_key_publish_order(scope: &Scope) -> Verdict {
    let mut case = 0;
    property(sequence_strategy(), 3, |(per_key, interleave)| {
        case += 1;
        let published = keyed_sequence(&per_key, &interleave);
        scope.block_on(async {
            let topic = scope.create_topic(&format!("order-{case}")).await?;
            let sub = scope
                .create_subscription(
                    scope
                        .subscription(&format!("order-{case}"), &format!("order-{case}"))
                        .set_enable_message_ordering(true),
                )
                .await?;
            scope
                .publish(&topic, published.iter().map(|(k, d)| keyed(d, k)).collect())
                .await?;
            let expected = published.len();
            let mut acked = 0;
            let streamed = scope
                .stream(&sub.name, PATIENCE, PATIENCE, |_, _| {
                    acked += 1;
                    if acked == expected {
                        Decision::AckAndStop
                    } else {
                        Decision::Ack
                    }
                })
                .await;
            let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for d in &streamed.deliveries {
                let seen = by_key.entry(d.ordering_key.as_str()).or_default();
                // A redelivery (at-least-once) may repeat; order is about first deliveries.
                if !seen.contains(&d.data.as_str()) {
                    seen.push(d.data.as_str());
                }
            }
            let mut findings = Findings::default();
            for (key, _) in published.iter() {
                let want: Vec<&str> = published
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, d)| d.as_str())
                    .collect();
                let got = by_key.get(key.as_str()).cloned().unwrap_or_default();
                findings.check(got == want, || {
                    format!("key {key}: delivered {got:?}, published {want:?}")
                });
            }
            findings.check(streamed.failure().is_none(), || {
                streamed.failure().unwrap_or_default()
            });
            findings.verdict().map_err(|e| {
                let mut e = e;
                e.truncate(1500);
                e
            })
        })
    })
}

fn nacked_message_redelivered_before_rest_of_key(scope: &Scope) -> Verdict {
    let strategy = (2usize..7).prop_flat_map(|len| (Just(len), 0..len - 1, 1usize..3));
    let mut case = 0;
    property(strategy, 3, |(len, nacked, nacks)| {
        case += 1;
        scope.block_on(async {
            let name = format!("nack-{case}");
            let topic = scope.create_topic(&name).await?;
            let sub = scope
                .create_subscription(
                    scope
                        .subscription(&name, &name)
                        .set_enable_message_ordering(true),
                )
                .await?;
            let published: Vec<String> = (0..len).map(|i| format!("m{i}")).collect();
            scope
                .publish(&topic, published.iter().map(|d| keyed(d, "k")).collect())
                .await?;
            let target = published[nacked].clone();
            let last = published[len - 1].clone();
            let mut nacked_times = 0;
            let mut acked: Vec<String> = Vec::new();
            // Like the backbone's worker: once a message is nacked, the key's later messages are
            // nacked too until it has been acked, so nothing is acknowledged out of order.
            let mut blocked = false;
            let streamed = scope
                .stream(&sub.name, PATIENCE, PATIENCE, |d, _| {
                    if d.data == target && nacked_times < nacks {
                        nacked_times += 1;
                        blocked = true;
                        return Decision::Nack;
                    }
                    if d.data == target {
                        blocked = false;
                    } else if blocked {
                        return Decision::Nack;
                    }
                    if !acked.contains(&d.data) {
                        acked.push(d.data.clone());
                    }
                    if acked.len() == len && d.data == last {
                        Decision::AckAndStop
                    } else {
                        Decision::Ack
                    }
                })
                .await;
            let mut findings = Findings::default();
            let datas: Vec<&str> = streamed.deliveries.iter().map(|d| d.data.as_str()).collect();
            let index_of = |d: &str| published.iter().position(|p| p == d);
            // Each nack of the target starts a new round of the key: the target first, then the
            // messages after it. So the n-th delivery of a later message must come after the
            // target's n-th (or, once the target is done, its last) delivery. Messages already in
            // flight with the target are part of the same round.
            let target_at: Vec<usize> = datas
                .iter()
                .enumerate()
                .filter(|(_, d)| **d == target)
                .map(|(i, _)| i)
                .collect();
            let mut count: HashMap<&str, usize> = HashMap::new();
            for (i, d) in datas.iter().enumerate() {
                let n = count.entry(d).or_default();
                *n += 1;
                if index_of(d) <= Some(nacked) || target_at.is_empty() {
                    continue;
                }
                let round_start = target_at[(*n).min(target_at.len()) - 1];
                if i < round_start {
                    findings.check(false, || {
                        format!(
                            "delivery {n} of {d} came before delivery {} of {target}, which had been nacked",
                            (*n).min(target_at.len())
                        )
                    });
                }
            }
            findings.check(target_at.len() == nacks + 1, || {
                format!(
                    "{target} was delivered {} times; nacked {nacks} times, it should be delivered {}",
                    target_at.len(),
                    nacks + 1
                )
            });
            // After the nacked message's last delivery the rest of the key follows, in order.
            if let Some(last_target) = datas.iter().rposition(|d| *d == target) {
                let mut after: Vec<&str> = Vec::new();
                for d in &datas[last_target + 1..] {
                    if !after.contains(d) {
                        after.push(d);
                    }
                }
                let want: Vec<&str> = published[nacked + 1..].iter().map(String::as_str).collect();
                findings.check(after == want, || {
                    format!("after {target}'s last delivery the key went on as {after:?}, expected {want:?}")
                });
            }
            findings.check(acked == published, || {
                format!("acknowledged {acked:?}; expected the whole key in order {published:?}")
            });
            findings.check(streamed.failure().is_none(), || {
                streamed.failure().unwrap_or_default()
            });
            findings
                .verdict()
                .map_err(|e| format!("{e} [{}]", streamed.summary()))
        })
    })
}

const DLQ_ATTRIBUTES: [&str; 4] = [
    "CloudPubSubDeadLetterSourceDeliveryCount",
    "CloudPubSubDeadLetterSourceSubscription",
    "CloudPubSubDeadLetterSourceSubscriptionProject",
    "CloudPubSubDeadLetterSourceTopicPublishTime",
];

/// Topic `name`, its dead-letter topic and a subscription on that (to receive what arrives).
async fn dead_letter_world(
    scope: &Scope,
    name: &str,
    ordered: bool,
) -> Result<(String, model::Subscription, String), String> {
    let topic = scope.create_topic(name).await?;
    let dlq_name = format!("{name}-dlq");
    let dlq_topic = scope.create_topic(&dlq_name).await?;
    let dlq_sub = scope
        .create_subscription(scope.subscription(&dlq_name, &dlq_name))
        .await?;
    let sub = scope
        .create_subscription(
            scope
                .subscription(name, name)
                .set_enable_message_ordering(ordered)
                .set_dead_letter_policy(
                    model::DeadLetterPolicy::new()
                        .set_dead_letter_topic(dlq_topic)
                        .set_max_delivery_attempts(5),
                ),
        )
        .await?;
    Ok((topic, sub, dlq_sub.name))
}

/// What the dead-letter subscription receives within `within`, acked.
async fn dead_lettered(scope: &Scope, dlq_sub: &str, within: Duration) -> crate::scope::Streamed {
    scope
        .stream(dlq_sub, within, within, |_, _| Decision::AckAndStop)
        .await
}

fn check_dead_letter_copy(
    scope: &Scope,
    findings: &mut Findings,
    copy: Option<&crate::scope::Delivery>,
    data: &str,
    sub_id: &str,
) {
    let Some(copy) = copy else {
        findings.check(false, || {
            format!("{data} never reached the dead-letter topic")
        });
        return;
    };
    findings.check(copy.data == data, || {
        format!(
            "the dead-letter topic received {:?}, expected {data:?}",
            copy.data
        )
    });
    for attribute in DLQ_ATTRIBUTES {
        findings.check(copy.attributes.contains_key(attribute), || {
            format!(
                "the dead-lettered copy lacks {attribute} (has {:?})",
                copy.attributes
            )
        });
    }
    let count = copy
        .attributes
        .get("CloudPubSubDeadLetterSourceDeliveryCount")
        .cloned();
    findings.check(count.as_deref() == Some("5"), || {
        format!("CloudPubSubDeadLetterSourceDeliveryCount is {count:?}, expected 5")
    });
    let source = copy
        .attributes
        .get("CloudPubSubDeadLetterSourceSubscription")
        .cloned()
        .unwrap_or_default();
    findings.check(source.ends_with(sub_id), || {
        format!("CloudPubSubDeadLetterSourceSubscription is {source:?}, expected {sub_id:?}")
    });
    let project = copy
        .attributes
        .get("CloudPubSubDeadLetterSourceSubscriptionProject")
        .cloned()
        .unwrap_or_default();
    findings.check(project == scope.project(), || {
        format!(
            "CloudPubSubDeadLetterSourceSubscriptionProject is {project:?}, expected {:?}",
            scope.project()
        )
    });
    findings.check(
        copy.attributes.get("origin").map(String::as_str) == Some("test"),
        || "the message's own attribute origin=test was not kept".to_string(),
    );
}

fn dead_letter_unordered(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let (topic, sub, dlq_sub) = dead_letter_world(scope, "dl", false).await?;
        scope
            .publish(
                &topic,
                vec![message("poison").set_attributes([("origin", "test")])],
            )
            .await?;
        let streamed = scope
            // After the 5th nack, 6 quiet seconds show that no 6th delivery comes.
            .stream(
                &sub.name,
                Duration::from_secs(40),
                Duration::from_secs(6),
                |_, _| Decision::Nack,
            )
            .await;
        let attempts: Vec<Option<i32>> = streamed.deliveries.iter().map(|d| d.attempt).collect();
        let mut findings = Findings::default();
        findings.check(attempts == (1..=5).map(Some).collect::<Vec<_>>(), || {
            format!("delivery attempts {attempts:?}; expected [1, 2, 3, 4, 5] and no more")
        });
        let copies = dead_lettered(scope, &dlq_sub, PATIENCE).await;
        check_dead_letter_copy(
            scope,
            &mut findings,
            copies.deliveries.first(),
            "poison",
            &scope.id("dl"),
        );
        findings
            .verdict()
            .map_err(|e| format!("{e} [{}]", streamed.summary()))
    })
}

fn dead_letter_ordered(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let (topic, sub, dlq_sub) = dead_letter_world(scope, "dlo", true).await?;
        scope
            .publish(
                &topic,
                vec![
                    keyed("poison", "k").set_attributes([("origin", "test")]),
                    keyed("next", "k"),
                ],
            )
            .await?;
        let streamed = scope
            .stream(&sub.name, Duration::from_secs(40), PATIENCE, |d, seen| {
                let poison_attempts = seen.iter().filter(|s| s.data == "poison").count();
                // A "next" that arrives while "poison" still has attempts left is already out of
                // order; nack it and go on, to also see whether "poison" is dead-lettered.
                if d.data == "next" && poison_attempts >= 5 {
                    Decision::AckAndStop
                } else {
                    Decision::Nack
                }
            })
            .await;
        let mut findings = Findings::default();
        let poison: Vec<Option<i32>> = streamed
            .deliveries
            .iter()
            .filter(|d| d.data == "poison")
            .map(|d| d.attempt)
            .collect();
        findings.check(poison == (1..=5).map(Some).collect::<Vec<_>>(), || {
            format!("poison delivered with attempts {poison:?}; expected [1, 2, 3, 4, 5]")
        });
        // "next" may travel with "poison" while both are outstanding; it must be delivered
        // again once "poison" is through its attempts, and that is when it is acknowledged.
        let next_at = streamed.deliveries.iter().rposition(|d| d.data == "next");
        let last_poison = streamed.deliveries.iter().rposition(|d| d.data == "poison");
        findings.check(next_at.is_some() && next_at > last_poison, || {
            "the key's next message was not delivered after the dead-lettered one".to_string()
        });
        findings.check(streamed.failure().is_none(), || {
            streamed.failure().unwrap_or_default()
        });
        let copies = dead_lettered(scope, &dlq_sub, Duration::from_secs(8)).await;
        check_dead_letter_copy(
            scope,
            &mut findings,
            copies.deliveries.first(),
            "poison",
            &scope.id("dlo"),
        );
        findings
            .verdict()
            .map_err(|e| format!("{e} [{}]", streamed.summary()))
    })
}

fn no_delivery_attempt_without_dead_letter_policy(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("plain").await?;
        let sub = scope
            .create_subscription(scope.subscription("plain", "plain"))
            .await?;
        scope.publish(&topic, vec![message("m")]).await?;
        let streamed = scope
            .stream(&sub.name, PATIENCE, PATIENCE, |_, _| Decision::AckAndStop)
            .await;
        match streamed.deliveries.first() {
            None => Err(format!("nothing delivered [{}]", streamed.summary())),
            Some(d) if d.attempt.is_none() || d.attempt == Some(0) => Ok(()),
            Some(d) => Err(format!(
                "delivery_attempt is {:?} without a dead-letter policy",
                d.attempt
            )),
        }
    })
}

fn backoff_from_first_redelivery(scope: &Scope) -> Verdict {
    const MINIMUM: f64 = 1.0;
    const MAXIMUM: f64 = 3.0;
    scope.block_on(async {
        let topic = scope.create_topic("retry").await?;
        let sub = scope
            .create_subscription(
                scope.subscription("retry", "retry").set_retry_policy(
                    model::RetryPolicy::new()
                        .set_minimum_backoff(seconds(MINIMUM))
                        .set_maximum_backoff(seconds(MAXIMUM)),
                ),
            )
            .await?;
        scope.publish(&topic, vec![message("m")]).await?;
        let mut deliveries = 0;
        let streamed = scope
            .stream(&sub.name, Duration::from_secs(25), PATIENCE, |_, _| {
                deliveries += 1;
                if deliveries == 4 {
                    Decision::AckAndStop
                } else {
                    Decision::Nack
                }
            })
            .await;
        let at: Vec<f64> = streamed
            .deliveries
            .iter()
            .map(|d| d.at.as_secs_f64())
            .collect();
        if at.len() < 4 {
            return Err(format!("expected 4 deliveries [{}]", streamed.summary()));
        }
        let gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        let mut findings = Findings::default();
        // Scheduling and the client's batching of nacks blur timings by a few hundred ms.
        for (i, gap) in gaps.iter().enumerate() {
            findings.check(*gap >= MINIMUM * 0.8, || {
                format!(
                    "redelivery {} came {gap:.2} s after the nack; minimum_backoff is {MINIMUM} s",
                    i + 1
                )
            });
            findings.check(*gap <= MAXIMUM + 2.0, || {
                format!(
                    "redelivery {} came {gap:.2} s after the nack; maximum_backoff is {MAXIMUM} s",
                    i + 1
                )
            });
        }
        findings
            .verdict()
            .map_err(|e| format!("{e} (gaps {gaps:.2?})"))
    })
}

fn ack_deadline_expiry_redelivers(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("deadline").await?;
        let sub = scope
            .create_subscription(
                scope
                    .subscription("deadline", "deadline")
                    .set_ack_deadline_seconds(10),
            )
            .await?;
        scope.publish(&topic, vec![message("m")]).await?;
        let wire = scope.wire();
        let first = wire
            .pull_some(&sub.name, PATIENCE)
            .await
            .map_err(|e| format!("pull: {e}"))?;
        let Some(first) = first.first() else {
            return Err("the message was never delivered".into());
        };
        let received = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let early = wire
            .pull_now(&sub.name, 10)
            .await
            .map_err(|e| format!("pull: {e}"))?;
        if !early.is_empty() {
            return Err(format!(
                "redelivered {:.1} s after delivery, before the 10 s ack deadline",
                received.elapsed().as_secs_f64()
            ));
        }
        let again = wire
            .pull_some(&sub.name, Duration::from_secs(12))
            .await
            .map_err(|e| format!("pull: {e}"))?;
        let waited = received.elapsed().as_secs_f64();
        let first_id = first.message.as_ref().map(|m| m.message_id.clone());
        match again.first() {
            Some(r) if r.message.as_ref().map(|m| m.message_id.clone()) == first_id => wire
                .acknowledge(&sub.name, vec![r.ack_id.clone()])
                .await
                .map_err(|e| format!("ack: {e}")),
            Some(_) => Err("a different message arrived instead of the redelivery".into()),
            None => Err(format!(
                "not redelivered {waited:.1} s after delivery (deadline 10 s)"
            )),
        }
    })
}

fn modify_ack_deadline(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("modack").await?;
        let sub = scope
            .create_subscription(
                scope
                    .subscription("modack", "modack")
                    .set_ack_deadline_seconds(10),
            )
            .await?;
        scope.publish(&topic, vec![message("m")]).await?;
        let wire = scope.wire();
        let first = wire
            .pull_some(&sub.name, PATIENCE)
            .await
            .map_err(|e| format!("pull: {e}"))?;
        let Some(first) = first.first() else {
            return Err("the message was never delivered".into());
        };
        let received = tokio::time::Instant::now();
        wire.modify_ack_deadline(&sub.name, vec![first.ack_id.clone()], 25)
            .await
            .map_err(|e| format!("ModifyAckDeadline 25 s: {e}"))?;
        tokio::time::sleep(Duration::from_secs(12)).await;
        let early = wire
            .pull_now(&sub.name, 10)
            .await
            .map_err(|e| format!("pull: {e}"))?;
        if !early.is_empty() {
            return Err(format!(
                "redelivered {:.1} s after delivery although its deadline was extended to 25 s",
                received.elapsed().as_secs_f64()
            ));
        }
        wire.modify_ack_deadline(&sub.name, vec![first.ack_id.clone()], 0)
            .await
            .map_err(|e| format!("ModifyAckDeadline 0: {e}"))?;
        let again = wire
            .pull_some(&sub.name, Duration::from_secs(5))
            .await
            .map_err(|e| format!("pull: {e}"))?;
        match again.first() {
            Some(r) => wire
                .acknowledge(&sub.name, vec![r.ack_id.clone()])
                .await
                .map_err(|e| format!("ack: {e}")),
            None => Err("not redelivered within 5 s of ModifyAckDeadline 0".into()),
        }
    })
}

fn exactly_once_subscription(scope: &Scope, name: &str) -> model::Subscription {
    scope
        .subscription(name, name)
        .set_enable_exactly_once_delivery(true)
        .set_ack_deadline_seconds(10)
}

fn exactly_once_ack_confirmed(scope: &Scope) -> Verdict {
    use google_cloud_pubsub::subscriber::handler::Handler;
    scope.block_on(async {
        let topic = scope.create_topic("eo").await?;
        let sub = scope
            .create_subscription(exactly_once_subscription(scope, "eo"))
            .await?;
        scope.publish(&topic, vec![message("m")]).await?;
        let subscriber = scope.conn.subscriber().await.map_err(|e| e.to_string())?;
        let mut stream = subscriber.subscribe(sub.name.clone()).build();
        let first = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .map_err(|_| "nothing delivered".to_string())?
            .ok_or("the stream closed")?
            .map_err(|e| format!("the streaming pull failed: {e}"))?;
        let (_, handler) = first;
        let confirmed = match handler {
            Handler::ExactlyOnce(h) => tokio::time::timeout(PATIENCE, h.confirmed_ack())
                .await
                .map_err(|_| "the ack result never came".to_string())?
                .map_err(|e| format!("the acknowledgement failed: {e}")),
            _ => Err(
                "the client saw an at-least-once delivery: the subscription does not report exactly-once"
                    .to_string(),
            ),
        };
        confirmed?;
        match tokio::time::timeout(Duration::from_secs(12), stream.next()).await {
            Err(_) => Ok(()),
            Ok(Some(Ok((m, _)))) => Err(format!(
                "redelivered ({:?}) after a confirmed acknowledgement",
                String::from_utf8_lossy(&m.data)
            )),
            Ok(Some(Err(e))) => Err(format!("the streaming pull failed after the ack: {e}")),
            Ok(None) => Ok(()),
        }
    })
}

fn exactly_once_expired_ack_id_refused(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("eox").await?;
        let sub = scope
            .create_subscription(exactly_once_subscription(scope, "eox"))
            .await?;
        scope.publish(&topic, vec![message("m")]).await?;
        let wire = scope.wire();
        let first = wire
            .pull_some(&sub.name, PATIENCE)
            .await
            .map_err(|e| format!("pull: {e}"))?;
        let stale = first
            .first()
            .ok_or("the message was never delivered")?
            .ack_id
            .clone();
        let again = wire
            .pull_some(&sub.name, Duration::from_secs(25))
            .await
            .map_err(|e| format!("pull: {e}"))?;
        let fresh = again
            .first()
            .ok_or("not redelivered after its 10 s ack deadline")?
            .ack_id
            .clone();
        let mut findings = Findings::default();
        findings.check(fresh != stale, || {
            "the redelivery carries the expired ack id".to_string()
        });
        let stale_ack = wire.acknowledge(&sub.name, vec![stale]).await;
        findings.check(stale_ack.is_err(), || {
            "acknowledging with the expired ack id succeeded".to_string()
        });
        if let Err(status) = &stale_ack {
            eprintln!(
                "    expired ack id refused with {:?}: {}",
                grpc_code(status),
                status.message()
            );
        }
        let fresh_ack = wire.acknowledge(&sub.name, vec![fresh]).await;
        findings.check(fresh_ack.is_ok(), || {
            format!("acknowledging with the current ack id failed: {fresh_ack:?}")
        });
        findings.verdict()
    })
}
