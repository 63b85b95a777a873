//! Decides whether a login's source is known: the allowlists (config and `notifier known add`),
//! then the learned history. Pure functions over plain data.

pub mod bruteforce;
pub mod judge;
pub mod origin;

use std::net::IpAddr;

use serde::Serialize;

pub use judge::{BruteForceEvent, FleetNote, Judge, Judged, Judgement};

pub use crate::verdict::Verdict;
use crate::{
    config,
    state::history::{network_of, History},
};

/// The facts about one login that the policy looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts<'a> {
    pub user: &'a str,
    pub ip: Option<IpAddr>,
    pub trusted: bool,
    pub asn: Option<u32>,
    pub country: Option<&'a str>,
    /// sshd saw this login and PAM, which that sshd uses, did not.
    pub pam_bypassed: bool,
    /// The PAM service, terminal and requesting user, which tell local sessions apart.
    pub service: Option<&'a str>,
    pub tty: Option<&'a str>,
    pub ruser: Option<&'a str>,
    /// The SSH login this session was started in (su, sudo inside it).
    pub origin: Option<OriginFacts<'a>>,
}

/// The SSH login a session was started in, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginFacts<'a> {
    pub user: Option<&'a str>,
    pub peer: Option<crate::peer::Peer>,
    /// That login's source was allowlisted or known when it logged in.
    pub known: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// One sentence naming what was (or was not) new.
    pub reason: String,
    /// The verdict is one the config alerts on, and the learning period is over.
    pub alert: bool,
    /// Still in the learning period: no alert whatever the verdict.
    pub learning: bool,
}

/// Classifies one login. `now` is Unix seconds.
pub fn decide(policy: &config::Policy, history: &History, facts: &Facts<'_>, now: i64) -> Decision {
    let (verdict, reason) = classify(policy, history, facts);
    let learning = policy.learning_days > 0 && now < history.created + i64::from(policy.learning_days) * 86_400;
    Decision { verdict, reason, alert: !learning && policy.alert_on.contains(&verdict), learning }
}

fn classify(policy: &config::Policy, history: &History, f: &Facts<'_>) -> (Verdict, String) {
    let user = f.user;
    if !f.trusted {
        return (
            Verdict::Forged,
            "the PAM caller is not a root process running a root-owned program, so its values may be forged".into(),
        );
    }
    if f.pam_bypassed {
        return (
            Verdict::PamBypassed,
            format!("sshd logged {user} in without the PAM session it uses for every other login (a tampered PAM stack or sshd?)"),
        );
    }
    let Some(ip) = f.ip else {
        return classify_local(policy, f);
    };
    let allow = policy
        .known_networks
        .iter()
        .chain(policy.users.get(user).into_iter().flat_map(|u| u.known_networks.iter()))
        .chain(history.allow.global.iter())
        .chain(history.allow.users.get(user).into_iter().flatten());
    for net in allow {
        if net.contains(&ip) {
            return (Verdict::Allowlisted, format!("{ip} is in allowlisted network {net}"));
        }
    }
    let Some(seen) = history.users.get(user) else {
        return (Verdict::FirstLogin, format!("first login seen for {user}, from {ip}"));
    };
    if let Some(s) = seen.ips.get(&ip.to_string()) {
        return (Verdict::Known, format!("{user} has logged in from {ip} {} time(s) before", s.count));
    }
    if let Some(country) = f.country {
        if !seen.countries.is_empty() && !seen.countries.contains_key(country) {
            let before: Vec<&str> = seen.countries.keys().map(String::as_str).collect();
            return (
                Verdict::NewCountry,
                format!("new country {country} for {user} (seen before: {})", before.join(", ")),
            );
        }
    }
    if let Some(asn) = f.asn {
        if !seen.asns.is_empty() && !seen.asns.contains_key(&format!("AS{asn}")) {
            return (Verdict::NewAsn, format!("new network operator AS{asn} for {user}, from {ip}"));
        }
    }
    let net = network_of(ip);
    if !seen.networks.contains_key(&net.to_string()) {
        return (Verdict::NewNetwork, format!("new network {net} for {user}, from {ip}"));
    }
    (Verdict::NewIp, format!("new IP {ip} for {user}, on known network {net}"))
}

