//! Loads the embedded eBPF object and attaches its probes to every libpam it finds, and the sshd
//! witness to every sshd (see [`sshd`]).
//!
//! libpam is found, in order, at the paths given with `--libpam`, or else through the ldconfig
//! cache, the standard library directories, and the libpam mapped by running sshd processes.
//! Copies of one file (the same inode through several paths) are attached once.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use aya::{
    programs::{uprobe::UProbeScope, UProbe},
    Ebpf, EbpfLoader,
};
use notifier_common::names;
use tracing::{debug, info, warn};

pub mod sshd;

/// The eBPF object, embedded once.
static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/notifier"));

/// Standard places for libpam, checked after the ldconfig cache.
const STANDARD_PATHS: &[&str] = &[
    "/lib/x86_64-linux-gnu/libpam.so.0",
    "/usr/lib/x86_64-linux-gnu/libpam.so.0",
    "/lib/aarch64-linux-gnu/libpam.so.0",
    "/usr/lib/aarch64-linux-gnu/libpam.so.0",
    "/usr/lib64/libpam.so.0",
    "/lib64/libpam.so.0",
    "/usr/lib/libpam.so.0",
    "/lib/libpam.so.0",
];

/// One probe: which program goes on which libpam function, at entry or at return.
struct ProbeSpec {
    program: &'static str,
    symbol: &'static str,
    /// libpam versions before 1.4 lack some symbols (`pam_start_confdir`).
    optional: bool,
}

const PROBES: &[ProbeSpec] = &[
    ProbeSpec { program: "pam_enter_start", symbol: "pam_start", optional: false },
    ProbeSpec { program: "pam_exit_start", symbol: "pam_start", optional: false },
    ProbeSpec { program: "pam_enter_start_confdir", symbol: "pam_start_confdir", optional: true },
    ProbeSpec { program: "pam_exit_start", symbol: "pam_start_confdir", optional: true },
    ProbeSpec { program: "pam_enter_set_item", symbol: "pam_set_item", optional: false },
    ProbeSpec { program: "pam_enter_putenv", symbol: "pam_putenv", optional: false },
    ProbeSpec { program: "pam_enter_authenticate", symbol: "pam_authenticate", optional: false },
    ProbeSpec { program: "pam_exit_authenticate", symbol: "pam_authenticate", optional: false },
    ProbeSpec { program: "pam_enter_open_session", symbol: "pam_open_session", optional: false },
    ProbeSpec { program: "pam_exit_open_session", symbol: "pam_open_session", optional: false },
    ProbeSpec { program: "pam_enter_close_session", symbol: "pam_close_session", optional: false },
    ProbeSpec { program: "pam_exit_close_session", symbol: "pam_close_session", optional: false },
    ProbeSpec { program: "pam_enter_end", symbol: "pam_end", optional: false },
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "permission denied: attaching the eBPF uprobes needs CAP_SYS_ADMIN (missing: {missing}); \
         run notifier as root, or as the packaged systemd service, whose CapabilityBoundingSet \
         grants CAP_SYS_ADMIN and CAP_SYS_PTRACE"
    )]
    NotPrivileged { missing: String },
    #[error(
        "this kernel has no uprobe support (/sys/bus/event_source/devices/uprobe is missing); \
         notifier needs a kernel built with CONFIG_UPROBE_EVENTS=y"
    )]
    NoUprobes,
    #[error(
        "libpam not found (searched the ldconfig cache, {searched}, and running sshd processes); \
         install libpam0g or pass its path with --libpam PATH"
    )]
    LibpamNotFound { searched: String },
    #[error("--libpam {path}: {reason}; give the path of libpam.so.0 (e.g. /lib/x86_64-linux-gnu/libpam.so.0)")]
    BadLibpam { path: String, reason: String },
    #[error("--sshd {path}: {reason}; give the path of sshd or sshd-session (e.g. /usr/sbin/sshd)")]
    BadSshd { path: String, reason: String },
    #[error(
        "attaching {program} to the tracepoint {event}: {reason}; the sshd witness needs tracefs \
         (/sys/kernel/tracing); turn it off with --no-sshd (capture.sshd_witness = false) to watch PAM only"
    )]
    Tracepoint { program: &'static str, event: String, reason: String },
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {program}: {reason}")]
    Program { program: &'static str, reason: String },
    #[error("attaching {program} to {symbol} in {path}: {reason}")]
    Attach { program: &'static str, symbol: &'static str, path: String, reason: String },
}

/// The loaded object; the probes stay attached as long as this lives.
pub struct Probes {
    pub ebpf: Ebpf,
    /// The libpam files the probes are attached to.
    pub targets: Vec<PathBuf>,
    /// How many uprobes are attached to each libpam file (re-attachments included).
    pub attached: Vec<(PathBuf, usize)>,
    /// What the sshd witness watches (empty when it is off).
    pub sshd: sshd::SshdTargets,
}

/// What to attach to.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// libpam files; empty: find them.
    pub libpam: Vec<PathBuf>,
    /// sshd binaries; empty: find them.
    pub sshd: Vec<PathBuf>,
    /// Attach the sshd witness.
    pub sshd_witness: bool,
}

