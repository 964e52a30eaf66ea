//! HTTP/1.1 response heads, chunked bodies, and the admin publish request.

#![forbid(unsafe_code)]

use super::HEAD_BYTES_MAX;

/// The parts of a response head the load generator looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub chunked: bool,
    pub content_length: Option<usize>,
    pub ws_accept: Option<String>,
    pub content_type: Option<String>,
}

/// Why a response was not usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadError {
    TooLong,
    Malformed,
}

/// Parses a response head from the start of `bytes`: `Ok(None)` means "need more".
pub fn parse_head(bytes: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() > HEAD_BYTES_MAX => {
            return Err(HeadError::TooLong)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError::Malformed),
    };
    let mut head = Head {
        status: response.code.unwrap_or(0),
        len,
        chunked: false,
        content_length: None,
        ws_accept: None,
        content_type: None,
    };
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value).trim().to_string();
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if header.name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(value.parse().map_err(|_| HeadError::Malformed)?);
        } else if header.name.eq_ignore_ascii_case("sec-websocket-accept") {
            head.ws_accept = Some(value);
        } else if header.name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value);
        }
    }
    Ok(Some(head))
}

/// Where a chunked-body decoder stands; fits in eight bytes so every SSE connection can
/// carry one without a buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Chunked {
    /// Reading the hex size; the value so far.
    #[default]
    SizeStart,
    Size(u32),
    /// Skipping a chunk extension up to the CR LF.
    Extension(u32),
    SizeLf(u32),
    Data(u32),
    DataCr,
    DataLf,
    /// The zero-size chunk arrived: the body is over.
    Done,
}

/// Largest chunk accepted (a single SSE event never needs more).
pub const CHUNK_BYTES_MAX: u32 = 16 << 20;

impl Chunked {
    /// Feeds `input`, handing each run of body bytes to `body`. Errors on bytes that are
    /// not a chunked body.
    pub fn feed(&mut self, input: &[u8], mut body: impl FnMut(&[u8])) -> Result<(), HeadError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            *self = match *self {
                Chunked::SizeStart | Chunked::Size(_) => {
                    let so_far = match *self {
                        Chunked::Size(v) => v,
                        _ => 0,
                    };
                    match (b as char).to_digit(16) {
                        Some(d) => {
                            let v = so_far
                                .checked_mul(16)
                                .and_then(|v| v.checked_add(d))
                                .filter(|v| *v <= CHUNK_BYTES_MAX)
                                .ok_or(HeadError::TooLong)?;
                            Chunked::Size(v)
                        }
                        None if *self == Chunked::SizeStart => return Err(HeadError::Malformed),
                        None if b == b'\r' => Chunked::SizeLf(so_far),
                        None if b == b';' || b == b' ' => Chunked::Extension(so_far),
                        None => return Err(HeadError::Malformed),
                    }
                }
                Chunked::Extension(v) if b == b'\r' => Chunked::SizeLf(v),
                Chunked::Extension(v) => Chunked::Extension(v),
                Chunked::SizeLf(0) if b == b'\n' => Chunked::Done,
                Chunked::SizeLf(v) if b == b'\n' => Chunked::Data(v),
                Chunked::SizeLf(_) => return Err(HeadError::Malformed),
                Chunked::Data(left) => {
                    let take = (left as usize).min(input.len() - i);
                    body(&input[i..i + take]);
                    i += take;
                    let left = left - take as u32;
                    *self = if left == 0 { Chunked::DataCr } else { Chunked::Data(left) };
                    continue;
                }
                Chunked::DataCr if b == b'\r' => Chunked::DataLf,
                Chunked::DataLf if b == b'\n' => Chunked::SizeStart,
                Chunked::DataCr | Chunked::DataLf => return Err(HeadError::Malformed),
                // Trailers after the last chunk are ignored.
                Chunked::Done => Chunked::Done,
            };
            i += 1;
        }
        Ok(())
    }
}

/// Where a publish goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    User(String),
    Topic(String),
    All,
}

