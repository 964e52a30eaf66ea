//! The per-shard provided-buffer ring: receive buffers shared by every connection of a shard.
//!
//! A receive names the buffer group instead of a buffer; the kernel picks a free buffer only
//! when data is there, so an idle connection holds none. The application hands a buffer back
//! with [`BufRing::recycle`] once it has consumed the bytes.
//!
//! Layout: `entries` slots of `io_uring_buf` (16 bytes: addr, len, bid, resv) in a page-aligned
//! anonymous mapping shared with the kernel; the ring's tail is the `resv` field of slot 0. The
//! buffers are a second page-aligned mapping.
//!
//! The pool follows demand. The kernel takes buffers in ring order, so every buffer in the
//! ring is touched in turn and stays resident: 512 × 4 KiB is 2 MiB a shard, 108 MiB on the
//! 54 shards that hold 1,000,000 connections on the development box. Once a second
//! [`BufRing::adapt`] sets a target from the most buffers one loop turn used in that second.
//! While the ring holds more, buffers are parked: out of the ring, their pages given back
//! with `MADV_DONTNEED`. A parked buffer is always ours, never the kernel's:
//! - a recycled one is parked instead of going back into the ring;
//! - when no receive is in flight, `adapt` takes the newest entries off the ring by moving
//!   its tail back. Only a receive selects a buffer, and a shard's receives run in its own
//!   `io_uring_enter` (DEFER_TASKRUN), so with none in flight the kernel reads no entry of
//!   the ring until the next one is submitted.
//!
//! A receive that finds the ring empty (`ENOBUFS`, retried by the shard) puts every parked
//! buffer back at once ([`BufRing::starved`]).

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

pub struct BufRing {
    /// Base of the shared ring mapping (`entries` × 16 bytes, page-aligned).
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    /// The buffers themselves: `entries` × `buffer_bytes`, a page-aligned mapping owned here
    /// for the ring's life.
    buffers: *mut u8,
    buffers_bytes: usize,
    buffer_bytes: u32,
    entries: u16,
    /// Our copy of the tail; published to the kernel with a release store.
    tail: u16,
    bgid: u16,
    /// Buffers out of the ring, their pages given back: [`BufRing::adapt`].
    parked: Vec<u16>,
    /// How many buffers the ring should hold; above it, recycled buffers are parked.
    target: u16,
    /// Buffers recycled since the last [`BufRing::end_turn`], and the most of any turn since
    /// the last [`BufRing::adapt`].
    turn: u16,
    peak: u16,
    /// Times a receive found the ring empty ([`BufRing::starved`]).
    pub starved_total: u64,
    /// Receives submitted and not yet completed: while any is, only recycling parks.
    in_flight: u32,
}

/// The fewest buffers the ring keeps when a shard is quiet.
pub const KEEP_BUFFERS: u16 = 16;

