//! The lifecycle controller: the one place that decides when connections come and go.
//!
//! - **Goaway**: a connection the server ends on purpose is told when (a jittered
//!   `reconnect_after_ms`) and optionally where (`goaway_endpoint`) to come back: WebSocket
//!   close 1001 with a JSON reason, SSE `event: goaway` plus `retry:`.
//! - **Paced drain** (SIGTERM or `POST /drain?rate=R`): accepting stops and client
//!   connections get goaways at `rate` per second (split across shards); the process exits
//!   when all are gone or at `shutdown_timeout_ms`. Rate 0 closes everything at once.
//! - **Maximum lifetime** with jitter (Zuul style), so a fleet never reconnects in step.
//! - **Admission**: new connections get 503 with `Retry-After` when projected memory would
//!   pass `memory_bytes_max` or the connect rate passes `accept_rate_per_s_max`, and 429 when
//!   their source address passes `accept_rate_per_source_per_s_max`; a user over
//!   `conns_per_user_max` has its newest connection closed.

use super::conn::{Chunk, Kind};
use super::{client, Shard};
use crate::metrics::{bump, CloseReason};
use crate::proto::{sse, ws};

/// Kernel memory one connection costs beyond the process's RSS (socket, inode, dentry,
/// file, armed poll), measured on the development machines; used to project memory use.
pub const CONN_KERNEL_BYTES: u64 = 4_300;

/// Marks a timer-wheel key as a connection's lifetime end.
pub const LIFETIME_TIMER: u64 = 1 << 62;

/// A paced drain in progress on this shard.
pub struct Drain {
    /// This shard's share of the rate, connections per second; 0: all at once.
    pub rate_per_s: f64,
    /// Goaways owed but not yet sent.
    pub budget: f64,
    pub last_ms: u64,
    /// Next registry slot to look at.
    pub cursor: u32,
}

/// A token bucket for this shard's share of the connect rate.
pub struct Bucket {
    pub tokens: f64,
    pub last_ms: u64,
}

/// Source addresses tracked per shard for `accept_rate_per_source_per_s_max`; past it, idle
/// buckets are forgotten, and if every one is busy a new source is admitted uncounted (the
/// global limits still apply) rather than let the table grow without bound.
pub const SOURCES_MAX: usize = 65_536;

/// Per-source token buckets, keyed by [`source_key`].
#[derive(Default)]
pub struct SourceBuckets {
    map: std::collections::HashMap<u128, Bucket>,
}

impl SourceBuckets {
    /// Takes a token from `key`'s bucket (`rate` per second, burst `rate`, at least 1).
    pub fn admit(&mut self, key: u128, rate: f64, now_ms: u64) -> bool {
        let burst = rate.max(1.0);
        if !self.map.contains_key(&key) && self.map.len() >= SOURCES_MAX {
            // A bucket that has refilled is the same as no bucket.
            let refill_ms = (burst / rate * 1000.0) as u64;
            self.map.retain(|_, b| now_ms.saturating_sub(b.last_ms) < refill_ms);
            if self.map.len() >= SOURCES_MAX {
                return true;
            }
        }
        let b = self.map.entry(key).or_insert(Bucket { tokens: burst, last_ms: now_ms });
        b.tokens = (b.tokens + now_ms.saturating_sub(b.last_ms) as f64 * rate / 1000.0).min(burst);
        b.last_ms = now_ms;
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }

    /// Sources remembered.
    pub fn tracked(&self) -> usize {
        self.map.len()
    }
}

/// The rate-limit key of a peer address: an IPv4 address (also when IPv4-mapped), or the
/// /64 prefix of an IPv6 address (one host usually owns a whole /64). None for other families.
pub fn source_key(a: &super::accept::AcceptAddr) -> Option<u128> {
    match a.addr.ss_family as libc::c_int {
        libc::AF_INET if a.len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is long enough.
            let sin = unsafe { &*(&raw const a.addr).cast::<libc::sockaddr_in>() };
            Some(v4_key(u32::from_be(sin.sin_addr.s_addr)))
        }
        libc::AF_INET6 if a.len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(&raw const a.addr).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => v4_key(u32::from(v4)),
                None => u128::from(ip) & !((1u128 << 64) - 1),
            })
        }
        _ => None,
    }
}

fn v4_key(addr: u32) -> u128 {
    (0xffff_u128 << 32) | addr as u128
}

