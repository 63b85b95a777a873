//! Settling a login with the fleet. For a `session_open` whose source this host's history does
//! not know (a `first_login` or `new_*` verdict):
//!
//! 1. The mirror already has the login's IP key (and the trust setting believes it): `known`,
//!    naming the host that saw it first. No network round trip.
//! 2. Otherwise a claim intent goes to the outbox, and this host `create`s the IP key (waiting at
//!    most `claim_timeout_ms`). It exists: another host won and alerted; `known`. It was created:
//!    this host is first in the fleet; it creates the broader keys (user, country, ASN, network)
//!    and the verdict is the broadest one it won ([`keys::settle`]). It alerts.
//! 3. No server answers: the verdict comes from the mirror, the alert says "fleet unreachable:
//!    other hosts may alert too", and the intent stays in the outbox for the replay.

use std::time::Duration;

use super::{
    keys::{self, Claim, Fact},
    outbox::Intent,
    Shared,
};
use crate::{
    event::EventKind,
    policy::{FleetNote, Judged},
    verdict::Verdict,
};
use async_nats::jetstream::kv::{self, CreateErrorKind};

/// A claim intent whose alert the daemon is about to spool.
#[derive(Debug)]
pub struct Ticket {
    pub seq: Option<u64>,
    pub intent: Intent,
    /// Offline: the intent stays for the replay, marked as alerted.
    pub offline: bool,
}

/// The text appended to the reason of a verdict decided without the fleet.
pub const OFFLINE_MARK: &str = "fleet unreachable: other hosts may alert too";

/// The stable id of a judged login in the fleet stream.
pub fn event_id(host: &str, j: &Judged) -> String {
    let l = &j.login;
    crate::id::short_id(
        host,
        &[l.session.as_bytes(), l.event.as_str().as_bytes(), l.time.as_bytes(), &l.pid.to_le_bytes()],
    )
}

fn known(j: &mut Judged, user: &str, what: &str, c: &Claim) {
    j.verdict = Some(Verdict::Known);
    j.alert = false;
    j.reason = Some(format!("{user} logged in from {what} before on {} (first seen {})", c.first_host, c.first_seen));
    j.fleet = Some(FleetNote {
        state: "known",
        first_host: Some(c.first_host.clone()),
        first_seen: Some(c.first_seen.clone()),
    });
}

async fn bounded<T, E>(limit: Duration, f: impl std::future::Future<Output = Result<T, E>>) -> Option<Result<T, E>> {
    tokio::time::timeout(limit, f).await.ok()
}

/// The longest one request to the server may take before it is tried again.
pub(super) const ATTEMPT: Duration = Duration::from_secs(2);

