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
/// Pub/Sub's limits on a message's attributes (the emulator enforces none of them, the real
/// service refuses the whole publish): bytes per key and per value, and how many.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 256;
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
pub const MAX_ATTRIBUTES: usize = 100;
/// What the worker adds to a dead letter, next to the reason.
pub const DEAD_LETTER_SOURCE_SUBSCRIPTION: &str = "dead_letter_source_subscription";
pub const DEAD_LETTER_SOURCE_MESSAGE_ID: &str = "dead_letter_source_message_id";
/// The delivery attempt on which the worker dead-lettered a message (the worker's counterpart
/// of the service's `CloudPubSubDeadLetterSourceDeliveryCount`).
pub const DEAD_LETTER_DELIVERY_ATTEMPT: &str = "dead_letter_delivery_attempt";

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
    // One form end to end: the ledger and events.merged carry the same text, and a replay in
    // another spelling cannot pass for a different event anywhere downstream.
    if event_id.hyphenated().to_string() != event_id_text {
        return Err(format!(
            "attribute `{EVENT_ID}` is not a UUID in canonical form (lowercase, hyphenated, 36 characters, e.g. {}): {event_id_text:?}",
            event_id.hyphenated()
        ));
    }
    let created_at_text = get(CREATED_AT)?;
    let created_at = DateTime::parse_from_rfc3339(&created_at_text)
        .map_err(|e| {
            format!("attribute `{CREATED_AT}` is not RFC 3339 ({created_at_text:?}): {e}")
        })?
        .with_timezone(&Utc);
    let payload = match attrs.get(PAYLOAD_REF) {
        Some(_) if !message.data.is_empty() => {
            return Err(format!(
                "the message carries both a payload ({} bytes) and a claim reference `{PAYLOAD_REF}`: which one is the event's is unknowable",
                message.data.len()
            ));
        }
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
            let size: u64 = size_text
                .parse()
                .map_err(|_| format!("attribute `{PAYLOAD_SIZE}` is not a size: {size_text:?}"))?;
            let claim = ClaimRef {
                bucket: bucket.to_string(),
                object: object.to_string(),
                size,
                sha256: get(PAYLOAD_SHA256)?,
            };
            claim.check()?;
            PayloadSource::Claim(claim)
        }
    };
    let envelope = Envelope {
        account_id: get(ACCOUNT_ID)?,
        event_id,
        aggregate_type: get(AGGREGATE_TYPE)?,
        aggregate_id: get(AGGREGATE_ID)?,
        created_at,
        payload,
    };
    Ok(envelope)
}

/// Per-aggregate order holds only if every event of the aggregate shares one key: an event
/// under another key could overtake its predecessors. (Checked after the event's fields, whose
/// problems make the better reason.)
pub fn check_ordering_key(message: &Message, envelope: &Envelope) -> Result<(), String> {
    let key = envelope.ordering_key();
    if message.ordering_key != key {
        return Err(format!(
            "the message's ordering key {:?} is not its aggregate's ({key:?}): its order among the aggregate's events would be lost",
            message.ordering_key
        ));
    }
    Ok(())
}

impl ClaimRef {
    /// What GCS and the ledger allow in a reference, checked before any request is made.
    fn check(&self) -> Result<(), String> {
        let uri = self.uri();
        let bucket_ok = (3..=222).contains(&self.bucket.len())
            && self.bucket.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
            && self.bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && self.bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !bucket_ok {
            return Err(format!(
                "attribute `{PAYLOAD_REF}` names no valid bucket: {uri:?}"
            ));
        }
        if self.object.is_empty()
            || self.object.len() > 1024
            || self.object.contains(['\r', '\n'])
            || self.object == "."
            || self.object == ".."
            || self.object.starts_with(".well-known/acme-challenge/")
        {
            return Err(format!(
                "attribute `{PAYLOAD_REF}` names no valid object (empty, over 1,024 bytes, a line break, `.` or `..`): {uri:?}"
            ));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "attribute `{PAYLOAD_SHA256}` is not 64 lowercase hex digits: {:?}",
                self.sha256
            ));
        }
        let limit = crate::event_store::storable::MAX_PAYLOAD_BYTES;
        if self.size > limit as u64 {
            return Err(format!(
                "attribute `{PAYLOAD_SIZE}` says {} bytes; the ledger takes at most {limit}",
                self.size
            ));
        }
        Ok(())
    }
}

