//! Configuration: TOML in two layers. The raw serde structs reject unknown keys and fill
//! documented defaults; [`Config::from_toml`] validates them into [`Config`]. `from_toml` is pure;
//! only [`Config::load`] touches the filesystem (reading the file and checking that the databases
//! it names exist). Every error names the key, the line and the fix.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

pub mod files;
pub mod fleet;
mod raw;
pub mod sink;

pub use raw::*;

pub use crate::network::Network;
use crate::verdict::Verdict;
use sink::RawSink;

/// Where the daemon reads its configuration unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/notifier/notifier.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    /// toml's message already names the line, the column and the offending key.
    #[error("invalid config{}: {message}", path.as_ref().map(|p| format!(" {p}")).unwrap_or_default())]
    Parse { path: Option<String>, message: String },
    #[error("invalid config: {key} (line {line}): {reason}; {fix}")]
    Invalid { key: String, line: usize, reason: String, fix: String },
    /// A setting that parses but cannot be used: a GeoIP file that does not open, a sink whose
    /// secret cannot be read.
    #[error("invalid config: {0}")]
    Unusable(String),
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    pub state_dir: PathBuf,
    pub host: Option<String>,
    pub capture: Capture,
    pub policy: Policy,
    pub brute_force: BruteForce,
    pub geoip: Geoip,
    pub rdns: Rdns,
    pub alerts: Alerts,
    pub metrics: Metrics,
    pub fleet: Option<fleet::Fleet>,
    #[serde(rename = "sink")]
    pub sinks: Vec<RawSink>,
}

/// The Prometheus endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Metrics {
    pub enabled: bool,
    pub listen: SocketAddr,
}

