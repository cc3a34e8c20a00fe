//! Publishing events to `events.raw` the way the sync engine will: one ordering key per
//! aggregate, and oversized payloads through the claim check.

use anyhow::Context;
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::publisher::PublishFuture;
use google_cloud_storage::client::Storage;

use crate::Connections;
use crate::claim_check::{self, DEFAULT_THRESHOLD_BYTES};
use crate::envelope;
use crate::event_store::NewEvent;

pub const THRESHOLD_VAR: &str = "BACKBONE_CLAIM_CHECK_THRESHOLD_BYTES";

/// Pub/Sub refuses requests over 10 MB, attributes and ordering key included: keep a margin.
const MAX_THRESHOLD_BYTES: usize = 9 * 1024 * 1024;

fn parse_threshold(value: &str) -> anyhow::Result<usize> {
    let bytes: usize = value
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{THRESHOLD_VAR}={value:?} is not a number of bytes"))?;
    anyhow::ensure!(
        bytes <= MAX_THRESHOLD_BYTES,
        "{THRESHOLD_VAR}={bytes} is too close to Pub/Sub's 10 MB request limit (which also counts attributes): use at most {MAX_THRESHOLD_BYTES}"
    );
    Ok(bytes)
}

pub struct Producer {
    publisher: Publisher,
    storage: Storage,
    bucket: String,
    /// Payloads larger than this many bytes go through the bucket.
    pub threshold: usize,
    /// Set on every message besides the event's own (an acceptance run's probe attribute).
    extra_attributes: Vec<(String, String)>,
}

impl Producer {
    /// A producer on `topic`. The claim-check threshold is `BACKBONE_CLAIM_CHECK_THRESHOLD_BYTES`
    /// when set, else [`DEFAULT_THRESHOLD_BYTES`].
    pub async fn connect(env: &Connections, topic: &str) -> anyhow::Result<Self> {
        let threshold = match std::env::var(THRESHOLD_VAR) {
            Ok(value) => parse_threshold(&value)?,
            Err(_) => DEFAULT_THRESHOLD_BYTES,
        };
        Ok(Self {
            publisher: env.pubsub.publisher(topic).await?,
            storage: env.storage.client().await?,
            bucket: env.bucket.clone(),
            threshold,
            extra_attributes: Vec::new(),
        })
    }

    /// Sets `key` to `value` on every message this producer publishes (staging acceptance
    /// marks every message with the probe attribute, so only probe-only subscriptions see it).
    pub fn with_attribute(mut self, key: &str, value: &str) -> Self {
        self.extra_attributes
            .push((key.to_string(), value.to_string()));
        self
    }

    pub fn with_threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// The message `publish_all` sends for `event`: the payload inline, or — above the
    /// threshold — written to the bucket first and referenced (a claim check).
    pub async fn message(&self, event: &NewEvent) -> anyhow::Result<Message> {
        let mut message = if event.payload.len() > self.threshold {
            let claim = claim_check::put(&self.storage, &self.bucket, event)
                .await
                .with_context(|| format!("claim check for event {}", event.event_id))?;
            envelope::claim_message(event, &claim)
        } else {
            envelope::inline_message(event)
        };
        for (key, value) in &self.extra_attributes {
            message.attributes.insert(key.clone(), value.clone());
        }
        Ok(message)
    }

    /// Queues one prepared message: calls in order keep each ordering key's order. The
    /// future resolves to its message id.
    pub fn publish_message(&self, message: Message) -> PublishFuture {
        self.publisher.publish(message)
    }

    /// Sends whatever is queued now instead of waiting for a batch to fill.
    pub async fn flush(&self) {
        self.publisher.flush().await;
    }

    /// After a refused publish the client holds back the rest of that ordering key (to keep
    /// its order); this lets it go on.
    pub fn resume(&self, ordering_key: &str) {
        self.publisher.resume_publish(ordering_key);
    }

    /// The bucket client, for objects the producer references itself.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Publishes `events` in order (per ordering key, the order of this slice is the delivery
    /// order) and returns each one's message id.
    pub async fn publish_all(&self, events: &[NewEvent]) -> anyhow::Result<Vec<String>> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            // publish() only enqueues: calling it in order keeps each key's order.
            pending.push(self.publish_message(self.message(event).await?));
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

#[cfg(test)]
mod tests {
    use super::parse_threshold;

    #[test]
    fn thresholds_are_bytes_below_the_pubsub_limit() {
        assert_eq!(parse_threshold("1048576").unwrap(), 1_048_576);
        assert!(
            parse_threshold("10485760")
                .unwrap_err()
                .to_string()
                .contains("10 MB")
        );
        assert!(
            parse_threshold("1MB")
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
    }
}
