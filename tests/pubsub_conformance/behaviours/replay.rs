//! Replaying and purging with seek: retained acknowledged messages, topic retention, and
//! snapshots (<https://cloud.google.com/pubsub/docs/replay-overview>) — the standard way to
//! re-process events after an incident.

use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::model;
use google_cloud_wkt::Timestamp;

use super::{Behaviour, REPLAY};
use crate::scope::{Decision, Findings, Scope, Streamed, Verdict, code_of, expect_code, message};

pub fn behaviours() -> Vec<Behaviour> {
    vec![
        Behaviour {
            name: "seek::to_a_time_replays_retained_acknowledged_messages",
            expectation: "On a subscription with retain_acked_messages, seeking to a time between two acknowledged messages redelivers the later one only; seeking to before both redelivers both; seeking to the future leaves nothing to deliver",
            source: REPLAY,
            check: seek_to_time,
        },
        Behaviour {
            name: "seek::topic_retention_replays_for_a_new_subscription",
            expectation: "With message retention on the topic, a subscription created after a publish can seek to a time before it and receive the message",
            source: REPLAY,
            check: topic_retention,
        },
        Behaviour {
            name: "snapshot::restores_unacknowledged_and_later_messages",
            expectation: "A snapshot keeps the subscription's unacknowledged messages and every message published after it; seeking to it redelivers those (not the ones acknowledged before it), also on another subscription of the topic",
            source: REPLAY,
            check: snapshot_restores,
        },
        Behaviour {
            name: "snapshot::lifecycle_and_errors",
            expectation: "Snapshots are created (ALREADY_EXISTS when the name is taken, NOT_FOUND for an unknown subscription), read, listed per project and per topic, relabelled, deleted (then NOT_FOUND); seeking to another topic's snapshot fails with FAILED_PRECONDITION",
            source: REPLAY,
            check: snapshot_lifecycle,
        },
    ]
}

/// Delivers and acknowledges what the subscription has within a few quiet seconds, then
/// waits for the client's stream to be gone: a seek is eventually consistent, and messages it
/// restores that a closing stream takes are only redelivered after their lease.
async fn drain(scope: &Scope, sub: &str) -> Streamed {
    let streamed = scope
        .stream(
            sub,
            Duration::from_secs(15),
            Duration::from_secs(3),
            |_, _| Decision::Ack,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    streamed
}

fn datas(streamed: &Streamed) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for d in &streamed.deliveries {
        if !seen.contains(&d.data) {
            seen.push(d.data.clone());
        }
    }
    seen
}

async fn seek_time(scope: &Scope, sub: &str, at: Timestamp) -> Result<(), String> {
    scope
        .subscriptions()
        .seek()
        .set_subscription(sub.to_string())
        .set_time(at)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("Seek to a time: {e}"))
}

async fn seek_snapshot(
    scope: &Scope,
    sub: &str,
    snapshot: &str,
) -> Result<(), google_cloud_pubsub::Error> {
    scope
        .subscriptions()
        .seek()
        .set_subscription(sub.to_string())
        .set_snapshot(snapshot.to_string())
        .send()
        .await
        .map(|_| ())
}

/// Publishes `data` and returns the publish time the subscriber saw.
async fn publish_and_time(
    scope: &Scope,
    topic: &str,
    sub: &str,
    data: &str,
) -> Result<Timestamp, String> {
    scope.publish(topic, vec![message(data)]).await?;
    let subscriber = scope.conn.subscriber().await.map_err(|e| e.to_string())?;
    let mut stream = subscriber.subscribe(sub.to_string()).build();
    match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
        Ok(Some(Ok((m, handler)))) => {
            handler.ack();
            drop(stream);
            tokio::time::sleep(Duration::from_secs(1)).await;
            m.publish_time
                .ok_or_else(|| format!("{data} has no publish time"))
        }
        other => Err(format!(
            "receiving {data}: {:?}",
            other.map(|o| o.map(|r| r.is_ok()))
        )),
    }
}

fn midpoint(a: &Timestamp, b: &Timestamp) -> Timestamp {
    let nanos = |t: &Timestamp| t.seconds() as i128 * 1_000_000_000 + t.nanos() as i128;
    let m = (nanos(a) + nanos(b)) / 2;
    Timestamp::clamp((m / 1_000_000_000) as i64, (m % 1_000_000_000) as i32)
}

