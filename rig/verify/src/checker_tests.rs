//! Each anomaly on a small hand-made run: the clean run passes, the run with one thing wrong
//! fails with that anomaly's name, so every test can fail.

use super::*;
use crate::history::{
    DatabaseState, DeadLetterForward, Delivery, Event, FaultEdge, Header, History, LedgerRow,
    Poison, Primary, Publish, Settle, Snapshot, Timings, TopicMessage,
};
use crate::plan::{Aggregate, FaultKind};

const RAW: &str = "events.raw";
const SUB: &str = "events.raw.worker";

struct Run {
    history: History,
    snapshot: Snapshot,
    t: u64,
}

fn aggregate(key: &str) -> Aggregate {
    let mut parts = key.splitn(3, ':');
    Aggregate {
        account_id: parts.next().unwrap_or_default().into(),
        aggregate_type: parts.next().unwrap_or_default().into(),
        aggregate_id: parts.next().unwrap_or_default().into(),
    }
}

impl Run {
    fn new() -> Run {
        let state = DatabaseState {
            checksum: "42".into(),
            rows: [("tenant_orders".to_string(), 3)].into_iter().collect(),
        };
        Run {
            history: History::new(Header {
                version: crate::history::VERSION,
                seed: None,
                raw_topic: RAW.into(),
                raw_subscription: SUB.into(),
                merged_topic: "events.merged".into(),
                dead_letter_topic: "events.dlq".into(),
                max_delivery_attempts: 5,
                drain_bound_ms: 10_000,
                worker: None,
                replay: None,
            }),
            snapshot: Snapshot {
                version: crate::history::VERSION,
                primary: Primary {
                    before: state.clone(),
                    after: state,
                },
                timings: Timings {
                    started_at_ms: 1_000_000,
                    ..Timings::default()
                },
                ..Snapshot::default()
            },
            t: 1_000_000,
        }
    }

    fn push(&mut self, event: Event) {
        self.t += 100;
        self.history.push(self.t, event);
        self.snapshot.timings.ended_at_ms = self.t + 1000;
    }

    fn publish_with(&mut self, item: u64, event: &str, key: &str, edit: impl FnOnce(&mut Publish)) {
        let mut p = Publish {
            topic: RAW.into(),
            message_id: format!("m{item}"),
            ordering_key: key.into(),
            item: Some(item),
            event_id: Some(event.into()),
            aggregate: Some(aggregate(key)),
            payload_sha256: Some(format!("sha-{event}")),
            payload_bytes: Some(100),
            ..Publish::default()
        };
        edit(&mut p);
        self.push(Event::Publish(Box::new(p)));
    }

    fn publish(&mut self, item: u64, event: &str, key: &str) {
        self.publish_with(item, event, key, |_| {});
    }

    fn poison(&mut self, item: u64, event: &str, key: &str) {
        self.publish_with(item, event, key, |p| {
            p.poison = Some(Poison {
                case: "json-nan".into(),
                why: "NaN".into(),
            });
            p.payload_sha256 = None;
        });
    }

    fn deliver(&mut self, item: u64, attempt: u32) {
        self.push(Event::Delivery(Delivery {
            subscription: SUB.into(),
            message_id: format!("m{item}"),
            ack_id: format!("a{item}-{attempt}"),
            attempt,
            consumer: 1,
            ..Delivery::default()
        }));
    }

    fn settle(&mut self, item: u64, attempt: u32, how: fn(Settle) -> Event) {
        self.push(how(Settle {
            subscription: SUB.into(),
            ack_id: format!("a{item}-{attempt}"),
            ..Settle::default()
        }));
    }

    fn row(&mut self, event: &str, key: &str) {
        let a = aggregate(key);
        let id = self.snapshot.ledger.len() as u64 + 1;
        self.snapshot.ledger.push(LedgerRow {
            id,
            event_id: event.into(),
            account_id: a.account_id,
            aggregate_type: a.aggregate_type,
            aggregate_id: a.aggregate_id,
            payload_sha256: format!("sha-{event}"),
            payload_bytes: 100,
            created_at: "2026-11-20T14:03:11Z".into(),
        });
    }

