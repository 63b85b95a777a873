//! The sshd witness: sees sshd logins whether or not sshd uses PAM, with uprobes and tracepoints
//! only (no kprobes). The signals, measured on OpenSSH 9.2 and 10.0:
//! - `accept()` in a process running an sshd binary (the listener) gives the peer address; the
//!   listener's next fork carries it to the connection's own process (`[priv]`, depth 1), and each
//!   fork below it to the children (depth 2): the pre-auth child (the first) and the post-auth one;
//! - the uprobe on sshd's exported `setlogin(name)` marks a successful login, with the user;
//! - `setresuid(u, u, u)` in a process that called `setlogin` gives the uid;
//! - the exit status of every tracked process: the pre-auth child's (0 or 255) is the result of
//!   authentication, the connection process's marks the end of the connection.
//!
//! Maps: `SSHD_BINS` (set by the loader) says which executables are sshd; `SSHD_ACCEPTED` holds a
//! listener's latest peer until it forks; `SSHD_CONNS` holds every tracked process, removed at exit.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{tracepoint, uprobe},
    programs::{ProbeContext, TracePointContext},
};
use notifier_common::{
    func, kind, lost, sshd_flags, sshd_item, Inflight, SshdAccepted, SshdConn, SOCKADDR_LEN, SSHD_MAX_DEPTH,
};

use crate::record::{
    count_lost, exit_code, running_sshd, save_inflight, take_inflight_if_any, tgid, Record, SSHD_ACCEPTED, SSHD_CONNS,
};

/// Offsets in the `syscalls:sys_enter_*`/`sys_exit_*` records: the arguments start at 16, 8 bytes
/// each; the return value is at 16.
const SYSCALL_ARG0: usize = 16;
const SYSCALL_RET: usize = 16;

/// Offset of `child_pid` in `sched:sched_process_fork` records. It moved when the comm fields
/// became `__data_loc` (44 before, 20 on 6.18), so the loader reads it from the event's format.
#[unsafe(no_mangle)]
static FORK_CHILD_PID: u32 = 20;

/// Reads an 8-byte field of a tracepoint record.
#[inline(always)]
fn field(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: read_at uses bpf_probe_read_kernel, which fails instead of faulting.
    unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0)
}

/// `accept(fd, addr, addrlen)` and `accept4(fd, addr, addrlen, flags)` entry: an sshd listener's
/// buffer for the peer address is saved until the call returns.
#[tracepoint]
pub fn sshd_enter_accept(ctx: TracePointContext) -> u32 {
    let addr = field(&ctx, SYSCALL_ARG0 + 8);
    if addr == 0 || !running_sshd() {
        return 0;
    }
    save_inflight(func::ACCEPT, Inflight { a: addr, b: 0, c: 0 });
    0
}

/// `accept`/`accept4` exit: the peer address, kept for the listener's next fork.
#[tracepoint]
pub fn sshd_exit_accept(ctx: TracePointContext) -> u32 {
    let Some(args) = take_inflight_if_any(func::ACCEPT) else {
        return 0;
    };
    if (field(&ctx, SYSCALL_RET) as i64) < 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_user fails instead of faulting.
    let Ok(addr) = (unsafe { bpf_probe_read_user(args.a as *const [u8; SOCKADDR_LEN]) }) else {
        count_lost(lost::READ_FAILED);
        return 0;
    };
    // SAFETY: helper without preconditions.
    let ts_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() };
    let _ = SSHD_ACCEPTED.insert(tgid(), SshdAccepted { ts_ns, addr, _pad: 0 }, 0);
    0
}

/// A fork: from a listener with an accepted peer, it starts a tracked connection; from a tracked
/// process, the child joins its connection (down to [`SSHD_MAX_DEPTH`]).
#[tracepoint]
pub fn sshd_fork(ctx: TracePointContext) -> u32 {
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
        let conn = SshdConn { conn_ns: accepted.ts_ns, owner_tgid: child, depth: 1, flags: 0 };
        if SSHD_CONNS.insert(child, conn, 0).is_err() {
            count_lost(lost::HANDLES_FULL);
        }
        if let Some(mut rec) = Record::new(kind::SSHD_CONNECT, 0) {
            let h = rec.header();
            h.owner_tgid = child;
            h.session_start_ns = accepted.ts_ns;
            rec.set_payload(&accepted.addr);
            rec.emit();
        }
        return 0;
    }
    let Some(conn) = SSHD_CONNS.get_ptr_mut(parent) else {
        return 0;
    };
    // SAFETY: the pointer is to a live map value; concurrent updates only race on flag bits.
    let parent_conn = unsafe { &mut *conn };
    if parent_conn.depth >= SSHD_MAX_DEPTH {
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
        count_lost(lost::HANDLES_FULL);
    }
    0
}

/// A record about the calling process's connection; `None` if the ring's scratch is unavailable.
#[inline(always)]
fn conn_record(kind: u32, conn: &SshdConn) -> Option<Record> {
    let mut rec = Record::new(kind, 0)?;
    let h = rec.header();
    h.owner_tgid = conn.owner_tgid;
    h.session_start_ns = conn.conn_ns;
    h.item = sshd_item::pack(conn.depth, conn.flags);
    Some(rec)
}

// int setlogin(const char *name), exported by sshd (up to 9.7) and sshd-session (9.8 and later).
#[uprobe]
pub fn sshd_setlogin(ctx: ProbeContext) -> u32 {
    let name: u64 = ctx.arg(0).unwrap_or(0);
    // A process outside the tracked connections (one that started before notifier, or sshd -i
    // under inetd or socket activation, whose accept() is not sshd's) has no peer to report.
    let Some(conn) = SSHD_CONNS.get_ptr_mut(tgid()) else {
        return 0;
    };
    // SAFETY: as in `sshd_fork`.
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

/// `setresuid(r, e, s)` entry in a process that called `setlogin`: the uid, when all three agree.
#[tracepoint]
pub fn sshd_enter_setresuid(ctx: TracePointContext) -> u32 {
    // SAFETY: the value is copied out at once.
    let Some(conn) = (unsafe { SSHD_CONNS.get(tgid()) }).copied() else {
        return 0;
    };
    if conn.flags & sshd_flags::LOGGED_IN == 0 {
        return 0;
    }
    let (r, e, s) = (field(&ctx, SYSCALL_ARG0), field(&ctx, SYSCALL_ARG0 + 8), field(&ctx, SYSCALL_ARG0 + 16));
    if r as u32 == e as u32 && e as u32 == s as u32 {
        save_inflight(func::SETRESUID, Inflight { a: r, b: 0, c: 0 });
    }
    0
}

#[tracepoint]
pub fn sshd_exit_setresuid(ctx: TracePointContext) -> u32 {
    let Some(args) = take_inflight_if_any(func::SETRESUID) else {
        return 0;
    };
    if field(&ctx, SYSCALL_RET) != 0 {
        return 0;
    }
    // SAFETY: the value is copied out at once.
    let Some(conn) = (unsafe { SSHD_CONNS.get(tgid()) }).copied() else {
        return 0;
    };
    if let Some(mut rec) = conn_record(kind::SSHD_UID, &conn) {
        rec.header().item = args.a as u32;
        rec.emit();
    }
    0
}

/// A task exits: a tracked process leaves the map; the connection's own process and the pre-auth
/// child report their exit status.
#[tracepoint]
pub fn sshd_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    // Keys are the pids forks report, so a thread of a tracked process may have one of its own.
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
