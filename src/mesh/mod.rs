//! The mesh: one bounded SPSC ring per ordered pair of shards, plus doorbells.
//!
//! A shard that is about to sleep sets its `sleeping` flag, then looks at its inbound rings
//! once more; a sender that pushed to a ring reads the flag after the push and, only if it is
//! set, clears it and rings the target's doorbell (a MSG_RING completion on the target's
//! ring). The two SeqCst fences make sure one of them sees the other: either the sleeper sees
//! the message, or the sender sees the flag. No locks, no shared maps.
//!
//! Order across rings: each message carries a stamp from one counter the whole matrix
//! shares, taken when it is sent, so a message sent after another was answered (a publisher
//! that waited for its 202 before publishing on another admin connection, which another
//! shard accepted) has the larger stamp. [`MeshEnd::receive`] hands messages on in stamp
//! order, holding back any that an earlier one still in a ring may precede: without that,
//! the receiver could read the second sender's ring before the first's and number the later
//! publish first.
//!
//! In a cluster the matrix has one more participant after the shards: the bridge thread
//! (`crate::cluster`). It holds an ordinary [`MeshEnd`] (index = number of shards) and a
//! tiny ring of its own ([`bell::Bell`]) whose fd is its peer entry: shards ring it with the
//! same MSG_RING doorbell as any shard, and an eventfd registered on that ring wakes the
//! bridge's async runtime. Shards never route user traffic to the bridge by index
//! arithmetic: [`MeshEnd::shards`] counts shards only and [`MeshEnd::bridge`] names it.

pub mod bell;
pub mod spsc;

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::push::Msg;
use spsc::{Consumer, Producer};

/// What every shard may read of another: where to ring, and whether it sleeps.
pub struct Peer {
    /// The shard's ring fd, set once the shard has created its ring (-1 before).
    pub ring_fd: AtomicI32,
    pub sleeping: AtomicBool,
}

/// One shard's ends of the mesh.
pub struct MeshEnd {
    /// This participant's index: a shard's id, or the number of shards for the bridge.
    pub shard: usize,
    /// Shards in the matrix (the bridge, when present, is one more participant).
    shards: usize,
    peers: Arc<[Peer]>,
    /// The matrix's send counter: every message's stamp.
    clock: Arc<AtomicU64>,
    tx: Vec<Option<Producer<Stamped>>>,
    rx: Vec<Option<Consumer<Stamped>>>,
    /// Per sender: taken from its ring, not handed on yet; the first `ready[i]` of them may
    /// be ([`MeshEnd::receive`]).
    held: Vec<VecDeque<Stamped>>,
    ready: Vec<usize>,
    /// What this participant sent itself ([`MeshEnd::send_local`]).
    own: VecDeque<Stamped>,
    /// Messages waiting for room on a full ring, per target; at most `backlog_max` in total
    /// for droppable messages.
    backlog: Vec<VecDeque<Stamped>>,
    backlog_len: usize,
    backlog_max: usize,
    /// Targets pushed to since the last `doorbells` call.
    dirty: Vec<bool>,
    /// A drained backlog gave its room back since the last [`MeshEnd::gave_back`].
    gave_back: bool,
}

/// A message and its stamp (see the module's docs).
type Stamped = (u64, Msg);

/// Entries a drained backlog keeps room for. A burst (a connect wave on a cluster node
/// sends every user's `Online` to the bridge and its join to its home shard) can spill tens
/// of thousands of messages per target; the deque's capacity would stay at that peak for
/// the life of the process (40 B an entry, per shard and target), so a backlog that is
/// empty again gives back all but this much.
const BACKLOG_KEEP: usize = 256;

