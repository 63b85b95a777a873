//! The maps, and the code shared by every probe: building a record in per-CPU scratch space (with
//! the calling task's identity, from `task`), reading one string argument, counting losses, and
//! emitting the record to the ring buffer with only the bytes it uses.

use crate::task::fill_task;
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use notifier_common::{
    kind, lane, lost, str_flags, Budget, Event, EventHeader, HandleKey, HandleState, Inflight, InflightKey,
    SshdAccepted, SshdConn, DATA_LEN, HEADER_LEN, MAX_BUDGET_UIDS, MAX_BUILDING, MAX_HANDLES, MAX_INFLIGHT,
    MAX_MOUNT_NS, MAX_SSHD_CONNS, MAX_SSHD_LISTENERS, MAX_SSHD_ORIGIN, RING_BYTES, RING_USER_BYTES, USER_RECORDS_BURST,
    USER_RECORDS_PER_SEC,
};

// Two of each map that callers fill: one for root callers, one for everyone else (see
// `notifier_common::lane`), so that no unprivileged caller can take the capacity root's logins use.

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
pub static EVENTS_USER: RingBuf = RingBuf::with_byte_size(RING_USER_BYTES, 0);

#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::SLOTS, 0);

#[map]
pub static HANDLES: LruHashMap<HandleKey, HandleState> = LruHashMap::with_max_entries(MAX_HANDLES, 0);

#[map]
pub static HANDLES_USER: LruHashMap<HandleKey, HandleState> = LruHashMap::with_max_entries(MAX_HANDLES, 0);

#[map]
pub static INFLIGHT: LruHashMap<InflightKey, Inflight> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[map]
pub static INFLIGHT_USER: LruHashMap<InflightKey, Inflight> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

#[map]
static BUDGET: LruHashMap<u32, Budget> = LruHashMap::with_max_entries(MAX_BUDGET_UIDS, 0);

/// Where records are built: one entry per thread that is building one, taken before the record
/// and removed once it is emitted or dropped. Uprobe programs run preemptible, so a per-CPU buffer
/// could be shared by a preempted probe and the next task's on that CPU, mixing one caller's
/// strings into another's record; a thread's own entry cannot be. One map per lane, so that users'
/// threads cannot take the entries root's need.
#[map]
static BUILDING: HashMap<u64, Event> = HashMap::with_max_entries(MAX_BUILDING, 0);

#[map]
static BUILDING_USER: HashMap<u64, Event> = HashMap::with_max_entries(MAX_BUILDING, 0);

/// Bytes to seed a new entry of `BUILDING` with (what they are does not matter: every byte that is
/// emitted is written first).
#[map]
static SEED: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

/// Filled by the loader: the sshd binaries on this host.
#[map]
pub static SSHD_BINS: HashMap<u64, u8> = HashMap::with_max_entries(64, 0);

#[map]
pub static SSHD_ACCEPTED: LruHashMap<u32, SshdAccepted> = LruHashMap::with_max_entries(MAX_SSHD_LISTENERS, 0);

#[map]
pub static SSHD_CONNS: LruHashMap<u32, SshdConn> = LruHashMap::with_max_entries(MAX_SSHD_CONNS, 0);

#[map]
pub static MOUNT_NS_SEEN: LruHashMap<u32, u8> = LruHashMap::with_max_entries(MAX_MOUNT_NS, 0);

#[map]
pub static SSHD_ORIGIN: HashMap<u32, SshdConn> = HashMap::with_max_entries(MAX_SSHD_ORIGIN, 0);

/// The lane of the current task: root callers (real uid 0) have their own capacity.
#[inline(always)]
pub fn current_lane() -> u32 {
    if bpf_get_current_uid_gid() as u32 == 0 {
        lane::ROOT
    } else {
        lane::USER
    }
}

/// Of a map's two copies, the one of `lane`.
#[inline(always)]
fn by_lane<M>(lane: u32, root: &'static M, user: &'static M) -> &'static M {
    if lane == lane::ROOT {
        root
    } else {
        user
    }
}

/// The handle map of `lane`.
#[inline(always)]
pub fn handles(lane: u32) -> &'static LruHashMap<HandleKey, HandleState> {
    by_lane(lane, &HANDLES, &HANDLES_USER)
}

