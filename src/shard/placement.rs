//! Home-shard placement: a WebSocket or SSE connection whose user's home shard is another
//! moves there once its request head is read, before it is answered, so that a push to the
//! user is delivered by the shard that numbers it instead of crossing the mesh once more.
//!
//! The move, from the accepting shard A to the home shard H:
//! 1. A takes the connection out of its slab and keeps what H needs (the bytes received,
//!    the TLS session, the handshake clock) under a token. Its fixed-file slot stays taken.
//! 2. A sends the direct descriptor to H's ring (MSG_RING, `IORING_MSG_SEND_FD`, into a slot
//!    the kernel picks, with no completion on H).
//! 3. On its completion, A sends the rest as [`Msg::Adopt`] with H's slot, and closes its
//!    own slot (which leaves the socket open: H's table holds it).
//! 4. H makes a connection of it and reads the request head as if it had just arrived.
//!
//! A connection moves only when nothing of it is in flight on A, and only outside a live
//! upgrade or a shutdown. What the TLS handshake owes the client when the head arrives with
//! its last message (TLS 1.3 session tickets) moves along unsent, to go out first from H. If H's table is full, A keeps it. Long polls, `/echo` and connections
//! without a user stay where they were accepted.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use io_uring::{opcode, types};

use super::conn::{self, Conn, Kind};
use super::{client, Shard};
use crate::metrics::bump;
use crate::proto::http1::Request;
use crate::push::{home_shard, Adopt, Msg};
use crate::ring::{user_data, Op};

/// `IORING_MSG_RING_CQE_SKIP`: the target ring gets no completion for the descriptor; the
/// [`Msg::Adopt`] that follows wakes it.
const MSG_RING_CQE_SKIP: u32 = 1;

/// Connections on their way out of this shard, by token.
#[derive(Default)]
pub struct Moves {
    out: HashMap<u32, (usize, Box<Adopt>)>,
    next: u32,
}

