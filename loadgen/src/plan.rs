//! The resolved run plan: every option checked and turned into the values the shards,
//! the publisher and the report use.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Pattern;
use crate::proto::http::Audience;

/// Connections per shard when `--shards` is not given: below the 20,000 fixed-file slots
/// a ring gets on a host whose RLIMIT_NOFILE is 20,000, with room to spare.
pub const CONNS_PER_SHARD_DEFAULT: u64 = 19_000;

/// Most `--target`s: a connection keeps its current target's index in 16 bits.
pub const TARGETS_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Ws,
    Sse,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Ws => "ws",
            Proto::Sse => "sse",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishTo {
    User,
    Topic,
    All,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub proto: Proto,
    pub targets: Vec<SocketAddr>,
    /// Empty: the kernel picks the source address.
    pub sources: Vec<Ipv4Addr>,
    pub conns: u64,
    /// Connects per second over all shards.
    pub rate: f64,
    pub hold: Duration,
    pub users: Pattern,
    pub topics: Vec<Pattern>,
    pub reconnect: bool,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    pub shards: usize,
    pub pin: bool,
    /// Admin listeners; every publish goes to each (one entry for a single server or a
    /// bridged cluster, all nodes' to reach every client of unbridged nodes).
    pub admins: Vec<SocketAddr>,
    /// Bearer key for the admin API (`--admin-key-file`).
    pub admin_key: Option<String>,
    pub publish_rate: f64,
    /// Wait this long after the hold begins before the first publish.
    pub publish_delay: Duration,
    pub publish_to: PublishTo,
    pub publish_count: Option<u64>,
    pub payload_bytes: usize,
    /// Pad payloads with realistic JSON ([`crate::payload::JSON_FILL`]) instead of `x`.
    pub payload_json: bool,
    /// Offer permessage-deflate on WebSocket connections.
    pub deflate: bool,
    /// Publishes per `POST /publish/batch` request; 1: one `POST /publish` each.
    pub publish_batch: u32,
    /// Single publish requests written back to back before their answers are read.
    pub publish_pipeline: u32,
    pub drain: Duration,
    pub json: Option<PathBuf>,
    pub server_pid: Option<u32>,
    pub quiet: bool,
}

impl Plan {
    /// Connections owned by `shard`: global indices `shard, shard + S, shard + 2S, …`.
    pub fn shard_conns(&self, shard: usize) -> u64 {
        let s = self.shards as u64;
        let k = shard as u64;
        if k >= self.conns {
            0
        } else {
            (self.conns - k).div_ceil(s)
        }
    }

    /// The target and source (if any) for global connection `n`: connections walk all
    /// (target, source) pairs so each pair's ports are used evenly.
    pub fn route(&self, n: u64) -> (usize, Option<usize>) {
        let t = self.targets.len() as u64;
        let s = self.sources.len().max(1) as u64;
        let pair = n % (t * s);
        let source = (!self.sources.is_empty()).then_some((pair / t) as usize);
        ((pair % t) as usize, source)
    }

    /// Path and query for connection `n`.
    pub fn path(&self, n: u64) -> String {
        let endpoint = match self.proto {
            Proto::Ws => "/ws",
            Proto::Sse => "/sse",
        };
        let mut path = format!("{endpoint}?user={}", self.users.render(n));
        if !self.topics.is_empty() {
            let topics: Vec<String> = self.topics.iter().map(|t| t.render(n)).collect();
            path.push_str("&topics=");
            path.push_str(&topics.join(","));
        }
        path
    }

    pub fn user_bucket(&self, n: u64) -> usize {
        self.users.bucket_of(n, self.conns) as usize
    }

    pub fn topic_bucket(&self, n: u64) -> Option<usize> {
        self.topics.first().map(|t| t.bucket_of(n, self.conns) as usize)
    }

    /// The audience of a publish aimed at `bucket` (of the users or first topic pattern).
    pub fn audience(&self, bucket: u64) -> Audience {
        match self.publish_to {
            PublishTo::All => Audience::All,
            PublishTo::User => Audience::User(self.users.render(bucket)),
            PublishTo::Topic => {
                Audience::Topic(self.topics.first().map(|t| t.render(bucket)).unwrap_or_default())
            }
        }
    }

    /// Most sequence numbers the run can publish: records are preallocated for them.
    pub fn seq_max(&self) -> u64 {
        if self.publish_rate <= 0.0 {
            return 0;
        }
        let by_time = (self.publish_rate * (self.hold.as_secs_f64() + 1.0)).ceil() as u64 + 16;
        let cap = self.publish_count.unwrap_or(u64::MAX).min(by_time);
        cap.min(SEQ_MAX)
    }
}

/// The target a reconnect goes to after one at `target` (of `targets`): another one, picked
/// with the random `r`, so the clients of a server that is gone spread evenly over the
/// others (and spread back over a server that returns as connections cycle).
pub fn next_target(targets: usize, target: usize, r: u64) -> usize {
    if targets <= 1 {
        return 0;
    }
    (target + 1 + (r % (targets as u64 - 1)) as usize) % targets
}

/// Most messages one run publishes (each costs a 40-byte record).
pub const SEQ_MAX: u64 = 4_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_target_is_another_one_spread_evenly() {
        assert_eq!(next_target(1, 0, 12345), 0);
        assert_eq!(next_target(2, 0, 7), 1);
        assert_eq!(next_target(2, 1, 8), 0);
        let mut hits = [0u32; 4];
        for r in 0..3000u64 {
            let t = next_target(4, 2, r.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            assert_ne!(t, 2, "a reconnect never picks the target it left");
            hits[t] += 1;
        }
        assert_eq!(hits[2], 0);
        for t in [0, 1, 3] {
            assert!((900..=1100).contains(&hits[t]), "{hits:?}");
        }
    }
}
