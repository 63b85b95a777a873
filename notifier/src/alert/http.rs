//! HTTP sinks: Pushover, ntfy, Gotify, Telegram, Slack, Discord and a generic signed webhook. Each
//! has a configurable base URL, so self-hosted servers and tests work. Event data goes only into
//! JSON values or form fields (escaped by serde), and, for Slack's mrkdwn, `&`, `<` and `>` are
//! escaped too, so a user name cannot add a link or a mention. Discord mentions are disabled.

use std::time::Duration;

use hmac::{Hmac, Mac as _};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::json;
use sha2::Sha256;

use super::{
    message::{cut, truncate, truncate_bytes, truncate_utf16, Templates},
    sink::{BuildError, SinkError},
    Alert,
};
use crate::config::sink::{RawSecret, RawSink, Secret, SinkType};

/// Header carrying the HMAC-SHA256 of the webhook body alone: `sha256=<hex>`. Kept for receivers
/// written for it; it does not bind a time, so the Standard Webhooks headers are preferred.
pub const SIGNATURE_HEADER: &str = "X-Notifier-Signature";
/// Header carrying the alert id, for receivers that deduplicate.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

#[derive(Debug)]
enum Api {
    Pushover {
        api_base: String,
        token: Secret,
        user_key: Secret,
        priority: i8,
        sound: Option<String>,
        retry: u32,
        expire: u32,
    },
    Ntfy {
        server: String,
        topic: String,
        token: Option<Secret>,
        priority: Option<i8>,
        tags: Vec<String>,
    },
    Gotify {
        server: String,
        token: Secret,
        priority: Option<i8>,
    },
    Telegram {
        api_base: String,
        token: Secret,
        chat_id: String,
    },
    Slack {
        url: Secret,
    },
    Discord {
        url: Secret,
    },
    Webhook {
        url: Secret,
        headers: Vec<(String, String)>,
        secret: Option<Secret>,
    },
}

pub struct HttpSink {
    api: Api,
    client: Client,
    templates: Templates,
}

fn need<T: Clone>(v: &Option<T>, key: &'static str) -> Result<T, BuildError> {
    v.clone().ok_or(BuildError::Missing(key))
}

fn optional_secret(v: &Option<RawSecret>, key: &'static str) -> Result<Option<Secret>, BuildError> {
    v.as_ref().map(RawSecret::resolve).transpose().map_err(|source| BuildError::Secret { key, source })
}

fn trim(url: String) -> String {
    url.trim_end_matches('/').to_string()
}

