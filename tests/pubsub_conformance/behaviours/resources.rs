//! Resources as the API reports them: defaults, retention bounds, detaching, fan-out, and what
//! publishing assigns.

use std::collections::HashSet;
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::model;

use super::{Behaviour, DETACH, PUBLISHER, SUBSCRIBER, SUBSCRIPTION_API, TOPIC_API};
use crate::scope::{
    Decision, Findings, PATIENCE, Scope, Verdict, code_of, expect_code, grpc_code, message,
};

pub fn behaviours() -> Vec<Behaviour> {
    vec![
        Behaviour {
            name: "admin::defaults_reported",
            expectation: "A topic and a subscription created without options read back ACTIVE, with the documented defaults: ack deadline 10 s, retention 7 days, expiration after 31 days of inactivity",
            source: SUBSCRIPTION_API,
            check: defaults_reported,
        },
        Behaviour {
            name: "retention::bounds_10_minutes_to_31_days",
            expectation: "message_retention_duration of 10 minutes and of 31 days is accepted on topics and subscriptions; 599 s and 31 days + 1 s are refused with INVALID_ARGUMENT",
            source: TOPIC_API,
            check: retention_bounds,
        },
        Behaviour {
            name: "detach::detached_subscription_gets_nothing",
            expectation: "After DetachSubscription the subscription reads back detached, is no longer listed under its topic, and Pull fails with FAILED_PRECONDITION, also for messages published later",
            source: DETACH,
            check: detached,
        },
        Behaviour {
            name: "fan_out::each_subscription_gets_a_copy_and_later_ones_start_empty",
            expectation: "Every subscription of a topic receives each message published after it was created; a subscription created after a publish does not receive that message",
            source: SUBSCRIBER,
            check: fan_out,
        },
        Behaviour {
            name: "publish::ids_unique_and_publish_time_set",
            expectation: "Publishing returns a distinct message id per message, and the delivered message carries that id and a publish time",
            source: PUBLISHER,
            check: ids_and_publish_time,
        },
    ]
}

fn seconds(s: i64) -> google_cloud_wkt::Duration {
    google_cloud_wkt::Duration::clamp(s, 0)
}

fn defaults_reported(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("defaults").await?;
        let created = scope
            .create_subscription(scope.subscription("defaults", "defaults"))
            .await?;
        let got = scope
            .subscriptions()
            .get_subscription()
            .set_subscription(created.name.clone())
            .send()
            .await
            .map_err(|e| format!("reading the subscription back: {e}"))?;
        let t = scope
            .topics()
            .get_topic()
            .set_topic(topic)
            .send()
            .await
            .map_err(|e| format!("reading the topic back: {e}"))?;
        let mut findings = Findings::default();
        findings.check(t.state == model::topic::State::Active, || {
            format!("topic state {:?}, expected ACTIVE", t.state)
        });
        findings.check(got.state == model::subscription::State::Active, || {
            format!("subscription state {:?}, expected ACTIVE", got.state)
        });
        findings.check(got.ack_deadline_seconds == 10, || {
            format!("ack deadline {} s, expected 10", got.ack_deadline_seconds)
        });
        findings.check(
            got.message_retention_duration == Some(seconds(7 * 24 * 3600)),
            || {
                format!(
                    "retention {:?}, expected 7 days",
                    got.message_retention_duration
                )
            },
        );
        let ttl = got.expiration_policy.as_ref().and_then(|p| p.ttl);
        findings.check(ttl == Some(seconds(31 * 24 * 3600)), || {
            format!(
                "expiration policy {:?}, expected a ttl of 31 days",
                got.expiration_policy
            )
        });
        findings.verdict()
    })
}

fn retention_bounds(scope: &Scope) -> Verdict {
    scope.block_on(async {
        scope.create_topic("retention").await?;
        let mut findings = Findings::default();
        for (label, secs, ok) in [
            ("599s", 599, false),
            ("10min", 600, true),
            ("31d", 31 * 24 * 3600, true),
            ("31d1s", 31 * 24 * 3600 + 1, false),
        ] {
            let path = scope.topic_path(&format!("retention-{label}"));
            let topic = scope
                .topics()
                .create_topic()
                .set_name(path.clone())
                .set_message_retention_duration(seconds(secs))
                .send()
                .await;
            if topic.is_ok() {
                scope.created_topic(&path);
            }
            let sub = scope
                .try_create_subscription(
                    scope
                        .subscription(&format!("retention-{label}"), "retention")
                        .set_message_retention_duration(seconds(secs)),
                )
                .await;
            if ok {
                findings.check(topic.is_ok(), || {
                    format!(
                        "topic retention {secs}s refused: {:?}",
                        topic.as_ref().err()
                    )
                });
                findings.check(sub.is_ok(), || {
                    format!(
                        "subscription retention {secs}s refused: {:?}",
                        sub.as_ref().err()
                    )
                });
            } else {
                findings.add(expect_code(
                    &format!("topic retention {secs}s"),
                    topic.map_err(|e| code_of(&e)),
                    Code::InvalidArgument,
                ));
                findings.add(expect_code(
                    &format!("subscription retention {secs}s"),
                    sub.map_err(|e| code_of(&e)),
                    Code::InvalidArgument,
                ));
            }
        }
        findings.verdict()
    })
}

