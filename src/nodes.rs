//! `GET /nodes` on the client listener: the nodes a client may connect to and how loaded
//! each is, so a client chooses its endpoint itself (the smart client, `clients/js`).
//!
//! ```text
//! {"self":"n1","nodes":[{"id":"n1","url":"wss://n1.example.com","connections":1234,
//!   "capacity":1000000,"load":0.0012,"mem_headroom":0.93,"draining":false}, …]}
//! ```
//!
//! - This node's entry comes from its own counters (refreshed by shard 0 every second).
//! - On a cluster node the bridge writes this node's entry next to its heartbeat (the Redis
//!   hash [`INFO_KEY`], one JSON field per node) and reads every node's back, keeping those
//!   whose heartbeat has not expired ([`Directory::set_others`]); a standalone node lists
//!   itself only, with `"id":null`.
//! - `load` is connections over capacity (`conns_per_shard_max` × shards); `mem_headroom`
//!   is `1 − RSS / memory_bytes_max`, null without a memory budget; `draining` is set from
//!   the first goaway of a paced drain, so clients stop choosing the node before it is gone.
//! - `url` is `--public-url`, null when not set: the client keeps the endpoint it asked.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The Redis hash of node entries: field = node id, value = [`NodeInfo`] as JSON.
pub const INFO_KEY: &str = "c10m:nodeinfo";

/// What one node tells clients about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: Option<String>,
    pub url: Option<String>,
    pub connections: u64,
    pub capacity: u64,
    pub rss_bytes: u64,
    /// 0: no memory budget.
    pub memory_bytes_max: u64,
    pub draining: bool,
}

impl NodeInfo {
    /// The entry as `GET /nodes` lists it.
    pub fn public(&self) -> serde_json::Value {
        let load = if self.capacity == 0 {
            0.0
        } else {
            (self.connections as f64 / self.capacity as f64).min(1.0)
        };
        let headroom = (self.memory_bytes_max > 0)
            .then(|| (1.0 - self.rss_bytes as f64 / self.memory_bytes_max as f64).clamp(0.0, 1.0));
        serde_json::json!({
            "id": self.id, "url": self.url, "connections": self.connections,
            "capacity": self.capacity, "load": round4(load),
            "mem_headroom": headroom.map(round4), "draining": self.draining,
        })
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// This node's load, written by the shards, and the other nodes, written by the bridge.
pub struct Directory {
    id: Option<String>,
    url: Option<String>,
    capacity: u64,
    memory_bytes_max: u64,
    /// Client connections (WebSocket, SSE, long polls) and RSS, refreshed every second.
    pub connections: AtomicU64,
    pub rss_bytes: AtomicU64,
    draining: AtomicBool,
    /// Wakes the bridge's heartbeat, so other nodes learn of a drain at once.
    pub changed: tokio::sync::Notify,
    /// The other live nodes, as the bridge last read them.
    others: Mutex<Arc<[NodeInfo]>>,
}

impl Directory {
    pub fn new(cfg: &Config, shards: usize) -> Directory {
        Directory {
            id: cfg.cluster.node_id.clone(),
            url: cfg.public_url.clone(),
            capacity: cfg.limits.conns_per_shard_max as u64 * shards as u64,
            memory_bytes_max: cfg.limits.memory_bytes_max,
            connections: AtomicU64::new(0),
            rss_bytes: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            others: Mutex::new(Arc::from(Vec::new())),
        }
    }

    /// This node's entry now.
    pub fn local(&self) -> NodeInfo {
        NodeInfo {
            id: self.id.clone(),
            url: self.url.clone(),
            connections: self.connections.load(Relaxed),
            capacity: self.capacity,
            rss_bytes: self.rss_bytes.load(Relaxed),
            memory_bytes_max: self.memory_bytes_max,
            draining: self.draining.load(Relaxed),
        }
    }

    /// Marks this node draining (a paced drain began); told to the cluster at once.
    pub fn set_draining(&self) {
        if !self.draining.swap(true, Relaxed) {
            self.changed.notify_one();
        }
    }

    /// Replaces the other nodes' entries (the bridge, after each heartbeat read).
    pub fn set_others(&self, nodes: Vec<NodeInfo>) {
        let nodes: Arc<[NodeInfo]> = nodes.into();
        *self.others.lock().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    pub fn others(&self) -> Arc<[NodeInfo]> {
        Arc::clone(&self.others.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The body of `GET /nodes`: this node first, then the others by id.
    pub fn render(&self) -> String {
        let mut nodes = vec![self.local().public()];
        nodes.extend(self.others().iter().map(NodeInfo::public));
        serde_json::json!({ "self": self.id, "nodes": nodes }).to_string()
    }
}

/// The entries of `fields` (the [`INFO_KEY`] hash read back) for nodes `alive` says are
/// live, other than `me`, sorted by id. A field that does not parse is skipped: another
/// version may write more, and a broken one must not hide the rest.
pub fn others_from(
    fields: Vec<(String, String)>,
    me: &str,
    alive: impl Fn(&str) -> bool,
) -> Vec<NodeInfo> {
    let mut out: Vec<NodeInfo> = fields
        .into_iter()
        .filter(|(id, _)| id != me && alive(id))
        .filter_map(|(id, json)| {
            let mut info: NodeInfo = serde_json::from_str(&json).ok()?;
            info.id = Some(id);
            Some(info)
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, connections: u64) -> NodeInfo {
        NodeInfo {
            id: Some(id.into()),
            url: Some(format!("ws://{id}:8080")),
            connections,
            capacity: 1000,
            rss_bytes: 250,
            memory_bytes_max: 1000,
            draining: false,
        }
    }

    #[test]
    fn public_entry_has_load_and_headroom() {
        let v = info("a", 250).public();
        assert_eq!(v["load"], 0.25);
        assert_eq!(v["mem_headroom"], 0.75);
        assert_eq!(v["url"], "ws://a:8080");
        let unbounded = NodeInfo { memory_bytes_max: 0, capacity: 0, ..info("b", 5) };
        assert!(unbounded.public()["mem_headroom"].is_null());
        assert_eq!(unbounded.public()["load"], 0.0);
    }

    #[test]
    fn others_skip_self_dead_and_broken_entries() {
        let json = |i: &NodeInfo| serde_json::to_string(i).unwrap();
        let fields = vec![
            ("c".to_string(), json(&info("c", 3))),
            ("me".to_string(), json(&info("me", 1))),
            ("dead".to_string(), json(&info("dead", 1))),
            ("broken".to_string(), "{not json".to_string()),
            ("a".to_string(), json(&info("zz", 7))),
        ];
        let got = others_from(fields, "me", |id| id != "dead");
        let ids: Vec<_> = got.iter().map(|n| n.id.clone().unwrap()).collect();
        assert_eq!(ids, ["a", "c"], "the field name is the id, whatever the value says");
        assert_eq!(got[0].connections, 7);
    }
}
