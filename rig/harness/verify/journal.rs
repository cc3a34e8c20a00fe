//! The runner's own records — the faults it injected, the worker's lifecycle, samples of the
//! ledger's progress — kept apart from the service's until the history is assembled.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rig_verify::history::Event;

/// Wall-clock milliseconds since the Unix epoch, as the service stamps its records.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<(u64, Event)>>>);

impl Journal {
    /// Records `event` now; returns when.
    pub fn record(&self, event: Event) -> u64 {
        let at = now_ms();
        self.record_at(at, event);
        at
    }

    pub fn record_at(&self, at: u64, event: Event) {
        match self.0.lock() {
            Ok(mut records) => records.push((at, event)),
            Err(poisoned) => poisoned.into_inner().push((at, event)),
        }
    }

    pub fn take(&self) -> Vec<(u64, Event)> {
        match self.0.lock() {
            Ok(mut records) => std::mem::take(&mut *records),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}
