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
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use super::stats::ClusterStats;

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

/// The users with connections on this node, and those whose entry must be written.
///
/// B-trees rather than hash tables: they grow node by node (a 19,000-user wave leaves no
/// doubled table behind, nor the old one it was copied from), cost about as much per user as
/// a half-full hash table, and let the refresh walk the users in order from where it stopped
/// instead of copying every name first.
#[derive(Default)]
pub struct Presence {
    /// Connections per user on this node; a user is present while in the map.
    online: BTreeMap<Arc<str>, u32>,
    dirty: BTreeSet<Arc<str>>,
    /// A batch taken from `dirty` is being written.
    in_flight: bool,
    /// Rewrite every present user now: Redis lost this node's entries (restarted empty).
    pub resync: bool,
}

impl Presence {
    /// One more connection of `user`. Returns whether the user just came online.
    pub fn connect(&mut self, user: &str) -> bool {
        if let Some(n) = self.online.get_mut(user) {
            *n += 1;
            return false;
        }
        let name: Arc<str> = user.into();
        self.online.insert(Arc::clone(&name), 1);
        self.dirty.insert(name);
        true
    }

    /// One connection of `user` closed. Returns whether it was the user's last.
    pub fn disconnect(&mut self, user: &str) -> bool {
        let Some(n) = self.online.get_mut(user) else {
            debug_assert!(false, "offline without online: {user}");
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        let (name, _) = self.online.remove_entry(user).expect("present above");
        self.dirty.insert(name);
        true
    }

    /// Whether changes wait to be written (or a batch of them is in flight).
    pub fn pending(&self) -> bool {
        !self.dirty.is_empty() || self.in_flight
    }

    pub fn users(&self) -> usize {
        self.online.len()
    }

    /// Takes up to `max` dirty users, each with whether it is online now.
    fn take_dirty(&mut self, max: usize, out: &mut Vec<(Arc<str>, bool)>) {
        for _ in 0..max {
            let Some(name) = self.dirty.pop_first() else { break };
            let online = self.online.contains_key(&name);
            out.push((name, online));
        }
    }

    fn mark_dirty(&mut self, names: impl IntoIterator<Item = Arc<str>>) {
        self.dirty.extend(names);
    }

    /// Appends present users after `cursor` (all of them from `None`) until `out` holds
    /// `max`, and moves `cursor` to the last one taken; `None` once the walk has passed the
    /// last user.
    fn refresh_from(
        &self,
        cursor: &mut Option<Arc<str>>,
        max: usize,
        out: &mut Vec<(Arc<str>, bool)>,
    ) {
        let from = match cursor.as_deref() {
            Some(last) => Bound::Excluded(last),
            None => Bound::Unbounded,
        };
        let room = max.saturating_sub(out.len());
        if room == 0 {
            return;
        }
        let before = out.len();
        let range = self.online.range::<str, _>((from, Bound::Unbounded));
        out.extend(range.take(room).map(|(name, _)| (Arc::clone(name), true)));
        *cursor = if out.len() - before < room {
            None
        } else {
            out.last().map(|(name, _)| Arc::clone(name))
        };
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

/// Writes presence changes and refreshes every present user every `ttl_ms / 3`.
pub async fn writer(
    mut con: ConnectionManager,
    presence: Rc<RefCell<Presence>>,
    node_id: Rc<str>,
    ttl_ms: u64,
    batch_max: usize,
    stats: Arc<ClusterStats>,
) {
    let users_per_batch = (batch_max / 2).max(1);
    let period = Duration::from_millis(ttl_ms / 3);
    let mut next_refresh = Instant::now() + period;
    // A refresh is under way; it has written the users up to `refresh_cursor` (from the
    // first one when `None`).
    let mut refreshing = false;
    let mut refresh_cursor: Option<Arc<str>> = None;
    let mut backoff = FLUSH_MS;
    let mut batch = Vec::with_capacity(users_per_batch);
    // Zero: the first tick connects (and says whether Redis is there).
    let mut last_io = Instant::now()
        .checked_sub(Duration::from_millis(PING_IDLE_MS))
        .unwrap_or_else(Instant::now);
    loop {
        tokio::time::sleep(Duration::from_millis(backoff)).await;
        let resync = std::mem::take(&mut presence.borrow_mut().resync);
        if (!refreshing && Instant::now() >= next_refresh) || resync {
            refreshing = true;
            refresh_cursor = None;
            next_refresh = Instant::now() + period;
        }
        backoff = FLUSH_MS;
        loop {
            batch.clear();
            presence.borrow_mut().take_dirty(users_per_batch, &mut batch);
            if refreshing && batch.len() < users_per_batch {
                presence.borrow().refresh_from(&mut refresh_cursor, users_per_batch, &mut batch);
                refreshing = refresh_cursor.is_some();
            }
            if batch.is_empty() {
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
                    ClusterStats::bump(&stats.registry_writes, commands);
                    ClusterStats::bump(&stats.registry_batches, 1);
                    stats.set_registry_up(true);
                }
                Err(_) => {
                    // Written again once Redis is back: entries are idempotent.
                    ClusterStats::bump(&stats.registry_errors, 1);
                    stats.set_registry_up(false);
                    presence.borrow_mut().mark_dirty(batch.drain(..).map(|(n, _)| n));
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
    }

    #[test]
    fn presence_reports_transitions_only() {
        let mut p = Presence::default();
        assert!(p.connect("bob"));
        assert!(!p.connect("bob"));
        assert!(!p.disconnect("bob"));
        assert!(p.disconnect("bob"));
        assert_eq!(p.users(), 0);
        // Came and went: one dirty entry, written as a removal.
        let mut out = Vec::new();
        p.take_dirty(10, &mut out);
        assert_eq!(out, vec![(Arc::from("bob"), false)]);
        p.take_dirty(10, &mut out);
        assert_eq!(out.len(), 1, "nothing left dirty");
    }

    #[test]
    fn refresh_walks_every_present_user_once() {
        let mut p = Presence::default();
        for u in ["d", "a", "c", "b", "e"] {
            p.connect(u);
        }
        let mut cursor = None;
        let mut out = Vec::new();
        p.refresh_from(&mut cursor, 2, &mut out);
        assert_eq!(cursor.as_deref(), Some("b"));
        // Left since the walk passed it, and joined behind the cursor: neither is refreshed
        // again; one joining ahead of it is.
        p.disconnect("a");
        p.connect("aa");
        p.connect("f");
        p.refresh_from(&mut cursor, 4, &mut out);
        assert_eq!(cursor.as_deref(), Some("d"), "a full batch keeps the cursor");
        out.clear();
        p.refresh_from(&mut cursor, 4, &mut out);
        let names: Vec<&str> = out.iter().map(|(n, _)| &**n).collect();
        assert_eq!(names, ["e", "f"]);
        assert!(out.iter().all(|&(_, online)| online));
        assert_eq!(cursor, None, "the walk is over");
    }
}
