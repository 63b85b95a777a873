//! The sshd witness's part of loading: finding the sshd binaries, telling the probes which they
//! are, and attaching the `setlogin` uprobes, the libc uprobes and the two scheduler tracepoints.
//!
//! sshd binaries are found, in order, at the paths given with `--sshd`, or else through the
//! standard paths and the running sshd processes (their executable, and the `sshd-session` and
//! `sshd-auth` beside it). `setlogin` is probed in `sshd` (up to OpenSSH 9.7) and `sshd-session`
//! (9.8 and later); `sshd-auth` (10.0) is only registered. `accept`, `accept4` and `setresuid` are
//! probed in every distinct libc: the ldconfig cache's, the standard paths', and the ones running
//! sshd processes map (a containerised sshd has its own).

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{maps::HashMap, programs::TracePoint, Ebpf};
use notifier_common::names;
use tracing::{debug, info, warn};

use super::{
    discover::{check_elf, dedupe, ldconfig, sshd_mapped, under, usable, SshdProcess},
    Links, LoadError,
};

/// Standard places for sshd and its helpers.
const STANDARD_PATHS: &[&str] = &[
    "/usr/sbin/sshd",
    "/usr/lib/openssh/sshd-session",
    "/usr/lib/openssh/sshd-auth",
    "/usr/libexec/openssh/sshd-session",
    "/usr/libexec/openssh/sshd-auth",
    "/usr/libexec/sshd-session",
    "/usr/libexec/sshd-auth",
    "/usr/lib/ssh/sshd-session",
    "/usr/lib/ssh/sshd-auth",
    "/usr/local/sbin/sshd",
    "/usr/local/libexec/sshd-session",
    "/usr/local/libexec/sshd-auth",
];

/// Where sshd-session and sshd-auth live relative to sshd's `sbin` directory, per distribution.
const HELPER_DIRS: &[&str] = &["lib/openssh", "libexec/openssh", "libexec", "lib/ssh"];
const HELPERS: &[&str] = &["sshd-session", "sshd-auth"];

/// The tracepoints of the witness: (program, category, event). Scheduler tracepoints only: a
/// `syscalls:` tracepoint would slow every system call on the host (see the probes' module).
const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sshd_sched_process_fork", "sched", "sched_process_fork"),
    ("sshd_sched_process_exit", "sched", "sched_process_exit"),
];

/// The libc functions probed: (program, symbol).
const LIBC_PROBES: &[(&str, &str)] =
    &[("sshd_enter_accept", "accept"), ("sshd_enter_accept", "accept4"), ("sshd_enter_setresuid", "setresuid")];

/// Standard places for glibc.
const LIBC_PATHS: &[&str] = &[
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/aarch64-linux-gnu/libc.so.6",
    "/usr/lib/aarch64-linux-gnu/libc.so.6",
    "/usr/lib64/libc.so.6",
    "/lib64/libc.so.6",
    "/usr/lib/libc.so.6",
];

const SETLOGIN: &str = "sshd_enter_setlogin";

/// The sshd binaries notifier watches.
#[derive(Debug, Default)]
pub struct SshdTargets {
    /// Every sshd binary found (for `SSHD_BINS`).
    pub binaries: Vec<PathBuf>,
    /// (device, inode) of each, to check a connection's listener in userspace.
    pub ids: HashSet<(u64, u64)>,
    /// The binaries `setlogin` is probed in.
    pub probed: Vec<PathBuf>,
    /// The libc files `accept`, `accept4` and `setresuid` are probed in.
    pub libc: Vec<PathBuf>,
}

/// Every distinct libc that sshd may use.
fn find_libc(procs: &[SshdProcess]) -> Vec<PathBuf> {
    let mut candidates = ldconfig("libc.so.6");
    candidates.extend(LIBC_PATHS.iter().map(PathBuf::from));
    candidates.extend(sshd_mapped(procs, "/libc.so"));
    dedupe(candidates.into_iter().filter(|p| usable(p)))
}

