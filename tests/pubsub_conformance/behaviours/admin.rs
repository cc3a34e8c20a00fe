//! Resource administration: error codes for unknown, existing and malformed resources, and a
//! subscription read back exactly as the Terraform configures it.

use std::collections::HashMap;

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::model;
use proptest::prelude::*;

use super::{
    Behaviour, DEAD_LETTER_POLICY, ERROR_CODES, RESOURCE_NAMES, SUBSCRIPTION_API, property,
};
use crate::scope::{
    Findings, PATIENCE, Scope, Verdict, code_of, expect_code, message, publish_code,
};

pub fn behaviours() -> Vec<Behaviour> {
    vec![
        Behaviour {
            name: "errors::unknown_resources_not_found",
            expectation: "Getting or deleting an unknown topic or subscription, publishing to an unknown topic, subscribing to an unknown topic and pulling from an unknown subscription fail with NOT_FOUND",
            source: ERROR_CODES,
            check: unknown_resources_not_found,
        },
        Behaviour {
            name: "errors::dead_letter_topic_must_exist",
            expectation: "Creating a subscription whose dead-letter topic does not exist, or updating a subscription's dead-letter policy to such a topic, fails (the page names no code; our service answers NOT_FOUND) and leaves nothing changed",
            source: DEAD_LETTER_POLICY,
            check: dead_letter_topic_must_exist,
        },
        Behaviour {
            name: "errors::existing_resources_already_exist",
            expectation: "Creating a topic or subscription that already exists fails with ALREADY_EXISTS",
            source: ERROR_CODES,
            check: existing_resources_already_exist,
        },
        Behaviour {
            name: "errors::malformed_names_invalid_argument",
            expectation: "Topic ids must start with a letter, be 3–255 characters of letters, digits and - _ . ~ + %, and not start with goog: such names are accepted, others refused with INVALID_ARGUMENT (property: random valid and invalid ids)",
            source: RESOURCE_NAMES,
            check: malformed_names_invalid_argument,
        },
        Behaviour {
            name: "admin::subscription_reads_back_every_terraform_field",
            expectation: "A subscription created with the fields the backbone's Terraform sets (topic, filter, labels, message ordering, ack deadline, retry policy, dead-letter policy, no expiration, retention, retain_acked_messages) reads back with each of them as set",
            source: SUBSCRIPTION_API,
            check: subscription_reads_back_every_terraform_field,
        },
    ]
}

fn unknown_resources_not_found(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let mut findings = Findings::default();
        let topic = scope.topic_path("missing");
        let sub = scope.subscription_path("missing");
        findings.add(expect_code(
            "get an unknown topic",
            scope
                .topics()
                .get_topic()
                .set_topic(topic.clone())
                .send()
                .await
                .map_err(|e| code_of(&e)),
            Code::NotFound,
        ));
        findings.add(expect_code(
            "delete an unknown topic",
            scope
                .topics()
                .delete_topic()
                .set_topic(topic.clone())
                .send()
                .await
                .map_err(|e| code_of(&e)),
            Code::NotFound,
        ));
        findings.add(expect_code(
            "get an unknown subscription",
            scope
                .subscriptions()
                .get_subscription()
                .set_subscription(sub.clone())
                .send()
                .await
                .map_err(|e| code_of(&e)),
            Code::NotFound,
        ));
        findings.add(expect_code(
            "delete an unknown subscription",
            scope
                .subscriptions()
                .delete_subscription()
                .set_subscription(sub.clone())
                .send()
                .await
                .map_err(|e| code_of(&e)),
            Code::NotFound,
        ));
        findings.add(expect_code(
            "subscribe to an unknown topic",
            scope
                .try_create_subscription(scope.subscription("orphan", "missing"))
                .await
                .map_err(|e| code_of(&e)),
            Code::NotFound,
        ));
        let published = match scope.publisher(&topic).await {
            Ok(p) => match tokio::time::timeout(PATIENCE, p.publish(message("m"))).await {
                Ok(r) => r.map_err(|e| publish_code(&e)),
                Err(_) => Err(None),
            },
            Err(_) => Err(None),
        };
        findings.add(expect_code(
            "publish to an unknown topic",
            published,
            Code::NotFound,
        ));
        let pulled = scope.wire().pull_now(&sub, 1).await;
        findings.add(expect_code(
            "pull from an unknown subscription",
            match pulled {
                Ok(m) if m.is_empty() => Err(None),
                Ok(m) => Ok(m),
                Err(s) => Err(Some(crate::scope::grpc_code(&s))),
            },
            Code::NotFound,
        ));
        findings.verdict()
    })
}

