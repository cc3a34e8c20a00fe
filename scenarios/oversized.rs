//! Scenario 5 — oversized payloads through the claim check.
//!
//! Any payload from a few bytes to 12 MB round-trips byte-exact: above the threshold the
//! producer writes it to the bucket and publishes a reference with size and SHA-256; the worker
//! verifies both and the ledger keeps the full payload. A missing or modified object is
//! dead-lettered with its reason and nothing is stored.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::fixtures::Aggregate;
use super::support::{FaultPlan, RunningWorker, Wiring, block_on, event_id_of};
use super::{CaseNotes, Context, Scenario, ScenarioReport, property};
use rig_events::claim_check::DEFAULT_THRESHOLD_BYTES;
use rig_events::envelope;
use rig_events::storage::StorageConnection;

pub const SCENARIO: Scenario = Scenario {
    name: "oversized_payloads",
    invariant: "payloads up to 12 MB round-trip byte-exact through the claim check; a missing or modified object is dead-lettered with its reason and not stored",
    conditions: "payloads from 11 bytes to 12 MB through the bucket (object + size + SHA-256); deleted and modified objects",
    default_cases: 3,
    run,
    not_on_gcp: None,
};

const MAX_PAYLOAD: usize = 12 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    None,
    Delete,
    Modify,
}

#[derive(Debug, Clone)]
pub struct Item {
    size: usize,
    seed: u64,
    tamper: Tamper,
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => 0usize..2048,
        2 => (DEFAULT_THRESHOLD_BYTES - 256)..(DEFAULT_THRESHOLD_BYTES + 256),
        2 => (1024 * 1024)..=MAX_PAYLOAD,
        1 => Just(MAX_PAYLOAD),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    (
        size(),
        any::<u64>(),
        prop_oneof![6 => Just(Tamper::None), 1 => Just(Tamper::Delete), 1 => Just(Tamper::Modify)],
    )
        .prop_map(|(size, seed, tamper)| Item { size, seed, tamper })
}

/// A JSON payload of exactly `max(size, 11)` bytes (`{"blob":""}` is the smallest), its content fixed by `seed`.
fn payload(size: usize, seed: u64) -> String {
    const PREFIX: &str = "{\"blob\":\"";
    const SUFFIX: &str = "\"}";
    let body = size.saturating_sub(PREFIX.len() + SUFFIX.len());
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = seed | 1;
    let mut out = String::with_capacity(body + PREFIX.len() + SUFFIX.len());
    out.push_str(PREFIX);
    for _ in 0..body {
        // xorshift64: fast, and the content only has to differ between seeds.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push(alphabet[(state % 64) as usize] as char);
    }
    out.push_str(SUFFIX);
    out
}

/// Random items, plus in every case one claim-checked payload whose object is modified: the
/// verification must be exercised every time, not only when the dice allow.
fn items() -> impl Strategy<Value = Vec<Item>> {
    (
        prop::collection::vec(item(), 1..=3),
        (DEFAULT_THRESHOLD_BYTES + 1)..(2 * 1024 * 1024),
        any::<u64>(),
    )
        .prop_map(|(mut items, size, seed)| {
            items.push(Item {
                size,
                seed,
                tamper: Tamper::Modify,
            });
            items
        })
}

fn run(ctx: &Context) -> ScenarioReport {
    property(ctx, &SCENARIO, items(), |ctx, n, items| {
        block_on(ctx, check(ctx, n, items)).map_err(|e| format!("{e:#}"))?
    })
}

