//! Client connections: the request head, the WebSocket and SSE protocols, and delivery of
//! published messages. The protocols themselves live in [`crate::proto`]; this file wires
//! their events to the registry and the outbox.

use std::rc::Rc;

use super::conn::{Chunk, Closing, Kind, Partial};
use super::resume::{self, Framing};
use super::Shard;
use crate::auth;
use crate::history::Stream;
use crate::metrics::{bump, CloseReason};
use crate::proto::http1::{self, HeadLimits, Request};
use crate::proto::{deflate, sse, ws};
use crate::push::Message;

/// Bytes of a user id or topic name.
pub const NAME_BYTES_MAX: usize = 256;
/// Topics one connection may subscribe to.
pub const TOPICS_PER_CONN_MAX: usize = 64;

pub(super) fn head_limits(shard: &Shard) -> HeadLimits {
    let l = &shard.shared.cfg.limits;
    HeadLimits { head_bytes_max: l.head_bytes_max as usize, headers_max: l.headers_max as usize }
}

fn ws_limits(shard: &Shard) -> ws::WsLimits {
    let l = &shard.shared.cfg.limits;
    ws::WsLimits {
        frame_bytes_max: l.frame_bytes_max as usize,
        message_bytes_max: l.message_bytes_max as usize,
    }
}

/// Bytes of a request head on a client listener; the head may arrive in pieces. `tls_out`:
/// TLS bytes the handshake owes the client, sent before any answer.
pub(super) fn on_head_bytes(
    shard: &mut Shard,
    slot: u32,
    generation: u32,
    rx: &[u8],
    tls_out: Vec<u8>,
) {
    head_bytes(shard, slot, generation, rx, Some(tls_out))
}

/// A connection moved from another shard (or whose move failed): `bytes` hold its whole
/// request head, read here as if it had just arrived; it moves no further.
pub(super) fn on_moved_head(shard: &mut Shard, slot: u32, generation: u32, bytes: &[u8]) {
    head_bytes(shard, slot, generation, bytes, None)
}

/// `tls_out` is None when the connection may not move.
fn head_bytes(
    shard: &mut Shard,
    slot: u32,
    generation: u32,
    rx: &[u8],
    mut tls_out: Option<Vec<u8>>,
) {
    let limits = head_limits(shard);
    let Some(conn) = shard.conns.get_mut(slot, generation) else {
        return;
    };
    if !conn.is_open() {
        return;
    }
    // Parse straight from the receive buffer when nothing is pending, else append.
    let mut pending = conn.partial.take();
    let buf: &[u8] = match pending.as_mut() {
        Some(p) => {
            p.bytes.extend_from_slice(rx);
            &p.bytes
        }
        None => rx,
    };
    let parsed = http1::parse_request(buf, &limits);
    if let Ok(Some((req, _))) = &parsed {
        if let Some(out) = tls_out.as_mut() {
            if shard.place_on_home(slot, generation, req, buf, out) {
                return;
            }
        }
    }
    if let Some(out) = tls_out.filter(|o| !o.is_empty()) {
        shard.queue_raw(slot, generation, Chunk::Owned(out));
    }
    match parsed {
        Ok(None) => {
            let keep = pending
                .unwrap_or_else(|| Box::new(Partial { bytes: rx.to_vec(), ..Default::default() }));
            if let Some(conn) = shard.conns.get_mut(slot, generation) {
                conn.partial = Some(keep);
            }
        }
        Err(e) => reject(shard, slot, generation, e.status(), CloseReason::HttpDone),
        Ok(Some((req, head_len))) => {
            let rest = buf.get(head_len..).unwrap_or(&[]).to_vec();
            on_request(shard, slot, generation, req, &rest);
        }
    }
}

/// Answers a client request with an error status and closes after sending it.
pub(super) fn reject(
    shard: &mut Shard,
    slot: u32,
    generation: u32,
    status: u16,
    reason: CloseReason,
) {
    let mut out = Vec::with_capacity(128);
    let body = format!("{}\n", http1::reason(status));
    http1::write_response(
        &mut out,
        status,
        &[("Content-Type", "text/plain")],
        body.as_bytes(),
        false,
    );
    respond_and_close(shard, slot, generation, out, reason);
}

