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
    _consumer: Mapping,
    /// The producer position's page, then the data pages once; read-only.
    _producer: Mapping,
    reader: Reader,
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
        // SAFETY: the kernel's layout: the consumer position at the start of the first page, the
        // producer position at the start of the next, then `size` bytes of data; the mappings
        // live as long as the reader, in the same struct.
        let reader = unsafe { Reader::new(consumer.ptr.cast(), producer.ptr.cast(), producer.ptr.add(page), size) };
        Ok(Self { map, _consumer: consumer, _producer: producer, reader })
    }

    /// Calls `each` with every record available now, in order; returns how many.
    pub fn drain(&mut self, each: impl FnMut(&[u8])) -> u64 {
        self.reader.drain(each)
    }
}

/// The reading itself, on the ring's memory wherever it is.
struct Reader {
    consumer: NonNull<AtomicUsize>,
    producer: NonNull<AtomicUsize>,
    data: NonNull<u8>,
    size: usize,
    /// Where this reader is; mirrored to the consumer position after each record.
    pos: usize,
    /// The producer position last loaded.
    produced: usize,
    /// A record was consumed since the last fence (see the module's documentation).
    needs_fence: bool,
    /// A record that wraps around the end of the ring, made contiguous.
    wrapped: Vec<u8>,
}

impl Reader {
    /// # Safety
    /// `consumer` and `producer` point to the ring's positions, `data` to its `size` bytes of
    /// data (a power of two), all valid for as long as the reader.
    unsafe fn new(
        consumer: NonNull<AtomicUsize>,
        producer: NonNull<AtomicUsize>,
        data: NonNull<u8>,
        size: usize,
    ) -> Self {
        // SAFETY: valid, by the caller.
        let (pos, produced) =
            unsafe { (consumer.as_ref().load(Ordering::Acquire), producer.as_ref().load(Ordering::Acquire)) };
        Self { consumer, producer, data, size, pos, produced, needs_fence: false, wrapped: Vec::new() }
    }

    fn drain(&mut self, mut each: impl FnMut(&[u8])) -> u64 {
        let mask = self.size - 1;
        // SAFETY (all three): valid for as long as `self`, by `new`'s contract.
        let consumer = unsafe { self.consumer.as_ref() };
        let producer = unsafe { self.producer.as_ref() };
        let data = self.data.as_ptr();
        let mut read = 0;
        loop {
            if self.pos == self.produced {
                if std::mem::take(&mut self.needs_fence) {
                    fence(Ordering::SeqCst);
                }
                self.produced = producer.load(Ordering::Acquire);
                if self.pos == self.produced {
                    return read;
                }
            }
            let at = self.pos & mask;
            // SAFETY: `at` is 8-byte aligned (positions advance in multiples of 8) and below
            // `size`, so the 4-byte length word lies inside the data.
            let header = unsafe { &*data.add(at).cast::<AtomicU32>() }.load(Ordering::Acquire);
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
                // SAFETY: both ranges lie inside the data; the kernel does not reuse them before
                // the consumer position passes them.
                unsafe {
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
            consumer.store(self.pos, Ordering::Release);
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
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing refers to any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the memory the reader points to is the ring's mappings, owned by the same Ring (or, in
// the tests, by the test), and only reached through `&mut self`.
unsafe impl Send for Reader {}
unsafe impl Send for Mapping {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in plain memory, laid out as the kernel's (the consumer position, the producer
    /// position, then the data), with a producer written by hand. Reached only through raw
    /// pointers, as the reader reaches it.
    struct Fake {
        base: *mut u64,
        words: usize,
        size: usize,
    }

    impl Fake {
        fn new(size: usize) -> Self {
            let words = 2 + size / 8;
            let base = Box::into_raw(vec![0u64; words].into_boxed_slice()).cast::<u64>();
            Self { base, words, size }
        }
        fn reader(&self) -> Reader {
            // SAFETY: the layout above; the memory lives until `self` is dropped, after the reader.
            unsafe {
                Reader::new(
                    NonNull::new_unchecked(self.base.cast()),
                    NonNull::new_unchecked(self.base.add(1).cast()),
                    NonNull::new_unchecked(self.base.add(2).cast()),
                    self.size,
                )
            }
        }
        fn data(&self) -> *mut u8 {
            // SAFETY: in bounds.
            unsafe { self.base.add(2).cast() }
        }
        /// Writes a record at the producer position, as the kernel commits one.
        fn produce(&self, payload: &[u8], flags: u32) {
            // SAFETY: the producer word and data bytes, in bounds (positions are taken modulo size).
            unsafe {
                let pos = self.base.add(1).read() as usize;
                self.data().add(pos % self.size).cast::<u32>().write(payload.len() as u32 | flags);
                for (i, b) in payload.iter().enumerate() {
                    self.data().add((pos + HEADER + i) % self.size).write(*b);
                }
                self.base.add(1).write((pos + (HEADER + payload.len()).next_multiple_of(8)) as u64);
            }
        }
        /// Clears the busy bit of the record at `at`.
        fn commit(&self, at: usize, len: u32) {
            // SAFETY: a header inside the data.
            unsafe { self.data().add(at).cast::<u32>().write(len) }
        }
        fn consumed(&self) -> u64 {
            // SAFETY: the consumer word.
            unsafe { self.base.read() }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            // SAFETY: the box made in `new`, given back once.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.base, self.words)) });
        }
    }

    fn drained(r: &mut Reader) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        r.drain(|b| got.push(b.to_vec()));
        got
    }

    #[test]
    fn reads_in_order_skips_discarded_and_joins_a_record_that_wraps() {
        let ring = Fake::new(64);
        let mut r = ring.reader();
        ring.produce(b"first", 0);
        ring.produce(b"dropped", DISCARD);
        assert_eq!(drained(&mut r), [b"first".to_vec()]);
        assert_eq!(ring.consumed(), 32, "both records are consumed: 8+5 and 8+7, each to 16");
        // 32 + 16 = 48: the next header at 48, its 20 bytes run from 56 past the end at 64.
        ring.produce(b"abc", 0);
        let long: Vec<u8> = (0..20).collect();
        ring.produce(&long, 0);
        assert_eq!(drained(&mut r), [b"abc".to_vec(), long]);
        assert_eq!(ring.consumed(), 32 + 16 + 32);
        assert!(drained(&mut r).is_empty(), "nothing new");
    }

    #[test]
    fn stops_at_a_record_still_being_written() {
        let ring = Fake::new(64);
        let mut r = ring.reader();
        ring.produce(b"done", 0);
        ring.produce(b"busy", BUSY);
        assert_eq!(drained(&mut r), [b"done".to_vec()]);
        assert_eq!(ring.consumed(), 16, "the busy record is left for the next drain");
        // Committed: the busy bit cleared.
        ring.commit(16, 4);
        assert_eq!(drained(&mut r), [b"busy".to_vec()]);
    }
}
