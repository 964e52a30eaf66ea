//! Request heads and bodies: `parse_request` under small limits, every `Request` accessor,
//! the WebSocket handshake check, and `BodyReader` fed whole and in pieces, which must agree.
#![no_main]

use c10m::proto::http1::{parse_request, BodyReader, BodyStatus, HeadLimits, Request};
use c10m::proto::ws;
use libfuzzer_sys::fuzz_target;

const LIMITS: HeadLimits = HeadLimits {
    head_bytes_max: 512,
    headers_max: 8,
};
const BODY_BYTES_MAX: usize = 64;
const CHUNKED_HEAD: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    // Half the inputs start with a fixed chunked head, so bodies are reached often.
    let input = if mode & 1 == 1 {
        [CHUNKED_HEAD, input].concat()
    } else {
        input.to_vec()
    };
    let Ok(Some((req, head_len))) = parse_request(&input, &LIMITS) else {
        return;
    };
    assert!(head_len <= input.len() && head_len <= LIMITS.head_bytes_max);
    exercise(&req);
    let step = usize::from(mode >> 1) + 1;
    let rest = input.get(head_len..).unwrap_or_default();
    let whole = read_body(&req, rest, rest.len().max(1));
    let pieces = read_body(&req, rest, step);
    assert_eq!(whole, pieces, "a split changed the body");
});

fn exercise(req: &Request) {
    let _ = req.header("host");
    let _ = req.header_has_token("connection", "upgrade");
    let _ = req.query_param("topic");
    let _ = req.query_has("all");
    let _ = req.content_length();
    let _ = req.is_chunked();
    let _ = req.keep_alive();
    match ws::check_handshake(req) {
        Ok(accept) => assert_eq!(accept.len(), 28),
        Err(err) => ws::write_handshake_error(&mut Vec::new(), &err),
    }
}

/// Reads the body in `step`-byte pieces; the result is comparable across steps.
fn read_body(req: &Request, rest: &[u8], step: usize) -> Option<Result<(Vec<u8>, usize), String>> {
    let mut reader = BodyReader::new(req, BODY_BYTES_MAX).ok()?;
    let mut body = Vec::new();
    let mut at: usize = 0;
    loop {
        let end = at.saturating_add(step).min(rest.len());
        let piece = rest.get(at..end).unwrap_or_default();
        match reader.feed(piece, &mut body) {
            Err(err) => return Some(Err(format!("{err:?}"))),
            Ok((BodyStatus::Done { consumed }, n)) => {
                assert!(consumed == n && n <= piece.len() && reader.is_done());
                assert!(body.len() <= BODY_BYTES_MAX);
                return Some(Ok((body, at + n)));
            }
            Ok((BodyStatus::NeedMore, n)) => {
                assert_eq!(n, piece.len(), "NeedMore must consume everything");
                assert!(body.len() <= BODY_BYTES_MAX);
                if end == rest.len() {
                    return None;
                }
                at = end;
            }
        }
    }
}
