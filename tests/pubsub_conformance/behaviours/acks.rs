//! Acknowledgements and what they release: consistent redelivery on ordered keys, keys held by
//! a unary Pull, flow control, and the ack ids a subscription accepts.

use std::time::Duration;

use google_cloud_gax::error::rpc::Code;

use super::{ACKNOWLEDGE_REQUEST, Behaviour, FLOW_CONTROL, ORDERING};
use crate::scope::{Findings, PATIENCE, Scope, Verdict, expect_code, grpc_code, message};
use crate::wire::ReceivedMessage;

pub fn behaviours() -> Vec<Behaviour> {
    vec![
        Behaviour {
            name: "ordering::redelivery_includes_later_acknowledged_messages",
            expectation: "On an ordered subscription, when a message is nacked after later messages of its key were acknowledged, it is redelivered and so is every later message of its key, acknowledged ones included, in order (unary Pull, Acknowledge, ModifyAckDeadline 0)",
            source: ORDERING,
            check: redelivery_includes_later_acknowledged,
        },
        Behaviour {
            name: "ordering::unary_pull_holds_the_key_while_outstanding",
            expectation: "On an ordered subscription pulled with unary Pull, no Pull gets a key's next message while an earlier one is outstanding; once it is acknowledged the next comes",
            source: ORDERING,
            check: unary_pull_holds_the_key,
        },
        Behaviour {
            name: "flow_control::max_outstanding_messages",
            expectation: "A streaming subscriber with flow control of 2 outstanding messages receives 2 and no more until it acknowledges one; then the next arrives",
            source: FLOW_CONTROL,
            check: flow_control,
        },
        Behaviour {
            name: "acknowledge::invalid_ack_ids_refused",
            expectation: "Acknowledge and ModifyAckDeadline with no ack ids, a malformed ack id, or another subscription's ack id fail with INVALID_ARGUMENT",
            source: ACKNOWLEDGE_REQUEST,
            check: invalid_ack_ids_refused,
        },
    ]
}

fn keyed(data: &str, key: &str) -> crate::wire::PubsubMessage {
    crate::wire::PubsubMessage {
        data: data.as_bytes().to_vec(),
        attributes: Default::default(),
        message_id: String::new(),
        ordering_key: key.to_string(),
    }
}

fn text(r: &ReceivedMessage) -> String {
    r.message
        .as_ref()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .unwrap_or_default()
}

/// Pulls until `count` messages arrived or `within` passed.
async fn pull_count(
    scope: &Scope,
    sub: &str,
    count: usize,
    within: Duration,
) -> Result<Vec<ReceivedMessage>, String> {
    let until = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < count && tokio::time::Instant::now() < until {
        let more = scope
            .wire()
            .pull_now(sub, 100)
            .await
            .map_err(|e| format!("pull: {e}"))?;
        if more.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        got.extend(more);
    }
    Ok(got)
}

fn redelivery_includes_later_acknowledged(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("consistent").await?;
        let sub = scope
            .create_subscription(
                scope
                    .subscription("consistent", "consistent")
                    .set_enable_message_ordering(true),
            )
            .await?;
        let published: Vec<String> = (0..4).map(|i| format!("k:{i}")).collect();
        scope
            .wire()
            .publish(&topic, published.iter().map(|d| keyed(d, "k")).collect())
            .await
            .map_err(|e| format!("publish: {e}"))?;
        let first = pull_count(scope, &sub.name, 4, PATIENCE).await?;
        let data: Vec<String> = first.iter().map(text).collect();
        if data != published {
            return Err(format!("first delivery {data:?}, published {published:?}"));
        }
        let id = |i: usize| first[i].ack_id.clone();
        scope
            .wire()
            .acknowledge(&sub.name, vec![id(0), id(2), id(3)])
            .await
            .map_err(|e| format!("ack: {e}"))?;
        scope
            .wire()
            .modify_ack_deadline(&sub.name, vec![id(1)], 0)
            .await
            .map_err(|e| format!("nack: {e}"))?;
        let again = pull_count(scope, &sub.name, 3, Duration::from_secs(8)).await?;
        let mut seen: Vec<String> = Vec::new();
        for d in again.iter().map(text) {
            if !seen.contains(&d) {
                seen.push(d);
            }
        }
        let ids: Vec<String> = again.iter().map(|r| r.ack_id.clone()).collect();
        if !ids.is_empty() {
            let _ = scope.wire().acknowledge(&sub.name, ids).await;
        }
        let want = ["k:1", "k:2", "k:3"];
        if seen == want {
            Ok(())
        } else {
            Err(format!(
                "after nacking k:1 (k:2 and k:3 acknowledged) the key came back as {seen:?}; expected {want:?}"
            ))
        }
    })
}

