//! A client shard: one thread, one ring, a slice of the connections.
//!
//! Connection `i` of a shard lives in fixed-file slot `i` (so a chain of operations can
//! name the socket before it exists). An attempt is one linked chain:
//!
//! ```text
//! SOCKET(slot i) → [SETSOCKOPT(IP_BIND_ADDRESS_NO_PORT) → BIND(source)] → CONNECT(target)
//!   → SEND(upgrade request) → POLL_ADD(POLLIN)
//! ```
//!
//! after which a connection waits for readability with a one-shot poll and reads into a
//! shard-wide buffer pool, so an idle connection holds no buffer. A connection with
//! operations in flight is never closed: it cancels them, drains, then closes its slot.
//!
//! The loop is measured as well as the server: a probe (an absolute `IORING_OP_TIMEOUT`,
//! always one in flight) says how late the loop got to a completion that was due at a known
//! time (the loop lag), and every turn's busy time is recorded. A WebSocket ping is
//! answered in the turn it is read: the pong is queued at once, or, when a send is still in
//! flight, as soon as it completes (never dropped), and its time from the ping's readiness
//! and from its read to the pong's send completion is histogrammed.
//!
//! user_data layout (64 bits):
//!
//! ```text
//!  63      56 55              32 31                   0
//! +----------+------------------+----------------------+
//! |    op    | generation (24)  |  connection index    |
//! +----------+------------------+----------------------+
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

mod connect;
mod keepalive;
mod receive;

use keepalive::{PingTimes, WaitingPong};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use io_uring::{opcode, squeue, types};

use crate::payload::{self, Arrival, SeqWindow};
use crate::plan::{next_target, Plan, Proto};
use crate::proto::http::{self, Chunked};
use crate::proto::{sse, ws};
use crate::ring::{Completion, RawAddr, Ring};
use crate::shared::{latency_histogram, MessageCounts, Reason, Shared};
use crate::sys;

/// Read buffers per shard, shared by all its connections; a buffer is held only between
/// a readiness event and the end of the read that follows. Many small buffers rather than
/// a few large ones (1 MiB per shard either way): when a broadcast makes every connection
/// readable at once, a turn reads `READ_BUFS` of them, so the queue of readable connections
/// (and a ping behind it) drains in few turns. A read that fills its buffer is followed
/// by another at once, so larger messages only take more reads.
pub const READ_BUFS: usize = 256;
pub const READ_BUF_BYTES: usize = 4 * 1024;
/// Attempts in their connect/upgrade phase at once per shard, so a fast `--rate` cannot
/// overflow the server's listen backlog.
pub const CONNECTING_MAX: u32 = 1024;
/// Attempts (first ones and reconnects) started per loop turn, so a `--rate 0` ramp or a
/// reconnect wave does not make one turn long while established connections wait.
const ATTEMPTS_PER_TURN: u32 = 256;
/// Timers handled per loop turn; the rest wait for the next turn.
const TIMERS_PER_TURN: usize = 4096;
/// Longest the shard sleeps in the kernel. The lag probe completes every `PROBE_EVERY`,
/// which bounds how late the shard sees `stop`.
const WAIT_MAX: Duration = Duration::from_millis(250);
/// Period of the loop-lag probe.
pub const PROBE_EVERY: Duration = Duration::from_millis(50);
/// How often shard-local counters are added to the shared ones.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Backoff doubles at most this many times before `--backoff-max` caps it anyway.
const BACKOFF_DOUBLINGS_MAX: u8 = 30;

const OP_SOCKET: u8 = 1;
const OP_SOCKOPT: u8 = 2;
const OP_BIND: u8 = 3;
const OP_CONNECT: u8 = 4;
const OP_SEND_UPGRADE: u8 = 5;
const OP_POLL: u8 = 6;
const OP_RECV: u8 = 7;
const OP_SEND: u8 = 8;
const OP_CANCEL: u8 = 9;
const OP_CLOSE: u8 = 10;
/// The loop-lag probe (an absolute timeout); its index names no connection.
const OP_PROBE: u8 = 11;
const PROBE_INDEX: u32 = u32::MAX;

const GEN_MASK: u32 = 0x00ff_ffff;

