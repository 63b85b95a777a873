//! Brute-force detection: N authentication failures from one IP within a window give one
//! `brute_force` report, with the count and the users tried. A success from an IP with recent
//! failures is flagged on that login. Bounded: the IPs tracked at once are capped.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    net::IpAddr,
};

/// IPs tracked at once; the one idle longest is dropped first.
const MAX_IPS: usize = 10_000;

#[derive(Debug, Default)]
struct Window {
    /// Failure times, in milliseconds, oldest first.
    times: VecDeque<i64>,
    users: BTreeSet<String>,
    /// A report was made for the failures now in the window.
    reported: bool,
}

/// One brute-force report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attack {
    pub ip: IpAddr,
    pub count: usize,
    pub users: Vec<String>,
}

pub struct Detector {
    threshold: usize,
    window_ms: i64,
    by_ip: HashMap<IpAddr, Window>,
}

impl Detector {
    pub fn new(threshold: u32, window_secs: u64) -> Self {
        Self {
            threshold: threshold.max(1) as usize,
            window_ms: i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            by_ip: HashMap::new(),
        }
    }

    fn prune(&mut self, ip: IpAddr, now_ms: i64) -> &mut Window {
        if !self.by_ip.contains_key(&ip) && self.by_ip.len() >= MAX_IPS {
            let idle = self.by_ip.iter().min_by_key(|(_, w)| w.times.back().copied().unwrap_or(0)).map(|(k, _)| *k);
            if let Some(idle) = idle {
                self.by_ip.remove(&idle);
            }
        }
        let window_ms = self.window_ms;
        let w = self.by_ip.entry(ip).or_default();
        while w.times.front().is_some_and(|&t| now_ms - t > window_ms) {
            w.times.pop_front();
        }
        if w.times.is_empty() {
            w.users.clear();
            w.reported = false;
        }
        w
    }

    /// Records a failure; returns a report when this one reaches the threshold.
    pub fn failure(&mut self, ip: IpAddr, user: Option<&str>, now_ms: i64) -> Option<Attack> {
        let threshold = self.threshold;
        let w = self.prune(ip, now_ms);
        w.times.push_back(now_ms);
        if let Some(user) = user {
            w.users.insert(user.to_string());
        }
        if w.times.len() >= threshold && !w.reported {
            w.reported = true;
            return Some(Attack { ip, count: w.times.len(), users: w.users.iter().cloned().collect() });
        }
        None
    }

    /// Failures from `ip` within the window before this success (0 if none).
    pub fn success(&mut self, ip: IpAddr, now_ms: i64) -> usize {
        if !self.by_ip.contains_key(&ip) {
            return 0;
        }
        self.prune(ip, now_ms).times.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_failures_in_a_minute_give_one_report() {
        let mut d = Detector::new(5, 60);
        let ip: IpAddr = "127.0.0.66".parse().unwrap();
        let reports: Vec<Attack> =
            (0..6).filter_map(|i| d.failure(ip, Some(if i % 2 == 0 { "root" } else { "admin" }), i * 5_000)).collect();
        assert_eq!(reports, vec![Attack { ip, count: 5, users: vec!["admin".into(), "root".into()] }]);
        assert_eq!(d.success(ip, 31_000), 6);
    }

    #[test]
    fn slow_failures_never_report_and_window_resets() {
        let mut d = Detector::new(3, 10);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for i in 0..10 {
            assert_eq!(d.failure(ip, Some("u"), i * 6_000), None, "failure {i}");
        }
        // After a quiet window, a new burst reports again.
        let mut d = Detector::new(2, 10);
        assert!(d.failure(ip, None, 0).is_none());
        assert!(d.failure(ip, None, 1).is_some());
        assert!(d.failure(ip, None, 2).is_none());
        assert!(d.failure(ip, None, 60_000).is_none());
        assert!(d.failure(ip, None, 60_001).is_some());
        assert_eq!(d.success("127.0.0.1".parse().unwrap(), 0), 0);
    }
}
