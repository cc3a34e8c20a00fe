//! The proto3 JSON mapping (<https://protobuf.dev/programming-guides/json/>) of the messages
//! the REST surface speaks (<https://cloud.google.com/pubsub/docs/reference/rest>), to and from
//! the prost types the broker keeps.
//!
//! Written out per message rather than derived, because the mapping has rules a serde derive
//! does not give: a field is read under its lowerCamelCase name or its proto name; a field the
//! message does not have is refused, as Google's APIs refuse it (400 "Unknown name ... Cannot
//! find field"); enums are written by name (gcloud and REST clients read names) and read by
//! name or number; durations and timestamps are written with 0, 3, 6 or 9 fractional digits;
//! int32 fields are read from numbers or decimal strings; bytes are read in either base64
//! alphabet, padded or not, and written in the standard one; default values are omitted.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::{Result, ServiceError};
use crate::proto;

// ---- reading ------------------------------------------------------------------------------

/// One JSON object being read into a message: remembers which fields were asked for, so that
/// `finish` can refuse the rest.
pub struct Reader<'a> {
    path: String,
    fields: &'a Map<String, Value>,
    known: Vec<&'static str>,
}

fn invalid_payload(detail: String) -> ServiceError {
    ServiceError::invalid(format!("Invalid JSON payload received. {detail}"))
}

/// Reads a request body: empty means `{}`, as for a body-less PUT.
pub fn parse(body: &[u8]) -> Result<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body)
        .map_err(|e| invalid_payload("The body is not valid JSON.".to_string()).with_source(e))
}

impl<'a> Reader<'a> {
    /// `path` names the object in error messages (`subscription.retryPolicy`); empty for the
    /// request itself.
    pub fn new(value: &'a Value, path: &str) -> Result<Self> {
        match value {
            Value::Object(fields) => Ok(Self {
                path: path.to_string(),
                fields,
                known: Vec::new(),
            }),
            other => Err(invalid_payload(format!(
                "Expected an object{}, got {}.",
                at(path),
                kind(other)
            ))),
        }
    }

    fn nested(&self, json: &str) -> String {
        if self.path.is_empty() {
            json.to_string()
        } else {
            format!("{}.{json}", self.path)
        }
    }