fn user_data(op: u8, gen: u32, index: u32) -> u64 {
    (u64::from(op) << 56) | (u64::from(gen & GEN_MASK) << 32) | u64::from(index)
}

fn split_user_data(ud: u64) -> (u8, u32, u32) {
    ((ud >> 56) as u8, ((ud >> 32) as u32) & GEN_MASK, ud as u32)
}

static ONE: libc::c_int = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Socket, connect and upgrade request in flight.
    Connecting,
    /// Connected; waiting for the upgrade response.
    Upgrading,
    Open,
    /// Cancelling, draining, then closing the slot.
    Closing,
    /// Waiting out a reconnect delay.
    Backoff,
    /// Given up (no --reconnect, or the run is stopping).
    Dead,
}

const SLOT_OPEN: u8 = 1;
const POLL_ARMED: u8 = 2;
const RECV_IN_FLIGHT: u8 = 4;
const FIRST_DONE: u8 = 8;
const CANCELLED: u8 = 16;
const CLOSE_SENT: u8 = 32;

/// One connection. Idle, it is this struct and nothing else.
///
/// The buffers are `Option<Box<Vec<u8>>>`: one word each while absent (the common case),
/// where `Vec<u8>` would take three.
#[allow(clippy::box_collection)]
struct Conn {
    /// Bytes of an unfinished head, frame or SSE line; `None` almost always.
    held: Option<Box<Vec<u8>>>,
    /// The request, pong or close being sent; the kernel reads it until the send completes.
    out: Option<Box<Vec<u8>>>,
    window: SeqWindow,
    attempt_ns: u64,
    connected_ns: u64,
    gen: u32,
    state: State,
    flags: u8,
    inflight: u8,
    backoffs: u8,
    /// Index of the target the current attempt goes to; each reconnect moves to the next,
    /// so clients of a dead server spread over the others instead of hammering it.
    target: u16,
    chunked: Option<Chunked>,
    sse: sse::Reader,
    read_buf: u16,
}

/// Histograms a shard hands back when it stops.
pub struct ShardResult {
    pub connect_us: Histogram<u64>,
    pub upgrade_us: Histogram<u64>,
    pub latency_us: Histogram<u64>,
    pub backoff_us: Histogram<u64>,
    /// How late the loop reaped each lag probe after its deadline.
    pub loop_lag_us: Histogram<u64>,
    /// Busy time of each loop turn (from waking up to sleeping again).
    pub loop_turn_us: Histogram<u64>,
    /// Ping read (its bytes parsed) to the pong's send completion.
    pub pong_us: Histogram<u64>,
    /// Ping readiness (the poll completion reaped) to the pong's send completion: includes
    /// the wait for a read buffer behind other readable connections.
    pub pong_ready_us: Histogram<u64>,
}

pub struct Shard {
    id: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    ring: Ring,
    conns: Vec<Conn>,
    /// Connections this shard owns (started or not).
    total: u32,
    targets: Vec<RawAddr>,
    target_hosts: Vec<String>,
    sources: Vec<RawAddr>,
    bufs: Vec<Box<[u8]>>,
    free_bufs: Vec<u16>,
    /// When each buffer's connection was seen readable (shard clock, ns).
    buf_ready_ns: Vec<u64>,
    /// Readable connections waiting for a buffer: (index, generation, seen readable ns).
    want_read: VecDeque<(u32, u32, u64)>,
    /// The ping times of the read being interpreted now.
    reading: PingTimes,
    /// Pongs in flight: index → (generation, ping times). Only connections with a pong in
    /// flight have an entry, so an idle connection costs nothing here.
    pongs_sent: HashMap<u32, (u32, PingTimes)>,
    /// Pongs waiting for an in-flight send of their connection.
    pongs_waiting: HashMap<u32, WaitingPong>,
    /// (deadline ns, index, generation): connect timeouts and reconnect delays.
    timers: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Reconnects whose delay is over, waiting for room under `CONNECTING_MAX`.
    connect_ready: VecDeque<(u32, u32)>,
    connecting: u32,
    /// The lag probe's absolute deadline (CLOCK_MONOTONIC); the kernel reads it when the
    /// probe is submitted, so it lives in a box that never moves.
    probe_ts: Box<types::Timespec>,
    probe_deadline_ns: u64,
    /// Largest turn and pong time since the last flush, µs (for the progress line).
    turn_max_us: u64,
    pong_max_us: u64,
    epoch: Instant,
    rng: u64,
    counts: MessageCounts,
    /// permessage-deflate (`--deflate`): one inflater for the shard, made on first use, and
    /// its reused output.
    inflater: Option<flate2::Decompress>,
    inflated: Vec<u8>,
    pending_attempts: u64,
    pending_reconnects: u64,
    pending_established: u64,
    pending_first_done: u64,
    live: Histogram<u64>,
    result: ShardResult,
    cqes: Vec<Completion>,
}

