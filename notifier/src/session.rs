//! Assembles the probes' per-call records into one login record per PAM handle, and emits the
//! events users see: `session_open`, `session_close`, `auth_success`, `auth_failure`.
//!
//! A session is keyed by (tgid of the `pam_start` caller, handle, start time): handle values repeat
//! across processes, and a forked child (sshd's keyboard-interactive helper) that uses its parent's
//! handle is attributed to the parent's session by the probes. The table is bounded: when full, the
//! least recently active session is dropped and counted.

use std::collections::HashMap;

use notifier_common::{env, item};
use sha2::{Digest as _, Sha256};

use crate::{
    authinfo::{self, AuthInfo},
    event::{bytes_to_text, pam_result_name, EventKind, LoginEvent},
    peer::{self, SshConnection},
    source::{Record, RecordKind},
};

/// How a caller's executable path is found (from /proc in production, a table in tests).
pub trait ProcessLookup {
    /// The executable of `tgid`, if it is still the process whose executable has inode `ino`.
    fn exe(&mut self, tgid: u32, ino: Option<u64>) -> Option<String>;
}

/// Facts about this host that go into every event.
#[derive(Clone, Debug)]
pub struct HostContext {
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id`: makes session ids unique across reboots.
    pub boot_id: String,
    /// Add to a `CLOCK_BOOTTIME` timestamp to get Unix time, in nanoseconds.
    pub boot_to_unix_ns: i128,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct SessionKey {
    owner_tgid: u32,
    handle: u64,
    start_ns: u64,
}

#[derive(Clone, Debug, Default)]
struct Field {
    text: String,
    truncated: bool,
}

#[derive(Debug, Default)]
struct Session {
    id: String,
    seen_start: bool,
    service: Option<Field>,
    user: Option<Field>,
    tty: Option<Field>,
    rhost: Option<Field>,
    ruser: Option<Field>,
    ssh: Option<SshConnection>,
    auth: Option<AuthInfo>,
    auth_truncated: bool,
    opened_ns: Option<u64>,
    closed: bool,
    untrusted: bool,
    last_ns: u64,
}

/// Default bound on sessions tracked at once.
pub const DEFAULT_CAPACITY: usize = 65_536;

pub struct Assembler<P> {
    sessions: HashMap<SessionKey, Session>,
    capacity: usize,
    ctx: HostContext,
    procs: P,
    /// Sessions dropped because the table was full.
    pub evicted: u64,
}

impl<P: ProcessLookup> Assembler<P> {
    pub fn new(ctx: HostContext, procs: P, capacity: usize) -> Self {
        Self { sessions: HashMap::new(), capacity: capacity.max(1), ctx, procs, evicted: 0 }
    }

    /// Sessions currently tracked.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Takes one record; appends the events it completes to `out`.
    pub fn push(&mut self, rec: &Record, out: &mut Vec<LoginEvent>) {
        if rec.kind.is_sshd() {
            return; // The sshd witness's records; see `crate::witness`.
        }
        let h = &rec.header;
        let key = if h.owner_tgid != 0 {
            SessionKey { owner_tgid: h.owner_tgid, handle: h.handle, start_ns: h.session_start_ns }
        } else {
            SessionKey { owner_tgid: rec.tgid(), handle: h.handle, start_ns: 0 }
        };
        if rec.kind == RecordKind::Start {
            self.sessions.remove(&key);
        }
        if !self.sessions.contains_key(&key) {
            self.make_room();
            let id = self.session_id(&key);
            self.sessions.insert(key, Session { id, ..Session::default() });
        }
        let Some(s) = self.sessions.get_mut(&key) else { return };
        s.last_ns = h.ts_ns;
        s.untrusted |= !rec.trusted();
        let field = || Some(Field { text: bytes_to_text(&rec.data), truncated: rec.truncated() });

        let emit = match rec.kind {
            RecordKind::Start => {
                s.seen_start = true;
                s.service = field();
                None
            }
            RecordKind::StartUser => {
                s.user = field();
                None
            }
            RecordKind::SetItem => {
                match h.item {
                    item::PAM_SERVICE => s.service = field(),
                    item::PAM_USER => s.user = field(),
                    item::PAM_TTY => s.tty = field(),
                    item::PAM_RHOST => s.rhost = field(),
                    item::PAM_RUSER => s.ruser = field(),
                    _ => {}
                }
                None
            }
            RecordKind::Putenv => {
                apply_env(s, rec);
                None
            }
            RecordKind::Authenticate => {
                let kind = if h.ret == 0 { EventKind::AuthSuccess } else { EventKind::AuthFailure };
                Some((kind, None))
            }
            RecordKind::OpenSession if h.ret == 0 => {
                s.opened_ns = Some(h.ts_ns);
                s.closed = false;
                Some((EventKind::SessionOpen, None))
            }
            RecordKind::OpenSession => None,
            RecordKind::CloseSession => close(s, h.ts_ns),
            RecordKind::SshdConnect | RecordKind::SshdLogin | RecordKind::SshdUid | RecordKind::SshdExit => None,
            RecordKind::End => {
                if key.owner_tgid != rec.tgid() {
                    None // A forked child ending its copy of the parent's handle.
                } else {
                    let emit = close(s, h.ts_ns);
                    let event = emit.map(|(kind, d)| self.event(&key, rec, kind, d));
                    out.extend(event);
                    self.sessions.remove(&key);
                    return;
                }
            }
        };
        if let Some((kind, duration)) = emit {
            let event = self.event(&key, rec, kind, duration);
            out.push(event);
        }
    }

    fn event(&mut self, key: &SessionKey, rec: &Record, kind: EventKind, duration: Option<Option<u64>>) -> LoginEvent {
        let h = &rec.header;
        let exe_ino = (h.task_flags & notifier_common::task_flags::EXE != 0).then_some(h.exe_ino);
        let exe = self.procs.exe(rec.tgid(), exe_ino);
        let s = &self.sessions[key];
        let mut truncated = Vec::new();
        let mut take = |name: &'static str, f: &Option<Field>| {
            f.as_ref().map(|f| {
                if f.truncated {
                    truncated.push(name);
                }
                f.text.clone()
            })
        };
        let service = take("service", &s.service);
        let user = take("user", &s.user);
        let rhost = take("rhost", &s.rhost);
        let tty = take("tty", &s.tty);
        let ruser = take("ruser", &s.ruser);
        if s.auth_truncated {
            truncated.push("auth");
        }
        let peer = s
            .ssh
            .map(|c| c.peer)
            .or_else(|| s.rhost.as_ref().filter(|f| !f.truncated).and_then(|f| peer::peer_from_rhost(&f.text)));
        let pam_result =
            matches!(kind, EventKind::AuthSuccess | EventKind::AuthFailure).then(|| pam_result_name(h.ret));
        LoginEvent {
            time: self.time(h.ts_ns),
            event: kind,
            service,
            user,
            peer,
            rhost,
            tty,
            ruser,
            auth: s.auth.clone(),
            pam_result,
            pid: rec.tgid(),
            comm: bytes_to_text(rec.comm()),
            exe,
            caller_uid: rec.uid(),
            uid: None,
            ppid: h.ppid,
            owner_pid: key.owner_tgid,
            trusted: !s.untrusted,
            host: self.ctx.host.clone(),
            session: s.id.clone(),
            witnesses: vec!["pam"],
            missed_by: Vec::new(),
            duration_ms: duration,
            truncated,
        }
    }

    fn time(&self, boot_ns: u64) -> String {
        let unix_ns = boot_ns as i128 + self.ctx.boot_to_unix_ns;
        format_time(unix_ns)
    }

    fn session_id(&self, key: &SessionKey) -> String {
        short_id(
            &self.ctx.boot_id,
            &[&key.owner_tgid.to_le_bytes(), &key.handle.to_le_bytes(), &key.start_ns.to_le_bytes()],
        )
    }

    fn make_room(&mut self) {
        if self.sessions.len() < self.capacity {
            return;
        }
        if let Some(oldest) = self.sessions.iter().min_by_key(|(_, s)| s.last_ns).map(|(k, _)| *k) {
            self.sessions.remove(&oldest);
            self.evicted += 1;
        }
    }
}

/// An event id: 16 hex digits of the SHA-256 of this boot's id and `parts`, so that ids are stable
/// within a session and unique across reboots.
pub fn short_id(boot_id: &str, parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(boot_id.as_bytes());
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A `session_close` is due if the session opened (or its start was never seen, so it may have
/// opened before notifier started) and it has not closed yet.
fn close(s: &mut Session, ts_ns: u64) -> Option<(EventKind, Option<Option<u64>>)> {
    if s.closed || (s.seen_start && s.opened_ns.is_none()) {
        return None;
    }
    s.closed = true;
    let duration = s.opened_ns.map(|open| ts_ns.saturating_sub(open) / 1_000_000);
    Some((EventKind::SessionClose, Some(duration)))
}

fn apply_env(s: &mut Session, rec: &Record) {
    let data = rec.data.as_slice();
    if let Some(value) = data.strip_prefix(env::SSH_CONNECTION) {
        if let Some(conn) = std::str::from_utf8(value).ok().and_then(peer::parse_ssh_connection) {
            s.ssh = Some(conn);
        }
    } else if let Some(value) = data.strip_prefix(env::SSH_AUTH_INFO_0) {
        // sshd sets it empty first, then to the methods used: keep the last non-empty value.
        if let Some(info) = authinfo::parse(&bytes_to_text(value)) {
            s.auth = Some(info);
            s.auth_truncated = rec.truncated();
        }
    }
}

/// RFC 3339 in UTC with milliseconds: `2026-11-24T18:07:50.123Z`.
pub fn format_time(unix_ns: i128) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_string())
}

#[cfg(test)]
mod tests {
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
    fn formats_time() {
        assert_eq!(format_time(1_764_007_670_123_456_789), "2025-11-24T18:07:50.123Z");
    }
}