fn unary_pull_holds_the_key(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("held").await?;
        let sub = scope
            .create_subscription(
                scope
                    .subscription("held", "held")
                    .set_enable_message_ordering(true),
            )
            .await?;
        scope
            .wire()
            .publish(
                &topic,
                vec![keyed("d1", "d"), keyed("d2", "d"), keyed("d3", "d")],
            )
            .await
            .map_err(|e| format!("publish: {e}"))?;
        let mut first = Vec::new();
        let until = tokio::time::Instant::now() + PATIENCE;
        while first.is_empty() && tokio::time::Instant::now() < until {
            first = scope
                .wire()
                .pull_now(&sub.name, 1)
                .await
                .map_err(|e| format!("pull: {e}"))?;
            if first.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let mut findings = Findings::default();
        findings.check(first.iter().map(text).collect::<Vec<_>>() == ["d1"], || {
            format!(
                "the first pull of one got {:?}",
                first.iter().map(text).collect::<Vec<_>>()
            )
        });
        let during = scope
            .wire()
            .pull_now(&sub.name, 10)
            .await
            .map_err(|e| format!("pull: {e}"))?;
        findings.check(during.is_empty(), || {
            format!(
                "while d1 was outstanding another pull got {:?}",
                during.iter().map(text).collect::<Vec<_>>()
            )
        });
        if let Some(f) = first.first() {
            scope
                .wire()
                .acknowledge(&sub.name, vec![f.ack_id.clone()])
                .await
                .map_err(|e| format!("ack: {e}"))?;
        }
        let after = pull_count(scope, &sub.name, 1, PATIENCE).await?;
        findings.check(after.first().map(text).as_deref() == Some("d2"), || {
            format!(
                "after d1's ack the key went on with {:?}",
                after.iter().map(text).collect::<Vec<_>>()
            )
        });
        findings.verdict()
    })
}

fn flow_control(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("flow").await?;
        let sub = scope
            .create_subscription(scope.subscription("flow", "flow"))
            .await?;
        scope
            .publish(&topic, (0..5).map(|i| message(&format!("m{i}"))).collect())
            .await?;
        let subscriber = scope.conn.subscriber().await.map_err(|e| e.to_string())?;
        let mut stream = subscriber
            .subscribe(sub.name.clone())
            .set_max_outstanding_messages(2)
            .build();
        let mut held = Vec::new();
        let window = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let left = window.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, stream.next()).await {
                Err(_) => break,
                Ok(Some(Ok((m, handler)))) => held.push((m, handler)),
                Ok(Some(Err(e))) => return Err(format!("the streaming pull failed: {e}")),
                Ok(None) => return Err("the stream closed".into()),
            }
        }
        let mut findings = Findings::default();
        findings.check(held.len() == 2, || {
            format!(
                "{} messages arrived unacknowledged with flow control of 2",
                held.len()
            )
        });
        if let Some((_, handler)) = held.pop() {
            handler.ack();
        }
        let next = tokio::time::timeout(PATIENCE, stream.next()).await;
        findings.check(matches!(next, Ok(Some(Ok(_)))), || {
            "no further message arrived after one was acknowledged".to_string()
        });
        for (_, handler) in held {
            handler.ack();
        }
        if let Ok(Some(Ok((_, handler)))) = next {
            handler.ack();
        }
        findings.verdict()
    })
}

fn invalid_ack_ids_refused(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("ackids").await?;
        let sub = scope
            .create_subscription(scope.subscription("ackids", "ackids"))
            .await?;
        let other = scope
            .create_subscription(scope.subscription("ackids-other", "ackids"))
            .await?;
        scope.publish(&topic, vec![message("m")]).await?;
        let foreign = pull_count(scope, &other.name, 1, PATIENCE).await?;
        let foreign = foreign
            .first()
            .map(|r| r.ack_id.clone())
            .ok_or("nothing delivered on the other subscription")?;
        let mut findings = Findings::default();
        for (what, ids) in [
            ("no ack ids", vec![]),
            ("a malformed ack id", vec!["not-an-ack-id!".to_string()]),
            ("another subscription's ack id", vec![foreign.clone()]),
        ] {
            let ack = scope.wire().acknowledge(&sub.name, ids.clone()).await;
            findings.add(expect_code(
                &format!("Acknowledge with {what}"),
                ack.map_err(|s| Some(grpc_code(&s))),
                Code::InvalidArgument,
            ));
            let modack = scope.wire().modify_ack_deadline(&sub.name, ids, 10).await;
            findings.add(expect_code(
                &format!("ModifyAckDeadline with {what}"),
                modack.map_err(|s| Some(grpc_code(&s))),
                Code::InvalidArgument,
            ));
        }
        let _ = scope.wire().acknowledge(&other.name, vec![foreign]).await;
        findings.verdict()
    })
}
