//! permessage-deflate (RFC 7692) without per-connection compression state.
//!
//! c10m always agrees on *no context takeover in both directions*: every message is
//! compressed, and inflated, on its own. So a connection that negotiated the extension costs
//! one bit, not a deflate context with a 32 KiB window: the shard keeps one [`Deflater`] and
//! one [`Inflater`] for all its connections, and a published message is compressed at most
//! once per shard and the frame shared by every recipient that negotiated it.
//!
//! - `server_no_context_takeover` is always in the answer (RFC 7692 section 7.1.1.1 lets the
//!   server add it unasked).
//! - `client_no_context_takeover` is always in the answer too, asked for or not: with it a
//!   client's messages need no inflate context kept between them. A client that asked for
//!   context takeover for its own messages still gets the extension, just without it; one
//!   that ignored the answer and refers back to an earlier message fails its inflate with
//!   1007.
//! - `server_max_window_bits=N` (8..=15), when offered, is echoed and honoured by sending
//!   messages longer than 2^N bytes uncompressed: without context takeover no back reference
//!   reaches further than the message's own start, so a shorter message fits any window,
//!   and zlib-family compressors cannot produce an 8-bit window at all.
//! - `client_max_window_bits` is accepted and not echoed: the inflater's window is 15 bits,
//!   which reads a stream made with any smaller window.
//! - An offer with an unknown, repeated or malformed parameter is declined (the next offer is
//!   tried); declining all of them leaves the connection uncompressed, never refused.
#![forbid(unsafe_code)]

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::ws::{frame_header_with, OpCode};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const NAME: &str = "permessage-deflate";

/// The 4 bytes that end a sync flush; a sender strips them, a receiver appends them
/// (RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The window (in bits) this side compresses with and inflates with.
const WINDOW_BITS: u8 = 15;

/// What was agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The window the client allows the server: a message compresses only if it is no longer
    /// than 2^this bytes. 15 when the client did not say.
    pub server_max_window_bits: u8,
    /// Whether the answer must name `server_max_window_bits` (the client offered it).
    echo_server_bits: bool,
}

impl Agreed {
    /// What a session keeps of an agreement: the server window alone.
    pub fn with_server_bits(bits: u8) -> Agreed {
        Agreed { server_max_window_bits: bits, echo_server_bits: bits < WINDOW_BITS }
    }

    /// Whether a payload of `len` bytes may go compressed to this client.
    pub fn fits(&self, len: usize) -> bool {
        self.server_max_window_bits >= WINDOW_BITS || len <= 1 << self.server_max_window_bits
    }