    /// The field's value under either of its names; `null` is the default value.
    fn take(&mut self, json: &'static str, proto: &'static str) -> Result<Option<&'a Value>> {
        self.known.push(json);
        self.known.push(proto);
        let camel = self.fields.get(json);
        let snake = (proto != json).then(|| self.fields.get(proto)).flatten();
        let value = match (camel, snake) {
            (Some(_), Some(_)) => {
                return Err(invalid_payload(format!(
                    "Field \"{json}\" is given twice{} (as {json} and {proto}).",
                    at(&self.path)
                )));
            }
            (Some(v), None) | (None, Some(v)) => v,
            (None, None) => return Ok(None),
        };
        Ok((!value.is_null()).then_some(value))
    }

    fn wrong(&self, json: &str, want: &str, got: &Value) -> ServiceError {
        invalid_payload(format!(
            "Invalid value at '{}' ({want}), {}.",
            self.nested(json),
            kind(got)
        ))
    }

    pub fn string(&mut self, json: &'static str, proto: &'static str) -> Result<String> {
        match self.take(json, proto)? {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.wrong(json, "TYPE_STRING", other)),
        }
    }

    pub fn bool(&mut self, json: &'static str, proto: &'static str) -> Result<bool> {
        match self.take(json, proto)? {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.wrong(json, "TYPE_BOOL", other)),
        }
    }

    pub fn int32(&mut self, json: &'static str, proto: &'static str) -> Result<i32> {
        let value = self.take(json, proto)?;
        let parsed = match value {
            None => return Ok(0),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
            Some(_) => None,
        };
        match parsed.and_then(|n| i32::try_from(n).ok()) {
            Some(n) => Ok(n),
            None => Err(self.wrong(json, "TYPE_INT32", value.unwrap_or(&Value::Null))),
        }
    }

    pub fn map(
        &mut self,
        json: &'static str,
        proto: &'static str,
    ) -> Result<HashMap<String, String>> {
        match self.take(json, proto)? {
            None => Ok(HashMap::new()),
            Some(Value::Object(entries)) => entries
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(self.wrong(&format!("{json}[{k}]"), "TYPE_STRING", other)),
                })
                .collect(),
            Some(other) => Err(self.wrong(json, "map<string, string>", other)),
        }
    }

    pub fn strings(&mut self, json: &'static str, proto: &'static str) -> Result<Vec<String>> {
        match self.take(json, proto)? {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.wrong(json, "TYPE_STRING", other)),
                })
                .collect(),
            Some(other) => Err(self.wrong(json, "repeated TYPE_STRING", other)),
        }
    }

    /// `"3.5s"`: seconds with up to nine fractional digits.
    pub fn duration(
        &mut self,
        json: &'static str,
        proto: &'static str,
    ) -> Result<Option<prost_types::Duration>> {
        match self.take(json, proto)? {
            None => Ok(None),
            Some(Value::String(s)) => s.parse::<prost_types::Duration>().map(Some).map_err(|e| {
                self.wrong(json, "google.protobuf.Duration", &Value::String(s.clone()))
                    .with_source(e)
            }),
            Some(other) => Err(self.wrong(json, "google.protobuf.Duration", other)),
        }
    }

    /// RFC 3339, `Z` or an offset.
    pub fn timestamp(
        &mut self,
        json: &'static str,
        proto: &'static str,
    ) -> Result<Option<prost_types::Timestamp>> {
        match self.take(json, proto)? {
            None => Ok(None),
            Some(Value::String(s)) => s.parse::<prost_types::Timestamp>().map(Some).map_err(|e| {
                self.wrong(json, "google.protobuf.Timestamp", &Value::String(s.clone()))
                    .with_source(e)
            }),
            Some(other) => Err(self.wrong(json, "google.protobuf.Timestamp", other)),
        }
    }

    /// Base64, standard or URL-safe alphabet, with or without padding (the mapping accepts
    /// both).
    pub fn bytes(&mut self, json: &'static str, proto: &'static str) -> Result<Bytes> {
        match self.take(json, proto)? {
            None => Ok(Bytes::new()),
            Some(Value::String(s)) => decode_base64(s).map(Bytes::from).map_err(|e| {
                self.wrong(json, "TYPE_BYTES", &Value::String(s.clone()))
                    .with_source(e)
            }),
            Some(other) => Err(self.wrong(json, "TYPE_BYTES", other)),
        }
    }

    /// An enum by name or number.
    pub fn enumeration(
        &mut self,
        json: &'static str,
        proto: &'static str,
        from_name: fn(&str) -> Option<i32>,
    ) -> Result<i32> {
        match self.take(json, proto)? {
            None => Ok(0),
            Some(Value::String(s)) => {
                from_name(s).ok_or_else(|| self.wrong(json, "TYPE_ENUM", &Value::String(s.clone())))
            }
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| self.wrong(json, "TYPE_ENUM", &Value::Number(n.clone()))),
            Some(other) => Err(self.wrong(json, "TYPE_ENUM", other)),
        }
    }

    pub fn message<T>(
        &mut self,
        json: &'static str,
        proto: &'static str,
        read: impl FnOnce(Reader<'a>) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.take(json, proto)? {
            None => Ok(None),
            Some(v) => {
                let path = self.nested(json);
                read(Reader::new(v, &path)?).map(Some)
            }
        }
    }

    pub fn messages<T>(
        &mut self,
        json: &'static str,
        proto: &'static str,
        mut read: impl FnMut(Reader<'a>) -> Result<T>,
    ) -> Result<Vec<T>> {
        match self.take(json, proto)? {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                let path = self.nested(json);
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| read(Reader::new(v, &format!("{path}[{i}]"))?))
                    .collect()
            }
            Some(other) => Err(self.wrong(json, "repeated message", other)),
        }
    }

    /// Whether a field is set, for fields this service refuses whatever their content
    /// (export and push configurations, schemas, transforms).
    pub fn present(
        &mut self,
        json: &'static str,
        proto: &'static str,
    ) -> Result<Option<&'a Value>> {
        self.take(json, proto)
    }

    /// Refuses every field nobody asked for, as Google's APIs do.
    pub fn finish(self) -> Result<()> {
        match self
            .fields
            .keys()
            .find(|k| !self.known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some(unknown) => Err(invalid_payload(format!(
                "Unknown name \"{unknown}\"{}: Cannot find field.",
                at(&self.path)
            ))),
        }
    }
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" at '{path}'")
    }
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

