//! The admin API on its own listener: HTTP/1.1 keep-alive, pipelining allowed.
//!
//! `POST /publish?user=ID | ?topic=T | ?all` (body = payload) → 202 `{"id":N}`;
//! `POST /publish/batch` ([`super::batch`]); `POST /disconnect`, `/subscribe`,
//! `/unsubscribe` ([`super::command`]); `GET /stats` (JSON), `GET /metrics` (Prometheus
//! text), `GET /healthz`; `GET /` (the status page), `GET /status/events` and
//! `POST /login` ([`super::status`]).

use super::conn::{Chunk, Closing, Partial};
use super::Shard;
use crate::metrics::{bump, render_prometheus, render_stats, CloseReason};
use crate::proto::http1::{self, BodyReader, BodyStatus, Request};
use crate::push::Command;

/// Where a publish goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    Topic(String),
    All,
}

/// Bytes from an admin connection. Requests may be split across reads or pipelined.
pub(super) fn on_bytes(shard: &mut Shard, slot: u32, generation: u32, rx: &[u8]) {
    let Some(conn) = shard.conns.get_mut(slot, generation) else {
        return;
    };
    if !conn.is_open() {
        return;
    }
    let now = shard.now_ms;
    if conn.partial.as_ref().is_some_and(|p| p.stream) {
        // A status stream reads nothing more: what its client sends is dropped.
        return;
    }
    if let Some(p) = conn.partial.as_mut().filter(|p| p.waiting) {
        // A request waits for other shards' answers; what follows it waits too.
        return p.bytes.extend_from_slice(rx);
    }
    let mut p = conn
        .partial
        .take()
        .unwrap_or_else(|| Box::new(Partial { started_ms: now, ..Default::default() }));
    p.bytes.extend_from_slice(rx);
    let keep = drive(shard, slot, generation, &mut p);
    if !keep {
        return;
    }
    if p.stream {
        let Some(conn) = shard.conns.get_mut(slot, generation) else { return };
        conn.partial = Some(p);
        return shard.schedule(slot, generation, now + super::status::INTERVAL_MS);
    }
    let idle = p.bytes.is_empty() && p.request.is_none() && !p.waiting;
    if idle {
        if let Some(conn) = shard.conns.get_mut(slot, generation) {
            conn.partial = None;
        }
        return;
    }
    // A request is under way: it has a deadline of its own, which trickling bytes do not
    // move (the idle timeout alone would let a byte every few seconds hold the connection).
    let deadline = p.started_ms + shard.shared.cfg.limits.handshake_timeout_ms;
    let Some(conn) = shard.conns.get_mut(slot, generation) else { return };
    conn.partial = Some(p);
    // Only an earlier deadline replaces the armed one (an idle timeout may come first).
    let armed_later = (conn.timer.wrapping_sub(super::conn::stamp(deadline)) as i32) > 0;
    let due = conn.timer == 0 || armed_later;
    if due {
        shard.schedule(slot, generation, deadline);
    }
}

/// Runs as many complete requests as the buffer holds. Returns false when the connection is
/// closing and the partial state should be dropped.
fn drive(shard: &mut Shard, slot: u32, generation: u32, p: &mut Partial) -> bool {
    let limits = super::client::head_limits(shard);
    let l = &shard.shared.cfg.limits;
    let (message_max, batch_max) = (l.message_bytes_max as usize, l.batch_bytes_max as usize);
    loop {
        if p.request.is_none() {
            match http1::parse_request(&p.bytes, &limits) {
                Ok(None) => return true,
                Err(e) => return fail(shard, slot, generation, e.status(), "bad request head"),
                Ok(Some((req, head_len))) => {
                    p.bytes.drain(..head_len);
                    let batch = req.path == "/publish/batch";
                    match BodyReader::new(&req, if batch { batch_max } else { message_max }) {
                        Ok(reader) => {
                            // A client that waits to be invited to send its body is invited.
                            if req.header_has_token("Expect", "100-continue") && !reader.is_done() {
                                let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
                                shard.queue(slot, generation, Chunk::Static(cont));
                            }
                            p.request = Some((req, reader));
                        }
                        Err(http1::BodyError::TooLarge) => {
                            let limit = if batch { "batch_bytes_max" } else { "message_bytes_max" };
                            let why = format!("body over {limit}");
                            return fail(shard, slot, generation, 413, &why);
                        }
                        Err(http1::BodyError::Invalid) => {
                            return fail(shard, slot, generation, 400, "bad body framing")
                        }
                    }
                }
            }
        }
        let Some((_, reader)) = p.request.as_mut() else {
            return true;
        };
        match reader.feed(&p.bytes, &mut p.body) {
            Ok((BodyStatus::NeedMore, used)) => {
                p.bytes.drain(..used);
                return true;
            }
            Ok((BodyStatus::Done { .. }, used)) => {
                p.bytes.drain(..used);
                let (req, _) = p.request.take().expect("checked above");
                let body = std::mem::take(&mut p.body);
                match handle(shard, slot, generation, &req, body) {
                    Next::Go => {}
                    Next::Stop => return false,
                    Next::Wait => {
                        p.waiting = true;
                        p.started_ms = shard.now_ms;
                        return true;
                    }
                    Next::Stream => {
                        shard.start_status_stream(slot, generation, p);
                        return true;
                    }
                }
                // Whatever follows is the next request: its deadline starts now.
                p.started_ms = shard.now_ms;
            }
            Err(http1::BodyError::TooLarge) => {
                return fail(shard, slot, generation, 413, "body over message_bytes_max")
            }
            Err(http1::BodyError::Invalid) => {
                return fail(shard, slot, generation, 400, "bad body")
            }
        }
    }
}

