//! The policy stage's entry point: [`Judge::judge`] takes a batch of enriched events and gives each
//! its verdict, learns from it, and counts failures for brute force. The history is updated under
//! its lock and saved (fsync) before the batch is returned, so a login that was reported is always
//! in the history file. The steps, [`judge_and_learn`] and [`count_failures`], are pure.

use std::net::IpAddr;

use serde::Serialize;

use super::{bruteforce::Detector, decide, origin::LoginSources, Decision, Facts, Verdict};
use crate::{
    config,
    enrich::{
        geo::{Asn, Geo},
        process::Ancestor,
        Enriched,
    },
    event::{EventKind, LoginEvent},
    state::history::{History, Sighting, Store},
};

/// A login event with what the daemon added. The JSON field order is the output's.
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
    /// Reverse DNS of the peer, filled in as the event is written.
    pub rdns: Option<String>,
    /// For logins without a peer (sudo, su, console): the calling process's parents.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
    /// Authentication failures from the same IP shortly before this login.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures_before: Option<usize>,
    /// Fleet mode: what the fleet's shared history made of the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetNote>,
}

/// What the fleet added to a verdict; in the event as `fleet`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FleetNote {
    /// `claimed` (first in the fleet), `known` (another host was), `offline` (decided locally).
    pub state: &'static str,
    /// For `known`: the host that saw the source first, and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
}

impl From<Enriched> for Judged {
    fn from(e: Enriched) -> Self {
        Judged {
            login: e.login,
            verdict: None,
            reason: None,
            alert: false,
            learning: false,
            geo: e.geo,
            asn: e.asn,
            rdns: None,
            ancestry: e.ancestry,
            failures_before: None,
            fleet: None,
        }
    }
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

/// What the policy stage gives for each event, in order: the judged event, and after a failure
/// that completes an attack, the attack.
#[derive(Clone, Debug)]
pub enum Judgement {
    Login(Box<Judged>),
    BruteForce(Box<BruteForceEvent>),
}

/// Gives every `session_open` in `batch` its verdict, and learns each trusted login with a peer.
/// Then forgets what expired. `now` is Unix seconds. Returns whether the history changed.
/// `sources` remembers how each remote login was judged, for the `su` and `sudo` run inside it.
pub fn judge_and_learn(
    policy: &config::Policy,
    history: &mut History,
    sources: &mut LoginSources,
    batch: &mut [Judged],
    now: i64,
) -> bool {
    let mut learned = false;
    for j in batch.iter_mut().filter(|j| j.login.event == EventKind::SessionOpen) {
        let l = &j.login;
        let user = l.user.as_deref().unwrap_or("");
        let facts = Facts {
            user,
            ip: l.peer.map(|p| p.ip),
            trusted: l.trusted,
            asn: j.asn.as_ref().map(|a| a.number),
            country: j.geo.as_ref().and_then(|g| g.country.as_deref()),
            pam_bypassed: l.missed_by.contains(&"pam"),
            service: l.service.as_deref(),
            tty: l.tty.as_deref(),
            ruser: l.ruser.as_deref(),
            origin: l.origin.as_ref().map(|o| sources.facts(policy, history, o, now)),
        };
        let Decision { verdict, reason, alert, learning } = decide(policy, history, &facts, now);
        if let (Some(ip), true) = (facts.ip, facts.trusted) {
            history.record(&Sighting { user, ip, asn: facts.asn, country: facts.country }, now);
            sources.remember(&l.session, verdict);
            learned = true;
        }
        (j.verdict, j.reason, j.alert, j.learning) = (Some(verdict), Some(reason), alert, learning);
    }
    history.expire(now, policy.expire_days) > 0 || learned
}

/// Counts trusted failures per IP, marks a login that follows failures from its IP, and puts a
/// brute-force event after the failure that completes an attack. `now` is Unix seconds.
pub fn count_failures(
    brute: &mut Detector,
    settings: &config::BruteForce,
    alert_on: &[Verdict],
    host: &str,
    batch: Vec<Judged>,
    now: i64,
) -> Vec<Judgement> {
    let mut out = Vec::with_capacity(batch.len());
    let ts_ms = now * 1000;
    for mut j in batch {
        let ip = j.login.peer.map(|p| p.ip).filter(|_| j.login.trusted);
        let mut attack = None;
        match (j.login.event, ip) {
            (EventKind::AuthFailure, Some(ip)) => attack = brute.failure(ip, j.login.user.as_deref(), ts_ms),
            (EventKind::SessionOpen, Some(ip)) => {
                let n = brute.success(ip, ts_ms);
                j.failures_before = (n > 0).then_some(n);
            }
            _ => {}
        }
        let (time, geo, asn) = (j.login.time.clone(), j.geo.clone(), j.asn.clone());
        out.push(Judgement::Login(Box::new(j)));
        if let Some(a) = attack {
            // The failure that completed the attack came from `a.ip`: its GeoIP is the attack's.
            out.push(Judgement::BruteForce(Box::new(BruteForceEvent {
                time,
                event: "brute_force",
                geo,
                asn,
                ip: a.ip,
                count: a.count,
                users: a.users,
                window_secs: settings.window_secs,
                verdict: Verdict::BruteForce,
                alert: alert_on.contains(&Verdict::BruteForce),
                host: host.to_string(),
            })));
        }
    }
    out
}

/// The policy stage: the settings, the learned history and its file, and the failure windows.
pub struct Judge {
    pub policy: config::Policy,
    brute_force: config::BruteForce,
    brute: Detector,
    sources: LoginSources,
    store: Store,
    host: String,
    /// The last history save failed (logged once per streak).
    history_failing: bool,
}

impl Judge {
    pub fn new(config: &config::Config, store: Store, host: String) -> Self {
        Judge {
            policy: config.policy.clone(),
            brute_force: config.brute_force,
            brute: Detector::new(config.brute_force.failures, config.brute_force.window_secs),
            sources: LoginSources::default(),
            store,
            host,
            history_failing: false,
        }
    }