fn respond_and_close(
    shard: &mut Shard,
    slot: u32,
    generation: u32,
    out: Vec<u8>,
    reason: CloseReason,
) {
    bump(&shard.stats().http_4xx, 1);
    shard.queue(slot, generation, Chunk::Owned(out));
    shard.finish(slot, generation, reason);
}

fn on_request(shard: &mut Shard, slot: u32, generation: u32, req: Request, rest: &[u8]) {
    let echo = shard.shared.cfg.echo;
    match req.path.as_str() {
        "/ws" => accept_ws(shard, slot, generation, &req, rest, false),
        "/echo" if echo => accept_ws(shard, slot, generation, &req, rest, true),
        "/sse" if req.method == "GET" => accept_sse(shard, slot, generation, &req),
        "/poll" if req.method == "GET" => accept_poll(shard, slot, generation, &req),
        "/sse" if req.method == "OPTIONS" => preflight(shard, slot, generation, &req),
        "/nodes" if req.method == "GET" || req.method == "OPTIONS" => {
            nodes(shard, slot, generation, &req)
        }
        "/sse" | "/nodes" => {
            let mut out = Vec::new();
            let body = b"method not allowed: use GET\n";
            http1::write_response(&mut out, 405, &[("Allow", "GET, OPTIONS")], body, false);
            respond_and_close(shard, slot, generation, out, CloseReason::HttpDone);
        }
        _ => reject(shard, slot, generation, 404, CloseReason::HttpDone),
    }
}

/// `GET /nodes` ([`crate::nodes`]): the live nodes and their load, readable from any
/// allowed origin; answered, then closed.
fn nodes(shard: &mut Shard, slot: u32, generation: u32, req: &Request) {
    if !auth::origin_allowed(&shard.shared.cfg.allowed_origins, req.header("Origin")) {
        return reject(shard, slot, generation, 403, CloseReason::HttpDone);
    }
    let mut headers = vec![("Access-Control-Allow-Origin", "*"), ("Cache-Control", "no-store")];
    let mut out = Vec::with_capacity(512);
    if req.method == "OPTIONS" {
        headers.push(("Access-Control-Allow-Methods", "GET"));
        headers.push(("Access-Control-Max-Age", "600"));
        http1::write_response(&mut out, 204, &headers, b"", false);
    } else {
        headers.push(("Content-Type", "application/json"));
        let body = shard.shared.directory.render();
        http1::write_response(&mut out, 200, &headers, body.as_bytes(), false);
    }
    shard.queue(slot, generation, Chunk::Owned(out));
    shard.finish(slot, generation, CloseReason::HttpDone);
}

/// The user id and topics a client asked for, checked against the limits.
fn identity(req: &Request) -> Result<(Option<String>, Vec<String>), &'static str> {
    let user = req.query_param("user").filter(|u| !u.is_empty());
    if user.as_ref().is_some_and(|u| u.len() > NAME_BYTES_MAX) {
        return Err("user id longer than 256 bytes\n");
    }
    let topics: Vec<String> = req
        .query_param("topics")
        .map(|t| t.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    if topics.len() > TOPICS_PER_CONN_MAX {
        return Err("more than 64 topics\n");
    }
    if topics.iter().any(|t| t.len() > NAME_BYTES_MAX) {
        return Err("topic name longer than 256 bytes\n");
    }
    if user.iter().chain(topics.iter()).any(|n| n.contains('\0')) {
        return Err("names may not contain NUL\n");
    }
    Ok((user, topics))
}

/// A client that may connect: who it is, what it subscribes to, and its token's grant.
struct Admission {
    user: Option<String>,
    topics: Vec<String>,
    grant: Option<auth::Grant>,
    /// The position to resume from: `Last-Event-ID`, else `?last_event_id=`. A token this
    /// server does not write counts as another run's (a gap report for every stream).
    resume: Option<crate::history::Token>,
    /// Browser tabs sharing this connection (`?tabs=N`, default 1).
    tabs: u32,
}

/// The most tabs a client may say share its connection.
pub const TABS_MAX: u32 = 1000;