/// Creates `key`: `Some(true)` if this host won it, `Some(false)` if it exists, `None` if no
/// server answered within `limit`. A client that lost its server moments ago (a cluster node
/// went away) and a stream between leaders are waited for, within the same bound; an outage
/// that is older than the bound is not, so logins during a long outage never wait.
async fn create(s: &Shared, kv: &kv::Store, key: &str, value: &bytes::Bytes, limit: Duration) -> Option<bool> {
    let start = tokio::time::Instant::now();
    let deadline = start + limit;
    if s.down_for().is_some_and(|d| d >= limit) {
        return None;
    }
    loop {
        if s.connected() {
            // Each attempt is short: a request sent just before its server died gets no answer.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now()).min(ATTEMPT);
            match bounded(left, kv.create(key, value.clone())).await {
                Some(Ok(_)) => return Some(true),
                Some(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => return Some(false),
                _ => {}
            }
        }
        if tokio::time::Instant::now() + Duration::from_millis(50) >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Who won `key`: from the server (retried within `limit`: a cluster may be between leaders), or
/// else from the mirror, which the watch fills in.
async fn winner(s: &Shared, kv: &kv::Store, key: &str, limit: Duration) -> Option<Claim> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Some(Ok(Some(bytes))) = bounded(left, kv.get(key)).await {
            return serde_json::from_slice(&bytes).ok();
        }
        if let Some(c) = s.mirror.lock().ok().and_then(|m| m.keys.get(key).cloned()) {
            return Some(c);
        }
        if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds this host to a key's hosts (a compare-and-set; a lost race is left for the next login).
async fn add_host(kv: kv::Store, key: String, host: String) {
    let Ok(Some(entry)) = kv.entry(key.clone()).await else { return };
    let Ok(mut c) = serde_json::from_slice::<Claim>(&entry.value) else { return };
    if c.hosts.contains(&host) || c.hosts.len() >= keys::MAX_HOSTS {
        return;
    }
    c.hosts.push(host);
    if let Ok(value) = serde_json::to_vec(&c) {
        let _ = kv.update(key, value.into(), entry.revision).await;
    }
}

/// Settles `j` (see the module's description). Returns a ticket when an alert depends on a claim
/// intent: the daemon spools the alert, then calls [`after_alert`].
pub(super) async fn settle(s: &Shared, j: &mut Judged, alert_on: &[Verdict]) -> Option<Ticket> {
    let local = j.verdict.filter(|v| keys::breadth(*v) < 5)?;
    let ip = j.login.peer.map(|p| p.ip).filter(|_| j.login.event == EventKind::SessionOpen && j.login.trusted)?;
    let user = j.login.user.clone().unwrap_or_default();
    let facts = keys::facts(ip, j.asn.as_ref().map(|a| a.number), j.geo.as_ref().and_then(|g| g.country.as_deref()));
    let ip_key = keys::key(&user, &Fact::Ip(ip));
    let (trust, host) = (s.settings.trust, s.host.as_str());
    // 1. The mirror.
    let mirrored: Vec<Option<Claim>> = {
        let m = s.mirror.lock().ok()?;
        facts.iter().map(|f| m.keys.get(&keys::key(&user, f)).filter(|c| c.believed(trust, host)).cloned()).collect()
    };
    if let Some(Some(c)) = mirrored.last() {
        known(j, &user, &ip.to_string(), c);
        if let (Some(kv), false) = (s.kv(), c.hosts.iter().any(|h| h == host)) {
            tokio::spawn(add_host(kv, ip_key, host.into()));
        }
        return None;
    }
    // 2. The claim, made durable first.
    let id = event_id(host, j);
    let mut intent = Intent {
        event_id: id.clone(),
        keys: facts.iter().map(|f| keys::key(&user, f)).collect(),
        claim: Claim::new(host, &j.login.time, &id),
        alert: None,
        alerted: false,
    };
    let learning = j.learning;
    let alerts = |v: Verdict| !learning && alert_on.contains(&v);
    intent.alert = alerts(local).then(|| {
        j.alert = true;
        crate::alert::for_login(j)
    });
    let seq = s.outbox.lock().ok().and_then(|mut o| o.push_intent(&intent).ok());
    if let Some(seq) = seq {
        s.inflight.lock().ok()?.insert(seq);
    }
    let value: bytes::Bytes = serde_json::to_vec(&intent.claim).unwrap_or_default().into();
    let limit = s.settings.claim_timeout();
    let kv = s.kv();
    let won = match &kv {
        Some(kv) => create(s, kv, &ip_key, &value, limit).await,
        None => None,
    };
    let won = match won {
        Some(won) => won,
        None => {
            // 3. No server: the mirror decides.
            s.metrics.fleet.claim("offline");
            let fresh: Vec<Fact> =
                facts.iter().zip(&mirrored).filter(|(_, m)| m.is_none()).map(|(f, _)| f.clone()).collect();
            let v = keys::settle(local, &fresh);
            j.verdict = Some(v);
            j.alert = alerts(v);
            j.reason = Some(format!("{}; {OFFLINE_MARK}", j.reason.take().unwrap_or_default()));
            j.fleet = Some(FleetNote { state: "offline", first_host: None, first_seen: None });
            intent.alert = j.alert.then(|| crate::alert::for_login(j));
            return Some(Ticket { seq, intent, offline: true });
        }
    };
    let kv = kv?;
    let lost_to = match won {
        true => None,
        false => {
            Some(winner(s, &kv, &ip_key, limit).await.unwrap_or_else(|| Claim::new("another host", "moments ago", "")))
        }
    };
    // A create retried after its answer was lost finds this host's own value: that is a win.
    if let Some(c) = lost_to.filter(|c| c.first_event_id != id) {
        s.metrics.fleet.claim("lost");
        done(s, seq);
        if c.believed(trust, host) {
            known(j, &user, &ip.to_string(), &c);
        } else {
            j.reason = Some(format!(
                "{}; the fleet knows {ip} for {user} only from {} (fleet.trust = \"local-or-2-hosts\")",
                j.reason.take().unwrap_or_default(),
                c.first_host
            ));
            j.alert = alerts(local);
            tokio::spawn(add_host(kv, ip_key, host.into()));
        }
        return None;
    }
    s.metrics.fleet.claim("won");
    failpoint("fleet-claimed");
    let mut won = vec![Fact::Ip(ip)];
    for (f, m) in facts.iter().zip(&mirrored).take(facts.len() - 1) {
        if m.is_none() && create(s, &kv, &keys::key(&user, f), &value, ATTEMPT).await == Some(true) {
            won.push(f.clone());
        }
    }
    let v = keys::settle(local, &won);
    if v != local {
        j.reason = Some(fleet_reason(v, &user, ip, &won));
    }
    j.verdict = Some(v);
    j.alert = alerts(v);
    j.fleet = Some(FleetNote { state: "claimed", first_host: None, first_seen: None });
    Some(Ticket { seq, intent, offline: false })
}

/// Why a verdict is what the fleet made it.
fn fleet_reason(v: Verdict, user: &str, ip: std::net::IpAddr, won: &[Fact]) -> String {
    let what = won.iter().find(|f| f.verdict() == v);
    match what {
        Some(Fact::Country(cc)) => format!("new country {cc} for {user} in the fleet, from {ip}"),
        Some(Fact::Asn(n)) => format!("new network operator AS{n} for {user} in the fleet, from {ip}"),
        Some(Fact::Network(net)) => format!("new network {net} for {user} in the fleet, from {ip}"),
        Some(Fact::Seen) => format!("first login seen for {user} in the fleet, from {ip}"),
        _ => format!("new IP {ip} for {user} in the fleet"),
    }
}

fn done(s: &Shared, seq: Option<u64>) {
    if let Some(seq) = seq {
        if let Ok(mut o) = s.outbox.lock() {
            o.remove_intent(seq);
        }
        if let Ok(mut f) = s.inflight.lock() {
            f.remove(&seq);
        }
    }
}

pub(super) fn after_alert(s: &Shared, mut t: Ticket) {
    if !t.offline {
        return done(s, t.seq);
    }
    t.intent.alerted = true;
    if let (Some(seq), Ok(mut o)) = (t.seq, s.outbox.lock()) {
        if let Err(e) = o.rewrite_intent(seq, &t.intent) {
            tracing::warn!("Cannot update a fleet claim intent ({e}); its alert may be sent twice after a restart.");
        }
    }
    if let (Some(seq), Ok(mut f)) = (t.seq, s.inflight.lock()) {
        f.remove(&seq);
    }
    s.wake.notify_one();
}

/// A test's fault injection: with `NOTIFIER_FAILPOINT=<name>`, the process is killed (SIGKILL,
/// as a crash) at that point.
fn failpoint(name: &str) {
    if std::env::var("NOTIFIER_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::warn!(failpoint = name, "Failpoint reached: killing the process.");
        // SAFETY: kill on our own pid.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
