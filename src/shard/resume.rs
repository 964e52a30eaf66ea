//! The shard's side of history and resume ([`crate::history`] holds the log and the
//! tokens): numbering the messages of this shard's partition, the position of each
//! connection, and replays. The shard loop reaches it through four doors: [`Shard::number`]
//! when it publishes, [`Shard::heard_message`] when it delivers, [`Shard::on_replayed`] when
//! an answer arrives, and [`Shard::history_tick`] once a second.
//!
//! A connection reads two partitions: its user's home and [`SEQUENCER`] (topics and the
//! broadcast stream). Its position in each is what this shard has handled of it
//! ([`Heard`]), except while a replay for it is on its way: then it is the position the
//! replay started from, held in [`Pending`], the only per-connection state resume has.

use std::sync::Arc;

use super::conn::{Chunk, Kind};
use super::Shard;
use crate::history::{GapReason, Stream, Token, SEQUENCER};
use crate::metrics::bump;
use crate::proto::deflate::Deflater;
use crate::proto::{sse, ws};
use crate::push::{home_shard, Message, Msg, Replay, Replayed, UserAdd};
use crate::registry::ConnId;

/// A connection waiting for a replay; removed when the answers are in.
pub struct Pending {
    pub generation: u32,
    /// From [`SEQUENCER`]: the position asked from, and the topics to subscribe to once the
    /// answer is in (live topic and broadcast messages skip the connection until then).
    pub topics: Option<(u64, Vec<Box<str>>)>,
    /// From the user's home: the position asked from.
    pub user: Option<u64>,
}

/// A replay asked from a position this node's log has not reached yet (on a cluster node:
/// the client comes from a node further along the store): retried as the log moves, and
/// answered with what there is at [`DEFER_MS`].
#[derive(Debug)]
pub enum Deferred {
    User(UserAdd),
    Topics(Replay),
}

/// Longest a replay waits for this node's log to reach the position asked from.
pub const DEFER_MS: u64 = 2000;

/// The `since` of a user connection that asks for no replay (it missed nothing).
pub const NO_REPLAY: u64 = u64::MAX;

/// How a connection wants its messages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// WebSocket frames of the bare payload: no ids, no resume.
    Raw,
    /// WebSocket text frames of `{"id":…,"stream":…,"data":…}`.
    Json,
    /// SSE events with `id:`.
    Sse,
    /// Collected for a long poll's JSON answer ([`super::poll`]).
    Poll,
}

impl Shard {
    /// Now on the shards' common clock, in microseconds: orders a publish on one shard and
    /// a connection on another that follows it.
    pub(super) fn precise_us(&self) -> u64 {
        self.shared.clock_origin.elapsed().as_micros() as u64
    }

    /// The partition of a user's stream.
    pub(super) fn user_part(&self, user: &str) -> usize {
        home_shard(self.shared.user_keys.hash(user), self.shards())
    }

    /// What this shard has handled of partition `part`: for its own partition, everything
    /// (its messages are delivered here as they are numbered).
    fn heard_of(&self, part: usize) -> u64 {
        if part == self.id {
            self.history.top().max(self.backfill_end)
        } else {
            self.heard.get(part)
        }
    }

    /// The position token of a connection, given its user's partition.
    pub(super) fn position(&self, slot: u32, generation: u32, user_part: Option<usize>) -> Token {
        let mut t = Token {
            epoch: self.shared.epoch(),
            topics: self.heard_of(SEQUENCER),
            user: user_part.map(|p| self.heard_of(p)),
        };
        if let Some(p) = self.resuming.get(&slot).filter(|p| p.generation == generation) {
            if let Some((since, _)) = &p.topics {
                t.topics = *since;
            }
            if p.user.is_some() {
                t.user = p.user;
            }
        }
        t
    }

    /// Numbers a message of this shard's partition and retains it in the history. The
    /// message is shared only when a cluster bridge holds it too; then it is copied.
    pub(super) fn number(&mut self, stream: Stream<'_>, msg: &mut Arc<Message>) {
        let seq = self.history.next_seq();
        let part = self.id as u16;
        match Arc::get_mut(msg) {
            Some(m) => {
                m.seq = seq;
                m.part = part;
            }
            None => {
                let m = Message { seq, part, payload: msg.payload.clone(), ..**msg };
                *msg = Arc::new(m);
            }
        }
        let now_us = self.precise_us();
        self.history.retain(stream, msg, now_us);
        if self.forwarding() {
            self.forward(stream, msg, crate::handover::record::Deed::Log);
        }
    }

