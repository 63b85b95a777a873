//! The durable outbox: what this host owes the fleet, on disk before it is sent and removed only
//! after the server's ack. `state_dir/fleet/outbox/` holds two kinds of file, named by a sequence
//! number so that they replay in order:
//!
//! - `c-<seq>.json`: a claim intent, written before the claim is tried, so that a crash between
//!   the claim and the alert is settled at the next start (see [`Intent`]);
//! - `e-<seq>.jsonl`: one batch of events, one JSON line each.
//!
//! Each file is written to a temporary name, fsynced and renamed, so a crash leaves whole files
//! only; a file that does not parse is moved aside (`.bad`) and logged, never a reason not to
//! start. The events are bounded: past `max_events` the oldest batches go first, counted; claims
//! are never dropped.

use std::{
    collections::{BTreeMap, VecDeque},
    fs, io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::keys::Claim;
use crate::alert::Alert;

/// One event to publish.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The event's stable id, sent as `Nats-Msg-Id`.
    pub id: String,
    pub subject: String,
    pub payload: serde_json::Value,
}

/// A claim this host is making or has made while offline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub event_id: String,
    /// The keys to claim, broadest first; the last is the login's IP key.
    pub keys: Vec<String>,
    pub claim: Claim,
    /// The alert to send if this host wins, and whether it was already sent (offline).
    pub alert: Option<Alert>,
    pub alerted: bool,
}

pub struct Outbox {
    dir: PathBuf,
    next: u64,
    /// Event batches on disk, oldest first: (sequence, events).
    batches: VecDeque<(u64, usize)>,
    pub events: usize,
    max_events: usize,
    /// Events dropped because the outbox was full, since the start.
    pub dropped: u64,
    /// The claim intents on disk, by sequence: read once at `open`, then kept in step with the
    /// files, so that the publisher's every wake does not read the directory.
    intents: BTreeMap<u64, Intent>,
}

fn name(kind: char, seq: u64) -> String {
    format!("{kind}-{seq:020}.{}", if kind == 'c' { "json" } else { "jsonl" })
}

fn seq_of(name: &str) -> Option<(char, u64)> {
    let (kind, rest) = name.split_once('-')?;
    let seq = rest.split_once('.')?.0.parse().ok()?;
    Some((kind.chars().next()?, seq))
}