    fn merged(&mut self, event: &str, key: &str) {
        let a = aggregate(key);
        let n = self.snapshot.merged.len();
        self.snapshot.merged.push(TopicMessage {
            message_id: format!("g{n}"),
            ordering_key: key.into(),
            attributes: [
                ("event_id", event.to_string()),
                ("account_id", a.account_id),
                ("aggregate_type", a.aggregate_type),
                ("aggregate_id", a.aggregate_id),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            ..TopicMessage::default()
        });
    }

    /// Delivered, stored, on merged, acked: what a correct worker does with a valid event.
    fn process(&mut self, item: u64, event: &str, key: &str) {
        self.deliver(item, 1);
        self.row(event, key);
        self.merged(event, key);
        self.settle(item, 1, Event::Ack);
    }

    fn dead_letter(&mut self, item: u64, reason: Option<&str>) {
        let n = self.snapshot.dead_letters.len();
        let message_id = format!("d{n}");
        let mut attributes = std::collections::BTreeMap::new();
        attributes.insert(crate::ITEM_ATTRIBUTE.to_string(), item.to_string());
        if let Some(r) = reason {
            attributes.insert(crate::DEAD_LETTER_REASON.to_string(), r.to_string());
        }
        self.push(Event::Publish(Box::new(Publish {
            topic: "events.dlq".into(),
            message_id: message_id.clone(),
            attributes: attributes.clone(),
            ..Publish::default()
        })));
        self.snapshot.dead_letters.push(TopicMessage {
            message_id,
            attributes,
            ..TopicMessage::default()
        });
    }

    /// The subscription's policy forwards the message after `attempts` nacked deliveries.
    fn forwarded(&mut self, item: u64, attempts: u32) {
        for attempt in 1..=attempts {
            self.deliver(item, attempt);
            self.settle(item, attempt, Event::Nack);
        }
        self.push(Event::DeadLetterForward(DeadLetterForward {
            subscription: SUB.into(),
            message_id: format!("m{item}"),
            attempts,
            dead_letter_topic: "events.dlq".into(),
        }));
        let n = self.snapshot.dead_letters.len();
        self.snapshot.dead_letters.push(TopicMessage {
            message_id: format!("d{n}"),
            attributes: [
                (crate::ITEM_ATTRIBUTE.to_string(), item.to_string()),
                (
                    crate::SERVICE_DELIVERY_COUNT.to_string(),
                    attempts.to_string(),
                ),
            ]
            .into_iter()
            .collect(),
            ..TopicMessage::default()
        });
    }

    fn fault(&mut self, id: u32, kind: FaultKind, start: bool) {
        let edge = FaultEdge {
            fault: id,
            fault_kind: kind,
            target: kind.default_target().into(),
        };
        self.push(if start {
            Event::FaultStart(edge)
        } else {
            Event::FaultEnd(edge)
        });
    }

    fn check(&self) -> Verdict {
        check(&self.history, &self.snapshot)
    }
}

const K: &str = "TSTDRV1:salesorder:1";
const L: &str = "TSTDRV1:invoice:2";

/// Two keys, a poison message dead-lettered with a reason, a producer retry.
fn clean() -> Run {
    let mut r = Run::new();
    r.publish(0, "e1", K);
    r.publish(1, "e2", K);
    r.publish(2, "f1", L);
    r.poison(3, "p1", K);
    r.publish_with(4, "e1", K, |p| p.retry_of = Some(0));
    r.process(0, "e1", K);
    r.process(1, "e2", K);
    r.process(2, "f1", L);
    r.deliver(3, 1);
    r.dead_letter(3, Some("payload is not valid JSON"));
    r.settle(3, 1, Event::Ack);
    r.deliver(4, 1);
    r.settle(4, 1, Event::Ack);
    r
}

fn failing(v: &Verdict) -> Vec<&'static str> {
    v.failing_kinds()
        .into_iter()
        .map(AnomalyKind::name)
        .collect()
}

