//! WebSocket (RFC 6455), server side: the opening handshake, the frame encoder and the
//! per-connection receive [`Session`].
//!
//! No extension is negotiated (permessage-deflate is never offered), so every RSV bit is a
//! protocol error. Client frame layout (RFC 6455 section 5.2):
//!
//! ```text
//!  byte 0: FIN | RSV1 RSV2 RSV3 | opcode(4)
//!  byte 1: MASK | len7          len7 = 126: 16-bit length follows; 127: 64-bit length
//!  [2 or 8 bytes extended length, big-endian] [4 bytes masking key] payload (masked)
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::deflate::{Agreed, InflateError, Inflater};
use super::http1::{self, Request};

/// The constant appended to the client's key before hashing (RFC 6455 section 1.3).
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The longest control frame payload (RFC 6455 section 5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;
/// The longest close reason: a control payload less the two bytes of the code.
pub const CLOSE_REASON_BYTES_MAX: usize = CONTROL_PAYLOAD_BYTES_MAX - 2;
/// The longest frame header a client sends: 2 + 8 length bytes + 4 mask bytes.
const HEADER_BYTES_MAX: usize = 14;
const _: () = assert!(HEADER_BYTES_MAX == 2 + 8 + 4);
// Control payload lengths must fit the 7-bit length field.
const _: () = assert!(CONTROL_PAYLOAD_BYTES_MAX < 126);

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(sec_websocket_key: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(sec_websocket_key);
    hasher.update(GUID.as_bytes());
    STANDARD.encode(hasher.finalize())
}

/// Why an upgrade request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// 400, with what was wrong.
    BadRequest(&'static str),
    /// 426 with `Sec-WebSocket-Version: 13`, so the client knows what to offer.
    WrongVersion,
    /// 405: an upgrade must be a GET.
    MethodNotAllowed,
}

impl HandshakeError {
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::BadRequest(_) => 400,
            HandshakeError::WrongVersion => 426,
            HandshakeError::MethodNotAllowed => 405,
        }
    }
}

/// Validates an upgrade request (RFC 6455 section 4.2.1) and returns the
/// `Sec-WebSocket-Accept` value to answer with.
pub fn check_handshake(req: &Request) -> Result<String, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if req.version_minor < 1 {
        return Err(HandshakeError::BadRequest("WebSocket needs HTTP/1.1"));
    }
    if !req.header_has_token("upgrade", "websocket") {
        return Err(HandshakeError::BadRequest("missing Upgrade: websocket"));
    }
    if !req.header_has_token("connection", "upgrade") {
        return Err(HandshakeError::BadRequest("missing Connection: Upgrade"));
    }
    match req.header("sec-websocket-version").map(<[u8]>::trim_ascii) {
        None => return Err(HandshakeError::BadRequest("missing Sec-WebSocket-Version")),
        Some(b"13") => {}
        Some(_) => return Err(HandshakeError::WrongVersion),
    }
    let key = req
        .header("sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .ok_or(HandshakeError::BadRequest("missing Sec-WebSocket-Key"))?;
    // A 16-byte nonce is 24 base64 characters; checking the length first bounds the decode.
    let nonce_ok = key.len() == 24 && STANDARD.decode(key).is_ok_and(|nonce| nonce.len() == 16);
    if !nonce_ok {
        return Err(HandshakeError::BadRequest("Sec-WebSocket-Key is not 16 base64 bytes"));
    }
    Ok(accept_key(key))
}

