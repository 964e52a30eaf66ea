//! A live upgrade, inside one shard (the process-level half: [`crate::handover`]).
//!
//! Old shard, in order:
//! 1. **Freeze**: stop accepting (the listeners stay open: the new process accepts from the
//!    same sockets), cancel every idle connection's poll, and let busy ones finish the bytes
//!    they are handling; nothing is read after that. Admin requests under way complete.
//! 2. **Fence**: once no admin request of this shard is left, send [`FENCE_ROUNDS`] rounds of
//!    [`Msg::Fence`] to every shard, each round after the previous one came from all; when
//!    the last round is in, every publish accepted before the freeze has been delivered here
//!    (a user publish takes two hops, admin shard → home shard → connection's shard).
//! 3. **Move**: tell the new shard the history top, then in batches of at most
//!    [`crate::handover::BATCH_MAX`]: make each idle connection's direct descriptor a
//!    process fd (IORING_OP_FIXED_FD_INSTALL), send fds and records in one SCM_RIGHTS
//!    message, close the fds, and wait for the ack; only then close the old slot. Client
//!    connections go first, admin connections last.
//!
//! New shard: receives the batches, places them in its fixed-file table in one
//! IORING_OP_FILES_UPDATE (IORING_FILE_INDEX_ALLOC), rebuilds each connection, registers its
//! user and topics, arms its timers and its poll, and acks. It accepts clients once the start
//! message is in (history positions continue), and serves the admin API once the old process
//! is done ([`crate::handover::Hub::admin_go`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use io_uring::{opcode, types};

use super::conn::{stamp, Chunk, Conn, Ident, Kind};
use super::Shard;
use crate::handover::{self, record, Record};
use crate::metrics::{bump, CloseReason};
use crate::proto::ws;
use crate::push::Msg;
use crate::ring::{user_data, Op};

mod export;
mod takeover;

/// Rounds of fences: one per mesh hop a publish can take, plus one for a shard's own queue.
const FENCE_ROUNDS: u8 = 3;

/// How long the old shard keeps trying to move connections that are busy.
const MOVE_DEADLINE_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Old side.
    Freezing,
    Fencing(u8),
    Moving,
    /// Old side: nothing more to move (the process exits soon).
    Done,
    /// New side: taking connections over; `started` once the start message is in.
    Taking {
        started: bool,
    },
}

struct OutBatch {
    conns: Vec<(u32, u32)>,
    /// Process fds by position in `conns` (-1 until installed, or if the install failed).
    fds: Vec<RawFd>,
    installs_left: usize,
    /// The positions in `conns` that went out, once sent.
    sent: Option<Vec<usize>>,
    seq: u32,
}

struct InBatch {
    seq: u32,
    records: Vec<Record>,
    /// The received fds; the kernel writes the fixed-file slots it chose over them.
    slots: Box<[RawFd]>,
    /// Closed once the slots hold the files.
    owned: Vec<OwnedFd>,
}

/// One shard's part of a live upgrade.
pub struct State {
    phase: Phase,
    chan: Option<OwnedFd>,
    chan_armed: bool,
    /// Fences received, by round.
    fences: [u32; FENCE_ROUNDS as usize + 1],
    deadline_ms: u64,
    /// Liveness-clock ms of the freeze: the ages a record carries are taken then, since a
    /// frozen connection is not read and its client cannot be heard.
    frozen_at_ms: u64,
    /// Old side.
    exported: HashSet<u32>,
    refused: HashSet<u32>,
    batch: Option<OutBatch>,
    batch_seq: u32,
    cursor: u32,
    /// Admin connections move once no client connection is left to move.
    admin_turn: bool,
    /// New side.
    installing: Option<InBatch>,
    queued: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    held_admin: Vec<(u32, u32)>,
    buf: Vec<u8>,
    /// Old side: connections whose send waiting on a full socket was cancelled by the
    /// freeze; their queued bytes move with them.
    sends_cancelled: HashSet<u32>,
    /// Old side: connections whose poll the freeze cancelled.
    polls_cancelled: HashSet<u32>,
    /// New side: pieces of the old partition's history log received so far.
    history_in: Vec<u8>,
    /// Old side: each connection's lifetime deadline (shard ms) by timer key, read from the
    /// timer wheel at the freeze (nothing is kept per connection for this otherwise).
    lifetimes: HashMap<u64, u64>,
}