fn only(v: &Verdict, kind: AnomalyKind) -> &Anomaly {
    let of_kind: Vec<&Anomaly> = v.anomalies().filter(|a| a.kind == kind).collect();
    assert_eq!(
        of_kind.len(),
        1,
        "{kind}: {:#?}",
        v.anomalies().collect::<Vec<_>>()
    );
    of_kind[0]
}

#[test]
fn the_clean_run_passes_every_property() {
    let v = clean().check();
    assert!(v.passed(), "{:#?}", v.properties);
    assert_eq!(v.properties.len(), Property::ALL.len());
    assert_eq!(v.figures.valid_events, 3);
    assert_eq!(v.figures.producer_retries, 1);
    assert_eq!(v.figures.dead_letters_by_worker, 1);
}

#[test]
fn a_valid_event_acked_but_never_stored_is_lost_with_its_attempts_and_faults() {
    let mut r = Run::new();
    r.publish(0, "e1", K);
    r.fault(1, FaultKind::EventStoreFreeze, true);
    r.deliver(0, 1);
    r.settle(0, 1, Event::Nack);
    r.deliver(0, 2);
    r.merged("e1", K);
    r.settle(0, 2, Event::Ack);
    r.fault(1, FaultKind::EventStoreFreeze, false);
    let v = r.check();
    assert_eq!(failing(&v), ["lost"]);
    let a = only(&v, AnomalyKind::Lost);
    assert_eq!(a.event_ids, ["e1"]);
    assert_eq!(a.key.as_deref(), Some(K));
    assert_eq!(a.attempts, [1, 2]);
    assert_eq!(a.faults, ["event_store_freeze#1"]);
    assert!(
        a.explanation.contains("attempts 1, 2") && a.explanation.contains("event_store_freeze#1"),
        "{}",
        a.explanation
    );
    // The same run with the row: nothing lost.
    r.row("e1", K);
    assert!(r.check().passed());
}

#[test]
fn a_dead_lettered_valid_event_is_not_lost_but_is_named() {
    let mut r = Run::new();
    r.publish(0, "e1", K);
    r.forwarded(0, 5);
    let v = r.check();
    assert_eq!(failing(&v), ["valid-dead-lettered"]);
    assert!(
        only(&v, AnomalyKind::ValidDeadLettered)
            .explanation
            .contains("subscription's dead-letter policy")
    );
}

#[test]
fn two_rows_for_one_event_are_a_duplicate() {
    let mut r = clean();
    assert!(r.check().passed());
    r.row("e2", K);
    let v = r.check();
    assert_eq!(failing(&v), ["duplicate-row"]);
    assert!(
        only(&v, AnomalyKind::DuplicateRow)
            .explanation
            .contains("2 rows (ids 2, 4)")
    );
}

#[test]
fn a_row_no_publish_explains_is_named() {
    let mut r = clean();
    r.row("zz", K);
    assert_eq!(failing(&r.check()), ["unexplained-row"]);
    let mut r = clean();
    r.snapshot.ledger[0].aggregate_id = "1 ".into();
    let v = r.check();
    assert_eq!(failing(&v), ["unexplained-row"]);
    assert!(
        only(&v, AnomalyKind::UnexplainedRow)
            .explanation
            .contains("aggregate_id \"1 \"")
    );
}

#[test]
fn a_row_with_another_payload_is_a_payload_mismatch() {
    let mut r = clean();
    r.snapshot.ledger[1].payload_sha256 = "sha-other".into();
    assert_eq!(failing(&r.check()), ["payload-mismatch"]);
}

