//! An aya loader made without aya parsing the kernel's BTF.
//!
//! aya 0.14's `EbpfLoader::new()` reads and parses all of `/sys/kernel/btf/vmlinux` (a 5.5 MB
//! read and about 15 MB of parsed types on 6.18), and offers no way to skip it
//! (aya-rs/aya#1172). notifier sets `.btf(None)` right after: its programs need no CO-RE
//! relocation, and [`crate::btf`] reads the few field offsets they need. The parse was freed at
//! once, but it made the start's peak RSS: 29 MB with it, 14 MB without
//! (`bench --only memory`).
//!
//! So the loader is made on a short-lived thread that cannot open files. A seccomp filter, which
//! binds that thread alone and ends with it, fails `open`, `openat` and `openat2` with ENOENT, so
//! aya's read fails as it does on a kernel built without BTF. Nothing else in `new()` opens a file.
//! The filter is not a security boundary, only a way to make one read fail; where it cannot be
//! installed (another architecture, a seccomp policy that forbids it), the loader is made as aya
//! makes it. Drop this module when aya's loader reads BTF only when asked to.

use aya::EbpfLoader;

/// A loader with BTF relocation off, made without reading the kernel's BTF where that is possible.
pub(super) fn loader() -> EbpfLoader<'static> {
    let mut loader = without_file_opens(EbpfLoader::new).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "No seccomp filter for aya's loader: it reads the kernel's BTF.");
        EbpfLoader::new()
    });
    loader.btf(None);
    loader
}

/// Runs `f` on a new thread on which no file can be opened. Err: the filter could not be
/// installed, and `f` did not run.
fn without_file_opens<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, std::io::Error> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                deny_opens()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
#[cfg(target_arch = "x86_64")]
const OPENS: &[libc::c_long] = &[libc::SYS_open, libc::SYS_openat, libc::SYS_openat2];
#[cfg(target_arch = "aarch64")]
const OPENS: &[libc::c_long] = &[libc::SYS_openat, libc::SYS_openat2];

/// Installs, on the calling thread only, a seccomp filter that fails every way to open a file.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn deny_opens() -> std::io::Result<()> {
    use libc::{sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let stmt = |code: u32, k: u32| sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let jeq = |k: u32, jt: u8, jf: u8| sock_filter { code: (BPF_JMP | BPF_JEQ | BPF_K) as u16, jt, jf, k };
    let deny = libc::SECCOMP_RET_ERRNO | libc::ENOENT as u32;
    // struct seccomp_data: nr at offset 0, arch at offset 4.
    let mut program = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, 4),
        jeq(ARCH, 1, 0),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
    ];
    // Each match jumps over the matches after it and the "allow" to the "deny".
    let n = OPENS.len();
    program.extend(OPENS.iter().enumerate().map(|(i, &nr)| jeq(nr as u32, (n - i) as u8, 0)));
    program.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    program.push(stmt(BPF_RET | BPF_K, deny));
    let fprog = sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
    // SAFETY: prctl with integer arguments; PR_SET_SECCOMP reads `fprog`, which points to
    // `program`, both alive for the call. Both settings bind this thread only (no TSYNC flag), and
    // the thread ends when `without_file_opens` returns.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog as *const sock_fprog) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn deny_opens() -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_cannot_open_files_and_the_caller_still_can() {
        let inside = without_file_opens(|| std::fs::read("/proc/self/status").map_err(|e| e.kind()));
        assert_eq!(inside.expect("filter installed").unwrap_err(), std::io::ErrorKind::NotFound);
        assert!(std::fs::read("/proc/self/status").is_ok(), "the filter bound only its own thread");
    }

    #[test]
    fn the_loader_has_not_parsed_the_kernels_btf() {
        // On a kernel with BTF, aya's own `new()` holds the parsed types (`btf: Some(...)`).
        let loader = without_file_opens(EbpfLoader::new).expect("filter installed");
        let shown = format!("{loader:?}");
        assert!(shown.starts_with("EbpfLoader { btf: None"), "{}", &shown[..shown.len().min(200)]);
    }
}
