//! The cluster bridge: one thread, one current-thread tokio runtime, the Redis push registry
//! and the NATS bus. It talks to the shards only through the mesh (it is the mesh's last
//! participant, see `crate::mesh`), so a shard never waits on the network.
//!
//! ```text
//!  shards ──Online/Offline──► bridge ──pipelined ZADD/PEXPIRE/ZREM──► Redis (registry)
//!  shards ──publishes──────► bridge ──ZRANGEBYSCORE──► Redis ──► NATS c10m.node.<id>
//!                                   ──────────────────────────► NATS c10m.topic.* / c10m.all
//!  NATS (node, topics, all, user queue) ──► bridge ──PublishUser/Topic/All──► shards
//!  shards ──PresenceAsk──► bridge ◄──c10m.presence request/replies──► other nodes' bridges
//! ```
//!
//! - **Registry** ([`registry`]): a user's home shard tells the bridge when the user's first
//!   connection on this node is indexed (`Msg::Online`) and when its last one leaves
//!   (`Msg::Offline`); the bridge writes those transitions, coalesced and pipelined, and
//!   refreshes every present user every third of `registry_ttl_ms` by walking the shards'
//!   connections (`Msg::RegistryWalk`, one step of at most 512 users at a time); a heartbeat
//!   every third of `node_ttl_ms` tells the other nodes this one is alive, and lookups skip
//!   nodes whose heartbeat has expired. The bridge keeps no per-user state: the home
//!   shard's index already counts a user's connections, and the shards' connections already
//!   carry the names, so the registry costs a node what waits to be written and no more
//!   (docs/measurements.md, "Cluster").
//! - **Publishes accepted here** are delivered locally by the shards as on a single node and
//!   handed to the bridge: a user publish is looked up (batched `ZRANGEBYSCORE`) and sent to
//!   each *other* node's subject; a topic or broadcast is published once with this node in
//!   `C10m-Origin`, and every node but this one delivers it ([`bus`] lists the subjects).
//! - **Publishes from backends** straight to NATS: `c10m.topic.<t>` and `c10m.all` reach
//!   every node; `c10m.user.<u>` is taken by one node (queue group), looked up, and forwarded
//!   to the user's nodes (delivered directly when one of them is the taker).
//! - **Presence** ([`presence`]): a shard answering `GET /presence` asks the bridge too,
//!   which asks every other node on `c10m.presence` and hands the shard their counts once
//!   every live node answered or after [`presence::WAIT_MS`]; each bridge answers such a
//!   request (from another node or a backend) by asking its own shards over the mesh.
//! - **Message ids**: a bridged message keeps the id its accepting node gave it (`C10m-Id`),
//!   so every node shows clients the same id; ids are unique per accepting node, not across
//!   nodes. A backend's message from NATS gets `2^62 + n` from the node that takes it.
//!
//! Delivery is **at most once**, as in Zuul Push: nothing is acknowledged or retried. A
//! message is dropped and counted (`/stats` `cluster.dropped`, `/metrics`
//! `c10m_cluster_dropped_total{reason}`) when the bridge's queues are full, Redis or NATS is
//! down, a mesh ring to a shard is full, or a bus message is malformed (see
//! [`stats::ClusterDrop`]). Redis and NATS reconnect with backoff on their own; shards keep
//! serving their local clients throughout.

pub mod bus;
mod connect;
mod lookup;
pub mod presence;
pub mod registry;
pub mod stats;
pub mod store;
mod upgrade;

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::config::Cluster;
use crate::mesh::bell::{Bell, EventFd};
use crate::mesh::{MeshEnd, Sent};
use crate::push::{home_shard, Message, Msg, PublishUser, UserKeys};
use lookup::{Lookup, Lookups};
use registry::Presence;
pub use stats::{ClusterDrop, ClusterStats};

/// Mesh messages the bridge takes per turn, so the bus gets its turn under a flood.
const MESH_BATCH_MAX: usize = 4096;
/// Ids the bridge gives to backend messages from NATS: above any id a shard gives.
const BUS_ID_BASE: u64 = 1 << 62;

/// The bridge thread, running.
pub struct Running {
    thread: std::thread::JoinHandle<io::Result<()>>,
    stop: Arc<AtomicBool>,
}