impl Outbox {
    pub fn open(dir: &Path, max_events: usize) -> io::Result<Outbox> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mut out = Outbox {
            dir: dir.into(),
            next: 1,
            batches: VecDeque::new(),
            events: 0,
            max_events,
            dropped: 0,
            intents: BTreeMap::new(),
        };
        let mut found: Vec<(u64, char, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir)?.flatten() {
            let path = entry.path();
            match path.file_name().and_then(|n| n.to_str()).and_then(seq_of) {
                Some((kind, seq)) if !path.to_string_lossy().ends_with(".tmp") => found.push((seq, kind, path)),
                _ => {}
            }
        }
        found.sort();
        for (seq, kind, path) in found {
            out.next = out.next.max(seq + 1);
            if kind == 'e' {
                let n = fs::read_to_string(&path).map(|t| t.lines().count()).unwrap_or(0);
                out.batches.push_back((seq, n));
                out.events += n;
            } else if kind == 'c' && path.extension() == Some("json".as_ref()) {
                match fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                    Some(intent) => _ = out.intents.insert(seq, intent),
                    None => out.set_aside(&path),
                }
            }
        }
        Ok(out)
    }

    fn write(&mut self, kind: char, bytes: &[u8]) -> io::Result<u64> {
        let seq = self.next;
        self.next += 1;
        let path = self.dir.join(name(kind, seq));
        crate::state::write_durably(&path, &path.with_extension("tmp"), bytes)?;
        Ok(seq)
    }

    /// Writes a batch of events; drops the oldest batches past the bound.
    pub fn push_events(&mut self, events: &[Outgoing]) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for e in events {
            serde_json::to_writer(&mut text, e)?;
            text.push(b'\n');
        }
        let seq = self.write('e', &text)?;
        self.batches.push_back((seq, events.len()));
        self.events += events.len();
        while self.events > self.max_events && self.batches.len() > 1 {
            let Some((old, n)) = self.batches.pop_front() else { break };
            let _ = fs::remove_file(self.dir.join(name('e', old)));
            self.events -= n;
            self.dropped += n as u64;
        }
        Ok(())
    }

    /// Writes a claim intent; returns its sequence number.
    pub fn push_intent(&mut self, intent: &Intent) -> io::Result<u64> {
        let seq = self.write('c', &serde_json::to_vec(intent)?)?;
        self.intents.insert(seq, intent.clone());
        Ok(seq)
    }

    /// Rewrites an intent in place (marked as alerted).
    pub fn rewrite_intent(&mut self, seq: u64, intent: &Intent) -> io::Result<()> {
        let path = self.dir.join(name('c', seq));
        crate::state::write_durably(&path, &path.with_extension("tmp"), &serde_json::to_vec(intent)?)?;
        self.intents.insert(seq, intent.clone());
        Ok(())
    }

    pub fn remove_intent(&mut self, seq: u64) {
        let _ = fs::remove_file(self.dir.join(name('c', seq)));
        self.intents.remove(&seq);
    }

    /// Every claim intent on disk, oldest first.
    pub fn intents(&self) -> Vec<(u64, Intent)> {
        self.intents.iter().map(|(seq, intent)| (*seq, intent.clone())).collect()
    }

    /// The oldest batch of events still to publish.
    pub fn oldest_batch(&mut self) -> Option<(u64, Vec<Outgoing>)> {
        while let Some(&(seq, _)) = self.batches.front() {
            let path = self.dir.join(name('e', seq));
            let parsed: Option<Vec<Outgoing>> = fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.lines().map(|l| serde_json::from_str(l).ok()).collect::<Option<Vec<_>>>());
            match parsed {
                Some(events) => return Some((seq, events)),
                None => {
                    self.set_aside(&path);
                    self.done_batch(seq);
                }
            }
        }
        None
    }

    /// The batch `seq` was acknowledged (or set aside): it goes.
    pub fn done_batch(&mut self, seq: u64) {
        let _ = fs::remove_file(self.dir.join(name('e', seq)));
        if let Some(i) = self.batches.iter().position(|(s, _)| *s == seq) {
            if let Some((_, n)) = self.batches.remove(i) {
                self.events -= n;
            }
        }
    }

    fn set_aside(&self, path: &Path) {
        tracing::warn!(path = %path.display(), "A fleet outbox file does not parse; it is moved aside (.bad).");
        let _ = fs::rename(path, path.with_extension("bad"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Outgoing {
        Outgoing {
            id: format!("e{n}"),
            subject: "notifier.events.h.session_open".into(),
            payload: serde_json::json!({"n": n}),
        }
    }

    #[test]
    fn events_are_bounded_oldest_first_and_claims_are_kept() {
        let dir = std::env::temp_dir().join(format!("notifier-outbox-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut o = Outbox::open(&dir, 4).unwrap();
        let intent = Intent {
            event_id: "e0".into(),
            keys: vec!["u.61.seen".into()],
            claim: Claim::new("h", "t", "e0"),
            alert: None,
            alerted: false,
        };
        let c = o.push_intent(&intent).unwrap();
        for n in 0..3 {
            o.push_events(&[event(2 * n), event(2 * n + 1)]).unwrap();
        }
        assert_eq!((o.events, o.dropped), (4, 2), "the first batch went");
        let (seq, batch) = o.oldest_batch().unwrap();
        assert_eq!(batch, [event(2), event(3)]);
        // A torn file is set aside; what is whole survives a restart.
        fs::write(dir.join("e-00000000000000000099.jsonl"), b"{\"id\":").unwrap();
        fs::write(dir.join("c-00000000000000000098.json"), b"{\"event_id\":").unwrap();
        let mut again = Outbox::open(&dir, 4).unwrap();
        assert_eq!(again.intents(), [(c, intent)]);
        assert_eq!(again.oldest_batch().unwrap().0, seq);
        again.done_batch(seq);
        let (seq, _) = again.oldest_batch().unwrap();
        again.done_batch(seq);
        assert!(again.oldest_batch().is_none(), "the torn batch was set aside");
        assert!(dir.join("e-00000000000000000099.bad").exists());
        assert!(dir.join("c-00000000000000000098.bad").exists(), "the torn intent was set aside at open");
        again.remove_intent(c);
        assert!(again.intents().is_empty() && Outbox::open(&dir, 4).unwrap().intents().is_empty());
        assert_eq!(again.events, 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
