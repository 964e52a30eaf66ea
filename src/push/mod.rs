//! Routing of publishes without shared state.
//!
//! - A user's home shard is a fixed hash of the user id. Connection shards tell the home
//!   shard where the user's connections live ([`Msg::UserAdd`] / [`Msg::UserRemove`]); a
//!   publish to the user goes to the home shard, which forwards it to the owning shards.
//! - Topic and broadcast publishes go to every shard; each delivers to its local subscribers.
//! - On a cluster node, the mesh has one more participant, the bridge (`crate::cluster`):
//!   a user's home shard tells it [`Msg::Online`] / [`Msg::Offline`] when the user's first
//!   connection on this node is indexed and when its last one leaves, and every shard
//!   answers the bridge's [`Msg::RegistryWalk`] with the users of its connections
//!   ([`Msg::RegistryNames`]), so the bridge keeps no per-user state; the accepting shard hands it every publish, and
//!   it injects publishes from other nodes as [`Msg::PublishUser`], [`Msg::PublishTopic`] and
//!   [`Msg::PublishAll`] like any shard.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;

use crate::registry::ConnId;

/// One published message, shared by every shard that delivers it.
#[derive(Debug)]
pub struct Message {
    /// Unique per process: the accepting shard's sequence × shards + its index. Used as the
    /// SSE event id.
    pub id: u64,
    /// Position in its partition's log ([`crate::history`]); 0 until the partition numbers it.
    pub seq: u64,
    /// The partition (shard) that numbers it.
    pub part: u16,
    pub payload: Box<[u8]>,
    /// Valid UTF-8: sent as a WebSocket text frame, else binary.
    pub text: bool,
}

/// What one shard asks of another over the mesh.
#[derive(Debug)]
pub enum Msg {
    /// A live upgrade's barrier: everything this shard sent before it has been handled
    /// once it arrives (`crate::shard::handover`).
    /// `attempt` numbers the handover, so a fence left from a failed one is not counted.
    Fence { round: u8, attempt: u32 },
    /// To the user's home shard: `conn` now serves the user; replay what it missed.
    UserAdd(Box<UserAdd>),
    /// To the user's home shard: `conn` no longer serves the user.
    UserRemove { user: u64, conn: ConnId },
    /// The same on a cluster node, with the name the bridge needs when it was the user's
    /// last connection here ([`Msg::Offline`]).
    UserLeave(Box<UserLeave>),
    /// To the user's home shard: deliver to every connection of `user`.
    PublishUser(Box<PublishUser>),
    /// To the owning shard: deliver to these connections.
    Deliver(Box<Deliver>),
    /// A live upgrade's new process, from its sequencer: a topic message or a broadcast for
    /// the connections this process accepted itself (`crate::shard::handover`).
    ToNatives(Box<ToNatives>),
    /// To every shard: deliver to local subscribers of `topic`.
    PublishTopic { topic: Box<str>, msg: Arc<Message> },
    /// To every shard: deliver to every local client connection.
    PublishAll { msg: Arc<Message> },
    /// To every shard: start a paced drain at this many connections per second in all.
    Drain { rate_per_s: u32 },
    /// To the owning shard: the user of `conn` is over `conns_per_user_max`; close it.
    Evict { conn: ConnId },
    /// From a partition to every shard: its log's top, so idle positions advance. From the
    /// cluster bridge to the partition itself: the store numbered up to `seq`, and none of
    /// those since the last message it sent is the partition's.
    Top { part: u16, seq: u64 },
    /// From the cluster bridge at startup, to the message's partition: a message the store
    /// held before this node started, kept in the log for replays and delivered to nobody.
    Backfill(Box<Backfill>),
    /// From the cluster bridge to every shard: the history store's stream is another
    /// (`crate::cluster::store`): positions now have this epoch and start at `top`; the
    /// store's messages up to `backfill_end` come as backfill.
    Epoch { epoch: u32, top: u64, backfill_end: u64 },
    /// To the [`crate::history::SEQUENCER`]: replay the broadcast stream and these topics
    /// after `since` to `conn`, which subscribes to them when the answer arrives.
    Replay(Box<Replay>),
    /// A partition's answer to [`Msg::UserAdd`] or [`Msg::Replay`].
    Replayed(Box<Replayed>),
    /// From the user's home shard to the cluster bridge: the user's first connection on this
    /// node is indexed.
    Online(Box<str>),
    /// From the user's home shard to the cluster bridge: the user's last connection on this
    /// node left.
    Offline(Box<str>),
    /// From the cluster bridge to a shard: the users of your connections in the slots from
    /// `from` on (the registry's refresh, `crate::cluster::registry`).
    RegistryWalk { from: u32 },
    /// The answer to [`Msg::RegistryWalk`].
    RegistryNames(Box<RegistryNames>),
    /// To the user's home shard: do this to every connection of the user.
    UserCommand(Box<UserCommand>),
    /// To a shard holding some of the user's connections: do this to these.
    ConnCommand(Box<ConnCommand>),
    /// To the shards that know: how many connections these users have, how many subscribe
    /// to this topic (`GET /presence`).
    PresenceAsk(Box<PresenceAsk>),
    /// The answer, to the shard holding the request.
    PresenceAnswer(Box<PresenceAnswer>),
    /// From the cluster bridge to the shard holding the request: what the other nodes
    /// answered to its [`Msg::PresenceAsk`] (`crate::cluster::presence`).
    PresenceNodes(Box<PresenceNodes>),
    /// To the user's home shard: take over this connection, moved here after its request
    /// head so that the user's publishes do not cross the mesh (`crate::shard::placement`).
    Adopt(Box<Adopt>),
    /// Several of the above for one participant, in order: what one batch of publishes
    /// (`POST /publish/batch`) sends it, as one mesh message.
    Batch(Box<Vec<Msg>>),
}