impl Running {
    /// Asks the bridge to finish (after the shards have stopped: their last registry
    /// removals are written first, for up to [`STOP_FLUSH_MS`]), waits for it, and returns
    /// the error that stopped it early, if one did.
    pub fn stop(self) -> io::Result<()> {
        self.stop.store(true, Relaxed);
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the cluster bridge thread panicked")),
        }
    }
}

/// Longest a stopping bridge waits for its last registry writes.
pub const STOP_FLUSH_MS: u64 = 2000;

/// What `server::start` prepares before the shards start: the bridge's doorbell ring (its fd
/// goes in the mesh peer table) and its counters. Bad URLs are reported here.
pub struct Prepared {
    cfg: Cluster,
    node_id: String,
    redis: redis::Client,
    bell: Bell,
    efd: EventFd,
    pub stats: Arc<ClusterStats>,
    directory: Arc<crate::nodes::Directory>,
    /// With history on: the store's window, where this node starts in it, and whether that
    /// start is the store's (false: the bus did not answer at startup).
    store: Option<(store::Window, store::Start, bool)>,
    /// A live upgrade's new process: where to start reading the store, once known.
    resume: Option<tokio::sync::oneshot::Receiver<store::Resume>>,
    /// A live upgrade's new process: the bus server the old one is on ([`connect`]).
    follow: Option<String>,
}

