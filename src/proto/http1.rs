//! HTTP/1.x request heads, request bodies and plain responses.
//!
//! A connection's head is parsed once (the WebSocket upgrade, the SSE subscribe or one admin
//! call), so [`Request`] is an owned copy and nothing borrows the receive buffer. The caller
//! accumulates bytes, calls [`parse_request`] until it returns a head, then feeds the bytes
//! after the head to a [`BodyReader`]; bytes after the body belong to the next request.

use super::push_decimal;

/// The most header slots handed to httparse, whatever `headers_max` says; the array lives on
/// the stack, and no client of a push server needs more.
pub const HEADERS_CAP: usize = 128;

/// Caps on one request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Request line plus headers plus the blank line; past it the answer is 431.
    pub head_bytes_max: usize,
    /// Header lines; past it the answer is 431. Values above [`HEADERS_CAP`] act as the cap.
    pub headers_max: usize,
}

/// Why a head was refused; each maps to the status the server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    TooLarge,
    TooManyHeaders,
    Invalid,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Invalid => 400,
        }
    }
}

/// An owned request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target up to, not including, the first `?`.
    pub path: String,
    /// The raw text after the first `?`; empty when there is none.
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// Header names as sent, values as raw bytes, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    /// The value of the first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers_named(name).next()
    }

    /// Whether any `name` header holds `token` in its comma-separated list, ignoring case;
    /// `Connection: keep-alive, Upgrade` holds `upgrade`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .flat_map(|value| value.split(|&b| b == b','))
            .any(|item| trim_ows(item).eq_ignore_ascii_case(token.as_bytes()))
    }

    /// The percent-decoded value of the first query parameter called `key` (`+` is a space);
    /// `Some("")` for `?key` or `?key=`, `None` when absent. Invalid UTF-8 after decoding is
    /// replaced with U+FFFD.
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query_pairs()
            .find(|(k, _)| percent_decode(k) == key.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(&percent_decode(v)).into_owned())
    }

    /// Whether the query names `key`, with or without a value (`?all` counts).
    pub fn query_has(&self, key: &str) -> bool {
        self.query_pairs().any(|(k, _)| percent_decode(k) == key.as_bytes())
    }

    /// The body length that `Content-Length` declares, `None` without one. Several values
    /// (repeated headers or `5, 5`) must agree; anything else is `Invalid`, since two
    /// readings of one request are how requests are smuggled.
    pub fn content_length(&self) -> Result<Option<usize>, HeadError> {
        let mut length = None;
        for value in self.headers_named("content-length") {
            for item in value.split(|&b| b == b',') {
                let parsed = parse_length(trim_ows(item)).ok_or(HeadError::Invalid)?;
                if length.is_some_and(|seen| seen != parsed) {
                    return Err(HeadError::Invalid);
                }
                length = Some(parsed);
            }
        }
        Ok(length)
    }

    /// Whether the last transfer coding is `chunked`, which is what frames the body.
    pub fn is_chunked(&self) -> bool {
        self.last_transfer_coding().is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
    }

    /// Whether the connection stays open after the response: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        if self.header_has_token("connection", "close") {
            return false;
        }
        self.version_minor >= 1 || self.header_has_token("connection", "keep-alive")
    }

    pub fn headers_named<'a: 'n, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + 'n {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn query_pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.query.as_bytes().split(|&b| b == b'&').filter(|pair| !pair.is_empty()).map(|pair| {
            let mut halves = pair.splitn(2, |&b| b == b'=');
            let key = halves.next().unwrap_or_default();
            (key, halves.next().unwrap_or_default())
        })
    }

    /// The last non-empty coding over all `Transfer-Encoding` headers, if any.
    fn last_transfer_coding(&self) -> Option<&[u8]> {
        self.headers_named("transfer-encoding")
            .flat_map(|value| value.split(|&b| b == b','))
            .map(trim_ows)
            .filter(|coding| !coding.is_empty())
            .last()
    }

    fn has_transfer_encoding(&self) -> bool {
        self.headers_named("transfer-encoding").next().is_some()
    }
}

/// Parses one request head from the start of `buf`. `Ok(None)` means more bytes are needed;
/// `Ok(Some((request, head_len)))` means the head is the first `head_len` bytes. A head that
/// is not complete within `head_bytes_max` bytes is `TooLarge` as soon as `buf` reaches the
/// limit, so a slowly growing buffer is refused without waiting for the end of the head.
pub fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(Request, usize)>, HeadError> {
    let window = buf.get(..limits.head_bytes_max).unwrap_or(buf);
    let mut slots = [httparse::EMPTY_HEADER; HEADERS_CAP];
    let slots_len = limits.headers_max.min(HEADERS_CAP);
    let mut parsed = httparse::Request::new(&mut slots[..slots_len]);
    let head_len = match parsed.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.head_bytes_max => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Invalid),
    };
    let (Some(method), Some(target), Some(version_minor)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HeadError::Invalid);
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = parsed.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect();
    let request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        version_minor,
        headers,
    };
    Ok(Some((request, head_len)))
}

