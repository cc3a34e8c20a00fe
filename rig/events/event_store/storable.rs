//! What both ledger engines store unchanged — Cloud SQL's MySQL 8.4 and the local MariaDB
//! stand-in — so that an event the worker accepts is never refused by the database afterwards
//! (a refusal there would come back on every redelivery), and the database's refusals that
//! still happen can be told apart from an unavailable database.
//!
//! The limits are the stricter of the two engines, measured (MariaDB 10.11) or documented
//! (MySQL 8.4): the same event is accepted or refused in every environment.

use chrono::{DateTime, Utc};

/// MariaDB's `json_valid` refuses documents with 32 or more nested arrays/objects (its
/// `JSON_DEPTH_LIMIT`); MySQL allows 100. The ledger takes the smaller.
pub const MAX_JSON_NESTING: usize = 31;
/// Half of `max_allowed_packet` (64 MB, MySQL 8.4's default and the rig's setting): one INSERT
/// carries the payload plus the other columns, and claim-checked payloads are read into memory.
pub const MAX_PAYLOAD_BYTES: usize = 32 * 1024 * 1024;

/// `TIMESTAMP`'s range: `1970-01-01 00:00:01` to `2038-01-19 03:14:07` UTC. The epoch itself
/// is refused by both engines (it is the "zero" value).
pub fn timestamp_range() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        DateTime::<Utc>::from_timestamp(1, 0).unwrap_or_default(),
        DateTime::<Utc>::from_timestamp(i64::from(i32::MAX), 0).unwrap_or_default(),
    )
}

/// Why a `created_at` cannot be stored as it is, if it cannot.
pub fn timestamp_problem(created_at: &DateTime<Utc>) -> Option<String> {
    let (first, last) = timestamp_range();
    if *created_at < first || *created_at > last {
        return Some(format!(
            "created_at {} is outside the TIMESTAMP range ({} to {}); the ledger cannot store it",
            created_at.to_rfc3339(),
            first.to_rfc3339(),
            last.to_rfc3339()
        ));
    }
    // chrono keeps a leap second as a nanosecond count of one second or more; the databases
    // refuse `:60`.
    if created_at.timestamp_subsec_nanos() >= 1_000_000_000 {
        return Some(format!(
            "created_at {} is a leap second, which TIMESTAMP cannot hold",
            created_at.to_rfc3339()
        ));
    }
    None
}

/// The ledger keeps whole seconds (`TIMESTAMP` without fractions). MySQL rounds a fraction,
/// MariaDB truncates it: the worker truncates before writing, so both store the same second.
pub fn to_ledger_precision(created_at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(created_at.timestamp(), 0).unwrap_or(created_at)
}

/// Why `payload` is not a JSON document both engines store, if it is not.
pub fn json_problem(payload: &str) -> Option<String> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Some(format!(
            "payload is {} bytes; the ledger takes at most {MAX_PAYLOAD_BYTES}",
            payload.len()
        ));
    }
    // Depth first, without recursion: a hostile document must not exhaust the parser's stack.
    let depth = nesting(payload);
    if depth > MAX_JSON_NESTING {
        return Some(format!(
            "payload is not valid JSON for the ledger: nested {depth} levels deep, at most {MAX_JSON_NESTING} are stored (MariaDB's limit; MySQL's is 100)"
        ));
    }
    // Parsing into a value (not skipping) checks what both engines check and a skipping parser
    // does not: escapes of lone UTF-16 surrogates (`"\ud800"`) and numbers beyond a double.
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(_) => None,
        Err(e) => Some(format!("payload is not valid JSON: {e}")),
    }
}

/// The deepest nesting of arrays and objects in `text` (brackets inside strings excluded).
/// Only meaningful for text that parses; for other text it is a bound the parser then refines.
pub fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn json_is_refused_where_either_engine_refuses_it() {
        // Each of these was measured against MariaDB 10.11 (`json_valid`) or is documented
        // for MySQL 8.4 (1e400: "number too big to be stored in double").
        for (payload, why) in [
            (r#"{"a":"\ud800"}"#, "lone leading surrogate"),
            (r#"{"a":"\udc00x"}"#, "lone trailing surrogate"),
            ("1e400", "beyond a double"),
            ("\u{feff}{}", "byte order mark"),
            ("{\"a\":\"\u{1}\"}", "raw control character"),
            ("NaN", "not JSON"),
        ] {
            assert!(json_problem(payload).is_some(), "{why}: {payload:?}");
        }
        assert!(json_problem(&nested(MAX_JSON_NESTING)).is_none());
        let too_deep = json_problem(&nested(MAX_JSON_NESTING + 1)).unwrap();
        assert!(too_deep.contains("nested 32 levels"), "{too_deep}");
        // 100k levels: no stack overflow, a reason.
        assert!(json_problem(&nested(100_000)).is_some());
        for fine in [
            r#"{"a":"\ud83d\ude00"}"#,
            r#""\u0000""#,
            "123456789012345678901234567890",
            " {} ",
            r#"{"a":1,"a":2}"#,
            r#""[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[""#,
        ] {
            assert_eq!(json_problem(fine), None, "{fine}");
        }
    }

    #[test]
    fn the_timestamp_range_is_timestamps_not_years() {
        let at = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        assert!(timestamp_problem(&at(0)).is_some(), "the epoch is refused");
        assert!(timestamp_problem(&at(1)).is_none());
        assert!(timestamp_problem(&at(2_147_483_647)).is_none());
        assert!(timestamp_problem(&at(2_147_483_648)).is_some());
        assert!(timestamp_problem(&at(-1)).is_some());
        let leap = DateTime::parse_from_rfc3339("2016-12-31T23:59:60Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(timestamp_problem(&leap).unwrap().contains("leap second"));
        let fraction = DateTime::parse_from_rfc3339("2020-01-01T00:00:00.7Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(to_ledger_precision(fraction).timestamp(), 1_577_836_800);
    }
}