/// Checks privileges and kernel support, finds libpam, loads the object and attaches every probe.
pub fn load(want: &Targets) -> Result<Probes, LoadError> {
    let libpam = want.libpam.as_slice();
    check_privileges()?;
    for missing in optional_capabilities_missing() {
        warn!("{missing}.");
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        return Err(LoadError::NoUprobes);
    }
    let begin = std::time::Instant::now();
    // Running sshd processes tell where libpam, sshd and libc are; /proc is walked once for all.
    let sshd_procs = sshd_processes();
    let targets = if libpam.is_empty() { find_libpam(&sshd_procs)? } else { check_given(libpam)? };
    let found = begin.elapsed();

    let offsets = match crate::btf::task_offsets() {
        Ok(o) => Some(o),
        Err(e) => {
            warn!(
                error = %e,
                "Caller identity unavailable: every event will be marked untrusted, and the sshd witness \
                 cannot recognise sshd (PAM still reports logins)."
            );
            None
        }
    };
    let offsets = offsets.unwrap_or(notifier_common::TaskOffsets::zeroed());
    let btf = begin.elapsed();
    // The witness needs tracefs (for the tracepoints' ids and the fork record's layout). Given
    // sshd paths make it required; otherwise a host without it still gets PAM.
    let witness = match want.sshd_witness.then(sshd::tracefs) {
        None => None,
        Some(Ok(dir)) => Some(sshd::fork_child_pid_offset(&dir)),
        Some(Err(e)) => Some(Err(e)),
    };
    let fork_child_pid = match witness {
        Some(Ok(offset)) => Some(offset),
        Some(Err(reason)) if want.sshd.is_empty() => {
            warn!("sshd witness off, only PAM sees sshd logins: {reason}.");
            None
        }
        Some(Err(reason)) => {
            return Err(LoadError::Tracepoint {
                program: "sshd_fork",
                event: "sched:sched_process_fork".into(),
                reason,
            })
        }
        None => None,
    };
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .override_global(names::TASK_OFFSETS, &offsets, true)
        .override_global(names::FORK_CHILD_PID, &fork_child_pid.unwrap_or(0), true)
        .load(OBJ)
        .map_err(|e| match permission_error(&e) {
            true => LoadError::NotPrivileged { missing: "the kernel refused BPF (EPERM)".into() },
            false => LoadError::Load(e),
        })?;

    for spec in PROBES {
        loaded_uprobe(&mut ebpf, spec.program)?;
    }
    let loaded = begin.elapsed();
    let mut attached = Vec::new();
    for target in &targets {
        attached.push((target.clone(), attach_target(&mut ebpf, target)?));
    }
    // The witness is required only when sshd paths were given; by default a failure to attach it
    // leaves PAM capture running, with a warning.
    let sshd = match fork_child_pid
        .map(|_| sshd::find(&want.sshd, &sshd_procs).and_then(|found| sshd::attach(&mut ebpf, found, &sshd_procs)))
    {
        Some(Ok(sshd)) => {
            sshd::report(&sshd);
            sshd
        }
        Some(Err(e)) if want.sshd.is_empty() => {
            warn!(error = %e, "sshd witness off, only PAM sees sshd logins.");
            sshd::SshdTargets::default()
        }
        Some(Err(e)) => return Err(e),
        None => sshd::SshdTargets::default(),
    };
    // Parsing the kernel's BTF and the object allocates tens of MB that are freed by now; hand the
    // pages back so the resident size reflects the daemon's steady state.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    // Where start-up time goes, for the benchmarks: finding libpam, reading the kernel's BTF,
    // loading and verifying the programs, attaching (each cumulative from the start of `load`).
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    info!(
        found_ms = ms(found),
        btf_ms = ms(btf),
        loaded_ms = ms(loaded),
        attached_ms = ms(begin.elapsed()),
        probes = attached.iter().map(|(_, n)| n).sum::<usize>(),
        libpam = %targets.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","),
        "Probes attached."
    );
    Ok(Probes { ebpf, targets, attached, sshd })
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, LoadError> {
    ebpf.program_mut(name)
        .ok_or_else(|| LoadError::Program { program: name, reason: "not in the object".into() })?
        .try_into()
        .map_err(|e| LoadError::Program { program: name, reason: format!("{e}") })
}