fn shifted(t: &Timestamp, seconds: i64) -> Timestamp {
    Timestamp::clamp(t.seconds() + seconds, t.nanos())
}

fn seek_to_time(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("seek-time").await?;
        let sub = scope
            .create_subscription(
                scope
                    .subscription("seek-time", "seek-time")
                    .set_retain_acked_messages(true),
            )
            .await?;
        let first = publish_and_time(scope, &topic, &sub.name, "first").await?;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let second = publish_and_time(scope, &topic, &sub.name, "second").await?;
        let mut findings = Findings::default();
        seek_time(scope, &sub.name, midpoint(&first, &second)).await?;
        let between = drain(scope, &sub.name).await;
        findings.check(datas(&between) == ["second"], || {
            format!("after seeking between the two: {:?}", datas(&between))
        });
        seek_time(scope, &sub.name, shifted(&first, -1)).await?;
        let before = drain(scope, &sub.name).await;
        findings.check(datas(&before) == ["first", "second"], || {
            format!("after seeking before both: {:?}", datas(&before))
        });
        seek_time(scope, &sub.name, shifted(&second, 3600)).await?;
        let future = drain(scope, &sub.name).await;
        findings.check(future.deliveries.is_empty(), || {
            format!("after seeking to the future: {:?}", datas(&future))
        });
        findings.verdict()
    })
}

fn topic_retention(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let path = scope.topic_path("kept");
        scope
            .topics()
            .create_topic()
            .set_name(path.clone())
            .set_message_retention_duration(google_cloud_wkt::Duration::clamp(3600, 0))
            .send()
            .await
            .map_err(|e| format!("creating a topic with retention: {e}"))?;
        scope.created_topic(&path);
        let probe = scope
            .create_subscription(scope.subscription("kept-probe", "kept"))
            .await?;
        let published = publish_and_time(scope, &path, &probe.name, "early").await?;
        let late = scope
            .create_subscription(scope.subscription("kept-late", "kept"))
            .await?;
        let mut findings = Findings::default();
        findings.check(
            late.topic_message_retention_duration
                == Some(google_cloud_wkt::Duration::clamp(3600, 0)),
            || {
                format!(
                    "topic_message_retention_duration reads {:?}, expected 3600s",
                    late.topic_message_retention_duration
                )
            },
        );
        seek_time(scope, &late.name, shifted(&published, -1)).await?;
        let replayed = drain(scope, &late.name).await;
        findings.check(datas(&replayed) == ["early"], || {
            format!(
                "the late subscription, sought to before the publish, got {:?}",
                datas(&replayed)
            )
        });
        findings.verdict()
    })
}

async fn create_snapshot(
    scope: &Scope,
    name: &str,
    sub: &str,
) -> Result<model::Snapshot, google_cloud_pubsub::Error> {
    let path = scope.snapshot_path(name);
    let created = scope
        .subscriptions()
        .create_snapshot()
        .set_name(path.clone())
        .set_subscription(sub.to_string())
        .set_labels([("purpose", "conformance")])
        .send()
        .await?;
    scope.created_snapshot(&path);
    Ok(created)
}

fn snapshot_restores(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("snap").await?;
        let sub = scope
            .create_subscription(scope.subscription("snap", "snap"))
            .await?;
        let other = scope
            .create_subscription(scope.subscription("snap-other", "snap"))
            .await?;
        scope.publish(&topic, vec![message("acked-before")]).await?;
        let before = drain(scope, &sub.name).await;
        if datas(&before) != ["acked-before"] {
            return Err(format!("the first message arrived as {:?}", datas(&before)));
        }
        scope.publish(&topic, vec![message("unacked")]).await?;
        // Give the service a moment: the snapshot must see "unacked" in the backlog.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let snap = create_snapshot(scope, "snap", &sub.name)
            .await
            .map_err(|e| format!("CreateSnapshot: {e}"))?;
        let mut findings = Findings::default();
        findings.check(snap.topic == topic, || {
            format!("the snapshot's topic is {:?}, expected {topic}", snap.topic)
        });
        scope.publish(&topic, vec![message("after")]).await?;
        let consumed = drain(scope, &sub.name).await;
        findings.check(datas(&consumed) == ["unacked", "after"], || {
            format!(
                "before the seek the subscription delivered {:?}",
                datas(&consumed)
            )
        });
        seek_snapshot(scope, &sub.name, &snap.name)
            .await
            .map_err(|e| format!("Seek to the snapshot: {e}"))?;
        let replayed = drain(scope, &sub.name).await;
        findings.check(datas(&replayed) == ["unacked", "after"], || {
            format!("after seeking to the snapshot: {:?}", datas(&replayed))
        });
        drain(scope, &other.name).await;
        seek_snapshot(scope, &other.name, &snap.name)
            .await
            .map_err(|e| format!("Seek of another subscription to the snapshot: {e}"))?;
        let copied = drain(scope, &other.name).await;
        findings.check(datas(&copied) == ["unacked", "after"], || {
            format!(
                "another subscription, sought to the snapshot, delivered {:?}",
                datas(&copied)
            )
        });
        findings.verdict()
    })
}

