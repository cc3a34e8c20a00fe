//! The words a plan and a history share: an aggregate (one ordering key) and the kinds of
//! fault. Both modules use them; neither needs the other for them.

use serde::{Deserialize, Serialize};

/// An aggregate: one ordering key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    pub account_id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
}

impl Aggregate {
    /// The ordering key the producer sets (`rig/events/envelope.rs`'s `ordering_key`; the plan's
    /// aggregates are far below the 1,024 bytes above which that function hashes).
    pub fn ordering_key(&self) -> String {
        format!(
            "{}:{}:{}",
            self.account_id, self.aggregate_type, self.aggregate_id
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL the worker (its process group), then start it again.
    WorkerKill,
    /// SIGTERM the worker, wait for it to exit, then start it again.
    WorkerTerm,
    /// SIGKILL the event store's server, then start it again on the same data.
    EventStoreKill,
    /// SIGSTOP the event store past the ack deadline, then SIGCONT.
    EventStoreFreeze,
    /// GCS answers nothing (the runner stops fake-gcs-server), then comes back.
    GcsUnavailable,
    /// Pub/Sub faults through our service, set as labels on the raw subscription.
    PubsubDuplicates,
    PubsubStreamResets,
    PubsubDelays,
    PubsubLostAcks,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::WorkerKill,
        FaultKind::WorkerTerm,
        FaultKind::EventStoreKill,
        FaultKind::EventStoreFreeze,
        FaultKind::GcsUnavailable,
        FaultKind::PubsubDuplicates,
        FaultKind::PubsubStreamResets,
        FaultKind::PubsubDelays,
        FaultKind::PubsubLostAcks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::WorkerKill => "worker_kill",
            FaultKind::WorkerTerm => "worker_term",
            FaultKind::EventStoreKill => "event_store_kill",
            FaultKind::EventStoreFreeze => "event_store_freeze",
            FaultKind::GcsUnavailable => "gcs_unavailable",
            FaultKind::PubsubDuplicates => "pubsub_duplicates",
            FaultKind::PubsubStreamResets => "pubsub_stream_resets",
            FaultKind::PubsubDelays => "pubsub_delays",
            FaultKind::PubsubLostAcks => "pubsub_lost_acks",
        }
    }

    pub fn is_pubsub(self) -> bool {
        matches!(
            self,
            FaultKind::PubsubDuplicates
                | FaultKind::PubsubStreamResets
                | FaultKind::PubsubDelays
                | FaultKind::PubsubLostAcks
        )
    }

    /// What it acts on, as the history's fault records name it.
    pub fn default_target(self) -> &'static str {
        match self {
            FaultKind::WorkerKill | FaultKind::WorkerTerm => "worker",
            FaultKind::EventStoreKill | FaultKind::EventStoreFreeze => "event_store",
            FaultKind::GcsUnavailable => "gcs",
            _ => "raw_subscription",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
