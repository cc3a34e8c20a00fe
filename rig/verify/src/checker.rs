//! The checker: a pure function of a saved [`History`] and [`Snapshot`] that says, property by
//! property, whether the worker kept the backbone's promises, and names every anomaly with a
//! short explanation (the events, their key, their delivery attempts and the faults active at
//! the time), as Jepsen's queue checker does for a queue.
//!
//! What a correct worker may do and still pass: store an event once however often it is
//! delivered; publish it to `events.merged` more than once (Pub/Sub is at-least-once, so
//! repeats are counted, not failed); dead-letter poison itself with a `dead_letter_reason`, or
//! only nack it and leave the forward to the subscription's dead-letter policy (whose copy
//! carries `CloudPubSubDeadLetterSourceDeliveryCount` and no reason); have a message
//! dead-lettered twice (Pub/Sub dead-letters best-effort: reported as a note).
//!
//! Messages are told apart by what the producer and the service put on them: a raw publish
//! by its message id and plan item (`rig_item`, which dead letters keep with the original
//! attributes), an event by its `event_id`.

use std::collections::BTreeMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::history::{
    Event, History, LedgerRow, Publish, ServiceFaultKind, Snapshot, TopicMessage,
};
use crate::plan::FaultKind;
use crate::{
    DEAD_LETTER_REASON, DEAD_LETTER_SOURCE_MESSAGE_ID, ITEM_ATTRIBUTE, SERVICE_DELIVERY_COUNT,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Property {
    /// Every valid event is in the ledger or on the dead-letter topic at the end.
    NoLoss,
    /// One row per event_id.
    NoDuplicates,
    /// Every row is a published event, as published.
    LedgerExplained,
    /// The primary database is as it was.
    PrimaryUntouched,
    /// Each key's rows in publish order, without holes.
    LedgerOrder,
    /// Every stored event on `events.merged`, each key's first copies in order.
    Merged,
    /// Poison dead-lettered in time and never stored; nothing valid dead-lettered; a worker's
    /// dead letter says why.
    DeadLetters,
    /// A claim-checked event is stored with the payload fetched from the bucket.
    ClaimCheck,
    /// The backlog drains within the plan's bound after the faults heal.
    Liveness,
}

impl Property {
    pub const ALL: [Property; 9] = [
        Property::NoLoss,
        Property::NoDuplicates,
        Property::LedgerExplained,
        Property::PrimaryUntouched,
        Property::LedgerOrder,
        Property::Merged,
        Property::DeadLetters,
        Property::ClaimCheck,
        Property::Liveness,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Property::NoLoss => "no-loss",
            Property::NoDuplicates => "no-duplicates",
            Property::LedgerExplained => "ledger-explained",
            Property::PrimaryUntouched => "primary-untouched",
            Property::LedgerOrder => "ledger-order",
            Property::Merged => "merged",
            Property::DeadLetters => "dead-letters",
            Property::ClaimCheck => "claim-check",
            Property::Liveness => "liveness",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyKind {
    /// A valid event in neither the ledger nor the dead-letter topic.
    Lost,
    /// Two or more rows for one event_id.
    DuplicateRow,
    /// A row no publish explains (unknown event_id, or other account/aggregate fields).
    UnexplainedRow,
    /// A row whose payload is not the event's.
    PayloadMismatch,
    /// The primary database changed.
    PrimaryWrite,
    /// A key's rows out of publish order.
    Reordered,
    /// A key's later event stored while an earlier one is in neither the ledger nor the DLQ.
    Gap,
    /// A stored (or not dead-lettered) valid event never on `events.merged`.
    MergedMissing,
    /// A key's first copies on `events.merged` out of publish order.
    MergedReordered,
    /// A message on `events.merged` under the wrong key or with other headers than its event,
    /// or one no valid event explains.
    MergedMismatch,
    PoisonStored,
    PoisonNotDeadLettered,
    /// Dead-lettered after more delivery attempts than the subscription allows.
    DeadLetteredLate,
    ValidDeadLettered,
    /// The worker dead-lettered a message without saying why.
    DeadLetterWithoutReason,
    /// A message dead-lettered more than once (a note: Pub/Sub dead-letters best-effort).
    DuplicateDeadLetter,
    /// A dead letter that matches nothing published (a note).
    UnexplainedDeadLetter,
    /// A claim-checked event stored with something other than the fetched payload (the
    /// reference itself, typically).
    ClaimReferenceStored,
    /// The backlog drained, but later than the bound after the faults healed.
    SlowDrain,
    /// Messages were still unsettled at the end.
    NeverDrains,
}

impl AnomalyKind {
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::Lost => "lost",
            AnomalyKind::DuplicateRow => "duplicate-row",
            AnomalyKind::UnexplainedRow => "unexplained-row",
            AnomalyKind::PayloadMismatch => "payload-mismatch",
            AnomalyKind::PrimaryWrite => "primary-write",
            AnomalyKind::Reordered => "reordered",
            AnomalyKind::Gap => "gap",
            AnomalyKind::MergedMissing => "merged-missing",
            AnomalyKind::MergedReordered => "merged-reordered",
            AnomalyKind::MergedMismatch => "merged-mismatch",
            AnomalyKind::PoisonStored => "poison-stored",
            AnomalyKind::PoisonNotDeadLettered => "poison-not-dead-lettered",
            AnomalyKind::DeadLetteredLate => "dead-lettered-late",
            AnomalyKind::ValidDeadLettered => "valid-dead-lettered",
            AnomalyKind::DeadLetterWithoutReason => "dead-letter-without-reason",
            AnomalyKind::DuplicateDeadLetter => "duplicate-dead-letter",
            AnomalyKind::UnexplainedDeadLetter => "unexplained-dead-letter",
            AnomalyKind::ClaimReferenceStored => "claim-reference-stored",
            AnomalyKind::SlowDrain => "slow-drain",
            AnomalyKind::NeverDrains => "never-drains",
        }
    }

    pub fn property(self) -> Property {
        match self {
            AnomalyKind::Lost => Property::NoLoss,
            AnomalyKind::DuplicateRow => Property::NoDuplicates,
            AnomalyKind::UnexplainedRow | AnomalyKind::PayloadMismatch => Property::LedgerExplained,
            AnomalyKind::PrimaryWrite => Property::PrimaryUntouched,
            AnomalyKind::Reordered | AnomalyKind::Gap => Property::LedgerOrder,
            AnomalyKind::MergedMissing
            | AnomalyKind::MergedReordered
            | AnomalyKind::MergedMismatch => Property::Merged,
            AnomalyKind::PoisonStored
            | AnomalyKind::PoisonNotDeadLettered
            | AnomalyKind::DeadLetteredLate
            | AnomalyKind::ValidDeadLettered
            | AnomalyKind::DeadLetterWithoutReason
            | AnomalyKind::DuplicateDeadLetter
            | AnomalyKind::UnexplainedDeadLetter => Property::DeadLetters,
            AnomalyKind::ClaimReferenceStored => Property::ClaimCheck,
            AnomalyKind::SlowDrain | AnomalyKind::NeverDrains => Property::Liveness,
        }
    }

    /// Whether it fails its property (the others are notes).
    pub fn fails(self) -> bool {
        !matches!(
            self,
            AnomalyKind::DuplicateDeadLetter | AnomalyKind::UnexplainedDeadLetter
        )
    }
}

impl std::fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub event_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The delivery attempts of the messages concerned, as the service counted them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<u32>,
    /// The planned faults active while the messages concerned were in flight.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    pub explanation: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyResult {
    pub property: Property,
    pub outcome: Outcome,
    /// How many things were checked (events, rows, keys, ...: `summary` says which).
    pub checked: u64,
    /// The figures behind the outcome, in words.
    pub summary: String,
    /// Anomalies by name, notes included.
    pub counts: BTreeMap<AnomalyKind, u64>,
    pub anomalies: Vec<Anomaly>,
}

