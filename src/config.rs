//! Configuration: flags, an optional TOML file, and every limit with its unit last.
//!
//! Precedence: built-in defaults, then the TOML file (`--config`), then flags. Every field of
//! [`Limits`] is documented with its default and why; `c10m serve --help` lists them.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The fixed-file table of one ring cannot exceed this many slots on any kernel.
pub const RING_FILES_KERNEL_MAX: u32 = 1_048_576;

/// Limits and timings. Each is a maximum or a period; units are the suffix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections one shard holds (client and admin). Default 1,048,576, the kernel's cap on
    /// a ring's fixed-file table; the soft RLIMIT_NOFILE lowers it at start.
    pub conns_per_shard_max: u32,
    /// Bytes of an HTTP request head. Default 8 KiB: browsers send 1–2 KiB; larger is abuse.
    pub head_bytes_max: u32,
    /// Header lines in an HTTP request head. Default 64.
    pub headers_max: u32,
    /// Bytes of one published message and of one client WebSocket message. Default 64 KiB.
    pub message_bytes_max: u32,
    /// Bytes of one client WebSocket frame payload. Default 64 KiB.
    pub frame_bytes_max: u32,
    /// Bytes queued for one connection before it is closed as a slow consumer. Default 1 MiB:
    /// sixteen maximum-size messages, or thousands of small ones, of headroom.
    pub outbox_bytes_max: u32,
    /// SO_SNDBUF of client sockets (the kernel doubles it); 0 leaves the kernel's autotuning,
    /// which lets one slow reader park up to `tcp_wmem` max (4 MiB by default) of kernel
    /// memory before `outbox_bytes_max` even sees it. Default 128 KiB.
    pub socket_send_buffer_bytes: u32,
    /// Bytes of one provided receive buffer. Default 4 KiB: one page; a read never needs more
    /// because client traffic is small (handshakes, pongs, control messages).
    pub recv_buffer_bytes: u32,
    /// Provided receive buffers per shard (a power of two). Default 512: 2 MiB per shard, shared
    /// by every connection of the shard; idle connections hold none.
    pub recv_buffers: u32,
    /// Submission queue entries per ring. Default 4096; the completion queue is four times it.
    /// Ring memory counts against RLIMIT_MEMLOCK (8 MiB here).
    pub ring_entries: u32,
    /// Messages in flight on one shard-to-shard ring. Default 1024 (32 KiB a ring): a shard
    /// drains its rings every turn, and a full ring spills into the sender's backlog.
    pub mesh_ring_entries: u32,
    /// Messages waiting for room on a full mesh ring before new publishes are dropped and
    /// counted. Default 65,536.
    pub mesh_backlog_max: u32,
    /// Microseconds a shard polls its inbound mesh rings before sleeping, after a turn that
    /// took mesh messages. Default 0 (sleep at once): on 2 vCPUs a 50 µs spin moved the
    /// targeted tail only within the runs' spread and cost half again the CPU per push
    /// (docs/measurements.md); hosts with spare cores may set tens of µs. At most 1000.
    pub mesh_spin_us: u32,
    /// Pending connections in each listener's accept queue. Default 4096.
    pub listen_backlog: u32,
    /// Time to complete the HTTP head (and WebSocket handshake) after accept. Default 10 s.
    pub handshake_timeout_ms: u64,
    /// Period of WebSocket pings from the server. Default 30 s, under common NAT idle timeouts.
    pub ping_interval_ms: u64,
    /// Time for a pong (or any frame) to arrive after a ping. Default 10 s.
    pub pong_timeout_ms: u64,
    /// Period of SSE comment heartbeats. Default 15 s; they also find dead SSE peers.
    pub sse_heartbeat_ms: u64,
    /// `retry:` sent to SSE clients at stream start. Default 2 s.
    pub sse_retry_ms: u32,
    /// A WebSocket or admin connection that sent nothing for this long is closed. SSE clients
    /// never send, so they are exempt (heartbeats find dead ones). Default 120 s; 0 disables.
    pub idle_timeout_ms: u64,
    /// Time a closing WebSocket waits for the peer's close frame. Default 2 s.
    pub close_timeout_ms: u64,
    /// The fewest liveness timeouts (ping or idle) in one second of one shard that can engage
    /// the mass-timeout guard, which then postpones them: that many at once, and more than
    /// half of the pongs the shard expects in a second, is evidence of a local problem (a
    /// stalled host or NIC), not of that many dead clients. Default 64; 0 turns the guard off.
    pub mass_timeout_min: u32,
    /// How long published messages stay in the history that reconnecting clients resume
    /// from. Default 120 s: a phone switching networks, a deploy's paced drain and a
    /// node's restart all fit; 0 turns history off (every resume reports a gap).
    pub history_ttl_ms: u64,
    /// Messages kept per user and per topic within the window. Default 1000: a price topic
    /// at 8 ticks a second fills the 2-minute window; a client that missed more is told so
    /// (a gap) instead of getting part of them. Memory is bounded by `history_bytes_max`.
    pub history_per_stream_max: u32,
    /// Bytes of history (payloads plus 40 B per message and 160 B per stream that has any)
    /// for the whole process, split over the shards; past it the oldest messages leave
    /// early. Counts in memory admission. Default 64 MiB.
    pub history_bytes_max: u64,
    /// Bound on a shutdown (SIGINT) or a drain (SIGTERM, `POST /drain`). Default 10 s.
    pub shutdown_timeout_ms: u64,
    /// Bound on a live upgrade, on the old process: past it with connections still moving
    /// (a successor that takes batches but does not acknowledge them), the handover is
    /// called off and the old process serves on. Default 120 s.
    pub handover_timeout_ms: u64,
    /// Goaways per second during a drain, for the whole process; 0 closes all at once.
    /// Default 0; a rolling deploy sets it so clients come back spread out.
    pub drain_rate_per_s: u32,
    /// Longest a client connection lives before a goaway; 0: unlimited. Default 0.
    pub conn_lifetime_ms_max: u64,
    /// Up to this percentage is taken off each connection's lifetime at random, so
    /// connections opened together do not end together. Default 20.
    pub conn_lifetime_jitter_pct: u32,
    /// A goaway tells the client to come back after a random delay up to this. Default 5 s.
    pub goaway_reconnect_ms_max: u64,
    /// New connections get 503 when RSS plus the kernel memory of the open connections
    /// (4.3 KB each) would pass this; 0: no limit. Default 0.
    pub memory_bytes_max: u64,
    /// Connections one user may hold; the newest past it is closed. 0: no limit. Default 0.
    pub conns_per_user_max: u32,
    /// New client connections per second, for the whole process; over it they get 503.
    /// 0: no limit. Default 0.
    pub accept_rate_per_s_max: u32,
    /// New client connections per second from one source address (an IPv4 address or an
    /// IPv6 /64); over it they get 429. 0: no limit. Default 0.
    pub accept_rate_per_source_per_s_max: u32,
    /// `POST /publish/batch`: the most lines and body bytes of one batch (413 past them).
    /// Defaults 10,000 and 8 MiB.
    pub batch_lines_max: u32,
    pub batch_bytes_max: u32,
    /// permessage-deflate: messages shorter than this go uncompressed. Default 128.
    pub compression_min_bytes: u32,
    /// permessage-deflate: zlib level 1 (fastest) ..= 9 (smallest). Default 6.
    pub compression_level: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            conns_per_shard_max: RING_FILES_KERNEL_MAX,
            head_bytes_max: 8 * 1024,
            headers_max: 64,
            message_bytes_max: 64 * 1024,
            frame_bytes_max: 64 * 1024,
            outbox_bytes_max: 1024 * 1024,
            socket_send_buffer_bytes: 128 * 1024,
            recv_buffer_bytes: 4096,
            recv_buffers: 512,
            ring_entries: 4096,
            mesh_ring_entries: 1024,
            mesh_backlog_max: 65_536,
            mesh_spin_us: 0,
            listen_backlog: 4096,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 30_000,
            pong_timeout_ms: 10_000,
            sse_heartbeat_ms: 15_000,
            sse_retry_ms: 2_000,
            idle_timeout_ms: 120_000,
            close_timeout_ms: 2_000,
            mass_timeout_min: 64,
            history_ttl_ms: 120_000,
            history_per_stream_max: 1000,
            history_bytes_max: 64 << 20,
            shutdown_timeout_ms: 10_000,
            handover_timeout_ms: 120_000,
            drain_rate_per_s: 0,
            conn_lifetime_ms_max: 0,
            conn_lifetime_jitter_pct: 20,
            goaway_reconnect_ms_max: 5_000,
            memory_bytes_max: 0,
            conns_per_user_max: 0,
            accept_rate_per_s_max: 0,
            accept_rate_per_source_per_s_max: 0,
            batch_lines_max: 10_000,
            batch_bytes_max: 8 << 20,
            compression_min_bytes: 128,
            compression_level: 6,
        }
    }
}

