//! A correct worker and Pub/Sub, simulated: the history and snapshot a run of a plan would
//! record if everything kept its promises, and the one-line changes that turn it into a run
//! with one named anomaly. The checker's property tests and its benchmark stand on this; it
//! also shows, as data, what a passing run looks like.
//!
//! The simulation keeps each key's messages in order, retries a valid event after a transient
//! failure (never past the second-to-last attempt), lets the service redeliver an acked
//! message now and then (the worker answers "already stored" and may publish it to merged
//! again), and dead-letters poison either itself, with a reason, or by nacking it until the
//! subscription's policy forwards it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::checker::AnomalyKind;
use crate::history::{
    DatabaseState, DeadLetterForward, Delivery, Event, FaultEdge, Header, History, LedgerRow,
    Primary, Progress, Publish, ReadyVia, ServiceFault, ServiceFaultKind, Settle, Snapshot,
    Timings, TopicMessage, Transport, WorkerExit, WorkerReady, WorkerStart,
};
use crate::plan::{CorpusCase, FaultKind, Fixtures, Hold, Plan, Rng, Trigger};
use crate::{DEAD_LETTER_REASON, ITEM_ATTRIBUTE, SERVICE_DELIVERY_COUNT};

pub const RAW_TOPIC: &str = "events.raw";
pub const RAW_SUBSCRIPTION: &str = "events.raw.worker";
pub const MERGED_TOPIC: &str = "events.merged";
pub const DEAD_LETTER_TOPIC: &str = "events.dlq";

#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub seed: u64,
    /// Share of deliveries of a valid event that fail transiently (nacked).
    pub nack_permille: u16,
    /// Share of acked messages the service delivers once more.
    pub duplicate_permille: u16,
    /// Share of such redeliveries the worker publishes to merged again.
    pub merged_repeat_permille: u16,
    /// Poison is nacked until the subscription's policy forwards it, instead of the worker
    /// dead-lettering it with a reason.
    pub poison_by_policy: bool,
    pub max_delivery_attempts: u32,
    /// Record the plan's faults as windows (and a worker restart for each kill).
    pub faults: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            nack_permille: 20,
            duplicate_permille: 10,
            merged_repeat_permille: 500,
            poison_by_policy: false,
            max_delivery_attempts: 5,
            faults: true,
        }
    }
}

/// Record types and a small corpus, enough to generate plans without the repository.
pub fn fixtures() -> Fixtures {
    let records = ["customer", "invoice", "itemfulfillment", "salesorder"]
        .iter()
        .map(|t| {
            (
                t.to_string(),
                format!(r#"{{"recordType":"{t}","id":"0","total":1.5}}"#),
            )
        })
        .collect();
    let corpus = [
        "json-nan",
        "event-id-urn",
        "claim-modified",
        "created-at-9999",
        "ordering-key-empty",
    ]
    .iter()
    .map(|n| CorpusCase {
        name: n.to_string(),
        why: format!("the {n} case"),
        expect: String::new(),
    })
    .collect();
    Fixtures { records, corpus }
}

/// The stand-in for SHA-256 of a payload: the model never builds the bytes.
fn digest(event_id: &str) -> String {
    format!("model-digest-{event_id}")
}

pub fn header(plan: &Plan, max_delivery_attempts: u32) -> Header {
    Header {
        version: crate::history::VERSION,
        seed: Some(plan.seed),
        raw_topic: RAW_TOPIC.into(),
        raw_subscription: RAW_SUBSCRIPTION.into(),
        merged_topic: MERGED_TOPIC.into(),
        dead_letter_topic: DEAD_LETTER_TOPIC.into(),
        max_delivery_attempts,
        drain_bound_ms: plan.settle.drain_bound_ms,
        worker: Some("model".into()),
        replay: None,
    }
}

struct Queued {
    item: usize,
    message_id: String,
    attempt: u32,
}

struct Sim<'a> {
    plan: &'a Plan,
    options: &'a ModelOptions,
    rng: Rng,
    history: History,
    snapshot: Snapshot,
    now: u64,
    stored: HashSet<String>,
    next_row: u64,
    merged_seq: u64,
    dead_seq: u64,
    /// (fault index, start time, stored at start)
    open: Vec<(usize, u64, u64)>,
    started: Vec<bool>,
}

