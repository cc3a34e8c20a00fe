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

use rig_events::envelope::SERVICE_DELIVERY_COUNT as DELIVERY_COUNT;
use rig_topology::Topology;

use crate::divergence::Divergence;
use crate::environment::Environment;
use crate::report::Outcome;
use crate::validate::Check;

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

/// Whose a message on an acceptance subscription is, for one acceptance run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Belongs {
    /// Exactly the value being looked for (this case).
    Ours,
    /// Another case of the same run: left over, nobody else wants it (acknowledge).
    ThisRun,
    /// Another run's probe: release it (nack) so that run gets it.
    OtherRun,
    /// No probe attribute: a copy of real traffic, which only a service that ignores
    /// subscription filters delivers here. Acknowledging drops this subscription's copy only.
    NotProbe,
}

/// Judges `attributes` against `value` (this case's probe value) and `run_prefix` (what every
/// probe value of this run starts with).
pub fn belongs(
    attributes: &std::collections::HashMap<String, String>,
    attribute: &str,
    value: &str,
    run_prefix: &str,
) -> Belongs {
    match attributes.get(attribute) {
        None => Belongs::NotProbe,
        Some(v) if v == value => Belongs::Ours,
        Some(v) if v.starts_with(run_prefix) => Belongs::ThisRun,
        Some(_) => Belongs::OtherRun,
    }
}

/// The longest the service may take to hand a message out again on `subscription`: its ack
/// deadline (an unacknowledged lease) plus its retry policy's longest backoff (without a
/// policy Pub/Sub redelivers at once).
pub fn redelivery_bound(subscription: &rig_topology::Subscription) -> Duration {
    Duration::from_secs(u64::from(subscription.ack_deadline_seconds))
        + subscription
            .retry
            .as_ref()
            .map_or(Duration::ZERO, |r| r.maximum_backoff)
}

/// How long a message failing every delivery takes to reach its last attempt on
/// `subscription`: the backoffs between its attempts, doubling from the minimum up to the
/// maximum (Pub/Sub's documented exponential backoff; the factor is Google's, so callers
/// leave a margin).
pub fn exhaustion_time(subscription: &rig_topology::Subscription) -> Duration {
    let attempts = subscription
        .dead_letter
        .as_ref()
        .map_or(5, |d| d.max_delivery_attempts);
    let (minimum, maximum) = subscription
        .retry
        .as_ref()
        .map_or((Duration::ZERO, Duration::ZERO), |r| {
            (r.minimum_backoff, r.maximum_backoff)
        });
    let mut total = Duration::ZERO;
    let mut backoff = minimum;
    for _ in 1..attempts {
        total += backoff.min(maximum);
        backoff = backoff.saturating_mul(2);
    }
    total
}

/// What [`drain`] found on one acceptance subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    pub subscription: String,
    /// This run's messages, acknowledged.
    pub acknowledged: u64,
    /// Other runs' probes, released (nacked) for them.
    pub released: u64,
    /// Copies of real traffic (no probe attribute), acknowledged on this subscription only.
    pub not_probes: u64,
}

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} of this run acknowledged, {} of other runs released",
            self.subscription, self.acknowledged, self.released
        )?;
        if self.not_probes > 0 {
            write!(
                f,
                ", {} non-probe copies acknowledged (the service does not apply the filter)",
                self.not_probes
            )?;
        }
        Ok(())
    }
}

