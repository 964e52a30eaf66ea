//! TLS between the shard's I/O and the client protocols: ciphertext received is decrypted
//! before the protocol code sees it, plaintext queued is encrypted before the outbox holds
//! it. Sessions live in a side table by slot, so a plain connection's slab entry does not grow
//! and a plain server (no `--tls-cert`) pays nothing but an empty vector.

use std::sync::atomic::Ordering;

use super::conn::Chunk;
use super::Shard;
use crate::metrics::{bump, CloseReason};
use crate::tls::Session;

/// TLS sessions of this shard's client connections, by slot. An entry exists from the accept
/// of a connection on a TLS listener to its close.
#[derive(Default)]
pub struct Sessions {
    /// (generation, session) by slot; grows to the highest slot used.
    by_slot: Vec<Option<(u32, Box<Session>)>>,
}

impl Sessions {
    fn insert(&mut self, slot: u32, generation: u32, s: Box<Session>) {
        let i = slot as usize;
        if self.by_slot.len() <= i {
            self.by_slot.resize_with(i + 1, || None);
        }
        debug_assert!(self.by_slot[i].is_none(), "slot {slot} already has a session");
        self.by_slot[i] = Some((generation, s));
    }

    fn get_mut(&mut self, slot: u32, generation: u32) -> Option<&mut Session> {
        match self.by_slot.get_mut(slot as usize) {
            Some(Some((g, s))) if *g == generation => Some(s),
            _ => None,
        }
    }

    pub(super) fn has(&self, slot: u32, generation: u32) -> bool {
        matches!(self.by_slot.get(slot as usize), Some(Some((g, _))) if *g == generation)
    }

    /// A live upgrade: the session's state, for an established one.
    pub(super) fn export(&self, slot: u32, generation: u32) -> Option<Vec<u8>> {
        match self.by_slot.get(slot as usize) {
            Some(Some((g, s))) if *g == generation => s.export(),
            _ => None,
        }
    }

    /// The bytes [`Sessions::export`] would write (0 for none).
    pub(super) fn export_bytes(&self, slot: u32, generation: u32) -> usize {
        match self.by_slot.get(slot as usize) {
            Some(Some((g, s))) if *g == generation && s.is_established() => {
                crate::tls::record::EXPORT_BYTES + s.pending_bytes()
            }
            _ => 0,
        }
    }

    /// A live upgrade, new side: a connection's session from the old process.
    /// Also a connection moved from another shard of this process ([`super::placement`]).
    pub(super) fn adopt(&mut self, slot: u32, generation: u32, s: Box<Session>) {
        self.insert(slot, generation, s);
    }

    /// Takes a connection's session out (it moves to another shard with the connection).
    pub(super) fn take(&mut self, slot: u32, generation: u32) -> Option<Box<Session>> {
        let e = self.by_slot.get_mut(slot as usize)?;
        match e.take() {
            Some((g, s)) if g == generation => Some(s),
            other => {
                *e = other;
                None
            }
        }
    }

    fn remove(&mut self, slot: u32, generation: u32) {
        if let Some(e) = self.by_slot.get_mut(slot as usize) {
            if e.as_ref().is_some_and(|(g, _)| *g == generation) {
                *e = None;
            }
        }
    }
}

/// What became of received bytes on a connection that may speak TLS.
pub(super) enum Received {
    /// Not a TLS connection: the bytes are plaintext as they are.
    Plain,
    /// Decrypted into the plaintext buffer; the peer may have sent close_notify. `out`: TLS
    /// bytes the handshake owes the peer (its last flight, TLS 1.3 session tickets), for the
    /// caller to queue before anything it answers (their records come first in sequence).
    Decrypted { peer_closed: bool, out: Vec<u8> },
    /// The session failed; the connection is closing, the bytes are void.
    Failed,
}