impl Sim<'_> {
    fn push(&mut self, event: Event) {
        self.history.push(self.now, event);
    }

    fn tick(&mut self) {
        self.now += 1;
        self.faults_step(None);
    }

    fn faults_step(&mut self, delivered: Option<(usize, u32)>) {
        if !self.options.faults {
            return;
        }
        let stored = self.stored.len() as u64;
        for (i, fault) in self.plan.faults.iter().enumerate() {
            if self.started[i] {
                continue;
            }
            let due = match &fault.trigger {
                Trigger::Stored(n) => stored >= *n,
                Trigger::Published(n) => {
                    self.history.records.iter().rev().take(1).count() > 0 && *n <= stored
                }
                Trigger::Delivered { item, attempt } => {
                    delivered.is_some_and(|(d, a)| d as u64 == *item && a >= *attempt)
                }
                Trigger::KeyAttempt { aggregate, attempt } => delivered.is_some_and(|(d, a)| {
                    self.plan.items[d].aggregate == *aggregate && a >= *attempt
                }),
            };
            if due {
                self.started[i] = true;
                self.open.push((i, self.now, stored));
                self.push(Event::FaultStart(FaultEdge {
                    fault: fault.id,
                    fault_kind: fault.kind,
                    target: fault.target.clone(),
                }));
            }
        }
        let now = self.now;
        let mut ended = Vec::new();
        self.open.retain(|&(i, since, stored_then)| {
            let over = match self.plan.faults[i].hold {
                Hold::Instant => true,
                Hold::Ms(ms) => now >= since + ms.min(2_000),
                Hold::Stored(n) => stored >= stored_then + n,
            };
            if over {
                ended.push(i);
            }
            !over
        });
        for i in ended {
            self.end_fault(i);
        }
    }

    fn end_fault(&mut self, i: usize) {
        let fault = &self.plan.faults[i];
        if matches!(fault.kind, FaultKind::WorkerKill | FaultKind::WorkerTerm) {
            let signal = if fault.kind == FaultKind::WorkerKill {
                9
            } else {
                15
            };
            self.push(Event::WorkerExit(WorkerExit {
                replica: 0,
                code: None,
                signal: Some(signal),
                expected: true,
            }));
            self.push(Event::WorkerStart(WorkerStart {
                replica: 0,
                pid: Some(1000 + i as u32),
            }));
            self.push(Event::WorkerReady(WorkerReady {
                replica: 0,
                via: ReadyVia::StreamOpen,
            }));
        }
        let (id, kind, target) = (fault.id, fault.kind, fault.target.clone());
        self.push(Event::FaultEnd(FaultEdge {
            fault: id,
            fault_kind: kind,
            target,
        }));
    }

    fn publish_item(&mut self, n: usize) -> Queued {
        let item = &self.plan.items[n];
        let mut publish = self.plan.annotate(item, None);
        publish.topic = RAW_TOPIC.into();
        publish.message_id = format!("raw-{n}");
        publish.transport = Some(Transport::GrpcUnary);
        if item.poison.is_none() {
            publish.payload_sha256 = Some(digest(&item.event_id));
            publish.payload_bytes = Some(item.claim_bytes.unwrap_or(600));
        }
        let message_id = publish.message_id.clone();
        self.push(Event::Publish(Box::new(publish)));
        Queued {
            item: n,
            message_id,
            attempt: 1,
        }
    }

    fn attributes(&self, n: usize) -> BTreeMap<String, String> {
        let item = &self.plan.items[n];
        let mut a = BTreeMap::new();
        a.insert(ITEM_ATTRIBUTE.to_string(), n.to_string());
        a.insert("event_id".to_string(), item.event_id.clone());
        if let Some(agg) = self.plan.aggregate(item) {
            a.insert("account_id".into(), agg.account_id.clone());
            a.insert("aggregate_type".into(), agg.aggregate_type.clone());
            a.insert("aggregate_id".into(), agg.aggregate_id.clone());
        }
        a
    }

    fn settle(&mut self, kind: fn(Settle) -> Event, q: &Queued) {
        let s = Settle {
            subscription: RAW_SUBSCRIPTION.into(),
            ack_id: format!("{}-{}", q.message_id, q.attempt),
            message_id: Some(q.message_id.clone()),
            consumer: Some(1),
            transport: None,
        };
        self.push(kind(s));
    }

    fn deliver(&mut self, q: &Queued) {
        let key = self.plan.ordering_key(&self.plan.items[q.item]);
        self.push(Event::Delivery(Delivery {
            subscription: RAW_SUBSCRIPTION.into(),
            message_id: q.message_id.clone(),
            ordering_key: key,
            ack_id: format!("{}-{}", q.message_id, q.attempt),
            attempt: q.attempt,
            consumer: 1,
            transport: Some(Transport::GrpcStream),
        }));
        self.faults_step(Some((q.item, q.attempt)));
    }

    fn publish_merged(&mut self, n: usize) {
        let item = &self.plan.items[n];
        self.merged_seq += 1;
        let message_id = format!("merged-{}", self.merged_seq);
        let key = self.plan.ordering_key(item);
        let event_id = item.event_id.clone();
        self.push(Event::Publish(Box::new(Publish {
            topic: MERGED_TOPIC.into(),
            message_id: message_id.clone(),
            ordering_key: key.clone(),
            event_id: Some(event_id),
            ..Default::default()
        })));
        let attributes = self.attributes(n);
        self.snapshot.merged.push(TopicMessage {
            message_id,
            ordering_key: key,
            attributes,
            data_sha256: None,
            data_bytes: 600,
            received_at_ms: Some(self.now),
        });
    }

    fn dead_letter(&mut self, q: &Queued, by_policy: bool) {
        self.dead_seq += 1;
        let message_id = format!("dlq-{}", self.dead_seq);
        let mut attributes = self.attributes(q.item);
        if by_policy {
            self.push(Event::DeadLetterForward(DeadLetterForward {
                subscription: RAW_SUBSCRIPTION.into(),
                message_id: q.message_id.clone(),
                attempts: q.attempt,
                dead_letter_topic: DEAD_LETTER_TOPIC.into(),
            }));
            attributes.insert(SERVICE_DELIVERY_COUNT.into(), q.attempt.to_string());
        } else {
            attributes.insert(
                DEAD_LETTER_REASON.into(),
                "payload is not valid JSON".into(),
            );
            self.push(Event::Publish(Box::new(Publish {
                topic: DEAD_LETTER_TOPIC.into(),
                message_id: message_id.clone(),
                attributes: attributes.clone(),
                ..Default::default()
            })));
        }
        self.snapshot.dead_letters.push(TopicMessage {
            message_id,
            ordering_key: String::new(),
            attributes,
            data_sha256: None,
            data_bytes: 10,
            received_at_ms: Some(self.now),
        });
    }

    /// Handles the head of one key's queue; returns whether it is done with it.
    fn step(&mut self, q: &mut Queued) -> bool {
        self.tick();
        self.deliver(q);
        let max = self.options.max_delivery_attempts;
        let item = self.plan.items[q.item].clone();
        if item.poison.is_some() {
            if !self.options.poison_by_policy {
                self.dead_letter(q, false);
                self.settle(Event::Ack, q);
                return true;
            }
            self.settle(Event::Nack, q);
            if q.attempt >= max {
                self.dead_letter(q, true);
                return true;
            }
            q.attempt += 1;
            return false;
        }
        let in_fault = !self.open.is_empty();
        let nack = if in_fault {
            self.options.nack_permille.saturating_mul(3)
        } else {
            self.options.nack_permille
        };
        if q.attempt + 1 < max && self.rng.permille(nack) {
            self.settle(Event::Nack, q);
            q.attempt += 1;
            return false;
        }
        if self.stored.insert(item.event_id.clone()) {
            let aggregate =
                self.plan
                    .aggregate(&item)
                    .cloned()
                    .unwrap_or_else(|| crate::plan::Aggregate {
                        account_id: String::new(),
                        aggregate_type: String::new(),
                        aggregate_id: String::new(),
                    });
            self.next_row += 1;
            self.snapshot.ledger.push(LedgerRow {
                id: self.next_row,
                event_id: item.event_id.clone(),
                account_id: aggregate.account_id,
                aggregate_type: aggregate.aggregate_type,
                aggregate_id: aggregate.aggregate_id,
                payload_sha256: digest(&item.event_id),
                payload_bytes: item.claim_bytes.unwrap_or(600),
                created_at: item.created_at.clone(),
            });
            self.publish_merged(q.item);
            if self.stored.len().is_multiple_of(50) {
                let stored = self.stored.len() as u64;
                self.push(Event::Progress(Progress { stored }));
            }
        }
        self.settle(Event::Ack, q);
        if self.rng.permille(self.options.duplicate_permille) {
            self.push(Event::ServiceFault(ServiceFault {
                subscription: RAW_SUBSCRIPTION.into(),
                fault: ServiceFaultKind::Duplicate,
                message_id: Some(q.message_id.clone()),
            }));
            q.attempt += 1;
            self.deliver(q);
            if self.rng.permille(self.options.merged_repeat_permille) {
                self.publish_merged(q.item);
            }
            self.settle(Event::Ack, q);
        }
        true
    }
}

