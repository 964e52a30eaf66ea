//! `GET /presence`: is a user online and on how many connections, how many subscribe to a
//! topic. Nothing is scanned: a user's home shard keeps the user's connections in its
//! index, every shard keeps each topic's live subscribers counted.
//!
//! - `?user=U` → `{"user":U,"online":bool,"connections":N,"scope":"node"}`
//! - `?users=a,b,c` (at most [`USERS_MAX`]) → `{"users":{"a":{"online":…,"connections":…},…},"scope":"node"}`
//! - `?topic=T` → `{"topic":T,"subscribers":N,"scope":"node"}`
//!
//! The shard that took the request asks the shards that know ([`Msg::PresenceAsk`]: the
//! users' home shards, or every shard for a topic) and answers when every
//! [`Msg::PresenceAnswer`] is in; the admin connection reads nothing more until then.
//!
//! On a cluster node it asks the bridge too, which asks the other nodes
//! (`crate::cluster::presence`) and answers ([`Msg::PresenceNodes`]) within its deadline.
//! The answer then sums the nodes that answered and says so (the fields above keep their
//! meaning, now for the cluster):
//!
//! - `?user=U` → `{…,"scope":"cluster","nodes":{"n1":2,"n2":1},"node":{"id":"n1",
//!   "connections":2},"answered":2,"expected":2}`
//! - `?users=` → each user also has `"nodes"`; `"scope","answered","expected"` beside them
//! - `?topic=T` → `{…,"scope":"cluster","nodes":{…},"node":{"id":"n1","subscribers":N},…}`
//!
//! `nodes` lists the nodes that have any; `expected` is the nodes alive by their heartbeats
//! (0: unknown, the registry being unreachable).

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use super::conn::Chunk;
use super::Shard;
use crate::metrics::CloseReason;
use crate::proto::http1::{self, Request};
use crate::push::{home_shard, Msg, PresenceAnswer, PresenceAsk, PresenceNodes};

/// The most users one `?users=` request may name.
pub const USERS_MAX: usize = 1000;

/// What a presence request asks.
pub(super) enum Ask {
    User(String),
    Users(Vec<String>),
    Topic(String),
}

/// A request waiting for answers from other shards.
pub struct Query {
    slot: u32,
    generation: u32,
    keep_alive: bool,
    /// Answers still to come.
    left: usize,
    ask: Ask,
    /// Connections per user, as answers arrive.
    users: BTreeMap<Box<str>, u32>,
    subscribers: u64,
    /// On a cluster node: what the other nodes answered (`crate::cluster::presence`).
    nodes: Option<Box<PresenceNodes>>,
}

/// Parses the query string of `GET /presence`.
pub(super) fn parse(req: &Request) -> Result<Ask, String> {
    let name_ok = |s: &str| !s.is_empty() && s.len() <= super::client::NAME_BYTES_MAX;
    match (req.query_param("user"), req.query_param("users"), req.query_param("topic")) {
        (Some(u), None, None) if name_ok(&u) => Ok(Ask::User(u)),
        (None, Some(list), None) => {
            let mut users: Vec<String> = list.split(',').map(str::to_owned).collect();
            if users.len() > USERS_MAX {
                return Err(format!("users: at most {USERS_MAX} names"));
            }
            if let Some(bad) = users.iter().find(|u| !name_ok(u)) {
                return Err(format!("users: {bad:?} is not a name of 1..=256 bytes"));
            }
            // A name given twice is counted once.
            let mut seen = std::collections::HashSet::with_capacity(users.len());
            users.retain(|u| seen.insert(u.clone()));
            Ok(Ask::Users(users))
        }
        (None, None, Some(t)) if name_ok(&t) => Ok(Ask::Topic(t)),
        _ => {
            Err("give exactly one of ?user=ID, ?users=a,b,c or ?topic=T (names 1..=256 bytes)"
                .into())
        }
    }
}

