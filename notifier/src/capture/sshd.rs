//! The sshd witness: sshd's connections, followed from the listener's `accept()` to their end.
//! Mirrors `notifier-ebpf/src/probes/sshd.rs`. PAM's events join these connections in the merge
//! (`super`, [`Witness::pam_event`]).
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
    clock::format_time,
    event::{bytes_to_text, EventKind, LoginEvent, Origin},
    id::short_id,
    peer::{peer_from_sockaddr, Peer},
    procinfo::{HostContext, ProcessLookup},
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

pub(super) const PAM: &str = "pam";
pub(super) const SSHD: &str = "sshd";

/// The sshd binaries' (device, inode) pairs: a connection is only trusted to be sshd's when its
/// listener runs one of them (the probes match on the inode number alone).
pub trait ListenerCheck {
    fn is_sshd(&mut self, listener: u32) -> bool;
    /// Takes more sshd binaries (a container's, found after start).
    fn add(&mut self, _ids: &[(u64, u64)]) {}
}

/// Checks the listener's executable in /proc against the sshd binaries found by the loader.
pub struct ProcListeners(pub HashSet<(u64, u64)>);

impl ListenerCheck for ProcListeners {
    fn is_sshd(&mut self, listener: u32) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/proc/{listener}/exe")).is_ok_and(|m| self.0.contains(&(m.dev(), m.ino())))
    }

    fn add(&mut self, ids: &[(u64, u64)]) {
        self.0.extend(ids.iter().copied());
    }
}

#[derive(Debug)]
pub(super) struct Login {
    user: String,
    truncated: bool,
    comm: String,
    caller_uid: u32,
    trusted: bool,
}

#[derive(Debug)]
pub(super) enum Held {
    /// A PAM `session_open` waiting for sshd to confirm the connection's login.
    Pam(Box<LoginEvent>),
    /// An sshd-only login (at `ts_ns`) waiting for its uid.
    Sshd { event: Box<LoginEvent>, ts_ns: u64 },
    /// A successful pre-auth child of OpenSSH ≤ 9.7, with no `setlogin` yet.
    MaybeRoot { ts_ns: u64 },
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) conn_ns: u64,
    pub(super) listener: u32,
    pub(super) peer: Option<Peer>,
    pub(super) trusted: bool,
    pub(super) id: String,
    /// Exit status of the pre-auth child.
    pub(super) preauth: Option<i32>,
    pub(super) login: Option<Login>,
    pub(super) uid: Option<u32>,
    pub(super) pam_seen: bool,
    pub(super) pam_user: Option<String>,
    pub(super) pam_failures: u32,
    /// The witnesses of the `session_open` that went out for this connection.
    pub(super) opened: Option<Vec<&'static str>>,
    /// When the open was the sshd witness's own: its time and user, for the `session_close`.
    pub(super) sshd_opened_ns: Option<u64>,
    pub(super) sshd_user: Option<String>,
    pub(super) held: Option<(Held, u64)>,
    pub(super) last_ns: u64,
    /// The `session` of PAM's `session_open` for this connection, once it went out.
    pub(super) pam_session: Option<String>,
}

pub struct Witness<P, L> {
    pub(super) conns: HashMap<u32, Conn>,
    /// Listeners whose connections have used PAM.
    pub(super) pam_listeners: HashSet<u32>,
    /// The origin of each open PAM session started inside an SSH login, by `session`.
    pub(super) origins: HashMap<String, Origin>,
    pub(super) capacity: usize,
    pub(super) ctx: HostContext,
    pub(super) procs: P,
    pub(super) listeners: L,
    /// Connections dropped because the table was full.
    pub evicted: u64,
}

impl<P: ProcessLookup, L: ListenerCheck> Witness<P, L> {
    pub fn new(ctx: HostContext, procs: P, listeners: L, capacity: usize) -> Self {
        Self {
            conns: HashMap::new(),
            pam_listeners: HashSet::new(),
            origins: HashMap::new(),
            capacity: capacity.max(1),
            ctx,
            procs,
            listeners,
            evicted: 0,
        }
    }

    /// The SSH login a PAM session started in, from the kernel's key of its connection: the
    /// peer, the user who logged in, and the `session` of that login's events. `None` for a
    /// connection that is gone, or whose listener is not a known sshd binary.
    pub(super) fn origin(&self, (owner, conn_ns): (u32, u64)) -> Option<Origin> {
        let c = self.conns.get(&owner).filter(|c| c.conn_ns == conn_ns && c.trusted)?;
        let user = c.login.as_ref().filter(|l| !l.truncated).map(|l| l.user.clone()).or_else(|| c.pam_user.clone());
        Some(Origin { peer: c.peer, user, session: c.pam_session.clone().unwrap_or_else(|| c.id.clone()) })
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
        let id = short_id(&self.ctx.boot_id, &[b"sshd", &owner.to_le_bytes(), &h.session_start_ns.to_le_bytes()]);
        let conn = Conn {
            conn_ns: h.session_start_ns,
            listener,
            peer: peer_from_sockaddr(&rec.data),
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
            pam_session: None,
        };
        self.conns.insert(owner, conn);
    }

    /// Reports what the connection of `owner` holds.
    pub(super) fn release(&mut self, owner: u32, out: &mut Vec<LoginEvent>) {
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
            time: format_time(ts_ns as i128 + self.ctx.boot_to_unix_ns),
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
            origin: None,
            origin_conn: None,
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
