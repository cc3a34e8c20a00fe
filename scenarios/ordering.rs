//! Scenario 1 — per-key ordering under failure.
//!
//! For any stream of events over several aggregates (ordering keys), with transient failures
//! (nacks before the append, a "crash" after the append, a worker restart, two workers at
//! once), each key's rows in `event_store` and messages on `events.merged` are exactly the
//! key's events in publish order: no gaps, no duplicates.
//!
//! The plans keep each key's failures below the dead-letter threshold, with a round spare for
//! the restart and one more (see `MAX_FAILURE_ROUNDS_PER_KEY`). A delivery beyond the plan (a lease that lapsed on a loaded machine: the
//! client asks for a 10 s stream deadline and extends it from a task that then runs late) can
//! still use up an event's 5 attempts. Then the production configuration does what it should:
//! the event goes to events.dlq and its key goes on. Such an event, found on events.dlq with
//! its last attempt, is left out of its key's expected sequence (the rest must still be in
//! order) and the case says so in a figure; one on events.dlq before its last attempt is a
//! violation. (Most likely what a test run at 16 threads on 2 cores, 254 s long, hit once:
//! one event missing from merged, its key's later events there, a stall after; that event's
//! plan used 4 of its 5 attempts. Not reproduced at 10 runs side by side; the events.dlq
//! side was not collected then.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::fixtures::{self, Aggregate};
use super::support::{
    Failures, FaultPlan, RunningWorker, Wiring, block_on, by_key, event_id_of, first_copies_by_key,
};
use super::{CaseNotes, Context, Scenario, ScenarioReport, property};
use rig_events::envelope;
use rig_events::pubsub::PubsubImplementation;

pub const SCENARIO: Scenario = Scenario {
    name: "ordering",
    invariant: "each key's rows in event_store and messages on events.merged are in publish order, without gaps or duplicates",
    conditions: "nacks, a crash after the append, a worker restart and two workers",
    default_cases: 3,
    run,
    not_on_gcp: None,
};

/// The same plans with Pub/Sub at its worst on the worker's subscription: duplicate
/// deliveries, stream resets, delayed deliveries and lost acks, injected by our Pub/Sub service
/// (`rig-fault-*` labels, `docs/pubsub-service.md`). Pub/Sub is at-least-once, so repeats on
/// merged are allowed; nothing else is.
pub const UNDER_PUBSUB_FAULTS: Scenario = Scenario {
    name: "ordering_under_pubsub_faults",
    invariant: "with duplicate deliveries, stream resets, delays and lost acks, each key's rows in event_store are in publish order without gaps or duplicates, and events.merged holds each key's events in publish order (repeats of an event already delivered aside)",
    conditions: "the ordering plans with Pub/Sub at its worst on the worker's subscription: duplicate deliveries, stream resets (`UNAVAILABLE` mid-stream), delayed deliveries and lost acks, seeded per case and injected by our Pub/Sub service (`rig-fault-*` labels); skipped, saying so, where the Pub/Sub cannot inject them",
    default_cases: 3,
    run: run_under_faults,
    not_on_gcp: Some(
        "the faults are injected by our Pub/Sub service through subscription labels; real Pub/Sub injects none (and the worker may not relabel the acceptance subscription)",
    ),
};

/// What our Pub/Sub service is told to do wrong on the worker's subscription, as permilles.
#[derive(Debug, Clone)]
pub struct PubsubFaults {
    seed: u64,
    duplicate: u16,
    stream_reset: u16,
    delay_ms: u16,
    delay: u16,
    lost_ack: u16,
}

/// The official client's default lease (`set_max_lease_extension`), which the worker keeps.
const CLIENT_LEASE: Duration = Duration::from_secs(60);

/// A lost ack's lease ends this soon (the ack was lost just before its deadline), so the case
/// sees the redelivery instead of waiting out the client's 60 s lease.
const LOST_ACK_LEASE: Duration = Duration::from_millis(300);

