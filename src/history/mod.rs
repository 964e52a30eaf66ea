//! Message history for resume: one bounded log per partition, and the position tokens that
//! clients hand back when they reconnect.
//!
//! - **Partitions.** Every message gets its sequence number from exactly one shard, its
//!   stream's partition: a user's messages from the user's home shard, topic and broadcast
//!   messages from shard [`SEQUENCER`]. A partition's numbers count up by one per message,
//!   and each partition sends its messages to every other shard over one SPSC ring, so a
//!   shard sees every partition's messages in sequence order.
//! - **Positions.** A shard remembers, per partition, the last sequence it has handled
//!   ([`Heard`]). Everything of a connection's streams up to that number is already in the
//!   connection's outbox, so a connection's position is the shard's `heard` for the two
//!   partitions it reads (its user's home and [`SEQUENCER`]), plus the process epoch: no
//!   state per connection. Idle partitions send [`crate::push::Msg::Top`] beacons, so
//!   positions advance without messages.
//! - **Logs.** Each shard keeps the log of its own partition: entries in sequence order,
//!   bounded by age (`history_ttl_ms`), by count per stream (`history_per_stream_max`) and
//!   by bytes (`history_bytes_max` split over the shards). A stream is indexed only while it
//!   has retained entries: a user or topic with nothing in its window costs 0 bytes.
//! - **Resume.** A replay lists a stream's entries after a position, in order; when the log
//!   cannot prove it holds all of them (expired, evicted, another epoch) it answers a
//!   [`Gap`] with its reason instead, never a partial history.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use crate::push::Message;

/// The partition (shard) that numbers topic and broadcast messages.
pub const SEQUENCER: usize = 0;

/// Longest position token accepted from a client.
pub const TOKEN_BYTES_MAX: usize = 64;

/// Bytes one retained message costs beyond its payload, as counted against
/// `history_bytes_max`: the log entry (32: stream key, payload offset, time in µs, length) and its
/// stream's index slot (8). The payload itself is copied into the log's byte arena, so the
/// delivery path's shared message is not kept alive. Measured with
/// `scripts/history_memory.sh` (bench/HISTORY.md).
pub const ENTRY_BYTES: usize = 40;

/// The longest history window (a log of a week belongs in the cluster store).
pub const TTL_MS_MAX: u64 = 7 * 24 * 3600 * 1000;

/// Bytes a stream costs while it has retained entries: its index entry, name and deque.
pub const STREAM_BYTES: usize = 160;

/// A stream of messages: a user's, a topic's, or the broadcast stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream<'a> {
    User(&'a str),
    Topic(&'a str),
    All,
}

impl Stream<'_> {
    fn tag(&self) -> u8 {
        match self {
            Stream::User(_) => 0,
            Stream::Topic(_) => 1,
            Stream::All => 2,
        }
    }

    fn name(&self) -> &str {
        match self {
            Stream::User(n) | Stream::Topic(n) => n,
            Stream::All => "",
        }
    }

    /// How clients see the stream: `user`, `topic:NAME` or `all`.
    pub fn label(&self) -> String {
        match self {
            Stream::User(_) => "user".into(),
            Stream::Topic(t) => format!("topic:{t}"),
            Stream::All => "all".into(),
        }
    }
}

/// Why a stream cannot be resumed from a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapReason {
    /// Messages after the position left the window (age, or the memory bound).
    Expired,
    /// The stream had more messages since the position than its window keeps.
    TooMany,
    /// The position is from another run of the server: continuity cannot be proven.
    Epoch,
    /// The position is not one this server hands out.
    Unknown,
    /// The topic keeps no history (`history_topics` gives its prefix 0) and had messages.
    Off,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Expired => "expired",
            GapReason::TooMany => "too_many",
            GapReason::Epoch => "epoch",
            GapReason::Unknown => "unknown",
            GapReason::Off => "off",
        }
    }
}

/// A position token: the epoch, the [`SEQUENCER`]'s sequence, and the user's home
/// partition's sequence when the connection has a user. Written as base-36 numbers joined
/// by `-`, e.g. `1k3x9q-2s-7f`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub epoch: u32,
    pub topics: u64,
    pub user: Option<u64>,
}

impl Token {
    /// What a position this server did not write stands for: another run's, so every
    /// stream reports an `epoch` gap.
    pub const FOREIGN: Token = Token { epoch: 0, topics: 0, user: None };

