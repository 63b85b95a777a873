//! Fleet mode: hosts share one event stream and one learned history on NATS JetStream.
//!
//! ```text
//! judge -> settle (mirror, then claim) -> alert            (the daemon's loop; bounded wait)
//!       -> outbox (disk) -> publisher -> stream            (task; after the server's ack)
//! bucket -> watch -> mirror (disk)                          (task)
//! ```
//!
//! - Every event `run` prints, and every health alert, goes to `<prefix>.events.<host>.<event>`
//!   from the durable [`outbox::Outbox`], with its id in `Nats-Msg-Id` so that the server drops a
//!   replay.
//! - The history is a key-value bucket ([`keys`]). A login whose source this host does not know
//!   is looked up in the [`mirror::Mirror`] first; if the fleet does not know it either, this host
//!   `create`s its IP key, which succeeds on exactly one host: that host alerts, the others say
//!   `known` and name it. See [`claim`].
//! - With the servers unreachable, verdicts come from the mirror, alerts say so, and the claims
//!   wait in the outbox; on reconnect they are replayed first, then the events, at `replay_rate`.

pub mod claim;
pub mod cli;
pub mod keys;
pub mod mirror;
pub mod outbox;
mod tasks;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use tokio::sync::{mpsc, Notify};

pub use claim::Ticket;
use mirror::Mirror;
use outbox::{Outbox, Outgoing};

use crate::{
    config::{self, fleet::Fleet as Settings, ConfigError},
    metrics::Metrics,
};

/// What the fleet's tasks ask of the daemon's loop.
#[derive(Debug)]
pub enum Notice {
    /// A health alert to send (the fleet unreachable too long, a claim refused).
    Health(String),
    /// A claim made before a crash was won and its alert (in the intent) was never sent: send it,
    /// then call [`Fleet::after_alert`] with the ticket.
    Alert(Box<Ticket>),
}

/// What the daemon's loop and the tasks share.
pub(crate) struct Shared {
    pub settings: Settings,
    pub host: String,
    pub dir: PathBuf,
    pub js: jetstream::Context,
    pub kv: Mutex<Option<kv::Store>>,
    pub mirror: Mutex<Mirror>,
    pub outbox: Mutex<Outbox>,
    /// Claim intents the daemon's loop is settling right now; the replay leaves them alone.
    pub inflight: Mutex<BTreeSet<u64>>,
    pub wake: Notify,
    /// Since when no server is connected (the client's events keep it).
    pub down_since: Arc<Mutex<Option<std::time::Instant>>>,
    pub notices: mpsc::UnboundedSender<Notice>,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    pub fn connected(&self) -> bool {
        self.js.client().connection_state() == async_nats::connection::State::Connected
    }

    /// How long the client has been without a server (`None` while connected).
    pub fn down_for(&self) -> Option<Duration> {
        if self.connected() {
            return None;
        }
        self.down_since.lock().ok()?.map(|t| t.elapsed())
    }

    pub fn kv(&self) -> Option<kv::Store> {
        self.kv.lock().ok()?.clone()
    }
}

/// This host's part of the fleet.
pub struct Fleet {
    shared: Arc<Shared>,
    pub notices: mpsc::UnboundedReceiver<Notice>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A connection error that is the TLS handshake's (a certificate refused, or none sent).
fn tls_failure(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("certificate") || e.contains("handshake") || e.contains("tls")
}

/// What to check when the TLS handshake fails, with the error.
fn tls_hint(error: &str) -> String {
    format!(
        "the TLS handshake failed ({error}): fleet.tls_ca must be the CA that signed the servers' certificates, \
         and fleet.tls_cert and fleet.tls_key this host's own certificate when the servers ask for one"
    )
}

/// The client options for `settings`: credentials, TLS, and reconnects that never give up.
pub async fn connect_options(settings: &Settings, name: &str) -> anyhow::Result<async_nats::ConnectOptions> {
    let unusable = |e: String| anyhow::Error::new(ConfigError::Unusable(e));
    let mut opts = async_nats::ConnectOptions::new().name(name);
    if let Some(path) = &settings.credentials {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| unusable(format!("fleet.credentials: cannot read {}: {e}", path.display())))?;
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        let password = password.resolve().map_err(|e| unusable(format!("fleet.password: {e}")))?;
        opts = opts.user_and_password(user.clone(), password.0);
    }
    if let Some(token) = &settings.token {
        opts = opts.token(token.resolve().map_err(|e| unusable(format!("fleet.token: {e}")))?.0);
    }
    if let Some(ca) = &settings.tls_ca {
        std::fs::metadata(ca).map_err(|e| unusable(format!("fleet.tls_ca: cannot read {}: {e}", ca.display())))?;
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
        for (k, p) in [("fleet.tls_cert", cert), ("fleet.tls_key", key)] {
            std::fs::metadata(p).map_err(|e| unusable(format!("{k}: cannot read {}: {e}", p.display())))?;
        }
        opts = opts.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
    }
    Ok(opts
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 250).min(2000))))
}