/// The history and snapshot of `plan` run by a correct worker.
pub fn simulate(plan: &Plan, options: &ModelOptions) -> (History, Snapshot) {
    let start = 1_800_000_000_000u64;
    let mut sim = Sim {
        plan,
        options,
        rng: Rng::new(options.seed),
        history: History::new(header(plan, options.max_delivery_attempts)),
        snapshot: Snapshot {
            version: crate::history::VERSION,
            ..Snapshot::default()
        },
        now: start,
        stored: HashSet::new(),
        next_row: 0,
        merged_seq: 0,
        dead_seq: 0,
        open: Vec::new(),
        started: vec![false; plan.faults.len()],
    };
    sim.push(Event::WorkerStart(WorkerStart {
        replica: 0,
        pid: Some(999),
    }));
    sim.push(Event::WorkerReady(WorkerReady {
        replica: 0,
        via: ReadyVia::StreamOpen,
    }));
    let mut queues: HashMap<String, VecDeque<Queued>> = HashMap::new();
    let mut active: VecDeque<String> = VecDeque::new();
    let mut queued = 0usize;
    let run = |sim: &mut Sim,
               queues: &mut HashMap<String, VecDeque<Queued>>,
               active: &mut VecDeque<String>,
               queued: &mut usize| {
        if let Some(key) = active.pop_front()
            && let Some(queue) = queues.get_mut(&key)
        {
            let done = queue.front_mut().is_some_and(|q| sim.step(q));
            if done {
                queue.pop_front();
                *queued -= 1;
            }
            if !queue.is_empty() {
                active.push_back(key);
            }
        }
    };
    for n in 0..plan.items.len() {
        sim.tick();
        let q = sim.publish_item(n);
        let key = plan.ordering_key(&plan.items[n]);
        let queue = queues.entry(key.clone()).or_default();
        if queue.is_empty() {
            active.push_back(key);
        }
        queue.push_back(q);
        queued += 1;
        while queued > 8 {
            run(&mut sim, &mut queues, &mut active, &mut queued);
        }
    }
    while queued > 0 {
        run(&mut sim, &mut queues, &mut active, &mut queued);
    }
    // Every fault heals before the run settles.
    sim.started.iter_mut().for_each(|s| *s = true);
    for (i, _, _) in std::mem::take(&mut sim.open) {
        sim.end_fault(i);
    }
    let tables: BTreeMap<String, u64> = [
        ("tenant_orders".to_string(), 120u64),
        ("migrations".to_string(), 4),
    ]
    .into_iter()
    .collect();
    let state = DatabaseState {
        checksum: "3141592653".into(),
        rows: tables,
    };
    sim.snapshot.primary = Primary {
        before: state.clone(),
        after: state,
    };
    sim.snapshot.timings = Timings {
        started_at_ms: start,
        ended_at_ms: sim.now + plan.settle.quiet_ms,
        faults_healed_at_ms: None,
        backlog_drained_at_ms: Some(sim.now),
        raw_backlog_at_end: Some(0),
    };
    (sim.history, sim.snapshot)
}