/// Reads every probe-only subscription — the acceptance ones, and the validation subscription,
/// which receives a copy of every probe published to the raw topic — until nothing of this
/// run (probe values starting with `run_prefix`) has arrived for `quiet`, acknowledging this
/// run's messages, releasing other runs' probes and acknowledging non-probe copies: what a
/// run leaves behind (a late redelivery, a duplicate on merged, the rest of a failed case) is
/// consumed before it ends. `quiet` should be at least [`redelivery_bound`] of each
/// subscription; `progress` is called every 30 s with a line to show.
pub async fn drain(
    env: &Environment,
    topology: &Topology,
    run_prefix: &str,
    quiet: Duration,
    progress: impl Fn(String),
) -> anyhow::Result<Vec<Drained>> {
    use std::sync::{Arc, Mutex};
    let attribute = topology
        .probe_attribute()
        .ok_or_else(|| anyhow::anyhow!("the Terraform declares no probe attribute"))?;
    let acceptance: Vec<String> = topology
        .subscriptions
        .iter()
        .filter(|s| s.is_acceptance())
        .map(|s| s.name.clone())
        .collect();
    anyhow::ensure!(
        !acceptance.is_empty(),
        "the Terraform declares no acceptance subscriptions: set acceptance_enabled = true"
    );
    let names: Vec<String> = acceptance
        .into_iter()
        .chain(topology.validation_subscription().map(|s| s.name.clone()))
        .collect();
    let subscriber = env.pubsub.subscriber().await?;
    let last_ours = Arc::new(Mutex::new(Instant::now()));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for name in &names {
        let mut stream = subscriber
            .subscribe(env.pubsub.subscription_path(name))
            .build();
        let token = stream.shutdown_token();
        let counts = Arc::new(Mutex::new(Drained {
            subscription: name.clone(),
            ..Drained::default()
        }));
        let (attribute, run_prefix) = (attribute.clone(), run_prefix.to_string());
        let (last_ours, failure, counts_in) = (last_ours.clone(), failure.clone(), counts.clone());
        let mut stopped = stopped.clone();
        let name = name.clone();
        // One task per stream: a stream's next() is not cancelled by other streams' deliveries.
        let task = tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stopped.changed() => break,
                    next = stream.next() => next,
                };
                let (message, handler) = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => {
                        if let Ok(mut f) = failure.lock() {
                            *f = Some(format!("the stream on {name} failed: {e}"));
                        }
                        break;
                    }
                    None => break,
                };
                // `run_prefix` as the case value too: every message of the run is ours here.
                let judged = belongs(&message.attributes, &attribute, &run_prefix, &run_prefix);
                let Ok(mut counts) = counts_in.lock() else {
                    break;
                };
                match judged {
                    Belongs::Ours | Belongs::ThisRun => {
                        handler.ack();
                        counts.acknowledged += 1;
                        if let Ok(mut last) = last_ours.lock() {
                            *last = Instant::now();
                        }
                    }
                    Belongs::OtherRun => {
                        handler.nack();
                        counts.released += 1;
                    }
                    Belongs::NotProbe => {
                        handler.ack();
                        counts.not_probes += 1;
                    }
                }
            }
        });
        tasks.push((task, token, counts));
    }
    let started = Instant::now();
    let mut next_report = started + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let since = last_ours.lock().map(|l| l.elapsed()).unwrap_or(quiet);
        let failed = failure.lock().ok().and_then(|f| f.clone());
        if since >= quiet || failed.is_some() {
            break;
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            let acknowledged: u64 = tasks
                .iter()
                .filter_map(|(_, _, c)| c.lock().ok().map(|c| c.acknowledged))
                .sum();
            progress(format!(
                "draining {}: {acknowledged} message(s) of this run acknowledged; nothing new for {}s of {}s",
                names.join(", "),
                since.as_secs(),
                quiet.as_secs()
            ));
        }
    }
    let _ = stop.send(true);
    let mut drained = Vec::new();
    for (task, token, counts) in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        // Waits for the acks and nacks to reach the service: dropping the stream could lose them.
        if tokio::time::timeout(Duration::from_secs(10), token.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                "acknowledgements on an acceptance subscription were not confirmed within 10s"
            );
        }
        drained.push(counts.lock().map(|c| c.clone()).unwrap_or_default());
    }
    drop(subscriber);
    if let Some(problem) = failure.lock().ok().and_then(|f| f.clone()) {
        anyhow::bail!("{problem}");
    }
    Ok(drained)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_told_apart_by_case_and_run() {
        let attrs = |v: Option<&str>| {
            v.map(|v| [("backbone_probe".to_string(), v.to_string())].into())
                .unwrap_or_default()
        };
        let judge = |v| belongs(&attrs(v), "backbone_probe", "r1/a-0", "r1/");
        assert_eq!(judge(Some("r1/a-0")), Belongs::Ours);
        assert_eq!(judge(Some("r1/b-0")), Belongs::ThisRun);
        assert_eq!(judge(Some("r2/a-0")), Belongs::OtherRun);
        assert_eq!(judge(Some("")), Belongs::OtherRun);
        assert_eq!(judge(None), Belongs::NotProbe);
    }

    #[test]
    fn waits_follow_the_retry_policy() {
        let dev = Topology::of_repository("dev").unwrap();
        let raw = dev.acceptance_subscription("events.raw").unwrap();
        // dev: 60 s ack deadline, 1..10 s backoff, 5 attempts.
        assert_eq!(redelivery_bound(raw), Duration::from_secs(70));
        assert_eq!(exhaustion_time(raw), Duration::from_secs(1 + 2 + 4 + 8));
        // No retry policy: redelivered at once.
        let dlq = dev.acceptance_subscription("events.dlq").unwrap();
        assert_eq!(redelivery_bound(dlq), Duration::from_secs(60));
    }
}
