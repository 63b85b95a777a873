//! `notifier run`: the daemon. It captures logins like `watch`, then enriches each one (GeoIP, ASN,
//! process ancestry, reverse DNS), classifies it against the allowlists and the learned history,
//! learns from it, and writes it with its verdict and reason to stdout.
//!
//! Order of work per batch of kernel records: assemble events, enrich synchronously, decide and
//! learn under the history lock, persist (fsync) the history, and only then queue the events for
//! output. So a login that was reported is always in the history file, even after `kill -9`.
//! Reverse DNS runs concurrently per event with its own timeout; output stays in order, and no
//! event waits longer than the timeout for a lookup that started when it arrived.

use std::{
    future::Future,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use futures_util::{stream::FuturesOrdered, StreamExt as _};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    alert::{self, dispatch::Dispatcher, Alert, AlertKind},
    config::{self, Config},
    enrich::{
        geo::{Asn, Geo, GeoDb},
        process::{self, Ancestor},
        rdns::Rdns,
    },
    event::{self, escape_text, EventKind, Format, LoginEvent, LostEvent},
    loader,
    metrics::Metrics,
    policy::{self, bruteforce, Decision, Facts, Verdict},
    procinfo, service,
    source::Source,
    state::history::{Sighting, Store},
    watch::{new_capture, write_ok, LossTracker},
};

/// A login event with what the daemon added.
#[derive(Clone, Debug, Serialize)]
pub struct Judged {
    #[serde(flatten)]
    pub login: LoginEvent,
    /// For `session_open`: the policy's verdict; null for other events.
    pub verdict: Option<Verdict>,
    pub reason: Option<String>,
    /// This event would raise an alert.
    pub alert: bool,
    /// Learning period: verdicts are computed but nothing alerts.
    pub learning: bool,
    pub geo: Option<Geo>,
    pub asn: Option<Asn>,
    pub rdns: Option<String>,
    /// For logins without a peer (sudo, su, console): the calling process's parents.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
    /// Authentication failures from the same IP shortly before this login.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures_before: Option<usize>,
}

/// Repeated authentication failures from one IP.
#[derive(Clone, Debug, Serialize)]
pub struct BruteForceEvent {
    pub time: String,
    pub event: &'static str,
    pub ip: IpAddr,
    pub count: usize,
    pub users: Vec<String>,
    pub window_secs: u64,
    pub verdict: Verdict,
    pub alert: bool,
    pub geo: Option<Geo>,
    pub asn: Option<Asn>,
    pub host: String,
}

/// One line of output.
#[derive(Debug)]
pub enum Output {
    Login(Box<Judged>),
    BruteForce(BruteForceEvent),
    Lost(LostEvent),
}

pub fn write(w: &mut impl io::Write, format: Format, out: &Output) -> io::Result<()> {
    match (out, format) {
        (Output::Lost(l), _) => event::write_lost(w, format, l),
        (Output::Login(j), Format::Json) => {
            serde_json::to_writer(&mut *w, j)?;
            w.write_all(b"\n")
        }
        (Output::BruteForce(b), Format::Json) => {
            serde_json::to_writer(&mut *w, b)?;
            w.write_all(b"\n")
        }
        (Output::Login(j), Format::Text) => writeln!(w, "{}", text_line(j)),
        (Output::BruteForce(b), Format::Text) => writeln!(
            w,
            "{} brute_force ip={} failures={} window={}s users={}{}",
            b.time,
            b.ip,
            b.count,
            b.window_secs,
            escape_text(&b.users.join(",")),
            if b.alert { " alert=yes" } else { "" }
        ),
    }
}

fn text_line(j: &Judged) -> String {
    let mut line = event::text_line(&j.login);
    if let Some(country) = j.geo.as_ref().and_then(|g| g.country.as_deref()) {
        line.push_str(&format!(" country={}", escape_text(country)));
    }
    if let Some(asn) = &j.asn {
        line.push_str(&format!(" asn=AS{}", asn.number));
    }
    if let Some(name) = &j.rdns {
        line.push_str(&format!(" rdns={}", escape_text(name)));
    }
    if let Some(n) = j.failures_before {
        line.push_str(&format!(" failures_before={n}"));
    }
    if let Some(v) = j.verdict {
        line.push_str(&format!(" verdict={}", v.as_str()));
        if j.alert {
            line.push_str(" alert=yes");
        }
        if j.learning {
            line.push_str(" learning=yes");
        }
    }
    if let Some(reason) = &j.reason {
        // Last, after " -- ", so that it may keep its spaces.
        line.push_str(" -- ");
        line.push_str(&reason.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>());
    }
    line
}

