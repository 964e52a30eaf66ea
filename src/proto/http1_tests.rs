//! Unit tests of [`super`]: every error class, and input split at every byte.
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
    let req = parse("GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nConnection: x\r\n\r\n");
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
    assert_eq!(out, b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
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
