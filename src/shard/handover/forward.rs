//! Publishes while connections move. The old process keeps accepting them: each old shard
//! delivers to the connections it still holds and forwards, on its channel and in order
//! with its batches, what it numbered (for the new partition's log) and what it delivered
//! (for the connections the new shard holds by then). A connection therefore gets each
//! publish once: here while it is queued for, in the new process once its batch is ahead
//! of the publish on the channel.

use std::sync::Arc;

use super::*;
use crate::handover::record::{
    Deed, Forward, STREAM_ALL, STREAM_COMMAND, STREAM_TOPIC, STREAM_USER,
};
use crate::history::{Stream, SEQUENCER};
use crate::push::Message;

/// How forwards and records name a connection of the old process: its slot and generation
/// (`Record::old_id`, `Deed::Deliver`).
pub(in crate::shard) fn old_id(slot: u32, generation: u32) -> u64 {
    slot as u64 | (generation as u64) << 32
}

impl Shard {
    /// Old side: whether what this shard numbers and delivers goes to the new shard too.
    pub(in crate::shard) fn forwarding(&self) -> bool {
        self.handover.forwarding
    }

    /// Old side: forwards a numbered publish (for the log) or a delivery. User deliveries
    /// name the connections by their ids here (the new shard knows the ones it took).
    pub(in crate::shard) fn forward(&mut self, stream: Stream<'_>, msg: &Message, deed: Deed) {
        let (code, name) = match stream {
            Stream::All => (STREAM_ALL, ""),
            Stream::Topic(t) => (STREAM_TOPIC, t),
            Stream::User(u) => (STREAM_USER, u),
        };
        let f = Forward {
            stream: code,
            name: name.as_bytes().to_vec(),
            id: msg.id,
            seq: msg.seq,
            part: msg.part,
            text: msg.text,
            payload: msg.payload.to_vec(),
            deed,
        };
        self.push_forward(&f);
    }

    /// Old side: queues a forward for the channel, sent once a batch's worth waits (unless
    /// it must wait behind a batch being exported).
    fn push_forward(&mut self, f: &Forward) {
        f.encode(&mut self.handover.fwd);
        if !self.handover.fwd_hold && self.handover.fwd.len() >= handover::BATCH_BYTES_MAX {
            self.flush_forwards();
        }
    }

    /// Old side: a user command for connections of this shard (from the user's home shard),
    /// for the new shard to apply to the named ones it took over. The old shard applies it
    /// to those it still holds and skips the exported ones, whose batch is ahead of this on
    /// the channel, so each connection gets it from exactly one process (from the bus, the
    /// new process may apply it too: every command is idempotent on a connection).
    pub(in crate::shard) fn forward_command(&mut self, c: &crate::push::ConnCommand) {
        let f = Forward {
            stream: STREAM_COMMAND,
            name: c.name.as_bytes().to_vec(),
            id: 0,
            seq: 0,
            part: 0,
            text: true,
            payload: c.cmd.to_json(&c.name).into_bytes(),
            deed: Deed::Deliver(c.conns.iter().map(|id| old_id(id.slot, id.generation)).collect()),
        };
        self.push_forward(&f);
    }

    /// Old side: sends the forwards so far, in pieces of one message each.
    pub(super) fn flush_forwards(&mut self) {
        if self.handover.fwd.is_empty() {
            return;
        }
        let fwd = std::mem::take(&mut self.handover.fwd);
        self.send_pieces(record::MSG_FORWARD, &fwd);
    }

    /// New side: a piece of forwards, in its place among the batches.
    pub(super) fn on_forwards(&mut self, msg: &[u8]) {
        if msg.len() < 2 {
            return;
        }
        self.handover.fwd_in.extend_from_slice(&msg[2..]);
        if msg[1] != 1 {
            return;
        }
        let body = std::mem::take(&mut self.handover.fwd_in);
        let Some(forwards) = Forward::decode_all(&body) else {
            tracing::error!(shard = self.id, "takeover: malformed forwarded publishes dropped");
            bump(&self.stats().handover_forwards_bad, 1);
            return;
        };
        for f in forwards {
            self.apply_forward(f);
        }
    }

