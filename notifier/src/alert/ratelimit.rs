//! Rate limits for alerts: a cooldown per (user, source), and a global cap per minute. What is held
//! back is counted and summarised in one alert when the minute ends; nothing is dropped silently.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use super::Alert;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Same user and source alerted less than the cooldown ago.
    Cooldown,
    /// The global cap for this minute is reached.
    Cap,
}

/// What was held back during one window, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub cooldown: usize,
    pub cap: usize,
    /// Held alerts per user (or "-").
    pub users: BTreeMap<String, usize>,
}

impl Held {
    pub fn total(&self) -> usize {
        self.cooldown + self.cap
    }
}

pub struct Limiter {
    cooldown: Duration,
    per_minute: u32,
    last: HashMap<(Option<String>, Option<IpAddr>), Instant>,
    window_start: Instant,
    sent: u32,
    held: Held,
}

/// Most (user, source) pairs remembered for the cooldown.
const MAX_KEYS: usize = 10_000;
const MINUTE: Duration = Duration::from_secs(60);

impl Limiter {
    pub fn new(cooldown: Duration, per_minute: u32, now: Instant) -> Self {
        Self { cooldown, per_minute, last: HashMap::new(), window_start: now, sent: 0, held: Held::default() }
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
        self.sent = 0;
        let held = std::mem::take(&mut self.held);
        (held.total() > 0).then_some(held)
    }

    /// Decides for one alert. Health alerts and summaries bypass the limits.
    pub fn check(&mut self, alert: &Alert, now: Instant) -> Verdict {
        let key = (alert.user.clone(), alert.ip);
        if let Some(last) = self.last.get(&key) {
            if now.duration_since(*last) < self.cooldown {
                self.hold(alert, true);
                return Verdict::Cooldown;
            }
        }
        if self.sent >= self.per_minute {
            self.hold(alert, false);
            return Verdict::Cap;
        }
        self.sent += 1;
        if self.last.len() >= MAX_KEYS {
            let cooldown = self.cooldown;
            self.last.retain(|_, t| now.duration_since(*t) < cooldown);
        }
        self.last.insert(key, now);
        Verdict::Send
    }

    fn hold(&mut self, alert: &Alert, cooldown: bool) {
        if cooldown {
            self.held.cooldown += 1;
        } else {
            self.held.cap += 1;
        }
        *self.held.users.entry(alert.user.clone().unwrap_or_else(|| "-".into())).or_default() += 1;
    }
}

/// The sentence of a summary alert.
pub fn summary_text(held: &Held, per_minute: u32) -> String {
    let users: Vec<String> = held.users.iter().map(|(u, n)| format!("{u} ({n})")).collect();
    let mut why = Vec::new();
    if held.cap > 0 {
        why.push(format!("{} over the cap of {per_minute} alerts per minute", held.cap));
    }
    if held.cooldown > 0 {
        why.push(format!("{} within the cooldown for the same user and source", held.cooldown));
    }
    format!(
        "{} alert(s) held back in the last minute: {}. Users: {}. Every event is still in the daemon's output.",
        held.total(),
        why.join("; "),
        users.join(", ")
    )
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
