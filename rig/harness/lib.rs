//! The test harness: brings the event backbone up (local processes, containers) or reaches it
//! (an environment, GCP), provisions it from the Terraform and runs the epic's validation.
//!
//! Data flows one way: Terraform ([`rig_topology`]) → [`targets`] (services) →
//! [`provision`] → [`environment::Environment`] (endpoints, credentials) → clients
//! ([`rig_events`]) → [`validate`] / [`verify`] / scenarios → [`report`]. [`backbone::Backbone`] is where a
//! caller enters: it chooses the target and provisions on it. See ARCHITECTURE.md.
//!
//! Architecture invariant: targets only start or reach services and never create what is on
//! them; provisioning never asks which target ran; nothing here reads the worker's messages
//! except to check a guarantee.

pub mod acceptance;
pub mod backbone;
pub mod containers;
pub mod divergence;
pub mod env_file;
pub mod environment;
pub mod process;
pub mod provision;
pub mod readback;
pub mod report;
pub mod services;
pub mod targets;
pub mod validate;
pub mod verify;
pub mod worker;
