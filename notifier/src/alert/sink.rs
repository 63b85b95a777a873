//! Sink configuration (`[[sink]]` in the config) and the closed set of sinks. A sink is one
//! channel: email, an HTTP API (Pushover, ntfy, Gotify, Telegram, Slack, Discord, a generic
//! webhook), or a program to exec.

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{email::EmailSink, exec::ExecSink, http::HttpSink, message::Templates, syslog::SyslogSink, Alert};
use crate::policy::Verdict;

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

/// Replaces `${NAME}` with the environment variable NAME.
fn expand(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').ok_or_else(|| format!("unclosed ${{ in {text:?}"))? + start;
        let name = &rest[start + 2..end];
        let value = std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl RawSecret {
    pub fn resolve(&self) -> Result<Secret, String> {
        match self {
            Self::Inline(s) => expand(s).map(Secret),
            Self::File { file } => {
                let path = expand(file)?;
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("cannot read secret file {path}: {e}"))?;
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
    pub fn matches(&self, a: &Alert) -> bool {
        let verdict_ok = self.verdicts.is_empty() || a.verdict.is_none_or(|v| self.verdicts.contains(&v));
        let service_ok = self.services.is_empty() || a.service.as_ref().is_none_or(|s| self.services.contains(s));
        let user_ok = self.users.is_empty() || a.user.as_ref().is_none_or(|u| self.users.contains(u));
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
    // Email.
    pub port: Option<u16>,
    pub tls: Option<Tls>,
    pub username: Option<String>,
    pub password: Option<RawSecret>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
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
            SinkType::Email => (&["server", "from", "to"], &["port", "tls", "username", "password"]),
            SinkType::Pushover => (&["token", "user_key"], &["api_base", "priority", "sound", "retry", "expire"]),
            SinkType::Ntfy => (&["topic"], &["server", "token", "priority", "tags"]),
            SinkType::Gotify => (&["server", "token"], &["priority"]),
            SinkType::Telegram => (&["token", "chat_id"], &["api_base"]),
            SinkType::Slack | SinkType::Discord => (&["url"], &[]),
            SinkType::Webhook => (&["url"], &["headers", "secret"]),
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
            address.parse::<super::syslog::Address>()?;
        }
        if let Some(facility) = &self.facility {
            super::syslog::facility(facility)?;
        }
        if self.kind == SinkType::Pushover && !(-2..=2).contains(&self.priority.unwrap_or(0)) {
            return Err("`priority` must be between -2 and 2".into());
        }
        Templates { title: self.title.clone(), body: self.body.clone() }.check()
    }
}

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A timeout, a refused connection, a 5xx or 429: retried with backoff.
    #[error("{0}")]
    Transient(String),
    /// A 4xx, a bad address, a missing program: retrying cannot help.
    #[error("{0}")]
    Permanent(String),
}

/// A ready-to-use sink.
pub enum Sink {
    Http(HttpSink),
    Email(EmailSink),
    Exec(ExecSink),
    Syslog(SyslogSink),
}

impl Sink {
    /// Builds the sink, resolving its secrets.
    pub fn build(raw: &RawSink, client: &reqwest::Client) -> Result<Sink, String> {
        let templates = Templates { title: raw.title.clone(), body: raw.body.clone() };
        Ok(match raw.kind {
            SinkType::Email => Sink::Email(EmailSink::build(raw, templates)?),
            SinkType::Exec => Sink::Exec(ExecSink {
                command: raw.command.clone().unwrap_or_default(),
                timeout: Duration::from_secs(raw.timeout_secs.unwrap_or(10)),
            }),
            SinkType::Syslog => Sink::Syslog(SyslogSink {
                address: raw.address.as_deref().unwrap_or_default().parse()?,
                facility: super::syslog::facility(raw.facility.as_deref().unwrap_or("authpriv"))?,
                templates,
            }),
            _ => Sink::Http(HttpSink::build(raw, client.clone(), templates)?),
        })
    }

    pub async fn send(&self, alert: &Alert) -> Result<(), SinkError> {
        match self {
            Sink::Http(s) => s.send(alert).await,
            Sink::Email(s) => s.send(alert).await,
            Sink::Exec(s) => s.send(alert).await,
            Sink::Syslog(s) => s.send(alert).await,
        }
    }
}

/// The path a sink's spool lives in: `state_dir/spool/<name>`, with the name made safe.
pub fn spool_dir(state_dir: &std::path::Path, name: &str) -> PathBuf {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    state_dir.join("spool").join(safe)
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
        let missing = RawSecret::Inline("${NOTIFIER_TEST_UNSET_VAR}".into()).resolve().unwrap_err();
        assert!(missing.contains("NOTIFIER_TEST_UNSET_VAR is not set"), "{missing}");
    }
}
