//! The text of an alert: a concise default title and body, or a sink's own minijinja templates.
//! Templates render plain text; each sink escapes the result for its format afterwards.

use minijinja::Environment;

use super::{Alert, AlertKind};

/// Title and body of one alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub title: String,
    pub body: String,
}

/// A sink's templates (their syntax is checked when the config is loaded).
#[derive(Clone, Debug, Default)]
pub struct Templates {
    pub title: Option<String>,
    pub body: Option<String>,
}

impl Templates {
    pub fn render(&self, alert: &Alert) -> Message {
        let default = default_message(alert);
        let render = |t: &Option<String>, fallback: String| match t {
            None => fallback,
            Some(t) => {
                let env = Environment::new();
                match env.render_str(t, minijinja::Value::from_serialize(alert)) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "Alert template failed; using the default text.");
                        fallback
                    }
                }
            }
        };
        Message { title: render(&self.title, default.title), body: render(&self.body, default.body) }
    }
}

/// "alice logged in to web-1 from 203.0.113.7:52144 (Auckland, NZ, AS64500) with publickey
/// ssh-ed25519 SHA256:… — new network 203.0.113.0/24 for alice, from 203.0.113.7"
pub fn default_message(a: &Alert) -> Message {
    let user = a.user.as_deref().unwrap_or("someone");
    let from = match (a.ip, a.port) {
        (Some(std::net::IpAddr::V6(ip)), Some(port)) => format!("[{ip}]:{port}"),
        (Some(ip), Some(port)) => format!("{ip}:{port}"),
        (Some(ip), None) => ip.to_string(),
        (None, _) => "the local console".to_string(),
    };
    let mut place: Vec<String> = [a.rdns.clone(), a.city.clone(), a.country.clone()].into_iter().flatten().collect();
    if let Some(asn) = a.asn {
        place.push(format!("AS{asn}"));
    }
    let place = if place.is_empty() { String::new() } else { format!(" ({})", place.join(", ")) };
    let how = [a.method.as_deref(), a.key_type.as_deref(), a.fingerprint.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let how = if how.is_empty() { String::new() } else { format!(" with {how}") };
    match a.kind {
        AlertKind::Login => Message {
            title: format!("{user} logged in to {} from {}", a.host, a.ip.map_or("local".into(), |i| i.to_string())),
            body: format!("{user} logged in to {} from {from}{place}{how} \u{2014} {}", a.host, a.reason),
        },
        AlertKind::BruteForce => Message {
            title: format!("Brute force on {} from {}", a.host, a.ip.map_or("?".into(), |i| i.to_string())),
            body: format!("{}{place}: {}", a.host, a.reason),
        },
        AlertKind::Summary | AlertKind::Health | AlertKind::Test => {
            Message { title: format!("notifier on {}", a.host), body: a.reason.clone() }
        }
    }
}