/// A request not complete within `handshake_timeout_ms` of its first byte: 408, close.
pub(super) fn request_timeout(shard: &mut Shard, slot: u32, generation: u32) {
    if let Some(conn) = shard.conns.get_mut(slot, generation) {
        conn.partial = None;
    }
    // Counted as a handshake timeout: the same limit, on the admin port.
    let reason = CloseReason::HandshakeTimeout;
    fail_with(shard, slot, generation, 408, "request not complete in time", reason);
}

/// Answers an unparseable request and closes: the stream cannot be trusted past it.
fn fail(shard: &mut Shard, slot: u32, generation: u32, status: u16, why: &str) -> bool {
    fail_with(shard, slot, generation, status, why, CloseReason::HttpDone)
}

fn fail_with(
    shard: &mut Shard,
    slot: u32,
    generation: u32,
    status: u16,
    why: &str,
    reason: CloseReason,
) -> bool {
    let mut out = Vec::new();
    let body = serde_json::json!({ "error": why }).to_string();
    let headers = [("Content-Type", "application/json")];
    http1::write_response(&mut out, status, &headers, body.as_bytes(), false);
    bump(&shard.stats().http_4xx, 1);
    shard.queue(slot, generation, Chunk::Owned(out));
    shard.finish(slot, generation, reason);
    false
}

/// Handles one complete request. Returns false if the connection closes after it.
/// What the connection does after a request.
enum Next {
    /// Read the next request.
    Go,
    /// Closing.
    Stop,
    /// The answer comes later ([`super::presence`]); read nothing until then.
    Wait,
    /// The connection becomes a status stream ([`super::status`]).
    Stream,
}

fn handle(shard: &mut Shard, slot: u32, generation: u32, req: &Request, body: Vec<u8>) -> Next {
    let keep_alive = req.keep_alive();
    if req.path == "/presence" && req.method == "GET" && authorized(shard, req) && !upgrading(shard)
    {
        if let Ok(ask) = super::presence::parse(req) {
            if !shard.ask_presence(slot, generation, keep_alive, ask) {
                return Next::Wait;
            }
            let open =
                shard.conns.get(slot, generation).is_some_and(|c| c.closing == Closing::Open);
            return if keep_alive && open { Next::Go } else { Next::Stop };
        }
    }
    if req.path == "/status/events" && req.method == "GET" && status_allowed(shard, req) {
        return Next::Stream;
    }
    let mut cookie = None;
    let (status, ctype, text, allow) = if req.path == "/login" && req.method == "POST" {
        login(shard, req, &body, &mut cookie)
    } else {
        route(shard, req, body)
    };
    let mut out = Vec::with_capacity(text.len() + 128);
    let mut headers = vec![("Content-Type", ctype)];
    if let Some(c) = cookie.as_deref() {
        headers.push(("Set-Cookie", c));
    }
    if let Some(allow) = allow {
        headers.push(("Allow", allow));
    }
    http1::write_response(&mut out, status, &headers, text.as_bytes(), keep_alive);
    if status >= 400 {
        bump(&shard.stats().http_4xx, 1);
    }
    shard.queue(slot, generation, Chunk::Owned(out));
    if !keep_alive {
        shard.finish(slot, generation, CloseReason::HttpDone);
        return Next::Stop;
    }
    if shard.conns.get(slot, generation).is_some_and(|c| c.closing == Closing::Open) {
        Next::Go
    } else {
        Next::Stop
    }
}

/// Whether a live upgrade is moving this process's connections to a new one.
fn upgrading(shard: &Shard) -> bool {
    shard.handover.moving() || shard.shared.hub.out_go.load(std::sync::atomic::Ordering::Acquire)
}

