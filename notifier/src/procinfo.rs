//! Process facts read from /proc: the executable path of a PAM caller, and this host's identity.
//! The probes give the executable's inode, so a pid reused by another program is never reported
//! with the wrong path. Below every stage: it imports only the clock.

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt as _};

use crate::clock;

/// How a caller's executable path is found (from /proc in production, a table in tests).
pub trait ProcessLookup {
    /// The executable of `tgid`, if it is still the process whose executable has inode `ino`.
    fn exe(&mut self, tgid: u32, ino: Option<u64>) -> Option<String>;
}

/// Facts about this host that go into every event.
#[derive(Clone, Debug)]
pub struct HostContext {
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: makes session ids unique across reboots.
    pub boot_id: String,
    /// Add to a `CLOCK_BOOTTIME` timestamp to get Unix time, in nanoseconds.
    pub boot_to_unix_ns: i128,
}

/// Looks up executables in /proc, caching by (tgid, inode).
#[derive(Default)]
pub struct ProcFs {
    cache: HashMap<(u32, Option<u64>), Option<String>>,
}

/// Bound on the cache; it is cleared when reached (entries are cheap to find again).
const CACHE_MAX: usize = 4096;

impl ProcessLookup for ProcFs {
    fn exe(&mut self, tgid: u32, ino: Option<u64>) -> Option<String> {
        if let Some(hit) = self.cache.get(&(tgid, ino)) {
            return hit.clone();
        }
        let link = format!("/proc/{tgid}/exe");
        let path = fs::read_link(&link).ok().and_then(|p| p.to_str().map(str::to_owned));
        let path = match (path, ino) {
            (Some(path), Some(ino)) => fs::metadata(&link).ok().filter(|m| m.ino() == ino).map(|_| path),
            (path, None) => path,
            (None, _) => None,
        };
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert((tgid, ino), path.clone());
        path
    }
}

/// Host name, boot id, and the offset from `CLOCK_BOOTTIME` to Unix time.
pub fn host_context() -> HostContext {
    let read = |p: &str| fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    HostContext {
        host: read("/proc/sys/kernel/hostname"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        boot_to_unix_ns: clock::boot_to_unix_ns(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_executable_and_checks_inode() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let ino = fs::metadata(&exe).unwrap().ino();
        let mut procs = ProcFs::default();
        assert_eq!(procs.exe(me, Some(ino)).as_deref(), exe.to_str());
        assert_eq!(procs.exe(me, Some(ino + 1)), None, "a different inode is a different program");
    }

    #[test]
    fn host_context_is_filled() {
        let ctx = host_context();
        assert!(!ctx.boot_id.is_empty());
        assert!(ctx.boot_to_unix_ns > 1_600_000_000_000_000_000);
    }
}
