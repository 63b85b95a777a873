//! Prometheus metrics of the daemon, and the optional endpoint that serves them (`[metrics]` in the
//! config; bound to 127.0.0.1 by default). The counters are updated where the work happens; the
//! endpoint only encodes them, so a scrape never touches the event path.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use http_body_util::Full;
use hyper::{body::Bytes, header, Request, Response, StatusCode};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tracing::{debug, info};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LibpamLabel {
    pub libpam: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// Every metric the daemon keeps. Cheap to clone (each metric is an `Arc` inside).
#[derive(Clone, Default)]
pub struct Metrics {
    pub events: Family<EventLabel, Counter>,
    pub events_lost: Family<CauseLabel, Counter>,
    pub records: Counter,
    pub verdicts: Family<VerdictLabel, Counter>,
    pub alerts_sent: Family<SinkLabel, Counter>,
    pub alerts_failed: Family<SinkLabel, Counter>,
    pub alerts_dead: Family<SinkLabel, Counter>,
    pub alerts_pending: Family<SinkLabel, Gauge>,
    pub alerts_held: Counter,
    pub spool_depth: Gauge,
    pub probes_attached: Family<LibpamLabel, Gauge>,
    pub reloads: Family<ResultLabel, Counter>,
    pub fleet: FleetMetrics,
}

/// Fleet mode's own figures (all zero without `[fleet]`).
#[derive(Clone, Default)]
pub struct FleetMetrics {
    pub connected: Gauge,
    pub outbox_events: Gauge,
    pub outbox_dropped: Counter,
    pub published: Counter,
    /// Claims by result: won, lost, offline.
    pub claims: Family<ResultLabel, Counter>,
    pub mirror_keys: Gauge,
    pub mirror_revision: Gauge,
    /// Bucket changes not yet applied to the mirror.
    pub mirror_lag: Gauge,
}

impl FleetMetrics {
    pub fn claim(&self, result: &str) {
        self.claims.get_or_create(&ResultLabel { result: result.into() }).inc();
    }
}

impl Metrics {
    pub fn event(&self, event: &str) {
        self.events.get_or_create(&EventLabel { event: event.into() }).inc();
    }

    /// Adds the losses of one `events_lost` report, by cause.
    pub fn lost(&self, l: &crate::event::LostEvent) {
        for (cause, n) in [
            ("ring_full", l.ring_full),
            ("inflight_full", l.inflight_full),
            ("handles_full", l.handles_full),
            ("read_failed", l.read_failed),
            ("no_entry", l.no_entry),
            ("session_table_full", l.session_table_full),
            ("budget", l.budget),
        ] {
            // Every cause is exposed, at zero too, so that a query never finds it missing.
            self.events_lost.get_or_create(&CauseLabel { cause: cause.into() }).inc_by(n);
        }
    }

    pub fn verdict(&self, verdict: &str) {
        self.verdicts.get_or_create(&VerdictLabel { verdict: verdict.into() }).inc();
    }

    pub fn sink(family: &Family<SinkLabel, Counter>, sink: &str) {
        family.get_or_create(&SinkLabel { sink: sink.into() }).inc();
    }

    pub fn pending(&self, sink: &str, n: usize) {
        self.alerts_pending.get_or_create(&SinkLabel { sink: sink.into() }).set(n as i64);
    }

    /// The alerts waiting in the spool of `sink`, as its task last counted them.
    pub fn pending_of(&self, sink: &str) -> usize {
        usize::try_from(self.alerts_pending.get_or_create(&SinkLabel { sink: sink.into() }).get()).unwrap_or(0)
    }

    pub fn attached(&self, libpam: &Path, probes: usize) {
        self.probes_attached.get_or_create(&LibpamLabel { libpam: libpam.display().to_string() }).set(probes as i64);
    }

    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabel { result: if ok { "ok" } else { "failed" }.into() }).inc();
    }

    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("notifier");
        r.register("events", "Login events reported, by kind", self.events.clone());
        r.register(
            "events_lost",
            "Records lost in the kernel, or sessions evicted from the table, by cause",
            self.events_lost.clone(),
        );
        r.register("kernel_records", "Records read from the kernel's ring buffer", self.records.clone());
        r.register("verdicts", "Verdicts on session_open events", self.verdicts.clone());
        r.register("alerts_sent", "Alerts delivered, per sink", self.alerts_sent.clone());
        r.register("alerts_failed", "Failed delivery attempts, per sink", self.alerts_failed.clone());
        r.register("alerts_dead_lettered", "Alerts moved to the dead-letter file, per sink", self.alerts_dead.clone());
        r.register("alerts_pending", "Alerts waiting for delivery, per sink", self.alerts_pending.clone());
        r.register("alerts_held", "Alerts held back by the rate limit", self.alerts_held.clone());
        r.register("spool_depth", "Alert files in the spool, all sinks", self.spool_depth.clone());
        r.register("probes_attached", "Uprobes attached, per libpam file", self.probes_attached.clone());
        r.register("config_reloads", "Config reloads (SIGHUP), by result", self.reloads.clone());
        let f = &self.fleet;
        r.register("fleet_connected", "1 while connected to a fleet server", f.connected.clone());
        r.register("fleet_outbox_events", "Events in the fleet outbox, not yet acknowledged", f.outbox_events.clone());
        r.register("fleet_outbox_dropped", "Events dropped from the full fleet outbox", f.outbox_dropped.clone());
        r.register("fleet_published", "Events acknowledged by the fleet stream", f.published.clone());
        r.register("fleet_claims", "Fleet history claims, by result (won, lost, offline)", f.claims.clone());
        r.register("fleet_mirror_keys", "Keys in the local mirror of the fleet history", f.mirror_keys.clone());
        r.register(
            "fleet_mirror_revision",
            "Fleet history revision the mirror is current to",
            f.mirror_revision.clone(),
        );
        r.register("fleet_mirror_lag", "Fleet history changes not yet in the mirror", f.mirror_lag.clone());
        r
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }
}

