//! What `run` tells about itself: the status file that `notifier status` reads, and the one-line
//! `STATUS=` that `systemctl status` shows. Both are written together, at most once a second
//! while something changes, so a burst of logins costs one write; an idle daemon writes nothing.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{
    alert::spool::{SinkHealth, SinkState},
    clock,
    loader::Probes,
    metrics::Metrics,
    policy::Judgement,
    service,
    state::status::{self, Failing, FleetState, LastEvent, ProbeFile, SinkState as Sink, Status},
};

/// The shortest time between two writes.
const EVERY: Duration = Duration::from_secs(1);

pub struct Tracker {
    status: Status,
    state_dir: PathBuf,
    dirty: bool,
    written: Option<Instant>,
    /// The last write failed (logged once per streak).
    failing: bool,
}

fn now() -> String {
    clock::format_time(clock::unix_now_ns())
}

impl Tracker {
    pub fn new(state_dir: PathBuf, host: String, config: Option<PathBuf>, fleet: bool) -> Self {
        let pid = std::process::id();
        let status = Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid,
            start_ticks: status::start_ticks(pid).unwrap_or(0),
            started: now(),
            host,
            config,
            fleet: fleet.then(FleetState::default),
            ..Status::default()
        };
        Self { status, state_dir, dirty: true, written: None, failing: false }
    }

    /// The files the probes are attached to (at start, and after a libpam is replaced or a
    /// container starts).
    pub fn probes(&mut self, probes: &Probes) {
        let file = |role: &str, file: &PathBuf, n: Option<usize>| ProbeFile {
            role: role.into(),
            file: file.clone(),
            probes: n,
        };
        let mut files: Vec<ProbeFile> = probes.attached.iter().map(|(p, n)| file("libpam", p, Some(*n))).collect();
        files.extend(probes.sshd.probed.iter().map(|p| file("sshd", p, None)));
        files.extend(probes.sshd.libc.iter().map(|p| file("libc", p, None)));
        if files != self.status.probes {
            self.status.probes = files;
            self.dirty = true;
        }
    }

    /// The sinks configured (at start and after a reload); what is known of those kept stays.
    pub fn sinks<'a>(&mut self, names: impl Iterator<Item = &'a str>) {
        let old = std::mem::take(&mut self.status.sinks);
        self.status.sinks = names
            .map(|name| {
                old.iter()
                    .find(|s| s.name == name)
                    .cloned()
                    .unwrap_or_else(|| Sink { name: name.into(), ..Sink::default() })
            })
            .collect();
        self.dirty = true;
    }

    pub fn judged(&mut self, j: &Judgement) {
        let last = match j {
            Judgement::Login(j) => LastEvent {
                time: j.login.time.clone(),
                event: j.login.event.as_str().into(),
                user: j.login.user.clone(),
                service: j.login.service.clone(),
                peer: j.login.peer.as_ref().map(ToString::to_string),
                rhost: j.login.rhost.clone(),
                verdict: j.verdict.map(|v| v.as_str().into()),
            },
            Judgement::BruteForce(b) => LastEvent {
                time: b.time.clone(),
                event: b.event.into(),
                user: (b.users.len() == 1).then(|| b.users[0].clone()),
                peer: Some(b.ip.to_string()),
                verdict: Some(b.verdict.as_str().into()),
                ..LastEvent::default()
            },
        };
        self.status.events += 1;
        self.status.last_event = Some(last);
        self.dirty = true;
    }

    /// Everything lost since the start (`events_lost`'s `total`).
    pub fn lost(&mut self, total: u64) {
        self.status.lost = total;
        self.dirty = true;
    }

    pub fn sink(&mut self, h: &SinkHealth) {
        let Some(sink) = self.status.sinks.iter_mut().find(|s| s.name == h.sink) else { return };
        match &h.state {
            SinkState::Delivered => {
                sink.delivered += 1;
                sink.last_delivered = Some(now());
                sink.failing = None;
            }
            SinkState::Failing { error, .. } | SinkState::Refused { error } | SinkState::Stopped { error } => {
                let since = sink.failing.take().map_or_else(now, |f| f.since);
                let stopped = matches!(h.state, SinkState::Stopped { .. });
                sink.failing = Some(Failing { since, error: error.clone(), stopped });
            }
        }
        self.dirty = true;
    }

    /// When the next write is due, if anything changed.
    pub fn due(&self) -> Option<Instant> {
        self.dirty.then(|| self.written.map_or_else(Instant::now, |at| at + EVERY))
    }

    /// Writes the file and tells systemd.
    pub fn write(&mut self, metrics: &Metrics) {
        if let Some(f) = &mut self.status.fleet {
            f.connected = metrics.fleet.connected.get() > 0;
            f.outbox = u64::try_from(metrics.fleet.outbox_events.get()).unwrap_or(0);
        }
        self.status.updated = now();
        self.dirty = false;
        self.written = Some(Instant::now());
        match status::write(&self.state_dir, &self.status) {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                warn!(error = %e, "Cannot write the status file; `notifier status` shows an old state.");
            }
            Err(_) => {}
        }
        // The sinks' own counts: the event loop does not read the spool directories.
        let pending = self.status.sinks.iter().map(|s| metrics.pending_of(&s.name)).sum();
        service::status(&summary(&self.status, pending));
    }

    /// An orderly stop: the file says so.
    pub fn stopped(&mut self, metrics: &Metrics) {
        self.status.stopped = Some(now());
        self.write(metrics);
    }
}

