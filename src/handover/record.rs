//! What moves with one connection besides its socket, and the per-shard channel's messages.
//! Little-endian, length-prefixed; a decoder never trusts a length it has not checked.

use crate::wire::{put_bytes, Reader};

/// One connection's user-space state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// 1 WebSocket, 2 echo WebSocket, 3 SSE, 4 admin.
    pub kind: u8,
    /// `format=json`.
    pub json: bool,
    pub awaiting_pong: bool,
    /// The WebSocket session's permessage-deflate state (`ws::Session::handover_byte`).
    pub ws: u8,
    /// Milliseconds since the last bytes received, and since the last ping left.
    pub rx_age_ms: u32,
    pub ping_age_ms: u32,
    /// The packed user id and topics (`user\0topic\0…`), if any.
    pub ident: Option<String>,
    /// Topic patterns the token granted, and milliseconds until it expires (0: no token).
    pub grants: Vec<String>,
    pub expires_in_ms: u64,
    /// Bytes queued and not yet sent, in order, and where in them a ping ends (0: none).
    pub outbox: Vec<u8>,
    pub ping_end: u32,
    /// TLS record state (`tls::Session::export`); empty for a plain connection. Layout 2.
    pub tls: Vec<u8>,
    /// A WebSocket frame or message still arriving (`ws::Session::handover_partial`);
    /// empty when none. Layout 2.
    pub ws_partial: Vec<u8>,
    /// Browser tabs beyond the first sharing the connection. Layout 4.
    pub extra_tabs: u8,
    /// Milliseconds left of the connection's maximum lifetime (0: none armed). Layout 4.
    pub lifetime_left_ms: u64,
    /// The connection's slot and generation in the old process (`slot | generation << 32`),
    /// which forwarded deliveries name it by. Layout 5.
    pub old_id: u64,
}

/// Channel message kinds.
pub const MSG_START: u8 = b'S';
pub const MSG_BATCH: u8 = b'B';
pub const MSG_ACK: u8 = b'A';
/// A piece of the partition's history log (`H`, 1 on the last piece, bytes), before `S`.
pub const MSG_HISTORY: u8 = b'H';
/// A piece of forwarded publishes (`F`, 1 on the last piece, [`Forward`] records): what the
/// old shard numbered or delivered while its connections move (layout 5), and the user
/// commands it applied (layout 6).
pub const MSG_FORWARD: u8 = b'F';

impl Record {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.kind, self.json as u8, self.awaiting_pong as u8, self.ws]);
        out.extend_from_slice(&self.rx_age_ms.to_le_bytes());
        out.extend_from_slice(&self.ping_age_ms.to_le_bytes());
        put_bytes(out, self.ident.as_deref().unwrap_or("").as_bytes());
        out.extend_from_slice(&(self.grants.len() as u32).to_le_bytes());
        for g in &self.grants {
            put_bytes(out, g.as_bytes());
        }
        out.extend_from_slice(&self.expires_in_ms.to_le_bytes());
        put_bytes(out, &self.outbox);
        out.extend_from_slice(&self.ping_end.to_le_bytes());
        put_bytes(out, &self.tls);
        put_bytes(out, &self.ws_partial);
        out.push(self.extra_tabs);
        out.extend_from_slice(&self.lifetime_left_ms.to_le_bytes());
        out.extend_from_slice(&self.old_id.to_le_bytes());
    }

    /// A record as the old process's `layout` wrote it (1: no TLS state).
    fn decode(r: &mut Reader<'_>, layout: u32) -> Option<Record> {
        let head = r.take(4)?;
        let mut rec = Record {
            kind: head[0],
            json: head[1] != 0,
            awaiting_pong: head[2] != 0,
            ws: head[3],
            rx_age_ms: r.u32()?,
            ping_age_ms: r.u32()?,
            ..Record::default()
        };
        let ident = r.string()?;
        rec.ident = (!ident.is_empty()).then_some(ident);
        let grants = r.u32()? as usize;
        for _ in 0..grants.min(4096) {
            rec.grants.push(r.string()?);
        }
        rec.expires_in_ms = r.u64()?;
        rec.outbox = r.bytes()?.to_vec();
        rec.ping_end = r.u32()?;
        if layout >= 2 {
            rec.tls = r.bytes()?.to_vec();
            rec.ws_partial = r.bytes()?.to_vec();
        }
        if layout >= 4 {
            rec.extra_tabs = r.take(1)?[0];
            rec.lifetime_left_ms = r.u64()?;
        }
        if layout >= 5 {
            rec.old_id = r.u64()?;
        }
        Some(rec)
    }
}