impl Shard {
    pub fn new(id: usize, plan: Arc<Plan>, shared: Arc<Shared>) -> io::Result<Shard> {
        let total = plan.shard_conns(id);
        let slots = u32::try_from(total.max(1)).map_err(|_| io::Error::other("too many"))?;
        let ring = Ring::new(slots)?;
        let raw = |a: SocketAddr| {
            RawAddr::from_socket_addr(a).ok_or_else(|| io::Error::other("IPv6 unsupported"))
        };
        let targets = plan.targets.iter().map(|a| raw(*a)).collect::<io::Result<_>>()?;
        let target_hosts = plan.targets.iter().map(|a| a.to_string()).collect();
        let sources = plan
            .sources
            .iter()
            .map(|ip| RawAddr::new(std::net::SocketAddrV4::new(*ip, 0)))
            .collect();
        let seed = sys::realtime_ns() ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Ok(Shard {
            id,
            plan,
            shared,
            ring,
            conns: Vec::with_capacity(total as usize),
            total: total as u32,
            targets,
            target_hosts,
            sources,
            bufs: (0..READ_BUFS).map(|_| vec![0u8; READ_BUF_BYTES].into_boxed_slice()).collect(),
            free_bufs: (0..READ_BUFS as u16).rev().collect(),
            buf_ready_ns: vec![0; READ_BUFS],
            want_read: VecDeque::new(),
            reading: PingTimes::default(),
            pongs_sent: HashMap::new(),
            pongs_waiting: HashMap::new(),
            timers: BinaryHeap::new(),
            connect_ready: VecDeque::new(),
            connecting: 0,
            probe_ts: Box::new(types::Timespec::new()),
            probe_deadline_ns: 0,
            turn_max_us: 0,
            pong_max_us: 0,
            epoch: Instant::now(),
            rng: seed | 1,
            counts: MessageCounts::default(),
            inflater: None,
            inflated: Vec::new(),
            pending_attempts: 0,
            pending_reconnects: 0,
            pending_established: 0,
            pending_first_done: 0,
            live: latency_histogram(),
            result: ShardResult {
                connect_us: latency_histogram(),
                upgrade_us: latency_histogram(),
                latency_us: latency_histogram(),
                backoff_us: latency_histogram(),
                loop_lag_us: latency_histogram(),
                loop_turn_us: latency_histogram(),
                pong_us: latency_histogram(),
                pong_ready_us: latency_histogram(),
            },
            cqes: Vec::with_capacity(crate::ring::CQ_ENTRIES as usize),
        })
    }

