//! Resource limits and name rules, with the errors the real service gives. Source:
//! <https://cloud.google.com/pubsub/quotas#resource_limits> and
//! <https://cloud.google.com/pubsub/docs/pubsub-basics#resource_names>.

use std::time::Duration;

use crate::error::{Result, ServiceError};
use crate::proto::PubsubMessage;

/// "Publish request: 10 MB (total size)"; "Message size (the data field): 10 MB".
pub const MAX_REQUEST_BYTES: usize = 10_000_000;
pub const MAX_MESSAGE_BYTES: usize = 10_000_000;
/// "Messages per publish request: 1,000".
pub const MAX_MESSAGES_PER_PUBLISH: usize = 1000;
/// "Attributes per message: 100"; "Attribute key size: 256 bytes"; "Attribute value size:
/// 1024 bytes".
pub const MAX_ATTRIBUTES: usize = 100;
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 256;
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// "Ordering key size: 1 KB".
pub const MAX_ORDERING_KEY_BYTES: usize = 1024;
/// Ack deadlines: 10..=600 s on a subscription (0 means the default, 10 s); 0..=600 s in
/// ModifyAckDeadline (<https://cloud.google.com/pubsub/docs/lease-management>).
pub const MIN_ACK_DEADLINE_SECONDS: i32 = 10;
pub const MAX_ACK_DEADLINE_SECONDS: i32 = 600;
pub const DEFAULT_ACK_DEADLINE_SECONDS: i32 = 10;
/// Dead-letter policy: 5..=100 attempts, 5 when unset
/// (<https://cloud.google.com/pubsub/docs/handling-failures#dead_letter_topic>).
pub const MIN_DELIVERY_ATTEMPTS: i32 = 5;
pub const MAX_DELIVERY_ATTEMPTS: i32 = 100;
pub const DEFAULT_DELIVERY_ATTEMPTS: i32 = 5;
/// Pull: at most 1000 messages per response.
pub const MAX_PULL_MESSAGES: usize = 1000;
/// Message retention on topics and subscriptions: "Cannot be more than 31 days or less than 10
/// minutes"; subscriptions default to 7 days (`message_retention_duration` of `Topic` and
/// `Subscription`, <https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.topics>,
/// <https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions>).
pub const MIN_RETENTION: Duration = Duration::from_secs(10 * 60);
pub const MAX_RETENTION: Duration = Duration::from_secs(31 * 24 * 3600);
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The size Pub/Sub counts for a message: data, attribute keys and values, ordering key.
pub fn message_bytes(m: &PubsubMessage) -> usize {
    m.data.len()
        + m.attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + m.ordering_key.len()
}

/// Checks one publish request's messages.
pub fn check_publish(messages: &[PubsubMessage]) -> Result<()> {
    if messages.is_empty() {
        return Err(ServiceError::invalid(
            "The request must contain at least one message.",
        ));
    }
    if messages.len() > MAX_MESSAGES_PER_PUBLISH {
        return Err(ServiceError::invalid(format!(
            "The value for message_count is too large. You passed {} in the request, but the maximum value is {MAX_MESSAGES_PER_PUBLISH}.",
            messages.len()
        )));
    }
    let mut total = 0usize;
    for m in messages {
        let size = message_bytes(m);
        total += size;
        if m.data.is_empty() && m.attributes.is_empty() {
            return Err(ServiceError::invalid(
                "Some messages are empty. Every message needs data or at least one attribute.",
            ));
        }
        if size > MAX_MESSAGE_BYTES {
            return Err(ServiceError::invalid(format!(
                "Message of {size} bytes is larger than the limit of {MAX_MESSAGE_BYTES} bytes."
            )));
        }
        if m.attributes.len() > MAX_ATTRIBUTES {
            return Err(ServiceError::invalid(format!(
                "Number of message attributes ({}) exceeds the maximum of {MAX_ATTRIBUTES}.",
                m.attributes.len()
            )));
        }
        for (k, v) in &m.attributes {
            if k.is_empty() {
                return Err(ServiceError::invalid(
                    "Message attribute keys may not be empty.",
                ));
            }
            if k.len() > MAX_ATTRIBUTE_KEY_BYTES {
                return Err(ServiceError::invalid(format!(
                    "Message attribute key of {} bytes exceeds the maximum of {MAX_ATTRIBUTE_KEY_BYTES} bytes.",
                    k.len()
                )));
            }
            if v.len() > MAX_ATTRIBUTE_VALUE_BYTES {
                return Err(ServiceError::invalid(format!(
                    "Message attribute value of {} bytes (key {k:?}) exceeds the maximum of {MAX_ATTRIBUTE_VALUE_BYTES} bytes.",
                    v.len()
                )));
            }
            if k.starts_with("goog") {
                return Err(ServiceError::invalid(format!(
                    "Message attribute key {k:?} uses the reserved prefix \"goog\"."
                )));
            }
        }
        if m.ordering_key.len() > MAX_ORDERING_KEY_BYTES {
            return Err(ServiceError::invalid(format!(
                "Ordering key of {} bytes exceeds the maximum of {MAX_ORDERING_KEY_BYTES} bytes.",
                m.ordering_key.len()
            )));
        }
    }
    if total > MAX_REQUEST_BYTES {
        return Err(ServiceError::invalid(format!(
            "Request payload of {total} bytes exceeds the limit of {MAX_REQUEST_BYTES} bytes."
        )));
    }
    Ok(())
}

