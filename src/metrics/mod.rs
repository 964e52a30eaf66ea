//! Per-shard counters. Each shard writes only its own (single writer, relaxed); any shard
//! reads all of them to answer `/stats` and `/metrics`. No locks.
#![forbid(unsafe_code)]

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a connection closed, one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed TCP (EOF) or reset it.
    PeerGone,
    /// The WebSocket close handshake completed.
    WsClose,
    /// A WebSocket protocol violation (1002), bad UTF-8 (1007) or oversized message (1009).
    ProtocolError,
    /// An HTTP request we answered with an error status, or a finished admin exchange.
    HttpDone,
    HandshakeTimeout,
    PingTimeout,
    IdleTimeout,
    /// The outbound queue passed `outbox_bytes_max`.
    SlowConsumer,
    Shutdown,
    IoError,
    /// The client's token expired while it was connected.
    TokenExpired,
    /// A goaway during a drain.
    Drain,
    /// A goaway at the end of the connection's maximum lifetime.
    Lifetime,
    /// The user already held `conns_per_user_max` connections.
    UserCap,
    /// `POST /disconnect` for its user.
    Disconnected,
    /// Handed to a new process by a live upgrade (the connection itself stays open).
    Handover,
}

impl CloseReason {
    pub const ALL: [CloseReason; 16] = [
        CloseReason::PeerGone,
        CloseReason::WsClose,
        CloseReason::ProtocolError,
        CloseReason::HttpDone,
        CloseReason::HandshakeTimeout,
        CloseReason::PingTimeout,
        CloseReason::IdleTimeout,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
        CloseReason::IoError,
        CloseReason::TokenExpired,
        CloseReason::Drain,
        CloseReason::Lifetime,
        CloseReason::UserCap,
        CloseReason::Disconnected,
        CloseReason::Handover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::PeerGone => "peer_gone",
            CloseReason::WsClose => "ws_close",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::HttpDone => "http_done",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::IoError => "io_error",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Drain => "drain",
            CloseReason::Lifetime => "lifetime",
            CloseReason::UserCap => "user_cap",
            CloseReason::Disconnected => "disconnected",
            CloseReason::Handover => "handover",
        }
    }
}

/// Why a message was not delivered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A mesh ring and its backlog were full.
    MeshFull,
    /// The receiving connection was over `outbox_bytes_max` (it is closed as well).
    SlowConsumer,
}

