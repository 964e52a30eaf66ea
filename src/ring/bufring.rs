//! The per-shard provided-buffer ring: receive buffers shared by every connection of a shard.
//!
//! A receive names the buffer group instead of a buffer; the kernel picks a free buffer only
//! when data is there, so an idle connection holds none. The application hands a buffer back
//! with [`BufRing::recycle`] once it has consumed the bytes.
//!
//! Layout: `entries` slots of `io_uring_buf` (16 bytes: addr, len, bid, resv) in a page-aligned
//! anonymous mapping shared with the kernel; the ring's tail is the `resv` field of slot 0.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

pub struct BufRing {
    /// Base of the shared ring mapping (`entries` × 16 bytes, page-aligned).
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    /// The buffers themselves: `entries` × `buffer_bytes`, owned here for the ring's life.
    buffers: Box<[u8]>,
    buffer_bytes: u32,
    entries: u16,
    /// Our copy of the tail; published to the kernel with a release store.
    tail: u16,
    bgid: u16,
}

impl BufRing {
    pub(super) fn new(
        submitter: &Submitter<'_>,
        entries: u32,
        buffer_bytes: u32,
        bgid: u16,
    ) -> io::Result<BufRing> {
        assert!(entries.is_power_of_two() && entries <= 32_768, "validated by config");
        let ring_bytes = entries as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping with no address hint has no preconditions;
        // the result is checked against MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let buffers = vec![0u8; entries as usize * buffer_bytes as usize].into_boxed_slice();
        let mut ring = BufRing {
            ring: ptr.cast(),
            ring_bytes,
            buffers,
            buffer_bytes,
            entries: entries as u16,
            tail: 0,
            bgid,
        };
        // SAFETY: the mapping is page-aligned, `entries` slots long, and lives until Drop, which
        // runs only after the owning ring (declared before it in the shard) is gone or the
        // group is unregistered.
        unsafe { submitter.register_buf_ring_with_flags(ptr as u64, entries as u16, bgid, 0) }
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "registering the provided-buffer ring failed ({e}): Linux 5.19+ needed"
                    ),
                )
            })?;
        for bid in 0..entries as u16 {
            ring.add(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// The buffer group id receives name.
    pub fn group(&self) -> u16 {
        self.bgid
    }

    /// Bytes of one buffer.
    pub fn buffer_bytes(&self) -> u32 {
        self.buffer_bytes
    }

    /// The first `len` bytes of buffer `bid`, as filled by a completed receive.
    pub fn filled(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries, "kernel returned a buffer id we never provided");
        let start = bid as usize * self.buffer_bytes as usize;
        let len = len.min(self.buffer_bytes as usize);
        &self.buffers[start..start + len]
    }

    /// Hands buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid < self.entries);
        self.add(bid);
        self.publish();
    }

    fn add(&mut self, bid: u16) {
        let idx = (self.tail & (self.entries - 1)) as usize;
        let addr = self.buffers.as_ptr() as u64 + bid as u64 * self.buffer_bytes as u64;
        // SAFETY: idx < entries, so the slot lies inside our mapping; the kernel reads slots
        // only between its head and our published tail, and this slot is past the tail.
        let slot = unsafe { &mut *self.ring.add(idx) };
        slot.set_addr(addr);
        slot.set_len(self.buffer_bytes);
        slot.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field is the `resv` of slot 0, inside the mapping, and is only ever
        // written by us; the kernel reads it, hence the atomic release store.
        let tail = unsafe { &*(BufRingEntry::tail(self.ring) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length and is not used after.
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
    }
}
