//! The push registry in Redis: which nodes hold a user.
//!
//! Schema (Redis 7.0 has no per-field TTL, so expiry lives in scores):
//!
//! ```text
//!  c10m:u:<user>   sorted set   member = node id, score = expiry (unix ms)
//!                               the key itself has PEXPIRE = registry_ttl_ms
//!
//! - online (and every `registry_ttl_ms / 3` while online): `ZADD key now+ttl node` and
//!   `PEXPIRE key ttl`;
//! - offline (last connection of the user on this node closed): `ZREM key node` (an empty
//!   set disappears);
//! - lookup: `ZRANGEBYSCORE key now +inf`: the nodes whose entry has not expired.
//!
//!  c10m:nodes      sorted set   member = node id, score = heartbeat expiry (unix ms)
//! ```
//!
//! - every `node_ttl_ms / 3`: `ZADD c10m:nodes now+node_ttl node`, and read the whole set
//!   back, so every bridge knows each node's last heartbeat expiry ([`Liveness`]).
//!
//! A crashed node stops its heartbeat: within `node_ttl_ms` every other node stops sending
//! it publishes (lookups skip members whose node's heartbeat has expired, counted as
//! `lookups_dead_node`), however long its users' entries still live. It stops refreshing
//! those too: its members fall out of lookups when their score passes, and the whole key
//! expires once no node refreshes it. So `registry_ttl_ms` only bounds garbage and sets the
//! refresh load (two commands per user per third of it), and can be long; `node_ttl_ms`
//! decides how fast a crash is noticed, and costs one command per node per third of it. A
//! node that is not in the heartbeat set at all (just started, not yet read back) is used.
//! A node that finds its own heartbeat gone (Redis restarted without persistence) rewrites
//! every present user at once rather than at the next refresh.
//! A user on several nodes is one key with one member per node, so each node's entry expires
//! on its own. A clean shutdown removes the node's users and its heartbeat.
//!
//! Writes are coalesced and pipelined: a change marks the user dirty (so a user who comes
//! and goes within one flush costs nothing), and every [`FLUSH_MS`] the writer sends the
//! dirty users in pipelines of `registry_batch_max` commands, one pipeline in flight at a
//! time, so a reconnect wave of hundreds of thousands of users becomes a few hundred round
//! trips that Redis serves back to back instead of a flood of single commands.
//!
//! The bridge keeps no list of the users present: a user's home shard says when the user's
//! first connection on this node comes and its last goes, and the refresh walks the shards'
//! connections a step at a time (`crate::shard::registry`), each step's users written like
//! changes. A user with connections on several shards is refreshed once per connection.
//! What the bridge holds is what waits to be written: at most one flush of changes and one
//! step of the walk.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use super::stats::ClusterStats;
use crate::push::RegistryNames;

/// Longest a presence change waits before it is written (the batching window).
pub const FLUSH_MS: u64 = 20;
/// Longest wait between attempts to reach Redis.
pub const BACKOFF_MS_MAX: u64 = 2000;
/// With nothing to write for this long, the writer PINGs Redis: a node without users still
/// notices an outage (and reconnects) before its next lookup needs the connection.
pub const PING_IDLE_MS: u64 = 1000;

/// The Redis key of the node heartbeats.
pub const NODES_KEY: &str = "c10m:nodes";
/// Heartbeats expired this long are removed from [`NODES_KEY`]; by then every user entry of
/// that node has expired too (`registry_ttl_ms` is at most a day).
const NODE_FORGET_MS: u64 = 86_400_000 + 60_000;

/// Each node's heartbeat expiry, as last read from Redis.
#[derive(Default)]
pub struct Liveness {
    expiry_ms: HashMap<Box<str>, u64>,
}

impl Liveness {
    /// Whether publishes may go to `node` at `now_ms`: its heartbeat has not expired, or it
    /// has none yet.
    pub fn usable(&self, node: &str, now_ms: u64) -> bool {
        self.expiry_ms.get(node).is_none_or(|&e| e > now_ms)
    }

    fn replace(&mut self, nodes: Vec<(String, f64)>) {
        self.expiry_ms = nodes.into_iter().map(|(n, e)| (n.into_boxed_str(), e as u64)).collect();
    }

