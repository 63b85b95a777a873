//! Where the probes go: libpam given with `--libpam`, or found through the ldconfig cache, the
//! standard library directories, and the libpam mapped by running sshd processes. Copies of one
//! file (the same inode through several paths) are attached once.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use tracing::warn;

use super::LoadError;

/// Standard places for libpam, checked after the ldconfig cache.
pub(super) const STANDARD_PATHS: &[&str] = &[
    "/lib/x86_64-linux-gnu/libpam.so.0",
    "/usr/lib/x86_64-linux-gnu/libpam.so.0",
    "/lib/aarch64-linux-gnu/libpam.so.0",
    "/usr/lib/aarch64-linux-gnu/libpam.so.0",
    "/usr/lib64/libpam.so.0",
    "/lib64/libpam.so.0",
    "/usr/lib/libpam.so.0",
    "/lib/libpam.so.0",
];

pub(super) fn check_given(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    for p in paths {
        if let Err(reason) = check_elf(p) {
            return Err(LoadError::BadLibpam { path: p.display().to_string(), reason });
        }
    }
    Ok(dedupe(paths.iter().cloned()))
}

/// Finds every distinct libpam on the host.
pub(super) fn find_libpam(sshd_procs: &[SshdProcess]) -> Result<Vec<PathBuf>, LoadError> {
    let mut candidates: Vec<PathBuf> = ldconfig("libpam.so.0");
    candidates.extend(STANDARD_PATHS.iter().map(PathBuf::from));
    candidates.extend(sshd_mapped(sshd_procs, "/libpam.so"));
    // OpenSSH 9.8 and later: the listener maps no libpam, only each connection's sshd-session
    // does, so a container's is found in its root, not in its processes.
    for root in other_roots(sshd_procs) {
        candidates.extend(under(&root, STANDARD_PATHS));
    }
    let found: Vec<PathBuf> = candidates.into_iter().filter(|p| usable(p)).collect();
    if found.is_empty() {
        return Err(LoadError::LibpamNotFound { searched: STANDARD_PATHS.join(", ") });
    }
    Ok(dedupe(found.into_iter()))
}

/// The roots (`/proc/PID/root`) of the processes that run in another root than notifier's (a
/// container's), one per distinct root directory.
pub(super) fn other_roots(procs: &[SshdProcess]) -> Vec<PathBuf> {
    let mut seen: HashSet<(u64, u64)> = file_id(Path::new("/proc/self/root")).into_iter().collect();
    procs
        .iter()
        .map(|p| PathBuf::from(format!("/proc/{}/root", p.pid)))
        .filter(|root| file_id(root).is_some_and(|i| seen.insert(i)))
        .collect()
}

/// The (device, inode) of the file `path` names, following symlinks.
pub(super) fn file_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// `paths` (absolute) under `root`.
pub(super) fn under(root: &Path, paths: &[&str]) -> Vec<PathBuf> {
    paths.iter().map(|p| root.join(p.trim_start_matches('/'))).collect()
}

/// Keeps the first path of each distinct file.
pub(super) fn dedupe(paths: impl Iterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    paths
        .filter(|p| match fs::metadata(p) {
            Ok(m) => seen.insert((m.dev(), m.ino())),
            Err(_) => false,
        })
        .collect()
}

