//! Unit tests of [`super`]: every error class, and input split at every byte.
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
    session.feed(input, limits, &mut Inflater::new(), &mut events, &mut out);
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
    write_handshake_response(&mut out, &accept, None);
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
    assert!(matches!(check(&[("GET", "GET /ws HTTP/1.0")]), Err(HandshakeError::BadRequest(_))));
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
    assert!(wrong.contains("Sec-WebSocket-Version: 13\r\n") && wrong.contains("Connection: close"));
    assert!(
        text(HandshakeError::MethodNotAllowed).contains("405 Method Not Allowed\r\nContent-Type")
    );
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
            session.feed(chunk, &LIMITS, &mut Inflater::new(), &mut events, &mut out);
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
    session.feed(&wire[..4], &LIMITS, &mut Inflater::new(), &mut events, &mut out);
    assert_eq!(session.buffered_bytes(), 4);
    session.feed(&wire[4..], &LIMITS, &mut Inflater::new(), &mut events, &mut out);
    assert_eq!(session.buffered_bytes(), 3);
    session.feed(&frame(0x80, b""), &LIMITS, &mut Inflater::new(), &mut events, &mut out);
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
    session.feed(&wire[..6 + 5], &LIMITS, &mut Inflater::new(), &mut events, &mut out);
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
    let wire = [frame(0x81, b"a"), frame(0x88, b""), frame(0x81, b"b"), frame(0x89, b"")].concat();
    let (events, out, mut session) = run_with(&wire, &LIMITS);
    assert_eq!(events.len(), 2);
    assert_eq!(out, close_frame(1000));
    let (mut more, mut more_out) = (Vec::new(), Vec::new());
    session.feed(&frame(0x89, b""), &LIMITS, &mut Inflater::new(), &mut more, &mut more_out);
    assert!(more.is_empty() && more_out.is_empty());
    let (events, _, session) = run_with(&[frame(0x90, b""), frame(0x81, b"a")].concat(), &LIMITS);
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

/// A client's compressed message: raw deflate with the sync-flush tail stripped.
fn deflated(payload: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::new(6), false);
    let mut z = Vec::with_capacity(payload.len() + 64);
    c.compress_vec(payload, &mut z, FlushCompress::Sync).unwrap();
    z.truncate(z.len() - 4);
    z
}

fn deflate_session() -> Session {
    let mut s = Session::new();
    s.agree_compression(&Agreed::with_server_bits(15));
    s
}

fn feed_all(session: &mut Session, input: &[u8], limits: &WsLimits) -> (Vec<Event>, Vec<u8>) {
    let (mut events, mut out) = (Vec::new(), Vec::new());
    session.feed(input, limits, &mut Inflater::new(), &mut events, &mut out);
    (events, out)
}

#[test]
fn a_compressed_message_is_inflated_split_anywhere() {
    let text = "ünïcode and a repeated line; a repeated line; a repeated line".repeat(4);
    let wire = frame(0x80 | 0x40 | 0x1, &deflated(text.as_bytes()));
    let mut inflater = Inflater::new();
    for cut in 0..=wire.len() {
        let mut s = deflate_session();
        let (mut events, mut out) = (Vec::new(), Vec::new());
        s.feed(&wire[..cut], &LIMITS, &mut inflater, &mut events, &mut out);
        s.feed(&wire[cut..], &LIMITS, &mut inflater, &mut events, &mut out);
        assert_eq!(events, [Event::Text(text.as_bytes().to_vec())], "cut at {cut}");
        assert_eq!(s.buffered_bytes(), 0);
    }
}

#[test]
fn a_fragmented_compressed_message_carries_rsv1_on_its_first_frame_only() {
    let z = deflated(b"binary binary binary binary");
    let (a, b) = z.split_at(z.len() / 2);
    let mut wire = frame(0x40 | 0x2, a);
    wire.extend(frame(0x80, b));
    let (events, _) = feed_all(&mut deflate_session(), &wire, &LIMITS);
    assert_eq!(events, [Event::Binary(b"binary binary binary binary".to_vec())]);
    // RSV1 on the continuation is a protocol error.
    let mut wire = frame(0x40 | 0x2, a);
    wire.extend(frame(0x80 | 0x40, b));
    let (events, _) = feed_all(&mut deflate_session(), &wire, &LIMITS);
    assert!(matches!(events.last(), Some(Event::Fail { code: 1002, .. })), "{events:?}");
}

