//! HTTP sinks: Pushover, ntfy, Gotify, Telegram, Slack, Discord and a generic signed webhook. Each
//! has a configurable base URL, so self-hosted servers and tests work. Event data goes only into
//! JSON values or form fields (escaped by serde), and, for Slack's mrkdwn, `&`, `<` and `>` are
//! escaped too, so a user name cannot add a link or a mention. Discord mentions are disabled.

use hmac::{Hmac, Mac as _};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::json;
use sha2::Sha256;

use super::{
    message::Templates,
    sink::{BuildError, SinkError},
    Alert,
};
use crate::config::sink::{RawSecret, RawSink, Secret, SinkType};

/// Header carrying the HMAC-SHA256 of the webhook body: `sha256=<hex>`.
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
                    ("title", truncate(&msg.title, 250)),
                    ("message", truncate(&msg.body, 1024)),
                    ("priority", priority.to_string()),
                ];
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
                let mut body = json!({ "topic": topic, "title": msg.title, "message": msg.body, "tags": tags });
                if let Some(p) = priority {
                    body["priority"] = json!(p);
                }
                let req = c.post(server.clone()).json(&body);
                match token {
                    Some(t) => req.bearer_auth(&t.0),
                    None => req,
                }
            }
            Api::Gotify { server, token, priority } => c
                .post(format!("{server}/message"))
                .header("X-Gotify-Key", &token.0)
                .json(&json!({ "title": msg.title, "message": msg.body, "priority": priority.unwrap_or(5) })),
            Api::Telegram { api_base, token, chat_id } => {
                // Plain text (no parse_mode): nothing in the event is interpreted as markup.
                let chat: serde_json::Value = chat_id.parse::<i64>().map_or_else(|_| json!(chat_id), |n| json!(n));
                c.post(format!("{api_base}/bot{}/sendMessage", token.0)).json(&json!({
                    "chat_id": chat,
                    "text": truncate(&format!("{}\n{}", msg.title, msg.body), 4096),
                    "disable_web_page_preview": true,
                }))
            }
            Api::Slack { url } => {
                c.post(&url.0).json(&json!({ "text": slack_escape(&format!("*{}*\n{}", msg.title, msg.body)) }))
            }
            Api::Discord { url } => c.post(&url.0).json(&json!({
                "content": truncate(&format!("**{}**\n{}", msg.title, msg.body), 2000),
                "allowed_mentions": { "parse": [] },
            })),
            Api::Webhook { url, headers, secret } => {
                let body = json!({
                    "id": alert.id,
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
        let text: String = response.text().await.unwrap_or_default().chars().take(200).collect();
        let what = format!("HTTP {status}: {text}");
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
        {
            Err(SinkError::transient(what))
        } else {
            Err(SinkError::permanent(what))
        }
    }
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

/// HMAC-SHA256 of `body` with `key`, as lowercase hex.
pub fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max_chars.saturating_sub(1)).collect();
    t.push('\u{2026}');
    t
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
    fn slack_text_cannot_link_or_mention() {
        assert_eq!(slack_escape("<!channel> <http://x|y> & more"), "&lt;!channel&gt; &lt;http://x|y&gt; &amp; more");
        assert_eq!(truncate("abcdef", 4), "abc\u{2026}");
    }
}
