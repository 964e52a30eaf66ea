//! A live upgrade, inside one shard (the process-level half: [`crate::handover`]).
//!
//! Old shard, in order:
//! 1. **Start**: stop accepting clients (the listeners stay open: the new process accepts
//!    from the same sockets), send the partition's history log and the start message
//!    (positions and ids continue). Publishes go on: from now on what this shard numbers
//!    and delivers is also forwarded to the new shard ([`forward`]), in order with the
//!    batches.
//! 2. **Move clients**, in batches of at most [`crate::handover::BATCH_MAX`]: freeze only the
//!    batch's connections (cancel their poll and a send waiting on a full socket; a
//!    publish for one is queued and moves with it), and once they are quiet make each
//!    direct descriptor a process fd (IORING_OP_FIXED_FD_INSTALL), send fds and records in
//!    one SCM_RIGHTS message, close the fds, and wait for the ack; only then close the old
//!    slot. From the freeze on, a publish for a connection of the batch is not queued here
//!    but forwarded behind the batch, so the new shard delivers it: exactly once, and a
//!    connection is frozen for one batch's round trip only.
//! 3. **Fence**: once every shard has moved its clients, stop reading admin requests (those
//!    under way complete) and send [`FENCE_ROUNDS`] rounds of [`Msg::Fence`] to every shard,
//!    each round after the previous one came from all; when the last round is in, every
//!    publish accepted here has been delivered or forwarded (a user publish takes two hops,
//!    admin shard → home shard → connection's shard).
//! 4. **Move admin connections**, then send the final message counter and finish.
//!
//! New shard: receives the batches, places them in its fixed-file table in one
//! IORING_OP_FILES_UPDATE (IORING_FILE_INDEX_ALLOC), rebuilds each connection, registers its
//! user and topics, arms its timers and its poll, and acks; forwarded publishes are applied
//! in their place among the batches. It accepts clients once the start message is in, and
//! serves the admin API once the old process is done ([`crate::handover::Hub::admin_go`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use io_uring::{opcode, types};

use super::conn::{stamp, Chunk, Conn, Ident, Kind};
use super::Shard;
use crate::handover::{self, record, Record};
use crate::metrics::{bump, CloseReason};
use crate::proto::ws;
use crate::push::Msg;
use crate::ring::{user_data, Op};

mod batch;
mod channel;
mod export;
mod forward;
mod takeover;

pub(super) use forward::old_id;

/// Rounds of fences: one per mesh hop a publish can take, plus one for a shard's own queue.
const FENCE_ROUNDS: u8 = 3;

/// How long the old shard keeps trying to move connections that are busy, once nothing
/// else is left to move (within `handover_timeout_ms`, how long it moves at all).
const MOVE_DEADLINE_MS: u64 = 30_000;

/// Connections per batch: a batch's connections are frozen from its freeze to its ack, which
/// grows with their number; under SCM_MAX_FD ([`crate::handover::BATCH_MAX`]).
const BATCH_CONNS: usize = 64;

/// Connections per batch on this host: [`BATCH_CONNS`], or SCM_MAX_FD when each core runs
/// more than four shards. Then a round trip waits mostly for the scheduler, whatever the
/// batch's size, and a bigger batch moves more per wait (1,000,000 connections on 53 shards
/// and 2 cores: 41 s in batches of 64).
fn batch_conns(shards: usize, cores: usize) -> usize {
    if shards > 4 * cores {
        handover::BATCH_MAX
    } else {
        BATCH_CONNS
    }
}

/// How long a cluster node's admin connections wait, once frozen, for the store to
/// acknowledge the publishes accepted before.
const STORE_WAIT_MS: u64 = 2_000;

/// How long the clients left with more queued than a batch carries may take to catch up.
const SLOW_WAIT_MS: u64 = 2_000;

/// How long the channel may have no room before the other process counts as stuck.
const CHANNEL_STUCK_MS: u64 = 10_000;

/// How long a batch waits for its frozen connections to be quiet (a cancelled poll or send
/// to complete, a read under way to end); the ones still busy then wait for a later batch.
const FREEZE_WAIT_US: u64 = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Old side: client connections move, then (`admin_turn`) admin ones.
    Moving,
    /// Old side: this shard's clients have moved; waiting for every other shard's.
    ClientsDone,
    /// Old side: admin requests under way finish; nothing more is read.
    Freezing,
    Fencing(u8),
    /// Old side: nothing more to move (the process exits soon).
    Done,
    /// New side: taking connections over; `started` once the start message is in.
    Taking {
        started: bool,
    },
}

