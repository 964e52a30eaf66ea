//! The shard's I/O verbs: poll, receive, send, cancel, close (accepts: [`super::accept`]). Every
//! submission of a connection's operation goes through here, so the rule "the kernel owns a
//! buffer until the completion arrives" is kept in one file.

use io_uring::{opcode, squeue, types};

use super::conn::{Chunk, Closing, Conn, Iov, Kind, Outbox, IOV_CHUNKS};
use super::{admin, client, Shard};
use crate::metrics::{bump, drop_gauge, CloseReason};
use crate::ring::{user_data, Completion, Op};

/// The answer to a connection beyond `conns_per_shard_max`.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Retry-After: 5\r\nConnection: close\r\nContent-Length: 24\r\n\r\nserver at connection cap\n";

/// The answer to a connection over `accept_rate_per_source_per_s_max`.
pub(super) const REFUSAL_SOURCE: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n\
Retry-After: 1\r\nConnection: close\r\nContent-Length: 39\r\n\r\ntoo many connections from your address\n";

impl Shard {
    /// Arms a one-shot readiness poll: an idle connection costs the kernel this and its socket.
    pub(super) fn arm_poll(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get(slot, generation) else {
            return;
        };
        if conn.poll_armed
            || conn.recv_armed
            || matches!(conn.closing, Closing::Cancelling(_) | Closing::Closed)
        {
            return;
        }
        if self.handover_freezes(slot, conn) {
            // A live upgrade: what arrives now is read by the new process.
            return;
        }
        let conn = self.conns.get_mut(slot, generation).expect("looked up above");
        conn.poll_armed = true;
        let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let entry = opcode::PollAdd::new(types::Fixed(conn.fd), events)
            .build()
            .user_data(user_data(Op::Poll, generation, slot));
        // SAFETY: a poll names no user memory.
        unsafe { self.ring.push(&entry) };
    }

    pub(super) fn on_poll(&mut self, slot: u32, generation: u32, result: i32) {
        let frozen = self.handover_cancelled_poll(slot, result);
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        conn.poll_armed = false;
        if matches!(conn.closing, Closing::Cancelling(_) | Closing::Closed) {
            return self.maybe_close(slot, generation);
        }
        if frozen {
            // Read again if the handover ended meanwhile (arm_poll does nothing while frozen).
            return self.arm_poll(slot, generation);
        }
        if self.conns.get(slot, generation).is_some_and(|c| self.handover_freezes(slot, c)) {
            // Frozen for a live upgrade with its poll left armed: what arrived stays in the
            // socket for the new process (or for this one, if the connection stays).
            return;
        }
        if result < 0 {
            return self.abort(slot, generation, CloseReason::IoError);
        }
        // Bytes (or the peer's EOF) are waiting: a sign of life now, even if the receive
        // completes only after a timer turn has run.
        let Some(conn) = self.conns.get_mut(slot, generation) else { return };
        conn.last_rx = super::conn::stamp(self.live.now_ms);
        conn.awaiting_pong = false;
        self.submit_recv(slot, generation);
    }

    /// Receives into a buffer the kernel picks from the provided-buffer ring.
    fn submit_recv(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        debug_assert!(!conn.recv_armed && !conn.poll_armed);
        conn.recv_armed = true;
        let entry = opcode::Recv::new(
            types::Fixed(conn.fd),
            std::ptr::null_mut(),
            self.bufs.buffer_bytes(),
        )
        .buf_group(self.bufs.group())
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(user_data(Op::Recv, generation, slot));
        // SAFETY: the buffer comes from the provided-buffer ring, which outlives the ring.
        unsafe { self.ring.push(&entry) };
        self.bufs.recv_submitted();
    }

    pub(super) fn retry_recvs(&mut self) {
        let retry = std::mem::take(&mut self.recv_retry);
        for (slot, generation) in retry {
            if self.conns.get(slot, generation).is_some_and(|c| {
                !c.in_flight() && !matches!(c.closing, Closing::Cancelling(_) | Closing::Closed)
            }) {
                self.submit_recv(slot, generation);
            }
        }
    }

