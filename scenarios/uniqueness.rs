//! Scenario 3 — event_id uniqueness.
//!
//! Producer retries (the same event published again), redeliveries (a nack after the append)
//! and several workers at once: exactly one row per event_id; the same event_id with a
//! different payload is reported as a conflict on events.dlq, and nothing is overwritten.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::fixtures::Aggregate;
use super::support::{FaultPlan, RunningWorker, Wiring, block_on, event_id_of};
use super::{CaseNotes, Context, Scenario, ScenarioReport, property};
use rig::envelope;
use rig::event_store::NewEvent;

pub const SCENARIO: Scenario = Scenario {
    name: "event_id_uniqueness",
    invariant: "exactly one row per event_id under retries, redeliveries and concurrent workers; a conflicting payload is reported, never stored",
    default_cases: 3,
    run,
    not_on_gcp: None,
};

#[derive(Debug, Clone)]
pub struct Plan {
    /// Per event: extra identical publishes, whether a conflicting variant follows, and
    /// whether the worker "crashes" after appending it once.
    events: Vec<(u8, bool, bool)>,
    workers: usize,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec(
            (
                0u8..=2,
                prop::bool::weighted(0.25),
                prop::bool::weighted(0.2),
            ),
            2..=12,
        ),
        1usize..=3,
    )
        .prop_map(|(mut events, workers)| {
            // Every case retries at least one event: the property is about duplicates.
            if let Some(first) = events.first_mut() {
                first.0 = first.0.max(1);
            }
            Plan { events, workers }
        })
}

fn run(ctx: &Context) -> ScenarioReport {
    property(ctx, &SCENARIO, plan(), |ctx, n, plan| {
        block_on(ctx, check(ctx, n, plan)).map_err(|e| format!("{e:#}"))?
    })
}

async fn check(ctx: &Context, n: usize, plan: &Plan) -> anyhow::Result<Result<CaseNotes, String>> {
    let case = ctx.case(&format!("uniqueness-{n}")).await?;
    let env = &case.env;
    let Wiring {
        options,
        raw_topic,
        dead_letters: dlq_subscription,
        ..
    } = case.wiring.clone();
    let dlq = case.collector(&dlq_subscription).await?;

    let mut faults = FaultPlan::default();
    let mut originals = Vec::new();
    let mut publishes: Vec<NewEvent> = Vec::new();
    let mut conflicts: HashMap<uuid::Uuid, NewEvent> = HashMap::new();
    for (i, (retries, conflict, crash)) in plan.events.iter().enumerate() {
        let event = case.event(
            &Aggregate {
                account: 2,
                record: i,
                id: i as u16,
            },
            1,
        );
        for _ in 0..=*retries {
            publishes.push(event.clone());
        }
        if *conflict {
            let mut variant = event.clone();
            let mut payload: serde_json::Value = serde_json::from_str(&variant.payload)?;
            payload["memo"] = serde_json::Value::String("edited after the fact".into());
            variant.payload = payload.to_string();
            publishes.push(variant.clone());
            conflicts.insert(event.event_id, variant);
        }
        if *crash {
            faults.fail_once_after_append(event.event_id);
        }
        originals.push(event);
    }
    let faults = Arc::new(faults);
    case.producer(&raw_topic)
        .await?
        .publish_all(&publishes)
        .await?;
    let store = case.ledger().await?;
    let mut workers = Vec::new();
    for _ in 0..plan.workers {
        workers.push(RunningWorker::start(env, options.clone(), faults.clone()).await?);
    }
    let expected_rows = originals.len();
    // Each conflict ends on the DLQ or, with a broken ledger, as an extra row: wait for the total.
    let settled = case
        .wait_for(
            &format!(
                "{expected_rows} stored and {} conflict(s) dead-lettered",
                conflicts.len()
            ),
            Duration::from_secs(30),
            || async {
                store.count().await.unwrap_or(0) as usize + dlq.len()
                    >= expected_rows + conflicts.len()
            },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for w in workers {
        let _ = w.stop().await;
    }
    let dead = dlq.stop().await;
    let rows = store.all().await?;

    let mut violations = Vec::new();
    for original in &originals {
        let matching: Vec<_> = rows
            .iter()
            .filter(|r| r.event_id == original.event_id)
            .collect();
        if matching.len() != 1 {
            violations.push(format!(
                "event {} has {} rows",
                original.event_id,
                matching.len()
            ));
            continue;
        }
        let stored = matching[0].as_new_event();
        match conflicts.get(&original.event_id) {
            None => {
                if original.differences(&stored).is_some() {
                    violations.push(format!(
                        "event {} stored with other content",
                        original.event_id
                    ));
                }
            }
            Some(variant) => {
                // Whichever version came first stays; the other must be reported.
                let kept_original = original.differences(&stored).is_none();
                let kept_variant = variant.differences(&stored).is_none();
                if !kept_original && !kept_variant {
                    violations.push(format!(
                        "event {} stored as neither version",
                        original.event_id
                    ));
                }
                let reported = dead.iter().any(|m| {
                    event_id_of(m) == Some(original.event_id)
                        && m.attributes
                            .get(envelope::DEAD_LETTER_REASON)
                            .is_some_and(|r| r.contains("different content"))
                });
                if !reported {
                    violations.push(format!(
                        "the conflicting version of {} was not reported on events.dlq",
                        original.event_id
                    ));
                }
            }
        }
    }
    if rows.len() != originals.len() {
        violations.push(format!(
            "{} rows for {} distinct events",
            rows.len(),
            originals.len()
        ));
    }
    if violations.is_empty() {
        Ok(Ok(CaseNotes::default()))
    } else {
        if !settled {
            violations.push(format!(
                "did not settle within {}s",
                case.limit(Duration::from_secs(30)).as_secs()
            ));
        }
        Ok(Err(violations.join("; ")))
    }
}
