//! Privileges: what the loader needs (CAP_SYS_ADMIN), what it can do without (CAP_SYS_PTRACE),
//! and how a refusal by the kernel is recognised: by the errno in the error's source chain.

use std::fs;

use super::LoadError;

/// The attach failed with EACCES or EPERM somewhere down the error's source chain.
pub(super) fn permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
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
pub(super) fn check_privileges() -> Result<(), LoadError> {
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
pub(super) fn optional_capabilities_missing() -> Vec<&'static str> {
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