    pub(super) fn on_recv(&mut self, slot: u32, generation: u32, c: Completion) {
        // Copy the bytes out and hand the buffer straight back: reads are small (heads,
        // control frames), and the connection keeps nothing of the shared buffer.
        self.bufs.recv_completed();
        let mut rx = std::mem::take(&mut self.scratch.rx);
        rx.clear();
        if let Some(bid) = c.buffer_id() {
            if c.result > 0 {
                rx.extend_from_slice(self.bufs.filled(bid, c.result as usize));
            }
            self.bufs.recycle(bid);
        }
        self.on_recv_bytes(slot, generation, c.result, &mut rx);
        self.scratch.rx = rx;
    }

    fn on_recv_bytes(&mut self, slot: u32, generation: u32, result: i32, rx: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        conn.recv_armed = false;
        if matches!(conn.closing, Closing::Cancelling(_) | Closing::Closed) {
            return self.maybe_close(slot, generation);
        }
        match result {
            0 => return self.on_peer_eof(slot, generation),
            r if r == -libc::ENOBUFS => {
                // The ring ran dry: the parked buffers go back in before the retry.
                self.bufs.starved();
                bump(&self.stats().recv_buffers_starved, 1);
                self.recv_retry.push((slot, generation));
                return;
            }
            r if r == -libc::EAGAIN || r == -libc::EINTR => {
                return self.arm_poll(slot, generation);
            }
            r if r < 0 => {
                let reason = if r == -libc::ECONNRESET {
                    CloseReason::PeerGone
                } else {
                    CloseReason::IoError
                };
                return self.abort(slot, generation, reason);
            }
            _ => {}
        }
        conn.last_rx = super::conn::stamp(self.live.now_ms);
        conn.awaiting_pong = false;
        let kind = conn.kind;
        self.live.forget(slot);
        let full = rx.len() == self.bufs.buffer_bytes() as usize;
        let mut plain = std::mem::take(&mut self.scratch.plain);
        plain.clear();
        let (data, peer_closed, mut tls_out): (&[u8], bool, Vec<u8>) =
            match self.tls_receive(slot, generation, rx, &mut plain) {
                super::tls::Received::Plain => (rx, false, Vec::new()),
                super::tls::Received::Decrypted { peer_closed, out } => (&plain, peer_closed, out),
                super::tls::Received::Failed => {
                    self.scratch.plain = plain;
                    return;
                }
            };
        // Bytes of a request head take the handshake's last bytes with them: queued before
        // the answer, or carried along when the connection moves (`placement`).
        if (kind != Kind::Handshake || data.is_empty()) && !tls_out.is_empty() {
            self.queue_raw(slot, generation, Chunk::Owned(std::mem::take(&mut tls_out)));
        }
        if !data.is_empty() {
            match kind {
                Kind::Handshake => client::on_head_bytes(self, slot, generation, data, tls_out),
                Kind::Ws | Kind::Echo => client::on_ws_bytes(self, slot, generation, data),
                Kind::Sse | Kind::Poll => client::on_sse_bytes(self, slot, generation, data),
                Kind::Admin => admin::on_bytes(self, slot, generation, data),
            }
        }
        self.scratch.plain = plain;
        if peer_closed {
            // close_notify: the peer sends nothing more, as at EOF.
            return self.on_peer_eof(slot, generation);
        }
        // A full buffer may mean more is waiting: read again at once instead of polling.
        if full && self.conns.get(slot, generation).is_some_and(|c| !c.in_flight_read()) {
            self.submit_recv(slot, generation);
        } else {
            self.arm_poll(slot, generation);
        }
    }

    /// The peer finished sending (EOF, or a TLS close_notify). Answers still queued
    /// (pipelined admin requests before a half-close, a close frame) are sent before the
    /// close; nothing more is read.
    fn on_peer_eof(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get(slot, generation) else {
            return;
        };
        if matches!(conn.closing, Closing::Cancelling(_) | Closing::Closed) {
            return;
        }
        let flush = conn.queued_bytes() > 0 && (conn.kind == Kind::Admin || !conn.is_open());
        if flush {
            if conn.is_open() {
                self.finish(slot, generation, CloseReason::PeerGone);
            }
            return;
        }
        let reason = match conn.closing {
            Closing::Flushing(r) => r,
            _ => CloseReason::PeerGone,
        };
        self.abort(slot, generation, reason)
    }

