//! `[[sink]]` tables: the settings of each alert channel, their secrets and their filters. Plain
//! settings; the sinks themselves are built from these in `alert::sink`.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::verdict::Verdict;

/// A secret: inline (`"${ENV_VAR}"` is expanded from the environment) or read from a file
/// (`{ file = "/etc/notifier/token" }`, `${CREDENTIALS_DIRECTORY}` expanded), never logged.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawSecret {
    Inline(String),
    File { file: String },
}

impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("\"***\""),
            Self::File { file } => write!(f, "{{ file = {file:?} }}"),
        }
    }
}

impl Serialize for RawSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Inline(_) => s.serialize_str("***"),
            Self::File { file } => {
                use serde::ser::SerializeMap as _;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("file", file)?;
                m.end()
            }
        }
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("unclosed ${{ in {0:?}")]
    Unclosed(String),
    #[error("environment variable {0} is not set")]
    UnsetVariable(String),
    #[error("cannot read secret file {path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// Replaces `${NAME}` with the environment variable NAME.
fn expand(text: &str) -> Result<String, SecretError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').ok_or_else(|| SecretError::Unclosed(text.to_string()))? + start;
        let name = &rest[start + 2..end];
        let value = std::env::var(name).map_err(|_| SecretError::UnsetVariable(name.to_string()))?;
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl RawSecret {
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        match self {
            Self::Inline(s) => expand(s).map(Secret),
            Self::File { file } => {
                let path = expand(file)?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| SecretError::File { path: path.clone(), source })?;
                Ok(Secret(text.trim_end_matches(['\r', '\n']).to_string()))
            }
        }
    }
}

/// A resolved secret. Its Debug form hides it.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Which alerts a sink takes. Empty lists match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct When {
    pub verdicts: Vec<Verdict>,
    pub services: Vec<String>,
    pub users: Vec<String>,
}

