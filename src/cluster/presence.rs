//! Cluster-wide presence: a scatter-gather over NATS.
//!
//! ```text
//!  shard ──PresenceAsk──► bridge ──request c10m.presence, reply <inbox>.<id>──► every node
//!  every other node's bridge ──PresenceAsk──► its shards ──PresenceAnswer──► its bridge
//!  its bridge ──reply {"node":…}──► <inbox>.<id> ──► bridge ──PresenceNodes──► shard
//! ```
//!
//! The shard holding a `GET /presence` asks this node's shards and the bridge at once; the
//! bridge asks the other nodes and hands the shard what they answered once every node alive
//! by its heartbeat ([`super::registry::Liveness`]) has, or after [`WAIT_MS`], whichever is
//! first. Counts come from the nodes themselves, so they are exact as of each node's answer;
//! the Redis registry would name a user's nodes but not count connections or subscribers,
//! and its entries trail a change by up to a flush.
//!
//! On the bus (`c10m.presence`, every node subscribes; a backend may send it too):
//!
//! - request: `{"user":"U"}`, `{"users":["a","b"]}` (at most
//!   [`crate::shard::presence::USERS_MAX`] names), `{"topic":"T"}`, or users and a topic
//!   together; a NATS reply subject is required. A request carrying this node's id in
//!   `C10m-Origin` is its own and skipped.
//! - reply, one per node: `{"node":"n2","users":{"a":2},"topic":"T","subscribers":3}`:
//!   only users with connections on that node appear; `topic` and `subscribers` only when a
//!   topic was asked.
//!
//! A request or reply that does not parse is dropped and counted as `bad_message`.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use serde_json::{Map, Value};

use super::{bus, registry, ClusterDrop, ClusterStats, Out};
use crate::push::{
    home_shard, Message, Msg, NodePresence, PresenceAnswer, PresenceAsk, PresenceNodes,
};
use crate::shard::client::NAME_BYTES_MAX;
use crate::shard::presence::USERS_MAX;

/// Longest a node waits for the other nodes' answers before it answers with those it has.
pub const WAIT_MS: u64 = 500;
/// Largest presence request or reply on the bus: 1,000 names of 256 bytes fit with room for
/// escapes, within NATS's default `max_payload` (1 MiB).
pub const BYTES_MAX: usize = 768 * 1024;
/// Requests waiting for other nodes, and requests from the bus waiting for this node's
/// shards; past either a request is answered at once with what is known (or dropped).
pub const ASKING_MAX: usize = 4096;
pub const SERVING_MAX: usize = 4096;
/// Deadlines kept: those of requests answered early stay until they pass.
const DEADLINES_MAX: usize = 4 * ASKING_MAX;

const _: () = assert!(USERS_MAX * (NAME_BYTES_MAX + 16) < BYTES_MAX);

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= NAME_BYTES_MAX
}

/// What a presence request asks, as it travels on the bus.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub users: Vec<Box<str>>,
    pub topic: Option<Box<str>>,
}

impl Request {
    pub fn to_json(&self) -> String {
        let mut v = Map::new();
        v.insert("users".into(), self.users.iter().map(|u| Value::from(&**u)).collect());
        if let Some(t) = &self.topic {
            v.insert("topic".into(), Value::from(&**t));
        }
        Value::Object(v).to_string()
    }

    /// Reads a request, or says which field is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Request, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let name = |x: &Value| x.as_str().filter(|s| name_ok(s)).map(Box::from);
        let mut r = Request::default();
        if let Some(u) = v.get("user") {
            r.users.push(name(u).ok_or("user: a name of 1..=256 bytes")?);
        }
        if let Some(list) = v.get("users") {
            let list = list.as_array().ok_or("users: a list of names")?;
            if list.len() + r.users.len() > USERS_MAX {
                return Err(format!("users: at most {USERS_MAX} names"));
            }
            for u in list {
                r.users.push(name(u).ok_or("users: names of 1..=256 bytes")?);
            }
            // A name given twice is counted once.
            let mut seen = HashSet::with_capacity(r.users.len());
            r.users.retain(|u| seen.insert(u.clone()));
        }
        if let Some(t) = v.get("topic") {
            r.topic = Some(name(t).ok_or("topic: a name of 1..=256 bytes")?);
        }
        if r.users.is_empty() && r.topic.is_none() {
            return Err("give user, users or topic".into());
        }
        Ok(r)
    }
}

