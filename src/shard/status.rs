//! The status page: `GET /` on the admin listener serves one self-contained HTML page (no
//! external assets) that draws itself from `GET /status/events`, an SSE stream of one JSON
//! snapshot a second built from the same counters as `/stats` and `/metrics`.
//!
//! Cost: a stream is an admin connection with a timer; each tick reads the shards' atomic
//! counters and writes one event (about 2 KB for two shards), and skips the tick while the
//! previous event is still queued, so a page that stops reading holds one event at most.
//!
//! With an admin key the page and its stream also accept a cookie, because a browser cannot
//! put an `Authorization` header on a page load or an `EventSource`. The cookie holds
//! HMAC-SHA256(key, "c10m status page"), not the key; `POST /login` with the key as its body
//! sets it (`HttpOnly; SameSite=Strict`). The cookie opens these two read-only GETs only:
//! publishing and the other admin endpoints still need the bearer key.

use std::sync::atomic::Ordering::Relaxed;

use super::conn::{Chunk, Partial};
use super::Shard;
use crate::metrics::CloseReason;
use crate::proto::http1::Request;

/// The page itself.
pub(super) const PAGE: &str = include_str!("status.html");
/// What `GET /` answers (401) without the key: a form that posts it to `/login`.
pub(super) const LOGIN: &str = include_str!("status_login.html");
/// How often a stream gets a snapshot.
pub(super) const INTERVAL_MS: u64 = 1000;
const COOKIE: &str = "c10m_status";

