//! Configuration: flags, an optional TOML file, and every limit with its unit last.
//!
//! Precedence: built-in defaults, then the TOML file (`--config`), then flags. Every field of
//! [`Limits`] is documented with its default and why; `c10m serve --help` lists them.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
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
    /// Bytes of history (payloads plus 96 B per message and 160 B per stream that has any)
    /// for the whole process, split over the shards; past it the oldest messages leave
    /// early. Counts in memory admission. Default 64 MiB.
    pub history_bytes_max: u64,
    /// Bound on a shutdown (SIGINT) or a drain (SIGTERM, `POST /drain`). Default 10 s.
    pub shutdown_timeout_ms: u64,
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
            pin: true,
            auth: None,
            jwt_key: None,
            allowed_origins: Vec::new(),
            history_topics: Vec::new(),
            admin_key_file: None,
            goaway_endpoint: None,
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

/// `c10m serve` flags. Any flag given overrides the file.
#[derive(Debug, Parser, Default)]
pub struct ServeArgs {
    /// TOML file with the same keys as these flags; limits go under `[limits]`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Client listener address (repeatable). Default 127.0.0.1:8080.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Admin listener address (repeatable). Default 127.0.0.1:8081.
    #[arg(long = "admin", value_name = "ADDR")]
    pub admin: Vec<SocketAddr>,
    /// Number of shards (threads). Default: one per online CPU.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Enable the /echo WebSocket endpoint.
    #[arg(long)]
    pub echo: bool,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Client authentication: jwt or none. Required for a listener not on loopback.
    #[arg(long, value_name = "jwt|none")]
    pub auth: Option<String>,
    /// JWT key: an HMAC secret file (HS256) or a PEM public key (RS256, ES256, EdDSA).
    #[arg(long, value_name = "PATH")]
    pub jwt_key: Option<PathBuf>,
    /// Browser origin allowed to connect (repeatable). Default: any.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// History for topics starting with PREFIX: COUNT messages per topic, 0 for none
    /// (repeatable). Default: `history_per_stream_max` for every topic.
    #[arg(long = "history-topic", value_name = "PREFIX=COUNT")]
    pub history_topics: Vec<String>,
    /// File with the admin API's bearer key. Required for an admin listener not on loopback.
    #[arg(long, value_name = "PATH")]
    pub admin_key_file: Option<PathBuf>,
    /// Connections per shard (client and admin). Default 1048576, lowered to RLIMIT_NOFILE.
    #[arg(long)]
    pub conns_per_shard_max: Option<u32>,
    /// Bytes of an HTTP request head. Default 8192.
    #[arg(long)]
    pub head_bytes_max: Option<u32>,
    /// Header lines per request head. Default 64.
    #[arg(long)]
    pub headers_max: Option<u32>,
    /// Bytes of one published or received message. Default 65536.
    #[arg(long)]
    pub message_bytes_max: Option<u32>,
    /// Bytes of one client frame payload. Default 65536.
    #[arg(long)]
    pub frame_bytes_max: Option<u32>,
    /// Bytes queued for one slow connection before it is closed. Default 1048576.
    #[arg(long)]
    pub outbox_bytes_max: Option<u32>,
    /// SO_SNDBUF of client sockets (0: kernel autotuning). Default 131072.
    #[arg(long)]
    pub socket_send_buffer_bytes: Option<u32>,
    /// Bytes of one provided receive buffer. Default 4096.
    #[arg(long)]
    pub recv_buffer_bytes: Option<u32>,
    /// Provided receive buffers per shard (power of two). Default 512.
    #[arg(long)]
    pub recv_buffers: Option<u32>,
    /// Submission queue entries per ring. Default 4096.
    #[arg(long)]
    pub ring_entries: Option<u32>,
    /// Messages per shard-to-shard ring. Default 1024.
    #[arg(long)]
    pub mesh_ring_entries: Option<u32>,
    /// Messages waiting for a full mesh ring before publishes are dropped. Default 65536.
    #[arg(long)]
    pub mesh_backlog_max: Option<u32>,
    /// Accept queue length of each listener. Default 4096.
    #[arg(long)]
    pub listen_backlog: Option<u32>,
    /// Milliseconds to complete the request head after accept. Default 10000.
    #[arg(long)]
    pub handshake_timeout_ms: Option<u64>,
    /// Milliseconds between WebSocket pings. Default 30000.
    #[arg(long)]
    pub ping_interval_ms: Option<u64>,
    /// Milliseconds for a pong to arrive after a ping. Default 10000.
    #[arg(long)]
    pub pong_timeout_ms: Option<u64>,
    /// Milliseconds between SSE heartbeats. Default 15000.
    #[arg(long)]
    pub sse_heartbeat_ms: Option<u64>,
    /// SSE `retry:` in milliseconds. Default 2000.
    #[arg(long)]
    pub sse_retry_ms: Option<u32>,
    /// Milliseconds of silence before a WebSocket or admin connection is closed (0: never).
    /// Default 120000.
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Milliseconds a closing WebSocket waits for the peer's close frame. Default 2000.
    #[arg(long)]
    pub close_timeout_ms: Option<u64>,
    /// Fewest liveness timeouts in a second of one shard that engage the mass-timeout guard;
    /// 0: off. Default 64.
    #[arg(long)]
    pub mass_timeout_min: Option<u32>,
    /// Milliseconds messages stay in the history clients resume from; 0: off. Default 120000.
    #[arg(long)]
    pub history_ttl_ms: Option<u64>,
    /// Messages kept per user and per topic in the history. Default 1000.
    #[arg(long)]
    pub history_per_stream_max: Option<u32>,
    /// Bytes of history for the process. Default 67108864.
    #[arg(long)]
    pub history_bytes_max: Option<u64>,
    /// Milliseconds a shutdown or drain may take. Default 10000.
    #[arg(long)]
    pub shutdown_timeout_ms: Option<u64>,
    /// Goaways per second during a drain (SIGTERM, POST /drain); 0: all at once. Default 0.
    #[arg(long)]
    pub drain_rate_per_s: Option<u32>,
    /// Milliseconds a client connection may live before a goaway; 0: unlimited. Default 0.
    #[arg(long)]
    pub conn_lifetime_ms_max: Option<u64>,
    /// Percent of the lifetime taken off at random per connection. Default 20.
    #[arg(long)]
    pub conn_lifetime_jitter_pct: Option<u32>,
    /// Upper bound of the random reconnect delay a goaway asks for. Default 5000.
    #[arg(long)]
    pub goaway_reconnect_ms_max: Option<u64>,
    /// Refuse new connections (503) past this projected memory; 0: off. Default 0.
    #[arg(long)]
    pub memory_bytes_max: Option<u64>,
    /// Connections per user; the newest past it is closed. 0: off. Default 0.
    #[arg(long)]
    pub conns_per_user_max: Option<u32>,
    /// New client connections per second for the process (503 past it); 0: off. Default 0.
    #[arg(long)]
    pub accept_rate_per_s_max: Option<u32>,
    /// New client connections per second from one address or IPv6 /64 (429 past it); 0: off.
    /// Default 0.
    #[arg(long)]
    pub accept_rate_per_source_per_s_max: Option<u32>,
    /// permessage-deflate for WebSocket clients that offer it: on or off. Default on.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub compression: Option<bool>,
    /// Agree to permessage-deflate only on this client listener (repeatable; each also a
    /// --listen). Default: every client listener.
    #[arg(long = "compression-listen", value_name = "ADDR")]
    pub compression_listen: Vec<SocketAddr>,
    /// Messages shorter than this are sent uncompressed. Default 128.
    #[arg(long)]
    pub compression_min_bytes: Option<u32>,
    /// Lines one POST /publish/batch may hold. Default 10000.
    #[arg(long)]
    pub batch_lines_max: Option<u32>,
    /// Body bytes of one POST /publish/batch. Default 8388608.
    #[arg(long)]
    pub batch_bytes_max: Option<u32>,
    /// zlib level, 1 (fastest) ..= 9 (smallest). Default 6.
    #[arg(long)]
    pub compression_level: Option<u32>,
    /// Endpoint that goaways send clients to (at most 64 bytes). Default: none (come back).
    #[arg(long, value_name = "URL")]
    pub goaway_endpoint: Option<String>,
    // Cluster (see src/cluster).
    /// This node's id in the cluster (with --registry and --bus).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Redis push registry URL, e.g. redis://10.0.0.1:6379 (with --node-id and --bus).
    #[arg(long, value_name = "URL")]
    pub registry: Option<String>,
    /// NATS bus URL, e.g. nats://10.0.0.1:4222 (with --node-id and --registry).
    #[arg(long, value_name = "URL")]
    pub bus: Option<String>,
    /// Milliseconds a registry entry lives without a refresh. Default 600000.
    #[arg(long)]
    pub registry_ttl_ms: Option<u64>,
    /// Milliseconds a node's heartbeat lives: publishes stop going to a dead node after it.
    /// Default 5000.
    #[arg(long)]
    pub node_ttl_ms: Option<u64>,
    /// Redis commands per pipelined batch. Default 1000.
    #[arg(long)]
    pub registry_batch_max: Option<u32>,
    /// Lookups and bus publishes queued in the bridge before drops. Default 65536.
    #[arg(long)]
    pub bridge_queue_max: Option<u32>,
    /// TLS on every client listener: PEM certificate chain. Needs --tls-key. SIGHUP reloads it.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// Control socket for live upgrades (mode 0600, same user only), or `off`. Default
    /// /run/c10m/c10m-PORT.sock, PORT being the first admin port.
    #[arg(long, value_name = "PATH|off")]
    pub control_socket: Option<String>,
    /// Live upgrade: take over the listeners and connections of the server whose control
    /// socket this is; it exits when it has handed everything over.
    #[arg(long, value_name = "PATH")]
    pub takeover: Option<PathBuf>,
    /// Log lines on stderr: `text` (default) or `json`, one object per line. Filters come
    /// from RUST_LOG (default `info`). A flag only: logging starts before the file is read.
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
}