/// A node's reply: the users with connections there, and the topic's subscribers there.
pub fn reply_json(
    node: &str,
    users: &BTreeMap<Box<str>, u32>,
    topic: Option<&str>,
    subs: u64,
) -> String {
    let held: Map<String, Value> =
        users.iter().filter(|(_, &n)| n > 0).map(|(u, &n)| (u.to_string(), n.into())).collect();
    let mut v = Map::new();
    v.insert("node".into(), node.into());
    v.insert("users".into(), Value::Object(held));
    if let Some(t) = topic {
        v.insert("topic".into(), t.into());
        v.insert("subscribers".into(), subs.into());
    }
    Value::Object(v).to_string()
}

/// Reads a node's reply, or says which field is wrong.
pub fn reply_from_json(bytes: &[u8]) -> Result<NodePresence, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let node = v.get("node").and_then(Value::as_str).filter(|n| name_ok(n)).ok_or("node")?;
    let users = match v.get("users") {
        None => Vec::new(),
        Some(u) => {
            let u = u.as_object().ok_or("users: an object")?;
            if u.len() > USERS_MAX {
                return Err(format!("users: at most {USERS_MAX}"));
            }
            let count = |n: &Value| n.as_u64().and_then(|n| u32::try_from(n).ok());
            u.iter()
                .map(|(name, n)| Ok((name.as_str().into(), count(n).ok_or("users: counts")?)))
                .collect::<Result<_, &str>>()?
        }
    };
    let subscribers = match v.get("subscribers") {
        None => 0,
        Some(s) => s.as_u64().ok_or("subscribers: a count")?,
    };
    Ok(NodePresence { node: node.into(), users, subscribers })
}

/// A request of one of this node's shards, waiting for the other nodes.
struct Asking {
    shard: usize,
    answer: PresenceNodes,
}

/// A request from the bus, waiting for this node's shards.
pub struct Serving {
    pub reply: String,
    pub topic: Option<Box<str>>,
    /// Answers still to come.
    pub left: usize,
    pub users: BTreeMap<Box<str>, u32>,
    pub subscribers: u64,
}

/// The bridge's presence requests in flight, both ways. Ids are the bridge's own.
#[derive(Default)]
pub struct Requests {
    seq: u64,
    asking: HashMap<u64, Asking>,
    /// Deadlines of `asking`, in order (every wait is [`WAIT_MS`]); at most
    /// `DEADLINES_MAX`.
    deadlines: VecDeque<(Instant, u64)>,
    serving: HashMap<u64, Serving>,
}

/// What a node's reply did to its request.
pub enum Replied {
    /// More nodes are expected.
    Waiting,
    /// It was the last one expected.
    Done(Done),
    /// The request is over already (answered at its deadline).
    Late,
}

/// What the bridge does once an asking request is over: send `answer` to `shard`.
pub struct Done {
    pub shard: usize,
    pub answer: Box<PresenceNodes>,
}

impl Requests {
    fn next_id(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Takes a shard's request for the other nodes; returns its id, or the answer back when
    /// the table is full.
    pub fn ask(
        &mut self,
        shard: usize,
        answer: PresenceNodes,
        now: Instant,
    ) -> Result<u64, PresenceNodes> {
        if self.asking.len() >= ASKING_MAX || self.deadlines.len() >= DEADLINES_MAX {
            return Err(answer);
        }
        let id = self.next_id();
        self.asking.insert(id, Asking { shard, answer });
        self.deadlines.push_back((now + Duration::from_millis(WAIT_MS), id));
        Ok(id)
    }

    /// A node's reply to request `id`.
    pub fn reply(&mut self, id: u64, node: NodePresence) -> Replied {
        let Some(a) = self.asking.get_mut(&id) else { return Replied::Late };
        if !a.answer.nodes.iter().any(|n| n.node == node.node) {
            a.answer.nodes.push(node);
        }
        // Expected 0 is unknown: wait for the deadline.
        if a.answer.expected == 0 || 1 + a.answer.nodes.len() < a.answer.expected as usize {
            return Replied::Waiting;
        }
        self.finish(id).map_or(Replied::Late, Replied::Done)
    }

    fn finish(&mut self, id: u64) -> Option<Done> {
        let a = self.asking.remove(&id)?;
        Some(Done { shard: a.shard, answer: Box::new(a.answer) })
    }

    /// When the first waiting request runs out of time.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(at, _)| at)
    }