    /// A position a client sent; anything unparsable is [`Token::FOREIGN`].
    pub fn from_client(text: &[u8]) -> Token {
        Token::parse(text).unwrap_or(Token::FOREIGN)
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        push_base36(out, u64::from(self.epoch));
        out.push(b'-');
        push_base36(out, self.topics);
        if let Some(u) = self.user {
            out.push(b'-');
            push_base36(out, u);
        }
    }

    pub fn to_text(self) -> String {
        let mut v = Vec::with_capacity(24);
        self.write(&mut v);
        String::from_utf8(v).expect("base 36 is ASCII")
    }

    /// Parses a token; None for anything this server does not write.
    pub fn parse(text: &[u8]) -> Option<Token> {
        if text.is_empty() || text.len() > TOKEN_BYTES_MAX {
            return None;
        }
        let mut parts = text.split(|&b| b == b'-');
        let epoch = parse_base36(parts.next()?)?;
        let topics = parse_base36(parts.next()?)?;
        let user = match parts.next() {
            Some(p) => Some(parse_base36(p)?),
            None => None,
        };
        if parts.next().is_some() || epoch == 0 || epoch > u64::from(u32::MAX) {
            return None;
        }
        Some(Token { epoch: epoch as u32, topics, user })
    }
}

fn push_base36(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 13];
    let mut i = buf.len();
    loop {
        i -= 1;
        let d = (v % 36) as u8;
        buf[i] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn parse_base36(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 13 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'z' => b - b'a' + 10,
            _ => return None,
        };
        v = v.checked_mul(36)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// Per partition, the last sequence number this shard has handled (see the module docs).
#[derive(Default)]
pub struct Heard(Vec<u64>);

impl Heard {
    pub fn new(partitions: usize) -> Heard {
        Heard(vec![0; partitions])
    }
    pub fn get(&self, part: usize) -> u64 {
        self.0.get(part).copied().unwrap_or(0)
    }
    pub fn advance(&mut self, part: usize, seq: u64) {
        if let Some(h) = self.0.get_mut(part) {
            *h = (*h).max(seq);
        }
    }
}

/// The window limits of one log.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Age after which an entry leaves; 0: history off (nothing retained).
    pub ttl_ms: u64,
    /// Entries kept per stream.
    pub per_stream: usize,
    /// Bytes (payloads plus [`ENTRY_BYTES`] and [`STREAM_BYTES`]) this log may hold.
    pub bytes: usize,
}

/// Per topic prefix, messages kept per topic (longest prefix first; 0: none).
pub type TopicLimits = std::sync::Arc<[(String, usize)]>;

/// One numbered message in the log: 24 bytes; its payload is in the log's arena.
struct Entry {
    /// The stream's index key ([`Log::key`], never 0); 0: no message (a number of another
    /// partition, or one evicted before its time).
    key: u64,
    /// Where its payload starts in the arena (counted from the arena's first byte ever).
    off: u64,
    /// When it was numbered: microseconds of the shards' common clock. Microseconds, not
    /// milliseconds: a fresh connection's replay ([`Log::replay_from_time`]) must not take
    /// a message numbered in the same millisecond just before it connected.
    at_us: u64,
    /// Payload length; the top bit says it is text ([`TEXT`]).
    len: u32,
}

/// The bit of [`Entry::len`] that marks a UTF-8 payload.
const TEXT: u32 = 1 << 31;

impl Entry {
    fn live(&self) -> bool {
        self.key != 0
    }

    fn payload_len(&self) -> usize {
        (self.len & !TEXT) as usize
    }

    /// Age at `now_us` in milliseconds.
    fn age_ms(&self, now_us: u64) -> u64 {
        now_us.saturating_sub(self.at_us) / 1000
    }
}

struct Index {
    tag: u8,
    name: Box<str>,
    /// Sequence numbers of the stream's retained entries, ascending.
    seqs: VecDeque<u64>,
    /// The highest sequence of this stream evicted by its count bound.
    evicted_upto: u64,
    /// At or below this, entries of this stream may have left by age or the memory bound
    /// (at creation: the log's horizon, which older entries of the stream may have passed).
    aged_upto: u64,
}

/// What a replay found for a set of streams.
#[derive(Default, Debug)]
pub struct Replay {
    /// Messages after the position, in sequence order, with the stream each belongs to
    /// (an index into the streams asked for).
    pub messages: Vec<(usize, Arc<Message>)>,
    /// Streams that cannot be resumed, by index into the streams asked for.
    pub gaps: Vec<(usize, GapReason)>,
}