impl State {
    /// A new process's shard gets its channel from the hub at start.
    pub fn new(chan: Option<OwnedFd>) -> State {
        let phase = if chan.is_some() { Phase::Taking { started: false } } else { Phase::Idle };
        State {
            phase,
            chan,
            chan_armed: false,
            fences: [0; FENCE_ROUNDS as usize + 1],
            deadline_ms: 0,
            frozen_at_ms: 0,
            exported: HashSet::new(),
            refused: HashSet::new(),
            batch: None,
            batch_seq: 0,
            cursor: 0,
            admin_turn: false,
            installing: None,
            queued: VecDeque::new(),
            held_admin: Vec::new(),
            buf: Vec::new(),
            sends_cancelled: HashSet::new(),
            polls_cancelled: HashSet::new(),
            history_in: Vec::new(),
            lifetimes: HashMap::new(),
        }
    }

    /// The old side is handing over: connections are not read, accepts stay off.
    fn out_active(&self) -> bool {
        matches!(self.phase, Phase::Freezing | Phase::Fencing(_) | Phase::Moving | Phase::Done)
    }

    /// Whether the loop should look again within a millisecond rather than sleep a tick.
    pub fn hurried(&self) -> bool {
        matches!(self.phase, Phase::Freezing | Phase::Fencing(_) | Phase::Moving)
    }

    pub fn is_exported(&self, slot: u32) -> bool {
        !self.exported.is_empty() && self.exported.contains(&slot)
    }
}

/// What the sweep found of one connection.
enum Movable {
    Now,
    /// Busy (bytes in flight, a frame half read, a handshake, a replay): look again later.
    Later,
    Never,
}

fn kind_code(kind: Kind) -> Option<u8> {
    Some(match kind {
        Kind::Ws => 1,
        Kind::Echo => 2,
        Kind::Sse => 3,
        Kind::Admin => 4,
        Kind::Handshake | Kind::Poll => return None,
    })
}

impl Shard {
    /// Whether accepts may be armed on a listener now.
    pub(super) fn handover_allows_accept(&self, admin: bool) -> bool {
        let s = &self.handover;
        if s.out_active() {
            return false;
        }
        if admin && self.shared.hub.admin_held() {
            return false;
        }
        !matches!(s.phase, Phase::Taking { started: false }) || admin
    }

    /// Whether a connection's poll stays unarmed: the old side reads nothing once frozen,
    /// except admin requests already under way.
    pub(super) fn handover_freezes(&self, conn: &Conn) -> bool {
        self.handover.out_active()
            && match conn.kind {
                Kind::Ws | Kind::Echo | Kind::Sse => true,
                Kind::Admin => conn.partial.is_none(),
                Kind::Handshake | Kind::Poll => false,
            }
    }

    /// A poll ended by the freeze's cancel (true): not an error, even when it completes
    /// after a failed handover reverted.
    pub(super) fn handover_cancelled_poll(&mut self, slot: u32, result: i32) -> bool {
        result == -libc::ECANCELED
            && (self.handover.polls_cancelled.remove(&slot) || self.handover.out_active())
    }

    pub(super) fn on_fence(&mut self, round: u8, attempt: u32) {
        if attempt != self.shared.hub.attempt.load(Ordering::Acquire) {
            return;
        }
        if let Some(n) = self.handover.fences.get_mut(round as usize) {
            *n += 1;
        }
    }