/// Counters of one shard.
#[derive(Default)]
pub struct ShardStats {
    pub conns_ws: AtomicU64,
    pub conns_sse: AtomicU64,
    /// Long polls being held (`GET /poll`).
    pub conns_poll: AtomicU64,
    pub conns_admin: AtomicU64,
    /// Connections accepted but not yet past their request head.
    pub conns_handshake: AtomicU64,
    /// Gauge: browser tabs beyond the first behind this shard's client connections, as the
    /// clients reported them (`?tabs=N`); `c10m_client_tabs` adds one per connection.
    pub tabs_extra: AtomicU64,
    pub accepts: AtomicU64,
    /// Accepts refused because the shard's table was full.
    pub accepts_refused: AtomicU64,
    /// Connections this shard sent to their user's home shard after the request head, and
    /// those it kept because the move failed (the home shard's table full).
    pub placed_out: AtomicU64,
    pub placed_failed: AtomicU64,
    /// Connections this shard took over from another as their user's home shard.
    pub placed_in: AtomicU64,
    /// User publishes this home shard handed to another shard for some of the user's
    /// connections: a second mesh hop, which placement avoids.
    pub user_forwards: AtomicU64,
    pub closes: [AtomicU64; CloseReason::ALL.len()],
    /// Goaways sent (drain, lifetime).
    pub goaways: AtomicU64,
    /// New connections refused with 503 by the connect-rate limit.
    pub refused_rate: AtomicU64,
    /// New connections refused with 429 by the per-source connect-rate limit.
    pub refused_source: AtomicU64,
    /// New connections refused with 503 by the memory budget.
    pub refused_memory: AtomicU64,
    /// Handshakes refused for a missing, invalid or expired token (401) or a forbidden
    /// origin, user or topic (403).
    pub auth_refused: AtomicU64,
    /// HTTP error answers by class of request problem.
    pub http_4xx: AtomicU64,
    pub ws_protocol_errors: AtomicU64,
    /// Connections closed by `POST /disconnect`, and handshakes refused during a ban.
    pub disconnects: AtomicU64,
    pub banned_refused: AtomicU64,
    /// Live upgrade: connections handed to a new process, and taken over from an old one.
    pub handover_sent: AtomicU64,
    pub handover_received: AtomicU64,
    /// Bytes queued to send that came with connections taken over.
    pub handover_queued_bytes: AtomicU64,
    /// Publishes the old process forwarded while connections moved (numbered or
    /// delivered there), and pieces of them that did not decode.
    pub handover_forwards: AtomicU64,
    pub handover_forwards_bad: AtomicU64,
    /// User commands from other nodes the old process forwarded for connections that moved.
    pub handover_commands: AtomicU64,
    /// Mesh messages that carried a batch, and the messages they carried.
    pub mesh_batches: AtomicU64,
    pub mesh_batched: AtomicU64,
    /// Turns whose mesh spin (`mesh_spin_us`) saw a message arrive before sleeping.
    pub mesh_spin_hits: AtomicU64,
    /// WebSocket handshakes that agreed to permessage-deflate.
    pub ws_deflate_agreed: AtomicU64,
    /// Compressed frames built (once per shard and message for a broadcast).
    pub ws_deflated_frames: AtomicU64,
    /// Compressed client messages over `message_bytes_max` once inflated (closed with 1009).
    pub ws_inflate_refused: AtomicU64,
    pub published: AtomicU64,
    /// Messages retained in this shard's history log, and the bytes they cost (gauges).
    pub history_messages: AtomicU64,
    pub history_bytes: AtomicU64,
    /// Connections that came back with a position token.
    pub resumes: AtomicU64,
    /// Messages sent again from the history to a connection that resumed.
    pub replayed: AtomicU64,
    /// Streams a connection could not resume (told with a gap report).
    pub history_gaps: AtomicU64,
    /// Replays that waited for this node's log to reach the position asked from (a client
    /// from a cluster node further along the store).
    pub history_deferred: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped_mesh_full: AtomicU64,
    pub dropped_slow_consumer: AtomicU64,
    /// TLS handshakes completed on client listeners.
    pub tls_handshakes: AtomicU64,
    /// TLS connections that failed, by [`crate::tls::Failure`].
    pub tls_failures: [AtomicU64; 4],
    /// SIGHUP certificate reloads that took effect / that failed (the old one stays).
    pub tls_reloads: AtomicU64,
    pub tls_reload_failures: AtomicU64,
    /// Gauge: how late the loop woke, at worst, in the last full second: the time past the
    /// deadline it asked to wake at (ms).
    pub loop_lag_ms: AtomicU64,
    /// Gauge: the longest loop turn (work between two waits) in the last full second (ms).
    pub loop_turn_ms: AtomicU64,
    /// Milliseconds the liveness clock did not count because the shard itself stalled (turns
    /// longer than the credit a turn gets): time no client is blamed for.
    pub liveness_uncredited_ms: AtomicU64,
    /// Ping and idle timeouts postponed by the mass-timeout guard.
    pub timeouts_postponed: AtomicU64,
    /// Times the mass-timeout guard engaged.
    pub mass_timeout_guards: AtomicU64,
    /// Gauge: receive buffers in the shard's provided-buffer ring (the rest are parked, their
    /// pages given back; src/ring/bufring.rs).
    pub recv_buffers_in_ring: AtomicU64,
    /// Receives that found the ring empty and were retried once the parked buffers were back.
    pub recv_buffers_starved: AtomicU64,
    /// Pong deadlines extended because the client was still draining a backlog.
    pub liveness_draining: AtomicU64,
    /// Connections reset (SO_LINGER 0) on a forced close, so their send queue is freed at once.
    pub closes_reset: AtomicU64,
    /// Connections closed with a FIN after their queued bytes.
    pub closes_graceful: AtomicU64,
}

/// Adds to a counter this shard owns.
pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Subtracts from a gauge this shard owns.
pub fn drop_gauge(c: &AtomicU64) {
    c.fetch_sub(1, Relaxed);
}

impl ShardStats {
    pub fn closed(&self, reason: CloseReason) {
        bump(&self.closes[reason as usize], 1);
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        match reason {
            DropReason::MeshFull => bump(&self.dropped_mesh_full, n),
            DropReason::SlowConsumer => bump(&self.dropped_slow_consumer, n),
        }
    }

    /// Every open connection of the shard, for memory projections.
    pub fn open_connections(&self) -> u64 {
        self.clients() + self.conns_admin.load(Relaxed) + self.conns_handshake.load(Relaxed)
    }