/// One partition's log. Lives on its shard; nothing here is shared.
pub struct Log {
    limits: Limits,
    topic_limits: TopicLimits,
    /// Per topic prefix without history, the last message numbered for one of its topics.
    off_last: Vec<u64>,
    keys: RandomState,
    /// The partition this log is, for the messages a replay rebuilds.
    part: u16,
    /// Sequence of `entries[0]`.
    first_seq: u64,
    /// The last sequence handed out (0: none yet).
    top: u64,
    entries: VecDeque<Entry>,
    /// The retained payloads, back to back in sequence order; `arena[0]` is byte
    /// `arena_base` of all ever appended. An entry evicted early leaves its bytes until the
    /// front passes them.
    arena: VecDeque<u8>,
    arena_base: u64,
    /// Arena bytes of entries evicted early (still held, counted against the bound).
    dead: usize,
    streams: HashMap<u64, Index>,
    /// Every entry at or below this left by age or the memory bound.
    expired_upto: u64,
    /// Entries of a stream whose index key another stream took (a hash collision) were
    /// dropped; resumes from below this with no index cannot be proven.
    collided_upto: u64,
    bytes: usize,
    retained: usize,
    /// The last broadcast numbered here: the one stream whose silence is cheap to prove.
    last_all: u64,
}

impl Log {
    pub fn new(limits: Limits) -> Log {
        Log::with_topics(limits, TopicLimits::from([]))
    }

    /// A log whose topics keep what their prefix says ([`TopicLimits`]).
    pub fn with_topics(limits: Limits, topic_limits: TopicLimits) -> Log {
        Log {
            limits,
            off_last: vec![0; topic_limits.len()],
            topic_limits,
            keys: RandomState::new(),
            part: 0,
            first_seq: 1,
            top: 0,
            entries: VecDeque::new(),
            arena: VecDeque::new(),
            arena_base: 0,
            dead: 0,
            streams: HashMap::new(),
            expired_upto: 0,
            collided_upto: 0,
            bytes: 0,
            retained: 0,
            last_all: 0,
        }
    }

    /// The log of partition `part` (the `part` of the messages its replays rebuild).
    pub fn in_part(mut self, part: u16) -> Log {
        self.part = part;
        self
    }

    /// The last sequence number handed out.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Continues the numbering of another process's log (a live upgrade): positions up to
    /// `top` stay valid, but their messages are not here, so a resume from below it is
    /// answered with a gap.
    pub fn continue_after(&mut self, top: u64) {
        if top > self.top && self.entries.is_empty() {
            self.top = top;
            self.first_seq = top + 1;
            self.expired_upto = top;
        }
    }

    /// Retains a message numbered by the cluster store ([`crate::cluster::store`]): its
    /// number is above the log's top (the numbers between belong to other partitions). One
    /// at or below the top is a repeat and is skipped; returns whether it was retained.
    pub fn retain_numbered(&mut self, stream: Stream<'_>, msg: &Arc<Message>, now_us: u64) -> bool {
        if msg.seq <= self.top {
            return false;
        }
        if self.entries.is_empty() {
            self.first_seq = msg.seq;
        }
        self.top = msg.seq;
        self.retain(stream, msg, now_us);
        true
    }

    /// Empties the log and continues after `top` (the cluster store's stream is a new one).
    pub fn restart_at(&mut self, top: u64) {
        *self = Log::with_topics(self.limits, self.topic_limits.clone()).in_part(self.part);
        self.continue_after(top);
    }

    /// The cluster store numbered up to `seq` and none of those are this partition's.
    pub fn advance_top(&mut self, seq: u64) {
        if seq > self.top {
            self.top = seq;
            if self.entries.is_empty() {
                self.first_seq = seq + 1;
            }
        }
    }

    /// Messages retained and the bytes they cost.
    pub fn usage(&self) -> (usize, usize) {
        (self.retained, self.bytes)
    }

    /// Messages kept for `stream`, and the index of its topic prefix if one matched.
    fn per_stream(&self, stream: Stream<'_>) -> (usize, Option<usize>) {
        let prefix = match stream {
            Stream::Topic(t) => {
                self.topic_limits.iter().position(|(p, _)| t.starts_with(p.as_str()))
            }
            _ => None,
        };
        (prefix.map_or(self.limits.per_stream, |i| self.topic_limits[i].1), prefix)
    }

    /// The index key of `stream`: never 0 (an entry's "no message").
    fn key(&self, stream: Stream<'_>) -> u64 {
        self.keys.hash_one((stream.tag(), stream.name())) | 1
    }

    /// The entry numbered `seq`, if the log holds that number.
    fn entry(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(seq.checked_sub(self.first_seq)? as usize)
    }

    /// The payload of a live entry.
    fn payload(&self, e: &Entry) -> Box<[u8]> {
        let start = (e.off - self.arena_base) as usize;
        self.arena.range(start..start + e.payload_len()).copied().collect()
    }