/// `?tabs=N`: how many browser tabs share the connection (the smart client's shared worker
/// or leader tab says so), 1 when absent.
fn tabs_param(req: &Request) -> Result<u32, String> {
    match req.query_param("tabs") {
        None => Ok(1),
        Some(t) => match t.parse::<u32>() {
            Ok(n) if (1..=TABS_MAX).contains(&n) => Ok(n),
            _ => Err(format!("tabs={t:?}: give a whole number of tabs in 1..={TABS_MAX}")),
        },
    }
}

/// Records how many tabs share a connection: the `c10m_client_tabs` gauge counts each
/// client connection as 1 plus the tabs beyond the first it reported (up to 256 each).
pub(super) fn set_tabs(shard: &mut Shard, slot: u32, generation: u32, tabs: u32) {
    let extra = (tabs.clamp(1, 256) - 1) as u8;
    if shard.conns.get(slot, generation).is_none() {
        return;
    }
    let before = shard.extra_tabs(slot, generation);
    if extra == 0 {
        shard.tabs.remove(&slot);
    } else {
        shard.tabs.insert(slot, (generation, extra));
    }
    let gauge = &shard.shared.stats[shard.id].tabs_extra;
    gauge.fetch_add(extra as u64, std::sync::atomic::Ordering::Relaxed);
    gauge.fetch_sub(before as u64, std::sync::atomic::Ordering::Relaxed);
}

/// The resume position a client sent, if any.
fn resume_token(req: &Request) -> Option<crate::history::Token> {
    let given = match req.header("Last-Event-ID") {
        Some(v) => v.to_vec(),
        None => req.query_param("last_event_id")?.into_bytes(),
    };
    let given = given.trim_ascii();
    if given.is_empty() {
        return None;
    }
    Some(crate::history::Token::from_client(given))
}

/// Origin, identity and token checks shared by WebSocket and SSE. On refusal the answer is
/// queued and the connection is closing.
fn admit(shard: &mut Shard, slot: u32, generation: u32, req: &Request) -> Option<Admission> {
    let refuse = |shard: &mut Shard, status: u16, why: String| {
        let mut out = Vec::new();
        let mut headers = vec![("Content-Type", "text/plain")];
        if status == 401 {
            headers.push(("WWW-Authenticate", "Bearer"));
        }
        http1::write_response(&mut out, status, &headers, format!("{why}\n").as_bytes(), false);
        if status == 401 || status == 403 {
            bump(&shard.stats().auth_refused, 1);
        }
        respond_and_close(shard, slot, generation, out, CloseReason::HttpDone);
        None
    };
    if !auth::origin_allowed(&shard.shared.cfg.allowed_origins, req.header("Origin")) {
        return refuse(shard, 403, "origin not allowed".into());
    }
    let (user, topics) = match identity(req) {
        Ok(v) => v,
        Err(why) => return refuse(shard, 400, why.trim_end().into()),
    };
    let token = auth::token_of(req);
    let grant = match shard.shared.client_auth.verify(token.as_deref(), auth::unix_now_s()) {
        Ok(g) => g,
        Err(e) => return refuse(shard, 401, e.reason()),
    };
    let resume = resume_token(req);
    let tabs = match tabs_param(req) {
        Ok(n) => n,
        Err(why) => return refuse(shard, 400, why),
    };
    let named = grant.as_ref().map(|g| &g.user).or(user.as_ref());
    if let Some(left) = named.and_then(|u| shard.shared.bans.left_s(u, auth::unix_now_s())) {
        bump(&shard.stats().banned_refused, 1);
        return refuse(shard, 403, format!("user is disconnected for {left} more seconds"));
    }
    let Some(grant) = grant else {
        return Some(Admission { user, topics, grant: None, resume, tabs });
    };
    if user.as_ref().is_some_and(|u| *u != grant.user) {
        return refuse(shard, 403, "user does not match the token's sub".into());
    }
    if let Some(t) = topics.iter().find(|t| !grant.allows(t)) {
        return refuse(shard, 403, format!("topic {t} is not allowed by the token"));
    }
    Some(Admission { user: Some(grant.user.clone()), topics, grant: Some(grant), resume, tabs })
}