/// A planned fault's window, as the history recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultWindow {
    pub fault: u32,
    pub kind: FaultKind,
    pub target: String,
    pub start_ms: u64,
    /// `None`: never healed.
    pub end_ms: Option<u64>,
}

impl FaultWindow {
    pub fn label(&self) -> String {
        format!("{}#{}", self.kind, self.fault)
    }
}

/// What happened in one second of the run, for the picture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Second {
    /// Rows in the ledger by the end of this second.
    pub stored: u64,
    /// Deliveries on the raw subscription during it.
    pub delivered: u64,
    /// Raw messages published and not settled at its end.
    pub backlog: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub published: u64,
    pub valid_events: u64,
    pub poison: u64,
    pub producer_retries: u64,
    pub claim_checked: u64,
    pub deliveries: u64,
    pub redeliveries: u64,
    pub acks: u64,
    pub nacks: u64,
    pub expiries: u64,
    pub rows: u64,
    pub merged_messages: u64,
    pub merged_repeats: u64,
    pub dead_letters: u64,
    pub dead_letters_by_worker: u64,
    pub dead_letters_by_policy: u64,
    pub worker_starts: u64,
    /// Wall-clock ms of the timeline's second 0 (the run's first record).
    pub started_at_ms: u64,
    pub run_ms: u64,
    pub healed_at_ms: Option<u64>,
    /// From the last fault healing to the last message settled.
    pub drained_after_heal_ms: Option<u64>,
    pub faults: Vec<FaultWindow>,
    /// The run second by second, from its first record.
    pub timeline: Vec<Second>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub properties: Vec<PropertyResult>,
    pub figures: Figures,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.properties.iter().all(|p| p.outcome == Outcome::Pass)
    }

    pub fn anomalies(&self) -> impl Iterator<Item = &Anomaly> {
        self.properties.iter().flat_map(|p| p.anomalies.iter())
    }

    /// The names of the anomalies that failed a property.
    pub fn failing_kinds(&self) -> Vec<AnomalyKind> {
        let mut kinds: Vec<AnomalyKind> = self
            .anomalies()
            .map(|a| a.kind)
            .filter(|k| k.fails())
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    pub fn property(&self, property: Property) -> Option<&PropertyResult> {
        self.properties.iter().find(|p| p.property == property)
    }
}

/// Where a raw message stands, going through its records in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NeverDelivered,
    Delivered,
    Nacked,
    Expired,
    AckLost,
    Redelivering,
    Acked,
    Forwarded,
}

impl State {
    fn settled(self) -> bool {
        matches!(self, State::Acked | State::Forwarded)
    }

    fn words(self) -> &'static str {
        match self {
            State::NeverDelivered => "never delivered",
            State::Delivered => "delivered and never acked or nacked",
            State::Nacked => "nacked",
            State::Expired => "its lease expired",
            State::AckLost => "its ack was lost",
            State::Redelivering => "redelivered by the service",
            State::Acked => "acked",
            State::Forwarded => "forwarded to the dead-letter topic",
        }
    }
}

/// One message the producer published on the raw topic.
struct RawMessage<'a> {
    publish: &'a Publish,
    at_ms: u64,
    /// (seq, at_ms, attempt) of each delivery on the raw subscription.
    deliveries: Vec<(u64, u64, u32)>,
    state: State,
    last_ms: u64,
    /// When it last became settled.
    settled_ms: Option<u64>,
    forwards: Vec<(u64, u32)>,
    /// Deliveries that failed (nacked, or their lease ran out): what the dead-letter policy
    /// counts against its limit. A redelivery because an earlier message of the key failed
    /// (a revocation) raises the attempt number without failing this message.
    failures: u32,
}

/// A valid event: one or more raw messages (producer retries) with the same event_id.
struct EventInfo<'a> {
    event_id: &'a str,
    /// Its place in the publish order of valid events (first publish).
    rank: usize,
    messages: Vec<usize>,
    key: &'a str,
}

struct Index<'a> {
    history: &'a History,
    snapshot: &'a Snapshot,
    start_ms: u64,
    raw: Vec<RawMessage<'a>>,
    by_message_id: HashMap<&'a str, usize>,
    by_item: HashMap<u64, usize>,
    events: HashMap<&'a str, EventInfo<'a>>,
    /// Valid event ids in the order of their first publish.
    event_order: Vec<&'a str>,
    /// Poison messages by the plan's event id.
    poison_by_event_id: HashMap<&'a str, usize>,
    rows: HashMap<&'a str, Vec<&'a LedgerRow>>,
    windows: Vec<FaultWindow>,
    /// Seq of the worker's publish of each dead letter (by its message id).
    dead_letter_publishes: HashMap<&'a str, (u64, u64)>,
    service_faults: HashMap<&'a str, Vec<(u64, ServiceFaultKind)>>,
    /// Which raw message each delivery's ack id belongs to.
    ack_ids: HashMap<&'a str, usize>,
}

fn with_capacity<K, V>(n: usize) -> HashMap<K, V> {
    HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default())
}