const BASE64_READ: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, BASE64_READ);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, BASE64_READ);

pub fn decode_base64(s: &str) -> std::result::Result<Vec<u8>, base64::DecodeError> {
    if s.contains(['-', '_']) {
        URL_SAFE.decode(s)
    } else {
        STANDARD.decode(s)
    }
}

pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A FieldMask: in JSON one comma-separated string of lowerCamelCase paths (an object with
/// `paths` is read too). Returned as proto (snake_case) paths.
pub fn field_mask(value: Option<&Value>) -> Result<Vec<String>> {
    let paths: Vec<String> = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        Some(Value::Object(o)) => match o.get("paths") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        },
        Some(other) => {
            return Err(invalid_payload(format!(
                "Invalid value at 'update_mask' (google.protobuf.FieldMask), {}.",
                kind(other)
            )));
        }
    };
    Ok(paths.iter().map(|p| snake_case(p)).collect())
}

/// `messageRetentionDuration` → `message_retention_duration` (each dotted part).
pub fn snake_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

// ---- writing ------------------------------------------------------------------------------

/// A JSON object being written from a message; default values are left out.
#[derive(Default)]
pub struct Writer(Map<String, Value>);

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn string(mut self, json: &str, s: &str) -> Self {
        if !s.is_empty() {
            self.0.insert(json.into(), Value::String(s.to_string()));
        }
        self
    }

    pub fn bool(mut self, json: &str, b: bool) -> Self {
        if b {
            self.0.insert(json.into(), Value::Bool(true));
        }
        self
    }

    pub fn int32(mut self, json: &str, n: i32) -> Self {
        if n != 0 {
            self.0.insert(json.into(), Value::from(n));
        }
        self
    }

    pub fn map(mut self, json: &str, m: &HashMap<String, String>) -> Self {
        if !m.is_empty() {
            let mut entries: Vec<(&String, &String)> = m.iter().collect();
            entries.sort();
            self.0.insert(
                json.into(),
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ),
            );
        }
        self
    }

    pub fn strings(mut self, json: &str, items: &[String]) -> Self {
        if !items.is_empty() {
            self.0.insert(
                json.into(),
                Value::Array(items.iter().cloned().map(Value::String).collect()),
            );
        }
        self
    }

    pub fn duration(mut self, json: &str, d: Option<&prost_types::Duration>) -> Self {
        if let Some(d) = d {
            self.0.insert(json.into(), Value::String(d.to_string()));
        }
        self
    }

    pub fn timestamp(mut self, json: &str, t: Option<&prost_types::Timestamp>) -> Self {
        if let Some(t) = t {
            self.0.insert(json.into(), Value::String(t.to_string()));
        }
        self
    }

    pub fn bytes(mut self, json: &str, b: &[u8]) -> Self {
        if !b.is_empty() {
            self.0.insert(json.into(), Value::String(encode_base64(b)));
        }
        self
    }

    /// An enum by name; the zero value (`*_UNSPECIFIED`) is the default and left out.
    pub fn enumeration(mut self, json: &str, n: i32, name: Option<&str>) -> Self {
        if n != 0 {
            let value = name.map_or_else(|| Value::from(n), |s| Value::String(s.to_string()));
            self.0.insert(json.into(), value);
        }
        self
    }

    /// A present sub-message is written even when empty (`"pushConfig": {}`).
    pub fn message(mut self, json: &str, m: Option<Value>) -> Self {
        if let Some(m) = m {
            self.0.insert(json.into(), m);
        }
        self
    }

    pub fn messages(mut self, json: &str, items: Vec<Value>) -> Self {
        if !items.is_empty() {
            self.0.insert(json.into(), Value::Array(items));
        }
        self
    }

    pub fn done(self) -> Value {
        Value::Object(self.0)
    }
}