/// Records a token's topic grant and arms the close at its expiry.
fn remember_grant(shard: &mut Shard, slot: u32, generation: u32, grant: auth::Grant) {
    let left_s = grant.expires_unix_s.saturating_sub(auth::unix_now_s());
    let at = shard.now_ms + left_s.saturating_mul(1000).max(1);
    shard.schedule_expiry(slot, generation, at);
    if !grant.topics.is_empty() {
        shard.grants.insert(slot, (generation, grant.topics.into_boxed_slice()));
    }
}

fn accept_ws(
    shard: &mut Shard,
    slot: u32,
    generation: u32,
    req: &Request,
    rest: &[u8],
    echo: bool,
) {
    let accept = match ws::check_handshake(req) {
        Ok(a) => a,
        Err(e) => {
            let mut out = Vec::new();
            ws::write_handshake_error(&mut out, &e);
            return respond_and_close(shard, slot, generation, out, CloseReason::HttpDone);
        }
    };
    let Some(adm) = admit(shard, slot, generation, req) else { return };
    let deflate = agree_compression(shard, slot, generation, req);
    let mut out = Vec::with_capacity(256);
    ws::write_handshake_response(&mut out, &accept, deflate.as_ref());
    let kind = if echo { Kind::Echo } else { Kind::Ws };
    // The answer goes first: registering may already queue a close (a user over its cap).
    shard.queue(slot, generation, Chunk::Owned(out));
    let json = req.query_param("format").as_deref() == Some("json");
    if let Some(conn) = shard.conns.get_mut(slot, generation) {
        conn.json = json && !echo;
    }
    let resume = if json { adm.resume } else { None };
    set_tabs(shard, slot, generation, adm.tabs);
    become_subscriber(shard, slot, generation, kind, adm.user, adm.topics, resume);
    if let Some(grant) = adm.grant {
        remember_grant(shard, slot, generation, grant);
    }
    shard.schedule_ws(slot, generation);
    if !rest.is_empty() {
        on_ws_bytes(shard, slot, generation, rest);
    }
}

/// permessage-deflate, when the listener allows it and the client offers it; recorded in the
/// connection's session.
fn agree_compression(
    shard: &mut Shard,
    slot: u32,
    generation: u32,
    req: &Request,
) -> Option<deflate::Agreed> {
    let conn = shard.conns.get_mut(slot, generation)?;
    if !conn.ws.compression_allowed() {
        return None;
    }
    let agreed = deflate::negotiate(req.headers_named("sec-websocket-extensions"))?;
    conn.ws.agree_compression(&agreed);
    bump(&shard.stats().ws_deflate_agreed, 1);
    Some(agreed)
}

/// CORS headers for a browser on another (allowed) origin.
fn cors(req: &Request) -> Vec<(&'static str, String)> {
    match req.header("Origin").and_then(|o| std::str::from_utf8(o).ok()) {
        Some(origin) => vec![
            ("Access-Control-Allow-Origin", origin.to_owned()),
            ("Access-Control-Allow-Credentials", "true".to_owned()),
            ("Vary", "Origin".to_owned()),
        ],
        None => Vec::new(),
    }
}

fn accept_sse(shard: &mut Shard, slot: u32, generation: u32, req: &Request) {
    let Some(adm) = admit(shard, slot, generation, req) else { return };
    let mut out = Vec::with_capacity(256);
    let headers = cors(req);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sse::write_stream_head_with(&mut out, shard.shared.cfg.limits.sse_retry_ms, &headers);
    shard.queue(slot, generation, Chunk::Owned(out));
    set_tabs(shard, slot, generation, adm.tabs);
    become_subscriber(shard, slot, generation, Kind::Sse, adm.user, adm.topics, adm.resume);
    if let Some(grant) = adm.grant {
        remember_grant(shard, slot, generation, grant);
    }
    let at = shard.now_ms + shard.shared.cfg.limits.sse_heartbeat_ms;
    shard.schedule(slot, generation, at);
}