/// Writes the 101 response that completes the upgrade; no subprotocol, and
/// permessage-deflate when it was agreed.
pub fn write_handshake_response(out: &mut Vec<u8>, accept: &str, deflate: Option<&Agreed>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(agreed) = deflate {
        agreed.write_header(out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the refusal of an upgrade: status, the headers the status calls for, a short
/// text body, and `Connection: close`.
pub fn write_handshake_error(out: &mut Vec<u8>, err: &HandshakeError) {
    let (headers, body): (&[(&str, &str)], &str) = match err {
        HandshakeError::BadRequest(why) => (&[], why),
        HandshakeError::WrongVersion => (
            &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")],
            "unsupported WebSocket version",
        ),
        HandshakeError::MethodNotAllowed => (&[("Allow", "GET")], "WebSocket upgrade needs GET"),
    };
    let mut all = Vec::with_capacity(headers.len() + 1);
    all.push(("Content-Type", "text/plain; charset=utf-8"));
    all.extend_from_slice(headers);
    let mut text = String::with_capacity(body.len() + 1);
    text.push_str(body);
    text.push('\n');
    http1::write_response(out, err.status(), &all, text.as_bytes(), false);
}

/// Frame opcodes that RFC 6455 defines; the others are reserved and refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    pub fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// The header of a final, unmasked server frame: `(bytes, len)` with `len` in 2..=10. Shared
/// broadcast frames are built from one header and one payload.
pub fn frame_header(opcode: OpCode, payload_len: usize) -> ([u8; 10], usize) {
    frame_header_with(opcode, false, payload_len)
}

/// [`frame_header`] with RSV1, the permessage-deflate bit ([`super::deflate`]), set or not.
pub fn frame_header_with(opcode: OpCode, rsv1: bool, payload_len: usize) -> ([u8; 10], usize) {
    let mut header = [0u8; 10];
    header[0] = 0x80 | if rsv1 { 0x40 } else { 0 } | opcode.bits();
    let len = payload_len as u64;
    if len < 126 {
        header[1] = len as u8;
        (header, 2)
    } else if len <= u64::from(u16::MAX) {
        header[1] = 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&len.to_be_bytes());
        (header, 10)
    }
}

/// Appends one final, unmasked frame; servers never mask (RFC 6455 section 5.1).
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let (header, len) = frame_header(opcode, payload.len());
    out.extend_from_slice(header.get(..len).unwrap_or_default());
    out.extend_from_slice(payload);
}

/// Appends a Close frame with `code` and `reason`, the reason cut to 123 bytes on a char
/// boundary so the frame stays a valid control frame with valid UTF-8.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = reason.get(..end).unwrap_or_default();
    let (header, len) = frame_header(OpCode::Close, 2 + reason.len());
    out.extend_from_slice(header.get(..len).unwrap_or_default());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

/// Whether a peer may send `code` in a Close frame (RFC 6455 section 7.4). 1004-1006 and
/// 1015 are reserved for local use; 1012-1014 are registered since the RFC and accepted.
pub fn close_code_is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Caps on what a peer may send. Control frames are capped at 125 bytes by the RFC itself.
#[derive(Debug, Clone, Copy)]
pub struct WsLimits {
    /// Payload of one data frame; past it the session fails with 1009.
    pub frame_bytes_max: usize,
    /// Payload of one whole (possibly fragmented) message; past it the session fails with 1009.
    pub message_bytes_max: usize,
}

/// What the peer did, in the order its frames arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete text message; the bytes are valid UTF-8.
    Text(Vec<u8>),
    Binary(Vec<u8>),
    /// The session has already queued the Pong in `out`.
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The peer sent Close; the session has queued its Close reply in `out` (the peer's code,
    /// or 1000 if it sent none). The caller flushes `out`, then closes the TCP connection.
    Closed {
        code: Option<u16>,
        reason: String,
    },
    /// The peer broke the protocol; the session has queued a Close with `code` in `out`
    /// (1002 protocol error, 1007 invalid UTF-8, 1009 too big). The caller flushes and
    /// closes. After `Fail` or `Closed` the session ignores further input.
    Fail {
        code: u16,
        reason: &'static str,
    },
}

/// Per-connection receive state. An idle session is 16 bytes with nothing on the heap: a
/// partly received frame or fragmented message lives in a box that is dropped as soon as
/// nothing is pending, because most connections of a push server are idle.
#[derive(Debug, Default)]
pub struct Session {
    partial: Option<Box<Partial>>,
    closed: bool,
    deflate: Deflate,
}

/// Where a session stands with permessage-deflate ([`super::deflate`]); one byte, so the
/// idle session stays 16 bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Deflate {
    /// Not agreed (yet); the listener would agree to it.
    #[default]
    Allowed,
    /// Not agreed, and the listener never agrees to it.
    Refused,
    /// Agreed, with the server window (bits) the client allows.
    On(u8),
}

