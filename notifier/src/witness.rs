//! The sshd witness, and the merge of its view with PAM's.
//!
//! The probes report, per sshd connection (keyed by the connection's own process, sshd's
//! `[priv]`, and the time of the `accept()`): the peer, the exit status of the pre-auth child,
//! each `setlogin(user)` and the uid that follows it, and the end of the connection. Measured on
//! OpenSSH 9.2 and 10.0, for a key login with `UsePAM yes` the order is: pre-auth child exits 0,
//! `pam_open_session` returns in `[priv]`, the post-auth child calls `setlogin` and `setresuid`.
//!
//! What is reported, once per connection:
//! - PAM's `session_open` for a connection whose authentication sshd saw succeed: one event with
//!   `witnesses: ["pam", "sshd"]`;
//! - a login sshd saw (`setlogin`) but PAM did not: `witnesses: ["sshd"]`, marked
//!   `missed_by: ["pam"]` when that sshd uses PAM (its connections call libpam), which policy
//!   treats as suspicious. On such a connection the sshd login waits [`HOLD_NS`] for PAM's open
//!   first, so that a PAM open that came late is merged, never doubled or flagged;
//! - a pre-auth child that exits non-zero, with no PAM `auth_failure` for that connection: an
//!   `auth_failure` with the peer (and the user name, if PAM's `pam_start` saw one);
//! - OpenSSH up to 9.7 calls `setlogin` for root only per session, so an `ssh -N root@…` login
//!   has none: a successful pre-auth child followed by no `setlogin` and no PAM session within
//!   [`ROOT_GRACE_NS`] is reported as a root login (9.7 and older skip the privilege-dropped
//!   post-auth child for uid 0, and only for uid 0).
//!
//! Later `setlogin` calls of the same connection (sessions of a root login, a multiplexed
//! connection) change nothing. The table is bounded like the PAM session table.

use std::collections::{HashMap, HashSet};

use crate::{
    event::{bytes_to_text, EventKind, LoginEvent},
    peer::Peer,
    session::{Assembler, HostContext, ProcessLookup},
    source::{Record, RecordKind},
};

/// How long a PAM `session_open` waits for sshd's confirmation of the same connection, and an
/// sshd login for its uid, before being reported with what is known.
pub const HOLD_NS: u64 = 500_000_000;
/// How long a confirmed PAM `session_open` waits for the uid that sshd's `setresuid` gives (it
/// follows `pam_open_session` by a millisecond or two).
pub const UID_WAIT_NS: u64 = 200_000_000;
/// After a successful pre-auth child on OpenSSH 9.7 or older, how long to wait for `setlogin` or a
/// PAM session before concluding the login is root's with no session (`ssh -N root@…`).
pub const ROOT_GRACE_NS: u64 = 1_500_000_000;

/// Default bound on connections tracked at once.
pub const DEFAULT_CAPACITY: usize = 16_384;

const PAM: &str = "pam";
const SSHD: &str = "sshd";

/// The sshd binaries' (device, inode) pairs: a connection is only trusted to be sshd's when its
/// listener runs one of them (the probes match on the inode number alone).
pub trait ListenerCheck {
    fn is_sshd(&mut self, listener: u32) -> bool;
}

/// Checks the listener's executable in /proc against the sshd binaries found by the loader.
pub struct ProcListeners(pub HashSet<(u64, u64)>);

impl ListenerCheck for ProcListeners {
    fn is_sshd(&mut self, listener: u32) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/proc/{listener}/exe")).is_ok_and(|m| self.0.contains(&(m.dev(), m.ino())))
    }
}

#[derive(Debug)]
struct Login {
    user: String,
    truncated: bool,
    comm: String,
    caller_uid: u32,
    trusted: bool,
}

