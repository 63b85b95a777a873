//! Loads the embedded eBPF object and attaches its probes to every libpam it finds, and the sshd
//! witness to every sshd (see [`sshd`]).
//!
//! libpam is found, in order, at the paths given with `--libpam`, or else through the ldconfig
//! cache, the standard library directories, and the libpam mapped by running sshd processes.
//! Copies of one file (the same inode through several paths) are attached once.

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};
use notifier_common::names;
use tracing::{info, warn};

mod containers;
mod discover;
mod links;
mod privileges;
mod quiet;
mod replaced;
pub mod sshd;

pub use containers::{attach_root, Added};
use discover::{check_given, find_libpam, sshd_processes};
pub use links::Links;
use privileges::{check_privileges, optional_capabilities_missing, permission_denied};
pub use replaced::{handle_replaced, next_replaced, reattach, watch_libpam, LibpamWatch};

/// The eBPF object, embedded once.
static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/notifier"));

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
    /// The container roots (device, inode) already looked in.
    pub roots_seen: std::collections::HashSet<(u64, u64)>,
    /// What the sshd witness watches (empty when it is off).
    pub sshd: sshd::SshdTargets,
    /// The links of the uprobes and tracepoints.
    pub links: Links,
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

impl From<&crate::config::Capture> for Targets {
    fn from(c: &crate::config::Capture) -> Self {
        Self { libpam: c.libpam.clone(), sshd: c.sshd.clone(), sshd_witness: c.sshd_witness }
    }
}

/// What start-up reads from the kernel's BTF: the field offsets the probes need ([`crate::btf`],
/// a 5.5 MB read while they are found), and aya's loader, made without aya's own parse of the
/// BTF ([`quiet`]). Made first, while the process is small, so that the read is not on top of the
/// config, the databases and the sinks: the start's peak is 14.3 MB, against 15.0 MB when this is
/// done after them (`bench --only memory`).
pub struct Early {
    loader: EbpfLoader<'static>,
    offsets: Result<notifier_common::TaskOffsets, crate::btf::OffsetError>,
    took: std::time::Duration,
}

/// See [`Early`]: call it before anything else that holds memory.
pub fn early() -> Early {
    let begin = std::time::Instant::now();
    let offsets = crate::btf::task_offsets();
    Early { loader: quiet::loader(), offsets, took: begin.elapsed() }
}

/// Checks privileges and kernel support, finds libpam, loads the object and attaches every probe.
pub fn load(want: &Targets, early: Early) -> Result<Probes, LoadError> {
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

    let offsets = match early.offsets {
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
    let btf = early.took;
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
                program: "sshd_sched_process_fork",
                event: "sched:sched_process_fork".into(),
                reason,
            })
        }
        None => None,
    };
    // A loader for the globals below, which live shorter than the one made early.
    let mut loader: EbpfLoader<'_> = early.loader;
    let mut ebpf = loader
        .override_global(names::TASK_OFFSETS, &offsets, true)
        .override_global(names::FORK_CHILD_PID, &fork_child_pid.unwrap_or(0), true)
        .load(OBJ)
        .map_err(|e| match permission_denied(&e) {
            true => LoadError::NotPrivileged { missing: "the kernel refused BPF (EPERM)".into() },
            false => LoadError::Load(e),
        })?;

    let mut links = Links::load(&ebpf, OBJ);
    let loaded = begin.elapsed();
    let mut attached = Vec::new();
    for target in &targets {
        match attach_target(&mut ebpf, &mut links, target) {
            Ok(n) => attached.push((target.clone(), n)),
            // A libpam that was found, not given, and lacks what the probes need (a look-alike
            // file) is skipped; one given with --libpam must work.
            Err(e @ LoadError::Attach { .. }) if libpam.is_empty() => {
                warn!(path = %target.display(), error = %e, "Skipping this libpam candidate: the probes cannot attach to it.");
            }
            Err(e) => return Err(e),
        }
    }
    let targets: Vec<PathBuf> = attached.iter().map(|(p, _)| p.clone()).collect();
    if targets.is_empty() {
        return Err(LoadError::LibpamNotFound { searched: discover::STANDARD_PATHS.join(", ") });
    }
    // The witness is required only when sshd paths were given; by default a failure to attach it
    // leaves PAM capture running, with a warning.
    let sshd = match fork_child_pid.map(|_| {
        sshd::find(&want.sshd, &sshd_procs).and_then(|found| sshd::attach(&mut ebpf, &mut links, found, &sshd_procs))
    }) {
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
    follow_containers(&mut ebpf, &mut links, &offsets);
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
        uprobe_multi = links.is_multi(),
        libpam = %targets.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","),
        "Probes attached."
    );
    let roots_seen = discover::other_roots(&sshd_procs).iter().filter_map(|r| discover::file_id(r)).collect();
    Ok(Probes { ebpf, targets, attached, roots_seen, sshd, links })
}

/// Attaches the tracepoint that reports new mount namespaces, so that containers started later are
/// covered; without it (no tracefs, or an unknown kernel layout) they are not, which is said once.
fn follow_containers(ebpf: &mut Ebpf, links: &mut Links, offsets: &notifier_common::TaskOffsets) {
    containers::seed_known_namespaces(ebpf);
    let (program, category, event) = containers::TRACEPOINT;
    let attached = match (offsets.mount_ns_valid, sshd::tracefs()) {
        (0, _) => Err("the kernel's BTF has no nsproxy.mnt_ns layout that notifier knows".to_string()),
        (_, Err(reason)) => Err(reason),
        (_, Ok(_)) => sshd::attach_tracepoint(ebpf, links, program, category, event).map_err(|e| e.to_string()),
    };
    if let Err(reason) = attached {
        warn!(%reason, "Containers started after notifier are not watched; restart notifier after starting one.");
    }
}

/// Attaches every probe to one libpam file: one link per program; returns how many symbols are
/// probed.
fn attach_target(ebpf: &mut Ebpf, links: &mut Links, target: &Path) -> Result<usize, LoadError> {
    let mut attached = 0;
    for (i, spec) in PROBES.iter().enumerate() {
        if PROBES[..i].iter().any(|s| s.program == spec.program) {
            continue;
        }
        let symbols: Vec<(&'static str, bool)> =
            PROBES.iter().filter(|s| s.program == spec.program).map(|s| (s.symbol, s.optional)).collect();
        attached += links.attach(ebpf, spec.program, target, &symbols)?;
    }
    Ok(attached)
}