/// Writes a complete response: status line, `headers`, `Content-Length` (always, even 0),
/// `Connection: close` when the connection will not be kept, the blank line, then `body`.
/// Names and values come from the server, not the peer; they must hold no CR or LF.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        debug_assert!(!name.contains(['\r', '\n']) && !value.contains(['\r', '\n']));
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The reason phrase for the statuses this server sends; others get a generic phrase.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        // Generic phrases by class: clients read the code, not the phrase.
        _ if status < 200 => "Informational",
        _ if status < 300 => "Success",
        _ if status < 400 => "Redirection",
        _ if status < 500 => "Client Error",
        _ => "Server Error",
    }
}

/// Bytes of chunk extensions allowed on one chunk-size line; extensions are ignored, and the
/// cap keeps a peer from streaming an endless size line.
pub const CHUNK_EXT_BYTES_MAX: usize = 256;
/// Bytes of trailer fields allowed after the last chunk; trailers are read and dropped.
pub const TRAILER_BYTES_MAX: usize = 4096;

/// Why a body was refused: `TooLarge` is answered with 413, `Invalid` with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    Invalid,
}

impl BodyError {
    pub fn status(self) -> u16 {
        match self {
            BodyError::TooLarge => 413,
            BodyError::Invalid => 400,
        }
    }
}

/// What one [`BodyReader::feed`] call reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStatus {
    /// Every byte given was consumed and the body is not complete yet.
    NeedMore,
    /// The body is complete; `consumed` bytes of this call's input, chunk framing and
    /// trailers included, belonged to it. Bytes after them start the next request.
    Done { consumed: usize },
}

/// Incremental reader of a request body framed by `Content-Length` or `chunked`, with a cap
/// on decoded bytes. It keeps no input: each call consumes what it is given up to the end of
/// the body and says how much, so the caller keeps leftovers (a pipelined next request).
#[derive(Debug, Clone)]
pub struct BodyReader {
    state: BodyState,
    /// Decoded bytes still allowed; the chunked cap is checked against each chunk's size.
    allowance_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// A `Content-Length` body with this many bytes still to come.
    Length {
        remaining: usize,
    },
    /// Hex digits of a chunk size; `digits` counts them, to refuse an empty size.
    Size {
        size: usize,
        digits: usize,
    },
    /// After the size: an extension (ignored) up to the CR.
    Extension {
        size: usize,
        ext_bytes: usize,
    },
    /// The CR of the size line has been seen; LF must follow.
    SizeLf {
        size: usize,
    },
    Data {
        remaining: usize,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line or the final blank line.
    TrailerLine {
        trailer_bytes: usize,
    },
    /// Inside a trailer field line.
    TrailerField {
        trailer_bytes: usize,
    },
    TrailerFieldLf {
        trailer_bytes: usize,
    },
    /// The CR of the final blank line has been seen; LF must follow.
    EndLf,
    Done,
}

impl BodyReader {
    /// Prepares to read the body that `req` declares. Without `Content-Length` or chunked
    /// coding the body is empty. A declared length over `body_bytes_max` is `TooLarge` here,
    /// so the server answers 413 without reading it. Both framings at once, or a transfer
    /// coding other than a final `chunked`, is `Invalid`: a request read two ways is a
    /// smuggling vector.
    pub fn new(req: &Request, body_bytes_max: usize) -> Result<BodyReader, BodyError> {
        let length = req.content_length().map_err(|_| BodyError::Invalid)?;
        let state = if req.has_transfer_encoding() {
            if !req.is_chunked() || length.is_some() {
                return Err(BodyError::Invalid);
            }
            BodyState::Size { size: 0, digits: 0 }
        } else {
            match length {
                Some(len) if len > body_bytes_max => return Err(BodyError::TooLarge),
                Some(0) | None => BodyState::Done,
                Some(len) => BodyState::Length { remaining: len },
            }
        };
        Ok(BodyReader { state, allowance_bytes: body_bytes_max })
    }

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        self.state == BodyState::Done
    }

