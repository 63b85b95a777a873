//! The stages that `run` adds to capture: enrich, policy, alert, with their settings, their
//! reload, and notifier's own health alerts.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::{
    alert::{
        self,
        dispatch::Dispatcher,
        spool::{SinkHealth, SinkState},
        AlertKind,
    },
    clock,
    config::Config,
    enrich::{geo::GeoDb, rdns::Rdns, Enricher},
    event::LostEvent,
    fleet::{Fleet, Notice, Share},
    loader::{LoadError, Probes},
    metrics::Metrics,
    policy::Judge,
    state::history::Store,
};

use super::status::Tracker;

/// The shortest time between two health alerts about lost records of root's processes.
const TRUSTED_LOSS_EVERY: Duration = Duration::from_secs(60);

/// The state file that holds the start failure last alerted on.
const START_FAILURE: &str = "start-failure";

/// What the sinks' and the fleet's tasks report to the daemon's loop.
pub enum Report {
    Sink(SinkHealth),
    Fleet(Notice),
}

/// enrich -> policy -> alert, as `run` configures them.
pub struct Daemon {
    pub config: Config,
    /// `--config`, read again on SIGHUP.
    config_path: Option<PathBuf>,
    pub enricher: Enricher,
    pub rdns: Option<Rdns>,
    pub judge: Judge,
    pub dispatcher: Dispatcher,
    /// Fleet mode (`[fleet]`): the shared stream and history.
    pub fleet: Option<Fleet>,
    pub metrics: Arc<Metrics>,
    pub host: String,
    /// What `notifier status` and `systemctl status` show.
    pub tracker: Tracker,
    /// Sinks already reported as failing.
    failing_reported: BTreeSet<String>,
    /// When a loss of root's records was last alerted (at most one a minute), and a loss of
    /// users' records (at most one per cooldown: a user's own flood).
    trusted_loss_alerted: Option<Instant>,
    untrusted_loss_alerted: Option<Instant>,
}

impl Daemon {
    /// Opens the databases and the history, serves the metrics, and starts the sinks' tasks.
    pub async fn start(config: Config, config_path: Option<PathBuf>, host: String) -> anyhow::Result<Self> {
        let unusable = |e: anyhow::Error| crate::config::ConfigError::Unusable(format!("{e:#}"));
        let geo = GeoDb::open(&config.geoip).map_err(|e| unusable(e.into()))?;
        if geo.is_empty() {
            info!("GeoIP enrichment is off: no geoip.country_db or geoip.asn_db in the config.");
        }
        let store = Store::open(&config.state_dir, clock::unix_now())?;
        let metrics = Arc::new(Metrics::default());
        metrics.lost(&LostEvent::default());
        if config.metrics.enabled {
            crate::metrics::serve(config.metrics.listen, metrics.clone(), config.state_dir.clone()).await?;
        }
        let dispatcher =
            Dispatcher::start(&config.sinks, &config.alerts, &config.state_dir, host.clone(), metrics.clone())
                .map_err(unusable)?;
        if dispatcher.is_empty() {
            info!("No [[sink]] configured: alerts are only marked in the output.");
        }
        let fleet = crate::fleet::start(&config, &host, metrics.clone()).await?;
        let mut tracker = Tracker::new(config.state_dir.clone(), host.clone(), config_path.clone(), fleet.is_some());
        tracker.sinks(dispatcher.sink_names());
        Ok(Daemon {
            tracker,
            fleet,
            enricher: Enricher::new(geo),
            rdns: Rdns::new(&config.rdns),
            judge: Judge::new(&config, store, host.clone()),
            dispatcher,
            metrics,
            host,
            config,
            config_path,
            failing_reported: BTreeSet::new(),
            trusted_loss_alerted: None,
            untrusted_loss_alerted: None,
        })
    }

