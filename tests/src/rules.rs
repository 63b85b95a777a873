//! The rules each service's API documents, enforced by the test receivers as the service would:
//! a request that breaks one is answered with the service's 400 and its reason, so a test that
//! expects delivery fails and names the rule. The service is known by the request's path, as the
//! tests configure it (`/pushover/...`, `/ntfy`, `/gotify/message`, `/bot<token>/sendMessage`,
//! `/slack/...`, `.../api/webhooks/...`).
//!
//! - Pushover (pushover.net/api): token and user are 30 letters and digits; a message of 1 to
//!   1,024 characters; a title of at most 250; priority -2 to 2, and 2 needs `retry` >= 30 and
//!   `expire` <= 10,800; `timestamp` is Unix seconds.
//! - ntfy (docs.ntfy.sh/publish): a topic of 1 to 64 of `[-_A-Za-z0-9]`; a message of at most
//!   4,096 bytes (longer ones become attachments); priority 1 to 5; tags are strings.
//! - Gotify (gotify.net/api-docs): the `X-Gotify-Key` header; a non-empty message; an integer
//!   priority if any.
//! - Telegram (core.telegram.org/bots/api#sendmessage): a chat_id; text of 1 to 4,096 characters,
//!   counted as Telegram does, in UTF-16 code units.
//! - Slack (api.slack.com/messaging/webhooks): a non-empty text; at most 4,000 characters, the
//!   length Slack asks clients to keep to.
//! - Discord (discord.com/developers/docs/resources/webhook): content of 1 to 2,000 characters (in
//!   UTF-16 code units, to be safe); `allowed_mentions.parse` only names roles, users, everyone.

use serde_json::Value;

/// A service whose rules the receivers enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Pushover,
    Ntfy,
    Gotify,
    Telegram,
    Slack,
    Discord,
}

impl Service {
    pub fn of(path: &str) -> Option<Self> {
        if path.ends_with("/1/messages.json") {
            Some(Self::Pushover)
        } else if path.starts_with("/ntfy") {
            Some(Self::Ntfy)
        } else if path.ends_with("/message") && path.contains("gotify") {
            Some(Self::Gotify)
        } else if path.contains("/bot") && path.ends_with("/sendMessage") {
            Some(Self::Telegram)
        } else if path.starts_with("/slack") {
            Some(Self::Slack)
        } else if path.contains("/api/webhooks/") {
            Some(Self::Discord)
        } else {
            None
        }
    }
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))
}

/// A string field of `j`, or why not.
fn text<'a>(j: &'a Value, key: &str) -> Result<&'a str, String> {
    j[key].as_str().ok_or_else(|| format!("{key} must be a string"))
}

fn within(what: &str, n: usize, range: std::ops::RangeInclusive<usize>) -> Result<(), String> {
    if range.contains(&n) {
        Ok(())
    } else {
        Err(format!("{what} is {n} long, outside {}..={}", range.start(), range.end()))
    }
}

fn key_30(what: &str, v: Option<&str>) -> Result<(), String> {
    match v {
        Some(k) if k.len() == 30 && k.bytes().all(|b| b.is_ascii_alphanumeric()) => Ok(()),
        _ => Err(format!("{what} is invalid (30 letters and digits)")),
    }
}

