//! How an event travels on `events.raw` and `events.merged`: the ledger's columns as message
//! attributes, the payload as the message body, or — above the claim-check threshold — a
//! reference to an object in the payload bucket with its size and SHA-256.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use google_cloud_pubsub::model::Message;
use sha2::{Digest, Sha256};

use crate::event_store::NewEvent;

pub const EVENT_ID: &str = "event_id";
pub const ACCOUNT_ID: &str = "account_id";
pub const AGGREGATE_TYPE: &str = "aggregate_type";
pub const AGGREGATE_ID: &str = "aggregate_id";
pub const CREATED_AT: &str = "created_at";
pub const PAYLOAD_REF: &str = "payload_ref";
pub const PAYLOAD_SHA256: &str = "payload_sha256";
pub const PAYLOAD_SIZE: &str = "payload_size";
/// Set by the worker on what it dead-letters itself, for the operator.
pub const DEAD_LETTER_REASON: &str = "dead_letter_reason";
/// Pub/Sub's own attribute on what the service dead-letters.
pub const SERVICE_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";

/// Ordering keys are limited to 1,024 bytes; longer aggregate identities are hashed.
const MAX_ORDERING_KEY: usize = 1024;

/// Where an event's payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadSource {
    Inline(String),
    Claim(ClaimRef),
}

/// A claim check: the payload lives in the bucket under `object`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    pub bucket: String,
    pub object: String,
    pub size: u64,
    pub sha256: String,
}

impl ClaimRef {
    pub fn uri(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.object)
    }
}

/// An event as read off a message, before its payload is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub account_id: String,
    pub event_id: uuid::Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub created_at: DateTime<Utc>,
    pub payload: PayloadSource,
}

