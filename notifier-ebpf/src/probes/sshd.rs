//! The sshd witness: sees sshd logins whether or not sshd uses PAM, with uprobes and tracepoints
//! only (no kprobes). The signals, measured on OpenSSH 9.2 and 10.0:
//! - `accept()` in a process running an sshd binary (the listener) names the buffer that receives
//!   the peer address; at the listener's next fork, which hands that connection to a new process,
//!   the buffer holds the peer. The fork carries it to the connection's own process (`[priv]`,
//!   depth 1), and each fork below it to the children (depth 2): the pre-auth child (the first)
//!   and the post-auth one;
//! - the uprobe on sshd's exported `setlogin(name)` marks a successful login, with the user;
//! - `setresuid(u, u, u)` in a process that called `setlogin` gives the uid;
//! - the exit status of the connection's own process (the end of the connection) and of the
//!   pre-auth child (0 or 255: the result of authentication).
//!
//! `accept`, `accept4` and `setresuid` are probed as libc functions (uprobes on the libc sshd
//! maps), not as system call tracepoints: enabling any `syscalls:` tracepoint sends every system
//! call of every process through the kernel's tracing slow path (measured: +70 ns on each
//! `getppid()`), while a uprobe costs only the calls of that one function.
//!
//! Maps: `SSHD_BINS` (set by the loader) says which executables are sshd; `SSHD_ACCEPTED` holds a
//! listener's latest `accept()` buffer until it forks; `SSHD_CONNS` holds every tracked process,
//! removed at exit. Only listeners run by root are followed, and their connections' records go to
//! root's ring whichever of the connection's processes (the unprivileged pre-auth child too)
//! emits them.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{tracepoint, uprobe},
    programs::{ProbeContext, TracePointContext},
};
use notifier_common::{kind, lane, lost, sshd_flags, sshd_item, SshdAccepted, SshdConn, SOCKADDR_LEN, SSHD_MAX_DEPTH};

use crate::{
    record::{count_lost, current_lane, tgid, Record, SSHD_ACCEPTED, SSHD_CONNS, SSHD_ORIGIN},
    task::{exit_code, running_sshd},
};

/// Offset of `child_pid` in `sched:sched_process_fork` records. It moved when the comm fields
/// became `__data_loc` (44 before, 20 on 6.18), so the loader reads it from the event's format.
#[unsafe(no_mangle)]
static FORK_CHILD_PID: u32 = 20;

/// Argument `n` as a raw 64-bit value, 0 if it cannot be read.
#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

// int accept(int fd, struct sockaddr *addr, socklen_t *addrlen), and accept4 with flags: in an
// sshd listener run by root, the address buffer is remembered for its next fork. A copy of sshd
// that a user runs is not followed, so it cannot fill the maps or the ring.
#[uprobe]
pub fn sshd_enter_accept(ctx: ProbeContext) -> u32 {
    let addr = arg(&ctx, 1);
    if addr == 0 || current_lane() != lane::ROOT || !running_sshd() {
        return 0;
    }
    // SAFETY: helper without preconditions.
    let ts_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    let accepted = SshdAccepted { ts_ns, buffer: addr };
    let _ = SSHD_ACCEPTED.insert(tgid(), accepted, 0);
    0
}

/// A fork: from a listener with an accepted peer, it starts a tracked connection; from a tracked
/// process, the child joins its connection (down to [`SSHD_MAX_DEPTH`]).
#[tracepoint]
pub fn sshd_sched_process_fork(ctx: TracePointContext) -> u32 {
    // SAFETY: a plain read of a global that the loader initialised before load.
    let offset = unsafe { core::ptr::read_volatile(&FORK_CHILD_PID) } as usize;
    // SAFETY: as in `field`.
    let child = unsafe { ctx.read_at::<i32>(offset) }.unwrap_or(0) as u32;
    if child == 0 {
        return 0;
    }
    let parent = tgid();
    // SAFETY: the value is copied out at once.
    if let Some(accepted) = unsafe { SSHD_ACCEPTED.get(parent) }.copied() {
        let _ = SSHD_ACCEPTED.remove(parent);
        // The fork runs in the listener: its accept() buffer now holds the peer it accepted.
        // SAFETY: bpf_probe_read_user fails instead of faulting.
        let Ok(addr) = (unsafe { bpf_probe_read_user(accepted.buffer as *const [u8; SOCKADDR_LEN]) }) else {
            count_lost(lane::ROOT, lost::READ_FAILED);
            return 0;
        };
        let conn = SshdConn { conn_ns: accepted.ts_ns, owner_tgid: child, depth: 1, flags: 0 };
        if SSHD_CONNS.insert(child, conn, 0).is_err() {
            count_lost(lane::ROOT, lost::HANDLES_FULL);
        }
        if let Some(mut rec) = Record::in_lane(lane::ROOT, kind::SSHD_CONNECT, 0) {
            let h = rec.header();
            h.owner_tgid = child;
            h.session_start_ns = accepted.ts_ns;
            rec.set_payload(&addr);
            rec.emit();
        }
        return 0;
    }
    // SAFETY: the value is copied out at once.
    if let Some(origin) = unsafe { SSHD_ORIGIN.get(parent) }.copied() {
        follow_session(child, origin);
        return 0;
    }
    let Some(conn) = SSHD_CONNS.get_ptr_mut(parent) else {
        return 0;
    };
    // SAFETY: the pointer is to a live map value; concurrent updates only race on flag bits.
    let parent_conn = unsafe { &mut *conn };
    if parent_conn.depth >= SSHD_MAX_DEPTH {
        // A child of the post-auth process (or, on OpenSSH 9.7 and older, of a root session's
        // process): the user's shell. The pre-auth child's are not the user's.
        if parent_conn.flags & sshd_flags::FIRST_CHILD == 0 {
            follow_session(child, *parent_conn);
        }
        return 0;
    }
    let mut flags = 0;
    if parent_conn.depth == 1 && parent_conn.flags & sshd_flags::FORKED == 0 {
        flags = sshd_flags::FIRST_CHILD;
    }
    parent_conn.flags |= sshd_flags::FORKED;
    let conn = SshdConn {
        conn_ns: parent_conn.conn_ns,
        owner_tgid: parent_conn.owner_tgid,
        depth: parent_conn.depth + 1,
        flags,
    };
    if SSHD_CONNS.insert(child, conn, 0).is_err() {
        count_lost(lane::ROOT, lost::HANDLES_FULL);
    }
    0
}