    /// The probes could not be attached: says so through the sinks before the daemon exits, once
    /// for the same failure however often systemd restarts it (the last failure alerted on is kept
    /// in the state directory until a start succeeds).
    pub async fn start_failed(self, e: &LoadError) {
        let text = format!("notifier could not start watching logins: {e}");
        let marker = self.config.state_dir.join(START_FAILURE);
        if std::fs::read_to_string(&marker).is_ok_and(|said| said == text) {
            return;
        }
        if self.config.alerts.health_attach && !self.dispatcher.is_empty() {
            let _ = std::fs::write(&marker, &text);
            let mut dispatcher = self.dispatcher;
            dispatcher.submit(alert::internal_alert(AlertKind::Health, &self.host, text));
            dispatcher.shutdown(Duration::from_secs(10)).await;
        }
    }

    /// The probes are attached: a later start failure is news again.
    pub fn started(&self) {
        let _ = std::fs::remove_file(self.config.state_dir.join(START_FAILURE));
    }

    fn health(&mut self, text: String) {
        let alert = alert::internal_alert(AlertKind::Health, &self.host, text);
        if let Some(f) = &self.fleet {
            f.publish(&[Share::Health(&alert)]);
        }
        self.dispatcher.submit(alert);
    }

    /// The next report of a sink's or the fleet's task (`None`: none can come any more).
    pub async fn next_report(&mut self) -> Option<Report> {
        let fleet = async {
            match self.fleet.as_mut() {
                Some(f) => f.notices.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(h) = self.dispatcher.health.recv() => Some(Report::Sink(h)),
            Some(n) = fleet => Some(Report::Fleet(n)),
            else => None,
        }
    }

    pub fn report(&mut self, report: Report) {
        match report {
            Report::Sink(h) => self.sink_health(h),
            Report::Fleet(n) => self.fleet_notice(n),
        }
    }

    /// What the fleet's tasks ask for: a health alert, or the alert of a claim settled late.
    fn fleet_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Health(text) => self.health(text),
            Notice::Alert(ticket) => {
                if let Some(alert) = ticket.intent.alert.clone() {
                    self.dispatcher.submit(alert);
                }
                if let Some(f) = &self.fleet {
                    f.after_alert(*ticket);
                }
            }
        }
    }

    /// A libpam was replaced and the probes re-attached (`text` says how it went).
    pub fn reattached(&mut self, probes: &Probes, text: String) {
        self.attached(probes);
        if self.config.alerts.health_attach {
            self.health(text);
        }
    }

    pub fn attached(&mut self, probes: &Probes) {
        for (path, n) in &probes.attached {
            self.metrics.attached(path, *n);
        }
        self.tracker.probes(probes);
    }

    /// A sink's task reports a delivery or a failure: one health alert per sink past the
    /// threshold, and again only after it delivered in between.
    pub fn sink_health(&mut self, h: SinkHealth) {
        self.tracker.sink(&h);
        let text = match &h.state {
            SinkState::Delivered => {
                self.failing_reported.remove(&h.sink);
                return;
            }
            // Logged as the alert became a dead letter, and shown by `notifier status`.
            SinkState::Refused { .. } => return,
            SinkState::Stopped { error } => {
                format!("alert sink {} cannot deliver until its service's limit resets: {error}", h.sink)
            }
            SinkState::Failing { for_, error } => {
                let threshold = self.config.alerts.health_sink_failing;
                if threshold.is_zero() || *for_ < threshold {
                    return;
                }
                format!("alert sink {} has been failing for {} s: {error}", h.sink, for_.as_secs())
            }
        };
        if self.failing_reported.insert(h.sink.clone()) {
            self.health(text);
        }
    }

    /// Events were lost: a health alert each time root's records are (at most one a minute);
    /// for users' records, which a user can flood, at most one per cooldown.
    pub fn lost(&mut self, lost: &LostEvent) {
        self.tracker.lost(lost.total);
        if !self.config.alerts.health_events_lost {
            return;
        }
        let (last, every, text) = if lost.trusted > 0 {
            let text = format!(
                "{} login event(s) of root's processes (sshd, login, cron) were lost in the kernel or the \
                 session table ({} events lost in all): logins may have gone unseen",
                lost.trusted, lost.total
            );
            (&mut self.trusted_loss_alerted, TRUSTED_LOSS_EVERY, text)
        } else {
            let text = format!(
                "{} event(s) of users' own processes were lost or held back by their budget (a flood of PAM \
                 calls by a local user?); root's logins are not affected ({} events lost in all)",
                lost.untrusted, lost.total
            );
            (&mut self.untrusted_loss_alerted, self.config.alerts.cooldown, text)
        };
        if last.is_none_or(|at| at.elapsed() >= every) {
            *last = Some(Instant::now());
            self.health(text);
        }
    }

    /// Says that logins are no longer watched, and gives pending alerts a moment; what is left
    /// stays spooled for the next start.
    pub async fn stop(mut self) {
        if self.config.alerts.health_stopping {
            self.health("notifier is stopping: logins are no longer watched".into());
        }
        self.tracker.stopped(&self.metrics);
        if let Some(f) = self.fleet {
            f.stop().await;
        }
        self.dispatcher.shutdown(Duration::from_secs(5)).await;
    }

    /// SIGHUP: reads the config again and applies it, or keeps the running one.
    pub fn reload(&mut self) {
        match self.apply(self.config_path.clone().as_deref()) {
            Ok(()) => {
                self.metrics.reload(true);
                info!("Config reloaded.");
            }
            Err(e) => {
                self.metrics.reload(false);
                warn!("Config reload failed; still running on the previous config: {e:#}");
            }
        }
    }

    /// Everything that can fail is built before anything is swapped, so a bad config leaves the
    /// running one untouched. The probes stay attached throughout: events that arrive meanwhile
    /// wait in the ring buffer.
    fn apply(&mut self, path: Option<&Path>) -> anyhow::Result<()> {
        let mut new = Config::load_or_default(path)?;
        let geo = GeoDb::open(&new.geoip)?;
        // What cannot change while running keeps its old value, with a warning.
        let old = &self.config;
        let fixed = [
            ("state_dir", new.state_dir != old.state_dir),
            ("host", new.host != old.host),
            ("capture.libpam", new.capture.libpam != old.capture.libpam),
            ("capture.sshd", new.capture.sshd != old.capture.sshd),
            ("capture.sshd_witness", new.capture.sshd_witness != old.capture.sshd_witness),
            ("metrics", new.metrics != old.metrics),
            ("fleet", new.fleet != old.fleet),
        ];
        for (key, _) in fixed.iter().filter(|(_, changed)| *changed) {
            warn!(key, "This setting changed, but takes effect only after a restart (systemctl restart notifier).");
        }
        new.state_dir.clone_from(&old.state_dir);
        new.host.clone_from(&old.host);
        new.capture.libpam.clone_from(&old.capture.libpam);
        new.capture.sshd.clone_from(&old.capture.sshd);
        new.capture.sshd_witness = old.capture.sshd_witness;
        new.metrics = old.metrics;
        new.fleet.clone_from(&old.fleet);
        if new.sinks != old.sinks || new.alerts != old.alerts {
            // On this single-threaded runtime the new tasks first run after this returns, when
            // the old ones are already aborted; they then load what the old ones left spooled.
            let fresh =
                Dispatcher::start(&new.sinks, &new.alerts, &new.state_dir, self.host.clone(), self.metrics.clone())?;
            std::mem::replace(&mut self.dispatcher, fresh).abort();
            self.tracker.sinks(self.dispatcher.sink_names());
        }
        if new.rdns != self.config.rdns {
            self.rdns = Rdns::new(&new.rdns);
        }
        self.judge.reconfigure(&new);
        self.enricher.geo = geo;
        self.config = new;
        Ok(())
    }
}