/// Builds the N×N matrix and returns each shard's end plus the shared peer table. With
/// `bridge`, the matrix is (N+1)×(N+1) and the last end returned is the bridge's.
pub fn build(
    shards: usize,
    ring_entries: usize,
    backlog_max: usize,
    bridge: bool,
) -> (Vec<MeshEnd>, Arc<[Peer]>) {
    let members = shards + bridge as usize;
    let peers: Arc<[Peer]> = (0..members)
        .map(|_| Peer { ring_fd: AtomicI32::new(-1), sleeping: AtomicBool::new(false) })
        .collect();
    let mut tx: Vec<Vec<Option<Producer<Stamped>>>> =
        (0..members).map(|_| (0..members).map(|_| None).collect()).collect();
    let mut rx: Vec<Vec<Option<Consumer<Stamped>>>> =
        (0..members).map(|_| (0..members).map(|_| None).collect()).collect();
    for from in 0..members {
        for to in 0..members {
            if from != to {
                let (p, c) = spsc::channel(ring_entries);
                tx[from][to] = Some(p);
                rx[to][from] = Some(c);
            }
        }
    }
    let clock = Arc::new(AtomicU64::new(0));
    let ends = tx
        .into_iter()
        .zip(rx)
        .enumerate()
        .map(|(shard, (tx, rx))| MeshEnd {
            shard,
            shards,
            peers: Arc::clone(&peers),
            clock: Arc::clone(&clock),
            tx,
            rx,
            held: (0..members).map(|_| VecDeque::new()).collect(),
            ready: vec![0; members],
            own: VecDeque::new(),
            backlog: (0..members).map(|_| VecDeque::new()).collect(),
            backlog_len: 0,
            backlog_max,
            dirty: vec![false; members],
            gave_back: false,
        })
        .collect();
    (ends, peers)
}

/// The outcome of [`MeshEnd::send`].
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The ring and the backlog were full and the message was a publish: dropped.
    Dropped,
}

impl MeshEnd {
    /// Shards in the matrix, not counting the bridge.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Participants a message can go to, by index: the shards, then the bridge if any.
    pub fn destinations(&self) -> usize {
        self.tx.len()
    }

    /// The bridge's index, when this process is a cluster node.
    pub fn bridge(&self) -> Option<usize> {
        (self.tx.len() > self.shards).then_some(self.shards)
    }

    /// Sends `msg` to shard `to` (never this shard). Keeps order per target: once anything
    /// waits in the backlog, later messages queue behind it.
    pub fn send(&mut self, to: usize, msg: Msg) -> Sent {
        assert_ne!(to, self.shard, "local work is not sent over the mesh");
        let msg = (self.stamp(), msg);
        self.dirty[to] = true;
        if self.backlog[to].is_empty() {
            let tx = self.tx[to].as_mut().expect("a ring to every other shard");
            match tx.push(msg) {
                Ok(()) => return Sent::Queued,
                Err(back) => return self.defer(to, back),
            }
        }
        self.defer(to, msg)
    }

    /// Queues `msg` for this participant itself: handed on by [`MeshEnd::receive`] in
    /// stamp order with what the rings bring.
    pub fn send_local(&mut self, msg: Msg) {
        let stamp = self.stamp();
        self.own.push_back((stamp, msg));
    }

    fn stamp(&self) -> u64 {
        // One counter for the matrix: its modification order follows happens-before, so a
        // send caused by an earlier one (through any channel) gets a larger stamp.
        self.clock.fetch_add(1, Ordering::AcqRel)
    }

    fn defer(&mut self, to: usize, msg: Stamped) -> Sent {
        if msg.1.is_droppable() && self.backlog_len >= self.backlog_max {
            return Sent::Dropped;
        }
        self.backlog[to].push_back(msg);
        self.backlog_len += 1;
        Sent::Queued
    }

    /// Moves backlog into rings that have room. Returns whether anything is still waiting.
    pub fn flush_backlog(&mut self) -> bool {
        for to in 0..self.tx.len() {
            while let Some(msg) = self.backlog[to].pop_front() {
                let tx = self.tx[to].as_mut().expect("backlog only for other shards");
                match tx.push(msg) {
                    Ok(()) => {
                        self.backlog_len -= 1;
                        self.dirty[to] = true;
                    }
                    Err(back) => {
                        self.backlog[to].push_front(back);
                        break;
                    }
                }
            }
            let backlog = &mut self.backlog[to];
            if backlog.is_empty() && backlog.capacity() > BACKLOG_KEEP {
                backlog.shrink_to(BACKLOG_KEEP);
                self.gave_back = true;
            }
        }
        self.backlog_len > 0
    }

