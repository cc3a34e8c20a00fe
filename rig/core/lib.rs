//! backbone-rig: brings up the event backbone (Pub/Sub, GCS, the MySQL event store) locally or
//! points at it, provisions it from the Terraform, and proves its guarantees.
//!
//! Data flows one way: Terraform → [`topology`] → [`targets`] (services) → [`provision`] →
//! [`environment::Environment`] (endpoints, credentials) → clients ([`pubsub`], [`storage`],
//! [`event_store`]) → [`validate`] / scenarios → [`report`]. See ARCHITECTURE.md.

pub mod acceptance;
pub mod claim_check;
pub mod containers;
pub mod divergence;
pub mod drift;
pub mod envelope;
pub mod environment;
pub mod event_store;
pub mod process;
pub mod producer;
pub mod provision;
pub mod pubsub;
pub mod readback;
pub mod report;
pub mod services;
pub mod storage;
pub mod targets;
pub mod validate;
pub mod worker;

/// The topology is its own crate (`rig/topology`), so the Terraform side builds without the
/// Google crates or sqlx; re-exported so the rig speaks of one `topology`.
pub use rig_topology as topology;
