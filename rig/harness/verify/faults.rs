//! The plan's faults, injected from outside in plan order, each when the run reaches its
//! trigger — so many rows stored, so many items published, an attempt of a key or of an item
//! — never at a time on the clock. A trigger the run never reaches fires once the run would
//! otherwise settle, and is reported as late. Each fault's start and end are journalled.
//!
//! What each kind does: the worker SIGKILLed (its process group) or SIGTERMed and started
//! again (over once the new one is ready); the event store killed and restarted, or frozen
//! past the ack deadline, and the storage service frozen (a GCS outage), through the target's
//! [`ServiceControl`]; the Pub/Sub faults as `rig-fault-*` labels on the raw subscription,
//! set and taken off again with UpdateSubscription (our service reads them live).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rig_verify::history::{Event, FaultEdge};
use rig_verify::plan::{FaultKind, Hold, PlannedFault, Trigger};

use super::journal::{Journal, now_ms};
use super::live::Live;
use super::recorder::Recorder;
use super::worker_process::{self, SharedWorkers};
use crate::targets::{Service, ServiceControl};

/// How often a trigger is looked at.
const LOOK: Duration = Duration::from_millis(20);

/// The raw subscription's labels, read and written over REST (as the official admin clients
/// send UpdateSubscription with mask `labels`).
pub struct SubscriptionLabels {
    http: reqwest::Client,
    url: String,
    /// What the Terraform set: restored when a Pub/Sub fault ends.
    original: BTreeMap<String, String>,
}

impl SubscriptionLabels {
    pub async fn read(endpoint: &str, subscription_path: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building an HTTP client")?;
        let url = format!("{endpoint}/v1/{subscription_path}");
        let current: serde_json::Value = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("reading {subscription_path}"))?
            .json()
            .await
            .with_context(|| format!("reading {subscription_path}'s labels"))?;
        let original = current["labels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            http,
            url,
            original,
        })
    }

    /// The Terraform's labels plus `faults` (none: the Terraform's alone).
    pub async fn set(&self, faults: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let mut labels = self.original.clone();
        labels.extend(faults.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.http
            .patch(&self.url)
            .json(&serde_json::json!({"subscription": {"labels": labels}, "updateMask": "labels"}))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("setting the fault labels {faults:?} on {}", self.url))?;
        Ok(())
    }
}

/// What became of a planned fault.
#[derive(Debug, Clone)]
pub struct Injected {
    pub id: u32,
    pub kind: FaultKind,
    /// Its trigger was never reached: it fired when the run would otherwise have settled.
    pub late: bool,
    pub start_ms: u64,
    pub end_ms: u64,
}

pub struct Schedule<'a> {
    pub control: Option<&'a dyn ServiceControl>,
    pub labels: &'a SubscriptionLabels,
    pub workers: &'a SharedWorkers,
    pub recorder: &'a Recorder,
    pub journal: &'a Journal,
    pub live: &'a Live,
    /// The plan's aggregates' ordering keys, by index (for `key_attempt` triggers).
    pub keys: Vec<String>,
    /// How long a SIGTERMed worker may take to stop.
    pub term_grace: Duration,
}

