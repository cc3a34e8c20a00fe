//! Scenario 2 — dead-lettering after exactly 5 attempts, and bad input never stored.
//!
//! - `dead_letter_ordered`: on the raw worker subscription exactly as the Terraform declares it
//!   (ordered, dead-letter policy). The Pub/Sub emulator cannot dead-letter an ordered message:
//!   after the 5th attempt its streaming pull fails with UNKNOWN and `events.dlq` stays empty.
//!   The scenario detects that and reports it as a divergence; against the real service the
//!   same check decides the property.
//! - `dead_letter_unordered`: the same policy with ordering off (where the emulator works), so
//!   the worker's side of the dead-letter path is proven locally.
//! - `bad_input`: malformed events are dead-lettered by the worker with a readable reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use proptest::prelude::*;

use super::fixtures::Aggregate;
use super::support::{Case, Failures, FaultPlan, RunningWorker, Wiring, block_on, event_id_of};
use super::{CaseNotes, Context, Scenario, ScenarioReport, property};
use rig_events::envelope;
use rig_harness::divergence::Divergence;
use rig_harness::environment::Environment;
use rig_topology::Topology;

/// The epic's requirement, independent of what the Terraform currently says.
pub const EPIC_MAX_DELIVERY_ATTEMPTS: u32 = 5;

pub const ORDERED: Scenario = Scenario {
    name: "dead_letter_ordered",
    invariant: "on the ordered raw subscription, an event failing every attempt reaches events.dlq with delivery count 5 and is never stored; fewer failures store it once",
    conditions: "the raw subscription exactly as the Terraform declares it (ordered); the worker dead-letters on the last attempt itself, with the reason",
    default_cases: 1,
    run: run_ordered,
    not_on_gcp: None,
};

pub const UNORDERED: Scenario = Scenario {
    name: "dead_letter_unordered",
    invariant: "with the Terraform's dead-letter policy, an event failing every attempt reaches events.dlq with delivery count 5 after exactly 5 worker attempts and is never stored; fewer failures store it once",
    conditions: "the same dead-letter policy with ordering off, failing fewer than 5 times or every time",
    default_cases: 2,
    run: run_unordered,
    not_on_gcp: Some(
        "it creates a subscription of its own (an unordered twin of the worker's), and in GCP only Terraform creates subscriptions; dead_letter_ordered proves the policy on the real, ordered one",
    ),
};

pub const BAD_INPUT: Scenario = Scenario {
    name: "bad_input",
    invariant: "malformed events are never stored and reach events.dlq with a reason naming the problem; valid events beside them are all stored",
    conditions: "invalid JSON, a bad UUID, a missing or over-long field, a bad timestamp, a missing claim object, beside valid events of the same keys",
    default_cases: 3,
    run: run_bad_input,
    not_on_gcp: None,
};

/// Random failure schedules that always include one event failing on every attempt: the
/// dead-letter path is exercised in every case, not only when the dice allow.
fn schedule() -> impl Strategy<Value = Vec<Failures>> {
    let failures = prop_oneof![
        3 => (0u32..EPIC_MAX_DELIVERY_ATTEMPTS).prop_map(Failures::Times),
        2 => Just(Failures::Always),
    ];
    (prop::collection::vec(failures, 0..=4), 0usize..=4).prop_map(|(mut schedule, at)| {
        schedule.insert(at.min(schedule.len()), Failures::Always);
        schedule
    })
}

fn run_ordered(ctx: &Context) -> ScenarioReport {
    // The emulator defect stops the whole subscription, so one always-failing event per case.
    let strategy =
        (0u32..EPIC_MAX_DELIVERY_ATTEMPTS).prop_map(|f| vec![Failures::Times(f), Failures::Always]);
    property(ctx, &ORDERED, strategy, |ctx, n, schedule| {
        block_on(ctx, async {
            let case = ctx.case(&format!("dlq-ordered-{n}")).await?;
            let subscription = case.wiring.options.subscription.clone();
            dead_letter_case(&case, &ctx.world.topology, &subscription, schedule).await
        })
        .map_err(|e: anyhow::Error| format!("{e:#}"))?
    })
}

