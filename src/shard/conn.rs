//! A connection's state: a small slab entry while idle, with buffers only while busy.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::rc::Rc;

use crate::metrics::CloseReason;
use crate::proto::http1::BodyReader;
use crate::proto::http1::Request;
use crate::proto::ws;

/// What a connection is, after its request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Accepted on a client listener; waiting for the request head.
    Handshake,
    /// Accepted on the admin listener; HTTP/1.1 keep-alive requests.
    Admin,
    Ws,
    /// WebSocket on `/echo`: every message comes back.
    Echo,
    Sse,
    /// `GET /poll`: one held response.
    Poll,
}

/// Where a connection is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    Open,
    /// Send what is queued (a close frame or an error response), then close. Reads go on and
    /// are discarded, except that the peer's close frame or EOF ends the wait.
    Flushing(CloseReason),
    /// Cancelling in-flight operations; close once none is left.
    Cancelling(CloseReason),
    /// The close is submitted; the slot is freed on its completion.
    Closed,
}

/// One bytes chunk waiting to be sent. Published messages are encoded once per shard and
/// shared by every recipient on it.
pub enum Chunk {
    Static(&'static [u8]),
    Shared(Rc<[u8]>),
    Owned(Vec<u8>),
}

impl Chunk {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Static(b) => b,
            Chunk::Shared(b) => b,
            Chunk::Owned(v) => v,
        }
    }
}

/// Bytes queued for one connection. Exists only while there is something to send.
#[derive(Default)]
pub struct Outbox {
    pub chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent; 0 <= sent < front.len().
    pub sent: usize,
    /// Unsent bytes in all chunks; <= outbox_bytes_max + one message.
    pub bytes: usize,
    /// A send is in flight: its chunks (the front [`Outbox::flight`] ones) must not move or
    /// drop.
    pub in_flight: bool,
    /// Chunks the send in flight covers: 1, or up to [`IOV_CHUNKS`] in one vectored send.
    pub flight: u8,
    /// The vectored send's iovecs and message header, which the kernel reads until the send
    /// completes; made the first time several chunks wait, kept with the outbox.
    pub iov: Option<Box<Iov>>,
    /// Unsent bytes up to and including the end of a queued ping; 0: no ping waits here.
    /// The ping's pong deadline starts when this reaches 0 (`liveness`).
    pub ping_end: usize,
    /// Liveness-clock [`stamp`] of the outbox's creation or its last send progress.
    pub last_tx: u32,
}

/// Most chunks one send covers: a connection behind by several messages gets them in one
/// `sendmsg`, so one segment and one wakeup of the peer instead of one per message.
pub const IOV_CHUNKS: usize = 8;

/// What a vectored send hands the kernel.
pub struct Iov {
    pub vecs: [libc::iovec; IOV_CHUNKS],
    pub msg: libc::msghdr,
}

impl Iov {
    pub fn new() -> Box<Iov> {
        let null = std::ptr::null_mut();
        Box::new(Iov {
            vecs: [libc::iovec { iov_base: null, iov_len: 0 }; IOV_CHUNKS],
            msg: libc::msghdr {
                msg_name: null,
                msg_namelen: 0,
                msg_iov: std::ptr::null_mut(),
                msg_iovlen: 0,
                msg_control: null,
                msg_controllen: 0,
                msg_flags: 0,
            },
        })
    }
}

impl Outbox {
    /// Takes `n` sent bytes off the front, dropping the chunks they finish.
    pub fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else { break };
            let left = front.bytes().len() - self.sent;
            if n < left {
                self.sent += n;
                return;
            }
            n -= left;
            self.chunks.pop_front();
            self.sent = 0;
        }
    }
}

/// A connection's user id and topics packed in one string, `user\0topic\0topic`, so an
/// idle connection pays one 16-byte field and one allocation for both. Names never contain
/// NUL (the handshake refuses them). Topics change rarely after the handshake, so a change
/// rebuilds the string.
#[derive(Default)]
pub struct Ident(Option<Box<str>>);

impl Ident {
    pub fn new(user: Option<&str>, topics: &[&str]) -> Ident {
        let mut id = Ident::default();
        id.rebuild(user, topics.iter().copied());
        id
    }