    /// Ends the requests whose deadline has passed (those answered already are skipped).
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Done>) {
        while let Some(&(at, id)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            out.extend(self.finish(id));
        }
        if self.asking.is_empty() {
            self.deadlines.clear();
        }
    }

    /// Takes a request from the bus that `left` shards will answer; returns its id, or None
    /// when the table is full.
    pub fn serve(&mut self, s: Serving) -> Option<u64> {
        if self.serving.len() >= SERVING_MAX {
            return None;
        }
        let id = self.next_id();
        self.serving.insert(id, s);
        Some(id)
    }

    /// A shard's answer to a request from the bus: the request, once it was the last.
    pub fn local_answer(&mut self, a: PresenceAnswer) -> Option<Serving> {
        let s = self.serving.get_mut(&a.query)?;
        for (name, n) in a.users {
            *s.users.entry(name).or_default() += n;
        }
        s.subscribers += a.subscribers;
        s.left = s.left.saturating_sub(1);
        if s.left > 0 {
            return None;
        }
        self.serving.remove(&a.query)
    }
}

fn text(body: String) -> Arc<Message> {
    let payload = body.into_bytes().into_boxed_slice();
    Arc::new(Message { id: 0, seq: 0, part: 0, payload, text: true })
}

impl super::Bridge {
    fn origin(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(bus::H_ORIGIN, &*self.node);
        h
    }

    /// A shard's presence request (all its users and topic): ask the other nodes. Answered at
    /// once when this is the only node alive.
    pub(super) fn ask_nodes(&mut self, a: PresenceAsk) {
        let expected = self.liveness.borrow().expected(&self.node, registry::unix_ms());
        let answer = PresenceNodes { query: a.query, nodes: Vec::new(), expected: expected as u32 };
        let shard = a.reply_to as usize;
        if expected == 1 {
            return self.answer_shard(shard, answer);
        }
        let req = Request { users: a.users.into_iter().map(|(_, n)| n).collect(), topic: a.topic };
        let body = req.to_json();
        if body.len() > BYTES_MAX {
            self.stats.dropped(ClusterDrop::BadMessage, 1);
            return self.answer_shard(shard, answer);
        }
        let id = match self.requests.ask(shard, answer, Instant::now()) {
            Ok(id) => id,
            Err(answer) => {
                self.stats.dropped(ClusterDrop::QueueFull, 1);
                return self.answer_shard(shard, answer);
            }
        };
        ClusterStats::bump(&self.stats.presence_asked, 1);
        let reply = Some(format!("{}{id}", self.reply_prefix));
        let headers = self.origin();
        self.publish(Out { subject: bus::PRESENCE.into(), reply, headers, msg: text(body) });
    }

    fn answer_shard(&mut self, shard: usize, answer: PresenceNodes) {
        self.send(shard, Msg::PresenceNodes(Box::new(answer)));
    }

    /// Ends the requests whose deadline passed with the nodes that answered.
    pub(super) fn expire_presence(&mut self) {
        let mut done = Vec::new();
        self.requests.expire(Instant::now(), &mut done);
        for d in done {
            let e = d.answer.expected as usize;
            if e == 0 || 1 + d.answer.nodes.len() < e {
                ClusterStats::bump(&self.stats.presence_short, 1);
            }
            self.send(d.shard, Msg::PresenceNodes(d.answer));
        }
    }