/// `GET /poll`: held until a message, a gap or `timeout_ms`; answered at once without
/// `since` (the first poll learns its position).
fn accept_poll(shard: &mut Shard, slot: u32, generation: u32, req: &Request) {
    let timeout = match super::poll::timeout_ms(req) {
        Ok(ms) => ms,
        Err(why) => {
            let mut out = Vec::new();
            let body = format!("{why}\n");
            http1::write_response(
                &mut out,
                400,
                &[("Content-Type", "text/plain")],
                body.as_bytes(),
                false,
            );
            return respond_and_close(shard, slot, generation, out, CloseReason::HttpDone);
        }
    };
    let Some(mut adm) = admit(shard, slot, generation, req) else { return };
    if let Some(since) = req.query_param("since").filter(|s| !s.is_empty()) {
        adm.resume = Some(crate::history::Token::from_client(since.as_bytes()));
    }
    let first = adm.resume.is_none();
    shard.polls.insert(slot, super::poll::Poll::new(generation, cors(req)));
    set_tabs(shard, slot, generation, adm.tabs);
    become_subscriber(shard, slot, generation, Kind::Poll, adm.user, adm.topics, adm.resume);
    if first {
        return shard.answer_poll(slot, generation);
    }
    if let Some(grant) = adm.grant {
        remember_grant(shard, slot, generation, grant);
    }
    let at = shard.now_ms + timeout.max(1);
    shard.schedule(slot, generation, at);
}

/// `OPTIONS /sse` from a browser about to send credentials across origins.
fn preflight(shard: &mut Shard, slot: u32, generation: u32, req: &Request) {
    if !auth::origin_allowed(&shard.shared.cfg.allowed_origins, req.header("Origin")) {
        return reject(shard, slot, generation, 403, CloseReason::HttpDone);
    }
    let mut headers = cors(req);
    headers.push(("Access-Control-Allow-Methods", "GET".into()));
    headers.push((
        "Access-Control-Allow-Headers",
        "Authorization, Last-Event-ID, Cache-Control".into(),
    ));
    headers.push(("Access-Control-Max-Age", "600".into()));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut out = Vec::new();
    http1::write_response(&mut out, 204, &headers, b"", false);
    shard.queue(slot, generation, Chunk::Owned(out));
    shard.finish(slot, generation, CloseReason::HttpDone);
}

/// The user of this connection already holds `conns_per_user_max` connections.
pub(super) fn over_user_cap(shard: &mut Shard, slot: u32, generation: u32) {
    let Some(conn) = shard.conns.get(slot, generation) else { return };
    if !conn.is_open() {
        return;
    }
    // Its user was never indexed: forget it so the close does not unregister a stranger.
    if let Some(conn) = shard.conns.get_mut(slot, generation) {
        let topics: Vec<String> = conn.ident.topics().map(str::to_owned).collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        conn.ident = super::conn::Ident::new(None, &topics);
    }
    let reason = CloseReason::UserCap;
    match shard.conns.get(slot, generation).map(|c| c.kind) {
        Some(Kind::Ws | Kind::Echo) => {
            close_ws(shard, slot, generation, 1008, "too many connections for this user", reason)
        }
        Some(Kind::Sse) => {
            let out =
                shard.sse_named(slot, generation, "error", b"too many connections for this user");
            shard.queue(slot, generation, Chunk::Owned(out));
            shard.finish(slot, generation, reason);
        }
        _ => {}
    }
}

/// A connection's token expired: WebSocket clients get close 4001, SSE clients an
/// `event: expired`, then the connection ends.
pub(super) fn token_expired(shard: &mut Shard, slot: u32, generation: u32) {
    let Some(conn) = shard.conns.get(slot, generation) else { return };
    if !conn.is_open() {
        return;
    }
    match conn.kind {
        Kind::Ws | Kind::Echo => {
            close_ws(shard, slot, generation, 4001, "token expired", CloseReason::TokenExpired)
        }
        Kind::Sse => {
            let out = shard.sse_named(slot, generation, "expired", b"token expired");
            shard.queue(slot, generation, Chunk::Owned(out));
            shard.finish(slot, generation, CloseReason::TokenExpired);
        }
        // Answered now; the next poll meets the expired token at its handshake (401).
        Kind::Poll => shard.answer_poll(slot, generation),
        Kind::Handshake | Kind::Admin => {}
    }
}