fn detached(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("detach").await?;
        let sub = scope
            .create_subscription(scope.subscription("detach", "detach"))
            .await?;
        scope.publish(&topic, vec![message("before")]).await?;
        scope
            .topics()
            .detach_subscription()
            .set_subscription(sub.name.clone())
            .send()
            .await
            .map_err(|e| format!("DetachSubscription: {e}"))?;
        let mut findings = Findings::default();
        let got = scope
            .subscriptions()
            .get_subscription()
            .set_subscription(sub.name.clone())
            .send()
            .await
            .map_err(|e| format!("reading the subscription back: {e}"))?;
        findings.check(got.detached, || "detached reads back false".to_string());
        let listed = scope
            .topics()
            .list_topic_subscriptions()
            .set_topic(topic.clone())
            .send()
            .await
            .map_err(|e| format!("ListTopicSubscriptions: {e}"))?;
        findings.check(!listed.subscriptions.contains(&sub.name), || {
            "the topic still lists the detached subscription".to_string()
        });
        scope.publish(&topic, vec![message("after")]).await?;
        let pulled = scope.wire().pull_now(&sub.name, 10).await;
        findings.add(expect_code(
            "Pull from a detached subscription",
            pulled.map_err(|s| Some(grpc_code(&s))),
            Code::FailedPrecondition,
        ));
        findings.verdict()
    })
}

fn fan_out(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("fan").await?;
        let a = scope
            .create_subscription(scope.subscription("fan-a", "fan"))
            .await?;
        let b = scope
            .create_subscription(scope.subscription("fan-b", "fan"))
            .await?;
        scope.publish(&topic, vec![message("first")]).await?;
        let late = scope
            .create_subscription(scope.subscription("fan-late", "fan"))
            .await?;
        scope.publish(&topic, vec![message("second")]).await?;
        let mut findings = Findings::default();
        for (sub, want) in [
            (&a, vec!["first", "second"]),
            (&b, vec!["first", "second"]),
            (&late, vec!["second"]),
        ] {
            let streamed = scope
                .stream(&sub.name, PATIENCE, Duration::from_secs(3), |_, _| {
                    Decision::Ack
                })
                .await;
            let mut got: Vec<String> = streamed.deliveries.iter().map(|d| d.data.clone()).collect();
            got.sort();
            got.dedup();
            let mut want: Vec<String> = want.into_iter().map(str::to_string).collect();
            want.sort();
            findings.check(got == want, || {
                format!("{} received {got:?}, expected {want:?}", sub.name)
            });
        }
        findings.verdict()
    })
}

fn ids_and_publish_time(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("ids").await?;
        let sub = scope
            .create_subscription(scope.subscription("ids", "ids"))
            .await?;
        let ids = scope
            .publish(&topic, (0..3).map(|i| message(&format!("m{i}"))).collect())
            .await?;
        let mut findings = Findings::default();
        let distinct: HashSet<&String> = ids.iter().collect();
        findings.check(
            distinct.len() == 3 && ids.iter().all(|i| !i.is_empty()),
            || format!("message ids {ids:?}"),
        );
        let subscriber = scope.conn.subscriber().await.map_err(|e| e.to_string())?;
        let mut stream = subscriber.subscribe(sub.name.clone()).build();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match tokio::time::timeout(PATIENCE, stream.next()).await {
                Ok(Some(Ok((m, handler)))) => {
                    findings.check(m.publish_time.is_some(), || {
                        format!("message {} has no publish time", m.message_id)
                    });
                    seen.push(m.message_id.clone());
                    handler.ack();
                }
                other => {
                    findings.check(false, || {
                        format!("receiving: {:?}", other.map(|o| o.map(|r| r.is_ok())))
                    });
                    break;
                }
            }
        }
        seen.sort();
        let mut want = ids.clone();
        want.sort();
        findings.check(seen == want, || {
            format!("delivered ids {seen:?}, published {want:?}")
        });
        findings.verdict()
    })
}