/// Everything a session holds between reads while a frame or message is incomplete.
#[derive(Debug, Default)]
struct Partial {
    /// The frame header received so far; `head_len` bytes of it are valid.
    head: [u8; HEADER_BYTES_MAX],
    /// 0 <= head_len <= HEADER_BYTES_MAX; 0 whenever `frame` is set.
    head_len: usize,
    /// The frame whose header is complete and whose payload is still arriving.
    frame: Option<Frame>,
    /// The unmasked payload so far of the current control frame (at most 125 bytes).
    control: Vec<u8>,
    /// permessage-deflate was agreed: RSV1 may mark a message as compressed.
    deflate: bool,
    /// The data message being received, from its first frame until its final one.
    message: Option<Message>,
}

#[derive(Debug)]
struct Frame {
    opcode: OpCode,
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes still to come.
    remaining_bytes: usize,
    /// Payload bytes already unmasked; the mask key is applied from this phase.
    done_bytes: usize,
}

#[derive(Debug)]
struct Message {
    text: bool,
    /// RSV1 was set on its first frame: `data` is deflated and is inflated (and, for text,
    /// validated) once the message is complete.
    compressed: bool,
    /// Unmasked payload of every frame so far.
    data: Vec<u8>,
    /// For text, `data[..validated]` is valid UTF-8 and what follows is an incomplete
    /// sequence of at most 3 bytes, so validation never rereads bytes and fails fast.
    validated: usize,
}

/// A protocol violation: the close code to send and why.
struct Failure {
    code: u16,
    reason: &'static str,
}

const fn protocol_error(reason: &'static str) -> Failure {
    Failure { code: 1002, reason }
}

const INVALID_UTF8: Failure = Failure { code: 1007, reason: "invalid UTF-8 in text message" };

/// The close reason of a decompression bomb; the shard counts closes with it.
pub const INFLATE_TOO_BIG: &str = "message too big when inflated";