impl<'a> Index<'a> {
    fn build(history: &'a History, snapshot: &'a Snapshot) -> Self {
        let header = &history.header;
        let start_ms = history
            .records
            .first()
            .map_or(snapshot.timings.started_at_ms, |r| r.at_ms)
            .min(if snapshot.timings.started_at_ms > 0 {
                snapshot.timings.started_at_ms
            } else {
                u64::MAX
            });
        // About a quarter of a history's records are raw publishes.
        let expected = history.records.len() / 4;
        let mut index = Index {
            history,
            snapshot,
            start_ms,
            raw: Vec::with_capacity(expected),
            by_message_id: with_capacity(expected),
            by_item: with_capacity(expected),
            events: with_capacity(expected),
            event_order: Vec::with_capacity(expected),
            poison_by_event_id: HashMap::default(),
            rows: with_capacity(snapshot.ledger.len()),
            windows: Vec::new(),
            dead_letter_publishes: HashMap::default(),
            service_faults: HashMap::default(),
            ack_ids: with_capacity(expected),
        };
        let mut open: HashMap<u32, usize> = HashMap::default();
        for record in &history.records {
            match &record.event {
                Event::Publish(p) if p.topic == header.raw_topic => {
                    let i = index.raw.len();
                    index.raw.push(RawMessage {
                        publish: p,
                        at_ms: record.at_ms,
                        deliveries: Vec::new(),
                        state: State::NeverDelivered,
                        last_ms: record.at_ms,
                        settled_ms: None,
                        forwards: Vec::new(),
                        failures: 0,
                    });
                    index.by_message_id.insert(p.message_id.as_str(), i);
                    if let Some(item) = p.item {
                        index.by_item.insert(item, i);
                    }
                    match (&p.poison, &p.event_id) {
                        (Some(_), Some(id)) => {
                            index.poison_by_event_id.insert(id.as_str(), i);
                        }
                        (None, Some(id)) => {
                            let rank = index.event_order.len();
                            let info =
                                index
                                    .events
                                    .entry(id.as_str())
                                    .or_insert_with(|| EventInfo {
                                        event_id: id.as_str(),
                                        rank,
                                        messages: Vec::new(),
                                        key: p.ordering_key.as_str(),
                                    });
                            if info.messages.is_empty() {
                                index.event_order.push(id.as_str());
                            }
                            info.messages.push(i);
                        }
                        _ => {}
                    }
                }
                Event::Publish(p) if p.topic == header.dead_letter_topic => {
                    index
                        .dead_letter_publishes
                        .entry(p.message_id.as_str())
                        .or_insert((record.seq, record.at_ms));
                }
                Event::Delivery(d) if d.subscription == header.raw_subscription => {
                    if let Some(&i) = index.by_message_id.get(d.message_id.as_str()) {
                        index.ack_ids.insert(d.ack_id.as_str(), i);
                        let m = &mut index.raw[i];
                        m.deliveries.push((record.seq, record.at_ms, d.attempt));
                        m.state = State::Delivered;
                        m.last_ms = record.at_ms;
                    }
                }
                Event::Ack(s) | Event::Nack(s) | Event::Expiry(s)
                    if s.subscription == header.raw_subscription =>
                {
                    let found = s
                        .message_id
                        .as_deref()
                        .and_then(|id| index.by_message_id.get(id))
                        .or_else(|| index.ack_ids.get(s.ack_id.as_str()))
                        .copied();
                    if let Some(i) = found {
                        let m = &mut index.raw[i];
                        m.last_ms = record.at_ms;
                        m.state = match &record.event {
                            Event::Ack(_) => State::Acked,
                            Event::Nack(_) => State::Nacked,
                            _ => State::Expired,
                        };
                        if matches!(m.state, State::Nacked | State::Expired) {
                            m.failures += 1;
                        }
                        if m.state.settled() {
                            m.settled_ms = Some(record.at_ms);
                        }
                    }
                }
                Event::Revoked(s) if s.subscription == header.raw_subscription => {
                    let found = s
                        .message_id
                        .as_deref()
                        .and_then(|id| index.by_message_id.get(id))
                        .or_else(|| index.ack_ids.get(s.ack_id.as_str()))
                        .copied();
                    if let Some(i) = found {
                        let m = &mut index.raw[i];
                        m.last_ms = record.at_ms;
                        m.state = State::Redelivering;
                    }
                }
                Event::DeadLetterForward(f) if f.subscription == header.raw_subscription => {
                    if let Some(&i) = index.by_message_id.get(f.message_id.as_str()) {
                        let m = &mut index.raw[i];
                        m.forwards.push((record.seq, f.attempts));
                        m.state = State::Forwarded;
                        m.last_ms = record.at_ms;
                        m.settled_ms = Some(record.at_ms);
                    }
                }
                Event::ServiceFault(f) if f.subscription == header.raw_subscription => {
                    if let Some(id) = f.message_id.as_deref() {
                        index
                            .service_faults
                            .entry(id)
                            .or_default()
                            .push((record.at_ms, f.fault));
                        if let Some(&i) = index.by_message_id.get(id) {
                            let m = &mut index.raw[i];
                            match f.fault {
                                ServiceFaultKind::LostAck => m.state = State::AckLost,
                                ServiceFaultKind::Duplicate => m.state = State::Redelivering,
                                _ => {}
                            }
                        }
                    }
                }
                Event::FaultStart(edge) => {
                    open.insert(edge.fault, index.windows.len());
                    index.windows.push(FaultWindow {
                        fault: edge.fault,
                        kind: edge.fault_kind,
                        target: edge.target.clone(),
                        start_ms: record.at_ms,
                        end_ms: None,
                    });
                }
                Event::FaultEnd(edge) => {
                    if let Some(i) = open.remove(&edge.fault) {
                        index.windows[i].end_ms = Some(record.at_ms);
                    }
                }
                _ => {}
            }
        }
        for row in &snapshot.ledger {
            index
                .rows
                .entry(row.event_id.as_str())
                .or_default()
                .push(row);
        }
        index
    }

    fn seconds(&self, at_ms: u64) -> String {
        format!(
            "{:.1} s",
            at_ms.saturating_sub(self.start_ms) as f64 / 1000.0
        )
    }

    /// The planned faults overlapping the time the given messages were in flight.
    fn faults_during(&self, messages: &[usize]) -> Vec<String> {
        let (mut from, mut to) = (u64::MAX, 0u64);
        for &i in messages {
            let m = &self.raw[i];
            from = from.min(m.at_ms);
            to = to.max(m.last_ms);
        }
        self.faults_between(from, to)
    }

    fn faults_between(&self, from: u64, to: u64) -> Vec<String> {
        self.windows
            .iter()
            .filter(|w| w.start_ms <= to && w.end_ms.is_none_or(|end| end >= from))
            .map(|w| {
                format!(
                    "{} ({}–{})",
                    w.label(),
                    self.seconds(w.start_ms),
                    w.end_ms
                        .map_or_else(|| "never healed".into(), |e| self.seconds(e))
                )
            })
            .collect()
    }

    fn attempts(&self, messages: &[usize]) -> Vec<u32> {
        messages
            .iter()
            .flat_map(|&i| self.raw[i].deliveries.iter().map(|d| d.2))
            .collect()
    }

    /// "delivered 3 times (attempts 1, 2, 3), last acked at 4.2 s"
    fn story(&self, i: usize) -> String {
        let m = &self.raw[i];
        let attempts: Vec<String> = m.deliveries.iter().map(|d| d.2.to_string()).collect();
        let mut text = match m.deliveries.len() {
            0 => format!("published at {}, never delivered", self.seconds(m.at_ms)),
            n => format!(
                "delivered {n} time{} (attempt{} {}), last {} at {}",
                if n == 1 { "" } else { "s" },
                if n == 1 { "" } else { "s" },
                attempts.join(", "),
                m.state.words(),
                self.seconds(m.last_ms)
            ),
        };
        if let Some(faults) = self.service_faults.get(m.publish.message_id.as_str()) {
            let names: Vec<String> = faults
                .iter()
                .map(|(at, f)| format!("{f:?} at {}", self.seconds(*at)))
                .collect();
            text.push_str(&format!("; Pub/Sub faults on it: {}", names.join(", ")));
        }
        text
    }