/// Moves a connection from handshake to subscriber: gauges, user and topic registration.
fn become_subscriber(
    shard: &mut Shard,
    slot: u32,
    generation: u32,
    kind: Kind,
    user: Option<String>,
    topics: Vec<String>,
    resume: Option<crate::history::Token>,
) {
    // The first ping comes after a random 25-100 % of the interval, so connections accepted
    // in one burst do not ping in the same tick ever after.
    let ping_ms = shard.shared.cfg.limits.ping_interval_ms;
    let head_start_ms = (shard.jitter.unit() * 0.75 * ping_ms as f64) as u64;
    let first_ping = shard.live.now_ms.wrapping_sub(head_start_ms);
    let Some(conn) = shard.conns.get_mut(slot, generation) else {
        return;
    };
    debug_assert_eq!(conn.kind, Kind::Handshake);
    conn.kind = kind;
    conn.partial = None;
    conn.last_ping = super::conn::stamp(first_ping);
    conn.ident = super::conn::Ident::new(user.as_deref(), &[]);
    let stats = &shard.shared.stats[shard.id];
    crate::metrics::drop_gauge(&stats.conns_handshake);
    bump(
        match kind {
            Kind::Sse => &stats.conns_sse,
            Kind::Poll => &stats.conns_poll,
            _ => &stats.conns_ws,
        },
        1,
    );
    shard.schedule_lifetime(slot, generation);
    shard.start_streams(slot, generation, user.as_deref(), topics, resume);
}

/// Subscribes a connection to a topic. Subscribing twice is not an error.
pub(super) fn subscribe(
    shard: &mut Shard,
    slot: u32,
    generation: u32,
    topic: &str,
) -> Result<(), &'static str> {
    let Some(conn) = shard.conns.get_mut(slot, generation) else { return Err("connection closed") };
    if conn.ident.has_topic(topic) {
        return Ok(());
    }
    if conn.ident.topic_count() >= TOPICS_PER_CONN_MAX {
        return Err("topic limit reached: 64 per connection");
    }
    if let auth::ClientAuth::Jwt(_) = shard.shared.client_auth {
        let granted = shard.grants.get(&slot).filter(|(g, _)| *g == generation);
        if !granted.is_some_and(|(_, patterns)| auth::topic_allowed(patterns, topic)) {
            return Err("topic not allowed by the token");
        }
    }
    if topic.contains('\0') {
        return Err("names may not contain NUL");
    }
    conn.ident.add_topic(topic);
    shard.topics.subscribe(topic, slot, generation);
    Ok(())
}

pub(super) fn unsubscribe(shard: &mut Shard, slot: u32, generation: u32, topic: &str) -> bool {
    let Some(conn) = shard.conns.get_mut(slot, generation) else { return false };
    if !conn.ident.remove_topic(topic) {
        return false;
    }
    shard.topics.unsubscribe(topic, slot, generation);
    true
}

/// Bytes from a WebSocket client: frames to events, replies to the outbox.
pub(super) fn on_ws_bytes(shard: &mut Shard, slot: u32, generation: u32, rx: &[u8]) {
    let limits = ws_limits(shard);
    let Some(conn) = shard.conns.get_mut(slot, generation) else {
        return;
    };
    let mut events = Vec::new();
    let mut out = Vec::new();
    conn.ws.feed(rx, &limits, &mut shard.inflater, &mut events, &mut out);
    let closing = conn.closing;
    let kind = conn.kind;
    if let Closing::Flushing(reason) = closing {
        // We closed first; only the peer's close frame (or a failure) matters now, and our
        // close frame is already queued, so the session's replies are dropped.
        if events.iter().any(|e| matches!(e, ws::Event::Closed { .. } | ws::Event::Fail { .. })) {
            let queued = shard.conns.get(slot, generation).map_or(0, |c| c.queued_bytes());
            if queued == 0 {
                shard.abort(slot, generation, reason);
            }
        }
        return;
    }
    if !out.is_empty() {
        shard.queue(slot, generation, Chunk::Owned(out));
    }
    for event in events {
        match event {
            // Echo keeps the message's own type, whatever its bytes look like.
            ws::Event::Text(data) if kind == Kind::Echo => {
                echo(shard, slot, generation, ws::OpCode::Text, &data)
            }
            ws::Event::Binary(data) if kind == Kind::Echo => {
                echo(shard, slot, generation, ws::OpCode::Binary, &data)
            }
            ws::Event::Text(data) => on_control_message(shard, slot, generation, &data),
            ws::Event::Binary(_) | ws::Event::Ping(_) | ws::Event::Pong(_) => {}
            ws::Event::Closed { .. } => {
                return shard.finish(slot, generation, CloseReason::WsClose);
            }
            ws::Event::Fail { reason, .. } => {
                bump(&shard.stats().ws_protocol_errors, 1);
                if reason == ws::INFLATE_TOO_BIG {
                    bump(&shard.stats().ws_inflate_refused, 1);
                }
                return shard.finish(slot, generation, CloseReason::ProtocolError);
            }
        }
    }
}