struct OutBatch {
    conns: Vec<(u32, u32)>,
    /// False while its frozen connections are becoming quiet; true once they are exported
    /// (their descriptors being installed).
    installing: bool,
    /// When it was frozen (shard clock, µs): the ack ends the longest freeze of its connections.
    frozen_at_us: u64,
    /// Process fds by position in `conns` (-1 until installed, or if the install failed).
    fds: Vec<RawFd>,
    installs_left: usize,
    /// The positions in `conns` that went out, once sent, and when (shard clock, µs).
    sent: Option<Vec<usize>>,
    sent_at_us: u64,
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
    /// Old side: the connections of the batch under way (not read, their sends held).
    frozen: HashSet<u32>,
    /// Old side: admin connections are not read (after every shard's clients moved), since.
    admin_frozen: bool,
    admin_frozen_at_ms: u64,
    /// Old side: what this shard numbers and delivers goes to the new shard too (from the
    /// start message to the end).
    forwarding: bool,
    /// Old side: encoded forwards not sent yet, and whether they wait for the batch that was
    /// exported before them.
    fwd: Vec<u8>,
    fwd_hold: bool,
    /// Old side: users of connections handed over, still in their home shards' registries
    /// (unregistered if the handover reverts).
    kept_users: Vec<(Box<str>, crate::registry::ConnId)>,
    /// Old side: what was queued for exported connections not yet acknowledged, unsealed:
    /// sent after all if the connection comes back.
    side: HashMap<u32, (u32, Vec<Chunk>)>,
    /// Old side: user commands for exported connections not yet acknowledged (forwarded
    /// too): applied here after all if the connection comes back.
    side_commands: HashMap<u32, (u32, batch::HeldCommands)>,
    /// Old side: how long each batch stayed frozen (µs), freeze to ack.
    freezes_us: Vec<u32>,
    /// Messages waiting for room on the channel, in order, with the fds they carry, and since
    /// when the first has waited.
    out_q: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    out_q_since_ms: u64,
    /// Old side: since when a pass found nothing to move now (0: the last one did).
    stalled_since_ms: u64,
    /// Old side: this shard's turn to move its clients has come ([`Shard::my_turn`]).
    turn: bool,
    /// Old side: the empty batch sent behind the history and the start message, and
    /// whether the new shard acknowledged it: it has taken those in and waits for batches,
    /// so the first batch's freeze does not wait for the new process's start.
    probe_seq: u32,
    probed: bool,
    /// Old side: the next step waits for time, not for a completion (a frozen batch's
    /// wait, the descriptor budget, busy connections).
    look_soon: bool,
    /// New side: forwarded pieces received so far.
    fwd_in: Vec<u8>,
    /// New side: the connections taken over, by their old id, and their ids here; kept
    /// until a moment after the old process is done (forwarded deliveries name them).
    moved: HashMap<u64, (u32, u32)>,
    moved_in: HashSet<(u32, u32)>,
    moved_clear_at_ms: u64,
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
            frozen: HashSet::new(),
            admin_frozen: false,
            admin_frozen_at_ms: 0,
            forwarding: false,
            fwd: Vec::new(),
            fwd_hold: false,
            freezes_us: Vec::new(),
            side: HashMap::new(),
            side_commands: HashMap::new(),
            kept_users: Vec::new(),
            out_q: VecDeque::new(),
            out_q_since_ms: 0,
            stalled_since_ms: 0,
            turn: false,
            probe_seq: 0,
            probed: false,
            look_soon: false,
            fwd_in: Vec::new(),
            moved: HashMap::new(),
            moved_in: HashSet::new(),
            moved_clear_at_ms: 0,
        }
    }

    /// The old side is handing over: connections are not read, accepts stay off.
    fn out_active(&self) -> bool {
        self.moving() || self.phase == Phase::Done
    }

    /// Whether the loop should look again within a millisecond rather than sleep a tick.
    pub fn hurried(&self) -> bool {
        // While a batch is on its way, its completions and the ack wake the loop.
        !self.out_q.is_empty()
            || self.look_soon
            || matches!(self.phase, Phase::ClientsDone | Phase::Freezing | Phase::Fencing(_))
    }

    /// Old side: connections are moving (admin commands that act on connections wait).
    pub fn moving(&self) -> bool {
        matches!(
            self.phase,
            Phase::Moving | Phase::ClientsDone | Phase::Freezing | Phase::Fencing(_)
        )
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

/// A frozen connection whose receive or held send has still to complete.
fn quiet_soon(c: &Conn) -> bool {
    c.recv_armed || c.cancel_armed || c.outbox.as_ref().is_some_and(|o| o.in_flight)
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
            // The admin API serves on until every shard's clients have moved.
            return admin && !s.admin_frozen && s.phase != Phase::Done;
        }
        if admin && self.shared.hub.admin_held() {
            return false;
        }
        !matches!(s.phase, Phase::Taking { started: false }) || admin
    }

    /// Whether a connection may move between this process's shards ([`super::placement`]):
    /// not while a live upgrade is asked for or under way, on either side, so that every
    /// connection is in some shard's slab when the handover sweeps them.
    pub(super) fn handover_allows_placement(&self) -> bool {
        self.handover.phase == Phase::Idle && !self.shared.hub.out_go.load(Ordering::SeqCst)
    }

    /// Whether a connection's poll stays unarmed: the old side reads nothing of the batch
    /// under way, and no admin request once admin connections freeze (except those already
    /// under way).
    pub(super) fn handover_freezes(&self, slot: u32, conn: &Conn) -> bool {
        let s = &self.handover;
        s.out_active()
            && match conn.kind {
                Kind::Ws | Kind::Echo | Kind::Sse => s.frozen.contains(&slot),
                Kind::Admin => s.admin_frozen && conn.partial.is_none(),
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
        if self.handover.moving() && self.now_ms >= self.handover.deadline_ms {
            let ms = self.shared.cfg.limits.handover_timeout_ms;
            tracing::error!(
                shard = self.id,
                "handover: still moving after handover_timeout_ms ({ms} ms); calling it off"
            );
            self.channel_failed();
        }
        match self.handover.phase {
            Phase::Idle => {
                if self.shared.hub.out_go.load(Ordering::Acquire)
                    && !self.shared.hub.out_failed.load(Ordering::Acquire)
                {
                    self.begin_handover();
                }
            }
            Phase::Moving => self.move_some(),
            Phase::ClientsDone => {
                let done = self.shared.hub.clients_done.load(Ordering::Acquire);
                if done >= self.shards() {
                    self.freeze_admin();
                }
            }
            Phase::Freezing => {
                // On a cluster node the bridge's fence comes first: behind it, everything
                // the bridge handed this shard from the store (`freeze_admin`).
                let bridge_fenced = !self.waits_for_bridge() || self.handover.fences[0] >= 1;
                if self.admin_quiet() && bridge_fenced {
                    self.send_fence(1);
                }
            }
            Phase::Fencing(round) => {
                let others = self.shards() as u32 - 1;
                if self.handover.fences[round as usize] >= others {
                    if round < FENCE_ROUNDS {
                        self.send_fence(round + 1);
                    } else if self.store_publishes_pending() {
                        // Publishes accepted here reach the store before the admin
                        // connections move: a publisher's next one, accepted by the new
                        // process, is stored after them.
                    } else {
                        self.handover.admin_turn = true;
                        self.handover.phase = Phase::Moving;
                    }
                }
            }
            Phase::Done | Phase::Taking { .. } => {}
        }
        if !self.handover.fwd_hold && !self.handover.fwd.is_empty() {
            self.flush_forwards();
        }
        if !self.handover.out_q.is_empty() {
            self.flush_channel();
        }
        if self.handover.phase == Phase::Done && self.handover.out_q.is_empty() {
            // Done once the last message left: the process exits after every shard is.
            self.shared.hub.out_done[self.id].store(true, Ordering::Release);
        }
        if self.handover.moved_clear_at_ms != 0 && self.now_ms >= self.handover.moved_clear_at_ms {
            self.handover.moved = HashMap::new();
            self.handover.moved_in = HashSet::new();
            self.handover.moved_clear_at_ms = 0;
            // Once more, should its rings have outlived it a moment.
            self.restart_accepts();
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
        self.handover.deadline_ms = self.now_ms + self.shared.cfg.limits.handover_timeout_ms;
        if self.shared.cfg.limits.conn_lifetime_ms_max > 0 {
            self.handover.lifetimes = self
                .wheel
                .entries()
                .filter(|(key, _)| key & super::lifecycle::LIFETIME_TIMER != 0)
                .map(|(key, at)| (key & !super::lifecycle::LIFETIME_TIMER, at))
                .collect();
        }
        self.end_status_streams();
        self.pause_accepts(false);
        self.start_moving();
    }

    /// Every shard's clients have moved: admin requests under way finish, nothing more is
    /// read or accepted on the admin API (it waits in the sockets for the new process).
    fn freeze_admin(&mut self) {
        self.handover.admin_frozen = true;
        self.handover.admin_frozen_at_ms = self.now_ms;
        self.handover.phase = Phase::Freezing;
        self.pause_accepts(true);
        if self.waits_for_bridge() {
            // The bridge stops handing this node the store's messages, where the new
            // process reads on, and answers with a fence (round 0) behind the last one.
            let attempt = self.shared.hub.attempt.load(Ordering::Acquire);
            let bridge = self.mesh.bridge().expect("store mode has a bridge");
            self.send_mesh(bridge, Msg::Fence { round: 0, attempt });
        }
        let idle: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|&(s, _, c)| c.is_open() && c.poll_armed && self.handover_freezes(s, c))
            .map(|(s, g, _)| (s, g))
            .collect();
        for (slot, generation) in idle {
            self.handover.polls_cancelled.insert(slot);
            self.cancel_op(Op::Poll, generation, slot);
        }
    }

    /// Old side, on a cluster node with history: the cluster store delivers every publish,
    /// through the bridge, so the bridge stops at a known position before the fences.
    fn waits_for_bridge(&self) -> bool {
        self.shared.store_numbers() && self.mesh.bridge().is_some()
    }

    /// Old side, on a cluster node with history: publishes accepted here that the store has
    /// not acknowledged yet, for up to [`STORE_WAIT_MS`] after the admin API froze.
    fn store_publishes_pending(&self) -> bool {
        let pending = self
            .shared
            .cluster
            .as_ref()
            .is_some_and(|c| c.store_pending.load(Ordering::Relaxed) > 0 && c.store_usable());
        pending
            && self.waits_for_bridge()
            && self.now_ms < self.handover.admin_frozen_at_ms + STORE_WAIT_MS
    }

    /// Whether a connection's next send waits: while connections move, a frozen one's
    /// queued bytes stay queued (they move with it), unless it was refused and stays here.
    pub(super) fn handover_holds_sends(&self, slot: u32, conn: &Conn) -> bool {
        self.handover.hurried()
            && !self.handover.refused.contains(&slot)
            && self.handover_freezes(slot, conn)
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

    /// Cancels the accepts of the client (or admin) listeners; the listeners stay open (the
    /// new process accepts from them).
    fn pause_accepts(&mut self, admin: bool) {
        for l in self.listeners.iter().filter(|l| l.admin == admin) {
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
        if !self.send_history() || !self.send_start() {
            return;
        }
        self.handover.batch_seq += 1;
        self.handover.probe_seq = self.handover.batch_seq;
        let mut probe = Vec::new();
        record::encode_batch(self.handover.probe_seq, &[], &mut probe);
        if !self.channel_send(&probe, Vec::new()) {
            return;
        }
        self.handover.phase = Phase::Moving;
        self.handover.forwarding = true;
    }

    /// The history top, what this shard heard of the other partitions, and its message
    /// counter: at the start, and again at the end (publishes went on meanwhile).
    fn send_start(&mut self) -> bool {
        let start = record::Start {
            top: self.history.top(),
            heard: (0..self.shards()).map(|p| self.heard.get(p)).collect(),
            msg_seq: self.msg_seq,
        };
        let mut out = Vec::new();
        record::encode_start(&start, &mut out);
        self.channel_send(&out, Vec::new())
    }

    /// The partition's history log, in pieces of one message each, so resumes from before
    /// the upgrade find their messages; what is numbered after it is forwarded.
    fn send_history(&mut self) -> bool {
        // On the clock the log's entries carry (the shards' common clock, microseconds).
        let log = self.history.export(self.precise_us());
        self.send_pieces(record::MSG_HISTORY, &log)
    }

    /// The handover is off (this shard's channel failed, or another's): serve on as before
    /// it began. Connections not yet acknowledged are thawed and read again, held sends go
    /// on, accepts come back (`handover_allows_accept`), and another upgrade may be tried.
    fn revert_handover(&mut self) {
        if let Some(b) = self.handover.batch.take() {
            self.give_fds(b.conns.len());
        }
        // Exported and not acknowledged: they are ours again, with what they missed.
        self.handover.exported.clear();
        let held: Vec<(u32, u32, Vec<Chunk>)> = std::mem::take(&mut self.handover.side)
            .into_iter()
            .map(|(slot, (generation, held))| (slot, generation, held))
            .collect();
        let commands = std::mem::take(&mut self.handover.side_commands);
        for (user, id) in std::mem::take(&mut self.handover.kept_users) {
            self.unregister_user(&user, id);
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
        for (slot, generation, chunks) in held {
            for chunk in chunks {
                self.queue(slot, generation, chunk);
            }
        }
        for (slot, (generation, commands)) in commands {
            self.apply_held_commands(slot, generation, commands);
        }
        self.resume_sends();
    }

    /// New side: the old shard's history top, what it heard, and its message counter (at
    /// the start, and again at the end).
    fn on_start(&mut self, body: &[u8]) {
        let Some(s) = record::decode_start(body) else { return };
        self.history.continue_after(s.top);
        for (part, &seq) in s.heard.iter().enumerate() {
            if part < self.shards() {
                self.heard.advance(part, seq);
            }
        }
        self.msg_seq = self.msg_seq.max(s.msg_seq);
    }
}