impl Shard {
    /// Starts a presence query for the admin connection `slot`. Returns true when it was
    /// answered at once (everything it asks is on this shard), false when it waits.
    pub(super) fn ask_presence(
        &mut self,
        slot: u32,
        generation: u32,
        keep_alive: bool,
        ask: Ask,
    ) -> bool {
        // Which shards to ask, and what.
        let shards = self.shards();
        let mut per_shard: Vec<PresenceAsk> = (0..shards)
            .map(|_| PresenceAsk {
                reply_to: self.id as u16,
                query: 0,
                users: Vec::new(),
                topic: None,
            })
            .collect();
        match &ask {
            Ask::User(u) => self.ask_user(&mut per_shard, u),
            Ask::Users(list) => list.iter().for_each(|u| self.ask_user(&mut per_shard, u)),
            Ask::Topic(t) => per_shard.iter_mut().for_each(|p| p.topic = Some(t.as_str().into())),
        }
        self.query_seq += 1;
        let id = self.query_seq;
        let asked = |p: &PresenceAsk| !p.users.is_empty() || p.topic.is_some();
        let mut left =
            per_shard.iter().enumerate().filter(|(s, p)| *s != self.id && asked(p)).count();
        // On a cluster node the bridge asks the other nodes meanwhile.
        if let Some(bridge) = self.mesh.bridge() {
            let mut all =
                PresenceAsk { reply_to: self.id as u16, query: id, users: Vec::new(), topic: None };
            for p in &per_shard {
                all.users.extend(p.users.iter().cloned());
                all.topic = all.topic.take().or_else(|| p.topic.clone());
            }
            self.send_mesh(bridge, Msg::PresenceAsk(Box::new(all)));
            left += 1;
        }
        let mut q = Query {
            slot,
            generation,
            keep_alive,
            left,
            ask,
            users: BTreeMap::new(),
            subscribers: 0,
            nodes: None,
        };
        for (to, mut p) in per_shard.into_iter().enumerate() {
            if !asked(&p) {
                continue;
            }
            p.query = id;
            if to == self.id {
                let answer = self.presence_of(&p);
                add_answer(&mut q, answer);
            } else {
                self.send_mesh(to, Msg::PresenceAsk(Box::new(p)));
            }
        }
        if q.left == 0 {
            self.answer_presence(q);
            return true;
        }
        self.queries.insert(id, q);
        false
    }

    fn ask_user(&self, per_shard: &mut [PresenceAsk], user: &str) {
        let hash = self.shared.user_keys.hash(user);
        per_shard[home_shard(hash, self.shards())].users.push((hash, user.into()));
    }

    /// What this shard knows of `ask`.
    fn presence_of(&self, ask: &PresenceAsk) -> PresenceAnswer {
        PresenceAnswer {
            query: ask.query,
            users: ask
                .users
                .iter()
                .map(|(h, name)| (name.clone(), self.users.count(*h) as u32))
                .collect(),
            subscribers: ask.topic.as_deref().map_or(0, |t| self.topics.count(t) as u64),
        }
    }

    /// A [`Msg::PresenceAsk`] from the shard holding the request.
    pub(super) fn on_presence_ask(&mut self, ask: PresenceAsk) {
        let answer = self.presence_of(&ask);
        self.send_mesh(ask.reply_to as usize, Msg::PresenceAnswer(Box::new(answer)));
    }

    /// A [`Msg::PresenceAnswer`]: answers the request when it was the last one.
    pub(super) fn on_presence_answer(&mut self, a: PresenceAnswer) {
        let id = a.query;
        let Some(q) = self.queries.get_mut(&id) else { return };
        add_answer(q, a);
        self.answered(id);
    }

    /// A [`Msg::PresenceNodes`] from the bridge: the other nodes' part.
    pub(super) fn on_presence_nodes(&mut self, n: Box<PresenceNodes>) {
        let id = n.query;
        let Some(q) = self.queries.get_mut(&id) else { return };
        q.nodes = Some(n);
        self.answered(id);
    }

    /// One answer to query `id` is in: answers the request when it was the last one.
    fn answered(&mut self, id: u64) {
        let Some(q) = self.queries.get_mut(&id) else { return };
        q.left -= 1;
        if q.left > 0 {
            return;
        }
        let Some(q) = self.queries.remove(&id) else { return };
        let (slot, generation) = (q.slot, q.generation);
        self.answer_presence(q);
        // Requests pipelined behind this one were held; go on with them.
        super::admin::on_bytes(self, slot, generation, &[]);
    }

