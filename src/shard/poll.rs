//! Long polling (`GET /poll`), for networks whose proxies break WebSocket and SSE: the same
//! streams, auth and position tokens, one HTTP response per poll.
//!
//! A poll is a connection of [`Kind::Poll`] that subscribes like any other (replaying from
//! `since` through [`crate::shard::resume`]); what it receives is collected here instead of
//! being framed, and the response goes out at the end of the loop turn in which something
//! arrived and no replay is still on its way, or at `timeout_ms`. Without `since` it is
//! answered at once with the current position. The connection closes after the response.

use super::conn::{Chunk, Kind};
use super::resume::json_str;
use super::Shard;
use crate::history::{Stream, Token};
use crate::metrics::CloseReason;
use crate::proto::http1;
use crate::push::Message;

/// Default and longest time a poll is held when nothing is pending.
pub const TIMEOUT_MS_DEFAULT: u64 = 25_000;
pub const TIMEOUT_MS_MAX: u64 = 60_000;

/// What a held poll has collected.
pub struct Poll {
    pub generation: u32,
    /// JSON items of `messages`, comma-separated.
    messages: Vec<u8>,
    /// JSON items of `gaps`, comma-separated.
    gaps: Vec<u8>,
    /// CORS headers for the answer.
    headers: Vec<(&'static str, String)>,
}

impl Poll {
    pub fn new(generation: u32, headers: Vec<(&'static str, String)>) -> Poll {
        Poll { generation, messages: Vec::new(), gaps: Vec::new(), headers }
    }
}

/// The poll's hold time from `?timeout_ms=`, or an error for the client.
pub fn timeout_ms(req: &http1::Request) -> Result<u64, &'static str> {
    match req.query_param("timeout_ms") {
        None => Ok(TIMEOUT_MS_DEFAULT),
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if ms <= TIMEOUT_MS_MAX => Ok(ms),
            _ => Err("timeout_ms must be a number of milliseconds up to 60000"),
        },
    }
}

impl Shard {
    fn poll_mut(&mut self, slot: u32, generation: u32) -> Option<&mut Poll> {
        self.polls.get_mut(&slot).filter(|p| p.generation == generation)
    }

    /// Collects one message for a held poll; it is answered at the end of the turn.
    pub(super) fn poll_add(
        &mut self,
        slot: u32,
        generation: u32,
        stream: Stream<'_>,
        msg: &Message,
        token: &Token,
    ) -> bool {
        let Some(p) = self.poll_mut(slot, generation) else { return false };
        if !p.messages.is_empty() {
            p.messages.push(b',');
        }
        p.messages.extend_from_slice(b"{\"id\":\"");
        token.write(&mut p.messages);
        p.messages.extend_from_slice(b"\",\"stream\":");
        p.messages.extend_from_slice(json_str(&stream.label()).as_bytes());
        super::resume::push_data(&mut p.messages, &msg.payload);
        p.messages.push(b'}');
        self.polls_ready.push((slot, generation));
        true
    }

    /// Records a gap for a held poll.
    pub(super) fn poll_gap(&mut self, slot: u32, generation: u32, body: &str) {
        let Some(p) = self.poll_mut(slot, generation) else { return };
        if !p.gaps.is_empty() {
            p.gaps.push(b',');
        }
        p.gaps.extend_from_slice(body.as_bytes());
        self.polls_ready.push((slot, generation));
    }

    /// Answers the polls that got something this turn and wait for no replay.
    pub(super) fn answer_ready_polls(&mut self) {
        if self.polls_ready.is_empty() {
            return;
        }
        let ready = std::mem::take(&mut self.polls_ready);
        for &(slot, generation) in &ready {
            if !self.resuming.contains_key(&slot) {
                self.answer_poll(slot, generation);
            }
        }
        // Still waiting for a replay: looked at again when it arrives.
        self.polls_ready = ready.into_iter().filter(|(s, _)| self.polls.contains_key(s)).collect();
        self.polls_ready.dedup();
    }

    /// Sends a poll's answer (what it collected, or nothing, with the current position)
    /// and closes it.
    pub(super) fn answer_poll(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get(slot, generation) else { return };
        if conn.kind != Kind::Poll || !conn.is_open() {
            return;
        }
        let token = self.conn_position(slot, generation);
        let Some(p) = self.polls.remove(&slot).filter(|p| p.generation == generation) else {
            return;
        };
        let mut body = Vec::with_capacity(p.messages.len() + p.gaps.len() + 64);
        body.extend_from_slice(b"{\"id\":\"");
        token.write(&mut body);
        body.extend_from_slice(b"\",\"messages\":[");
        body.extend_from_slice(&p.messages);
        body.extend_from_slice(b"],\"gaps\":[");
        body.extend_from_slice(&p.gaps);
        body.extend_from_slice(b"]}\n");
        let mut headers: Vec<(&str, &str)> =
            vec![("Content-Type", "application/json"), ("Cache-Control", "no-store")];
        headers.extend(p.headers.iter().map(|(k, v)| (*k, v.as_str())));
        let mut out = Vec::with_capacity(body.len() + 256);
        http1::write_response(&mut out, 200, &headers, &body, false);
        self.queue(slot, generation, Chunk::Owned(out));
        self.finish(slot, generation, CloseReason::HttpDone);
    }
}