// ---- the messages -------------------------------------------------------------------------

fn topic_state(name: &str) -> Option<i32> {
    proto::topic::State::from_str_name(name).map(|s| s as i32)
}

fn subscription_state(name: &str) -> Option<i32> {
    proto::subscription::State::from_str_name(name).map(|s| s as i32)
}

/// Fields this service refuses whatever their content, each with what it is.
fn unsupported(
    r: &mut Reader<'_>,
    fields: &[(&'static str, &'static str, &'static str)],
) -> Result<()> {
    for (json, proto, what) in fields {
        if r.present(json, proto)?.is_some() {
            return Err(ServiceError::unsupported(what));
        }
    }
    Ok(())
}

pub fn message_storage_policy_in(mut r: Reader<'_>) -> Result<proto::MessageStoragePolicy> {
    let p = proto::MessageStoragePolicy {
        allowed_persistence_regions: r
            .strings("allowedPersistenceRegions", "allowed_persistence_regions")?,
        enforce_in_transit: r.bool("enforceInTransit", "enforce_in_transit")?,
    };
    r.finish()?;
    Ok(p)
}

pub fn topic_in(mut r: Reader<'_>) -> Result<proto::Topic> {
    unsupported(
        &mut r,
        &[
            (
                "schemaSettings",
                "schema_settings",
                "Topic schema_settings (schemas)",
            ),
            (
                "ingestionDataSourceSettings",
                "ingestion_data_source_settings",
                "Topic ingestion_data_source_settings (ingestion)",
            ),
        ],
    )?;
    let transforms = r.present("messageTransforms", "message_transforms")?;
    if transforms.is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(ServiceError::unsupported("Topic message_transforms"));
    }
    let topic = proto::Topic {
        name: r.string("name", "name")?,
        labels: r.map("labels", "labels")?,
        message_storage_policy: r.message(
            "messageStoragePolicy",
            "message_storage_policy",
            message_storage_policy_in,
        )?,
        kms_key_name: r.string("kmsKeyName", "kms_key_name")?,
        satisfies_pzs: r.bool("satisfiesPzs", "satisfies_pzs")?,
        message_retention_duration: r
            .duration("messageRetentionDuration", "message_retention_duration")?,
        // Output only: read and ignored, as the real service ignores it.
        state: {
            r.enumeration("state", "state", topic_state)?;
            0
        },
        tags: r.map("tags", "tags")?,
        ..Default::default()
    };
    r.finish()?;
    Ok(topic)
}

pub fn topic_out(t: &proto::Topic) -> Value {
    let state = proto::topic::State::try_from(t.state)
        .ok()
        .map(|s| s.as_str_name());
    Writer::new()
        .string("name", &t.name)
        .map("labels", &t.labels)
        .message(
            "messageStoragePolicy",
            t.message_storage_policy.as_ref().map(|p| {
                Writer::new()
                    .strings("allowedPersistenceRegions", &p.allowed_persistence_regions)
                    .bool("enforceInTransit", p.enforce_in_transit)
                    .done()
            }),
        )
        .string("kmsKeyName", &t.kms_key_name)
        .bool("satisfiesPzs", t.satisfies_pzs)
        .duration(
            "messageRetentionDuration",
            t.message_retention_duration.as_ref(),
        )
        .enumeration("state", t.state, state)
        .map("tags", &t.tags)
        .done()
}

pub fn push_config_in(mut r: Reader<'_>) -> Result<proto::PushConfig> {
    let endpoint = r.string("pushEndpoint", "push_endpoint")?;
    let attributes = r.map("attributes", "attributes")?;
    let oidc = r.present("oidcToken", "oidc_token")?.is_some();
    let wrapper = r.present("pubsubWrapper", "pubsub_wrapper")?.is_some()
        || r.present("noWrapper", "no_wrapper")?.is_some();
    r.finish()?;
    if !endpoint.is_empty() || oidc || wrapper {
        return Err(ServiceError::unsupported("Push delivery"));
    }
    Ok(proto::PushConfig {
        push_endpoint: endpoint,
        attributes,
        ..Default::default()
    })
}

fn expiration_policy_in(mut r: Reader<'_>) -> Result<proto::ExpirationPolicy> {
    let p = proto::ExpirationPolicy {
        ttl: r.duration("ttl", "ttl")?,
    };
    r.finish()?;
    Ok(p)
}

fn dead_letter_policy_in(mut r: Reader<'_>) -> Result<proto::DeadLetterPolicy> {
    let p = proto::DeadLetterPolicy {
        dead_letter_topic: r.string("deadLetterTopic", "dead_letter_topic")?,
        max_delivery_attempts: r.int32("maxDeliveryAttempts", "max_delivery_attempts")?,
    };
    r.finish()?;
    Ok(p)
}

fn retry_policy_in(mut r: Reader<'_>) -> Result<proto::RetryPolicy> {
    let p = proto::RetryPolicy {
        minimum_backoff: r.duration("minimumBackoff", "minimum_backoff")?,
        maximum_backoff: r.duration("maximumBackoff", "maximum_backoff")?,
    };
    r.finish()?;
    Ok(p)
}

pub fn subscription_in(mut r: Reader<'_>) -> Result<proto::Subscription> {
    unsupported(
        &mut r,
        &[
            (
                "bigqueryConfig",
                "bigquery_config",
                "Export subscriptions (BigQuery)",
            ),
            (
                "cloudStorageConfig",
                "cloud_storage_config",
                "Export subscriptions (Cloud Storage)",
            ),
            (
                "bigtableConfig",
                "bigtable_config",
                "Export subscriptions (Bigtable)",
            ),
        ],
    )?;
    let transforms = r.present("messageTransforms", "message_transforms")?;
    if transforms.is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(ServiceError::unsupported("Subscription message_transforms"));
    }
    let s = proto::Subscription {
        name: r.string("name", "name")?,
        topic: r.string("topic", "topic")?,
        push_config: r.message("pushConfig", "push_config", push_config_in)?,
        ack_deadline_seconds: r.int32("ackDeadlineSeconds", "ack_deadline_seconds")?,
        retain_acked_messages: r.bool("retainAckedMessages", "retain_acked_messages")?,
        message_retention_duration: r
            .duration("messageRetentionDuration", "message_retention_duration")?,
        labels: r.map("labels", "labels")?,
        enable_message_ordering: r.bool("enableMessageOrdering", "enable_message_ordering")?,
        expiration_policy: r.message(
            "expirationPolicy",
            "expiration_policy",
            expiration_policy_in,
        )?,
        filter: r.string("filter", "filter")?,
        dead_letter_policy: r.message(
            "deadLetterPolicy",
            "dead_letter_policy",
            dead_letter_policy_in,
        )?,
        retry_policy: r.message("retryPolicy", "retry_policy", retry_policy_in)?,
        detached: r.bool("detached", "detached")?,
        enable_exactly_once_delivery: r
            .bool("enableExactlyOnceDelivery", "enable_exactly_once_delivery")?,
        tags: r.map("tags", "tags")?,
        ..Default::default()
    };
    // Output only: read and ignored, as the real service ignores them.
    r.duration(
        "topicMessageRetentionDuration",
        "topic_message_retention_duration",
    )?;
    r.enumeration("state", "state", subscription_state)?;
    r.present(
        "analyticsHubSubscriptionInfo",
        "analytics_hub_subscription_info",
    )?;
    r.finish()?;
    Ok(s)
}