impl Prepared {
    pub fn new(cfg: &Cluster, directory: Arc<crate::nodes::Directory>) -> io::Result<Prepared> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let node_id = cfg.node_id.clone().ok_or_else(|| bad("cluster without node_id".into()))?;
        let url = cfg.registry.as_deref().unwrap_or_default();
        let redis = redis::Client::open(url)
            .map_err(|e| bad(format!("--registry {url:?}: {e}; give redis://HOST:PORT")))?;
        let bus = cfg.bus.as_deref().unwrap_or_default();
        bus.parse::<async_nats::ServerAddr>()
            .map_err(|e| bad(format!("--bus {bus:?}: {e}; give nats://HOST:PORT")))?;
        let (bell, efd) = Bell::new()?;
        let stats = Arc::new(ClusterStats::new(&node_id));
        let store = None;
        let cfg = cfg.clone();
        let (resume, follow) = (None, None);
        Ok(Prepared { cfg, node_id, redis, bell, efd, stats, directory, store, resume, follow })
    }

    /// History on: opens the cluster's history store (creating its stream if this is the
    /// first node), before the shards start; they take its epoch and top.
    /// `epoch` is the one to start with should the bus not answer yet.
    pub fn open_store(&mut self, window: store::Window, epoch: u32) -> io::Result<store::Start> {
        let found = store::open(self.cfg.bus.as_deref().unwrap_or_default(), window)?;
        let start = found.unwrap_or(store::Start { epoch, top: 0, first: 0 });
        self.store = Some((window, start, found.is_some()));
        Ok(start)
    }

    /// History on, in a live upgrade's new process: the store holds what the old process
    /// numbered under `epoch`; this node reads it from where the old one stops, which
    /// `resume` tells once the old process is done. Until then publishes count as going
    /// through the store (the old process reached it), so none is kept on this node only.
    pub fn take_store(
        &mut self,
        window: store::Window,
        epoch: u32,
        resume: tokio::sync::oneshot::Receiver<store::Resume>,
    ) -> store::Start {
        let start = store::Start { epoch, top: 0, first: 0 };
        self.store = Some((window, start, true));
        self.resume = Some(resume);
        self.stats.store_connected.store(true, Relaxed);
        start
    }

    /// A live upgrade's new process: connect to `server_id`, the bus server the old process
    /// is on, if `--bus` leads elsewhere in a NATS cluster (`connect` says why).
    pub fn follow_bus_server(&mut self, server_id: String) {
        self.follow = Some(server_id);
    }

    /// The ring fd shards ring to wake the bridge.
    pub fn bell_fd(&self) -> i32 {
        self.bell.fd()
    }

    /// Starts the bridge thread with its end of the mesh. Should the bridge fail (it cannot
    /// subscribe, or its ring fails), it raises `shutdown` so the node stops instead of
    /// running on with announcements piling up for a bridge that is gone.
    pub fn spawn(
        self,
        mesh: MeshEnd,
        user_keys: UserKeys,
        message_bytes_max: usize,
        shutdown: Arc<AtomicBool>,
    ) -> io::Result<Running> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("c10m-bridge".into()).spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|rt| {
                    let local = tokio::task::LocalSet::new();
                    let result =
                        local.block_on(&rt, self.run(mesh, user_keys, message_bytes_max, stopping));
                    // The tasks left (the store's reader and its consumer among them) are
                    // dropped inside the runtime: the NATS client's drops need its reactor.
                    let _inside = rt.enter();
                    drop(local);
                    result
                })
                .map_err(|e| io::Error::new(e.kind(), format!("cluster bridge: {e}")));
            if let Err(e) = &result {
                tracing::error!("{e}; stopping");
                shutdown.store(true, Relaxed);
            }
            result
        })?;
        Ok(Running { thread, stop })
    }

    async fn run(
        self,
        mesh: MeshEnd,
        user_keys: UserKeys,
        message_bytes_max: usize,
        stop: Arc<AtomicBool>,
    ) -> io::Result<()> {
        let Prepared { cfg, node_id, redis, bell, efd, stats, directory, store, resume, follow } =
            self;
        let efd = efd.into_async()?;
        let bus_url = cfg.bus.clone().unwrap_or_default();
        let nats = connect::connect(&bus_url, &node_id, follow.as_deref()).await?;
        let sub_err = |e: async_nats::SubscribeError| io::Error::other(format!("NATS: {e}"));
        let mut subs = vec![
            nats.subscribe(bus::node_subject(&node_id)).await.map_err(sub_err)?,
            nats.subscribe(bus::CMD).await.map_err(sub_err)?,
            nats.subscribe(bus::PRESENCE).await.map_err(sub_err)?,
        ];
        if store.is_none() {
            // Without history, publishes travel on the bus alone; with it, every node reads
            // them from the store instead (`store`).
            subs.push(nats.subscribe(bus::TOPIC_WILDCARD).await.map_err(sub_err)?);
            subs.push(nats.subscribe(bus::ALL).await.map_err(sub_err)?);
            subs.push(
                nats.queue_subscribe(bus::USER_WILDCARD, bus::USER_QUEUE.into())
                    .await
                    .map_err(sub_err)?,
            );
        }
        // Replies to this node's presence requests: `<inbox>.<id>`.
        let reply_prefix = format!("{}.", nats.new_inbox());
        let replies = nats.subscribe(format!("{reply_prefix}*")).await.map_err(sub_err)?;
        let mut subs = futures_util::stream::select_all(subs.into_iter().chain([replies]));

        let queue_max = cfg.bridge_queue_max as usize;
        let (out_tx, out_rx) = mpsc::channel::<Out>(queue_max);
        let (lookup_tx, lookup_rx) = mpsc::channel::<Lookup>(queue_max);
        let (local_tx, mut local_rx) = mpsc::channel::<(Box<str>, Arc<Message>)>(queue_max);
        let conn = registry::connection(redis)
            .map_err(|e| io::Error::other(format!("--registry: {e}")))?;
        let presence = Rc::new(RefCell::new(Presence::default()));
        let bells = Rc::new(registry::WalkBells::default());
        let liveness = Rc::new(RefCell::new(registry::Liveness::default()));
        let node: Rc<str> = node_id.as_str().into();
        let node_ttl_ms = cfg.node_ttl_ms.min(cfg.registry_ttl_ms);
        tokio::task::spawn_local(registry::heartbeat(
            conn.clone(),
            Rc::clone(&liveness),
            Rc::clone(&presence),
            Rc::clone(&node),
            node_ttl_ms,
            Arc::clone(&stats),
            directory,
        ));
        let last_con = conn.clone();

        tokio::task::spawn_local(registry::writer(
            conn.clone(),
            Rc::clone(&presence),
            Rc::clone(&bells),
            Rc::clone(&node),
            cfg.registry_ttl_ms,
            cfg.registry_batch_max as usize,
            Arc::clone(&stats),
        ));
        tokio::task::spawn_local(publisher(nats.clone(), out_rx, Arc::clone(&stats)));
        let (store_tx, mut store_rx) = mpsc::channel::<store::Event>(queue_max.min(8192));
        let (store_out, store_out_rx) = mpsc::channel::<Out>(queue_max);
        match store {
            Some((window, start, known)) => {
                let js = async_nats::jetstream::new(nats.clone());
                let url = bus_url.clone();
                let reader = store::Reader { js: js.clone(), url, window, start, known };
                match resume {
                    Some(at) => {
                        tokio::task::spawn_local(reader.run_after(at, store_tx, Arc::clone(&stats)))
                    }
                    None => tokio::task::spawn_local(reader.run(store_tx, Arc::clone(&stats))),
                };
                tokio::task::spawn_local(store::publisher(js, store_out_rx, Arc::clone(&stats)));
            }
            None => drop((store_tx, store_out_rx)),
        }
        let lookups = Lookups {
            conn,
            liveness: Rc::clone(&liveness),
            node: Rc::clone(&node),
            out: out_tx.clone(),
            local: local_tx,
            stats: Arc::clone(&stats),
        };
        tokio::task::spawn_local(lookups.run(lookup_rx));
        let watch_stats = Arc::clone(&stats);
        let watch_nats = nats.clone();
        tokio::task::spawn_local(async move {
            loop {
                let up = watch_nats.connection_state() == async_nats::connection::State::Connected;
                if up {
                    // First: a successor says its server once it sees the bus up.
                    watch_stats.set_bus_server(&watch_nats.server_info().server_id);
                }
                watch_stats.set_bus_up(up);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });

        let mut bridge = Bridge {
            mesh,
            bell,
            user_keys,
            node,
            presence,
            bells,
            out: out_tx,
            store_out,
            lookups: lookup_tx,
            stats,
            message_bytes_max,
            bus_seq: 0,
            inbox: Vec::new(),
            doorbells: Vec::new(),
            liveness,
            reply_prefix,
            requests: presence::Requests::default(),
            store_ids: store.map(|_| format!("{node_id}.{:x}", registry::unix_ms())),
            store_top: store.map_or(0, |(_, s, _)| s.floor()),
            tops_sent: 0,
            backfill_end: store.map_or(0, |(_, s, _)| s.top),
            held: 0,
            mark: None,
        };
        loop {
            if stop.load(Relaxed) {
                bridge.turn()?;
                let deadline = std::time::Instant::now() + Duration::from_millis(STOP_FLUSH_MS);
                // The last registry writes, and publishes the store has not acknowledged
                // (accepted here: they must reach it even if this node is leaving).
                let pending = |b: &Bridge| {
                    b.presence.borrow().pending() || b.stats.store_pending.load(Relaxed) > 0
                };
                while pending(&bridge) && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(registry::FLUSH_MS)).await;
                    // What the shards' last closes sent meanwhile.
                    bridge.turn()?;
                }
                if bridge.stats.handover.handed_over.load(Relaxed) {
                    // The node lives on in the new process, under the same id.
                    return Ok(());
                }
                // Gone on purpose: others need not wait for the heartbeat to expire.
                let mut con = last_con;
                let mut pipe = redis::pipe();
                pipe.cmd("ZREM").arg(registry::NODES_KEY).arg(&*bridge.node).ignore();
                pipe.cmd("HDEL").arg(crate::nodes::INFO_KEY).arg(&*bridge.node).ignore();
                let zrem = pipe.query_async::<()>(&mut con);
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let _ = tokio::time::timeout(left.max(Duration::from_millis(100)), zrem).await;
                return Ok(());
            }
            let backlog = bridge.turn()?;
            if bridge.held != 0 && bridge.stats.handover.release.swap(false, Relaxed) {
                tracing::warn!("handover: it failed; reading the history store on");
                bridge.held = 0;
                bridge.mark = None;
                bridge.stats.handover.next.store(0, Relaxed);
            }
            if bridge.mark.as_ref().is_some_and(upgrade::Mark::due) {
                bridge.fence_after_mark(&mut subs);
                bridge.turn()?;
            }
            let sleeping = !backlog && bridge.mesh.prepare_sleep();
            let deadline = bridge.requests.next_deadline();
            let pause = if sleeping {
                Duration::from_millis(100)
            } else if backlog {
                Duration::from_millis(1)
            } else {
                Duration::ZERO
            };
            tokio::select! {
                ready = efd.readable() => {
                    if let Ok(mut guard) = ready {
                        guard.get_inner().clear();
                        guard.clear_ready();
                    }
                    bridge.bell.drain();
                }
                Some(m) = subs.next() => bridge.on_bus(m),
                Some((user, msg)) = local_rx.recv() => bridge.inject_user(&user, msg),
                Some(ev) = store_rx.recv(), if bridge.held == 0 => {
                    bridge.on_store(ev);
                    // What else is ready, then the partitions' tops, once per batch.
                    for _ in 0..MESH_BATCH_MAX {
                        match store_rx.try_recv() {
                            Ok(ev) => bridge.on_store(ev),
                            Err(_) => break,
                        }
                    }
                    bridge.send_tops();
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(std::time::Instant::now).into()),
                    if deadline.is_some() => bridge.expire_presence(),
                _ = bridge.bells.bridge.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
            if sleeping {
                bridge.mesh.awake();
            }
        }
    }
}