/// A session without a remote peer: a privilege change (with the SSH login it came from, if any),
/// a session the machine opens for itself, or a person at the machine.
fn classify_local(policy: &config::Policy, f: &Facts<'_>) -> (Verdict, String) {
    let user = f.user;
    let service = f.service.unwrap_or("");
    let listed = |list: &[String]| list.iter().any(|s| s == service);
    if listed(&policy.privilege_services) {
        return match &f.origin {
            Some(o) => {
                let from = o.peer.map_or_else(|| "an SSH login".to_string(), |p| format!("from {p}"));
                let who = o.user.unwrap_or("someone");
                let (verdict, known) = if o.known {
                    (Verdict::PrivilegeChange, "a known source")
                } else {
                    (Verdict::PrivilegeChangeNewSource, "a source that was new at login")
                };
                (verdict, format!("{who} ({from}) became {user} with {service}; the SSH login came from {known}"))
            }
            None => {
                let who = f.ruser.filter(|r| !r.is_empty()).unwrap_or("a local user");
                (Verdict::Local, format!("{who} became {user} with {service}, not inside an SSH login"))
            }
        };
    }
    if listed(&policy.machine_services) {
        return (Verdict::Machine, format!("{service} session for {user}, opened by the machine itself"));
    }
    match f.tty.filter(|t| is_terminal(t)) {
        Some(tty) => (Verdict::Local, format!("local login for {user} on {tty} (no remote peer)")),
        None => (Verdict::Machine, format!("{service} session for {user} with no terminal and no remote peer")),
    }
}

