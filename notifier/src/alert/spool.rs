//! The durable spool, and the delivery task of one sink.
//!
//! Each sink has a directory `state_dir/spool/<sink>` with one file per pending alert, written
//! (fsync, rename, fsync the directory) before delivery is first tried, and removed only after the
//! sink confirms. At start the task loads what a previous run left. A transient failure is retried
//! with exponential backoff and jitter until `max_age`; a permanent failure, or an alert older than
//! `max_age`, goes to `state_dir/dead-letter.jsonl` and is logged once.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    sink::{Sink, SinkError},
    Alert,
};
use crate::{metrics::Metrics, state::spool as layout};

/// One pending delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub alert: Alert,
    pub attempts: u32,
    /// Unix milliseconds when the alert was spooled.
    pub spooled_ms: i64,
    /// Unix milliseconds of the next attempt.
    pub next_ms: i64,
    pub last_error: Option<String>,
}

/// Backoff and expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max_delay: Duration,
    pub max_age: Duration,
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1`: initial × 2^attempts, capped, ±20 % jitter.
    pub fn delay(&self, attempts: u32, seed: u64) -> Duration {
        let base = self.initial.saturating_mul(1u32 << attempts.min(20)).min(self.max_delay);
        // Jitter from a hash of the seed: enough to spread retries, no RNG needed.
        let mixed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
        let factor = 0.8 + 0.4 * (mixed % 1000) as f64 / 1000.0;
        base.mul_f64(factor)
    }
}

pub use crate::clock::unix_now_ms as now_ms;

/// The spool directory of one sink.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
    dead_letter: PathBuf,
}

impl Spool {
    /// The spool of the sink called `name`, created if needed.
    pub fn open(state_dir: &Path, name: &str) -> io::Result<Self> {
        let dir = layout::sink_dir(state_dir, name);
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(Self { dir, dead_letter: layout::dead_letter(state_dir) })
    }

    fn file(&self, id: &str) -> PathBuf {
        layout::entry_file(&self.dir, id)
    }

    /// Writes `entry` durably.
    pub fn put(&self, entry: &Entry) -> io::Result<()> {
        let path = self.file(&entry.alert.id);
        let bytes = serde_json::to_vec(entry).map_err(io::Error::other)?;
        crate::state::write_durably(&path, &path.with_extension("tmp"), &bytes)
    }

    pub fn remove(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.file(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every pending entry. An unreadable file is moved aside (`.bad`) and reported, not deleted.
    pub fn load(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        for path in layout::entry_files(&self.dir) {
            match fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Entry>(&b).ok()) {
                Some(e) => entries.push(e),
                None => {
                    warn!(file = %path.display(), "Unreadable spool file moved aside (.bad).");
                    let _ = fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        entries.sort_by_key(|e| e.spooled_ms);
        entries
    }

    /// Appends to the dead-letter file (mode 0600), under its lock.
    pub fn dead(&self, sink: &str, entry: &Entry, reason: &str) -> io::Result<()> {
        let letter = DeadLetter {
            time: crate::clock::format_time(i128::from(now_ms()) * 1_000_000),
            sink: sink.into(),
            reason: reason.into(),
            attempts: entry.attempts,
            alert: entry.alert.clone(),
        };
        let mut line = serde_json::to_vec(&letter).map_err(io::Error::other)?;
        line.push(b'\n');
        for attempt in 0.. {
            let mut f = OpenOptions::new().create(true).append(true).mode(0o600).open(&self.dead_letter)?;
            f.lock()?;
            // `notifier spool retry` replaces the file under the same lock: append to the new one.
            if !same_file(&f, &self.dead_letter) && attempt < 10 {
                continue;
            }
            f.write_all(&line)?;
            f.sync_all()?;
            break;
        }
        self.remove(&entry.alert.id)
    }
}

/// `f` is still the file at `path` (not replaced since it was opened).
pub fn same_file(f: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (f.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// One line of `state_dir/dead-letter.jsonl`: an alert given up on, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub time: String,
    pub sink: String,
    pub reason: String,
    pub attempts: u32,
    pub alert: Alert,
}

/// What a sink task reports to the daemon about its health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkHealth {
    pub sink: String,
    pub state: SinkState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkState {
    /// An alert was delivered.
    Delivered,
    /// An attempt failed; the alert stays spooled. `for_`: how long this alert has been failing.
    Failing { for_: Duration, error: String },
    /// The service refused an alert for good; it is a dead letter (a bad token, a bad request).
    Refused { error: String },
    /// The service refuses every alert until an outside limit resets (`SinkError::Exhausted`).
    Stopped { error: String },
}

/// What the dispatcher hands a sink's task.
#[derive(Debug)]
pub enum Job {
    /// A new alert, already spooled.
    Deliver(Box<Entry>),
    /// Look in the spool for alerts put there from outside (`notifier spool retry`), and try every
    /// pending alert now (SIGUSR1).
    Rescan,
}

/// Delivers a sink's alerts until the channel closes and nothing is pending.
pub async fn deliver(
    name: String,
    sink: Arc<Sink>,
    spool: Spool,
    policy: RetryPolicy,
    mut rx: mpsc::Receiver<Job>,
    health: mpsc::UnboundedSender<SinkHealth>,
    metrics: Arc<Metrics>,
) {
    let mut pending = spool.load();
    metrics.pending(&name, pending.len());
    if !pending.is_empty() {
        info!(sink = %name, count = pending.len(), "Delivering alerts spooled before the last stop.");
    }
    let mut open = true;
    // The alerts loaded from the spool (at start or by a rescan) and since delivered or given up
    // on: their own `Deliver` may still be on its way.
    let mut done: Vec<String> = Vec::new();
    let mut loaded: std::collections::HashSet<String> = pending.iter().map(|e| e.alert.id.clone()).collect();
    // Until when the receiver asked for a pause (`Retry-After`): nothing is sent to it before.
    let mut paused_until = 0;
    loop {
        let now = now_ms();
        let mut i = 0;
        while i < pending.len() {
            if pending[i].next_ms > now || paused_until > now {
                i += 1;
                continue;
            }
            let result = tokio::time::timeout(Duration::from_secs(30), sink.send(&pending[i].alert))
                .await
                .unwrap_or_else(|_| Err(SinkError::transient("no answer within 30 s")));
            let entry = &mut pending[i];
            let (e, asked) = match result {
                Ok(()) => {
                    if let Err(e) = spool.remove(&entry.alert.id) {
                        warn!(sink = %name, error = %e, "Delivered, but the spool file could not be removed.");
                    }
                    info!(sink = %name, alert = %entry.alert.id, attempts = entry.attempts + 1, "Alert delivered.");
                    Metrics::sink(&metrics.alerts_sent, &name);
                    if loaded.contains(&entry.alert.id) {
                        done.push(entry.alert.id.clone());
                    }
                    pending.remove(i);
                    let _ = health.send(SinkHealth { sink: name.clone(), state: SinkState::Delivered });
                    continue;
                }
                Err(SinkError::Permanent(e)) => {
                    warn!(sink = %name, alert = %entry.alert.id, error = %e, "Delivery failed permanently; alert moved to the dead-letter file.");
                    let _ = spool.dead(&name, entry, &e.to_string());
                    Metrics::sink(&metrics.alerts_failed, &name);
                    Metrics::sink(&metrics.alerts_dead, &name);
                    pending.remove(i);
                    let state = SinkState::Refused { error: e.to_string() };
                    let _ = health.send(SinkHealth { sink: name.clone(), state });
                    continue;
                }
                Err(SinkError::Exhausted(e)) => {
                    warn!(sink = %name, alert = %entry.alert.id, error = %e, "The service refuses alerts until its limit resets; alert moved to the dead-letter file.");
                    let _ = spool.dead(&name, entry, &e.to_string());
                    Metrics::sink(&metrics.alerts_failed, &name);
                    Metrics::sink(&metrics.alerts_dead, &name);
                    pending.remove(i);
                    let state = SinkState::Stopped { error: e.to_string() };
                    let _ = health.send(SinkHealth { sink: name.clone(), state });
                    continue;
                }
                Err(SinkError::Transient(e)) => (e, None),
                Err(SinkError::Later { wait, error }) => (error, Some(wait)),
            };
            Metrics::sink(&metrics.alerts_failed, &name);
            entry.attempts += 1;
            let age = Duration::from_millis(u64::try_from(now - entry.spooled_ms).unwrap_or(0));
            if age >= policy.max_age {
                warn!(sink = %name, alert = %entry.alert.id, error = %e, "Alert expired after retrying; moved to the dead-letter file.");
                let _ = spool.dead(&name, entry, &format!("expired after {} attempts: {e}", entry.attempts));
                Metrics::sink(&metrics.alerts_dead, &name);
                pending.remove(i);
                continue;
            }
            let seed = entry.spooled_ms as u64 ^ u64::from(entry.attempts);
            let mut delay = policy.delay(entry.attempts - 1, seed);
            if let Some(wait) = asked {
                paused_until = now + wait.as_millis() as i64;
                delay = delay.max(wait);
            }
            entry.next_ms = now + delay.as_millis() as i64;
            if entry.attempts == 1 {
                warn!(sink = %name, alert = %entry.alert.id, error = %e, "Delivery failed; will retry.");
            }
            entry.last_error = Some(e.to_string());
            if let Err(err) = spool.put(entry) {
                warn!(sink = %name, error = %err, "Could not update the spool file.");
            }
            let state = SinkState::Failing { for_: age, error: e.to_string() };
            let _ = health.send(SinkHealth { sink: name.clone(), state });
            i += 1;
        }
        metrics.pending(&name, pending.len());
        if !open && pending.is_empty() {
            return;
        }
        let next = pending.iter().map(|e| e.next_ms.max(paused_until)).min();
        let wait = next.map(|n| Duration::from_millis(u64::try_from(n - now_ms()).unwrap_or(0)));
        tokio::select! {
            msg = rx.recv(), if open => match msg {
                // An alert submitted before this task first ran was in the spool it loaded too.
                Some(Job::Deliver(entry)) if pending.iter().any(|p| p.alert.id == entry.alert.id) || done.contains(&entry.alert.id) => {}
                Some(Job::Deliver(entry)) => {
                    pending.push(*entry);
                    metrics.pending(&name, pending.len());
                }
                Some(Job::Rescan) => {
                    let now = now_ms();
                    for entry in spool.load() {
                        if !pending.iter().any(|p| p.alert.id == entry.alert.id) {
                            loaded.insert(entry.alert.id.clone());
                            pending.push(entry);
                        }
                    }
                    for entry in &mut pending {
                        entry.next_ms = entry.next_ms.min(now);
                    }
                    info!(sink = %name, count = pending.len(), "Trying every pending alert now.");
                    metrics.pending(&name, pending.len());
                }
                None => open = false,
            },
            _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))), if wait.is_some() => {}
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let p = RetryPolicy {
            initial: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_age: Duration::from_secs(86_400),
        };
        let d0 = p.delay(0, 7);
        assert!(d0 >= Duration::from_millis(800) && d0 <= Duration::from_millis(1200), "{d0:?}");
        let d3 = p.delay(3, 7);
        assert!(d3 >= Duration::from_millis(6400) && d3 <= Duration::from_millis(9600), "{d3:?}");
        assert!(p.delay(30, 7) <= Duration::from_secs(360));
        assert_ne!(p.delay(5, 1), p.delay(5, 2), "jitter spreads retries");
    }
}