impl Judged {
    /// The alert for this event.
    pub fn alert(&self) -> Alert {
        let l = &self.login;
        let auth = l.auth.as_ref();
        Alert {
            id: format!("{}-{}", l.session, l.event.as_str()),
            time: l.time.clone(),
            kind: AlertKind::Login,
            verdict: self.verdict,
            host: l.host.clone(),
            user: l.user.clone(),
            service: l.service.clone(),
            ip: l.peer.map(|p| p.ip),
            port: l.peer.and_then(|p| p.port),
            tty: l.tty.clone(),
            method: auth.and_then(|a| a.method.clone()),
            key_type: auth.and_then(|a| a.key_type.clone()),
            fingerprint: auth.and_then(|a| a.fingerprint.clone()),
            country: self.geo.as_ref().and_then(|g| g.country.clone()),
            city: self.geo.as_ref().and_then(|g| g.city.clone()),
            asn: self.asn.as_ref().map(|a| a.number),
            asn_org: self.asn.as_ref().and_then(|a| a.org.clone()),
            rdns: self.rdns.clone(),
            pam_type: Some(
                match l.event {
                    EventKind::SessionOpen => "open_session",
                    EventKind::SessionClose => "close_session",
                    EventKind::AuthSuccess | EventKind::AuthFailure => "auth",
                }
                .into(),
            ),
            reason: self.reason.clone().unwrap_or_default(),
            event: serde_json::to_value(self).unwrap_or_default(),
        }
    }
}

impl BruteForceEvent {
    pub fn alert(&self) -> Alert {
        let mut a = alert::internal_alert(
            AlertKind::BruteForce,
            &self.host,
            format!(
                "{} failed logins from {} within {} s (users tried: {})",
                self.count,
                self.ip,
                self.window_secs,
                self.users.join(", ")
            ),
        );
        a.id = format!("brute-{}-{}", self.ip, self.time);
        a.verdict = Some(Verdict::BruteForce);
        a.ip = Some(self.ip);
        a.time.clone_from(&self.time);
        a.country = self.geo.as_ref().and_then(|g| g.country.clone());
        a.asn = self.asn.as_ref().map(|x| x.number);
        a.event = serde_json::to_value(self).unwrap_or_default();
        a
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file [default: /etc/notifier/notifier.toml, or built-in defaults if it does not exist].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON Lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Loads `--config`, or the default file if it exists, or the defaults.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => {
            let default = Path::new(config::DEFAULT_PATH);
            if default.exists() {
                Ok(Config::load(default)?)
            } else {
                info!(path = config::DEFAULT_PATH, "No config file; using the defaults.");
                Ok(Config::default())
            }
        }
    }
}

fn unix_now() -> i64 {
    (procinfo::unix_now_ns() / 1_000_000_000) as i64
}

type Pending = FuturesOrdered<Pin<Box<dyn Future<Output = Output>>>>;

/// The daemon's state between batches.
struct Daemon {
    config: Config,
    geo: GeoDb,
    rdns: Option<Rdns>,
    store: Store,
    brute: bruteforce::Detector,
    host: String,
    /// The last history save failed (logged once per streak).
    history_failing: bool,
}

