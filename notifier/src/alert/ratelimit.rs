//! Rate limits for alerts: a cooldown per (user, source), and a global cap per minute. What is held
//! back is counted and summarised in one alert when the minute ends; nothing is dropped silently.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{Alert, AlertKind};
use crate::verdict::Verdict as Judged;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Same user and source alerted less than the cooldown ago.
    Cooldown,
    /// The cap for this minute is reached.
    Cap,
}

/// What was held back during one window, for the summary. Bounded: past [`MAX_NAMES`] users or
/// uids, the rest are counted together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub cooldown: usize,
    pub cap: usize,
    /// Held alerts per user (or "-").
    pub users: BTreeMap<String, usize>,
    /// Of the above, forged ones (an unprivileged caller's), per caller uid.
    pub forged: usize,
    pub forged_by: BTreeMap<u32, usize>,
    /// Health alerts over their own cap.
    pub health: usize,
}

impl Held {
    pub fn total(&self) -> usize {
        self.cooldown + self.cap + self.health
    }
}

/// A cooldown key: the forging uid (for forged alerts), the user and the source.
type Key = (Option<u32>, Option<String>, Option<IpAddr>);

/// The cooldown keys and the count of one kind of alert in the current window.
#[derive(Default)]
struct Budget {
    last: HashMap<Key, Instant>,
    sent: u32,
}

/// Real and forged alerts are limited apart: forged ones (from a PAM caller that is not a root
/// process running a root-owned program, so anyone can make them) have their own cap and their
/// own cooldown keys, with the caller's uid in them, so that no number of them can hold back an
/// alert about a real login.
pub struct Limiter {
    cooldown: Duration,
    per_minute: u32,
    real: Budget,
    forged: Budget,
    health_sent: u32,
    window_start: Instant,
    held: Held,
}

/// Most (user, source) pairs remembered for the cooldown, per kind.
const MAX_KEYS: usize = 10_000;
/// Most users (and uids) named one by one in a summary.
pub const MAX_NAMES: usize = 10;
/// Most health alerts a minute: each says something different, but a fault that repeats must
/// not flood the sinks.
const HEALTH_PER_MINUTE: u32 = 10;
const MINUTE: Duration = Duration::from_secs(60);

impl Limiter {
    pub fn new(cooldown: Duration, per_minute: u32, now: Instant) -> Self {
        Self {
            cooldown,
            per_minute,
            real: Budget::default(),
            forged: Budget::default(),
            health_sent: 0,
            window_start: now,
            held: Held::default(),
        }
    }

    /// When the current window ends, if something is held (the summary is due then).
    pub fn summary_due(&self) -> Option<Instant> {
        (self.held.total() > 0).then_some(self.window_start + MINUTE)
    }

    /// Closes the window if it is over; returns what was held in it, if anything.
    pub fn roll(&mut self, now: Instant) -> Option<Held> {
        if now < self.window_start + MINUTE {
            return None;
        }
        self.window_start = now;
        self.real.sent = 0;
        self.forged.sent = 0;
        self.health_sent = 0;
        let held = std::mem::take(&mut self.held);
        (held.total() > 0).then_some(held)
    }

    /// Decides for one alert. Summaries and test alerts bypass the limits.
    pub fn check(&mut self, alert: &Alert, now: Instant) -> Verdict {
        match alert.kind {
            AlertKind::Summary | AlertKind::Test => return Verdict::Send,
            AlertKind::Health if self.health_sent >= HEALTH_PER_MINUTE => {
                self.held.health += 1;
                return Verdict::Cap;
            }
            AlertKind::Health => {
                self.health_sent += 1;
                return Verdict::Send;
            }
            AlertKind::Login | AlertKind::BruteForce => {}
        }
        let forged_by = (alert.verdict == Some(Judged::Forged))
            .then(|| alert.event["caller_uid"].as_u64().and_then(|u| u32::try_from(u).ok()).unwrap_or(u32::MAX));
        let budget = if forged_by.is_some() { &mut self.forged } else { &mut self.real };
        let key = (forged_by, alert.user.clone(), alert.ip);
        let verdict = match budget.last.get(&key) {
            Some(last) if now.duration_since(*last) < self.cooldown => Verdict::Cooldown,
            _ if budget.sent >= self.per_minute => Verdict::Cap,
            _ => {
                budget.sent += 1;
                if budget.last.len() >= MAX_KEYS {
                    let cooldown = self.cooldown;
                    budget.last.retain(|_, t| now.duration_since(*t) < cooldown);
                    if budget.last.len() >= MAX_KEYS {
                        budget.last.clear(); // A flood of distinct keys: forget rather than grow.
                    }
                }
                budget.last.insert(key, now);
                Verdict::Send
            }
        };
        if verdict != Verdict::Send {
            self.hold(alert, verdict, forged_by);
        }
        verdict
    }

