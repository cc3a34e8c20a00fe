//! The poison corpus (`fixtures/bad/`, format in its README) made into messages: each case is
//! built on a valid event of its aggregate (its attributes, its payload as the body, its
//! ordering key), then changed as the case's file says. Pure: the claim objects a case needs
//! are handed back for the caller to upload.

use google_cloud_pubsub::model::Message;
use rig_events::envelope::{self, ClaimRef};
use rig_events::event_store::NewEvent;
use serde_json::Value;

/// A case's message, and the object (name, bytes) to write to the bucket first, if any.
pub struct PoisonMessage {
    pub message: Message,
    pub upload: Option<(String, Vec<u8>)>,
}

/// Reads `fixtures/bad/<case>.json`.
pub fn load_case(corpus_dir: &std::path::Path, case: &str) -> anyhow::Result<Value> {
    let path = corpus_dir.join(format!("{case}.json"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading poison case {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("poison case {}: {e}", path.display()))
}

fn hex_bytes(text: &str) -> anyhow::Result<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| anyhow::anyhow!("`{text}` is not hex bytes"))
        })
        .collect()
}

/// The body a case describes (`data`, `data_hex`, or `data_parts` as [text, repeat] pairs).
fn body(spec: &Value) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(text) = spec.get("data").and_then(Value::as_str) {
        return Ok(Some(text.as_bytes().to_vec()));
    }
    if let Some(hex) = spec.get("data_hex").and_then(Value::as_str) {
        return hex_bytes(hex).map(Some);
    }
    let Some(parts) = spec.get("data_parts").and_then(Value::as_array) else {
        return Ok(None);
    };
    let mut data = Vec::new();
    for part in parts {
        let (Some(text), Some(repeat)) = (part[0].as_str(), part[1].as_u64()) else {
            anyhow::bail!("data_parts holds [text, repeat] pairs, not {part}");
        };
        data.extend(text.repeat(repeat as usize).into_bytes());
    }
    Ok(Some(data))
}

fn expand(text: &str, event: &NewEvent, bucket: &str) -> String {
    text.replace(
        "{EVENT_ID_UPPER}",
        &event.event_id.hyphenated().to_string().to_uppercase(),
    )
    .replace("{EVENT_ID_SIMPLE}", &event.event_id.simple().to_string())
    .replace("{EVENT_ID}", &event.event_id.hyphenated().to_string())
    .replace("{BUCKET}", bucket)
}

fn strings(value: Option<&Value>) -> impl Iterator<Item = &str> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Builds case `case` (its file's contents: `spec`) on `event`.
pub fn message(
    spec: &Value,
    case: &str,
    event: &NewEvent,
    bucket: &str,
) -> anyhow::Result<PoisonMessage> {
    let mut message = envelope::inline_message(event);
    let mut upload = None;
    if let Some(claim) = spec.get("claim") {
        let uploaded: Option<Vec<u8>> = match (
            claim.get("upload").and_then(Value::as_str),
            claim.get("upload_hex").and_then(Value::as_str),
        ) {
            (Some(text), _) => Some(text.as_bytes().to_vec()),
            (None, Some(hex)) => Some(hex_bytes(hex)?),
            (None, None) => None,
        };
        let object = claim
            .get("object")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("events/bad/{case}/{}.json", event.event_id));
        let content = uploaded
            .clone()
            .unwrap_or_else(|| event.payload.as_bytes().to_vec());
        let reference = ClaimRef {
            bucket: claim
                .get("bucket")
                .and_then(Value::as_str)
                .unwrap_or(bucket)
                .to_string(),
            object: object.clone(),
            size: content.len() as u64,
            sha256: claim
                .get("sha256_of")
                .and_then(Value::as_str)
                .map(|t| envelope::sha256_hex(t.as_bytes()))
                .unwrap_or_else(|| envelope::sha256_hex(&content)),
        };
        upload = uploaded.map(|bytes| (object, bytes));
        message = envelope::claim_message(event, &reference);
        for (attribute, key) in [
            (envelope::PAYLOAD_SIZE, "size"),
            (envelope::PAYLOAD_SHA256, "sha256"),
            (envelope::PAYLOAD_REF, "ref"),
        ] {
            if let Some(v) = claim.get(key).and_then(Value::as_str) {
                message
                    .attributes
                    .insert(attribute.into(), expand(v, event, bucket));
            }
        }
        for name in strings(claim.get("remove_claim")) {
            message.attributes.remove(name);
        }
        if let Some(inline) = claim.get("inline").and_then(Value::as_str) {
            message = message.set_data(inline.to_string());
        }
    }
    if let Some(data) = body(spec)? {
        message = message.set_data(data);
    }
    for (name, value) in spec
        .get("set")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let value = expand(value.as_str().unwrap_or_default(), event, bucket);
        message.attributes.insert(name.clone(), value);
    }
    for name in strings(spec.get("remove")) {
        message.attributes.remove(name);
    }
    if let Some(key) = spec.get("ordering_key").and_then(Value::as_str) {
        message = message.set_ordering_key(key.to_string());
    }
    Ok(PoisonMessage { message, upload })
}
