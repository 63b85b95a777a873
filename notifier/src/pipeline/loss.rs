//! Turns the kernel's loss counters and the capture tables' evictions into `events_lost` events,
//! each covering what was lost since the previous one, so that a loss is never silent.

use anyhow::Context as _;
use tracing::warn;

use crate::{
    clock,
    event::LostEvent,
    source::{LostCounts, Source},
};

#[derive(Default)]
pub struct LossTracker {
    reported: LostCounts,
    evicted: u64,
}

impl LossTracker {
    pub fn check(&mut self, source: &Source, evicted: u64) -> anyhow::Result<Option<LostEvent>> {
        let now = source.lost_counts().context("reading the loss counters")?;
        let delta = now.since(&self.reported);
        let new_evicted = evicted - self.evicted;
        if delta.total() == 0 && new_evicted == 0 {
            return Ok(None);
        }
        self.reported = now;
        self.evicted = evicted;
        let lost = LostEvent {
            time: clock::format_time(clock::unix_now_ns()),
            event: "events_lost",
            ring_full: delta.ring_full,
            inflight_full: delta.inflight_full,
            handles_full: delta.handles_full,
            read_failed: delta.read_failed,
            no_entry: delta.no_entry,
            session_table_full: new_evicted,
            lost: delta.total() + new_evicted,
            total: now.total() + evicted,
        };
        warn!(lost = lost.lost, total = lost.total, "Events lost; see the events_lost line for causes.");
        Ok(Some(lost))
    }
}