#[derive(Debug)]
enum Held {
    /// A PAM `session_open` waiting for sshd to confirm the connection's login.
    Pam(Box<LoginEvent>),
    /// An sshd-only login (at `ts_ns`) waiting for its uid.
    Sshd { event: Box<LoginEvent>, ts_ns: u64 },
    /// A successful pre-auth child of OpenSSH ≤ 9.7, with no `setlogin` yet.
    MaybeRoot { ts_ns: u64 },
}

#[derive(Debug)]
struct Conn {
    conn_ns: u64,
    listener: u32,
    peer: Option<Peer>,
    trusted: bool,
    id: String,
    /// Exit status of the pre-auth child.
    preauth: Option<i32>,
    login: Option<Login>,
    uid: Option<u32>,
    pam_seen: bool,
    pam_user: Option<String>,
    pam_failures: u32,
    /// The witnesses of the `session_open` that went out for this connection.
    opened: Option<Vec<&'static str>>,
    /// When the open was the sshd witness's own: its time and user, for the `session_close`.
    sshd_opened_ns: Option<u64>,
    sshd_user: Option<String>,
    held: Option<(Held, u64)>,
    last_ns: u64,
}

pub struct Witness<P, L> {
    conns: HashMap<u32, Conn>,
    /// Listeners whose connections have used PAM.
    pam_listeners: HashSet<u32>,
    capacity: usize,
    ctx: HostContext,
    procs: P,
    listeners: L,
    /// Connections dropped because the table was full.
    pub evicted: u64,
}

impl<P: ProcessLookup, L: ListenerCheck> Witness<P, L> {
    pub fn new(ctx: HostContext, procs: P, listeners: L, capacity: usize) -> Self {
        Self {
            conns: HashMap::new(),
            pam_listeners: HashSet::new(),
            capacity: capacity.max(1),
            ctx,
            procs,
            listeners,
            evicted: 0,
        }
    }