/// Connections served at once; one more is closed as soon as it is accepted.
const MAX_CONNECTIONS: usize = 32;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// And be done within this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds `listen` now (so a taken port is a start-up error) and serves `GET /metrics` from a task.
/// Idle or slow clients cannot hold it, or the daemon's file descriptors: at most
/// [`MAX_CONNECTIONS`] are open, each must send its headers within [`HEADER_TIMEOUT`], and an
/// accept error (out of descriptors) backs off instead of spinning. A scrape counts the spool on
/// the blocking pool, never on the event loop's thread.
pub async fn serve(listen: SocketAddr, metrics: Arc<Metrics>, state_dir: PathBuf) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("metrics.listen = \"{listen}\": cannot listen there ({e}); choose a free address and port, or set metrics.enabled = false")
    })?;
    info!(address = %listen, "Serving Prometheus metrics at /metrics.");
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut backoff = Duration::from_millis(10);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(10);
                    stream
                }
                Err(e) => {
                    debug!(error = %e, "Accepting a metrics connection failed; backing off.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!("Too many metrics connections; closing the newest.");
                continue;
            };
            let (metrics, state_dir) = (metrics.clone(), state_dir.clone());
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, state_dir) = (metrics.clone(), state_dir.clone());
                async move { Ok::<_, Infallible>(respond(&req, &metrics, state_dir).await) }
            });
            tokio::spawn(async move {
                let _slot = slot;
                let io = hyper_util::rt::TokioIo::new(stream);
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(io, service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Err(e)) => debug!(error = %e, "Metrics connection ended with an error."),
                    Err(_) => debug!("Metrics connection took too long; closed."),
                    Ok(Ok(())) => {}
                }
            });
        }
    });
    Ok(())
}

async fn respond(req: &Request<hyper::body::Incoming>, metrics: &Metrics, state_dir: PathBuf) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
        r
    };
    match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            let pending = tokio::task::spawn_blocking(move || crate::state::spool::pending(&state_dir));
            if let Ok(n) = pending.await {
                metrics.spool_depth.set(n as i64);
            }
            reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode())
        }
        (&hyper::Method::GET, _) => reply(StatusCode::NOT_FOUND, "text/plain", "not found; try /metrics\n".into()),
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_with_labels() {
        let m = Metrics::default();
        m.event("session_open");
        m.event("session_open");
        m.verdict("first_login");
        Metrics::sink(&m.alerts_sent, "webhook:ops");
        m.attached(Path::new("/lib/x86_64-linux-gnu/libpam.so.0"), 12);
        m.lost(&crate::event::LostEvent { ring_full: 3, lost: 3, ..Default::default() });
        let text = m.encode();
        assert!(text.contains("notifier_events_total{event=\"session_open\"} 2\n"), "{text}");
        assert!(text.contains("notifier_verdicts_total{verdict=\"first_login\"} 1\n"), "{text}");
        assert!(text.contains("notifier_alerts_sent_total{sink=\"webhook:ops\"} 1\n"), "{text}");
        assert!(text.contains("notifier_events_lost_total{cause=\"ring_full\"} 3\n"), "{text}");
        assert!(text.contains("notifier_events_lost_total{cause=\"no_entry\"} 0\n"), "{text}");
        assert!(text.contains("notifier_probes_attached{libpam=\"/lib/x86_64-linux-gnu/libpam.so.0\"} 12\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