impl HttpSink {
    pub fn build(raw: &RawSink, client: Client, templates: Templates) -> Result<Self, BuildError> {
        // A self-hosted server behind an internal CA gets a client of its own that trusts it.
        let client = match (&raw.ca_file, raw.system_ca.unwrap_or(false)) {
            (None, false) => client,
            (ca_file, system_ca) => super::dispatch::http_client_with_roots(ca_file.as_deref(), system_ca)?,
        };
        let secret = |v: &Option<RawSecret>, key: &'static str| {
            need(v, key)?.resolve().map_err(|source| BuildError::Secret { key, source })
        };
        let api = match raw.kind {
            SinkType::Pushover => Api::Pushover {
                api_base: trim(raw.api_base.clone().unwrap_or_else(|| "https://api.pushover.net".into())),
                token: secret(&raw.token, "token")?,
                user_key: secret(&raw.user_key, "user_key")?,
                priority: raw.priority.unwrap_or(0),
                sound: raw.sound.clone(),
                retry: raw.retry.unwrap_or(60).max(30),
                expire: raw.expire.unwrap_or(3600).min(10_800),
            },
            SinkType::Ntfy => Api::Ntfy {
                server: trim(raw.server.clone().unwrap_or_else(|| "https://ntfy.sh".into())),
                topic: need(&raw.topic, "topic")?,
                token: optional_secret(&raw.token, "token")?,
                priority: raw.priority,
                tags: raw.tags.clone().unwrap_or_default(),
            },
            SinkType::Gotify => Api::Gotify {
                server: trim(need(&raw.server, "server")?),
                token: secret(&raw.token, "token")?,
                priority: raw.priority,
            },
            SinkType::Telegram => Api::Telegram {
                api_base: trim(raw.api_base.clone().unwrap_or_else(|| "https://api.telegram.org".into())),
                token: secret(&raw.token, "token")?,
                chat_id: need(&raw.chat_id, "chat_id")?,
            },
            SinkType::Slack => Api::Slack { url: secret(&raw.url, "url")? },
            SinkType::Discord => Api::Discord { url: secret(&raw.url, "url")? },
            SinkType::Webhook => Api::Webhook {
                url: secret(&raw.url, "url")?,
                headers: raw.headers.clone().unwrap_or_default().into_iter().collect(),
                secret: optional_secret(&raw.secret, "secret")?,
            },
            SinkType::Email | SinkType::Exec | SinkType::Syslog => {
                return Err(BuildError::Invalid { key: "type", reason: "not an HTTP sink".into() })
            }
        };
        Ok(Self { api, client, templates })
    }

    fn request(&self, alert: &Alert) -> RequestBuilder {
        let msg = self.templates.render(alert);
        let c = &self.client;
        match &self.api {
            Api::Pushover { api_base, token, user_key, priority, sound, retry, expire } => {
                let mut form: Vec<(&str, String)> = vec![
                    ("token", token.0.clone()),
                    ("user", user_key.0.clone()),
                    ("title", truncate(&msg.title, PUSHOVER_TITLE_MAX)),
                    ("message", truncate(&msg.body, PUSHOVER_MESSAGE_MAX)),
                    ("priority", priority.to_string()),
                ];
                // When it happened, not when a retry got through.
                if let Some(ts) = crate::clock::parse_unix(&alert.time) {
                    form.push(("timestamp", ts.to_string()));
                }
                if *priority == 2 {
                    form.push(("retry", retry.to_string()));
                    form.push(("expire", expire.to_string()));
                }
                if let Some(sound) = sound {
                    form.push(("sound", sound.clone()));
                }
                c.post(format!("{api_base}/1/messages.json")).form(&form)
            }
            Api::Ntfy { server, topic, token, priority, tags } => {
                // Past 4,096 bytes ntfy turns the message into an attachment.
                let message = truncate_bytes(&msg.body, NTFY_MAX_BYTES);
                let mut body = json!({ "topic": topic, "title": msg.title, "message": message, "tags": tags });
                if let Some(p) = priority {
                    body["priority"] = json!(p);
                }
                let req = c.post(server.clone()).json(&body);
                match token {
                    Some(t) => req.bearer_auth(&t.0),
                    None => req,
                }
            }
            Api::Gotify { server, token, priority } => {
                // Without `priority` the application's own default applies.
                let mut body = json!({ "title": msg.title, "message": msg.body });
                if let Some(p) = priority {
                    body["priority"] = json!(p);
                }
                c.post(format!("{server}/message")).header("X-Gotify-Key", &token.0).json(&body)
            }
            Api::Telegram { api_base, token, chat_id } => {
                // Plain text (no parse_mode): nothing in the event is interpreted as markup.
                let chat: serde_json::Value = chat_id.parse::<i64>().map_or_else(|_| json!(chat_id), |n| json!(n));
                c.post(format!("{api_base}/bot{}/sendMessage", token.0)).json(&json!({
                    "chat_id": chat,
                    "text": truncate_utf16(&format!("{}\n{}", msg.title, msg.body), TELEGRAM_MAX),
                    "link_preview_options": { "is_disabled": true },
                }))
            }
            Api::Slack { url } => c
                .post(&url.0)
                .json(&json!({ "text": slack_text(&format!("*{}*\n{}", msg.title, msg.body), SLACK_MAX) })),
            Api::Discord { url } => c.post(&url.0).json(&json!({
                "content": truncate_utf16(&format!("**{}**\n{}", msg.title, msg.body), DISCORD_MAX),
                "allowed_mentions": { "parse": [] },
            })),
            Api::Webhook { url, headers, secret } => {
                let body = json!({
                    "schema": crate::event::SCHEMA_VERSION,
                    "id": alert.id,
                    "time": alert.time,
                    "kind": alert.kind,
                    "title": msg.title,
                    "body": msg.body,
                    "verdict": alert.verdict,
                    "reason": alert.reason,
                    "host": alert.host,
                    "event": alert.event,
                });
                let bytes = serde_json::to_vec(&body).unwrap_or_default();
                let mut req = c.post(&url.0).header(reqwest::header::CONTENT_TYPE, "application/json");
                for (k, v) in headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                if let Some(secret) = secret {
                    for (name, value) in standard_webhooks(&secret.0, &alert.id, crate::clock::unix_now(), &bytes) {
                        req = req.header(name, value);
                    }
                    req = req.header(SIGNATURE_HEADER, format!("sha256={}", sign(&secret.0, &bytes)));
                }
                req.body(bytes)
            }
        }
    }

    pub async fn send(&self, alert: &Alert) -> Result<(), SinkError> {
        let response = self
            .request(alert)
            .header(IDEMPOTENCY_HEADER, &alert.id)
            .send()
            .await
            .map_err(|e| SinkError::transient(without_url(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_redirection() {
            let to = response.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("?");
            return Err(SinkError::permanent(format!(
                "HTTP {status}: the server redirects to {to}; put the new address in the sink's config \
                 (redirects are not followed: they would turn the POST into a GET without the alert)"
            )));
        }
        let retry_after = response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok());
        let retry_after = retry_after.and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let text: String = response.text().await.unwrap_or_default().chars().take(200).collect();
        let what = format!("HTTP {status}: {text}");
        let pushover = matches!(self.api, Api::Pushover { .. });
        Err(match status {
            // Pushover's 429 means the application's monthly quota is spent, until the 1st.
            StatusCode::TOO_MANY_REQUESTS if pushover => SinkError::Exhausted(
                format!("{what}: Pushover's monthly message quota for this application is spent; alerts through this sink fail until it resets").into(),
            ),
            // Pushover asks for at least 5 s before a retry after a 5xx.
            s if s.is_server_error() && pushover => SinkError::Later { wait: retry_after.unwrap_or_default().max(PUSHOVER_5XX_WAIT), error: what.into() },
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT => {
                match retry_after {
                    Some(wait) => SinkError::Later { wait, error: what.into() },
                    None => SinkError::transient(what),
                }
            }
            _ => SinkError::permanent(what),
        })
    }
}

/// ntfy's limit on a message, in bytes; longer ones become attachments.
const NTFY_MAX_BYTES: usize = 4096;
/// Each service's documented limits on a message.
const PUSHOVER_TITLE_MAX: usize = 250;
const PUSHOVER_MESSAGE_MAX: usize = 1024;
const TELEGRAM_MAX: usize = 4096;
const DISCORD_MAX: usize = 2000;
/// Slack truncates at 40,000 characters, but asks clients to keep to 4,000 (longer ones are split).
const SLACK_MAX: usize = 4000;
/// Pushover's minimum wait after a 5xx.
const PUSHOVER_5XX_WAIT: Duration = Duration::from_secs(5);
/// The longest `Retry-After` that is honoured as given; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A `Retry-After` value: seconds (Discord sends a fraction) or an HTTP date, at most an hour.
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())),
        Ok(_) => return None,
        Err(_) => httpdate::parse_http_date(value).ok()?.duration_since(now).unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A reqwest error without its URL, which may hold a token (Telegram, Slack, Discord).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// The Standard Webhooks headers (standardwebhooks.com): `webhook-id`, `webhook-timestamp` (Unix