fn snapshot_lifecycle(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("snaplife").await?;
        let other_topic = scope.create_topic("snaplife-other").await?;
        let sub = scope
            .create_subscription(scope.subscription("snaplife", "snaplife"))
            .await?;
        let foreign = scope
            .create_subscription(scope.subscription("snaplife-foreign", "snaplife-other"))
            .await?;
        let _ = other_topic;
        let snap = create_snapshot(scope, "life", &sub.name)
            .await
            .map_err(|e| format!("CreateSnapshot: {e}"))?;
        let mut findings = Findings::default();
        findings.check(snap.expire_time.is_some(), || "no expire_time".to_string());
        findings.add(expect_code(
            "CreateSnapshot with a taken name",
            create_snapshot(scope, "life", &sub.name)
                .await
                .map_err(|e| code_of(&e)),
            Code::AlreadyExists,
        ));
        findings.add(expect_code(
            "CreateSnapshot of an unknown subscription",
            create_snapshot(scope, "orphan", &scope.subscription_path("missing"))
                .await
                .map_err(|e| code_of(&e)),
            Code::NotFound,
        ));
        let got = scope
            .subscriptions()
            .get_snapshot()
            .set_snapshot(snap.name.clone())
            .send()
            .await
            .map_err(|e| format!("GetSnapshot: {e}"))?;
        findings.check(got.topic == topic, || {
            format!("GetSnapshot's topic {:?}", got.topic)
        });
        let listed = scope
            .subscriptions()
            .list_snapshots()
            .set_project(format!("projects/{}", scope.project()))
            .send()
            .await
            .map_err(|e| format!("ListSnapshots: {e}"))?;
        findings.check(listed.snapshots.iter().any(|s| s.name == snap.name), || {
            "ListSnapshots does not list the snapshot".to_string()
        });
        let by_topic = scope
            .topics()
            .list_topic_snapshots()
            .set_topic(topic.clone())
            .send()
            .await
            .map_err(|e| format!("ListTopicSnapshots: {e}"))?;
        findings.check(by_topic.snapshots.contains(&snap.name), || {
            format!("ListTopicSnapshots gave {:?}", by_topic.snapshots)
        });
        let relabelled = scope
            .subscriptions()
            .update_snapshot()
            .set_snapshot(
                model::Snapshot::new()
                    .set_name(snap.name.clone())
                    .set_labels([("purpose", "relabelled")]),
            )
            .set_update_mask(google_cloud_wkt::FieldMask::default().set_paths(["labels"]))
            .send()
            .await;
        match relabelled {
            Ok(s) => findings.check(
                s.labels.get("purpose").map(String::as_str) == Some("relabelled"),
                || format!("UpdateSnapshot returned labels {:?}", s.labels),
            ),
            Err(e) => findings.check(false, || format!("UpdateSnapshot: {e}")),
        }
        findings.add(expect_code(
            "Seek to another topic's snapshot",
            seek_snapshot(scope, &foreign.name, &snap.name)
                .await
                .map_err(|e| code_of(&e)),
            Code::FailedPrecondition,
        ));
        scope
            .subscriptions()
            .delete_snapshot()
            .set_snapshot(snap.name.clone())
            .send()
            .await
            .map_err(|e| format!("DeleteSnapshot: {e}"))?;
        findings.add(expect_code(
            "GetSnapshot after DeleteSnapshot",
            scope
                .subscriptions()
                .get_snapshot()
                .set_snapshot(snap.name.clone())
                .send()
                .await
                .map_err(|e| code_of(&e)),
            Code::NotFound,
        ));
        findings.verdict()
    })
}
