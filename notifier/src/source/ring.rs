//! A reader of a BPF ring buffer that maps the ring's data pages once.
//!
//! aya's `RingBuf`, like libbpf's reader, maps the data pages twice in a row, so that a record
//! that wraps around the end of the ring reads as one slice. The kernel fills every page of the
//! mapping at `mmap` time, so each data page counts twice in the daemon's RSS: 6 MB for the
//! 2 MiB and 1 MiB rings, the largest part of an idle `notifier run`. This reader maps them once
//! and copies the rare record that wraps (one per lap of the ring at most) into a buffer: the
//! rings then count 3 MB (`bench --only memory`).
//!
//! The protocol is the kernel's (`kernel/bpf/ringbuf.c`), read as aya's reader reads it: the
//! producer position is loaded with Acquire; each record starts with an 8-byte header whose length
//! word carries a busy bit (still being written) and a discard bit, loaded with Acquire; the
//! consumer position is stored with Release after each record, and a SeqCst fence before the
//! reader concludes it has caught up pairs with the kernel's check of that position when it
//! decides whether to wake the reader, so that no wake-up is lost.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering},
};

use aya::maps::MapData;

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: usize = 8;

/// One ring buffer map, read from user space.
pub struct Ring {
    map: MapData,
    /// The consumer position's page, writable.
    consumer: Mapping,
    /// The producer position's page, then the data pages once; read-only.
    producer: Mapping,
    page: usize,
    size: usize,
    /// Where this reader is; mirrored to the consumer page after each record.
    pos: usize,
    /// The producer position last loaded.
    produced: usize,
    /// A record was consumed since the last fence (see the module's documentation).
    needs_fence: bool,
    /// A record that wraps around the end of the ring, made contiguous.
    wrapped: Vec<u8>,
}

impl Ring {
    /// Maps a `BPF_MAP_TYPE_RINGBUF` map.
    pub fn new(map: MapData) -> io::Result<Self> {
        let size = map.info().map_err(io::Error::other)?.max_entries() as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        if !size.is_power_of_two() || !size.is_multiple_of(page) {
            return Err(io::Error::other(format!("ring buffer of {size} bytes is not a power-of-two number of pages")));
        }
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + size, libc::PROT_READ, page)?;
        let pos = consumer.word().load(Ordering::Acquire);
        let produced = producer.word().load(Ordering::Acquire);
        Ok(Self { map, consumer, producer, page, size, pos, produced, needs_fence: false, wrapped: Vec::new() })
    }

    /// Calls `each` with every record available now, in order; returns how many.
    pub fn drain(&mut self, mut each: impl FnMut(&[u8])) -> u64 {
        let mask = self.size - 1;
        let mut read = 0;
        loop {
            if self.pos == self.produced {
                if std::mem::take(&mut self.needs_fence) {
                    fence(Ordering::SeqCst);
                }
                self.produced = self.producer.word().load(Ordering::Acquire);
                if self.pos == self.produced {
                    return read;
                }
            }
            let at = self.pos & mask;
            // SAFETY: `at` is 8-byte aligned (positions advance in multiples of 8) and below
            // `size`, so the 4-byte length word lies inside the data pages, which are mapped.
            let header = unsafe { &*self.producer.at(self.page + at).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if header & BUSY != 0 {
                if !std::mem::take(&mut self.needs_fence) {
                    return read;
                }
                fence(Ordering::SeqCst);
                continue;
            }
            // The kernel never reserves a record larger than the ring.
            let len = ((header & !(BUSY | DISCARD)) as usize).min(self.size - HEADER);
            if header & DISCARD == 0 {
                let start = (at + HEADER) & mask;
                let first = len.min(self.size - start);
                // SAFETY: both ranges lie inside the data pages, which stay mapped while `self`
                // lives; the kernel does not reuse them before the consumer position passes them.
                unsafe {
                    let data = self.producer.at(self.page);
                    if first == len {
                        each(std::slice::from_raw_parts(data.add(start), len));
                    } else {
                        self.wrapped.clear();
                        self.wrapped.extend_from_slice(std::slice::from_raw_parts(data.add(start), first));
                        self.wrapped.extend_from_slice(std::slice::from_raw_parts(data, len - first));
                        each(&self.wrapped);
                    }
                }
                read += 1;
            }
            self.pos += (HEADER + len).next_multiple_of(8);
            self.consumer.word().store(self.pos, Ordering::Release);
            self.needs_fence = true;
        }
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

/// A shared mapping of part of the map, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Self> {
        // SAFETY: a new shared mapping of `fd` chosen by the kernel; nothing else is touched.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, offset as libc::off_t) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr: NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?, len })
    }

    /// The position word at the start of the mapping.
    fn word(&self) -> &AtomicUsize {
        // SAFETY: the mapping is page-aligned and at least a page long; the kernel keeps the
        // position there, and it is only ever accessed atomically.
        unsafe { &*self.ptr.as_ptr().cast::<AtomicUsize>() }
    }

    fn at(&self, offset: usize) -> *const u8 {
        debug_assert!(offset < self.len);
        // SAFETY: in bounds of the mapping (checked by the callers' arithmetic).
        unsafe { self.ptr.as_ptr().add(offset) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing refers to any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mappings are owned by the Ring and only read or written through its methods.
unsafe impl Send for Ring {}