/// Takes one record from the budget of the unprivileged real uid `uid`; false when it has none
/// left. Concurrent callers of one uid may race on the bucket and get a few records more: a bound
/// on a flood, not an exact count.
#[inline(always)]
fn take_budget(uid: u32, now_ns: u64) -> bool {
    let Some(bucket) = BUDGET.get_ptr_mut(uid) else {
        let fresh = Budget { tokens: USER_RECORDS_BURST - 1, refilled_ns: now_ns };
        let _ = BUDGET.insert(uid, fresh, 0);
        return true;
    };
    // SAFETY: the pointer is to a live map value; see above for races.
    let b = unsafe { &mut *bucket };
    let earned = now_ns.saturating_sub(b.refilled_ns) / (1_000_000_000 / USER_RECORDS_PER_SEC);
    if earned > 0 {
        b.tokens = (b.tokens + earned).min(USER_RECORDS_BURST);
        b.refilled_ns = now_ns;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

#[inline(always)]
pub fn count_lost(lane: u32, reason: u32) {
    if let Some(counter) = LOST.get_ptr_mut(lost::index(lane, reason)) {
        // SAFETY: the pointer is to this CPU's slot of a per-CPU array, valid for the whole
        // program run. The add is not atomic (this target has no atomic add in `core`): a probe
        // preempted between its read and its write can lose another's count on this CPU, so a
        // count can be low, never high.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// A record being built in this thread's entry of `BUILDING`.
pub struct Record {
    event: *mut Event,
    lane: u32,
    pid_tgid: u64,
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = building(self.lane).remove(self.pid_tgid);
    }
}

#[inline(always)]
fn building(lane: u32) -> &'static HashMap<u64, Event> {
    by_lane(lane, &BUILDING, &BUILDING_USER)
}

impl Record {
    /// Starts a record of `kind` for `handle`, filling in everything known about the caller, in
    /// the caller's lane. `None` when the caller's real uid is over its budget (counted).
    #[inline(always)]
    pub fn new(kind: u32, handle: u64) -> Option<Self> {
        Self::in_lane(current_lane(), kind, handle)
    }

    /// The same in `lane`: the sshd witness's records are root's, whichever process of a root
    /// listener's connection (the unprivileged pre-auth child too) they come from.
    #[inline(always)]
    pub fn in_lane(lane: u32, kind: u32, handle: u64) -> Option<Self> {
        let uid_gid = bpf_get_current_uid_gid();
        // SAFETY: helper without preconditions.
        let ts_ns = unsafe { bpf_ktime_get_boot_ns() };
        if lane == lane::USER && !take_budget(uid_gid as u32, ts_ns) {
            count_lost(lane, lost::BUDGET);
            return None;
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        // SAFETY: the pointer is to a whole Event in this CPU's slot; its bytes are only copied, by
        // reference (an Event is far larger than the 512-byte BPF stack).
        let seed: &Event = unsafe { &*SEED.get_ptr(0)? };
        if building(lane).insert(pid_tgid, seed, 0).is_err() {
            count_lost(lane, lost::INFLIGHT_FULL);
            return None;
        }
        let Some(event) = building(lane).get_ptr_mut(pid_tgid) else {
            let _ = building(lane).remove(pid_tgid);
            return None;
        };
        // SAFETY: the entry is this thread's until the Record is dropped; no other task uses it.
        let h = unsafe { &mut (*event).header };
        *h = EventHeader {
            kind,
            ts_ns,
            pid_tgid,
            uid_gid,
            handle,
            comm: bpf_get_current_comm().unwrap_or_default(),
            ..EventHeader::default()
        };
        fill_task(h);
        if handle != 0 {
            let tgid = (pid_tgid >> 32) as u32;
            if let Some(state) = find_handle(tgid, h.ppid, handle) {
                h.session_start_ns = state.start_ns;
                h.owner_tgid = state.owner_tgid;
            }
        }
        Some(Self { event, lane, pid_tgid })
    }

    #[inline(always)]
    pub fn lane(&self) -> u32 {
        self.lane
    }

    #[inline(always)]
    pub fn header(&mut self) -> &mut EventHeader {
        // SAFETY: see `in_lane`.
        unsafe { &mut (*self.event).header }
    }

    /// Sets the payload to a peer address (`struct sockaddr_in` or `sockaddr_in6` bytes).
    #[inline(always)]
    pub fn set_payload(&mut self, bytes: &[u8; notifier_common::SOCKADDR_LEN]) {
        // SAFETY: see `in_lane`.
        let event = unsafe { &mut *self.event };
        event.data[..bytes.len()].copy_from_slice(bytes);
        event.header.str_len = bytes.len() as u32;
    }

    /// Copies the NUL-terminated user string at `src` into the payload, flagging NULL pointers,
    /// failed reads and truncation.
    #[inline(always)]
    pub fn read_user_str(&mut self, src: u64) {
        // SAFETY: see `in_lane`.
        let event = unsafe { &mut *self.event };
        if src == 0 {
            event.header.str_flags |= str_flags::NULL;
            return;
        }
        // SAFETY: bpf_probe_read_user_str fails instead of faulting on a bad address.
        match unsafe { bpf_probe_read_user_str_bytes(src as *const u8, &mut event.data) } {
            Ok(bytes) => {
                let len = bytes.len();
                event.header.str_len = len as u32;
                if len >= DATA_LEN - 1 {
                    // The buffer is full: the string was cut unless its NUL came right after.
                    // SAFETY: as above; a failed read leaves the default (0 = not truncated).
                    let next: u8 = unsafe { bpf_probe_read_user((src + len as u64) as *const u8) }.unwrap_or(0);
                    if next != 0 {
                        event.header.str_flags |= str_flags::TRUNCATED;
                    }
                }
            }
            Err(_) => {
                event.header.str_flags |= str_flags::READ_FAILED;
                count_lost(self.lane, lost::READ_FAILED);
            }
        }
    }

    /// Writes the header and the used part of the payload to the ring buffer.
    #[inline(always)]
    pub fn emit(self) {
        // SAFETY: see `in_lane`.
        let event = unsafe { &*self.event };
        let len = event.header.str_len as usize;
        if len > DATA_LEN {
            return;
        }
        let size = HEADER_LEN + len;
        // SAFETY: `size` is at most size_of::<Event>() and `event` points to a whole Event.
        let bytes = unsafe { core::slice::from_raw_parts(self.event as *const u8, size) };
        // A wake-up per record was most of a probe hit's cost. So only a record that can complete
        // an event wakes the reader, and always (the kernel's adaptive wake-up would skip it
        // while earlier records are unread); the records before it in the same session
        // (pam_start, items, environment) wait for it. Once a quarter of the ring is unread,
        // every record wakes the reader, so that calls which never complete (a flood of
        // pam_set_item) cannot fill the ring while it sleeps.
        let completes = matches!(
            event.header.kind,
            kind::AUTHENTICATE
                | kind::OPEN_SESSION
                | kind::CLOSE_SESSION
                | kind::END
                | kind::SSHD_LOGIN
                | kind::SSHD_UID
                | kind::SSHD_EXIT
                | kind::NEW_MOUNT_NS
        );
        let (ring, ring_bytes) =
            if self.lane == lane::ROOT { (&EVENTS, RING_BYTES) } else { (&EVENTS_USER, RING_USER_BYTES) };
        let backlog = ring.query(u64::from(BPF_RB_AVAIL_DATA));
        let flags = if completes || backlog >= u64::from(ring_bytes / 4) {
            u64::from(BPF_RB_FORCE_WAKEUP)
        } else {
            u64::from(BPF_RB_NO_WAKEUP)
        };
        if ring.output::<[u8]>(bytes, flags).is_err() {
            count_lost(self.lane, lost::RING_FULL);
        }
    }
}

/// Finds the state of `handle` in the caller's process, or else in its parent's (a forked child,
/// such as sshd's keyboard-interactive helper, uses its parent's handle). Both lanes are looked
/// in: a child that dropped root's privileges still belongs to its parent's session.
#[inline(always)]
fn find_handle(tgid: u32, ppid: u32, handle: u64) -> Option<HandleState> {
    for owner in [tgid, ppid] {
        if owner == 0 {
            continue;
        }
        let key = HandleKey { tgid: owner, _pad: 0, handle };
        // SAFETY: the values are copied out at once.
        if let Some(state) = unsafe { HANDLES.get(key) }.or_else(|| unsafe { HANDLES_USER.get(key) }) {
            return Some(*state);
        }
    }
    None
}

/// The in-flight map of `lane`.
#[inline(always)]
fn inflight(lane: u32) -> &'static LruHashMap<InflightKey, Inflight> {
    by_lane(lane, &INFLIGHT, &INFLIGHT_USER)
}

/// Saves arguments at a function's entry for its return probe.
#[inline(always)]
pub fn save_inflight(func: u32, args: Inflight) {
    let lane = current_lane();
    let key = InflightKey { pid_tgid: bpf_get_current_pid_tgid(), func, _pad: 0 };
    if inflight(lane).insert(key, args, 0).is_err() {
        count_lost(lane, lost::INFLIGHT_FULL);
    }
}

/// Takes the arguments saved at entry by this thread for `func` (in either lane: the call may
/// have changed the real uid).
#[inline(always)]
pub fn take_inflight(func: u32) -> Option<Inflight> {
    let lane = current_lane();
    let key = InflightKey { pid_tgid: bpf_get_current_pid_tgid(), func, _pad: 0 };
    for map in [inflight(lane), inflight(lane ^ 1)] {
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(args) = unsafe { map.get(key) }.copied() {
            let _ = map.remove(key);
            return Some(args);
        }
    }
    count_lost(lane, lost::NO_ENTRY);
    None
}
