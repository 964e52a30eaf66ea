//! What an old shard writes for a connection it hands over: its record, and the bound on
//! that record's size that keeps a batch within one message.

use super::*;

impl Shard {
    /// At least what a connection's record takes in a batch: the fixed fields (under 128
    /// bytes with their lengths) and the ones that grow: ident, grants, a frame in progress,
    /// queued bytes, TLS state.
    pub(super) fn record_bytes(&self, slot: u32, generation: u32, conn: &Conn) -> usize {
        let ident = conn.ident.packed().map_or(0, str::len);
        let grants = self
            .grants
            .get(&slot)
            .filter(|(g, _)| *g == generation)
            .map_or(0, |(_, t)| t.iter().map(|g| g.len() + 4).sum());
        let outbox = conn.outbox.as_ref().map_or(0, |o| o.bytes);
        let tls = self.tls.export_bytes(slot, generation);
        128 + ident + grants + conn.ws.buffered_bytes() + 64 + outbox + tls
    }

    /// Milliseconds left of a frozen connection's maximum lifetime; 0: none armed.
    fn lifetime_left_ms(&self, slot: u32, generation: u32) -> u64 {
        let key = crate::registry::ConnId { shard: 0, slot, generation }.timer_key();
        self.handover.lifetimes.get(&key).map_or(0, |&at| at.saturating_sub(self.now_ms).max(1))
    }

    /// The record of a frozen connection.
    pub(super) fn record_of(&self, slot: u32, generation: u32) -> Option<Record> {
        let c = self.conns.get(slot, generation)?;
        let live = self.live.now_ms;
        let frozen = live.saturating_sub(self.handover.frozen_at_ms);
        let grants = self
            .grants
            .get(&slot)
            .filter(|(g, _)| *g == generation)
            .map(|(_, t)| t.to_vec())
            .unwrap_or_default();
        let expires_in_ms = self
            .expiries
            .get(&slot)
            .filter(|(g, _)| *g == generation)
            .map_or(0, |&(_, at)| at.saturating_sub(self.now_ms).max(1));
        Some(Record {
            kind: kind_code(c.kind)?,
            json: c.json,
            extra_tabs: self.extra_tabs(slot, generation),
            lifetime_left_ms: self.lifetime_left_ms(slot, generation),
            awaiting_pong: c.awaiting_pong,
            ws: c.ws.handover_byte()?,
            ws_partial: c.ws.handover_partial()?,
            rx_age_ms: crate::shard::conn::elapsed_ms(live, c.last_rx).saturating_sub(frozen)
                as u32,
            ping_age_ms: crate::shard::conn::elapsed_ms(live, c.last_ping).saturating_sub(frozen)
                as u32,
            ident: c.ident.packed().map(str::to_owned),
            grants,
            expires_in_ms,
            outbox: c.outbox.as_ref().map_or_else(Vec::new, |o| {
                let mut bytes = Vec::with_capacity(o.bytes);
                for (i, chunk) in o.chunks.iter().enumerate() {
                    bytes.extend_from_slice(&chunk.bytes()[if i == 0 { o.sent } else { 0 }..]);
                }
                bytes
            }),
            ping_end: c.outbox.as_ref().map_or(0, |o| o.ping_end as u32),
            tls: self.tls.export(slot, generation).unwrap_or_default(),
            old_id: old_id(slot, generation),
        })
    }
}