pub fn subscription_out(s: &proto::Subscription) -> Value {
    let state = proto::subscription::State::try_from(s.state)
        .ok()
        .map(|s| s.as_str_name());
    Writer::new()
        .string("name", &s.name)
        .string("topic", &s.topic)
        .message(
            "pushConfig",
            s.push_config.as_ref().map(|p| {
                Writer::new()
                    .string("pushEndpoint", &p.push_endpoint)
                    .map("attributes", &p.attributes)
                    .done()
            }),
        )
        .int32("ackDeadlineSeconds", s.ack_deadline_seconds)
        .bool("retainAckedMessages", s.retain_acked_messages)
        .duration(
            "messageRetentionDuration",
            s.message_retention_duration.as_ref(),
        )
        .map("labels", &s.labels)
        .bool("enableMessageOrdering", s.enable_message_ordering)
        .message(
            "expirationPolicy",
            s.expiration_policy
                .as_ref()
                .map(|p| Writer::new().duration("ttl", p.ttl.as_ref()).done()),
        )
        .string("filter", &s.filter)
        .message(
            "deadLetterPolicy",
            s.dead_letter_policy.as_ref().map(|p| {
                Writer::new()
                    .string("deadLetterTopic", &p.dead_letter_topic)
                    .int32("maxDeliveryAttempts", p.max_delivery_attempts)
                    .done()
            }),
        )
        .message(
            "retryPolicy",
            s.retry_policy.as_ref().map(|p| {
                Writer::new()
                    .duration("minimumBackoff", p.minimum_backoff.as_ref())
                    .duration("maximumBackoff", p.maximum_backoff.as_ref())
                    .done()
            }),
        )
        .bool("detached", s.detached)
        .bool("enableExactlyOnceDelivery", s.enable_exactly_once_delivery)
        .duration(
            "topicMessageRetentionDuration",
            s.topic_message_retention_duration.as_ref(),
        )
        .enumeration("state", s.state, state)
        .map("tags", &s.tags)
        .done()
}

