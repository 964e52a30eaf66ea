//! The publish payload and the per-connection sequence window.
//!
//! A payload is ASCII so that c10m sends it as a WebSocket text frame and as one SSE
//! `data:` line: `s=<seq> t=<unix nanos> ` followed by `x` padding up to the requested
//! size (a payload is never shorter than its header).

#![forbid(unsafe_code)]

/// Largest payload the publisher builds.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;

/// Padding of `--payload-fill json`: a realistic notification, so compression runs see the
/// ratio of real JSON rather than of a run of `x`.
pub const JSON_FILL: &[u8] = br#"{"type":"notification","id":"n_8f3a2c91","user":"u_1029384","created_at":"2026-12-02T19:20:11.482Z","title":"New comment on your post","body":"Alice replied: Great write-up, thanks for sharing the numbers on connection cost!","actor":{"id":"u_5521","name":"Alice Martin","avatar":"https://cdn.example.com/a/5521.jpg"},"target":{"kind":"post","id":"p_77120","url":"https://example.com/p/77120#c_99812"},"read":false,"priority":"normal","tags":["comment","reply"]} "#;

/// Appends the payload for `seq`, sent at `sent_ns` (CLOCK_REALTIME), padded to `bytes`.
pub fn encode(out: &mut Vec<u8>, seq: u64, sent_ns: u64, bytes: usize) {
    encode_with(out, seq, sent_ns, bytes, b"x")
}

/// [`encode`] with the padding taken from `fill`, repeated as needed.
pub fn encode_with(out: &mut Vec<u8>, seq: u64, sent_ns: u64, bytes: usize, fill: &[u8]) {
    let start = out.len();
    out.extend_from_slice(format!("s={seq} t={sent_ns} ").as_bytes());
    let target = start + bytes.min(PAYLOAD_BYTES_MAX);
    let mut pad = fill.iter().cycle();
    while out.len() < target {
        out.push(pad.next().copied().unwrap_or(b'x'));
    }
}

/// The header of a received payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub sent_ns: u64,
}

/// Reads the header from the start of a received payload; `None` when the bytes are not
/// one of ours (another publisher, or damaged in transit).
pub fn parse(bytes: &[u8]) -> Option<Stamp> {
    let rest = bytes.strip_prefix(b"s=")?;
    let (seq, rest) = number(rest)?;
    let rest = rest.strip_prefix(b" t=")?;
    let (sent_ns, _) = number(rest)?;
    Some(Stamp { seq, sent_ns })
}

fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in &bytes[..digits] {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((value, &bytes[digits..]))
}

/// What a received sequence number means for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Newer than anything seen so far.
    InOrder,
    /// Older than the newest seen, but not seen before.
    Reordered,
    /// Seen before on this connection.
    Duplicate,
}

/// Remembers the newest sequence seen on a connection and which of the 64 before it
/// arrived, so duplicates and reordering are told apart in 16 bytes.
///
/// Sequence numbers start at 1; `newest == 0` means nothing arrived yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeqWindow {
    newest: u64,
    /// Bit `i` set: sequence `newest - 1 - i` arrived.
    below: u64,
}

impl SeqWindow {
    pub fn observe(&mut self, seq: u64) -> Arrival {
        if seq > self.newest {
            let shift = seq - self.newest;
            self.below = if self.newest == 0 || shift > 64 {
                0
            } else if shift == 64 {
                1 << 63
            } else {
                (self.below << shift) | (1 << (shift - 1))
            };
            self.newest = seq;
            return Arrival::InOrder;
        }
        if seq == self.newest {
            return Arrival::Duplicate;
        }
        let distance = self.newest - seq - 1;
        if distance >= 64 {
            // Too old to remember: count it as reordered rather than guess a duplicate.
            return Arrival::Reordered;
        }
        let bit = 1u64 << distance;
        if self.below & bit != 0 {
            Arrival::Duplicate
        } else {
            self.below |= bit;
            Arrival::Reordered
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode(&mut out, 17, 1_763_000_000_123_456_789, 64);
        assert_eq!(out.len(), 64);
        assert!(out.ends_with(b"xxx"));
        let stamp = parse(&out).unwrap();
        assert_eq!(stamp, Stamp { seq: 17, sent_ns: 1_763_000_000_123_456_789 });
        let mut short = Vec::new();
        encode(&mut short, 1, 2, 4);
        assert_eq!(short, b"s=1 t=2 ");
    }

    #[test]
    fn rejects_foreign_bytes() {
        assert_eq!(parse(b"hello"), None);
        assert_eq!(parse(b"s= t=1"), None);
        assert_eq!(parse(b"s=1 t="), None);
        assert_eq!(parse(b"s=99999999999999999999999 t=1"), None);
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn window() {
        let mut w = SeqWindow::default();
        assert_eq!(w.observe(1), Arrival::InOrder);
        assert_eq!(w.observe(3), Arrival::InOrder);
        assert_eq!(w.observe(3), Arrival::Duplicate);
        assert_eq!(w.observe(2), Arrival::Reordered);
        assert_eq!(w.observe(2), Arrival::Duplicate);
        assert_eq!(w.observe(1), Arrival::Duplicate);
        assert_eq!(w.observe(100), Arrival::InOrder);
        assert_eq!(w.observe(36), Arrival::Reordered);
        assert_eq!(w.observe(30), Arrival::Reordered);
        assert_eq!(w.observe(164), Arrival::InOrder);
        assert_eq!(w.observe(100), Arrival::Duplicate);
        assert_eq!(w.observe(99), Arrival::Reordered);
    }
}