    fn rebuild<'a>(&mut self, user: Option<&str>, topics: impl Iterator<Item = &'a str>) {
        let mut s = String::from(user.unwrap_or(""));
        for t in topics {
            debug_assert!(!t.contains('\0') && !t.is_empty());
            s.push('\0');
            s.push_str(t);
        }
        self.0 = if s.is_empty() { None } else { Some(s.into_boxed_str()) };
    }

    pub fn user(&self) -> Option<&str> {
        self.0.as_deref().and_then(|s| s.split('\0').next()).filter(|u| !u.is_empty())
    }

    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.0.as_deref().into_iter().flat_map(|s| s.split('\0').skip(1))
    }

    pub fn has_topic(&self, topic: &str) -> bool {
        self.topics().any(|t| t == topic)
    }

    pub fn topic_count(&self) -> usize {
        self.topics().count()
    }

    pub fn add_topic(&mut self, topic: &str) {
        let user = self.user().map(str::to_owned);
        let mut topics: Vec<String> = self.topics().map(str::to_owned).collect();
        topics.push(topic.to_owned());
        self.rebuild(user.as_deref(), topics.iter().map(String::as_str));
    }

    pub fn remove_topic(&mut self, topic: &str) -> bool {
        if !self.has_topic(topic) {
            return false;
        }
        let user = self.user().map(str::to_owned);
        let topics: Vec<String> =
            self.topics().filter(|t| *t != topic).map(str::to_owned).collect();
        self.rebuild(user.as_deref(), topics.iter().map(String::as_str));
        true
    }

    /// The packed form, `user\0topic\0topic` (a live upgrade carries it as it is).
    pub fn packed(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// An identity from its packed form; None if it holds an empty topic name.
    pub fn from_packed(s: Option<String>) -> Option<Ident> {
        match s {
            Some(s) if s.split('\0').skip(1).any(str::is_empty) => None,
            Some(s) => Some(Ident(Some(s.into_boxed_str()))),
            None => Some(Ident(None)),
        }
    }

    /// Takes the identity out, leaving none.
    pub fn take(&mut self) -> Ident {
        Ident(self.0.take())
    }
}

/// Shard milliseconds truncated to 32 bits, to keep the idle slab entry small. Differences
/// are taken with wrapping arithmetic ([`elapsed_ms`]), which is exact while every interval
/// stays under 2^31 ms (24 days); the configuration enforces that.
pub fn stamp(now_ms: u64) -> u32 {
    now_ms as u32
}

/// Milliseconds from `earlier` (a [`stamp`]) to `now_ms`.
pub fn elapsed_ms(now_ms: u64, earlier: u32) -> u64 {
    stamp(now_ms).wrapping_sub(earlier) as u64
}

/// Bytes and parse state that exist only while a request or frame is incomplete.
#[derive(Default)]
pub struct Partial {
    /// Received bytes not yet consumed by a parser.
    pub bytes: Vec<u8>,
    /// Admin: the request whose body is being read.
    pub request: Option<(Request, BodyReader)>,
    /// Admin: the body read so far.
    pub body: Vec<u8>,
    /// Admin: shard ms when the pending request's first byte arrived; the request must be
    /// complete within `handshake_timeout_ms` of it, however slowly its bytes trickle.
    pub started_ms: u64,
    /// Admin: a request waits for other shards' answers (`GET /presence`); what follows it
    /// is held until it is answered.
    pub waiting: bool,
    /// Admin: the connection is a status stream (`GET /status/events`): it reads nothing
    /// more and gets a snapshot a second ([`super::status`]).
    pub stream: bool,
}