    fn apply_forward(&mut self, f: Forward) {
        if f.stream == STREAM_COMMAND {
            return self.apply_forwarded_command(f);
        }
        let Ok(name) = std::str::from_utf8(&f.name) else { return };
        let stream = match f.stream {
            STREAM_TOPIC => Stream::Topic(name),
            STREAM_USER => Stream::User(name),
            _ => Stream::All,
        };
        let payload = f.payload.into_boxed_slice();
        let msg = Arc::new(Message { id: f.id, seq: f.seq, part: f.part, payload, text: f.text });
        bump(&self.stats().handover_forwards, 1);
        match f.deed {
            Deed::Log => {
                if msg.part as usize == self.id {
                    let now_us = self.precise_us();
                    self.history.retain_numbered(stream, &msg, now_us);
                }
                match stream {
                    Stream::User(user) => self.deliver_to_natives(user, &msg),
                    // Topics and broadcasts reach the connections accepted here from the
                    // sequencer, in order with the replays it answers them.
                    Stream::Topic(t) if self.id == SEQUENCER => {
                        self.stream_to_natives(Some(t), &msg)
                    }
                    Stream::All if self.id == SEQUENCER => self.stream_to_natives(None, &msg),
                    _ => {}
                }
            }
            Deed::Deliver(ids) => {
                self.heard_message(&msg);
                match stream {
                    Stream::All => self.deliver_stream(None, &msg, true),
                    Stream::Topic(topic) => self.deliver_stream(Some(topic), &msg, true),
                    Stream::User(user) => {
                        let mut targets: Vec<(u32, u32)> = ids
                            .iter()
                            .filter_map(|id| self.handover.moved.get(id).copied())
                            .collect();
                        self.deliver_to_user(Some(user), &mut targets, &msg);
                    }
                }
            }
        }
    }

    /// New side: a user command the old shard applied while connections moved, for the
    /// named ones that came here.
    fn apply_forwarded_command(&mut self, f: Forward) {
        let now_s = crate::auth::unix_now_s();
        let (Ok((user, cmd)), Deed::Deliver(ids)) =
            (crate::push::Command::from_json(&f.payload, now_s), f.deed)
        else {
            tracing::error!(shard = self.id, "takeover: a malformed forwarded command dropped");
            return bump(&self.stats().handover_forwards_bad, 1);
        };
        bump(&self.stats().handover_commands, 1);
        if let crate::push::Command::Disconnect { ban_until_s, .. } = cmd {
            if ban_until_s > now_s {
                self.shared.bans.ban(&user, ban_until_s);
            }
        }
        let shard = self.id as u16;
        let conns = ids
            .iter()
            .filter_map(|id| self.handover.moved.get(id).copied())
            .map(|(slot, generation)| crate::registry::ConnId { shard, slot, generation })
            .collect();
        self.on_conn_command(crate::push::ConnCommand { conns, name: user.into(), cmd });
    }

    /// New side, on the user's home shard: a user publish the old process numbered reaches
    /// the connections this process accepted itself meanwhile (the old one knows nothing
    /// of them); the ones taken over get it through their old shard's forwards.
    fn deliver_to_natives(&mut self, user: &str, msg: &Arc<Message>) {
        let hash = self.shared.user_keys.hash(user);
        let mut conns = Vec::new();
        self.users.connections(hash, &mut conns);
        for shard in 0..self.shards() {
            let list: Vec<crate::registry::ConnId> =
                conns.iter().filter(|c| c.shard as usize == shard).copied().collect();
            if list.is_empty() {
                continue;
            }
            let d = crate::push::Deliver {
                conns: list,
                user: Some(user.into()),
                msg: Arc::clone(msg),
                natives: true,
            };
            if shard == self.id {
                self.deliver_natives(&d);
            } else {
                self.send_mesh(shard, Msg::Deliver(Box::new(d)));
            }
        }
    }

    /// New side, on the sequencer: a topic message (None: a broadcast) the old process
    /// numbered, to every shard's connections that this process accepted itself. Their
    /// replays come from here too, so a resuming one gets each message once: in its replay
    /// or after it (the old process knows nothing of these connections).
    fn stream_to_natives(&mut self, topic: Option<&str>, msg: &Arc<Message>) {
        let me = self.id;
        for to in (0..self.shards()).filter(|&s| s != me) {
            let n = crate::push::ToNatives { topic: topic.map(Into::into), msg: Arc::clone(msg) };
            self.send_mesh(to, Msg::ToNatives(Box::new(n)));
        }
        self.deliver_stream(topic, msg, false);
    }

    /// New side: a topic message (None: a broadcast) to this shard's subscribers that moved
    /// here (`moved`), or to those it accepted itself.
    pub(in crate::shard) fn deliver_stream(
        &mut self,
        topic: Option<&str>,
        msg: &Message,
        moved: bool,
    ) {
        self.heard_message(msg);
        let moved_in = &self.handover.moved_in;
        let mut targets = std::mem::take(&mut self.scratch.targets);
        match topic {
            Some(t) => targets.extend_from_slice(self.topics.subscribers(t)),
            None => targets.extend(
                self.conns.iter().filter(|(_, _, c)| c.is_subscriber()).map(|(s, g, _)| (s, g)),
            ),
        }
        targets.retain(|t| moved_in.contains(t) == moved);
        self.deliver(&targets, msg, topic.map_or(Stream::All, Stream::Topic));
        targets.clear();
        self.scratch.targets = targets;
    }

    /// New side: delivers to the listed connections that this process accepted itself.
    pub(in crate::shard) fn deliver_natives(&mut self, d: &crate::push::Deliver) {
        let moved = &self.handover.moved_in;
        let mut targets: Vec<(u32, u32)> =
            d.conns.iter().map(|c| (c.slot, c.generation)).filter(|t| !moved.contains(t)).collect();
        self.deliver_to_user(d.user.as_deref(), &mut targets, &d.msg);
    }
}
