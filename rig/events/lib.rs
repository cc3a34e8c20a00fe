//! The event contract a sync worker keeps, whoever writes the worker: how an event travels on
//! `events.raw` and `events.merged` ([`envelope`]), the append-only ledger and its migrations
//! ([`event_store`]), oversized payloads in the bucket ([`claim_check`]), how a SuiteX producer
//! publishes ([`producer`]) and the reference ingest worker ([`worker`]), with the clients they
//! reach the backbone through ([`pubsub`], [`storage`], [`Connections`]).
//!
//! Architecture invariant: nothing here starts a service, provisions a resource or knows which
//! target runs; it receives [`Connections`] and speaks to whatever they point at. See
//! ARCHITECTURE.md.

pub mod adc;
pub mod claim_check;
mod connections;
pub mod envelope;
pub mod event_store;
pub mod producer;
pub mod pubsub;
pub mod reach;
pub mod storage;
pub mod worker;

pub use connections::{Connections, db_endpoint};
