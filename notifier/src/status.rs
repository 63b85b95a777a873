//! `notifier status`: whether the daemon runs, the files its probes are attached to, its last
//! event, each sink's health (from the daemon's status file), and the spool and dead letters (from
//! the state directory itself, so they show while it is stopped too). Exits 3 when the daemon is
//! not running, as `systemctl status` and LSB init scripts do.

use std::{fmt::Write as _, io::Write as _, path::Path};

use crate::{
    config::Config,
    event::printable,
    spool::{dead_letters, unreadable},
    state::{
        spool as layout,
        status::{self, Status},
    },
};

/// The spool and the dead letters, as found on disk.
#[derive(Debug, Default, serde::Serialize)]
struct Disk {
    /// Pending alerts by spool directory (the sink's name, made safe).
    pending: Vec<(String, usize)>,
    /// Dead letters by sink.
    dead_letters: Vec<(String, usize)>,
}

impl Disk {
    fn read(state_dir: &Path) -> anyhow::Result<Self> {
        let (letters, _) = dead_letters(state_dir).map_err(|e| unreadable(&layout::dead_letter(state_dir), &e))?;
        let mut dead: Vec<(String, usize)> = Vec::new();
        for d in letters {
            match dead.iter_mut().find(|(s, _)| *s == d.sink) {
                Some((_, n)) => *n += 1,
                None => dead.push((d.sink, 1)),
            }
        }
        Ok(Self { pending: layout::pending_by_dir(state_dir), dead_letters: dead })
    }

    fn pending_of(&self, sink: &str) -> usize {
        let dir = layout::dir_name(sink);
        self.pending.iter().find(|(d, _)| *d == dir).map_or(0, |(_, n)| *n)
    }

    fn dead_of(&self, sink: &str) -> usize {
        self.dead_letters.iter().find(|(s, _)| s == sink).map_or(0, |(_, n)| *n)
    }
}