/// A small xorshift generator for jitter: no need for cryptographic randomness.
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Shard {
    /// Starts a drain at `rate_total` connections per second for the whole process.
    pub(super) fn begin_drain(&mut self, rate_total: f64) {
        if self.shutdown_deadline_ms.is_some() {
            return;
        }
        let within_ms = self.shared.cfg.limits.shutdown_timeout_ms;
        self.shutdown_deadline_ms = Some(self.now_ms + within_ms);
        if self.id == 0 {
            tracing::info!(
                rate = rate_total,
                "drain: goaways at {rate_total}/s to every client connection, then this process \
                 exits (within {within_ms} ms)"
            );
        }
        self.shared.directory.set_draining();
        self.cancel_accepts(true);
        let rate_per_s = rate_total.max(0.0) / self.shards() as f64;
        // The loop drives it from the next turn, so an admin answer queued after this call
        // (`POST /drain`) still goes out before admin connections are closed.
        self.drain = Some(Drain { rate_per_s, budget: 0.0, last_ms: self.now_ms, cursor: 0 });
    }

    /// Sends the goaways this turn owes; once no client connection is left, closes the rest
    /// (admin connections, unfinished handshakes) so the shard can exit.
    pub(super) fn drive_drain(&mut self) {
        let Some(d) = self.drain.as_mut() else { return };
        let mut owed = if d.rate_per_s <= 0.0 {
            usize::MAX
        } else {
            d.budget += (self.now_ms - d.last_ms) as f64 * d.rate_per_s / 1000.0;
            d.last_ms = self.now_ms;
            d.budget.floor() as usize
        };
        let sent_before = owed;
        let bound = self.conns.slot_bound();
        let mut cursor = d.cursor;
        while owed > 0 && cursor < bound {
            if let Some((generation, conn)) = self.conns.get_at(cursor) {
                if conn.is_subscriber() {
                    goaway(self, cursor, generation, CloseReason::Drain);
                    owed -= 1;
                }
            }
            cursor += 1;
        }
        let Some(d) = self.drain.as_mut() else { return };
        d.cursor = cursor;
        if d.rate_per_s > 0.0 {
            d.budget -= (sent_before - owed) as f64;
        }
        if cursor >= bound {
            let rest: Vec<(u32, u32)> = self
                .conns
                .iter()
                .filter(|(_, _, c)| c.is_open() && matches!(c.kind, Kind::Admin | Kind::Handshake))
                .map(|(s, g, _)| (s, g))
                .collect();
            for (slot, generation) in rest {
                self.finish(slot, generation, CloseReason::Drain);
            }
            self.cancel_accepts(false);
        }
    }

    /// Arms the end of a connection's life: `conn_lifetime_ms_max` less up to
    /// `conn_lifetime_jitter_pct` percent.
    pub(super) fn schedule_lifetime(&mut self, slot: u32, generation: u32) {
        let l = &self.shared.cfg.limits;
        if l.conn_lifetime_ms_max == 0 {
            return;
        }
        let jitter = l.conn_lifetime_jitter_pct as f64 / 100.0 * self.jitter.unit();
        let life = (l.conn_lifetime_ms_max as f64 * (1.0 - jitter)) as u64;
        let key = crate::registry::ConnId { shard: 0, slot, generation }.timer_key();
        self.wheel.insert(key | LIFETIME_TIMER, self.now_ms + life.max(1));
    }

    /// Whether a new client connection from source `key` is within this shard's share of
    /// `accept_rate_per_source_per_s_max`; counts a refusal. SO_REUSEPORT spreads one
    /// source's connections over the shards by port, so each shard allows its share.
    pub(super) fn admit_source(&mut self, key: u128) -> bool {
        let rate =
            self.shared.cfg.limits.accept_rate_per_source_per_s_max as f64 / self.shards() as f64;
        if self.sources.admit(key, rate, self.now_ms) {
            return true;
        }
        bump(&self.stats().refused_source, 1);
        false
    }

    /// Whether a new client connection may be admitted now; counts a refusal.
    pub(super) fn admit_connection(&mut self) -> bool {
        let l = &self.shared.cfg.limits;
        if l.accept_rate_per_s_max > 0 {
            let rate = l.accept_rate_per_s_max as f64 / self.shards() as f64;
            let b = &mut self.bucket;
            b.tokens =
                (b.tokens + (self.now_ms - b.last_ms) as f64 * rate / 1000.0).min(rate.max(1.0));
            b.last_ms = self.now_ms;
            if b.tokens < 1.0 {
                bump(&self.stats().refused_rate, 1);
                return false;
            }
            b.tokens -= 1.0;
        }
        if l.memory_bytes_max > 0 {
            let conns: u64 = self.shared.stats.iter().map(|s| s.open_connections()).sum();
            let rss = self.shared.rss_bytes.load(std::sync::atomic::Ordering::Relaxed);
            let projected = rss + (conns + 1) * (CONN_KERNEL_BYTES + 256);
            if projected > l.memory_bytes_max {
                bump(&self.stats().refused_memory, 1);
                return false;
            }
        }
        true
    }
}

