//! A shard: one pinned thread that owns one io_uring ring, its listeners, its slab registry,
//! its timer wheel and its ends of the mesh.
//!
//! Following one byte in: the multishot accept puts a new socket in the ring's fixed-file
//! table ([`Shard::on_accept`]); a one-shot poll reports it readable; a receive picks a buffer
//! from the shard's provided-buffer ring ([`Shard::on_recv`]); the bytes go to the
//! connection's protocol ([`client`] or [`admin`]) and the buffer goes straight back.
//!
//! Following one publish out: the admin handler ([`admin`]) turns `POST /publish` into a
//! [`Message`]; it is routed ([`Shard::route`]) to the user's home shard or to every shard
//! over the mesh; each shard encodes it once and queues it on each recipient's outbox
//! ([`Shard::deliver`]); sends go out on the fixed descriptors ([`io`]).
//!
//! On a cluster node, [`Shard::route`] also hands the publish to the bridge (the mesh's last
//! participant), which carries it to other nodes (see `crate::cluster`); publishes that come
//! from other nodes enter through the bridge's mesh rings as ordinary `PublishUser`,
//! `PublishTopic` and `PublishAll` messages and are never handed back to it. A user's home
//! shard tells the bridge when the user's first connection on this node comes and its last
//! goes, and every shard answers the bridge's walk of the users it serves ([`registry`]).

pub mod accept;
pub mod admin;
pub mod batch;
pub mod client;
pub mod command;
pub mod conn;
pub mod handover;
pub mod io;
pub mod lifecycle;
pub mod liveness;
pub mod mesh;
pub mod placement;
pub mod poll;
pub mod presence;
pub mod publish;
pub mod registry;
pub mod resume;
pub mod status;
pub mod tls;
pub mod wheel;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::mesh::{MeshEnd, Peer};
use crate::metrics::{bump, CloseReason, ShardStats};
use crate::push::{home_shard, Msg, TopicIndex, UserIndex};
use crate::registry::{ConnId, Registry};
use crate::ring::{parse_user_data, BufRing, Completion, Op, Ring};
use conn::{Closing, Conn, Kind};
use wheel::Wheel;

/// Resolution of the timer wheel, and the longest a shard sleeps with nothing due.
pub const TICK_MS: u64 = 100;
/// Buckets of the timer wheel: 1024 × 100 ms ≈ 102 s before entries wrap around.
pub const WHEEL_SLOTS: usize = 1024;
/// Marks a timer-wheel key as a token expiry, which is independent of the connection's
/// one protocol timer (keys hold generation and slot in the low 56 bits).
pub const EXPIRY_TIMER: u64 = 1 << 63;
/// Fixed-file slots kept beyond the registry's capacity, so a connection over
/// `conns_per_shard_max` can still be accepted long enough to be told 503.
pub const ACCEPT_REFUSE_RESERVE: u32 = 64;
/// Mesh messages handled per loop turn, so a flood from one peer cannot starve the ring.
pub const MESH_BATCH_MAX: usize = 4096;

/// What every shard shares: configuration, counters, the peer table, the shutdown flag.
pub struct Shared {
    pub cfg: Config,
    pub stats: Box<[ShardStats]>,
    pub peers: Arc<[Peer]>,
    /// Keys of the user-id hash that picks home shards.
    pub user_keys: crate::push::UserKeys,
    pub signals: crate::sys::Signals,
    /// Process RSS, refreshed by shard 0 every second, for the memory admission check.
    pub rss_bytes: std::sync::atomic::AtomicU64,
    pub client_auth: crate::auth::ClientAuth,
    /// The admin API's bearer key, when one is configured.
    pub admin_key: Option<Box<[u8]>>,
    /// Set by the main thread once every shard has its ring, so doorbells have a target.
    pub started: AtomicBool,
    /// Shards with nothing left in a shutdown or drain whose mesh backlog is sent
    /// ([`Shard::others_done`]).
    pub emptied: std::sync::atomic::AtomicUsize,
    /// The bridge's counters on a cluster node.
    pub cluster: Option<Arc<crate::cluster::ClusterStats>>,
    /// TLS for every client listener, when `--tls-cert` is given.
    pub tls: Option<crate::tls::TlsServer>,
    /// Users refused at the handshake for a while (`POST /disconnect?ban_s=N`).
    pub bans: command::Bans,
    /// This run's history epoch: positions from another run cannot be resumed. On a
    /// cluster node with history, the store's ([`crate::cluster::store`]), which changes
    /// when the store loses its stream ([`Msg::Epoch`](crate::push::Msg::Epoch)).
    pub history_epoch: std::sync::atomic::AtomicU32,
    /// Where a cluster node's history starts: set when the cluster store numbers messages
    /// (the shards then never number), None on a single node. The logs start after its
    /// `floor()` and the store's messages up to its `top` arrive as backfill before live
    /// ones.
    pub store_start: Option<crate::cluster::store::Start>,
    /// The origin of every shard's clock, so times compare across shards.
    pub clock_origin: Instant,
    /// A live upgrade's shared state ([`crate::handover`]).
    pub hub: crate::handover::Hub,
    /// Connections on their way between two shards of this process ([`placement`]): a live
    /// upgrade's sweep is not done while any is.
    pub placements: std::sync::atomic::AtomicU64,
    /// This node's load and the cluster's live nodes, for `GET /nodes`.
    pub directory: Arc<crate::nodes::Directory>,
}