    /// Whether a drained backlog gave its room back since the last call: the allocator has
    /// pages to return (`crate::sys::release_free_memory`).
    pub fn gave_back(&mut self) -> bool {
        std::mem::take(&mut self.gave_back)
    }

    /// Shard `to`'s ring fd (-1 before it has made its ring, or after it stopped).
    pub fn ring_fd(&self, to: usize) -> i32 {
        self.peers.get(to).map_or(-1, |p| p.ring_fd.load(Ordering::Acquire))
    }

    /// Rings shard `to`'s doorbell at the end of this turn if it sleeps, with no message:
    /// it looks at what the shards share (a handover's turn).
    pub fn wake(&mut self, to: usize) {
        self.dirty[to] = true;
    }

    /// Targets that need a doorbell: pushed to since the last call and asleep. Clears their
    /// sleeping flag so that only one sender rings.
    pub fn doorbells(&mut self, out: &mut Vec<i32>) {
        fence(Ordering::SeqCst);
        for to in 0..self.dirty.len() {
            if std::mem::take(&mut self.dirty[to]) {
                let peer = &self.peers[to];
                if peer.sleeping.load(Ordering::SeqCst)
                    && peer.sleeping.swap(false, Ordering::SeqCst)
                {
                    out.push(peer.ring_fd.load(Ordering::Acquire));
                }
            }
        }
    }

    /// Hands on inbound messages and this participant's own, in stamp order: at most `max`
    /// taken from rings and waiting, plus one more per ring.
    ///
    /// A message taken from one ring may be preceded by one another sender pushed before it
    /// that the first read of that other ring missed. So after taking what is there (round
    /// robin over senders), every ring is read once more, taking at most its first message:
    /// anything that precedes a message taken before this second read is, by then, taken or
    /// at the head of its ring, and so has a smaller stamp than the smallest of those heads,
    /// the frontier. Messages below the frontier go out in stamp order; the rest wait for the
    /// next call (the shard does not sleep while any wait).
    pub fn receive(&mut self, max: usize, out: &mut Vec<Msg>) {
        // What waited since the last call is ready: every ring has been read since.
        let mut taken = 0;
        for (ready, held) in self.ready.iter_mut().zip(&self.held) {
            *ready = held.len();
            taken += held.len();
        }
        let mut progress = true;
        while progress && taken < max {
            progress = false;
            for (from, rx) in self.rx.iter_mut().enumerate() {
                if taken >= max {
                    break;
                }
                if let Some(m) = rx.as_mut().and_then(Consumer::pop) {
                    self.held[from].push_back(m);
                    taken += 1;
                    progress = true;
                }
            }
        }
        let mut frontier = u64::MAX;
        for (from, rx) in self.rx.iter_mut().enumerate() {
            self.ready[from] = self.held[from].len();
            if let Some(m) = rx.as_mut().and_then(Consumer::pop) {
                frontier = frontier.min(m.0);
                self.held[from].push_back(m);
            }
        }
        loop {
            let own = self.own.front().map_or(u64::MAX, |m| m.0);
            let (from, stamp) = self
                .held
                .iter()
                .zip(&self.ready)
                .enumerate()
                .filter(|(_, (_, &ready))| ready > 0)
                .filter_map(|(i, (held, _))| Some((i, held.front()?.0)))
                .min_by_key(|&(_, stamp)| stamp)
                .unwrap_or((usize::MAX, u64::MAX));
            let next = own.min(stamp);
            if next >= frontier || next == u64::MAX {
                break;
            }
            let m = if own < stamp {
                self.own.pop_front()
            } else {
                self.ready[from] -= 1;
                self.held[from].pop_front()
            };
            out.extend(m.map(|(_, m)| m));
        }
    }