    /// Queues bytes for a connection and starts a send if none is in flight. A connection
    /// whose queue passes `outbox_bytes_max` is closed as a slow consumer; returns false then.
    /// On a TLS connection the bytes are encrypted first; they are dropped (false) when the
    /// session cannot send application data (handshake incomplete, closing).
    pub(super) fn queue(&mut self, slot: u32, generation: u32, chunk: Chunk) -> bool {
        if self.handover.is_exported(slot) {
            // Its TLS session's state went with its record: nothing more is sealed here. The
            // new process delivers the forwarded copy; this one is sent only if the
            // connection comes back (the new process refused it or failed).
            self.handover_hold(slot, generation, chunk);
            return true;
        }
        match self.tls_encrypt(slot, generation, chunk) {
            Some(chunk) => self.queue_raw(slot, generation, chunk),
            None => false,
        }
    }

    /// [`Shard::queue`] for bytes that go on the wire as they are.
    pub(super) fn queue_raw(&mut self, slot: u32, generation: u32, chunk: Chunk) -> bool {
        let max = self.shared.cfg.limits.outbox_bytes_max as usize;
        if self.handover.is_exported(slot) {
            // On its way to the new process, which writes from now on.
            return false;
        }
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return false;
        };
        if matches!(conn.closing, Closing::Cancelling(_) | Closing::Closed) {
            return false;
        }
        let last_tx = super::conn::stamp(self.live.now_ms);
        let out =
            conn.outbox.get_or_insert_with(|| Box::new(Outbox { last_tx, ..Outbox::default() }));
        out.bytes += chunk.bytes().len();
        out.chunks.push_back(chunk);
        if out.bytes > max && conn.is_open() {
            self.stats().dropped(crate::metrics::DropReason::SlowConsumer, 1);
            client::slow_consumer(self, slot, generation);
            return false;
        }
        self.submit_send(slot, generation);
        true
    }

    pub(super) fn submit_send(&mut self, slot: u32, generation: u32) {
        // Only while a live upgrade moves connections does a send wait (one match here).
        let held = self.handover.hurried()
            && self.conns.get(slot, generation).is_some_and(|c| self.handover_holds_sends(slot, c));
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let fd = conn.fd;
        let Some(out) = conn.outbox.as_mut() else {
            return;
        };
        if out.in_flight || held {
            return;
        }
        let Some(front) = out.chunks.front() else {
            return;
        };
        let bytes = &front.bytes()[out.sent..];
        assert!(!bytes.is_empty(), "an empty chunk is never queued");
        out.in_flight = true;
        let ud = user_data(Op::Send, generation, slot);
        let count = out.chunks.len().min(IOV_CHUNKS);
        out.flight = count as u8;
        let entry = if count == 1 {
            opcode::Send::new(types::Fixed(fd), bytes.as_ptr(), bytes.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(ud)
        } else {
            // Several messages wait: one sendmsg for up to IOV_CHUNKS of them.
            let iov = out.iov.get_or_insert_with(Iov::new);
            for (i, chunk) in out.chunks.iter().take(count).enumerate() {
                let b = if i == 0 { bytes } else { chunk.bytes() };
                iov.vecs[i] = libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() };
            }
            iov.msg.msg_iov = iov.vecs.as_mut_ptr();
            iov.msg.msg_iovlen = count;
            opcode::SendMsg::new(types::Fixed(fd), &iov.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(ud)
        };
        // SAFETY: the chunks' heap bytes, and the boxed iovecs and header a vectored send
        // points at, stay put until this send completes: `in_flight` keeps the first `flight`
        // chunks at the front (they are only popped in `on_send`), the outbox and its `iov`
        // box are freed only once nothing is queued, and a connection with an operation in
        // flight is never freed (see `maybe_close`).
        unsafe { self.ring.push(&entry) };
    }

    pub(super) fn on_send(&mut self, slot: u32, generation: u32, result: i32) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let Some(out) = conn.outbox.as_mut() else {
            debug_assert!(false, "send completion without an outbox");
            return;
        };
        assert!(out.in_flight);
        out.in_flight = false;
        if self.handover_cancelled_send(slot, result) {
            return self.submit_send(slot, generation);
        }
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let Some(out) = conn.outbox.as_mut() else {
            return;
        };
        if matches!(conn.closing, Closing::Cancelling(_) | Closing::Closed) {
            return self.maybe_close(slot, generation);
        }
        if result < 0 {
            let reason = if result == -libc::EPIPE || result == -libc::ECONNRESET {
                CloseReason::PeerGone
            } else {
                CloseReason::IoError
            };
            return self.abort(slot, generation, reason);
        }
        let n = result as usize;
        out.consume(n);
        out.last_tx = super::conn::stamp(self.live.now_ms);
        if out.ping_end > 0 {
            if n >= out.ping_end {
                // The ping has left: its pong deadline starts now.
                out.ping_end = 0;
                conn.last_ping = out.last_tx;
            } else {
                out.ping_end -= n;
            }
        }
        if out.chunks.is_empty() {
            debug_assert_eq!(out.bytes, 0);
            conn.outbox = None;
            self.outboxes_freed += 1;
            if let Closing::Flushing(reason) = conn.closing {
                if !conn.awaiting_close_frame() {
                    return self.abort(slot, generation, reason);
                }
            }
            return;
        }
        self.submit_send(slot, generation);
    }

    /// Closes once what is queued has been sent (an error response, a close frame, the end of
    /// an SSE stream). Bounded by `close_timeout_ms`.
    pub(crate) fn finish(&mut self, slot: u32, generation: u32, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if !conn.is_open() {
            return;
        }
        self.leave_open(slot, generation, reason);
        self.tls_close_notify(slot, generation);
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        conn.closing = Closing::Flushing(reason);
        if conn.outbox.is_none() && !conn.awaiting_close_frame() {
            return self.abort(slot, generation, reason);
        }
        let at = self.now_ms + self.shared.cfg.limits.close_timeout_ms;
        self.schedule(slot, generation, at);
    }

    /// Closes now: cancels whatever is in flight, then closes the descriptor; the kernel
    /// still sends what it holds, then a FIN.
    pub(crate) fn abort(&mut self, slot: u32, generation: u32, reason: CloseReason) {
        self.close_now(slot, generation, reason, false)
    }

    /// Closes now by reset (SO_LINGER 0): for connections the server gives up on (a slow
    /// consumer, a ping timeout, a close that did not drain in `close_timeout_ms`), so the
    /// kernel frees their send queue at once instead of holding it in FIN-WAIT for a peer that
    /// does not read.
    pub(crate) fn reset(&mut self, slot: u32, generation: u32, reason: CloseReason) {
        self.close_now(slot, generation, reason, true)
    }

    fn close_now(&mut self, slot: u32, generation: u32, reason: CloseReason, reset: bool) {
        let Some(conn) = self.conns.get(slot, generation) else {
            return;
        };
        match conn.closing {
            Closing::Cancelling(_) | Closing::Closed => return,
            Closing::Open => self.leave_open(slot, generation, reason),
            Closing::Flushing(_) => {}
        }
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        conn.closing = Closing::Cancelling(reason);
        conn.partial = None;
        let fd = conn.fd;
        if reset {
            // Linked to the shutdown or close pushed next, so it takes effect before either.
            static LINGER_RESET: libc::linger = libc::linger { l_onoff: 1, l_linger: 0 };
            let entry = opcode::SetSockOpt::new(
                types::Fixed(fd),
                libc::SOL_SOCKET as u32,
                libc::SO_LINGER as u32,
                (&raw const LINGER_RESET).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(user_data(Op::Cancel, 0, u32::MAX));
            // SAFETY: the option value is a static, valid for the program's life.
            unsafe { self.ring.push(&entry) };
        }
        let stats = &self.shared.stats[self.id];
        bump(if reset { &stats.closes_reset } else { &stats.closes_graceful }, 1);
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if let Some(out) = conn.outbox.as_mut() {
            // Keep only the chunk the kernel may be reading.
            let keep = if out.in_flight { 1 } else { 0 };
            out.chunks.truncate(keep);
        }
        if conn.in_flight() && !conn.cancel_armed {
            // Shut the socket down instead of cancelling: the armed poll wakes (EOF/HUP), a
            // blocked send fails with EPIPE, and each completes by itself. A cancel by
            // descriptor makes the kernel scan every armed request of the ring, so closing
            // n connections would cost O(n²) — enough to stall a shard of 20,000.
            conn.cancel_armed = true;
            let entry = opcode::Shutdown::new(types::Fixed(conn.fd), libc::SHUT_RDWR)
                .build()
                .user_data(user_data(Op::Cancel, generation, slot));
            // SAFETY: a shutdown names no user memory.
            unsafe { self.ring.push(&entry) };
            // If an operation still has not completed by then, cancel it by its user_data.
            let at = self.now_ms + self.shared.cfg.limits.close_timeout_ms;
            self.schedule(slot, generation, at);
        }
        self.maybe_close(slot, generation);
    }

    /// The fallback for `abort`: cancels, one by one and by user_data, the operations the
    /// shutdown did not end.
    pub(super) fn cancel_stragglers(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get(slot, generation) else { return };
        let mut ops = Vec::with_capacity(3);
        if conn.poll_armed {
            ops.push(Op::Poll);
        }
        if conn.recv_armed {
            ops.push(Op::Recv);
        }
        if conn.outbox.as_ref().is_some_and(|o| o.in_flight) {
            ops.push(Op::Send);
        }
        for op in ops {
            self.cancel_op(op, generation, slot);
        }
    }

    /// Asks the ring to cancel the operation `op` of a connection (or listener) slot; its
    /// completion then reports ECANCELED, or its own result if it was already done.
    pub(super) fn cancel_op(&mut self, op: Op, generation: u32, slot: u32) {
        let entry = opcode::AsyncCancel::new(user_data(op, generation, slot))
            .build()
            .user_data(user_data(Op::Cancel, 0, u32::MAX));
        // SAFETY: a cancel names no user memory.
        unsafe { self.ring.push(&entry) };
    }

    pub(super) fn on_cancel(&mut self, slot: u32, generation: u32) {
        if slot == u32::MAX {
            return;
        }
        if let Some(conn) = self.conns.get_mut(slot, generation) {
            conn.cancel_armed = false;
            self.maybe_close(slot, generation);
        }
    }

    /// Submits the close once the kernel holds nothing of the connection's.
    pub(super) fn maybe_close(&mut self, slot: u32, generation: u32) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        if !matches!(conn.closing, Closing::Cancelling(_)) || conn.in_flight() {
            return;
        }
        conn.closing = Closing::Closed;
        conn.outbox = None;
        let fd = conn.fd;
        self.submit_close_fd(fd, slot, generation);
    }

    /// Answers 503 on a connection the registry has no room for, and closes it. The send
    /// and the close are hard-linked (the close runs even if the send fails) and name only
    /// static bytes, so nothing of the connection needs a registry slot.
    pub(super) fn refuse(&mut self, fd: u32, admin: bool) {
        self.refuse_with(fd, admin, REFUSAL)
    }

    /// Answers a connection that is not admitted with `response` and closes it. On a TLS
    /// listener there is no session to say it in: the connection is just closed.
    pub(super) fn refuse_with(&mut self, fd: u32, admin: bool, response: &'static [u8]) {
        // The slot stays taken until the close completes (`on_close` with no connection).
        self.refusing += 1;
        if !admin && self.shared.tls.is_some() {
            return self.submit_close_fd(fd, u32::MAX, 0);
        }
        let send = opcode::Send::new(types::Fixed(fd), response.as_ptr(), response.len() as u32)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(user_data(Op::Cancel, 0, u32::MAX));
        // SAFETY: the bytes are a static, valid for the program's life.
        unsafe { self.ring.push(&send) };
        self.submit_close_fd(fd, u32::MAX, 0);
    }

    pub(super) fn submit_close_fd(&mut self, fd: u32, slot: u32, generation: u32) {
        let entry = opcode::Close::new(types::Fixed(fd)).build().user_data(user_data(
            Op::Close,
            generation,
            slot,
        ));
        // SAFETY: a close names no user memory.
        unsafe { self.ring.push(&entry) };
    }

    pub(super) fn on_close(&mut self, slot: u32, generation: u32) {
        if slot != u32::MAX {
            self.tls_forget(slot, generation);
            self.live.forget(slot);
            let conn = self.conns.remove(slot, generation);
            debug_assert!(conn.as_ref().is_some_and(|c| c.closing == Closing::Closed));
        } else {
            self.refusing = self.refusing.saturating_sub(1);
        }
        // A slot of the fixed-file table is free again.
        self.accept_blocked_until_ms = 0;
    }

    /// Leaves the open state once: gauges, counters, user and topic registrations.
    pub(super) fn leave_open(&mut self, slot: u32, generation: u32, reason: CloseReason) {
        let id = self.conn_id(slot, generation);
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        debug_assert!(conn.is_open());
        let kind = conn.kind;
        let ident = conn.ident.take();
        if self.grants.get(&slot).is_some_and(|(g, _)| *g == generation) {
            self.grants.remove(&slot);
        }
        if self.expiries.get(&slot).is_some_and(|(g, _)| *g == generation) {
            self.expiries.remove(&slot);
        }
        let extra_tabs = self.extra_tabs(slot, generation) as u64;
        if extra_tabs > 0 {
            self.tabs.remove(&slot);
        }
        if self.resuming.get(&slot).is_some_and(|p| p.generation == generation) {
            self.resuming.remove(&slot);
        }
        if self.polls.get(&slot).is_some_and(|p| p.generation == generation) {
            self.polls.remove(&slot);
        }
        let stats = &self.shared.stats[self.id];
        drop_gauge(match kind {
            Kind::Handshake => &stats.conns_handshake,
            Kind::Admin => &stats.conns_admin,
            Kind::Ws | Kind::Echo => &stats.conns_ws,
            Kind::Sse => &stats.conns_sse,
            Kind::Poll => &stats.conns_poll,
        });
        stats.tabs_extra.fetch_sub(extra_tabs, std::sync::atomic::Ordering::Relaxed);
        stats.closed(reason);
        if let Some(user) = ident.user() {
            if reason == CloseReason::Handover {
                // The home shard keeps naming it in its deliveries, which this shard
                // forwards to the new process (`handover::forward`) until the end.
                self.handover_keep_user(user, id);
            } else {
                self.unregister_user(user, id);
            }
        }
        // The closing connection's topics were taken above, so its own entries count as stale.
        let conns = &self.conns;
        for topic in ident.topics() {
            let subscribed =
                |s, g| conns.get(s, g).is_some_and(|c: &Conn| c.ident.has_topic(topic));
            self.topics.forget(topic, subscribed);
        }
    }

    /// Asks the kernel how many sent bytes the client has not acknowledged (SIOCOUTQ); the
    /// answer goes to `liveness::on_kernel_queue`.
    pub(super) fn ask_kernel_queue(&mut self, slot: u32, generation: u32) {
        /// `SOCKET_URING_OP_SIOCOUTQ` of `linux/io_uring.h` (Linux 6.7).
        const SOCKET_URING_OP_SIOCOUTQ: u32 = 1;
        let Some(conn) = self.conns.get(slot, generation) else { return };
        let entry = opcode::UringCmd16::new(types::Fixed(conn.fd), SOCKET_URING_OP_SIOCOUTQ)
            .build()
            .user_data(user_data(Op::KernelQueue, generation, slot));
        // SAFETY: the command names no user memory; its answer is the completion's result.
        unsafe { self.ring.push(&entry) };
    }

    pub(super) fn submit_doorbell(&mut self, ring_fd: i32) {
        let entry =
            opcode::MsgRingData::new(types::Fd(ring_fd), 0, user_data(Op::Doorbell, 0, 0), None)
                .build()
                .user_data(user_data(Op::DoorbellSent, 0, 0));
        // SAFETY: a message to another ring names no user memory.
        unsafe { self.ring.push(&entry) };
    }
}

impl Conn {
    /// A receive or poll is armed.
    pub fn in_flight_read(&self) -> bool {
        self.poll_armed || self.recv_armed
    }

    /// We sent a WebSocket close frame and wait for the peer's before closing TCP.
    pub fn awaiting_close_frame(&self) -> bool {
        matches!(self.kind, Kind::Ws | Kind::Echo) && !self.ws.is_closed()
    }
}