    /// Client connections: WebSocket, SSE and long polls.
    pub fn clients(&self) -> u64 {
        self.conns_ws.load(Relaxed) + self.conns_sse.load(Relaxed) + self.conns_poll.load(Relaxed)
    }
}

/// `/stats`: connections per shard and totals, as JSON.
pub fn render_stats(shards: &[ShardStats], rss_bytes: u64) -> serde_json::Value {
    let mut per = Vec::new();
    let (mut ws, mut sse, mut admin, mut hs, mut poll, mut tabs) = (0, 0, 0, 0, 0, 0);
    for (i, s) in shards.iter().enumerate() {
        let (w, e, a, h) = (
            s.conns_ws.load(Relaxed),
            s.conns_sse.load(Relaxed),
            s.conns_admin.load(Relaxed),
            s.conns_handshake.load(Relaxed),
        );
        let p = s.conns_poll.load(Relaxed);
        tabs += w + e + p + s.tabs_extra.load(Relaxed);
        poll += p;
        ws += w;
        sse += e;
        admin += a;
        hs += h;
        per.push(serde_json::json!({
            "shard": i, "ws": w, "sse": e, "poll": p, "admin": a, "handshake": h,
            "connections": w + e + p,
            "published": s.published.load(Relaxed),
            "delivered": s.delivered.load(Relaxed),
            "recv_buffers_in_ring": s.recv_buffers_in_ring.load(Relaxed),
            "recv_buffers_starved": s.recv_buffers_starved.load(Relaxed),
        }));
    }
    serde_json::json!({
        "connections": ws + sse + poll,
        "ws": ws, "sse": sse, "poll": poll, "admin": admin, "handshake": hs,
        "tabs": tabs,
        "rss_bytes": rss_bytes,
        "shards": per,
    })
}

