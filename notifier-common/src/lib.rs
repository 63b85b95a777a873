//! The kernel<->user ABI of notifier: the layout of every record the probes write to the ring buffer,
//! the numbers that name record kinds and PAM items, the names of the maps, and the lengths of the
//! fixed buffers. Nothing else lives here: this crate is shared by the `no_std` eBPF object and the
//! userspace binary, so both sides agree on one definition.
//!
//! Invariants:
//! - every type is `#[repr(C)]`, `Copy`, made of fixed-size integers and byte arrays, with explicit
//!   padding and no `bool`, and its size is checked at compile time;
//! - no record can carry a secret: the probes read only the public API's arguments, and they copy a
//!   `pam_set_item` value only for the items listed in [`item`], and a `pam_putenv` string only when it
//!   starts with one of the names in [`env`]; the sshd witness copies only `setlogin`'s user name and the
//!   peer address of sshd's own `accept()`.
#![no_std]

use core::mem::size_of;

mod sshd;
pub use sshd::{sshd_flags, sshd_item, SshdAccepted, SshdConn};

/// Map and global names, shared so that userspace never types a name twice.
pub mod names {
    /// Ring buffer of [`crate::EventHeader`] + payload records from root callers ([`crate::lane::ROOT`]).
    pub const EVENTS: &str = "EVENTS";
    /// Ring buffer of the records of every other caller ([`crate::lane::USER`]), so that no
    /// unprivileged flood can take the capacity that root's logins need.
    pub const EVENTS_USER: &str = "EVENTS_USER";
    /// Per-CPU counters of events that could not be delivered, indexed by [`crate::lost`].
    pub const LOST: &str = "LOST";
    /// LRU hash: [`crate::HandleKey`] -> [`crate::HandleState`], one entry per live PAM handle of a
    /// root caller.
    pub const HANDLES: &str = "HANDLES";
    /// The same for every other caller.
    pub const HANDLES_USER: &str = "HANDLES_USER";
    /// LRU hash: [`crate::InflightKey`] -> [`crate::Inflight`], arguments saved between entry and
    /// return, for root callers.
    pub const INFLIGHT: &str = "INFLIGHT";
    /// The same for every other caller.
    pub const INFLIGHT_USER: &str = "INFLIGHT_USER";
    /// LRU hash: real uid -> [`crate::Budget`], the records each unprivileged real uid may still emit.
    pub const BUDGET: &str = "BUDGET";
    /// Global `TaskOffsets`, filled by the loader from the kernel's BTF.
    pub const TASK_OFFSETS: &str = "TASK_OFFSETS";
    /// Global `u32`: offset of `child_pid` in `sched:sched_process_fork` records, from its format.
    pub const FORK_CHILD_PID: &str = "FORK_CHILD_PID";
    /// Hash: inode number -> 1 for every sshd binary (`sshd`, `sshd-session`, `sshd-auth`), filled by
    /// the loader. Only processes running one of them have their `accept()` peers read; userspace
    /// checks the device too before it trusts a connection (see `SSHD_CONNECT`).
    pub const SSHD_BINS: &str = "SSHD_BINS";
    /// LRU hash: listener tgid -> [`crate::SshdAccepted`], its latest `accept()`, taken by the
    /// listener's next fork, which reads the peer from the buffer.
    pub const SSHD_ACCEPTED: &str = "SSHD_ACCEPTED";
    /// LRU hash: tgid -> [`crate::SshdConn`], every process of a live sshd connection.
    pub const SSHD_CONNS: &str = "SSHD_CONNS";
    /// Hash: tgid -> [`crate::SshdConn`], every process below a connection's logged-in children:
    /// the user's shell and what it runs, so that `su` or `sudo` there names the connection it
    /// came from. A plain hash (not LRU): a user who forks until it is full stops the tracking of
    /// new processes, and never evicts another connection's.
    pub const SSHD_ORIGIN: &str = "SSHD_ORIGIN";
    /// LRU hash: mount namespace inode number -> 1, the namespaces whose first root exec was
    /// reported ([`crate::kind::NEW_MOUNT_NS`]).
    pub const MOUNT_NS_SEEN: &str = "MOUNT_NS_SEEN";
}

/// Size of the root callers' ring buffer, in bytes (a power-of-two multiple of the page size).
pub const RING_BYTES: u32 = 1 << 21;
/// Size of the other callers' ring buffer, in bytes.
pub const RING_USER_BYTES: u32 = 1 << 20;
/// Records per second that the callers of one unprivileged real uid may emit, on average, and in
/// a burst. Beyond that their records are counted ([`lost::BUDGET`]), not emitted. A `sudo` or
/// `su` session takes about 10 records.
pub const USER_RECORDS_PER_SEC: u64 = 2_000;
pub const USER_RECORDS_BURST: u64 = 8_000;
/// Records being built at once, per lane: each thread inside a probe holds one entry for a few
/// microseconds, so this bounds preempted probes, not callers.
pub const MAX_BUILDING: u32 = 128;
/// Real uids whose budget is tracked at once (LRU).
pub const MAX_BUDGET_UIDS: u32 = 4_096;