#[test]
fn any_change_on_the_primary_is_a_write() {
    let mut r = clean();
    r.snapshot
        .primary
        .after
        .rows
        .insert("event_store".into(), 1);
    let v = r.check();
    assert_eq!(failing(&v), ["primary-write"]);
    assert!(
        only(&v, AnomalyKind::PrimaryWrite)
            .explanation
            .contains("table event_store: absent → 1 rows")
    );
    let mut r = clean();
    r.snapshot.primary.after.checksum = "43".into();
    assert_eq!(failing(&r.check()), ["primary-write"]);
}

#[test]
fn a_keys_rows_out_of_publish_order_are_reordered() {
    let mut r = Run::new();
    r.publish(0, "e1", K);
    r.publish(1, "e2", K);
    r.publish(2, "e3", K);
    r.process(1, "e2", K);
    r.process(0, "e1", K);
    r.process(2, "e3", K);
    let v = r.check();
    assert_eq!(failing(&v), ["reordered", "merged-reordered"]);
    let a = only(&v, AnomalyKind::Reordered);
    assert_eq!(a.event_ids, ["e2", "e1"]);
    assert!(
        a.explanation.contains("row 1 holds event e2"),
        "{}",
        a.explanation
    );
    // Other keys interleaving is no reordering.
    let mut r = Run::new();
    r.publish(0, "e1", K);
    r.publish(1, "f1", L);
    r.process(1, "f1", L);
    r.process(0, "e1", K);
    assert!(r.check().passed());
}

#[test]
fn a_later_event_stored_past_a_missing_one_is_a_gap() {
    let mut r = Run::new();
    r.publish(0, "e1", K);
    r.publish(1, "e2", K);
    r.deliver(0, 1);
    r.settle(0, 1, Event::Ack);
    r.process(1, "e2", K);
    let v = r.check();
    assert!(failing(&v).contains(&"gap"), "{:?}", failing(&v));
    assert_eq!(only(&v, AnomalyKind::Gap).event_ids, ["e1"]);
    // The last event of a key missing is a loss, not a gap.
    let mut r = Run::new();
    r.publish(0, "e1", K);
    r.publish(1, "e2", K);
    r.process(0, "e1", K);
    r.deliver(1, 1);
    r.settle(1, 1, Event::Ack);
    assert!(!failing(&r.check()).contains(&"gap"));
}

#[test]
fn merged_missing_reordered_and_mismatched_are_named_but_repeats_pass() {
    let mut r = clean();
    r.merged("e1", K);
    r.merged("e2", K);
    let v = r.check();
    assert!(v.passed(), "repeats are at-least-once: {:?}", failing(&v));
    assert!(
        v.property(Property::Merged)
            .unwrap()
            .summary
            .contains("2 repeats")
    );

    let mut r = clean();
    r.snapshot
        .merged
        .retain(|m| m.attributes["event_id"] != "f1");
    assert_eq!(failing(&r.check()), ["merged-missing"]);

    let mut r = clean();
    r.snapshot.merged.swap(0, 1);
    let v = r.check();
    assert_eq!(failing(&v), ["merged-reordered"]);
    assert_eq!(
        only(&v, AnomalyKind::MergedReordered).event_ids,
        ["e2", "e1"]
    );

    let mut r = clean();
    r.snapshot.merged[2].ordering_key = "".into();
    assert_eq!(failing(&r.check()), ["merged-mismatch"]);
    let mut r = clean();
    r.merged("p1", K);
    let v = r.check();
    assert_eq!(failing(&v), ["merged-mismatch"]);
    assert!(
        only(&v, AnomalyKind::MergedMismatch)
            .explanation
            .contains("poison")
    );
}

#[test]
fn stored_poison_is_named() {
    let mut r = clean();
    r.row("p1", K);
    let v = r.check();
    assert_eq!(failing(&v), ["poison-stored"]);
    assert!(
        only(&v, AnomalyKind::PoisonStored)
            .explanation
            .contains("case json-nan")
    );
}

