//! Counters of the bridge thread, read by any shard for `/stats` and `/metrics`. The bridge is
//! their only writer (relaxed atomics), like a shard with its own counters.
#![forbid(unsafe_code)]

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Why the bridge dropped a message (at-most-once: nothing is retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterDrop {
    /// The bridge's lookup or bus-publish queue was at `bridge_queue_max`.
    QueueFull,
    /// Redis was unreachable or answered an error, so the user could not be looked up.
    RegistryDown,
    /// NATS was not connected, or refused the publish.
    BusDown,
    /// A mesh ring from the bridge to a shard and its backlog were full.
    MeshFull,
    /// A message from the bus without the headers its subject needs, over
    /// `message_bytes_max`, or naming a user or topic that cannot travel in a header.
    BadMessage,
    /// The history store did not acknowledge a publish (its stream is gone or full, or the
    /// acknowledgement timed out).
    StoreFailed,
}

impl ClusterDrop {
    pub const ALL: [ClusterDrop; 6] = [
        ClusterDrop::QueueFull,
        ClusterDrop::RegistryDown,
        ClusterDrop::BusDown,
        ClusterDrop::MeshFull,
        ClusterDrop::BadMessage,
        ClusterDrop::StoreFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClusterDrop::QueueFull => "queue_full",
            ClusterDrop::RegistryDown => "registry_down",
            ClusterDrop::BusDown => "bus_down",
            ClusterDrop::MeshFull => "mesh_full",
            ClusterDrop::BadMessage => "bad_message",
            ClusterDrop::StoreFailed => "store_failed",
        }
    }
}

/// The bridge's counters.
#[derive(Default)]
pub struct ClusterStats {
    pub node_id: String,
    pub registry_connected: AtomicBool,
    pub bus_connected: AtomicBool,
    /// Users with at least one connection on this node (gauge).
    pub online_users: AtomicU64,
    /// Redis commands written (ZADD, PEXPIRE, ZREM), and the pipelines that carried them.
    pub registry_writes: AtomicU64,
    pub registry_batches: AtomicU64,
    /// Pipelines that failed (their users are written again on the next batch or refresh).
    pub registry_errors: AtomicU64,
    /// Times Redis had lost this node's entries (its heartbeat vanished) and every present
    /// user was rewritten at once.
    pub registry_resyncs: AtomicU64,
    /// Refresh walks over the shards' users completed (one every third of
    /// `registry_ttl_ms`, and one per resync).
    pub registry_refreshes: AtomicU64,
    /// Users looked up, and the pipelines that carried the lookups.
    pub lookups: AtomicU64,
    pub lookup_batches: AtomicU64,
    /// User publishes whose user was on no other node.
    pub lookups_empty: AtomicU64,
    /// Registry entries skipped because their node's heartbeat had expired (a dead node).
    pub lookups_dead_node: AtomicU64,
    /// Nodes with a live heartbeat at the last read (gauge).
    pub live_nodes: AtomicU64,
    pub bus_out: AtomicU64,
    pub bus_in: AtomicU64,
    /// Topic and broadcast messages from the bus that this node published itself (skipped:
    /// it delivered them locally when it accepted them).
    pub bus_in_own: AtomicU64,
    /// Presence requests this node sent the other nodes (`c10m.presence`), those answered
    /// at the deadline with fewer nodes than expected, and node answers that came after it.
    pub presence_asked: AtomicU64,
    pub presence_short: AtomicU64,
    pub presence_late: AtomicU64,
    /// Presence requests from other nodes or backends that this node answered.
    pub presence_served: AtomicU64,
    /// With history on: whether the store's stream is there and read (publishes then go
    /// through it; while not, they are delivered on this node only, unnumbered).
    pub store_connected: AtomicBool,
    /// Publishes the store acknowledged, messages read from it, and times its stream was
    /// found made anew (a new epoch).
    pub stored: AtomicU64,
    pub store_in: AtomicU64,
    pub store_epochs: AtomicU64,
    /// Publishes delivered on this node only because the store was unreachable.
    pub store_local: AtomicU64,
    /// Publishes accepted by this node's shards for the store that it has not acknowledged
    /// (or refused) yet: a stopping bridge waits for them, so does a live upgrade before its
    /// admin connections move. Shards add, the bridge takes away.
    pub store_pending: AtomicU64,
    pub drops: [AtomicU64; 6],
    /// A live upgrade's meeting point with the store (the one part not written by the
    /// bridge alone): see [`StoreHandover`].
    pub handover: StoreHandover,
    /// The id of the NATS server the bus connection is on (its last one while down): a live
    /// upgrade's new process connects to the same (`super::connect`).
    bus_server: std::sync::Mutex<String>,
}