/// A batch: `B`, its number, the record count, the records.
pub fn encode_batch(seq: u32, records: &[Record], out: &mut Vec<u8>) {
    out.push(MSG_BATCH);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        r.encode(out);
    }
}

/// The records of a batch message (after its kind byte) in the sender's `layout`, or None if
/// it is malformed.
pub fn decode_batch(body: &[u8], layout: u32) -> Option<(u32, Vec<Record>)> {
    let mut r = Reader(body);
    let seq = r.u32()?;
    let n = r.u32()? as usize;
    if n > super::BATCH_MAX {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Record::decode(&mut r, layout)?);
    }
    r.0.is_empty().then_some((seq, out))
}

/// The start of a shard's handover: its history top, what it heard of the other partitions,
/// and its message counter, so positions and ids continue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Start {
    pub top: u64,
    pub heard: Vec<u64>,
    pub msg_seq: u64,
}

pub fn encode_start(s: &Start, out: &mut Vec<u8>) {
    out.push(MSG_START);
    out.extend_from_slice(&s.top.to_le_bytes());
    out.extend_from_slice(&s.msg_seq.to_le_bytes());
    out.extend_from_slice(&(s.heard.len() as u32).to_le_bytes());
    for h in &s.heard {
        out.extend_from_slice(&h.to_le_bytes());
    }
}

pub fn decode_start(body: &[u8]) -> Option<Start> {
    let mut r = Reader(body);
    let top = r.u64()?;
    let msg_seq = r.u64()?;
    let n = r.u32()? as usize;
    let mut heard = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        heard.push(r.u64()?);
    }
    Some(Start { top, heard, msg_seq })
}

/// An ack: `A`, the batch number, one byte per record (1: taken, 0: refused).
pub fn encode_ack(seq: u32, taken: &[bool], out: &mut Vec<u8>) {
    out.push(MSG_ACK);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend(taken.iter().map(|&t| t as u8));
}

pub fn decode_ack(body: &[u8]) -> Option<(u32, Vec<bool>)> {
    let mut r = Reader(body);
    let seq = r.u32()?;
    Some((seq, r.0.iter().map(|&b| b != 0).collect()))
}

/// What a forwarded publish does in the new shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deed {
    /// Keep it in this partition's log (the old partition numbered it).
    Log,
    /// Deliver it to this shard's connections of the stream: subscribers of the topic,
    /// every client (`All`), or for a user the connections named by their old ids.
    Deliver(Vec<u64>),
}

/// One forwarded publish: its stream (0 all, 1 topic, 2 user, and the name), the message as
/// the old process numbered it, and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub stream: u8,
    pub name: Vec<u8>,
    pub id: u64,
    pub seq: u64,
    pub part: u16,
    pub text: bool,
    pub payload: Vec<u8>,
    pub deed: Deed,
}

pub const STREAM_ALL: u8 = 0;
pub const STREAM_TOPIC: u8 = 1;
pub const STREAM_USER: u8 = 2;
/// Not a publish: a user command (`disconnect`, `subscribe`, `unsubscribe`) that reached
/// the old shard from another node while the named connections move; `name` is the user,
/// `payload` the command's bus JSON ([`crate::push::Command::to_json`]). Layout 6.
pub const STREAM_COMMAND: u8 = 3;