fn run_unordered(ctx: &Context) -> ScenarioReport {
    property(ctx, &UNORDERED, schedule(), |ctx, n, schedule| {
        block_on(ctx, async {
            let case = ctx.case(&format!("dlq-unordered-{n}")).await?;
            let unordered = create_unordered_twin(
                &case.env,
                &ctx.world.topology,
                &case.wiring.options.subscription,
            )
            .await?;
            dead_letter_case(&case, &ctx.world.topology, &unordered, schedule).await
        })
        .map_err(|e: anyhow::Error| format!("{e:#}"))?
    })
}

/// The Terraform's subscription with message ordering off, in the same project.
async fn create_unordered_twin(
    env: &Environment,
    topology: &Topology,
    name: &str,
) -> anyhow::Result<String> {
    let mut spec = topology
        .subscription(name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{name} is not in the Terraform"))?;
    spec.name = format!("{name}.unordered");
    spec.enable_message_ordering = false;
    env.pubsub
        .subscription_admin()
        .await?
        .create_subscription()
        .with_request(env.pubsub.subscription_model(&spec))
        .send()
        .await?;
    Ok(spec.name)
}

async fn dead_letter_case(
    case: &Case,
    topology: &Topology,
    subscription: &str,
    schedule: &[Failures],
) -> anyhow::Result<Result<CaseNotes, String>> {
    let env = &case.env;
    let wiring: Wiring = case.wiring.clone();
    let ordered = topology
        .subscription(&wiring.options.subscription)
        .is_some_and(|s| s.enable_message_ordering)
        && subscription == wiring.options.subscription;
    let dlq = case.collector(&wiring.dead_letters).await?;
    // The Terraform's subscription (not its unordered twin) names the topic to publish to.
    let raw_topic = wiring.raw_topic;
    let mut options = wiring.options;
    options.subscription = subscription.to_string();
    let mut faults = FaultPlan::default();
    let mut events = Vec::new();
    for (i, failures) in schedule.iter().enumerate() {
        // One aggregate per event: a failing key must not hold the others back.
        let event = case.event(
            &Aggregate {
                account: 0,
                record: i,
                id: i as u16,
            },
            1,
        );
        faults.fail_before_append(event.event_id, *failures);
        events.push((event, *failures));
    }
    let faults = Arc::new(faults);
    let list: Vec<_> = events.iter().map(|(e, _)| e.clone()).collect();
    case.producer(&raw_topic).await?.publish_all(&list).await?;
    let store = case.ledger().await?;
    let worker = RunningWorker::start(env, options.clone(), faults.clone()).await?;
    let stored_expected = events
        .iter()
        .filter(|(_, f)| *f != Failures::Always)
        .count();
    let dead: Vec<uuid::Uuid> = events
        .iter()
        .filter(|(_, f)| *f == Failures::Always)
        .map(|(e, _)| e.event_id)
        .collect();
    case.wait_for(
        &format!(
            "{stored_expected} stored and {} dead-lettered after every attempt",
            dead.len()
        ),
        Duration::from_secs(45),
        || async {
            if worker.finished() {
                return true;
            }
            let dead_seen: Vec<_> = dlq.messages().iter().filter_map(event_id_of).collect();
            store.count().await.unwrap_or(0) as usize >= stored_expected
                && dead.iter().all(|d| dead_seen.contains(d))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let worker_result = worker.stop().await;
    let dead_letters = dlq.stop().await;
    let rows = store.all().await?;
    let mut rows_per_event: HashMap<uuid::Uuid, usize> = HashMap::new();
    for row in &rows {
        *rows_per_event.entry(row.event_id).or_default() += 1;
    }

    let mut violations = Vec::new();
    let mut missing_dead_letters = Vec::new();
    for (event, failures) in &events {
        let stored = rows_per_event.get(&event.event_id).copied().unwrap_or(0);
        let attempts = faults.attempts(&event.event_id);
        match failures {
            Failures::Times(f) => {
                if stored != 1 {
                    violations.push(format!(
                        "event failing {f} time(s) stored {stored} times (attempts seen {attempts:?})"
                    ));
                }
            }
            Failures::Always => {
                if stored != 0 {
                    violations.push(format!("an always-failing event was stored {stored} times"));
                }
                let copies: Vec<&Message> = dead_letters
                    .iter()
                    .filter(|m| event_id_of(m) == Some(event.event_id))
                    .collect();
                if copies.is_empty() {
                    missing_dead_letters.push(format!("attempts seen {attempts:?}"));
                    continue;
                }
                for copy in copies {
                    // Dead-lettered by the service after its last attempt, or by the worker
                    // itself on that attempt (with the reason): either way on attempt 5.
                    let count = copy
                        .attributes
                        .get(envelope::SERVICE_DELIVERY_COUNT)
                        .or_else(|| copy.attributes.get(envelope::DEAD_LETTER_DELIVERY_ATTEMPT))
                        .cloned()
                        .unwrap_or_default();
                    if count != EPIC_MAX_DELIVERY_ATTEMPTS.to_string() {
                        violations.push(format!(
                            "dead-lettered with delivery count {count:?}, the epic requires {EPIC_MAX_DELIVERY_ATTEMPTS}"
                        ));
                    }
                }
                if attempts.iter().max().copied() != Some(EPIC_MAX_DELIVERY_ATTEMPTS) {
                    violations.push(format!(
                        "the worker saw attempts {attempts:?} before dead-lettering, not 1..={EPIC_MAX_DELIVERY_ATTEMPTS}"
                    ));
                }
            }
        }
    }
    let stream_failure = worker_result.as_ref().err().map(|e| format!("{e:#}"));
    if !missing_dead_letters.is_empty() || stream_failure.is_some() {
        let observed = format!(
            "after the last attempt of an ordered message, {}; events.dlq received {} of {} dead letter(s)",
            stream_failure
                .clone()
                .map(|e| format!(
                    "the worker's streaming pull failed ({})",
                    e.chars().take(200).collect::<String>()
                ))
                .unwrap_or_else(|| "nothing failed visibly".into()),
            dead.len() - missing_dead_letters.len(),
            dead.len()
        );
        if env.pubsub.is_google_emulator() && ordered {
            // The one undecidable part; everything else above still had to hold.
            let stored_dead = violations.iter().any(|v| v.contains("was stored"));
            if stored_dead {
                return Ok(Err(violations.join("; ")));
            }
            return Ok(Ok(CaseNotes {
                divergences: vec![Divergence {
                    service: "pubsub-emulator".into(),
                    feature: "dead-lettering on an ordered subscription".into(),
                    observed,
                    real_service: "moves the message to the dead-letter topic after max_delivery_attempts and keeps delivering the key".into(),
                }],
                figures: Vec::new(),
            }));
        }
        violations.push(observed);
    }
    if violations.is_empty() {
        Ok(Ok(CaseNotes::default()))
    } else {
        Ok(Err(violations.join("; ")))
    }
}

/// Ways to make an event unacceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    None,
    InvalidJson,
    BadUuid,
    MissingAggregateId,
    OverlongAggregateType,
    BadTimestamp,
    MissingClaimObject,
}

impl Corruption {
    /// Words the dead-letter reason must contain.
    fn reason(self) -> &'static str {
        match self {
            Corruption::None => "",
            Corruption::InvalidJson => "not valid JSON",
            Corruption::BadUuid => "not a UUID",
            Corruption::MissingAggregateId => "`aggregate_id` is missing",
            Corruption::OverlongAggregateType => "characters long",
            Corruption::BadTimestamp => "RFC 3339",
            Corruption::MissingClaimObject => "does not exist",
        }
    }
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        6 => Just(Corruption::None),
        1 => Just(Corruption::InvalidJson),
        1 => Just(Corruption::BadUuid),
        1 => Just(Corruption::MissingAggregateId),
        1 => Just(Corruption::OverlongAggregateType),
        1 => Just(Corruption::BadTimestamp),
        1 => Just(Corruption::MissingClaimObject),
    ]
}

