//! The PAM assembler, tested with record sequences as the probes emit them.

use notifier_common::{kind, str_flags, task_flags, EventHeader};

use super::*;
use crate::source::RecordKind;

struct NoProcs;
impl ProcessLookup for NoProcs {
    fn exe(&mut self, _tgid: u32, _ino: Option<u64>) -> Option<String> {
        Some("/usr/sbin/sshd".into())
    }
}

fn asm(capacity: usize) -> Assembler<NoProcs> {
    let ctx = HostContext { host: "web-1".into(), boot_id: "b".into(), boot_to_unix_ns: 1_700_000_000_000_000_000 };
    Assembler::new(ctx, NoProcs, capacity)
}

/// A record from `tgid` (owner `owner`, 0 for unknown) at `ts` ms.
fn rec(kind: u32, tgid: u32, owner: u32, ts_ms: u64, data: &[u8]) -> Record {
    let header = EventHeader {
        kind,
        ts_ns: ts_ms * 1_000_000,
        pid_tgid: (tgid as u64) << 32 | tgid as u64,
        handle: 0xdead,
        owner_tgid: owner,
        session_start_ns: if owner != 0 { 1_000_000 } else { 0 },
        task_flags: task_flags::INFO | task_flags::EXE,
        exe_mode: 0o100755,
        str_len: data.len() as u32,
        comm: *b"sshd\0\0\0\0\0\0\0\0\0\0\0\0",
        ..EventHeader::default()
    };
    Record { kind: RecordKind::try_from(kind).unwrap(), header, data: data.to_vec() }
}

fn with(mut r: Record, f: impl FnOnce(&mut EventHeader)) -> Record {
    f(&mut r.header);
    r
}

/// The record sequence OpenSSH 9.2 produces for a key login, then logout.
fn sshd_key_login(pid: u32) -> Vec<Record> {
    vec![
        rec(kind::START, pid, pid, 1, b"sshd"),
        rec(kind::START_USER, pid, pid, 1, b"alice"),
        with(rec(kind::SET_ITEM, pid, pid, 2, b"127.0.0.5"), |h| h.item = item::PAM_RHOST),
        rec(kind::PUTENV, pid, pid, 2, b"SSH_CONNECTION=127.0.0.5 44013 127.0.0.1 2222"),
        with(rec(kind::SET_ITEM, pid, pid, 3, b"ssh"), |h| h.item = item::PAM_TTY),
        rec(kind::PUTENV, pid, pid, 3, b"SSH_AUTH_INFO_0="),
        rec(kind::PUTENV, pid, pid, 4, b"SSH_AUTH_INFO_0=publickey ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHuhnLJO61erJHOjlaB/DfH7RjRgiT+tN1eBqUd48vwW\n"),
        rec(kind::OPEN_SESSION, pid, pid, 10, b""),
        rec(kind::CLOSE_SESSION, pid, pid, 2510, b""),
        rec(kind::END, pid, pid, 2511, b""),
    ]
}

fn run(a: &mut Assembler<NoProcs>, recs: &[Record]) -> Vec<LoginEvent> {
    let mut out = Vec::new();
    for r in recs {
        a.push(r, &mut out);
    }
    out
}

#[test]
fn key_login_gives_open_and_close_with_peer_key_and_duration() {
    let mut a = asm(16);
    let out = run(&mut a, &sshd_key_login(4242));
    assert_eq!(out.len(), 2, "{out:#?}");
    let (open, close) = (&out[0], &out[1]);
    assert_eq!(open.event, EventKind::SessionOpen);
    assert_eq!(open.service.as_deref(), Some("sshd"));
    assert_eq!(open.user.as_deref(), Some("alice"));
    assert_eq!(open.peer.unwrap().ip.to_string(), "127.0.0.5");
    assert_eq!(open.peer.unwrap().port, Some(44013));
    assert_eq!(open.tty.as_deref(), Some("ssh"));
    let auth = open.auth.as_ref().unwrap();
    assert_eq!(auth.method.as_deref(), Some("publickey"));
    assert_eq!(auth.fingerprint.as_deref(), Some("SHA256:tvzOpJ5+OEOfM34D3N8EBlLKlxLUMO5wvKhcAWp9IJg"));
    assert_eq!((open.pid, open.trusted, open.duration_ms), (4242, true, None));
    assert_eq!(close.event, EventKind::SessionClose);
    assert_eq!(close.session, open.session);
    assert_eq!(close.duration_ms, Some(Some(2500)));
    assert!(a.is_empty(), "pam_end frees the session");
}