/// See [`Msg::Adopt`]: a client connection whose request head has been read and not yet
/// answered.
pub struct Adopt {
    /// Its slot in the receiving shard's fixed-file table (placed there by MSG_RING).
    pub fd: u32,
    /// Milliseconds since its accept, for the handshake deadline.
    pub waited_ms: u64,
    /// Its listener agrees to permessage-deflate.
    pub compress: bool,
    /// The plaintext received so far: the whole request head, and anything after it.
    pub bytes: Box<[u8]>,
    /// Its TLS session, established, on a TLS listener.
    pub tls: Option<Box<crate::tls::Session>>,
    /// TLS records the handshake still owes the client, to send before anything else.
    pub tls_out: Vec<u8>,
}

impl std::fmt::Debug for Adopt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adopt")
            .field("fd", &self.fd)
            .field("bytes", &self.bytes.len())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// See [`Msg::UserAdd`].
#[derive(Debug, Clone)]
pub struct UserAdd {
    /// The user's [`UserKeys::hash`].
    pub user: u64,
    pub name: Box<str>,
    pub conn: ConnId,
    /// Replay the user's messages after this sequence of the home partition...
    pub since: u64,
    /// ...or, for a connection that did not resume, those numbered after this time (µs of
    /// the shards' common clock): what was published while it was registering.
    pub fresh: Option<u64>,
}

/// See [`Msg::UserLeave`].
#[derive(Debug)]
pub struct UserLeave {
    pub user: u64,
    pub name: Box<str>,
    pub conn: ConnId,
}

/// See [`Msg::RegistryNames`].
#[derive(Debug, Default)]
pub struct RegistryNames {
    pub shard: u16,
    /// The step's first slot, as asked.
    pub from: u32,
    /// Where the walk goes on; `None`: this shard's slots are done.
    pub next: Option<u32>,
    /// The users of the connections in the slots walked (a user with several connections
    /// may appear more than once).
    pub names: Vec<Box<str>>,
}

/// See [`Msg::Backfill`].
#[derive(Debug)]
pub struct Backfill {
    pub stream: Backfilled,
    /// How long before it reached this node the store had it.
    pub age_ms: u64,
    pub msg: Arc<Message>,
}

/// The stream of a [`Backfill`].
#[derive(Debug)]
pub enum Backfilled {
    User(Box<str>),
    Topic(Box<str>),
    All,
}

