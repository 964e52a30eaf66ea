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

/// Writes the 101 response that completes the upgrade; no subprotocol, no extension.
pub fn write_handshake_response(out: &mut Vec<u8>, accept: &str) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
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
    let mut header = [0u8; 10];
    header[0] = 0x80 | opcode.bits();
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

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// Consumes received bytes, split anywhere. Appends events to `events` and protocol
    /// replies (Pong, Close) to `out`. Input after `Closed` or `Fail` is ignored.
    pub fn feed(
        &mut self,
        input: &[u8],
        limits: &WsLimits,
        events: &mut Vec<Event>,
        out: &mut Vec<u8>,
    ) {
        if self.closed {
            return;
        }
        // An idle session parses on the stack and boxes state only if some is left over.
        let mut local = Partial::default();
        let partial = match self.partial.as_deref_mut() {
            Some(boxed) => boxed,
            None => &mut local,
        };
        if let Err(failure) = partial.feed(input, limits, events, out) {
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
                    self.finish_frame(frame, events, out)?
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
        if b0 & 0x70 != 0 {
            return Err(protocol_error("reserved bits set without an extension"));
        }
        let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(protocol_error("reserved opcode"))?;
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
            self.message = Some(Message { text, data: Vec::new(), validated: 0 });
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
        if message.text {
            message.validate()?;
        }
        Ok(())
    }

    /// Acts on a frame whose payload is complete. `Err(None)` means the peer closed cleanly.
    fn finish_frame(
        &mut self,
        frame: Frame,
        events: &mut Vec<Event>,
        out: &mut Vec<u8>,
    ) -> Result<(), Option<Failure>> {
        match frame.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation if frame.fin => {
                let Some(message) = self.message.take() else {
                    return Err(Some(protocol_error("no message")));
                };
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
mod tests {
    use super::*;
    use crate::proto::http1::{parse_request, HeadLimits};

    const LIMITS: WsLimits = WsLimits { frame_bytes_max: 1 << 16, message_bytes_max: 1 << 17 };
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: `first` is byte 0 (FIN, RSV, opcode), the payload is masked.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let (header, len) = frame_header(OpCode::Text, payload.len());
        let mut out = vec![first, header[1] | 0x80];
        out.extend_from_slice(&header[2..len]);
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, k)| b ^ k));
        out
    }

    fn run_with(input: &[u8], limits: &WsLimits) -> (Vec<Event>, Vec<u8>, Session) {
        let mut session = Session::new();
        let (mut events, mut out) = (Vec::new(), Vec::new());
        session.feed(input, limits, &mut events, &mut out);
        (events, out, session)
    }

    fn run(input: &[u8]) -> (Vec<Event>, Vec<u8>) {
        let (events, out, _) = run_with(input, &LIMITS);
        (events, out)
    }

    fn close_frame(code: u16) -> Vec<u8> {
        let mut out = Vec::new();
        write_close(&mut out, code, "");
        out
    }

    /// Asserts that `input` fails with `code` and that the queued Close carries it.
    fn assert_fails(input: &[u8], code: u16) {
        let (events, out) = run(input);
        let Some(Event::Fail { code: failed, reason }) = events.last() else {
            panic!("no failure: {events:?}");
        };
        assert_eq!(*failed, code, "{reason}");
        let mut close = Vec::new();
        write_close(&mut close, code, reason);
        assert!(out.ends_with(&close));
    }

    #[test]
    fn idle_session_is_tiny() {
        assert!(std::mem::size_of::<Session>() <= 16);
        let (events, _, session) = run_with(&frame(0x81, b"hi"), &LIMITS);
        assert_eq!(events, [Event::Text(b"hi".to_vec())]);
        assert!(session.partial.is_none());
        assert_eq!(session.buffered_bytes(), 0);
    }

    #[test]
    fn handshake_accepts_the_rfc_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let req = request(&[]);
        let accept = check_handshake(&req).unwrap();
        let mut out = Vec::new();
        write_handshake_response(&mut out, &accept);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    /// An upgrade request with `replace` overriding lines by their prefix.
    fn request(replace: &[(&str, &str)]) -> Request {
        let mut lines = vec![
            "GET /ws HTTP/1.1".to_owned(),
            "Host: h".to_owned(),
            "Upgrade: WebSocket".to_owned(),
            "Connection: keep-alive, Upgrade".to_owned(),
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
            "Sec-WebSocket-Version: 13".to_owned(),
        ];
        for (prefix, line) in replace {
            let at = lines.iter().position(|l| l.starts_with(prefix)).unwrap();
            lines.remove(at);
            if !line.is_empty() {
                lines.insert(at, (*line).to_owned());
            }
        }
        let head = lines.join("\r\n") + "\r\n\r\n";
        let limits = HeadLimits { head_bytes_max: 4096, headers_max: 16 };
        parse_request(head.as_bytes(), &limits).unwrap().unwrap().0
    }

    #[test]
    fn handshake_errors() {
        let check = |replace: &[(&str, &str)]| check_handshake(&request(replace));
        assert_eq!(check(&[("GET", "POST /ws HTTP/1.1")]), Err(HandshakeError::MethodNotAllowed));
        assert!(matches!(
            check(&[("GET", "GET /ws HTTP/1.0")]),
            Err(HandshakeError::BadRequest(_))
        ));
        for missing in ["Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version"] {
            assert!(matches!(check(&[(missing, "")]), Err(HandshakeError::BadRequest(_))));
        }
        for key in ["abc", "dGhlIHNhbXBsZSBub25jZQ=!", "dGhlIHNhbXBsZSBub25jZQ"] {
            let line = format!("Sec-WebSocket-Key: {key}");
            let result = check(&[("Sec-WebSocket-Key", &line)]);
            assert!(matches!(result, Err(HandshakeError::BadRequest(_))), "{key}");
        }
        let old = check(&[("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8")]);
        assert_eq!(old, Err(HandshakeError::WrongVersion));
    }

    #[test]
    fn handshake_error_responses() {
        let text = |err: HandshakeError| {
            let mut out = Vec::new();
            write_handshake_error(&mut out, &err);
            String::from_utf8(out).unwrap()
        };
        let wrong = text(HandshakeError::WrongVersion);
        assert!(wrong.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(
            wrong.contains("Sec-WebSocket-Version: 13\r\n") && wrong.contains("Connection: close")
        );
        assert!(text(HandshakeError::MethodNotAllowed)
            .contains("405 Method Not Allowed\r\nContent-Type"));
        assert!(text(HandshakeError::MethodNotAllowed).contains("Allow: GET\r\n"));
        let bad = text(HandshakeError::BadRequest("why"));
        assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n") && bad.ends_with("\r\n\r\nwhy\n"));
    }

    #[test]
    fn server_frames_are_unmasked_and_sized() {
        assert_eq!(frame_header(OpCode::Text, 125).1, 2);
        assert_eq!(frame_header(OpCode::Binary, 126), ([0x82, 126, 0, 126, 0, 0, 0, 0, 0, 0], 4));
        assert_eq!(frame_header(OpCode::Text, 65536).1, 10);
        assert_eq!(frame_header(OpCode::Text, 65536).0[..10], [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        let mut out = Vec::new();
        write_frame(&mut out, OpCode::Ping, b"x");
        assert_eq!(out, [0x89, 1, b'x']);
    }

    #[test]
    fn close_reasons_are_cut_on_a_char_boundary() {
        let mut out = Vec::new();
        write_close(&mut out, 1000, &"é".repeat(100));
        assert_eq!(out.len(), 2 + 2 + 122);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
        out.clear();
        write_close(&mut out, 1001, "bye");
        assert_eq!(out, [0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']);
    }

    #[test]
    fn messages_arrive_at_any_split() {
        let mut wire = frame(0x01, "héllo ".as_bytes());
        wire.extend(frame(0x89, b"p"));
        wire.extend(frame(0x80, "wörld".as_bytes()));
        wire.extend(frame(0x82, &[0u8; 300]));
        wire.extend(frame(0x8A, b"q"));
        // Exactly frame_bytes_max, with a 64-bit length.
        wire.extend(frame(0x82, &[7u8; 1 << 16]));
        let (expected, expected_out) = run(&wire);
        assert_eq!(expected.len(), 5);
        assert_eq!(expected[4], Event::Binary(vec![7; 1 << 16]));
        assert_eq!(expected[1], Event::Text("héllo wörld".as_bytes().to_vec()));
        assert_eq!(expected[0], Event::Ping(b"p".to_vec()));
        assert_eq!(expected_out, [0x8A, 1, b'p']);
        for step in [1, 2, 3, 7, 13, 4096] {
            let mut session = Session::new();
            let (mut events, mut out) = (Vec::new(), Vec::new());
            for chunk in wire.chunks(step) {
                session.feed(chunk, &LIMITS, &mut events, &mut out);
            }
            assert_eq!(events, expected, "step {step}");
            assert_eq!(out, expected_out);
            assert!(session.partial.is_none() && !session.is_closed());
        }
    }

    #[test]
    fn partial_state_is_buffered_then_freed() {
        let wire = frame(0x01, b"abc");
        let mut session = Session::new();
        let (mut events, mut out) = (Vec::new(), Vec::new());
        session.feed(&wire[..4], &LIMITS, &mut events, &mut out);
        assert_eq!(session.buffered_bytes(), 4);
        session.feed(&wire[4..], &LIMITS, &mut events, &mut out);
        assert_eq!(session.buffered_bytes(), 3);
        session.feed(&frame(0x80, b""), &LIMITS, &mut events, &mut out);
        assert_eq!(events, [Event::Text(b"abc".to_vec())]);
        assert!(session.partial.is_none());
    }

    #[test]
    fn framing_violations_are_protocol_errors() {
        let mut unmasked = frame(0x81, b"hi");
        unmasked[1] &= 0x7F;
        assert_fails(&unmasked, 1002);
        for rsv in [0x40, 0x20, 0x10] {
            assert_fails(&frame(0x81 | rsv, b"hi"), 1002);
        }
        for opcode in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_fails(&frame(0x80 | opcode, b""), 1002);
        }
        assert_fails(&frame(0x09, b"ping"), 1002);
        assert_fails(&frame(0x89, &[0; 126]), 1002);
        assert_fails(&frame(0x80, b"x"), 1002);
        assert_fails(&[frame(0x01, b"a"), frame(0x81, b"b")].concat(), 1002);
        let mut huge = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        huge.extend_from_slice(&MASK);
        assert_fails(&huge, 1002);
    }

    #[test]
    fn fragmented_control_fails_before_its_payload() {
        // The first two bytes decide: nothing after them is needed to fail.
        let (events, _) = run(&[0x09, 0x80]);
        assert!(matches!(events[..], [Event::Fail { code: 1002, .. }]));
    }

    #[test]
    fn oversized_frames_and_messages_are_too_big() {
        let small = WsLimits { frame_bytes_max: 10, message_bytes_max: 15 };
        let (events, ..) = run_with(&frame(0x82, &[0; 11]), &small);
        assert!(matches!(events[..], [Event::Fail { code: 1009, .. }]));
        let fragments = [frame(0x02, &[0; 10]), frame(0x00, &[0; 5]), frame(0x80, &[0; 1])];
        let (events, out, session) = run_with(&fragments.concat(), &small);
        assert!(matches!(events[..], [Event::Fail { code: 1009, .. }]));
        assert!(out.starts_with(&[0x88, out[1], 0x03, 0xF1]) && session.is_closed());
        // Control frames are bound by the RFC's 125 bytes, not by frame_bytes_max.
        let (events, ..) = run_with(&frame(0x89, &[1; 20]), &small);
        assert_eq!(events, [Event::Ping(vec![1; 20])]);
    }

    #[test]
    fn invalid_utf8_fails_fast() {
        // The first fragment is not final, yet its invalid byte fails the session at once.
        assert_fails(&frame(0x01, b"ok\xC0\xAFmore"), 1007);
        // Within one frame arriving in pieces, the failure comes with the bad byte.
        let wire = frame(0x81, b"abc\xF4\x90def");
        let mut session = Session::new();
        let (mut events, mut out) = (Vec::new(), Vec::new());
        session.feed(&wire[..6 + 5], &LIMITS, &mut events, &mut out);
        assert!(matches!(events[..], [Event::Fail { code: 1007, .. }]));
        // An incomplete sequence at the end of the final fragment fails.
        assert_fails(&frame(0x81, b"ab\xE2\x82"), 1007);
        assert_fails(&[frame(0x01, b"ab\xE2"), frame(0x80, b"")].concat(), 1007);
        // A sequence split across fragments is fine.
        let (events, _) =
            run(&[frame(0x01, b"\xE2"), frame(0x00, b"\x82"), frame(0x80, b"\xAC")].concat());
        assert_eq!(events, [Event::Text("€".as_bytes().to_vec())]);
        // Binary messages are not validated.
        assert_eq!(run(&frame(0x82, b"\xFF")).0, [Event::Binary(vec![0xFF])]);
    }

    #[test]
    fn close_handshake() {
        let (events, out) = run(&frame(0x88, b""));
        assert_eq!(events, [Event::Closed { code: None, reason: String::new() }]);
        assert_eq!(out, close_frame(1000));
        let mut payload = 4001u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ✓".as_bytes());
        let (events, out, session) = run_with(&frame(0x88, &payload), &LIMITS);
        assert_eq!(events, [Event::Closed { code: Some(4001), reason: "bye ✓".to_owned() }]);
        assert_eq!(out, close_frame(4001));
        assert!(session.is_closed());
    }

    #[test]
    fn close_payload_errors() {
        assert_fails(&frame(0x88, b"\x03"), 1002);
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_fails(&frame(0x88, &u16::to_be_bytes(code)), 1002);
        }
        for code in [1000, 1001, 1002, 1003, 1007, 1010, 1011, 1012, 1014, 3000, 4999] {
            assert!(close_code_is_valid(code), "{code}");
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(b"\xCE\xBA\xE1\xBD");
        assert_fails(&frame(0x88, &bad_reason), 1007);
    }

    #[test]
    fn input_after_the_end_is_ignored() {
        let wire =
            [frame(0x81, b"a"), frame(0x88, b""), frame(0x81, b"b"), frame(0x89, b"")].concat();
        let (events, out, mut session) = run_with(&wire, &LIMITS);
        assert_eq!(events.len(), 2);
        assert_eq!(out, close_frame(1000));
        let (mut more, mut more_out) = (Vec::new(), Vec::new());
        session.feed(&frame(0x89, b""), &LIMITS, &mut more, &mut more_out);
        assert!(more.is_empty() && more_out.is_empty());
        let (events, _, session) =
            run_with(&[frame(0x90, b""), frame(0x81, b"a")].concat(), &LIMITS);
        assert_eq!(events.len(), 1);
        assert!(session.is_closed() && session.partial.is_none());
    }

    /// A real client (tungstenite) and this session understand each other's frames.
    #[test]
    fn interoperates_with_tungstenite() {
        use std::io::{Cursor, Read, Write};
        use tungstenite::{protocol::Role, Message, WebSocket};

        #[derive(Default)]
        struct Pipe {
            to_client: Cursor<Vec<u8>>,
            from_client: Vec<u8>,
        }
        impl Read for Pipe {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                match self.to_client.read(buf)? {
                    0 if !buf.is_empty() => Err(std::io::ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                }
            }
        }
        impl Write for Pipe {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.from_client.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        let mut client = WebSocket::from_raw_socket(Pipe::default(), Role::Client, None);
        let mut pushed = Vec::new();
        write_frame(&mut pushed, OpCode::Text, "push ✓".as_bytes());
        write_frame(&mut pushed, OpCode::Binary, &[9; 70000]);
        client.get_mut().to_client = Cursor::new(pushed);
        assert_eq!(client.read().unwrap(), Message::Text("push ✓".into()));
        assert_eq!(client.read().unwrap(), Message::Binary(vec![9; 70000]));

        client.send(Message::Text("héllo".into())).unwrap();
        client.send(Message::Binary(vec![1; 60000])).unwrap();
        client.send(Message::Ping(b"p".to_vec())).unwrap();
        client.close(None).unwrap();
        client.flush().unwrap();
        let wire = std::mem::take(&mut client.get_mut().from_client);
        let (events, out) = run(&wire);
        assert_eq!(
            events,
            [
                Event::Text("héllo".as_bytes().to_vec()),
                Event::Binary(vec![1; 60000]),
                Event::Ping(b"p".to_vec()),
                Event::Closed { code: None, reason: String::new() },
            ]
        );
        client.get_mut().to_client = Cursor::new(out);
        assert_eq!(client.read().unwrap(), Message::Pong(b"p".to_vec()));
        assert!(matches!(client.read(), Ok(Message::Close(_)) | Err(_)));
    }
}