/// Finds the sshd binaries: the given paths (each must be an ELF file), or every one on the host.
pub(crate) fn find(given: &[PathBuf], procs: &[SshdProcess]) -> Result<Vec<PathBuf>, LoadError> {
    if !given.is_empty() {
        for p in given {
            if let Err(reason) = check_elf(p) {
                return Err(LoadError::BadSshd { path: p.display().to_string(), reason });
            }
        }
        return Ok(dedupe(given.iter().cloned()));
    }
    let running = running_executables(procs);
    let mut candidates: Vec<PathBuf> = STANDARD_PATHS.iter().map(PathBuf::from).collect();
    candidates.extend(running.iter().flat_map(|exe| helpers_beside(exe)));
    candidates.extend(running);
    Ok(dedupe(candidates.into_iter().filter(|p| usable(p))))
}

/// The executables of running sshd processes: the plain path for a process that shares our root,
/// or through its root for one in a container.
fn running_executables(procs: &[SshdProcess]) -> Vec<PathBuf> {
    let root_id = |path: &str| fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let own_root = root_id("/proc/self/root");
    let mut found = Vec::new();
    for p in procs {
        let Ok(exe) = fs::read_link(format!("/proc/{}/exe", p.pid)) else { continue };
        let root = format!("/proc/{}/root", p.pid);
        if own_root.is_some() && root_id(&root) == own_root {
            found.push(exe);
        } else {
            let exe = exe.strip_prefix("/").map(Path::to_path_buf).unwrap_or(exe);
            found.push(PathBuf::from(root).join(exe));
        }
    }
    found
}

/// `sshd-session` and `sshd-auth` next to an sshd in `<prefix>/sbin`.
fn helpers_beside(sshd: &Path) -> Vec<PathBuf> {
    let Some(prefix) = sshd.parent().and_then(Path::parent) else { return Vec::new() };
    HELPER_DIRS.iter().flat_map(|dir| HELPERS.iter().map(move |h| prefix.join(dir).join(h))).collect()
}

/// Registers `binaries` with the probes and attaches the witness. Returns what is watched.
pub(crate) fn attach(
    ebpf: &mut Ebpf,
    links: &mut Links,
    binaries: Vec<PathBuf>,
    procs: &[SshdProcess],
) -> Result<SshdTargets, LoadError> {
    let mut targets = SshdTargets::default();
    register(ebpf, &binaries, &mut targets)?;
    for (program, category, event) in TRACEPOINTS {
        attach_tracepoint(ebpf, links, program, category, event)?;
    }
    let libcs = find_libc(procs);
    if libcs.is_empty() {
        return Err(program_error("sshd_enter_accept", "no libc.so.6 found to probe accept() in"));
    }
    attach_libc(ebpf, links, &libcs)?;
    targets.libc = libcs;
    attach_setlogin(ebpf, links, &binaries, &mut targets)?;
    targets.binaries = binaries;
    Ok(targets)
}

/// Attaches the tracepoint program `program` to `category:event`.
pub(super) fn attach_tracepoint(
    ebpf: &mut Ebpf,
    links: &mut Links,
    program: &'static str,
    category: &str,
    event: &str,
) -> Result<(), LoadError> {
    let tp: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| program_error(program, "not in the object"))?
        .try_into()
        .map_err(|e| program_error(program, e))?;
    if tp.fd().is_err() {
        tp.load().map_err(|e| program_error(program, format!("{e:#}")))?;
    }
    let link = tp.attach(category, event).and_then(|id| tp.take_link(id)).map_err(|e| LoadError::Tracepoint {
        program,
        event: format!("{category}:{event}"),
        reason: format!("{e}"),
    })?;
    links.hold_tracepoint(link);
    Ok(())
}

/// Tells the probes that `binaries` are sshd (`SSHD_BINS`), and notes their identities.
pub(super) fn register(ebpf: &mut Ebpf, binaries: &[PathBuf], targets: &mut SshdTargets) -> Result<(), LoadError> {
    let map = ebpf.map_mut(names::SSHD_BINS).ok_or_else(|| program_error(names::SSHD_BINS, "map missing"))?;
    let mut bins: HashMap<_, u64, u8> = HashMap::try_from(map).map_err(|e| program_error(names::SSHD_BINS, e))?;
    for path in binaries {
        let Ok(meta) = fs::metadata(path) else { continue };
        bins.insert(meta.ino(), 1, 0).map_err(|e| program_error(names::SSHD_BINS, e))?;
        targets.ids.insert((meta.dev(), meta.ino()));
    }
    Ok(())
}

