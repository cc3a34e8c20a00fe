//! The subscriber behaviours again, through Google's Python client: ordering, nack and
//! redelivery, dead-lettering, flow control, lease extension and exactly-once. That client
//! acknowledges, nacks and extends leases with unary calls while its stream is open, a path
//! the Rust client's checks do not take.

use std::collections::BTreeMap;
use std::time::Duration;

use google_cloud_pubsub::model;
use serde_json::json;

use super::{Behaviour, DEAD_LETTER, EXACTLY_ONCE, FLOW_CONTROL, LEASES, ORDERING};
use crate::python::{self, Delivery, deliveries, summary};
use crate::scope::{Findings, Scope, Verdict};

pub fn behaviours() -> Vec<Behaviour> {
    vec![
        Behaviour {
            name: "python::ordering::per_key_publish_order",
            expectation: "Messages the Python publisher sends with ordering keys reach the Python subscriber of an ordered subscription in publish order per key",
            source: ORDERING,
            check: per_key_publish_order,
        },
        Behaviour {
            name: "python::ordering::nack_redelivers_the_rest_of_the_key",
            expectation: "On an ordered subscription, a message the Python client nacks (unary ModifyAckDeadline 0 while its stream is open) is redelivered, and after it every later message of its key again, in order, acknowledged ones included",
            source: ORDERING,
            check: nack_redelivers_the_rest_of_the_key,
        },
        Behaviour {
            name: "python::delivery::nacked_message_redelivered",
            expectation: "A message the Python client nacks is delivered again",
            source: LEASES,
            check: nacked_message_redelivered,
        },
        Behaviour {
            name: "python::dead_letter::after_max_delivery_attempts",
            expectation: "Every nack from the Python client is a delivery attempt: delivery_attempt runs 1..5, and after the 5th nack the message is on the dead-letter topic with CloudPubSubDeadLetterSourceDeliveryCount=5 and its source subscription",
            source: DEAD_LETTER,
            check: dead_letter,
        },
        Behaviour {
            name: "python::flow_control::max_outstanding_messages",
            expectation: "With flow control of 2 outstanding messages, the Python client never holds more than 2 at once, and every message is processed",
            source: FLOW_CONTROL,
            check: flow_control,
        },
        Behaviour {
            name: "python::ack_deadline::lease_extended_while_processing",
            expectation: "A message whose callback runs longer than the 10 s ack deadline is not redelivered: the Python client extends its lease (unary ModifyAckDeadline)",
            source: LEASES,
            check: lease_extended,
        },
        Behaviour {
            name: "python::exactly_once::ack_confirmed_and_expired_ack_id_refused",
            expectation: "On an exactly-once subscription the Python client's ack_with_response succeeds and the message is not redelivered; acknowledging an ack id whose deadline expired fails with INVALID_ARGUMENT, the redelivery's ack id succeeds",
            source: EXACTLY_ONCE,
            check: exactly_once,
        },
    ]
}

async fn topic_and_subscription(
    scope: &Scope,
    name: &str,
    configure: impl FnOnce(model::Subscription) -> model::Subscription,
) -> Result<(String, String), String> {
    let topic = scope.create_topic(name).await?;
    let sub = scope
        .create_subscription(configure(scope.subscription(name, name)))
        .await?;
    Ok((topic, sub.name))
}

fn first_deliveries_by_key(all: &[Delivery]) -> BTreeMap<String, Vec<String>> {
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in all {
        let seen = by_key.entry(d.key.clone()).or_default();
        if !seen.contains(&d.data) {
            seen.push(d.data.clone());
        }
    }
    by_key
}

