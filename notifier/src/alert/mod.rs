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

use crate::policy::Verdict;

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

/// An alert about notifier itself (a summary, its health, or a test).
pub fn internal_alert(kind: AlertKind, host: &str, reason: String) -> Alert {
    let time = crate::session::format_time(crate::procinfo::unix_now_ns());
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
            crate::procinfo::unix_now_ns()
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

/// `notifier test-alert`: sends a sample alert through each sink (or one), directly, without the
/// spool or the rate limit, and reports each result. Returns false if any sink failed.
pub async fn test_alert(config: &crate::config::Config, only: Option<&str>) -> anyhow::Result<bool> {
    let sinks: Vec<&sink::RawSink> = config.sinks.iter().filter(|s| only.is_none_or(|n| s.name == n)).collect();
    if sinks.is_empty() {
        match only {
            Some(name) => anyhow::bail!("no sink named {name:?} in the config; see `notifier check-config`"),
            None => anyhow::bail!("no [[sink]] in the config: nothing to test"),
        }
    }
    let host = config.host.clone().unwrap_or_else(|| crate::procinfo::host_context().host);
    let mut alert = internal_alert(AlertKind::Test, &host, "This is a test alert from `notifier test-alert`.".into());
    alert.user = Some("alice".into());
    alert.ip = Some(std::net::IpAddr::from([203, 0, 113, 7]));
    alert.port = Some(52144);
    alert.service = Some("sshd".into());
    alert.pam_type = Some("open_session".into());
    let client = dispatch::http_client()?;
    let mut all_ok = true;
    for raw in sinks {
        let kind = format!("{:?}", raw.kind).to_lowercase();
        let result = match sink::Sink::build(raw, &client) {
            Err(e) => Err(format!("not usable: {e}")),
            Ok(s) => match tokio::time::timeout(std::time::Duration::from_secs(30), s.send(&alert)).await {
                Err(_) => Err("no answer within 30 s".to_string()),
                Ok(Ok(())) => Ok(()),
                Ok(Err(sink::SinkError::Transient(e))) => Err(format!("{e} (temporary: the daemon would retry)")),
                Ok(Err(sink::SinkError::Permanent(e))) => Err(format!("{e} (permanent: check the sink's settings)")),
            },
        };
        match result {
            Ok(()) => println!("sink {} ({kind}): ok", raw.name),
            Err(e) => {
                all_ok = false;
                println!("sink {} ({kind}): FAILED: {e}", raw.name);
            }
        }
    }
    Ok(all_ok)
}
