//! The one event loop, shared by `watch` and `run`:
//!
//! ```text
//! kernel -> source -> capture -> [service filter] -> enrich -> policy -> alert
//!                                                                     -> output (stdout)
//! ```
//!
//! `watch` is this pipeline without enrich, policy and alert ([`Daemon`] absent). Every stage is
//! called through its named entry point in [`Pipeline::process`]; signals (stop, SIGHUP reload),
//! timers (capture's holds, the alert summary, the systemd watchdog), a replaced libpam, sink
//! health and loss reports are handled here and nowhere else.

mod daemon;
mod loss;
pub mod status;

use std::time::Instant;

use anyhow::Context as _;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};

pub use daemon::Daemon;
use loss::LossTracker;

use crate::{
    alert, capture, clock,
    event::{Format, LoginEvent},
    fleet::Share,
    loader::{self, Probes},
    output::{Output, Stdout},
    policy::Judgement,
    procinfo::HostContext,
    service,
    source::{RecordKind, Source},
};

/// What runs after capture.
pub struct Pipeline {
    /// `watch --service`: only these PAM services (empty: all). `run` reads `capture.services`.
    services: Vec<String>,
    daemon: Option<Daemon>,
    stdout: Stdout,
}

impl Pipeline {
    /// `watch`: capture and output only.
    pub fn watch(format: Format, services: Vec<String>) -> Self {
        Self { services, daemon: None, stdout: Stdout::new(format) }
    }

    /// `run`: every stage.
    pub fn run(format: Format, daemon: Daemon) -> Self {
        Self { services: Vec::new(), daemon: Some(daemon), stdout: Stdout::new(format) }
    }

    fn wanted(&self, e: &LoginEvent) -> bool {
        let services = self.daemon.as_ref().map_or(&self.services, |d| &d.config.capture.services);
        services.is_empty() || e.service.as_ref().is_some_and(|s| services.contains(s))
    }

    /// The chain, for one batch of captured events: filter, enrich, judge, settle with the fleet,
    /// alert, output. False when stdout was closed.
    async fn process(&mut self, events: &mut Vec<LoginEvent>) -> anyhow::Result<bool> {
        let mut events = std::mem::take(events);
        events.retain(|e| self.wanted(e));
        let Some(d) = &mut self.daemon else {
            for e in events {
                if !self.stdout.emit(Output::Captured(Box::new(e)), None)? {
                    return Ok(false);
                }
            }
            return Ok(true);
        };
        let enriched = events.into_iter().map(|e| d.enricher.enrich(e)).collect();
        let mut shared = Vec::new();
        for mut judgement in d.judge.judge(enriched, clock::unix_now()) {
            let ticket = match (&d.fleet, &mut judgement) {
                (Some(f), Judgement::Login(j)) => f.settle(j, &d.judge.policy.alert_on).await,
                _ => None,
            };
            if let Some(a) = alert::for_judgement(&judgement) {
                d.dispatcher.submit(a);
            }
            if let Some(f) = &d.fleet {
                if let Some(t) = ticket {
                    f.after_alert(t);
                }
                shared.push(Share::Judged(&judgement).event(&d.host));
            }
            count(d, &judgement);
            d.tracker.judged(&judgement);
            if !self.stdout.emit(Output::Judged(judgement), d.rdns.as_ref())? {
                return Ok(false);
            }
        }
        if let Some(f) = &d.fleet {
            f.publish_events(shared);
        }
        Ok(true)
    }