    /// A message rebuilt from an entry, for a replay.
    fn message(&self, seq: u64, e: &Entry) -> Arc<Message> {
        let payload = self.payload(e);
        Arc::new(Message { id: seq, seq, part: self.part, payload, text: e.len & TEXT != 0 })
    }

    /// Appends the next entry with its payload (the caller counts it).
    fn push_entry(&mut self, key: u64, at_us: u64, payload: &[u8], text: bool) {
        let off = self.arena_base + self.arena.len() as u64;
        self.arena.extend(payload.iter());
        let len = payload.len() as u32 | if text { TEXT } else { 0 };
        self.entries.push_back(Entry { key, off, at_us, len });
    }

    /// An entry without a message at the arena's end.
    fn hole(&self, now_us: u64) -> Entry {
        let off = self.arena_base + self.arena.len() as u64;
        Entry { key: 0, off, at_us: now_us, len: 0 }
    }

    /// Numbers the next message of `stream` and retains it when history is on. Returns the
    /// sequence number, which the caller stores in the message it delivers.
    pub fn next_seq(&mut self) -> u64 {
        self.top += 1;
        self.top
    }

    /// Retains `msg` (numbered `msg.seq` by [`Log::next_seq`], the log's latest) for
    /// `stream`, then trims the log to its limits.
    pub fn retain(&mut self, stream: Stream<'_>, msg: &Arc<Message>, now_us: u64) {
        debug_assert_eq!(msg.seq, self.top);
        if stream == Stream::All {
            self.last_all = msg.seq;
        }
        let (per_stream, prefix) = self.per_stream(stream);
        if per_stream == 0 {
            if let Some(i) = prefix {
                // This topic keeps no history: a resume from before it reports a gap.
                self.off_last[i] = msg.seq;
                return;
            }
        }
        if self.limits.ttl_ms == 0 || self.limits.per_stream == 0 {
            // History off: the log stays empty; its horizon moves with the numbers.
            self.first_seq = self.top + 1;
            self.expired_upto = self.top;
            return;
        }
        // Sequence numbers without an entry (none are, but keep the log dense).
        while self.first_seq + (self.entries.len() as u64) < msg.seq {
            self.entries.push_back(self.hole(now_us));
        }
        let key = self.key(stream);
        let horizon = self.expired_upto.max(self.collided_upto);
        let fresh = || Index {
            tag: stream.tag(),
            name: stream.name().into(),
            seqs: VecDeque::new(),
            evicted_upto: 0,
            aged_upto: horizon,
        };
        let index = self.streams.entry(key).or_insert_with(fresh);
        if index.tag != stream.tag() || &*index.name != stream.name() {
            // Another stream holds this key: drop its entries (resumes report a gap) and
            // take the key over.
            let taken = std::mem::replace(index, fresh());
            let upto = taken.seqs.back().copied().unwrap_or(0).max(taken.evicted_upto);
            self.collided_upto = self.collided_upto.max(upto);
            for seq in taken.seqs {
                self.drop_entry(seq);
            }
            self.bytes -= STREAM_BYTES;
        }
        let index = self.streams.get_mut(&key).expect("inserted above");
        let new_stream = index.seqs.is_empty();
        index.seqs.push_back(msg.seq);
        let over = (index.seqs.len() > per_stream).then(|| index.seqs.pop_front());
        if let Some(Some(old)) = over {
            index.evicted_upto = index.evicted_upto.max(old);
        }
        if new_stream {
            self.bytes += STREAM_BYTES;
        }
        self.push_entry(key, now_us, &msg.payload, msg.text);
        self.bytes += msg.payload.len() + ENTRY_BYTES;
        self.retained += 1;
        if let Some(Some(old)) = over {
            self.drop_entry(old);
        }
        self.trim(now_us);
    }

    /// Forgets the message of entry `seq` (its index slot is already gone); its payload
    /// bytes stay counted until the front of the arena passes them.
    fn drop_entry(&mut self, seq: u64) {
        let Some(i) = seq.checked_sub(self.first_seq) else { return };
        if let Some(e) = self.entries.get_mut(i as usize) {
            if e.live() {
                e.key = 0;
                self.bytes -= e.payload_len() + ENTRY_BYTES;
                self.dead += e.payload_len();
                self.retained -= 1;
            }
        }
    }