fn inflate_failure(e: InflateError) -> Failure {
    match e {
        InflateError::TooBig => Failure { code: 1009, reason: INFLATE_TOO_BIG },
        InflateError::Invalid => Failure { code: 1007, reason: "invalid compressed data" },
    }
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// A session on a listener that never agrees to permessage-deflate.
    pub fn without_compression() -> Session {
        Session { deflate: Deflate::Refused, ..Session::default() }
    }

    /// The session's agreement in one byte for a live upgrade, or None once the close
    /// handshake has begun (such a session does not move). A frame or message still arriving
    /// is [`Session::handover_partial`]'s part.
    pub fn handover_byte(&self) -> Option<u8> {
        if self.closed {
            return None;
        }
        Some(match self.deflate {
            Deflate::Allowed => 0,
            Deflate::Refused => 1,
            Deflate::On(bits) => 0x80 | bits,
        })
    }

    /// A live upgrade of a connection in the middle of a frame or a fragmented message: what
    /// [`Session::handover_byte`] leaves out, the parser's state (the header bytes so far, the
    /// frame being received with its mask phase, a control payload, the message's data so
    /// far). Empty when nothing is pending; None for a closed session.
    pub fn handover_partial(&self) -> Option<Vec<u8>> {
        if self.closed {
            return None;
        }
        let Some(p) = self.partial.as_deref() else { return Some(Vec::new()) };
        let mut out = Vec::with_capacity(48 + p.control.len());
        out.push(p.head_len as u8);
        out.extend_from_slice(&p.head);
        match &p.frame {
            None => out.push(0),
            Some(f) => {
                out.extend_from_slice(&[1, f.opcode.bits(), f.fin as u8]);
                out.extend_from_slice(&f.mask);
                out.extend_from_slice(&(f.remaining_bytes as u64).to_le_bytes());
                out.extend_from_slice(&(f.done_bytes as u64).to_le_bytes());
            }
        }
        out.push(p.control.len() as u8);
        out.extend_from_slice(&p.control);
        out.push(p.deflate as u8);
        match &p.message {
            None => out.push(0),
            Some(m) => {
                out.extend_from_slice(&[1, m.text as u8, m.compressed as u8]);
                out.extend_from_slice(&(m.validated as u64).to_le_bytes());
                out.extend_from_slice(&(m.data.len() as u64).to_le_bytes());
                out.extend_from_slice(&m.data);
            }
        }
        Some(out)
    }

    /// The session of [`Session::handover_byte`] and [`Session::handover_partial`]; None if
    /// the state is not one this parser could have been in.
    pub fn from_handover(b: u8, partial: &[u8]) -> Option<Session> {
        let mut s = Session::from_handover_byte(b);
        if partial.is_empty() {
            return Some(s);
        }
        let mut r = partial;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (a, rest) = (r.get(..n)?, r.get(n..)?);
            r = rest;
            Some(a)
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize;
        let mut p = Partial { head_len: take(1)?[0] as usize, ..Partial::default() };
        p.head.copy_from_slice(take(HEADER_BYTES_MAX)?);
        if take(1)?[0] == 1 {
            let h = take(2)?;
            let (opcode, fin) = (OpCode::from_bits(h[0])?, h[1] == 1);
            let mut mask = [0; 4];
            mask.copy_from_slice(take(4)?);
            let remaining_bytes = u64_of(take(8)?);
            let done_bytes = u64_of(take(8)?);
            p.frame = Some(Frame { opcode, fin, mask, remaining_bytes, done_bytes });
        }
        let control = take(1)?[0] as usize;
        if control > 125 {
            return None;
        }
        p.control = take(control)?.to_vec();
        p.deflate = take(1)?[0] == 1;
        if take(1)?[0] == 1 {
            let h = take(2)?;
            let (text, compressed) = (h[0] == 1, h[1] == 1);
            let validated = u64_of(take(8)?);
            let len = u64_of(take(8)?);
            let data = take(len)?.to_vec();
            p.message = Some(Message { text, compressed, data, validated });
        }
        let sane = p.head_len <= HEADER_BYTES_MAX
            && (p.frame.is_none() || p.head_len == 0)
            && p.message.as_ref().is_none_or(|m| m.validated <= m.data.len());
        if !sane || !r.is_empty() {
            return None;
        }
        s.partial = Some(Box::new(p));
        Some(s)
    }

    /// The session [`Session::handover_byte`] described.
    pub fn from_handover_byte(b: u8) -> Session {
        let deflate = match b {
            0 => Deflate::Allowed,
            1 => Deflate::Refused,
            b => Deflate::On(b & 0x7f),
        };
        Session { deflate, ..Session::default() }
    }

    /// Whether the handshake may agree to permessage-deflate.
    pub fn compression_allowed(&self) -> bool {
        self.deflate == Deflate::Allowed
    }

    /// Records what the handshake agreed.
    pub fn agree_compression(&mut self, agreed: &Agreed) {
        self.deflate = Deflate::On(agreed.server_max_window_bits);
    }

    /// What was agreed, if permessage-deflate is on.
    pub fn compression(&self) -> Option<Agreed> {
        match self.deflate {
            Deflate::On(bits) => Some(Agreed::with_server_bits(bits)),
            _ => None,
        }
    }

    /// Consumes received bytes, split anywhere. Appends events to `events` and protocol
    /// replies (Pong, Close) to `out`. Input after `Closed` or `Fail` is ignored.
    /// Compressed messages are inflated with `inflater`, which keeps nothing between them.
    pub fn feed(
        &mut self,
        input: &[u8],
        limits: &WsLimits,
        inflater: &mut Inflater,
        events: &mut Vec<Event>,
        out: &mut Vec<u8>,
    ) {
        if self.closed {
            return;
        }
        // An idle session parses on the stack and boxes state only if some is left over.
        let mut local =
            Partial { deflate: matches!(self.deflate, Deflate::On(_)), ..Partial::default() };
        let partial = match self.partial.as_deref_mut() {
            Some(boxed) => boxed,
            None => &mut local,
        };
        if let Err(failure) = partial.feed(input, limits, inflater, events, out) {
            if let Some(failure) = failure {
                write_close(out, failure.code, failure.reason);
                events.push(Event::Fail { code: failure.code, reason: failure.reason });
            }
            self.closed = true;
            self.partial = None;
            return;
        }
        match &self.partial {
            Some(boxed) if boxed.is_idle() => self.partial = None,
            None if !local.is_idle() => self.partial = Some(Box::new(local)),
            _ => {}
        }
    }

    /// Whether the session has ended (`Closed` or `Fail` was reported).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Received bytes held until their frame or message completes.
    pub fn buffered_bytes(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| {
            p.head_len + p.control.len() + p.message.as_ref().map_or(0, |m| m.data.len())
        })
    }
}

impl Partial {
    fn is_idle(&self) -> bool {
        self.head_len == 0
            && self.frame.is_none()
            && self.control.is_empty()
            && self.message.is_none()
    }