fn echo(shard: &mut Shard, slot: u32, generation: u32, op: ws::OpCode, data: &[u8]) {
    let mut frame = Vec::with_capacity(data.len() + 10);
    let agreed = shard.conns.get(slot, generation).and_then(|c| c.ws.compression());
    let compressed =
        agreed.is_some_and(|a| a.fits(data.len())) && shard.deflater.frame(&mut frame, op, data);
    if compressed {
        bump(&shard.stats().ws_deflated_frames, 1);
    } else {
        ws::write_frame(&mut frame, op, data);
    }
    shard.queue(slot, generation, Chunk::Owned(frame));
}

/// `{"subscribe":"T"}`, `{"unsubscribe":"T"}` and `{"tabs":N}` from a WebSocket client;
/// each is answered with `{"subscribed":"T"}`, `{"unsubscribed":"T"}`, `{"tabs":N}` or
/// `{"error":"…"}`.
fn on_control_message(shard: &mut Shard, slot: u32, generation: u32, data: &[u8]) {
    let reply = match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(v) if v.get("tabs").is_some() => match v["tabs"].as_u64() {
            Some(n) if (1..=TABS_MAX as u64).contains(&n) => {
                set_tabs(shard, slot, generation, n as u32);
                serde_json::json!({ "tabs": n })
            }
            _ => {
                serde_json::json!({ "error": format!("tabs: give a whole number in 1..={TABS_MAX}") })
            }
        },
        Ok(v) => match (v.get("subscribe"), v.get("unsubscribe")) {
            (Some(serde_json::Value::String(t)), None)
                if t.len() <= NAME_BYTES_MAX && !t.is_empty() =>
            {
                match subscribe(shard, slot, generation, t) {
                    Ok(()) => serde_json::json!({ "subscribed": t }),
                    Err(why) => serde_json::json!({ "error": why, "topic": t }),
                }
            }
            (None, Some(serde_json::Value::String(t))) => {
                unsubscribe(shard, slot, generation, t);
                serde_json::json!({ "unsubscribed": t })
            }
            _ => {
                serde_json::json!({ "error": "expected {\"subscribe\":\"T\"}, {\"unsubscribe\":\"T\"} or {\"tabs\":N}" })
            }
        },
        Err(_) => serde_json::json!({ "error": "control messages are JSON objects" }),
    };
    let mut frame = Vec::new();
    ws::write_frame(&mut frame, ws::OpCode::Text, reply.to_string().as_bytes());
    shard.queue(slot, generation, Chunk::Owned(frame));
}

/// SSE clients have nothing to say after their request; extra bytes are ignored.
pub(super) fn on_sse_bytes(_shard: &mut Shard, _slot: u32, _generation: u32, _rx: &[u8]) {}

/// Sends a close frame and waits (bounded) for the peer's.
pub(super) fn close_ws(
    shard: &mut Shard,
    slot: u32,
    generation: u32,
    code: u16,
    why: &str,
    reason: CloseReason,
) {
    let mut frame = Vec::with_capacity(4 + why.len());
    ws::write_close(&mut frame, code, why);
    shard.queue(slot, generation, Chunk::Owned(frame));
    shard.finish(slot, generation, reason);
}