/// The whole server configuration after defaults, file and flags are merged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Client listeners (WebSocket and SSE). Default 127.0.0.1:8080.
    pub listen: Vec<SocketAddr>,
    /// Admin listeners (publish, stats, metrics). Default 127.0.0.1:8081.
    pub admin: Vec<SocketAddr>,
    /// Shards, one pinned thread each. 0 means one per online CPU.
    pub shards: usize,
    /// Serve the `/echo` WebSocket endpoint (conformance runs, round trips).
    pub echo: bool,
    /// permessage-deflate on WebSocket listeners, for clients that offer it. Default on.
    pub compression: bool,
    /// With `compression`: the client listeners that agree to it (each one of `listen`);
    /// empty: all of them.
    pub compression_listen: Vec<SocketAddr>,
    /// Move a WebSocket or SSE connection to its user's home shard once its request head
    /// is read, so that a push to the user is delivered by the shard that takes it from
    /// the mesh (`crate::shard::placement`). Default on.
    pub home_placement: bool,
    /// Pin shard threads to cores.
    pub pin: bool,
    /// Client authentication: "jwt" or "none". Unset means none on loopback listeners and
    /// is an error on any other, so an exposed server is never open by accident.
    pub auth: Option<String>,
    /// With `auth = "jwt"`: an HMAC secret file, or a PEM RSA / EC P-256 / Ed25519 public key.
    pub jwt_key: Option<PathBuf>,
    /// Browser origins allowed to open WebSocket and SSE connections; empty: any.
    pub allowed_origins: Vec<String>,
    /// Where a goaway sends clients (an alternative endpoint, at most 64 bytes); none: here.
    pub goaway_endpoint: Option<String>,
    /// The URL clients should use to reach this node (`ws://`, `wss://`, `http://` or
    /// `https://`, at most 256 bytes), listed by `GET /nodes`; none: clients keep the
    /// endpoint they asked.
    pub public_url: Option<String>,
    /// History per topic prefix, as `PREFIX=COUNT`: topics that start with PREFIX keep
    /// COUNT messages instead of `history_per_stream_max` (0: no history for them, e.g. for
    /// ticks nobody needs again). The longest matching prefix wins. Default: none.
    pub history_topics: Vec<String>,
    /// A file whose first line is the bearer key the admin API requires. Required when an
    /// admin listener is not on loopback.
    pub admin_key_file: Option<PathBuf>,
    // TLS: both or neither. When set, every client listener speaks TLS; admin stays plain.
    /// PEM certificate chain (server certificate first) for the client listeners.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    pub limits: Limits,
    /// Cluster membership (`[cluster]`); off unless node_id, registry and bus are all set.
    pub cluster: Cluster,
}

