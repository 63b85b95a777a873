//! The learned login history and its file.
//!
//! For each user: the IPs, networks (/24 for IPv4, /64 for IPv6), ASNs and countries seen, with
//! first-seen, last-seen and count; plus the allowlist entries added with `notifier known add`.
//!
//! The file is `history.json` in the state directory, mode 0600. Every change is written to a
//! temporary file, fsynced, renamed over the old one, and the directory is fsynced, so a crash or
//! `kill -9` at any moment leaves either the old or the new file, never a torn one. Writers (the
//! daemon and `notifier known`) hold an exclusive lock on `history.lock` around read-modify-write,
//! and reload the file first if another writer replaced it, so no update is lost.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use crate::network::network_of;
use crate::network::Network;

pub const FILE: &str = "history.json";
const LOCK: &str = "history.lock";
const VERSION: u32 = 1;

/// When something was seen, and how often.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Unix seconds.
    pub first: i64,
    pub last: i64,
    pub count: u64,
}

impl Seen {
    fn bump(&mut self, now: i64) {
        if self.count == 0 {
            self.first = now;
        }
        self.last = now;
        self.count += 1;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserHistory {
    pub ips: BTreeMap<String, Seen>,
    pub networks: BTreeMap<String, Seen>,
    pub asns: BTreeMap<String, Seen>,
    pub countries: BTreeMap<String, Seen>,
}

/// Allowlist entries added from the command line (the config file has its own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Allow {
    pub global: Vec<Network>,
    pub users: BTreeMap<String, Vec<Network>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    pub version: u32,
    /// Unix seconds when the history was created: the start of the learning period.
    pub created: i64,
    pub users: BTreeMap<String, UserHistory>,
    pub allow: Allow,
}

impl Default for History {
    fn default() -> Self {
        Self { version: VERSION, created: 0, users: BTreeMap::new(), allow: Allow::default() }
    }
}

/// What one login teaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting<'a> {
    pub user: &'a str,
    pub ip: IpAddr,
    pub asn: Option<u32>,
    pub country: Option<&'a str>,
}

/// Most IPs (and networks, ASNs, countries) kept per user: past it, the one seen least recently is
/// forgotten, so that the file stays small whatever a user's logins look like.
pub const MAX_PER_USER: usize = 1024;

impl History {
    pub fn record(&mut self, s: &Sighting<'_>, now: i64) {
        let u = self.users.entry(s.user.to_string()).or_default();
        bump(&mut u.ips, s.ip.to_string(), now);
        bump(&mut u.networks, network_of(s.ip).to_string(), now);
        if let Some(asn) = s.asn {
            bump(&mut u.asns, format!("AS{asn}"), now);
        }
        if let Some(country) = s.country {
            bump(&mut u.countries, country.to_string(), now);
        }
    }

    /// Forgets everything last seen more than `days` days before `now`; returns how many entries.
    pub fn expire(&mut self, now: i64, days: u32) -> usize {
        if days == 0 {
            return 0;
        }
        let cutoff = now - i64::from(days) * 86_400;
        let mut removed = 0;
        for u in self.users.values_mut() {
            for map in [&mut u.ips, &mut u.networks, &mut u.asns, &mut u.countries] {
                let before = map.len();
                map.retain(|_, seen| seen.last >= cutoff);
                removed += before - map.len();
            }
        }
        self.users.retain(|_, u| !u.ips.is_empty());
        removed
    }
}

/// Counts a sighting of `key`, forgetting the least recently seen entry past [`MAX_PER_USER`].
fn bump(map: &mut BTreeMap<String, Seen>, key: String, now: i64) {
    if !map.contains_key(&key) && map.len() >= MAX_PER_USER {
        if let Some(stale) = map.iter().min_by_key(|(_, seen)| seen.last).map(|(k, _)| k.clone()) {
            map.remove(&stale);
        }
    }
    map.entry(key).or_default().bump(now);
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path}: {source}; create it or set state_dir in the config")]
    Dir { path: String, source: io::Error },
    #[error("history file {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "history file {path} is not valid ({reason}); it was left untouched: move it aside to start a new history"
    )]
    Corrupt { path: String, reason: String },
}

/// The history file, with its lock.
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
    /// Identity (device, inode) of the file last loaded; a writer's rename changes it.
    loaded: Option<(u64, u64)>,
    pub history: History,
    /// Changed in memory and not yet written.
    unsaved: bool,
}

