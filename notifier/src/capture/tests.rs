//! The merge of PAM's and sshd's views, tested with record sequences as the probes emit them.

use notifier_common::{item, kind, sshd_flags, sshd_item, task_flags, EventHeader};

use super::{
    pam::Assembler,
    sshd::{ListenerCheck, Witness, HOLD_NS, ROOT_GRACE_NS},
    *,
};
use crate::{
    event::EventKind,
    peer::Peer,
    procinfo::{HostContext, ProcessLookup},
    source::RecordKind,
};

struct Procs;
impl ProcessLookup for Procs {
    fn exe(&mut self, _tgid: u32, _ino: Option<u64>) -> Option<String> {
        Some("/usr/sbin/sshd".into())
    }
}
struct Listeners(bool);
impl ListenerCheck for Listeners {
    fn is_sshd(&mut self, _listener: u32) -> bool {
        self.0
    }
}

const LISTENER: u32 = 100;
const PRIV: u32 = 200;
const CONN_NS: u64 = 1_000_000;

fn capture(listener_is_sshd: bool) -> Capture<Procs, Listeners> {
    let ctx = HostContext { host: "web-1".into(), boot_id: "b".into(), boot_to_unix_ns: 0 };
    Capture::new(Assembler::new(ctx.clone(), Procs, 16), Witness::new(ctx, Procs, Listeners(listener_is_sshd), 16))
}

fn header(kind: u32, tgid: u32, ts_ms: u64) -> EventHeader {
    EventHeader {
        kind,
        ts_ns: ts_ms * 1_000_000,
        pid_tgid: (tgid as u64) << 32 | tgid as u64,
        task_flags: task_flags::INFO | task_flags::EXE,
        exe_mode: 0o100755,
        comm: *b"sshd\0\0\0\0\0\0\0\0\0\0\0\0",
        ..EventHeader::default()
    }
}

fn record(header: EventHeader, data: &[u8]) -> Record {
    let header = EventHeader { str_len: data.len() as u32, ..header };
    Record { kind: RecordKind::try_from(header.kind).unwrap(), header, data: data.to_vec() }
}

/// A record of the sshd witness from `tgid` in the test connection.
fn sshd(kind: u32, tgid: u32, ts_ms: u64, depth: u16, flags: u16, ret: i32, data: &[u8]) -> Record {
    let h = EventHeader {
        owner_tgid: PRIV,
        session_start_ns: CONN_NS,
        item: sshd_item::pack(depth, flags),
        ret,
        ..header(kind, tgid, ts_ms)
    };
    record(h, data)
}