#[test]
fn rsv1_without_the_extension_or_on_a_control_frame_fails() {
    let z = deflated(b"hello hello");
    let (events, _) = run(&frame(0x80 | 0x40 | 0x1, &z));
    assert!(matches!(events.last(), Some(Event::Fail { code: 1002, .. })), "{events:?}");
    let (events, _) = feed_all(&mut deflate_session(), &frame(0x80 | 0x40 | 0x9, b""), &LIMITS);
    assert!(matches!(events.last(), Some(Event::Fail { code: 1002, .. })), "{events:?}");
    // RSV2 stays reserved with the extension.
    let (events, _) = feed_all(&mut deflate_session(), &frame(0x80 | 0x20 | 0x1, b"x"), &LIMITS);
    assert!(matches!(events.last(), Some(Event::Fail { code: 1002, .. })), "{events:?}");
}

#[test]
fn a_decompression_bomb_gets_1009_and_bad_data_1007() {
    let bomb = deflated(&vec![b'a'; 1 << 20]);
    assert!(bomb.len() < 4096);
    let (events, out) = feed_all(&mut deflate_session(), &frame(0x82 | 0x40, &bomb), &LIMITS);
    assert_eq!(events, [Event::Fail { code: 1009, reason: INFLATE_TOO_BIG }]);
    assert_eq!(&out[2..4], &1009u16.to_be_bytes());
    let (events, _) = feed_all(&mut deflate_session(), &frame(0x81 | 0x40, &[0xff; 8]), &LIMITS);
    assert!(matches!(events.last(), Some(Event::Fail { code: 1007, .. })), "{events:?}");
    // Valid deflate of invalid UTF-8 in a text message.
    let bad = deflated(&[0xc3, 0x28, b'a', b'b']);
    let (events, _) = feed_all(&mut deflate_session(), &frame(0x81 | 0x40, &bad), &LIMITS);
    assert!(matches!(events.last(), Some(Event::Fail { code: 1007, .. })), "{events:?}");
}

#[test]
fn the_101_names_the_extension_only_when_agreed() {
    let mut out = Vec::new();
    write_handshake_response(&mut out, "k", Some(&Agreed::with_server_bits(10)));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; "), "{text}");
    assert!(text.ends_with("; server_max_window_bits=10\r\n\r\n"), "{text}");
    let mut out = Vec::new();
    write_handshake_response(&mut out, "k", None);
    assert!(!String::from_utf8(out).unwrap().contains("Extensions"));
    assert_eq!(std::mem::size_of::<Session>(), 16, "the idle session stays 16 bytes");
}

/// A live upgrade moves a session cut anywhere: a fragmented text message (with a ping in
/// between) split at every byte, exported and imported at the cut, completes the same.
#[test]
fn a_session_cut_at_any_byte_resumes_after_a_handover() {
    let mut input = frame(0x01, "héllo ".as_bytes()); // text, not final
    let mut ping = frame(0x89, b"p");
    ping[0] = 0x89;
    input.extend_from_slice(&ping);
    input.extend_from_slice(&frame(0x80, "wörld".as_bytes())); // continuation, final
    let (whole, _) = run(&input);
    assert_eq!(whole.last(), Some(&Event::Text("héllo wörld".as_bytes().to_vec())));
    for cut in 0..=input.len() {
        let mut s = Session::new();
        let (mut events, mut out) = (Vec::new(), Vec::new());
        let mut inflater = Inflater::new();
        s.feed(&input[..cut], &LIMITS, &mut inflater, &mut events, &mut out);
        let (b, partial) = (s.handover_byte().unwrap(), s.handover_partial().unwrap());
        let mut moved = Session::from_handover(b, &partial).expect("imports");
        moved.feed(&input[cut..], &LIMITS, &mut inflater, &mut events, &mut out);
        assert_eq!(events, whole, "cut at {cut}");
        if !partial.is_empty() {
            assert!(Session::from_handover(b, &partial[..partial.len() - 1]).is_none());
        }
    }
}