    /// One step of the handover, every loop turn.
    pub(super) fn drive_handover(&mut self) {
        if self.handover.out_active() && self.shared.hub.out_failed.load(Ordering::Acquire) {
            self.revert_handover();
        }
        match self.handover.phase {
            Phase::Idle => {
                if self.shared.hub.out_go.load(Ordering::Acquire)
                    && !self.shared.hub.out_failed.load(Ordering::Acquire)
                {
                    self.begin_handover();
                }
            }
            Phase::Freezing => {
                if self.admin_quiet() {
                    self.send_fence(1);
                }
            }
            Phase::Fencing(round) => {
                let others = self.shards() as u32 - 1;
                if self.handover.fences[round as usize] >= others {
                    if round < FENCE_ROUNDS {
                        self.send_fence(round + 1);
                    } else {
                        self.start_moving();
                    }
                }
            }
            Phase::Moving => self.move_some(),
            Phase::Done | Phase::Taking { .. } => {}
        }
        // New side: admin connections taken over wait for the old process to finish.
        if !self.handover.held_admin.is_empty() && !self.shared.hub.admin_held() {
            for (slot, generation) in std::mem::take(&mut self.handover.held_admin) {
                self.arm_poll(slot, generation);
            }
        }
        if self.handover.chan.is_some() && !self.handover.chan_armed {
            self.arm_channel();
        }
    }