/// Where the old process of a live upgrade stops reading the store and the new one starts
/// (`docs/handover.md`, "On a cluster node").
#[derive(Default)]
pub struct StoreHandover {
    /// Set by the old bridge once it stopped handing stored messages to its shards: the
    /// sequence the new process reads from (0: not stopped).
    pub next: AtomicU64,
    /// Set by the old control thread when the handover failed: the bridge reads on.
    pub release: AtomicBool,
    /// Set by the old control thread once the new process has everything: the node lives
    /// on in it, so the stopping bridge leaves its entries in the registry.
    pub handed_over: AtomicBool,
    /// Set by the old control thread when the new process is ready: the id of its bus
    /// server (empty: it did not say, as an older one does not).
    peer_server: std::sync::Mutex<String>,
}

impl StoreHandover {
    pub fn set_peer_server(&self, id: &str) {
        id.clone_into(&mut self.peer_server.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The new process's bus server, if it said.
    pub fn peer_server(&self) -> String {
        self.peer_server.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ClusterStats {
    pub fn new(node_id: &str) -> ClusterStats {
        ClusterStats { node_id: node_id.to_owned(), ..Default::default() }
    }

    /// Records whether Redis answers; a change is logged (once per change, not per request).
    pub fn set_registry_up(&self, up: bool) {
        let what = ["cluster: Redis registry unreachable", "cluster: Redis registry connected"];
        self.set_up(&self.registry_connected, up, what);
    }

    /// Records the NATS connection's state; a change is logged.
    pub fn set_bus_up(&self, up: bool) {
        self.set_up(
            &self.bus_connected,
            up,
            ["cluster: NATS bus disconnected", "cluster: NATS bus connected"],
        );
    }

    /// Records the id of the server the bus connection is on.
    pub fn set_bus_server(&self, id: &str) {
        let mut server = self.bus_server.lock().unwrap_or_else(|e| e.into_inner());
        if *server != id {
            id.clone_into(&mut server);
        }
    }

    /// The id of the server the bus connection is on (empty before the first connection).
    pub fn bus_server(&self) -> String {
        self.bus_server.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stores a connection flag; a change is logged, `what` being [down, up].
    fn set_up(&self, flag: &AtomicBool, up: bool, what: [&str; 2]) {
        if flag.swap(up, Relaxed) == up {
            return;
        }
        if up {
            tracing::info!(node = %self.node_id, "{}", what[1]);
        } else {
            tracing::warn!(node = %self.node_id, "{}", what[0]);
        }
    }

    /// Whether publishes can go through the history store now: the bus is connected and
    /// the store's stream is read.
    pub fn store_usable(&self) -> bool {
        self.store_connected.load(Relaxed) && self.bus_connected.load(Relaxed)
    }

    pub fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn dropped(&self, why: ClusterDrop, n: u64) {
        self.drops[why as usize].fetch_add(n, Relaxed);
    }

    /// The `cluster` object of `/stats`.
    pub fn json(&self) -> serde_json::Value {
        let drops: serde_json::Map<String, serde_json::Value> = ClusterDrop::ALL
            .iter()
            .map(|&d| (d.name().to_owned(), self.drops[d as usize].load(Relaxed).into()))
            .collect();
        serde_json::json!({
            "node_id": self.node_id,
            "registry_connected": self.registry_connected.load(Relaxed),
            "bus_connected": self.bus_connected.load(Relaxed),
            "bus_server": self.bus_server(),
            "online_users": self.online_users.load(Relaxed),
            "registry_writes": self.registry_writes.load(Relaxed),
            "registry_batches": self.registry_batches.load(Relaxed),
            "registry_errors": self.registry_errors.load(Relaxed),
            "registry_resyncs": self.registry_resyncs.load(Relaxed),
            "registry_refreshes": self.registry_refreshes.load(Relaxed),
            "lookups": self.lookups.load(Relaxed),
            "lookup_batches": self.lookup_batches.load(Relaxed),
            "lookups_empty": self.lookups_empty.load(Relaxed),
            "lookups_dead_node": self.lookups_dead_node.load(Relaxed),
            "live_nodes": self.live_nodes.load(Relaxed),
            "bus_out": self.bus_out.load(Relaxed),
            "bus_in": self.bus_in.load(Relaxed),
            "bus_in_own": self.bus_in_own.load(Relaxed),
            "presence_asked": self.presence_asked.load(Relaxed),
            "presence_short": self.presence_short.load(Relaxed),
            "presence_late": self.presence_late.load(Relaxed),
            "presence_served": self.presence_served.load(Relaxed),
            "store_connected": self.store_usable(),
            "stored": self.stored.load(Relaxed),
            "store_in": self.store_in.load(Relaxed),
            "store_epochs": self.store_epochs.load(Relaxed),
            "store_local": self.store_local.load(Relaxed),
            "dropped": drops,
        })
    }

    /// The `c10m_cluster_*` families of `/metrics`.
    pub fn prometheus(&self, out: &mut String) {
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP c10m_cluster_{name} {help}\n# TYPE c10m_cluster_{name} {kind}\n\
                 c10m_cluster_{name} {v}"
            );
        };
        let b = |f: &AtomicBool| f.load(Relaxed) as u64;
        one(
            "registry_connected",
            "gauge",
            "Redis registry reachable.",
            b(&self.registry_connected),
        );
        one("bus_connected", "gauge", "NATS bus connected.", b(&self.bus_connected));
        one(
            "store_connected",
            "gauge",
            "History store stream present and read (history on).",
            self.store_usable() as u64,
        );
        one(
            "online_users",
            "gauge",
            "Users connected to this node.",
            self.online_users.load(Relaxed),
        );
        one(
            "live_nodes",
            "gauge",
            "Nodes with a live heartbeat in the registry.",
            self.live_nodes.load(Relaxed),
        );
        let counters: [(&str, &str, &AtomicU64); 20] = [
            (
                "store_local_total",
                "Publishes delivered on this node only: the store was unreachable.",
                &self.store_local,
            ),
            ("stored_total", "Publishes the history store acknowledged.", &self.stored),
            ("store_in_total", "Messages read from the history store.", &self.store_in),
            (
                "store_epochs_total",
                "Times the store's stream was found made anew.",
                &self.store_epochs,
            ),
            ("registry_writes_total", "Redis registry commands written.", &self.registry_writes),
            ("registry_batches_total", "Redis registry pipelines written.", &self.registry_batches),
            (
                "registry_errors_total",
                "Redis registry pipelines that failed.",
                &self.registry_errors,
            ),
            (
                "registry_resyncs_total",
                "Full rewrites after Redis lost this node's entries.",
                &self.registry_resyncs,
            ),
            (
                "registry_refreshes_total",
                "Refresh walks over this node's users completed.",
                &self.registry_refreshes,
            ),
            ("lookups_total", "Users looked up in the registry.", &self.lookups),
            ("lookup_batches_total", "Registry lookup pipelines.", &self.lookup_batches),
            ("lookups_empty_total", "User publishes with no other node.", &self.lookups_empty),
            (
                "lookups_dead_node_total",
                "Registry entries skipped: their node's heartbeat expired.",
                &self.lookups_dead_node,
            ),
            ("bus_out_total", "Messages published to NATS.", &self.bus_out),
            ("bus_in_total", "Messages received from NATS.", &self.bus_in),
            ("bus_in_own_total", "Own topic/broadcast messages skipped.", &self.bus_in_own),
            ("presence_asked_total", "Presence requests sent to the nodes.", &self.presence_asked),
            (
                "presence_short_total",
                "Presence requests answered at the deadline, nodes missing.",
                &self.presence_short,
            ),
            (
                "presence_late_total",
                "Node presence answers after the deadline.",
                &self.presence_late,
            ),
            (
                "presence_served_total",
                "Presence requests answered for other nodes or backends.",
                &self.presence_served,
            ),
        ];
        for (name, help, v) in counters {
            one(name, "counter", help, v.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP c10m_cluster_dropped_total Messages the bridge dropped, by reason.\n\
             # TYPE c10m_cluster_dropped_total counter"
        );
        for d in ClusterDrop::ALL {
            let v = self.drops[d as usize].load(Relaxed);
            let _ = writeln!(out, "c10m_cluster_dropped_total{{reason=\"{}\"}} {v}", d.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_drop_reason() {
        let s = ClusterStats::new("n1");
        s.dropped(ClusterDrop::BusDown, 2);
        let mut text = String::new();
        s.prometheus(&mut text);
        assert!(text.contains("c10m_cluster_dropped_total{reason=\"bus_down\"} 2"), "{text}");
        assert!(text.contains("c10m_cluster_dropped_total{reason=\"queue_full\"} 0"));
        assert_eq!(s.json()["dropped"]["bus_down"], 2);
        assert_eq!(s.json()["node_id"], "n1");
    }
}