/// A connection's slab entry. Idle, it is this struct and nothing else.
pub struct Conn {
    /// Slot in the ring's fixed-file table (a direct descriptor).
    pub fd: u32,
    pub kind: Kind,
    pub closing: Closing,
    /// A one-shot poll is armed.
    pub poll_armed: bool,
    /// A receive is in flight.
    pub recv_armed: bool,
    /// A cancel is in flight.
    pub cancel_armed: bool,
    /// A ping was queued and no bytes have arrived since.
    pub awaiting_pong: bool,
    /// A WebSocket that asked for `format=json`: messages come in an envelope with ids.
    pub json: bool,
    /// Deadline of the timer-wheel entry that is live for this connection, as a [`stamp`];
    /// 0: none.
    pub timer: u32,
    /// Liveness-clock [`stamp`] of the last bytes received (or readiness to receive).
    pub last_rx: u32,
    /// Liveness-clock [`stamp`] of when the last ping left the outbox, or of the handshake
    /// less a random part of the ping interval (so a burst of connections does not ping in
    /// step); before the handshake, of the accept.
    pub last_ping: u32,
    /// The user id and topics, in one allocation.
    pub ident: Ident,
    pub partial: Option<Box<Partial>>,
    pub outbox: Option<Box<Outbox>>,
    pub ws: ws::Session,
}

impl Conn {
    pub fn new(fd: u32, kind: Kind, now_ms: u64) -> Conn {
        Conn {
            fd,
            kind,
            closing: Closing::Open,
            poll_armed: false,
            recv_armed: false,
            cancel_armed: false,
            awaiting_pong: false,
            json: false,
            timer: 0,
            last_rx: stamp(now_ms),
            last_ping: stamp(now_ms),
            ident: Ident::default(),
            partial: None,
            outbox: None,
            ws: ws::Session::new(),
        }
    }

    /// Operations the kernel still owns for this connection.
    pub fn in_flight(&self) -> bool {
        self.poll_armed
            || self.recv_armed
            || self.cancel_armed
            || self.outbox.as_ref().is_some_and(|o| o.in_flight)
    }

    pub fn is_open(&self) -> bool {
        self.closing == Closing::Open
    }

    /// A client connection that receives publishes.
    pub fn is_subscriber(&self) -> bool {
        matches!(self.kind, Kind::Ws | Kind::Sse | Kind::Poll) && self.is_open()
    }

    pub fn queued_bytes(&self) -> usize {
        self.outbox.as_ref().map_or(0, |o| o.bytes)
    }

    pub fn partial_mut(&mut self) -> &mut Partial {
        self.partial.get_or_insert_with(Default::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The idle footprint is the budget's largest part; keep it in view.
    #[test]
    fn idle_connection_is_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 72, "Conn grew to {size} bytes");
    }

    #[test]
    fn ident_packs_user_and_topics() {
        let mut id = Ident::new(Some("alice"), &["news", "t1"]);
        assert_eq!(id.user(), Some("alice"));
        assert_eq!(id.topics().collect::<Vec<_>>(), ["news", "t1"]);
        id.add_topic("t2");
        assert!(id.remove_topic("news"));
        assert!(!id.remove_topic("news"));
        assert_eq!(id.topics().collect::<Vec<_>>(), ["t1", "t2"]);
        assert_eq!(id.user(), Some("alice"));
        let anon = Ident::new(None, &["x"]);
        assert_eq!(anon.user(), None);
        assert_eq!(anon.topic_count(), 1);
        assert_eq!(Ident::new(None, &[]).topic_count(), 0);
        assert!(Ident::new(None, &[]).0.is_none(), "no allocation without a name");
    }

    #[test]
    fn a_send_consumes_across_chunks() {
        let mut out = Outbox::default();
        for c in [&b"abc"[..], b"de", b"fghi"] {
            out.chunks.push_back(Chunk::Static(c));
            out.bytes += c.len();
        }
        out.consume(2);
        assert_eq!((out.chunks.len(), out.sent, out.bytes), (3, 2, 7));
        // The rest of the first, all of the second, one byte of the third.
        out.consume(4);
        assert_eq!((out.chunks.len(), out.sent, out.bytes), (1, 1, 3));
        assert_eq!(out.chunks[0].bytes(), b"fghi");
        out.consume(3);
        assert!(out.chunks.is_empty());
        assert_eq!((out.sent, out.bytes), (0, 0));
    }

    #[test]
    fn stamps_survive_wraparound() {
        let before = (1u64 << 32) - 5;
        assert_eq!(elapsed_ms(before + 10, stamp(before)), 10);
        assert_eq!(elapsed_ms(7, stamp(7)), 0);
    }
}