/// `/metrics`: Prometheus text format, one sample per shard.
pub fn render_prometheus(shards: &[ShardStats], rss_bytes: u64) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, f: &dyn Fn(&ShardStats) -> u64| {
        let _ = writeln!(out, "# HELP c10m_{name} {help}\n# TYPE c10m_{name} {kind}");
        for (i, s) in shards.iter().enumerate() {
            let _ = writeln!(out, "c10m_{name}{{shard=\"{i}\"}} {}", f(s));
        }
    };
    family("connections", "gauge", "Open client connections.", &|s| s.clients());
    family(
        "client_tabs",
        "gauge",
        "Browser tabs behind the open client connections (each counts 1 unless it said more).",
        &|s| s.clients() + s.tabs_extra.load(Relaxed),
    );
    family("connections_ws", "gauge", "Open WebSocket connections.", &|s| s.conns_ws.load(Relaxed));
    family("connections_sse", "gauge", "Open SSE connections.", &|s| s.conns_sse.load(Relaxed));
    family("connections_poll", "gauge", "Long polls held.", &|s| s.conns_poll.load(Relaxed));
    family("connections_admin", "gauge", "Open admin connections.", &|s| {
        s.conns_admin.load(Relaxed)
    });
    family("connections_handshake", "gauge", "Connections before their request head.", &|s| {
        s.conns_handshake.load(Relaxed)
    });
    family("accepts_total", "counter", "Accepted TCP connections.", &|s| s.accepts.load(Relaxed));
    family(
        "accepts_refused_total",
        "counter",
        "Connections refused with 503: shard at conns_per_shard_max.",
        &|s| s.accepts_refused.load(Relaxed),
    );
    family("http_errors_total", "counter", "HTTP 4xx/5xx answers to clients.", &|s| {
        s.http_4xx.load(Relaxed)
    });
    family("goaways_total", "counter", "Goaways sent (drain, maximum lifetime).", &|s| {
        s.goaways.load(Relaxed)
    });
    family(
        "placements_total",
        "counter",
        "Client connections sent to their user's home shard after the request head.",
        &|s| s.placed_out.load(Relaxed),
    );
    family(
        "placements_adopted_total",
        "counter",
        "Client connections taken over from another shard as their user's home shard.",
        &|s| s.placed_in.load(Relaxed),
    );
    family(
        "user_publishes_forwarded_total",
        "counter",
        "User publishes the home shard handed to another shard holding some of the user's connections.",
        &|s| s.user_forwards.load(Relaxed),
    );
    family(
        "placement_failures_total",
        "counter",
        "Moves to a home shard that failed; the connection stayed where it was accepted.",
        &|s| s.placed_failed.load(Relaxed),
    );
    family("accepts_refused_rate_total", "counter", "503s from accept_rate_per_s_max.", &|s| {
        s.refused_rate.load(Relaxed)
    });
    family(
        "accepts_refused_source_total",
        "counter",
        "429s from accept_rate_per_source_per_s_max.",
        &|s| s.refused_source.load(Relaxed),
    );
    family("accepts_refused_memory_total", "counter", "503s from memory_bytes_max.", &|s| {
        s.refused_memory.load(Relaxed)
    });
    family("auth_refused_total", "counter", "Handshakes refused with 401 or 403.", &|s| {
        s.auth_refused.load(Relaxed)
    });
    family("ws_protocol_errors_total", "counter", "WebSocket protocol violations.", &|s| {
        s.ws_protocol_errors.load(Relaxed)
    });
    family(
        "handover_sent_total",
        "counter",
        "Connections handed to a new process by a live upgrade.",
        &|s| s.handover_sent.load(Relaxed),
    );
    family(
        "handover_received_total",
        "counter",
        "Connections taken over from the previous process by a live upgrade.",
        &|s| s.handover_received.load(Relaxed),
    );
    family(
        "handover_queued_bytes_total",
        "counter",
        "Bytes queued to send that came with the connections taken over.",
        &|s| s.handover_queued_bytes.load(Relaxed),
    );
    family(
        "handover_forwards_total",
        "counter",
        "Publishes the previous process numbered or delivered while connections moved, \
         forwarded to this one.",
        &|s| s.handover_forwards.load(Relaxed),
    );
    family(
        "handover_commands_total",
        "counter",
        "User commands (disconnect, subscribe, unsubscribe) the previous process applied while \
         connections moved, forwarded to this one for the connections it took over.",
        &|s| s.handover_commands.load(Relaxed),
    );
    family(
        "handover_forwards_bad_total",
        "counter",
        "Pieces of forwarded publishes that did not decode (dropped).",
        &|s| s.handover_forwards_bad.load(Relaxed),
    );
    family("disconnects_total", "counter", "Connections closed by POST /disconnect.", &|s| {
        s.disconnects.load(Relaxed)
    });
    family(
        "banned_refused_total",
        "counter",
        "Handshakes refused with 403 while their user was banned by POST /disconnect.",
        &|s| s.banned_refused.load(Relaxed),
    );
    family(
        "mesh_batches_total",
        "counter",
        "Mesh messages that carried a batch of publishes (POST /publish/batch).",
        &|s| s.mesh_batches.load(Relaxed),
    );
    family(
        "mesh_batched_messages_total",
        "counter",
        "Messages carried inside mesh batches.",
        &|s| s.mesh_batched.load(Relaxed),
    );
    family(
        "mesh_spin_hits_total",
        "counter",
        "Times a shard polling its mesh rings before sleeping (mesh_spin_us) saw a message arrive.",
        &|s| s.mesh_spin_hits.load(Relaxed),
    );
    family(
        "ws_deflate_agreed_total",
        "counter",
        "WebSocket handshakes that agreed to permessage-deflate.",
        &|s| s.ws_deflate_agreed.load(Relaxed),
    );
    family(
        "ws_deflated_frames_total",
        "counter",
        "Compressed frames built, each shared by its shard's recipients.",
        &|s| s.ws_deflated_frames.load(Relaxed),
    );
    family(
        "ws_inflate_refused_total",
        "counter",
        "Compressed client messages refused with 1009 for inflating past message_bytes_max.",
        &|s| s.ws_inflate_refused.load(Relaxed),
    );
    family("messages_published_total", "counter", "Publishes accepted.", &|s| {
        s.published.load(Relaxed)
    });
    family("history_messages", "gauge", "Messages retained in the history.", &|s| {
        s.history_messages.load(Relaxed)
    });
    family("history_bytes", "gauge", "Bytes of retained history (payload + index).", &|s| {
        s.history_bytes.load(Relaxed)
    });
    family("resumes_total", "counter", "Connections that resumed from a position.", &|s| {
        s.resumes.load(Relaxed)
    });
    family("replayed_total", "counter", "Messages replayed from the history.", &|s| {
        s.replayed.load(Relaxed)
    });
    family("history_gaps_total", "counter", "Streams that could not be resumed.", &|s| {
        s.history_gaps.load(Relaxed)
    });
    family(
        "history_deferred_total",
        "counter",
        "Replays that waited for the cluster store's messages to reach this node.",
        &|s| s.history_deferred.load(Relaxed),
    );
    family("messages_delivered_total", "counter", "Messages queued to a connection.", &|s| {
        s.delivered.load(Relaxed)
    });
    family("tls_handshakes_total", "counter", "TLS handshakes completed.", &|s| {
        s.tls_handshakes.load(Relaxed)
    });
    family("tls_reloads_total", "counter", "TLS certificate reloads (SIGHUP).", &|s| {
        s.tls_reloads.load(Relaxed)
    });
    family("tls_reload_failures_total", "counter", "Failed reloads; old cert kept.", &|s| {
        s.tls_reload_failures.load(Relaxed)
    });
    family("loop_lag_ms", "gauge", "Worst lateness of a loop wake in the last second.", &|s| {
        s.loop_lag_ms.load(Relaxed)
    });
    family("loop_turn_ms", "gauge", "Longest loop turn in the last second.", &|s| {
        s.loop_turn_ms.load(Relaxed)
    });
    family(
        "liveness_uncredited_ms_total",
        "counter",
        "Shard stall time the liveness clock did not count against clients.",
        &|s| s.liveness_uncredited_ms.load(Relaxed),
    );
    family(
        "liveness_postponed_total",
        "counter",
        "Ping and idle timeouts postponed by the mass-timeout guard.",
        &|s| s.timeouts_postponed.load(Relaxed),
    );
    family("mass_timeout_guards_total", "counter", "Mass-timeout guard engagements.", &|s| {
        s.mass_timeout_guards.load(Relaxed)
    });
    family("recv_buffers_in_ring", "gauge", "Receive buffers in the shard's ring.", &|s| {
        s.recv_buffers_in_ring.load(Relaxed)
    });
    family(
        "recv_buffers_starved_total",
        "counter",
        "Receives that found the buffer ring empty (retried).",
        &|s| s.recv_buffers_starved.load(Relaxed),
    );
    family(
        "liveness_draining_total",
        "counter",
        "Pong deadlines extended for a client still draining its backlog.",
        &|s| s.liveness_draining.load(Relaxed),
    );
    family("closes_reset_total", "counter", "Forced closes by reset (send queue freed).", &|s| {
        s.closes_reset.load(Relaxed)
    });
    family("closes_graceful_total", "counter", "Closes with a FIN after queued bytes.", &|s| {
        s.closes_graceful.load(Relaxed)
    });
    let _ = writeln!(
        out,
        "# HELP c10m_messages_dropped_total Messages not delivered, by reason.\n\
         # TYPE c10m_messages_dropped_total counter"
    );
    for (i, s) in shards.iter().enumerate() {
        for (reason, v) in
            [("mesh_full", &s.dropped_mesh_full), ("slow_consumer", &s.dropped_slow_consumer)]
        {
            let _ = writeln!(
                out,
                "c10m_messages_dropped_total{{shard=\"{i}\",reason=\"{reason}\"}} {}",
                v.load(Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP c10m_closes_total Closed connections, by reason.\n# TYPE c10m_closes_total counter"
    );
    for (i, s) in shards.iter().enumerate() {
        for r in CloseReason::ALL {
            let v = s.closes[r as usize].load(Relaxed);
            let _ = writeln!(out, "c10m_closes_total{{shard=\"{i}\",reason=\"{}\"}} {v}", r.name());
        }
    }
    let _ = writeln!(
        out,
        "# HELP c10m_tls_failures_total TLS connections failed, by reason.\n\
         # TYPE c10m_tls_failures_total counter"
    );
    for (i, s) in shards.iter().enumerate() {
        for f in crate::tls::Failure::ALL {
            let v = s.tls_failures[f as usize].load(Relaxed);
            let name = f.name();
            let _ = writeln!(out, "c10m_tls_failures_total{{shard=\"{i}\",reason=\"{name}\"}} {v}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP c10m_resident_memory_bytes Process RSS.\n# TYPE c10m_resident_memory_bytes gauge\n\
         c10m_resident_memory_bytes {rss_bytes}"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_shard_and_reason() {
        let shards: Vec<ShardStats> = (0..2).map(|_| ShardStats::default()).collect();
        bump(&shards[1].conns_ws, 3);
        shards[0].closed(CloseReason::SlowConsumer);
        let text = render_prometheus(&shards, 100);
        assert!(text.contains("c10m_connections{shard=\"1\"} 3"));
        assert!(text.contains("c10m_closes_total{shard=\"0\",reason=\"slow_consumer\"} 1"));
        let json = render_stats(&shards, 1);
        assert_eq!(json["connections"], 3);
        assert_eq!(json["shards"][1]["ws"], 3);
    }
}