    pub fn history_path(&self) -> &std::path::Path {
        self.store.path()
    }

    /// Takes new settings (a reload); the failure windows start again only if their settings changed.
    pub fn reconfigure(&mut self, config: &config::Config) {
        if config.brute_force != self.brute_force {
            self.brute = Detector::new(config.brute_force.failures, config.brute_force.window_secs);
            self.brute_force = config.brute_force;
        }
        self.policy.clone_from(&config.policy);
    }

    /// Judges, learns and persists one batch; returns it in order, with brute-force events.
    ///
    /// If the history cannot be written (a full disk), verdicts go on from memory, events still
    /// stream, and the failure is logged once until a save succeeds again.
    pub fn judge(&mut self, batch: Vec<Enriched>, now: i64) -> Vec<Judgement> {
        let mut judged: Vec<Judged> = batch.into_iter().map(Judged::from).collect();
        if judged.iter().any(|j| j.login.event == EventKind::SessionOpen) {
            let (policy, sources) = (&self.policy, &mut self.sources);
            let saved =
                self.store.update_or_keep(|history| judge_and_learn(policy, history, sources, &mut judged, now));
            match (saved, self.history_failing) {
                (Ok(()), true) => {
                    self.history_failing = false;
                    tracing::info!(history = %self.store.path().display(), "The login history is saved again.");
                }
                (Err(e), false) => {
                    self.history_failing = true;
                    tracing::warn!(
                        "Cannot save the login history ({e}); events still stream and verdicts use what is \
                         known, and what is learned meanwhile is saved once this is fixed (is the disk full?)"
                    );
                }
                _ => {}
            }
        }
        count_failures(&mut self.brute, &self.brute_force, &self.policy.alert_on, &self.host, judged, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, event::sample_login, peer::Peer};

    const NOW: i64 = 1_800_000_000;

    /// A judged login: `event` of `user` from `ip` (None: local), trusted or not.
    fn login(event: EventKind, user: &str, ip: Option<&str>, trusted: bool) -> Judged {
        let mut l = sample_login();
        l.event = event;
        l.user = Some(user.into());
        l.peer = ip.map(|ip| Peer { ip: ip.parse().unwrap(), port: Some(50_000) });
        l.trusted = trusted;
        Judged::from(Enriched { login: l, geo: None, asn: None, ancestry: Vec::new() })
    }

    fn verdicts(batch: &[Judged]) -> Vec<Option<Verdict>> {
        batch.iter().map(|j| j.verdict).collect()
    }

    #[test]
    fn each_session_open_is_judged_and_trusted_peers_are_learned() {
        let policy = Config::from_toml("[policy]\nknown_networks = [\"10.0.0.0/8\"]\n").unwrap().policy;
        let mut history = History::default();
        // (event, user, ip, trusted) -> the verdict in a first batch, and what a second sees.
        let cases = [
            (
                EventKind::SessionOpen,
                "alice",
                Some("203.0.113.7"),
                true,
                Some(Verdict::FirstLogin),
                Some(Verdict::Known),
            ),
            (
                EventKind::SessionOpen,
                "bob",
                Some("10.1.2.3"),
                true,
                Some(Verdict::Allowlisted),
                Some(Verdict::Allowlisted),
            ),
            (EventKind::SessionOpen, "carol", None, true, Some(Verdict::Machine), Some(Verdict::Machine)),
            (EventKind::SessionOpen, "dave", Some("198.51.100.1"), false, Some(Verdict::Forged), Some(Verdict::Forged)),
            (EventKind::SessionClose, "alice", Some("203.0.113.7"), true, None, None),
            (EventKind::AuthFailure, "erin", Some("203.0.113.8"), true, None, None),
            (EventKind::AuthSuccess, "erin", Some("203.0.113.8"), true, None, None),
        ];
        let batch = || cases.iter().map(|(e, u, ip, t, _, _)| login(*e, u, *ip, *t)).collect::<Vec<_>>();
        let mut first = batch();
        judge_and_learn(&policy, &mut history, &mut LoginSources::default(), &mut first, NOW);
        assert_eq!(verdicts(&first), cases.iter().map(|c| c.4).collect::<Vec<_>>());
        assert!(first.iter().all(|j| j.verdict.is_none() || j.reason.is_some()));
        // Learned: the trusted remote logins (allowlisted ones too); not local, forged, or non-opens.
        assert_eq!(history.users.keys().collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!(history.users["alice"].ips["203.0.113.7"].count, 1);
        let mut second = batch();
        judge_and_learn(&policy, &mut history, &mut LoginSources::default(), &mut second, NOW + 60);
        assert_eq!(verdicts(&second), cases.iter().map(|c| c.5).collect::<Vec<_>>());
        assert_eq!(
            history.users["alice"].ips["203.0.113.7"],
            crate::state::history::Seen { first: NOW, last: NOW + 60, count: 2 }
        );
    }

    #[test]
    fn learned_sources_expire_after_expire_days() {
        let policy = Config::from_toml("[policy]\nexpire_days = 30\n").unwrap().policy;
        let mut history = History::default();
        let mut batch = vec![login(EventKind::SessionOpen, "alice", Some("203.0.113.7"), true)];
        assert!(
            judge_and_learn(&policy, &mut history, &mut LoginSources::default(), &mut batch, NOW),
            "a login taught something"
        );
        let mut forged = vec![login(EventKind::SessionOpen, "alice", Some("203.0.113.9"), false)];
        assert!(
            !judge_and_learn(&policy, &mut history, &mut LoginSources::default(), &mut forged, NOW),
            "a forged one teaches nothing"
        );
        // 29 days later it is known, and that sighting renews it.
        let mut batch = vec![login(EventKind::SessionOpen, "alice", Some("203.0.113.7"), true)];
        judge_and_learn(&policy, &mut history, &mut LoginSources::default(), &mut batch, NOW + 29 * 86_400);
        assert_eq!(verdicts(&batch), [Some(Verdict::Known)]);
        // A judgement 31 days after that forgets it: the next login is a first login again.
        judge_and_learn(&policy, &mut history, &mut LoginSources::default(), &mut [], NOW + 60 * 86_400 + 1);
        assert!(history.users.is_empty(), "{history:?}");
        let mut batch = vec![login(EventKind::SessionOpen, "alice", Some("203.0.113.7"), true)];
        judge_and_learn(&policy, &mut history, &mut LoginSources::default(), &mut batch, NOW + 61 * 86_400);
        assert_eq!(verdicts(&batch), [Some(Verdict::FirstLogin)]);
        // With expire_days = 0, nothing is forgotten (the default is 400 days).
        assert_eq!(Config::default().policy.expire_days, 400);
        let keep = Config::from_toml("[policy]\nexpire_days = 0\n").unwrap().policy;
        judge_and_learn(&keep, &mut history, &mut LoginSources::default(), &mut [], NOW + 3650 * 86_400);
        assert!(history.users.contains_key("alice"));
    }

    #[test]
    fn failures_within_the_window_give_one_brute_force_event() {
        let settings = config::BruteForce { failures: 3, window_secs: 60 };
        let all = Config::default().policy.alert_on;
        // (seconds after the start, event, ip, trusted) -> brute force after it, failures_before.
        type Case = (i64, EventKind, &'static str, bool, bool, Option<usize>);
        let cases: &[Case] = &[
            (0, EventKind::AuthFailure, "198.51.100.9", true, false, None),
            (10, EventKind::AuthFailure, "198.51.100.9", false, false, None), // untrusted: not counted
            (20, EventKind::AuthFailure, "198.51.100.9", true, false, None),
            (30, EventKind::AuthFailure, "203.0.113.1", true, false, None), // another IP
            (40, EventKind::AuthFailure, "198.51.100.9", true, true, None), // the third in 60 s
            (45, EventKind::AuthFailure, "198.51.100.9", true, false, None), // reported once
            (50, EventKind::SessionOpen, "198.51.100.9", true, false, Some(4)),
            (200, EventKind::AuthFailure, "198.51.100.9", true, false, None), // window over
            (205, EventKind::SessionOpen, "198.51.100.9", true, false, Some(1)),
            (210, EventKind::SessionOpen, "203.0.113.2", true, false, None),
        ];
        let mut brute = Detector::new(settings.failures, settings.window_secs);
        for (at, event, ip, trusted, attack, before) in cases {
            let mut j = login(*event, "root", Some(ip), *trusted);
            j.asn = Some(Asn { number: 64500, org: None });
            let out = count_failures(&mut brute, &settings, &all, "web-1", vec![j], NOW + at);
            let Judgement::Login(j) = &out[0] else { panic!("the login comes first: {out:?}") };
            assert_eq!(j.failures_before, *before, "at {at} s");
            assert_eq!(out.len(), 1 + usize::from(*attack), "at {at} s: {out:?}");
            if let Some(Judgement::BruteForce(b)) = out.get(1) {
                assert_eq!((b.ip.to_string().as_str(), b.count, b.window_secs), ("198.51.100.9", 3, 60));
                assert_eq!((b.verdict, b.alert, b.host.as_str()), (Verdict::BruteForce, true, "web-1"));
                assert_eq!(b.users, ["root"]);
                assert_eq!(b.asn.as_ref().map(|a| a.number), Some(64500), "the failure's GeoIP is the attack's");
            }
        }
        // Not in alert_on: the event still comes, marked as not alerting.
        let mut brute = Detector::new(1, 60);
        let j = login(EventKind::AuthFailure, "root", Some("198.51.100.9"), true);
        let out = count_failures(&mut brute, &settings, &[], "web-1", vec![j], NOW);
        assert!(matches!(&out[1], Judgement::BruteForce(b) if !b.alert), "{out:?}");
    }
}
