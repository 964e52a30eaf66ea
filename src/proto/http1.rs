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

    fn headers_named<'a: 'n, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n {
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
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { head_bytes_max: 1024, headers_max: 8 };

    fn parse(head: &str) -> Request {
        let (req, len) = parse_request(head.as_bytes(), &LIMITS).unwrap().unwrap();
        assert_eq!(len, head.len());
        req
    }

    #[test]
    fn parses_a_complete_head_and_reports_its_length() {
        let buf = b"GET /ws/x?user=a%20b&all HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\nNEXT";
        let (req, len) = parse_request(buf, &LIMITS).unwrap().unwrap();
        assert_eq!(len, buf.len() - 4);
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/ws/x");
        assert_eq!(req.query, "user=a%20b&all");
        assert_eq!(req.version_minor, 1);
        assert_eq!(req.headers[0], ("Host".to_owned(), b"h".to_vec()));
        assert_eq!(req.header("UPGRADE"), Some(&b"websocket"[..]));
        assert_eq!(req.header("missing"), None);
    }

    #[test]
    fn partial_heads_need_more_at_every_split() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        for cut in 0..head.len() {
            assert_eq!(parse_request(&head[..cut], &LIMITS), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn head_over_the_byte_limit_is_too_large() {
        let limits = HeadLimits { head_bytes_max: 32, headers_max: 8 };
        let mut head = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        // A slowly growing head is refused once it reaches the limit, not at its end.
        head.resize(31, b'a');
        assert_eq!(parse_request(&head, &limits), Ok(None));
        head.push(b'a');
        assert_eq!(parse_request(&head, &limits), Err(HeadError::TooLarge));
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&head, &limits), Err(HeadError::TooLarge));
        // A head that fits is accepted even when pipelined bytes follow past the limit.
        let fits = b"GET / HTTP/1.1\r\n\r\n".repeat(4);
        assert!(parse_request(&fits, &limits).unwrap().is_some());
        assert_eq!(HeadError::TooLarge.status(), 431);
    }

    #[test]
    fn too_many_headers_and_the_cap() {
        let mut head = String::from("GET / HTTP/1.1\r\n");
        for i in 0..9 {
            head.push_str(&format!("X-{i}: v\r\n"));
        }
        head.push_str("\r\n");
        assert_eq!(parse_request(head.as_bytes(), &LIMITS), Err(HeadError::TooManyHeaders));
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
        let huge = HeadLimits { head_bytes_max: 1 << 20, headers_max: usize::MAX };
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=HEADERS_CAP {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse_request(many.as_bytes(), &huge), Err(HeadError::TooManyHeaders));
    }

    #[test]
    fn malformed_heads_are_invalid() {
        for bad in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"GET / FTP/1.1\r\n\r\n",
            b"G@T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert_eq!(parse_request(bad, &LIMITS), Err(HeadError::Invalid), "{bad:?}");
        }
        assert_eq!(HeadError::Invalid.status(), 400);
    }

    #[test]
    fn header_tokens_span_lists_and_repeats() {
        let req =
            parse("GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nConnection: x\r\n\r\n");
        assert!(req.header_has_token("connection", "upgrade"));
        assert!(req.header_has_token("CONNECTION", "X"));
        assert!(!req.header_has_token("connection", "keep"));
        assert!(!req.header_has_token("upgrade", "websocket"));
    }

    #[test]
    fn query_parameters_decode() {
        let req = parse("GET /sse?topic=a%2Fb+c&all&empty=&bad=%zz%4&%6Bey=v HTTP/1.1\r\n\r\n");
        assert_eq!(req.query_param("topic").as_deref(), Some("a/b c"));
        assert_eq!(req.query_param("all").as_deref(), Some(""));
        assert_eq!(req.query_param("empty").as_deref(), Some(""));
        assert_eq!(req.query_param("bad").as_deref(), Some("%zz%4"));
        assert_eq!(req.query_param("key").as_deref(), Some("v"));
        assert_eq!(req.query_param("nope"), None);
        assert!(req.query_has("all") && req.query_has("empty") && !req.query_has("al"));
        let invalid = parse("GET /?u=%ff HTTP/1.1\r\n\r\n");
        assert_eq!(invalid.query_param("u").as_deref(), Some("\u{fffd}"));
        assert_eq!(parse("GET /p HTTP/1.1\r\n\r\n").query, "");
    }

    #[test]
    fn content_length_values() {
        let length = |value: &str| {
            parse(&format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n")).content_length()
        };
        assert_eq!(length("42"), Ok(Some(42)));
        assert_eq!(length("5, 5"), Ok(Some(5)));
        for bad in ["", "-1", "+1", "1x", "5, 6", "99999999999999999999999"] {
            assert_eq!(length(bad), Err(HeadError::Invalid), "{bad:?}");
        }
        let twice = parse("POST / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n");
        assert_eq!(twice.content_length(), Err(HeadError::Invalid));
        assert_eq!(parse("GET / HTTP/1.1\r\n\r\n").content_length(), Ok(None));
    }

    #[test]
    fn chunked_and_keep_alive() {
        assert!(parse("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n").is_chunked());
        assert!(!parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").is_chunked());
        assert!(parse("GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!parse("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive());
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
    }

    #[test]
    fn responses_always_carry_a_length() {
        let mut out = Vec::new();
        write_response(&mut out, 404, &[("Content-Type", "text/plain")], b"no", true);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nno"
        );
        out.clear();
        write_response(&mut out, 204, &[], b"", false);
        assert_eq!(
            out,
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(reason(431), "Request Header Fields Too Large");
        assert_eq!(reason(599), "Server Error");
    }

    fn reader(head: &str, body_bytes_max: usize) -> Result<BodyReader, BodyError> {
        BodyReader::new(&parse(head), body_bytes_max)
    }

    /// Feeds `input` in pieces of `step` bytes the way the engine does, keeping leftovers.
    fn read_all(
        mut reader: BodyReader,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, usize), BodyError> {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let end = (at + step).min(input.len());
            match reader.feed(&input[at..end], &mut body)? {
                (BodyStatus::Done { consumed }, n) => {
                    assert_eq!(consumed, n);
                    assert!(reader.is_done());
                    return Ok((body, at + n));
                }
                (BodyStatus::NeedMore, n) => {
                    assert_eq!(n, end - at);
                    assert!(end < input.len(), "input ran out");
                    at = end;
                }
            }
        }
    }

    #[test]
    fn content_length_bodies_stop_at_their_length() {
        for step in [1, 3, 100] {
            let r = reader("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 10).unwrap();
            assert_eq!(read_all(r, b"helloGET", step), Ok((b"hello".to_vec(), 5)));
        }
        let mut empty = reader("POST / HTTP/1.1\r\n\r\n", 10).unwrap();
        assert_eq!(empty.feed(b"GET", &mut Vec::new()), Ok((BodyStatus::Done { consumed: 0 }, 0)));
        let too_large = reader("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 10);
        assert_eq!(too_large.unwrap_err(), BodyError::TooLarge);
        assert_eq!(BodyError::TooLarge.status(), 413);
    }

    #[test]
    fn chunked_bodies_decode_at_any_split() {
        let wire = b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET";
        for step in 1..wire.len() {
            let r = reader("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 11).unwrap();
            assert_eq!(read_all(r, wire, step), Ok((b"hello world".to_vec(), wire.len() - 3)));
        }
    }

    #[test]
    fn chunked_errors() {
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let run = |wire: &[u8], max| read_all(reader(head, max).unwrap(), wire, 1);
        assert_eq!(run(b"6\r\nhello!\r\n0\r\n\r\n", 5), Err(BodyError::TooLarge));
        assert_eq!(run(b"3\r\nabc\r\n3\r\nabc\r\n0\r\n\r\n", 5), Err(BodyError::TooLarge));
        assert_eq!(run(b"fffffffffffffffffffff\r\n", usize::MAX), Err(BodyError::TooLarge));
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b";ext\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\r\r",
            b"0\r\nX: 1\n\r\n",
            b"0\r\n\rX",
        ] {
            assert_eq!(run(bad, 100), Err(BodyError::Invalid), "{bad:?}");
        }
        let long_ext = [&b"1;"[..], &[b'e'; CHUNK_EXT_BYTES_MAX], b"\r\n"].concat();
        assert_eq!(run(&long_ext, 100), Err(BodyError::Invalid));
        let long_trailer = [&b"0\r\nX: "[..], &[b't'; TRAILER_BYTES_MAX], b"\r\n\r\n"].concat();
        assert_eq!(run(&long_trailer, 100), Err(BodyError::TooLarge));
        assert_eq!(BodyError::Invalid.status(), 400);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for head in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        ] {
            assert_eq!(reader(head, 100).unwrap_err(), BodyError::Invalid, "{head:?}");
        }
    }
}
