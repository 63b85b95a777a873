//! Process facts read from /proc: the executable path of a PAM caller, and this host's identity.
//! The probes give the executable's inode, so a pid reused by another program is never reported
//! with the wrong path.

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt as _};

use crate::session::{HostContext, ProcessLookup};

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
        boot_to_unix_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
    }
}

/// Unix time now, in nanoseconds.
pub fn unix_now_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// `CLOCK_BOOTTIME` now, in nanoseconds: the clock of the probes' timestamps.
pub fn boot_now_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes to it.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
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
