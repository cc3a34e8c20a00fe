//! Between the REST surface's types (the official Rust client's `google_cloud_pubsub::model`,
//! serde in the proto3 JSON mapping) and the gRPC surface's prost types the broker keeps.
//! Fields the service does not support are refused on the way in, not silently dropped.

use google_cloud_pubsub::model;
use google_cloud_wkt as wkt;

use crate::error::{Result, ServiceError};
use crate::proto;

fn duration_in(d: &wkt::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.seconds(),
        nanos: d.nanos(),
    }
}

fn duration_out(d: &prost_types::Duration) -> wkt::Duration {
    wkt::Duration::clamp(d.seconds, d.nanos)
}

fn timestamp_in(t: &wkt::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds(),
        nanos: t.nanos(),
    }
}

fn timestamp_out(t: &prost_types::Timestamp) -> wkt::Timestamp {
    wkt::Timestamp::clamp(t.seconds, t.nanos)
}

pub fn topic_in(t: model::Topic) -> Result<proto::Topic> {
    if t.schema_settings.is_some() {
        return Err(ServiceError::unsupported("Topic schema_settings"));
    }
    if t.ingestion_data_source_settings.is_some() {
        return Err(ServiceError::unsupported(
            "Topic ingestion_data_source_settings",
        ));
    }
    if !t.message_transforms.is_empty() {
        return Err(ServiceError::unsupported("Topic message_transforms"));
    }
    Ok(proto::Topic {
        name: t.name,
        labels: t.labels,
        message_storage_policy: t
            .message_storage_policy
            .map(|p| proto::MessageStoragePolicy {
                allowed_persistence_regions: p.allowed_persistence_regions,
                enforce_in_transit: p.enforce_in_transit,
            }),
        kms_key_name: t.kms_key_name,
        satisfies_pzs: t.satisfies_pzs,
        message_retention_duration: t.message_retention_duration.as_ref().map(duration_in),
        tags: t.tags,
        ..Default::default()
    })
}

pub fn topic_out(t: proto::Topic) -> model::Topic {
    let mut out = model::Topic::new()
        .set_name(t.name)
        .set_labels(t.labels)
        .set_kms_key_name(t.kms_key_name)
        .set_satisfies_pzs(t.satisfies_pzs)
        .set_or_clear_message_retention_duration(
            t.message_retention_duration.as_ref().map(duration_out),
        )
        .set_tags(t.tags)
        .set_state(model::topic::State::from(t.state));
    if let Some(p) = t.message_storage_policy {
        out = out.set_message_storage_policy(
            model::MessageStoragePolicy::new()
                .set_allowed_persistence_regions(p.allowed_persistence_regions)
                .set_enforce_in_transit(p.enforce_in_transit),
        );
    }
    out
}

pub fn subscription_in(s: model::Subscription) -> Result<proto::Subscription> {
    crate::broker::supported_delivery(
        s.bigquery_config.is_some()
            || s.cloud_storage_config.is_some()
            || s.bigtable_config.is_some(),
        s.push_config
            .as_ref()
            .is_some_and(|p| !p.push_endpoint.is_empty()),
        !s.message_transforms.is_empty(),
    )?;
    Ok(proto::Subscription {
        name: s.name,
        topic: s.topic,
        ack_deadline_seconds: s.ack_deadline_seconds,
        retain_acked_messages: s.retain_acked_messages,
        message_retention_duration: s.message_retention_duration.as_ref().map(duration_in),
        labels: s.labels,
        enable_message_ordering: s.enable_message_ordering,
        expiration_policy: s.expiration_policy.map(|p| proto::ExpirationPolicy {
            ttl: p.ttl.as_ref().map(duration_in),
        }),
        filter: s.filter,
        dead_letter_policy: s.dead_letter_policy.map(|p| proto::DeadLetterPolicy {
            dead_letter_topic: p.dead_letter_topic,
            max_delivery_attempts: p.max_delivery_attempts,
        }),
        retry_policy: s.retry_policy.map(|p| proto::RetryPolicy {
            minimum_backoff: p.minimum_backoff.as_ref().map(duration_in),
            maximum_backoff: p.maximum_backoff.as_ref().map(duration_in),
        }),
        detached: s.detached,
        enable_exactly_once_delivery: s.enable_exactly_once_delivery,
        tags: s.tags,
        ..Default::default()
    })
}

pub fn subscription_out(s: proto::Subscription) -> model::Subscription {
    let mut out = model::Subscription::new()
        .set_name(s.name)
        .set_topic(s.topic)
        .set_ack_deadline_seconds(s.ack_deadline_seconds)
        .set_retain_acked_messages(s.retain_acked_messages)
        .set_or_clear_message_retention_duration(
            s.message_retention_duration.as_ref().map(duration_out),
        )
        .set_labels(s.labels)
        .set_enable_message_ordering(s.enable_message_ordering)
        .set_filter(s.filter)
        .set_detached(s.detached)
        .set_enable_exactly_once_delivery(s.enable_exactly_once_delivery)
        .set_or_clear_topic_message_retention_duration(
            s.topic_message_retention_duration
                .as_ref()
                .map(duration_out),
        )
        .set_state(model::subscription::State::from(s.state))
        .set_tags(s.tags);
    if let Some(p) = s.expiration_policy {
        out = out.set_expiration_policy(
            model::ExpirationPolicy::new().set_or_clear_ttl(p.ttl.as_ref().map(duration_out)),
        );
    }
    if let Some(p) = s.dead_letter_policy {
        out = out.set_dead_letter_policy(
            model::DeadLetterPolicy::new()
                .set_dead_letter_topic(p.dead_letter_topic)
                .set_max_delivery_attempts(p.max_delivery_attempts),
        );
    }
    if let Some(p) = s.retry_policy {
        out = out.set_retry_policy(
            model::RetryPolicy::new()
                .set_or_clear_minimum_backoff(p.minimum_backoff.as_ref().map(duration_out))
                .set_or_clear_maximum_backoff(p.maximum_backoff.as_ref().map(duration_out)),
        );
    }
    out
}

pub fn message_in(m: model::Message) -> proto::PubsubMessage {
    proto::PubsubMessage {
        data: m.data,
        attributes: m.attributes,
        message_id: m.message_id,
        publish_time: m.publish_time.as_ref().map(timestamp_in),
        ordering_key: m.ordering_key,
    }
}

pub fn message_out(m: proto::PubsubMessage) -> model::Message {
    model::Message::new()
        .set_data(m.data)
        .set_attributes(m.attributes)
        .set_message_id(m.message_id)
        .set_or_clear_publish_time(m.publish_time.as_ref().map(timestamp_out))
        .set_ordering_key(m.ordering_key)
}