    fn describe(&self, i: usize) -> String {
        let p = self.raw[i].publish;
        let mut parts = Vec::new();
        if let Some(item) = p.item {
            parts.push(format!("item {item}"));
        }
        parts.push(format!("message {}", p.message_id));
        if let Some(r) = p.retry_of {
            parts.push(format!("a producer retry of item {r}"));
        }
        if p.claim_checked {
            parts.push("claim-checked".into());
        }
        parts.join(", ")
    }

    fn anomaly(
        &self,
        kind: AnomalyKind,
        event_ids: Vec<String>,
        key: Option<&str>,
        messages: &[usize],
        explanation: String,
    ) -> Anomaly {
        let faults = self.faults_during(messages);
        let explanation = if faults.is_empty() {
            explanation
        } else {
            format!("{explanation}; faults active then: {}", faults.join(", "))
        };
        Anomaly {
            kind,
            event_ids,
            key: key.filter(|k| !k.is_empty()).map(str::to_string),
            attempts: self.attempts(messages),
            faults: self
                .windows
                .iter()
                .filter(|w| {
                    let (from, to) = messages.iter().fold((u64::MAX, 0), |(f, t), &i| {
                        (f.min(self.raw[i].at_ms), t.max(self.raw[i].last_ms))
                    });
                    w.start_ms <= to && w.end_ms.is_none_or(|e| e >= from)
                })
                .map(FaultWindow::label)
                .collect(),
            explanation,
        }
    }

    /// The raw message a dead letter came from, by the producer's item attribute, the
    /// reference worker's source message id, or the event id.
    fn source_of(&self, m: &TopicMessage) -> Option<usize> {
        if let Some(i) = m
            .attributes
            .get(ITEM_ATTRIBUTE)
            .and_then(|v| v.parse::<u64>().ok())
            .and_then(|n| self.by_item.get(&n))
        {
            return Some(*i);
        }
        if let Some(i) = m
            .attributes
            .get(DEAD_LETTER_SOURCE_MESSAGE_ID)
            .and_then(|id| self.by_message_id.get(id.as_str()))
        {
            return Some(*i);
        }
        let id = m.attributes.get("event_id")?.to_lowercase();
        let id = id
            .trim_matches(|c| c == '{' || c == '}')
            .trim_start_matches("urn:uuid:");
        self.events
            .get(id)
            .and_then(|e| e.messages.first().copied())
            .or_else(|| self.poison_by_event_id.get(id).copied())
    }
}

/// The multiply-rotate hash of rustc's FxHasher: the checker hashes hundreds of thousands of
/// short ids it read itself, where SipHash's defence against chosen keys buys nothing and
/// cost a third of the check's time.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;
type HashSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