    /// Nodes whose heartbeat has not expired.
    pub fn alive(&self, now_ms: u64) -> usize {
        self.expiry_ms.values().filter(|&&e| e > now_ms).count()
    }

    /// Nodes a cluster-wide request should hear from: those alive, and `me` if its own
    /// heartbeat is not among them yet; 0 when no heartbeat has been read (Redis
    /// unreachable or not answered yet), which means unknown.
    pub fn expected(&self, me: &str, now_ms: u64) -> usize {
        if self.expiry_ms.is_empty() {
            return 0;
        }
        let me_alive = self.expiry_ms.get(me).is_some_and(|&e| e > now_ms);
        self.alive(now_ms) + !me_alive as usize
    }
}

/// Writes this node's heartbeat every `node_ttl_ms / 3` and reads every node's back, with
/// this node's entry for `GET /nodes` beside it ([`crate::nodes`]). A heartbeat of this node
/// that vanished means Redis lost its data (a restart without persistence): the writer is
/// told to rewrite every present user at once instead of within `registry_ttl_ms / 3`.
pub async fn heartbeat(
    mut con: ConnectionManager,
    liveness: Rc<RefCell<Liveness>>,
    presence: Rc<RefCell<Presence>>,
    node_id: Rc<str>,
    node_ttl_ms: u64,
    stats: Arc<ClusterStats>,
    directory: Arc<crate::nodes::Directory>,
) {
    let period = Duration::from_millis(node_ttl_ms / 3);
    let mut written = false;
    // Entries of nodes forgotten from the heartbeat set, removed on the next beat.
    let mut forgotten: Vec<String> = Vec::new();
    loop {
        let now = unix_ms();
        let mut info = directory.local();
        info.id = None;
        let info = serde_json::to_string(&info).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.cmd("ZSCORE").arg(NODES_KEY).arg(&*node_id);
        pipe.cmd("ZADD").arg(NODES_KEY).arg(now + node_ttl_ms).arg(&*node_id).ignore();
        pipe.cmd("HSET").arg(crate::nodes::INFO_KEY).arg(&*node_id).arg(info).ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(NODES_KEY)
            .arg("-inf")
            .arg(now.saturating_sub(NODE_FORGET_MS))
            .ignore();
        if !forgotten.is_empty() {
            pipe.cmd("HDEL").arg(crate::nodes::INFO_KEY).arg(&forgotten).ignore();
        }
        pipe.cmd("ZRANGE").arg(NODES_KEY).arg(0).arg(-1).arg("WITHSCORES");
        pipe.cmd("HGETALL").arg(crate::nodes::INFO_KEY);
        type Beat = (Option<f64>, Vec<(String, f64)>, Vec<(String, String)>);
        match pipe.query_async::<Beat>(&mut con).await {
            Ok((mine, nodes, infos)) => {
                if written && mine.is_none() {
                    ClusterStats::bump(&stats.registry_resyncs, 1);
                    presence.borrow_mut().resync = true;
                }
                written = true;
                forgotten = infos
                    .iter()
                    .filter(|(id, _)| !nodes.iter().any(|(n, _)| n == id))
                    .map(|(id, _)| id.clone())
                    .collect();
                liveness.borrow_mut().replace(nodes);
                let now = unix_ms();
                let l = liveness.borrow();
                directory.set_others(crate::nodes::others_from(infos, &node_id, |n| {
                    l.expiry_ms.get(n).is_some_and(|&e| e > now)
                }));
                stats.live_nodes.store(l.alive(now) as u64, Relaxed);
            }
            // Unknown is not dead: lookups use every node until Redis answers again.
            Err(_) => liveness.borrow_mut().replace(Vec::new()),
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = directory.changed.notified() => {}
        }
    }
}