/// The bridge's mesh side, driven by its main task.
struct Bridge {
    mesh: MeshEnd,
    bell: Bell,
    user_keys: UserKeys,
    node: Rc<str>,
    presence: Rc<RefCell<Presence>>,
    bells: Rc<registry::WalkBells>,
    out: mpsc::Sender<Out>,
    /// Publishes for the history store (history on).
    store_out: mpsc::Sender<Out>,
    lookups: mpsc::Sender<Lookup>,
    stats: Arc<ClusterStats>,
    message_bytes_max: usize,
    bus_seq: u64,
    inbox: Vec<Msg>,
    doorbells: Vec<i32>,
    liveness: Rc<RefCell<registry::Liveness>>,
    /// The subject prefix of replies to this node's presence requests.
    reply_prefix: String,
    requests: presence::Requests,
    /// With history on: the prefix of this run's `Nats-Msg-Id`s (node and start time, so a
    /// restarted node's ids are not taken for repeats of its last run's).
    store_ids: Option<String>,
    /// The last sequence read from the store, and the last one told to every partition.
    store_top: u64,
    tops_sent: u64,
    /// Messages up to this sequence were stored before this node started: backfill.
    backfill_end: u64,
    /// A live upgrade's number while this bridge no longer hands stored messages to its
    /// shards (the new process reads them); 0 otherwise.
    held: u32,
    /// The upgrade whose fence waits for this bridge's marker to come back from the bus.
    mark: Option<upgrade::Mark>,
}

