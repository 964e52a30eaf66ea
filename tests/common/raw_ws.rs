//! WebSocket with raw frames: what tungstenite would refuse to send or hide on receipt.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use super::lossy;

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;
pub const FIN: u8 = 0x80;

const MASK: [u8; 4] = [0x1f, 0x9c, 0x42, 0xe7];

/// A client frame with first byte `b0` (FIN, RSV, opcode), masked or not.
pub fn client_frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![b0];
    let mask_bit = if masked { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A close payload: the code and a reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A WebSocket connection past its handshake, driven frame by frame.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Wraps a stream whose handshake is already done (and whose head was fully read).
    pub fn from_stream(stream: TcpStream) -> RawWs {
        RawWs { stream, buf: Vec::new() }
    }

    /// Sends one masked frame.
    pub fn send(&mut self, b0: u8, payload: &[u8]) {
        self.send_bytes(&client_frame(b0, payload, true));
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write frame");
    }

    /// The next frame, or `None` at EOF (or reset). A read timeout fails the test.
    pub fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    assert!(
                        self.buf.is_empty(),
                        "EOF inside a frame ({} bytes pending)",
                        self.buf.len()
                    );
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("no frame within the read timeout: {e}"),
            }
        }
    }

    /// The next frame that is not a ping (pings are left unanswered).
    pub fn recv_skip_pings(&mut self) -> Option<Frame> {
        loop {
            match self.recv() {
                Some(f) if f.opcode == OP_PING => continue,
                other => return other,
            }
        }
    }

    /// Expects a close frame with `code`, then EOF.
    pub fn expect_close(&mut self, code: u16) {
        let frame = self.recv_skip_pings().expect("a close frame before EOF");
        assert_eq!(frame.opcode, OP_CLOSE, "expected close {code}, got {frame:?}");
        assert_eq!(
            frame.close_code(),
            Some(code),
            "close reason {:?}",
            lossy(frame.payload.get(2..).unwrap_or_default())
        );
        self.expect_eof();
    }

    /// Expects the server to end the TCP stream without sending anything more.
    pub fn expect_eof(&mut self) {
        let after = self.recv();
        assert!(after.is_none(), "expected EOF, got {after:?}");
    }
}

/// Parses one server frame at the start of `buf`; `None` if incomplete.
pub fn parse_server_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, mut at) = match b1 & 0x7F {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let masked = b1 & 0x80 != 0;
    let mut mask = [0u8; 4];
    if masked {
        mask.copy_from_slice(buf.get(at..at + 4)?);
        at += 4;
    }
    let mut payload = buf.get(at..at + len)?.to_vec();
    if masked {
        for (b, k) in payload.iter_mut().zip(mask.iter().cycle()) {
            *b ^= k;
        }
    }
    let frame =
        Frame { fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 0x7, opcode: b0 & 0x0F, masked, payload };
    Some((frame, at + len))
}