/// The subject token for a host name: what NATS subjects cannot hold becomes `_`.
pub fn host_token(host: &str) -> String {
    let t: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// What a host puts on the fleet stream.
pub enum Share<'a> {
    /// A judged login, failure or brute force.
    Judged(&'a crate::policy::Judgement),
    Lost(&'a crate::event::LostEvent),
    /// notifier's own health alert.
    Health(&'a crate::alert::Alert),
}

impl Share<'_> {
    /// Its id (`Nats-Msg-Id`, so the server drops a repeat), its kind (the subject's last token),
    /// and its JSON (the event as `run --json` prints it).
    pub fn event(&self, host: &str) -> (String, &'static str, serde_json::Value) {
        use crate::{event::json_value, id::short_id, policy::Judgement};
        match self {
            Share::Judged(Judgement::Login(j)) => (claim::event_id(host, j), j.login.event.as_str(), json_value(j)),
            Share::Judged(Judgement::BruteForce(b)) => {
                let id = short_id(host, &[b"brute", b.ip.to_string().as_bytes(), b.time.as_bytes()]);
                (id, b.event, json_value(b))
            }
            Share::Lost(l) => (short_id(host, &[b"lost", l.time.as_bytes()]), "events_lost", json_value(l)),
            Share::Health(a) => {
                let event = serde_json::json!({
                    "schema": crate::event::SCHEMA_VERSION,
                    "time": a.time,
                    "event": "health",
                    "host": a.host,
                    "reason": a.reason,
                });
                (short_id(host, &[a.id.as_bytes()]), "health", event)
            }
        }
    }
}

impl Fleet {
    /// Connects in the background (a server that is down never delays the start), loads the mirror
    /// and the outbox, and starts the tasks.
    pub async fn start(
        settings: &Settings,
        state_dir: &Path,
        host: &str,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Fleet> {
        let dir = state_dir.join("fleet");
        let outbox = Outbox::open(&dir.join("outbox"), settings.outbox_max_events)
            .with_context(|| format!("opening the fleet outbox in {}", dir.display()))?;
        let mirror = Mirror::load(&dir);
        let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let down_since = Arc::new(Mutex::new(Some(std::time::Instant::now())));
        let down = down_since.clone();
        let opts = connect_options(settings, &format!("notifier {host}"))
            .await?
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let (refused, down) = (refused.clone(), down.clone());
                async move { tasks::client_event(&event, &refused, &down) }
            });
        let client = opts.connect(settings.servers.clone()).await.context("starting the fleet client")?;
        let mut js = jetstream::new(client);
        // One request or ack waits at most this; a claim retries within claim_timeout_ms, and the
        // publisher sends the batch again (the server drops the duplicates).
        js.set_timeout(claim::ATTEMPT.min(settings.claim_timeout()));
        let (tx, notices) = mpsc::unbounded_channel();
        metrics.fleet.mirror_keys.set(mirror.keys.len() as i64);
        metrics.fleet.outbox_events.set(outbox.events as i64);
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            host: host.into(),
            dir,
            js,
            kv: Mutex::new(None),
            mirror: Mutex::new(mirror),
            outbox: Mutex::new(outbox),
            inflight: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            down_since,
            notices: tx,
            metrics,
        });
        let tasks = vec![tokio::spawn(tasks::monitor(shared.clone())), tokio::spawn(tasks::publisher(shared.clone()))];
        // A start with the servers up is ready when it says so; with them down, it waits no longer
        // than one claim would.
        let deadline = tokio::time::Instant::now() + settings.claim_timeout();
        while shared.kv().is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match shared.kv() {
            Some(_) => {
                tracing::info!(servers = ?settings.servers, "Fleet mode: sharing events and history on NATS JetStream.")
            }
            None => {
                tracing::warn!(
                    servers = ?settings.servers,
                    "Fleet mode: the servers are not reachable yet; verdicts come from the local mirror until they are."
                );
                // The client's retries report only the kind of error ("IO error"); one plain attempt
                // says why, so that a refused certificate is named once.
                let opts = connect_options(settings, &format!("notifier {host}")).await?;
                let servers = settings.servers.clone();
                tokio::spawn(async move {
                    if let Err(e) = opts.connect(servers).await {
                        let text = e.to_string();
                        if tls_failure(&text) {
                            tracing::error!(
                                "Cannot connect to the fleet servers: {}. Verdicts and alerts go on from the local \
                                 history; events and claims wait in the outbox.",
                                tls_hint(&text)
                            );
                        } else {
                            tracing::warn!(error = %text, "The fleet servers cannot be reached yet.");
                        }
                    }
                });
            }
        }
        Ok(Fleet { shared, notices, tasks })
    }

    /// Writes `items` to the outbox and wakes the publisher. Never waits for the network.
    pub fn publish(&self, items: &[Share]) {
        self.publish_events(items.iter().map(|item| item.event(&self.shared.host)).collect());
    }

    /// [`Fleet::publish`] of events already converted with [`Share::event`] (a batch whose
    /// items are written to stdout, and so moved, one by one).
    pub fn publish_events(&self, events: Vec<(String, &'static str, serde_json::Value)>) {
        if events.is_empty() {
            return;
        }
        let prefix = &self.shared.settings.subject_prefix;
        let host = host_token(&self.shared.host);
        let out: Vec<Outgoing> = events
            .into_iter()
            .map(|(id, kind, mut payload)| {
                if let Some(map) = payload.as_object_mut() {
                    map.entry("id").or_insert_with(|| id.clone().into());
                }
                Outgoing { id, subject: format!("{prefix}.events.{host}.{kind}"), payload }
            })
            .collect();
        if let Ok(mut outbox) = self.shared.outbox.lock() {
            let dropped = outbox.dropped;
            if let Err(e) = outbox.push_events(&out) {
                tracing::warn!(
                    "Cannot write events to the fleet outbox ({e}); they are not shared (is the disk full?)."
                );
            }
            self.shared.metrics.fleet.outbox_events.set(outbox.events as i64);
            if outbox.dropped > dropped {
                let n = outbox.dropped - dropped;
                self.shared.metrics.fleet.outbox_dropped.inc_by(n);
                if dropped == 0 {
                    let _ = self.shared.notices.send(Notice::Health(format!(
                        "the fleet outbox is full ({} events): the oldest events are dropped until the fleet servers \
                         are reachable again ({n} so far); claims and alerts are kept",
                        self.shared.settings.outbox_max_events
                    )));
                }
            }
        }
        self.shared.wake.notify_one();
    }

    /// Settles one judged login with the fleet; see [`claim`].
    pub async fn settle(&self, j: &mut crate::policy::Judged, alert_on: &[crate::verdict::Verdict]) -> Option<Ticket> {
        claim::settle(&self.shared, j, alert_on).await
    }

    /// The alert of a ticket was spooled: the claim intent is done (or, offline, kept for replay).
    pub fn after_alert(&self, ticket: Ticket) {
        claim::after_alert(&self.shared, ticket);
    }

    /// Saves the mirror and stops the tasks; what is not acknowledged stays in the outbox.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut m) = self.shared.mirror.lock() {
            if m.dirty {
                let _ = m.save(&self.shared.dir);
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.js.client().flush()).await;
    }
}

/// The fleet, for `run` with a `[fleet]` table.
pub async fn start(config: &config::Config, host: &str, metrics: Arc<Metrics>) -> anyhow::Result<Option<Fleet>> {
    match &config.fleet {
        Some(settings) => Ok(Some(Fleet::start(settings, &config.state_dir, host, metrics).await?)),
        None => Ok(None),
    }
}