/// A private anonymous read-write mapping of `len` bytes (page-aligned, untouched so not
/// resident).
fn anon_map(len: usize) -> io::Result<*mut libc::c_void> {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
    // result is checked against MAP_FAILED.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr)
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
        let ptr = anon_map(ring_bytes)?;
        let buffers_bytes = entries as usize * buffer_bytes as usize;
        let buffers = anon_map(buffers_bytes).inspect_err(|_| {
            // SAFETY: the ring mapping was created above with this length and is not shared yet.
            unsafe { libc::munmap(ptr, ring_bytes) };
        })?;
        let mut ring = BufRing {
            ring: ptr.cast(),
            ring_bytes,
            buffers: buffers.cast(),
            buffers_bytes,
            buffer_bytes,
            entries: entries as u16,
            tail: 0,
            bgid,
            parked: Vec::new(),
            target: entries as u16,
            turn: 0,
            peak: 0,
            starved_total: 0,
            in_flight: 0,
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
        // SAFETY: start + len ≤ entries × buffer_bytes, inside the mapping, which lives as long
        // as self; the kernel handed this buffer back, so it writes it no more until
        // `recycle`, which takes &mut self and so ends this borrow first.
        unsafe { std::slice::from_raw_parts(self.buffers.add(start), len) }
    }

    /// Hands buffer `bid` back to the kernel, or parks it while the ring holds more than
    /// its target.
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid < self.entries);
        self.turn = self.turn.saturating_add(1);
        if self.in_ring() > self.target {
            return self.park(bid);
        }
        self.add(bid);
        self.publish();
    }

    /// Buffers the kernel may pick (or has picked and not yet returned).
    fn in_ring(&self) -> u16 {
        self.entries - self.parked.len() as u16
    }

    fn park(&mut self, bid: u16) {
        let page = 4096usize;
        let start = self.buffers as usize + bid as usize * self.buffer_bytes as usize;
        let end = start + self.buffer_bytes as usize;
        // Only pages wholly inside this buffer: a neighbour may be in the kernel's hands.
        let (first, last) = (start.div_ceil(page) * page, end / page * page);
        if last > first {
            // SAFETY: [first, last) lies inside the buffers mapping and inside buffer `bid`,
            // which is out of the ring (the kernel returned it and it is not re-added), so
            // nothing reads or writes it until `starved` puts it back; MADV_DONTNEED on a
            // private anonymous mapping makes the next touch read zeros.
            unsafe { libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_DONTNEED) };
        }
        self.parked.push(bid);
    }

    /// A receive naming this group was submitted.
    pub fn recv_submitted(&mut self) {
        self.in_flight += 1;
    }

    /// A receive naming this group completed (with a buffer or without).
    pub fn recv_completed(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Ends one loop turn's completions: its count of recycled buffers feeds the peak.
    pub fn end_turn(&mut self) {
        self.peak = self.peak.max(std::mem::take(&mut self.turn));
    }

    /// Once a second: the target becomes twice the busiest turn of the second (a power of
    /// two, at least [`KEEP_BUFFERS`], at most every buffer). A smaller target parks buffers
    /// as they come back; a larger one puts parked buffers back now.
    pub fn adapt(&mut self) {
        let need = std::mem::take(&mut self.peak).saturating_mul(2).max(KEEP_BUFFERS);
        self.target = need.checked_next_power_of_two().unwrap_or(self.entries).min(self.entries);
        self.unpark(self.target);
        if self.in_flight > 0 || self.in_ring() <= self.target {
            return;
        }
        // No receive in flight: the kernel has handed back every buffer it took (each one
        // completed, and the shard recycled it), so the entries between its head and our
        // tail are exactly the buffers in the ring, and it reads none of them until the next
        // receive. Take the newest off by moving the tail back.
        while self.in_ring() > self.target {
            self.tail = self.tail.wrapping_sub(1);
            let idx = (self.tail & (self.entries - 1)) as usize;
            // SAFETY: idx < entries, inside the mapping; the kernel reads no slot now (above).
            let bid = unsafe { (*self.ring.add(idx)).bid() };
            self.park(bid);
        }
        self.publish();
    }

    /// A receive found no buffer (`ENOBUFS`): every parked buffer goes back into the ring.
    pub fn starved(&mut self) {
        self.starved_total += 1;
        self.target = self.entries;
        self.unpark(self.entries);
    }

    fn unpark(&mut self, upto: u16) {
        let mut added = false;
        while self.in_ring() < upto {
            let Some(bid) = self.parked.pop() else { break };
            self.add(bid);
            added = true;
        }
        if added {
            self.publish();
        }
    }

    /// Buffers in the ring now, and the most it may hold.
    pub fn provided(&self) -> (u16, u16) {
        (self.in_ring(), self.entries)
    }

    fn add(&mut self, bid: u16) {
        let idx = (self.tail & (self.entries - 1)) as usize;
        let addr = self.buffers as u64 + bid as u64 * self.buffer_bytes as u64;
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
        // SAFETY: both mappings were created in `new` with these lengths and are not used
        // after; the kernel is done with them (see the field order in the shard).
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_bytes);
            libc::munmap(self.buffers.cast(), self.buffers_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use io_uring::{opcode, squeue, types};

    use super::super::{Completion, Ring};
    use super::*;

    const BYTES: u32 = 4096;

    /// A connected Unix stream pair: (ours, theirs).
    fn pair() -> (i32, i32) {
        let mut fds = [0i32; 2];
        // SAFETY: socketpair writes two fds into the array we own.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
        (fds[0], fds[1])
    }

    fn write(fd: i32, bytes: &[u8]) {
        // SAFETY: writes from a slice we own to an fd we own.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize);
    }

    fn submit(ring: &mut Ring, bufs: &mut BufRing, fd: i32, user_data: u64) {
        let e = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), BYTES)
            .buf_group(bufs.group())
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data);
        // SAFETY: the buffer comes from the provided-buffer ring, which outlives the wait.
        unsafe { ring.push(&e) };
        bufs.recv_submitted();
    }

    /// Waits for `n` completions, in user_data order.
    fn wait(ring: &mut Ring, bufs: &mut BufRing, n: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        for _ in 0..100 {
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            ring.drain(&mut out);
            if out.len() >= n {
                break;
            }
        }
        assert_eq!(out.len(), n, "every receive completes");
        for _ in 0..n {
            bufs.recv_completed();
        }
        out.sort_by_key(|c| c.user_data);
        out
    }

    /// One buffer-selecting receive per fd, submitted together, and their completions.
    fn recv_all(ring: &mut Ring, bufs: &mut BufRing, fds: &[i32]) -> Vec<Completion> {
        for (i, &fd) in fds.iter().enumerate() {
            submit(ring, bufs, fd, i as u64);
        }
        wait(ring, bufs, fds.len())
    }

    /// Pages of buffer `bid` resident now (mincore).
    fn resident(bufs: &BufRing, bid: u16) -> usize {
        let mut vec = [0u8; 1];
        // SAFETY: buffer `bid` starts a page (4 KiB buffers in a page-aligned mapping) and lies
        // inside the mapping; mincore writes one byte per page into `vec`.
        let start = unsafe { bufs.buffers.add(bid as usize * BYTES as usize) };
        // SAFETY: as above: one page inside the mapping, and one byte of `vec` per page.
        let rc = unsafe { libc::mincore(start.cast(), BYTES as usize, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        (vec[0] & 1) as usize
    }

    #[test]
    fn a_quiet_ring_parks_buffers_and_a_dry_one_gets_them_back() {
        let mut ring = Ring::new(64, 16).unwrap();
        let mut bufs = ring.register_buf_ring(32, BYTES, 7).unwrap();
        let pairs: Vec<(i32, i32)> = (0..18).map(|_| pair()).collect();
        let fds: Vec<i32> = pairs.iter().map(|p| p.0).collect();

        // Quiet, no receive in flight: the ring's newest entries come off at once.
        bufs.adapt();
        assert_eq!(bufs.target, KEEP_BUFFERS);
        assert_eq!(bufs.provided(), (KEEP_BUFFERS, 32));

        // Dry: 17 receives with data waiting, in one submission, for 16 buffers.
        for (i, &(_, t)) in pairs[..17].iter().enumerate() {
            write(t, &[i as u8; 64]);
        }
        let done = recv_all(&mut ring, &mut bufs, &fds[..17]);
        let dry: Vec<usize> = (0..17).filter(|&i| done[i].result == -libc::ENOBUFS).collect();
        assert_eq!(dry.len(), 1, "one receive finds the ring empty: {done:?}");
        for c in done.iter().filter(|c| c.result > 0) {
            let bid = c.buffer_id().unwrap();
            assert_eq!(bufs.filled(bid, 64), &[c.user_data as u8; 64][..]);
            bufs.recycle(bid);
        }
        bufs.starved();
        assert_eq!(bufs.provided(), (32, 32), "every parked buffer is back");
        assert_eq!(bufs.starved_total, 1);
        // The retry gets a buffer (a parked one reads the kernel's data, not stale zeros).
        let again = &recv_all(&mut ring, &mut bufs, &[fds[dry[0]]])[0];
        let bid = again.buffer_id().expect("a buffer after the refill");
        assert_eq!(bufs.filled(bid, 64), &[dry[0] as u8; 64][..]);
        bufs.recycle(bid);
        bufs.end_turn();
        bufs.adapt();
        assert_eq!(bufs.target, 32, "the busy turn's second: twice 17 buffers, capped at 32");

        // Quiet with a receive in flight (one waiting on a socket with nothing to read): the
        // ring keeps its entries, and buffers are parked as they come back instead.
        submit(&mut ring, &mut bufs, fds[17], 99);
        bufs.adapt();
        assert_eq!(bufs.provided(), (32, 32), "nothing comes off while a receive is in flight");
        let (ours, theirs) = pairs[0];
        for round in 0..16u8 {
            write(theirs, &[round; 100]);
            let c = &recv_all(&mut ring, &mut bufs, &[ours])[0];
            assert_eq!(c.result, 100);
            let bid = c.buffer_id().expect("a selected buffer");
            assert_eq!(bufs.filled(bid, 100), &[round; 100][..]);
            assert_eq!(resident(&bufs, bid), 1, "a buffer the kernel filled is resident");
            bufs.recycle(bid);
            bufs.end_turn();
            assert!(bufs.parked.contains(&bid), "round {round}: the buffer is parked");
            assert_eq!(resident(&bufs, bid), 0, "a parked buffer's page is given back");
        }
        assert_eq!(bufs.provided(), (KEEP_BUFFERS, 32), "16 receives parked 16 buffers");
        write(pairs[17].1, b"late");
        let late = &wait(&mut ring, &mut bufs, 1)[0];
        assert_eq!(bufs.filled(late.buffer_id().unwrap(), 4), b"late");
        bufs.recycle(late.buffer_id().unwrap());

        // A busy second raises the target again: twice the busiest turn, a power of two.
        bufs.end_turn();
        bufs.adapt();
        assert_eq!(bufs.target, KEEP_BUFFERS, "a second of single receives");
        bufs.turn = 12;
        bufs.end_turn();
        bufs.adapt();
        assert_eq!(bufs.target, 32, "twice a turn of 12, rounded up to a power of two");
        assert_eq!(bufs.provided(), (32, 32));
        for fd in pairs.iter().flat_map(|p| [p.0, p.1]) {
            // SAFETY: closes fds this test opened.
            unsafe { libc::close(fd) };
        }
        // The ring goes first, as in the shard (see the field order there).
        drop(ring);
        drop(bufs);
    }
}