/// Probes `accept`, `accept4` and `setresuid` in each of `libcs`.
pub(super) fn attach_libc(ebpf: &mut Ebpf, links: &mut Links, libcs: &[PathBuf]) -> Result<(), LoadError> {
    for (i, (program, _)) in LIBC_PROBES.iter().enumerate() {
        if LIBC_PROBES[..i].iter().any(|(p, _)| p == program) {
            continue;
        }
        let symbols: Vec<(&'static str, bool)> =
            LIBC_PROBES.iter().filter(|(p, _)| p == program).map(|(_, s)| (*s, false)).collect();
        for libc in libcs {
            links.attach(ebpf, program, libc, &symbols)?;
        }
    }
    Ok(())
}

/// Probes `setlogin` in each of `binaries` that has it (not in `sshd-auth`, which is pre-auth only).
pub(super) fn attach_setlogin(
    ebpf: &mut Ebpf,
    links: &mut Links,
    binaries: &[PathBuf],
    targets: &mut SshdTargets,
) -> Result<(), LoadError> {
    for path in binaries {
        if path.file_name().is_some_and(|n| n == "sshd-auth") {
            continue; // Pre-auth only: a setlogin there would not be a login.
        }
        match links.attach(ebpf, SETLOGIN, path, &[("setlogin", true)]) {
            Ok(0) => debug!(path = %path.display(), "No setlogin to probe in this sshd binary."),
            Ok(_) => targets.probed.push(path.clone()),
            Err(e) => debug!(path = %path.display(), error = %e, "No setlogin to probe in this sshd binary."),
        }
    }
    Ok(())
}

/// The sshd binaries and libc files in a container's `root`.
pub(super) fn in_root(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let found = |paths: &[&str]| dedupe(under(root, paths).into_iter().filter(|p| usable(p)));
    (found(STANDARD_PATHS), found(LIBC_PATHS))
}

fn program_error(program: &'static str, reason: impl std::fmt::Display) -> LoadError {
    LoadError::Program { program, reason: reason.to_string() }
}

/// Where tracefs is (mounting it when it is not), for the tracepoints and their formats.
pub fn tracefs() -> Result<PathBuf, String> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    // systemd mounts it at boot (sys-kernel-tracing.mount); without systemd, mount it here.
    let target = c"/sys/kernel/tracing";
    // SAFETY: every pointer is a valid NUL-terminated string; the data argument may be NULL.
    let rc = unsafe { libc::mount(c"tracefs".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(format!("tracefs is not mounted and mounting it failed: {}", std::io::Error::last_os_error()));
    }
    info!("Mounted tracefs on /sys/kernel/tracing, for the sshd witness's tracepoints.");
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

/// The offset of `child_pid` in `sched:sched_process_fork` records, from the event's format.
pub fn fork_child_pid_offset(tracefs: &Path) -> Result<u32, String> {
    let path = tracefs.join("events/sched/sched_process_fork/format");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_field_offset(&text, "child_pid").ok_or_else(|| format!("{}: no child_pid field", path.display()))
}

fn parse_field_offset(format: &str, name: &str) -> Option<u32> {
    let line = format
        .lines()
        .find(|l| l.split(';').next().is_some_and(|decl| decl.trim_end().ends_with(&format!(" {name}"))))?;
    line.split(';').find_map(|part| part.trim().strip_prefix("offset:")).and_then(|n| n.parse().ok())
}

/// Logs what the witness watches, or why it is off.
pub fn report(targets: &SshdTargets) {
    if targets.probed.is_empty() {
        warn!(
            "sshd witness: no sshd binary with a setlogin symbol was found, so only PAM sees sshd logins; \
             give its path with --sshd PATH (or capture.sshd in the config)"
        );
    } else {
        info!(
            sshd = %targets.probed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","),
            libc = %targets.libc.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","),
            "sshd witness attached."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_child_pid_offset_from_old_and_new_formats() {
        let new = "format:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
            \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
            \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
            \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(new, "child_pid"), Some(20));
        let old = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
            \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
            \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
            \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(old, "child_pid"), Some(44));
        assert_eq!(parse_field_offset(old, "parent_pid"), Some(24));
        assert_eq!(parse_field_offset(old, "pid"), None);
    }

    #[test]
    fn helpers_are_looked_for_beside_sshd() {
        let found = helpers_beside(Path::new("/opt/ssh/sbin/sshd"));
        assert!(found.contains(&PathBuf::from("/opt/ssh/lib/openssh/sshd-session")));
        assert!(found.contains(&PathBuf::from("/opt/ssh/libexec/sshd-auth")));
    }
}