    /// Streams events until SIGINT or SIGTERM, or until stdout is closed. What is already in the
    /// ring when a stop is asked for is delivered first.
    pub async fn run_until_stopped(mut self, mut probes: Probes, ctx: HostContext) -> anyhow::Result<()> {
        let mut source = Source::new(&mut probes)?;
        let mut capture = capture::live(ctx, probes.sshd.ids.clone());
        if let Some(d) = &mut self.daemon {
            d.attached(&probes);
        }
        let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        // Only `run` reloads (SIGHUP) and retries its spool (SIGUSR1); `watch` keeps their
        // defaults (a closed terminal ends it).
        let (mut sighup, mut sigusr1): (Option<Signal>, Option<Signal>) = match self.daemon {
            Some(_) => (
                Some(signal(SignalKind::hangup()).context("installing the SIGHUP handler")?),
                Some(signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?),
            ),
            None => (None, None),
        };
        // Said only now that a SIGTERM stops it cleanly (the handlers are in place).
        info!(
            libpam = %probes.targets.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","),
            "Streaming login events."
        );
        service::ready("watching PAM logins");
        // Only under systemd with WatchdogSec=: no timer otherwise, so an idle daemon never wakes.
        let mut watchdog = service::watchdog_interval().map(tokio::time::interval);
        let mut libpam = loader::watch_libpam(&probes);
        let mut records = Vec::with_capacity(256);
        let mut events = Vec::with_capacity(64);
        let mut losses = LossTracker::default();
        let mut records_counted = 0;
        let mut stopping = false;
        while !stopping || self.stdout.has_pending() {
            let capture_due = capture.next_deadline();
            let loss_due = losses.due();
            let summary_due = self.daemon.as_ref().and_then(|d| d.dispatcher.summary_due());
            let status_due = self.daemon.as_ref().and_then(|d| d.tracker.due());
            // Disjoint borrows for the branches below (an async block would borrow all of `self`).
            let (daemon, stdout) = (&mut self.daemon, &mut self.stdout);
            tokio::select! {
                biased;
                _ = sleep_until(capture_due), if capture_due.is_some() => {
                    capture.tick(clock::boot_now_ns(), &mut events);
                }
                _ = async { watchdog.as_mut()?.tick().await; Some(()) }, if watchdog.is_some() => {
                    service::watchdog();
                    continue;
                }
                _ = sleep_until(loss_due), if loss_due.is_some() => {}
                _ = sleep_until(summary_due), if summary_due.is_some() => {
                    if let Some(d) = daemon.as_mut() {
                        d.dispatcher.roll();
                    }
                    continue;
                }
                _ = sleep_until(status_due), if status_due.is_some() => {
                    if let Some(d) = daemon.as_mut() {
                        d.tracker.write(&d.metrics);
                    }
                    continue;
                }
                Some(path) = loader::next_replaced(&mut libpam) => {
                    let text = loader::handle_replaced(&mut probes, &path);
                    if let Some(d) = daemon.as_mut() {
                        d.reattached(&probes, text);
                    }
                    continue;
                }
                Some(report) = async { daemon.as_mut()?.next_report().await } => {
                    if let Some(d) = daemon.as_mut() {
                        d.report(report);
                    }
                    continue;
                }
                Some(out) = stdout.next_ready(), if stdout.has_pending() => {
                    if !(stdout.write_ready(&out)? && stdout.flush()?) {
                        return Ok(());
                    }
                    continue;
                }
                Some(()) = async { sighup.as_mut()?.recv().await }, if !stopping => {
                    service::reloading();
                    if let Some(d) = daemon.as_mut() {
                        d.reload();
                    }
                    service::ready("watching PAM logins");
                    continue;
                }
                Some(()) = async { sigusr1.as_mut()?.recv().await }, if !stopping => {
                    if let Some(d) = daemon.as_mut() {
                        d.dispatcher.rescan();
                    }
                    continue;
                }
                res = source.next_batch(&mut records), if !stopping => res.context("reading the ring buffer")?,
                _ = sigterm.recv(), if !stopping => stopping = true,
                _ = sigint.recv(), if !stopping => stopping = true,
            }
            if stopping {
                service::stopping();
                // Deliver what is already in the ring before exiting.
                source.drain(&mut records);
            }
            if let Some(d) = &self.daemon {
                d.metrics.records.inc_by(source.records - records_counted);
            }
            records_counted = source.records;
            for record in records.drain(..) {
                if record.kind == RecordKind::NewMountNs {
                    // A container started: its libpam and sshd are attached before its logins.
                    if let Some(added) = loader::attach_root(&mut probes, record.tgid()) {
                        capture.add_sshd_ids(&added.sshd_ids);
                        if let Some(d) = &mut self.daemon {
                            d.attached(&probes);
                        }
                    }
                    continue;
                }
                capture.push(&record, &mut events);
            }
            if stopping {
                capture.tick(u64::MAX, &mut events);
            }
            if !self.process(&mut events).await? {
                return Ok(());
            }
            if let Some(lost) = losses.check(&source, capture.evicted(), stopping)? {
                if let Some(d) = &mut self.daemon {
                    d.lost(&lost);
                    d.metrics.lost(&lost);
                    if let Some(f) = &d.fleet {
                        f.publish(&[Share::Lost(&lost)]);
                    }
                }
                if !self.stdout.emit(Output::Lost(lost), None)? {
                    return Ok(());
                }
            }
            if !self.stdout.flush()? {
                return Ok(());
            }
        }
        if let Some(d) = self.daemon {
            d.stop().await;
        }
        if source.decode_errors > 0 {
            warn!(count = source.decode_errors, "Some kernel records could not be decoded.");
        }
        drop(source);
        drop(probes);
        info!("Stopped; probes detached.");
        Ok(())
    }
}

/// Sleeps until `at` (a branch guard keeps `None` from being polled).
async fn sleep_until(at: Option<Instant>) {
    tokio::time::sleep_until(at.unwrap_or_else(Instant::now).into()).await;
}

/// Counts what is about to be written.
fn count(d: &Daemon, j: &Judgement) {
    match j {
        Judgement::Login(j) => {
            d.metrics.event(j.login.event.as_str());
            if let Some(v) = j.verdict {
                d.metrics.verdict(v.as_str());
            }
        }
        Judgement::BruteForce(b) => {
            d.metrics.event(b.event);
            d.metrics.verdict(b.verdict.as_str());
        }
    }
}
