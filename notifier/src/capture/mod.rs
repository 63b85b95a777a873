//! Capture: kernel records in, login events out. Mirrors the probe families of
//! `notifier-ebpf/src/probes/`: [`pam`] assembles libpam calls into sessions, [`sshd`] follows sshd's
//! connections, and this module merges the two: [`Capture`] feeds PAM's records and events into
//! sshd's connections ([`Witness::observe_pam`], [`Witness::pam_event`]), so that each login is
//! one event with its witnesses. Pure: no I/O but the `/proc` lookups behind
//! [`ProcessLookup`] and [`ListenerCheck`], so it is unit-tested with record sequences.

pub mod pam;
pub mod sshd;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

pub use pam::Assembler;
use sshd::{Held, HOLD_NS, PAM, SSHD, UID_WAIT_NS};
pub use sshd::{ListenerCheck, ProcListeners, Witness};

use crate::{
    clock,
    event::{bytes_to_text, EventKind, LoginEvent},
    procinfo::{HostContext, ProcFs, ProcessLookup},
    source::{Record, RecordKind},
};

/// The capture stage for this host: the PAM assembler and the sshd witness, looking processes up in
/// `/proc`, with `sshd_ids` the (device, inode) pairs of the sshd binaries the loader found.
pub fn live(ctx: HostContext, sshd_ids: HashSet<(u64, u64)>) -> Capture<ProcFs, ProcListeners> {
    let assembler = Assembler::new(ctx.clone(), ProcFs::default(), pam::DEFAULT_CAPACITY);
    let witness = Witness::new(ctx, ProcFs::default(), ProcListeners(sshd_ids), sshd::DEFAULT_CAPACITY);
    Capture::new(assembler, witness)
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
        if rec.kind == RecordKind::NewMountNs {
            return; // For the loader; see `crate::loader::containers`.
        }
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

    /// Takes the sshd binaries of a container found after start, as (device, inode), so that its
    /// listener's connections are trusted to be sshd's.
    pub fn add_sshd_ids(&mut self, ids: &[(u64, u64)]) {
        self.witness.listeners.add(ids);
    }

    /// Reports what waited past its deadline; `now_ns` is `CLOCK_BOOTTIME`.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<LoginEvent>) {
        self.witness.tick(now_ns, out);
    }

    /// When [`Capture::tick`] is next due, as a time to sleep until.
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        let at = self.witness.next_deadline()?;
        let now = clock::boot_now_ns();
        Some(std::time::Instant::now() + std::time::Duration::from_nanos(at.saturating_sub(now)))
    }

    /// Sessions and connections dropped because their tables were full: (root's sessions and
    /// sshd's connections, users' sessions).
    pub fn evicted(&self) -> (u64, u64) {
        let a = &self.assembler;
        (a.evicted_root + self.witness.evicted, a.evicted - a.evicted_root)
    }
}

/// The merge: PAM's records and events, taken into the sshd connection they belong to.
impl<P: ProcessLookup, L: ListenerCheck> Witness<P, L> {
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

    /// Names the SSH login `e` was started in. The connection may have ended by the time a
    /// session's later events are read (root's and users' records come through two rings, so
    /// sshd's exit can be read before a `sudo`'s close), so the origin found at the first event
    /// is kept until the session closes.
    fn resolve_origin(&mut self, e: &mut LoginEvent, conn: (u32, u64)) {
        e.origin = self.origin(conn).or_else(|| self.origins.get(&e.session).cloned());
        match (&e.origin, e.event) {
            (_, EventKind::SessionClose) => {
                self.origins.remove(&e.session);
            }
            (Some(origin), _) if self.origins.len() < self.capacity => {
                self.origins.insert(e.session.clone(), origin.clone());
            }
            _ => {}
        }
    }

    /// Takes one PAM event from the session assembler; appends what is due to `out`.
    pub fn pam_event(&mut self, mut e: LoginEvent, now_ns: u64, out: &mut Vec<LoginEvent>) {
        e.witnesses = vec![PAM];
        if let Some(conn) = e.origin_conn {
            self.resolve_origin(&mut e, conn);
        }
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
                c.pam_session = Some(e.session.clone());
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
}
