//! The text of an alert: a concise default title and body, or a sink's own minijinja templates.
//! Templates render plain text; each sink escapes the result for its format afterwards.

use minijinja::Environment;

use super::{Alert, AlertKind};
use crate::{peer::Peer, verdict::Verdict};

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
    /// The title and body people read. They are made from [`for_people`]'s copy of the alert, so
    /// no string from the event can break a line, make a link, or mention someone.
    pub fn render(&self, alert: &Alert) -> Message {
        let alert = &for_people(alert);
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

impl Templates {
    /// Renders both templates for `sample`, strictly: an error, or a title or body that is empty
    /// (every receiver refuses an empty message), is returned to be reported before the daemon
    /// starts, not found as a dead letter.
    pub fn check(&self, sample: &Alert) -> Result<(), String> {
        let alert = minijinja::Value::from_serialize(for_people(sample));
        for (name, t) in [("title", &self.title), ("body", &self.body)] {
            let Some(t) = t else { continue };
            let text =
                Environment::new().render_str(t, alert.clone()).map_err(|e| format!("`{name}` template: {e}"))?;
            if text.trim().is_empty() {
                return Err(format!(
                    "`{name}` template renders an empty text for a login alert; receivers refuse empty messages"
                ));
            }
        }
        Ok(())
    }
}

/// The alert with every string that came from the event (or names what it did) neutralised by
/// [`neutralize`]: the user name sshd passed for an invalid user, any PAM string, the reverse-DNS
/// name, the reason that quotes them. The JSON of the event (`event`) stays exact; it reaches only
/// JSON and the exec sink's stdin.
pub fn for_people(a: &Alert) -> Alert {
    let n = |v: &Option<String>| v.as_deref().map(neutralize);
    Alert {
        user: n(&a.user),
        service: n(&a.service),
        tty: n(&a.tty),
        method: n(&a.method),
        key_type: n(&a.key_type),
        fingerprint: n(&a.fingerprint),
        country: n(&a.country),
        city: n(&a.city),
        asn_org: n(&a.asn_org),
        rdns: n(&a.rdns),
        reason: neutralize(&a.reason),
        ..a.clone()
    }
}

/// One line of inert text: control characters and misleading ones (line separators, bidi
/// controls, invisible characters) are shown as `\u{…}` escapes, a URL scheme's `://` becomes
/// `[:]//` and `www.` becomes `www[.]`, so that no client makes a link of it, and `@` becomes the
/// full-width `＠`, so that no chat service makes a mention of it.
pub fn neutralize(s: &str) -> String {
    crate::event::printable(s)
        .replace('@', "＠")
        .replace("://", "[:]//")
        .replace("www.", "www[.]")
        .replace("WWW.", "WWW[.]")
}

/// "alice logged in to web-1 from 203.0.113.7:52144 (Auckland, NZ, AS64500) with publickey
/// ssh-ed25519 SHA256:… — new network 203.0.113.0/24 for alice, from 203.0.113.7"
pub fn default_message(a: &Alert) -> Message {
    let user = a.user.as_deref().unwrap_or("someone");
    let from = a.ip.map_or_else(|| "the local console".to_string(), |ip| Peer { ip, port: a.port }.to_string());
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
    let privilege = matches!(a.verdict, Some(Verdict::PrivilegeChange | Verdict::PrivilegeChangeNewSource));
    match a.kind {
        // "alice (from 198.51.100.7:52144) became root with sudo; …": the reason says it all.
        AlertKind::Login if privilege => Message {
            title: format!("{user} on {} with {}", a.host, a.service.as_deref().unwrap_or("?")),
            body: format!("{} at {}: {}", a.host, a.time, a.reason),
        },
        AlertKind::Login => Message {
            title: format!("{user} logged in to {} from {}", a.host, a.ip.map_or("local".into(), |i| i.to_string())),
            // The event's time: an alert delivered after hours of retries says when it happened.
            body: format!("{user} logged in to {} at {} from {from}{place}{how} \u{2014} {}", a.host, a.time, a.reason),
        },
        AlertKind::BruteForce => Message {
            title: format!("Brute force on {} from {}", a.host, a.ip.map_or("?".into(), |i| i.to_string())),
            body: format!("{}{place} at {}: {}", a.host, a.time, a.reason),
        },
        AlertKind::Summary | AlertKind::Health | AlertKind::Test => {
            Message { title: format!("notifier on {}", a.host), body: a.reason.clone() }
        }
    }
}

/// `s` whole if its length, summed by `len` per character, is at most `max`; else its longest
/// start that fits with `…` after it. The services count in different units: bytes (ntfy),
/// characters (Pushover), UTF-16 code units (Telegram and Discord, whose clients are JavaScript).
pub(crate) fn cut(s: &str, max: usize, len: impl Fn(char) -> usize) -> String {
    if s.chars().map(&len).sum::<usize>() <= max {
        return s.to_string();
    }
    let mut budget = max.saturating_sub(len('\u{2026}'));
    let mut out = String::new();
    for c in s.chars() {
        match budget.checked_sub(len(c)) {
            Some(left) => budget = left,
            None => break,
        }
        out.push(c);
    }
    out.push('\u{2026}');
    out
}

/// At most `max` bytes of UTF-8, cut at a character boundary and marked with `…`.
pub(crate) fn truncate_bytes(s: &str, max: usize) -> String {
    cut(s, max, char::len_utf8)
}

/// At most `max` characters, marked with `…` when cut.
pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    cut(s, max_chars, |_| 1)
}

