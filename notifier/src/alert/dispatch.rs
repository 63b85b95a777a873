//! The dispatcher: filters alerts by each sink's `when`, applies the rate limits, writes each alert
//! to the spool of every sink that takes it, and wakes that sink's task. Submitting never waits for
//! the network: the daemon's event loop calls it between batches.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tracing::warn;

use super::{
    ratelimit::{self, Limiter},
    sink::{BuildError, Sink},
    spool::{self, now_ms, Entry, Job, RetryPolicy, SinkHealth, Spool},
    Alert, AlertKind,
};
use crate::{
    config::{
        sink::{RawSink, When},
        Alerts,
    },
    metrics::Metrics,
};

struct Handle {
    name: String,
    when: When,
    spool: Spool,
    tx: mpsc::Sender<Job>,
}

pub struct Dispatcher {
    sinks: Vec<Handle>,
    limiter: Limiter,
    per_minute: u32,
    host: String,
    /// Reports from sink tasks about failing deliveries.
    pub health: mpsc::UnboundedReceiver<SinkHealth>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    metrics: Arc<Metrics>,
    /// The last spool write failed (logged once per streak).
    spool_failing: bool,
}

/// The HTTP client shared by the HTTP sinks. It follows no redirect: a 301 or 302 would turn the
/// POST into a GET without its body (and drop `Authorization`), and the page it lands on would
/// count as delivered; the sink reports the redirect instead.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    client_builder().build().context("building the HTTP client")
}

/// The settings every HTTP sink's client shares: no redirects, bounded waits, and only the
/// bundled Mozilla roots unless a sink asks for more.
fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("notifier/", env!("CARGO_PKG_VERSION")))
        .tls_built_in_native_certs(false)
}

/// A client for a sink behind a private CA: the roots in the PEM file `ca_file` (one or more
/// certificates), and with `system_ca` the system's store, besides the bundled roots.
pub fn http_client_with_roots(ca_file: Option<&Path>, system_ca: bool) -> Result<reqwest::Client, BuildError> {
    let mut builder = client_builder().tls_built_in_native_certs(system_ca);
    if let Some(path) = ca_file {
        let invalid = |reason: String| BuildError::Invalid { key: "ca_file", reason };
        let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| invalid(format!("{} holds no PEM certificate: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(invalid(format!("{} holds no PEM certificate", path.display())));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| BuildError::Invalid { key: "ca_file", reason: format!("building the HTTP client: {e}") })
}

impl Dispatcher {
    /// Builds every sink and starts its delivery task (which first delivers what a previous run
    /// left in its spool). Every sink is built before any task starts, so an error leaves nothing
    /// running.
    pub fn start(
        sinks: &[RawSink],
        alerts: &Alerts,
        state_dir: &Path,
        host: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let client = http_client()?;
        let policy =
            RetryPolicy { initial: alerts.retry_initial, max_delay: alerts.retry_max, max_age: alerts.max_age };
        let mut built = Vec::new();
        for raw in sinks {
            let sink = Sink::build(raw, &client).map_err(|e| anyhow::anyhow!("sink {:?}: {e}", raw.name))?;
            let spool = Spool::open(state_dir, &raw.name)
                .with_context(|| format!("opening the spool of sink {:?}", raw.name))?;
            built.push((raw, sink, spool));
        }
        let (health_tx, health) = mpsc::unbounded_channel();
        let mut handles = Vec::new();
        let mut tasks = Vec::new();
        for (raw, sink, spool) in built {
            let (tx, rx) = mpsc::channel(1024);
            tasks.push(tokio::spawn(spool::deliver(
                raw.name.clone(),
                Arc::new(sink),
                spool.clone(),
                policy,
                rx,
                health_tx.clone(),
                metrics.clone(),
            )));
            handles.push(Handle { name: raw.name.clone(), when: raw.when.clone(), spool, tx });
        }
        Ok(Self {
            sinks: handles,
            limiter: Limiter::new(alerts.cooldown, alerts.max_per_minute, Instant::now()),
            per_minute: alerts.max_per_minute,
            host,
            health,
            tasks,
            metrics,
            spool_failing: false,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Rate-limits, spools and hands `alert` to every sink that takes it.
    pub fn submit(&mut self, alert: Alert) {
        if self.sinks.is_empty() {
            return;
        }
        match self.limiter.check(&alert, Instant::now()) {
            ratelimit::Verdict::Send => {}
            held => {
                self.metrics.alerts_held.inc();
                tracing::debug!(alert = %alert.id, ?held, "Alert held back by the rate limit; it will be summarised.");
                return;
            }
        }
        let now = now_ms();
        for sink in
            self.sinks.iter().filter(|s| s.when.matches(alert.verdict, alert.service.as_deref(), alert.user.as_deref()))
        {
            let entry = Entry { alert: alert.clone(), attempts: 0, spooled_ms: now, next_ms: now, last_error: None };
            match sink.spool.put(&entry) {
                Ok(()) if self.spool_failing => {
                    self.spool_failing = false;
                    tracing::info!("Alerts are written to the spool again.");
                }
                Err(e) if !self.spool_failing => {
                    self.spool_failing = true;
                    warn!(sink = %sink.name, error = %e, "Cannot write alerts to the spool; delivering them from memory until it works again (is the disk full?).");
                }
                _ => {}
            }
            if sink.tx.try_send(Job::Deliver(Box::new(entry))).is_err() {
                warn!(sink = %sink.name, "Sink queue full; the alert stays in the spool and is sent after the next restart or SIGUSR1.");
            }
        }
    }

    /// The sinks' names, in the config's order.
    pub fn sink_names(&self) -> impl Iterator<Item = &str> {
        self.sinks.iter().map(|s| s.name.as_str())
    }

    /// SIGUSR1: every sink's task takes up what was put in its spool from outside (`notifier spool
    /// retry`) and tries every pending alert now, without waiting out its backoff.
    pub fn rescan(&self) {
        for sink in &self.sinks {
            if sink.tx.try_send(Job::Rescan).is_err() {
                warn!(sink = %sink.name, "Sink queue full; the spool is not looked at again this time.");
            }
        }
    }

    /// When the rate-limit summary is due, if anything was held.
    pub fn summary_due(&self) -> Option<Instant> {
        self.limiter.summary_due()
    }

    /// Sends the summary of what was held back, if the window is over.
    pub fn roll(&mut self) {
        if let Some(held) = self.limiter.roll(Instant::now()) {
            let text = ratelimit::summary_text(&held, self.per_minute);
            warn!(held = held.total(), "Alerts were held back by the rate limit; sending a summary.");
            let alert = super::internal_alert(AlertKind::Summary, &self.host, text);
            self.submit(alert);
        }
    }

    /// Stops taking alerts and gives the sinks `grace` to deliver what is pending; the rest stays
    /// in the spools for the next start.
    pub async fn shutdown(self, grace: Duration) {
        drop(self.sinks);
        let aborts: Vec<_> = self.tasks.iter().map(|t| t.abort_handle()).collect();
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }

    /// Stops every delivery task at once (on a config reload). What they had not delivered is in
    /// the spool, where the next dispatcher finds it; a send cut off mid-way may be repeated,
    /// which the idempotency key covers.
    pub fn abort(self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}
