//! Black-box verification of a worker on the event backbone, in the manner of Jepsen's queue
//! checker: a run is recorded as a [`history::History`] (everything the backbone saw: publishes,
//! deliveries, acks, nacks, lease expiries, dead-letter forwards, the faults injected, the
//! worker's lifecycle) plus a final [`history::Snapshot`] (what the ledger, `events.merged`,
//! `events.dlq` and the primary database hold at the end). [`checker::check`] is a pure
//! function of the two that names each anomaly it finds; [`report`] turns its verdict into the
//! summary, JUnit XML, a versioned results JSON and a picture of the run.
//!
//! A run is planned, not improvised: a seed expands to a [`plan::Plan`] (the workload and a
//! fault schedule triggered by progress, never by the clock), saved as a file that replays it.
//!
//! Architecture invariant: nothing here starts a process, opens a socket or reads a clock.
//! Files are read and written only by the `load`/`save` functions, so everything else can be
//! driven from plain values in tests and re-run offline on a saved run.
//!
//! API boundary: the runner (which spawns the worker, injects the faults and records) builds
//! a `History` and a `Snapshot` and calls [`checker::check`], then [`report`]; it reads a plan
//! with [`plan::Plan::load`] or makes one with [`plan::Plan::generate`].

pub mod checker;
pub mod error;
pub mod history;
pub mod model;
pub mod plan;
pub mod report;
pub mod terms;

pub use checker::{Anomaly, AnomalyKind, Outcome, Property, PropertyResult, Verdict, check};
pub use error::FileError;
pub use history::{Event, Header, History, Record, Snapshot};
pub use plan::Plan;

/// The attribute the rig's producer sets on every message of the workload: the plan's item
/// number, so a dead letter (which keeps the original attributes) can be traced to what was
/// published even when the event's own headers are what made it poison.
pub const ITEM_ATTRIBUTE: &str = "rig_item";
/// What the worker sets on a message it dead-letters itself.
pub const DEAD_LETTER_REASON: &str = "dead_letter_reason";
/// What Pub/Sub sets on a message its dead-letter policy forwards.
pub const SERVICE_DELIVERY_COUNT: &str = "CloudPubSubDeadLetterSourceDeliveryCount";
/// Set by the reference worker on its own dead letters: the source message's id.
pub const DEAD_LETTER_SOURCE_MESSAGE_ID: &str = "dead_letter_source_message_id";
