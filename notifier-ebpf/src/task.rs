//! The calling task's identity, read from kernel memory at the offsets the loader found in the
//! running kernel's BTF: its parent, effective uid, executable (inode, owner, mode), exit status
//! and mount namespace.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use notifier_common::{task_flags, EventHeader, TaskOffsets};

use crate::record::SSHD_BINS;

/// Filled by the loader from the kernel's BTF before the object is loaded.
#[unsafe(no_mangle)]
static TASK_OFFSETS: TaskOffsets = TaskOffsets::zeroed();

/// Reads a value of type `T` at `base + off` in kernel memory, or `None`.
#[inline(always)]
pub fn kread<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

#[inline(always)]
fn offsets() -> TaskOffsets {
    // SAFETY: a plain read of a global that the loader initialised before load.
    unsafe { core::ptr::read_volatile(&TASK_OFFSETS) }
}

/// The `struct inode *` of the current task's executable, or 0.
#[inline(always)]
fn exe_inode(o: &TaskOffsets) -> u64 {
    // SAFETY: helper without preconditions; the result is only used through probe reads.
    let task = unsafe { bpf_get_current_task() };
    let mm: u64 = kread(task, o.task_mm).unwrap_or(0);
    let file: u64 = kread(mm, o.mm_exe_file).unwrap_or(0);
    kread(file, o.file_f_inode).unwrap_or(0)
}

/// The current task runs an executable with the inode number of one of the sshd binaries the
/// loader registered (the device is checked in userspace: on btrfs, `st_dev` is not `s_dev`).
#[inline(always)]
pub fn running_sshd() -> bool {
    let o = offsets();
    if o.valid == 0 {
        return false;
    }
    let Some(ino) = kread::<u64>(exe_inode(&o), o.inode_i_ino) else {
        return false;
    };
    // SAFETY: the value is only tested for presence.
    unsafe { SSHD_BINS.get(ino) }.is_some()
}

/// The inode number of the current task's mount namespace, or `None` without the offsets.
#[inline(always)]
pub fn mount_ns() -> Option<u32> {
    let o = offsets();
    if o.mount_ns_valid == 0 {
        return None;
    }
    // SAFETY: helper without preconditions; the result is only used through probe reads.
    let task = unsafe { bpf_get_current_task() };
    let nsproxy: u64 = kread(task, o.task_nsproxy)?;
    let mnt_ns: u64 = kread(nsproxy, o.nsproxy_mnt_ns)?;
    kread(mnt_ns, o.mnt_ns_inum)
}

/// The current task's `exit_code` (as `wait()` reports it), or `None` without the offsets.
#[inline(always)]
pub fn exit_code() -> Option<i32> {
    let o = offsets();
    if o.valid == 0 {
        return None;
    }
    // SAFETY: helper without preconditions; the result is only used through probe reads.
    let task = unsafe { bpf_get_current_task() };
    kread(task, o.task_exit_code)
}

/// Fills the caller's parent, effective uid and executable identity from the current task, using
/// the offsets the loader found in BTF. Without them the fields stay 0 and `task_flags` says so.
#[inline(always)]
pub fn fill_task(h: &mut EventHeader) {
    let o = offsets();
    if o.valid == 0 {
        return;
    }
    // SAFETY: helper without preconditions; the result is only used through probe reads.
    let task = unsafe { bpf_get_current_task() };
    let parent: u64 = kread(task, o.task_real_parent).unwrap_or(0);
    h.ppid = kread(parent, o.task_tgid).unwrap_or(0);
    let cred: u64 = kread(task, o.task_cred).unwrap_or(0);
    let Some(euid) = kread::<u32>(cred, o.cred_euid) else {
        return;
    };
    h.euid = euid;
    h.task_flags |= task_flags::INFO;
    let inode = exe_inode(&o);
    if let (Some(uid), Some(mode), Some(ino)) =
        (kread::<u32>(inode, o.inode_i_uid), kread::<u16>(inode, o.inode_i_mode), kread::<u64>(inode, o.inode_i_ino))
    {
        h.exe_uid = uid;
        h.exe_mode = mode as u32;
        h.exe_ino = ino;
        h.task_flags |= task_flags::EXE;
    }
}