/// `[cluster]`: the bridge to the Redis push registry and the NATS bus. All of `node_id`,
/// `registry` and `bus` or none of them; without them no bridge thread runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// This node's name in the registry and in its NATS subject `c10m.node.<node_id>`:
    /// 1..=64 of `A-Z a-z 0-9 - _`, unique in the cluster.
    pub node_id: Option<String>,
    /// Redis URL of the push registry, e.g. `redis://10.0.0.1:6379`.
    pub registry: Option<String>,
    /// NATS URL of the bus, e.g. `nats://10.0.0.1:4222`.
    pub bus: Option<String>,
    /// Lifetime of a registry entry; the bridge refreshes its users every third of it, so a
    /// crashed node's entries are gone within it. Routing stops using a crashed node much
    /// sooner (`node_ttl_ms`), so this only bounds garbage and sets the refresh load: every
    /// user is written twice per third of it. Default 600 s (2.5M users per node: 25,000
    /// Redis commands a second per node).
    pub registry_ttl_ms: u64,
    /// Lifetime of a node's heartbeat in the registry (refreshed every third of it): publishes
    /// stop going to a node this long after it stopped, whatever its users' entries say.
    /// Capped at `registry_ttl_ms`. Default 5 s.
    pub node_ttl_ms: u64,
    /// Redis commands per pipelined batch. Default 1000: a reconnect wave of 500,000 users is
    /// 1000 round trips, not 500,000.
    pub registry_batch_max: u32,
    /// Lookups and bus publishes waiting in the bridge before new ones are dropped and
    /// counted. Default 65,536.
    pub bridge_queue_max: u32,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            node_id: None,
            registry: None,
            bus: None,
            registry_ttl_ms: 600_000,
            node_ttl_ms: 5_000,
            registry_batch_max: 1000,
            bridge_queue_max: 65_536,
        }
    }
}

