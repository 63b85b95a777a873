//! Reads the probes' ring buffer and decodes each record into a [`Record`], and reads the kernel's
//! counters of records that could not be delivered. Decoding is pure and checked: a record that is
//! too short or of an unknown kind is an error, never a guess.

use std::io;

use aya::maps::{Map, MapData, PerCpuArray};
use notifier_common::{kind, lane, lost, names, str_flags, task_flags, EventHeader, HEADER_LEN};
use tokio::io::unix::AsyncFd;

use crate::loader::Probes;

mod ring;
use ring::Ring;

/// What a record reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Start,
    StartUser,
    SetItem,
    Putenv,
    Authenticate,
    OpenSession,
    CloseSession,
    End,
    SshdConnect,
    SshdLogin,
    SshdUid,
    SshdExit,
    NewMountNs,
}

impl RecordKind {
    /// A record of the sshd witness (not of libpam).
    pub fn is_sshd(self) -> bool {
        matches!(self, Self::SshdConnect | Self::SshdLogin | Self::SshdUid | Self::SshdExit)
    }
}

impl TryFrom<u32> for RecordKind {
    type Error = DecodeError;
    fn try_from(value: u32) -> Result<Self, DecodeError> {
        Ok(match value {
            kind::START => Self::Start,
            kind::START_USER => Self::StartUser,
            kind::SET_ITEM => Self::SetItem,
            kind::PUTENV => Self::Putenv,
            kind::AUTHENTICATE => Self::Authenticate,
            kind::OPEN_SESSION => Self::OpenSession,
            kind::CLOSE_SESSION => Self::CloseSession,
            kind::END => Self::End,
            kind::SSHD_CONNECT => Self::SshdConnect,
            kind::SSHD_LOGIN => Self::SshdLogin,
            kind::SSHD_UID => Self::SshdUid,
            kind::SSHD_EXIT => Self::SshdExit,
            kind::NEW_MOUNT_NS => Self::NewMountNs,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("record claims a {claimed}-byte payload but carries {actual}")]
    BadLength { claimed: usize, actual: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

/// One decoded probe record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub header: EventHeader,
    /// The string payload, exactly as read from the caller (not UTF-8 checked).
    pub data: Vec<u8>,
}

impl Record {
    pub fn tgid(&self) -> u32 {
        (self.header.pid_tgid >> 32) as u32
    }
    pub fn uid(&self) -> u32 {
        self.header.uid_gid as u32
    }
    pub fn truncated(&self) -> bool {
        self.header.str_flags & str_flags::TRUNCATED != 0
    }
    pub fn comm(&self) -> &[u8] {
        let end = self.header.comm.iter().position(|&b| b == 0).unwrap_or(self.header.comm.len());
        &self.header.comm[..end]
    }
    /// The caller runs with effective uid 0 from an executable owned by root that no one else can
    /// write. Requires the task fields, which the loader may have been unable to provide.
    pub fn trusted(&self) -> bool {
        let h = &self.header;
        let needed = task_flags::INFO | task_flags::EXE;
        h.task_flags & needed == needed && h.euid == 0 && h.exe_uid == 0 && h.exe_mode & 0o022 == 0
    }
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: `bytes` holds at least HEADER_LEN bytes, EventHeader is repr(C) plain integers for
    // which every bit pattern is valid, and read_unaligned copes with any alignment.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = RecordKind::try_from(header.kind)?;
    let payload = &bytes[HEADER_LEN..];
    let claimed = header.str_len as usize;
    if claimed > payload.len() {
        return Err(DecodeError::BadLength { claimed, actual: payload.len() });
    }
    Ok(Record { kind, header, data: payload[..claimed].to_vec() })
}

/// Records the kernel side could not deliver in one lane, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Causes {
    pub ring_full: u64,
    pub inflight_full: u64,
    pub handles_full: u64,
    pub read_failed: u64,
    pub no_entry: u64,
    /// An unprivileged real uid was over its budget.
    pub budget: u64,
}

impl Causes {
    pub fn total(&self) -> u64 {
        self.ring_full + self.inflight_full + self.handles_full + self.read_failed + self.no_entry + self.budget
    }

    fn since(&self, earlier: &Causes) -> Causes {
        Causes {
            ring_full: self.ring_full - earlier.ring_full,
            inflight_full: self.inflight_full - earlier.inflight_full,
            handles_full: self.handles_full - earlier.handles_full,
            read_failed: self.read_failed - earlier.read_failed,
            no_entry: self.no_entry - earlier.no_entry,
            budget: self.budget - earlier.budget,
        }
    }

    fn plus(&self, o: &Causes) -> Causes {
        Causes {
            ring_full: self.ring_full + o.ring_full,
            inflight_full: self.inflight_full + o.inflight_full,
            handles_full: self.handles_full + o.handles_full,
            read_failed: self.read_failed + o.read_failed,
            no_entry: self.no_entry + o.no_entry,
            budget: self.budget + o.budget,
        }
    }
}

/// Totals of records the kernel side could not deliver, since load: root's callers' (sshd, login,
/// cron, systemd) and everyone else's apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LostCounts {
    pub root: Causes,
    pub user: Causes,
}

impl LostCounts {
    pub fn total(&self) -> u64 {
        self.root.total() + self.user.total()
    }