const MARKER: &str = "scenario_marker";

fn corrupt(
    case: &Case,
    i: usize,
    corruption: Corruption,
) -> (Message, rig_events::event_store::NewEvent) {
    let env = &case.env;
    let event = case.event(
        &Aggregate {
            account: 1,
            record: i,
            id: i as u16,
        },
        1,
    );
    let mut message = envelope::inline_message(&event);
    match corruption {
        Corruption::None => {}
        Corruption::InvalidJson => message = message.set_data("{\"tranId\": SO-1"),
        Corruption::BadUuid => {
            message
                .attributes
                .insert(envelope::EVENT_ID.into(), "SO-10482".into());
        }
        Corruption::MissingAggregateId => {
            message.attributes.remove(envelope::AGGREGATE_ID);
        }
        Corruption::OverlongAggregateType => {
            message
                .attributes
                .insert(envelope::AGGREGATE_TYPE.into(), "salesorder".repeat(30));
        }
        Corruption::BadTimestamp => {
            message
                .attributes
                .insert(envelope::CREATED_AT.into(), "yesterday".into());
        }
        Corruption::MissingClaimObject => {
            let claim = envelope::ClaimRef {
                bucket: env.bucket.clone(),
                object: envelope::claim_object_name(&event),
                size: event.payload.len() as u64,
                sha256: envelope::sha256_hex(event.payload.as_bytes()),
            };
            message = envelope::claim_message(&event, &claim);
        }
    }
    message.attributes.insert(MARKER.into(), i.to_string());
    (case.marked(message), event)
}

