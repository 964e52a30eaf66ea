//! The publish path: a publish accepted by this shard is routed ([`Shard::route`]) to the
//! user's home shard, or to the sequencer for topics and broadcasts, which numbers it and
//! fans it out; each shard then delivers to its local connections.

use std::sync::Arc;

use super::{admin, Shard};
use crate::history::{Stream, SEQUENCER};
use crate::metrics::bump;
use crate::push::{home_shard, Message, Msg, PublishUser};
use crate::registry::ConnId;

impl Shard {
    /// Routes a publish accepted by this shard: `user`, `topic` or all. This shard's own
    /// share is queued and delivered at the start of the next loop turn, so the admin
    /// answer (queued by the caller) goes out ahead of a large fan-out.
    pub(crate) fn route(&mut self, target: admin::Target, payload: Vec<u8>) -> u64 {
        self.msg_seq += 1;
        let id = self.msg_seq * self.shards() as u64 + self.id as u64;
        let text = std::str::from_utf8(&payload).is_ok();
        let payload = payload.into_boxed_slice();
        let msg = Arc::new(Message { id, seq: 0, part: 0, payload, text });
        bump(&self.stats().published, 1);
        if self.store_takes() {
            // The cluster store numbers it; every node, this one too, delivers it from there.
            // Pending until the store acknowledges it (a live upgrade waits for that).
            let bridge = self.mesh.bridge().expect("store mode has a bridge");
            if let Some(c) = &self.shared.cluster {
                c.store_pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let m = match target {
                admin::Target::User(user) => {
                    let hash = self.shared.user_keys.hash(&user);
                    Msg::PublishUser(Box::new(PublishUser { user: user.into(), hash, msg }))
                }
                admin::Target::Topic(topic) => Msg::PublishTopic { topic: topic.into(), msg },
                admin::Target::All => Msg::PublishAll { msg },
            };
            self.send_mesh(bridge, m);
            return id;
        }
        // Topics and broadcasts go to the sequencer, which numbers them and sends them to
        // every shard, and on a cluster node to the bridge.
        // With the store away, publishes stay on this node: the bus path is not for them.
        let bridge = if self.shared.store_numbers() { None } else { self.mesh.bridge() };
        let to_sequencer = |shard: &mut Shard, m: Msg| {
            if shard.id == SEQUENCER {
                shard.mesh.send_local(m);
            } else {
                shard.send_mesh(SEQUENCER, m);
            }
        };
        match target {
            admin::Target::User(user) => {
                let hash = self.shared.user_keys.hash(&user);
                let user: Box<str> = user.into();
                if let Some(bridge) = bridge {
                    let p = PublishUser { user: user.clone(), hash, msg: Arc::clone(&msg) };
                    self.send_mesh(bridge, Msg::PublishUser(Box::new(p)));
                }
                let home = home_shard(hash, self.shards());
                let m = Msg::PublishUser(Box::new(PublishUser { user, hash, msg }));
                if home == self.id {
                    self.mesh.send_local(m);
                } else {
                    self.send_mesh(home, m);
                }
            }
            admin::Target::Topic(topic) => {
                let topic: Box<str> = topic.into();
                if let Some(bridge) = bridge {
                    let m = Msg::PublishTopic { topic: topic.clone(), msg: Arc::clone(&msg) };
                    self.send_mesh(bridge, m);
                }
                to_sequencer(self, Msg::PublishTopic { topic, msg });
            }
            admin::Target::All => {
                if let Some(bridge) = bridge {
                    self.send_mesh(bridge, Msg::PublishAll { msg: Arc::clone(&msg) });
                }
                to_sequencer(self, Msg::PublishAll { msg });
            }
        }
        id
    }

    /// Whether publishes go through the cluster store: history on and the store reachable
    /// (while it is not, they are delivered on this node only, as without a bridge).
    fn store_takes(&self) -> bool {
        self.shared.store_numbers()
            && self.shared.cluster.as_ref().is_some_and(|c| c.store_usable())
    }

    /// On the sequencer: sends a numbered message to every other shard (not the bridge).
    pub(super) fn fan_out(&mut self, mut msg: impl FnMut() -> Msg) {
        let me = self.id;
        for to in (0..self.shards()).filter(|&s| s != me) {
            self.send_mesh(to, msg());
        }
    }

    pub(super) fn send_mesh(&mut self, to: usize, msg: Msg) {
        if let Some(batch) = self.batch.as_mut() {
            return batch[to].push(msg);
        }
        let count = msg.count();
        if self.mesh.send(to, msg) == crate::mesh::Sent::Dropped {
            self.stats().dropped(crate::metrics::DropReason::MeshFull, count);
        }
    }

    /// On the user's home shard: forward to every shard that holds one of the user's
    /// connections.
    pub(super) fn publish_user_home(&mut self, user: &str, hash: u64, msg: &mut Arc<Message>) {
        if !self.take_number(Stream::User(user), msg) {
            return;
        }
        let msg = &*msg;
        let mut conns = Vec::new();
        self.users.connections(hash, &mut conns);
        let mut local = std::mem::take(&mut self.scratch.targets);
        for shard in 0..self.shards() {
            let on_shard = conns.iter().filter(|c| c.shard as usize == shard);
            if shard == self.id {
                local.extend(on_shard.map(|c| (c.slot, c.generation)));
            } else {
                let list: Vec<ConnId> = on_shard.copied().collect();
                if !list.is_empty() {
                    let user = Some(user.into());
                    let msg = Arc::clone(msg);
                    let d = crate::push::Deliver { conns: list, user, msg, natives: false };
                    bump(&self.stats().user_forwards, 1);
                    self.send_mesh(shard, Msg::Deliver(Box::new(d)));
                }
            }
        }
        self.deliver_to_user(Some(user), &mut local, msg);
        local.clear();
        self.scratch.targets = local;
    }

    /// Delivers to the listed local connections that serve `user` (all of them when None).
    pub(super) fn deliver_to_user(
        &mut self,
        user: Option<&str>,
        targets: &mut Vec<(u32, u32)>,
        msg: &Message,
    ) {
        if self.forwarding() {
            // Before the filter: the ones gone to the new process are not here any more.
            let ids = targets.iter().map(|&(s, g)| super::handover::old_id(s, g)).collect();
            let deed = crate::handover::record::Deed::Deliver(ids);
            self.forward(Stream::User(user.unwrap_or("")), msg, deed);
        }
        if let Some(user) = user {
            let conns = &self.conns;
            targets.retain(|&(s, g)| conns.get(s, g).is_some_and(|c| c.ident.user() == Some(user)));
        }
        self.deliver(targets, msg, Stream::User(user.unwrap_or("")));
    }

    pub(super) fn deliver_topic(&mut self, topic: &str, msg: &Message) {
        if self.forwarding() {
            let deed = crate::handover::record::Deed::Deliver(Vec::new());
            self.forward(Stream::Topic(topic), msg, deed);
        }
        let mut targets = std::mem::take(&mut self.scratch.targets);
        // Every entry is a live subscription or a closed connection: unsubscribes remove their
        // entry at once, and `deliver` skips connections that are no longer open.
        targets.extend_from_slice(self.topics.subscribers(topic));
        self.deliver(&targets, msg, Stream::Topic(topic));
        targets.clear();
        self.scratch.targets = targets;
    }

    pub(super) fn deliver_all(&mut self, msg: &Message) {
        if self.forwarding() {
            self.forward(Stream::All, msg, crate::handover::record::Deed::Deliver(Vec::new()));
        }
        let mut targets = std::mem::take(&mut self.scratch.targets);
        targets.extend(
            self.conns.iter().filter(|(_, _, c)| c.is_subscriber()).map(|(s, g, _)| (s, g)),
        );
        self.deliver(&targets, msg, Stream::All);
        targets.clear();
        self.scratch.targets = targets;
    }
}
