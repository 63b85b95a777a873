//! The `[fleet]` table: the NATS JetStream servers that hosts share their events and their learned
//! history on, how this host authenticates, and the names of the stream and the bucket.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::sink::RawSecret;

/// Which fleet history entries this host believes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trust {
    /// An entry any host wrote makes the source known.
    #[default]
    AnyHost,
    #[serde(rename = "local-or-2-hosts")]
    /// Only entries this host saw too, or that two distinct hosts saw: one compromised host cannot
    /// hide a source from the others alone.
    LocalOr2Hosts,
}

/// The table as written.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFleet {
    /// `nats://host:port` or `tls://host:port`; several for a cluster.
    pub servers: Vec<String>,
    /// A NATS `.creds` file (JWT and nkey seed) for this host.
    pub credentials: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<RawSecret>,
    pub token: Option<RawSecret>,
    /// Trust only this CA for the servers' certificates (PEM).
    pub tls_ca: Option<PathBuf>,
    /// This host's client certificate and key, for mTLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub stream: String,
    pub bucket: String,
    pub subject_prefix: String,
    pub trust: Trust,
    /// The longest a verdict waits for the server before it is decided from the local mirror.
    pub claim_timeout_ms: u64,
    /// A health alert when the servers have been unreachable this long (0: never).
    pub unreachable_alert_secs: u64,
    /// The most events the outbox keeps while the servers are unreachable; past it the oldest go.
    pub outbox_max_events: usize,
    /// Events per second published from the outbox (a replay after an outage).
    pub replay_rate: u32,
    /// For `notifier fleet init`: how long the stream keeps events, its size limit, and the
    /// replicas of the stream and the bucket (1, or 3 on a cluster).
    pub stream_max_age_days: u64,
    pub stream_max_bytes: i64,
    pub replicas: usize,
}

impl Default for RawFleet {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            credentials: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            stream: "NOTIFIER_EVENTS".into(),
            bucket: "notifier_history".into(),
            subject_prefix: "notifier".into(),
            trust: Trust::AnyHost,
            claim_timeout_ms: 2000,
            unreachable_alert_secs: 300,
            outbox_max_events: 100_000,
            replay_rate: 200,
            stream_max_age_days: 90,
            stream_max_bytes: 10 * 1024 * 1024 * 1024,
            replicas: 1,
        }
    }
}

/// The validated table.
pub type Fleet = RawFleet;

impl RawFleet {
    pub fn claim_timeout(&self) -> Duration {
        Duration::from_millis(self.claim_timeout_ms.max(1))
    }

    /// What is wrong with the table, with the fix.
    pub fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        if self.servers.is_empty() {
            return Err((
                "fleet.servers",
                "no server is listed".into(),
                "list one or more, e.g. servers = [\"nats://nats1:4222\"]",
            ));
        }
        for s in &self.servers {
            let scheme_ok = ["nats://", "tls://"].iter().any(|p| s.starts_with(p));
            if !scheme_ok || s.parse::<async_nats::ServerAddr>().is_err() {
                return Err((
                    "fleet.servers",
                    format!("{s:?} is not a NATS server URL"),
                    "write nats://HOST:PORT or tls://HOST:PORT",
                ));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(("fleet.tls_cert", "tls_cert and tls_key go together".into(), "set both for mTLS, or neither"));
        }
        if self.password.is_some() != self.user.is_some() {
            return Err((
                "fleet.user",
                "user and password go together".into(),
                "set both, or use credentials or token",
            ));
        }
        let schemes = [self.credentials.is_some(), self.user.is_some(), self.token.is_some()];
        if schemes.iter().filter(|s| **s).count() > 1 {
            return Err((
                "fleet.credentials",
                "more than one way to authenticate is set".into(),
                "keep one of credentials, user/password and token",
            ));
        }
        let token = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        for (key, value) in [
            ("fleet.stream", &self.stream),
            ("fleet.bucket", &self.bucket),
            ("fleet.subject_prefix", &self.subject_prefix),
        ] {
            if !token(value) {
                return Err((key, format!("{value:?} is not a valid name"), "use letters, digits, '-' and '_' only"));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            return Err((
                "fleet.replicas",
                format!("{} replicas", self.replicas),
                "use 1, or 3 on a cluster of 3 (at most 5)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn fleet_table_is_checked_with_key_line_and_fix() {
        let c = Config::from_toml("host = \"web-1\"\n[fleet]\nservers = [\"nats://127.0.0.1:4222\"]\n").unwrap();
        let f = c.fleet.expect("fleet on");
        assert_eq!((f.stream.as_str(), f.bucket.as_str(), f.replicas), ("NOTIFIER_EVENTS", "notifier_history", 1));
        assert!(Config::default().fleet.is_none(), "no table, no fleet");
        let cases: &[(&str, &[&str])] = &[
            ("[fleet]\nservers = []\n", &["fleet.servers", "line 1", "no server"]),
            ("\n[fleet]\nservers = [\"http://x:1\"]\n", &["fleet.servers", "line 2", "nats://HOST:PORT"]),
            ("[fleet]\nservers = [\"nats://a:1\"]\ntls_cert = \"/c\"\n", &["fleet.tls_cert", "tls_key"]),
            (
                "[fleet]\nservers = [\"nats://a:1\"]\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"\n",
                &["more than one"],
            ),
            ("[fleet]\nservers = [\"nats://a:1\"]\nbucket = \"a.b\"\n", &["fleet.bucket", "letters, digits"]),
            ("[fleet]\nservers = [\"nats://a:1\"]\nreplicas = 2\nsevers = 1\n", &["severs"]),
            ("[fleet]\nservers = [\"nats://a:1\"]\ntrust = \"nobody\"\n", &["nobody", "local-or-2-hosts"]),
        ];
        for (text, wants) in cases {
            let err = Config::from_toml(text).unwrap_err().to_string();
            for want in *wants {
                assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
            }
        }
    }
}
