//! The config file as written: serde structs that reject unknown keys, with the defaults that
//! `packaging/config.example.toml` documents. [`super::Config::from_toml`] validates them.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::sink::RawSink;
use crate::{network::Network, verdict::Verdict};

/// The file as written. Defaults are the values documented in packaging/config.example.toml.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Where the learned history lives.
    pub state_dir: Option<PathBuf>,
    /// Host name used in events; default: the kernel's host name.
    pub host: Option<String>,
    pub capture: RawCapture,
    pub policy: RawPolicy,
    pub brute_force: RawBruteForce,
    pub geoip: RawGeoip,
    pub rdns: RawRdns,
    pub alerts: RawAlerts,
    pub metrics: RawMetrics,
    /// Shared events and history on NATS JetStream; absent: this host alone.
    pub fleet: Option<super::fleet::RawFleet>,
    /// `[[sink]]` tables: where alerts go.
    pub sink: Vec<RawSink>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    pub enabled: bool,
    pub listen: SocketAddr,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self { enabled: false, listen: SocketAddr::from(([127, 0, 0, 1], 9880)) }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAlerts {
    pub cooldown_secs: u64,
    pub max_per_minute: u32,
    pub retry_initial_ms: u64,
    pub retry_max_secs: u64,
    pub max_age_hours: u64,
    pub health_attach: bool,
    pub health_events_lost: bool,
    pub health_sink_failing_secs: u64,
    pub health_stopping: bool,
}

impl Default for RawAlerts {
    fn default() -> Self {
        Self {
            cooldown_secs: 600,
            max_per_minute: 10,
            retry_initial_ms: 1000,
            retry_max_secs: 300,
            max_age_hours: 24,
            health_attach: true,
            health_events_lost: true,
            health_sink_failing_secs: 600,
            health_stopping: true,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCapture {
    /// libpam files to attach to; empty: find them.
    pub libpam: Vec<PathBuf>,
    /// Only these PAM services; empty: all.
    pub services: Vec<String>,
    /// Watch sshd itself too, so logins without PAM are seen.
    pub sshd_witness: bool,
    /// sshd binaries (sshd, sshd-session, sshd-auth); empty: find them.
    pub sshd: Vec<PathBuf>,
}

impl Default for RawCapture {
    fn default() -> Self {
        Self { libpam: Vec::new(), services: Vec::new(), sshd_witness: true, sshd: Vec::new() }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    pub known_networks: Vec<Network>,
    pub alert_on: Vec<Verdict>,
    pub learning_days: u32,
    pub expire_days: u32,
    pub machine_services: Vec<String>,
    pub privilege_services: Vec<String>,
    pub users: BTreeMap<String, RawUserPolicy>,
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            known_networks: Vec::new(),
            // Remote logins from a source that is not known, and what may be an attack; not
            // allowlisted, known, or the sessions without a remote peer.
            alert_on: vec![
                Verdict::FirstLogin,
                Verdict::NewIp,
                Verdict::NewNetwork,
                Verdict::NewAsn,
                Verdict::NewCountry,
                Verdict::Forged,
                Verdict::BruteForce,
                Verdict::PamBypassed,
            ],
            learning_days: 0,
            expire_days: 400,
            machine_services: ["cron", "crond", "atd", "systemd-user"].map(String::from).to_vec(),
            privilege_services: ["su", "su-l", "sudo", "sudo-i", "runuser", "runuser-l", "doas", "run0"]
                .map(String::from)
                .to_vec(),
            users: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUserPolicy {
    pub known_networks: Vec<Network>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBruteForce {
    pub failures: u32,
    pub window_secs: u64,
}

impl Default for RawBruteForce {
    fn default() -> Self {
        Self { failures: 5, window_secs: 60 }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGeoip {
    /// A GeoLite2/DB-IP Country or City database.
    pub country_db: Option<toml::Spanned<PathBuf>>,
    /// A GeoLite2/DB-IP ASN database.
    pub asn_db: Option<toml::Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRdns {
    pub enabled: bool,
    pub servers: toml::Spanned<Vec<SocketAddr>>,
    pub timeout_ms: u64,
    pub cache_size: usize,
}

impl Default for RawRdns {
    fn default() -> Self {
        Self { enabled: false, servers: toml::Spanned::new(0..0, Vec::new()), timeout_ms: 1000, cache_size: 1024 }
    }
}