/// Ends a client connection with a goaway: when (jittered) and where to come back.
pub(super) fn goaway(shard: &mut Shard, slot: u32, generation: u32, reason: CloseReason) {
    let Some(conn) = shard.conns.get(slot, generation) else { return };
    if !conn.is_subscriber() {
        return;
    }
    let kind = conn.kind;
    if kind == Kind::Poll {
        // A poll is short: it is answered now with its position, and comes back as usual.
        return shard.answer_poll(slot, generation);
    }
    let l = &shard.shared.cfg.limits;
    let after = (l.goaway_reconnect_ms_max as f64 * shard.jitter.unit()) as u64;
    let mut body = format!("{{\"goaway\":true,\"reconnect_after_ms\":{after}");
    if let Some(endpoint) = &shard.shared.cfg.goaway_endpoint {
        body.push_str(&format!(",\"endpoint\":{}", serde_json::Value::from(endpoint.as_str())));
    }
    body.push('}');
    bump(&shard.stats().goaways, 1);
    if kind == Kind::Sse {
        let mut out = Vec::with_capacity(body.len() + 48);
        sse::write_retry(&mut out, after.min(u32::MAX as u64) as u32);
        out.extend_from_slice(&shard.sse_named(slot, generation, "goaway", body.as_bytes()));
        shard.queue(slot, generation, Chunk::Owned(out));
        shard.finish(slot, generation, reason);
    } else {
        // The config keeps the endpoint short enough for the 123-byte close reason.
        debug_assert!(body.len() <= ws::CLOSE_REASON_BYTES_MAX);
        client::close_ws(shard, slot, generation, 1001, &body, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_buckets_limit_each_source_and_refill() {
        let mut s = SourceBuckets::default();
        // 2 per second, burst 2: the third at once is refused, another source is not.
        assert!(s.admit(1, 2.0, 0));
        assert!(s.admit(1, 2.0, 0));
        assert!(!s.admit(1, 2.0, 0));
        assert!(s.admit(2, 2.0, 0));
        // Half a second refills one token.
        assert!(s.admit(1, 2.0, 500));
        assert!(!s.admit(1, 2.0, 500));
    }

    #[test]
    fn source_table_is_bounded() {
        let mut s = SourceBuckets::default();
        for k in 0..SOURCES_MAX as u128 {
            assert!(s.admit(k, 1.0, 0));
        }
        // Every bucket is busy (refills in 1 s): a new source is admitted uncounted.
        assert!(s.admit(u128::MAX, 1.0, 10));
        assert_eq!(s.tracked(), SOURCES_MAX);
        // Later the idle ones are forgotten and the new source gets a bucket.
        assert!(s.admit(u128::MAX, 1.0, 5_000));
        assert_eq!(s.tracked(), 1);
    }

    #[test]
    fn source_keys_group_v4_mapped_and_v6_prefixes() {
        let v4 = |ip: [u8; 4]| {
            let mut a = super::super::accept::AcceptAddr::default();
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            let sin = unsafe { &mut *(&raw mut a.addr).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(ip);
            a.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            a
        };
        let v6 = |ip: std::net::Ipv6Addr| {
            let mut a = super::super::accept::AcceptAddr::default();
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            let sin6 = unsafe { &mut *(&raw mut a.addr).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = ip.octets();
            a.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            a
        };
        let k1 = source_key(&v4([127, 0, 0, 1])).unwrap();
        let mapped = v6("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(source_key(&mapped), Some(k1));
        assert_ne!(source_key(&v4([127, 0, 0, 2])), Some(k1));
        let a = source_key(&v6("2001:db8:1:2::1".parse().unwrap()));
        let b = source_key(&v6("2001:db8:1:2:ffff::9".parse().unwrap()));
        let c = source_key(&v6("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(source_key(&super::super::accept::AcceptAddr::default()), None);
    }

    #[test]
    fn jitter_is_uniform_enough_and_in_range() {
        let mut j = Jitter::new(42);
        let samples: Vec<f64> = (0..10_000).map(|_| j.unit()).collect();
        assert!(samples.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }
}
