//! The plan's workload published as a SuiteX producer would (`rig_events::producer`): one
//! ordering key per aggregate, NetSuite records as payloads, those above the claim-check
//! threshold through the bucket, producer retries as second publishes of the same event, and
//! the poison corpus — each poison message alone in its publish request (a request is refused
//! whole) and left out of the history when Pub/Sub refuses it (it never reaches a worker).
//! Every message carries `rig_item`, the plan's item number.
//!
//! Everything is prepared (claim objects written) before the first fault, so a GCS outage
//! is the worker's and never the producer's; then published at the pace the run's gate
//! allows (see `mod.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use google_cloud_pubsub::model::Message;
use rig_events::envelope;
use rig_events::event_store::NewEvent;
use rig_events::producer::Producer;
use rig_events::storage::StorageConnection;
use rig_verify::history::Publish;
use rig_verify::plan::{self, Fixtures, Item, Plan};

use super::poison;

/// One message of the workload, ready to publish.
struct Prepared {
    item: u64,
    message: Message,
    poison: Option<String>,
}

pub struct Workload {
    messages: Vec<Prepared>,
    /// The history's annotation of each item's publish, by item number.
    pub annotations: Vec<Publish>,
}

fn event_of(plan: &Plan, item: &Item, fixtures: &Fixtures) -> anyhow::Result<NewEvent> {
    let aggregate = plan
        .aggregate(item)
        .with_context(|| format!("item {} names no aggregate", item.n))?;
    let record = fixtures
        .records
        .get(&aggregate.aggregate_type)
        .with_context(|| {
            format!(
                "no NetSuite record {:?} in fixtures/netsuite/",
                aggregate.aggregate_type
            )
        })?;
    let payload = plan::payload(item, aggregate, record).map_err(anyhow::Error::msg)?;
    Ok(NewEvent {
        account_id: aggregate.account_id.clone(),
        event_id: uuid::Uuid::parse_str(&item.event_id)
            .with_context(|| format!("item {}'s event_id {}", item.n, item.event_id))?,
        aggregate_type: aggregate.aggregate_type.clone(),
        aggregate_id: aggregate.aggregate_id.clone(),
        payload,
        created_at: chrono::DateTime::parse_from_rfc3339(&item.created_at)
            .with_context(|| format!("item {}'s created_at {}", item.n, item.created_at))?
            .to_utc(),
    })
}

/// Builds every message of `plan` (writing the claim-checked payloads and the poison cases'
/// objects to the bucket) and the history's annotation of each.
pub async fn prepare(
    plan: &Plan,
    fixtures: &Fixtures,
    corpus_dir: &Path,
    producer: &Producer,
    bucket: &str,
) -> anyhow::Result<Workload> {
    let mut messages: Vec<Prepared> = Vec::with_capacity(plan.items.len());
    let mut annotations = Vec::with_capacity(plan.items.len());
    let mut cases: HashMap<&str, serde_json::Value> = HashMap::new();
    for item in &plan.items {
        let event = event_of(plan, item, fixtures)?;
        let mut annotation = plan.annotate(item, Some(fixtures));
        let mut message = match (&item.poison, item.retry_of) {
            (Some(case), _) => {
                if !cases.contains_key(case.as_str()) {
                    cases.insert(case, poison::load_case(corpus_dir, case)?);
                }
                let built = poison::message(&cases[case.as_str()], case, &event, bucket)
                    .with_context(|| format!("building poison case {case}"))?;
                if let Some((object, bytes)) = built.upload {
                    producer
                        .storage()
                        .write_object(
                            StorageConnection::bucket_path(bucket),
                            object.clone(),
                            bytes::Bytes::from(bytes),
                        )
                        .send_buffered()
                        .await
                        .with_context(|| {
                            format!("writing poison case {case}'s object gs://{bucket}/{object}")
                        })?;
                }
                built.message
            }
            // A producer retry sends the very message again (its claim object is written).
            (None, Some(original)) => messages
                .get(original as usize)
                .map(|p| p.message.clone())
                .with_context(|| format!("item {} retries unknown item {original}", item.n))?,
            (None, None) => producer.message(&event).await?,
        };
        if item.poison.is_none() {
            let canonical = plan::canonical_json(&event.payload)
                .with_context(|| format!("item {}'s payload is not JSON", item.n))?;
            annotation.payload_sha256 = Some(envelope::sha256_hex(canonical.as_bytes()));
            annotation.payload_bytes = Some(event.payload.len() as u64);
        }
        message
            .attributes
            .insert(rig_verify::ITEM_ATTRIBUTE.into(), item.n.to_string());
        messages.push(Prepared {
            item: item.n,
            message,
            poison: item.poison.clone(),
        });
        annotations.push(annotation);
    }
    Ok(Workload {
        messages,
        annotations,
    })
}

