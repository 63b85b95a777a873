//! The closed set of sinks, built from their `[[sink]]` settings (`config::sink`). A sink is one
//! channel: email, an HTTP API (Pushover, ntfy, Gotify, Telegram, Slack, Discord, a generic
//! webhook), or a program to exec.

use std::time::Duration;

use super::{email::EmailSink, exec::ExecSink, http::HttpSink, message::Templates, syslog::SyslogSink, Alert};
use crate::config::sink::{syslog_facility, RawSink, SecretError, SinkType};

/// The cause of a failed delivery, as the sink's library or the receiver gave it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A timeout, a refused connection, a 5xx or 429: retried with backoff.
    #[error("{0}")]
    Transient(BoxError),
    /// A 4xx, a bad address, a missing program: retrying cannot help.
    #[error("{0}")]
    Permanent(BoxError),
    /// The receiver asked for a pause (a 429 or 503 with `Retry-After`, Pushover after a 5xx):
    /// nothing more goes to this sink until it is over, and this alert is retried after it.
    #[error("{error} (the server asks to wait {}s)", .wait.as_secs())]
    Later { wait: Duration, error: BoxError },
    /// The service refuses until a limit outside notifier resets (Pushover's monthly quota):
    /// retrying would only add to the count, so the alert is a dead letter and one health alert
    /// says why.
    #[error("{0}")]
    Exhausted(BoxError),
}

impl SinkError {
    pub fn transient(e: impl Into<BoxError>) -> Self {
        Self::Transient(e.into())
    }

    pub fn permanent(e: impl Into<BoxError>) -> Self {
        Self::Permanent(e.into())
    }
}

/// Why a sink could not be built from its `[[sink]]` table.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("missing key `{0}`")]
    Missing(&'static str),
    #[error("`{key}`: {source}")]
    Secret { key: &'static str, source: SecretError },
    #[error("`{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
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
    pub fn build(raw: &RawSink, client: &reqwest::Client) -> Result<Sink, BuildError> {
        let templates = Templates { title: raw.title.clone(), body: raw.body.clone() };
        Ok(match raw.kind {
            SinkType::Email => Sink::Email(EmailSink::build(raw, templates)?),
            SinkType::Exec => Sink::Exec(ExecSink {
                command: raw.command.clone().unwrap_or_default(),
                timeout: Duration::from_secs(raw.timeout_secs.unwrap_or(10)),
            }),
            SinkType::Syslog => Sink::Syslog(SyslogSink {
                address: raw
                    .address
                    .as_deref()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|reason| BuildError::Invalid { key: "address", reason })?,
                facility: syslog_facility(raw.facility.as_deref().unwrap_or("authpriv"))
                    .map_err(|reason| BuildError::Invalid { key: "facility", reason })?,
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