/// A message for NATS.
struct Out {
    subject: String,
    reply: Option<String>,
    headers: HeaderMap,
    msg: Arc<Message>,
}

impl Bridge {
    /// Takes what shards sent, flushes the mesh backlog and rings sleeping shards. Returns
    /// whether a backlog is still waiting for room.
    fn turn(&mut self) -> io::Result<bool> {
        let mut inbox = std::mem::take(&mut self.inbox);
        self.mesh.receive(MESH_BATCH_MAX, &mut inbox);
        for msg in inbox.drain(..) {
            self.on_mesh(msg);
        }
        self.inbox = inbox;
        let step = self.presence.borrow_mut().take_step(std::time::Instant::now());
        if let Some((shard, from)) = step {
            self.send(shard, Msg::RegistryWalk { from });
        }
        let backlog = self.mesh.flush_backlog();
        let mut fds = std::mem::take(&mut self.doorbells);
        self.mesh.doorbells(&mut fds);
        let rung = self.bell.ring(&fds);
        fds.clear();
        self.doorbells = fds;
        rung?;
        Ok(backlog)
    }

    fn on_mesh(&mut self, msg: Msg) {
        if self.store_ids.is_some() {
            // A shard's publish for the store counts as pending from the moment the shard
            // sent it here until the store acknowledges it (`store::publisher`).
            let publish = matches!(
                msg,
                Msg::PublishUser(_) | Msg::PublishTopic { .. } | Msg::PublishAll { .. }
            );
            if let Some(out) = self.to_store(&msg) {
                if self.store_out.try_send(out).is_err() {
                    self.stats.store_pending.fetch_sub(1, Relaxed);
                    self.stats.dropped(ClusterDrop::QueueFull, 1);
                }
                return;
            }
            if publish {
                self.stats.store_pending.fetch_sub(1, Relaxed);
            }
            // A shard sent it here while the store was usable; it is not now: delivered on
            // this node only, unnumbered, as the shards do while the store is away.
            let sequencer = crate::history::SEQUENCER;
            match msg {
                Msg::PublishUser(p) => return self.store_away(|b| b.inject_user(&p.user, p.msg)),
                Msg::PublishTopic { topic, msg } => {
                    let m = Msg::PublishTopic { topic, msg };
                    return self.store_away(|b| b.send(sequencer, m));
                }
                Msg::PublishAll { msg } => {
                    let m = Msg::PublishAll { msg };
                    return self.store_away(|b| b.send(sequencer, m));
                }
                other => return self.on_bus_path(other),
            }
        }
        self.on_bus_path(msg)
    }

