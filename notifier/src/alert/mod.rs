//! Alert delivery. The daemon hands every event whose verdict alerts to the [`dispatch::Dispatcher`].
//! It applies the sinks' `when` filters and the rate limits, then writes the alert to each sink's
//! durable spool **before** any delivery is tried. One task per sink delivers from its spool, with
//! exponential backoff and jitter, until the sink confirms. Permanent failures go to a dead-letter
//! file. Nothing here runs in the login path: libpam never waits for an alert.

pub mod dispatch;
pub mod email;
pub mod exec;
pub mod http;
pub mod message;
pub mod ratelimit;
pub mod sink;
pub mod spool;
pub mod syslog;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    clock,
    event::EventKind,
    policy::{BruteForceEvent, Judged, Judgement},
    verdict::Verdict,
};

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Login,
    BruteForce,
    /// Alerts held back by the rate limit, summarised.
    Summary,
    /// notifier's own health (events lost, a sink failing, the daemon stopping).
    Health,
    /// `notifier test-alert`.
    Test,
}

/// One alert, as spooled and as handed to sinks. Event data is raw here; each sink escapes it for
/// its own format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique per alert; sent as the idempotency key to receivers that can use it.
    pub id: String,
    pub time: String,
    pub kind: AlertKind,
    pub verdict: Option<Verdict>,
    pub host: String,
    pub user: Option<String>,
    pub service: Option<String>,
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    pub tty: Option<String>,
    pub method: Option<String>,
    pub key_type: Option<String>,
    pub fingerprint: Option<String>,
    pub country: Option<String>,
    pub city: Option<String>,
    pub asn: Option<u32>,
    pub asn_org: Option<String>,
    pub rdns: Option<String>,
    /// PAM's view, for exec scripts written for pam_exec: open_session, close_session, auth.
    pub pam_type: Option<String>,
    pub reason: String,
    /// The whole event as notifier printed it (JSON), for webhooks and exec.
    pub event: serde_json::Value,
}

/// The alert for a judged event or an attack, if it is one that alerts.
pub fn for_judgement(j: &Judgement) -> Option<Alert> {
    match j {
        Judgement::Login(j) if j.alert => Some(for_login(j)),
        Judgement::BruteForce(b) if b.alert => Some(for_brute_force(b)),
        _ => None,
    }
}

/// The alert for a login, whatever its verdict.
pub fn for_login(j: &Judged) -> Alert {
    let l = &j.login;
    let auth = l.auth.as_ref();
    Alert {
        id: format!("{}-{}", l.session, l.event.as_str()),
        time: l.time.clone(),
        kind: AlertKind::Login,
        verdict: j.verdict,
        host: l.host.clone(),
        user: l.user.clone(),
        service: l.service.clone(),
        ip: l.peer.map(|p| p.ip),
        port: l.peer.and_then(|p| p.port),
        tty: l.tty.clone(),
        method: auth.and_then(|a| a.method.clone()),
        key_type: auth.and_then(|a| a.key_type.clone()),
        fingerprint: auth.and_then(|a| a.fingerprint.clone()),
        country: j.geo.as_ref().and_then(|g| g.country.clone()),
        city: j.geo.as_ref().and_then(|g| g.city.clone()),
        asn: j.asn.as_ref().map(|a| a.number),
        asn_org: j.asn.as_ref().and_then(|a| a.org.clone()),
        rdns: j.rdns.clone(),
        pam_type: Some(
            match l.event {
                EventKind::SessionOpen => "open_session",
                EventKind::SessionClose => "close_session",
                EventKind::AuthSuccess | EventKind::AuthFailure => "auth",
            }
            .into(),
        ),
        reason: j.reason.clone().unwrap_or_default(),
        event: serde_json::to_value(j).unwrap_or_default(),
    }
}

/// The alert for repeated failures from one IP.
pub fn for_brute_force(b: &BruteForceEvent) -> Alert {
    let mut a = internal_alert(
        AlertKind::BruteForce,
        &b.host,
        format!(
            "{} failed logins from {} within {} s (users tried: {})",
            b.count,
            b.ip,
            b.window_secs,
            b.users.join(", ")
        ),
    );
    a.id = format!("brute-{}-{}", b.ip, b.time);
    a.verdict = Some(Verdict::BruteForce);
    a.ip = Some(b.ip);
    a.time.clone_from(&b.time);
    a.country = b.geo.as_ref().and_then(|g| g.country.clone());
    a.asn = b.asn.as_ref().map(|x| x.number);
    a.event = serde_json::to_value(b).unwrap_or_default();
    a
}

/// An alert about notifier itself (a summary, its health, or a test).
/// The alert `test-alert` sends, and `check-config` renders each sink's templates with: a login
/// of alice from 203.0.113.7:52144.
pub fn sample_alert(host: &str) -> Alert {
    let mut alert = internal_alert(AlertKind::Test, host, "This is a test alert from `notifier test-alert`.".into());
    alert.user = Some("alice".into());
    alert.ip = Some(IpAddr::from([203, 0, 113, 7]));
    alert.port = Some(52144);
    alert.service = Some("sshd".into());
    alert.pam_type = Some("open_session".into());
    alert
}