impl Cluster {
    /// Whether this process is a cluster node (runs the bridge).
    pub fn enabled(&self) -> bool {
        self.node_id.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        let set = [
            ("--node-id ID", self.node_id.is_some()),
            ("--registry redis://HOST:PORT", self.registry.is_some()),
            ("--bus nats://HOST:PORT", self.bus.is_some()),
        ];
        let given = set.iter().filter(|(_, on)| *on).count();
        if given != 0 && given != set.len() {
            let missing: Vec<&str> = set.iter().filter(|(_, on)| !on).map(|(f, _)| *f).collect();
            return err(format!(
                "a cluster node needs --node-id, --registry and --bus together: add {}",
                missing.join(" and ")
            ));
        }
        if let Some(id) = &self.node_id {
            let ok = (1..=64).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return err(format!(
                    "node_id = {id:?}: use 1..=64 of A-Z a-z 0-9 - _ (it is a NATS subject token)"
                ));
            }
        }
        if let Some(r) = &self.registry {
            if !r.starts_with("redis://") {
                return err(format!("registry = {r:?}: give a redis://HOST:PORT URL"));
            }
        }
        if let Some(b) = &self.bus {
            if !b.starts_with("nats://") {
                return err(format!("bus = {b:?}: give a nats://HOST:PORT URL"));
            }
        }
        if !(1000..=86_400_000).contains(&self.registry_ttl_ms) {
            return err(format!(
                "registry_ttl_ms = {} must be within 1000..=86400000",
                self.registry_ttl_ms
            ));
        }
        if !(300..=3_600_000).contains(&self.node_ttl_ms) {
            return err(format!("node_ttl_ms = {} must be within 300..=3600000", self.node_ttl_ms));
        }
        if !(2..=100_000).contains(&self.registry_batch_max) {
            return err(format!(
                "registry_batch_max = {} must be within 2..=100000",
                self.registry_batch_max
            ));
        }
        if self.bridge_queue_max == 0 {
            return err("bridge_queue_max must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            admin: vec![SocketAddr::from(([127, 0, 0, 1], 8081))],
            shards: 0,
            echo: false,
            compression: true,
            compression_listen: Vec::new(),
            home_placement: true,
            pin: true,
            auth: None,
            jwt_key: None,
            allowed_origins: Vec::new(),
            history_topics: Vec::new(),
            admin_key_file: None,
            goaway_endpoint: None,
            public_url: None,
            tls_cert: None,
            tls_key: None,
            limits: Limits::default(),
            cluster: Cluster::default(),
        }
    }
}