    /// Runs until `stop`; waits for `go` so every shard starts the ramp together (after
    /// the baseline memory figures were read).
    pub fn run(mut self, go: &AtomicBool) -> io::Result<ShardResult> {
        while !go.load(Relaxed) && !self.shared.stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.epoch = Instant::now();
        let rate = self.plan.rate / self.plan.shards as f64;
        let mut last_flush = Instant::now();
        self.arm_probe(sys::monotonic_ns())?;
        // One turn: handle every completion the last wait brought (a ping read there gets
        // its pong queued at once), hand out read buffers, then start what the ramp and the
        // timers allow, and sleep until the next completion or deadline. The wait submits
        // what the turn queued in that order, so pongs go out ahead of new connects.
        while !self.shared.stop.load(Relaxed) {
            let woke = Instant::now();
            self.ring.reap(&mut self.cqes);
            let cqes = std::mem::take(&mut self.cqes);
            for c in &cqes {
                self.complete(*c)?;
            }
            self.cqes = cqes;
            self.serve_readers()?;
            let now = self.now_ns();
            let due = self.ramp(now, rate)?;
            self.fire_timers(now)?;
            if last_flush.elapsed() >= FLUSH_EVERY {
                self.flush();
                last_flush = Instant::now();
            }
            let turn_us = (woke.elapsed().as_micros() as u64).max(1);
            self.result.loop_turn_us.saturating_record(turn_us);
            self.turn_max_us = self.turn_max_us.max(turn_us);
            let wait = self.next_wakeup(self.now_ns(), due);
            self.ring.wait(wait)?;
        }
        self.flush();
        Ok(self.result)
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: jitter and keys need spread, not secrecy.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn global_index(&self, i: u32) -> u64 {
        u64::from(i) * self.plan.shards as u64 + self.id as u64
    }

    fn next_wakeup(&self, now: u64, due: Option<u64>) -> Duration {
        let mut next = now + WAIT_MAX.as_nanos() as u64;
        if let Some(due) = due {
            next = next.min(due);
        }
        if !self.connect_ready.is_empty() && self.connecting < CONNECTING_MAX {
            next = now;
        }
        if let Some(Reverse((deadline, _, _))) = self.timers.peek() {
            next = next.min(*deadline);
        }
        Duration::from_nanos(next.saturating_sub(now).max(100_000))
    }

    fn complete(&mut self, cqe: Completion) -> io::Result<()> {
        let (op, gen, i) = split_user_data(cqe.user_data);
        if op == OP_PROBE {
            return self.on_probe();
        }
        let now = self.now_ns();
        let Some(c) = self.conns.get_mut(i as usize) else {
            return Ok(());
        };
        debug_assert_eq!(c.gen, gen, "a connection is reused only once drained");
        debug_assert!(c.inflight > 0);
        c.inflight = c.inflight.saturating_sub(1);
        let state = c.state;
        let res = cqe.result;
        if res < 0 && op != OP_CANCEL && Reason::from_errno(-res) == Reason::Other {
            let code = (i64::from(op) << 32) | i64::from(-res);
            self.shared.last_other.store(code, Relaxed);
        }
        match op {
            OP_SOCKET if res >= 0 => c.flags |= SLOT_OPEN,
            OP_SOCKET | OP_SOCKOPT | OP_BIND | OP_CONNECT if res < 0 => {
                self.fail(i, Reason::from_errno(-res))?
            }
            OP_CONNECT => {
                c.connected_ns = now;
                let us = now.saturating_sub(c.attempt_ns) / 1000;
                if state == State::Connecting {
                    c.state = State::Upgrading;
                }
                self.result.connect_us.saturating_record(us.max(1));
            }
            OP_SEND_UPGRADE => {
                c.out = None;
                if res < 0 {
                    self.fail(i, Reason::from_errno(-res))?;
                }
            }
            OP_SEND => {
                c.out = None;
                self.pong_done(i, gen, res >= 0, now);
                if res < 0 {
                    self.fail(i, Reason::from_errno(-res))?;
                } else {
                    self.send_waiting_pong(i)?;
                }
            }
            OP_POLL => {
                c.flags &= !POLL_ARMED;
                if res < 0 {
                    self.fail(i, Reason::from_errno(-res))?;
                } else if matches!(state, State::Upgrading | State::Open) {
                    self.want_read.push_back((i, gen, now));
                }
            }
            OP_RECV => self.on_recv(i, res)?,
            OP_CLOSE => c.flags &= !(SLOT_OPEN | CLOSE_SENT),
            _ => {}
        }
        self.settle(i)
    }

    /// Gives waiting readable connections a buffer and a receive.
    fn serve_readers(&mut self) -> io::Result<()> {
        while !self.want_read.is_empty() && !self.free_bufs.is_empty() {
            let Some((i, gen, ready_ns)) = self.want_read.pop_front() else {
                break;
            };
            let c = &self.conns[i as usize];
            if c.gen != gen || !matches!(c.state, State::Upgrading | State::Open) {
                continue;
            }
            self.recv(i, ready_ns)?;
        }
        Ok(())
    }

    /// Reads connection `i`, readable since `ready_ns`.
    fn recv(&mut self, i: u32, ready_ns: u64) -> io::Result<()> {
        let Some(b) = self.free_bufs.pop() else {
            self.want_read.push_back((i, self.conns[i as usize].gen, ready_ns));
            return Ok(());
        };
        self.buf_ready_ns[b as usize] = ready_ns;
        let buf = &mut self.bufs[b as usize];
        let c = &mut self.conns[i as usize];
        c.read_buf = b;
        c.flags |= RECV_IN_FLIGHT;
        c.inflight += 1;
        let entry = opcode::Recv::new(types::Fixed(i), buf.as_mut_ptr(), buf.len() as u32)
            .flags(libc::MSG_DONTWAIT)
            .build()
            .user_data(user_data(OP_RECV, c.gen, i));
        // SAFETY: buffer `b` is taken off the free list until this receive completes, and
        // the pool's boxes never move or drop while the shard runs.
        unsafe { self.ring.push(&[entry]) }
    }

    fn arm_poll(&mut self, i: u32) -> io::Result<()> {
        let c = &mut self.conns[i as usize];
        c.flags |= POLL_ARMED;
        c.inflight += 1;
        let entry = opcode::PollAdd::new(types::Fixed(i), libc::POLLIN as u32)
            .build()
            .user_data(user_data(OP_POLL, c.gen, i));
        // SAFETY: a poll names no memory.
        unsafe { self.ring.push(&[entry]) }
    }

    fn on_recv(&mut self, i: u32, res: i32) -> io::Result<()> {
        let c = &mut self.conns[i as usize];
        c.flags &= !RECV_IN_FLIGHT;
        let readable = matches!(c.state, State::Upgrading | State::Open);
        let b = c.read_buf as usize;
        let buf = std::mem::take(&mut self.bufs[b]);
        let ready_ns = self.buf_ready_ns[b];
        self.reading = PingTimes { ready_ns, read_ns: self.now_ns() };
        let outcome = match res {
            n if n > 0 && readable => {
                self.feed(i, &buf[..n as usize]).map(|()| n as usize == buf.len())
            }
            n if n > 0 => Ok(false),
            0 => Err(Reason::ServerClosed),
            n if -n == libc::EAGAIN => Ok(false),
            n => Err(Reason::from_errno(-n)),
        };
        self.bufs[b] = buf;
        self.free_bufs.push(b as u16);
        let still_readable = matches!(self.conns[i as usize].state, State::Upgrading | State::Open);
        match outcome {
            Err(reason) => self.fail(i, reason),
            Ok(_) if !still_readable => Ok(()),
            // A full buffer: more is probably queued, read again at once.
            Ok(true) => self.recv(i, ready_ns),
            Ok(false) => self.arm_poll(i),
        }
    }

    /// Sends a control frame (the caller checked that no send is in flight).
    fn send(&mut self, i: u32, bytes: Vec<u8>) -> io::Result<()> {
        let c = &mut self.conns[i as usize];
        if c.out.is_some() || c.state != State::Open {
            return Ok(());
        }
        let bytes = Box::new(bytes);
        let entry = opcode::Send::new(types::Fixed(i), bytes.as_ptr(), bytes.len() as u32)
            .build()
            .user_data(user_data(OP_SEND, c.gen, i));
        c.out = Some(bytes);
        c.inflight += 1;
        // SAFETY: the bytes are owned by `conns[i].out` until this send completes.
        unsafe { self.ring.push(&[entry]) }
    }

    /// Ends the current attempt or connection for `reason` (once; later errors of the
    /// same attempt, such as cancelled links, are ignored).
    fn fail(&mut self, i: u32, reason: Reason) -> io::Result<()> {
        let n = self.global_index(i);
        let c = &mut self.conns[i as usize];
        match c.state {
            State::Closing | State::Backoff | State::Dead => return Ok(()),
            State::Open => {
                self.shared.set_up(self.plan.user_bucket(n), self.plan.topic_bucket(n), -1);
            }
            State::Connecting | State::Upgrading => {
                self.connecting = self.connecting.saturating_sub(1);
            }
        }
        self.shared.fail(reason);
        if c.flags & FIRST_DONE == 0 {
            c.flags |= FIRST_DONE;
            self.pending_first_done += 1;
        }
        c.state = State::Closing;
        if !self.pongs_waiting.is_empty() {
            self.pongs_waiting.remove(&i);
        }
        self.settle(i)
    }

    /// Moves a closing connection on: cancel what is in flight, wait for it to drain,
    /// close the slot, then back off (or give up).
    fn settle(&mut self, i: u32) -> io::Result<()> {
        let c = &mut self.conns[i as usize];
        if c.state != State::Closing {
            return Ok(());
        }
        if c.inflight > 0 {
            let open = c.flags & SLOT_OPEN != 0;
            if open && c.flags & (CANCELLED | CLOSE_SENT) == 0 {
                c.flags |= CANCELLED;
                c.inflight += 1;
                let entry =
                    opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fixed(i)).all())
                        .build()
                        .user_data(user_data(OP_CANCEL, c.gen, i));
                // SAFETY: a cancel names no memory.
                return unsafe { self.ring.push(&[entry]) };
            }
            return Ok(());
        }
        if c.flags & SLOT_OPEN != 0 {
            c.flags |= CLOSE_SENT;
            c.inflight += 1;
            let entry = opcode::Close::new(types::Fixed(i))
                .build()
                .user_data(user_data(OP_CLOSE, c.gen, i));
            // SAFETY: a close names no memory.
            return unsafe { self.ring.push(&[entry]) };
        }
        c.held = None;
        c.out = None;
        if !self.plan.reconnect || self.shared.stop.load(Relaxed) {
            c.state = State::Dead;
            return Ok(());
        }
        c.backoffs = (c.backoffs + 1).min(BACKOFF_DOUBLINGS_MAX);
        let gen = c.gen;
        let base = self.plan.backoff_base.as_nanos() as u64;
        let max = self.plan.backoff_max.as_nanos() as u64;
        let cap = base.saturating_mul(1 << c.backoffs).min(max);
        c.state = State::Backoff;
        // Full jitter: uniform over [0, cap).
        let delay = self.random() % cap.max(1);
        self.result.backoff_us.saturating_record((delay / 1000).max(1));
        let deadline = self.now_ns() + delay;
        self.timers.push(Reverse((deadline, i, gen)));
        Ok(())
    }

    fn flush(&mut self) {
        let s = &self.shared;
        s.attempts.fetch_add(std::mem::take(&mut self.pending_attempts), Relaxed);
        s.reconnects.fetch_add(std::mem::take(&mut self.pending_reconnects), Relaxed);
        s.established.fetch_add(std::mem::take(&mut self.pending_established), Relaxed);
        s.first_done.fetch_add(std::mem::take(&mut self.pending_first_done), Relaxed);
        s.add_messages(&std::mem::take(&mut self.counts));
        s.turn_max_us.fetch_max(std::mem::take(&mut self.turn_max_us), Relaxed);
        s.pong_max_us.fetch_max(std::mem::take(&mut self.pong_max_us), Relaxed);
        if !self.live.is_empty() {
            if let Ok(mut live) = s.live_latency.lock() {
                let _ = live.add(&self.live);
            }
            self.live.reset();
        }
    }
}