/// The uprobe program `name`, loaded into the kernel (once; a program can then attach many times).
fn loaded_uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, LoadError> {
    let program = uprobe(ebpf, name)?;
    if program.fd().is_err() {
        program.load().map_err(|e| LoadError::Program { program: name, reason: format!("{e:#}") })?;
    }
    Ok(program)
}

/// Attaches every (loaded) probe to one libpam file; returns how many were attached.
fn attach_target(ebpf: &mut Ebpf, target: &Path) -> Result<usize, LoadError> {
    let mut attached = 0;
    for spec in PROBES {
        match uprobe(ebpf, spec.program)?.attach(spec.symbol, target, UProbeScope::AllProcesses) {
            Ok(_) => attached += 1,
            Err(e) if spec.optional => {
                debug!(symbol = spec.symbol, path = %target.display(), error = %e, "Optional symbol not attached.");
            }
            Err(e) if permission_denied(&e) => {
                return Err(LoadError::NotPrivileged {
                    missing: format!(
                        "CAP_SYS_ADMIN: the kernel refused perf_event_open for the uprobe on {} ({e})",
                        spec.symbol
                    ),
                });
            }
            Err(e) => {
                return Err(LoadError::Attach {
                    program: spec.program,
                    symbol: spec.symbol,
                    path: target.display().to_string(),
                    reason: format!("{e}"),
                });
            }
        }
    }
    Ok(attached)
}

/// Attaches the probes to the file now at `path` (after a package upgrade replaced it). The
/// probes on the old file stay, for processes that still map it.
pub fn reattach(probes: &mut Probes, path: &Path) -> Result<usize, LoadError> {
    let n = attach_target(&mut probes.ebpf, path)?;
    match probes.attached.iter_mut().find(|(p, _)| p == path) {
        Some((_, count)) => *count += n,
        None => probes.attached.push((path.to_path_buf(), n)),
    }
    Ok(n)
}

/// Watches the directories of the attached libpam files. A package upgrade renames a new file over
/// the old one; uprobes stay on the old inode, so new processes would go unseen. [`LibpamWatch::
/// replaced`] reports such a path so the caller can [`reattach`].
pub struct LibpamWatch {
    stream: inotify::EventStream<[u8; 4096]>,
    /// Watch descriptor of the directory, file name, path, and (device, inode) last attached.
    files: Vec<(inotify::WatchDescriptor, std::ffi::OsString, PathBuf, (u64, u64))>,
}

impl LibpamWatch {
    pub fn new(targets: &[PathBuf]) -> std::io::Result<Self> {
        use inotify::{Inotify, WatchMask};
        let inotify = Inotify::init()?;
        let mut files = Vec::new();
        for target in targets {
            let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else { continue };
            let meta = fs::metadata(target)?;
            let wd = inotify.watches().add(dir, WatchMask::CREATE | WatchMask::MOVED_TO)?;
            files.push((wd, name.to_owned(), target.clone(), (meta.dev(), meta.ino())));
        }
        Ok(Self { stream: inotify.into_event_stream([0u8; 4096])?, files })
    }

    /// Waits until one of the files is replaced by a different file; returns its path. Cancel-safe.
    pub async fn replaced(&mut self) -> Option<PathBuf> {
        use futures_util::StreamExt as _;
        loop {
            let event = self.stream.next().await?.ok()?;
            let Some(name) = event.name else { continue };
            for (wd, file, path, identity) in &mut self.files {
                if *wd != event.wd || *file != name {
                    continue;
                }
                let Ok(meta) = fs::metadata(&*path) else { continue };
                if (meta.dev(), meta.ino()) != *identity && check_elf(path).is_ok() {
                    *identity = (meta.dev(), meta.ino());
                    return Some(path.clone());
                }
            }
        }
    }
}

/// Starts watching `probes`' libpam files; without inotify the daemon still runs, and says so.
pub fn watch_libpam(probes: &Probes) -> Option<LibpamWatch> {
    LibpamWatch::new(&probes.targets)
        .map_err(|e| warn!(error = %e, "Cannot watch libpam for upgrades; restart notifier after a libpam upgrade."))
        .ok()
}

/// The next replaced libpam, or never when there is no watch.
pub async fn next_replaced(watch: &mut Option<LibpamWatch>) -> Option<PathBuf> {
    match watch {
        Some(w) => w.replaced().await,
        None => std::future::pending().await,
    }
}