    /// What the bridge does with a shard's message without the store (and with it, for
    /// what is not a publish).
    fn on_bus_path(&mut self, msg: Msg) {
        match msg {
            Msg::Online(user) => {
                self.presence.borrow_mut().online(user);
                ClusterStats::bump(&self.stats.online_users, 1);
            }
            Msg::Offline(user) => {
                self.presence.borrow_mut().offline(user);
                // Saturating, so a miscount could never wrap the gauge.
                let less = |n: u64| Some(n.saturating_sub(1));
                let _ = self.stats.online_users.fetch_update(Relaxed, Relaxed, less);
            }
            Msg::RegistryNames(answer) => {
                let shards = self.mesh.shards();
                if self.presence.borrow_mut().walked(*answer, shards) {
                    ClusterStats::bump(&self.stats.registry_refreshes, 1);
                }
                self.bells.writer.notify_one();
            }
            Msg::PublishUser(p) => {
                self.look_up(Lookup { user: p.user, msg: p.msg, from_bus: false });
            }
            Msg::PublishTopic { topic, msg } => {
                let (subject, in_header) = bus::topic_subject(&topic);
                if in_header && !bus::valid_header(&topic) {
                    return self.stats.dropped(ClusterDrop::BadMessage, 1);
                }
                let mut headers = self.headers(msg.id);
                if in_header {
                    headers.insert(bus::H_TOPIC, &*topic);
                }
                self.publish(Out { subject, reply: None, headers, msg });
            }
            Msg::PublishAll { msg } => {
                let headers = self.headers(msg.id);
                self.publish(Out { subject: bus::ALL.into(), reply: None, headers, msg });
            }
            Msg::Batch(msgs) => msgs.into_iter().for_each(|m| self.on_mesh(m)),
            Msg::UserCommand(c) => {
                let payload = c.cmd.to_json(&c.name).into_bytes().into_boxed_slice();
                let msg = Arc::new(Message { id: 0, seq: 0, part: 0, payload, text: true });
                let headers = self.headers(0);
                self.publish(Out { subject: bus::CMD.into(), reply: None, headers, msg });
            }
            Msg::PresenceAsk(a) => self.ask_nodes(*a),
            Msg::PresenceAnswer(a) => self.on_local_answer(*a),
            Msg::Fence { round: 0, attempt } => self.hold_store(attempt),
            other => debug_assert!(false, "not for the bridge: {other:?}"),
        }
    }

    fn headers(&self, id: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(bus::H_ORIGIN, &*self.node);
        h.insert(bus::H_ID, id.to_string().as_str());
        h
    }

    fn publish(&self, out: Out) {
        if self.out.try_send(out).is_err() {
            self.stats.dropped(ClusterDrop::QueueFull, 1);
        }
    }

    fn look_up(&self, l: Lookup) {
        if self.lookups.try_send(l).is_err() {
            self.stats.dropped(ClusterDrop::QueueFull, 1);
        }
    }