    fn answer_presence(&mut self, q: Query) {
        let (slot, generation) = (q.slot, q.generation);
        let Some(conn) = self.conns.get_mut(slot, generation) else { return };
        if !conn.is_open() {
            return;
        }
        if let Some(p) = conn.partial.as_mut() {
            p.waiting = false;
        }
        let body = match &q.nodes {
            Some(nodes) => self.cluster_body(&q, nodes),
            None => node_body(&q),
        };
        let mut out = Vec::with_capacity(128);
        let headers = [("Content-Type", "application/json")];
        http1::write_response(&mut out, 200, &headers, body.to_string().as_bytes(), q.keep_alive);
        self.queue(slot, generation, Chunk::Owned(out));
        if !q.keep_alive {
            self.finish(slot, generation, CloseReason::HttpDone);
        }
    }

    /// The answer on a cluster node: counts summed over the nodes that answered, with each
    /// node's share (nodes with none are left out), this node's own, and how many answered.
    fn cluster_body(&self, q: &Query, n: &PresenceNodes) -> Value {
        let me = self.shared.cluster.as_ref().map_or("", |c| c.node_id.as_str());
        let mut remote: HashMap<&str, Vec<(&str, u32)>> = HashMap::new();
        for node in &n.nodes {
            for (user, c) in node.users.iter().filter(|(_, c)| *c > 0) {
                remote.entry(&**user).or_default().push((&*node.node, *c));
            }
        }
        let user = |u: &str| {
            let local = q.users.get(u).copied().unwrap_or(0);
            let mut nodes = Map::new();
            if local > 0 {
                nodes.insert(me.into(), local.into());
            }
            let mut total = local;
            for &(node, c) in remote.get(u).map_or(&[][..], Vec::as_slice) {
                total = total.saturating_add(c);
                nodes.insert(node.into(), c.into());
            }
            (local, total, nodes)
        };
        let (answered, expected) = (1 + n.nodes.len(), n.expected);
        match &q.ask {
            Ask::User(u) => {
                let (local, total, nodes) = user(u);
                json!({
                    "user": u, "online": total > 0, "connections": total, "nodes": nodes,
                    "scope": "cluster", "node": { "id": me, "connections": local },
                    "answered": answered, "expected": expected,
                })
            }
            Ask::Users(list) => {
                let users: Map<String, Value> = list
                    .iter()
                    .map(|u| {
                        let (_, total, nodes) = user(u);
                        let entry =
                            json!({ "online": total > 0, "connections": total, "nodes": nodes });
                        (u.clone(), entry)
                    })
                    .collect();
                json!({ "users": users, "scope": "cluster", "answered": answered, "expected": expected })
            }
            Ask::Topic(t) => {
                let mut nodes = Map::new();
                if q.subscribers > 0 {
                    nodes.insert(me.into(), q.subscribers.into());
                }
                let mut total = q.subscribers;
                for node in n.nodes.iter().filter(|node| node.subscribers > 0) {
                    total = total.saturating_add(node.subscribers);
                    nodes.insert(node.node.to_string(), node.subscribers.into());
                }
                json!({
                    "topic": t, "subscribers": total, "nodes": nodes, "scope": "cluster",
                    "node": { "id": me, "subscribers": q.subscribers },
                    "answered": answered, "expected": expected,
                })
            }
        }
    }
}

/// The answer of a standalone node: this node's counts.
fn node_body(q: &Query) -> Value {
    let entry = |n: u32| json!({ "online": n > 0, "connections": n });
    match &q.ask {
        Ask::User(u) => {
            let n = q.users.get(u.as_str()).copied().unwrap_or(0);
            serde_json::json!({ "user": u, "online": n > 0, "connections": n, "scope": "node" })
        }
        Ask::Users(list) => {
            let users: serde_json::Map<String, serde_json::Value> = list
                .iter()
                .map(|u| (u.clone(), entry(q.users.get(u.as_str()).copied().unwrap_or(0))))
                .collect();
            serde_json::json!({ "users": users, "scope": "node" })
        }
        Ask::Topic(t) => {
            serde_json::json!({ "topic": t, "subscribers": q.subscribers, "scope": "node" })
        }
    }
}

fn add_answer(q: &mut Query, a: PresenceAnswer) {
    for (name, n) in a.users {
        *q.users.entry(name).or_default() += n;
    }
    q.subscribers += a.subscribers;
}
