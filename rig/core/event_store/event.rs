//! One event as the ledger stores it, and the checks it must pass before any INSERT.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::mysql::MySqlRow;
use uuid::Uuid;

/// The width of the ledger's VARCHAR(255) columns, in characters.
pub const MAX_FIELD_CHARS: usize = 255;
/// TIMESTAMP's range ends in January 2038.
const TIMESTAMP_MAX_YEAR: i32 = 2037;

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub account_id: String,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The payload as JSON text.
    pub payload: String,
    pub created_at: DateTime<Utc>,
}

/// A row read back from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: u64,
    pub account_id: String,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub payload: String,
    pub created_at: DateTime<Utc>,
}

/// Why an event was refused before reaching the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event {event_id}: {reason}")]
pub struct InvalidEvent {
    pub event_id: String,
    pub reason: String,
}

impl NewEvent {
    /// Checks everything the database would otherwise truncate, coerce or refuse obscurely.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        let invalid = |reason: String| InvalidEvent {
            event_id: self.event_id.to_string(),
            reason,
        };
        for (name, value) in [
            ("account_id", &self.account_id),
            ("aggregate_type", &self.aggregate_type),
            ("aggregate_id", &self.aggregate_id),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(format!("{name} is empty")));
            }
            let chars = value.chars().count();
            if chars > MAX_FIELD_CHARS {
                return Err(invalid(format!(
                    "{name} is {chars} characters long; the ledger keeps at most {MAX_FIELD_CHARS}"
                )));
            }
            if value.contains('\0') {
                return Err(invalid(format!("{name} contains a NUL character")));
            }
        }
        if self.event_id.is_nil() {
            return Err(invalid("event_id is the nil UUID".into()));
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&self.payload) {
            return Err(invalid(format!("payload is not valid JSON: {e}")));
        }
        let year = self
            .created_at
            .format("%Y")
            .to_string()
            .parse::<i32>()
            .unwrap_or(0);
        if !(1970..=TIMESTAMP_MAX_YEAR).contains(&year) {
            return Err(invalid(format!(
                "created_at {} is outside the TIMESTAMP range (1970–2038)",
                self.created_at
            )));
        }
        Ok(())
    }

    /// `None` when `other` is the same event; otherwise which fields differ. Payloads are
    /// compared as JSON values: MySQL normalises stored JSON (key order, whitespace).
    pub fn differences(&self, other: &NewEvent) -> Option<String> {
        let mut differs = Vec::new();
        if self.account_id != other.account_id {
            differs.push("account_id");
        }
        if self.aggregate_type != other.aggregate_type {
            differs.push("aggregate_type");
        }
        if self.aggregate_id != other.aggregate_id {
            differs.push("aggregate_id");
        }
        let same_payload = self.payload == other.payload
            || matches!(
                (
                    serde_json::from_str::<serde_json::Value>(&self.payload),
                    serde_json::from_str::<serde_json::Value>(&other.payload),
                ),
                (Ok(a), Ok(b)) if a == b
            );
        if !same_payload {
            differs.push("payload");
        }
        (!differs.is_empty()).then(|| differs.join(", "))
    }
}

impl StoredEvent {
    pub(crate) fn from_row(row: &MySqlRow) -> Result<Self, sqlx::Error> {
        let event_id: String = row.try_get("event_id")?;
        Ok(Self {
            id: row.try_get("id")?,
            account_id: row.try_get("account_id")?,
            event_id: Uuid::parse_str(&event_id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            payload: row.try_get("payload")?,
            created_at: row.try_get("created_at")?,
        })
    }

    pub fn as_new_event(&self) -> NewEvent {
        NewEvent {
            account_id: self.account_id.clone(),
            event_id: self.event_id,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            payload: self.payload.clone(),
            created_at: self.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> NewEvent {
        NewEvent {
            account_id: "TSTDRV1234567".into(),
            event_id: Uuid::new_v4(),
            aggregate_type: "salesorder".into(),
            aggregate_id: "SO-1001".into(),
            payload: r#"{"a": 1, "b": [true]}"#.into(),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn accepts_a_well_formed_event() {
        assert_eq!(event().validate(), Ok(()));
    }

    #[test]
    fn refuses_what_the_database_would_truncate_or_reject() {
        let cases: Vec<(NewEvent, &str)> = vec![
            (
                NewEvent {
                    account_id: "x".repeat(256),
                    ..event()
                },
                "account_id is 256 characters",
            ),
            (
                NewEvent {
                    aggregate_id: " ".into(),
                    ..event()
                },
                "aggregate_id is empty",
            ),
            (
                NewEvent {
                    payload: "{not json".into(),
                    ..event()
                },
                "payload is not valid JSON",
            ),
            (
                NewEvent {
                    event_id: Uuid::nil(),
                    ..event()
                },
                "nil UUID",
            ),
            (
                NewEvent {
                    created_at: DateTime::from_timestamp(4_000_000_000, 0).unwrap(),
                    ..event()
                },
                "TIMESTAMP range",
            ),
        ];
        for (bad, expected) in cases {
            let err = bad.validate().unwrap_err();
            assert!(
                err.reason.contains(expected),
                "{err} should mention {expected}"
            );
        }
        // 255 multi-byte characters fit: the limit is characters, not bytes.
        assert!(
            NewEvent {
                aggregate_type: "é".repeat(255),
                ..event()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn payloads_compare_as_json_values() {
        let a = event();
        let b = NewEvent {
            payload: r#"{"b":[true],"a":1}"#.into(),
            ..a.clone()
        };
        assert_eq!(a.differences(&b), None);
        let c = NewEvent {
            payload: r#"{"a":2,"b":[true]}"#.into(),
            aggregate_id: "SO-2".into(),
            ..a.clone()
        };
        assert_eq!(a.differences(&c).as_deref(), Some("aggregate_id, payload"));
    }
}
