//! Deterministic fault injection, scoped to one subscription and configured through its
//! labels, so any client sets it with the ordinary admin API:
//!
//! | label | effect |
//! |---|---|
//! | `rig-fault-seed` | seed of the subscription's fault sequence (default 0) |
//! | `rig-fault-duplicate-permille` | an acked message is delivered once more (at-least-once) |
//! | `rig-fault-stream-reset-permille` | a streaming pull ends with UNAVAILABLE instead of sending a batch |
//! | `rig-fault-delay-ms` | a published message becomes deliverable this much later |
//! | `rig-fault-delay-permille` | share of messages delayed (default 1000 when a delay is set) |
//! | `rig-fault-lost-ack-permille` | an ack is dropped: the message comes back after its deadline |
//! | `rig-fault-lost-ack-lease-ms` | a dropped ack's lease runs out this much after the ack instead (the ack was lost just before the deadline), so a test sees the redelivery without waiting out the client's lease |
//!
//! Label values must be lowercase (Pub/Sub's label rules), hence permille integers. The
//! sequence of decisions is a pure function of the seed: the same seed and the same order
//! of events give the same faults.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Result, ServiceError};

pub const SEED: &str = "rig-fault-seed";
pub const DUPLICATE: &str = "rig-fault-duplicate-permille";
pub const STREAM_RESET: &str = "rig-fault-stream-reset-permille";
pub const DELAY_MS: &str = "rig-fault-delay-ms";
pub const DELAY: &str = "rig-fault-delay-permille";
pub const LOST_ACK: &str = "rig-fault-lost-ack-permille";
pub const LOST_ACK_LEASE_MS: &str = "rig-fault-lost-ack-lease-ms";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    state: u64,
    pub duplicate_permille: u16,
    pub stream_reset_permille: u16,
    pub delay: Duration,
    pub delay_permille: u16,
    pub lost_ack_permille: u16,
    /// When set, a lost ack's lease ends this long after the ack (else at its deadline).
    pub lost_ack_lease: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Duplicate,
    StreamReset,
    Delay,
    LostAck,
}

impl FaultPlan {
    /// The plan the labels describe; `None` when no fault label is set.
    pub fn from_labels(labels: &HashMap<String, String>) -> Result<Option<FaultPlan>> {
        if !labels.keys().any(|k| k.starts_with("rig-fault-")) {
            return Ok(None);
        }
        let number = |key: &str, max: u64| -> Result<u64> {
            match labels.get(key) {
                None => Ok(0),
                Some(v) => v.parse::<u64>().ok().filter(|n| *n <= max).ok_or_else(|| {
                    ServiceError::invalid(format!(
                        "label {key}={v:?}: expected an integer from 0 to {max}"
                    ))
                }),
            }
        };
        for key in labels.keys().filter(|k| k.starts_with("rig-fault-")) {
            if ![
                SEED,
                DUPLICATE,
                STREAM_RESET,
                DELAY_MS,
                DELAY,
                LOST_ACK,
                LOST_ACK_LEASE_MS,
            ]
            .contains(&key.as_str())
            {
                return Err(ServiceError::invalid(format!(
                    "unknown fault label {key}; known: {SEED}, {DUPLICATE}, {STREAM_RESET}, {DELAY_MS}, {DELAY}, {LOST_ACK}, {LOST_ACK_LEASE_MS}"
                )));
            }
        }
        let permille = |key: &str| number(key, 1000).map(|n| n as u16);
        let delay = Duration::from_millis(number(DELAY_MS, 600_000)?);
        let delay_permille = if labels.contains_key(DELAY) {
            permille(DELAY)?
        } else if delay.is_zero() {
            0
        } else {
            1000
        };
        Ok(Some(FaultPlan {
            state: number(SEED, u64::MAX)?,
            duplicate_permille: permille(DUPLICATE)?,
            stream_reset_permille: permille(STREAM_RESET)?,
            delay,
            delay_permille,
            lost_ack_permille: permille(LOST_ACK)?,
            lost_ack_lease: labels
                .contains_key(LOST_ACK_LEASE_MS)
                .then(|| number(LOST_ACK_LEASE_MS, 600_000).map(Duration::from_millis))
                .transpose()?,
        }))
    }

    /// Decides whether `fault` happens this time; advances the sequence either way, so the
    /// decisions depend only on the seed and the order of events.
    pub fn roll(&mut self, fault: Fault) -> bool {
        let permille = match fault {
            Fault::Duplicate => self.duplicate_permille,
            Fault::StreamReset => self.stream_reset_permille,
            Fault::Delay => self.delay_permille,
            Fault::LostAck => self.lost_ack_permille,
        };
        if permille == 0 {
            return false;
        }
        (self.next() % 1000) < u64::from(permille)
    }

    /// SplitMix64: tiny, and good enough to spread decisions.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