fn per_key_publish_order(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let (topic, sub) =
            topic_and_subscription(scope, "py-order", |s| s.set_enable_message_ordering(true)).await?;
        let mut published = Vec::new();
        for round in 0..5 {
            for key in ["a", "b", "c"] {
                published.push((key.to_string(), format!("{key}{round}")));
            }
        }
        let spec = json!({
            "command": "stream", "topic": topic, "subscription": sub,
            "publish": published.iter().map(|(k, d)| json!({"data": d, "key": k})).collect::<Vec<_>>(),
            "policy": {"until_acked": published.len()}, "limit": 25,
        });
        let result = python::run(scope, spec, Duration::from_secs(60)).await?;
        let all = deliveries(&result);
        let by_key = first_deliveries_by_key(&all);
        let mut findings = Findings::default();
        for key in ["a", "b", "c"] {
            let want: Vec<String> = published
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, d)| d.clone())
                .collect();
            let got = by_key.get(key).cloned().unwrap_or_default();
            findings.check(got == want, || {
                format!("key {key}: delivered {got:?}, published {want:?}")
            });
        }
        findings.verdict().map_err(|e| format!("{e} [{}]", summary(&all)))
    })
}

fn nack_redelivers_the_rest_of_the_key(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let (topic, sub) =
            topic_and_subscription(scope, "py-nack", |s| s.set_enable_message_ordering(true)).await?;
        let published: Vec<String> = (0..10).map(|i| format!("k:{i}")).collect();
        let spec = json!({
            "command": "stream", "topic": topic, "subscription": sub,
            "publish": published.iter().map(|d| json!({"data": d, "key": "k"})).collect::<Vec<_>>(),
            "policy": {"nack": {"k:3": 1}}, "limit": 30, "quiet": 4,
        });
        let result = python::run(scope, spec, Duration::from_secs(60)).await?;
        let all = deliveries(&result);
        let data: Vec<&str> = all.iter().map(|d| d.data.as_str()).collect();
        let mut findings = Findings::default();
        let nacked: Vec<usize> = data
            .iter()
            .enumerate()
            .filter(|(_, d)| **d == "k:3")
            .map(|(i, _)| i)
            .collect();
        findings.check(nacked.len() >= 2, || {
            "k:3, nacked once, was not delivered again".to_string()
        });
        if let Some(&last) = nacked.last() {
            let mut after: Vec<&str> = Vec::new();
            for d in &data[last + 1..] {
                if !after.contains(d) {
                    after.push(d);
                }
            }
            let want: Vec<&str> = published[4..].iter().map(String::as_str).collect();
            findings.check(after == want, || {
                format!("after k:3's redelivery the key went on as {after:?}; expected every later message again, in order: {want:?}")
            });
        }
        let acked: Vec<String> = result["acked"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        findings.check(acked.len() == published.len(), || {
            format!("acknowledged {acked:?}, expected all ten")
        });
        findings.verdict().map_err(|e| format!("{e} [{}]", summary(&all)))
    })
}

fn nacked_message_redelivered(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let (topic, sub) = topic_and_subscription(scope, "py-redeliver", |s| s).await?;
        let spec = json!({
            "command": "stream", "topic": topic, "subscription": sub,
            "publish": [{"data": "m"}], "policy": {"nack": {"m": 1}, "until_acked": 1}, "limit": 20,
        });
        let result = python::run(scope, spec, Duration::from_secs(60)).await?;
        let all = deliveries(&result);
        let data: Vec<&str> = all.iter().map(|d| d.data.as_str()).collect();
        if data == ["m", "m"] {
            Ok(())
        } else {
            Err(format!(
                "expected m nacked, then m again and acked [{}]",
                summary(&all)
            ))
        }
    })
}