pub fn message_in(mut r: Reader<'_>) -> Result<proto::PubsubMessage> {
    let m = proto::PubsubMessage {
        data: r.bytes("data", "data")?,
        attributes: r.map("attributes", "attributes")?,
        message_id: r.string("messageId", "message_id")?,
        publish_time: r.timestamp("publishTime", "publish_time")?,
        ordering_key: r.string("orderingKey", "ordering_key")?,
    };
    r.finish()?;
    Ok(m)
}

pub fn message_out(m: &proto::PubsubMessage) -> Value {
    Writer::new()
        .bytes("data", &m.data)
        .map("attributes", &m.attributes)
        .string("messageId", &m.message_id)
        .timestamp("publishTime", m.publish_time.as_ref())
        .string("orderingKey", &m.ordering_key)
        .done()
}

pub fn received_out(r: &proto::ReceivedMessage) -> Value {
    Writer::new()
        .string("ackId", &r.ack_id)
        .message("message", r.message.as_ref().map(message_out))
        .int32("deliveryAttempt", r.delivery_attempt)
        .done()
}

pub fn snapshot_out(s: &proto::Snapshot) -> Value {
    Writer::new()
        .string("name", &s.name)
        .string("topic", &s.topic)
        .timestamp("expireTime", s.expire_time.as_ref())
        .map("labels", &s.labels)
        .done()
}