/// Re-attaches after `path` was replaced, logging the outcome; returns the text for a health alert.
pub fn handle_replaced(probes: &mut Probes, path: &Path) -> String {
    match reattach(probes, path) {
        Ok(n) => {
            warn!(path = %path.display(), probes = n, "libpam was replaced (a package upgrade?); probes attached to the new file.");
            format!(
                "libpam at {} was replaced (a package upgrade?); notifier attached its probes to the new file",
                path.display()
            )
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "libpam was replaced and the probes could not attach to the new file; restart notifier.");
            format!("libpam at {} was replaced and notifier could not attach to the new file ({e}); logins through it are not seen until notifier restarts", path.display())
        }
    }
}

fn permission_error(e: &aya::EbpfError) -> bool {
    let text = format!("{e:?}");
    text.contains("EPERM") || text.contains("PermissionDenied") || text.contains("Operation not permitted")
}

/// The attach failed with EACCES or EPERM somewhere down the error's source chain.
fn permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        let os = err.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error);
        if matches!(os, Some(libc::EACCES | libc::EPERM)) {
            return true;
        }
        cause = err.source();
    }
    false
}

/// Capability numbers from linux/capability.h.
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// CAP_SYS_ADMIN covers everything. CAP_BPF with CAP_PERFMON is let through, since some kernels
/// accept uprobes with them; where the kernel refuses, [`attach_target`] names CAP_SYS_ADMIN.
fn check_privileges() -> Result<(), LoadError> {
    let Some(eff) = effective_caps() else {
        return Ok(()); // Unknown: let the kernel decide, and map its EPERM.
    };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    Err(LoadError::NotPrivileged { missing: "CAP_SYS_ADMIN, to load the probes and attach them as uprobes".into() })
}

/// Capabilities that are useful but not required: what is lost without each, for one warning.
fn optional_capabilities_missing() -> Vec<&'static str> {
    let Some(eff) = effective_caps() else { return Vec::new() };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_PTRACE) {
        missing.push(
            "CAP_SYS_PTRACE is missing: the executable path of callers running as root (sshd, sudo) \
             cannot be read from /proc, so events show exe=null (the trusted flag is unaffected), \
             and libpam mapped by a running sshd in a container is not found",
        );
    }
    missing
}

fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

fn check_given(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    for p in paths {
        if let Err(reason) = check_elf(p) {
            return Err(LoadError::BadLibpam { path: p.display().to_string(), reason });
        }
    }
    Ok(dedupe(paths.iter().cloned()))
}

/// Finds every distinct libpam on the host.
fn find_libpam(sshd_procs: &[SshdProcess]) -> Result<Vec<PathBuf>, LoadError> {
    let mut candidates: Vec<PathBuf> = ldconfig("libpam.so.0");
    candidates.extend(STANDARD_PATHS.iter().map(PathBuf::from));
    candidates.extend(sshd_mapped(sshd_procs, "/libpam.so"));
    let found: Vec<PathBuf> = candidates.into_iter().filter(|p| check_elf(p).is_ok()).collect();
    if found.is_empty() {
        return Err(LoadError::LibpamNotFound { searched: STANDARD_PATHS.join(", ") });
    }
    Ok(dedupe(found.into_iter()))
}

/// Keeps the first path of each distinct file.
fn dedupe(paths: impl Iterator<Item = PathBuf>) -> Vec<PathBuf> {
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
fn check_elf(path: &Path) -> Result<(), String> {
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

/// The paths of the library `soname` in the ldconfig cache.
fn ldconfig(soname: &str) -> Vec<PathBuf> {
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

/// The running sshd processes, from one walk of /proc.
fn sshd_processes() -> Vec<SshdProcess> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid.to_str().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if comm.starts_with("sshd") {
            found.push(SshdProcess { pid: pid.to_string(), comm: comm.to_string() });
        }
    }
    found
}

/// The files whose path contains `fragment` (`/libpam.so`, `/libc.so`) mapped by running `sshd`
/// and `sshd-session` processes, reached through the process's root so that an sshd in another
/// mount namespace (a container) is covered too.
fn sshd_mapped(procs: &[SshdProcess], fragment: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for p in procs.iter().filter(|p| matches!(p.comm.as_str(), "sshd" | "sshd-session")) {
        let maps = fs::read_to_string(format!("/proc/{}/maps", p.pid)).unwrap_or_default();
        for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
            if path.contains(fragment) {
                found.push(PathBuf::from(format!("/proc/{}/root{path}", p.pid)));
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