    /// Removes entries older than the window, and the oldest ones while over the memory
    /// bound; called on every append and once a second.
    pub fn trim(&mut self, now_us: u64) {
        while let Some(front) = self.entries.front() {
            let old = front.age_ms(now_us) >= self.limits.ttl_ms;
            let over = self.bytes + self.dead > self.limits.bytes;
            if !old && !over {
                break;
            }
            let e = self.entries.pop_front().expect("front exists");
            let seq = self.first_seq;
            self.first_seq += 1;
            self.expired_upto = seq;
            // Its payload is the arena's front.
            let freed = e.payload_len();
            self.arena.drain(..freed);
            self.arena_base += freed as u64;
            if !e.live() {
                self.dead -= freed;
            } else {
                self.bytes -= freed + ENTRY_BYTES;
                self.retained -= 1;
                if let Some(index) = self.streams.get_mut(&e.key) {
                    if index.seqs.front() == Some(&seq) {
                        index.seqs.pop_front();
                    }
                    index.aged_upto = seq;
                    if index.seqs.is_empty() {
                        self.streams.remove(&e.key);
                        self.bytes -= STREAM_BYTES;
                    }
                }
            }
        }
        if self.entries.is_empty() && self.entries.capacity() > 64 {
            self.entries.shrink_to_fit();
            self.arena.shrink_to_fit();
            self.streams.shrink_to_fit();
        }
    }

    /// The messages of `streams` numbered after `after_us`, in order, without gaps (for a
    /// connection that did not resume: what was published while it registered).
    pub fn replay_from_time(&self, streams: &[Stream<'_>], after_us: u64) -> Replay {
        let mut out = Replay::default();
        for (i, stream) in streams.iter().enumerate() {
            let key = self.key(*stream);
            let Some(index) = self
                .streams
                .get(&key)
                .filter(|x| x.tag == stream.tag() && &*x.name == stream.name())
            else {
                continue;
            };
            let recent = index
                .seqs
                .iter()
                .rev()
                .take_while(|&&seq| self.entry(seq).is_some_and(|e| e.at_us >= after_us));
            let mut found: Vec<_> = recent
                .filter_map(|&seq| {
                    let e = self.entry(seq).filter(|e| e.live())?;
                    Some((i, self.message(seq, e)))
                })
                .collect();
            found.reverse();
            out.messages.extend(found);
        }
        out.messages.sort_by_key(|(_, m)| m.seq);
        out
    }

    /// The messages of `streams` after `since`, in order, or a gap for each stream whose
    /// messages after `since` the log cannot prove it holds. `bytes_max` bounds the replay:
    /// past it every stream with messages reports [`GapReason::TooMany`] and none is sent.
    pub fn replay(&self, streams: &[Stream<'_>], since: u64, bytes_max: usize) -> Replay {
        let mut out = Replay::default();
        if since > self.top {
            out.gaps = (0..streams.len()).map(|i| (i, GapReason::Unknown)).collect();
            return out;
        }
        let mut bytes = 0;
        // Streams with messages after `since`, in the order asked.
        let mut with: Vec<usize> = Vec::new();
        for (i, stream) in streams.iter().enumerate() {
            let key = self.key(*stream);
            let index = self
                .streams
                .get(&key)
                .filter(|x| x.tag == stream.tag() && &*x.name == stream.name());
            if let (0, Some(p)) = self.per_stream(*stream) {
                if since < self.off_last[p] {
                    out.gaps.push((i, GapReason::Off));
                }
                continue;
            }
            let Some(index) = index else {
                // Nothing retained: fine if nothing after `since` could have left.
                let silent = *stream == Stream::All && self.last_all <= since;
                if !silent && (since < self.expired_upto || since < self.collided_upto) {
                    out.gaps.push((i, GapReason::Expired));
                }
                continue;
            };
            if since < index.aged_upto {
                out.gaps.push((i, GapReason::Expired));
                continue;
            }
            if since < index.evicted_upto {
                out.gaps.push((i, GapReason::TooMany));
                continue;
            }
            let start = index.seqs.partition_point(|&s| s <= since);
            for &seq in index.seqs.range(start..) {
                if let Some(e) = self.entry(seq).filter(|e| e.live()) {
                    bytes += e.payload_len();
                    if with.last() != Some(&i) {
                        with.push(i);
                    }
                    // Past the bound none is sent: no copies made for nothing.
                    if bytes <= bytes_max {
                        out.messages.push((i, self.message(seq, e)));
                    }
                }
            }
        }
        if bytes > bytes_max {
            out.gaps.extend(with.into_iter().map(|i| (i, GapReason::TooMany)));
            out.messages.clear();
        }
        out.messages.sort_by_key(|(_, m)| m.seq);
        out
    }
}

mod carry;

#[cfg(test)]
mod tests;