    /// This partition's part of a publish that reached it: a single node numbers it; on a
    /// cluster node the store numbered it already and the log keeps that number (a message
    /// without one was published while the store was unreachable: delivered live, kept
    /// nowhere). False for a stored message this log already had (the store sent it again):
    /// it is not delivered twice.
    pub(super) fn take_number(&mut self, stream: Stream<'_>, msg: &mut Arc<Message>) -> bool {
        if !self.shared.store_numbers() {
            if msg.seq == 0 {
                self.number(stream, msg);
            }
            return true;
        }
        if msg.seq == 0 {
            return true;
        }
        let now_us = self.precise_us();
        let fresh = self.history.retain_numbered(stream, msg, now_us);
        if fresh && self.forwarding() {
            self.forward(stream, msg, crate::handover::record::Deed::Log);
        }
        self.run_deferred(false);
        fresh
    }

    /// From the bridge at startup: a message the store held before this node started, for
    /// the log only (its time is when the store had it, so it leaves the window on time).
    pub(super) fn backfill(&mut self, b: crate::push::Backfill) {
        let at_us = self.precise_us().saturating_sub(b.age_ms.saturating_mul(1000));
        let stream = match &b.stream {
            crate::push::Backfilled::User(u) => Stream::User(u),
            crate::push::Backfilled::Topic(t) => Stream::Topic(t),
            crate::push::Backfilled::All => Stream::All,
        };
        self.history.retain_numbered(stream, &b.msg, at_us);
        self.run_deferred(false);
    }

    /// From the bridge: the store numbered up to `seq`, none of it this partition's.
    pub(super) fn store_top(&mut self, seq: u64) {
        self.history.advance_top(seq);
        self.run_deferred(false);
    }

    /// From the bridge: the store's stream is another. This log starts again at `top` under
    /// `epoch` (the messages up to `backfill_end` to come as backfill); replays waiting for
    /// the old one are answered now.
    pub(super) fn new_epoch(&mut self, epoch: u32, top: u64, backfill_end: u64) {
        self.shared.history_epoch.store(epoch, std::sync::atomic::Ordering::Relaxed);
        self.history.restart_at(top);
        self.backfill_end = backfill_end.max(top);
        self.heard = crate::history::Heard::new(self.shards());
        (0..self.shards()).for_each(|p| self.heard.advance(p, self.backfill_end));
        self.beacon_top = top;
        self.run_deferred(true);
    }

    /// A numbered message from another partition is being delivered here.
    pub(super) fn heard_message(&mut self, msg: &Message) {
        if msg.seq > 0 {
            self.heard.advance(msg.part as usize, msg.seq);
        }
    }

    /// Whether live topic and broadcast messages skip this connection: its replay from
    /// [`SEQUENCER`] is on its way and holds them.
    pub(super) fn awaits_topic_replay(&self, slot: u32, generation: u32) -> bool {
        !self.resuming.is_empty()
            && self
                .resuming
                .get(&slot)
                .is_some_and(|p| p.generation == generation && p.topics.is_some())
    }