    /// Another node's reply to request `id` (None: a reply subject that names none).
    pub(super) fn on_presence_reply(&mut self, id: Option<u64>, payload: &[u8]) {
        let node = match (id, payload.len() <= BYTES_MAX) {
            (Some(_), true) => reply_from_json(payload),
            _ => Err(String::new()),
        };
        let (Some(id), Ok(node)) = (id, node) else {
            return self.stats.dropped(ClusterDrop::BadMessage, 1);
        };
        if *node.node == *self.node {
            return ClusterStats::bump(&self.stats.bus_in_own, 1);
        }
        match self.requests.reply(id, node) {
            Replied::Done(d) => self.send(d.shard, Msg::PresenceNodes(d.answer)),
            Replied::Waiting => {}
            Replied::Late => ClusterStats::bump(&self.stats.presence_late, 1),
        }
    }

    /// A presence request from another node or a backend: ask this node's shards.
    pub(super) fn on_presence_request(&mut self, m: async_nats::Message) {
        let origin = m.headers.as_ref().and_then(|h| h.get(bus::H_ORIGIN));
        if origin.is_some_and(|o| o.as_str() == &*self.node) {
            return ClusterStats::bump(&self.stats.bus_in_own, 1);
        }
        let req = match (&m.reply, m.payload.len() <= BYTES_MAX) {
            (Some(_), true) => Request::from_json(&m.payload),
            _ => Err(String::new()),
        };
        let (Some(reply), Ok(req)) = (m.reply, req) else {
            return self.stats.dropped(ClusterDrop::BadMessage, 1);
        };
        let shards = self.mesh.shards();
        // The bridge's index in the mesh is the number of shards.
        let me = shards as u16;
        let mut per_shard: Vec<PresenceAsk> = (0..shards)
            .map(|_| PresenceAsk { reply_to: me, query: 0, users: Vec::new(), topic: None })
            .collect();
        for u in req.users {
            let hash = self.user_keys.hash(&u);
            per_shard[home_shard(hash, shards)].users.push((hash, u));
        }
        if let Some(t) = &req.topic {
            per_shard.iter_mut().for_each(|p| p.topic = Some(t.clone()));
        }
        let asked = |p: &PresenceAsk| !p.users.is_empty() || p.topic.is_some();
        let left = per_shard.iter().filter(|p| asked(p)).count();
        let serving = Serving {
            reply: reply.to_string(),
            topic: req.topic,
            left,
            users: BTreeMap::new(),
            subscribers: 0,
        };
        let Some(id) = self.requests.serve(serving) else {
            return self.stats.dropped(ClusterDrop::QueueFull, 1);
        };
        for (to, mut p) in per_shard.into_iter().enumerate() {
            if asked(&p) {
                p.query = id;
                self.send(to, Msg::PresenceAsk(Box::new(p)));
            }
        }
    }