pub fn snapshot_in(mut r: Reader<'_>) -> Result<proto::Snapshot> {
    let s = proto::Snapshot {
        name: r.string("name", "name")?,
        topic: r.string("topic", "topic")?,
        expire_time: r.timestamp("expireTime", "expire_time")?,
        labels: r.map("labels", "labels")?,
    };
    r.finish()?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<T>(json: &str, f: impl FnOnce(Reader<'_>) -> Result<T>) -> Result<T> {
        let v: Value = serde_json::from_str(json).expect("test JSON");
        f(Reader::new(&v, "")?)
    }

    #[test]
    fn enums_are_written_by_name_and_read_by_name_or_number() {
        let t = proto::Topic {
            name: "projects/p/topics/t".into(),
            state: proto::topic::State::Active as i32,
            ..Default::default()
        };
        assert_eq!(topic_out(&t)["state"], "ACTIVE");
        let s = proto::Subscription {
            state: proto::subscription::State::Active as i32,
            ..Default::default()
        };
        assert_eq!(subscription_out(&s)["state"], "ACTIVE");
        assert!(read(r#"{"state": "ACTIVE"}"#, subscription_in).is_ok());
        assert!(read(r#"{"state": 1}"#, subscription_in).is_ok());
        assert!(read(r#"{"state": "SHINY"}"#, subscription_in).is_err());
    }

    #[test]
    fn durations_carry_zero_three_six_or_nine_fractional_digits() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        let out =
            |d: prost_types::Duration| Writer::new().duration("d", Some(&d)).done()["d"].clone();
        assert_eq!(out(d(600, 0)), "600s");
        assert_eq!(out(d(2, 500_000_000)), "2.500s");
        assert_eq!(out(d(0, 1_000)), "0.000001s");
        assert_eq!(out(d(1, 1)), "1.000000001s");
        let p = read(
            r#"{"minimumBackoff": "2.5s", "maximum_backoff": "10s"}"#,
            retry_policy_in,
        )
        .expect("valid");
        assert_eq!(p.minimum_backoff, Some(d(2, 500_000_000)));
        assert_eq!(p.maximum_backoff, Some(d(10, 0)));
        assert!(read(r#"{"minimumBackoff": "2.5"}"#, retry_policy_in).is_err());
        assert!(read(r#"{"minimumBackoff": 2}"#, retry_policy_in).is_err());
    }

    #[test]
    fn bytes_are_read_in_either_base64_alphabet() {
        // 0xfb 0xff 0xbf: "+/+/" in the standard alphabet, "-_-_" in the URL-safe one.
        let want = Bytes::from_static(&[0xfb, 0xff, 0xbf]);
        for data in ["+/+/", "-_-_"] {
            let m = read(&format!(r#"{{"data": "{data}"}}"#), message_in).expect(data);
            assert_eq!(m.data, want, "{data}");
        }
        let unpadded = read(r#"{"data": "aGk"}"#, message_in).expect("unpadded");
        assert_eq!(unpadded.data, Bytes::from_static(b"hi"));
        assert_eq!(message_out(&unpadded)["data"], "aGk=");
        assert!(read(r#"{"data": "not base64!"}"#, message_in).is_err());
    }

    #[test]
    fn unknown_fields_are_refused_with_where_they_are() {
        let e = read(r#"{"name": "x", "colour": "red"}"#, topic_in).expect_err("unknown");
        assert_eq!(e.code, tonic::Code::InvalidArgument);
        assert!(e.message.contains("\"colour\""), "{}", e.message);
        let e = read(
            r#"{"retryPolicy": {"minimumBackof": "1s"}}"#,
            subscription_in,
        )
        .expect_err("nested unknown");
        assert!(e.message.contains("retryPolicy"), "{}", e.message);
        assert!(
            read(
                r#"{"ack_deadline_seconds": 20, "enableMessageOrdering": true}"#,
                subscription_in
            )
            .is_ok()
        );
    }

    #[test]
    fn int32_fields_take_numbers_or_decimal_strings() {
        let s = read(r#"{"ackDeadlineSeconds": "20"}"#, subscription_in).expect("string");
        assert_eq!(s.ack_deadline_seconds, 20);
        assert!(read(r#"{"ackDeadlineSeconds": "twenty"}"#, subscription_in).is_err());
        assert!(read(r#"{"ackDeadlineSeconds": 3000000000}"#, subscription_in).is_err());
    }

    #[test]
    fn unsupported_configurations_are_unimplemented_not_ignored() {
        let push = read(
            r#"{"pushConfig": {"pushEndpoint": "https://example.com/push"}}"#,
            subscription_in,
        )
        .expect_err("push");
        assert_eq!(push.code, tonic::Code::Unimplemented);
        // An empty push config means pull, as gcloud sends it.
        assert!(read(r#"{"pushConfig": {}}"#, subscription_in).is_ok());
        let bq = read(r#"{"bigqueryConfig": {"table": "t"}}"#, subscription_in).expect_err("bq");
        assert_eq!(bq.code, tonic::Code::Unimplemented);
        let schema = read(r#"{"schemaSettings": {"schema": "s"}}"#, topic_in).expect_err("schema");
        assert_eq!(schema.code, tonic::Code::Unimplemented);
    }

    #[test]
    fn field_masks_become_proto_paths() {
        let v = Value::String("messageRetentionDuration, labels,deadLetterPolicy".into());
        assert_eq!(
            field_mask(Some(&v)).expect("mask"),
            ["message_retention_duration", "labels", "dead_letter_policy"]
        );
    }
}