    /// Once a second: trim the log, tell the other shards how far this partition got.
    pub(super) fn history_tick(&mut self) {
        self.run_deferred(false);
        self.history.trim(self.now_ms * 1000);
        let (messages, bytes) = self.history.usage();
        let stats = self.stats();
        stats.history_messages.store(messages as u64, std::sync::atomic::Ordering::Relaxed);
        stats.history_bytes.store(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        let top = self.history.top();
        if top == self.beacon_top {
            return;
        }
        self.beacon_top = top;
        let part = self.id as u16;
        let me = self.id;
        for to in (0..self.shards()).filter(|&s| s != me) {
            self.send_mesh(to, Msg::Top { part, seq: top });
        }
    }

    /// Starts a connection's streams: registers its user with the home partition (which
    /// replays what the user got since `resume`, or since now), and subscribes its topics —
    /// at once for a new connection, after the replay for a resuming one.
    pub(super) fn start_streams(
        &mut self,
        slot: u32,
        generation: u32,
        user: Option<&str>,
        topics: Vec<String>,
        resume: Option<Token>,
    ) {
        let id = self.conn_id(slot, generation);
        let epoch_ok = resume.is_some_and(|t| t.epoch == self.shared.epoch());
        let topics: Vec<Box<str>> = topics.into_iter().map(Into::into).collect();
        // Both positions are set before either request goes out: an answer may come at once
        // (this shard is the partition), and each message it holds names both.
        let mut pending = Pending { generation, topics: None, user: None };
        let user_since = user.map(|u| match resume {
            Some(t) if epoch_ok => t.user.unwrap_or(0),
            _ => self.heard_of(self.user_part(u)),
        });
        pending.user = user_since;
        let resume_topics = resume.filter(|_| epoch_ok).map(|t| t.topics);
        if let Some(since) = resume_topics {
            pending.topics = Some((since, topics.clone()));
            bump(&self.stats().resumes, 1);
        }
        if pending.user.is_some() || pending.topics.is_some() {
            self.resuming.insert(slot, pending);
        }
        if resume.is_some() && !epoch_ok {
            // Another run's position: nothing can be proven about what was missed.
            let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
            for stream in self.conn_streams(slot, generation, &topics) {
                self.send_gap(slot, generation, stream, GapReason::Epoch);
            }
        }
        if let (Some(user), Some(since)) = (user, user_since) {
            let fresh = (!epoch_ok).then(|| self.precise_us());
            self.register_user(user, id, since, fresh);
        }
        match resume_topics {
            Some(since) => {
                let req = Replay { conn: id, topics, since };
                if self.id == SEQUENCER {
                    self.replay_topics(&req);
                } else {
                    self.send_mesh(SEQUENCER, Msg::Replay(Box::new(req)));
                }
            }
            None => {
                for topic in topics {
                    // identity() already refused more than TOPICS_PER_CONN_MAX topics.
                    let _ = super::client::subscribe(self, slot, generation, &topic);
                }
            }
        }
        if !self.resuming.contains_key(&slot) {
            self.send_position(slot, generation);
        }
    }

    /// The labels of a connection's streams, for gap reports.
    fn conn_streams(&self, slot: u32, generation: u32, topics: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        if self.conns.get(slot, generation).is_some_and(|c| c.ident.user().is_some()) {
            out.push(Stream::User("").label());
        }
        out.push(Stream::All.label());
        out.extend(topics.iter().map(|t| Stream::Topic(t).label()));
        out
    }

    /// Whether a replay from `since` waits for the store's messages up to it to arrive.
    fn must_wait(&self, since: u64) -> bool {
        self.shared.store_numbers()
            && (since > self.history.top() || self.history.top() < self.backfill_end)
    }

    fn defer(&mut self, d: Deferred) {
        bump(&self.stats().history_deferred, 1);
        self.deferred.push((self.now_ms + DEFER_MS, d));
    }

    /// Answers the deferred replays the log has reached, and all of them when `all`, or
    /// those past their deadline.
    pub(super) fn run_deferred(&mut self, all: bool) {
        if self.deferred.is_empty() {
            return;
        }
        let (top, now) = (self.history.top(), self.now_ms);
        let ready = |(at, d): &(u64, Deferred)| {
            let since = match d {
                Deferred::User(a) => a.since,
                Deferred::Topics(r) => r.since,
            };
            all || since <= top || *at <= now
        };
        let (go, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.deferred).into_iter().partition(ready);
        self.deferred = wait;
        for (_, d) in go {
            match d {
                Deferred::User(a) => self.answer_user_add(&a),
                Deferred::Topics(r) => self.answer_topics(&r),
            }
        }
    }

    /// On the home shard: a connection of the user is gone (also from the replays waiting).
    /// `name` is the user's, on a cluster node: the bridge hears of it when this was the
    /// user's last connection here.
    pub(super) fn remove_user_conn(&mut self, user: u64, conn: ConnId, name: Option<&str>) {
        if self.users.remove(user, conn) {
            if let Some(name) = name {
                self.user_offline(name);
            }
        }
        if !self.deferred.is_empty() {
            self.deferred.retain(|(_, d)| !matches!(d, Deferred::User(a) if a.conn == conn));
        }
    }

    /// On the home shard: a connection of the user registers; answer with what it missed.
    pub(super) fn on_user_add(&mut self, add: &UserAdd) {
        // A connection that missed nothing (one a live upgrade moved here) asks for no
        // replay: indexed now, so the user's next message reaches it.
        let replays = add.since != NO_REPLAY;
        if add.fresh.is_none() && replays && self.must_wait(add.since) {
            return self.defer(Deferred::User(add.clone()));
        }
        self.answer_user_add(add)
    }

    fn answer_user_add(&mut self, add: &UserAdd) {
        if !self.add_user_conn(add.user, &add.name, add.conn) {
            return;
        }
        let max = self.replay_bytes_max();
        let stream = [Stream::User(&add.name)];
        let r = match add.fresh {
            Some(at_ms) => self.history.replay_from_time(&stream, at_ms),
            None => self.history.replay(&stream, add.since, max),
        };
        self.answer(add.conn, true, r);
    }

    /// On [`SEQUENCER`]: a resuming connection asks for its broadcast and topic streams.
    pub(super) fn replay_topics(&mut self, req: &Replay) {
        if self.must_wait(req.since) {
            return self.defer(Deferred::Topics(req.clone()));
        }
        self.answer_topics(req)
    }

    fn answer_topics(&mut self, req: &Replay) {
        let mut streams = vec![Stream::All];
        streams.extend(req.topics.iter().map(|t| Stream::Topic(t)));
        let r = self.history.replay(&streams, req.since, self.replay_bytes_max());
        self.answer(req.conn, false, r);
    }

    fn replay_bytes_max(&self) -> usize {
        self.shared.cfg.limits.outbox_bytes_max as usize / 2
    }

    fn answer(&mut self, conn: ConnId, for_user: bool, r: crate::history::Replay) {
        let a = Replayed {
            conn,
            part: self.id as u16,
            for_user,
            top: self.history.top(),
            messages: r.messages.into_iter().map(|(i, m)| (i as u16, m)).collect(),
            gaps: r.gaps.into_iter().map(|(i, g)| (i as u16, g)).collect(),
        };
        if conn.shard as usize == self.id {
            self.on_replayed(&a);
        } else {
            self.send_mesh(conn.shard as usize, Msg::Replayed(Box::new(a)));
        }
    }

    /// A replay arrived for one of this shard's connections: gaps first, then the missed
    /// messages in order, then (for topics) the subscriptions, so live ones follow.
    pub(super) fn on_replayed(&mut self, a: &Replayed) {
        let (slot, generation) = (a.conn.slot, a.conn.generation);
        self.heard.advance(a.part as usize, a.top);
        // A late answer for an earlier connection in the same slot must not take this one's.
        if self.resuming.get(&slot).is_none_or(|p| p.generation != generation) {
            return;
        }
        let Some(mut p) = self.resuming.remove(&slot) else { return };
        let Some(conn) = self.conns.get(slot, generation) else { return };
        let user: Option<Box<str>> = conn.ident.user().map(Into::into);
        let topics = if a.for_user {
            p.user = None;
            Vec::new()
        } else {
            p.topics.take().map(|(_, t)| t).unwrap_or_default()
        };
        let still = p.user.is_some() || p.topics.is_some();
        if still {
            self.resuming.insert(slot, p);
        }
        let stream_of = |i: u16| -> Stream<'_> {
            match (a.for_user, i) {
                (true, _) => Stream::User(user.as_deref().unwrap_or("")),
                (false, 0) => Stream::All,
                (false, i) => Stream::Topic(topics.get(i as usize - 1).map_or("", |t| t)),
            }
        };
        for &(i, why) in &a.gaps {
            let label = stream_of(i).label();
            self.send_gap(slot, generation, label, why);
        }
        if !a.messages.is_empty() {
            bump(&self.stats().replayed, a.messages.len() as u64);
        }
        for (i, m) in &a.messages {
            self.deliver_one(slot, generation, stream_of(*i), m, Some(m.seq));
        }
        for topic in &topics {
            let _ = super::client::subscribe(self, slot, generation, topic);
        }
        if !still {
            self.send_position(slot, generation);
        }
    }

