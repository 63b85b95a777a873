//! PAM capture: assembles the probes' per-call records into one login record per PAM handle, and
//! emits the events users see: `session_open`, `session_close`, `auth_success`, `auth_failure`.
//!
//! A session is keyed by (tgid of the `pam_start` caller, handle, start time): handle values repeat
//! across processes, and a forked child (sshd's keyboard-interactive helper) that uses its parent's
//! handle is attributed to the parent's session by the probes. The table is bounded: when full, the
//! least recently active session is dropped and counted.

use std::collections::HashMap;

use notifier_common::{env, item};

use crate::{
    authinfo::{self, AuthInfo},
    clock::format_time,
    event::{bytes_to_text, pam_result_name, EventKind, LoginEvent},
    id::short_id,
    peer::{self, SshConnection},
    procinfo::{HostContext, ProcessLookup},
    source::{Record, RecordKind},
};

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
    /// The sshd connection whose session the `pam_start` caller runs in.
    origin: Option<(u32, u64)>,
    /// Started by a root caller (real uid 0): kept before any other session when the table is full.
    root: bool,
    last_ns: u64,
}

/// Default bound on sessions tracked at once.
pub const DEFAULT_CAPACITY: usize = 65_536;

pub struct Assembler<P> {
    sessions: HashMap<SessionKey, Session>,
    capacity: usize,
    ctx: HostContext,
    procs: P,
    /// Sessions dropped because the table was full, and of those, root callers' sessions.
    pub evicted: u64,
    pub evicted_root: u64,
    /// Records of unprivileged children on their parent's handle, left out (see `push`).
    pub ignored_from_children: u64,
}

impl<P: ProcessLookup> Assembler<P> {
    pub fn new(ctx: HostContext, procs: P, capacity: usize) -> Self {
        Self {
            sessions: HashMap::new(),
            capacity: capacity.max(1),
            ctx,
            procs,
            evicted: 0,
            evicted_root: 0,
            ignored_from_children: 0,
        }
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
            return; // The sshd witness's records; see `super::sshd`.
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
        // Trust follows the handle's owner: a forked child that uses its parent's handle after
        // dropping privileges (su's and runuser's child ending its copy) neither taints a trusted
        // session nor changes it, so a forged close from such a child is never believed.
        if rec.tgid() != key.owner_tgid && !rec.trusted() && self.sessions.get(&key).is_none_or(|s| !s.untrusted) {
            self.ignored_from_children += 1;
            return;
        }
        if !self.sessions.contains_key(&key) {
            self.make_room();
            let id = self.session_id(&key);
            self.sessions.insert(key, Session { id, root: rec.uid() == 0, ..Session::default() });
        }
        let Some(s) = self.sessions.get_mut(&key) else { return };
        s.last_ns = h.ts_ns;
        s.untrusted |= !rec.trusted();
        let field = || Some(Field { text: bytes_to_text(&rec.data), truncated: rec.truncated() });

        let emit = match rec.kind {
            RecordKind::Start => {
                s.seen_start = true;
                s.service = field();
                s.origin = (h.origin_tgid != 0).then_some((h.origin_tgid, h.origin_ns));
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
            RecordKind::SshdConnect
            | RecordKind::SshdLogin
            | RecordKind::SshdUid
            | RecordKind::SshdExit
            | RecordKind::NewMountNs => None,
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
            origin: None,
            origin_conn: s.origin,
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

    /// When the table is full, drops the least recently active sessions: users' first, so that no
    /// flood of unfinished sessions by a user can push out root's (sshd's, login's). A 64th of the
    /// table goes at once, so that a flood costs one scan per many sessions, not one per session.
    fn make_room(&mut self) {
        if self.sessions.len() < self.capacity {
            return;
        }
        let users = self.sessions.values().filter(|s| !s.root).count();
        let from_root = users == 0;
        let mut ages: Vec<(u64, SessionKey)> =
            self.sessions.iter().filter(|(_, s)| s.root == from_root).map(|(k, s)| (s.last_ns, *k)).collect();
        let n = (self.capacity / 64).clamp(1, ages.len());
        ages.select_nth_unstable_by_key(n - 1, |(age, _)| *age);
        for (_, key) in &ages[..n] {
            self.sessions.remove(key);
        }
        self.evicted += n as u64;
        if from_root {
            self.evicted_root += n as u64;
        }
    }
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

#[cfg(test)]
mod tests;
