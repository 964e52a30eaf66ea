//! Keepalive and the loop's own clock: pings answered in the turn they are read (a pong
//! waits for an in-flight send, never dropped) with their times histogrammed, and the
//! loop-lag probe, an absolute io_uring timeout that says how late the loop got to a
//! completion due at a known time.

use super::*;

/// Times of a ping being answered: when its connection was seen readable and when it was
/// read (shard clock, ns).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PingTimes {
    pub(super) ready_ns: u64,
    pub(super) read_ns: u64,
}

/// A pong that waits for the connection's in-flight send to complete.
pub(super) struct WaitingPong {
    gen: u32,
    frame: Vec<u8>,
    times: PingTimes,
}

impl Shard {
    /// Arms the lag probe: an absolute timeout `PROBE_EVERY` after `now` (CLOCK_MONOTONIC).
    pub(super) fn arm_probe(&mut self, now: u64) -> io::Result<()> {
        let deadline = now + PROBE_EVERY.as_nanos() as u64;
        self.probe_deadline_ns = deadline;
        *self.probe_ts = types::Timespec::new()
            .sec(deadline / 1_000_000_000)
            .nsec((deadline % 1_000_000_000) as u32);
        let entry = opcode::Timeout::new(&*self.probe_ts)
            .flags(types::TimeoutFlags::ABS)
            .build()
            .user_data(user_data(OP_PROBE, 0, PROBE_INDEX));
        // SAFETY: the timespec is boxed and owned by the shard, which outlives the ring's
        // use of it (the kernel copies it when the entry is submitted).
        unsafe { self.ring.push(&[entry]) }
    }

    /// The probe completed: how late after its deadline this loop got to it is the loop
    /// lag (time asleep past a due completion, waiting for a CPU, or busy in a turn).
    pub(super) fn on_probe(&mut self) -> io::Result<()> {
        let now = sys::monotonic_ns();
        let lag_us = (now.saturating_sub(self.probe_deadline_ns) / 1000).max(1);
        self.result.loop_lag_us.saturating_record(lag_us);
        self.shared.lag_max_us.fetch_max(lag_us, Relaxed);
        self.arm_probe(now)
    }

    /// Sends the pong of a ping read now (`self.reading`). The server sends no further ping
    /// until this one is answered, so a pong is never dropped: when a send of the connection
    /// is still in flight, the pong waits for its completion (a newer ping's pong replaces a
    /// waiting one; the earliest ping's times are kept).
    pub(super) fn pong(&mut self, i: u32, frame: Vec<u8>) -> io::Result<()> {
        let times = self.reading;
        let c = &self.conns[i as usize];
        if c.state != State::Open {
            return Ok(());
        }
        let gen = c.gen;
        if c.out.is_some() {
            self.counts.pongs_deferred += 1;
            let times = match self.pongs_waiting.get(&i) {
                Some(w) if w.gen == gen => w.times,
                _ => times,
            };
            self.pongs_waiting.insert(i, WaitingPong { gen, frame, times });
            return Ok(());
        }
        self.pongs_sent.insert(i, (gen, times));
        self.send(i, frame)
    }

    /// A send of connection `i` completed: if it was a pong, record its times.
    pub(super) fn pong_done(&mut self, i: u32, gen: u32, ok: bool, now: u64) {
        let Some((sent_gen, times)) = self.pongs_sent.remove(&i) else {
            return;
        };
        if sent_gen != gen || !ok {
            return;
        }
        self.counts.pongs += 1;
        let read_us = (now.saturating_sub(times.read_ns) / 1000).max(1);
        let ready_us = (now.saturating_sub(times.ready_ns) / 1000).max(1);
        self.result.pong_us.saturating_record(read_us);
        self.result.pong_ready_us.saturating_record(ready_us);
        self.pong_max_us = self.pong_max_us.max(ready_us);
    }

    /// Sends the pong that waited for connection `i`'s previous send, if any.
    pub(super) fn send_waiting_pong(&mut self, i: u32) -> io::Result<()> {
        let Some(w) = self.pongs_waiting.remove(&i) else {
            return Ok(());
        };
        let c = &self.conns[i as usize];
        if w.gen != c.gen || c.state != State::Open || c.out.is_some() {
            return Ok(());
        }
        self.pongs_sent.insert(i, (w.gen, w.times));
        self.send(i, w.frame)
    }
}
