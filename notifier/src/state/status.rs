//! The running daemon's status file, `state_dir/status.json`: written by `notifier run` (at most
//! once a second while something changes, and at start and stop), read by `notifier status`.
//! Whether the daemon still runs is not taken from the file: its pid must still be the same
//! process (its start time in `/proc/PID/stat` matches), so a crash or a reused pid reads as
//! stopped.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The file's name in the state directory.
const FILE: &str = "status.json";

/// What the daemon says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// The process's start time, in clock ticks after boot (`/proc/PID/stat`, field 22).
    pub start_ticks: u64,
    pub started: String,
    pub updated: String,
    /// Set by an orderly stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub host: String,
    /// The config file it runs on (`None`: the default path, or the built-in defaults).
    pub config: Option<PathBuf>,
    pub probes: Vec<ProbeFile>,
    /// Events written since the start, and kernel records lost.
    pub events: u64,
    pub lost: u64,
    pub last_event: Option<LastEvent>,
    pub sinks: Vec<SinkState>,
    /// Fleet mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetState>,
}

/// One file that probes are attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeFile {
    /// `libpam`, `sshd` (the witness's setlogin) or `libc` (the witness's accept and setresuid).
    pub role: String,
    pub file: PathBuf,
    /// Uprobes attached to it (known for libpam).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<usize>,
}

/// The last event written (a login, a failure, a brute force).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastEvent {
    pub time: String,
    pub event: String,
    pub user: Option<String>,
    pub service: Option<String>,
    /// The true peer (`203.0.113.7:52144`), and what the PAM caller said (`PAM_RHOST`).
    pub peer: Option<String>,
    pub rhost: Option<String>,
    pub verdict: Option<String>,
}

/// One sink, as its delivery task last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkState {
    pub name: String,
    /// Alerts delivered since the start.
    pub delivered: u64,
    pub last_delivered: Option<String>,
    /// The last failed attempt, when no delivery has succeeded since.
    pub failing: Option<Failing>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failing {
    pub since: String,
    pub error: String,
    /// The service refuses every alert until its limit resets (a spent quota).
    pub stopped: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetState {
    pub connected: bool,
    /// Events not yet acknowledged by the stream.
    pub outbox: u64,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Replaces the file (mode 0600: it names users and addresses). Not fsynced: it describes a
/// running process, and a crash makes it stale anyway.
pub fn write(state_dir: &Path, status: &Status) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(status).map_err(io::Error::other)?;
    super::write_replacing(&path(state_dir), &state_dir.join("status.json.tmp"), &bytes)
}

/// The last status written, `None` when there is none.
pub fn read(state_dir: &Path) -> io::Result<Option<Status>> {
    match std::fs::read(path(state_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The start time of process `pid` in clock ticks after boot, `None` when there is no such process.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything; count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

impl Status {
    /// The process that wrote it still runs, and has not begun to stop.
    pub fn running(&self) -> bool {
        self.stopped.is_none() && self.alive()
    }

    /// The process that wrote it still exists (it may be stopping).
    pub fn alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_read_and_a_written_status_reads_back_as_running() {
        let pid = std::process::id();
        let ticks = start_ticks(pid).expect("own /proc/PID/stat");
        assert!(start_ticks(u32::MAX).is_none());
        let dir = std::env::temp_dir().join(format!("notifier-status-{pid}"));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir).unwrap(), None);
        let mut status = Status { pid, start_ticks: ticks, host: "h".into(), ..Status::default() };
        write(&dir, &status).unwrap();
        let back = read(&dir).unwrap().unwrap();
        assert_eq!(back, status);
        assert!(back.running());
        status.start_ticks += 1;
        assert!(!status.running(), "another process with the same pid");
        status.start_ticks -= 1;
        status.stopped = Some("2026-12-06T00:00:00Z".into());
        assert!(!status.running(), "stopped in order");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