/// The anomalies [`inject`] can make.
pub const INJECTABLE: [AnomalyKind; 18] = [
    AnomalyKind::Lost,
    AnomalyKind::DuplicateRow,
    AnomalyKind::UnexplainedRow,
    AnomalyKind::PayloadMismatch,
    AnomalyKind::PrimaryWrite,
    AnomalyKind::Reordered,
    AnomalyKind::Gap,
    AnomalyKind::MergedMissing,
    AnomalyKind::MergedReordered,
    AnomalyKind::MergedMismatch,
    AnomalyKind::PoisonStored,
    AnomalyKind::PoisonNotDeadLettered,
    AnomalyKind::DeadLetteredLate,
    AnomalyKind::ValidDeadLettered,
    AnomalyKind::DeadLetterWithoutReason,
    AnomalyKind::ClaimReferenceStored,
    AnomalyKind::SlowDrain,
    AnomalyKind::NeverDrains,
];

fn raw_publishes(history: &History) -> Vec<&Publish> {
    history
        .records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Publish(p) if p.topic == history.header.raw_topic => Some(&**p),
            _ => None,
        })
        .collect()
}

/// Stored events with at least `n` stored events on their key, in ledger order per key.
fn keys_with_rows(snapshot: &Snapshot, history: &History, n: usize) -> Vec<Vec<usize>> {
    let key_of: HashMap<&str, &str> = raw_publishes(history)
        .into_iter()
        .filter_map(|p| {
            p.event_id
                .as_deref()
                .map(|id| (id, p.ordering_key.as_str()))
        })
        .collect();
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, row) in snapshot.ledger.iter().enumerate() {
        if let Some(key) = key_of.get(row.event_id.as_str()) {
            by_key.entry(key).or_default().push(i);
        }
    }
    by_key
        .into_values()
        .filter(|rows| rows.len() >= n)
        .collect()
}