/// Adds `child` to the processes inside `conn`'s sessions. When the map is full the child is not
/// followed (counted): the entries of other connections stay.
#[inline(always)]
fn follow_session(child: u32, conn: SshdConn) {
    if SSHD_ORIGIN.insert(child, conn, 0).is_err() {
        count_lost(lane::USER, lost::HANDLES_FULL);
    }
}

/// A record about the calling process's connection; `None` if the ring's scratch is unavailable.
#[inline(always)]
fn conn_record(kind: u32, conn: &SshdConn) -> Option<Record> {
    let mut rec = Record::in_lane(lane::ROOT, kind, 0)?;
    let h = rec.header();
    h.owner_tgid = conn.owner_tgid;
    h.session_start_ns = conn.conn_ns;
    h.item = sshd_item::pack(conn.depth, conn.flags);
    Some(rec)
}

// int setlogin(const char *name), exported by sshd (up to 9.7) and sshd-session (9.8 and later).
#[uprobe]
pub fn sshd_enter_setlogin(ctx: ProbeContext) -> u32 {
    let name: u64 = ctx.arg(0).unwrap_or(0);
    // A process outside the tracked connections (one that started before notifier, or sshd -i
    // under inetd or socket activation, whose accept() is not sshd's) has no peer to report.
    let Some(conn) = SSHD_CONNS.get_ptr_mut(tgid()) else {
        return 0;
    };
    // SAFETY: as in `sshd_sched_process_fork`.
    let conn = unsafe {
        (*conn).flags |= sshd_flags::LOGGED_IN;
        *conn
    };
    if let Some(mut rec) = conn_record(kind::SSHD_LOGIN, &conn) {
        rec.read_user_str(name);
        rec.emit();
    }
    0
}

// int setresuid(uid_t ruid, uid_t euid, uid_t suid), in a process that called setlogin: the uid,
// when all three agree. sshd treats a failure here as fatal, so the login does not go on.
#[uprobe]
pub fn sshd_enter_setresuid(ctx: ProbeContext) -> u32 {
    // SAFETY: the value is copied out at once.
    let Some(conn) = (unsafe { SSHD_CONNS.get(tgid()) }).copied() else {
        return 0;
    };
    if conn.flags & sshd_flags::LOGGED_IN == 0 {
        return 0;
    }
    let (r, e, s) = (arg(&ctx, 0) as u32, arg(&ctx, 1) as u32, arg(&ctx, 2) as u32);
    if r != e || e != s {
        return 0;
    }
    if let Some(mut rec) = conn_record(kind::SSHD_UID, &conn) {
        rec.header().item = r;
        rec.emit();
    }
    0
}

/// A task exits: a tracked process leaves the map; the connection's own process and the pre-auth
/// child report their exit status.
#[tracepoint]
pub fn sshd_sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    // Keys are the pids forks report, so a thread of a tracked process may have one of its own.
    let _ = SSHD_ORIGIN.remove(tid);
    // SAFETY: the value is copied out at once.
    let Some(conn) = (unsafe { SSHD_CONNS.get(tid) }).copied() else {
        return 0;
    };
    let _ = SSHD_CONNS.remove(tid);
    // Only two exits mean something: the connection's end, and the pre-auth child's result.
    if tid != tgid || !(conn.depth == 1 || conn.flags & sshd_flags::FIRST_CHILD != 0) {
        return 0;
    }
    if let Some(mut rec) = conn_record(kind::SSHD_EXIT, &conn) {
        rec.header().ret = exit_code().unwrap_or(-1);
        rec.emit();
    }
    0
}