fn run_bad_input(ctx: &Context) -> ScenarioReport {
    property(
        ctx,
        &BAD_INPUT,
        prop::collection::vec(corruption(), 2..=10),
        |ctx, n, corruptions| {
            block_on(ctx, async {
                let case = ctx.case(&format!("bad-input-{n}")).await?;
                let env = &case.env;
                let Wiring {
                    options,
                    raw_topic,
                    dead_letters,
                    ..
                } = case.wiring.clone();
                let dlq = case.collector(&dead_letters).await?;
                let publisher = env.pubsub.publisher(&raw_topic).await?;
                let mut sent = Vec::new();
                for (i, c) in corruptions.iter().enumerate() {
                    let (message, event) = corrupt(&case, i, *c);
                    publisher.publish(message).await?;
                    sent.push((*c, event));
                }
                let store = case.ledger().await?;
                let worker = RunningWorker::start(
                    env,
                    options,
                    Arc::new(super::support::FaultPlan::default()),
                )
                .await?;
                let valid = sent.iter().filter(|(c, _)| *c == Corruption::None).count();
                let invalid = sent.len() - valid;
                case.wait_for(
                    &format!("{valid} stored and {invalid} dead-lettered"),
                    Duration::from_secs(30),
                    || async {
                        store.count().await.unwrap_or(0) as usize >= valid && dlq.len() >= invalid
                    },
                )
                .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let stats = worker.stop_and_describe().await;
                let dead = dlq.stop().await;
                let rows = store.all().await?;
                let mut violations = Vec::new();
                for (i, (c, event)) in sent.iter().enumerate() {
                    let stored = rows.iter().filter(|r| r.event_id == event.event_id).count();
                    let letter = dead
                        .iter()
                        .find(|m| m.attributes.get(MARKER) == Some(&i.to_string()));
                    match c {
                        Corruption::None => {
                            if stored != 1 {
                                violations.push(format!("valid event #{i} stored {stored} times"));
                            }
                            if letter.is_some() {
                                violations.push(format!("valid event #{i} was dead-lettered"));
                            }
                        }
                        bad => {
                            if stored != 0 {
                                violations.push(format!("{bad:?} event #{i} was stored"));
                            }
                            match letter
                                .and_then(|m| m.attributes.get(envelope::DEAD_LETTER_REASON))
                            {
                                None => violations.push(format!(
                                    "{bad:?} event #{i} did not reach events.dlq with a reason"
                                )),
                                Some(reason) if !reason.contains(bad.reason()) => {
                                    violations.push(format!(
                                        "{bad:?} event #{i}: reason {reason:?} does not say {:?}",
                                        bad.reason()
                                    ))
                                }
                                Some(_) => {}
                            }
                        }
                    }
                }
                if rows.len() != valid {
                    violations.push(format!(
                        "{} rows stored, {valid} valid events sent",
                        rows.len()
                    ));
                }
                Ok::<_, anyhow::Error>(if violations.is_empty() {
                    Ok(CaseNotes::default())
                } else {
                    Err(format!("{} (worker: {stats})", violations.join("; ")))
                })
            })
            .map_err(|e| format!("{e:#}"))?
        },
    )
}