impl Moves {
    /// No connection is between this shard and another.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

/// The user a request names: `?user=`, else the subject of a token that verifies. Only for
/// placement: the admission proper runs on the shard the connection ends on.
fn user_of(shard: &Shard, req: &Request) -> Option<String> {
    if let Some(u) = req.query_param("user").filter(|u| !u.is_empty()) {
        return Some(u);
    }
    let token = crate::auth::token_of(req)?;
    let grant = shard.shared.client_auth.verify(Some(&token), crate::auth::unix_now_s()).ok()?;
    grant.map(|g| g.user)
}

impl Shard {
    /// Starts moving a connection whose request head `bytes` holds (`req`, parsed) to its
    /// user's home shard; false when it stays here.
    pub(super) fn place_on_home(
        &mut self,
        slot: u32,
        generation: u32,
        req: &Request,
        bytes: &[u8],
        tls_out: &mut Vec<u8>,
    ) -> bool {
        if !self.shared.cfg.home_placement
            || self.shards() < 2
            || !matches!(req.path.as_str(), "/ws" | "/sse")
            || self.shutdown_deadline_ms.is_some()
        {
            return false;
        }
        let Some(user) = user_of(self, req) else { return false };
        let home = home_shard(self.shared.user_keys.hash(&user), self.shards());
        let ring_fd = self.mesh.ring_fd(home);
        if home == self.id || ring_fd < 0 {
            return false;
        }
        let movable = self.conns.get(slot, generation).is_some_and(|c| {
            c.kind == Kind::Handshake && c.is_open() && !c.in_flight() && c.outbox.is_none()
        });
        if !movable {
            return false;
        }
        // Counted before the live-upgrade check, both sequentially consistent, as are the
        // upgrade's flag and its sweep's look at the count: the sweep sees this move, or
        // this check sees the upgrade.
        self.shared.placements.fetch_add(1, Ordering::SeqCst);
        if !self.handover_allows_placement() {
            self.shared.placements.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        let tls = self.tls.take(slot, generation);
        let conn = self.conns.remove(slot, generation).expect("looked up above");
        self.live.forget(slot);
        crate::metrics::drop_gauge(&self.stats().conns_handshake);
        // Its fixed-file slot stays taken until the close after the move (`on_close`).
        self.refusing += 1;
        let adopt = Box::new(Adopt {
            fd: conn.fd,
            waited_ms: conn::elapsed_ms(self.live.now_ms, conn.last_ping),
            compress: conn.ws.compression_allowed(),
            bytes: bytes.into(),
            tls,
            tls_out: std::mem::take(tls_out),
        });
        let token = self.moves.next;
        self.moves.next = self.moves.next.wrapping_add(1);
        self.moves.out.insert(token, (home, adopt));
        let entry = opcode::MsgRingSendFd::new(
            types::Fd(ring_fd),
            types::Fixed(conn.fd),
            types::DestinationSlot::auto_target(),
            0,
        )
        .opcode_flags(MSG_RING_CQE_SKIP)
        .build()
        .user_data(user_data(Op::Move, 0, token));
        // SAFETY: a message to another ring names no user memory.
        unsafe { self.ring.push(&entry) };
        true
    }

    /// The descriptor reached the home shard (`result`: its slot there), or did not.
    pub(super) fn on_move(&mut self, token: u32, result: i32) {
        let Some((home, mut adopt)) = self.moves.out.remove(&token) else { return };
        let own = adopt.fd;
        if result >= 0 {
            adopt.fd = result as u32;
            bump(&self.stats().placed_out, 1);
            self.send_mesh(home, Msg::Adopt(adopt));
            // Ours only: the home shard's slot keeps the socket open.
            return self.submit_close_fd(own, u32::MAX, 0);
        }
        // The home shard's table is full (or it stopped): the connection is served here.
        bump(&self.stats().placed_failed, 1);
        self.refusing = self.refusing.saturating_sub(1);
        self.take_in(*adopt);
        self.shared.placements.fetch_sub(1, Ordering::SeqCst);
    }

    /// On the home shard: a connection another shard moved here. During a live upgrade it
    /// is read like any connection in its handshake, and moves to the new process when the
    /// handshake completes.
    pub(super) fn on_adopt(&mut self, adopt: Adopt) {
        if self.shutdown_deadline_ms.is_some() {
            // Nobody would read it: it is refused as a new connection would be.
            self.refuse(adopt.fd, false);
        } else {
            bump(&self.stats().placed_in, 1);
            self.take_in(adopt);
        }
        self.shared.placements.fetch_sub(1, Ordering::SeqCst);
    }

    /// Makes a connection of a moved one (or of one whose move failed) and reads its
    /// request head.
    fn take_in(&mut self, adopt: Adopt) {
        let Adopt { fd, waited_ms, compress, bytes, tls, tls_out } = adopt;
        let now = self.live.now_ms;
        let mut conn = Conn::new(fd, Kind::Handshake, now);
        conn.last_ping = conn::stamp(now.saturating_sub(waited_ms));
        if !compress {
            conn.ws = crate::proto::ws::Session::without_compression();
        }
        let Ok((slot, generation)) = self.conns.insert(conn) else {
            bump(&self.stats().accepts_refused, 1);
            return self.refuse(fd, false);
        };
        bump(&self.stats().conns_handshake, 1);
        let limit = self.shared.cfg.limits.handshake_timeout_ms;
        self.schedule(slot, generation, self.now_ms + limit.saturating_sub(waited_ms));
        if let Some(s) = tls {
            self.tls.adopt(slot, generation, s);
        }
        if !tls_out.is_empty() {
            self.queue_raw(slot, generation, super::conn::Chunk::Owned(tls_out));
        }
        client::on_moved_head(self, slot, generation, &bytes);
        self.arm_poll(slot, generation);
    }
}