impl PubsubFaults {
    fn labels(&self) -> HashMap<String, String> {
        [
            ("rig-fault-seed", self.seed.to_string()),
            ("rig-fault-duplicate-permille", self.duplicate.to_string()),
            (
                "rig-fault-stream-reset-permille",
                self.stream_reset.to_string(),
            ),
            ("rig-fault-delay-ms", self.delay_ms.to_string()),
            ("rig-fault-delay-permille", self.delay.to_string()),
            ("rig-fault-lost-ack-permille", self.lost_ack.to_string()),
            (
                "rig-fault-lost-ack-lease-ms",
                LOST_ACK_LEASE.as_millis().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Every fault present in every case, at rates that leave a case a few seconds long. A
/// duplicate's ack can itself be duplicated, so its rate stays well below 1000.
fn pubsub_faults() -> impl Strategy<Value = PubsubFaults> {
    (
        any::<u64>(),
        100u16..=400,
        20u16..=150,
        1u16..=200,
        100u16..=500,
        50u16..=250,
    )
        .prop_map(
            |(seed, duplicate, stream_reset, delay_ms, delay, lost_ack)| PubsubFaults {
                seed,
                duplicate,
                stream_reset,
                delay_ms,
                delay,
                lost_ack,
            },
        )
}

#[derive(Debug, Clone)]
pub struct Step {
    key: usize,
    fail_before_append: u32,
    fail_after_append: bool,
}

#[derive(Debug, Clone)]
pub struct Plan {
    keys: Vec<Aggregate>,
    steps: Vec<Step>,
    restart_after_stored: Option<usize>,
    workers: usize,
}

fn plan() -> impl Strategy<Value = Plan> {
    prop::collection::hash_set(fixtures::aggregate(), 1..=5)
        .prop_flat_map(|keys| {
            let keys: Vec<Aggregate> = keys.into_iter().collect();
            let n = keys.len();
            let step = (
                0..n,
                prop_oneof![6 => Just(0u32), 2 => 1u32..=2],
                prop::bool::weighted(0.1),
            )
                .prop_map(|(key, fail_before_append, fail_after_append)| Step {
                    key,
                    fail_before_append,
                    fail_after_append,
                });
            (
                Just(keys),
                prop::collection::vec(step, 2..=24),
                prop::option::weighted(0.4, 1usize..12),
                1usize..=2,
            )
        })
        .prop_map(|(keys, steps, restart_after_stored, workers)| Plan {
            keys,
            steps: within_budget(steps),
            restart_after_stored,
            workers,
        })
}

/// The steps with each key's failures cut to [`MAX_FAILURE_ROUNDS_PER_KEY`], the first ones
/// kept: every generated plan is usable (a filter would reject most long plans).
fn within_budget(mut steps: Vec<Step>) -> Vec<Step> {
    let mut spent: HashMap<usize, u32> = HashMap::new();
    for step in &mut steps {
        let left = MAX_FAILURE_ROUNDS_PER_KEY - *spent.get(&step.key).unwrap_or(&0);
        step.fail_before_append = step.fail_before_append.min(left);
        step.fail_after_append &= step.fail_before_append < left;
        *spent.entry(step.key).or_default() +=
            step.fail_before_append + u32::from(step.fail_after_append);
    }
    steps
}

/// On an ordered subscription every failure of a key's message is also a delivery attempt
/// of each later message of the key (they are nacked until it is stored). A key with 5
/// failure rounds can therefore dead-letter a healthy message: that is the dead-letter
/// scenario's ground. Ordering cases stay below it: 2 rounds, one for the restart, and one
/// for a delivery the plan did not ask for. With 3 the last message of a key succeeded on
/// its 5th and last attempt, so one lapsed lease on a loaded machine (16 test threads on 2
/// cores) dead-lettered it: that showed in 2 of 6 full runs.
const MAX_FAILURE_ROUNDS_PER_KEY: u32 = 2;

fn run(ctx: &Context) -> ScenarioReport {
    property(ctx, &SCENARIO, plan(), |ctx, n, plan| {
        block_on(ctx, check(ctx, n, plan, None)).map_err(|e| format!("{e:#}"))?
    })
}

fn run_under_faults(ctx: &Context) -> ScenarioReport {
    // Only our service injects faults; elsewhere the case would silently be the plain
    // ordering scenario, so it is not run at all.
    let pubsub = ctx.backbone.pubsub();
    if pubsub != PubsubImplementation::PubsubService {
        return ScenarioReport::skipped(
            UNDER_PUBSUB_FAULTS.name,
            ctx.backbone.kind().to_string(),
            format!(
                "fault injection needs our Pub/Sub service ({pubsub} cannot inject faults): run with RIG_PUBSUB=pubsub-service on the local or containers target"
            ),
        );
    }
    property(
        ctx,
        &UNDER_PUBSUB_FAULTS,
        (plan(), pubsub_faults()),
        |ctx, n, (plan, faults)| {
            block_on(ctx, check(ctx, n, plan, Some(faults))).map_err(|e| format!("{e:#}"))?
        },
    )
}

async fn check(
    ctx: &Context,
    n: usize,
    plan: &Plan,
    pubsub_faults: Option<&PubsubFaults>,
) -> anyhow::Result<Result<CaseNotes, String>> {
    let scope = match pubsub_faults {
        None => format!("ordering-{n}"),
        Some(_) => format!("ordering-faults-{n}"),
    };
    let case = ctx.case(&scope).await?;
    let env = &case.env;
    let Wiring {
        options,
        raw_topic,
        merged: merged_subscription,
        dead_letters,
    } = case.wiring.clone();

    // Per-key order is promised by the subscription's message ordering; the epic requires it.
    // On GCP the worker may not read subscriptions (roles/pubsub.subscriber only consumes):
    // there the Terraform's setting stands, and `rig drift` compares it with the live one.
    let ordered = if case.is_shared() {
        ctx.world
            .topology
            .subscription(&options.subscription)
            .is_some_and(|s| s.enable_message_ordering)
    } else {
        let admin = env.pubsub.subscription_admin().await?;
        admin
            .get_subscription()
            .set_subscription(env.pubsub.subscription_path(&options.subscription))
            .send()
            .await?
            .enable_message_ordering
    };
    if !ordered {
        return Ok(Err(format!(
            "{} delivers without message ordering: per-key order is not guaranteed",
            options.subscription
        )));
    }
    if let Some(faults) = pubsub_faults {
        let admin = env.pubsub.subscription_admin().await?;
        let path = env.pubsub.subscription_path(&options.subscription);
        let live = admin
            .get_subscription()
            .set_subscription(path)
            .send()
            .await?;
        admin
            .update_subscription()
            .set_subscription(live.set_labels(faults.labels()))
            .set_update_mask(google_cloud_wkt::FieldMask::default().set_paths(["labels"]))
            .send()
            .await?;
    }

    let mut seq: HashMap<usize, u32> = HashMap::new();
    let mut faults = FaultPlan::default();
    let mut events = Vec::new();
    for step in &plan.steps {
        let s = seq.entry(step.key).or_default();
        *s += 1;
        let event = case.event(&plan.keys[step.key], *s);
        if step.fail_before_append > 0 {
            faults.fail_before_append(event.event_id, Failures::Times(step.fail_before_append));
        }
        if step.fail_after_append {
            faults.fail_once_after_append(event.event_id);
        }
        events.push(event);
    }
    let faults = Arc::new(faults);
    let expected = by_key(events.iter().map(|e| {
        (
            envelope::ordering_key(&e.account_id, &e.aggregate_type, &e.aggregate_id),
            e.event_id,
        )
    }));

    let merged = case.collector(&merged_subscription).await?;
    let dlq = case.collector(&dead_letters).await?;
    let max_attempts = options.max_delivery_attempts.unwrap_or(u32::MAX);
    case.producer(&raw_topic)
        .await?
        .publish_all(&events)
        .await?;

    let store = case.ledger().await?;
    let mut workers = Vec::new();
    for _ in 0..plan.workers {
        workers.push(RunningWorker::start(env, options.clone(), faults.clone()).await?);
    }
    if let Some(after) = plan.restart_after_stored.filter(|a| *a < events.len()) {
        case.wait_for(
            &format!("{after} stored before the restart"),
            Duration::from_secs(30),
            || async { store.count().await.unwrap_or(0) as usize >= after },
        )
        .await;
        let first = workers.remove(0);
        first.stop().await?;
        workers.push(RunningWorker::start(env, options.clone(), faults.clone()).await?);
    }
    let total = events.len();
    // Wait for everything, or until nothing moves for longer than the retry policy's longest
    // backoff allows: then the service stopped delivering (see the stall check below).
    // A stopped worker's client stops reading its stream: what the service had already sent
    // on it stays leased until the lease the client asked for runs out, then comes back (as
    // on the real service). A case that restarts a worker may wait that long.
    let restart_lease = if plan.restart_after_stored.is_some() {
        CLIENT_LEASE
    } else {
        Duration::ZERO
    };
    let stall_window = options.block_timeout + Duration::from_secs(5) + restart_lease;
    // An event that used up its delivery attempts is on events.dlq instead of merged: that
    // is the production configuration's contract, and it settles the event too.
    let progress = || async {
        let given_up = exhausted(&dlq.messages(), max_attempts);
        let mut stored = store.count().await.unwrap_or(0) as usize;
        // Usually none: only then is the ledger asked which of them it holds.
        if !given_up.is_empty() {
            let ids: Vec<uuid::Uuid> = given_up.keys().copied().collect();
            let held = store
                .find(&ids)
                .await
                .map_or(ids.len(), |found| found.len());
            stored += ids.len() - held;
        }
        let mut published: HashSet<uuid::Uuid> =
            merged.messages().iter().filter_map(event_id_of).collect();
        published.extend(given_up.keys());
        (stored, published.len())
    };
    let mut last = progress().await;
    let mut last_change = std::time::Instant::now();
    let mut next_report = std::time::Instant::now() + Duration::from_secs(30);
    let settled = loop {
        let now = progress().await;
        if now.0 >= total && now.1 >= total {
            break true;
        }
        if now != last {
            last = now;
            last_change = std::time::Instant::now();
        } else if last_change.elapsed() > stall_window {
            break false;
        }
        if std::time::Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            case.progress(&format!(
                "{} of {total} stored, {} of {total} on merged; nothing moved for {}s (gives up after {}s)",
                now.0,
                now.1,
                last_change.elapsed().as_secs(),
                stall_window.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A moment more, so late duplicates would be seen (and a lost ack's redelivery).
    tokio::time::sleep(Duration::from_millis(500) + LOST_ACK_LEASE).await;
    let mut stats = Vec::new();
    for w in workers {
        stats.push(w.stop_and_describe().await);
    }
    let merged = merged.stop().await;
    let dead = dlq.stop().await;
    let exhausted = exhausted(&dead, max_attempts);
    let premature: Vec<String> = dead
        .iter()
        .filter_map(|m| Some((event_id_of(m)?, m)))
        .filter(|(id, _)| !exhausted.contains_key(id))
        .map(|(id, m)| {
            format!(
                "{id} reached events.dlq before its last attempt ({:?})",
                m.attributes
            )
        })
        .collect();
    // With the workers gone, ask the emulator directly what it would hand out now: evidence
    // for telling a stalled stream from lost messages.
    // (Not on a shared acceptance subscription: the pull would lease other runs' messages.)
    let unary_pull = if settled || !env.pubsub.is_emulator() || case.is_shared() {
        None
    } else {
        Some(unary_pull_count(env, &options.subscription).await)
    };

    let rows = store.all().await?;
    let stored = by_key(rows.iter().map(|r| {
        (
            envelope::ordering_key(&r.account_id, &r.aggregate_type, &r.aggregate_id),
            r.event_id,
        )
    }));
    // Under injected faults Pub/Sub is at-least-once towards the worker, and a duplicate may
    // reach the other worker, which has not published it: a repeat on merged is allowed, so
    // merged is judged on each event's first appearance. The ledger gets no such allowance.
    let delivered = match pubsub_faults {
        Some(_) => first_copies_by_key(&merged),
        None => by_key(
            merged
                .iter()
                .filter_map(|m| Some((m.ordering_key.clone(), event_id_of(m)?))),
        ),
    };
    let repeats_on_merged = merged.len() - delivered.values().map(Vec::len).sum::<usize>();
    let mut violations = premature;
    let mut stalled_keys = Vec::new();
    let mut given_up = Vec::new();
    for (key, published) in &expected {
        for (place, got) in [
            ("event_store", stored.get(key)),
            ("events.merged", delivered.get(key)),
        ] {
            let got = got.cloned().unwrap_or_default();
            // Dead-lettered after its last attempt and not here: the rest keeps its order.
            let (want, dead_lettered): (Vec<uuid::Uuid>, Vec<uuid::Uuid>) = published
                .iter()
                .partition(|id| !exhausted.contains_key(id) || got.contains(id));
            for id in dead_lettered {
                given_up.push(format!("{place} {key}: {id} (attempt {})", exhausted[&id]));
            }
            if got == want {
                continue;
            }
            // Order, gaps and duplicates are decided on what arrived; only a stalled service
            // excuses what did not arrive at all.
            if !settled && want.starts_with(&got) {
                stalled_keys.push(format!("{place} {key}: {} of {}", got.len(), want.len()));
            } else {
                violations.push(format!(
                    "{place}, key {key}: {}{}",
                    describe(&want, &got),
                    trace(&want, &faults, settled)
                ));
            }
        }
    }
    if !violations.is_empty() {
        return Ok(Err(format!(
            "{} (workers: {})",
            violations.join("; "),
            stats.join(" | ")
        )));
    }
    if stalled_keys.is_empty() {
        let mut figures = match pubsub_faults {
            None => Vec::new(),
            Some(f) => vec![format!(
                "case {n} {f:?}: {repeats_on_merged} repeat(s) on merged; workers: {}",
                stats.join(" | ")
            )],
        };
        // Only deliveries beyond the plan's failures (leases that lapsed on a loaded machine)
        // can use up an event's attempts: say so, as it shrinks what the case proved.
        if !given_up.is_empty() {
            figures.push(format!(
                "case {n}: dead-lettered after their last delivery attempt, the rest of their keys in order: {}",
                given_up.join(", ")
            ));
        }
        return Ok(Ok(CaseNotes {
            divergences: Vec::new(),
            figures,
        }));
    }
    let divergence = rig_harness::divergence::Divergence {
        service: "pubsub-emulator".into(),
        feature: "redelivery on an ordered subscription after nacks".into(),
        observed: format!(
            "after nacks, the rest of some ordering keys was never redelivered ({}; nothing moved for {}s); {}; what did arrive was in order, without gaps or duplicates",
            stalled_keys.join(", "),
            stall_window.as_secs(),
            match &unary_pull {
                Some(Ok(n)) => format!(
                    "a unary pull afterwards returned {n} message(s), so the emulator still held them"
                ),
                Some(Err(e)) => format!("a unary pull afterwards failed: {e}"),
                None => "no unary pull was made".into(),
            }
        ),
        real_service:
            "redelivers a nacked message and the later messages of its key after the retry backoff"
                .into(),
    };
    // Only Google's emulator has this known defect; on our own service or real Pub/Sub a
    // stalled key is a failure.
    if !env.pubsub.is_google_emulator() {
        return Ok(Err(divergence.observed));
    }
    Ok(Ok(CaseNotes {
        divergences: vec![divergence],
        figures: Vec::new(),
    }))
}

/// Events on events.dlq after their last delivery attempt (as the service or the worker
/// numbered it), with that attempt.
fn exhausted(
    dead: &[google_cloud_pubsub::model::Message],
    max_attempts: u32,
) -> HashMap<uuid::Uuid, u32> {
    dead.iter()
        .filter_map(|m| {
            let attempt: u32 = m
                .attributes
                .get(envelope::SERVICE_DELIVERY_COUNT)
                .or_else(|| m.attributes.get(envelope::DEAD_LETTER_DELIVERY_ATTEMPT))?
                .parse()
                .ok()?;
            (attempt >= max_attempts).then_some((event_id_of(m)?, attempt))
        })
        .collect()
}

/// Evidence for a violation: the delivery attempts of each of the key's events that reached
/// the append step, by publish position, and whether the run had settled.
fn trace(want: &[uuid::Uuid], faults: &FaultPlan, settled: bool) -> String {
    let attempts: Vec<String> = want
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{}: {:?}", i + 1, faults.attempts(id)))
        .collect();
    format!(
        " (attempts that reached the append, by position: {}; {})",
        attempts.join(", "),
        if settled {
            "the run had settled"
        } else {
            "the run had not settled: nothing moved for the stall window"
        }
    )
}

/// What is wrong with `got` compared with `want`, in publish positions.
fn describe(want: &[uuid::Uuid], got: &[uuid::Uuid]) -> String {
    let position = |id: &uuid::Uuid| {
        want.iter()
            .position(|w| w == id)
            .map_or(-1, |p| p as i64 + 1)
    };
    let got_positions: Vec<i64> = got.iter().map(position).collect();
    format!(
        "expected positions 1..={}, got {:?}",
        want.len(),
        got_positions
    )
}

/// How many messages a unary REST pull returns right now (the emulator's view of what is
/// deliverable, without the streaming machinery).
pub(crate) async fn unary_pull_count(
    env: &rig_harness::environment::Environment,
    subscription: &str,
) -> Result<usize, String> {
    let endpoint = env.pubsub.endpoint.clone().ok_or("not an emulator")?;
    let url = format!(
        "{endpoint}/v1/{}:pull",
        env.pubsub.subscription_path(subscription)
    );
    let response = reqwest::Client::new()
        .post(url)
        .json(&serde_json::json!({ "maxMessages": 1000, "returnImmediately": true }))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    Ok(body["receivedMessages"].as_array().map_or(0, Vec::len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_pubsub::model::Message;

    fn dead_letter(id: uuid::Uuid, attribute: &str, attempt: &str) -> Message {
        Message::new().set_attributes([
            (envelope::EVENT_ID.to_string(), id.to_string()),
            (attribute.to_string(), attempt.to_string()),
        ])
    }

    fn failure_rounds(plan: &Plan, key: usize) -> u32 {
        plan.steps
            .iter()
            .filter(|s| s.key == key)
            .map(|s| s.fail_before_append + u32::from(s.fail_after_append))
            .sum()
    }

    proptest! {
        #[test]
        fn plans_keep_every_key_within_its_failure_budget(plan in plan()) {
            for key in 0..plan.keys.len() {
                prop_assert!(failure_rounds(&plan, key) <= MAX_FAILURE_ROUNDS_PER_KEY, "{plan:?}");
            }
        }
    }

    #[test]
    fn the_budget_keeps_a_keys_first_failures() {
        let step = |key, fail_before_append, fail_after_append| Step {
            key,
            fail_before_append,
            fail_after_append,
        };
        let cut = within_budget(vec![
            step(0, 1, false),
            step(1, 2, true),
            step(0, 2, true),
            step(0, 1, true),
        ]);
        let rounds: Vec<(u32, bool)> = cut
            .iter()
            .map(|s| (s.fail_before_append, s.fail_after_append))
            .collect();
        assert_eq!(rounds, [(1, false), (2, false), (1, false), (0, false)]);
    }

    #[test]
    fn only_events_dead_lettered_on_their_last_attempt_count_as_given_up() {
        let by_service = uuid::Uuid::new_v4();
        let by_worker = uuid::Uuid::new_v4();
        let early = uuid::Uuid::new_v4();
        let unreadable = uuid::Uuid::new_v4();
        let dead = [
            dead_letter(by_service, envelope::SERVICE_DELIVERY_COUNT, "5"),
            dead_letter(by_worker, envelope::DEAD_LETTER_DELIVERY_ATTEMPT, "5"),
            dead_letter(early, envelope::DEAD_LETTER_DELIVERY_ATTEMPT, "3"),
            dead_letter(unreadable, envelope::SERVICE_DELIVERY_COUNT, "five"),
            Message::new(),
        ];
        let given_up = exhausted(&dead, 5);
        assert_eq!(given_up.len(), 2, "{given_up:?}");
        assert_eq!(given_up.get(&by_service), Some(&5));
        assert_eq!(given_up.get(&by_worker), Some(&5));
        // Without a dead-letter policy nothing is ever given up.
        assert!(exhausted(&dead, u32::MAX).is_empty());
    }
}
