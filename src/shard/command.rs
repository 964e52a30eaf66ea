//! What the backend does to a user's live connections, wherever they are: disconnect them
//! (`POST /disconnect`, optionally banning the user for a while), and subscribe or
//! unsubscribe them from a topic (`POST /subscribe`, `POST /unsubscribe`).
//!
//! The route is a publish's: the accepting shard sends [`Msg::UserCommand`] to the user's
//! home shard, which knows where the user's connections are and sends each owning shard
//! [`Msg::ConnCommand`] with its connections. A ban is process-wide state ([`Bans`]) read at
//! every handshake that names a user.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use super::conn::{Chunk, Kind};
use super::{client, Shard};
use crate::metrics::{bump, CloseReason};
use crate::proto::{http1, ws};
use crate::push::{home_shard, Command, ConnCommand, Msg, UserCommand};
use crate::registry::ConnId;

/// The WebSocket close code of `POST /disconnect`; its reason is
/// `{"disconnect":true,"reconnect":false[,"reason":"…"]}`.
pub const DISCONNECT_CLOSE_CODE: u16 = 4003;
/// The longest operator reason carried in the close frame (it must fit 123 bytes with the
/// rest of the JSON).
pub const REASON_BYTES_MAX: usize = 64;
/// The longest ban.
pub const BAN_S_MAX: u64 = 30 * 24 * 3600;

/// Users refused at the handshake until a time (Unix seconds). Empty, a handshake pays one
/// relaxed load and no lock.
#[derive(Default)]
pub struct Bans {
    count: AtomicUsize,
    until: Mutex<HashMap<Box<str>, u64>>,
}

impl Bans {
    pub fn ban(&self, user: &str, until_unix_s: u64) {
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(user.into(), until_unix_s);
        self.count.store(map.len(), Relaxed);
    }

    /// Seconds left of `user`'s ban, if any; forgets bans that have ended.
    pub fn left_s(&self, user: &str, now_unix_s: u64) -> Option<u64> {
        if self.count.load(Relaxed) == 0 {
            return None;
        }
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, until| *until > now_unix_s);
        self.count.store(map.len(), Relaxed);
        map.get(user).map(|until| until - now_unix_s)
    }
}

/// The close reason (WebSocket) or event data (SSE, long poll) of a disconnect.
pub fn disconnect_body(reason: &str) -> String {
    let mut v = serde_json::json!({ "disconnect": true, "reconnect": false });
    if !reason.is_empty() {
        v["reason"] = reason.into();
    }
    v.to_string()
}

impl Shard {
    /// Sends `cmd` for `user` on its way from the shard that accepted it: to the user's
    /// home shard, and on a cluster node to the bridge, which tells every other node.
    pub(crate) fn command_user(&mut self, user: &str, cmd: Command) {
        let hash = self.shared.user_keys.hash(user);
        if let Some(bridge) = self.mesh.bridge() {
            let c = UserCommand { user: hash, name: user.into(), cmd: cmd.clone() };
            self.send_mesh(bridge, Msg::UserCommand(Box::new(c)));
        }
        let c = UserCommand { user: hash, name: user.into(), cmd };
        let home = home_shard(hash, self.shards());
        if home == self.id {
            self.on_user_command(c);
        } else {
            self.send_mesh(home, Msg::UserCommand(Box::new(c)));
        }
    }

    /// On the user's home shard: hands the command to every shard holding a connection of
    /// the user.
    pub(super) fn on_user_command(&mut self, c: UserCommand) {
        if let Command::Disconnect { ban_until_s, .. } = c.cmd {
            // From another node, the ban starts here; from this one, it is already set.
            if ban_until_s > crate::auth::unix_now_s() {
                self.shared.bans.ban(&c.name, ban_until_s);
            }
        }
        let mut conns = Vec::new();
        self.users.connections(c.user, &mut conns);
        for shard in 0..self.shards() {
            let on: Vec<ConnId> =
                conns.iter().filter(|id| id.shard as usize == shard).copied().collect();
            if on.is_empty() {
                continue;
            }
            let cc = ConnCommand { conns: on, name: c.name.clone(), cmd: c.cmd.clone() };
            if shard == self.id {
                self.on_conn_command(cc);
            } else {
                self.send_mesh(shard, Msg::ConnCommand(Box::new(cc)));
            }
        }
    }

    /// On a shard holding some of the user's connections: applies the command to each that
    /// still serves that user (the index is keyed by hash). While a live upgrade moves this
    /// shard's connections, the command also goes to the new shard, behind the batches
    /// already sent, for the named connections that are on their way or gone there
    /// (`handover::forward`).
    pub(super) fn on_conn_command(&mut self, c: ConnCommand) {
        if self.forwarding() {
            self.forward_command(&c);
        }
        self.apply_conn_command(c);
    }