#[test]
fn poison_acked_without_a_dead_letter_is_named() {
    let mut r = clean();
    r.snapshot.dead_letters.clear();
    let v = r.check();
    assert_eq!(failing(&v), ["poison-not-dead-lettered"]);
    assert!(
        only(&v, AnomalyKind::PoisonNotDeadLettered)
            .explanation
            .contains("last acked")
    );
}

#[test]
fn poison_left_to_the_subscriptions_policy_passes_without_a_reason() {
    let mut r = Run::new();
    r.publish(0, "e1", K);
    r.poison(1, "p1", K);
    r.process(0, "e1", K);
    r.forwarded(1, 5);
    let v = r.check();
    assert!(v.passed(), "{:?}", failing(&v));
    assert_eq!(v.figures.dead_letters_by_policy, 1);
    // ... but not after more attempts than the policy allows.
    let mut r = Run::new();
    r.poison(0, "p1", K);
    r.forwarded(0, 6);
    let v = r.check();
    assert_eq!(failing(&v), ["dead-lettered-late"]);
    assert!(
        only(&v, AnomalyKind::DeadLetteredLate)
            .explanation
            .contains("after 6 delivery attempts")
    );
    // Redelivered behind an earlier poison of its key (revoked, not failed), the attempt
    // number runs past the limit; what the policy counts is the five failed deliveries.
    let mut r = Run::new();
    r.poison(0, "p1", K);
    r.deliver(0, 1);
    r.push(Event::Revoked(Settle {
        subscription: SUB.into(),
        ack_id: "a0-1".into(),
        message_id: Some("m0".into()),
        ..Settle::default()
    }));
    for attempt in 2..=6 {
        r.deliver(0, attempt);
        r.settle(0, attempt, Event::Nack);
    }
    r.push(Event::DeadLetterForward(DeadLetterForward {
        subscription: SUB.into(),
        message_id: "m0".into(),
        attempts: 6,
        dead_letter_topic: "events.dlq".into(),
    }));
    r.snapshot.dead_letters.push(TopicMessage {
        message_id: "d0".into(),
        attributes: [
            (crate::ITEM_ATTRIBUTE.to_string(), "0".to_string()),
            (crate::SERVICE_DELIVERY_COUNT.to_string(), "6".to_string()),
        ]
        .into_iter()
        .collect(),
        ..TopicMessage::default()
    });
    let v = r.check();
    assert!(v.passed(), "{:?}", failing(&v));
}

#[test]
fn a_worker_dead_letter_after_the_last_attempt_is_late() {
    let mut r = Run::new();
    r.poison(0, "p1", K);
    for attempt in 1..=6 {
        r.deliver(0, attempt);
        if attempt < 6 {
            r.settle(0, attempt, Event::Nack);
        }
    }
    r.dead_letter(0, Some("given up"));
    r.settle(0, 6, Event::Ack);
    assert_eq!(failing(&r.check()), ["dead-lettered-late"]);
    // A redelivery after the dead letter (a lost ack) does not count.
    let mut r = Run::new();
    r.poison(0, "p1", K);
    r.deliver(0, 5);
    r.dead_letter(0, Some("bad"));
    r.settle(0, 5, Event::Ack);
    r.deliver(0, 6);
    r.settle(0, 6, Event::Ack);
    assert!(r.check().passed(), "{:?}", failing(&r.check()));
}

#[test]
fn a_worker_dead_letter_without_a_reason_is_named() {
    let mut r = clean();
    r.snapshot.dead_letters[0]
        .attributes
        .remove(crate::DEAD_LETTER_REASON);
    let v = r.check();
    assert_eq!(failing(&v), ["dead-letter-without-reason"]);
}