/// Changes a correct run so that it shows `kind` (and, as a real fault would, whatever
/// follows from it). Returns false when the run has nothing to change for it (no
/// claim-checked event, say).
pub fn inject(kind: AnomalyKind, history: &mut History, snapshot: &mut Snapshot) -> bool {
    let max_row = snapshot.ledger.iter().map(|r| r.id).max().unwrap_or(0);
    let end = history.records.last().map_or(0, |r| r.at_ms);
    let seq = history.records.last().map_or(0, |r| r.seq);
    let claim: HashSet<String> = raw_publishes(history)
        .iter()
        .filter(|p| p.claim_checked)
        .filter_map(|p| p.event_id.clone())
        .collect();
    let poison: Vec<(u64, String)> = raw_publishes(history)
        .iter()
        .filter(|p| p.poison.is_some())
        .filter_map(|p| Some((p.item?, p.event_id.clone()?)))
        .collect();
    let valid: Vec<u64> = raw_publishes(history)
        .iter()
        .filter(|p| p.poison.is_none())
        .filter_map(|p| p.item)
        .collect();
    match kind {
        AnomalyKind::Lost => {
            let Some(i) = snapshot.ledger.len().checked_sub(1) else {
                return false;
            };
            snapshot.ledger.remove(i);
        }
        AnomalyKind::DuplicateRow => {
            let Some(row) = snapshot.ledger.first().cloned() else {
                return false;
            };
            snapshot.ledger.push(LedgerRow {
                id: max_row + 1,
                ..row
            });
        }
        AnomalyKind::UnexplainedRow => {
            let Some(row) = snapshot.ledger.first().cloned() else {
                return false;
            };
            snapshot.ledger.push(LedgerRow {
                id: max_row + 1,
                event_id: "ffffffff-ffff-4fff-bfff-ffffffffffff".into(),
                ..row
            });
        }
        AnomalyKind::PayloadMismatch => {
            let Some(row) = snapshot
                .ledger
                .iter_mut()
                .find(|r| !claim.contains(&r.event_id))
            else {
                return false;
            };
            row.payload_sha256 = "0000".into();
        }
        AnomalyKind::ClaimReferenceStored => {
            let Some(row) = snapshot
                .ledger
                .iter_mut()
                .find(|r| claim.contains(&r.event_id))
            else {
                return false;
            };
            row.payload_sha256 = "digest-of-the-reference".into();
            row.payload_bytes = 190;
        }
        AnomalyKind::PrimaryWrite => {
            *snapshot
                .primary
                .after
                .rows
                .entry("tenant_orders".into())
                .or_default() += 1;
            snapshot.primary.after.checksum = "2718281828".into();
        }
        AnomalyKind::Reordered => {
            let Some(rows) = keys_with_rows(snapshot, history, 2).into_iter().next() else {
                return false;
            };
            let (a, b) = (rows[0], rows[1]);
            let (ida, idb) = (snapshot.ledger[a].id, snapshot.ledger[b].id);
            snapshot.ledger[a].id = idb;
            snapshot.ledger[b].id = ida;
        }
        AnomalyKind::Gap => {
            let Some(rows) = keys_with_rows(snapshot, history, 3).into_iter().next() else {
                return false;
            };
            snapshot.ledger.remove(rows[1]);
        }
        AnomalyKind::MergedMissing => {
            let Some(id) = snapshot.ledger.first().map(|r| r.event_id.clone()) else {
                return false;
            };
            snapshot
                .merged
                .retain(|m| m.attributes.get("event_id") != Some(&id));
        }
        AnomalyKind::MergedReordered => {
            let Some(rows) = keys_with_rows(snapshot, history, 2).into_iter().next() else {
                return false;
            };
            let ids = [
                &snapshot.ledger[rows[0]].event_id,
                &snapshot.ledger[rows[1]].event_id,
            ];
            let first = |id: &String| {
                snapshot
                    .merged
                    .iter()
                    .position(|m| m.attributes.get("event_id") == Some(id))
            };
            let (Some(p), Some(q)) = (first(ids[0]), first(ids[1])) else {
                return false;
            };
            snapshot.merged.swap(p, q);
        }
        AnomalyKind::MergedMismatch => {
            let Some(m) = snapshot.merged.first_mut() else {
                return false;
            };
            m.ordering_key = "TSTDRV0000000:salesorder:elsewhere".into();
        }
        AnomalyKind::PoisonStored => {
            let (Some((_, id)), Some(row)) = (poison.first(), snapshot.ledger.first().cloned())
            else {
                return false;
            };
            snapshot.ledger.push(LedgerRow {
                id: max_row + 1,
                event_id: id.clone(),
                ..row
            });
        }
        AnomalyKind::PoisonNotDeadLettered => {
            let Some((item, _)) = poison.first() else {
                return false;
            };
            let item = item.to_string();
            snapshot
                .dead_letters
                .retain(|m| m.attributes.get(ITEM_ATTRIBUTE) != Some(&item));
        }
        AnomalyKind::DeadLetteredLate => {
            let Some(letter) = snapshot.dead_letters.first_mut() else {
                return false;
            };
            let max = history.header.max_delivery_attempts;
            if let Some(count) = letter.attributes.get_mut(SERVICE_DELIVERY_COUNT) {
                *count = (max + 1).to_string();
                // The policy counts failed deliveries: one more nack than it allows.
                let Some(item) = letter.attributes.get(ITEM_ATTRIBUTE).cloned() else {
                    return false;
                };
                let message_id = format!("raw-{item}");
                let Some(at) = history.records.iter().position(|r| {
                    matches!(&r.event, Event::Nack(s) if s.message_id.as_deref() == Some(&message_id))
                }) else {
                    return false;
                };
                let again = history.records[at].clone();
                history.records.insert(at + 1, again);
            } else {
                // The worker gave up only after the service's attempts ran out.
                let Some(item) = letter.attributes.get(ITEM_ATTRIBUTE).cloned() else {
                    return false;
                };
                let message_id = format!("raw-{item}");
                let Some(delivery) = history.records.iter_mut().find_map(|r| match &mut r.event {
                    Event::Delivery(d) if d.message_id == message_id => Some(d),
                    _ => None,
                }) else {
                    return false;
                };
                delivery.attempt = max + 1;
            }
        }
        AnomalyKind::ValidDeadLettered => {
            let Some(item) = valid.first() else {
                return false;
            };
            let mut attributes = BTreeMap::new();
            attributes.insert(ITEM_ATTRIBUTE.to_string(), item.to_string());
            attributes.insert(
                DEAD_LETTER_REASON.to_string(),
                "event store: connection refused".to_string(),
            );
            snapshot.dead_letters.push(TopicMessage {
                message_id: "dlq-valid".into(),
                attributes,
                ..Default::default()
            });
        }
        AnomalyKind::DeadLetterWithoutReason => {
            let Some(letter) = snapshot.dead_letters.first_mut() else {
                return false;
            };
            letter.attributes.remove(DEAD_LETTER_REASON);
            letter.attributes.remove(SERVICE_DELIVERY_COUNT);
        }
        AnomalyKind::SlowDrain => {
            let Some(p) = raw_publishes(history).first().map(|p| (*p).clone()) else {
                return false;
            };
            let late = end + history.header.drain_bound_ms + 5_000;
            let ack_id = format!("{}-late", p.message_id);
            history.records.push(crate::history::Record {
                seq: seq + 1,
                at_ms: late,
                event: Event::Delivery(Delivery {
                    subscription: history.header.raw_subscription.clone(),
                    message_id: p.message_id.clone(),
                    ordering_key: p.ordering_key.clone(),
                    ack_id: ack_id.clone(),
                    attempt: 2,
                    consumer: 1,
                    transport: None,
                }),
            });
            history.records.push(crate::history::Record {
                seq: seq + 2,
                at_ms: late + 1,
                event: Event::Ack(Settle {
                    subscription: history.header.raw_subscription.clone(),
                    ack_id,
                    message_id: Some(p.message_id),
                    consumer: None,
                    transport: None,
                }),
            });
            snapshot.timings.ended_at_ms = late + 10;
        }
        AnomalyKind::NeverDrains => {
            let Some(p) = raw_publishes(history).first().map(|p| (*p).clone()) else {
                return false;
            };
            let ack_id = format!("{}-again", p.message_id);
            history.records.push(crate::history::Record {
                seq: seq + 1,
                at_ms: end + 1,
                event: Event::Delivery(Delivery {
                    subscription: history.header.raw_subscription.clone(),
                    message_id: p.message_id.clone(),
                    ordering_key: p.ordering_key.clone(),
                    ack_id: ack_id.clone(),
                    attempt: 2,
                    consumer: 1,
                    transport: None,
                }),
            });
            history.records.push(crate::history::Record {
                seq: seq + 2,
                at_ms: end + 2,
                event: Event::Nack(Settle {
                    subscription: history.header.raw_subscription.clone(),
                    ack_id,
                    message_id: Some(p.message_id),
                    consumer: None,
                    transport: None,
                }),
            });
        }
        _ => return false,
    }
    true
}