fn dead_letter_topic_must_exist(scope: &Scope) -> Verdict {
    scope.block_on(async {
        scope.create_topic("dlt-source").await?;
        let missing = scope.topic_path("dlt-missing");
        let policy = model::DeadLetterPolicy::new()
            .set_dead_letter_topic(missing.clone())
            .set_max_delivery_attempts(5);
        let mut findings = Findings::default();
        let created = scope
            .try_create_subscription(
                scope
                    .subscription("dlt-new", "dlt-source")
                    .set_dead_letter_policy(policy.clone()),
            )
            .await;
        findings.check(created.is_err(), || {
            format!("a subscription dead-lettering to {missing}, which does not exist, was created")
        });
        let existing = scope
            .create_subscription(scope.subscription("dlt-existing", "dlt-source"))
            .await?;
        let updated = scope
            .subscriptions()
            .update_subscription()
            .set_subscription(existing.clone().set_dead_letter_policy(policy))
            .set_update_mask(
                google_cloud_wkt::FieldMask::default().set_paths(["dead_letter_policy"]),
            )
            .send()
            .await;
        findings.check(updated.is_err(), || {
            format!("an update to dead-letter to {missing}, which does not exist, was accepted")
        });
        let read_back = scope
            .subscriptions()
            .get_subscription()
            .set_subscription(existing.name.clone())
            .send()
            .await
            .map_err(|e| format!("reading the subscription back: {e}"))?;
        findings.check(read_back.dead_letter_policy.is_none(), || {
            format!(
                "after the refused update the subscription reads back with {:?}",
                read_back.dead_letter_policy
            )
        });
        findings.verdict()
    })
}

fn existing_resources_already_exist(scope: &Scope) -> Verdict {
    scope.block_on(async {
        scope.create_topic("twice").await?;
        scope
            .create_subscription(scope.subscription("twice", "twice"))
            .await?;
        let mut findings = Findings::default();
        findings.add(expect_code(
            "create an existing topic",
            scope
                .topics()
                .create_topic()
                .set_name(scope.topic_path("twice"))
                .send()
                .await
                .map_err(|e| code_of(&e)),
            Code::AlreadyExists,
        ));
        findings.add(expect_code(
            "create an existing subscription",
            scope
                .subscriptions()
                .create_subscription()
                .with_request(scope.subscription("twice", "twice"))
                .send()
                .await
                .map_err(|e| code_of(&e)),
            Code::AlreadyExists,
        ));
        findings.verdict()
    })
}