/// The Redis key of a user's entry.
pub fn key(user: &str) -> String {
    format!("c10m:u:{user}")
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the registry writer has to write, and nothing more: the bridge keeps no per-user
/// state. Users come and go as transitions from their home shards ([`Presence::online`],
/// [`Presence::offline`]); the refresh walks the shards for the users of their connections
/// ([`crate::shard::registry`]), one step at a time, so what waits here is bounded by the
/// changes of one flush and one step's answer.
///
/// A B-tree rather than a hash table: it grows and shrinks node by node, so a wave of
/// hundreds of thousands of users leaves no doubled table behind, nor the one it was copied
/// from.
#[derive(Default)]
pub struct Presence {
    /// Users to write, with whether they are on this node; what arrived last wins, so a
    /// user the walk saw and whose last connection left since is removed, not refreshed.
    dirty: BTreeMap<Box<str>, bool>,
    /// A batch taken from `dirty` is being written.
    in_flight: bool,
    /// Rewrite every present user now: Redis lost this node's entries (restarted empty).
    pub resync: bool,
    walk: Walk,
}

/// The refresh walk over the shards' slots.
#[derive(Default)]
struct Walk {
    /// The step to ask for next, (shard, slot); `None`: no walk under way.
    at: Option<(u16, u32)>,
    /// When the step at `at` was asked for; its answer has not come.
    asked: Option<Instant>,
    /// The writer wants the bridge to ask for the step at `at`.
    want: bool,
}

/// A walk step that got no answer (its request or answer met a full mesh ring) is asked
/// for again after this long.
const WALK_RETRY_MS: u64 = 1000;

impl Presence {
    /// From the user's home shard: the user's first connection on this node.
    pub fn online(&mut self, user: Box<str>) {
        self.dirty.insert(user, true);
    }

    /// From the user's home shard: the user's last connection on this node left.
    pub fn offline(&mut self, user: Box<str>) {
        self.dirty.insert(user, false);
    }

    /// Whether changes wait to be written (or a batch of them is in flight).
    pub fn pending(&self) -> bool {
        !self.dirty.is_empty() || self.in_flight
    }

    /// Takes up to `max` dirty users, each with whether it is online now.
    fn take_dirty(&mut self, max: usize, out: &mut Vec<(Box<str>, bool)>) {
        for _ in 0..max {
            let Some(entry) = self.dirty.pop_first() else { break };
            out.push(entry);
        }
    }

    /// A batch that could not be written waits again, behind any newer change of its users.
    fn mark_dirty(&mut self, batch: impl IntoIterator<Item = (Box<str>, bool)>) {
        for (name, online) in batch {
            self.dirty.entry(name).or_insert(online);
        }
    }

    /// Starts the refresh walk from the first slot of the first shard.
    fn start_walk(&mut self) {
        self.walk = Walk { at: Some((0, 0)), asked: None, want: false };
    }

    fn walking(&self) -> bool {
        self.walk.at.is_some()
    }

    /// Whether the bridge should ask for the next walk step now: one is due, no answer is
    /// awaited (or it is overdue), and less than `room` names wait to be written.
    fn step_due(&mut self, room: usize, now: Instant) -> bool {
        let w = &mut self.walk;
        let awaited = w.asked.is_some_and(|t| now < t + Duration::from_millis(WALK_RETRY_MS));
        if w.at.is_none() || w.want || awaited || self.dirty.len() >= room {
            return false;
        }
        w.want = true;
        true
    }

    /// For the bridge: the walk step to ask for, (shard, first slot), once the writer
    /// wants it.
    pub fn take_step(&mut self, now: Instant) -> Option<(usize, u32)> {
        let w = &mut self.walk;
        if !std::mem::take(&mut w.want) {
            return None;
        }
        w.asked = Some(now);
        w.at.map(|(shard, slot)| (shard as usize, slot))
    }

    /// A shard's answer to a walk step: its users wait to be written, and the walk goes on
    /// (to the next of `shards`) or is over (true). An answer to a step asked for before (a
    /// retry crossed it) is dropped.
    pub fn walked(&mut self, answer: RegistryNames, shards: usize) -> bool {
        let w = &mut self.walk;
        if w.at != Some((answer.shard, answer.from)) || w.asked.is_none() {
            return false;
        }
        w.asked = None;
        w.at = match answer.next {
            Some(slot) => Some((answer.shard, slot)),
            None if (answer.shard as usize) + 1 < shards => Some((answer.shard + 1, 0)),
            None => None,
        };
        for name in answer.names {
            self.dirty.insert(name, true);
        }
        self.walk.at.is_none()
    }
}

/// The Redis connection of the bridge's tasks: one multiplexed connection that connects on
/// first use and reconnects by itself. A request while Redis is down fails within about a
/// second (three quick attempts), so callers drop and count instead of waiting.
pub fn connection(client: redis::Client) -> redis::RedisResult<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(BACKOFF_MS_MAX))
        .set_connection_timeout(Some(Duration::from_millis(1000)))
        .set_response_timeout(Some(Duration::from_millis(5000)));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// Users written since the bridge thread last gave its allocator's free pages back, past