/// Appends `POST /publish?...` with `payload` as the body, and `Authorization: Bearer`
/// when the admin API has a key.
pub fn publish_request(
    out: &mut Vec<u8>,
    host: &str,
    key: Option<&str>,
    audience: &Audience,
    payload: &[u8],
) {
    let query = match audience {
        Audience::User(u) => format!("user={u}"),
        Audience::Topic(t) => format!("topic={t}"),
        Audience::All => "all".to_string(),
    };
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    out.extend_from_slice(
        format!(
            "POST /publish?{query} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: \
             application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(payload);
}

/// A complete response with a Content-Length body: status and total bytes used.
/// Appends one `POST /publish/batch` whose body has a JSON line per message.
pub fn batch_request(
    out: &mut Vec<u8>,
    host: &str,
    key: Option<&str>,
    lines: &[(Audience, Vec<u8>)],
) {
    let mut body = Vec::with_capacity(lines.iter().map(|(_, p)| p.len() + 48).sum());
    for (audience, payload) in lines {
        let data = serde_json::Value::from(String::from_utf8_lossy(payload).into_owned());
        let line = match audience {
            Audience::User(u) => serde_json::json!({ "user": u, "data": data }),
            Audience::Topic(t) => serde_json::json!({ "topic": t, "data": data }),
            Audience::All => serde_json::json!({ "all": true, "data": data }),
        };
        body.extend_from_slice(line.to_string().as_bytes());
        body.push(b'\n');
    }
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    out.extend_from_slice(
        format!(
            "POST /publish/batch HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: \
             application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
}

pub fn parse_response(bytes: &[u8]) -> Result<Option<(u16, usize)>, HeadError> {
    let Some(head) = parse_head(bytes)? else {
        return Ok(None);
    };
    if head.chunked {
        return Err(HeadError::Malformed);
    }
    let total = head.len + head.content_length.unwrap_or(0);
    if bytes.len() < total {
        return Ok(None);
    }
    Ok(Some((head.status, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_in_pieces() {
        let full = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Accept: abc=\r\n\r\nrest";
        for cut in 0..full.len() - 4 {
            assert_eq!(parse_head(&full[..cut]), Ok(None), "cut {cut}");
        }
        let head = parse_head(full).unwrap().unwrap();
        assert_eq!(head.status, 101);
        assert_eq!(head.len, full.len() - 4);
        assert_eq!(head.ws_accept.as_deref(), Some("abc="));
    }

    #[test]
    fn bad_heads() {
        assert_eq!(parse_head(b"garbage\r\n\r\n"), Err(HeadError::Malformed));
        let long = vec![b'a'; HEAD_BYTES_MAX + 10];
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.extend_from_slice(&long);
        assert_eq!(parse_head(&big), Err(HeadError::TooLong));
    }

    #[test]
    fn chunked_byte_by_byte() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        let mut out = Vec::new();
        let mut dec = Chunked::default();
        for b in wire.iter() {
            dec.feed(std::slice::from_ref(b), |s| out.extend_from_slice(s)).unwrap();
        }
        assert_eq!(out, b"hello, world");
        assert_eq!(dec, Chunked::Done);
        let mut dec = Chunked::default();
        assert!(dec.feed(b"zz\r\n", |_| {}).is_err());
        let mut dec = Chunked::default();
        assert!(dec.feed(b"ffffffff\r\n", |_| {}).is_err());
    }

    #[test]
    fn publish_round_trip() {
        let mut req = Vec::new();
        publish_request(&mut req, "h:1", None, &Audience::Topic("t1".into()), b"hi");
        assert!(req.starts_with(b"POST /publish?topic=t1 HTTP/1.1\r\n"));
        assert!(req.ends_with(b"Content-Length: 2\r\n\r\nhi"));
        assert!(!req.windows(14).any(|w| w == b"Authorization:".as_slice()));
        req.clear();
        publish_request(&mut req, "h:1", Some("k3y"), &Audience::All, b"hi");
        let auth = b"\r\nAuthorization: Bearer k3y\r\n";
        assert!(req.windows(auth.len()).any(|w| w == auth));
        let resp = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(&resp[..resp.len() - 1]), Ok(None));
        assert_eq!(parse_response(resp), Ok(Some((202, resp.len()))));
    }
}