/// A connection over its outbox limit: drop what waits (but the chunk in flight), tell a
/// WebSocket peer why with 1008, and close.
pub(super) fn slow_consumer(shard: &mut Shard, slot: u32, generation: u32) {
    let Some(conn) = shard.conns.get_mut(slot, generation) else {
        return;
    };
    let kind = conn.kind;
    if let Some(out) = conn.outbox.as_mut() {
        let keep = if out.in_flight { out.flight as usize } else { 0 };
        out.chunks.truncate(keep);
        out.bytes = out.chunks.iter().map(|c| c.bytes().len()).sum::<usize>() - out.sent;
    }
    if matches!(kind, Kind::Ws | Kind::Echo) {
        // The close frame gets close_timeout_ms to reach a reader that catches up; after
        // that the connection is reset and its kernel send queue freed.
        close_ws(shard, slot, generation, 1008, "slow consumer", CloseReason::SlowConsumer);
    } else {
        shard.reset(slot, generation, CloseReason::SlowConsumer);
    }
}

impl Shard {
    /// Queues `msg` on each listed local connection that still subscribes. The frame (and
    /// the SSE event) is encoded once per shard and shared by every recipient; with ids
    /// (SSE, `format=json`) once per user partition, since a position names the user's. A
    /// compressed frame (permessage-deflate) is one more encoding of each, shared the same
    /// way by the recipients that agreed to the extension.
    pub(super) fn deliver(&mut self, targets: &[(u32, u32)], msg: &Message, stream: Stream<'_>) {
        // Index: compressed or not.
        let mut raw: [Option<Rc<[u8]>>; 2] = [None, None];
        // Index: SSE, JSON, compressed JSON; then the user's partition, or `shards` for a
        // connection without a user.
        let shards = self.shards();
        let mut framed: [Vec<Option<Rc<[u8]>>>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        let from_sequencer = !matches!(stream, Stream::User(_));
        let mut delivered = 0;
        let mut deflated = 0;
        for &(slot, generation) in targets {
            let Some(conn) = self.conns.get(slot, generation) else {
                continue;
            };
            if !conn.is_subscriber() {
                continue;
            }
            let Some(framing) = resume::framing_of(conn) else { continue };
            if from_sequencer && self.awaits_topic_replay(slot, generation) {
                // The replay on its way holds this message.
                continue;
            }
            let z = resume::wants_deflate(conn, framing, msg, &self.deflater);
            let bytes = if framing == Framing::Raw {
                let deflater = &mut self.deflater;
                Rc::clone(raw[usize::from(z)].get_or_insert_with(|| {
                    let mut v = Vec::with_capacity(msg.payload.len() + 10);
                    let token = &crate::history::Token::FOREIGN;
                    let d = z.then_some(deflater);
                    deflated += u64::from(resume::encode(&mut v, framing, stream, msg, token, d));
                    v.into()
                }))
            } else if framing == Framing::Poll || self.resuming.contains_key(&slot) {
                // Its position is not the shard's while a replay is on its way.
                if self.deliver_one(slot, generation, stream, msg, None) {
                    delivered += 1;
                }
                continue;
            } else {
                let part = conn.ident.user().map(|u| self.user_part(u));
                let kind = if framing == Framing::Json { 1 + usize::from(z) } else { 0 };
                let cache = &mut framed[kind];
                if cache.is_empty() {
                    cache.resize(shards + 1, None);
                }
                match &cache[part.unwrap_or(shards)] {
                    Some(b) => Rc::clone(b),
                    None => {
                        let token = self.position(slot, generation, part);
                        let mut v = Vec::with_capacity(msg.payload.len() + 64);
                        let d = z.then_some(&mut self.deflater);
                        deflated +=
                            u64::from(resume::encode(&mut v, framing, stream, msg, &token, d));
                        let b: Rc<[u8]> = v.into();
                        framed[kind][part.unwrap_or(shards)] = Some(Rc::clone(&b));
                        b
                    }
                }
            };
            if self.queue(slot, generation, Chunk::Shared(bytes)) {
                delivered += 1;
            }
        }
        bump(&self.stats().ws_deflated_frames, deflated);
        bump(&self.stats().delivered, delivered);
    }
}
