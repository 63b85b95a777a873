//! `notifier watch`: load the probes, then stream kernel records through the session assembler to
//! stdout until SIGINT or SIGTERM. After every batch, records lost in the kernel or in the session
//! table are reported as an `events_lost` event, so a loss is never silent.

use std::io;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    cli::WatchArgs,
    event::{self, LostEvent},
    loader, procinfo,
    session::{format_time, Assembler, DEFAULT_CAPACITY},
    source::{LostCounts, Source},
    witness::{self, Capture, ProcListeners, Witness},
};

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let format = args.format();
    let mut probes = loader::load(&args.targets())?;
    let mut source = Source::new(&mut probes)?;
    let mut capture = new_capture(&probes, procinfo::host_context());
    let mut stdout = io::stdout().lock();
    info!(
        libpam = %probes.targets.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","),
        "Streaming login events."
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut records = Vec::with_capacity(256);
    let mut events = Vec::with_capacity(64);
    let mut losses = LossTracker::default();
    let mut libpam = loader::watch_libpam(&probes);
    let mut stopping = false;
    while !stopping {
        let due = capture.next_deadline();
        tokio::select! {
            _ = tokio::time::sleep_until(due.unwrap_or_else(std::time::Instant::now).into()), if due.is_some() => {
                capture.tick(procinfo::boot_now_ns(), &mut events);
            }
            Some(path) = loader::next_replaced(&mut libpam) => {
                loader::handle_replaced(&mut probes, &path);
                continue;
            }
            res = source.next_batch(&mut records) => res.context("reading the ring buffer")?,
            _ = sigterm.recv() => stopping = true,
            _ = sigint.recv() => stopping = true,
        }
        if stopping {
            // Deliver what is already in the ring before exiting.
            source.drain(&mut records);
        }
        for record in records.drain(..) {
            capture.push(&record, &mut events);
        }
        if stopping {
            capture.tick(u64::MAX, &mut events);
        }
        for e in events.drain(..) {
            let wanted = args.services.is_empty() || e.service.as_ref().is_some_and(|s| args.services.contains(s));
            if wanted && !write_ok(event::write_login(&mut stdout, format, &e))? {
                return Ok(());
            }
        }
        if let Some(lost) = losses.check(&source, capture.evicted())? {
            if !write_ok(event::write_lost(&mut stdout, format, &lost))? {
                return Ok(());
            }
        }
        if !write_ok(io::Write::flush(&mut stdout))? {
            return Ok(());
        }
    }
    if source.decode_errors > 0 {
        warn!(count = source.decode_errors, "Some kernel records could not be decoded.");
    }
    info!("Stopped; probes detached.");
    Ok(())
}

/// The PAM session assembler and the sshd witness, for the probes that were attached.
pub fn new_capture(
    probes: &loader::Probes,
    ctx: crate::session::HostContext,
) -> Capture<procinfo::ProcFs, ProcListeners> {
    let assembler = Assembler::new(ctx.clone(), procinfo::ProcFs::default(), DEFAULT_CAPACITY);
    let listeners = ProcListeners(probes.sshd.ids.clone());
    let witness = Witness::new(ctx, procinfo::ProcFs::default(), listeners, witness::DEFAULT_CAPACITY);
    Capture::new(assembler, witness)
}

/// Turns the kernel's loss counters and the session table's evictions into `events_lost` events,
/// each covering what was lost since the previous one.
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
            time: format_time(procinfo::unix_now_ns()),
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

/// A closed stdout (the reader went away) ends the program quietly; other errors are errors.
pub fn write_ok(res: io::Result<()>) -> anyhow::Result<bool> {
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