    /// Connections tracked now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The earliest time (`CLOCK_BOOTTIME`, ns) at which [`Witness::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.conns.values().filter_map(|c| c.held.as_ref().map(|(_, at)| *at)).min()
    }

    /// Reports what is held past its deadline.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<LoginEvent>) {
        let due: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.held.as_ref().is_some_and(|(_, at)| *at <= now_ns))
            .map(|(k, _)| *k)
            .collect();
        for owner in due {
            self.release(owner, out);
        }
    }

    /// Takes one raw PAM record, to learn which connections use PAM and the user they name.
    pub fn observe_pam(&mut self, rec: &Record) {
        let owner = if rec.header.owner_tgid != 0 { rec.header.owner_tgid } else { rec.tgid() };
        let Some(c) = self.conns.get_mut(&owner) else { return };
        if rec.header.ts_ns < c.conn_ns {
            return; // An older process that had the same pid.
        }
        c.pam_seen = true;
        self.pam_listeners.insert(c.listener);
        if rec.kind == RecordKind::StartUser && !rec.truncated() {
            c.pam_user = Some(bytes_to_text(&rec.data));
        }
    }

    /// Takes one PAM event from the session assembler; appends what is due to `out`.
    pub fn pam_event(&mut self, mut e: LoginEvent, now_ns: u64, out: &mut Vec<LoginEvent>) {
        e.witnesses = vec![PAM];
        // A held open goes out before anything that follows it in the same session.
        let held_open = self.conns.get(&e.owner_pid).and_then(|c| c.held.as_ref());
        if e.event != EventKind::SessionOpen && matches!(held_open, Some((Held::Pam(_), _))) {
            self.release(e.owner_pid, out);
        }
        let Some(c) = self.conns.get_mut(&e.owner_pid) else {
            out.push(e);
            return;
        };
        match e.event {
            EventKind::SessionOpen if c.opened.is_none() => {
                if matches!(c.held, Some((Held::Sshd { .. }, _))) {
                    c.held = None; // PAM's open, late, is the login sshd already saw.
                }
                let confirmed = c.preauth == Some(0) || c.login.is_some();
                if confirmed && c.uid.is_some() {
                    e.witnesses = vec![PAM, SSHD];
                    e.uid = c.uid;
                    c.opened = Some(e.witnesses.clone());
                    out.push(e);
                } else if confirmed {
                    c.opened = Some(vec![PAM, SSHD]);
                    c.held = Some((Held::Pam(Box::new(e)), now_ns + UID_WAIT_NS));
                } else {
                    c.opened = Some(vec![PAM]);
                    c.held = Some((Held::Pam(Box::new(e)), now_ns + HOLD_NS));
                }
            }
            EventKind::SessionClose => {
                if let Some(by) = &c.opened {
                    e.witnesses.clone_from(by);
                }
                e.uid = c.uid;
                out.push(e);
            }
            EventKind::AuthFailure => {
                c.pam_failures += 1;
                out.push(e);
            }
            _ => out.push(e),
        }
    }

    /// Takes one record of the sshd witness; appends what is due to `out`.
    pub fn push(&mut self, rec: &Record, out: &mut Vec<LoginEvent>) {
        let h = &rec.header;
        let owner = h.owner_tgid;
        if owner == 0 {
            return;
        }
        if rec.kind == RecordKind::SshdConnect {
            self.connect(rec);
            return;
        }
        let Some(c) = self.conns.get_mut(&owner) else { return };
        if c.conn_ns != h.session_start_ns {
            return;
        }
        c.last_ns = h.ts_ns;
        let depth = notifier_common::sshd_item::depth(h.item);
        let flags = notifier_common::sshd_item::flags(h.item);
        match rec.kind {
            RecordKind::SshdLogin => {
                if c.login.is_some() {
                    return; // A later session of the same connection.
                }
                c.login = Some(Login {
                    user: bytes_to_text(&rec.data),
                    truncated: rec.truncated(),
                    comm: bytes_to_text(rec.comm()),
                    caller_uid: rec.uid(),
                    trusted: rec.trusted(),
                });
                match c.held.take() {
                    Some((Held::Pam(e), _)) => {
                        // sshd confirms what PAM reported: wait briefly for the uid.
                        c.held = Some((Held::Pam(e), h.ts_ns + UID_WAIT_NS));
                    }
                    None | Some((Held::MaybeRoot { .. }, _)) if c.opened.is_none() => {
                        let e = self.sshd_open(owner, h.ts_ns);
                        let c = self.conns.get_mut(&owner).expect("present");
                        c.held = Some((Held::Sshd { event: Box::new(e), ts_ns: h.ts_ns }, h.ts_ns + HOLD_NS));
                    }
                    other => c.held = other,
                }
            }
            RecordKind::SshdUid => {
                if c.uid.is_none() {
                    c.uid = Some(h.item);
                }
                // An sshd-only login on a connection that uses PAM waits for PAM's open (or
                // its deadline) even once the uid is known: only then is PAM's absence certain.
                let uses_pam = uses_pam(c, &self.pam_listeners);
                let due = match c.held {
                    Some((Held::Pam(_), _)) => true,
                    Some((Held::Sshd { .. }, _)) => !uses_pam,
                    _ => false,
                };
                if due && c.login.is_some() {
                    self.release(owner, out);
                }
            }
            RecordKind::SshdExit if depth == 1 => {
                self.release(owner, out);
                if let Some(c) = self.conns.remove(&owner) {
                    if let Some(opened_ns) = c.sshd_opened_ns {
                        let mut e = self.base_event(&c, owner, EventKind::SessionClose, h.ts_ns);
                        e.duration_ms = Some(Some(h.ts_ns.saturating_sub(opened_ns) / 1_000_000));
                        e.user.clone_from(&c.sshd_user);
                        if let Some(l) = &c.login {
                            e.comm.clone_from(&l.comm);
                        }
                        e.uid = c.uid;
                        out.push(e);
                    }
                }
            }
            RecordKind::SshdExit if depth == 2 && flags & notifier_common::sshd_flags::FIRST_CHILD != 0 => {
                c.preauth = Some(h.ret);
                if h.ret == 0 {
                    match &c.held {
                        Some((Held::Pam(_), _)) => self.release(owner, out),
                        None if c.opened.is_none() && c.login.is_none() && rec.comm() != b"sshd-auth" => {
                            c.held = Some((Held::MaybeRoot { ts_ns: h.ts_ns }, h.ts_ns + ROOT_GRACE_NS));
                        }
                        _ => {}
                    }
                } else if c.pam_failures == 0 && c.opened.is_none() && c.login.is_none() {
                    let mut e = self.base_event(&self.conns[&owner], owner, EventKind::AuthFailure, h.ts_ns);
                    e.user = self.conns[&owner].pam_user.clone();
                    // The pre-auth child runs unprivileged by design; what is trusted is that it
                    // belongs to a connection of a root sshd listener.
                    e.comm = bytes_to_text(rec.comm());
                    out.push(e);
                }
            }
            _ => {}
        }
    }

    fn connect(&mut self, rec: &Record) {
        let h = &rec.header;
        let listener = rec.tgid();
        if !self.listeners.is_sshd(listener) {
            tracing::debug!(listener, "A connection accepted by a process that is not an sshd binary; ignored.");
            return;
        }
        self.make_room();
        let owner = h.owner_tgid;
        let id = crate::session::short_id(
            &self.ctx.boot_id,
            &[b"sshd", &owner.to_le_bytes(), &h.session_start_ns.to_le_bytes()],
        );
        let conn = Conn {
            conn_ns: h.session_start_ns,
            listener,
            peer: crate::peer::peer_from_sockaddr(&rec.data),
            trusted: rec.trusted(),
            id,
            preauth: None,
            login: None,
            uid: None,
            pam_seen: false,
            pam_user: None,
            pam_failures: 0,
            opened: None,
            sshd_opened_ns: None,
            sshd_user: None,
            held: None,
            last_ns: h.ts_ns,
        };
        self.conns.insert(owner, conn);
    }

    /// Reports what the connection of `owner` holds.
    fn release(&mut self, owner: u32, out: &mut Vec<LoginEvent>) {
        let Some(c) = self.conns.get_mut(&owner) else { return };
        let Some((held, _)) = c.held.take() else { return };
        match held {
            Held::Pam(mut e) => {
                let confirmed = c.preauth == Some(0) || c.login.is_some();
                e.witnesses = if confirmed { vec![PAM, SSHD] } else { vec![PAM] };
                if !confirmed {
                    e.missed_by = vec![SSHD];
                }
                e.uid = c.uid;
                c.opened = Some(e.witnesses.clone());
                out.push(*e);
            }
            Held::Sshd { event: mut e, ts_ns } => {
                e.uid = c.uid;
                let uses_pam = uses_pam(c, &self.pam_listeners);
                out.push(sshd_opened(c, *e, ts_ns, uses_pam));
            }
            Held::MaybeRoot { ts_ns } => {
                if c.opened.is_some() || c.login.is_some() {
                    return;
                }
                let mut e = self.sshd_open(owner, ts_ns);
                let c = self.conns.get_mut(&owner).expect("present");
                e.user = Some("root".into());
                e.uid = Some(0);
                if c.uid.is_none() {
                    c.uid = Some(0);
                }
                let uses_pam = uses_pam(c, &self.pam_listeners);
                out.push(sshd_opened(c, e, ts_ns, uses_pam));
            }
        }
    }

    /// An sshd-only `session_open` for the connection of `owner`.
    fn sshd_open(&mut self, owner: u32, ts_ns: u64) -> LoginEvent {
        let c = &self.conns[&owner];
        let mut e = self.base_event(c, owner, EventKind::SessionOpen, ts_ns);
        if let Some(l) = &c.login {
            e.user = Some(l.user.clone());
            e.comm.clone_from(&l.comm);
            e.caller_uid = l.caller_uid;
            e.trusted &= l.trusted;
            if l.truncated {
                e.truncated.push("user");
            }
        }
        e.exe = self.procs.exe(owner, None);
        e
    }

    fn base_event(&self, c: &Conn, owner: u32, kind: EventKind, ts_ns: u64) -> LoginEvent {
        LoginEvent {
            time: crate::session::format_time(ts_ns as i128 + self.ctx.boot_to_unix_ns),
            event: kind,
            service: Some(SSHD.into()),
            user: None,
            peer: c.peer,
            rhost: None,
            tty: None,
            ruser: None,
            auth: None,
            pam_result: None,
            pid: owner,
            comm: SSHD.into(),
            exe: None,
            caller_uid: 0,
            uid: None,
            ppid: c.listener,
            owner_pid: owner,
            trusted: c.trusted,
            host: self.ctx.host.clone(),
            session: c.id.clone(),
            witnesses: vec![SSHD],
            missed_by: Vec::new(),
            duration_ms: None,
            truncated: Vec::new(),
        }
    }

    fn make_room(&mut self) {
        if self.conns.len() < self.capacity {
            return;
        }
        if let Some(oldest) = self.conns.iter().min_by_key(|(_, c)| c.last_ns).map(|(k, _)| *k) {
            self.conns.remove(&oldest);
            self.evicted += 1;
        }
    }
}