/// See [`Msg::Replay`].
#[derive(Debug, Clone)]
pub struct Replay {
    pub conn: ConnId,
    pub topics: Vec<Box<str>>,
    pub since: u64,
}

/// See [`Msg::Replayed`]. Stream indexes: 0 for the user ([`Msg::UserAdd`]); 0 for the
/// broadcast stream, 1 + i for topic i ([`Msg::Replay`]).
#[derive(Debug)]
pub struct Replayed {
    pub conn: ConnId,
    pub part: u16,
    /// Answers [`Msg::UserAdd`] (else [`Msg::Replay`]).
    pub for_user: bool,
    /// The partition's top when it answered: everything up to it is in this answer or
    /// was sent before it.
    pub top: u64,
    pub messages: Vec<(u16, Arc<Message>)>,
    pub gaps: Vec<(u16, crate::history::GapReason)>,
}

/// What the backend does to a user's connections (`crate::shard::command`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Close them, telling the client not to reconnect; refuse the user's handshakes until
    /// `ban_until_s` (Unix seconds; 0: no ban).
    Disconnect {
        reason: Box<str>,
        ban_until_s: u64,
    },
    Subscribe(Box<str>),
    Unsubscribe(Box<str>),
}

impl Command {
    /// The bus form of a command for `user` (`c10m.cmd`).
    pub fn to_json(&self, user: &str) -> String {
        let v = match self {
            Command::Disconnect { reason, ban_until_s } => serde_json::json!({
                "user": user, "cmd": "disconnect", "reason": &**reason, "ban_until_s": ban_until_s,
            }),
            Command::Subscribe(t) => {
                serde_json::json!({ "user": user, "cmd": "subscribe", "topic": &**t })
            }
            Command::Unsubscribe(t) => {
                serde_json::json!({ "user": user, "cmd": "unsubscribe", "topic": &**t })
            }
        };
        v.to_string()
    }

    /// Reads the bus form: the user and the command, or why not. A backend may give
    /// `ban_s` (seconds from now) instead of `ban_until_s`.
    pub fn from_json(bytes: &[u8], now_unix_s: u64) -> Result<(String, Command), String> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let text = |k: &str| v.get(k).and_then(|x| x.as_str());
        let name_ok = |s: &&str| !s.is_empty() && s.len() <= 256;
        let user = text("user").filter(name_ok).ok_or("user: a name of 1..=256 bytes")?;
        let topic =
            || text("topic").filter(name_ok).map(Box::from).ok_or("topic: a name of 1..=256 bytes");
        let cmd = match text("cmd") {
            Some("disconnect") => {
                let reason = text("reason").unwrap_or_default();
                let odd = reason.chars().any(|c| c.is_control() || c == '"' || c == '\\');
                if reason.len() > 64 || odd {
                    return Err("reason: at most 64 bytes, no quotes, backslashes or control \
                                characters"
                        .into());
                }
                let ban_s = v.get("ban_s").and_then(|x| x.as_u64()).unwrap_or(0).min(30 * 86_400);
                let until = v.get("ban_until_s").and_then(|x| x.as_u64());
                let ban_until_s = until.unwrap_or(if ban_s > 0 { now_unix_s + ban_s } else { 0 });
                Command::Disconnect { reason: reason.into(), ban_until_s }
            }
            Some("subscribe") => Command::Subscribe(topic()?),
            Some("unsubscribe") => Command::Unsubscribe(topic()?),
            _ => return Err("cmd: disconnect, subscribe or unsubscribe".into()),
        };
        Ok((user.to_owned(), cmd))
    }
}

/// See [`Msg::PresenceAsk`].
#[derive(Debug)]
pub struct PresenceAsk {
    pub reply_to: u16,
    pub query: u64,
    /// Users whose home is the asked shard: hash and name.
    pub users: Vec<(u64, Box<str>)>,
    pub topic: Option<Box<str>>,
}

/// See [`Msg::PresenceAnswer`].
#[derive(Debug)]
pub struct PresenceAnswer {
    pub query: u64,
    /// Connections per asked user.
    pub users: Vec<(Box<str>, u32)>,
    /// Live local subscribers of the asked topic.
    pub subscribers: u64,
}