#[derive(Debug, Clone)]
enum TopicId {
    Valid(String),
    Invalid(&'static str, String),
}

fn topic_id_strategy() -> impl Strategy<Value = TopicId> {
    prop_oneof![
        "[a-zA-Z][a-zA-Z0-9._~+-]{2,40}"
            .prop_filter("goog is reserved", |s| !s
                .to_lowercase()
                .starts_with("goog"))
            .prop_map(TopicId::Valid),
        "[a-z]{1,2}".prop_map(|s| TopicId::Invalid("shorter than 3", s)),
        "[0-9][a-z]{3,8}".prop_map(|s| TopicId::Invalid("starts with a digit", s)),
        "goog[a-z]{0,6}".prop_map(|s| TopicId::Invalid("starts with goog", s)),
        "[a-z]{256,270}".prop_map(|s| TopicId::Invalid("longer than 255", s)),
        "[a-z]{3,6}[!*@$,;][a-z]{1,4}".prop_map(|s| TopicId::Invalid("a forbidden character", s)),
    ]
}

fn malformed_names_invalid_argument(scope: &Scope) -> Verdict {
    property(prop::collection::vec(topic_id_strategy(), 8), 2, |ids| {
        scope.block_on(async {
            let mut findings = Findings::default();
            for id in ids {
                let (name, why) = match &id {
                    // In a shared real project, valid ids carry the check's unique prefix.
                    TopicId::Valid(n) if !scope.implementation.is_local() => (scope.id(n), None),
                    TopicId::Valid(n) => (n.clone(), None),
                    TopicId::Invalid(why, n) => (n.clone(), Some(*why)),
                };
                let path = scope.conn.topic_path(&name);
                let result = scope
                    .topics()
                    .create_topic()
                    .set_name(path.clone())
                    .send()
                    .await;
                let shown: String = name.chars().take(30).collect();
                // Against real GCP the suite removes whatever it made, refused or not.
                if !scope.implementation.is_local() && result.is_ok() {
                    let _ = scope.topics().delete_topic().set_topic(path).send().await;
                }
                match why {
                    None => {
                        if let Err(e) = &result {
                            findings.check(false, || format!("valid id {shown:?} refused: {e}"));
                        }
                    }
                    Some(why) => findings.add(expect_code(
                        &format!("id {shown:?} ({why})"),
                        result.map_err(|e| code_of(&e)),
                        Code::InvalidArgument,
                    )),
                }
            }
            findings.verdict()
        })
    })
}

fn subscription_reads_back_every_terraform_field(scope: &Scope) -> Verdict {
    let strategy = (
        10i32..=600,
        1i64..60,
        60i64..600,
        5i32..=100,
        600i64..604_800,
    );
    let mut case = 0;
    property(
        strategy,
        1,
        |(ack, min_backoff, max_backoff, attempts, retention)| {
            case += 1;
            scope.block_on(async {
                let name = format!("readback-{case}");
                scope.create_topic(&name).await?;
                let dlq = scope.create_topic(&format!("{name}-dlq")).await?;
                let labels = HashMap::from([
                    ("environment".to_string(), "dev".to_string()),
                    ("managed-by".to_string(), "terraform".to_string()),
                ]);
                let wanted = scope
                    .subscription(&name, &name)
                    .set_filter("NOT attributes:rig_probe")
                    .set_labels(labels.clone())
                    .set_enable_message_ordering(true)
                    .set_ack_deadline_seconds(ack)
                    .set_retry_policy(
                        model::RetryPolicy::new()
                            .set_minimum_backoff(google_cloud_wkt::Duration::clamp(min_backoff, 0))
                            .set_maximum_backoff(google_cloud_wkt::Duration::clamp(max_backoff, 0)),
                    )
                    .set_dead_letter_policy(
                        model::DeadLetterPolicy::new()
                            .set_dead_letter_topic(dlq.clone())
                            .set_max_delivery_attempts(attempts),
                    )
                    .set_expiration_policy(model::ExpirationPolicy::new())
                    .set_message_retention_duration(google_cloud_wkt::Duration::clamp(retention, 0))
                    .set_retain_acked_messages(false);
                scope.create_subscription(wanted.clone()).await?;
                let got = scope
                    .subscriptions()
                    .get_subscription()
                    .set_subscription(wanted.name.clone())
                    .send()
                    .await
                    .map_err(|e| format!("reading {} back: {e}", wanted.name))?;
                let mut findings = Findings::default();
                let mut same = |field: &str, want: String, have: String| {
                    findings.check(want == have, || {
                        format!("{field}: set {want}, read back {have}")
                    });
                };
                same("topic", wanted.topic.clone(), got.topic.clone());
                same("filter", wanted.filter.clone(), got.filter.clone());
                same(
                    "labels",
                    format!("{:?}", sorted(&labels)),
                    format!("{:?}", sorted(&got.labels)),
                );
                same(
                    "enable_message_ordering",
                    "true".into(),
                    got.enable_message_ordering.to_string(),
                );
                same(
                    "ack_deadline_seconds",
                    ack.to_string(),
                    got.ack_deadline_seconds.to_string(),
                );
                same(
                    "retry_policy",
                    format!("{:?}", wanted.retry_policy),
                    format!("{:?}", got.retry_policy),
                );
                same(
                    "dead_letter_policy",
                    format!("{:?}", wanted.dead_letter_policy),
                    format!("{:?}", got.dead_letter_policy),
                );
                // No TTL: the subscription never expires. Absent altogether means the default,
                // expiry after 31 days of inactivity.
                same(
                    "expiration_policy",
                    "Some(no ttl)".into(),
                    match &got.expiration_policy {
                        Some(p) if p.ttl.is_none() => "Some(no ttl)".into(),
                        other => format!("{other:?}"),
                    },
                );
                same(
                    "message_retention_duration",
                    format!("{:?}", wanted.message_retention_duration),
                    format!("{:?}", got.message_retention_duration),
                );
                same(
                    "retain_acked_messages",
                    "false".into(),
                    got.retain_acked_messages.to_string(),
                );
                findings.verdict()
            })
        },
    )
}

fn sorted(map: &HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut pairs: Vec<_> = map.iter().collect();
    pairs.sort();
    pairs
}
