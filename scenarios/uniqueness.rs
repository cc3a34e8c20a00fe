//! Scenario 3 — event_id uniqueness.
//!
//! Producer retries (the same event published again, at once and after the original is
//! stored), redeliveries (a nack after the append) and several workers at once: exactly one
//! row per event_id; the same event_id with a different payload is reported as a conflict on
//! events.dlq, and nothing is overwritten.
//!
//! Why late retries: the worker takes a key's queued messages together and writes the first
//! copy of an event_id in a batch once, so copies that arrive together never reach the ledger
//! twice whatever its keys are. A copy that arrives after the original is stored only meets
//! the ledger's UNIQUE KEY; every case has one, so the property guards the key every time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::fixtures::Aggregate;
use super::support::{FaultPlan, RunningWorker, Wiring, block_on, event_id_of};
use super::{CaseNotes, Context, Scenario, ScenarioReport, property};
use rig_events::envelope;
use rig_events::event_store::NewEvent;

pub const SCENARIO: Scenario = Scenario {
    name: "event_id_uniqueness",
    invariant: "exactly one row per event_id under retries, redeliveries and concurrent workers; a conflicting payload is reported, never stored",
    conditions: "producer retries (at once, and after the original is stored), redeliveries and up to 3 concurrent workers",
    default_cases: 3,
    run,
    not_on_gcp: None,
};

#[derive(Debug, Clone)]
pub struct Plan {
    events: Vec<EventPlan>,
    workers: usize,
}

#[derive(Debug, Clone)]
struct EventPlan {
    /// Extra identical publishes, together with the original.
    retries: u8,
    /// Whether a conflicting variant follows.
    conflict: bool,
    /// Whether the worker "crashes" after appending it once.
    crash: bool,
    /// Identical publishes once the original is stored (never with `crash`: their delivery
    /// count must be known to tell when they have been handled).
    late: u8,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec(
            (
                0u8..=2,
                prop::bool::weighted(0.25),
                prop::bool::weighted(0.2),
                0u8..=1,
            )
                .prop_map(|(retries, conflict, crash, late)| EventPlan {
                    retries,
                    conflict,
                    crash,
                    late: if crash { 0 } else { late },
                }),
            2..=12,
        ),
        1usize..=3,
    )
        .prop_map(|(mut events, workers)| {
            // Every case retries one event at once and once it is stored: the property is
            // about duplicates, and only the late copy meets the ledger's key.
            if let Some(first) = events.first_mut() {
                first.retries = first.retries.max(1);
                first.crash = false;
                first.late = first.late.max(1);
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
    // Events retried late: the event, how many copies reach the worker before, and after.
    let mut late: Vec<(NewEvent, usize, usize)> = Vec::new();
    for (i, planned) in plan.events.iter().enumerate() {
        let event = case.event(
            &Aggregate {
                account: 2,
                record: i,
                id: i as u16,
            },
            1,
        );
        for _ in 0..=planned.retries {
            publishes.push(event.clone());
        }
        if planned.conflict {
            let mut variant = event.clone();
            let mut payload: serde_json::Value = serde_json::from_str(&variant.payload)?;
            payload["memo"] = serde_json::Value::String("edited after the fact".into());
            variant.payload = payload.to_string();
            publishes.push(variant.clone());
            conflicts.insert(event.event_id, variant);
        }
        if planned.crash {
            faults.fail_once_after_append(event.event_id);
        }
        if planned.late > 0 {
            let earlier = 1 + usize::from(planned.retries) + usize::from(planned.conflict);
            late.push((event.clone(), earlier, usize::from(planned.late)));
        }
        originals.push(event);
    }
    let faults = Arc::new(faults);
    let producer = case.producer(&raw_topic).await?;
    producer.publish_all(&publishes).await?;
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
    // The producer retries after a timeout: by now the originals are stored.
    let retried: Vec<NewEvent> = late
        .iter()
        .flat_map(|(event, _, copies)| std::iter::repeat_n(event.clone(), *copies))
        .collect();
    producer.publish_all(&retried).await?;
    let late_handled = case
        .wait_for(
            &format!("{} late retries handled", retried.len()),
            Duration::from_secs(30),
            || async {
                late.iter().all(|(event, earlier, copies)| {
                    faults.attempts(&event.event_id).len() >= earlier + copies
                })
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
        if !late_handled {
            violations.push(format!(
                "the late retries were not all handled within {}s",
                case.limit(Duration::from_secs(30)).as_secs()
            ));
        }
        Ok(Err(violations.join("; ")))
    }
}