    fn hold(&mut self, alert: &Alert, verdict: Verdict, forged_by: Option<u32>) {
        let h = &mut self.held;
        match verdict {
            Verdict::Cooldown => h.cooldown += 1,
            _ => h.cap += 1,
        }
        count(&mut h.users, alert.user.clone().unwrap_or_else(|| "-".into()), "(others)".into());
        if let Some(uid) = forged_by {
            h.forged += 1;
            count(&mut h.forged_by, uid, u32::MAX);
        }
    }
}

/// Counts `key` in `map`, or under `other` once the map names [`MAX_NAMES`] * 10 keys.
fn count<K: Ord>(map: &mut BTreeMap<K, usize>, key: K, other: K) {
    let key = if map.len() >= MAX_NAMES * 10 && !map.contains_key(&key) { other } else { key };
    *map.entry(key).or_default() += 1;
}

/// The most-held entries of `map`, as "name (n)", and how many more there were.
fn top<K: std::fmt::Display>(map: &BTreeMap<K, usize>) -> String {
    let mut v: Vec<(&K, &usize)> = map.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    let mut names: Vec<String> = v.iter().take(MAX_NAMES).map(|(k, n)| format!("{k} ({n})")).collect();
    if v.len() > MAX_NAMES {
        names.push(format!("and {} more", v.len() - MAX_NAMES));
    }
    names.join(", ")
}