    /// Both lanes, by cause.
    pub fn causes(&self) -> Causes {
        self.root.plus(&self.user)
    }

    pub fn since(&self, earlier: &LostCounts) -> LostCounts {
        LostCounts { root: self.root.since(&earlier.root), user: self.user.since(&earlier.user) }
    }
}

/// The kernel event source: the two ring buffers (root's callers', everyone else's), readable
/// asynchronously, and the loss counters.
pub struct Source {
    root: AsyncFd<Ring>,
    user: AsyncFd<Ring>,
    lost: PerCpuArray<MapData, u64>,
    /// Records that failed to decode (a version mismatch would show here).
    pub decode_errors: u64,
    /// Records read from the ring buffer since load; with the loss counters, what the probes wrote.
    pub records: u64,
}

impl Source {
    pub fn new(probes: &mut Probes) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut ring = |name: &str| -> anyhow::Result<AsyncFd<Ring>> {
            let Some(Map::RingBuf(map)) = probes.ebpf.take_map(name) else {
                anyhow::bail!("map {name} is missing from the object, or not a ring buffer");
            };
            let ring = Ring::new(map).with_context(|| format!("mapping the ring buffer {name}"))?;
            // SAFETY: the ring owns its map fd, which stays open and unchanged until the AsyncFd
            // (and with it the ring) is dropped.
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .with_context(|| format!("registering the ring buffer {name} with the event loop"))
        };
        let (root, user) = (ring(names::EVENTS)?, ring(names::EVENTS_USER)?);
        let lost = probes.ebpf.take_map(names::LOST).context("map LOST missing from the object")?;
        let lost = PerCpuArray::try_from(lost).context("map LOST is not a per-CPU array")?;
        Ok(Self { root, user, lost, decode_errors: 0, records: 0 })
    }

    /// Waits until records are available in either ring, then appends every available record to
    /// `out`: root's first.
    pub async fn next_batch(&mut self, out: &mut Vec<Record>) -> io::Result<()> {
        // Readiness is cleared before the rings are read: a record that comes after the read
        // wakes the next call.
        tokio::select! {
            biased;
            guard = self.root.readable_mut() => guard?.clear_ready(),
            guard = self.user.readable_mut() => guard?.clear_ready(),
        }
        self.drain(out);
        Ok(())
    }

    /// Appends every record available now, without waiting: root's ring first.
    pub fn drain(&mut self, out: &mut Vec<Record>) {
        self.records += Self::drain_into(self.root.get_mut(), out, &mut self.decode_errors);
        self.records += Self::drain_into(self.user.get_mut(), out, &mut self.decode_errors);
    }