impl Schedule<'_> {
    fn reached(&self, trigger: &Trigger) -> bool {
        match trigger {
            Trigger::Stored(n) => self.live.stored.load(Ordering::SeqCst) >= *n,
            Trigger::Published(n) => self.live.publishing.published.load(Ordering::SeqCst) >= *n,
            Trigger::KeyAttempt { aggregate, attempt } => {
                let Some(key) = self.keys.get(*aggregate as usize) else {
                    return false;
                };
                self.recorder
                    .with(|o| o.key_attempt.get(key).is_some_and(|a| a >= attempt))
            }
            Trigger::Delivered { item, attempt } => self
                .recorder
                .with(|o| o.item_attempt.get(item).is_some_and(|a| a >= attempt)),
        }
    }

    /// Waits for `trigger`; `true` when it fired late (the run went idle first).
    async fn wait_for(&self, trigger: &Trigger) -> bool {
        loop {
            if self.reached(trigger) {
                return false;
            }
            if self.live.idle(self.recorder) {
                return true;
            }
            tokio::time::sleep(LOOK).await;
        }
    }

    async fn hold(&self, hold: &Hold) {
        match hold {
            Hold::Instant => {}
            Hold::Ms(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Hold::Stored(n) => {
                let until = self.live.stored.load(Ordering::SeqCst) + n;
                // As many raw messages settled too: a batching worker stores a key's rows in
                // one INSERT and acks them after, and the acks are what a Pub/Sub fault
                // (duplicates, lost acks) acts on; a window closed on rows alone saw few.
                let settled = |r: &Recorder| r.with(|o| o.settled_once);
                let settled_until = settled(self.recorder) + n;
                let started = Instant::now();
                // Bounded: a worker the fault stops never stores the rows it waits for.
                while (self.live.stored.load(Ordering::SeqCst) < until
                    || settled(self.recorder) < settled_until)
                    && !self.live.idle(self.recorder)
                    && started.elapsed() < self.live.drain_bound
                {
                    tokio::time::sleep(LOOK).await;
                }
            }
        }
    }

    fn edge(&self, fault: &PlannedFault, start: bool) -> u64 {
        let edge = FaultEdge {
            fault: fault.id,
            fault_kind: fault.kind,
            target: fault.target.clone(),
        };
        self.journal.record(if start {
            Event::FaultStart(edge)
        } else {
            Event::FaultEnd(edge)
        })
    }

    fn control(&self, kind: FaultKind) -> anyhow::Result<&dyn ServiceControl> {
        self.control.with_context(|| {
            format!("fault {kind} needs a target whose services the rig runs (local, containers)")
        })
    }

    /// Which replica a worker fault hits: the plan's fault id spreads them.
    fn replica(&self, fault: &PlannedFault) -> u32 {
        fault.id % worker_process::count(self.workers).max(1)
    }

    /// Publishing stops `window` items ahead while a fault held for a time is on, so that the
    /// plan's later triggers still find work in flight when it heals.
    fn cap_publishing(&self, on: bool) {
        let cap = if on {
            self.live.publishing.published.load(Ordering::SeqCst) + self.live.window
        } else {
            u64::MAX
        };
        self.live.publish_cap.store(cap, Ordering::SeqCst);
    }

    async fn inject(&self, fault: &PlannedFault) -> anyhow::Result<(u64, u64)> {
        let pulled = |since| self.recorder.with(|o| o.pulled_since(since));
        match fault.kind {
            FaultKind::WorkerKill | FaultKind::WorkerTerm => {
                let replica = self.replica(fault);
                let start = self.edge(fault, true);
                if fault.kind == FaultKind::WorkerKill {
                    worker_process::kill(self.workers, replica);
                } else {
                    worker_process::stop(self.workers, replica, self.term_grace).await;
                }
                worker_process::start_ready(self.workers, replica, pulled).await?;
                Ok((start, self.edge(fault, false)))
            }
            FaultKind::EventStoreKill => {
                let control = self.control(fault.kind)?;
                let start = self.edge(fault, true);
                control.kill(Service::EventStore).await?;
                control.restart(Service::EventStore).await?;
                Ok((start, self.edge(fault, false)))
            }
            FaultKind::EventStoreFreeze | FaultKind::GcsUnavailable => {
                let control = self.control(fault.kind)?;
                let service = if fault.kind == FaultKind::EventStoreFreeze {
                    Service::EventStore
                } else {
                    Service::Storage
                };
                self.cap_publishing(true);
                let start = self.edge(fault, true);
                let frozen = control.freeze(service).await;
                if frozen.is_ok() {
                    self.hold(&fault.hold).await;
                }
                // Thawed whatever happened: a frozen service must not outlive the fault.
                let thawed = control.thaw(service).await;
                let end = self.edge(fault, false);
                self.cap_publishing(false);
                frozen?;
                thawed?;
                Ok((start, end))
            }
            FaultKind::PubsubDuplicates
            | FaultKind::PubsubStreamResets
            | FaultKind::PubsubDelays
            | FaultKind::PubsubLostAcks => {
                self.labels.set(&fault.labels).await?;
                let start = self.edge(fault, true);
                self.hold(&fault.hold).await;
                let healed = self.labels.set(&BTreeMap::new()).await;
                let end = self.edge(fault, false);
                healed?;
                Ok((start, end))
            }
        }
    }

    /// Runs every planned fault in order; returns what became of each.
    pub async fn run(&self, faults: &[PlannedFault]) -> anyhow::Result<Vec<Injected>> {
        let mut injected = Vec::with_capacity(faults.len());
        for fault in faults {
            let late = self.wait_for(&fault.trigger).await;
            if late {
                tracing::info!(
                    "fault {}#{}: its trigger {:?} was not reached; injected now, as the run settles",
                    fault.kind,
                    fault.id,
                    fault.trigger
                );
            }
            let (start_ms, end_ms) = self
                .inject(fault)
                .await
                .with_context(|| format!("injecting fault {}#{}", fault.kind, fault.id))?;
            injected.push(Injected {
                id: fault.id,
                kind: fault.kind,
                late,
                start_ms,
                end_ms,
            });
        }
        self.live.healed_at_ms.store(now_ms(), Ordering::SeqCst);
        Ok(injected)
    }
}