pub fn internal_alert(kind: AlertKind, host: &str, reason: String) -> Alert {
    let time = clock::format_time(clock::unix_now_ns());
    Alert {
        id: format!(
            "{}-{}",
            match kind {
                AlertKind::Summary => "summary",
                AlertKind::Health => "health",
                AlertKind::Test => "test",
                AlertKind::Login => "login",
                AlertKind::BruteForce => "brute",
            },
            clock::unix_now_ns()
        ),
        event: serde_json::json!({ "time": time, "event": "notifier", "kind": kind, "reason": reason, "host": host }),
        time,
        kind,
        verdict: None,
        host: host.to_string(),
        user: None,
        service: None,
        ip: None,
        port: None,
        tty: None,
        method: None,
        key_type: None,
        fingerprint: None,
        country: None,
        city: None,
        asn: None,
        asn_org: None,
        rdns: None,
        pam_type: None,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enrich::{
            geo::{Asn, Geo},
            Enriched,
        },
        event::sample_login,
    };

    const EVERY_VERDICT: [Verdict; 14] = [
        Verdict::Allowlisted,
        Verdict::Known,
        Verdict::NewIp,
        Verdict::NewNetwork,
        Verdict::NewAsn,
        Verdict::NewCountry,
        Verdict::FirstLogin,
        Verdict::Local,
        Verdict::Machine,
        Verdict::PrivilegeChange,
        Verdict::PrivilegeChangeNewSource,
        Verdict::Forged,
        Verdict::BruteForce,
        Verdict::PamBypassed,
    ];

    fn judged(event: EventKind, verdict: Option<Verdict>, alert: bool) -> Judged {
        let mut login = sample_login();
        login.event = event;
        let mut j = Judged::from(Enriched {
            login,
            geo: Some(Geo { country: Some("NZ".into()), country_name: None, city: Some("Auckland".into()) }),
            asn: Some(Asn { number: 64500, org: Some("Example Net".into()) }),
            ancestry: Vec::new(),
        });
        (j.verdict, j.reason, j.alert, j.rdns) = (verdict, Some("why".into()), alert, Some("h.example.net".into()));
        j
    }

    #[test]
    fn every_verdict_maps_to_a_login_alert_with_the_event_fields() {
        for verdict in EVERY_VERDICT {
            for alert in [true, false] {
                let j = Judgement::Login(Box::new(judged(EventKind::SessionOpen, Some(verdict), alert)));
                let Some(a) = for_judgement(&j) else {
                    assert!(!alert, "{verdict:?} marked to alert gave none");
                    continue;
                };
                assert!(alert, "{verdict:?} not marked to alert gave one");
                assert_eq!((a.kind, a.verdict), (AlertKind::Login, Some(verdict)));
                assert_eq!(
                    (a.user.as_deref(), a.ip, a.port),
                    (Some("alice"), Some("203.0.113.7".parse().unwrap()), Some(52144))
                );
                assert_eq!(
                    (a.service.as_deref(), a.tty.as_deref(), a.host.as_str()),
                    (Some("sshd"), Some("ssh"), "web-1")
                );
                assert_eq!((a.method.as_deref(), a.key_type.as_deref()), (Some("publickey"), Some("ssh-ed25519")));
                assert_eq!(a.fingerprint.as_deref(), Some("SHA256:abc"));
                assert_eq!((a.country.as_deref(), a.city.as_deref()), (Some("NZ"), Some("Auckland")));
                assert_eq!(
                    (a.asn, a.asn_org.as_deref(), a.rdns.as_deref()),
                    (Some(64500), Some("Example Net"), Some("h.example.net"))
                );
                assert_eq!((a.id.as_str(), a.reason.as_str()), ("0123456789abcdef-session_open", "why"));
                assert_eq!(a.pam_type.as_deref(), Some("open_session"));
                assert_eq!(a.event["verdict"], serde_json::json!(verdict.as_str()), "the event as printed");
                assert_eq!(a.event["user"], "alice");
            }
        }
    }

    #[test]
    fn pam_type_follows_the_event() {
        let cases = [
            (EventKind::SessionOpen, "open_session"),
            (EventKind::SessionClose, "close_session"),
            (EventKind::AuthSuccess, "auth"),
            (EventKind::AuthFailure, "auth"),
        ];
        for (event, pam_type) in cases {
            let a = for_login(&judged(event, None, true));
            assert_eq!(a.pam_type.as_deref(), Some(pam_type), "{event:?}");
            assert_eq!(a.id, format!("0123456789abcdef-{}", event.as_str()));
            assert_eq!((a.verdict, a.reason.as_str()), (None, "why"));
        }
    }

    #[test]
    fn brute_force_maps_to_its_own_alert() {
        let b = BruteForceEvent {
            time: "2026-11-24T18:10:11.020Z".into(),
            event: "brute_force",
            ip: "198.51.100.9".parse().unwrap(),
            count: 6,
            users: vec!["root".into(), "admin".into()],
            window_secs: 60,
            verdict: Verdict::BruteForce,
            alert: true,
            geo: Some(Geo { country: Some("NZ".into()), ..Geo::default() }),
            asn: Some(Asn { number: 64501, org: None }),
            host: "web-1".into(),
        };
        let a = for_judgement(&Judgement::BruteForce(Box::new(b.clone()))).expect("alerts");
        assert_eq!((a.kind, a.verdict, a.ip), (AlertKind::BruteForce, Some(Verdict::BruteForce), Some(b.ip)));
        assert_eq!((a.id.as_str(), a.time.as_str()), ("brute-198.51.100.9-2026-11-24T18:10:11.020Z", b.time.as_str()));
        assert_eq!((a.country.as_deref(), a.asn, a.host.as_str()), (Some("NZ"), Some(64501), "web-1"));
        assert_eq!(a.reason, "6 failed logins from 198.51.100.9 within 60 s (users tried: root, admin)");
        assert_eq!(a.event["count"], 6);
        let quiet = BruteForceEvent { alert: false, ..b };
        assert!(for_judgement(&Judgement::BruteForce(Box::new(quiet))).is_none());
    }
}