impl When {
    /// Whether an alert with this verdict, service and user passes; what an alert lacks passes.
    pub fn matches(&self, verdict: Option<Verdict>, service: Option<&str>, user: Option<&str>) -> bool {
        let verdict_ok = self.verdicts.is_empty() || verdict.is_none_or(|v| self.verdicts.contains(&v));
        let service_ok = self.services.is_empty() || service.is_none_or(|s| self.services.iter().any(|x| x == s));
        let user_ok = self.users.is_empty() || user.is_none_or(|u| self.users.iter().any(|x| x == u));
        verdict_ok && service_ok && user_ok
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkType {
    Email,
    Pushover,
    Ntfy,
    Gotify,
    Telegram,
    Slack,
    Discord,
    Webhook,
    Exec,
    Syslog,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tls {
    /// Plain SMTP, for a relay on localhost.
    None,
    #[default]
    Starttls,
    /// Implicit TLS (SMTPS, port 465).
    Tls,
}

/// One `[[sink]]` table as written. Keys that do not apply to the sink's type are errors.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: SinkType,
    #[serde(default)]
    pub when: When,
    /// minijinja templates overriding the default title and body.
    pub title: Option<String>,
    pub body: Option<String>,
    // HTTP: the API's base URL (Pushover, Telegram) or server (ntfy, Gotify), or the full URL
    // (Slack, Discord, webhook).
    pub api_base: Option<String>,
    pub server: Option<String>,
    pub url: Option<RawSecret>,
    pub token: Option<RawSecret>,
    pub user_key: Option<RawSecret>,
    pub priority: Option<i8>,
    pub sound: Option<String>,
    pub retry: Option<u32>,
    pub expire: Option<u32>,
    pub topic: Option<String>,
    pub tags: Option<Vec<String>>,
    pub chat_id: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub secret: Option<RawSecret>,
    /// HTTP sinks: PEM file of the CA(s) that signed the server's certificate, trusted besides the
    /// bundled Mozilla roots; and whether to trust the system's store too.
    pub ca_file: Option<PathBuf>,
    pub system_ca: Option<bool>,
    // Email.
    pub port: Option<u16>,
    pub tls: Option<Tls>,
    pub username: Option<String>,
    pub password: Option<RawSecret>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    /// The name sent in EHLO (default: this host's name if fully qualified, else `from`'s domain).
    pub ehlo_name: Option<String>,
    // Exec.
    pub command: Option<Vec<String>>,
    pub timeout_secs: Option<u64>,
    // Syslog: unix:/dev/log, udp:IP:PORT or tcp:IP:PORT, and the facility (default authpriv).
    pub address: Option<String>,
    pub facility: Option<String>,
}

impl RawSink {
    /// The keys set in this table, other than the common ones, read from its own serialised form
    /// so that a new field can never be missed here.
    fn set_keys(&self) -> Vec<String> {
        const COMMON: [&str; 5] = ["name", "type", "when", "title", "body"];
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => {
                map.into_iter().filter(|(k, v)| !v.is_null() && !COMMON.contains(&k.as_str())).map(|(k, _)| k).collect()
            }
            _ => Vec::new(),
        }
    }

    /// (required, optional) keys for the type.
    fn keys(kind: SinkType) -> (&'static [&'static str], &'static [&'static str]) {
        match kind {
            SinkType::Email => (&["server", "from", "to"], &["port", "tls", "username", "password", "ehlo_name"]),
            SinkType::Pushover => {
                (&["token", "user_key"], &["api_base", "priority", "sound", "retry", "expire", "ca_file", "system_ca"])
            }
            SinkType::Ntfy => (&["topic"], &["server", "token", "priority", "tags", "ca_file", "system_ca"]),
            SinkType::Gotify => (&["server", "token"], &["priority", "ca_file", "system_ca"]),
            SinkType::Telegram => (&["token", "chat_id"], &["api_base", "ca_file", "system_ca"]),
            SinkType::Slack | SinkType::Discord => (&["url"], &["ca_file", "system_ca"]),
            SinkType::Webhook => (&["url"], &["headers", "secret", "ca_file", "system_ca"]),
            SinkType::Exec => (&["command"], &["timeout_secs"]),
            SinkType::Syslog => (&["address"], &["facility"]),
        }
    }

    /// Checks the table's keys against its type, and its templates.
    pub fn validate(&self) -> Result<(), String> {
        let (required, optional) = Self::keys(self.kind);
        let set = self.set_keys();
        for key in required {
            if !set.iter().any(|k| k == key) {
                return Err(format!("missing key `{key}` (a {:?} sink needs {})", self.kind, required.join(", ")));
            }
        }
        for key in &set {
            if !required.contains(&key.as_str()) && !optional.contains(&key.as_str()) {
                return Err(format!("key `{key}` does not apply to a {:?} sink", self.kind));
            }
        }
        if self.kind == SinkType::Exec && self.command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(
                "`command` is empty; give the program and its arguments, e.g. [\"/usr/local/bin/alert\"]".into()
            );
        }
        if let Some(address) = &self.address {
            address.parse::<SyslogAddress>()?;
        }
        if let Some(facility) = &self.facility {
            syslog_facility(facility)?;
        }
        // Each service's documented ranges: a value outside one dead-letters every alert.
        let priority_range = match self.kind {
            SinkType::Pushover => Some(-2..=2),
            SinkType::Ntfy => Some(1..=5),
            SinkType::Gotify => Some(0..=10),
            _ => None,
        };
        if let (Some(range), Some(p)) = (priority_range, self.priority) {
            if !range.contains(&p) {
                return Err(format!(
                    "`priority` {p} is out of range: a {:?} sink takes {} to {}",
                    self.kind,
                    range.start(),
                    range.end()
                ));
            }
        }
        if let Some(topic) = &self.topic {
            let valid = (1..=64).contains(&topic.len())
                && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(format!(
                    "`topic` {topic:?} is not a valid ntfy topic: 1 to 64 letters, digits, `-` or `_`"
                ));
            }
        }
        check_templates([&self.title, &self.body])
    }
}

/// Errors in a template's syntax, found before the daemon starts.
fn check_templates(templates: [&Option<String>; 2]) -> Result<(), String> {
    let env = minijinja::Environment::new();
    for t in templates.into_iter().flatten() {
        env.template_from_str(t).map_err(|e| format!("invalid template {t:?}: {e}"))?;
    }
    Ok(())
}

/// Where a syslog sink sends: `unix:/dev/log`, `udp:IP:PORT` or `tcp:IP:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyslogAddress {
    Unix(PathBuf),
    Udp(SocketAddr),
    Tcp(SocketAddr),
}