/// Whether the request may use the admin API: always without a key, else with it
/// (`/healthz` is always open).
fn authorized(shard: &Shard, req: &Request) -> bool {
    match &shard.shared.admin_key {
        Some(key) => req.path == "/healthz" || crate::auth::admin_key_matches(key, req),
        None => true,
    }
}

/// The status page and its stream also open with the status cookie (a browser can send no
/// `Authorization` header on a page load or an `EventSource`).
fn status_allowed(shard: &Shard, req: &Request) -> bool {
    authorized(shard, req)
        || shard.shared.admin_key.as_deref().is_some_and(|k| super::status::cookie_matches(k, req))
}

/// Tells the `auth_log` (rate-limited) of a request refused for the admin key.
fn log_refused(shard: &mut Shard, req: &Request) {
    if let Some(held) = shard.auth_log.allow(shard.now_ms) {
        tracing::warn!(
            shard = shard.id,
            path = %req.path,
            held_back = held,
            "admin: request without the admin key refused with 401"
        );
    }
}

/// `POST /login` (body: the admin key): 204 with the status cookie, or 401.
fn login(
    shard: &mut Shard,
    req: &Request,
    body: &[u8],
    cookie: &mut Option<String>,
) -> (u16, &'static str, String, Option<&'static str>) {
    let Some(key) = shard.shared.admin_key.as_deref() else {
        return (204, TEXT, String::new(), None);
    };
    if super::status::login_matches(key, body) {
        *cookie = Some(super::status::set_cookie(key));
        return (204, TEXT, String::new(), None);
    }
    log_refused(shard, req);
    let err = serde_json::json!({ "error": "wrong admin key" }).to_string();
    (401, JSON, err, None)
}

const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

fn route(
    shard: &mut Shard,
    req: &Request,
    body: Vec<u8>,
) -> (u16, &'static str, String, Option<&'static str>) {
    let method = req.method.as_str();
    let err = |why: &str| serde_json::json!({ "error": why }).to_string();
    if req.path == "/" {
        return match method {
            "GET" if status_allowed(shard, req) => (200, HTML, super::status::PAGE.into(), None),
            "GET" => (401, HTML, super::status::LOGIN.into(), None),
            _ => (405, JSON, err("use GET"), Some("GET")),
        };
    }
    if req.path == "/login" {
        // POST /login is answered by `login`; it needs no key to be asked.
        return (405, JSON, err("use POST"), Some("POST"));
    }
    if !authorized(shard, req) {
        log_refused(shard, req);
        return (401, JSON, err("admin key required: Authorization: Bearer KEY"), None);
    }
    match (req.path.as_str(), method) {
        ("/disconnect" | "/subscribe" | "/unsubscribe" | "/drain", "POST")
        | ("/presence", "GET")
            if upgrading(shard) =>
        {
            // They act on (or count) connections, some of which are on their way to the new
            // process; publishes go on meanwhile.
            let why = "a live upgrade is moving connections: retry in a second";
            (503, JSON, err(why), None)
        }
        ("/publish", "POST") => match target(req) {
            Ok(t) => {
                let id = shard.route(t, body);
                (202, JSON, serde_json::json!({ "id": id }).to_string(), None)
            }
            Err(why) => (400, JSON, err(why), None),
        },
        ("/publish", _) => (405, JSON, err("use POST"), Some("POST")),
        ("/publish/batch", "POST") => {
            let (status, answer) = shard.publish_batch(&body);
            (status, JSON, answer, None)
        }
        ("/publish/batch", _) => (405, JSON, err("use POST"), Some("POST")),
        ("/disconnect" | "/subscribe" | "/unsubscribe", "POST") => match command(req) {
            Ok((user, cmd, ban_s)) => {
                if let Command::Disconnect { ban_until_s, .. } = cmd {
                    if ban_until_s > 0 {
                        shard.shared.bans.ban(&user, ban_until_s);
                    }
                }
                shard.command_user(&user, cmd);
                let answer = serde_json::json!({ "user": user, "ban_s": ban_s });
                (202, JSON, answer.to_string(), None)
            }
            Err(why) => (400, JSON, err(&why), None),
        },
        // Valid requests were handled before `route` (they may wait for other shards).
        ("/presence", "GET") => match super::presence::parse(req) {
            Err(why) => (400, JSON, err(&why), None),
            Ok(_) => (500, JSON, err("presence request not handled"), None),
        },
        ("/presence", _) => (405, JSON, err("use GET"), Some("GET")),
        ("/disconnect" | "/subscribe" | "/unsubscribe", _) => {
            (405, JSON, err("use POST"), Some("POST"))
        }
        ("/drain", "POST") => {
            let default = shard.shared.cfg.limits.drain_rate_per_s;
            match req.query_param("rate").map(|r| r.parse::<u32>()) {
                Some(Err(_)) => (400, JSON, err("rate must be connections per second"), None),
                Some(Ok(rate)) => {
                    shard.drain_all(rate);
                    (
                        202,
                        JSON,
                        serde_json::json!({ "draining": true, "rate": rate }).to_string(),
                        None,
                    )
                }
                None => {
                    shard.drain_all(default);
                    (
                        202,
                        JSON,
                        serde_json::json!({ "draining": true, "rate": default }).to_string(),
                        None,
                    )
                }
            }
        }
        ("/drain", _) => (405, JSON, err("use POST"), Some("POST")),
        ("/stats", "GET") => {
            let mut stats = render_stats(&shard.shared.stats, crate::sys::rss_bytes());
            if let Some(cluster) = &shard.shared.cluster {
                stats["cluster"] = cluster.json();
            }
            (200, JSON, stats.to_string(), None)
        }
        ("/metrics", "GET") => {
            let mut text = render_prometheus(&shard.shared.stats, crate::sys::rss_bytes());
            if let Some(cluster) = &shard.shared.cluster {
                cluster.prometheus(&mut text);
            }
            (200, "text/plain; version=0.0.4", text, None)
        }
        ("/healthz", "GET") => {
            let ok = shard.shutdown_deadline_ms.is_none();
            if ok {
                (200, TEXT, "ok\n".into(), None)
            } else {
                (503, TEXT, "shutting down\n".into(), None)
            }
        }
        ("/stats" | "/metrics" | "/healthz" | "/status/events", _) => {
            (405, JSON, err("use GET"), Some("GET"))
        }
        _ => (404, JSON, err("no such endpoint"), None),
    }
}