/// See [`Msg::PresenceNodes`].
#[derive(Debug, Default)]
pub struct PresenceNodes {
    pub query: u64,
    /// The other nodes that answered before the deadline.
    pub nodes: Vec<NodePresence>,
    /// Nodes alive by their heartbeats when the request left, this one included (at least 1).
    pub expected: u32,
}

/// One node's answer to a cluster presence request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodePresence {
    pub node: Box<str>,
    /// Connections on that node of the asked users that have any there.
    pub users: Vec<(Box<str>, u32)>,
    /// Live subscribers of the asked topic on that node.
    pub subscribers: u64,
}

/// See [`Msg::UserCommand`].
#[derive(Debug)]
pub struct UserCommand {
    /// The user's [`UserKeys::hash`].
    pub user: u64,
    pub name: Box<str>,
    pub cmd: Command,
}

/// See [`Msg::ConnCommand`]: only connections that serve `name` are touched.
#[derive(Debug)]
pub struct ConnCommand {
    pub conns: Vec<ConnId>,
    pub name: Box<str>,
    pub cmd: Command,
}

/// See [`Msg::PublishUser`]; boxed so that every mesh slot stays small.
#[derive(Debug)]
pub struct PublishUser {
    pub user: Box<str>,
    pub hash: u64,
    pub msg: Arc<Message>,
}

/// See [`Msg::Deliver`]. When `user` is set, only connections that serve that user receive
/// it: the home index is keyed by hash, and this makes a hash collision harmless.
#[derive(Debug)]
pub struct Deliver {
    pub conns: Vec<ConnId>,
    pub user: Option<Box<str>>,
    pub msg: Arc<Message>,
    /// A live upgrade's new process: only to connections it accepted itself
    /// (`crate::shard::handover`).
    pub natives: bool,
}

/// See [`Msg::ToNatives`].
#[derive(Debug)]
pub struct ToNatives {
    /// None: a broadcast.
    pub topic: Option<Box<str>>,
    pub msg: Arc<Message>,
}

/// Mesh rings hold messages inline: keep them within half a cache line.
const _: () = assert!(std::mem::size_of::<Msg>() <= 32);

impl Msg {
    /// The messages this stands for: 1, or a batch's.
    pub fn count(&self) -> u64 {
        match self {
            Msg::Batch(msgs) => msgs.len() as u64,
            _ => 1,
        }
    }

    /// Publishes may be dropped (and counted) when a mesh backlog is full; registry updates
    /// may not, or the home shard's index would go wrong.
    pub fn is_droppable(&self) -> bool {
        if let Msg::Batch(msgs) = self {
            return msgs.iter().all(Msg::is_droppable);
        }
        !matches!(
            self,
            Msg::UserAdd(_)
                | Msg::UserRemove { .. }
                | Msg::UserLeave(_)
                | Msg::Replay(_)
                | Msg::Replayed(_)
                | Msg::Drain { .. }
                | Msg::Evict { .. }
                | Msg::Online(_)
                | Msg::Offline(_)
                | Msg::UserCommand(_)
                | Msg::ConnCommand(_)
                | Msg::PresenceAsk(_)
                | Msg::PresenceAnswer(_)
                | Msg::PresenceNodes(_)
                | Msg::Fence { .. }
                | Msg::Adopt(_)
        )
    }
}

/// The process-wide keyed hash of user ids: every shard uses the same keys, chosen at random
/// at start, so shards agree on home shards and peers cannot aim collisions at one bucket.
/// The keys can be read and given to another process (a live upgrade keeps home shards and
/// history positions), so they are two words fed to SipHash before the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserKeys(pub u64, pub u64);

impl Default for UserKeys {
    fn default() -> UserKeys {
        let r = RandomState::new();
        UserKeys(r.hash_one(0x5eed_u64), r.hash_one(0xc10_u64))
    }
}

impl UserKeys {
    pub fn hash(&self, user: &str) -> u64 {
        use std::hash::Hash;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u64(self.0);
        h.write_u64(self.1);
        user.hash(&mut h);
        h.finish()
    }
}