    /// A shard's answer to a request from the bus: the reply goes out with the last one.
    pub(super) fn on_local_answer(&mut self, a: PresenceAnswer) {
        let Some(s) = self.requests.local_answer(a) else { return };
        ClusterStats::bump(&self.stats.presence_served, 1);
        let body = reply_json(&self.node, &s.users, s.topic.as_deref(), s.subscribers);
        let headers = self.origin();
        self.publish(Out { subject: s.reply, reply: None, headers, msg: text(body) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let r = Request { users: vec!["a".into(), "b c".into()], topic: Some("t".into()) };
        assert_eq!(Request::from_json(r.to_json().as_bytes()), Ok(r));
        let one = Request::from_json(br#"{"user":"u"}"#).unwrap();
        assert_eq!(one.users, vec![Box::from("u")]);
        let users: BTreeMap<Box<str>, u32> = [("a".into(), 2), ("b".into(), 0)].into();
        let text = reply_json("n2", &users, Some("t"), 3);
        assert_eq!(text, r#"{"node":"n2","subscribers":3,"topic":"t","users":{"a":2}}"#);
        let got = reply_from_json(text.as_bytes()).unwrap();
        let want = NodePresence { node: "n2".into(), users: vec![("a".into(), 2)], subscribers: 3 };
        assert_eq!(got, want);
    }

    #[test]
    fn malformed_requests_and_replies_say_why() {
        let long = format!(r#"{{"user":"{}"}}"#, "x".repeat(257));
        let many = format!(r#"{{"users":[{}]}}"#, vec!["\"u\""; USERS_MAX + 1].join(","));
        for bad in ["", "[]", "{}", r#"{"user":""}"#, r#"{"users":"a"}"#, r#"{"topic":7}"#] {
            assert!(Request::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(Request::from_json(long.as_bytes()).is_err());
        assert!(Request::from_json(many.as_bytes()).is_err());
        for bad in [r#"{"users":{}}"#, r#"{"node":"n","users":{"a":-1}}"#, r#"{"node":""}"#] {
            assert!(reply_from_json(bad.as_bytes()).is_err(), "{bad}");
        }
        let big = format!(r#"{{"node":"n","users":{{"a":{}}}}}"#, u64::from(u32::MAX) + 1);
        assert!(reply_from_json(big.as_bytes()).is_err());
    }

    #[test]
    fn cut_or_flipped_bytes_never_panic() {
        let samples = [
            Request { users: vec!["a".into(), "é".into()], topic: Some("t".into()) }.to_json(),
            r#"{"node":"n2","subscribers":3,"topic":"t","users":{"a":2,"b":1}}"#.to_owned(),
        ];
        for text in samples {
            let bytes = text.as_bytes();
            for cut in 0..=bytes.len() {
                let _ = Request::from_json(&bytes[..cut]);
                let _ = reply_from_json(&bytes[..cut]);
            }
            for i in 0..bytes.len() {
                for flip in [0x01, 0x20, 0x80, 0xff] {
                    let mut b = bytes.to_vec();
                    b[i] ^= flip;
                    let _ = Request::from_json(&b);
                    let _ = reply_from_json(&b);
                }
            }
        }
    }

    fn node(name: &str) -> NodePresence {
        NodePresence { node: name.into(), users: Vec::new(), subscribers: 1 }
    }

    #[test]
    fn a_request_ends_when_every_node_answered_or_at_its_deadline() {
        let mut r = Requests::default();
        let t0 = Instant::now();
        let ask = |expected| PresenceNodes { query: 9, nodes: Vec::new(), expected };
        let full = r.ask(2, ask(3), t0).unwrap();
        let short = r.ask(1, ask(3), t0).unwrap();
        let unknown = r.ask(0, ask(0), t0).unwrap();
        assert!(
            matches!(r.reply(unknown, node("b")), Replied::Waiting),
            "unknown waits the deadline"
        );
        assert!(matches!(r.reply(full, node("b")), Replied::Waiting));
        assert!(
            matches!(r.reply(full, node("b")), Replied::Waiting),
            "a repeated node counts once"
        );
        let Replied::Done(done) = r.reply(full, node("c")) else { panic!("three of three") };
        assert_eq!((done.shard, done.answer.nodes.len(), done.answer.query), (2, 2, 9));
        assert!(matches!(r.reply(short, node("b")), Replied::Waiting));
        let mut out = Vec::new();
        r.expire(t0 + Duration::from_millis(WAIT_MS - 1), &mut out);
        assert!(out.is_empty());
        r.expire(t0 + Duration::from_millis(WAIT_MS), &mut out);
        assert_eq!(out.len(), 2, "the finished request is skipped");
        assert_eq!((out[0].shard, out[0].answer.nodes.len()), (1, 1));
        assert_eq!((out[1].shard, out[1].answer.nodes.len()), (0, 1));
        assert!(matches!(r.reply(short, node("c")), Replied::Late));
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn a_served_request_completes_with_its_last_shard() {
        let mut r = Requests::default();
        let s = Serving {
            reply: "r".into(),
            topic: Some("t".into()),
            left: 2,
            users: BTreeMap::new(),
            subscribers: 0,
        };
        let id = r.serve(s).unwrap();
        let answer =
            |users: Vec<(Box<str>, u32)>| PresenceAnswer { query: id, users, subscribers: 2 };
        assert!(r.local_answer(answer(vec![("a".into(), 1)])).is_none());
        let s = r.local_answer(answer(vec![("b".into(), 0)])).expect("the last");
        assert_eq!((s.subscribers, s.users.len()), (4, 2));
        assert!(r.local_answer(answer(Vec::new())).is_none(), "over");
    }
}
