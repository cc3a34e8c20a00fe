//! One event as the ledger stores it, and the checks it must pass before any INSERT.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::mysql::MySqlRow;
use uuid::Uuid;

use super::storable;

/// The width of the ledger's VARCHAR(255) columns, in characters.
pub const MAX_FIELD_CHARS: usize = 255;

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
        if let Some(problem) = storable::json_problem(&self.payload) {
            return Err(invalid(problem));
        }
        if let Some(problem) = storable::timestamp_problem(&self.created_at) {
            return Err(invalid(problem));
        }
        Ok(())
    }

    /// `created_at` as the ledger keeps it (whole seconds), the value the appends bind.
    pub fn ledger_created_at(&self) -> DateTime<Utc> {
        storable::to_ledger_precision(self.created_at)
    }

    /// `None` when `other` is the same event; otherwise which fields differ.
    ///
    /// An event is its `event_id` and everything the ledger keeps of it: `account_id`,
    /// `aggregate_type`, `aggregate_id` (compared exactly: case, trailing spaces and all, as the
    /// binary id columns do), `created_at` at the ledger's precision (whole seconds) and the
    /// payload as a JSON value (MySQL normalises stored JSON: key order, whitespace). Any other
    /// difference under the same `event_id` is a conflict.
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
        if self.ledger_created_at() != other.ledger_created_at() {
            differs.push("created_at");
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
            (
                NewEvent {
                    created_at: DateTime::from_timestamp(0, 0).unwrap(),
                    ..event()
                },
                "TIMESTAMP range",
            ),
            (
                NewEvent {
                    payload: r#"{"a":"\ud800"}"#.into(),
                    ..event()
                },
                "not valid JSON",
            ),
            (
                NewEvent {
                    payload: format!("{}{}", "[".repeat(40), "]".repeat(40)),
                    ..event()
                },
                "nested 40 levels",
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
        let later = NewEvent {
            created_at: a.created_at + chrono::Duration::seconds(1),
            ..a.clone()
        };
        assert_eq!(a.differences(&later).as_deref(), Some("created_at"));
        let padded = NewEvent {
            aggregate_id: format!("{} ", a.aggregate_id),
            ..a.clone()
        };
        assert_eq!(a.differences(&padded).as_deref(), Some("aggregate_id"));
    }
}