/// Which capacity a record uses. A root caller (real uid 0: sshd, cron, login, systemd, and su or
/// sudo when root runs them) has its own ring, handle and in-flight maps; every other caller
/// (a user's own processes, and setuid programs a user starts) shares the others, within a budget
/// per real uid. The real uid is what a user cannot change: a setuid-root program keeps its
/// caller's.
pub mod lane {
    pub const ROOT: u32 = 0;
    pub const USER: u32 = 1;
    pub const COUNT: u32 = 2;
}
/// Entries in the per-handle LRU map: the most PAM transactions that can be open at once.
pub const MAX_HANDLES: u32 = 16_384;
/// Entries in the entry->return argument map: the most PAM calls in flight at once.
pub const MAX_INFLIGHT: u32 = 8_192;
/// Bytes of string payload one record can carry, including the terminating NUL. Longer strings are
/// cut and flagged with [`str_flags::TRUNCATED`]. Large enough for an RSA-4096 `SSH_AUTH_INFO_0`.
pub const DATA_LEN: usize = 4096;
/// Entries in the sshd connection map: processes of live sshd connections, two or three each.
pub const MAX_SSHD_CONNS: u32 = 16_384;
/// Entries in the map of processes started inside sshd sessions (users' shells and their children).
pub const MAX_SSHD_ORIGIN: u32 = 32_768;
/// Entries in the map of mount namespaces already reported.
pub const MAX_MOUNT_NS: u32 = 4_096;
/// Entries in the map of accepted-but-not-yet-forked peers: one per sshd listener.
pub const MAX_SSHD_LISTENERS: u32 = 256;
/// `sizeof(struct sockaddr_in6)`, the largest peer address `accept()` returns to sshd.
pub const SOCKADDR_LEN: usize = 28;
/// Processes below a connection's own process (depth 1) that are tracked: the pre-auth child and
/// the post-auth child are at depth 2. The user's shell and its children are followed in
/// `SSHD_ORIGIN` instead, for the origin of their PAM sessions.
pub const SSHD_MAX_DEPTH: u16 = 2;
/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;

/// Record kinds, as written in [`EventHeader::kind`]. Gapped on purpose; convert with `TryFrom<u32>`.
pub mod kind {
    /// `pam_start`/`pam_start_confdir` returned; payload: the service name.
    pub const START: u32 = 1;
    /// Follows [`START`] for the same handle; payload: the user name given to `pam_start`.
    pub const START_USER: u32 = 2;
    /// `pam_set_item` entry; [`crate::EventHeader::item`] is the item type; payload: its value.
    pub const SET_ITEM: u32 = 10;
    /// `pam_putenv` entry for a name in [`crate::env`]; payload: the whole `NAME=value` string.
    pub const PUTENV: u32 = 20;
    /// `pam_authenticate` returned; [`crate::EventHeader::ret`] is its result.
    pub const AUTHENTICATE: u32 = 30;
    /// `pam_open_session` returned.
    pub const OPEN_SESSION: u32 = 40;
    /// `pam_close_session` returned.
    pub const CLOSE_SESSION: u32 = 41;
    /// `pam_end` entry; [`crate::EventHeader::item`] holds its `pam_status` argument.
    pub const END: u32 = 50;

    // The sshd witness. Its records come only from tracked connections. In each, `owner_tgid` is
    // the connection's own process (sshd's per-connection `[priv]` process, forked by the
    // listener) and `session_start_ns` the time of the `accept()`.

    /// An sshd listener forked the process for a connection it accepted. The record comes from the
    /// listener; payload: the peer's `struct sockaddr_in` or `sockaddr_in6`, from `accept()`'s
    /// buffer.
    pub const SSHD_CONNECT: u32 = 60;
    /// sshd called `setlogin(name)`: a user logged in. [`crate::EventHeader::item`] holds the
    /// caller's [`crate::SshdConn`] depth and flags ([`crate::sshd_item`]); payload: the name.
    pub const SSHD_LOGIN: u32 = 61;
    /// `setresuid(u, u, u)` succeeded in a process that called `setlogin`; `item` is the uid.
    pub const SSHD_UID: u32 = 62;
    /// The connection's own process, or its pre-auth child, exited; `ret` is its exit status as
    /// `wait()` reports it (`code << 8`, or the signal number), `item` holds its depth and flags
    /// ([`crate::sshd_item`]).
    pub const SSHD_EXIT: u32 = 63;
    /// A root process executed a program in a mount namespace not seen before (a container
    /// starting): `item` is the namespace's inode number. The loader then looks in that process's
    /// root for libpam and sshd.
    pub const NEW_MOUNT_NS: u32 = 70;
}

