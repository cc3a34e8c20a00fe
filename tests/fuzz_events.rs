//! Events shaped to probe the ledger's limits: field lengths around 255 characters of 1–4
//! byte characters, NULs and trailing spaces, timestamps at and beyond TIMESTAMP's ends and
//! on leap seconds, JSON from well-formed values to surrogate escapes, extreme numbers and
//! nesting around the 31-level limit.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use rig_events::event_store::NewEvent;

fn field() -> impl Strategy<Value = String> {
    let unit = prop_oneof![
        Just("a"),
        Just("é"),
        Just("€"),
        Just("😀"),
        Just(" "),
        Just("\0"),
        Just("\u{7f}"),
        Just("C"),
        Just("/"),
    ];
    prop_oneof![
        6 => "[A-Za-z0-9 _./:-]{0,40}",
        1 => (unit.clone(), 250usize..=258).prop_map(|(u, n)| u.repeat(n)),
        2 => (unit, 0usize..=4).prop_map(|(u, n)| format!("SO-1{}", u.repeat(n))),
    ]
}

fn created_at() -> impl Strategy<Value = DateTime<Utc>> {
    let edge = i64::from(i32::MAX);
    let secs = prop_oneof![
        1 => -3i64..=3,
        1 => edge - 3..=edge + 3,
        6 => 1i64..edge,
        1 => Just(253_402_300_799i64),
    ];
    let nanos = prop_oneof![
        3 => Just(0u32),
        3 => 0u32..1_000_000_000,
        1 => 1_000_000_000u32..1_000_500_000,
    ];
    (secs, nanos).prop_filter_map("a representable instant", |(s, n)| {
        DateTime::<Utc>::from_timestamp(s, n)
    })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn payload() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => json_value().prop_map(|v| v.to_string()),
        1 => (28usize..=34).prop_map(|n| format!("{}1{}", "[".repeat(n), "]".repeat(n))),
        1 => (28usize..=34).prop_map(|n| format!("{}1{}", "{\"k\":".repeat(n), "}".repeat(n))),
        1 => prop::sample::select(vec![
            r#"{"a":"\ud800"}"#, r#"{"a":"\udfff"}"#, r#"{"a":"\ud83d\ude00"}"#, r#""\u0000""#,
            "1e308", "1e309", "-1e400", "123456789012345678901234567890", "0.1e-400",
            r#"{"a":1,"a":2}"#, " [ ] ", "\u{feff}{}", "{\"a\":\"\u{1}\"}", "", "{", "nul",
        ]).prop_map(str::to_string),
        1 => ".{0,30}",
    ]
}

pub fn event_strategy() -> impl Strategy<Value = NewEvent> {
    (
        field(),
        field(),
        field(),
        payload(),
        created_at(),
        any::<u128>(),
    )
        .prop_map(
            |(account_id, aggregate_type, aggregate_id, payload, created_at, id)| NewEvent {
                account_id,
                event_id: uuid::Uuid::from_u128(id),
                aggregate_type,
                aggregate_id,
                payload,
                created_at,
            },
        )
}