/// seconds of this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
/// The receiver checks the signature and that the timestamp is recent, so a captured request
/// cannot be replayed later. A secret in the scheme's own form (`whsec_<base64>`) is used as the
/// bytes it encodes, as the scheme's libraries do; any other secret as its UTF-8 bytes.
pub fn standard_webhooks(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> [(&'static str, String); 3] {
    use base64::{engine::general_purpose::STANDARD, Engine as _};
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|b| STANDARD.decode(b).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    [
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", format!("v1,{signature}")),
    ]
}

/// HMAC-SHA256 of `body` with `key`, as lowercase hex.
pub fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Slack's text, escaped, in at most `max` characters as sent (an escape is never cut).
fn slack_text(s: &str, max: usize) -> String {
    slack_escape(&cut(s, max, |c| match c {
        '&' => "&amp;".len(),
        '<' | '>' => "&lt;".len(),
        _ => 1,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn standard_webhooks_signature_matches_the_schemes_example() {
        // The example in the Standard Webhooks specification's reference libraries.
        let headers = standard_webhooks(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(headers[2].1, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!((headers[0].1.as_str(), headers[1].1.as_str()), ("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330"));
    }

    #[test]
    fn slack_text_cannot_link_or_mention() {
        assert_eq!(slack_escape("<!channel> <http://x|y> & more"), "&lt;!channel&gt; &lt;http://x|y&gt; &amp; more");
        // An escape counts as what is sent, and is never cut in two.
        assert_eq!(slack_text("a&b", 7), "a&amp;b");
        assert_eq!(slack_text("a&bc", 7), "a&amp;\u{2026}");
        assert_eq!(slack_text("a&bc", 6), "a\u{2026}");
        let long = slack_text(&"<&>".repeat(5000), SLACK_MAX);
        assert!(long.chars().count() <= SLACK_MAX && long.ends_with("&lt;\u{2026}"), "{}", long.chars().count());
    }

    #[test]
    fn retry_after_takes_seconds_fractions_and_dates_and_is_capped() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("1.5", now), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