    /// A message from NATS.
    fn on_bus(&mut self, m: async_nats::Message) {
        ClusterStats::bump(&self.stats.bus_in, 1);
        if m.subject.as_str() == bus::PRESENCE {
            return self.on_presence_request(m);
        }
        if let Some(id) = m.subject.as_str().strip_prefix(self.reply_prefix.as_str()) {
            if let Some(attempt) = id.strip_prefix(upgrade::MARK) {
                return self.on_mark(attempt);
            }
            let id = id.parse::<u64>().ok();
            return self.on_presence_reply(id, &m.payload);
        }
        if m.payload.len() > self.message_bytes_max {
            return self.stats.dropped(ClusterDrop::BadMessage, 1);
        }
        let header = |name: &str| {
            m.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned())
        };
        let route = bus::route(m.subject.as_str());
        let own = header(bus::H_ORIGIN).is_some_and(|o| *o == *self.node);
        if own && matches!(route, bus::Route::Topic(_) | bus::Route::All) {
            return ClusterStats::bump(&self.stats.bus_in_own, 1);
        }
        let id = match header(bus::H_ID).and_then(|v| v.parse::<u64>().ok()) {
            Some(id) => id,
            None => {
                self.bus_seq += 1;
                BUS_ID_BASE + self.bus_seq
            }
        };
        let payload: Box<[u8]> = m.payload.to_vec().into_boxed_slice();
        let text = std::str::from_utf8(&payload).is_ok();
        let msg = Arc::new(Message { id, seq: 0, part: 0, payload, text });
        let name_ok = |n: &str| !n.is_empty() && n.len() <= crate::shard::client::NAME_BYTES_MAX;
        match route {
            bus::Route::Node => match header(bus::H_USER) {
                Some(user) if name_ok(&user) => self.inject_user(&user, msg),
                _ => self.stats.dropped(ClusterDrop::BadMessage, 1),
            },
            bus::Route::Topic(tail) => {
                let topic = header(bus::H_TOPIC).unwrap_or_else(|| tail.to_owned());
                if !name_ok(&topic) {
                    return self.stats.dropped(ClusterDrop::BadMessage, 1);
                }
                // The sequencer numbers it and sends it on to every shard.
                let m = Msg::PublishTopic { topic: topic.as_str().into(), msg };
                self.send(crate::history::SEQUENCER, m);
            }
            bus::Route::All => {
                self.send(crate::history::SEQUENCER, Msg::PublishAll { msg });
            }
            bus::Route::User(tail) => {
                let user = header(bus::H_USER).unwrap_or_else(|| tail.to_owned());
                if !name_ok(&user) {
                    return self.stats.dropped(ClusterDrop::BadMessage, 1);
                }
                self.look_up(Lookup { user: user.into(), msg, from_bus: true });
            }
            bus::Route::Command if own => ClusterStats::bump(&self.stats.bus_in_own, 1),
            bus::Route::Command => {
                match crate::push::Command::from_json(&msg.payload, crate::auth::unix_now_s()) {
                    Ok((user, cmd)) => {
                        let hash = self.user_keys.hash(&user);
                        let home = home_shard(hash, self.mesh.shards());
                        let c = crate::push::UserCommand { user: hash, name: user.into(), cmd };
                        self.send(home, Msg::UserCommand(Box::new(c)));
                    }
                    Err(_) => self.stats.dropped(ClusterDrop::BadMessage, 1),
                }
            }
            bus::Route::Unknown => self.stats.dropped(ClusterDrop::BadMessage, 1),
        }
    }

    /// Hands a user publish to the user's home shard on this node.
    fn inject_user(&mut self, user: &str, msg: Arc<Message>) {
        let hash = self.user_keys.hash(user);
        let home = home_shard(hash, self.mesh.shards());
        let p = PublishUser { user: user.into(), hash, msg };
        self.send(home, Msg::PublishUser(Box::new(p)));
    }

    fn send(&mut self, to: usize, msg: Msg) {
        if self.mesh.send(to, msg) == Sent::Dropped {
            self.stats.dropped(ClusterDrop::MeshFull, 1);
        }
    }
}

/// Publishes queued messages to NATS, one at a time (the client batches the writes).
async fn publisher(
    nats: async_nats::Client,
    mut rx: mpsc::Receiver<Out>,
    stats: Arc<ClusterStats>,
) {
    while let Some(o) = rx.recv().await {
        if nats.connection_state() != async_nats::connection::State::Connected {
            stats.dropped(ClusterDrop::BusDown, 1);
            continue;
        }
        let payload = o.msg.payload.to_vec().into();
        let sent = match o.reply {
            Some(reply) => {
                nats.publish_with_reply_and_headers(o.subject, reply, o.headers, payload).await
            }
            None => nats.publish_with_headers(o.subject, o.headers, payload).await,
        };
        match sent {
            Ok(()) => ClusterStats::bump(&stats.bus_out, 1),
            Err(_) => stats.dropped(ClusterDrop::BusDown, 1),
        }
    }
}