#[test]
fn wrong_password_gives_auth_failure_and_no_open() {
    let mut a = asm(16);
    let out = run(
        &mut a,
        &[
            rec(kind::START, 7, 7, 1, b"sshd"),
            rec(kind::START_USER, 7, 7, 1, b"bob"),
            with(rec(kind::SET_ITEM, 7, 7, 2, b"::1"), |h| h.item = item::PAM_RHOST),
            with(rec(kind::AUTHENTICATE, 7, 7, 3, b""), |h| h.ret = 7),
            with(rec(kind::END, 7, 7, 4, b""), |h| h.item = 7),
        ],
    );
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].event, EventKind::AuthFailure);
    assert_eq!(out[0].user.as_deref(), Some("bob"));
    assert_eq!(out[0].peer.unwrap().ip.to_string(), "::1");
    assert_eq!(out[0].peer.unwrap().port, None);
    assert_eq!(out[0].pam_result.as_deref(), Some("PAM_AUTH_ERR"));
}

#[test]
fn forked_child_is_attributed_to_parent_session() {
    let mut a = asm(16);
    let mut recs = vec![rec(kind::START, 10, 10, 1, b"sshd"), rec(kind::START_USER, 10, 10, 1, b"carol")];
    // keyboard-interactive: the child (pid 11) authenticates with the parent's handle.
    recs.push(rec(kind::AUTHENTICATE, 11, 10, 2, b""));
    recs.push(rec(kind::END, 11, 10, 3, b"")); // the child ending its copy changes nothing
    recs.push(rec(kind::OPEN_SESSION, 10, 10, 4, b""));
    let out = run(&mut a, &recs);
    assert_eq!(out.iter().map(|e| e.event).collect::<Vec<_>>(), [EventKind::AuthSuccess, EventKind::SessionOpen]);
    assert_eq!(out[0].pid, 11);
    assert_eq!(out[0].user.as_deref(), Some("carol"));
    assert_eq!(out[0].session, out[1].session);
}

#[test]
fn untrusted_caller_taints_the_session() {
    let mut a = asm(16);
    let mut recs = sshd_key_login(5);
    recs[2].header.euid = 1000; // an unprivileged process set PAM_RHOST
    let out = run(&mut a, &recs);
    assert!(out.iter().all(|e| !e.trusted));
}

#[test]
fn trust_follows_the_handle_owner() {
    // su as root: the parent opens the session; its child drops to nobody and ends its copy of the
    // handle (and a hostile child may try to close it, or set items on it).
    let su = |pid: u32, child: u32| {
        let nobody = |r: Record| with(r, |h| (h.euid, h.uid_gid) = (65534, 65534 << 32 | 65534));
        vec![
            rec(kind::START, pid, pid, 1, b"su"),
            rec(kind::START_USER, pid, pid, 1, b"nobody"),
            rec(kind::OPEN_SESSION, pid, pid, 2, b""),
            nobody(with(rec(kind::SET_ITEM, child, pid, 3, b"evil"), |h| h.item = item::PAM_USER)),
            nobody(rec(kind::CLOSE_SESSION, child, pid, 3, b"")),
            nobody(rec(kind::END, child, pid, 3, b"")),
            rec(kind::CLOSE_SESSION, pid, pid, 9, b""),
            rec(kind::END, pid, pid, 9, b""),
        ]
    };
    let mut a = asm(16);
    let out = run(&mut a, &su(20, 21));
    assert_eq!(out.iter().map(|e| e.event).collect::<Vec<_>>(), [EventKind::SessionOpen, EventKind::SessionClose]);
    assert!(out.iter().all(|e| e.trusted && e.user.as_deref() == Some("nobody") && e.pid == 20), "{out:#?}");
    assert_eq!(out[1].duration_ms, Some(Some(7)), "the parent's close, not the child's");
    assert_eq!(a.ignored_from_children, 3);
    // The owner itself, unprivileged, still taints its own session.
    let mut recs = su(30, 31);
    recs[2].header.euid = 1000;
    assert!(run(&mut a, &recs).iter().all(|e| !e.trusted));
}