    /// Whether messages wait in this end (taken from rings or sent to itself).
    fn holds(&self) -> bool {
        !self.own.is_empty() || self.held.iter().any(|h| !h.is_empty())
    }

    /// Whether a ring holds a message not yet taken (an acquire load per ring).
    pub fn inbound(&self) -> bool {
        self.rx.iter().flatten().any(|rx| !rx.is_empty())
    }

    /// Announces that this shard is about to sleep; returns false (and withdraws the
    /// announcement) if a message arrived meanwhile, in which case it must not sleep.
    pub fn prepare_sleep(&mut self) -> bool {
        let me = &self.peers[self.shard];
        me.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.holds() || self.inbound() {
            me.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Called after waking, for whatever reason.
    pub fn awake(&mut self) {
        self.peers[self.shard].sleeping.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(seq: u64) -> Msg {
        Msg::Top { part: 0, seq }
    }

    fn seqs(out: &[Msg]) -> Vec<u64> {
        out.iter().map(|m| if let Msg::Top { seq, .. } = m { *seq } else { 0 }).collect()
    }

    /// Everything waiting, handed on over as many calls as it takes (bounded).
    fn receive_all(end: &mut MeshEnd, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for _ in 0..100 {
            end.receive(max, &mut out);
            if !end.holds() && end.rx.iter().flatten().all(Consumer::is_empty) {
                break;
            }
        }
        seqs(&out)
    }

    #[test]
    fn messages_from_several_senders_go_on_in_the_order_they_were_sent() {
        let (mut ends, _) = build(3, 8, 16, false);
        // Shard 2 sends first, then shard 1, then shard 0 to itself, then shard 2 again: a
        // round robin over the rings (shard 1's before shard 2's) would swap the first two.
        ends[2].send(0, top(1));
        ends[1].send(0, top(2));
        ends[0].send_local(top(3));
        ends[2].send(0, top(4));
        ends[1].send(0, top(5));
        assert_eq!(receive_all(&mut ends[0], 64), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_message_waits_while_one_sent_before_it_is_still_in_a_ring() {
        let (mut ends, _) = build(3, 8, 16, false);
        ends[2].send(0, top(1));
        ends[1].send(0, top(2));
        ends[1].send(0, top(3));
        // Room for one: shard 1's first is taken, and the second read finds shard 2's
        // earlier message at the head of its ring: nothing may go on yet.
        let mut out = Vec::new();
        ends[0].receive(1, &mut out);
        assert!(out.is_empty(), "{:?}", seqs(&out));
        assert!(!ends[0].prepare_sleep(), "does not sleep on messages it holds");
        ends[0].awake();
        assert_eq!(receive_all(&mut ends[0], 1), [1, 2, 3]);
        assert!(ends[0].prepare_sleep());
    }

    #[test]
    fn a_drained_backlog_gives_back_the_room_a_burst_took() {
        let (mut ends, _) = build(2, 8, 16, false);
        // Non-droppable messages spill past `backlog_max` without limit.
        let burst = 20 * BACKLOG_KEEP as u64;
        for seq in 0..burst {
            assert_eq!(ends[0].send(1, Msg::Offline(format!("u{seq}").into())), Sent::Queued);
        }
        assert!(ends[0].backlog[1].capacity() >= burst as usize - 8);
        let mut got = 0;
        for _ in 0..burst {
            let waiting = ends[0].flush_backlog();
            let mut out = Vec::new();
            ends[1].receive(usize::MAX, &mut out);
            got += out.len();
            if !waiting {
                break;
            }
        }
        let mut out = Vec::new();
        ends[1].receive(usize::MAX, &mut out);
        got += out.len();
        assert_eq!(got, burst as usize, "every message arrived");
        assert!(ends[0].backlog[1].is_empty());
        assert!(ends[0].backlog[1].capacity() <= BACKLOG_KEEP, "{}", ends[0].backlog[1].capacity());
        assert!(ends[0].gave_back() && !ends[0].gave_back(), "said once");
    }
}