fn connect(ts_ms: u64) -> Record {
    let mut addr = [0u8; 28];
    addr[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    addr[2..4].copy_from_slice(&44013u16.to_be_bytes());
    addr[4..8].copy_from_slice(&[127, 0, 0, 7]);
    sshd(kind::SSHD_CONNECT, LISTENER, ts_ms, 0, 0, 0, &addr)
}

fn preauth_exit(ts_ms: u64, status: i32, comm: &[u8]) -> Record {
    let mut r = sshd(kind::SSHD_EXIT, PRIV + 1, ts_ms, 2, sshd_flags::FIRST_CHILD, status, b"");
    r.header.comm = [0; 16];
    r.header.comm[..comm.len()].copy_from_slice(comm);
    r
}

fn login(ts_ms: u64, user: &[u8], uid: u32) -> Vec<Record> {
    let mut uid_rec = sshd(kind::SSHD_UID, PRIV + 2, ts_ms, 2, sshd_flags::LOGGED_IN, 0, b"");
    uid_rec.header.item = uid;
    vec![sshd(kind::SSHD_LOGIN, PRIV + 2, ts_ms, 2, sshd_flags::LOGGED_IN, 0, user), uid_rec]
}

fn conn_exit(ts_ms: u64) -> Record {
    sshd(kind::SSHD_EXIT, PRIV, ts_ms, 1, sshd_flags::FORKED, 255 << 8, b"")
}

/// PAM records from sshd's `[priv]`: start with `user`, then the rest of `kinds`.
fn pam(kinds: &[(u32, i32)], user: &[u8], ts_ms: u64) -> Vec<Record> {
    let pam_header = |kind: u32| EventHeader {
        handle: 0xbeef,
        owner_tgid: PRIV,
        session_start_ns: ts_ms * 1_000_000,
        ..header(kind, PRIV, ts_ms)
    };
    let mut recs = vec![
        record(pam_header(kind::START), b"sshd"),
        record(pam_header(kind::START_USER), user),
        record(EventHeader { item: item::PAM_RHOST, ..pam_header(kind::SET_ITEM) }, b"127.0.0.7"),
        record(pam_header(kind::PUTENV), b"SSH_CONNECTION=127.0.0.7 44013 127.0.0.1 22"),
    ];
    for (kind, ret) in kinds {
        recs.push(record(EventHeader { ret: *ret, ..pam_header(*kind) }, b""));
    }
    recs
}

fn run(c: &mut Capture<Procs, Listeners>, recs: impl IntoIterator<Item = Record>) -> Vec<LoginEvent> {
    let mut out = Vec::new();
    for r in recs {
        c.push(&r, &mut out);
    }
    out
}

fn kinds(events: &[LoginEvent]) -> Vec<(EventKind, Vec<&'static str>)> {
    events.iter().map(|e| (e.event, e.witnesses.clone())).collect()
}

#[test]
fn login_without_pam_is_reported_by_sshd_with_uid_peer_and_close() {
    let mut c = capture(true);
    let mut recs = vec![connect(1), preauth_exit(5, 0, b"sshd")];
    recs.extend(login(6, b"alice", 1001));
    recs.push(conn_exit(2006));
    let out = run(&mut c, recs);
    assert_eq!(
        kinds(&out),
        [(EventKind::SessionOpen, vec!["sshd"]), (EventKind::SessionClose, vec!["sshd"])],
        "{out:#?}"
    );
    let open = &out[0];
    assert_eq!((open.user.as_deref(), open.uid, open.pid), (Some("alice"), Some(1001), PRIV));
    assert_eq!(open.peer, Some(Peer { ip: "127.0.0.7".parse().unwrap(), port: Some(44013) }));
    assert_eq!(open.service.as_deref(), Some("sshd"));
    assert!(open.missed_by.is_empty() && open.trusted);
    assert_eq!(out[1].session, open.session);
    assert_eq!(out[1].duration_ms, Some(Some(2000)));
    assert_eq!(out[1].user.as_deref(), Some("alice"));
    assert!(c.witness.is_empty(), "the connection's exit frees it");
}

#[test]
fn login_seen_by_both_is_one_event_from_both_witnesses() {
    let mut c = capture(true);
    let mut recs = vec![connect(1)];
    recs.extend(pam(&[], b"alice", 2));
    recs.push(preauth_exit(5, 0, b"sshd"));
    recs.extend(pam(&[(kind::OPEN_SESSION, 0)], b"alice", 2).split_off(4));
    recs.extend(login(6, b"alice", 1001));
    recs.extend(login(7, b"alice", 1001)); // a second session on a multiplexed connection
    recs.extend(pam(&[(kind::CLOSE_SESSION, 0), (kind::END, 0)], b"alice", 2).split_off(4));
    recs.push(conn_exit(2006));
    let out = run(&mut c, recs);
    assert_eq!(
        kinds(&out),
        [(EventKind::SessionOpen, vec!["pam", "sshd"]), (EventKind::SessionClose, vec!["pam", "sshd"])],
        "{out:#?}"
    );
    assert_eq!(out[0].uid, Some(1001), "the open waits for sshd's setresuid");
    assert_eq!(out[0].peer.unwrap().port, Some(44013));
}

#[test]
fn sshd_login_that_pam_missed_is_marked() {
    let mut c = capture(true);
    let mut recs = vec![connect(1)];
    recs.extend(pam(&[], b"alice", 2)); // this sshd uses PAM…
    recs.push(preauth_exit(5, 0, b"sshd"));
    recs.extend(login(6, b"alice", 1001)); // …but no pam_open_session came
    assert!(run(&mut c, recs).is_empty(), "held for PAM's open");
    assert_eq!(c.witness.next_deadline(), Some(6_000_000 + HOLD_NS));
    let mut out = Vec::new();
    c.tick(6_000_000 + HOLD_NS, &mut out);
    assert_eq!(kinds(&out), [(EventKind::SessionOpen, vec!["sshd"])]);
    assert_eq!(out[0].missed_by, ["pam"]);
    assert_eq!(out[0].uid, Some(1001));
}

#[test]
fn a_late_pam_open_is_merged_not_doubled() {
    let mut c = capture(true);
    let mut recs = vec![connect(1)];
    recs.extend(pam(&[], b"alice", 2));
    recs.push(preauth_exit(5, 0, b"sshd"));
    recs.extend(login(6, b"alice", 1001));
    let out = run(&mut c, recs);
    assert!(out.is_empty(), "the sshd login waits for PAM on a connection that uses it: {out:#?}");
    let out = run(&mut c, pam(&[(kind::OPEN_SESSION, 0)], b"alice", 2).split_off(4));
    assert_eq!(kinds(&out), [(EventKind::SessionOpen, vec!["pam", "sshd"])], "{out:#?}");
    assert_eq!(out[0].uid, Some(1001));
    let mut out = Vec::new();
    c.tick(u64::MAX, &mut out);
    assert!(out.is_empty(), "nothing left to report: {out:#?}");
}

#[test]
fn failed_preauth_is_an_auth_failure_unless_pam_reported_one() {
    let mut c = capture(true);
    let mut recs = vec![connect(1)];
    recs.extend(pam(&[(kind::END, 0)], b"mallory", 2)); // a wrong key: pam_start … pam_end
    recs.push(preauth_exit(5, 255 << 8, b"sshd-auth"));
    recs.push(conn_exit(6));
    let out = run(&mut c, recs);
    assert_eq!(kinds(&out), [(EventKind::AuthFailure, vec!["sshd"])], "{out:#?}");
    assert_eq!(out[0].user.as_deref(), Some("mallory"), "the user PAM's pam_start saw");
    assert_eq!(out[0].peer.unwrap().ip.to_string(), "127.0.0.7");
    assert_eq!(out[0].comm, "sshd-auth");

    // A wrong password: PAM reports it, and sshd's exit adds nothing.
    let mut c = capture(true);
    let mut recs = vec![connect(1)];
    recs.extend(pam(&[(kind::AUTHENTICATE, 7), (kind::END, 7)], b"mallory", 2));
    recs.push(preauth_exit(5, 255 << 8, b"sshd"));
    let out = run(&mut c, recs);
    assert_eq!(kinds(&out), [(EventKind::AuthFailure, vec!["pam"])], "{out:#?}");
}

#[test]
fn root_without_setlogin_on_old_sshd_is_reported_after_the_grace_period() {
    let mut c = capture(true);
    let out = run(&mut c, [connect(1), preauth_exit(5, 0, b"sshd")]);
    assert!(out.is_empty());
    let deadline = c.witness.next_deadline().expect("waiting for setlogin");
    assert_eq!(deadline, 5_000_000 + ROOT_GRACE_NS);
    let mut out = Vec::new();
    c.tick(deadline - 1, &mut out);
    assert!(out.is_empty());
    c.tick(deadline, &mut out);
    assert_eq!(kinds(&out), [(EventKind::SessionOpen, vec!["sshd"])]);
    assert_eq!((out[0].user.as_deref(), out[0].uid), (Some("root"), Some(0)));
    out.clear();
    c.push(&conn_exit(4000), &mut out);
    assert_eq!(kinds(&out), [(EventKind::SessionClose, vec!["sshd"])]);
    assert_eq!(out[0].user.as_deref(), Some("root"));

    // OpenSSH 9.8+ (sshd-auth) always calls setlogin: nothing is inferred.
    let mut c = capture(true);
    run(&mut c, [connect(1), preauth_exit(5, 0, b"sshd-auth")]);
    assert_eq!(c.witness.next_deadline(), None);
}

#[test]
fn pam_open_without_sshd_confirmation_is_held_then_marked() {
    let mut c = capture(true);
    let mut recs = vec![connect(1)];
    recs.extend(pam(&[(kind::OPEN_SESSION, 0)], b"alice", 2));
    let out = run(&mut c, recs);
    assert!(out.is_empty(), "held for sshd: {out:#?}");
    let mut out = Vec::new();
    c.tick(u64::MAX, &mut out);
    assert_eq!(kinds(&out), [(EventKind::SessionOpen, vec!["pam"])]);
    assert_eq!(out[0].missed_by, ["sshd"]);
}

#[test]
fn connections_of_other_programs_and_plain_pam_are_left_alone() {
    let mut c = capture(false);
    let mut recs = vec![connect(1), preauth_exit(5, 255 << 8, b"sshd")];
    recs.extend(login(6, b"alice", 1001));
    assert!(run(&mut c, recs).is_empty());
    assert!(c.witness.is_empty());

    let mut c = capture(true);
    let out = run(&mut c, pam(&[(kind::OPEN_SESSION, 0)], b"alice", 2));
    assert_eq!(kinds(&out), [(EventKind::SessionOpen, vec!["pam"])], "no sshd connection: PAM alone");
}

#[test]
fn sudo_inside_an_ssh_login_keeps_its_origin_after_the_connection_ends() {
    let mut c = capture(true);
    let mut recs = vec![connect(1), preauth_exit(5, 0, b"sshd")];
    recs.extend(login(6, b"alice", 1001));
    // sudo in alice's shell (pid 300): its pam_start names the connection.
    let sudo = |kind: u32, ts_ms: u64| EventHeader {
        handle: 0x5d0,
        owner_tgid: 300,
        session_start_ns: 10_000_000,
        origin_tgid: if kind == kind::START { PRIV } else { 0 },
        origin_ns: if kind == kind::START { CONN_NS } else { 0 },
        uid_gid: 1001,
        ..header(kind, 300, ts_ms)
    };
    recs.push(record(sudo(kind::START, 10), b"sudo"));
    recs.push(record(sudo(kind::START_USER, 10), b"root"));
    recs.push(record(sudo(kind::OPEN_SESSION, 11), b""));
    // sshd's exit is read before sudo's close (two rings): the close still names the login.
    recs.push(conn_exit(12));
    recs.push(record(sudo(kind::CLOSE_SESSION, 11), b""));
    let out = run(&mut c, recs);
    let sudo_events: Vec<&LoginEvent> = out.iter().filter(|e| e.service.as_deref() == Some("sudo")).collect();
    assert_eq!(sudo_events.len(), 2, "{out:#?}");
    let login_session = &out.iter().find(|e| e.service.as_deref() == Some("sshd")).expect("the SSH login").session;
    for e in sudo_events {
        let origin = e.origin.as_ref().unwrap_or_else(|| panic!("no origin: {e:#?}"));
        assert_eq!(origin.peer, Some(Peer { ip: "127.0.0.7".parse().unwrap(), port: Some(44013) }));
        assert_eq!((origin.user.as_deref(), &origin.session), (Some("alice"), login_session));
    }
    assert!(c.witness.origins.is_empty(), "forgotten at the close");
}