/// `on` / `off` for a switch flag.
fn on_off(v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{v:?}: use on or off")),
    }
}

impl ServeArgs {
    /// Merges defaults, the file named by `--config`, and the flags, then validates.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if !self.listen.is_empty() {
            cfg.listen = self.listen.clone();
        }
        if !self.admin.is_empty() {
            cfg.admin = self.admin.clone();
        }
        if let Some(n) = self.shards {
            cfg.shards = n;
        }
        cfg.echo |= self.echo;
        if self.auth.is_some() {
            cfg.auth = self.auth.clone();
        }
        if self.jwt_key.is_some() {
            cfg.jwt_key = self.jwt_key.clone();
        }
        if !self.allowed_origins.is_empty() {
            cfg.allowed_origins = self.allowed_origins.clone();
        }
        if !self.history_topics.is_empty() {
            cfg.history_topics = self.history_topics.clone();
        }
        if self.admin_key_file.is_some() {
            cfg.admin_key_file = self.admin_key_file.clone();
        }
        cfg.pin &= !self.no_pin;
        if let Some(on) = self.compression {
            cfg.compression = on;
        }
        if !self.compression_listen.is_empty() {
            cfg.compression_listen = self.compression_listen.clone();
        }
        // Each flag given replaces the same-named field of `$into`.
        macro_rules! take {
            ($into:expr; $($f:ident),*) => { $( if let Some(v) = self.$f { $into.$f = v; } )* };
        }
        take!(
            cfg.limits;
            conns_per_shard_max,
            head_bytes_max,
            headers_max,
            message_bytes_max,
            frame_bytes_max,
            outbox_bytes_max,
            socket_send_buffer_bytes,
            recv_buffer_bytes,
            recv_buffers,
            ring_entries,
            mesh_ring_entries,
            mesh_backlog_max,
            listen_backlog,
            handshake_timeout_ms,
            ping_interval_ms,
            pong_timeout_ms,
            sse_heartbeat_ms,
            sse_retry_ms,
            idle_timeout_ms,
            close_timeout_ms,
            mass_timeout_min,
            history_ttl_ms,
            history_per_stream_max,
            history_bytes_max,
            shutdown_timeout_ms,
            drain_rate_per_s,
            conn_lifetime_ms_max,
            conn_lifetime_jitter_pct,
            goaway_reconnect_ms_max,
            memory_bytes_max,
            conns_per_user_max,
            accept_rate_per_s_max,
            accept_rate_per_source_per_s_max,
            compression_min_bytes,
            compression_level,
            batch_lines_max,
            batch_bytes_max
        );
        if self.goaway_endpoint.is_some() {
            cfg.goaway_endpoint = self.goaway_endpoint.clone();
        }
        let c = &mut cfg.cluster;
        for (flag, field) in [
            (&self.node_id, &mut c.node_id),
            (&self.registry, &mut c.registry),
            (&self.bus, &mut c.bus),
        ] {
            if flag.is_some() {
                field.clone_from(flag);
            }
        }
        take!(cfg.cluster; registry_ttl_ms, node_ttl_ms, registry_batch_max, bridge_queue_max);
        if self.tls_cert.is_some() {
            cfg.tls_cert = self.tls_cert.clone();
        }
        if self.tls_key.is_some() {
            cfg.tls_key = self.tls_key.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

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
        if l.goaway_reconnect_ms_max > 86_400_000 {
            return err("goaway_reconnect_ms_max is over a day".into());
        }
        if l.handshake_timeout_ms == 0 || l.shutdown_timeout_ms == 0 {
            return err("handshake_timeout_ms and shutdown_timeout_ms must be > 0".into());
        }
        self.cluster.validate()?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