    /// Applies a user command to the named connections this shard holds (not forwarded:
    /// also for a kept command whose connection came back from a live upgrade's export).
    pub(super) fn apply_conn_command(&mut self, c: ConnCommand) {
        for id in c.conns {
            let (slot, generation) = (id.slot, id.generation);
            let Some(conn) = self.conns.get(slot, generation) else { continue };
            if !conn.is_subscriber() || conn.ident.user() != Some(&*c.name) {
                continue;
            }
            if self.handover.is_exported(slot) {
                // On its way to the new process of a live upgrade (its state is there now):
                // the command went there behind its batch, and is kept here should the
                // connection come back.
                self.handover_hold_command(slot, generation, &c.name, &c.cmd);
                continue;
            }
            let kind = conn.kind;
            match &c.cmd {
                Command::Disconnect { reason, .. } => {
                    self.disconnect(slot, generation, kind, reason)
                }
                // Told once: during a live upgrade both processes may apply the same
                // command from the bus to a connection that moved.
                Command::Subscribe(topic) if conn.ident.has_topic(topic) => {}
                Command::Subscribe(topic) => {
                    let said = match client::subscribe(self, slot, generation, topic) {
                        Ok(()) => serde_json::json!({ "subscribed": &**topic, "server": true }),
                        Err(why) => serde_json::json!({ "error": why, "topic": &**topic }),
                    };
                    self.tell(slot, generation, kind, "subscribed", &said.to_string());
                }
                Command::Unsubscribe(topic) => {
                    if client::unsubscribe(self, slot, generation, topic) {
                        let said = serde_json::json!({ "unsubscribed": &**topic, "server": true });
                        self.tell(slot, generation, kind, "unsubscribed", &said.to_string());
                    }
                }
            }
        }
    }

    /// A control message to one client: a text frame, or a named SSE event.
    fn tell(&mut self, slot: u32, generation: u32, kind: Kind, event: &str, json: &str) {
        let out = match kind {
            Kind::Ws => {
                let mut f = Vec::with_capacity(json.len() + 4);
                ws::write_frame(&mut f, ws::OpCode::Text, json.as_bytes());
                f
            }
            Kind::Sse => self.sse_named(slot, generation, event, json.as_bytes()),
            // A long poll names its topics on every request.
            _ => return,
        };
        self.queue(slot, generation, Chunk::Owned(out));
    }

    fn disconnect(&mut self, slot: u32, generation: u32, kind: Kind, reason: &str) {
        let body = disconnect_body(reason);
        bump(&self.stats().disconnects, 1);
        let why = CloseReason::Disconnected;
        match kind {
            Kind::Ws => {
                debug_assert!(body.len() <= ws::CLOSE_REASON_BYTES_MAX);
                client::close_ws(self, slot, generation, DISCONNECT_CLOSE_CODE, &body, why);
            }
            Kind::Sse => {
                let out = self.sse_named(slot, generation, "disconnect", body.as_bytes());
                self.queue(slot, generation, Chunk::Owned(out));
                self.finish(slot, generation, why);
            }
            _ => {
                let mut out = Vec::with_capacity(body.len() + 128);
                let headers = [("Content-Type", "application/json")];
                http1::write_response(&mut out, 200, &headers, body.as_bytes(), false);
                self.polls.remove(&slot);
                self.queue(slot, generation, Chunk::Owned(out));
                self.finish(slot, generation, why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_end_and_are_forgotten() {
        let bans = Bans::default();
        assert_eq!(bans.left_s("u", 100), None);
        bans.ban("u", 160);
        bans.ban("v", 110);
        assert_eq!(bans.left_s("u", 100), Some(60));
        assert_eq!(bans.left_s("w", 100), None);
        assert_eq!(bans.left_s("v", 120), None, "ended");
        assert_eq!(bans.count.load(Relaxed), 1, "v forgotten");
        assert_eq!(bans.left_s("u", 200), None);
        assert_eq!(bans.count.load(Relaxed), 0);
    }

    #[test]
    fn the_disconnect_reason_fits_a_close_frame() {
        let long = "r".repeat(REASON_BYTES_MAX);
        assert!(disconnect_body(&long).len() <= ws::CLOSE_REASON_BYTES_MAX);
        assert_eq!(disconnect_body(""), r#"{"disconnect":true,"reconnect":false}"#);
    }
}