/// A 64-bit ELF shared object for this machine: the only kind whose calling convention the probes
/// read correctly.
pub(super) fn check_elf(path: &Path) -> Result<(), String> {
    use std::io::Read as _;
    let mut header = [0u8; 20];
    let mut file = fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    file.read_exact(&mut header).map_err(|_| "not an ELF file".to_string())?;
    if &header[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if header[4] != 2 {
        return Err("not a 64-bit ELF object".into());
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    let ours = if cfg!(target_arch = "x86_64") {
        62
    } else if cfg!(target_arch = "aarch64") {
        183
    } else {
        machine
    };
    if machine != ours {
        return Err(format!("built for another architecture (e_machine {machine})"));
    }
    Ok(())
}

/// A discovered candidate (libpam, libc, sshd) that exists is used only if it is an ELF object for
/// this machine, owned by root and writable by no one else, in directories that are too: a file a
/// user can write, or replace, would let that user choose what notifier watches. A rejected one is
/// named in one warning.
pub(super) fn usable(path: &Path) -> bool {
    if fs::symlink_metadata(path).is_err() {
        return false;
    }
    match check_elf(path).and_then(|()| root_owned(path)) {
        Ok(()) => true,
        Err(reason) => {
            warn!(path = %path.display(), %reason, "Skipping this candidate; only root-owned files that no one else can write are watched.");
            false
        }
    }
}

/// `path` and every directory above it are owned by root and not writable by group or others.
pub(super) fn root_owned(path: &Path) -> Result<(), String> {
    for (i, p) in path.ancestors().enumerate() {
        if p.as_os_str().is_empty() {
            continue;
        }
        let m = fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let what = if i == 0 { "the file".to_string() } else { format!("its directory {}", p.display()) };
        if m.uid() != 0 {
            return Err(format!("{what} is owned by uid {}, not root", m.uid()));
        }
        if m.mode() & 0o022 != 0 {
            return Err(format!("{what} is writable by group or others (mode {:o})", m.mode() & 0o7777));
        }
    }
    Ok(())
}

/// The paths of the library `soname` in the ldconfig cache.
pub(super) fn ldconfig(soname: &str) -> Vec<PathBuf> {
    let output = ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .find_map(|ldconfig| Command::new(ldconfig).arg("-p").output().ok());
    let Some(output) = output else { return Vec::new() };
    parse_ldconfig(&String::from_utf8_lossy(&output.stdout), soname)
}

/// The paths of `soname` in `ldconfig -p` output.
fn parse_ldconfig(text: &str, soname: &str) -> Vec<PathBuf> {
    text.lines()
        .filter(|l| l.trim_start().strip_prefix(soname).is_some_and(|rest| rest.starts_with(' ')))
        .filter_map(|l| l.split_once("=>").map(|(_, p)| PathBuf::from(p.trim())))
        .collect()
}

/// A running process whose command name starts with `sshd` (sshd, sshd-session, sshd-auth, or an
/// sshd started through a symlink of another name).
pub(crate) struct SshdProcess {
    pub pid: String,
    pub comm: String,
}

/// The running sshd processes, from one walk of /proc: only root's (real uid 0) running a
/// root-owned executable that no one else can write. Any process may name itself `sshd`; one that
/// is not root's is named in a warning, with the libraries it maps, and tells nothing.
pub(super) fn sshd_processes() -> Vec<SshdProcess> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid.to_str().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.starts_with("sshd") {
            continue;
        }
        let p = SshdProcess { pid: pid.to_string(), comm: comm.to_string() };
        match roots_process(pid) {
            Ok(()) => found.push(p),
            Err(reason) => {
                let libs = sshd_mapped(std::slice::from_ref(&p), "/lib");
                let libs: Vec<String> = libs
                    .iter()
                    .filter(|l| l.to_string_lossy().contains("/libpam.so") || l.to_string_lossy().contains("/libc.so"))
                    .map(|l| l.display().to_string())
                    .collect();
                warn!(pid, comm, %reason, rejected = %libs.join(","), "Ignoring a process named sshd that is not root's sshd; the libraries it maps are not watched.");
            }
        }
    }
    found
}

/// The process runs as root (real uid 0) a root-owned executable that no one else can write.
fn roots_process(pid: &str) -> Result<(), String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let ruid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|u| u.split_whitespace().next());
    if ruid != Some("0") {
        return Err(format!("it runs as uid {}", ruid.unwrap_or("?")));
    }
    let exe = fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| e.to_string())?;
    let m = fs::metadata(format!("/proc/{pid}/exe")).map_err(|e| e.to_string())?;
    if m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(format!("its executable {} is not a root-owned file that only root can write", exe.display()));
    }
    Ok(())
}

/// The files whose path contains `fragment` (`/libpam.so`, `/libc.so`) mapped by running `sshd`
/// and `sshd-session` processes, reached through the process's root so that an sshd in another
/// mount namespace (a container) is covered too.
pub(super) fn sshd_mapped(procs: &[SshdProcess], fragment: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for p in procs.iter().filter(|p| matches!(p.comm.as_str(), "sshd" | "sshd-session")) {
        let maps = fs::read_to_string(format!("/proc/{}/maps", p.pid)).unwrap_or_default();
        for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
            let path = PathBuf::from(format!("/proc/{}/root{path}", p.pid));
            if path.to_string_lossy().contains(fragment) && !found.contains(&path) {
                found.push(path);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldconfig_output() {
        let text = "1234 libs found in cache `/etc/ld.so.cache'\n\
            \tlibpamc.so.0 (libc6,x86-64) => /lib/x86_64-linux-gnu/libpamc.so.0\n\
            \tlibpam_misc.so.0 (libc6,x86-64) => /lib/x86_64-linux-gnu/libpam_misc.so.0\n\
            \tlibpam.so.0 (libc6,x86-64) => /lib/x86_64-linux-gnu/libpam.so.0\n";
        assert_eq!(parse_ldconfig(text, "libpam.so.0"), vec![PathBuf::from("/lib/x86_64-linux-gnu/libpam.so.0")]);
    }

    #[test]
    fn rejects_non_elf_libpam() {
        let dir = std::env::temp_dir().join(format!("notifier-elf-{}", std::process::id()));
        fs::write(&dir, b"#!/bin/sh\n").unwrap();
        assert_eq!(check_elf(&dir), Err("not an ELF file".to_string()));
        fs::remove_file(&dir).unwrap();
        assert!(check_elf(Path::new("/nonexistent/libpam.so.0")).unwrap_err().starts_with("cannot open"));
    }
}