/// The one line `systemctl status` shows: `13 probes on 2 files; 5 events, last 06:12:01
/// session_open alice (sshd); 1 alert pending`.
pub fn summary(s: &Status, pending: usize) -> String {
    let probes: usize = s.probes.iter().filter_map(|p| p.probes).sum();
    let mut line = format!("watching logins: {probes} probes on {} files; {} events", s.probes.len(), s.events);
    if let Some(e) = &s.last_event {
        // The clock time only: the date is in the file.
        let time = e.time.get(11..19).unwrap_or(&e.time);
        let user = e.user.as_deref().map(crate::event::printable).unwrap_or_else(|| "-".into());
        line.push_str(&format!(", last {time} {} {user}", e.event));
        if let Some(service) = &e.service {
            line.push_str(&format!(" ({})", crate::event::printable(service)));
        }
    }
    if s.lost > 0 {
        line.push_str(&format!("; {} lost", s.lost));
    }
    line.push_str(&format!("; {pending} alert{} pending", if pending == 1 { "" } else { "s" }));
    let failing: Vec<&str> = s.sinks.iter().filter(|k| k.failing.is_some()).map(|k| k.name.as_str()).collect();
    if !failing.is_empty() {
        line.push_str(&format!("; failing: {}", failing.join(", ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_systemd_line_names_the_last_login_and_what_fails() {
        let mut s = Status {
            probes: vec![
                ProbeFile { role: "libpam".into(), file: "/lib/libpam.so.0".into(), probes: Some(13) },
                ProbeFile { role: "sshd".into(), file: "/usr/sbin/sshd".into(), probes: None },
            ],
            events: 5,
            ..Status::default()
        };
        assert_eq!(summary(&s, 0), "watching logins: 13 probes on 2 files; 5 events; 0 alerts pending");
        s.last_event = Some(LastEvent {
            time: "2026-12-06T06:12:01.5Z".into(),
            event: "session_open".into(),
            user: Some("al\nice".into()),
            service: Some("sshd".into()),
            ..LastEvent::default()
        });
        s.sinks = vec![Sink {
            name: "ops".into(),
            failing: Some(Failing { since: "x".into(), error: "HTTP 500".into(), stopped: false }),
            ..Sink::default()
        }];
        s.lost = 2;
        assert_eq!(
            summary(&s, 1),
            "watching logins: 13 probes on 2 files; 5 events, last 06:12:01 session_open al\\u{a}ice (sshd); 2 lost; \
             1 alert pending; failing: ops"
        );
    }
}