/// Rate limits and retries of alert delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alerts {
    /// No second alert for the same user and source within this time.
    #[serde(with = "millis")]
    pub cooldown: Duration,
    /// At most this many alerts per minute; the rest are summarised.
    pub max_per_minute: u32,
    #[serde(with = "millis")]
    pub retry_initial: Duration,
    #[serde(with = "millis")]
    pub retry_max: Duration,
    /// An alert not delivered after this long goes to the dead-letter file.
    #[serde(with = "millis")]
    pub max_age: Duration,
    /// Health alerts: probes failed to attach; events lost in the kernel; a sink failing for longer
    /// than this (zero: never); the daemon stopping.
    pub health_attach: bool,
    pub health_events_lost: bool,
    #[serde(with = "millis")]
    pub health_sink_failing: Duration,
    pub health_stopping: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Capture {
    pub libpam: Vec<PathBuf>,
    pub services: Vec<String>,
    pub sshd_witness: bool,
    pub sshd: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub known_networks: Vec<Network>,
    pub alert_on: Vec<Verdict>,
    pub learning_days: u32,
    pub expire_days: u32,
    /// PAM services of sessions the machine opens for itself (verdict `machine`).
    pub machine_services: Vec<String>,
    /// PAM services that change a person's privileges (`local`, or `privilege_change*` inside an
    /// SSH login).
    pub privilege_services: Vec<String>,
    pub users: BTreeMap<String, UserPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UserPolicy {
    pub known_networks: Vec<Network>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BruteForce {
    pub failures: u32,
    pub window_secs: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Geoip {
    pub country_db: Option<PathBuf>,
    pub asn_db: Option<PathBuf>,
    /// Lines of the keys in the file, for errors found when the files are opened.
    #[serde(skip)]
    pub lines: (usize, usize),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rdns {
    pub enabled: bool,
    pub servers: Vec<SocketAddr>,
    #[serde(with = "millis")]
    pub timeout: Duration,
    pub cache_size: usize,
}

mod millis {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_toml("").unwrap_or_else(|_| unreachable!("the empty config is valid"))
    }
}

/// 1-based line of byte offset `pos` in `text`.
fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

impl ConfigError {
    /// The error of `file`, named in it: for the main file the path only reaches toml's own
    /// messages (as before drop-ins); a drop-in's errors always say which file they are in.
    pub(crate) fn in_file(self, file: &Path, main: bool) -> ConfigError {
        match self {
            ConfigError::Parse { message, .. } => {
                ConfigError::Parse { path: Some(file.display().to_string()), message }
            }
            ConfigError::Invalid { key, line, reason, fix } if !main => {
                ConfigError::Invalid { key: format!("{key} in {}", file.display()), line, reason, fix }
            }
            other => other,
        }
    }
}

impl Config {
    /// Parses and validates a config text. Pure: no file is read or checked.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: None, message: e.to_string() })?;
        let invalid = |key: &str, span: std::ops::Range<usize>, reason: String, fix: &str| ConfigError::Invalid {
            key: key.to_string(),
            line: line_of(text, span.start),
            reason,
            fix: fix.to_string(),
        };
        if raw.brute_force.failures == 0 {
            return Err(ConfigError::Invalid {
                key: "brute_force.failures".into(),
                line: text.lines().position(|l| l.trim_start().starts_with("failures")).map_or(0, |i| i + 1),
                reason: "must be at least 1".into(),
                fix: "set it to the number of failures that make an attack (default 5)".into(),
            });
        }
        if raw.rdns.enabled && raw.rdns.servers.get_ref().is_empty() {
            return Err(invalid(
                "rdns.servers",
                raw.rdns.servers.span(),
                "reverse DNS is enabled but no server is listed".into(),
                "list the DNS servers to ask, e.g. servers = [\"127.0.0.53:53\"], or set enabled = false",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, sink) in raw.sink.iter().enumerate() {
            let key = format!("sink[{i}] ({:?})", sink.name);
            let line = text.match_indices("[[sink]]").nth(i).map_or(0, |(pos, _)| line_of(text, pos));
            if !names.insert(sink.name.clone()) {
                return Err(ConfigError::Invalid {
                    key,
                    line,
                    reason: "another sink has the same name".into(),
                    fix: "give each [[sink]] its own name".into(),
                });
            }
            sink.validate().map_err(|reason| ConfigError::Invalid {
                key,
                line,
                reason,
                fix: "see the [[sink]] examples in packaging/config.example.toml".into(),
            })?;
        }
        if raw.alerts.max_per_minute == 0 {
            return Err(ConfigError::Invalid {
                key: "alerts.max_per_minute".into(),
                line: text.lines().position(|l| l.trim_start().starts_with("max_per_minute")).map_or(0, |i| i + 1),
                reason: "must be at least 1".into(),
                fix: "set the most alerts per minute (default 10)".into(),
            });
        }
        if let Some(f) = &raw.fleet {
            f.validate().map_err(|(key, reason, fix)| ConfigError::Invalid {
                key: key.into(),
                line: text.lines().position(|l| l.trim() == "[fleet]").map_or(0, |i| i + 1),
                reason,
                fix: fix.into(),
            })?;
        }
        let span_line = |s: &Option<toml::Spanned<PathBuf>>| s.as_ref().map_or(0, |s| line_of(text, s.span().start));
        Ok(Config {
            state_dir: raw.state_dir.unwrap_or_else(|| PathBuf::from("/var/lib/notifier")),
            host: raw.host,
            capture: Capture {
                libpam: raw.capture.libpam,
                services: raw.capture.services,
                sshd_witness: raw.capture.sshd_witness,
                sshd: raw.capture.sshd,
            },
            policy: Policy {
                known_networks: raw.policy.known_networks,
                alert_on: raw.policy.alert_on,
                learning_days: raw.policy.learning_days,
                expire_days: raw.policy.expire_days,
                machine_services: raw.policy.machine_services,
                privilege_services: raw.policy.privilege_services,
                users: raw
                    .policy
                    .users
                    .into_iter()
                    .map(|(u, p)| (u, UserPolicy { known_networks: p.known_networks }))
                    .collect(),
            },
            brute_force: BruteForce { failures: raw.brute_force.failures, window_secs: raw.brute_force.window_secs },
            geoip: Geoip {
                lines: (span_line(&raw.geoip.country_db), span_line(&raw.geoip.asn_db)),
                country_db: raw.geoip.country_db.map(toml::Spanned::into_inner),
                asn_db: raw.geoip.asn_db.map(toml::Spanned::into_inner),
            },
            rdns: Rdns {
                enabled: raw.rdns.enabled,
                servers: raw.rdns.servers.into_inner(),
                timeout: Duration::from_millis(raw.rdns.timeout_ms),
                cache_size: raw.rdns.cache_size,
            },
            alerts: Alerts {
                cooldown: Duration::from_secs(raw.alerts.cooldown_secs),
                max_per_minute: raw.alerts.max_per_minute,
                retry_initial: Duration::from_millis(raw.alerts.retry_initial_ms.max(10)),
                retry_max: Duration::from_secs(raw.alerts.retry_max_secs.max(1)),
                max_age: Duration::from_secs(raw.alerts.max_age_hours.saturating_mul(3600)),
                health_attach: raw.alerts.health_attach,
                health_events_lost: raw.alerts.health_events_lost,
                health_sink_failing: Duration::from_secs(raw.alerts.health_sink_failing_secs),
                health_stopping: raw.alerts.health_stopping,
            },
            metrics: Metrics { enabled: raw.metrics.enabled, listen: raw.metrics.listen },
            fleet: raw.fleet,
            sinks: raw.sink,
        })
    }

    /// Reads, parses and validates `path` and its drop-ins (`notifier.d/*.toml` beside it), and
    /// checks that the databases it names exist.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Ok(Config::load_with_sources(path)?.0)
    }

    /// [`Config::load`], with where each setting came from.
    pub fn load_with_sources(path: &Path) -> Result<(Config, files::Effective), ConfigError> {
        let (config, effective) = files::load(path)?;
        config.check_files()?;
        Ok((config, effective))
    }

    /// Loads `path`, or else the default file if it exists, or else the defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Config::load(path),
            None if Path::new(DEFAULT_PATH).exists() => Config::load(Path::new(DEFAULT_PATH)),
            None => {
                tracing::info!(path = DEFAULT_PATH, "No config file; using the defaults.");
                Ok(Config::default())
            }
        }
    }

    /// The databases named in the config exist and are readable.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let dbs = [
            ("geoip.country_db", &self.geoip.country_db, self.geoip.lines.0),
            ("geoip.asn_db", &self.geoip.asn_db, self.geoip.lines.1),
        ];
        for (key, path, line) in dbs {
            if let Some(path) = path {
                if let Err(e) = std::fs::File::open(path) {
                    return Err(ConfigError::Invalid {
                        key: key.into(),
                        line,
                        reason: format!("cannot open {}: {e}", path.display()),
                        fix: "give the path of a MaxMind-format .mmdb file (GeoLite2 or DB-IP lite), or remove the key"
                            .into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The effective settings, as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot show the settings: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_documented_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/notifier"));
        assert_eq!(c.brute_force, BruteForce { failures: 5, window_secs: 60 });
        assert!(!c.rdns.enabled);
        assert_eq!(c.rdns.timeout, Duration::from_millis(1000));
        assert!(!c.policy.alert_on.contains(&Verdict::Known));
        assert!(!c.policy.alert_on.contains(&Verdict::Allowlisted));
        assert!(c.policy.alert_on.contains(&Verdict::FirstLogin));
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../packaging/config.example.toml");
        let c = Config::from_toml(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c, Config::default(), "the example documents the defaults");
    }

    #[test]
    fn networks_and_users() {
        let c = Config::from_toml(
            "[policy]\nknown_networks = [\"10.0.0.0/8\", \"2001:db8::/32\", \"203.0.113.7\", \"::ffff:198.51.100.1\"]\n\
             [policy.users.alice]\nknown_networks = [\"198.51.100.0/24\"]\n",
        )
        .unwrap();
        let nets: Vec<String> = c.policy.known_networks.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "2001:db8::/32", "203.0.113.7/32", "198.51.100.1/32"]);
        assert!(c.policy.users["alice"].known_networks[0].contains(&"198.51.100.9".parse().unwrap()));
    }

    #[test]
    fn errors_name_key_and_line() {
        let cases: &[(&str, &[&str])] = &[
            ("[policy]\nkown_networks = []\n", &["line 2", "kown_networks", "known_networks"]),
            ("[policy]\nknown_networks = [\"10.0.0/8\"]\n", &["line 2", "10.0.0/8", "not an IP address or CIDR"]),
            ("[policy]\nalert_on = [\"new_planet\"]\n", &["line 2", "new_planet"]),
            ("[rdns]\nenabled = true\n", &["rdns.servers", "no server"]),
            ("[brute_force]\nfailures = 0\n", &["brute_force.failures", "line 2"]),
            (
                "[[sink]]\nname = \"p\"\ntype = \"pushover\"\ntoken = \"t\"\n",
                &["sink[0]", "line 1", "missing key `user_key`"],
            ),
            ("[[sink]]\nname = \"x\"\ntype = \"carrier_pigeon\"\n", &["line 3", "carrier_pigeon"]),
            ("colour = \"red\"\n", &["line 1", "colour"]),
        ];
        for (text, wants) in cases {
            let err = Config::from_toml(text).unwrap_err().to_string();
            for want in *wants {
                assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
            }
        }
    }

    #[test]
    fn missing_mmdb_names_key_path_and_line() {
        let c = Config::from_toml("# geo\n[geoip]\ncountry_db = \"/nonexistent/GeoLite2-Country.mmdb\"\n").unwrap();
        let err = c.check_files().unwrap_err().to_string();
        assert!(err.contains("geoip.country_db (line 3)"), "{err}");
        assert!(err.contains("/nonexistent/GeoLite2-Country.mmdb"), "{err}");
    }

    #[test]
    fn effective_settings_never_show_a_secret() {
        let c = Config::from_toml(
            "[[sink]]\nname = \"po\"\ntype = \"pushover\"\ntoken = \"azGDORePK8gMaC0QOYAMyEEuzJnyUi\"\n\
             user_key = { file = \"/etc/notifier/po-user\" }\n",
        )
        .unwrap();
        let text = c.to_toml();
        assert!(!text.contains("azGDORePK8gMaC0QOYAMyEEuzJnyUi"), "{text}");
        assert!(text.contains("token = \"***\""), "{text}");
        assert!(text.contains("/etc/notifier/po-user"), "a file path is not a secret: {text}");
        assert!(!format!("{c:?}").contains("azGDORePK8gMaC0QOYAMyEEuzJnyUi"));
    }

    #[test]
    fn effective_settings_round_trip_as_toml() {
        let c = Config::from_toml("[policy]\nknown_networks = [\"10.0.0.0/8\"]\n").unwrap();
        let text = c.to_toml();
        assert!(text.contains("10.0.0.0/8"), "{text}");
    }
}