/// Splits `projects/{project}/{collection}/{id}` and checks the id's rules: 3–255
/// characters, starts with a letter, letters, digits and `-_.~+%`, not starting with `goog`.
pub fn resource_id<'a>(name: &'a str, collection: &str) -> Result<(&'a str, &'a str)> {
    let what = match collection {
        "topics" => "topic",
        "subscriptions" => "subscription",
        "snapshots" => "snapshot",
        other => other,
    };
    let bad = || {
        ServiceError::invalid(format!(
            "Invalid [{collection}] name: ({name}); expected projects/PROJECT/{collection}/ID"
        ))
    };
    let rest = name.strip_prefix("projects/").ok_or_else(bad)?;
    let (project, rest) = rest.split_once('/').ok_or_else(bad)?;
    let id = rest
        .strip_prefix(collection)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(bad)?;
    if project.is_empty() {
        return Err(bad());
    }
    let valid_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c));
    if id.len() < 3
        || id.len() > 255
        || !id.starts_with(|c: char| c.is_ascii_alphabetic())
        || !valid_chars
        || id.starts_with("goog")
    {
        return Err(ServiceError::invalid(format!(
            "Invalid {what} id {id:?}: it must be 3-255 characters, start with a letter, contain only letters, digits and - _ . ~ + %, and not start with \"goog\"."
        )));
    }
    Ok((project, id))
}

/// Checks a subscription's ack deadline (0 means the default).
pub fn check_subscription_ack_deadline(seconds: i32) -> Result<i32> {
    match seconds {
        0 => Ok(DEFAULT_ACK_DEADLINE_SECONDS),
        s if (MIN_ACK_DEADLINE_SECONDS..=MAX_ACK_DEADLINE_SECONDS).contains(&s) => Ok(s),
        s => Err(ServiceError::invalid(format!(
            "Invalid ack_deadline_seconds {s}: it must be between {MIN_ACK_DEADLINE_SECONDS} and {MAX_ACK_DEADLINE_SECONDS} seconds."
        ))),
    }
}

/// Checks a ModifyAckDeadline deadline.
pub fn check_modify_deadline(seconds: i32) -> Result<()> {
    if (0..=MAX_ACK_DEADLINE_SECONDS).contains(&seconds) {
        Ok(())
    } else {
        Err(ServiceError::invalid(format!(
            "Invalid ack deadline {seconds}: it must be between 0 and {MAX_ACK_DEADLINE_SECONDS} seconds."
        )))
    }
}

/// Checks a topic's or subscription's `message_retention_duration` against 10 minutes..31 days.
pub fn check_retention(what: &str, d: Option<&prost_types::Duration>) -> Result<()> {
    let Some(d) = d else {
        return Ok(());
    };
    let ok = d.seconds >= 0
        && d.nanos >= 0
        && (MIN_RETENTION..=MAX_RETENTION)
            .contains(&Duration::new(d.seconds as u64, d.nanos as u32));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(format!(
            "Invalid {what} message_retention_duration {d}: it must be between 600s (10 minutes) and 2678400s (31 days)."
        )))
    }
}

/// Checks the ack ids of a unary Acknowledge or ModifyAckDeadline: the list must not be empty
/// (`AcknowledgeRequest.ack_ids`, "Must not be empty";
/// <https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1#acknowledgerequest>).
pub fn check_ack_ids(ack_ids: &[String]) -> Result<()> {
    if ack_ids.is_empty() {
        return Err(ServiceError::invalid("No ack ids specified."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(seconds: i64) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos: 0 }
    }

    #[test]
    fn retention_is_ten_minutes_to_thirty_one_days() {
        assert!(check_retention("topic", None).is_ok());
        for ok in [600, 3600, 604_800, 2_678_400] {
            assert!(check_retention("topic", Some(&d(ok))).is_ok(), "{ok}");
        }
        for bad in [0, 599, 2_678_401, -1] {
            let e = check_retention("topic", Some(&d(bad))).expect_err("out of bounds");
            assert_eq!(e.code, tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn snapshot_names_follow_the_resource_rules() {
        assert!(resource_id("projects/p/snapshots/snap", "snapshots").is_ok());
        assert!(resource_id("projects/p/snapshots/ab", "snapshots").is_err());
        assert!(resource_id("snap", "snapshots").is_err());
    }
}
