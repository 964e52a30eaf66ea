//! The mesh: one bounded SPSC ring per ordered pair of shards, plus doorbells.
//!
//! A shard that is about to sleep sets its `sleeping` flag, then looks at its inbound rings
//! once more; a sender that pushed to a ring reads the flag after the push and, only if it is
//! set, clears it and rings the target's doorbell (a MSG_RING completion on the target's
//! ring). The two SeqCst fences make sure one of them sees the other: either the sleeper sees
//! the message, or the sender sees the flag. No locks, no shared maps.
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
use std::sync::atomic::{fence, AtomicBool, AtomicI32, Ordering};
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
    tx: Vec<Option<Producer<Msg>>>,
    rx: Vec<Option<Consumer<Msg>>>,
    /// Messages waiting for room on a full ring, per target; at most `backlog_max` in total
    /// for droppable messages.
    backlog: Vec<VecDeque<Msg>>,
    backlog_len: usize,
    backlog_max: usize,
    /// Targets pushed to since the last `doorbells` call.
    dirty: Vec<bool>,
}

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
    let mut tx: Vec<Vec<Option<Producer<Msg>>>> =
        (0..members).map(|_| (0..members).map(|_| None).collect()).collect();
    let mut rx: Vec<Vec<Option<Consumer<Msg>>>> =
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
    let ends = tx
        .into_iter()
        .zip(rx)
        .enumerate()
        .map(|(shard, (tx, rx))| MeshEnd {
            shard,
            shards,
            peers: Arc::clone(&peers),
            tx,
            rx,
            backlog: (0..members).map(|_| VecDeque::new()).collect(),
            backlog_len: 0,
            backlog_max,
            dirty: vec![false; members],
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

    fn defer(&mut self, to: usize, msg: Msg) -> Sent {
        if msg.is_droppable() && self.backlog_len >= self.backlog_max {
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
        }
        self.backlog_len > 0
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

    /// Takes up to `max` inbound messages, round robin over senders.
    pub fn receive(&mut self, max: usize, out: &mut Vec<Msg>) {
        let mut taken = 0;
        let mut progress = true;
        while progress && taken < max {
            progress = false;
            for rx in self.rx.iter_mut().flatten() {
                if let Some(m) = rx.pop() {
                    out.push(m);
                    taken += 1;
                    progress = true;
                }
            }
        }
    }

    /// Announces that this shard is about to sleep; returns false (and withdraws the
    /// announcement) if a message arrived meanwhile, in which case it must not sleep.
    pub fn prepare_sleep(&mut self) -> bool {
        let me = &self.peers[self.shard];
        me.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.rx.iter().flatten().any(|rx| !rx.is_empty()) {
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