/// At most `max` UTF-16 code units, marked with `…` when cut.
pub(crate) fn truncate_utf16(s: &str, max: usize) -> String {
    cut(s, max, char::len_utf16)
}

#[cfg(test)]
mod people_tests {
    use super::*;

    #[test]
    fn templates_that_render_nothing_are_caught_before_delivery() {
        let sample = crate::alert::sample_alert("web-1");
        let t = |title: &str, body: &str| Templates { title: Some(title.into()), body: Some(body.into()) };
        assert!(t("{{ user }} on {{ host }}", "{{ reason }}").check(&sample).is_ok());
        let err = t("{{ user }}", "{{ no_such_field }}").check(&sample).unwrap_err();
        assert!(err.contains("`body` template renders an empty text"), "{err}");
        let err = t("  ", "x").check(&sample).unwrap_err();
        assert!(err.contains("`title`"), "{err}");
        assert!(Templates::default().check(&sample).is_ok());
        let login = Alert { kind: AlertKind::Login, ..sample };
        assert!(default_message(&login).body.contains(&login.time), "the event's time is in the body");
    }

    #[test]
    fn event_strings_cannot_break_lines_link_or_mention() {
        let cases = [
            ("alice\nPassword reset: http://evil.example/x", "alice\\u{a}Password reset: http[:]//evil.example/x"),
            ("[click](https://evil.example)", "[click](https[:]//evil.example)"),
            ("<!channel> @here @everyone", "<!channel> ＠here ＠everyone"),
            ("www.evil.example", "www[.]evil.example"),
            ("eve\u{2028}admin\u{202e}", "eve\\u{2028}admin\\u{202e}"),
            ("plain-user_01", "plain-user_01"),
        ];
        for (raw, want) in cases {
            assert_eq!(neutralize(raw), want, "{raw:?}");
        }
        let mut a = crate::alert::internal_alert(AlertKind::Login, "web-1", "first login seen for x\ny".into());
        a.user = Some("x\r\nBcc: victim@example.com".into());
        let m = Templates::default().render(&a);
        for text in [&m.title, &m.body] {
            assert!(!text.contains("x\r") && !text.contains("x\ny"), "{text:?}");
            assert!(!text.contains('@') && !text.contains("://"), "{text:?}");
        }
        assert_eq!(a.user.as_deref(), Some("x\r\nBcc: victim@example.com"), "the alert itself is unchanged");
    }

    #[test]
    fn cuts_count_in_each_services_units_and_end_with_an_ellipsis() {
        assert_eq!(truncate("abcdef", 4), "abc\u{2026}");
        assert_eq!(truncate("abc", 4), "abc");
        // An emoji is one character but two UTF-16 units (Telegram, Discord).
        let cut = truncate_utf16(&"\u{1f600}".repeat(3000), 2000);
        assert_eq!(cut.encode_utf16().count(), 1999);
        assert_eq!(cut.chars().count(), 1000, "999 emoji and the ellipsis");
        assert_eq!(truncate_utf16("ok", 2000), "ok");
        // ntfy's 4,096 bytes, at a character boundary.
        let cut = truncate_bytes(&"\u{e9}".repeat(3000), 4096);
        assert!(cut.len() <= 4096 && cut.ends_with('\u{2026}'), "{}", cut.len());
        assert_eq!(truncate_bytes("short", 4096), "short");
    }
}