/// The per-aggregate ordering key: events of one aggregate are delivered in publish order.
pub fn ordering_key(account_id: &str, aggregate_type: &str, aggregate_id: &str) -> String {
    let key = format!("{account_id}:{aggregate_type}:{aggregate_id}");
    if key.len() <= MAX_ORDERING_KEY {
        key
    } else {
        format!("sha256:{}", hex(&Sha256::digest(key.as_bytes())))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The claim-check object for an event: deterministic, so a producer retry overwrites the same
/// object with the same bytes instead of leaving a stray copy.
pub fn claim_object_name(event: &NewEvent) -> String {
    let segment = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!(
        "events/{}/{}/{}/{}.json",
        segment(&event.account_id),
        segment(&event.aggregate_type),
        segment(&event.aggregate_id),
        event.event_id.hyphenated()
    )
}

fn header_attributes(event: &NewEvent) -> Vec<(String, String)> {
    vec![
        (EVENT_ID.into(), event.event_id.hyphenated().to_string()),
        (ACCOUNT_ID.into(), event.account_id.clone()),
        (AGGREGATE_TYPE.into(), event.aggregate_type.clone()),
        (AGGREGATE_ID.into(), event.aggregate_id.clone()),
        (CREATED_AT.into(), event.created_at.to_rfc3339()),
    ]
}

/// A message carrying the payload inline.
pub fn inline_message(event: &NewEvent) -> Message {
    Message::new()
        .set_data(event.payload.clone())
        .set_ordering_key(ordering_key(
            &event.account_id,
            &event.aggregate_type,
            &event.aggregate_id,
        ))
        .set_attributes(header_attributes(event))
}

/// A message carrying a claim check instead of the payload.
pub fn claim_message(event: &NewEvent, claim: &ClaimRef) -> Message {
    let mut attributes = header_attributes(event);
    attributes.push((PAYLOAD_REF.into(), claim.uri()));
    attributes.push((PAYLOAD_SHA256.into(), claim.sha256.clone()));
    attributes.push((PAYLOAD_SIZE.into(), claim.size.to_string()));
    Message::new()
        .set_ordering_key(ordering_key(
            &event.account_id,
            &event.aggregate_type,
            &event.aggregate_id,
        ))
        .set_attributes(attributes)
}

/// Reads an event's header and payload location off a message; any problem is a reason the
/// operator can read (the message goes to the dead-letter topic with it).
pub fn decode(message: &Message) -> Result<Envelope, String> {
    let attrs: &HashMap<String, String> = &message.attributes;
    let get = |name: &str| {
        attrs
            .get(name)
            .cloned()
            .ok_or_else(|| format!("attribute `{name}` is missing"))
    };
    let event_id_text = get(EVENT_ID)?;
    let event_id = uuid::Uuid::parse_str(&event_id_text)
        .map_err(|e| format!("attribute `{EVENT_ID}` is not a UUID ({event_id_text:?}): {e}"))?;
    let created_at_text = get(CREATED_AT)?;
    let created_at = DateTime::parse_from_rfc3339(&created_at_text)
        .map_err(|e| {
            format!("attribute `{CREATED_AT}` is not RFC 3339 ({created_at_text:?}): {e}")
        })?
        .with_timezone(&Utc);
    let payload = match attrs.get(PAYLOAD_REF) {
        None => PayloadSource::Inline(
            String::from_utf8(message.data.to_vec())
                .map_err(|e| format!("payload is not UTF-8: {e}"))?,
        ),
        Some(uri) => {
            let (bucket, object) = uri
                .strip_prefix("gs://")
                .and_then(|rest| rest.split_once('/'))
                .ok_or_else(|| format!("attribute `{PAYLOAD_REF}` is not a gs:// URI: {uri:?}"))?;
            let size_text = get(PAYLOAD_SIZE)?;
            let size = size_text
                .parse()
                .map_err(|_| format!("attribute `{PAYLOAD_SIZE}` is not a size: {size_text:?}"))?;
            PayloadSource::Claim(ClaimRef {
                bucket: bucket.to_string(),
                object: object.to_string(),
                size,
                sha256: get(PAYLOAD_SHA256)?,
            })
        }
    };
    Ok(Envelope {
        account_id: get(ACCOUNT_ID)?,
        event_id,
        aggregate_type: get(AGGREGATE_TYPE)?,
        aggregate_id: get(AGGREGATE_ID)?,
        created_at,
        payload,
    })
}

impl Envelope {
    pub fn into_event(self, payload: String) -> NewEvent {
        NewEvent {
            account_id: self.account_id,
            event_id: self.event_id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            payload,
            created_at: self.created_at,
        }
    }

    pub fn ordering_key(&self) -> String {
        ordering_key(&self.account_id, &self.aggregate_type, &self.aggregate_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> NewEvent {
        NewEvent {
            account_id: "TSTDRV1/eu".into(),
            event_id: uuid::Uuid::new_v4(),
            aggregate_type: "salesorder".into(),
            aggregate_id: "SO 1".into(),
            payload: r#"{"total": 10}"#.into(),
            created_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn inline_and_claim_messages_decode_back() {
        let e = event();
        let decoded = decode(&inline_message(&e)).unwrap();
        assert_eq!(decoded.clone().into_event(e.payload.clone()), e);
        assert_eq!(decoded.payload, PayloadSource::Inline(e.payload.clone()));
        let claim = ClaimRef {
            bucket: "b".into(),
            object: claim_object_name(&e),
            size: 12,
            sha256: sha256_hex(e.payload.as_bytes()),
        };
        let decoded = decode(&claim_message(&e, &claim)).unwrap();
        assert_eq!(decoded.payload, PayloadSource::Claim(claim));
    }

    #[test]
    fn object_names_are_deterministic_and_safe() {
        let e = event();
        let name = claim_object_name(&e);
        assert_eq!(name, claim_object_name(&e));
        assert!(
            name.starts_with("events/TSTDRV1%2Feu/salesorder/SO%201/"),
            "{name}"
        );
    }

    #[test]
    fn bad_headers_are_reasons() {
        let mut m = inline_message(&event());
        m.attributes.insert(EVENT_ID.into(), "not-a-uuid".into());
        assert!(decode(&m).unwrap_err().contains("not a UUID"));
        m.attributes.remove(EVENT_ID);
        assert!(decode(&m).unwrap_err().contains("`event_id` is missing"));
    }

    #[test]
    fn long_ordering_keys_are_hashed_within_the_limit() {
        let key = ordering_key(&"a".repeat(400), &"b".repeat(400), &"c".repeat(400));
        assert!(key.starts_with("sha256:") && key.len() <= MAX_ORDERING_KEY);
    }
}
