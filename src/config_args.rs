//! `c10m serve`'s flags ([`ServeArgs`]) and how they merge over the file and the defaults.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use super::{Config, ConfigError};

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
    /// Provided receive buffers per shard, at most (power of two; a quiet shard keeps 16 in its
    /// ring). Default 512.
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
    /// Microseconds a shard polls its mesh rings before sleeping after mesh traffic. Default 0.
    #[arg(long)]
    pub mesh_spin_us: Option<u32>,
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
    /// Milliseconds a live upgrade may take on the old process before it is called off.
    /// Default 120000.
    #[arg(long)]
    pub handover_timeout_ms: Option<u64>,
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
    /// Move each WebSocket or SSE connection to its user's home shard after its request
    /// head: on or off. Default on.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub home_placement: Option<bool>,
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
    /// The URL clients should use for this node, listed by `GET /nodes` (e.g.
    /// wss://n1.example.com). Default: none (clients keep the endpoint they asked).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
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
        if let Some(on) = self.home_placement {
            cfg.home_placement = on;
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
            mesh_spin_us,
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
            handover_timeout_ms,
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
        if self.public_url.is_some() {
            cfg.public_url = self.public_url.clone();
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
