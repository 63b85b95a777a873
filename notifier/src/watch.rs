//! `notifier watch`: load the probes, then stream kernel records through the session assembler to
//! stdout until SIGINT or SIGTERM. After every batch, records lost in the kernel or in the session
//! table are reported as an `events_lost` event, so a loss is never silent.

use std::io;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    cli::WatchArgs,
    event::{self, Format, LostEvent},
    loader, procinfo,
    session::{format_time, Assembler, DEFAULT_CAPACITY},
    source::{LostCounts, Source},
};

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let mut probes = loader::load(&args.libpam)?;
    let mut source = Source::new(&mut probes)?;
    let ctx = procinfo::host_context();
    let mut assembler = Assembler::new(ctx, procinfo::ProcFs::default(), DEFAULT_CAPACITY);
    let mut out = Output { format: args.format(), services: args.services, stdout: io::stdout().lock() };
    info!(
        libpam = %probes.targets.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","),
        "Streaming login events."
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut records = Vec::with_capacity(256);
    let mut events = Vec::with_capacity(64);
    let mut reported = LostCounts::default();
    let mut evicted_reported = 0;
    loop {
        tokio::select! {
            res = source.next_batch(&mut records) => res.context("reading the ring buffer")?,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        if !process(&mut assembler, &mut records, &mut events, &mut out)? {
            return Ok(());
        }
        report_lost(&source, &assembler, &mut reported, &mut evicted_reported, &mut out)?;
    }
    // Deliver what is already in the ring before exiting.
    source.drain(&mut records);
    process(&mut assembler, &mut records, &mut events, &mut out)?;
    report_lost(&source, &assembler, &mut reported, &mut evicted_reported, &mut out)?;
    if source.decode_errors > 0 {
        warn!(count = source.decode_errors, "Some kernel records could not be decoded.");
    }
    info!("Stopped; probes detached.");
    Ok(())
}

struct Output<W> {
    format: Format,
    services: Vec<String>,
    stdout: W,
}

/// Runs the batch through the assembler and writes the events. Returns false when stdout is gone.
fn process<W: io::Write>(
    assembler: &mut Assembler<procinfo::ProcFs>,
    records: &mut Vec<crate::source::Record>,
    events: &mut Vec<event::LoginEvent>,
    out: &mut Output<W>,
) -> anyhow::Result<bool> {
    for record in records.drain(..) {
        assembler.push(&record, events);
    }
    for e in events.drain(..) {
        let wanted = out.services.is_empty() || e.service.as_ref().is_some_and(|s| out.services.contains(s));
        if wanted && !write_ok(event::write_login(&mut out.stdout, out.format, &e))? {
            return Ok(false);
        }
    }
    write_ok(out.stdout.flush())
}

fn report_lost<W: io::Write>(
    source: &Source,
    assembler: &Assembler<procinfo::ProcFs>,
    reported: &mut LostCounts,
    evicted_reported: &mut u64,
    out: &mut Output<W>,
) -> anyhow::Result<()> {
    let now = source.lost_counts().context("reading the loss counters")?;
    let delta = now.since(reported);
    let evicted = assembler.evicted - *evicted_reported;
    if delta.total() == 0 && evicted == 0 {
        return Ok(());
    }
    *reported = now;
    *evicted_reported = assembler.evicted;
    let lost = LostEvent {
        time: format_time(procinfo::unix_now_ns()),
        event: "events_lost",
        ring_full: delta.ring_full,
        inflight_full: delta.inflight_full,
        handles_full: delta.handles_full,
        read_failed: delta.read_failed,
        no_entry: delta.no_entry,
        session_table_full: evicted,
        lost: delta.total() + evicted,
        total: now.total() + assembler.evicted,
    };
    warn!(lost = lost.lost, total = lost.total, "Events lost; see the events_lost line for causes.");
    write_ok(event::write_lost(&mut out.stdout, out.format, &lost))?;
    write_ok(out.stdout.flush())?;
    Ok(())
}

/// A closed stdout (the reader went away) ends the program quietly; other errors are errors.
fn write_ok(res: io::Result<()>) -> anyhow::Result<bool> {
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}