/// The `pam_set_item` item types that are captured. Every other item (notably `PAM_AUTHTOK` = 6,
/// `PAM_OLDAUTHTOK` = 7 and `PAM_CONV` = 5) is never read.
pub mod item {
    pub const PAM_SERVICE: u32 = 1;
    pub const PAM_USER: u32 = 2;
    pub const PAM_TTY: u32 = 3;
    pub const PAM_RHOST: u32 = 4;
    pub const PAM_RUSER: u32 = 8;

    /// True for the items the probes may copy.
    #[inline(always)]
    pub const fn is_captured(item: u32) -> bool {
        matches!(item, PAM_SERVICE | PAM_USER | PAM_TTY | PAM_RHOST | PAM_RUSER)
    }
}

/// The PAM environment variables that are captured; all others are never copied out of the probe.
pub mod env {
    pub const SSH_CONNECTION: &[u8] = b"SSH_CONNECTION=";
    pub const SSH_AUTH_INFO_0: &[u8] = b"SSH_AUTH_INFO_0=";
    /// Bytes of a `pam_putenv` argument read to compare against the names (the longest prefix).
    pub const PREFIX_LEN: usize = 16;
}

/// Flags on the string payload, in [`EventHeader::str_flags`].
pub mod str_flags {
    /// The string was longer than [`crate::DATA_LEN`] - 1 bytes and was cut.
    pub const TRUNCATED: u16 = 1;
    /// The string could not be read from the caller's memory (payload empty).
    pub const READ_FAILED: u16 = 2;
    /// The pointer was NULL (payload empty).
    pub const NULL: u16 = 4;
}

/// Flags on the caller's task, in [`EventHeader::task_flags`].
pub mod task_flags {
    /// `euid`, `ppid` and the `exe_*` fields were read from the task (the loader found the offsets).
    pub const INFO: u16 = 1;
    /// The task's executable could be read (`exe_uid`, `exe_mode`, `exe_ino` are valid).
    pub const EXE: u16 = 2;
}

/// Indexes into the per-CPU `LOST` counter array.
pub mod lost {
    /// A record was dropped because the ring buffer was full.
    pub const RING_FULL: u32 = 0;
    /// The entry->return argument map was full, so the return of that call is not reported; or too
    /// many records were being built at once.
    pub const INFLIGHT_FULL: u32 = 1;
    /// The per-handle map could not take a new handle.
    pub const HANDLES_FULL: u32 = 2;
    /// A string argument could not be read from user memory (the record is still sent, flagged).
    pub const READ_FAILED: u32 = 3;
    /// A return probe fired with no saved entry (evicted or attached mid-call).
    pub const NO_ENTRY: u32 = 4;
    /// An unprivileged real uid was over its budget ([`crate::USER_RECORDS_PER_SEC`]).
    pub const BUDGET: u32 = 5;
    /// Number of causes.
    pub const COUNT: u32 = 6;
    /// Entries in the `LOST` array: one counter per cause and [`crate::lane`].
    pub const SLOTS: u32 = COUNT * crate::lane::COUNT;

    /// The `LOST` index of `cause` in `lane`.
    pub const fn index(lane: u32, cause: u32) -> u32 {
        lane * COUNT + cause
    }
}