    /// Parses frames until the input runs out. `Err(Some(_))` is a violation to report;
    /// `Err(None)` is a clean close, already reported. Either way the session is over.
    fn feed(
        &mut self,
        mut input: &[u8],
        limits: &WsLimits,
        inflater: &mut Inflater,
        events: &mut Vec<Event>,
        out: &mut Vec<u8>,
    ) -> Result<(), Option<Failure>> {
        loop {
            if self.frame.is_none() {
                match self.read_header(&mut input, limits)? {
                    Some(frame) => self.frame = Some(frame),
                    None => return Ok(()),
                }
            }
            self.read_payload(&mut input)?;
            match self.frame.take() {
                Some(frame) if frame.remaining_bytes == 0 => {
                    self.finish_frame(frame, limits, inflater, events, out)?
                }
                unfinished => {
                    self.frame = unfinished;
                    return Ok(());
                }
            }
        }
    }

    /// Takes header bytes from `input`; `Ok(None)` when the input ran out first. The first
    /// two bytes are checked as soon as they arrive, so a bad frame fails before its length.
    fn read_header(
        &mut self,
        input: &mut &[u8],
        limits: &WsLimits,
    ) -> Result<Option<Frame>, Failure> {
        loop {
            let needed = match self.head {
                _ if self.head_len < 2 => 2,
                [_, b1, ..] => 2 + extended_length_bytes(b1) + 4,
            };
            if self.head_len >= needed {
                break;
            }
            let (Some((&byte, rest)), Some(slot)) =
                (input.split_first(), self.head.get_mut(self.head_len))
            else {
                return Ok(None);
            };
            *slot = byte;
            *input = rest;
            self.head_len += 1;
            if self.head_len == 2 {
                self.check_first_bytes()?;
            }
        }
        self.head_len = 0;
        self.parse_header(limits).map(Some)
    }

    fn check_first_bytes(&self) -> Result<(), Failure> {
        let [b0, b1, ..] = self.head;
        if b0 & 0x30 != 0 {
            return Err(protocol_error("reserved bits set without an extension"));
        }
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(protocol_error("reserved opcode"))?;
        if b0 & 0x40 != 0 {
            // RSV1 marks a compressed message, on its first frame only (RFC 7692 6.1).
            if !self.deflate {
                return Err(protocol_error("reserved bits set without an extension"));
            }
            if !matches!(opcode, OpCode::Text | OpCode::Binary) {
                return Err(protocol_error("RSV1 on a control or continuation frame"));
            }
        }
        if b1 & 0x80 == 0 {
            return Err(protocol_error("client frame not masked"));
        }
        let fin = b0 & 0x80 != 0;
        match opcode {
            _ if opcode.is_control() && !fin => Err(protocol_error("fragmented control frame")),
            _ if opcode.is_control() && usize::from(b1 & 0x7F) > CONTROL_PAYLOAD_BYTES_MAX => {
                Err(protocol_error("control frame over 125 bytes"))
            }
            OpCode::Continuation if self.message.is_none() => {
                Err(protocol_error("continuation frame without a message"))
            }
            OpCode::Text | OpCode::Binary if self.message.is_some() => {
                Err(protocol_error("new message before the fragmented one ended"))
            }
            _ => Ok(()),
        }
    }

    /// Decodes the complete header in `head`, whose first two bytes passed the checks, and
    /// opens a message for a Text or Binary frame.
    fn parse_header(&mut self, limits: &WsLimits) -> Result<Frame, Failure> {
        let [b0, b1, ..] = self.head;
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(protocol_error("reserved opcode"))?;
        let ext_bytes = extended_length_bytes(b1);
        let length = match ext_bytes {
            0 => u64::from(b1 & 0x7F),
            _ => {
                self.head.iter().skip(2).take(ext_bytes).fold(0, |acc, &b| acc << 8 | u64::from(b))
            }
        };
        let mut mask = [0u8; 4];
        for (slot, &byte) in mask.iter_mut().zip(self.head.iter().skip(2 + ext_bytes)) {
            *slot = byte;
        }
        if length >> 63 != 0 {
            return Err(protocol_error("64-bit length with the top bit set"));
        }
        if !opcode.is_control() {
            let so_far = self.message.as_ref().map_or(0, |m| m.data.len());
            if length > limits.frame_bytes_max as u64 {
                return Err(Failure { code: 1009, reason: "frame too big" });
            }
            if (so_far as u64).saturating_add(length) > limits.message_bytes_max as u64 {
                return Err(Failure { code: 1009, reason: "message too big" });
            }
        }
        let remaining_bytes = usize::try_from(length).map_err(|_| protocol_error("length"))?;
        if matches!(opcode, OpCode::Text | OpCode::Binary) {
            let text = opcode == OpCode::Text;
            let compressed = b0 & 0x40 != 0;
            self.message = Some(Message { text, compressed, data: Vec::new(), validated: 0 });
        }
        let fin = b0 & 0x80 != 0;
        Ok(Frame { opcode, fin, mask, remaining_bytes, done_bytes: 0 })
    }