impl Shard {
    /// Gives a connection accepted on a client listener its TLS session, when TLS is on.
    /// Returns false when no session could be made (the connection is then closed).
    pub(super) fn tls_accept(&mut self, slot: u32, generation: u32) -> bool {
        let Some(tls) = self.shared.tls.as_ref() else {
            return true;
        };
        match tls.session() {
            Ok(s) => {
                self.tls.insert(slot, generation, Box::new(s));
                true
            }
            Err(_) => {
                bump(&self.stats().tls_failures[crate::tls::Failure::Handshake as usize], 1);
                self.abort(slot, generation, CloseReason::ProtocolError);
                false
            }
        }
    }

    /// Decrypts `rx` into `plain` on a TLS connection and sends what the handshake owes.
    pub(super) fn tls_receive(
        &mut self,
        slot: u32,
        generation: u32,
        rx: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> Received {
        let Some(session) = self.tls.get_mut(slot, generation) else {
            return Received::Plain;
        };
        if session.is_failed() {
            return Received::Failed;
        }
        let mut out = Vec::new();
        let result = session.receive(rx, plain, &mut out);
        match result {
            Ok(p) => {
                if p.established {
                    bump(&self.stats().tls_handshakes, 1);
                }
                Received::Decrypted { peer_closed: p.peer_closed, out }
            }
            Err(why) => {
                if !out.is_empty() {
                    self.queue_raw(slot, generation, Chunk::Owned(out));
                }
                bump(&self.stats().tls_failures[why as usize], 1);
                // The alert (if any) is queued; send it, then close.
                self.finish(slot, generation, CloseReason::ProtocolError);
                Received::Failed
            }
        }
    }

    /// Encrypts a chunk for a TLS connection; other connections get it back unchanged. None:
    /// the connection cannot send application data (handshake not complete, closing), or its
    /// record layer gave up (it is then closed).
    pub(super) fn tls_encrypt(
        &mut self,
        slot: u32,
        generation: u32,
        chunk: Chunk,
    ) -> Option<Chunk> {
        let Some(session) = self.tls.get_mut(slot, generation) else {
            return Some(chunk);
        };
        let mut out = Vec::new();
        match session.encrypt(chunk.bytes(), &mut out) {
            Ok(()) => Some(Chunk::Owned(out)),
            Err(why) => {
                if session.is_established() {
                    // The keys are spent (RECORDS_PER_KEY_MAX): the client reconnects.
                    bump(&self.stats().tls_failures[why as usize], 1);
                    self.abort(slot, generation, CloseReason::ProtocolError);
                }
                None
            }
        }
    }

    /// Queues a close_notify on a TLS connection whose handshake completed.
    pub(super) fn tls_close_notify(&mut self, slot: u32, generation: u32) {
        let Some(session) = self.tls.get_mut(slot, generation) else {
            return;
        };
        let mut out = Vec::new();
        if session.close_notify(&mut out).is_ok() && !out.is_empty() {
            self.queue_raw(slot, generation, Chunk::Owned(out));
        }
    }

    /// Forgets the session of a closed slot.
    pub(super) fn tls_forget(&mut self, slot: u32, generation: u32) {
        self.tls.remove(slot, generation);
    }

    /// SIGHUP: shard 0 reloads the certificate every shard presents.
    pub(super) fn tls_reload_if_asked(&mut self) {
        if self.id != 0 || !self.shared.signals.reload.swap(false, Ordering::Relaxed) {
            return;
        }
        let Some(tls) = self.shared.tls.as_ref() else {
            tracing::warn!("SIGHUP: no --tls-cert configured, nothing to reload");
            return;
        };
        match tls.reload() {
            Ok(()) => {
                bump(&self.stats().tls_reloads, 1);
                tracing::info!("SIGHUP: TLS certificate reloaded");
            }
            Err(e) => {
                bump(&self.stats().tls_reload_failures, 1);
                tracing::error!("SIGHUP: TLS reload failed, keeping the current certificate: {e}");
            }
        }
    }
}
