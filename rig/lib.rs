//! backbone-rig: brings up the event backbone (Pub/Sub, GCS, the MySQL event store) locally or
//! points at it, provisions it from the Terraform, and proves its guarantees.
//!
//! Data flows one way: Terraform → [`topology`] → [`target`] (services + [`provision`]) →
//! [`environment::Environment`] (endpoints, credentials) → clients ([`pubsub`], [`storage`],
//! [`event_store`]) → [`validate`] / scenarios → [`report`]. See ARCHITECTURE.md.

pub mod divergence;
pub mod environment;
pub mod event_store;
pub mod process;
pub mod provision;
pub mod pubsub;
pub mod services;
pub mod storage;
pub mod target;
pub mod topology;
pub mod report;
pub mod validate;
pub mod claim_check;
pub mod envelope;
pub mod producer;
pub mod worker;