/// Whether the request follows `service`'s rules; the reason when not.
pub fn check(service: Service, headers: &[(String, String)], body: &[u8]) -> Result<(), String> {
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    match service {
        Service::Pushover => {
            let f = form(body);
            let field = |k: &str| f.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
            key_30("application token", field("token"))?;
            key_30("user key", field("user"))?;
            within("message", field("message").unwrap_or("").chars().count(), 1..=1024)?;
            within("title", field("title").unwrap_or("").chars().count(), 0..=250)?;
            let priority: i64 = field("priority").unwrap_or("0").parse().map_err(|_| "priority is not a number")?;
            if !(-2..=2).contains(&priority) {
                return Err(format!("priority {priority} is outside -2..=2"));
            }
            if priority == 2 {
                let n = |k: &str| field(k).and_then(|v| v.parse::<i64>().ok());
                if n("retry").is_none_or(|r| r < 30) || n("expire").is_none_or(|e| e > 10_800) {
                    return Err("priority 2 needs retry >= 30 and expire <= 10800".into());
                }
            }
            if let Some(ts) = field("timestamp") {
                ts.parse::<i64>().map_err(|_| format!("timestamp {ts:?} is not Unix seconds"))?;
            }
            Ok(())
        }
        Service::Ntfy => {
            let j = json(body)?;
            let topic = text(&j, "topic")?;
            if !(1..=64).contains(&topic.len())
                || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("topic {topic:?} is invalid"));
            }
            within("message (bytes)", j["message"].as_str().unwrap_or("").len(), 0..=4096)?;
            if let Some(p) = j.get("priority") {
                if !p.as_i64().is_some_and(|p| (1..=5).contains(&p)) {
                    return Err(format!("priority {p} is outside 1..=5"));
                }
            }
            if let Some(tags) = j.get("tags") {
                if !tags.as_array().is_some_and(|t| t.iter().all(Value::is_string)) {
                    return Err("tags must be a list of strings".into());
                }
            }
            Ok(())
        }
        Service::Gotify => {
            if header("x-gotify-key").is_none_or(str::is_empty) {
                return Err("no X-Gotify-Key".into());
            }
            let j = json(body)?;
            within("message", text(&j, "message")?.chars().count(), 1..=usize::MAX)?;
            if j.get("priority").is_some_and(|p| !p.is_i64()) {
                return Err("priority must be an integer".into());
            }
            Ok(())
        }
        Service::Telegram => {
            let j = json(body)?;
            if !(j["chat_id"].is_i64() || j["chat_id"].as_str().is_some_and(|c| c.starts_with('@'))) {
                return Err("chat_id must be an integer or @channel".into());
            }
            within("text (UTF-16 units)", text(&j, "text")?.encode_utf16().count(), 1..=4096)
        }
        Service::Slack => {
            let j = json(body)?;
            within("text", text(&j, "text")?.chars().count(), 1..=4000)
        }
        Service::Discord => {
            let j = json(body)?;
            within("content (UTF-16 units)", text(&j, "content")?.encode_utf16().count(), 1..=2000)?;
            if let Some(parse) = j.pointer("/allowed_mentions/parse") {
                let known = ["roles", "users", "everyone"];
                if !parse.as_array().is_some_and(|p| p.iter().all(|v| v.as_str().is_some_and(|s| known.contains(&s)))) {
                    return Err("allowed_mentions.parse names an unknown type".into());
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_refuses_what_the_service_would() {
        let key = "a".repeat(30);
        let po = |extra: &str| format!("token={key}&user={key}&message=hi{extra}");
        assert_eq!(check(Service::Pushover, &[], po("").as_bytes()), Ok(()));
        assert!(check(Service::Pushover, &[], po("&priority=3").as_bytes()).unwrap_err().contains("priority"));
        assert!(check(Service::Pushover, &[], format!("token=t&user={key}&message=hi").as_bytes()).is_err());
        let long = format!("token={key}&user={key}&message={}", "x".repeat(1025));
        assert!(check(Service::Pushover, &[], long.as_bytes()).unwrap_err().contains("message"));
        let ntfy = |j: Value| check(Service::Ntfy, &[], j.to_string().as_bytes());
        assert_eq!(ntfy(serde_json::json!({"topic": "a-b_1", "message": "m", "priority": 5})), Ok(()));
        assert!(ntfy(serde_json::json!({"topic": "a b", "message": "m"})).is_err());
        assert!(ntfy(serde_json::json!({"topic": "t", "message": "m", "priority": 0})).is_err());
        assert!(ntfy(serde_json::json!({"topic": "t", "message": "é".repeat(2049)})).is_err());
        let tg = |t: &str| {
            check(Service::Telegram, &[], serde_json::json!({"chat_id": 1, "text": t}).to_string().as_bytes())
        };
        assert!(tg(&"\u{1f600}".repeat(2048)).is_ok() && tg(&"\u{1f600}".repeat(2049)).is_err() && tg("").is_err());
        assert_eq!(Service::of("/tg/bot1:A/sendMessage"), Some(Service::Telegram));
        assert_eq!(Service::of("/hook"), None);
    }
}