impl Daemon {
    /// Enriches, judges, learns and persists one batch of events; returns them in order.
    fn judge(&mut self, events: Vec<LoginEvent>) -> anyhow::Result<Vec<Output>> {
        let now = unix_now();
        let mut judged: Vec<Judged> = events
            .into_iter()
            .filter(|e| {
                self.config.capture.services.is_empty()
                    || e.service.as_ref().is_some_and(|s| self.config.capture.services.contains(s))
            })
            .map(|login| {
                let ip = login.peer.map(|p| p.ip);
                let geo = ip.and_then(|ip| self.geo.geo(ip));
                let asn = ip.and_then(|ip| self.geo.asn(ip));
                let ancestry = match (ip, login.event) {
                    (None, EventKind::SessionOpen | EventKind::AuthSuccess | EventKind::AuthFailure) => {
                        process::ancestry(login.ppid)
                    }
                    _ => Vec::new(),
                };
                Judged {
                    login,
                    verdict: None,
                    reason: None,
                    alert: false,
                    learning: false,
                    geo,
                    asn,
                    rdns: None,
                    ancestry,
                    failures_before: None,
                }
            })
            .collect();

        // Decide and learn under the lock, on the newest history, then persist before output. If
        // the history cannot be written (a full disk), verdicts go on from memory, events still
        // stream, and the failure is logged once until a save succeeds again.
        if judged.iter().any(|j| j.login.event == EventKind::SessionOpen) {
            let policy = &self.config.policy;
            let ((), saved) = self.store.update_or_keep(|history| {
                for j in judged.iter_mut().filter(|j| j.login.event == EventKind::SessionOpen) {
                    let user = j.login.user.as_deref().unwrap_or("");
                    let facts = Facts {
                        user,
                        ip: j.login.peer.map(|p| p.ip),
                        trusted: j.login.trusted,
                        asn: j.asn.as_ref().map(|a| a.number),
                        country: j.geo.as_ref().and_then(|g| g.country.as_deref()),
                        pam_bypassed: j.login.missed_by.contains(&"pam"),
                    };
                    let Decision { verdict, reason, alert, learning } = policy::decide(policy, history, &facts, now);
                    if let (Some(ip), true) = (facts.ip, facts.trusted) {
                        history.record(&Sighting { user, ip, asn: facts.asn, country: facts.country }, now);
                    }
                    (j.verdict, j.reason, j.alert, j.learning) = (Some(verdict), Some(reason), alert, learning);
                }
                history.expire(now, policy.expire_days);
            });
            match (saved, self.history_failing) {
                (Ok(()), true) => {
                    self.history_failing = false;
                    info!(history = %self.store.path().display(), "The login history is saved again.");
                }
                (Err(e), false) => {
                    self.history_failing = true;
                    warn!(
                        "Cannot save the login history ({e}); events still stream and verdicts use what is \
                         known, and what is learned meanwhile is saved once this is fixed (is the disk full?)"
                    );
                }
                _ => {}
            }
        }

        let mut out = Vec::with_capacity(judged.len());
        for mut j in judged {
            let ip = j.login.peer.map(|p| p.ip).filter(|_| j.login.trusted);
            let ts_ms = now * 1000;
            let mut attack = None;
            match (j.login.event, ip) {
                (EventKind::AuthFailure, Some(ip)) => {
                    attack = self.brute.failure(ip, j.login.user.as_deref(), ts_ms);
                }
                (EventKind::SessionOpen, Some(ip)) => {
                    let n = self.brute.success(ip, ts_ms);
                    j.failures_before = (n > 0).then_some(n);
                }
                _ => {}
            }
            let time = j.login.time.clone();
            out.push(Output::Login(Box::new(j)));
            if let Some(a) = attack {
                out.push(Output::BruteForce(BruteForceEvent {
                    time,
                    event: "brute_force",
                    geo: self.geo.geo(a.ip),
                    asn: self.geo.asn(a.ip),
                    ip: a.ip,
                    count: a.count,
                    users: a.users,
                    window_secs: self.config.brute_force.window_secs,
                    verdict: Verdict::BruteForce,
                    alert: self.config.policy.alert_on.contains(&Verdict::BruteForce),
                    host: self.host.clone(),
                }));
            }
        }
        Ok(out)
    }

    /// Queues an output, with a reverse-DNS lookup first when one is due.
    fn queue(&self, pending: &mut Pending, out: Output) {
        match (out, &self.rdns) {
            (Output::Login(mut j), Some(rdns)) if j.login.peer.is_some() => {
                let rdns = rdns.clone();
                let ip = j.login.peer.map(|p| p.ip);
                pending.push_back(Box::pin(async move {
                    if let Some(ip) = ip {
                        j.rdns = rdns.lookup(ip).await;
                    }
                    Output::Login(j)
                }));
            }
            (out, _) => pending.push_back(Box::pin(std::future::ready(out))),
        }
    }
}

