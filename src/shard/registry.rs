//! The shard's side of the cluster's push registry (`crate::cluster::registry`), on a cluster
//! node only: the bridge keeps no per-user state, so the shards tell it what it writes.
//!
//! - A user's home shard counts the user's connections on this node in its index anyway
//!   ([`crate::push::UserIndex`]); when the first one is indexed it sends the bridge
//!   [`Msg::Online`], when the last one leaves [`Msg::Offline`]. The bridge writes those
//!   transitions to Redis. So a shard whose connections are gone in a shutdown or drain
//!   waits for the others before it exits ([`Shard::others_done`]): the last connection of
//!   a user homed here may close on another shard.
//! - The bridge refreshes every present user every third of `registry_ttl_ms` by walking the
//!   shards: it asks one shard at a time for the users of its connections from a slot on
//!   ([`Msg::RegistryWalk`]) and gets at most [`WALK_NAMES`] of them back
//!   ([`Msg::RegistryNames`]), so the names in flight are bounded by one answer.

use super::Shard;
use crate::push::{Msg, RegistryNames};

/// Most names in one [`Msg::RegistryNames`].
pub const WALK_NAMES: usize = 512;
/// Most slots one walk step looks at, so a sparse slab does not make one turn long.
const WALK_SLOTS: u32 = 16_384;

impl Shard {
    /// On the home shard: the user's first connection on this node is indexed.
    pub(super) fn user_online(&mut self, name: &str) {
        if let Some(bridge) = self.mesh.bridge() {
            self.send_mesh(bridge, Msg::Online(name.into()));
        }
    }

    /// On the home shard: the user's last connection on this node left.
    pub(super) fn user_offline(&mut self, name: &str) {
        if let Some(bridge) = self.mesh.bridge() {
            self.send_mesh(bridge, Msg::Offline(name.into()));
        }
    }

    /// In a shutdown or drain, with no connection left: whether this shard may exit. On a
    /// cluster node it first counts itself (once its mesh backlog is sent) and waits until
    /// every shard has; what they sent before counting themselves is then in its rings, so
    /// it takes that, tells the bridge what it must (the `Offline`s of users homed here), and
    /// goes once its own backlog is out. The shutdown deadline bounds the wait.
    pub(super) fn others_done(&mut self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        if self.mesh.bridge().is_none() {
            return true;
        }
        if !self.counted_empty {
            if self.mesh.flush_backlog() {
                return false;
            }
            self.counted_empty = true;
            self.shared.emptied.fetch_add(1, AcqRel);
        }
        if self.shared.emptied.load(Acquire) < self.shards() {
            return false;
        }
        self.process_mesh();
        let waiting = self.mesh.flush_backlog();
        self.ring_doorbells();
        !waiting
    }

    /// The bridge's refresh walk: the users of the client connections from slot `from` on.
    pub(super) fn on_registry_walk(&mut self, from: u32) {
        let Some(bridge) = self.mesh.bridge() else { return };
        let bound = self.conns.slot_bound();
        let end = bound.min(from.saturating_add(WALK_SLOTS));
        let mut answer = RegistryNames {
            shard: self.id as u16,
            from,
            next: None,
            names: Vec::with_capacity(64),
        };
        let mut slot = from;
        while slot < end && answer.names.len() < WALK_NAMES {
            if let Some((_, conn)) = self.conns.get_at(slot) {
                if let Some(user) = conn.ident.user().filter(|_| conn.is_subscriber()) {
                    answer.names.push(user.into());
                }
            }
            slot += 1;
        }
        answer.next = (slot < bound).then_some(slot);
        self.send_mesh(bridge, Msg::RegistryNames(Box::new(answer)));
    }
}