impl Store {
    /// Opens (creating the directory, mode 0700, if needed) and loads the history.
    pub fn open(dir: &Path, now: i64) -> Result<Store, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Dir { path: dir.display().to_string(), source })?;
        let mut store = Store {
            dir: dir.to_path_buf(),
            path: dir.join(FILE),
            loaded: None,
            history: History::default(),
            unsaved: false,
        };
        store.reload()?;
        if store.history.created == 0 {
            store.history.created = now;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> StoreError {
        StoreError::Io { path: self.path.display().to_string(), source }
    }

    fn identity(&self) -> Result<Option<(u64, u64)>, StoreError> {
        match fs::metadata(&self.path) {
            Ok(m) => Ok(Some((m.dev(), m.ino()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Loads the file if it changed since the last load.
    pub fn reload(&mut self) -> Result<(), StoreError> {
        let identity = self.identity()?;
        if identity.is_none() || identity == self.loaded {
            return Ok(());
        }
        let text = fs::read_to_string(&self.path).map_err(|e| self.io(e))?;
        let history: History = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt { path: self.path.display().to_string(), reason: e.to_string() })?;
        if history.version > VERSION {
            return Err(StoreError::Corrupt {
                path: self.path.display().to_string(),
                reason: format!("version {} is newer than this notifier's {VERSION}", history.version),
            });
        }
        self.history = history;
        self.loaded = identity;
        Ok(())
    }

    /// Applies `change` under the lock, on the newest history, and writes it durably.
    pub fn update<R>(&mut self, change: impl FnOnce(&mut History) -> R) -> Result<R, StoreError> {
        let lock = self.lock()?;
        self.reload()?;
        let result = change(&mut self.history);
        self.save()?;
        drop(lock); // Unlocks.
        Ok(result)
    }

    /// For the daemon: like [`Store::update`], but `change` is applied to the history in memory even
    /// when the file cannot be locked, read or written (a full disk, say), so that verdicts go on.
    /// `change` says whether it changed anything: the file is written only then, or when an earlier
    /// change could not be written, which the next update that succeeds writes.
    pub fn update_or_keep(&mut self, change: impl FnOnce(&mut History) -> bool) -> Result<(), StoreError> {
        let locked = self.lock();
        let reloaded = if locked.is_ok() { self.reload() } else { Ok(()) };
        self.unsaved |= change(&mut self.history);
        if !self.unsaved {
            return locked.and(reloaded);
        }
        let saved = locked.and_then(|lock| {
            reloaded?;
            self.save()?;
            drop(lock); // Unlocks.
            Ok(())
        });
        self.unsaved = saved.is_err();
        saved
    }

    /// Takes the exclusive lock that the daemon and the `known` CLI share; held until dropped.
    fn lock(&self) -> Result<File, StoreError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(LOCK))
            .map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        Ok(lock)
    }

    fn save(&mut self) -> Result<(), StoreError> {
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let mut text = serde_json::to_vec_pretty(&self.history).map_err(|e| self.io(io::Error::other(e)))?;
        text.push(b'\n');
        super::write_durably(&self.path, &tmp, &text).map_err(|e| self.io(e))?;
        self.loaded = self.identity()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("notifier-hist-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn sighting(ip: &str) -> Sighting<'static> {
        Sighting { user: "alice", ip: ip.parse().unwrap(), asn: Some(64500), country: Some("NZ") }
    }

    #[test]
    fn each_user_keeps_at_most_the_most_recent_addresses() {
        let mut h = History::default();
        for i in 0..(MAX_PER_USER as i64 + 10) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32).into();
            h.record(&Sighting { user: "alice", ip, asn: None, country: None }, 1000 + i);
        }
        let u = &h.users["alice"];
        assert_eq!(u.ips.len(), MAX_PER_USER);
        assert!(!u.ips.contains_key("10.0.0.0") && u.ips.contains_key("10.0.4.9"), "the oldest went first");
        assert!(u.networks.len() <= MAX_PER_USER);
    }

    #[test]
    fn the_daemon_writes_only_what_teaches_something() {
        let dir = std::env::temp_dir().join(format!("notifier-history-quiet-{}", std::process::id()));
        let mut store = Store::open(&dir, 1).unwrap();
        let file = dir.join(FILE);
        store.update_or_keep(|_| false).unwrap();
        assert!(!file.exists(), "nothing learned, nothing written");
        store
            .update_or_keep(|h| {
                h.record(&Sighting { user: "bob", ip: "203.0.113.5".parse().unwrap(), asn: None, country: None }, 5);
                true
            })
            .unwrap();
        let written = fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        store.update_or_keep(|_| false).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().modified().unwrap(), written, "not rewritten");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn networks_are_slash_24_and_slash_64() {
        assert_eq!(network_of("203.0.113.77".parse().unwrap()).to_string(), "203.0.113.0/24");
        assert_eq!(network_of("2001:db8:1:2:3::9".parse().unwrap()).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn records_and_expires() {
        let mut h = History::default();
        h.record(&sighting("203.0.113.7"), 1000);
        h.record(&sighting("203.0.113.7"), 2000);
        let u = &h.users["alice"];
        assert_eq!(u.ips["203.0.113.7"], Seen { first: 1000, last: 2000, count: 2 });
        assert_eq!(u.networks["203.0.113.0/24"].count, 2);
        assert_eq!(u.asns["AS64500"].count, 2);
        assert_eq!(u.countries["NZ"].count, 2);
        assert_eq!(h.expire(2000 + 86_400, 1), 0);
        assert_eq!(h.expire(2001 + 86_400, 1), 4);
        assert!(h.users.is_empty());
    }

    #[test]
    fn store_persists_and_merges_concurrent_writers() {
        let dir = tmpdir("merge");
        let mut a = Store::open(&dir, 100).unwrap();
        let mut b = Store::open(&dir, 100).unwrap();
        a.update(|h| h.record(&sighting("198.51.100.1"), 100)).unwrap();
        // b has not seen a's write; its update must not lose it.
        b.update(|h| h.allow.global.push("10.0.0.0/8".parse().unwrap())).unwrap();
        let c = Store::open(&dir, 999).unwrap();
        assert!(c.history.users["alice"].ips.contains_key("198.51.100.1"));
        assert_eq!(c.history.allow.global.len(), 1);
        assert_eq!(c.history.created, 100);
        let mode = fs::metadata(dir.join(FILE)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_file_is_an_error_and_left_untouched() {
        let dir = tmpdir("corrupt");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(FILE), b"{not json").unwrap();
        let err = Store::open(&dir, 1).err().expect("corrupt history must not load").to_string();
        assert!(err.contains("not valid") && err.contains("move it aside"), "{err}");
        assert_eq!(fs::read(dir.join(FILE)).unwrap(), b"{not json");
        fs::remove_dir_all(&dir).unwrap();
    }
}