/// The verdict on a run. Pure: the same files give the same verdict, offline.
pub fn check(history: &History, snapshot: &Snapshot) -> Verdict {
    let index = Index::build(history, snapshot);
    let mut anomalies: Vec<Anomaly> = Vec::new();
    let mut summaries: BTreeMap<Property, (u64, String)> = BTreeMap::new();
    let max_attempts = history.header.max_delivery_attempts;

    // Dead letters first: the loss and order checks need to know what was dead-lettered.
    let mut dead_lettered: HashMap<usize, Vec<&TopicMessage>> = HashMap::default();
    let (mut by_worker, mut by_policy) = (0u64, 0u64);
    for m in &snapshot.dead_letters {
        let from_policy = m.attributes.contains_key(SERVICE_DELIVERY_COUNT);
        if from_policy {
            by_policy += 1;
        } else {
            by_worker += 1;
        }
        match index.source_of(m) {
            Some(i) => dead_lettered.entry(i).or_default().push(m),
            None => anomalies.push(Anomaly {
                kind: AnomalyKind::UnexplainedDeadLetter,
                event_ids: m.attributes.get("event_id").cloned().into_iter().collect(),
                key: None,
                attempts: vec![],
                faults: vec![],
                explanation: format!(
                    "dead letter {} matches nothing the producer published (no {ITEM_ATTRIBUTE}, {DEAD_LETTER_SOURCE_MESSAGE_ID} or known event_id among its attributes)",
                    m.message_id
                ),
            }),
        }
    }
    // An event counts as dead-lettered when any of its messages was.
    let event_dead_lettered =
        |e: &EventInfo| e.messages.iter().any(|i| dead_lettered.contains_key(i));

    // no-loss
    let (mut stored, mut dead) = (0u64, 0u64);
    for id in &index.event_order {
        let e = &index.events[id];
        if index.rows.contains_key(id) {
            stored += 1;
        } else if event_dead_lettered(e) {
            dead += 1;
        } else {
            anomalies.push(index.anomaly(
                AnomalyKind::Lost,
                vec![id.to_string()],
                Some(e.key),
                &e.messages,
                format!(
                    "event {id} (key {}, {}) is in neither the ledger nor events.dlq: {}",
                    e.key,
                    index.describe(e.messages[0]),
                    e.messages.iter().map(|&i| index.story(i)).collect::<Vec<_>>().join("; ")
                ),
            ));
        }
    }
    let valid = index.event_order.len() as u64;
    summaries.insert(
        Property::NoLoss,
        (
            valid,
            format!(
                "{valid} valid events: {stored} stored, {dead} dead-lettered, {} lost",
                valid - stored - dead
            ),
        ),
    );

    // no-duplicates, ledger-explained, claim-check, poison-stored
    let mut claim_checked_stored = 0u64;
    for row in &snapshot.ledger {
        let id = row.event_id.as_str();
        if let Some(e) = index.events.get(id) {
            let p = index.raw[e.messages[0]].publish;
            let mut differs = Vec::new();
            if let Some(a) = &p.aggregate {
                for (name, want, got) in [
                    ("account_id", &a.account_id, &row.account_id),
                    ("aggregate_type", &a.aggregate_type, &row.aggregate_type),
                    ("aggregate_id", &a.aggregate_id, &row.aggregate_id),
                ] {
                    if want != got {
                        differs.push(format!("{name} {got:?} (published {want:?})"));
                    }
                }
            }
            if !differs.is_empty() {
                anomalies.push(index.anomaly(
                    AnomalyKind::UnexplainedRow,
                    vec![id.to_string()],
                    Some(e.key),
                    &e.messages,
                    format!(
                        "row {} for event {id} (key {}) holds {}",
                        row.id,
                        e.key,
                        differs.join(", ")
                    ),
                ));
            }
            if let Some(want) = &p.payload_sha256
                && *want != row.payload_sha256
            {
                let kind = if p.claim_checked {
                    AnomalyKind::ClaimReferenceStored
                } else {
                    AnomalyKind::PayloadMismatch
                };
                let what = if p.claim_checked {
                    "was claim-checked: the row should hold the payload fetched from the bucket"
                } else {
                    "was published with another payload"
                };
                anomalies.push(index.anomaly(
                    kind,
                    vec![id.to_string()],
                    Some(e.key),
                    &e.messages,
                    format!(
                        "row {} for event {id} (key {}) holds {} bytes with digest {}, but the event {what} ({} bytes, digest {want})",
                        row.id,
                        e.key,
                        row.payload_bytes,
                        short(&row.payload_sha256),
                        p.payload_bytes.map_or_else(|| "?".into(), |b| b.to_string()),
                    ),
                ));
            }
            if p.claim_checked {
                claim_checked_stored += 1;
            }
        } else if let Some(&i) = index.poison_by_event_id.get(id) {
            let p = index.raw[i].publish;
            let case = p.poison.as_ref().map_or("", |c| c.case.as_str());
            let why = p.poison.as_ref().map_or("", |c| c.why.as_str());
            anomalies.push(index.anomaly(
                AnomalyKind::PoisonStored,
                vec![id.to_string()],
                Some(&p.ordering_key),
                &[i],
                format!(
                    "row {} stores poison {} (case {case}: {why}); {}",
                    row.id,
                    index.describe(i),
                    index.story(i)
                ),
            ));
        } else {
            anomalies.push(Anomaly {
                kind: AnomalyKind::UnexplainedRow,
                event_ids: vec![id.to_string()],
                key: None,
                attempts: vec![],
                faults: vec![],
                explanation: format!(
                    "row {} (event {id}, {}/{}/{}) matches no published event",
                    row.id, row.account_id, row.aggregate_type, row.aggregate_id
                ),
            });
        }
    }
    let mut duplicate_ids = 0u64;
    for id in &index.event_order {
        if let Some(rows) = index.rows.get(id)
            && rows.len() > 1
        {
            duplicate_ids += 1;
            let e = &index.events[id];
            let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
            anomalies.push(index.anomaly(
                AnomalyKind::DuplicateRow,
                vec![id.to_string()],
                Some(e.key),
                &e.messages,
                format!(
                        "event {id} (key {}) has {} rows (ids {}): {}",
                        e.key,
                        rows.len(),
                        ids.join(", "),
                        e.messages
                            .iter()
                            .map(|&i| format!("{}: {}", index.describe(i), index.story(i)))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
            ));
        }
    }
    for (id, rows) in &index.rows {
        if rows.len() > 1 && !index.events.contains_key(id) {
            duplicate_ids += 1;
            anomalies.push(Anomaly {
                kind: AnomalyKind::DuplicateRow,
                event_ids: vec![id.to_string()],
                key: None,
                attempts: vec![],
                faults: vec![],
                explanation: format!("event {id} has {} rows", rows.len()),
            });
        }
    }
    let rows = snapshot.ledger.len() as u64;
    summaries.insert(
        Property::NoDuplicates,
        (
            rows,
            format!(
                "{rows} rows, {} event ids, {duplicate_ids} with more than one row",
                index.rows.len()
            ),
        ),
    );
    summaries.insert(
        Property::LedgerExplained,
        (
            rows,
            format!("{rows} rows against {valid} published events"),
        ),
    );
    let claim_checked = index
        .events
        .values()
        .filter(|e| index.raw[e.messages[0]].publish.claim_checked)
        .count() as u64;
    summaries.insert(
        Property::ClaimCheck,
        (
            claim_checked_stored,
            format!("{claim_checked} claim-checked events, {claim_checked_stored} stored"),
        ),
    );

    // primary-untouched
    let primary = &snapshot.primary;
    if primary.before != primary.after {
        let mut changes = Vec::new();
        if primary.before.checksum != primary.after.checksum {
            changes.push(format!(
                "checksum {} → {}",
                primary.before.checksum, primary.after.checksum
            ));
        }
        let tables: HashSet<&String> = primary
            .before
            .rows
            .keys()
            .chain(primary.after.rows.keys())
            .collect();
        let mut tables: Vec<&String> = tables.into_iter().collect();
        tables.sort();
        for t in tables {
            let (b, a) = (primary.before.rows.get(t), primary.after.rows.get(t));
            if b != a {
                let show = |n: Option<&u64>| {
                    n.map_or_else(|| "absent".to_string(), |n| format!("{n} rows"))
                };
                changes.push(format!("table {t}: {} → {}", show(b), show(a)));
            }
        }
        let faults = index.faults_between(
            index.start_ms,
            snapshot.timings.ended_at_ms.max(index.start_ms),
        );
        anomalies.push(Anomaly {
            kind: AnomalyKind::PrimaryWrite,
            event_ids: vec![],
            key: None,
            attempts: vec![],
            faults: index.windows.iter().map(FaultWindow::label).collect(),
            explanation: format!(
                "the primary database changed during the run: {}{}",
                changes.join("; "),
                if faults.is_empty() {
                    String::new()
                } else {
                    format!("; faults during the run: {}", faults.join(", "))
                }
            ),
        });
    }
    summaries.insert(
        Property::PrimaryUntouched,
        (
            primary.after.rows.len() as u64,
            format!(
                "{} tables, checksum {}",
                primary.after.rows.len(),
                if primary.before == primary.after {
                    "unchanged"
                } else {
                    "changed"
                }
            ),
        ),
    );

    // ledger-order: per key, the rows (by id) against the publish order.
    let mut by_key: HashMap<&str, Vec<(u64, usize, &str)>> = HashMap::default();
    for row in &snapshot.ledger {
        if let Some(e) = index.events.get(row.event_id.as_str()) {
            by_key
                .entry(e.key)
                .or_default()
                .push((row.id, e.rank, e.event_id));
        }
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort();
    for key in &keys {
        let rows = by_key.get_mut(key).map(std::mem::take).unwrap_or_default();
        let mut rows = rows;
        rows.sort();
        // Duplicate rows are the other property's; order is judged on each event's first row.
        let mut seen = HashSet::default();
        rows.retain(|(_, rank, _)| seen.insert(*rank));
        let inversions: Vec<(usize, usize)> = (1..rows.len())
            .filter(|&i| rows[i].1 < rows[i - 1].1)
            .map(|i| (i - 1, i))
            .collect();
        if let Some(&(a, b)) = inversions.first() {
            let (ea, eb) = (&index.events[rows[a].2], &index.events[rows[b].2]);
            let mut messages = ea.messages.clone();
            messages.extend(&eb.messages);
            anomalies.push(index.anomaly(
                AnomalyKind::Reordered,
                vec![rows[a].2.to_string(), rows[b].2.to_string()],
                Some(key),
                &messages,
                format!(
                    "key {key}: {} row(s) out of publish order; first, row {} holds event {} (published as {}) before row {} with event {} (published earlier, as {}); the earlier one was {}",
                    inversions.len(),
                    rows[a].0,
                    rows[a].2,
                    index.describe(ea.messages[0]),
                    rows[b].0,
                    rows[b].2,
                    index.describe(eb.messages[0]),
                    index.story(eb.messages[0]),
                ),
            ));
        }
    }
    // Gaps: a valid event neither stored nor dead-lettered, while a later one of its key is.
    let mut last_stored_rank: HashMap<&str, usize> = HashMap::default();
    for id in &index.event_order {
        if index.rows.contains_key(id) {
            let e = &index.events[id];
            last_stored_rank.insert(e.key, e.rank);
        }
    }
    for id in &index.event_order {
        let e = &index.events[id];
        if !index.rows.contains_key(id)
            && !event_dead_lettered(e)
            && last_stored_rank.get(e.key).is_some_and(|&r| r > e.rank)
        {
            anomalies.push(index.anomaly(
                AnomalyKind::Gap,
                vec![id.to_string()],
                Some(e.key),
                &e.messages,
                format!(
                    "key {}: event {id} ({}) is missing from the ledger (and not dead-lettered) while later events of its key are stored; it was {}",
                    e.key,
                    index.describe(e.messages[0]),
                    index.story(e.messages[0])
                ),
            ));
        }
    }
    let key_count = index
        .events
        .values()
        .map(|e| e.key)
        .collect::<HashSet<_>>()
        .len() as u64;
    summaries.insert(
        Property::LedgerOrder,
        (key_count, format!("{key_count} keys")),
    );

    // merged
    let mut first_copy: HashMap<&str, usize> = HashMap::default();
    let mut repeats = 0u64;
    let mut first_by_key: HashMap<&str, Vec<(usize, &str)>> = HashMap::default();
    for (position, m) in snapshot.merged.iter().enumerate() {
        let Some(id) = m.attributes.get("event_id") else {
            anomalies.push(Anomaly {
                kind: AnomalyKind::MergedMismatch,
                event_ids: vec![],
                key: Some(m.ordering_key.clone()).filter(|k| !k.is_empty()),
                attempts: vec![],
                faults: vec![],
                explanation: format!(
                    "message {} on events.merged has no event_id attribute",
                    m.message_id
                ),
            });
            continue;
        };
        let Some(e) = index.events.get(id.as_str()) else {
            let what = if index.poison_by_event_id.contains_key(id.as_str()) {
                "poison"
            } else {
                "no published event"
            };
            anomalies.push(Anomaly {
                kind: AnomalyKind::MergedMismatch,
                event_ids: vec![id.clone()],
                key: Some(m.ordering_key.clone()).filter(|k| !k.is_empty()),
                attempts: vec![],
                faults: vec![],
                explanation: format!(
                    "message {} on events.merged carries event {id}, which is {what}",
                    m.message_id
                ),
            });
            continue;
        };
        if first_copy.contains_key(id.as_str()) {
            repeats += 1;
            continue;
        }
        first_copy.insert(e.event_id, position);
        first_by_key
            .entry(e.key)
            .or_default()
            .push((e.rank, e.event_id));
        let p = index.raw[e.messages[0]].publish;
        let mut differs = Vec::new();
        if m.ordering_key != e.key {
            differs.push(format!(
                "ordering key {:?} (the event's is {:?})",
                m.ordering_key, e.key
            ));
        }
        if let Some(a) = &p.aggregate {
            for (name, want) in [
                ("account_id", &a.account_id),
                ("aggregate_type", &a.aggregate_type),
                ("aggregate_id", &a.aggregate_id),
            ] {
                if m.attributes.get(name) != Some(want) {
                    differs.push(format!(
                        "{name} {:?} (the event's is {want:?})",
                        m.attributes.get(name)
                    ));
                }
            }
        }
        if !differs.is_empty() {
            anomalies.push(index.anomaly(
                AnomalyKind::MergedMismatch,
                vec![id.clone()],
                Some(e.key),
                &e.messages,
                format!(
                    "message {} on events.merged for event {id} has {}",
                    m.message_id,
                    differs.join(", ")
                ),
            ));
        }
    }
    let mut expected_on_merged = 0u64;
    for id in &index.event_order {
        let e = &index.events[id];
        let expected = index.rows.contains_key(id) || !event_dead_lettered(e);
        if !expected {
            continue;
        }
        expected_on_merged += 1;
        if !first_copy.contains_key(id) {
            let state = if index.rows.contains_key(id) {
                "stored"
            } else {
                "not stored either"
            };
            anomalies.push(index.anomaly(
                AnomalyKind::MergedMissing,
                vec![id.to_string()],
                Some(e.key),
                &e.messages,
                format!(
                    "event {id} (key {}, {}) is {state} but never reached events.merged; it was {}",
                    e.key,
                    index.describe(e.messages[0]),
                    index.story(e.messages[0])
                ),
            ));
        }
    }
    let mut merged_keys: Vec<&str> = first_by_key.keys().copied().collect();
    merged_keys.sort();
    for key in merged_keys {
        let firsts = &first_by_key[key];
        let inversions: Vec<usize> = (1..firsts.len())
            .filter(|&i| firsts[i].0 < firsts[i - 1].0)
            .collect();
        if let Some(&b) = inversions.first() {
            let (ea, eb) = (&index.events[firsts[b - 1].1], &index.events[firsts[b].1]);
            let mut messages = ea.messages.clone();
            messages.extend(&eb.messages);
            anomalies.push(index.anomaly(
                AnomalyKind::MergedReordered,
                vec![ea.event_id.to_string(), eb.event_id.to_string()],
                Some(key),
                &messages,
                format!(
                    "key {key}: {} first copies on events.merged out of publish order; first, event {} ({}) arrived before event {} ({}, published earlier)",
                    inversions.len(),
                    ea.event_id,
                    index.describe(ea.messages[0]),
                    eb.event_id,
                    index.describe(eb.messages[0]),
                ),
            ));
        }
    }
    summaries.insert(
        Property::Merged,
        (expected_on_merged, format!("{expected_on_merged} events expected, {} arrived, {repeats} repeats (at-least-once)", first_copy.len())),
    );

    // dead-letters
    let mut poison_total = 0u64;
    let mut poison_dead_lettered = 0u64;
    for (i, m) in index.raw.iter().enumerate() {
        let Some(poison) = &m.publish.poison else {
            continue;
        };
        poison_total += 1;
        let event_id: Vec<String> = m.publish.event_id.clone().into_iter().collect();
        let Some(letters) = dead_lettered.get(&i) else {
            anomalies.push(index.anomaly(
                AnomalyKind::PoisonNotDeadLettered,
                event_id,
                Some(&m.publish.ordering_key),
                &[i],
                format!(
                    "poison {} (case {}: {}) never reached events.dlq; it was {}",
                    index.describe(i),
                    poison.case,
                    poison.why,
                    index.story(i)
                ),
            ));
            continue;
        };
        poison_dead_lettered += 1;
        if letters.len() > 1 {
            anomalies.push(index.anomaly(
                AnomalyKind::DuplicateDeadLetter,
                event_id.clone(),
                Some(&m.publish.ordering_key),
                &[i],
                format!("poison {} (case {}) is on events.dlq {} times (Pub/Sub dead-letters best-effort; a note)", index.describe(i), poison.case, letters.len()),
            ));
        }
    }
    for (&i, letters) in &dead_lettered {
        let m = &index.raw[i];
        let letter = letters[0];
        let from_policy = letter.attributes.contains_key(SERVICE_DELIVERY_COUNT);
        // How many attempts the service had made when the message went: its own count on a
        // forward, else the highest attempt delivered before the worker's dead-letter publish.
        let attempts_then = if from_policy {
            let counted = letter
                .attributes
                .get(SERVICE_DELIVERY_COUNT)
                .and_then(|c| c.parse::<u32>().ok())
                .unwrap_or(0);
            let forwarded = m.forwards.first().map_or(0, |f| f.1);
            let delivered = m.forwards.first().map_or(0, |&(seq, _)| {
                m.deliveries
                    .iter()
                    .filter(|d| d.0 < seq)
                    .map(|d| d.2)
                    .max()
                    .unwrap_or(0)
            });
            counted.max(forwarded).max(delivered)
        } else {
            let when = index
                .dead_letter_publishes
                .get(letter.message_id.as_str())
                .map(|&(seq, _)| seq);
            match when {
                Some(seq) => m
                    .deliveries
                    .iter()
                    .filter(|d| d.0 < seq)
                    .map(|d| d.2)
                    .max()
                    .unwrap_or(0),
                None => letter.received_at_ms.map_or(0, |at| {
                    m.deliveries
                        .iter()
                        .filter(|d| d.1 <= at)
                        .map(|d| d.2)
                        .max()
                        .unwrap_or(0)
                }),
            }
        };
        let event_id: Vec<String> = m.publish.event_id.clone().into_iter().collect();
        let who = if from_policy {
            "the subscription's dead-letter policy"
        } else {
            "the worker"
        };
        // The policy forwards on a failed delivery once the attempts reach its limit; on an
        // ordered subscription the attempts also count redeliveries behind an earlier failure
        // of the key, so what it must not exceed is the failed deliveries.
        let late = if from_policy && m.failures > 0 {
            m.failures > max_attempts
        } else {
            attempts_then > max_attempts
        };
        if late {
            let failed = if from_policy {
                format!(" ({} of them failed)", m.failures)
            } else {
                String::new()
            };
            anomalies.push(index.anomaly(
                AnomalyKind::DeadLetteredLate,
                event_id.clone(),
                Some(&m.publish.ordering_key),
                &[i],
                format!("{} was dead-lettered by {who} after {attempts_then} delivery attempts{failed}; the subscription allows {max_attempts}; it was {}", index.describe(i), index.story(i)),
            ));
        }
        if m.publish.poison.is_none() {
            let reason = letter
                .attributes
                .get(DEAD_LETTER_REASON)
                .map_or_else(|| "no reason".to_string(), |r| format!("reason {r:?}"));
            let event = m
                .publish
                .event_id
                .as_deref()
                .and_then(|id| index.events.get(id));
            let messages = event.map_or_else(|| vec![i], |e| e.messages.clone());
            anomalies.push(index.anomaly(
                AnomalyKind::ValidDeadLettered,
                event_id.clone(),
                Some(&m.publish.ordering_key),
                &messages,
                format!("valid event {} ({}) was dead-lettered by {who} ({reason}) after {attempts_then} attempt(s); it was {}", m.publish.event_id.as_deref().unwrap_or("?"), index.describe(i), index.story(i)),
            ));
        }
        for l in letters {
            let by_policy = l.attributes.contains_key(SERVICE_DELIVERY_COUNT);
            if !by_policy
                && l.attributes
                    .get(DEAD_LETTER_REASON)
                    .is_none_or(|r| r.trim().is_empty())
            {
                anomalies.push(index.anomaly(
                    AnomalyKind::DeadLetterWithoutReason,
                    event_id.clone(),
                    Some(&m.publish.ordering_key),
                    &[i],
                    format!(
                        "dead letter {} of {} was published by the worker without a {DEAD_LETTER_REASON} attribute (nor {SERVICE_DELIVERY_COUNT}, which the subscription's own forward carries)",
                        l.message_id,
                        index.describe(i)
                    ),
                ));
            }
        }
    }
    summaries.insert(
        Property::DeadLetters,
        (
            poison_total + snapshot.dead_letters.len() as u64,
            format!(
                "{poison_total} poison, {poison_dead_lettered} dead-lettered; {} dead letters ({by_worker} by the worker, {by_policy} by the subscription's policy)",
                snapshot.dead_letters.len()
            ),
        ),
    );

    // liveness
    // The clock starts when the last fault healed and the producer was done: a backlog cannot
    // drain before its last message is published.
    let last_publish = index
        .raw
        .iter()
        .map(|m| m.at_ms)
        .max()
        .unwrap_or(index.start_ms);
    let healed_at = snapshot
        .timings
        .faults_healed_at_ms
        .or_else(|| index.windows.iter().filter_map(|w| w.end_ms).max())
        .unwrap_or(index.start_ms)
        .max(last_publish);
    let bound = history.header.drain_bound_ms;
    let unsettled: Vec<usize> = (0..index.raw.len())
        .filter(|&i| !index.raw[i].state.settled())
        .collect();
    let drained_at = index.raw.iter().filter_map(|m| m.settled_ms).max();
    let mut drained_after = None;
    if !unsettled.is_empty() {
        let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &i in &unsettled {
            by_key
                .entry(index.raw[i].publish.ordering_key.as_str())
                .or_default()
                .push(i);
        }
        for (key, messages) in by_key {
            let first = messages[0];
            let ids: Vec<String> = messages
                .iter()
                .filter_map(|&i| index.raw[i].publish.event_id.clone())
                .collect();
            anomalies.push(index.anomaly(
                AnomalyKind::NeverDrains,
                ids,
                Some(key),
                &messages,
                format!(
                    "key {}: {} message(s) still unsettled at the end ({} after the faults healed, bound {}); the first, {}, was {}",
                    if key.is_empty() { "(none)" } else { key },
                    messages.len(),
                    index.seconds(snapshot.timings.ended_at_ms.max(healed_at) - healed_at + index.start_ms),
                    index.seconds(bound + index.start_ms),
                    index.describe(first),
                    index.story(first)
                ),
            ));
        }
    } else if let Some(backlog) = snapshot.timings.raw_backlog_at_end.filter(|&b| b > 0) {
        anomalies.push(Anomaly {
            kind: AnomalyKind::NeverDrains,
            event_ids: vec![],
            key: None,
            attempts: vec![],
            faults: vec![],
            explanation: format!("the service counts {backlog} unacknowledged message(s) on {} at the end, although every recorded delivery was settled", history.header.raw_subscription),
        });
    } else if let Some(drained) = drained_at {
        let after = drained.saturating_sub(healed_at);
        drained_after = Some(after);
        if after > bound {
            let last = (0..index.raw.len())
                .max_by_key(|&i| index.raw[i].settled_ms)
                .unwrap_or(0);
            anomalies.push(index.anomaly(
                AnomalyKind::SlowDrain,
                index.raw[last].publish.event_id.clone().into_iter().collect(),
                Some(&index.raw[last].publish.ordering_key),
                &[last],
                format!(
                    "the backlog drained {:.1} s after the last fault healed, over the bound of {:.1} s; the last message settled was {}: {}",
                    after as f64 / 1000.0,
                    bound as f64 / 1000.0,
                    index.describe(last),
                    index.story(last)
                ),
            ));
        }
    }
    summaries.insert(
        Property::Liveness,
        (
            index.raw.len() as u64,
            match (unsettled.len(), drained_after) {
                (0, Some(after)) => format!("{} raw messages settled, drained {:.1} s after the faults healed (bound {:.1} s)", index.raw.len(), after as f64 / 1000.0, bound as f64 / 1000.0),
                (0, None) => format!("{} raw messages settled", index.raw.len()),
                (n, _) => format!("{n} of {} raw messages never settled", index.raw.len()),
            },
        ),
    );

    let figures = figures(
        &index,
        repeats,
        by_worker,
        by_policy,
        healed_at,
        drained_after,
    );
    let mut properties = Vec::new();
    for property in Property::ALL {
        let mine: Vec<Anomaly> = anomalies
            .iter()
            .filter(|a| a.kind.property() == property)
            .cloned()
            .collect();
        let mut counts = BTreeMap::new();
        for a in &mine {
            *counts.entry(a.kind).or_insert(0) += 1;
        }
        let (checked, summary) = summaries.remove(&property).unwrap_or_default();
        properties.push(PropertyResult {
            property,
            outcome: if mine.iter().any(|a| a.kind.fails()) {
                Outcome::Fail
            } else {
                Outcome::Pass
            },
            checked,
            summary,
            counts,
            anomalies: mine,
        });
    }
    Verdict {
        properties,
        figures,
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

fn figures(
    index: &Index,
    repeats: u64,
    by_worker: u64,
    by_policy: u64,
    healed_at: u64,
    drained_after: Option<u64>,
) -> Figures {
    let history = index.history;
    let snapshot = index.snapshot;
    let header = &history.header;
    let mut f = Figures {
        published: index.raw.len() as u64,
        valid_events: index.events.len() as u64,
        poison: index
            .raw
            .iter()
            .filter(|m| m.publish.poison.is_some())
            .count() as u64,
        producer_retries: index
            .raw
            .iter()
            .filter(|m| m.publish.retry_of.is_some())
            .count() as u64,
        claim_checked: index
            .events
            .values()
            .filter(|e| index.raw[e.messages[0]].publish.claim_checked)
            .count() as u64,
        rows: snapshot.ledger.len() as u64,
        merged_messages: snapshot.merged.len() as u64,
        merged_repeats: repeats,
        dead_letters: snapshot.dead_letters.len() as u64,
        dead_letters_by_worker: by_worker,
        dead_letters_by_policy: by_policy,
        healed_at_ms: (!index.windows.is_empty()).then_some(healed_at),
        drained_after_heal_ms: drained_after,
        faults: index.windows.clone(),
        started_at_ms: index.start_ms,
        ..Figures::default()
    };
    let end_ms = history
        .records
        .last()
        .map_or(index.start_ms, |r| r.at_ms)
        .max(snapshot.timings.ended_at_ms);
    f.run_ms = end_ms.saturating_sub(index.start_ms);
    let seconds = (f.run_ms / 1000 + 1) as usize;
    let mut timeline = vec![Second::default(); seconds.min(24 * 3600)];
    let last_slot = timeline.len().saturating_sub(1);
    let slot = |at: u64| ((at.saturating_sub(index.start_ms) / 1000) as usize).min(last_slot);
    // The backlog follows each raw message's settled/unsettled transitions.
    let mut backlog_delta = vec![0i64; timeline.len() + 1];
    let mut settled: Vec<bool> = vec![false; index.raw.len()];
    let mut stored_samples: Vec<(usize, u64)> = Vec::new();
    let mut merged_firsts: HashSet<&str> = HashSet::default();
    let mut merged_first_at: Vec<usize> = Vec::new();
    for record in &history.records {
        let s = slot(record.at_ms);
        match &record.event {
            Event::Publish(p) if p.topic == header.raw_topic => backlog_delta[s] += 1,
            Event::Publish(p) if p.topic == header.merged_topic => {
                if let Some(id) = p
                    .event_id
                    .as_deref()
                    .or_else(|| p.attributes.get("event_id").map(String::as_str))
                    && merged_firsts.insert(id)
                {
                    merged_first_at.push(s);
                }
            }
            Event::Delivery(d) if d.subscription == header.raw_subscription => {
                f.deliveries += 1;
                if d.attempt > 1 {
                    f.redeliveries += 1;
                }
                timeline[s].delivered += 1;
                if let Some(&i) = index.by_message_id.get(d.message_id.as_str())
                    && settled[i]
                {
                    settled[i] = false;
                    backlog_delta[s] += 1;
                }
            }
            Event::Ack(x) | Event::Nack(x) | Event::Expiry(x)
                if x.subscription == header.raw_subscription =>
            {
                match &record.event {
                    Event::Ack(_) => f.acks += 1,
                    Event::Nack(_) => f.nacks += 1,
                    _ => f.expiries += 1,
                }
                let found = x
                    .message_id
                    .as_deref()
                    .and_then(|id| index.by_message_id.get(id))
                    .or_else(|| index.ack_ids.get(x.ack_id.as_str()))
                    .copied();
                if let (Event::Ack(_), Some(i)) = (&record.event, found)
                    && !settled[i]
                {
                    settled[i] = true;
                    backlog_delta[s] -= 1;
                }
            }
            Event::Revoked(x) if x.subscription == header.raw_subscription => {
                let found = x
                    .message_id
                    .as_deref()
                    .and_then(|id| index.by_message_id.get(id))
                    .or_else(|| index.ack_ids.get(x.ack_id.as_str()))
                    .copied();
                if let Some(i) = found
                    && settled[i]
                {
                    settled[i] = false;
                    backlog_delta[s] += 1;
                }
            }
            Event::DeadLetterForward(d) if d.subscription == header.raw_subscription => {
                if let Some(&i) = index.by_message_id.get(d.message_id.as_str())
                    && !settled[i]
                {
                    settled[i] = true;
                    backlog_delta[s] -= 1;
                }
            }
            Event::WorkerStart(_) => f.worker_starts += 1,
            Event::Progress(p) => stored_samples.push((s, p.stored)),
            _ => {}
        }
    }
    let mut backlog = 0i64;
    for (i, second) in timeline.iter_mut().enumerate() {
        backlog += backlog_delta[i];
        second.backlog = backlog.max(0) as u64;
    }
    if stored_samples.is_empty() && merged_first_at.is_empty() {
        // Nor the worker's publishes: when the first copies reached the merged reader.
        let mut seen: HashSet<&str> = HashSet::default();
        for m in &snapshot.merged {
            if let (Some(id), Some(at)) = (m.attributes.get("event_id"), m.received_at_ms)
                && seen.insert(id.as_str())
            {
                merged_first_at.push(slot(at));
            }
        }
        merged_first_at.sort_unstable();
    }
    if stored_samples.is_empty() {
        // No ledger samples: the first copies on merged stand in for the stores.
        stored_samples = merged_first_at.into_iter().zip(1..).collect();
    }
    let mut samples = stored_samples.into_iter().peekable();
    let mut stored = 0;
    for (i, second) in timeline.iter_mut().enumerate() {
        while let Some((_, n)) = samples.next_if(|(s, _)| *s <= i) {
            stored = stored.max(n);
        }
        second.stored = stored;
    }
    f.timeline = timeline;
    f
}

#[cfg(test)]
#[path = "checker_tests.rs"]
mod tests;