impl Forward {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.stream);
        put_bytes(out, &self.name);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.part.to_le_bytes());
        out.push(self.text as u8);
        put_bytes(out, &self.payload);
        match &self.deed {
            Deed::Log => out.extend_from_slice(&u32::MAX.to_le_bytes()),
            Deed::Deliver(ids) => {
                out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                ids.iter().for_each(|id| out.extend_from_slice(&id.to_le_bytes()));
            }
        }
    }

    /// The forwarded publishes of a whole (reassembled) `F` message, or None if malformed.
    pub fn decode_all(body: &[u8]) -> Option<Vec<Forward>> {
        let mut r = Reader(body);
        let mut out = Vec::new();
        while !r.0.is_empty() {
            let stream = r.u8()?;
            if stream > STREAM_COMMAND {
                return None;
            }
            let name = r.bytes()?.to_vec();
            let (id, seq, part) = (r.u64()?, r.u64()?, r.u16()?);
            let text = r.u8()? != 0;
            let payload = r.bytes()?.to_vec();
            let deed = match r.u32()? {
                u32::MAX => Deed::Log,
                n => {
                    let n = n as usize;
                    if n > r.0.len() / 8 {
                        return None;
                    }
                    (0..n).map(|_| r.u64()).collect::<Option<Vec<u64>>>().map(Deed::Deliver)?
                }
            };
            out.push(Forward { stream, name, id, seq, part, text, payload, deed });
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_truncation_is_refused() {
        let a = Record {
            kind: 1,
            json: true,
            ws: 17,
            rx_age_ms: 5,
            ping_age_ms: 700,
            ident: Some("alice\0news".into()),
            grants: vec!["news".into(), "p.*".into()],
            expires_in_ms: 9000,
            outbox: b"\x81\x02hi".to_vec(),
            ping_end: 2,
            tls: vec![1; 106],
            ws_partial: vec![2; 40],
            extra_tabs: 2,
            lifetime_left_ms: 41_000,
            ..Record::default()
        };
        let b = Record { kind: 3, ..Record::default() };
        let mut out = Vec::new();
        encode_batch(7, &[a.clone(), b.clone()], &mut out);
        assert_eq!(out[0], MSG_BATCH);
        assert_eq!(decode_batch(&out[1..], 5), Some((7, vec![a, b.clone()])));
        for cut in 1..out.len() - 1 {
            assert!(decode_batch(&out[1..cut], 5).is_none(), "cut at {cut}");
        }
        // Layout 4 (no old id), 2 and 3 (no tab count) and 1 (no TLS state) are still read:
        // the same bytes without the last fields.
        let mut out = Vec::new();
        encode_batch(8, std::slice::from_ref(&b), &mut out);
        out.truncate(out.len() - 8);
        assert_eq!(decode_batch(&out[1..], 4), Some((8, vec![b.clone()])));
        out.truncate(out.len() - 9);
        assert_eq!(decode_batch(&out[1..], 3), Some((8, vec![b.clone()])));
        out.truncate(out.len() - 8);
        assert_eq!(decode_batch(&out[1..], 1), Some((8, vec![b])));
        let s = Start { top: 42, heard: vec![1, 2], msg_seq: 9 };
        let mut out = Vec::new();
        encode_start(&s, &mut out);
        assert_eq!(decode_start(&out[1..]), Some(s));
        let mut out = Vec::new();
        encode_ack(3, &[true, false], &mut out);
        assert_eq!(decode_ack(&out[1..]), Some((3, vec![true, false])));
    }

    #[test]
    fn forwards_round_trip_and_truncation_is_refused() {
        let a = Forward {
            stream: STREAM_USER,
            name: b"alice".to_vec(),
            id: 77,
            seq: 12,
            part: 1,
            text: true,
            payload: b"hello".to_vec(),
            deed: Deed::Deliver(vec![3 | 1 << 32, 9]),
        };
        let b = Forward { stream: STREAM_ALL, name: Vec::new(), deed: Deed::Log, ..a.clone() };
        let c = Forward {
            stream: STREAM_COMMAND,
            payload: br#"{"user":"alice","cmd":"subscribe","topic":"news"}"#.to_vec(),
            ..a.clone()
        };
        let mut out = Vec::new();
        a.encode(&mut out);
        b.encode(&mut out);
        c.encode(&mut out);
        let all = vec![a, b, c];
        assert_eq!(Forward::decode_all(&out), Some(all.clone()));
        // A cut decodes to nothing, or (at a record's end) to the whole records before it.
        for cut in 1..out.len() {
            if let Some(f) = Forward::decode_all(&out[..cut]) {
                assert!(f.len() < all.len() && f[..] == all[..f.len()], "cut at {cut}");
            }
        }
        assert!(Forward::decode_all(&[9, 0, 0, 0, 0]).is_none());
        assert!(Forward::decode_all(&[STREAM_COMMAND + 1, 0, 0, 0, 0]).is_none());
    }
}