/// How far publishing has got, for the run's gate and triggers.
#[derive(Default)]
pub struct Publishing {
    pub published: AtomicU64,
    pub done: AtomicBool,
    /// When the last item was confirmed.
    pub finished_ms: AtomicU64,
    /// Items never published because the run gave up on the worker.
    pub unpublished: AtomicU64,
    /// Poison cases Pub/Sub refused at publish (never delivered, left out of the history).
    pub refused: Mutex<Vec<String>>,
}

/// What the run's flow control says about the next item.
pub enum Gate {
    Publish,
    Wait,
    /// The worker stopped settling what it has: publishing more would only wait forever.
    GiveUp,
}

/// Publishes the workload in item order, each message when `gate(published so far)` lets it.
pub async fn publish(
    workload: &Workload,
    producer: &Producer,
    progress: &Publishing,
    gate: impl Fn(u64) -> Gate,
) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    'items: for prepared in &workload.messages {
        loop {
            match gate(progress.published.load(Ordering::SeqCst)) {
                Gate::Publish => break,
                Gate::Wait => tokio::time::sleep(Duration::from_millis(5)).await,
                Gate::GiveUp => {
                    let left = workload.messages.len() as u64 - prepared.item;
                    progress.unpublished.store(left, Ordering::SeqCst);
                    tracing::warn!(
                        "{left} item(s) of the plan left unpublished: the worker stopped settling messages"
                    );
                    break 'items;
                }
            }
        }
        if let Some(case) = &prepared.poison {
            // Alone in its request: what came before is sent and confirmed first, and nothing
            // follows until Pub/Sub has answered for it.
            producer.flush().await;
            for (item, future) in pending.drain(..) {
                confirm(item, future).await?;
            }
            let key = prepared.message.ordering_key.clone();
            let future = producer.publish_message(prepared.message.clone());
            producer.flush().await;
            if let Err(e) = future.await {
                producer.resume(&key);
                tracing::info!(
                    "item {} (poison case {case}) refused at publish: {e}",
                    prepared.item
                );
                if let Ok(mut refused) = progress.refused.lock() {
                    refused.push(case.clone());
                }
                // Never accepted, so never in flight: not counted as published.
                continue;
            }
        } else {
            pending.push((
                prepared.item,
                producer.publish_message(prepared.message.clone()),
            ));
        }
        progress.published.fetch_add(1, Ordering::SeqCst);
        if pending.len() >= 500 {
            for (item, future) in pending.drain(..) {
                confirm(item, future).await?;
            }
        }
    }
    producer.flush().await;
    for (item, future) in pending {
        confirm(item, future).await?;
    }
    progress
        .finished_ms
        .store(super::journal::now_ms(), Ordering::SeqCst);
    progress.done.store(true, Ordering::SeqCst);
    Ok(())
}

async fn confirm(
    item: u64,
    future: google_cloud_pubsub::publisher::PublishFuture,
) -> anyhow::Result<()> {
    future
        .await
        .map(|_| ())
        .with_context(|| format!("publishing item {item} of the plan"))
}
