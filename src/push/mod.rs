//! Routing of publishes without shared state.
//!
//! - A user's home shard is a fixed hash of the user id. Connection shards tell the home
//!   shard where the user's connections live ([`Msg::UserAdd`] / [`Msg::UserRemove`]); a
//!   publish to the user goes to the home shard, which forwards it to the owning shards.
//! - Topic and broadcast publishes go to every shard; each delivers to its local subscribers.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::registry::ConnId;

/// One published message, shared by every shard that delivers it.
#[derive(Debug)]
pub struct Message {
    /// Unique per process: the accepting shard's sequence × shards + its index. Used as the
    /// SSE event id.
    pub id: u64,
    pub payload: Box<[u8]>,
    /// Valid UTF-8: sent as a WebSocket text frame, else binary.
    pub text: bool,
}

/// What one shard asks of another over the mesh.
#[derive(Debug)]
pub enum Msg {
    /// To the user's home shard: `conn` now serves `user`.
    UserAdd { user: Box<str>, conn: ConnId },
    /// To the user's home shard: `conn` no longer serves `user`.
    UserRemove { user: Box<str>, conn: ConnId },
    /// To the user's home shard: deliver to every connection of `user`.
    PublishUser { user: Box<str>, msg: Arc<Message> },
    /// To the owning shard: deliver to these connections.
    Deliver { conns: Vec<ConnId>, msg: Arc<Message> },
    /// To every shard: deliver to local subscribers of `topic`.
    PublishTopic { topic: Box<str>, msg: Arc<Message> },
    /// To every shard: deliver to every local client connection.
    PublishAll { msg: Arc<Message> },
}

impl Msg {
    /// Publishes may be dropped (and counted) when a mesh backlog is full; registry updates
    /// may not, or the home shard's index would go wrong.
    pub fn is_droppable(&self) -> bool {
        !matches!(self, Msg::UserAdd { .. } | Msg::UserRemove { .. })
    }
}

/// The home shard of a user: a fixed hash (SipHash with zero keys) so every shard agrees.
pub fn home_shard(user: &str, shards: usize) -> usize {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    user.hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

/// On a user's home shard: where the user's connections live.
///
/// Most users hold one connection, so one id is stored inline and a list is allocated only
/// for the second.
#[derive(Default)]
pub struct UserIndex {
    users: HashMap<Box<str>, Conns>,
}

enum Conns {
    One(ConnId),
    /// Two or more.
    Many(Vec<ConnId>),
}

impl UserIndex {
    pub fn add(&mut self, user: Box<str>, conn: ConnId) {
        match self.users.get_mut(&user) {
            None => {
                self.users.insert(user, Conns::One(conn));
            }
            Some(Conns::One(first)) => {
                let first = *first;
                self.users.insert(user, Conns::Many(vec![first, conn]));
            }
            Some(Conns::Many(list)) => list.push(conn),
        }
    }

    pub fn remove(&mut self, user: &str, conn: ConnId) {
        let empty = match self.users.get_mut(user) {
            None => false,
            Some(Conns::One(c)) => *c == conn,
            Some(Conns::Many(list)) => {
                list.retain(|c| *c != conn);
                if let [last] = list[..] {
                    self.users.insert(user.into(), Conns::One(last));
                }
                false
            }
        };
        if empty {
            self.users.remove(user);
        }
    }

    pub fn connections(&self, user: &str) -> &[ConnId] {
        match self.users.get(user) {
            None => &[],
            Some(Conns::One(c)) => std::slice::from_ref(c),
            Some(Conns::Many(list)) => list,
        }
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }
}

/// On every shard: local subscribers per topic, as (slot, generation).
///
/// Removal is lazy: a closed connection leaves its entry behind and the entry is skipped at
/// delivery (its generation no longer matches) and swept once stale entries are half the list,
/// so closing a million subscribers is linear, not quadratic.
#[derive(Default)]
pub struct TopicIndex {
    topics: HashMap<Box<str>, TopicSubs>,
}

#[derive(Default)]
struct TopicSubs {
    subs: Vec<(u32, u32)>,
    /// 0 <= stale <= subs.len()
    stale: usize,
}

impl TopicIndex {
    pub fn subscribe(&mut self, topic: &str, slot: u32, generation: u32) {
        match self.topics.get_mut(topic) {
            Some(t) => t.subs.push((slot, generation)),
            None => {
                let subs = vec![(slot, generation)];
                self.topics.insert(topic.into(), TopicSubs { subs, stale: 0 });
            }
        }
    }

    /// Removes a live connection's entry at once (an explicit unsubscribe, which is rare), so
    /// a later re-subscribe cannot leave two entries that both look live.
    pub fn unsubscribe(&mut self, topic: &str, slot: u32, generation: u32) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        t.subs.retain(|&e| e != (slot, generation));
        t.stale = t.stale.min(t.subs.len());
        if t.subs.is_empty() {
            self.topics.remove(topic);
        }
    }

    /// Marks one entry of `topic` stale after its connection closed; sweeps with `live` when half the list is stale.
    pub fn forget(&mut self, topic: &str, live: impl Fn(u32, u32) -> bool) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        t.stale += 1;
        if t.stale * 2 >= t.subs.len() {
            t.subs.retain(|&(s, g)| live(s, g));
            t.stale = 0;
            if t.subs.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    pub fn subscribers(&self, topic: &str) -> &[(u32, u32)] {
        self.topics.get(topic).map(|t| t.subs.as_slice()).unwrap_or(&[])
    }

    pub fn topics(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_shard_is_stable_and_in_range() {
        for n in 1..8 {
            let h = home_shard("alice", n);
            assert!(h < n);
            assert_eq!(h, home_shard("alice", n));
        }
        let spread: std::collections::HashSet<_> =
            (0..100).map(|i| home_shard(&format!("u{i}"), 4)).collect();
        assert_eq!(spread.len(), 4, "users spread over every shard");
    }

    #[test]
    fn user_index_tracks_connections() {
        let mut idx = UserIndex::default();
        let c1 = ConnId { shard: 0, slot: 1, generation: 1 };
        let c2 = ConnId { shard: 1, slot: 1, generation: 7 };
        idx.add("u".into(), c1);
        assert_eq!(idx.connections("u"), &[c1]);
        idx.add("u".into(), c2);
        assert_eq!(idx.connections("u"), &[c1, c2]);
        idx.remove("u", c1);
        assert_eq!(idx.connections("u"), &[c2]);
        idx.remove("u", c2);
        assert_eq!(idx.users(), 0);
    }

    #[test]
    fn topic_index_sweeps_stale_entries() {
        let mut t = TopicIndex::default();
        for s in 0..4 {
            t.subscribe("news", s, 1);
        }
        // Slots 0 and 1 close; the second forget reaches half and sweeps.
        t.forget("news", |s, _| s >= 1);
        assert_eq!(t.subscribers("news").len(), 4);
        t.forget("news", |s, _| s >= 2);
        assert_eq!(t.subscribers("news"), &[(2, 1), (3, 1)]);
        t.forget("news", |_, _| false);
        assert_eq!(t.topics(), 0);
    }
}