impl Daemon {
    /// Applies the config at `path` again (SIGHUP). Everything that can fail is built before
    /// anything is swapped, so a bad config leaves the running one untouched. The probes stay
    /// attached throughout: events that arrive meanwhile wait in the ring buffer.
    fn reload(
        &mut self,
        path: Option<&Path>,
        dispatcher: &mut Dispatcher,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<()> {
        let mut new = load_config(path)?;
        let geo = GeoDb::open(&new.geoip)?;
        // What cannot change while running keeps its old value, with a warning.
        let fixed = [
            ("state_dir", new.state_dir != self.config.state_dir),
            ("host", new.host != self.config.host),
            ("capture.libpam", new.capture.libpam != self.config.capture.libpam),
            ("capture.sshd", new.capture.sshd != self.config.capture.sshd),
            ("capture.sshd_witness", new.capture.sshd_witness != self.config.capture.sshd_witness),
            ("metrics", new.metrics != self.config.metrics),
        ];
        for (key, _) in fixed.iter().filter(|(_, changed)| *changed) {
            warn!(key, "This setting changed, but takes effect only after a restart (systemctl restart notifier).");
        }
        new.state_dir.clone_from(&self.config.state_dir);
        new.host.clone_from(&self.config.host);
        new.capture.libpam.clone_from(&self.config.capture.libpam);
        new.capture.sshd.clone_from(&self.config.capture.sshd);
        new.capture.sshd_witness = self.config.capture.sshd_witness;
        new.metrics = self.config.metrics;
        if new.sinks != self.config.sinks || new.alerts != self.config.alerts {
            // On this single-threaded runtime the new tasks first run after this returns, when
            // the old ones are already aborted; they then load what the old ones left spooled.
            let fresh = Dispatcher::start(&new.sinks, &new.alerts, &new.state_dir, self.host.clone(), metrics.clone())?;
            std::mem::replace(dispatcher, fresh).abort();
        }
        if new.rdns != self.config.rdns {
            self.rdns = Rdns::new(&new.rdns);
        }
        if new.brute_force != self.config.brute_force {
            self.brute = bruteforce::Detector::new(new.brute_force.failures, new.brute_force.window_secs);
        }
        self.geo = geo;
        self.config = new;
        Ok(())
    }
}

/// Counts what is about to be written.
fn count(metrics: &Metrics, out: &Output) {
    match out {
        Output::Login(j) => {
            metrics.event(j.login.event.as_str());
            if let Some(v) = j.verdict {
                metrics.verdict(v.as_str());
            }
        }
        Output::BruteForce(b) => {
            metrics.event(b.event);
            metrics.verdict(b.verdict.as_str());
        }
        Output::Lost(l) => metrics.lost(l),
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let format = if args.json { Format::Json } else { Format::Text };
    let config = load_config(args.config.as_deref())?;
    let geo = GeoDb::open(&config.geoip)?;
    if geo.is_empty() {
        info!("GeoIP enrichment is off: no geoip.country_db or geoip.asn_db in the config.");
    }
    let store = Store::open(&config.state_dir, unix_now())?;
    let metrics = Arc::new(Metrics::default());
    metrics.lost(&LostEvent::default());
    if config.metrics.enabled {
        crate::metrics::serve(config.metrics.listen, metrics.clone(), config.state_dir.join("spool")).await?;
    }
    let mut ctx = procinfo::host_context();
    if let Some(host) = &config.host {
        ctx.host.clone_from(host);
    }
    let mut daemon = Daemon {
        rdns: Rdns::new(&config.rdns),
        brute: bruteforce::Detector::new(config.brute_force.failures, config.brute_force.window_secs),
        host: ctx.host.clone(),
        geo,
        store,
        config,
        history_failing: false,
    };
    let mut dispatcher = Dispatcher::start(
        &daemon.config.sinks,
        &daemon.config.alerts,
        &daemon.config.state_dir,
        daemon.host.clone(),
        metrics.clone(),
    )?;
    if dispatcher.is_empty() {
        info!("No [[sink]] configured: alerts are only marked in the output.");
    }
    let mut probes = match loader::load(&daemon.config.capture.targets()) {
        Ok(p) => p,
        Err(e) => {
            if daemon.config.alerts.health_attach && !dispatcher.is_empty() {
                let text = format!("notifier could not start watching logins: {e}");
                dispatcher.submit(alert::internal_alert(AlertKind::Health, &daemon.host, text));
                dispatcher.shutdown(Duration::from_secs(10)).await;
            }
            return Err(e.into());
        }
    };
    for (path, n) in &probes.attached {
        metrics.attached(path, *n);
    }
    let mut source = Source::new(&mut probes)?;
    let mut capture = new_capture(&probes, ctx);
    info!(history = %daemon.store.path().display(), "Streaming login events.");

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    service::ready("watching PAM logins");
    // Only under systemd with WatchdogSec=: no timer otherwise, so an idle daemon never wakes.
    let mut watchdog = service::watchdog_interval().map(tokio::time::interval);
    let mut stdout = io::stdout().lock();
    let mut records = Vec::with_capacity(256);
    let mut pending: Pending = FuturesOrdered::new();
    let mut losses = LossTracker::default();
    let mut stopping = false;
    let mut failing_reported = std::collections::BTreeSet::new();
    // Loss can go on for a while: at most one health alert about it per cooldown.
    let mut loss_alerted: Option<std::time::Instant> = None;
    let mut libpam = loader::watch_libpam(&probes);
    let mut records_counted = 0;
    let mut events = Vec::new();
    while !stopping || !pending.is_empty() {
        let summary_due = dispatcher.summary_due();
        let capture_due = capture.next_deadline();
        let health = &daemon.config.alerts;
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(capture_due.unwrap_or_else(std::time::Instant::now).into()), if capture_due.is_some() => {
                capture.tick(procinfo::boot_now_ns(), &mut events);
            }
            _ = async { watchdog.as_mut()?.tick().await; Some(()) }, if watchdog.is_some() => {
                service::watchdog();
                continue;
            }
            _ = tokio::time::sleep_until(summary_due.unwrap_or_else(std::time::Instant::now).into()), if summary_due.is_some() => {
                dispatcher.roll();
                continue;
            }
            Some(path) = loader::next_replaced(&mut libpam) => {
                let text = loader::handle_replaced(&mut probes, &path);
                for (path, n) in &probes.attached {
                    metrics.attached(path, *n);
                }
                if health.health_attach {
                    dispatcher.submit(alert::internal_alert(AlertKind::Health, &daemon.host, text));
                }
                continue;
            }
            Some(h) = dispatcher.health.recv() => {
                let threshold = health.health_sink_failing;
                if !threshold.is_zero() && h.failing_for >= threshold && failing_reported.insert(h.sink.clone()) {
                    let text = format!("alert sink {} has been failing for {} s: {}", h.sink, h.failing_for.as_secs(), h.last_error);
                    dispatcher.submit(alert::internal_alert(AlertKind::Health, &daemon.host, text));
                }
                continue;
            }
            Some(out) = pending.next(), if !pending.is_empty() => {
                if !write_ok(write(&mut stdout, format, &out).and_then(|()| io::Write::flush(&mut stdout)))? {
                    return Ok(());
                }
                continue;
            }
            _ = sighup.recv(), if !stopping => {
                service::reloading();
                match daemon.reload(args.config.as_deref(), &mut dispatcher, &metrics) {
                    Ok(()) => {
                        metrics.reload(true);
                        info!("Config reloaded.");
                    }
                    Err(e) => {
                        metrics.reload(false);
                        warn!("Config reload failed; still running on the previous config: {e:#}");
                    }
                }
                service::ready("watching PAM logins");
                continue;
            }
            res = source.next_batch(&mut records), if !stopping => res.context("reading the ring buffer")?,
            _ = sigterm.recv(), if !stopping => { stopping = true; source.drain(&mut records); }
            _ = sigint.recv(), if !stopping => { stopping = true; source.drain(&mut records); }
        }
        if stopping {
            service::stopping();
        }
        metrics.records.inc_by(source.records - records_counted);
        records_counted = source.records;
        for record in records.drain(..) {
            capture.push(&record, &mut events);
        }
        if stopping {
            capture.tick(u64::MAX, &mut events);
        }
        for out in daemon.judge(std::mem::take(&mut events))? {
            match &out {
                Output::Login(j) if j.alert => dispatcher.submit(j.alert()),
                Output::BruteForce(b) if b.alert => dispatcher.submit(b.alert()),
                _ => {}
            }
            count(&metrics, &out);
            daemon.queue(&mut pending, out);
        }
        if let Some(lost) = losses.check(&source, capture.evicted())? {
            let health = &daemon.config.alerts;
            let quiet = loss_alerted.is_none_or(|at| at.elapsed() >= health.cooldown);
            if health.health_events_lost && quiet {
                loss_alerted = Some(std::time::Instant::now());
                let text = format!(
                    "{} login event(s) were lost in the kernel or the session table ({} in all)",
                    lost.lost, lost.total
                );
                dispatcher.submit(alert::internal_alert(AlertKind::Health, &daemon.host, text));
            }
            let out = Output::Lost(lost);
            count(&metrics, &out);
            daemon.queue(&mut pending, out);
        }
    }
    if daemon.config.alerts.health_stopping {
        dispatcher.submit(alert::internal_alert(
            AlertKind::Health,
            &daemon.host,
            "notifier is stopping: logins are no longer watched".into(),
        ));
    }
    // Give pending alerts a moment; what is left stays spooled for the next start.
    dispatcher.shutdown(Duration::from_secs(5)).await;
    if source.decode_errors > 0 {
        warn!(count = source.decode_errors, "Some kernel records could not be decoded.");
    }
    drop(source);
    drop(probes);
    info!("Stopped; probes detached.");
    Ok(())
}