/// which it does so once the writes pause: mimalloc purges a thread's freed pages only on
/// its later allocations, and after a wave the bridge makes few.
const RELEASE_AFTER_WRITES: usize = 4096;

/// The two wakeups of the refresh walk: the writer wants a step asked for (the bridge's
/// loop waits on `bridge`), and a step's names arrived (the writer waits on `writer`).
#[derive(Default)]
pub struct WalkBells {
    pub bridge: tokio::sync::Notify,
    pub writer: tokio::sync::Notify,
}

/// Writes presence changes and refreshes every present user every `ttl_ms / 3`, walking
/// the shards through the bridge ([`WalkBells`]).
pub async fn writer(
    mut con: ConnectionManager,
    presence: Rc<RefCell<Presence>>,
    bells: Rc<WalkBells>,
    node_id: Rc<str>,
    ttl_ms: u64,
    batch_max: usize,
    stats: Arc<ClusterStats>,
) {
    let users_per_batch = (batch_max / 2).max(1);
    let period = Duration::from_millis(ttl_ms / 3);
    let mut next_refresh = Instant::now() + period;
    let mut backoff = FLUSH_MS;
    let mut batch = Vec::with_capacity(users_per_batch);
    let mut written_since_release = 0;
    // Zero: the first tick connects (and says whether Redis is there).
    let mut last_io = Instant::now()
        .checked_sub(Duration::from_millis(PING_IDLE_MS))
        .unwrap_or_else(Instant::now);
    loop {
        if backoff == FLUSH_MS {
            // A walk step's names end the wait early: the walk goes at the pace Redis
            // takes its pipelines, not one step per flush.
            let pause = tokio::time::sleep(Duration::from_millis(backoff));
            tokio::select! {
                _ = pause => {}
                _ = bells.writer.notified() => {}
            }
        } else {
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        {
            let mut p = presence.borrow_mut();
            let resync = std::mem::take(&mut p.resync);
            if (!p.walking() && Instant::now() >= next_refresh) || resync {
                p.start_walk();
                next_refresh = Instant::now() + period;
            }
        }
        backoff = FLUSH_MS;
        loop {
            batch.clear();
            {
                let mut p = presence.borrow_mut();
                p.take_dirty(users_per_batch, &mut batch);
                // Asked for before this batch is written, the next step's names are there
                // by the time it is.
                if p.step_due(users_per_batch, Instant::now()) {
                    bells.bridge.notify_one();
                }
            }
            if batch.is_empty() {
                if written_since_release >= RELEASE_AFTER_WRITES {
                    // A wave or a walk is written: give the pipelines' freed pages back.
                    written_since_release = 0;
                    crate::sys::release_free_memory();
                }
                if last_io.elapsed() >= Duration::from_millis(PING_IDLE_MS) {
                    last_io = Instant::now();
                    let up = redis::cmd("PING").query_async::<String>(&mut con).await.is_ok();
                    stats.set_registry_up(up);
                }
                break;
            }
            last_io = Instant::now();
            presence.borrow_mut().in_flight = true;
            let expiry = unix_ms() + ttl_ms;
            let mut pipe = redis::pipe();
            let mut commands = 0;
            for (name, online) in &batch {
                let k = key(name);
                if *online {
                    pipe.cmd("ZADD").arg(&k).arg(expiry).arg(&*node_id).ignore();
                    pipe.cmd("PEXPIRE").arg(&k).arg(ttl_ms).ignore();
                    commands += 2;
                } else {
                    pipe.cmd("ZREM").arg(&k).arg(&*node_id).ignore();
                    commands += 1;
                }
            }
            let written = pipe.query_async::<()>(&mut con).await;
            presence.borrow_mut().in_flight = false;
            match written {
                Ok(()) => {
                    written_since_release += batch.len();
                    ClusterStats::bump(&stats.registry_writes, commands);
                    ClusterStats::bump(&stats.registry_batches, 1);
                    stats.set_registry_up(true);
                }
                Err(_) => {
                    // Written again once Redis is back: entries are idempotent.
                    ClusterStats::bump(&stats.registry_errors, 1);
                    stats.set_registry_up(false);
                    presence.borrow_mut().mark_dirty(batch.drain(..));
                    backoff = BACKOFF_MS_MAX;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_skips_expired_heartbeats_only() {
        let mut l = Liveness::default();
        assert!(l.usable("new", 1_000), "a node never seen is used");
        l.replace(vec![("a".into(), 2_000.0), ("b".into(), 500.0)]);
        assert!(l.usable("a", 1_000));
        assert!(!l.usable("b", 1_000), "b's heartbeat expired");
        assert!(l.usable("c", 1_000), "c started since the last read");
        assert!(!l.usable("a", 2_000));
        assert_eq!(l.alive(1_000), 1);
        assert_eq!(l.expected("a", 1_000), 1);
        assert_eq!(l.expected("c", 1_000), 2, "c counts itself before its heartbeat is read");
        assert_eq!(Liveness::default().expected("a", 1_000), 0, "unknown");
    }

    #[test]
    fn the_last_change_of_a_user_is_written_once() {
        let mut p = Presence::default();
        p.online("bob".into());
        p.offline("bob".into());
        p.online("ann".into());
        p.offline("ann".into());
        p.online("ann".into());
        let mut out = Vec::new();
        p.take_dirty(10, &mut out);
        assert_eq!(out, vec![("ann".into(), true), ("bob".into(), false)]);
        out.clear();
        p.take_dirty(10, &mut out);
        assert!(out.is_empty() && !p.pending(), "nothing left dirty");
        // A batch that failed waits again, behind what changed since.
        p.offline("ann".into());
        p.mark_dirty([("ann".into(), true), ("bob".into(), false)]);
        p.take_dirty(10, &mut out);
        assert_eq!(out, vec![("ann".into(), false), ("bob".into(), false)]);
    }

    fn names(shard: u16, from: u32, next: Option<u32>, names: &[&str]) -> RegistryNames {
        let names = names.iter().map(|&n| n.into()).collect();
        RegistryNames { shard, from, next, names }
    }

    #[test]
    fn the_walk_asks_every_shard_step_by_step() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        assert!(!p.step_due(10, t0), "no walk under way");
        p.start_walk();
        assert!(p.step_due(10, t0));
        assert!(!p.step_due(10, t0), "asked for once");
        assert_eq!(p.take_step(t0), Some((0, 0)));
        assert_eq!(p.take_step(t0), None);
        assert!(!p.step_due(10, t0), "its answer is awaited");
        // An answer to another step is not this one's.
        p.walked(names(0, 7, None, &["zed"]), 2);
        assert!(!p.pending());
        p.walked(names(0, 0, Some(300), &["a", "b"]), 2);
        assert!(!p.step_due(2, t0), "two names wait, room for two");
        assert!(p.step_due(3, t0));
        assert_eq!(p.take_step(t0), Some((0, 300)));
        p.walked(names(0, 300, None, &["c"]), 2);
        assert!(p.step_due(10, t0));
        assert_eq!(p.take_step(t0), Some((1, 0)), "on to the next shard");
        assert!(p.walked(names(1, 0, None, &["d"]), 2), "every shard walked");
        assert!(!p.walking());
        let mut out = Vec::new();
        p.take_dirty(10, &mut out);
        let got: Vec<&str> = out.iter().map(|(n, _)| &**n).collect();
        assert_eq!(got, ["a", "b", "c", "d"]);
        assert!(out.iter().all(|&(_, online)| online));
    }

    #[test]
    fn a_user_gone_since_the_walk_saw_it_is_removed_and_a_lost_step_asked_again() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        p.start_walk();
        assert!(p.step_due(10, t0));
        assert_eq!(p.take_step(t0), Some((0, 0)));
        let later = t0 + Duration::from_millis(WALK_RETRY_MS);
        assert!(p.step_due(10, later), "no answer: asked for again");
        assert_eq!(p.take_step(later), Some((0, 0)));
        p.walked(names(0, 0, None, &["x", "y"]), 1);
        p.offline("x".into());
        let mut out = Vec::new();
        p.take_dirty(10, &mut out);
        assert_eq!(out, vec![("x".into(), false), ("y".into(), true)]);
    }
}