    /// Consumes body bytes from the start of `buf` (bytes that follow the head or the
    /// previous call's consumed bytes), appending decoded body bytes to `body`. Returns the
    /// status and the bytes of `buf` consumed: all of them on `NeedMore`, the body's share on
    /// `Done`. Once done, further calls consume nothing.
    pub fn feed(
        &mut self,
        buf: &[u8],
        body: &mut Vec<u8>,
    ) -> Result<(BodyStatus, usize), BodyError> {
        let mut at = 0;
        while self.state != BodyState::Done {
            let Some(rest) = buf.get(at..).filter(|rest| !rest.is_empty()) else {
                return Ok((BodyStatus::NeedMore, buf.len()));
            };
            at += self.step(rest, body)?;
        }
        Ok((BodyStatus::Done { consumed: at }, at))
    }

    /// Advances over the start of `rest` (never empty) and returns the bytes consumed.
    fn step(&mut self, rest: &[u8], body: &mut Vec<u8>) -> Result<usize, BodyError> {
        if let BodyState::Length { remaining } | BodyState::Data { remaining } = self.state {
            let take = remaining.min(rest.len());
            body.extend_from_slice(rest.get(..take).unwrap_or_default());
            self.state = match (self.state, remaining - take) {
                (BodyState::Length { .. }, 0) => BodyState::Done,
                (BodyState::Length { .. }, left) => BodyState::Length { remaining: left },
                (_, 0) => BodyState::DataCr,
                (_, left) => BodyState::Data { remaining: left },
            };
            return Ok(take);
        }
        let byte = rest.first().copied().unwrap_or_default();
        self.state = self.framing_byte(byte)?;
        Ok(1)
    }

    /// The state after one byte of chunk framing or trailer.
    fn framing_byte(&mut self, byte: u8) -> Result<BodyState, BodyError> {
        use BodyState::*;
        let next = match (self.state, byte) {
            (Size { size, digits }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                let digit = usize::from(hex_value(byte));
                // A size past the allowance is refused here, before its data arrives.
                let size = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .filter(|&s| s <= self.allowance_bytes)
                    .ok_or(BodyError::TooLarge)?;
                Size { size, digits: digits + 1 }
            }
            (Size { digits: 0, .. }, _) => return Err(BodyError::Invalid),
            (Size { size, .. }, b'\r') => SizeLf { size },
            (Size { size, .. }, b';' | b' ' | b'\t') => Extension { size, ext_bytes: 1 },
            (Extension { size, .. }, b'\r') => SizeLf { size },
            (Extension { ext_bytes, .. }, _) if ext_bytes >= CHUNK_EXT_BYTES_MAX => {
                return Err(BodyError::Invalid)
            }
            (Extension { size, ext_bytes }, _) if byte != b'\n' => {
                Extension { size, ext_bytes: ext_bytes + 1 }
            }
            (SizeLf { size: 0 }, b'\n') => TrailerLine { trailer_bytes: 0 },
            (SizeLf { size }, b'\n') => {
                self.allowance_bytes -= size;
                Data { remaining: size }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size { size: 0, digits: 0 },
            (TrailerLine { .. }, b'\r') => EndLf,
            (TrailerLine { trailer_bytes } | TrailerField { trailer_bytes }, _)
                if trailer_bytes >= TRAILER_BYTES_MAX =>
            {
                return Err(BodyError::TooLarge)
            }
            (TrailerField { trailer_bytes }, b'\r') => {
                TrailerFieldLf { trailer_bytes: trailer_bytes + 1 }
            }
            (TrailerLine { trailer_bytes } | TrailerField { trailer_bytes }, _)
                if byte != b'\n' =>
            {
                TrailerField { trailer_bytes: trailer_bytes + 1 }
            }
            (TrailerFieldLf { trailer_bytes }, b'\n') => TrailerLine { trailer_bytes },
            (EndLf, b'\n') => Done,
            // A bare LF, a missing CRLF after chunk data, or any other stray byte.
            _ => return Err(BodyError::Invalid),
        };
        Ok(next)
    }
}

/// Strips optional whitespace (spaces and tabs) from both ends.
fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Parses a decimal length: digits only, no sign, no overflow.
fn parse_length(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |acc, &b| {
        let digit = (b as char).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(digit as usize)
    })
}

/// Decodes `%XX` escapes and `+`; a `%` not followed by two hex digits is kept as sent.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let [first, tail @ ..] = rest {
        match (first, tail) {
            (b'%', [hi, lo, after @ ..]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                out.push(hex_value(*hi) << 4 | hex_value(*lo));
                rest = after;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (byte, _) => out.push(*byte),
        }
        rest = tail;
    }
    out
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
#[path = "http1_tests.rs"]
mod tests;