    /// Returns how many records were read.
    fn drain_into(ring: &mut Ring, out: &mut Vec<Record>, errors: &mut u64) -> u64 {
        ring.drain(|item| match decode(item) {
            Ok(record) => {
                tracing::trace!(
                    kind = ?record.kind,
                    tgid = record.tgid(),
                    owner = record.header.owner_tgid,
                    start = record.header.session_start_ns,
                    item = record.header.item,
                    ret = record.header.ret,
                    comm = %String::from_utf8_lossy(record.comm()),
                    data = %String::from_utf8_lossy(&record.data).escape_debug(),
                    "record"
                );
                out.push(record)
            }
            Err(e) => {
                *errors += 1;
                if *errors <= 10 {
                    tracing::warn!(error = %e, "Undecodable record from the kernel; skipped.");
                }
            }
        })
    }

    /// Sums the per-CPU loss counters.
    pub fn lost_counts(&self) -> io::Result<LostCounts> {
        let causes = |lane: u32| -> io::Result<Causes> {
            let read = |cause: u32| -> io::Result<u64> {
                let values = self.lost.get(&lost::index(lane, cause), 0).map_err(io::Error::other)?;
                Ok(values.iter().sum())
            };
            Ok(Causes {
                ring_full: read(lost::RING_FULL)?,
                inflight_full: read(lost::INFLIGHT_FULL)?,
                handles_full: read(lost::HANDLES_FULL)?,
                read_failed: read(lost::READ_FAILED)?,
                no_entry: read(lost::NO_ENTRY)?,
                budget: read(lost::BUDGET)?,
            })
        };
        Ok(LostCounts { root: causes(lane::ROOT)?, user: causes(lane::USER)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(header: &EventHeader, payload: &[u8]) -> Vec<u8> {
        // SAFETY: EventHeader is repr(C) plain data of exactly HEADER_LEN bytes.
        let raw = unsafe { std::slice::from_raw_parts((header as *const EventHeader).cast::<u8>(), HEADER_LEN) };
        let mut v = raw.to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_record_with_payload() {
        let h = EventHeader { kind: kind::SET_ITEM, item: 4, str_len: 11, pid_tgid: 7 << 32 | 8, ..Default::default() };
        let r = decode(&bytes(&h, b"203.0.113.9")).unwrap();
        assert_eq!(r.kind, RecordKind::SetItem);
        assert_eq!(r.data, b"203.0.113.9");
        assert_eq!(r.tgid(), 7);
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Short(10)));
        let h = EventHeader { kind: 99, ..Default::default() };
        assert_eq!(decode(&bytes(&h, b"")), Err(DecodeError::UnknownKind(99)));
        let h = EventHeader { kind: kind::START, str_len: 50, ..Default::default() };
        assert_eq!(decode(&bytes(&h, b"abc")), Err(DecodeError::BadLength { claimed: 50, actual: 3 }));
    }

    #[test]
    fn trust_needs_root_and_a_root_owned_unwritable_executable() {
        let mut h = EventHeader {
            kind: kind::START,
            task_flags: task_flags::INFO | task_flags::EXE,
            exe_mode: 0o100755,
            ..Default::default()
        };
        let rec = |h: &EventHeader| decode(&bytes(h, b"")).unwrap();
        assert!(rec(&h).trusted());
        h.euid = 1000;
        assert!(!rec(&h).trusted());
        h.euid = 0;
        h.exe_uid = 1000;
        assert!(!rec(&h).trusted());
        h.exe_uid = 0;
        h.exe_mode = 0o100777;
        assert!(!rec(&h).trusted());
        h.exe_mode = 0o100755;
        h.task_flags = task_flags::INFO;
        assert!(!rec(&h).trusted());
    }
}
