//! Where the run stands while it goes, shared by the producer, the fault schedule and the
//! run's end: rows stored (sampled from the ledger), items published, whether the backbone is
//! quiet. Every decision here is about progress, none about a time on the clock; the only
//! durations are the plan's quiet period and drain bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rig_verify::plan::Plan;

use super::journal::now_ms;
use super::recorder::Recorder;
use super::workload::Publishing;

pub struct Live {
    /// Rows in the ledger at the last sample.
    pub stored: AtomicU64,
    /// When that count last rose.
    pub stored_rose_ms: AtomicU64,
    pub publishing: Publishing,
    /// Publishing stops at this many items (`u64::MAX`: no cap; see `faults.rs`).
    pub publish_cap: AtomicU64,
    /// When the last fault healed (0: not yet).
    pub healed_at_ms: AtomicU64,
    /// How many published raw messages may be unsettled at once (the producer's flow
    /// control): the workload stays in flight across the whole fault schedule instead of all
    /// being stored before the second fault.
    pub window: u64,
    /// The plan's quiet period: the run ends once nothing was delivered for this long.
    pub quiet: Duration,
    /// No settling for this long is a stall: what the run waits for will not come.
    pub stall: Duration,
    pub drain_bound: Duration,
}

impl Live {
    pub fn new(plan: &Plan) -> Self {
        let valid = plan.items.iter().filter(|i| i.poison.is_none()).count() as u64;
        let drain_bound = Duration::from_millis(plan.settle.drain_bound_ms);
        let quiet = Duration::from_millis(plan.settle.quiet_ms.max(200));
        Self {
            stored: AtomicU64::new(0),
            stored_rose_ms: AtomicU64::new(now_ms()),
            publishing: Publishing::default(),
            publish_cap: AtomicU64::new(u64::MAX),
            healed_at_ms: AtomicU64::new(0),
            window: (valid / 10).clamp(50, 2_000),
            quiet,
            // Longer than a killed worker's keys stay leased (10-15 s for the example workers'
            // clients), so that the wait for a replacement is not taken for the end.
            stall: (drain_bound / 2)
                .max(quiet * 3)
                .max(Duration::from_secs(20)),
            drain_bound,
        }
    }

    pub fn set_stored(&self, n: u64) {
        if n > self.stored.swap(n, Ordering::SeqCst) {
            self.stored_rose_ms.store(now_ms(), Ordering::SeqCst);
        }
    }

    /// Whether the producer may publish its next item.
    pub fn may_publish(&self, recorder: &Recorder, published: u64) -> bool {
        if published >= self.publish_cap.load(Ordering::SeqCst) {
            return false;
        }
        let settled = recorder.with(|o| o.settled_once);
        published.saturating_sub(settled) < self.window
    }

    fn quiet_since(&self, recorder: &Recorder) -> (u64, u64, u64) {
        recorder.with(|o| {
            (
                o.unsettled,
                o.last_delivery_ms.max(o.last_settle_ms),
                o.last_settle_ms,
            )
        })
    }

    /// Everything published is settled and nothing was delivered for the quiet period.
    pub fn drained(&self, recorder: &Recorder) -> bool {
        let (unsettled, active, _) = self.quiet_since(recorder);
        self.publishing.done.load(Ordering::SeqCst)
            && unsettled == 0
            && now_ms().saturating_sub(active) >= self.quiet.as_millis() as u64
    }

    /// How long since a raw message was last settled, a row stored or a fault healed.
    pub fn since_progress_ms(&self, recorder: &Recorder) -> u64 {
        let (_, _, settled) = self.quiet_since(recorder);
        let progress = settled
            .max(self.stored_rose_ms.load(Ordering::SeqCst))
            .max(self.healed_at_ms.load(Ordering::SeqCst));
        now_ms().saturating_sub(progress)
    }

    /// No progress for the stall period: the run will not get further by waiting.
    pub fn stalled(&self, recorder: &Recorder) -> bool {
        self.since_progress_ms(recorder) >= self.stall.as_millis() as u64
    }

    /// The run would settle here: drained, or stalled. A fault whose trigger was not
    /// reached by then fires now.
    pub fn idle(&self, recorder: &Recorder) -> bool {
        self.drained(recorder) || self.stalled(recorder)
    }
}