    fn begin_handover(&mut self) {
        let chan = self.shared.hub.out.lock().unwrap_or_else(|e| e.into_inner())[self.id].take();
        let Some(chan) = chan else { return };
        self.shared.hub.out_active[self.id].store(true, Ordering::Release);
        self.handover.chan = Some(chan);
        self.handover.phase = Phase::Freezing;
        self.handover.deadline_ms = self.now_ms + MOVE_DEADLINE_MS;
        self.handover.frozen_at_ms = self.live.now_ms;
        if self.shared.cfg.limits.conn_lifetime_ms_max > 0 {
            self.handover.lifetimes = self
                .wheel
                .entries()
                .filter(|(key, _)| key & super::lifecycle::LIFETIME_TIMER != 0)
                .map(|(key, at)| (key & !super::lifecycle::LIFETIME_TIMER, at))
                .collect();
        }
        self.end_status_streams();
        self.pause_accepts();
        let idle: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, _, c)| c.is_open() && c.poll_armed && self.handover_freezes(c))
            .map(|(s, g, _)| (s, g))
            .collect();
        for (slot, generation) in idle {
            self.handover.polls_cancelled.insert(slot);
            self.cancel_op(Op::Poll, generation, slot);
        }
        // A send waiting on a client that does not read would hold its connection back: it
        // is cancelled (it has sent nothing: a send that sent some completes at once), and the
        // queued bytes move with the connection.
        let sending: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, _, c)| c.is_open() && self.handover_freezes(c))
            .filter(|(_, _, c)| c.outbox.as_ref().is_some_and(|o| o.in_flight))
            .map(|(s, g, _)| (s, g))
            .collect();
        for (slot, generation) in sending {
            self.handover.sends_cancelled.insert(slot);
            self.cancel_op(Op::Send, generation, slot);
        }
    }

    /// Whether a connection's next send waits: while connections move, a frozen one's
    /// queued bytes stay queued (they move with it), unless it was refused and stays here.
    pub(super) fn handover_holds_sends(&self, slot: u32, conn: &Conn) -> bool {
        self.handover.hurried()
            && !self.handover.refused.contains(&slot)
            && self.handover_freezes(conn)
    }

    /// A send completed with `ECANCELED` because the freeze cancelled it (true): nothing was
    /// sent, and the bytes wait for the move (or for the handover's end).
    pub(super) fn handover_cancelled_send(&mut self, slot: u32, result: i32) -> bool {
        result == -libc::ECANCELED && self.handover.sends_cancelled.remove(&slot)
    }

    /// Sends held by the freeze go on (the handover ended, or refused these connections).
    fn resume_sends(&mut self) {
        let held: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, _, c)| c.is_open() && c.outbox.as_ref().is_some_and(|o| !o.in_flight))
            .map(|(s, g, _)| (s, g))
            .collect();
        for (slot, generation) in held {
            if !self.handover.is_exported(slot) {
                self.submit_send(slot, generation);
            }
        }
    }

    /// Cancels every accept; the listeners stay open (the new process accepts from them).
    fn pause_accepts(&mut self) {
        for l in &self.listeners {
            let Some(sock) = l.sock.as_ref() else { continue };
            let builder = types::CancelBuilder::fd(types::Fd(sock.as_raw_fd())).all();
            let entry = opcode::AsyncCancel2::new(builder).build().user_data(user_data(
                Op::Cancel,
                0,
                u32::MAX,
            ));
            // SAFETY: a cancel names no user memory.
            unsafe { self.ring.push(&entry) };
        }
    }

    /// No admin request of this shard is being read or handled.
    fn admin_quiet(&self) -> bool {
        self.conns.iter().all(|(_, _, c)| {
            c.kind != Kind::Admin || !c.is_open() || (!c.in_flight_read() && c.partial.is_none())
        })
    }

    fn send_fence(&mut self, round: u8) {
        self.handover.phase = Phase::Fencing(round);
        let me = self.id;
        for to in (0..self.shards()).filter(|&s| s != me) {
            let attempt = self.shared.hub.attempt.load(Ordering::Acquire);
            self.send_mesh(to, Msg::Fence { round, attempt });
        }
    }

    fn start_moving(&mut self) {
        if !self.send_history() {
            return;
        }
        let start = record::Start {
            top: self.history.top(),
            heard: (0..self.shards()).map(|p| self.heard.get(p)).collect(),
            msg_seq: self.msg_seq,
        };
        let mut out = Vec::new();
        record::encode_start(&start, &mut out);
        if !self.channel_send(&out, &[]) {
            return;
        }
        self.handover.phase = Phase::Moving;
    }

    /// The partition's history log, in pieces of one message each (publishes are paused and
    /// fenced: it is final), so resumes from before the upgrade find their messages.
    fn send_history(&mut self) -> bool {
        // On the clock the log's entries carry (the shards' common clock, microseconds).
        let log = self.history.export(self.precise_us());
        let pieces = log.len().div_ceil(handover::BATCH_BYTES_MAX).max(1);
        for (i, piece) in log.chunks(handover::BATCH_BYTES_MAX).enumerate() {
            let mut msg = Vec::with_capacity(piece.len() + 2);
            msg.extend_from_slice(&[record::MSG_HISTORY, (i + 1 == pieces) as u8]);
            msg.extend_from_slice(piece);
            if !self.channel_send(&msg, &[]) {
                return false;
            }
        }
        true
    }

    fn movable(&self, slot: u32, generation: u32, conn: &Conn) -> Movable {
        if !conn.is_open() || self.handover.refused.contains(&slot) {
            return Movable::Never;
        }
        let Some(_) = kind_code(conn.kind) else {
            return if conn.kind == Kind::Handshake { Movable::Later } else { Movable::Never };
        };
        // An established TLS session moves with its record state; one that failed does not.
        let tls_stuck =
            self.tls.has(slot, generation) && self.tls.export(slot, generation).is_none();
        if tls_stuck {
            return Movable::Never;
        }
        if (conn.kind == Kind::Admin) != self.handover.admin_turn {
            return Movable::Later;
        }
        let busy = conn.in_flight()
            || conn.partial.is_some()
            || conn.ws.handover_byte().is_none()
            || self.resuming.contains_key(&slot);
        if busy {
            Movable::Later
        } else {
            Movable::Now
        }
    }

    /// Old side: starts the next batch, or finishes when nothing is left.
    fn move_some(&mut self) {
        if self.handover.batch.is_some() {
            return;
        }
        // Descriptors for this batch, from the process's budget; none left: look again
        // next turn, once other shards' batches are acknowledged.
        let Some(allowed) = self.take_fds(handover::BATCH_MAX) else { return };
        let mut picked = Vec::new();
        let mut later = 0usize;
        let mut too_big = Vec::new();
        // A batch is one SOCK_SEQPACKET message: its records stay under BATCH_BYTES_MAX.
        let mut bytes = 0usize;
        let bound = self.conns.slot_bound();
        let mut slot = self.handover.cursor;
        while slot < bound && picked.len() < allowed {
            if let Some((generation, conn)) = self.conns.get_at(slot) {
                if !self.handover.exported.contains(&slot) {
                    match self.movable(slot, generation, conn) {
                        Movable::Now => {
                            let cost = self.record_bytes(slot, generation, conn);
                            if cost > handover::BATCH_BYTES_MAX {
                                too_big.push((slot, generation));
                            } else if bytes + cost > handover::BATCH_BYTES_MAX {
                                break;
                            } else {
                                bytes += cost;
                                picked.push((slot, generation));
                            }
                        }
                        Movable::Later => later += 1,
                        Movable::Never => {}
                    }
                }
            }
            slot += 1;
        }
        // More queued than one message carries: it stays, sends on, and is closed with a
        // goaway at the end (its client reconnects to the new process).
        for (s, g) in too_big {
            self.thaw(s, g);
        }
        self.give_fds(allowed - picked.len());
        let wrapped = slot >= bound;
        self.handover.cursor = if wrapped { 0 } else { slot };
        if picked.is_empty() {
            if !wrapped {
                return;
            }
            if later > 0 && self.now_ms < self.handover.deadline_ms {
                // Busy ones: look again; the admin connections' turn waits for them.
                let clients_busy = self.conns.iter().any(|(s, g, c)| {
                    c.kind != Kind::Admin
                        && matches!(self.movable(s, g, c), Movable::Later)
                        && !self.handover.exported.contains(&s)
                });
                if !clients_busy {
                    self.handover.admin_turn = true;
                }
                return;
            }
            if !self.handover.admin_turn {
                self.handover.admin_turn = true;
                return;
            }
            self.handover.phase = Phase::Done;
            self.shared.hub.out_done[self.id].store(true, Ordering::Release);
            return self.resume_sends();
        }
        for &(slot, generation) in &picked {
            self.handover.exported.insert(slot);
            let fd = self.conns.get(slot, generation).map_or(0, |c| c.fd);
            let entry = opcode::FixedFdInstall::new(types::Fixed(fd), 0)
                .build()
                .user_data(user_data(Op::FdInstall, generation, slot));
            // SAFETY: the install names no user memory; its answer is the completion's result.
            unsafe { self.ring.push(&entry) };
        }
        self.handover.batch_seq += 1;
        self.handover.batch = Some(OutBatch {
            fds: vec![-1; picked.len()],
            installs_left: picked.len(),
            conns: picked,
            sent: None,
            seq: self.handover.batch_seq,
        });
    }

    pub(super) fn on_fd_install(&mut self, slot: u32, generation: u32, result: i32) {
        let Some(b) = self.handover.batch.as_mut() else {
            if result >= 0 {
                // SAFETY: the install made this fd for us and nothing else holds it.
                unsafe { libc::close(result) };
            }
            return;
        };
        if let Some(i) = b.conns.iter().position(|&c| c == (slot, generation)) {
            b.fds[i] = result.max(-1);
            b.installs_left -= 1;
        }
        if b.installs_left == 0 && b.sent.is_none() {
            self.send_batch();
        }
    }

    /// Takes up to `want` descriptors from the process's budget; None when it is spent.
    fn take_fds(&self, want: usize) -> Option<usize> {
        let free = &self.shared.hub.fds_free;
        let mut have = free.load(Ordering::Acquire);
        loop {
            let n = have.min(want as i64);
            if n <= 0 {
                return None;
            }
            match free.compare_exchange_weak(have, have - n, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(n as usize),
                Err(now) => have = now,
            }
        }
    }

    fn give_fds(&self, n: usize) {
        self.shared.hub.fds_free.fetch_add(n as i64, Ordering::AcqRel);
    }

    fn send_batch(&mut self) {
        let Some(mut b) = self.handover.batch.take() else { return };
        let mut records = Vec::new();
        let mut fds = Vec::new();
        let mut sent = Vec::new();
        for (i, &(slot, generation)) in b.conns.iter().enumerate() {
            let rec = if b.fds[i] >= 0 { self.record_of(slot, generation) } else { None };
            match rec {
                Some(r) => {
                    records.push(r);
                    fds.push(b.fds[i]);
                    sent.push(i);
                }
                None => self.thaw(slot, generation),
            }
        }
        let mut out = Vec::new();
        record::encode_batch(b.seq, &records, &mut out);
        let ok = records.is_empty() || self.channel_send(&out, &fds);
        for &fd in &b.fds {
            if fd >= 0 {
                // SAFETY: fds from our installs; the message holds its own references.
                unsafe { libc::close(fd) };
            }
        }
        if !ok || records.is_empty() {
            // A failed send reverted the whole handover (`channel_failed`): every connection
            // is thawed already, and this batch's are no exception.
            return self.give_fds(b.conns.len());
        }
        b.sent = Some(sent);
        self.handover.batch = Some(b);
    }

    /// A connection the new process did not take stays here, unread; the shutdown at the
    /// end closes it with a goaway, so its client reconnects (to the new process).
    fn thaw(&mut self, slot: u32, generation: u32) {
        self.handover.exported.remove(&slot);
        self.handover.refused.insert(slot);
        self.submit_send(slot, generation);
    }

    /// Sends one message on the channel (blocking briefly when it is full); false and the
    /// handover is off when the channel failed.
    fn channel_send(&mut self, bytes: &[u8], fds: &[RawFd]) -> bool {
        let Some(chan) = self.handover.chan.as_ref() else { return false };
        for _ in 0..1000 {
            match handover::send_with_fds(chan.as_raw_fd(), bytes, fds, true) {
                Ok(true) => return true,
                Ok(false) => std::thread::sleep(std::time::Duration::from_micros(200)),
                Err(e) => {
                    tracing::error!(shard = self.id, "handover: channel failed: {e}");
                    break;
                }
            }
        }
        self.channel_failed();
        false
    }

    /// The other process is gone or refuses: the old side serves on.
    fn channel_failed(&mut self) {
        self.handover.chan = None;
        match self.handover.phase {
            Phase::Taking { .. } => self.handover.phase = Phase::Idle,
            // Everything here went over; the process exits unless another shard failed
            // (then `drive_handover` sees `out_failed` and reverts this one too).
            Phase::Done => {}
            Phase::Idle => {}
            _ => {
                self.shared.hub.out_failed.store(true, Ordering::Release);
                self.revert_handover();
            }
        }
    }

    /// The handover is off (this shard's channel failed, or another's): serve on as before
    /// it began. Connections not yet acknowledged are thawed and read again, held sends go
    /// on, accepts come back (`handover_allows_accept`), and another upgrade may be tried.
    fn revert_handover(&mut self) {
        if let Some(b) = self.handover.batch.take() {
            self.give_fds(b.conns.len());
        }
        // Their ECANCELED completions may still come: they must not read as errors.
        let sends = std::mem::take(&mut self.handover.sends_cancelled);
        let polls = std::mem::take(&mut self.handover.polls_cancelled);
        self.handover = State::new(None);
        self.handover.sends_cancelled = sends;
        self.handover.polls_cancelled = polls;
        self.shared.hub.out_active[self.id].store(false, Ordering::Release);
        let open: Vec<(u32, u32)> =
            self.conns.iter().filter(|(_, _, c)| c.is_open()).map(|(s, g, _)| (s, g)).collect();
        for (slot, generation) in open {
            self.arm_poll(slot, generation);
        }
        self.resume_sends();
    }

    fn arm_channel(&mut self) {
        let Some(chan) = self.handover.chan.as_ref() else { return };
        let entry = opcode::PollAdd::new(types::Fd(chan.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(user_data(Op::Channel, 0, 0));
        // SAFETY: a poll names no user memory.
        unsafe { self.ring.push(&entry) };
        self.handover.chan_armed = true;
    }

    /// The channel's poll or a batch's installation completed.
    pub(super) fn on_channel(&mut self, what: u32, result: i32) {
        if what == 1 {
            return self.on_installed(result);
        }
        self.handover.chan_armed = false;
        let mut buf = std::mem::take(&mut self.handover.buf);
        buf.resize(handover::BATCH_BYTES_MAX + 64 * 1024, 0);
        while let Some(chan) = self.handover.chan.as_ref() {
            let mut fds = Vec::new();
            match handover::recv_with_fds(chan.as_raw_fd(), &mut buf, &mut fds, true) {
                Ok(None) => break,
                Ok(Some(0)) => {
                    self.channel_failed();
                    break;
                }
                Ok(Some(n)) => self.on_channel_message(&buf[..n], fds),
                Err(e) => {
                    tracing::error!(shard = self.id, "handover: channel failed: {e}");
                    self.channel_failed();
                    break;
                }
            }
        }
        self.handover.buf = buf;
        self.install_next();
    }

    fn on_channel_message(&mut self, msg: &[u8], fds: Vec<OwnedFd>) {
        match (msg.first().copied(), self.handover.phase) {
            (Some(record::MSG_ACK), Phase::Moving) => {
                let Some((seq, taken)) = record::decode_ack(&msg[1..]) else { return };
                self.on_ack(seq, &taken);
            }
            (Some(record::MSG_START), Phase::Taking { .. }) => {
                if let Some(s) = record::decode_start(&msg[1..]) {
                    self.history.continue_after(s.top);
                    for (part, &seq) in s.heard.iter().enumerate() {
                        if part < self.shards() {
                            self.heard.advance(part, seq);
                        }
                    }
                    self.msg_seq = self.msg_seq.max(s.msg_seq);
                }
                self.handover.phase = Phase::Taking { started: true };
            }
            (Some(record::MSG_HISTORY), Phase::Taking { started: false }) if msg.len() >= 2 => {
                self.handover.history_in.extend_from_slice(&msg[2..]);
                if msg[1] == 1 {
                    let log = std::mem::take(&mut self.handover.history_in);
                    if self.history.import(&log, self.precise_us()) {
                        let (messages, bytes) = self.history.usage();
                        let stats = self.stats();
                        stats.history_messages.store(messages as u64, Ordering::Relaxed);
                        stats.history_bytes.store(bytes as u64, Ordering::Relaxed);
                    } else {
                        tracing::warn!(
                            shard = self.id,
                            "takeover: the history log did not import; positions continue, \
                             resumes from before the upgrade get a gap"
                        );
                    }
                }
            }
            (Some(record::MSG_BATCH), Phase::Taking { .. }) => {
                self.handover.queued.push_back((msg.to_vec(), fds));
            }
            _ => {}
        }
    }

    fn on_ack(&mut self, seq: u32, taken: &[bool]) {
        let Some(b) = self.handover.batch.take_if(|b| b.seq == seq) else { return };
        self.give_fds(b.conns.len());
        let sent = b.sent.unwrap_or_default();
        let mut moved = 0;
        for (k, &i) in sent.iter().enumerate() {
            let (slot, generation) = b.conns[i];
            if taken.get(k).copied().unwrap_or(false) {
                self.handover.exported.remove(&slot);
                self.hand_over_done(slot, generation);
                moved += 1;
            } else {
                self.thaw(slot, generation);
            }
        }
        bump(&self.stats().handover_sent, moved);
        self.shared.hub.sent.fetch_add(moved, Ordering::Relaxed);
    }

    /// The new process holds the connection: forget it here and close only our slot (the
    /// socket stays open through the new process's).
    fn hand_over_done(&mut self, slot: u32, generation: u32) {
        self.leave_open(slot, generation, CloseReason::Handover);
        if let Some(c) = self.conns.get_mut(slot, generation) {
            c.closing = super::conn::Closing::Cancelling(CloseReason::Handover);
        }
        self.maybe_close(slot, generation);
    }
}
