//! c10m-loadgen: holds hundreds of thousands of WebSocket or SSE connections from one
//! process and measures what c10m does with them.
//!
//! Architecture, mirroring the server: a few client shards (threads), each owning one
//! io_uring ring whose fixed-file table holds its sockets as direct descriptors, so the
//! process fd table (capped at RLIMIT_NOFILE) is never used for connections. A shard
//! creates, binds, connects and sends the upgrade request in one linked chain of
//! operations, then waits for readability with a one-shot poll; an idle connection holds a
//! small state struct and no buffer. A publisher thread drives the admin API; receivers
//! stamp deliveries into shared per-sequence records so loss, duplication, reordering,
//! latency and broadcast fan-out come out of one run.
//!
//! Module map: [`config`] (value languages), [`proto`] (pure HTTP/WS/SSE state machines),
//! [`payload`] (sequence stamps), [`ring`] (all io_uring and OS code), [`shard`] (the
//! client event loop), [`shared`] (cross-thread counters), [`publisher`], [`report`].

pub mod config;
pub mod payload;
pub mod plan;
pub mod proto;
pub mod publisher;
pub mod report;
pub mod ring;
pub mod runner;
pub mod shard;
pub mod shared;
pub mod sys;