    /// The `Sec-WebSocket-Extensions` header line of the 101 answer, with its CRLF.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        out.extend_from_slice(NAME.as_bytes());
        out.extend_from_slice(b"; server_no_context_takeover; client_no_context_takeover");
        if self.echo_server_bits {
            out.extend_from_slice(b"; server_max_window_bits=");
            super::push_decimal(out, u64::from(self.server_max_window_bits));
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Picks the first acceptable permessage-deflate offer from the values of every
/// `Sec-WebSocket-Extensions` header, in order; `None` when there is none.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
    values
        .into_iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

/// One extension element, `name; param; param=value`: `Some` if it is an acceptable
/// permessage-deflate offer.
fn accept_offer(element: &str) -> Option<Agreed> {
    let mut parts = element.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen = [false; 4];
    let mut agreed = Agreed { server_max_window_bits: WINDOW_BITS, echo_server_bits: false };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                agreed.server_max_window_bits = window_bits(value?)?;
                agreed.echo_server_bits = true;
                2
            }
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(agreed)
}

/// A parameter value: a token, or a quoted string whose content is a token (RFC 7692
/// section 7: the unquoted value must still be valid).
fn unquote(v: &str) -> Option<&str> {
    let inner = match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        None => v,
    };
    (!inner.is_empty() && inner.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(inner)
}

/// 8..=15 in decimal without leading zeros (the RFC's ABNF).
fn window_bits(v: &str) -> Option<u8> {
    if v.starts_with('0') {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// One shard's compressor, shared by every connection: each message on its own (the
/// context is reset before each), raw deflate with a sync flush whose tail is stripped.
pub struct Deflater {
    level: u32,
    min_bytes: usize,
    /// Made on first use: zlib's state is a few hundred KiB, and a shard that never
    /// compresses never pays it.
    inner: Option<Compress>,
}

impl Deflater {
    /// `level` 1..=9; payloads under `min_bytes` are never compressed.
    pub fn new(level: u32, min_bytes: usize) -> Deflater {
        Deflater { level, min_bytes, inner: None }
    }

    /// Whether a payload of `len` bytes is worth trying.
    pub fn wants(&self, len: usize) -> bool {
        len >= self.min_bytes
    }

    /// Appends one final frame of `payload`, compressed with RSV1 set, and returns true; or
    /// appends nothing and returns false when the payload is under the minimum or would
    /// not shrink (the caller sends it plain).
    pub fn frame(&mut self, out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) -> bool {
        if !self.wants(payload.len()) {
            return false;
        }
        let level = self.level;
        let c = self.inner.get_or_insert_with(|| Compress::new(Compression::new(level), false));
        c.reset();
        // Room for stored blocks (5 bytes per 64 KiB) and the flush: the output never runs
        // out, so one call consumes the whole payload.
        let mut body = Vec::with_capacity(payload.len() + payload.len() / 1024 + 64);
        let done = c.compress_vec(payload, &mut body, FlushCompress::Sync);
        let complete = matches!(done, Ok(Status::Ok))
            && c.total_in() == payload.len() as u64
            && body.ends_with(&TAIL);
        if !complete {
            return false;
        }
        body.truncate(body.len() - TAIL.len());
        if body.len() >= payload.len() {
            return false;
        }
        let (header, len) = frame_header_with(opcode, true, body.len());
        out.reserve(len + body.len());
        out.extend_from_slice(header.get(..len).unwrap_or_default());
        out.extend_from_slice(&body);
        true
    }
}

/// Why a compressed message could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the message limit: 1009.
    TooBig,
    /// Not a valid deflate stream (or it refers to an earlier message): 1007.
    Invalid,
}

/// One shard's decompressor, shared by every connection (nothing is kept between messages).
#[derive(Default)]
pub struct Inflater {
    inner: Option<Decompress>,
}

impl Inflater {
    pub fn new() -> Inflater {
        Inflater::default()
    }

    /// Inflates one message's payload (the tail already stripped by the sender) into a new
    /// buffer of at most `max` bytes. The output grows as the inflate needs it, so a bomb
    /// costs at most `max + 1` bytes before it is refused.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let d = self.inner.get_or_insert_with(|| Decompress::new(false));
        d.reset(false);
        let cap = max.saturating_add(1);
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).max(64).min(cap));
        for input in [compressed, &TAIL[..]] {
            let start = d.total_in();
            loop {
                let used = (d.total_in() - start) as usize;
                let rest = input.get(used..).unwrap_or_default();
                let before = (d.total_in(), out.len());
                let status = d
                    .decompress_vec(rest, &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block (BFINAL): the message ends here, whatever follows.
                    return Ok(out);
                }
                let consumed_all = (d.total_in() - start) as usize >= input.len();
                if out.len() == out.capacity() {
                    // More output may be pending: grow within the bound and go on.
                    let more = out.capacity().max(64).min(cap - out.len());
                    out.reserve_exact(more);
                    continue;
                }
                if consumed_all {
                    break;
                }
                if before == (d.total_in(), out.len()) {
                    return Err(InflateError::Invalid);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str) -> Option<Agreed> {
        negotiate([v.as_bytes()])
    }

    fn answer(a: Agreed) -> String {
        let mut out = Vec::new();
        a.write_header(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn browsers_and_python_offers_are_accepted() {
        // Chromium and Firefox.
        let a = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(a.server_max_window_bits, 15);
        assert_eq!(
            answer(a),
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover\r\n"
        );
        // Python websockets' default offer.
        assert!(offer("permessage-deflate; client_max_window_bits").is_some());
        assert!(offer("x-webkit-deflate-frame, permessage-deflate").is_some());
    }

    #[test]
    fn server_window_is_echoed_and_bounds_what_compresses() {
        let a = offer("permessage-deflate; server_max_window_bits=8").unwrap();
        assert!(answer(a).ends_with("; server_max_window_bits=8\r\n"));
        assert!(a.fits(256) && !a.fits(257));
        let a = offer("permessage-deflate; server_max_window_bits=\"10\"").unwrap();
        assert_eq!(a.server_max_window_bits, 10);
        assert!(offer("permessage-deflate").unwrap().fits(1 << 20));
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_is_tried() {
        for bad in [
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate; server_max_window_bits=\"\"",
            "deflate-frame",
            "",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
        let a = negotiate([
            b"permessage-deflate; server_max_window_bits=7".as_slice(),
            b"permessage-deflate; server_max_window_bits=12".as_slice(),
        ])
        .unwrap();
        assert_eq!(a.server_max_window_bits, 12);
        assert!(negotiate([[0xff, 0xfe].as_slice()]).is_none(), "not UTF-8: declined");
    }

    #[test]
    fn a_frame_round_trips_through_the_inflater() {
        let payload =
            br#"{"type":"notification","body":"hello hello hello hello hello"}"#.repeat(8);
        let mut d = Deflater::new(6, 64);
        let mut frame = Vec::new();
        assert!(d.frame(&mut frame, OpCode::Text, &payload));
        assert_eq!(frame[0], 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
        let len = usize::from(frame[1]);
        assert_eq!(len, frame.len() - 2, "a short frame: 7-bit length");
        assert!(len < payload.len() / 4, "{len} of {}", payload.len());
        let mut i = Inflater::new();
        assert_eq!(i.inflate(&frame[2..], payload.len()).unwrap(), payload);
        // The context was reset: the same message again gives the same frame.
        let mut again = Vec::new();
        assert!(d.frame(&mut again, OpCode::Text, &payload));
        assert_eq!(again, frame);
    }

    #[test]
    fn small_or_incompressible_payloads_stay_plain() {
        let mut d = Deflater::new(6, 64);
        let mut out = Vec::new();
        assert!(!d.frame(&mut out, OpCode::Text, b"short"));
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(!d.frame(&mut out, OpCode::Binary, &noise));
        assert!(out.is_empty());
    }

    #[test]
    fn a_bomb_is_refused_at_the_bound_and_garbage_is_invalid() {
        let zeros = vec![0u8; 1 << 20];
        let mut c = Compress::new(Compression::new(9), false);
        let mut z = Vec::with_capacity(4096);
        c.compress_vec(&zeros, &mut z, FlushCompress::Sync).unwrap();
        z.truncate(z.len() - 4);
        assert!(z.len() < 2048, "1 MiB of zeros deflates to {} B", z.len());
        let mut i = Inflater::new();
        assert_eq!(i.inflate(&z, 64 * 1024), Err(InflateError::TooBig));
        assert_eq!(i.inflate(&z, 1 << 20).unwrap().len(), 1 << 20, "at the bound it is fine");
        assert_eq!(i.inflate(&[0xff, 0xff, 0xff], 1000), Err(InflateError::Invalid));
        // An empty message: the sender's flush alone.
        assert_eq!(i.inflate(&[0x02, 0x00], 10).unwrap(), b"");
        assert_eq!(i.inflate(&[], 10).unwrap(), b"");
    }

    #[test]
    fn a_final_block_ends_the_message() {
        let mut c = Compress::new(Compression::new(6), false);
        let mut z = Vec::with_capacity(256);
        c.compress_vec(b"finished", &mut z, FlushCompress::Finish).unwrap();
        assert_eq!(Inflater::new().inflate(&z, 100).unwrap(), b"finished");
    }

    #[test]
    fn a_back_reference_before_the_message_is_invalid() {
        // Compress two messages with context takeover and strip the first: the second
        // refers into a window this side never keeps.
        let mut c = Compress::new(Compression::new(6), false);
        let msg = b"the same words, the same words, the same words".to_vec();
        let mut first = Vec::with_capacity(256);
        c.compress_vec(&msg, &mut first, FlushCompress::Sync).unwrap();
        let mut second = Vec::with_capacity(256);
        c.compress_vec(&msg, &mut second, FlushCompress::Sync).unwrap();
        second.truncate(second.len() - 4);
        assert_eq!(Inflater::new().inflate(&second, 1000), Err(InflateError::Invalid));
    }
}