/// The longest prefix of `text` that fits in `max_bytes` without splitting a character.
pub fn truncate_utf8(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Attributes only the worker or the service may set: a publisher's copy is not passed on.
fn reserved(key: &str) -> bool {
    key.starts_with("dead_letter_") || key.starts_with("CloudPubSub") || key.starts_with("goog")
}

/// A dead letter's attributes: the original ones that the real service would accept again
/// (a key over 256 bytes is dropped, a value over 1,024 bytes cut on a character boundary,
/// reserved ones dropped, at most 100 in all), then the reason — cut to 1,024 bytes, not
/// characters — and where the message came from. A dead letter the service refused to take
/// would come back to the worker forever.
pub fn dead_letter_attributes(
    original: &HashMap<String, String>,
    reason: &str,
    subscription: &str,
    message_id: &str,
) -> HashMap<String, String> {
    // One slot for the delivery attempt the worker adds after this.
    let ours = [
        (DEAD_LETTER_REASON, reason),
        (DEAD_LETTER_SOURCE_SUBSCRIPTION, subscription),
        (DEAD_LETTER_SOURCE_MESSAGE_ID, message_id),
    ];
    let mut kept: Vec<(&String, &String)> = original
        .iter()
        .filter(|(k, _)| !k.is_empty() && k.len() <= MAX_ATTRIBUTE_KEY_BYTES && !reserved(k))
        .collect();
    // The event's own headers first, then the rest in a stable order.
    kept.sort_by_key(|(k, _)| {
        let header = [
            EVENT_ID,
            ACCOUNT_ID,
            AGGREGATE_TYPE,
            AGGREGATE_ID,
            CREATED_AT,
        ]
        .contains(&k.as_str());
        (!header, k.as_str())
    });
    kept.truncate(MAX_ATTRIBUTES - ours.len() - 1);
    let mut attributes: HashMap<String, String> = kept
        .into_iter()
        .map(|(k, v)| {
            (
                k.clone(),
                truncate_utf8(v, MAX_ATTRIBUTE_VALUE_BYTES).to_string(),
            )
        })
        .collect();
    for (key, value) in ours {
        attributes.insert(
            key.into(),
            truncate_utf8(value, MAX_ATTRIBUTE_VALUE_BYTES).to_string(),
        );
    }
    attributes
}

/// The attributes of an event on `events.merged`: the publisher's, without reserved ones, and
/// the event's headers in the ledger's form (canonical event_id, created_at as stored), so a
/// consumer of merged and a reader of the ledger see the same event.
pub fn merged_attributes(
    original: &HashMap<String, String>,
    event: &NewEvent,
) -> HashMap<String, String> {
    let mut attributes: HashMap<String, String> = original
        .iter()
        .filter(|(k, _)| !reserved(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let stored = NewEvent {
        created_at: event.ledger_created_at(),
        ..event.clone()
    };
    attributes.extend(header_attributes(&stored));
    attributes
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
    use proptest::strategy::Strategy;

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
            bucket: "bkt".into(),
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
    fn dead_letter_reasons_are_cut_by_bytes_on_a_character_boundary() {
        // 'é' is two bytes: 1,000 characters are 2,000 bytes, over Pub/Sub's 1,024.
        let reason = "é".repeat(1000);
        let original: HashMap<String, String> = (0..150)
            .map(|i| (format!("k{i:03}"), "ü".repeat(700)))
            .chain([
                ("x".repeat(300), "long key".to_string()),
                (DEAD_LETTER_REASON.to_string(), "spoofed".to_string()),
            ])
            .collect();
        let attrs = dead_letter_attributes(&original, &reason, "sub", "42");
        assert_eq!(attrs[DEAD_LETTER_REASON].len(), 1024);
        assert!(reason.starts_with(&attrs[DEAD_LETTER_REASON]));
        assert!(attrs.len() <= MAX_ATTRIBUTES);
        for (k, v) in &attrs {
            assert!(k.len() <= MAX_ATTRIBUTE_KEY_BYTES && v.len() <= MAX_ATTRIBUTE_VALUE_BYTES);
        }
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("😀", 3), "");
    }

    #[test]
    fn only_the_canonical_event_id_and_the_aggregates_ordering_key_are_accepted() {
        let e = event();
        let id = e.event_id.hyphenated().to_string();
        for other in [
            id.to_uppercase(),
            format!("{{{id}}}"),
            format!("urn:uuid:{id}"),
            e.event_id.simple().to_string(),
        ] {
            let mut m = inline_message(&e);
            m.attributes.insert(EVENT_ID.into(), other.clone());
            assert!(
                decode(&m).unwrap_err().contains("canonical form"),
                "{other}"
            );
        }
        let m = inline_message(&e).set_ordering_key("someone-else");
        let decoded = decode(&m).unwrap();
        assert!(
            check_ordering_key(&m, &decoded)
                .unwrap_err()
                .contains("ordering key")
        );
    }

    #[test]
    fn claim_references_are_checked_before_any_request() {
        let e = event();
        let good = ClaimRef {
            bucket: "payloads-dev".into(),
            object: claim_object_name(&e),
            size: 12,
            sha256: sha256_hex(b"x"),
        };
        assert!(decode(&claim_message(&e, &good)).is_ok());
        for (bad, why) in [
            (
                ClaimRef {
                    object: String::new(),
                    ..good.clone()
                },
                "valid object",
            ),
            (
                ClaimRef {
                    bucket: "UPPER".into(),
                    ..good.clone()
                },
                "valid bucket",
            ),
            (
                ClaimRef {
                    sha256: "ABC".into(),
                    ..good.clone()
                },
                "hex digits",
            ),
            (
                ClaimRef {
                    size: u64::MAX,
                    ..good.clone()
                },
                "at most",
            ),
        ] {
            let err = decode(&claim_message(&e, &bad)).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let both = claim_message(&e, &good).set_data("{}");
        assert!(decode(&both).unwrap_err().contains("both a payload"));
    }

    proptest::proptest! {
        /// The decoder takes whatever a publisher sends: arbitrary attributes (the header ones
        /// included, with hostile values), arbitrary bytes, any ordering key. It never panics,
        /// and whatever it accepts carries the canonical event_id and a checked claim.
        #[test]
        fn decoding_arbitrary_messages_never_panics(
            attributes in proptest::collection::hash_map(
                proptest::sample::select(vec![
                    EVENT_ID, ACCOUNT_ID, AGGREGATE_TYPE, AGGREGATE_ID, CREATED_AT,
                    PAYLOAD_REF, PAYLOAD_SIZE, PAYLOAD_SHA256, "other",
                ]).prop_map(str::to_string),
                proptest::prop_oneof![
                    ".{0,40}",
                    "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                    "[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{1,9})?(Z|[+-][0-2][0-9]:[0-5][0-9])",
                    "gs://[a-z.-]{0,10}/.{0,20}",
                    "[0-9a-f]{64}",
                    "-?[0-9]{1,25}",
                ],
                0..10,
            ),
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            key in ".{0,20}",
        ) {
            let message = Message::new()
                .set_data(data)
                .set_ordering_key(key)
                .set_attributes(attributes);
            if let Ok(envelope) = decode(&message) {
                proptest::prop_assert_eq!(
                    envelope.event_id.hyphenated().to_string(),
                    message.attributes[EVENT_ID].clone()
                );
                if let PayloadSource::Claim(claim) = &envelope.payload {
                    proptest::prop_assert!(claim.check().is_ok());
                    proptest::prop_assert!(message.data.is_empty());
                }
                let _ = check_ordering_key(&message, &envelope);
            }
        }
    }

    #[test]
    fn long_ordering_keys_are_hashed_within_the_limit() {
        let key = ordering_key(&"a".repeat(400), &"b".repeat(400), &"c".repeat(400));
        assert!(key.starts_with("sha256:") && key.len() <= MAX_ORDERING_KEY);
    }
}