/// Prints the status; `Ok(false)` when the daemon is not running.
pub fn run(config: Option<&Path>, json: bool) -> anyhow::Result<bool> {
    let config = Config::load_or_default(config)?;
    let state_dir = &config.state_dir;
    let status = status::read(state_dir).map_err(|e| unreadable(&status::path(state_dir), &e))?;
    let disk = Disk::read(state_dir)?;
    let running = status.as_ref().is_some_and(Status::running);
    let sinks: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
    let mut out = std::io::stdout().lock();
    if json {
        let body = serde_json::json!({ "running": running, "status": status, "spool": disk });
        serde_json::to_writer_pretty(&mut out, &body)?;
        writeln!(out)?;
    } else {
        let alive = status.as_ref().is_some_and(Status::alive);
        write!(out, "{}", text(status.as_ref(), alive, &disk, &sinks, state_dir))?;
    }
    Ok(running)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `alive`: the process that wrote `status` still exists.
fn text(status: Option<&Status>, alive: bool, disk: &Disk, config_sinks: &[&str], state_dir: &Path) -> String {
    let running = alive && status.is_some_and(|s| s.stopped.is_none());
    let mut out = String::new();
    match status {
        Some(s) if running => {
            let _ = writeln!(out, "notifier is running: pid {}, since {}, version {}", s.pid, s.started, s.version);
        }
        Some(s) => {
            let why = match &s.stopped {
                Some(at) if alive => {
                    format!("stopping since {at}: logins are no longer watched, pending alerts go out")
                }
                Some(at) => format!("stopped at {at}"),
                None => format!("pid {} is gone; its last status is from {}", s.pid, s.updated),
            };
            let _ = writeln!(out, "notifier is not running ({why})");
        }
        None => {
            let _ = writeln!(out, "notifier is not running (it has not run with state_dir {})", state_dir.display());
        }
    }
    if let Some(s) = status {
        let _ = writeln!(out, "  host:        {}", printable(&s.host));
        if let Some(c) = &s.config {
            let _ = writeln!(out, "  config:      {}", c.display());
        }
        let mut label = "  probes:     ";
        if s.probes.is_empty() {
            let _ = writeln!(out, "{label} none");
        }
        for p in &s.probes {
            let count = p.probes.map(|n| format!("{n} on ")).unwrap_or_default();
            let _ = writeln!(out, "{label} {count}{} ({})", p.file.display(), p.role);
            label = "              ";
        }
        let _ = write!(out, "  events:      {} written, {} lost", s.events, s.lost);
        if let Some(e) = &s.last_event {
            let _ = write!(out, "; last {} {}", e.time, e.event);
            if let Some(user) = &e.user {
                let _ = write!(out, " {}", printable(user));
            }
            if let Some(from) = e.peer.as_ref().or(e.rhost.as_ref()) {
                let _ = write!(out, " from {}", printable(from));
            }
            if let Some(service) = &e.service {
                let _ = write!(out, " ({})", printable(service));
            }
            if let Some(v) = &e.verdict {
                let _ = write!(out, ", {v}");
            }
        }
        out.push('\n');
        if let Some(f) = &s.fleet {
            let state = if f.connected { "connected" } else { "not connected" };
            let _ =
                writeln!(out, "  fleet:       {state}, {} in the outbox", plural(f.outbox as usize, "event", "events"));
        }
    }
    let pending: usize = disk.pending.iter().map(|(_, n)| n).sum();
    let dead: usize = disk.dead_letters.iter().map(|(_, n)| n).sum();
    let _ = write!(
        out,
        "  spool:       {} pending, {}",
        plural(pending, "alert", "alerts"),
        plural(dead, "dead letter", "dead letters")
    );
    out.push_str(if pending + dead > 0 { " (notifier spool list)\n" } else { "\n" });
    // The sinks the daemon reports on, or those of the config while it is stopped.
    let reported: Vec<&status::SinkState> =
        status.filter(|_| running).map(|s| s.sinks.iter().collect()).unwrap_or_default();
    let names: Vec<&str> =
        if running { reported.iter().map(|s| s.name.as_str()).collect() } else { config_sinks.to_vec() };
    if names.is_empty() {
        out.push_str("  sinks:       none configured\n");
    }
    for name in names {
        let health = match reported.iter().find(|s| s.name == name) {
            None => "not running".to_string(),
            Some(s) => match (&s.failing, &s.last_delivered) {
                (Some(f), _) if f.stopped => {
                    format!("stopped until its service's limit resets: {}", printable(&f.error))
                }
                (Some(f), _) => format!("failing since {}: {}", f.since, printable(&f.error)),
                (None, Some(at)) => format!("ok, {} delivered, the last at {at}", s.delivered),
                (None, None) => "ok, nothing sent yet".to_string(),
            },
        };
        let _ = writeln!(
            out,
            "  sink {}: {health}; {} pending, {}",
            printable(name),
            disk.pending_of(name),
            plural(disk.dead_of(name), "dead letter", "dead letters")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::status::{Failing, LastEvent, ProbeFile, SinkState};

    #[test]
    fn a_running_daemon_shows_its_probes_last_login_and_each_sink() {
        let s = Status {
            version: "0.1.0".into(),
            pid: 42,
            started: "2026-12-06T06:00:00Z".into(),
            host: "web-1".into(),
            probes: vec![
                ProbeFile { role: "libpam".into(), file: "/lib/libpam.so.0".into(), probes: Some(13) },
                ProbeFile { role: "sshd".into(), file: "/usr/sbin/sshd".into(), probes: None },
            ],
            events: 3,
            last_event: Some(LastEvent {
                time: "2026-12-06T06:01:00Z".into(),
                event: "session_open".into(),
                user: Some("alice".into()),
                service: Some("sshd".into()),
                peer: Some("203.0.113.7:52144".into()),
                rhost: Some("203.0.113.7".into()),
                verdict: Some("new_network".into()),
            }),
            sinks: vec![
                SinkState { name: "ops".into(), delivered: 2, last_delivered: Some("T1".into()), failing: None },
                SinkState {
                    name: "phone".into(),
                    failing: Some(Failing { since: "T2".into(), error: "HTTP 500\u{1b}".into(), stopped: false }),
                    ..SinkState::default()
                },
            ],
            ..Status::default()
        };
        let disk = Disk { pending: vec![("phone".into(), 2)], dead_letters: vec![("phone".into(), 1)] };
        assert_eq!(
            text(Some(&s), true, &disk, &[], Path::new("/s")),
            "notifier is running: pid 42, since 2026-12-06T06:00:00Z, version 0.1.0\n  host:        web-1\n  probes:      \
             13 on /lib/libpam.so.0 (libpam)\n               /usr/sbin/sshd (sshd)\n  events:      3 written, 0 lost; \
             last 2026-12-06T06:01:00Z session_open alice from 203.0.113.7:52144 (sshd), new_network\n  spool:       \
             2 alerts pending, 1 dead letter (notifier spool list)\n  sink ops: ok, 2 delivered, the last at T1; 0 \
             pending, 0 dead letters\n  sink phone: failing since T2: HTTP 500\\u{1b}; 2 pending, 1 dead letter\n"
        );
    }

    #[test]
    fn a_stopped_or_crashed_daemon_says_so_and_still_shows_the_spool() {
        let disk = Disk::default();
        let none = text(None, false, &disk, &["ops"], Path::new("/var/lib/notifier"));
        assert_eq!(
            none,
            "notifier is not running (it has not run with state_dir /var/lib/notifier)\n  spool:       0 alerts \
             pending, 0 dead letters\n  sink ops: not running; 0 pending, 0 dead letters\n"
        );
        let gone = Status { pid: 7, updated: "T".into(), ..Status::default() };
        assert!(text(Some(&gone), false, &disk, &[], Path::new("/s"))
            .starts_with("notifier is not running (pid 7 is gone; its last status is from T)\n"));
        let stopped = Status { stopped: Some("T9".into()), ..gone };
        assert!(text(Some(&stopped), false, &disk, &[], Path::new("/s"))
            .starts_with("notifier is not running (stopped at T9)\n"));
        assert!(text(Some(&stopped), true, &disk, &[], Path::new("/s")).starts_with(
            "notifier is not running (stopping since T9: logins are no longer watched, pending alerts go out)\n"
        ));
    }
}