/// The WebSocket key of connection `n`'s attempt `gen`: derived, not stored, so an
/// upgrading connection needs no room for it.
fn ws_key(n: u64, gen: u32) -> String {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(gen).rotate_left(32);
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    ws::key(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trip() {
        let ud = user_data(OP_RECV, 0x12_3456, 0xdead_beef);
        assert_eq!(split_user_data(ud), (OP_RECV, 0x12_3456, 0xdead_beef));
        assert_eq!(split_user_data(user_data(OP_POLL, 0x1ff_ffff, 7)).1, 0xff_ffff);
    }

    #[test]
    fn an_idle_connection_stays_small() {
        // The per-connection footprint (`loadgen_bytes_per_conn`): measuring the loop and
        // the pongs must not grow it; their state is per shard or per pong in flight.
        assert!(std::mem::size_of::<Conn>() <= 80, "{}", std::mem::size_of::<Conn>());
    }

    #[test]
    fn probe_user_data_names_no_connection() {
        let (op, _, i) = split_user_data(user_data(OP_PROBE, 0, PROBE_INDEX));
        assert_eq!((op, i), (OP_PROBE, u32::MAX));
    }

    #[test]
    fn keys_differ() {
        assert_ne!(ws_key(1, 1), ws_key(1, 2));
        assert_ne!(ws_key(1, 1), ws_key(2, 1));
        assert_eq!(ws_key(5, 9).len(), 24);
    }
}
