//! Staging-acceptance checks that only the real service can pass, run through the acceptance
//! subscriptions (dev and staging) so real traffic is never touched.
//!
//! `ordered_dead_letter`: a probe with an ordering key that fails every delivery on the
//! ordered acceptance subscription reaches `events.dlq` (read back through
//! `events.dlq.acceptance`) after the Terraform's `max_delivery_attempts`. The Pub/Sub emulator
//! cannot do this (its ordered backlog fails once a message exhausts its attempts), so on an
//! emulator the outcome is a divergence, never a pass.

use std::time::{Duration, Instant};

use google_cloud_pubsub::model::Message;

use crate::divergence::Divergence;
use crate::environment::Environment;
use crate::report::Outcome;
use crate::topology::Topology;
use crate::validate::Check;

/// Pub/Sub's attribute on a dead-lettered message: how many deliveries it had.
const DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";

pub const ORDERED_DEAD_LETTER: &str =
    "an ordered probe failing every delivery reaches events.dlq (acceptance subscriptions)";

/// Runs the check; `timeout` bounds the whole of it (staging's 10–600 s backoff needs minutes).
pub async fn ordered_dead_letter(
    env: &Environment,
    topology: &Topology,
    timeout: Duration,
) -> (Check, Option<Divergence>) {
    let started = Instant::now();
    let result = run(env, topology, timeout).await;
    let (outcome, detail, divergence) = match result {
        Ok(detail) => (Outcome::Pass, detail, None),
        // Only Google's emulator has this known defect; our own service gets no excuse.
        Err(problem) if env.pubsub.is_google_emulator() => {
            let divergence = Divergence {
                service: "pubsub-emulator".into(),
                feature: "dead-lettering on an ordered subscription".into(),
                observed: problem.clone(),
                real_service: "dead-letters the message after max_delivery_attempts and keeps delivering the key".into(),
            };
            (Outcome::Divergence, problem, Some(divergence))
        }
        Err(problem) => (Outcome::Fail, problem, None),
    };
    (
        Check {
            name: ORDERED_DEAD_LETTER.into(),
            outcome,
            took: started.elapsed(),
            detail,
        },
        divergence,
    )
}

async fn run(env: &Environment, topology: &Topology, timeout: Duration) -> Result<String, String> {
    let attribute = topology
        .probe_attribute()
        .ok_or("the Terraform declares no probe attribute")?;
    let raw_topic = topology
        .validation_subscription()
        .map(|s| s.topic.clone())
        .ok_or("the Terraform declares no validation subscription")?;
    let source = topology
        .acceptance_subscription(&raw_topic)
        .ok_or("no acceptance subscription on the raw topic: set acceptance_enabled = true")?;
    let dead_letter = source
        .dead_letter
        .clone()
        .ok_or_else(|| format!("{} has no dead-letter policy", source.name))?;
    let inspect = topology
        .acceptance_subscription(&dead_letter.topic)
        .ok_or("no acceptance subscription on the dead-letter topic")?;
    let run_id = uuid::Uuid::new_v4().to_string();
    let message = Message::new()
        .set_data(serde_json::json!({ "probe": run_id, "case": "ordered_dead_letter" }).to_string())
        .set_ordering_key(format!("probe-dead-letter-{run_id}"))
        .set_attributes([(attribute.clone(), run_id.clone())]);
    let deadline = Instant::now() + timeout;
    let publisher = env
        .pubsub
        .publisher(&raw_topic)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(timeout, publisher.publish(message))
        .await
        .map_err(|_| "publish did not complete".to_string())?
        .map_err(|e| format!("publishing the probe: {e}"))?;

    let subscriber = env.pubsub.subscriber().await.map_err(|e| e.to_string())?;
    let mut failing = subscriber
        .subscribe(env.pubsub.subscription_path(&source.name))
        .build();
    let mut dead_letters = subscriber
        .subscribe(env.pubsub.subscription_path(&inspect.name))
        .build();
    let ours =
        |m: &Message| m.attributes.get(&attribute).map(String::as_str) == Some(run_id.as_str());
    let mut deliveries = 0u32;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            next = failing.next() => match next {
                Some(Ok((m, handler))) => {
                    if ours(&m) {
                        deliveries += 1;
                    }
                    // Every delivery fails: ours to exhaust its attempts, others are released
                    // for their own runs.
                    handler.nack();
                }
                Some(Err(e)) => {
                    return Err(format!("the stream on {} failed after {deliveries} deliveries of the probe: {e}", source.name));
                }
                None => return Err(format!("the stream on {} ended after {deliveries} deliveries", source.name)),
            },
            next = dead_letters.next() => match next {
                Some(Ok((m, handler))) => {
                    if !ours(&m) {
                        handler.nack();
                        continue;
                    }
                    handler.ack();
                    let count = m.attributes.get(DELIVERY_COUNT).cloned().unwrap_or_default();
                    // Pub/Sub counts attempts best-effort: at least the policy's number.
                    let counted: u32 = count.parse().unwrap_or(0);
                    if counted < dead_letter.max_delivery_attempts {
                        return Err(format!("dead-lettered after {count} deliveries ({DELIVERY_COUNT}), the Terraform says {}", dead_letter.max_delivery_attempts));
                    }
                    return Ok(format!(
                        "dead-lettered to {} after {count} deliveries ({deliveries} seen here), read back and acknowledged on {}",
                        dead_letter.topic, inspect.name
                    ));
                }
                Some(Err(e)) => return Err(format!("the stream on {} failed: {e}", inspect.name)),
                None => return Err(format!("the stream on {} ended", inspect.name)),
            },
            _ = tokio::time::sleep(remaining) => {
                return Err(format!(
                    "not dead-lettered within {timeout:?} ({deliveries} deliveries of the probe seen on {}); it may stay on {} unacknowledged",
                    source.name, inspect.name
                ));
            }
        }
    }
}