/// The cookie's value for `key`: hex HMAC-SHA256 of a fixed label.
pub(super) fn cookie_value(key: &[u8]) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, b"c10m status page");
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Set-Cookie` header value `POST /login` answers with.
pub(super) fn set_cookie(key: &[u8]) -> String {
    format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", cookie_value(key))
}

/// Whether a request carries the status cookie for `key` (compared in constant time).
pub(super) fn cookie_matches(key: &[u8], req: &Request) -> bool {
    let want = cookie_value(key);
    req.headers_named("Cookie")
        .flat_map(|v| v.split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            pair.strip_prefix(COOKIE.as_bytes())?.strip_prefix(b"=")
        })
        .any(|given| crate::auth::constant_time_eq(given, want.as_bytes()))
}

/// Whether `POST /login`'s body is the admin key (surrounding whitespace ignored).
pub(super) fn login_matches(key: &[u8], body: &[u8]) -> bool {
    crate::auth::constant_time_eq(body.trim_ascii(), key)
}

/// One snapshot: counters as totals (the page turns them into rates), gauges as they are.
pub(super) fn snapshot(shard: &Shard) -> serde_json::Value {
    let stats = &shard.shared.stats;
    let mut closes = vec![0u64; CloseReason::ALL.len()];
    let mut shards = Vec::with_capacity(stats.len());
    let (mut t, mut lag) = (Totals::default(), 0);
    for (i, s) in stats.iter().enumerate() {
        for (c, v) in closes.iter_mut().zip(&s.closes) {
            *c += v.load(Relaxed);
        }
        let one = Totals::of(s);
        lag = lag.max(s.loop_lag_ms.load(Relaxed));
        shards.push(serde_json::json!({
            "shard": i, "ws": one.ws, "sse": one.sse, "poll": one.poll, "admin": one.admin,
            "handshake": one.handshake, "published": one.published, "delivered": one.delivered,
            "loop_lag_ms": s.loop_lag_ms.load(Relaxed), "loop_turn_ms": s.loop_turn_ms.load(Relaxed),
        }));
        t.add(&one);
    }
    let closes: serde_json::Map<String, serde_json::Value> = CloseReason::ALL
        .iter()
        .zip(closes)
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (r.name().to_owned(), n.into()))
        .collect();
    let sum = |f: &dyn Fn(&crate::metrics::ShardStats) -> u64| stats.iter().map(f).sum::<u64>();
    let refused = serde_json::json!({
        "capacity": sum(&|s| s.accepts_refused.load(Relaxed)),
        "rate": sum(&|s| s.refused_rate.load(Relaxed)),
        "source": sum(&|s| s.refused_source.load(Relaxed)),
        "memory": sum(&|s| s.refused_memory.load(Relaxed)),
        "auth": sum(&|s| s.auth_refused.load(Relaxed)),
    });
    let dropped = serde_json::json!({
        "mesh_full": sum(&|s| s.dropped_mesh_full.load(Relaxed)),
        "slow_consumer": sum(&|s| s.dropped_slow_consumer.load(Relaxed)),
    });
    let cluster = shard.shared.cluster.as_ref().map(|c| c.json());
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "unix_ms": unix_ms(),
        "connections": t.ws + t.sse + t.poll,
        "ws": t.ws, "sse": t.sse, "poll": t.poll, "admin": t.admin, "handshake": t.handshake,
        "accepts": t.accepts, "published": t.published, "delivered": t.delivered,
        "closes": closes, "refused": refused, "dropped": dropped,
        "history_bytes": sum(&|s| s.history_bytes.load(Relaxed)),
        "rss_bytes": crate::sys::rss_bytes(),
        "tcp_mem_bytes": crate::sys::tcp_mem_bytes(),
        "loop_lag_ms": lag,
        "draining": sum(&|s| s.liveness_draining.load(Relaxed)),
        "shards": shards,
        "cluster": cluster,
    })
}

#[derive(Default)]
struct Totals {
    ws: u64,
    sse: u64,
    poll: u64,
    admin: u64,
    handshake: u64,
    accepts: u64,
    published: u64,
    delivered: u64,
}

impl Totals {
    fn of(s: &crate::metrics::ShardStats) -> Totals {
        Totals {
            ws: s.conns_ws.load(Relaxed),
            sse: s.conns_sse.load(Relaxed),
            poll: s.conns_poll.load(Relaxed),
            admin: s.conns_admin.load(Relaxed),
            handshake: s.conns_handshake.load(Relaxed),
            accepts: s.accepts.load(Relaxed),
            published: s.published.load(Relaxed),
            delivered: s.delivered.load(Relaxed),
        }
    }

    fn add(&mut self, o: &Totals) {
        self.ws += o.ws;
        self.sse += o.sse;
        self.poll += o.poll;
        self.admin += o.admin;
        self.handshake += o.handshake;
        self.accepts += o.accepts;
        self.published += o.published;
        self.delivered += o.delivered;
    }
}

fn unix_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_millis() as u64)
}

fn event(shard: &Shard) -> Vec<u8> {
    format!("data: {}\n\n", snapshot(shard)).into_bytes()
}

impl Shard {
    /// `GET /status/events`: the response head, a first snapshot at once, then one a second
    /// from [`Shard::status_tick`]. The connection reads nothing more.
    pub(super) fn start_status_stream(&mut self, slot: u32, generation: u32, p: &mut Partial) {
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
            Cache-Control: no-store\r\nX-Accel-Buffering: no\r\n\r\nretry: 2000\n"
            .to_vec();
        out.extend_from_slice(&event(self));
        self.queue(slot, generation, Chunk::Owned(out));
        p.stream = true;
        p.bytes.clear();
    }

    /// A stream's timer: the next snapshot, unless the last one is still queued.
    pub(super) fn status_tick(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get(slot, generation) else { return };
        if conn.queued_bytes() == 0 {
            let ev = event(self);
            self.queue(slot, generation, Chunk::Owned(ev));
        }
        self.schedule(slot, generation, self.now_ms + INTERVAL_MS);
    }

    /// A live upgrade does not move status streams: they end, and the page's `EventSource`
    /// reconnects to whichever process holds the admin listener.
    pub(super) fn end_status_streams(&mut self) {
        let streams: Vec<(u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, _, c)| c.is_open() && c.partial.as_ref().is_some_and(|p| p.stream))
            .map(|(s, g, _)| (s, g))
            .collect();
        for (slot, generation) in streams {
            self.finish(slot, generation, CloseReason::HttpDone);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cookie: &str) -> Request {
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
        let limits = crate::proto::http1::HeadLimits { head_bytes_max: 8192, headers_max: 64 };
        crate::proto::http1::parse_request(raw.as_bytes(), &limits).unwrap().unwrap().0
    }

    #[test]
    fn the_cookie_opens_the_page_for_its_key_only() {
        let key = b"0123456789abcdef";
        let good = format!("a=b; {COOKIE}={}; c=d", cookie_value(key));
        assert!(cookie_matches(key, &req(&good)));
        assert!(!cookie_matches(b"0123456789abcdeX", &req(&good)));
        assert!(!cookie_matches(key, &req(&format!("{COOKIE}=00"))));
        assert!(!cookie_matches(key, &req("x=y")));
        assert!(set_cookie(key).contains("HttpOnly; SameSite=Strict"));
        assert!(login_matches(key, b"0123456789abcdef\n"));
        assert!(!login_matches(key, b"0123456789abcde"));
    }
}