    /// Tells a connection that `stream` cannot be resumed, and why.
    fn send_gap(&mut self, slot: u32, generation: u32, stream: String, why: GapReason) {
        bump(&self.stats().history_gaps, 1);
        let Some(framing) = self.framing(slot, generation) else { return };
        let token = self.conn_position(slot, generation);
        let body = format!(r#"{{"stream":{},"reason":"{}"}}"#, json_str(&stream), why.as_str());
        let mut out = Vec::new();
        match framing {
            Framing::Raw => return,
            Framing::Poll => return self.poll_gap(slot, generation, &body),
            Framing::Sse => {
                out.extend_from_slice(b"event: c10m-gap\nid: ");
                token.write(&mut out);
                out.extend_from_slice(b"\ndata: ");
                out.extend_from_slice(body.as_bytes());
                out.extend_from_slice(b"\n\n");
            }
            Framing::Json => {
                let text = format!(r#"{{"id":"{}","gap":{body}}}"#, token.to_text());
                ws::write_frame(&mut out, ws::OpCode::Text, text.as_bytes());
            }
        }
        self.queue(slot, generation, Chunk::Owned(out));
    }

    /// Sends a connection its position alone (SSE: an `id:` with no data, which moves
    /// `lastEventId` without an event; JSON WebSocket: `{"id":…}`).
    pub(super) fn send_position(&mut self, slot: u32, generation: u32) {
        let Some(framing) = self.framing(slot, generation) else { return };
        let token = self.conn_position(slot, generation);
        let mut out = Vec::with_capacity(32);
        match framing {
            Framing::Raw | Framing::Poll => return,
            Framing::Sse => {
                out.extend_from_slice(b"id: ");
                token.write(&mut out);
                out.extend_from_slice(b"\n\n");
            }
            Framing::Json => {
                let text = format!(r#"{{"id":"{}"}}"#, token.to_text());
                ws::write_frame(&mut out, ws::OpCode::Text, text.as_bytes());
            }
        }
        self.queue(slot, generation, Chunk::Owned(out));
    }

    /// A named SSE event (goaway, expired, error) carrying the connection's position, so
    /// the `lastEventId` a browser resumes from stays right.
    pub(super) fn sse_named(&self, slot: u32, generation: u32, name: &str, data: &[u8]) -> Vec<u8> {
        let mut id = Vec::with_capacity(24);
        self.conn_position(slot, generation).write(&mut id);
        let mut out = Vec::with_capacity(data.len() + 64);
        sse::write_event_with_id(&mut out, &id, Some(name), data);
        out
    }

    /// An SSE heartbeat (a comment) that also moves the client's position (an `id:`).
    pub(super) fn send_sse_heartbeat(&mut self, slot: u32, generation: u32) {
        let token = self.conn_position(slot, generation);
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(&sse::HEARTBEAT[..sse::HEARTBEAT.len() - 1]);
        out.extend_from_slice(b"id: ");
        token.write(&mut out);
        out.extend_from_slice(b"\n\n");
        self.queue(slot, generation, Chunk::Owned(out));
    }

    pub(super) fn framing(&self, slot: u32, generation: u32) -> Option<Framing> {
        framing_of(self.conns.get(slot, generation)?)
    }

    /// The position of one connection, from its user.
    pub(super) fn conn_position(&self, slot: u32, generation: u32) -> Token {
        let part = self
            .conns
            .get(slot, generation)
            .and_then(|c| c.ident.user())
            .map(|u| self.user_part(u));
        self.position(slot, generation, part)
    }

    /// Queues one message on one connection with its own position (a replayed message, or
    /// a live one while the connection's position is not the shard's). `seq_override`
    /// is the message's own place in the position when it is replayed.
    pub(super) fn deliver_one(
        &mut self,
        slot: u32,
        generation: u32,
        stream: Stream<'_>,
        msg: &Message,
        seq_override: Option<u64>,
    ) -> bool {
        let Some(framing) = self.framing(slot, generation) else { return false };
        let mut token = self.conn_position(slot, generation);
        if let Some(seq) = seq_override {
            if msg.part as usize == SEQUENCER && !matches!(stream, Stream::User(_)) {
                token.topics = seq;
            } else {
                token.user = Some(seq);
            }
        }
        if framing == Framing::Poll {
            return self.poll_add(slot, generation, stream, msg, &token);
        }
        let conn = self.conns.get(slot, generation);
        let deflater = conn
            .is_some_and(|c| wants_deflate(c, framing, msg, &self.deflater))
            .then_some(&mut self.deflater);
        let mut out = Vec::with_capacity(msg.payload.len() + 64);
        if encode(&mut out, framing, stream, msg, &token, deflater) {
            bump(&self.stats().ws_deflated_frames, 1);
        }
        self.queue(slot, generation, Chunk::Owned(out))
    }
}

/// How a subscriber connection wants its messages; None for the others.
pub(super) fn framing_of(conn: &super::conn::Conn) -> Option<Framing> {
    match conn.kind {
        Kind::Sse => Some(Framing::Sse),
        Kind::Poll => Some(Framing::Poll),
        Kind::Ws if conn.json => Some(Framing::Json),
        Kind::Ws => Some(Framing::Raw),
        _ => None,
    }
}

/// Encodes one message for a connection: the raw frame, the JSON envelope, or the SSE event
/// with its position.
/// Whether `msg` goes to `conn` compressed: it agreed to permessage-deflate, the message is
/// long enough to try, and short enough for the window it allows (for the JSON envelope,
/// bounded from above: the payload escaped as a string, plus id and stream).
pub(super) fn wants_deflate(
    conn: &super::conn::Conn,
    framing: Framing,
    msg: &Message,
    deflater: &Deflater,
) -> bool {
    let len = msg.payload.len();
    let bound = if framing == Framing::Json { len.saturating_mul(6) + 512 } else { len };
    deflater.wants(len) && conn.ws.compression().is_some_and(|a| a.fits(bound))
}

/// Appends `msg` as `framing` wants it. WebSocket frames are compressed with `deflater` when
/// one is given and the payload shrinks; returns whether it was.
pub(super) fn encode(
    out: &mut Vec<u8>,
    framing: Framing,
    stream: Stream<'_>,
    msg: &Message,
    token: &Token,
    deflater: Option<&mut Deflater>,
) -> bool {
    let ws_frame = |out: &mut Vec<u8>, op, payload: &[u8]| {
        if deflater.is_some_and(|d| d.frame(out, op, payload)) {
            return true;
        }
        ws::write_frame(out, op, payload);
        false
    };
    match framing {
        Framing::Raw => {
            let op = if msg.text { ws::OpCode::Text } else { ws::OpCode::Binary };
            ws_frame(out, op, &msg.payload)
        }
        Framing::Sse => {
            let mut id = Vec::with_capacity(24);
            token.write(&mut id);
            sse::write_event_with_id(out, &id, None, &msg.payload);
            false
        }
        Framing::Json => {
            let mut text = Vec::with_capacity(msg.payload.len() + 64);
            text.extend_from_slice(b"{\"id\":\"");
            token.write(&mut text);
            text.extend_from_slice(b"\",\"stream\":");
            text.extend_from_slice(json_str(&stream.label()).as_bytes());
            push_data(&mut text, &msg.payload);
            text.push(b'}');
            ws_frame(out, ws::OpCode::Text, &text)
        }
        Framing::Poll => {
            debug_assert!(false, "polls collect, see poll_add");
            false
        }
    }
}

/// `,"data":"…"` for a UTF-8 payload, else `,"data_b64":"…"`.
pub(super) fn push_data(out: &mut Vec<u8>, payload: &[u8]) {
    match std::str::from_utf8(payload) {
        Ok(s) => {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(json_str(s).as_bytes());
        }
        Err(_) => {
            use base64::Engine as _;
            out.extend_from_slice(b",\"data_b64\":\"");
            let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
            out.extend_from_slice(b64.as_bytes());
            out.push(b'"');
        }
    }
}

/// A JSON string literal.
pub(super) fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// One shard's share of the history limits.
pub(super) fn history_limits(cfg: &crate::config::Config, shards: usize) -> crate::history::Limits {
    let l = &cfg.limits;
    crate::history::Limits {
        ttl_ms: l.history_ttl_ms,
        per_stream: l.history_per_stream_max as usize,
        bytes: (l.history_bytes_max / shards.max(1) as u64) as usize,
    }
}
