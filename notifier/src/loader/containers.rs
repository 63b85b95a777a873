//! Containers: a container's libpam and sshd are files in its root, reached from the host through
//! `/proc/PID/root`. Those running at start are found through their sshd processes
//! (`discover::other_roots`). For those that start later, the `containers_sched_process_exec`
//! tracepoint reports the first program a root process executes in each new mount namespace
//! (`NEW_MOUNT_NS`); [`attach_root`] then looks in that process's root and attaches to what is
//! new there. No polling, and no system call tracepoint.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use aya::Ebpf;
use notifier_common::names;
use tracing::{info, warn};

use super::{
    attach_target,
    discover::{self, file_id},
    sshd, LoadError, Probes,
};

/// The tracepoint: (program, category, event).
pub(super) const TRACEPOINT: (&str, &str, &str) = ("containers_sched_process_exec", "sched", "sched_process_exec");

/// Marks the host's mount namespace (PID 1's) and notifier's own as seen, so that the programs
/// root runs on the host every minute are not reported as a new namespace each start. Best
/// effort: a namespace that cannot be read is reported once, and then found to share our root.
pub(super) fn seed_known_namespaces(ebpf: &mut Ebpf) {
    use std::os::unix::fs::MetadataExt as _;
    let Some(map) = ebpf.map_mut(names::MOUNT_NS_SEEN) else { return };
    let Ok(mut seen) = aya::maps::HashMap::<_, u32, u8>::try_from(map) else { return };
    for ns in ["/proc/1/ns/mnt", "/proc/self/ns/mnt"] {
        if let Ok(m) = fs::metadata(ns) {
            let _ = seen.insert(m.ino() as u32, 1, 0);
        }
    }
}

/// The most container roots attached in one run. Probes on a stopped container's files stay
/// until notifier restarts, so a host that starts containers without end would gather probes
/// without end; past this many roots, new ones are named in a warning and not attached.
const MAX_ROOTS: usize = 256;

/// What a new root added.
#[derive(Debug, Default)]
pub struct Added {
    pub libpam: Vec<PathBuf>,
    pub sshd: Vec<PathBuf>,
    /// (device, inode) of the sshd binaries, for the witness's listener check.
    pub sshd_ids: Vec<(u64, u64)>,
}

/// Attaches to the libpam, sshd and libc in the root of `pid` that are not attached yet. `None`
/// when the process is gone, shares notifier's root, or its root was looked at before.
pub fn attach_root(probes: &mut Probes, pid: u32) -> Option<Added> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let root_id = file_id(&root)?;
    if Some(root_id) == file_id(Path::new("/proc/self/root")) || probes.roots_seen.contains(&root_id) {
        return None;
    }
    if probes.roots_seen.len() >= MAX_ROOTS {
        warn!(pid, "A container started, but {MAX_ROOTS} container roots are attached already; restart notifier to watch it (probes on stopped containers go at restart).");
        return None;
    }
    probes.roots_seen.insert(root_id);
    let mut added = Added::default();
    let attached: HashSet<(u64, u64)> = probes.attached.iter().filter_map(|(p, _)| file_id(p)).collect();
    let libpam = discover::dedupe(discover::under(&root, discover::STANDARD_PATHS).into_iter().filter(|p| {
        fs::symlink_metadata(p).is_ok() && file_id(p).is_some_and(|i| !attached.contains(&i)) && discover::usable(p)
    }));
    for path in libpam {
        match attach_target(&mut probes.ebpf, &mut probes.links, &path) {
            Ok(n) => {
                probes.attached.push((path.clone(), n));
                probes.targets.push(path.clone());
                added.libpam.push(path);
            }
            Err(e) => warn!(path = %path.display(), error = %e, "Cannot attach to a container's libpam."),
        }
    }
    if !probes.sshd.binaries.is_empty() {
        if let Err(e) = attach_sshd(probes, &root, &mut added) {
            warn!(root = %root.display(), error = %e, "Cannot attach the sshd witness to a container's sshd.");
        }
    }
    if !added.libpam.is_empty() || !added.sshd.is_empty() {
        let paths = |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(",");
        info!(pid, libpam = %paths(&added.libpam), sshd = %paths(&added.sshd), "A container started: probes attached to its files.");
    }
    Some(added)
}

fn attach_sshd(probes: &mut Probes, root: &Path, added: &mut Added) -> Result<(), LoadError> {
    let (binaries, libcs) = sshd::in_root(root);
    let binaries: Vec<PathBuf> =
        binaries.into_iter().filter(|p| file_id(p).is_some_and(|i| !probes.sshd.ids.contains(&i))).collect();
    if binaries.is_empty() {
        return Ok(());
    }
    let known_libc: HashSet<(u64, u64)> = probes.sshd.libc.iter().filter_map(|p| file_id(p)).collect();
    let libcs: Vec<PathBuf> =
        libcs.into_iter().filter(|p| file_id(p).is_some_and(|i| !known_libc.contains(&i))).collect();
    let before: HashSet<(u64, u64)> = probes.sshd.ids.clone();
    sshd::register(&mut probes.ebpf, &binaries, &mut probes.sshd)?;
    sshd::attach_libc(&mut probes.ebpf, &mut probes.links, &libcs)?;
    probes.sshd.libc.extend(libcs);
    sshd::attach_setlogin(&mut probes.ebpf, &mut probes.links, &binaries, &mut probes.sshd)?;
    added.sshd_ids = probes.sshd.ids.difference(&before).copied().collect();
    probes.sshd.binaries.extend(binaries.iter().cloned());
    added.sshd = binaries;
    Ok(())
}