#[test]
fn a_second_dead_letter_is_a_note_not_a_failure() {
    let mut r = clean();
    r.dead_letter(3, Some("payload is not valid JSON"));
    let v = r.check();
    assert!(v.passed());
    assert_eq!(
        v.property(Property::DeadLetters)
            .unwrap()
            .counts
            .get(&AnomalyKind::DuplicateDeadLetter),
        Some(&1)
    );
}

#[test]
fn a_claim_checked_event_stored_with_its_reference_is_named() {
    let mut r = Run::new();
    r.publish_with(0, "e1", K, |p| {
        p.claim_checked = true;
        p.payload_bytes = Some(300_000);
    });
    r.process(0, "e1", K);
    assert!(r.check().passed());
    r.snapshot.ledger[0].payload_sha256 = "sha-of-the-reference".into();
    r.snapshot.ledger[0].payload_bytes = 180;
    let v = r.check();
    assert_eq!(failing(&v), ["claim-reference-stored"]);
    assert!(
        only(&v, AnomalyKind::ClaimReferenceStored)
            .explanation
            .contains("180 bytes")
    );
}

#[test]
fn a_backlog_that_drains_late_is_slow_and_one_that_never_does_is_named() {
    let mut r = clean();
    r.fault(1, FaultKind::GcsUnavailable, true);
    r.fault(1, FaultKind::GcsUnavailable, false);
    r.t += 20_000;
    r.deliver(2, 2);
    r.settle(2, 2, Event::Ack);
    let v = r.check();
    assert_eq!(failing(&v), ["slow-drain"]);
    assert!(
        only(&v, AnomalyKind::SlowDrain)
            .explanation
            .contains("over the bound of 10.0 s")
    );

    let mut r = clean();
    r.deliver(1, 2);
    r.settle(1, 2, Event::Nack);
    r.deliver(1, 3);
    r.settle(1, 3, Event::Nack);
    let v = r.check();
    assert_eq!(failing(&v), ["never-drains"]);
    let a = only(&v, AnomalyKind::NeverDrains);
    assert_eq!(a.key.as_deref(), Some(K));
    assert!(a.explanation.contains("last nacked"), "{}", a.explanation);

    let mut r = clean();
    r.snapshot.timings.raw_backlog_at_end = Some(2);
    assert_eq!(failing(&r.check()), ["never-drains"]);
}

#[test]
fn a_lost_ack_leaves_the_message_unsettled_until_it_is_acked_again() {
    let mut r = clean();
    r.push(Event::ServiceFault(crate::history::ServiceFault {
        subscription: SUB.into(),
        fault: crate::history::ServiceFaultKind::LostAck,
        message_id: Some("m2".into()),
    }));
    assert_eq!(failing(&r.check()), ["never-drains"]);
    r.deliver(2, 2);
    r.settle(2, 2, Event::Ack);
    assert!(r.check().passed());
}

#[test]
fn a_revoked_message_is_unsettled_until_it_is_acked_again() {
    let mut r = clean();
    r.push(Event::Revoked(Settle {
        subscription: SUB.into(),
        ack_id: "a1-1".into(),
        message_id: Some("m1".into()),
        ..Settle::default()
    }));
    let v = r.check();
    assert_eq!(failing(&v), ["never-drains"]);
    assert_eq!(v.figures.timeline.last().map(|s| s.backlog), Some(1));
    r.deliver(1, 2);
    r.settle(1, 2, Event::Ack);
    assert!(r.check().passed());
}

#[test]
fn acks_are_traced_through_their_ack_ids() {
    let mut r = Run::new();
    r.publish(0, "e1", K);
    r.process(0, "e1", K);
    let v = r.check();
    assert!(v.passed());
    assert_eq!(v.figures.acks, 1);
    assert_eq!(
        v.figures.timeline.iter().map(|s| s.delivered).sum::<u64>(),
        1
    );
    assert_eq!(v.figures.timeline.last().map(|s| s.backlog), Some(0));
}
