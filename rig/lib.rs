//! backbone-rig: brings up the event backbone (Pub/Sub, GCS, the MySQL event store) locally or
//! points at it, provisions it from the Terraform, and proves its guarantees.
//!
//! Data flows one way: Terraform → [`topology`] → [`target`] (services + [`provision`]) →
//! [`environment::Environment`] (endpoints, credentials) → clients ([`pubsub`], [`storage`],
//! [`event_store`]) → [`validate`] / scenarios → [`report`]. See ARCHITECTURE.md.

pub mod claim_check;
pub mod divergence;
pub mod envelope;
pub mod environment;
pub mod event_store;
pub mod process;
pub mod producer;
pub mod provision;
pub mod pubsub;
pub mod report;
pub mod services;
pub mod storage;
pub mod target;
pub mod topology;
pub mod validate;
pub mod worker;

// The scenarios live in the top-level `scenarios/` directory (the layout the design card
// names) but are part of this library, because the `rig scenarios` command runs them.
#[path = "../scenarios/mod.rs"]
pub mod scenarios;
