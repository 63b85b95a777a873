//! Turns the kernel's loss counters and the capture tables' evictions into `events_lost` events,
//! each covering what was lost since the previous one, so that a loss is never silent; and at most
//! one a second, so that a flood of losses is not a flood of lines.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracing::warn;

use crate::{
    clock,
    event::LostEvent,
    source::{LostCounts, Source},
};

/// The shortest time between two `events_lost` lines.
pub const EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct LossTracker {
    reported: LostCounts,
    /// Capture-table evictions reported: (root's sessions, others').
    evicted: (u64, u64),
    last: Option<Instant>,
    /// A loss seen too soon after the last line: when to report it.
    due: Option<Instant>,
}

impl LossTracker {
    /// When a loss held back is due.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The losses since the last line, if there are any and a line is due (or `now_anyway`).
    /// `evicted` is what the capture tables dropped: (root's sessions, others').
    pub fn check(
        &mut self,
        source: &Source,
        evicted: (u64, u64),
        now_anyway: bool,
    ) -> anyhow::Result<Option<LostEvent>> {
        let now = source.lost_counts().context("reading the loss counters")?;
        let delta = now.since(&self.reported);
        let new_evicted = (evicted.0 - self.evicted.0, evicted.1 - self.evicted.1);
        if delta.total() == 0 && new_evicted == (0, 0) {
            return Ok(None);
        }
        let at = Instant::now();
        if let (Some(last), false) = (self.last, now_anyway) {
            if at < last + EVERY {
                self.due = Some(last + EVERY);
                return Ok(None);
            }
        }
        (self.reported, self.evicted, self.last, self.due) = (now, evicted, Some(at), None);
        let causes = delta.causes();
        let table = new_evicted.0 + new_evicted.1;
        let lost = LostEvent {
            time: clock::format_time(clock::unix_now_ns()),
            event: "events_lost",
            ring_full: causes.ring_full,
            inflight_full: causes.inflight_full,
            handles_full: causes.handles_full,
            read_failed: causes.read_failed,
            no_entry: causes.no_entry,
            session_table_full: table,
            budget: causes.budget,
            lost: delta.total() + table,
            total: now.total() + evicted.0 + evicted.1,
            trusted: delta.root.total() + new_evicted.0,
            untrusted: delta.user.total() + new_evicted.1,
        };
        if lost.trusted > 0 {
            warn!(
                lost = lost.lost,
                trusted = lost.trusted,
                total = lost.total,
                "Events of root's processes lost; see the events_lost line for causes."
            );
        } else {
            warn!(
                lost = lost.lost,
                total = lost.total,
                "Events of users' processes lost (a flood?); see the events_lost line."
            );
        }
        Ok(Some(lost))
    }
}