/// The sentence of a summary alert; bounded whatever was held.
pub fn summary_text(held: &Held, per_minute: u32) -> String {
    let mut why = Vec::new();
    if held.cap > 0 {
        why.push(format!("{} over the cap of {per_minute} alerts per minute", held.cap));
    }
    if held.cooldown > 0 {
        why.push(format!("{} within the cooldown for the same user and source", held.cooldown));
    }
    if held.health > 0 {
        why.push(format!("{} health alerts over {HEALTH_PER_MINUTE} a minute", held.health));
    }
    let mut text = format!("{} alert(s) held back in the last minute: {}.", held.total(), why.join("; "));
    if !held.users.is_empty() {
        text.push_str(&format!(" Users: {}.", top(&held.users)));
    }
    if held.forged > 0 {
        let uids: BTreeMap<String, usize> = held
            .forged_by
            .iter()
            .map(|(uid, n)| (if *uid == u32::MAX { "(others)".to_string() } else { format!("uid {uid}") }, *n))
            .collect();
        text.push_str(&format!(
            " {} of them forged (made by an unprivileged process, not a real login), by {}.",
            held.forged,
            top(&uids)
        ));
    }
    text.push_str(" Every event is still in the daemon's output.");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertKind;

    fn alert(user: &str, ip: &str) -> Alert {
        let mut a = crate::alert::internal_alert(AlertKind::Login, "h", String::new());
        a.user = Some(user.into());
        a.ip = Some(ip.parse().unwrap());
        a
    }

    fn forged(user: &str, ip: &str, uid: u32) -> Alert {
        let mut a = alert(user, ip);
        a.verdict = Some(Judged::Forged);
        a.event = serde_json::json!({ "caller_uid": uid, "user": user });
        a
    }

    #[test]
    fn forged_alerts_never_hold_back_a_real_one() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Duration::from_secs(600), 10, t0);
        // 100 forged sessions in a minute, naming the victim and made-up addresses, and the victim's
        // own next address among them.
        let mut sent = 0;
        for i in 0..100u64 {
            let ip = format!("198.51.100.{}", i % 50);
            if l.check(&forged("alice", &ip, 1000 + (i % 3) as u32), t0 + Duration::from_millis(i * 500))
                == Verdict::Send
            {
                sent += 1;
            }
        }
        assert_eq!(sent, 10, "forged alerts have their own cap");
        // The real login from a new address (one a forged alert already named) goes out at once.
        let now = t0 + Duration::from_secs(50);
        assert_eq!(l.check(&alert("alice", "198.51.100.7"), now), Verdict::Send);
        assert_eq!(l.check(&alert("alice", "198.51.100.7"), now), Verdict::Cooldown, "real cooldown still applies");
        // The summary is bounded and names the forging uids.
        let held = l.roll(t0 + MINUTE).unwrap();
        assert_eq!((held.forged, held.cap + held.cooldown), (90, 91));
        let text = summary_text(&held, 10);
        assert!(text.contains("90 of them forged") && text.contains("uid 1000 (30)"), "{text}");
    }

    #[test]
    fn summaries_stay_short_and_health_alerts_are_capped() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Duration::from_secs(600), 1, t0);
        for i in 0..5000u32 {
            let _ = l.check(&forged(&format!("user{i}"), "203.0.113.9", i), t0);
        }
        let mut health = crate::alert::internal_alert(AlertKind::Health, "h", "x".into());
        let sent = (0..30).filter(|_| l.check(&health, t0) == Verdict::Send).count();
        assert_eq!(sent, HEALTH_PER_MINUTE as usize);
        health.kind = AlertKind::Summary;
        assert_eq!(l.check(&health, t0), Verdict::Send, "summaries always go");
        let held = l.roll(t0 + MINUTE).unwrap();
        assert!(held.users.len() <= MAX_NAMES * 10 + 1 && held.forged_by.len() <= MAX_NAMES * 10 + 1);
        let text = summary_text(&held, 1);
        assert!(text.len() < 1000, "{} bytes: {text}", text.len());
        assert!(text.contains("and ") && text.contains("more"), "{text}");
        assert!(text.contains("20 health alerts over 10 a minute"), "{text}");
    }

    #[test]
    fn cap_then_summary() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Duration::from_secs(600), 10, t0);
        let verdicts: Vec<Verdict> = (0..100)
            .map(|i| l.check(&alert("u", &format!("198.51.100.{i}")), t0 + Duration::from_millis(i * 100)))
            .collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Send).count(), 10);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Cap).count(), 90);
        assert_eq!(l.summary_due(), Some(t0 + MINUTE));
        assert_eq!(l.roll(t0 + Duration::from_secs(59)), None);
        let held = l.roll(t0 + MINUTE).unwrap();
        assert_eq!((held.cap, held.cooldown, held.users["u"]), (90, 0, 90));
        assert!(summary_text(&held, 10).starts_with("90 alert(s) held back"), "{}", summary_text(&held, 10));
        assert_eq!(l.summary_due(), None);
        assert_eq!(l.check(&alert("u", "203.0.113.1"), t0 + MINUTE), Verdict::Send, "a new window");
    }

    #[test]
    fn cooldown_per_user_and_source() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Duration::from_secs(600), 10, t0);
        assert_eq!(l.check(&alert("a", "203.0.113.1"), t0), Verdict::Send);
        assert_eq!(l.check(&alert("a", "203.0.113.1"), t0 + Duration::from_secs(5)), Verdict::Cooldown);
        assert_eq!(l.check(&alert("b", "203.0.113.1"), t0 + Duration::from_secs(5)), Verdict::Send);
        assert_eq!(l.check(&alert("a", "203.0.113.1"), t0 + Duration::from_secs(601)), Verdict::Send);
    }
}