fn dead_letter(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let dlq_topic = scope.create_topic("py-dl-dlq").await?;
        let dlq_sub = scope
            .create_subscription(scope.subscription("py-dl-dlq", "py-dl-dlq"))
            .await?;
        let (topic, sub) = topic_and_subscription(scope, "py-dl", |s| {
            s.set_dead_letter_policy(
                model::DeadLetterPolicy::new()
                    .set_dead_letter_topic(dlq_topic.clone())
                    .set_max_delivery_attempts(5),
            )
        })
        .await?;
        let spec = json!({
            "command": "stream", "topic": topic, "subscription": sub,
            "publish": [{"data": "poison", "attributes": {"origin": "test"}}],
            "policy": {"nack_all": true}, "limit": 40, "quiet": 6,
            "dead_letter_subscription": dlq_sub.name,
        });
        let result = python::run(scope, spec, Duration::from_secs(90)).await?;
        let all = deliveries(&result);
        let attempts: Vec<Option<i64>> = all.iter().map(|d| d.attempt).collect();
        let mut findings = Findings::default();
        findings.check(attempts == (1..=5).map(Some).collect::<Vec<_>>(), || {
            format!("delivery attempts {attempts:?}; expected [1, 2, 3, 4, 5] and no more")
        });
        let copy = &result["dead_letter"];
        findings.check(copy["data"] == "poison", || {
            format!("the dead-letter topic got {copy}")
        });
        findings.check(
            copy["attributes"]["CloudPubSubDeadLetterSourceDeliveryCount"] == "5",
            || format!("CloudPubSubDeadLetterSourceDeliveryCount in {copy}"),
        );
        let id = scope.id("py-dl");
        findings.check(
            copy["attributes"]["CloudPubSubDeadLetterSourceSubscription"] == id.as_str(),
            || format!("CloudPubSubDeadLetterSourceSubscription in {copy}, expected {id}"),
        );
        findings.check(copy["attributes"]["origin"] == "test", || {
            "the message's own attribute was not kept".to_string()
        });
        findings
            .verdict()
            .map_err(|e| format!("{e} [{}]", summary(&all)))
    })
}

fn flow_control(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let (topic, sub) = topic_and_subscription(scope, "py-flow", |s| s).await?;
        let published: Vec<serde_json::Value> =
            (0..6).map(|i| json!({"data": format!("m{i}")})).collect();
        let spec = json!({
            "command": "stream", "topic": topic, "subscription": sub, "publish": published,
            "policy": {"max_messages": 2, "hold_seconds": 1.0, "until_acked": 6}, "limit": 40,
        });
        let result = python::run(scope, spec, Duration::from_secs(90)).await?;
        let all = deliveries(&result);
        let mut findings = Findings::default();
        let held = result["max_holding"].as_i64().unwrap_or(-1);
        findings.check((1..=2).contains(&held), || {
            format!("up to {held} messages were held at once; flow control allows 2")
        });
        let acked = result["acked"].as_array().map_or(0, Vec::len);
        findings.check(acked == 6, || format!("{acked} of 6 messages processed"));
        findings
            .verdict()
            .map_err(|e| format!("{e} [{}]", summary(&all)))
    })
}

fn lease_extended(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let (topic, sub) =
            topic_and_subscription(scope, "py-lease", |s| s.set_ack_deadline_seconds(10)).await?;
        let spec = json!({
            "command": "stream", "topic": topic, "subscription": sub,
            "publish": [{"data": "slow"}],
            "policy": {"hold_seconds": 14.0, "until_acked": 1}, "limit": 40,
        });
        let result = python::run(scope, spec, Duration::from_secs(90)).await?;
        let all = deliveries(&result);
        if all.len() == 1 {
            Ok(())
        } else {
            Err(format!(
                "expected one delivery of a message held 14 s [{}]",
                summary(&all)
            ))
        }
    })
}

fn exactly_once(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let eo = |s: model::Subscription| {
            s.set_enable_exactly_once_delivery(true)
                .set_ack_deadline_seconds(10)
        };
        let (topic, sub) = topic_and_subscription(scope, "py-eo", eo).await?;
        let stale = scope
            .create_subscription(eo(scope.subscription("py-eo-stale", "py-eo")))
            .await?;
        let spec = json!({
            "command": "exactly_once", "topic": topic, "subscription": sub,
            "stale_subscription": stale.name, "publish": [{"data": "once"}],
        });
        let result = python::run(scope, spec, Duration::from_secs(120)).await?;
        let mut findings = Findings::default();
        findings.check(result["deliveries"] == json!(["once"]), || {
            format!(
                "delivered {}; expected once, never again after the ack",
                result["deliveries"]
            )
        });
        findings.check(result["ack"] == "SUCCESS", || {
            format!("ack_with_response gave {}", result["ack"])
        });
        findings.check(result["stale_ack"] == "INVALID_ARGUMENT", || {
            format!("the expired ack id: {}", result["stale_ack"])
        });
        findings.check(result["fresh_ack"] == "accepted", || {
            format!("the redelivery's ack id: {}", result["fresh_ack"])
        });
        findings.verdict()
    })
}
