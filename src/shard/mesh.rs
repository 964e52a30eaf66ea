//! The shard's side of the mesh: what arrives from other shards (and the cluster bridge) is
//! taken in stamp order and handled here, the doorbells of shards sent to are rung, and,
//! with `mesh_spin_us`, the rings are polled a moment before the shard sleeps. Sending is
//! [`Shard::send_mesh`]; the rings themselves are [`crate::mesh`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{client, Shard, MESH_BATCH_MAX};
use crate::history::{Stream, SEQUENCER};
use crate::metrics::bump;
use crate::push::{Msg, PublishUser};

impl Shard {
    /// Takes what the inbound rings hold, in stamp order ([`crate::mesh::MeshEnd::receive`]), and
    /// handles each message.
    pub(super) fn process_mesh(&mut self) {
        let mut inbox = std::mem::take(&mut self.scratch.inbox);
        self.mesh.receive(MESH_BATCH_MAX, &mut inbox);
        self.mesh_took |= !inbox.is_empty();
        for msg in inbox.drain(..) {
            self.on_mesh(msg);
        }
        self.scratch.inbox = inbox;
    }

    /// One message from another shard or the bridge.
    fn on_mesh(&mut self, msg: Msg) {
        match msg {
            Msg::UserAdd(add) => self.on_user_add(&add),
            Msg::UserRemove { user, conn } => self.remove_user_conn(user, conn, None),
            Msg::UserLeave(l) => self.remove_user_conn(l.user, l.conn, Some(&l.name)),
            Msg::PublishUser(p) => {
                let PublishUser { user, hash, mut msg } = *p;
                self.publish_user_home(&user, hash, &mut msg)
            }
            Msg::Deliver(d) if d.natives => self.deliver_natives(&d),
            Msg::ToNatives(n) => self.deliver_stream(n.topic.as_deref(), &n.msg, false),
            Msg::Deliver(d) => {
                self.heard_message(&d.msg);
                let mut targets = std::mem::take(&mut self.scratch.targets);
                targets.extend(d.conns.iter().map(|c| (c.slot, c.generation)));
                self.deliver_to_user(d.user.as_deref(), &mut targets, &d.msg);
                targets.clear();
                self.scratch.targets = targets;
            }
            // On the sequencer every topic and broadcast publish is new: it numbers it (or
            // keeps the cluster store's number) and sends it on; the others deliver.
            Msg::PublishTopic { topic, mut msg } => {
                if self.id == SEQUENCER {
                    if !self.take_number(Stream::Topic(&topic), &mut msg) {
                        return;
                    }
                    self.fan_out(|| Msg::PublishTopic {
                        topic: topic.clone(),
                        msg: Arc::clone(&msg),
                    });
                }
                self.heard_message(&msg);
                self.deliver_topic(&topic, &msg)
            }
            Msg::PublishAll { mut msg } => {
                if self.id == SEQUENCER {
                    if !self.take_number(Stream::All, &mut msg) {
                        return;
                    }
                    self.fan_out(|| Msg::PublishAll { msg: Arc::clone(&msg) });
                }
                self.heard_message(&msg);
                self.deliver_all(&msg)
            }
            Msg::Fence { round, attempt } => self.on_fence(round, attempt),
            Msg::Top { part, seq } if part as usize == self.id => self.store_top(seq),
            Msg::Top { part, seq } => self.heard.advance(part as usize, seq),
            Msg::Epoch { epoch, top, backfill_end } => self.new_epoch(epoch, top, backfill_end),
            Msg::Backfill(b) => self.backfill(*b),
            Msg::Replay(req) => self.replay_topics(&req),
            Msg::Replayed(a) => self.on_replayed(&a),
            Msg::Drain { rate_per_s } => self.begin_drain(rate_per_s as f64),
            Msg::Evict { conn } => client::over_user_cap(self, conn.slot, conn.generation),
            Msg::RegistryWalk { from } => self.on_registry_walk(from),
            Msg::Online(_) | Msg::Offline(_) | Msg::RegistryNames(_) => {
                debug_assert!(false, "only the bridge gets these")
            }
            Msg::UserCommand(c) => self.on_user_command(*c),
            Msg::PresenceAsk(a) => self.on_presence_ask(*a),
            Msg::PresenceAnswer(a) => self.on_presence_answer(*a),
            Msg::PresenceNodes(n) => self.on_presence_nodes(n),
            Msg::ConnCommand(c) => self.on_conn_command(*c),
            Msg::Adopt(a) => self.on_adopt(*a),
            Msg::Batch(msgs) => {
                self.batched(|shard| msgs.into_iter().for_each(|m| shard.on_mesh(m)))
            }
        }
    }

    /// After a turn that took mesh messages, polls the inbound rings for up to
    /// `mesh_spin_us` instead of sleeping at once: a message that arrives meanwhile (the
    /// second hop of a targeted push, the next of a burst) needs no doorbell and no wakeup.
    /// Returns whether one arrived. Off (0) by default: on a host whose cores are all busy the
    /// spin takes CPU from the work it waits for (docs/measurements.md, "Spinning").
    pub(super) fn spin_for_mesh(&mut self) -> bool {
        let spin_us = self.shared.cfg.limits.mesh_spin_us;
        if spin_us == 0 {
            return false;
        }
        let until = Instant::now() + Duration::from_micros(spin_us as u64);
        loop {
            if self.mesh.inbound() {
                bump(&self.stats().mesh_spin_hits, 1);
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Wakes the shards this turn sent to that were asleep (a MSG_RING each), once every
    /// shard has started.
    pub(super) fn ring_doorbells(&mut self) {
        if !self.shared.started.load(Ordering::Acquire) {
            return;
        }
        let mut fds = std::mem::take(&mut self.scratch.doorbells);
        self.mesh.doorbells(&mut fds);
        for fd in fds.drain(..) {
            if fd >= 0 {
                self.submit_doorbell(fd);
            }
        }
        self.scratch.doorbells = fds;
    }
}