/// An operator's configuration mistake, with what to change.
impl Config {
    /// `history_topics` parsed: (prefix, messages per topic), longest prefix first.
    pub fn history_topic_limits(&self) -> Result<Vec<(String, usize)>, String> {
        let mut out = Vec::new();
        for entry in &self.history_topics {
            let parsed =
                entry.rsplit_once('=').and_then(|(p, n)| Some((p, n.parse::<u32>().ok()?)));
            match parsed {
                Some((prefix, count)) if !prefix.is_empty() && prefix.len() <= 256 => {
                    out.push((prefix.to_owned(), count as usize))
                }
                _ => {
                    return Err(format!(
                        "history_topics entry {entry:?} must be PREFIX=COUNT, e.g. \"ticker.=0\" \
                         (a prefix of 1-256 bytes, COUNT messages per topic, 0 for none)"
                    ))
                }
            }
        }
        out.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(out)
    }
}

#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration error: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads a TOML file; unknown keys are errors so typos do not pass silently.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read --config {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            // One line: where, and what (toml's own text draws the line over several).
            let at = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(":{line}:{column}")
            });
            let what = e.message().trim().replace('\n', " ");
            ConfigError(format!("{}{}: {what}", path.display(), at.unwrap_or_default()))
        })
    }

    /// Checks each limit and the relationships between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let err = |m: String| Err(ConfigError(m));
        if self.listen.is_empty() {
            return err("no client listener: give at least one --listen ADDR".into());
        }
        match (self.auth.as_deref(), &self.jwt_key) {
            (None | Some("none"), _) | (Some("jwt"), Some(_)) => {}
            (Some("jwt"), None) => return err("--auth jwt needs --jwt-key PATH".into()),
            (Some(other), _) => return err(format!("auth = {other:?}: use \"jwt\" or \"none\"")),
        }
        if let Some(open) = self.listen.iter().find(|a| !a.ip().is_loopback()) {
            if self.auth.is_none() {
                return err(format!(
                    "client listener {open} is not on loopback: give --auth jwt --jwt-key PATH, \
                     or --auth none to accept anyone"
                ));
            }
        }
        if let Some(open) = self.admin.iter().find(|a| !a.ip().is_loopback()) {
            if self.admin_key_file.is_none() {
                return err(format!(
                    "admin listener {open} is not on loopback: give --admin-key-file PATH"
                ));
            }
        }
        if let Some(a) = self.compression_listen.iter().find(|a| !self.listen.contains(a)) {
            return err(format!(
                "compression_listen {a} is not a client listener: give it with --listen too"
            ));
        }
        if l.history_ttl_ms > crate::history::TTL_MS_MAX {
            return err(format!(
                "history_ttl_ms = {}: at most {} (7 days); a longer history belongs in the \
                 backend's own store",
                l.history_ttl_ms,
                crate::history::TTL_MS_MAX
            ));
        }
        if l.batch_lines_max == 0 || l.batch_lines_max > 1_000_000 {
            return err(format!(
                "batch_lines_max = {} must be within 1..=1000000",
                l.batch_lines_max
            ));
        }
        if l.batch_bytes_max < l.message_bytes_max || l.batch_bytes_max > 256 << 20 {
            return err(format!(
                "batch_bytes_max = {} must be within message_bytes_max ({})..=268435456",
                l.batch_bytes_max, l.message_bytes_max
            ));
        }
        if !(1..=9).contains(&l.compression_level) {
            return err(format!(
                "compression_level = {} must be within 1..=9",
                l.compression_level
            ));
        }
        if self.shards > 1024 {
            return err(format!("shards = {} is more than 1024; use one per core", self.shards));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return err("--tls-cert needs --tls-key PATH (tls_key)".into()),
            (None, Some(_)) => return err("--tls-key needs --tls-cert PATH (tls_cert)".into()),
            _ => {}
        }
        if l.conns_per_shard_max == 0 || l.conns_per_shard_max > RING_FILES_KERNEL_MAX {
            return err(format!(
                "conns_per_shard_max = {} must be within 1..={RING_FILES_KERNEL_MAX}",
                l.conns_per_shard_max
            ));
        }
        if l.head_bytes_max < 256 {
            return err(format!("head_bytes_max = {} is below 256", l.head_bytes_max));
        }
        if l.headers_max == 0 || l.headers_max > 128 {
            return err(format!("headers_max = {} must be within 1..=128", l.headers_max));
        }
        if l.message_bytes_max == 0 || l.message_bytes_max > 16 * 1024 * 1024 {
            return err(format!(
                "message_bytes_max = {} must be within 1..=16777216",
                l.message_bytes_max
            ));
        }
        if l.frame_bytes_max == 0 {
            return err("frame_bytes_max must be at least 1".into());
        }
        if l.outbox_bytes_max < l.message_bytes_max + 16 {
            return err(format!(
                "outbox_bytes_max = {} must exceed message_bytes_max = {} by a frame header \
                 (16 bytes), or no maximum-size message could ever be queued",
                l.outbox_bytes_max, l.message_bytes_max
            ));
        }
        if !l.recv_buffers.is_power_of_two() || l.recv_buffers > 32_768 {
            return err(format!(
                "recv_buffers = {} must be a power of two up to 32768",
                l.recv_buffers
            ));
        }
        if l.recv_buffer_bytes < 512 {
            return err(format!("recv_buffer_bytes = {} is below 512", l.recv_buffer_bytes));
        }
        if !(64..=32_768).contains(&l.ring_entries) {
            return err(format!("ring_entries = {} must be within 64..=32768", l.ring_entries));
        }
        if l.mesh_spin_us > 1000 {
            return err(format!(
                "mesh_spin_us = {} is above 1000; a shard polls its rings for microseconds, not milliseconds",
                l.mesh_spin_us
            ));
        }
        if l.mesh_ring_entries < 16 {
            return err(format!("mesh_ring_entries = {} is below 16", l.mesh_ring_entries));
        }
        if l.ping_interval_ms == 0 || l.pong_timeout_ms == 0 || l.sse_heartbeat_ms == 0 {
            return err("ping_interval_ms, pong_timeout_ms and sse_heartbeat_ms must be > 0".into());
        }
        // Connection timestamps are 32-bit wrapping milliseconds (see shard::conn::stamp).
        let interval_ms_max = (1u64 << 31) - 1;
        let intervals = [
            ("handshake_timeout_ms", l.handshake_timeout_ms),
            ("ping_interval_ms", l.ping_interval_ms),
            ("pong_timeout_ms", l.pong_timeout_ms),
            ("sse_heartbeat_ms", l.sse_heartbeat_ms),
            ("idle_timeout_ms", l.idle_timeout_ms),
            ("close_timeout_ms", l.close_timeout_ms),
        ];
        if let Some((name, v)) = intervals.iter().find(|(_, v)| *v > interval_ms_max) {
            return err(format!("{name} = {v} is over {interval_ms_max} (24 days)"));
        }
        if l.conn_lifetime_jitter_pct > 100 {
            return err(format!(
                "conn_lifetime_jitter_pct = {} must be within 0..=100",
                l.conn_lifetime_jitter_pct
            ));
        }
        if let Err(e) = self.history_topic_limits() {
            return err(e);
        }
        if self.goaway_endpoint.as_ref().is_some_and(|e| e.len() > 64 || e.contains('"')) {
            return err("goaway_endpoint must be at most 64 bytes without quotes: it travels in \
                 a WebSocket close reason (123 bytes)"
                .into());
        }
        if let Some(u) = &self.public_url {
            let scheme_ok =
                ["ws://", "wss://", "http://", "https://"].iter().any(|s| u.starts_with(s));
            if !scheme_ok || u.len() > 256 || u.chars().any(|c| c.is_whitespace() || c == '"') {
                return err(format!(
                    "public_url = {u:?}: give ws://, wss://, http:// or https://HOST[:PORT] \
                     (at most 256 bytes, no spaces or quotes)"
                ));
            }
        }
        if l.goaway_reconnect_ms_max > 86_400_000 {
            return err("goaway_reconnect_ms_max is over a day".into());
        }
        if l.handshake_timeout_ms == 0 || l.shutdown_timeout_ms == 0 || l.handover_timeout_ms == 0 {
            return err(
                "handshake_timeout_ms, shutdown_timeout_ms and handover_timeout_ms must be > 0"
                    .into(),
            );
        }
        self.cluster.validate()?;
        Ok(())
    }
}

#[path = "config_args.rs"]
mod args;
pub use args::ServeArgs;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