impl std::str::FromStr for SyslogAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("{s:?} is not a syslog address; use unix:/dev/log, udp:HOST:PORT or tcp:HOST:PORT (an IP address)")
        };
        match s.split_once(':') {
            Some(("unix", path)) => Ok(Self::Unix(PathBuf::from(path))),
            Some(("udp", addr)) => addr.parse().map(Self::Udp).map_err(|_| bad()),
            Some(("tcp", addr)) => addr.parse().map(Self::Tcp).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// Facility numbers (RFC 5424 table 1).
pub fn syslog_facility(name: &str) -> Result<u8, String> {
    Ok(match name {
        "auth" => 4,
        "daemon" => 3,
        "authpriv" => 10,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        other => return Err(format!("unknown facility {other:?}; use authpriv, auth, daemon or local0..local7")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(text: &str) -> RawSink {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn keys_must_fit_the_type() {
        assert!(sink("name='p'\ntype='pushover'\ntoken='t'\nuser_key='u'").validate().is_ok());
        let err = sink("name='p'\ntype='pushover'\ntoken='t'").validate().unwrap_err();
        assert!(err.contains("missing key `user_key`"), "{err}");
        let err = sink("name='p'\ntype='ntfy'\ntopic='t'\nchat_id='1'").validate().unwrap_err();
        assert!(err.contains("`chat_id` does not apply"), "{err}");
        assert!(sink("name='s'\ntype='syslog'\naddress='udp:127.0.0.1:514'").validate().is_ok());
        let err = sink("name='s'\ntype='syslog'\naddress='udp:127.0.0.1:514'\ntopic='x'").validate().unwrap_err();
        assert!(err.contains("`topic` does not apply"), "{err}");
        let err = sink("name='e'\ntype='exec'\ncommand=[]").validate().unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = sink("name='w'\ntype='webhook'\nurl='http://127.0.0.1/'\nbody='{{ user'").validate().unwrap_err();
        assert!(err.contains("invalid template"), "{err}");
    }

    #[test]
    fn priorities_and_topics_follow_each_services_rules() {
        let cases = [
            ("type='ntfy'\ntopic='alerts'\npriority=5", None),
            ("type='ntfy'\ntopic='alerts'\npriority=6", Some("takes 1 to 5")),
            ("type='ntfy'\ntopic='alerts'\npriority=0", Some("takes 1 to 5")),
            ("type='ntfy'\ntopic='my alerts'", Some("not a valid ntfy topic")),
            ("type='ntfy'\ntopic='a/b'", Some("not a valid ntfy topic")),
            ("type='gotify'\nserver='http://127.0.0.1'\ntoken='t'\npriority=11", Some("takes 0 to 10")),
            ("type='pushover'\ntoken='t'\nuser_key='u'\npriority=3", Some("takes -2 to 2")),
            ("type='pushover'\ntoken='t'\nuser_key='u'\npriority=-2", None),
        ];
        for (text, want) in cases {
            let got = sink(&format!("name='x'\n{text}")).validate();
            match want {
                None => assert!(got.is_ok(), "{text}: {got:?}"),
                Some(w) => assert!(got.as_ref().is_err_and(|e| e.contains(w)), "{text}: {got:?}"),
            }
        }
    }

    #[test]
    fn secrets_resolve_from_env_and_file_and_never_print() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("NOTIFIER_TEST_TOKEN", "s3cret") };
        let s: RawSecret =
            toml::from_str::<BTreeMap<String, RawSecret>>("t = 'pre-${NOTIFIER_TEST_TOKEN}'").unwrap()["t"].clone();
        assert_eq!(s.resolve().unwrap().0, "pre-s3cret");
        assert_eq!(format!("{:?}", s.resolve().unwrap()), "***");
        assert!(!format!("{s:?}").contains("NOTIFIER_TEST_TOKEN"));
        let path = std::env::temp_dir().join(format!("notifier-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let f = RawSecret::File { file: path.display().to_string() };
        assert_eq!(f.resolve().unwrap().0, "from-file");
        std::fs::remove_file(&path).unwrap();
        let missing = RawSecret::Inline("${NOTIFIER_TEST_UNSET_VAR}".into()).resolve().unwrap_err().to_string();
        assert!(missing.contains("NOTIFIER_TEST_UNSET_VAR is not set"), "{missing}");
    }
}
