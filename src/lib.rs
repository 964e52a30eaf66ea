//! c10m: a thread-per-core io_uring push server.
//!
//! Architecture (see `README.md` for the user's view):
//!
//! ```text
//!  clients ──TCP──► [shard 0] [shard 1] … [shard N-1]   one pinned thread per core, each with
//!                    io_uring   io_uring     io_uring     its own ring, SO_REUSEPORT listeners,
//!                    registry   registry     registry     slab registry and timer wheel
//!                         ▲ ╲      ▲  ╱         ▲
//!                         └─ N×N SPSC rings + MSG_RING doorbells ─┘
//!  admin /publish ──► any shard ──► home shard of the user / every shard
//! ```
//!
//! - [`proto`]: pure protocol state machines (HTTP/1 head, WebSocket, SSE); no sockets, no clocks.
//! - [`mesh`]: the bounded SPSC rings between shards.
//! - [`ring`]: every io_uring call: ring setup, the provided-buffer ring, `user_data` layout.
//! - [`shard`]: the event loop that owns one ring and one registry.
//! - [`registry`]: the shard-local slab of connections with generation-tagged ids.
//! - [`push`]: routing of publishes (home shard of a user, topics, broadcast).
//! - [`metrics`]: per-shard counters, `/stats` and `/metrics` rendering.
//! - [`sys`]: OS wrappers: resource limits, listeners, signals.
//! - [`auth`]: JWT for clients, a bearer key for the admin API, allowed origins.
//! - [`config`]: every limit, its default and why.
//! - [`cluster`]: the bridge thread to the Redis push registry and the NATS bus (cluster
//!   nodes only; the mesh's last participant).
//! - [`log`]: `tracing` to stderr, text or JSON, and the rate limit for peer-caused lines.
//! - [`tls`]: rustls sessions for the client listeners (unbuffered API) and certificate reload.
//! - `census` (feature `alloc-census`, measurement builds only): live heap bytes by size class.

pub mod auth;
#[cfg(feature = "alloc-census")]
pub mod census;
pub mod cluster;
pub mod config;
pub mod handover;
pub mod history;
pub mod log;
pub mod mesh;
pub mod metrics;
pub mod nodes;
pub mod proto;
pub mod push;
pub mod registry;
pub mod ring;
pub mod server;
pub mod shard;
pub mod sys;
pub mod tls;
mod wire;