/// The fixed part of every ring buffer record. The string payload (if any) follows it directly and
/// is `str_len` bytes long, without a NUL.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// The `pam_set_item` item type, or the `pam_end` status argument; 0 otherwise.
    pub item: u32,
    /// `CLOCK_BOOTTIME` at the probe, in nanoseconds.
    pub ts_ns: u64,
    /// `bpf_get_current_pid_tgid()`: tgid in the high half, thread id in the low half.
    pub pid_tgid: u64,
    /// `bpf_get_current_uid_gid()`: the caller's real gid (high) and real uid (low).
    pub uid_gid: u64,
    /// The `pam_handle_t *` value.
    pub handle: u64,
    /// `ts_ns` of the `pam_start` that created this handle; 0 when it was not seen.
    pub session_start_ns: u64,
    /// The tgid that called `pam_start` for this handle (the caller's parent when a forked child
    /// uses its parent's handle); 0 when it was not seen.
    pub owner_tgid: u32,
    /// The caller's parent tgid (valid with [`task_flags::INFO`]).
    pub ppid: u32,
    /// The probed function's return value, for return records.
    pub ret: i32,
    /// The caller's effective uid (valid with [`task_flags::INFO`]).
    pub euid: u32,
    /// Owner uid of the caller's executable (valid with [`task_flags::EXE`]).
    pub exe_uid: u32,
    /// Mode bits of the caller's executable (valid with [`task_flags::EXE`]).
    pub exe_mode: u32,
    /// Inode number of the caller's executable (valid with [`task_flags::EXE`]).
    pub exe_ino: u64,
    /// [`task_flags`].
    pub task_flags: u16,
    /// [`str_flags`].
    pub str_flags: u16,
    /// Length of the payload that follows, in bytes.
    pub str_len: u32,
    /// `bpf_get_current_comm()`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// On `pam_start` records of a process inside an sshd session (`SSHD_ORIGIN`): the connection
    /// it runs in, as `SshdConn::conn_ns` and `owner_tgid`; 0 otherwise.
    pub origin_ns: u64,
    pub origin_tgid: u32,
    pub _pad: u32,
}

/// Size of [`EventHeader`] on the wire.
pub const HEADER_LEN: usize = 120;
const _: () = assert!(size_of::<EventHeader>() == HEADER_LEN);
const _: () = assert!(HEADER_LEN.is_multiple_of(8));

/// A whole record as assembled in the probe's per-CPU scratch buffer. Only `HEADER_LEN + str_len`
/// bytes of it are written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub header: EventHeader,
    pub data: [u8; DATA_LEN],
}
const _: () = assert!(size_of::<Event>() == HEADER_LEN + DATA_LEN);

/// Key of the per-handle map: handles are only unique within a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandleKey {
    pub tgid: u32,
    pub _pad: u32,
    pub handle: u64,
}
const _: () = assert!(size_of::<HandleKey>() == 16);

/// What the kernel remembers about a live handle.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandleState {
    pub start_ns: u64,
    pub owner_tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<HandleState>() == 16);

/// A token bucket: what one real uid may still emit, and when it was last refilled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub tokens: u64,
    pub refilled_ns: u64,
}
const _: () = assert!(size_of::<Budget>() == 16);

/// Which function an in-flight entry belongs to.
pub mod func {
    pub const START: u32 = 1;
    pub const AUTHENTICATE: u32 = 2;
    pub const OPEN_SESSION: u32 = 3;
    pub const CLOSE_SESSION: u32 = 4;
}

/// Key of the entry->return map: one thread, one function.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflightKey {
    pub pid_tgid: u64,
    pub func: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<InflightKey>() == 16);

/// Arguments saved at entry, read at return. For `pam_start` the pointers are the service, the user
/// and the `pam_handle_t **`; for the others `a` is the handle.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inflight {
    pub a: u64,
    pub b: u64,
    pub c: u64,
}
const _: () = assert!(size_of::<Inflight>() == 24);

/// Byte offsets of the kernel struct fields the probes read to identify the caller, found by the
/// loader in the running kernel's BTF. `valid` is 0 when they could not be found; the probes then
/// leave the task fields empty and userspace marks every event untrusted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub valid: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_cred: u32,
    pub task_mm: u32,
    pub cred_euid: u32,
    pub mm_exe_file: u32,
    pub file_f_inode: u32,
    pub inode_i_uid: u32,
    pub inode_i_mode: u32,
    pub inode_i_ino: u32,
    pub task_exit_code: u32,
    /// `task_struct.nsproxy`, `nsproxy.mnt_ns`, and `mnt_namespace.ns` + `ns_common.inum`: the
    /// caller's mount namespace. Valid when `mount_ns_valid` is 1 (an older layout leaves the rest
    /// of the offsets usable).
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    pub mnt_ns_inum: u32,
    pub mount_ns_valid: u32,
}
const _: () = assert!(size_of::<TaskOffsets>() == 64);

impl TaskOffsets {
    pub const fn zeroed() -> Self {
        Self {
            valid: 0,
            task_real_parent: 0,
            task_tgid: 0,
            task_cred: 0,
            task_mm: 0,
            cred_euid: 0,
            mm_exe_file: 0,
            file_f_inode: 0,
            inode_i_uid: 0,
            inode_i_mode: 0,
            inode_i_ino: 0,
            task_exit_code: 0,
            task_nsproxy: 0,
            nsproxy_mnt_ns: 0,
            mnt_ns_inum: 0,
            mount_ns_valid: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these are `#[repr(C)]` structs of integers and byte arrays with explicit padding,
    // so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HandleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HandleState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SshdConn {}
}