/// The home shard of a user, from its [`UserKeys::hash`].
pub fn home_shard(user_hash: u64, shards: usize) -> usize {
    (user_hash % shards.max(1) as u64) as usize
}

/// On a user's home shard: where the user's connections live, keyed by the user's hash.
///
/// An idle user costs one table entry of 24 bytes: the hash and one packed connection id
/// inline; a list is allocated only for a second connection. Names are not stored here
/// (the owning shard checks them at delivery), which keeps the table dense.
#[derive(Default)]
pub struct UserIndex {
    users: HashMap<u64, Conns, BuildHasherDefault<HashIsKey>>,
}

/// Hashes a key that already is a keyed hash: passes it through.
#[derive(Default)]
pub struct HashIsKey(u64);

impl Hasher for HashIsKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

enum Conns {
    One(u64),
    /// Two or more packed ids. Boxed so the enum stays 16 bytes: the common case is `One`.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<u64>>),
}

impl UserIndex {
    /// Returns whether it is the user's first connection in the index.
    pub fn add(&mut self, user: u64, conn: ConnId) -> bool {
        let id = conn.pack();
        match self.users.get_mut(&user) {
            None => {
                self.users.insert(user, Conns::One(id));
                return true;
            }
            Some(Conns::One(first)) => {
                let first = *first;
                self.users.insert(user, Conns::Many(Box::new(vec![first, id])));
            }
            Some(Conns::Many(list)) => list.push(id),
        }
        false
    }

    /// Returns whether it was the user's last connection in the index.
    pub fn remove(&mut self, user: u64, conn: ConnId) -> bool {
        let id = conn.pack();
        let empty = match self.users.get_mut(&user) {
            None => false,
            Some(Conns::One(c)) => *c == id,
            Some(Conns::Many(list)) => {
                list.retain(|c| *c != id);
                if let [last] = list[..] {
                    self.users.insert(user, Conns::One(last));
                }
                false
            }
        };
        if empty {
            self.users.remove(&user);
        }
        empty
    }

    /// Appends the connections of `user` to `out`.
    pub fn connections(&self, user: u64, out: &mut Vec<ConnId>) {
        match self.users.get(&user) {
            None => {}
            Some(Conns::One(c)) => out.push(ConnId::unpack(*c)),
            Some(Conns::Many(list)) => out.extend(list.iter().map(|&c| ConnId::unpack(c))),
        }
    }

    /// Connections of `user` in the index.
    pub fn count(&self, user: u64) -> usize {
        match self.users.get(&user) {
            None => 0,
            Some(Conns::One(_)) => 1,
            Some(Conns::Many(list)) => list.len(),
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

    /// Live subscribers of `topic` (its list less the entries of closed connections).
    pub fn count(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |t| t.subs.len().saturating_sub(t.stale))
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
        let keys = UserKeys::default();
        let copy = keys;
        for n in 1..8 {
            let h = home_shard(keys.hash("alice"), n);
            assert!(h < n);
            assert_eq!(h, home_shard(copy.hash("alice"), n), "every shard agrees");
        }
        let spread: std::collections::HashSet<_> =
            (0..100).map(|i| home_shard(keys.hash(&format!("u{i}")), 4)).collect();
        assert_eq!(spread.len(), 4, "users spread over every shard");
    }

    #[test]
    fn user_index_tracks_connections() {
        let mut idx = UserIndex::default();
        let c1 = ConnId { shard: 0, slot: 1, generation: 1 };
        let c2 = ConnId { shard: 1, slot: 1, generation: 7 };
        let list = |idx: &UserIndex| {
            let mut v = Vec::new();
            idx.connections(42, &mut v);
            v
        };
        assert!(idx.add(42, c1), "the user's first connection");
        assert_eq!(list(&idx), [c1]);
        assert!(!idx.add(42, c2));
        assert_eq!(list(&idx), [c1, c2]);
        assert!(!idx.remove(42, c1), "one is left");
        assert_eq!(list(&idx), [c2]);
        assert!(!idx.remove(42, c1), "not there any more");
        assert!(idx.remove(42, c2), "the user's last connection");
        assert_eq!(idx.users(), 0);
        assert!(!idx.remove(42, c2), "an unknown user");
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