    /// Unmasks what `input` holds of the current frame's payload into the control buffer or
    /// the message, validating text as it arrives.
    fn read_payload(&mut self, input: &mut &[u8]) -> Result<(), Failure> {
        let Some(frame) = self.frame.as_mut() else {
            return Ok(());
        };
        let (chunk, rest) = input.split_at(frame.remaining_bytes.min(input.len()));
        *input = rest;
        let phase = frame.done_bytes;
        let unmasked = chunk.iter().zip(frame.mask.iter().cycle().skip(phase % 4));
        let unmasked = unmasked.map(|(byte, key)| byte ^ key);
        frame.done_bytes += chunk.len();
        frame.remaining_bytes -= chunk.len();
        if frame.opcode.is_control() {
            self.control.extend(unmasked);
            return Ok(());
        }
        let message = self.message.as_mut().ok_or(protocol_error("no message"))?;
        message.data.extend(unmasked);
        if message.text && !message.compressed {
            message.validate()?;
        }
        Ok(())
    }

    /// Acts on a frame whose payload is complete. `Err(None)` means the peer closed cleanly.
    fn finish_frame(
        &mut self,
        frame: Frame,
        limits: &WsLimits,
        inflater: &mut Inflater,
        events: &mut Vec<Event>,
        out: &mut Vec<u8>,
    ) -> Result<(), Option<Failure>> {
        match frame.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation if frame.fin => {
                let Some(mut message) = self.message.take() else {
                    return Err(Some(protocol_error("no message")));
                };
                if message.compressed {
                    message.data = inflater
                        .inflate(&message.data, limits.message_bytes_max)
                        .map_err(|e| Some(inflate_failure(e)))?;
                    if message.text {
                        message.validate()?;
                    }
                }
                if message.text {
                    if message.validated != message.data.len() {
                        return Err(Some(INVALID_UTF8));
                    }
                    events.push(Event::Text(message.data));
                } else {
                    events.push(Event::Binary(message.data));
                }
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {}
            OpCode::Ping => {
                let payload = std::mem::take(&mut self.control);
                write_frame(out, OpCode::Pong, &payload);
                events.push(Event::Ping(payload));
            }
            OpCode::Pong => events.push(Event::Pong(std::mem::take(&mut self.control))),
            OpCode::Close => {
                let (code, reason) = parse_close(&self.control).map_err(Some)?;
                write_close(out, code.unwrap_or(1000), "");
                events.push(Event::Closed { code, reason });
                return Err(None);
            }
        }
        Ok(())
    }
}

impl Message {
    /// Validates the bytes appended since the last call. An invalid sequence fails at once,
    /// even mid-frame; an incomplete one at the end waits for more bytes.
    fn validate(&mut self) -> Result<(), Failure> {
        let pending = self.data.get(self.validated..).unwrap_or_default();
        match std::str::from_utf8(pending) {
            Ok(valid) => self.validated += valid.len(),
            Err(e) if e.error_len().is_some() => return Err(INVALID_UTF8),
            Err(e) => self.validated += e.valid_up_to(),
        }
        Ok(())
    }
}

/// The bytes of extended length that the second header byte announces.
fn extended_length_bytes(b1: u8) -> usize {
    match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    }
}

/// Reads a Close payload: nothing, or a valid code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<(Option<u16>, String), Failure> {
    match payload {
        [] => Ok((None, String::new())),
        [_] => Err(protocol_error("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_is_valid(code) {
                return Err(protocol_error("invalid close code"));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| Failure { code: 1007, reason: "invalid UTF-8 in close reason" })?;
            Ok((Some(code), reason.to_owned()))
        }
    }
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