/// A PAM_TTY that names a terminal (`/dev/tty1`, `tty1`, `pts/0`) or an X display (`:0`), not a
/// tag such as cron's `cron`.
fn is_terminal(tty: &str) -> bool {
    let name = tty.strip_prefix("/dev/").unwrap_or(tty);
    tty.starts_with("/dev/") || name.starts_with("tty") || name.starts_with("pts/") || name.starts_with(':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::history::Sighting;

    fn policy(text: &str) -> config::Policy {
        config::Config::from_toml(text).unwrap().policy
    }

    fn facts<'a>(ip: Option<&str>, country: Option<&'a str>, asn: Option<u32>) -> Facts<'a> {
        Facts {
            user: "alice",
            ip: ip.map(|i| i.parse().unwrap()),
            trusted: true,
            asn,
            country,
            pam_bypassed: false,
            service: Some("sshd"),
            tty: Some("ssh"),
            ruser: None,
            origin: None,
        }
    }

    #[test]
    fn verdict_table() {
        let p = policy(
            "[policy]\nknown_networks = [\"127.0.0.1/32\"]\n[policy.users.alice]\nknown_networks = [\"10.9.0.0/16\"]\n",
        );
        let mut h = History::default();
        h.record(
            &Sighting { user: "alice", ip: "198.51.100.7".parse().unwrap(), asn: Some(64500), country: Some("NZ") },
            10,
        );
        h.allow.users.insert("alice".into(), vec!["100.64.0.128/25".parse().unwrap()]);
        let cases: &[(Facts<'_>, Verdict, &str)] = &[
            (facts(Some("127.0.0.1"), None, None), Verdict::Allowlisted, "127.0.0.1/32"),
            (facts(Some("10.9.8.7"), None, None), Verdict::Allowlisted, "10.9.0.0/16"),
            (facts(Some("100.64.0.200"), None, None), Verdict::Allowlisted, "100.64.0.128/25"),
            (facts(Some("198.51.100.7"), Some("NZ"), Some(64500)), Verdict::Known, "1 time(s)"),
            (facts(Some("198.51.100.8"), Some("NZ"), Some(64500)), Verdict::NewIp, "198.51.100.0/24"),
            (facts(Some("203.0.113.9"), Some("NZ"), Some(64500)), Verdict::NewNetwork, "203.0.113.0/24"),
            (facts(Some("203.0.113.9"), Some("NZ"), Some(64501)), Verdict::NewAsn, "AS64501"),
            (
                facts(Some("203.0.113.9"), Some("US"), Some(64501)),
                Verdict::NewCountry,
                "new country US for alice (seen before: NZ)",
            ),
            (
                Facts { user: "bob", ..facts(Some("198.51.100.7"), None, None) },
                Verdict::FirstLogin,
                "first login seen for bob",
            ),
            (Facts { trusted: false, ..facts(Some("203.0.113.9"), None, None) }, Verdict::Forged, "forged"),
            (
                Facts { pam_bypassed: true, ..facts(Some("198.51.100.7"), Some("NZ"), Some(64500)) },
                Verdict::PamBypassed,
                "without the PAM session",
            ),
        ];
        for (f, want, reason) in cases {
            let d = decide(&p, &h, f, 20);
            assert_eq!(d.verdict, *want, "{f:?}: {}", d.reason);
            assert!(d.reason.contains(reason), "{f:?}: {:?} lacks {reason:?}", d.reason);
            assert_eq!(d.alert, !matches!(want, Verdict::Allowlisted | Verdict::Known), "{want:?}");
        }
    }

    #[test]
    fn local_sessions_are_told_apart_and_quiet_by_default() {
        let p = policy("");
        let h = History::default();
        let local = |service: &'static str, tty: Option<&'static str>| Facts {
            user: "root",
            service: Some(service),
            tty,
            ruser: Some("alice"),
            ..facts(None, None, None)
        };
        let origin = |known| OriginFacts {
            user: Some("alice"),
            peer: Some(crate::peer::Peer { ip: "198.51.100.7".parse().unwrap(), port: Some(52144) }),
            known,
        };
        let cases: &[(Facts<'_>, Verdict, &str)] = &[
            (local("login", Some("/dev/tty1")), Verdict::Local, "local login for root on /dev/tty1"),
            (local("login", Some("tty1")), Verdict::Local, "on tty1"),
            (local("su", None), Verdict::Local, "alice became root with su, not inside an SSH login"),
            (local("runuser", None), Verdict::Local, "with runuser"),
            (local("cron", Some("cron")), Verdict::Machine, "cron session for root"),
            (local("systemd-user", None), Verdict::Machine, "systemd-user session"),
            (local("atd", Some("/dev/pts/1")), Verdict::Machine, "atd session"),
            (local("vsftpd", Some("ftp")), Verdict::Machine, "no terminal"),
            (
                Facts { origin: Some(origin(true)), ..local("sudo", Some("/dev/pts/0")) },
                Verdict::PrivilegeChange,
                "alice (from 198.51.100.7:52144) became root with sudo; the SSH login came from a known source",
            ),
            (
                Facts { origin: Some(origin(false)), ..local("su", None) },
                Verdict::PrivilegeChangeNewSource,
                "alice (from 198.51.100.7:52144) became root with su; the SSH login came from a source that was new",
            ),
            // An SSH origin on a service that changes no privileges is judged as any local session.
            (Facts { origin: Some(origin(false)), ..local("cron", Some("cron")) }, Verdict::Machine, "cron"),
        ];
        for (f, want, reason) in cases {
            let d = decide(&p, &h, f, 20);
            assert_eq!(d.verdict, *want, "{f:?}: {}", d.reason);
            assert!(d.reason.contains(reason), "{f:?}: {:?} lacks {reason:?}", d.reason);
            assert!(!d.alert, "{want:?} alerts by default");
        }
        // The opt-in: privilege changes from a source that was new at login.
        let p = policy("[policy]\nalert_on = [\"privilege_change_new_source\"]\n");
        let d = decide(&p, &h, &Facts { origin: Some(origin(false)), ..local("sudo", None) }, 20);
        assert!(d.alert);
        let d = decide(&p, &h, &Facts { origin: Some(origin(true)), ..local("sudo", None) }, 20);
        assert!(!d.alert);
    }

    #[test]
    fn learning_period_silences_alerts() {
        let p = policy("[policy]\nlearning_days = 2\n");
        let h = History { created: 1000, ..History::default() };
        let d = decide(&p, &h, &facts(Some("203.0.113.1"), None, None), 1000 + 86_400);
        assert_eq!((d.verdict, d.alert, d.learning), (Verdict::FirstLogin, false, true));
        let d = decide(&p, &h, &facts(Some("203.0.113.1"), None, None), 1000 + 2 * 86_400);
        assert_eq!((d.alert, d.learning), (true, false));
    }
}