async fn check(
    ctx: &Context,
    n: usize,
    items: &[Item],
) -> anyhow::Result<Result<CaseNotes, String>> {
    let case = ctx.case(&format!("oversized-{n}")).await?;
    let env = &case.env;
    let Wiring {
        options,
        raw_topic,
        dead_letters: dlq_subscription,
        ..
    } = case.wiring.clone();
    let dlq = case.collector(&dlq_subscription).await?;
    let producer = case.producer(&raw_topic).await?;
    let storage = env.storage.client().await?;
    let mut events = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut event = case.event(
            &Aggregate {
                account: 0,
                record: i,
                id: 900 + i as u16,
            },
            1,
        );
        event.payload = payload(item.size, item.seed);
        // Only claim-checked payloads have an object to tamper with.
        let tamper = if event.payload.len() > producer.threshold {
            item.tamper
        } else {
            Tamper::None
        };
        producer.publish_all(std::slice::from_ref(&event)).await?;
        let object = envelope::claim_object_name(&event);
        let bucket = StorageConnection::bucket_path(&env.bucket);
        match tamper {
            Tamper::None => {}
            Tamper::Delete => {
                env.storage
                    .delete_object(&reqwest::Client::new(), &env.bucket, &object)
                    .await?;
            }
            Tamper::Modify => {
                let mut bytes = event.payload.clone().into_bytes();
                let middle = bytes.len() / 2;
                bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
                storage
                    .write_object(bucket, object, bytes::Bytes::from(bytes))
                    .send_buffered()
                    .await?;
            }
        }
        events.push((event, tamper));
    }
    let store = case.ledger().await?;
    let worker = RunningWorker::start(env, options, Arc::new(FaultPlan::default())).await?;
    let intact = events.iter().filter(|(_, t)| *t == Tamper::None).count();
    let tampered = events.len() - intact;
    // Every event ends stored or dead-lettered; a broken worker may store a tampered one, so
    // wait for the total rather than for the expected split.
    case.wait_for(
        &format!("{} stored or dead-lettered", intact + tampered),
        Duration::from_secs(60),
        || async { store.count().await.unwrap_or(0) as usize + dlq.len() >= intact + tampered },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = worker.stop_and_describe().await;
    let dead = dlq.stop().await;

    let exact_bytes = env.engine.contains("MariaDB");
    let mut violations = Vec::new();
    for (event, tamper) in &events {
        let stored = store.find(&[event.event_id]).await?;
        let letter = dead.iter().find(|m| event_id_of(m) == Some(event.event_id));
        let size = event.payload.len();
        match tamper {
            Tamper::None => match stored.get(&event.event_id) {
                None => violations.push(format!("{size}-byte payload not stored")),
                // MariaDB keeps JSON text as given; MySQL 8 normalises it, so compare values there.
                Some(row) if exact_bytes && row.payload != event.payload => {
                    violations.push(format!(
                        "{size}-byte payload stored with other bytes ({} bytes)",
                        row.payload.len()
                    ))
                }
                Some(row) if event.differences(&row.as_new_event()).is_some() => {
                    violations.push(format!("{size}-byte payload stored with other content"))
                }
                Some(_) => {}
            },
            bad => {
                if stored.contains_key(&event.event_id) {
                    violations.push(format!(
                        "{size}-byte payload with a {bad:?} object was stored"
                    ));
                }
                let want = if *bad == Tamper::Delete {
                    "does not exist"
                } else {
                    "SHA-256"
                };
                match letter.and_then(|m| m.attributes.get(envelope::DEAD_LETTER_REASON)) {
                    Some(reason) if reason.contains(want) => {}
                    Some(reason) => violations.push(format!(
                        "{bad:?} object: reason {reason:?} does not say {want:?}"
                    )),
                    None => {
                        violations.push(format!("{bad:?} object: not dead-lettered with a reason"))
                    }
                }
            }
        }
    }
    // In the real payload bucket the case's objects go once checked (the worker's identity may
    // delete objects there); what cannot be deleted the bucket's lifecycle rule removes.
    let mut figures = Vec::new();
    if case.is_shared() {
        let http = rig_events::storage::http_client()?;
        let mut left = 0;
        for (event, tamper) in &events {
            if event.payload.len() <= producer.threshold || *tamper == Tamper::Delete {
                continue;
            }
            let object = envelope::claim_object_name(event);
            if let Err(e) = env.storage.delete_object(&http, &env.bucket, &object).await {
                tracing::warn!("removing the claim object {object}: {e}");
                left += 1;
            }
        }
        if left > 0 {
            figures.push(format!(
                "{left} claim object(s) could not be removed from {} (the lifecycle rule will)",
                env.bucket
            ));
        }
    }
    Ok(if violations.is_empty() {
        Ok(CaseNotes {
            divergences: Vec::new(),
            figures,
        })
    } else {
        Err(format!("{} (worker: {stats})", violations.join("; ")))
    })
}

#[cfg(test)]
mod tests {
    use super::payload;

    #[test]
    fn payloads_have_the_requested_size_and_are_json() {
        for size in [0, 11, 12, 13, 5000] {
            let p = payload(size, 7);
            assert_eq!(p.len(), size.max(11));
            assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok());
        }
        assert_ne!(payload(100, 1), payload(100, 2));
    }
}
