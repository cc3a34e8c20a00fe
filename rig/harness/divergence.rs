//! Known differences between the local emulators and the real services.
//!
//! A divergence is detected at run time, never assumed: each is produced by code that observed
//! the emulator behaving differently from what the real service is documented to do. Reports
//! list them in their own column; they are never counted as passes. The catalogue of what the
//! rig knows to look for is `docs/feature-support.md`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Divergence {
    /// The emulator that diverged, e.g. `pubsub-emulator`.
    pub service: String,
    /// The feature, e.g. `subscription filter`.
    pub feature: String,
    /// What the rig observed locally.
    pub observed: String,
    /// What the real service does, and so what only a run against GCP can prove.
    pub real_service: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} / {}: observed {}; the real service {}",
            self.service, self.feature, self.observed, self.real_service
        )
    }
}