impl Shared {
    /// The history epoch positions are written with now.
    pub fn epoch(&self) -> u32 {
        self.history_epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the cluster store numbers messages (the shards keep its numbers).
    pub fn store_numbers(&self) -> bool {
        self.store_start.is_some()
    }
}

/// One client or admin listener of this shard.
pub struct Listener {
    /// None once closed (shutdown, drain).
    pub sock: Option<socket2::Socket>,
    pub admin: bool,
    /// The multishot accept is armed.
    pub armed: bool,
    /// Which of the listener's single-shot accepts (used when a per-source connect rate is
    /// set, because only they report the peer's address) are armed, one bit each.
    pub pending: u8,
    /// The multishot accept's cancel was sent (the table is nearly full).
    pub stopping: bool,
    /// Address-less single-shot accepts armed (the table is nearly full).
    pub plain: u16,
    /// WebSocket handshakes on it may agree to permessage-deflate.
    pub compress: bool,
}

impl Listener {
    pub fn new(sock: socket2::Socket, admin: bool, compress: bool) -> Listener {
        Listener {
            sock: Some(sock),
            admin,
            armed: false,
            pending: 0,
            stopping: false,
            plain: 0,
            compress,
        }
    }
}

pub struct Shard {
    pub id: usize,
    /// Declared before `bufs`: fields drop in order, and the ring must be gone (no receive
    /// in flight) before the buffers it names are freed.
    ring: Ring,
    bufs: BufRing,
    /// Where the single-shot accepts write peer addresses, [`accept::ACCEPT_SINGLE`] per
    /// listener; after the ring for the same reason as `bufs`.
    accept_addrs: Box<[accept::AcceptAddr]>,
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    conns: Registry<Conn>,
    wheel: Wheel,
    mesh: MeshEnd,
    users: UserIndex,
    topics: TopicIndex,
    clock: Instant,
    now_ms: u64,
    /// Publishes accepted by this shard; with the shard index it makes message ids unique.
    msg_seq: u64,
    /// The fixed-file table was full: accepts wait until a connection closes or this time.
    accept_blocked_until_ms: u64,
    /// Refused connections whose answer and close are still in flight: each holds a slot.
    refusing: u32,
    /// Deadline of a graceful shutdown in progress.
    shutdown_deadline_ms: Option<u64>,
    /// Topic patterns granted by the tokens of this shard's connections, by slot (with the
    /// generation), for tokens that carry a `topics` claim. Absent with JWT auth: no topics.
    grants: std::collections::HashMap<u32, (u32, Box<[String]>)>,
    /// Browser tabs beyond the first sharing a connection (`?tabs=N`), by slot with the
    /// generation; only connections that said more than one tab have an entry.
    tabs: std::collections::HashMap<u32, (u32, u8)>,
    /// Token expiries (shard ms) by slot, with the generation: a live upgrade carries them.
    expiries: std::collections::HashMap<u32, (u32, u64)>,
    /// When shard 0 last refreshed the shared RSS figure.
    rss_sampled_ms: u64,
    /// Admin requests refused for a missing key: a peer can send them, so they are logged
    /// once per 10 s with a count.
    auth_log: crate::log::Limited,
    /// A paced drain in progress.
    drain: Option<lifecycle::Drain>,
    /// SIGINT arrived: everything was closed at once, whatever drain was under way.
    stopping: bool,
    /// Counted in [`Shared::emptied`] ([`Shard::others_done`]).
    counted_empty: bool,
    /// This shard's share of `accept_rate_per_s_max`.
    bucket: lifecycle::Bucket,
    /// Token buckets per source address, for `accept_rate_per_source_per_s_max`.
    sources: lifecycle::SourceBuckets,
    jitter: lifecycle::Jitter,
    /// Connections whose receive found no free buffer; retried next turn.
    recv_retry: Vec<(u32, u32)>,
    /// TLS sessions of client connections (empty without TLS).
    tls: tls::Sessions,
    /// The liveness clock, loop lag and pending liveness verdicts.
    live: liveness::Liveness,
    /// Outboxes freed since the last second began, and whether a burst of them (a broadcast)
    /// ended without its pages given back yet.
    outboxes_freed: u64,
    release_pending: bool,
    /// This turn took messages from the mesh (`mesh_spin_us` then polls before sleeping).
    mesh_took: bool,
    memory_checked_ms: u64,
    /// This shard's partition of the history, and what it has handled of the others.
    history: crate::history::Log,
    heard: crate::history::Heard,
    /// The top last announced to the other shards ([`Msg::Top`]).
    beacon_top: u64,
    /// Replays waiting for the log to reach their position (cluster store).
    deferred: Vec<(u64, resume::Deferred)>,
    /// The store's top when this node started (or its stream was made anew): replays wait
    /// until the log has the backfill up to it.
    backfill_end: u64,
    history_ticked_ms: u64,
    /// Connections waiting for a replay, by slot.
    resuming: std::collections::HashMap<u32, resume::Pending>,
    /// Long polls being held, by slot, and those that got something this turn.
    polls: std::collections::HashMap<u32, poll::Poll>,
    polls_ready: Vec<(u32, u32)>,
    /// permessage-deflate for every connection of the shard: no context is kept per
    /// connection or between messages ([`crate::proto::deflate`]).
    deflater: crate::proto::deflate::Deflater,
    inflater: crate::proto::deflate::Inflater,
    /// While a batch is routed: what each destination is sent, sent as one
    /// [`Msg::Batch`] at its end ([`batch`]).
    batch: Option<Vec<Vec<Msg>>>,
    /// Presence requests waiting for other shards' answers, by query id.
    queries: std::collections::HashMap<u64, presence::Query>,
    query_seq: u64,
    /// A live upgrade in progress, on either side ([`handover`]).
    handover: handover::State,
    /// Connections on their way to their user's home shard ([`placement`]).
    moves: placement::Moves,
    scratch: Scratch,
}

/// Reused allocations of the loop, so a turn allocates nothing in the steady state.
#[derive(Default)]
struct Scratch {
    completions: Vec<Completion>,
    inbox: Vec<Msg>,
    fired: Vec<(u64, u64)>,
    doorbells: Vec<i32>,
    rx: Vec<u8>,
    /// Plaintext decrypted from `rx` on TLS connections.
    plain: Vec<u8>,
    targets: Vec<(u32, u32)>,
}

impl Scratch {
    /// Entries each reused vector keeps after a burst: a broadcast grows them to one entry
    /// per connection of the shard (tens of bytes per connection in all), which an idle
    /// shard does not need.
    const KEEP: usize = 1024;

