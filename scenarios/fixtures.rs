//! NetSuite-shaped events for the scenarios, built from the records in `fixtures/netsuite/`.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use rig_events::event_store::NewEvent;

/// (record type, JSON) of every fixture record, embedded at build time.
pub const RECORDS: &[(&str, &str)] = &[
    (
        "salesorder",
        include_str!("../fixtures/netsuite/salesorder.json"),
    ),
    ("invoice", include_str!("../fixtures/netsuite/invoice.json")),
    (
        "customer",
        include_str!("../fixtures/netsuite/customer.json"),
    ),
    (
        "itemfulfillment",
        include_str!("../fixtures/netsuite/itemfulfillment.json"),
    ),
];

/// One aggregate (an ordering key): which account and record it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Aggregate {
    pub account: u8,
    pub record: usize,
    pub id: u16,
}

impl Aggregate {
    pub fn account_id(&self) -> String {
        format!("TSTDRV{:07}", 1_000_000 + u32::from(self.account))
    }

    pub fn aggregate_type(&self) -> &'static str {
        RECORDS[self.record % RECORDS.len()].0
    }

    pub fn aggregate_id(&self) -> String {
        format!("{}", 40_000 + u32::from(self.id))
    }
}

pub fn aggregate() -> impl Strategy<Value = Aggregate> {
    (0u8..3, 0..RECORDS.len(), 0u16..50).prop_map(|(account, record, id)| Aggregate {
        account,
        record,
        id,
    })
}

/// The `seq`-th change of `aggregate`: the fixture record with its id and a revision stamped in.
pub fn event(aggregate: &Aggregate, seq: u32) -> NewEvent {
    let (record_type, json) = RECORDS[aggregate.record % RECORDS.len()];
    let mut value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    value["id"] = serde_json::Value::String(aggregate.aggregate_id());
    value["recordType"] = serde_json::Value::String(record_type.into());
    value["revision"] = serde_json::Value::from(seq);
    NewEvent {
        account_id: aggregate.account_id(),
        event_id: uuid::Uuid::new_v4(),
        aggregate_type: record_type.into(),
        aggregate_id: aggregate.aggregate_id(),
        payload: value.to_string(),
        created_at: Utc
            .timestamp_opt(1_795_000_000 + i64::from(seq), 0)
            .single()
            .unwrap_or_else(Utc::now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixture_makes_a_valid_event() {
        for (record, (name, _)) in RECORDS.iter().enumerate() {
            let e = event(
                &Aggregate {
                    account: 1,
                    record,
                    id: 7,
                },
                3,
            );
            assert_eq!(e.validate(), Ok(()), "{name}");
            let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
            assert_eq!(v["revision"], 3);
            assert_eq!(v["id"], "40007");
        }
    }
}
