//! Publishing events to `events.raw` the way the sync engine will: one ordering key per
//! aggregate, and oversized payloads through the claim check.

use anyhow::Context;
use google_cloud_pubsub::client::Publisher;
use google_cloud_storage::client::Storage;

use crate::claim_check::{self, DEFAULT_THRESHOLD_BYTES};
use crate::envelope;
use crate::environment::Environment;
use crate::event_store::NewEvent;

pub struct Producer {
    publisher: Publisher,
    storage: Storage,
    bucket: String,
    /// Payloads larger than this many bytes go through the bucket.
    pub threshold: usize,
}

impl Producer {
    pub async fn connect(env: &Environment, topic: &str) -> anyhow::Result<Self> {
        Ok(Self {
            publisher: env.pubsub.publisher(topic).await?,
            storage: env.storage.client().await?,
            bucket: env.bucket.clone(),
            threshold: DEFAULT_THRESHOLD_BYTES,
        })
    }

    pub fn with_threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// Publishes `events` in order (per ordering key, the order of this slice is the delivery
    /// order) and returns each one's message id.
    pub async fn publish_all(&self, events: &[NewEvent]) -> anyhow::Result<Vec<String>> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let message = if event.payload.len() > self.threshold {
                let claim = claim_check::put(&self.storage, &self.bucket, event)
                    .await
                    .with_context(|| format!("claim check for event {}", event.event_id))?;
                envelope::claim_message(event, &claim)
            } else {
                envelope::inline_message(event)
            };
            // publish() only enqueues: calling it in order keeps each key's order.
            pending.push(self.publisher.publish(message));
        }
        let mut ids = Vec::with_capacity(pending.len());
        for (event, future) in events.iter().zip(pending) {
            ids.push(
                future
                    .await
                    .with_context(|| format!("publishing event {}", event.event_id))?,
            );
        }
        Ok(ids)
    }
}