/// `/disconnect?user=U[&ban_s=N][&reason=R]`, `/subscribe?user=U&topic=T`,
/// `/unsubscribe?user=U&topic=T`: the user, the command, and the ban in seconds.
fn command(req: &Request) -> Result<(String, Command, u64), String> {
    use super::command::{BAN_S_MAX, REASON_BYTES_MAX};
    let name_ok = |v: &Option<String>| {
        v.as_ref().is_some_and(|s| !s.is_empty() && s.len() <= super::client::NAME_BYTES_MAX)
    };
    let user = req.query_param("user");
    if !name_ok(&user) {
        return Err("user: give ?user=ID (1..=256 bytes)".into());
    }
    let user = user.unwrap_or_default();
    if req.path == "/disconnect" {
        let ban_s = match req.query_param("ban_s") {
            None => 0,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n <= BAN_S_MAX => n,
                _ => return Err(format!("ban_s: seconds within 0..={BAN_S_MAX}")),
            },
        };
        let reason = req.query_param("reason").unwrap_or_default();
        let plain = !reason.chars().any(|c| c.is_control() || c == '"' || c == '\\');
        if reason.len() > REASON_BYTES_MAX || !plain {
            return Err(format!(
                "reason: at most {REASON_BYTES_MAX} bytes, no quotes, backslashes or control characters"
            ));
        }
        let ban_until_s = if ban_s > 0 { crate::auth::unix_now_s() + ban_s } else { 0 };
        return Ok((user, Command::Disconnect { reason: reason.into(), ban_until_s }, ban_s));
    }
    let topic = req.query_param("topic");
    if !name_ok(&topic) {
        return Err("topic: give &topic=T (1..=256 bytes)".into());
    }
    let topic: Box<str> = topic.unwrap_or_default().into();
    let cmd = if req.path == "/subscribe" {
        Command::Subscribe(topic)
    } else {
        Command::Unsubscribe(topic)
    };
    Ok((user, cmd, 0))
}

/// Exactly one of `user=ID`, `topic=T`, `all`.
fn target(req: &Request) -> Result<Target, &'static str> {
    let user = req.query_param("user");
    let topic = req.query_param("topic");
    let all = req.query_has("all");
    match (user, topic, all) {
        (Some(u), None, false) if !u.is_empty() && u.len() <= super::client::NAME_BYTES_MAX => {
            Ok(Target::User(u))
        }
        (None, Some(t), false) if !t.is_empty() && t.len() <= super::client::NAME_BYTES_MAX => {
            Ok(Target::Topic(t))
        }
        (None, None, true) => Ok(Target::All),
        _ => Err("give exactly one of ?user=ID, ?topic=T or ?all (names 1..=256 bytes)"),
    }
}