/// The connection (or its listener, for earlier connections) used PAM: a login PAM then does not
/// report was missed by it.
fn uses_pam(c: &Conn, pam_listeners: &HashSet<u32>) -> bool {
    c.pam_seen || pam_listeners.contains(&c.listener)
}

/// Records on the connection that its `session_open` is the sshd witness's own (at `ts_ns`), and
/// returns the event, marked as missed by PAM when the connection uses PAM.
fn sshd_opened(c: &mut Conn, mut e: LoginEvent, ts_ns: u64, uses_pam: bool) -> LoginEvent {
    if uses_pam {
        e.missed_by = vec![PAM];
    }
    c.opened = Some(vec![SSHD]);
    c.sshd_opened_ns = Some(ts_ns);
    c.sshd_user.clone_from(&e.user);
    e
}

/// The PAM session assembler and the sshd witness together: records in, login events out.
pub struct Capture<P, L> {
    pub assembler: Assembler<P>,
    pub witness: Witness<P, L>,
    pam_events: Vec<LoginEvent>,
}

impl<P: ProcessLookup, L: ListenerCheck> Capture<P, L> {
    pub fn new(assembler: Assembler<P>, witness: Witness<P, L>) -> Self {
        Self { assembler, witness, pam_events: Vec::new() }
    }

    /// Takes one record; appends the events it completes to `out`.
    pub fn push(&mut self, rec: &Record, out: &mut Vec<LoginEvent>) {
        if rec.kind.is_sshd() {
            self.witness.push(rec, out);
            return;
        }
        self.witness.observe_pam(rec);
        self.assembler.push(rec, &mut self.pam_events);
        for e in self.pam_events.drain(..) {
            self.witness.pam_event(e, rec.header.ts_ns, out);
        }
    }

    /// Reports what waited past its deadline; `now_ns` is `CLOCK_BOOTTIME`.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<LoginEvent>) {
        self.witness.tick(now_ns, out);
    }

    /// When [`Capture::tick`] is next due, as a time to sleep until.
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        let at = self.witness.next_deadline()?;
        let now = crate::procinfo::boot_now_ns();
        Some(std::time::Instant::now() + std::time::Duration::from_nanos(at.saturating_sub(now)))
    }

    /// Sessions and connections dropped because their tables were full.
    pub fn evicted(&self) -> u64 {
        self.assembler.evicted + self.witness.evicted
    }
}

#[cfg(test)]
mod tests {
    use notifier_common::{item, kind, sshd_flags, sshd_item, task_flags, EventHeader};

    use super::*;

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
}