    fn shrink(&mut self) {
        self.completions.shrink_to(Self::KEEP);
        self.inbox.shrink_to(Self::KEEP);
        self.fired.shrink_to(Self::KEEP);
        self.doorbells.shrink_to(Self::KEEP);
        self.targets.shrink_to(Self::KEEP);
    }
}

impl Shard {
    pub fn new(
        id: usize,
        ring: Ring,
        bufs: BufRing,
        shared: Arc<Shared>,
        listeners: Vec<Listener>,
        mesh: MeshEnd,
    ) -> Shard {
        assert!(ring.files() > ACCEPT_REFUSE_RESERVE, "server::start sizes the table");
        let capacity = (ring.files() - ACCEPT_REFUSE_RESERVE) as usize;
        let shards = mesh.shards();
        let clock = shared.clock_origin;
        let topics = shared.cfg.history_topic_limits().expect("validated with the config");
        let mut history = crate::history::Log::with_topics(
            resume::history_limits(&shared.cfg, shards),
            topics.into(),
        )
        .in_part(id as u16);
        let mut heard = crate::history::Heard::new(shards);
        let backfill_end = shared.store_start.map_or(0, |s| s.top);
        if let Some(start) = shared.store_start {
            // Positions below the store's first message are valid but theirs are gone;
            // the others are positions at the backfill's end at the least (a connection
            // made now has everything older than that: it asked for nothing).
            history.continue_after(start.floor());
            (0..shards).for_each(|p| heard.advance(p, start.top));
        }
        let l = &shared.cfg.limits;
        let inbound = shared.hub.inbound.lock().unwrap_or_else(|e| e.into_inner())[id].take();
        let deflater = crate::proto::deflate::Deflater::new(
            l.compression_level,
            l.compression_min_bytes as usize,
        );
        Shard {
            id,
            ring,
            bufs,
            shared,
            accept_addrs: (0..listeners.len() * accept::ACCEPT_SINGLE)
                .map(|_| accept::AcceptAddr::default())
                .collect(),
            listeners,
            conns: Registry::new(capacity),
            wheel: Wheel::new(TICK_MS, WHEEL_SLOTS, 0),
            mesh,
            users: UserIndex::default(),
            topics: TopicIndex::default(),
            clock,
            now_ms: 0,
            msg_seq: 0,
            accept_blocked_until_ms: 0,
            refusing: 0,
            shutdown_deadline_ms: None,
            grants: std::collections::HashMap::new(),
            tabs: std::collections::HashMap::new(),
            expiries: std::collections::HashMap::new(),
            drain: None,
            stopping: false,
            counted_empty: false,
            rss_sampled_ms: 0,
            auth_log: crate::log::Limited::new(10_000),
            // Starts full: the first burst up to the rate is admitted.
            bucket: lifecycle::Bucket { tokens: f64::MAX, last_ms: 0 },
            sources: lifecycle::SourceBuckets::default(),
            jitter: lifecycle::Jitter::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    ^ ((id as u64 + 1) << 32),
            ),
            recv_retry: Vec::new(),
            tls: tls::Sessions::default(),
            live: liveness::Liveness::default(),
            outboxes_freed: 0,
            release_pending: false,
            mesh_took: false,
            memory_checked_ms: 0,
            history,
            heard,
            beacon_top: 0,
            deferred: Vec::new(),
            backfill_end,
            history_ticked_ms: 0,
            resuming: std::collections::HashMap::new(),
            polls: std::collections::HashMap::new(),
            polls_ready: Vec::new(),
            deflater,
            inflater: crate::proto::deflate::Inflater::new(),
            batch: None,
            queries: std::collections::HashMap::new(),
            query_seq: 0,
            handover: handover::State::new(inbound),
            moves: placement::Moves::default(),
            scratch: Scratch::default(),
        }
    }

    fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.id]
    }

    fn shards(&self) -> usize {
        self.mesh.shards()
    }

    /// The event loop. Returns when a shutdown has finished or run out of time.
    pub fn run(mut self) -> std::io::Result<()> {
        loop {
            self.read_clock();
            if self.shared.signals.stop.load(Ordering::Relaxed) && !self.stopping {
                self.stopping = true;
                self.begin_shutdown();
            }
            if self.shared.signals.drain.load(Ordering::Relaxed) {
                self.begin_drain(self.shared.cfg.limits.drain_rate_per_s as f64);
            }
            self.drive_drain();
            self.tls_reload_if_asked();
            if self.id == 0 && self.now_ms >= self.rss_sampled_ms + 1000 {
                self.rss_sampled_ms = self.now_ms;
                let rss = crate::sys::rss_bytes();
                self.shared.rss_bytes.store(rss, Ordering::Relaxed);
                let d = &self.shared.directory;
                d.rss_bytes.store(rss, Ordering::Relaxed);
                let clients = self.shared.stats.iter().map(|s| s.clients()).sum();
                d.connections.store(clients, Ordering::Relaxed);
            }
            self.release_memory_after_bursts();
            if self.now_ms >= self.history_ticked_ms + 1000 {
                self.history_ticked_ms = self.now_ms;
                self.history_tick();
            }
            if let Some(deadline) = self.shutdown_deadline_ms {
                let none = self.conns.is_empty() && self.moves.is_empty();
                if (none && self.others_done()) || self.now_ms >= deadline {
                    return Ok(());
                }
            }
            self.arm_accepts();
            self.process_mesh();
            self.drive_handover();
            self.answer_ready_polls();
            self.process_timers();
            self.retry_recvs();
            let backlog = self.mesh.flush_backlog();
            self.ring_doorbells();
            let busy = backlog || !self.recv_retry.is_empty() || self.live.busy();
            let mut wait_ms = if busy {
                0
            } else if self.handover.hurried() {
                1
            } else {
                self.wheel.next_wakeup_ms(self.now_ms).unwrap_or(TICK_MS).clamp(1, TICK_MS)
            };
            if wait_ms > 0 && std::mem::take(&mut self.mesh_took) && self.spin_for_mesh() {
                wait_ms = 0;
            }
            let sleeping = wait_ms > 0 && self.mesh.prepare_sleep();
            let timeout = if sleeping { Duration::from_millis(wait_ms) } else { Duration::ZERO };
            self.live.before_wait(self.now_ms, self.now_ms + timeout.as_millis() as u64);
            self.ring.submit_and_wait(timeout)?;
            if sleeping {
                self.mesh.awake();
            }
            let mut completions = std::mem::take(&mut self.scratch.completions);
            self.ring.drain(&mut completions);
            self.read_clock();
            if let Some((lag_ms, turn_ms)) = self.live.after_wait(self.now_ms) {
                self.stats().loop_lag_ms.store(lag_ms, Ordering::Relaxed);
                self.stats().loop_turn_ms.store(turn_ms, Ordering::Relaxed);
            }
            for c in completions.drain(..) {
                self.complete(c);
            }
            self.bufs.end_turn();
            self.scratch.completions = completions;
        }
    }

    /// Once a second: after a second that freed many outboxes (a broadcast went out) or
    /// drained a mesh backlog (a connect wave's joins and presence), wait for a quiet second,
    /// then give the freed pages back, so a connection's memory after a burst returns to its
    /// idle figure.
    fn release_memory_after_bursts(&mut self) {
        /// Frees in one second that make a burst: far above what pings alone cause.
        const BURST_FREES: u64 = 4096;
        if self.now_ms < self.memory_checked_ms + 1000 {
            return;
        }
        self.memory_checked_ms = self.now_ms;
        self.bufs.adapt();
        let (in_ring, _) = self.bufs.provided();
        self.stats().recv_buffers_in_ring.store(in_ring.into(), Ordering::Relaxed);
        let freed = std::mem::take(&mut self.outboxes_freed);
        if freed >= BURST_FREES || self.mesh.gave_back() {
            self.release_pending = true;
        } else if self.release_pending {
            self.release_pending = false;
            self.scratch.shrink();
            self.resuming.shrink_to(Scratch::KEEP);
            self.polls.shrink_to(Scratch::KEEP);
            self.ring.shrink(Scratch::KEEP);
            crate::sys::release_free_memory();
        }
    }

    /// Reads the shard's clock and moves the liveness clock with it.
    fn read_clock(&mut self) {
        self.now_ms = self.clock.elapsed().as_millis() as u64;
        let uncredited = self.live.advance(self.now_ms);
        if uncredited > 0 {
            bump(&self.stats().liveness_uncredited_ms, uncredited);
        }
    }

    fn complete(&mut self, c: Completion) {
        let Some((op, generation, slot)) = parse_user_data(c.user_data) else {
            debug_assert!(false, "unknown user_data {:#x}", c.user_data);
            return;
        };
        match op {
            Op::Accept => self.on_accept(slot, generation, c),
            Op::Poll => self.on_poll(slot, generation, c.result),
            Op::Recv => self.on_recv(slot, generation, c),
            Op::Send => self.on_send(slot, generation, c.result),
            Op::Cancel => self.on_cancel(slot, generation),
            Op::Close => self.on_close(slot, generation),
            Op::KernelQueue => liveness::on_kernel_queue(self, slot, generation, c.result),
            Op::Channel => self.on_channel(generation, c.result),
            Op::FdInstall => self.on_fd_install(slot, generation, c.result),
            Op::Move => self.on_move(slot, c.result),
            Op::Doorbell | Op::DoorbellSent => {}
        }
    }

    /// Registers a connection's user with the user's home shard (and the cluster bridge),
    /// which replays the user's messages after `since` to it, or for a new connection
    /// (`fresh`: when it connected) those numbered since then.
    fn register_user(&mut self, user: &str, id: ConnId, since: u64, fresh: Option<u64>) {
        let hash = self.shared.user_keys.hash(user);
        let home = home_shard(hash, self.shards());
        let add = crate::push::UserAdd { user: hash, name: user.into(), conn: id, since, fresh };
        if home == self.id {
            self.on_user_add(&add);
        } else {
            self.send_mesh(home, Msg::UserAdd(Box::new(add)));
        }
    }

    /// On the home shard: indexes a user's connection, or evicts it when the user already
    /// holds `conns_per_user_max` (false).
    fn add_user_conn(&mut self, user: u64, name: &str, conn: ConnId) -> bool {
        let cap = self.shared.cfg.limits.conns_per_user_max as usize;
        if cap > 0 && self.users.count(user) >= cap {
            if conn.shard as usize == self.id {
                client::over_user_cap(self, conn.slot, conn.generation);
            } else {
                self.send_mesh(conn.shard as usize, Msg::Evict { conn });
            }
            return false;
        }
        if self.users.add(user, conn) {
            self.user_online(name);
        }
        true
    }

    /// Starts a drain on every shard (`POST /drain`).
    pub(crate) fn drain_all(&mut self, rate_per_s: u32) {
        let me = self.id;
        for to in (0..self.shards()).filter(|&s| s != me) {
            self.send_mesh(to, Msg::Drain { rate_per_s });
        }
        self.begin_drain(rate_per_s as f64);
    }

    fn unregister_user(&mut self, user: &str, id: ConnId) {
        let hash = self.shared.user_keys.hash(user);
        let home = home_shard(hash, self.shards());
        if home == self.id {
            self.remove_user_conn(hash, id, Some(user));
        } else if self.mesh.bridge().is_some() {
            let leave = crate::push::UserLeave { user: hash, name: user.into(), conn: id };
            self.send_mesh(home, Msg::UserLeave(Box::new(leave)));
        } else {
            self.send_mesh(home, Msg::UserRemove { user: hash, conn: id });
        }
    }

    /// Browser tabs beyond the first that share this connection ([`client::set_tabs`]).
    pub(super) fn extra_tabs(&self, slot: u32, generation: u32) -> u8 {
        self.tabs.get(&slot).filter(|(g, _)| *g == generation).map_or(0, |&(_, n)| n)
    }

    fn conn_id(&self, slot: u32, generation: u32) -> ConnId {
        ConnId { shard: self.id as u16, slot, generation }
    }

    /// Arms the close of a connection at its token's expiry.
    fn schedule_expiry(&mut self, slot: u32, generation: u32, at_ms: u64) {
        let key = ConnId { shard: 0, slot, generation }.timer_key() | EXPIRY_TIMER;
        self.wheel.insert(key, at_ms);
        self.expiries.insert(slot, (generation, at_ms));
    }

    /// Arms a timer for a connection at `at_ms`; earlier entries for it become stale.
    fn schedule(&mut self, slot: u32, generation: u32, at_ms: u64) {
        if let Some(conn) = self.conns.get_mut(slot, generation) {
            let at_ms = at_ms.max(1);
            conn.timer = conn::stamp(at_ms);
            let key = ConnId { shard: 0, slot, generation }.timer_key();
            self.wheel.insert(key, at_ms);
        }
    }

    fn process_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.scratch.fired);
        self.wheel.expire(self.now_ms, &mut fired);
        for (key, deadline) in fired.drain(..) {
            if self.handover.is_exported(key as u32) {
                // On its way to the new process, which arms its own timers.
                continue;
            }
            let flags = key & (EXPIRY_TIMER | lifecycle::LIFETIME_TIMER);
            if flags != 0 {
                let (slot, generation) = (key as u32, ((key & !flags) >> 32) as u32);
                if flags == EXPIRY_TIMER {
                    client::token_expired(self, slot, generation);
                } else {
                    lifecycle::goaway(self, slot, generation, CloseReason::Lifetime);
                }
                continue;
            }
            let (slot, generation) = (key as u32, (key >> 32) as u32);
            let due =
                self.conns.get(slot, generation).is_some_and(|c| c.timer == conn::stamp(deadline));
            if due {
                self.on_timer(slot, generation);
            }
        }
        self.scratch.fired = fired;
        liveness::decide(self);
    }

    fn on_timer(&mut self, slot: u32, generation: u32) {
        let l = &self.shared.cfg.limits;
        let (idle_ms, hb_ms) = (l.idle_timeout_ms, l.sse_heartbeat_ms);
        let now = self.now_ms;
        let live = self.live.now_ms;
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        conn.timer = 0;
        let since_rx = conn::elapsed_ms(live, conn.last_rx);
        match (conn.closing, conn.kind) {
            // The close frame or error answer did not drain within close_timeout_ms.
            (Closing::Flushing(reason), _) => self.reset(slot, generation, reason),
            (Closing::Cancelling(_), _) => self.cancel_stragglers(slot, generation),
            (Closing::Closed, _) => {}
            (Closing::Open, Kind::Handshake) => {
                // On the liveness clock too: a head that waited for a busy shard is not late.
                let waited = conn::elapsed_ms(live, conn.last_ping);
                let limit = self.shared.cfg.limits.handshake_timeout_ms;
                if waited < limit {
                    return self.schedule(slot, generation, now + limit - waited);
                }
                client::reject(self, slot, generation, 408, CloseReason::HandshakeTimeout)
            }
            (Closing::Open, Kind::Admin) if conn.partial.as_ref().is_some_and(|p| p.stream) => {
                self.status_tick(slot, generation)
            }
            (Closing::Open, Kind::Admin) => {
                let request_ms = self.shared.cfg.limits.handshake_timeout_ms;
                let started = conn.partial.as_ref().map(|p| p.started_ms);
                if started.is_some_and(|s| now >= s + request_ms) {
                    return admin::request_timeout(self, slot, generation);
                }
                if idle_ms > 0 && since_rx >= idle_ms {
                    return self.abort(slot, generation, CloseReason::IdleTimeout);
                }
                let mut next = u64::MAX;
                if idle_ms > 0 {
                    next = now + idle_ms - since_rx;
                }
                if let Some(s) = started {
                    next = next.min(s + request_ms);
                }
                if next != u64::MAX {
                    self.schedule(slot, generation, next);
                }
            }
            (Closing::Open, Kind::Sse) => {
                if conn.queued_bytes() == 0 {
                    self.send_sse_heartbeat(slot, generation);
                }
                self.schedule(slot, generation, now + hb_ms);
            }
            (Closing::Open, Kind::Ws | Kind::Echo) => liveness::on_ws_timer(self, slot, generation),
            (Closing::Open, Kind::Poll) => self.answer_poll(slot, generation),
        }
    }

    /// Arms the connection's next WebSocket look: a ping to send, a pong or drain deadline,
    /// or the idle limit, whichever comes first on the liveness clock. The liveness clock
    /// never runs ahead of the shard's, so the wheel fires on time or early, never late.
    fn schedule_ws(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get(slot, generation) else {
            return;
        };
        let wait = match liveness::judge(conn, &self.shared.cfg.limits, self.live.now_ms) {
            liveness::Verdict::Wait(ms) => ms,
            _ => 1,
        };
        self.schedule(slot, generation, self.now_ms + wait);
    }

    fn begin_shutdown(&mut self) {
        if self.id == 0 {
            let ms = self.shared.cfg.limits.shutdown_timeout_ms;
            tracing::info!("shutdown: closing every connection within {ms} ms");
        }
        self.shutdown_deadline_ms = Some(self.now_ms + self.shared.cfg.limits.shutdown_timeout_ms);
        self.cancel_accepts(false);
        let all: Vec<(u32, u32, Kind)> = self
            .conns
            .iter()
            .filter(|(_, _, c)| c.is_open())
            .map(|(s, g, c)| (s, g, c.kind))
            .collect();
        for (slot, generation, kind) in all {
            match kind {
                Kind::Ws | Kind::Echo => client::close_ws(
                    self,
                    slot,
                    generation,
                    1001,
                    "server shutdown",
                    CloseReason::Shutdown,
                ),
                Kind::Sse => self.finish(slot, generation, CloseReason::Shutdown),
                Kind::Poll => self.answer_poll(slot, generation),
                Kind::Admin | Kind::Handshake => {
                    self.abort(slot, generation, CloseReason::Shutdown)
                }
            }
        }
    }
}
