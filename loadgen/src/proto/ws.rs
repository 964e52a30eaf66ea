//! The client side of RFC 6455: the upgrade request, the accept check, decoding the
//! server's (unmasked) frames, and encoding masked control frames.

#![forbid(unsafe_code)]

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Largest frame payload accepted from the server; larger is a protocol error, so a
/// confused peer cannot make a connection buffer without bound.
pub const FRAME_BYTES_MAX: usize = (1 << 20) + 4096;

const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The `Sec-WebSocket-Key` for 16 key bytes.
pub fn key(bytes: [u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
pub fn accept(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The permessage-deflate offer of `--deflate`: what browsers send.
pub const DEFLATE_OFFER: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// Appends the upgrade request for `path_and_query`, offering permessage-deflate if asked.
pub fn upgrade_request(
    out: &mut Vec<u8>,
    host: &str,
    path_and_query: &str,
    key: &str,
    deflate: bool,
) {
    let offer = if deflate { DEFLATE_OFFER } else { "" };
    out.extend_from_slice(
        format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             {offer}\r\n"
        )
        .as_bytes(),
    );
}

/// Inflates one compressed message (RFC 7692: raw deflate whose sync-flush tail the sender
/// stripped) into `out`, with the context reset first: c10m agrees to no context takeover.
pub fn inflate(
    d: &mut flate2::Decompress,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    d.reset(false);
    out.clear();
    out.reserve(payload.len() * 8 + 64);
    for input in [payload, &[0, 0, 0xff, 0xff][..]] {
        let start = d.total_in();
        loop {
            let used = (d.total_in() - start) as usize;
            let status = d
                .decompress_vec(&input[used..], out, flate2::FlushDecompress::Sync)
                .map_err(|_| FrameError::BadDeflate)?;
            if status == flate2::Status::StreamEnd {
                return Ok(());
            }
            if out.len() < out.capacity() {
                break;
            }
            if out.len() >= FRAME_BYTES_MAX {
                return Err(FrameError::TooLong);
            }
            out.reserve(out.len());
        }
    }
    Ok(())
}

/// One decoded frame, borrowing its payload from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    /// RSV1: a permessage-deflate compressed message.
    pub compressed: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
    /// Bytes of input the frame used.
    pub len: usize,
}

/// How the server broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Server frames must not be masked (RFC 6455 §5.1).
    Masked,
    ReservedBits,
    UnknownOpcode,
    TooLong,
    /// A compressed payload that does not inflate.
    BadDeflate,
    /// A control frame that is fragmented or longer than 125 bytes.
    BadControl,
}

/// Decodes one frame from the start of `bytes`; `Ok(None)` means "need more" and
/// consumes nothing.
pub fn decode(bytes: &[u8]) -> Result<Option<Frame<'_>>, FrameError> {
    let [b0, b1, ..] = *bytes else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    // RSV1 is permessage-deflate's; whether it was agreed is the caller's to check.
    let compressed = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (compressed && !matches!(opcode, OP_TEXT | OP_BINARY)) {
        return Err(FrameError::ReservedBits);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG if fin && b1 & 0x7f <= 125 => {}
        OP_CLOSE | OP_PING | OP_PONG => return Err(FrameError::BadControl),
        _ => return Err(FrameError::UnknownOpcode),
    }
    let (payload_len, header_len) = match b1 & 0x7f {
        126 => match bytes.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if payload_len > FRAME_BYTES_MAX as u64 {
        return Err(FrameError::TooLong);
    }
    let len = header_len + payload_len as usize;
    if bytes.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame { fin, compressed, opcode, payload: &bytes[header_len..len], len }))
}

/// Appends a masked control frame (`payload` at most 125 bytes; longer is cut).
pub fn encode_control(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let payload = &payload[..payload.len().min(125)];
    out.push(0x80 | (opcode & 0x0f));
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_example() {
        assert_eq!(accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    fn unmasked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n <= 125 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_all_length_forms_in_pieces() {
        for size in [0usize, 5, 125, 126, 300, 70_000] {
            let payload = vec![b'a'; size];
            let wire = unmasked(OP_TEXT, &payload);
            for cut in 0..wire.len() {
                assert_eq!(decode(&wire[..cut]), Ok(None), "size {size} cut {cut}");
            }
            let frame = decode(&wire).unwrap().unwrap();
            assert_eq!(frame.payload.len(), size);
            assert_eq!(frame.len, wire.len());
            assert!(frame.fin);
        }
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(decode(&[0x81, 0x81, 0, 0, 0, 0, 0]), Err(FrameError::Masked));
        assert_eq!(decode(&[0xA1, 0]), Err(FrameError::ReservedBits));
        assert_eq!(decode(&[0xC9, 0]), Err(FrameError::ReservedBits), "RSV1 on a ping");
        assert!(decode(&[0xC1, 0]).unwrap().unwrap().compressed);
        assert_eq!(decode(&[0x83, 0]), Err(FrameError::UnknownOpcode));
        assert_eq!(decode(&[0x09, 0]), Err(FrameError::BadControl));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(decode(&huge), Err(FrameError::TooLong));
    }

    #[test]
    fn inflates_a_compressed_message() {
        let text = b"s=1 t=2 {\"type\":\"notification\"} {\"type\":\"notification\"}".repeat(9);
        let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
        let mut z = Vec::with_capacity(1024);
        c.compress_vec(&text, &mut z, flate2::FlushCompress::Sync).unwrap();
        z.truncate(z.len() - 4);
        let mut d = flate2::Decompress::new(false);
        let mut out = Vec::new();
        for _ in 0..2 {
            inflate(&mut d, &z, &mut out).unwrap();
            assert_eq!(out, text);
        }
        assert_eq!(inflate(&mut d, &[0xff; 8], &mut out), Err(FrameError::BadDeflate));
    }

    #[test]
    fn masked_pong() {
        let mut out = Vec::new();
        encode_control(&mut out, OP_PONG, b"abc", [1, 2, 3, 4]);
        assert_eq!(out, vec![0x8A, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]);
    }
}