#[test]
fn truncation_is_marked_and_a_cut_rhost_is_not_a_peer() {
    let mut a = asm(16);
    let out = run(
        &mut a,
        &[
            rec(kind::START, 3, 3, 1, b"x"),
            with(rec(kind::START_USER, 3, 3, 1, b"u\xff"), |h| h.str_flags = str_flags::TRUNCATED),
            with(rec(kind::SET_ITEM, 3, 3, 1, b"1.2.3.4"), |h| {
                h.item = item::PAM_RHOST;
                h.str_flags = str_flags::TRUNCATED
            }),
            rec(kind::OPEN_SESSION, 3, 3, 2, b""),
        ],
    );
    assert_eq!(out[0].truncated, vec!["user", "rhost"]);
    assert_eq!(out[0].user.as_deref(), Some("u\\xff"));
    assert_eq!(out[0].peer, None);
}

#[test]
fn session_opened_before_start_closes_with_unknown_duration() {
    let mut a = asm(16);
    let out = run(&mut a, &[rec(kind::CLOSE_SESSION, 9, 0, 5, b""), rec(kind::END, 9, 0, 6, b"")]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].duration_ms, Some(None));
    assert!(a.is_empty());
}

#[test]
fn failed_open_gives_nothing_and_end_without_close_closes() {
    let mut a = asm(16);
    let out = run(
        &mut a,
        &[
            rec(kind::START, 1, 1, 1, b"su"),
            with(rec(kind::OPEN_SESSION, 1, 1, 2, b""), |h| h.ret = 14),
            rec(kind::END, 1, 1, 3, b""),
        ],
    );
    assert!(out.is_empty(), "{out:#?}");
    let out = run(
        &mut a,
        &[rec(kind::START, 2, 2, 1, b"su"), rec(kind::OPEN_SESSION, 2, 2, 2, b""), rec(kind::END, 2, 2, 7, b"")],
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].duration_ms, Some(Some(5)));
}

#[test]
fn table_is_bounded_and_counts_evictions() {
    let mut a = asm(2);
    for pid in 1..=5 {
        run(&mut a, &[rec(kind::START, pid, pid, pid as u64, b"s")]);
    }
    assert_eq!(a.len(), 2);
    assert_eq!(a.evicted, 3);
}

#[test]
fn a_full_table_drops_users_sessions_before_roots() {
    let mut a = asm(64);
    // Root's session (real uid 0), then a user's flood of sessions that never end.
    let mut root = rec(kind::START, 7, 7, 1, b"sshd");
    root.header.uid_gid = 0;
    run(&mut a, &[root]);
    for pid in 100..300 {
        let mut r = rec(kind::START, pid, pid, 2 + u64::from(pid), b"flood");
        r.header.uid_gid = 65534;
        run(&mut a, &[r]);
    }
    assert!(a.len() <= 64, "bounded: {}", a.len());
    assert_eq!((a.evicted - a.evicted_root, a.evicted_root), (137, 0), "only the user's sessions went");
    // Root's session is still there: its open is reported with its service.
    let mut open = rec(kind::OPEN_SESSION, 7, 7, 500, b"");
    open.header.uid_gid = 0;
    let out = run(&mut a, &[open]);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].service.as_deref(), Some("sshd"));
}
