//! The receive side of a client shard: the upgrade answer, WebSocket frames and SSE lines of
//! one connection, and the accounting of each delivered payload.

use super::*;

impl Shard {
    /// Interprets received bytes for connection `i`.
    pub(super) fn feed(&mut self, i: u32, data: &[u8]) -> Result<(), Reason> {
        let joined: Option<Vec<u8>> = self.conns[i as usize].held.take().map(|mut held| {
            held.extend_from_slice(data);
            *held
        });
        let bytes = joined.as_deref().unwrap_or(data);
        let mut used = 0;
        if self.conns[i as usize].state == State::Upgrading {
            match http::parse_head(bytes) {
                Ok(None) => {
                    self.conns[i as usize].held = Some(Box::new(bytes.to_vec()));
                    return Ok(());
                }
                Ok(Some(head)) => {
                    self.upgraded(i, &head)?;
                    used = head.len;
                }
                Err(_) => return Err(Reason::Protocol),
            }
        }
        let rest = &bytes[used..];
        match self.plan.proto {
            Proto::Ws => {
                let done = self.ws_frames(i, rest)?;
                if done < rest.len() {
                    self.conns[i as usize].held = Some(Box::new(rest[done..].to_vec()));
                }
                Ok(())
            }
            Proto::Sse => self.sse_bytes(i, rest),
        }
    }

    fn upgraded(&mut self, i: u32, head: &http::Head) -> Result<(), Reason> {
        let n = self.global_index(i);
        let now = self.now_ns();
        let c = &mut self.conns[i as usize];
        match self.plan.proto {
            Proto::Ws => {
                let expected = ws::accept(&ws_key(n, c.gen));
                if head.status != 101 || head.ws_accept.as_deref() != Some(expected.as_str()) {
                    return Err(Reason::Rejected);
                }
            }
            Proto::Sse => {
                if head.status != 200 {
                    return Err(Reason::Rejected);
                }
                c.chunked = head.chunked.then(Chunked::default);
            }
        }
        c.state = State::Open;
        c.backoffs = 0;
        let us = now.saturating_sub(c.connected_ns) / 1000;
        self.result.upgrade_us.saturating_record(us.max(1));
        if c.flags & FIRST_DONE == 0 {
            c.flags |= FIRST_DONE;
            self.pending_first_done += 1;
        }
        self.connecting = self.connecting.saturating_sub(1);
        self.pending_established += 1;
        self.shared.set_up(self.plan.user_bucket(n), self.plan.topic_bucket(n), 1);
        Ok(())
    }

    /// Handles whole frames; returns the bytes used (the rest is a partial frame).
    fn ws_frames(&mut self, i: u32, bytes: &[u8]) -> Result<usize, Reason> {
        let mut used = 0;
        loop {
            let frame = match ws::decode(&bytes[used..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(used),
                Err(_) => return Err(Reason::Protocol),
            };
            used += frame.len;
            match frame.opcode {
                ws::OP_TEXT | ws::OP_BINARY if frame.compressed => {
                    if !self.plan.deflate {
                        return Err(Reason::Protocol);
                    }
                    self.counts.data_bytes += frame.len as u64;
                    self.counts.compressed += 1;
                    let mut plain = std::mem::take(&mut self.inflated);
                    let inflater =
                        self.inflater.get_or_insert_with(|| flate2::Decompress::new(false));
                    ws::inflate(inflater, frame.payload, &mut plain)
                        .map_err(|_| Reason::Protocol)?;
                    self.deliver(i, &plain);
                    self.inflated = plain;
                }
                // A fragmented message carries its stamp in the first fragment.
                ws::OP_TEXT | ws::OP_BINARY => {
                    self.counts.data_bytes += frame.len as u64;
                    self.deliver(i, frame.payload)
                }
                ws::OP_PING => {
                    self.counts.pings += 1;
                    let mask = (self.random() as u32).to_ne_bytes();
                    let mut pong = Vec::with_capacity(frame.payload.len() + 6);
                    ws::encode_control(&mut pong, ws::OP_PONG, frame.payload, mask);
                    self.pong(i, pong).map_err(|_| Reason::Other)?;
                }
                ws::OP_CLOSE => return Err(Reason::ServerClosed),
                _ => {}
            }
        }
    }

    /// Handles event-stream body bytes, de-chunking first when needed; a partial line is
    /// kept in `held`.
    fn sse_bytes(&mut self, i: u32, bytes: &[u8]) -> Result<(), Reason> {
        let c = &mut self.conns[i as usize];
        let held = c.held.take();
        let owned: Vec<u8>;
        let body: &[u8] = match (held, c.chunked.as_mut()) {
            (None, None) => bytes,
            (held, chunked) => {
                let mut b = held.map(|h| *h).unwrap_or_default();
                match chunked {
                    Some(dec) => {
                        dec.feed(bytes, |s| b.extend_from_slice(s)).map_err(|_| Reason::Protocol)?
                    }
                    None => b.extend_from_slice(bytes),
                }
                owned = b;
                &owned
            }
        };
        let finished = c.chunked == Some(Chunked::Done);
        let mut reader = c.sse;
        let mut start = 0;
        while let Some((line, used)) = sse::next_line(&body[start..]) {
            start += used;
            match reader.line(line) {
                sse::Line::Message(m) => self.deliver(i, m),
                sse::Line::Heartbeat => self.counts.heartbeats += 1,
                sse::Line::Other => {}
            }
        }
        let c = &mut self.conns[i as usize];
        c.sse = reader;
        let rest = &body[start..];
        if rest.len() > sse::LINE_BYTES_MAX {
            return Err(Reason::Protocol);
        }
        if !rest.is_empty() {
            c.held = Some(Box::new(rest.to_vec()));
        }
        if finished {
            return Err(Reason::ServerClosed);
        }
        Ok(())
    }

    fn deliver(&mut self, i: u32, payload: &[u8]) {
        let Some(stamp) = payload::parse(payload) else {
            self.counts.foreign += 1;
            return;
        };
        // A process that publishes knows each of its sends by sequence number and stamp;
        // a message it did not send (another publishing load generator's) is foreign, so
        // side-by-side publishers do not confuse each other's accounting.
        let records = &self.shared.records;
        if records.len() > 1
            && records.get(stamp.seq as usize).map(|r| r.sent_ns.load(Relaxed))
                != Some(stamp.sent_ns)
        {
            self.counts.foreign += 1;
            return;
        }
        let now = sys::realtime_ns();
        let us = now.saturating_sub(stamp.sent_ns) / 1000;
        self.counts.received += 1;
        match self.conns[i as usize].window.observe(stamp.seq) {
            Arrival::Duplicate => {
                self.counts.duplicated += 1;
                return;
            }
            Arrival::Reordered => self.counts.reordered += 1,
            Arrival::InOrder => {}
        }
        self.result.latency_us.saturating_record(us.max(1));
        self.live.saturating_record(us.max(1));
        if let Some(record) = self.shared.records.get(stamp.seq as usize) {
            record.deliver(now);
        }
    }
}
