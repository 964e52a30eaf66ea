//! Bad input on the client listener: HTTP heads the server must refuse with the right status,
//! and WebSocket protocol violations it must answer with the right close code. Each refusal
//! closes the connection and moves the counters.

mod common;

use std::io::Write;

use common::{
    client_frame, close_payload, lossy, read_response, read_to_eof, RawWs, Response, Server, FIN,
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends `raw`, reads one response, and checks that the server then closes the connection.
fn refused(server: &Server, raw: &[u8]) -> Response {
    let mut s = server.client_tcp();
    s.write_all(raw).expect("write");
    let mut r = std::io::BufReader::new(s);
    let resp = read_response(&mut r).expect("a response");
    let rest = read_to_eof(r.get_mut());
    assert!(rest.is_empty() && r.buffer().is_empty(), "bytes after the response");
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    resp
}

#[test]
fn unknown_paths_are_404() {
    let server = Server::start(&[]);
    for path in ["/", "/nope", "/ws/extra", "/SSE", "/echo"] {
        let r = refused(&server, format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        assert_eq!(r.status, 404, "{path}");
    }
    // /echo exists only with --echo.
    let r = refused(&server, upgrade("/echo", "").as_bytes());
    assert_eq!(r.status, 404);
}

#[test]
fn post_sse_is_405_with_allow() {
    let server = Server::start(&[]);
    let r = refused(&server, b"POST /sse?user=a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
}

#[test]
fn bad_websocket_handshakes_are_400() {
    let server = Server::start(&[]);
    let cases = [
        ("plain GET", "GET /ws HTTP/1.1\r\nHost: h\r\n\r\n".to_owned()),
        (
            "no Connection: Upgrade",
            format!(
                "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
        ),
        (
            "no key",
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
                .to_owned(),
        ),
        (
            "short key",
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"
                .to_owned(),
        ),
        (
            "no version",
            format!(
                "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {KEY}\r\n\r\n"
            ),
        ),
        ("HTTP/1.0", upgrade("/ws", "").replacen("HTTP/1.1", "HTTP/1.0", 1)),
        ("user id over 256 bytes", upgrade(&format!("/ws?user={}", "u".repeat(257)), "")),
        (
            "65 topics",
            upgrade(
                &format!(
                    "/ws?topics={}",
                    (0..65).map(|i| format!("t{i}")).collect::<Vec<_>>().join(",")
                ),
                "",
            ),
        ),
        ("topic over 256 bytes", upgrade(&format!("/ws?topics={}", "t".repeat(257)), "")),
    ];
    for (what, raw) in cases {
        let r = refused(&server, raw.as_bytes());
        assert_eq!(r.status, 400, "{what}: {}", r.text());
    }
    // The same identity limits on SSE.
    let r = refused(
        &server,
        format!("GET /sse?user={} HTTP/1.1\r\nHost: h\r\n\r\n", "u".repeat(257)).as_bytes(),
    );
    assert_eq!(r.status, 400);
    // At the limits it is accepted.
    let topics: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
    let q = format!("/ws?user={}&topics={}", "u".repeat(256), topics.join(","));
    let _ws = server.ws_connect(&q);
    server.wait_connections(1);
}

#[test]
fn post_upgrade_is_405() {
    let server = Server::start(&[]);
    let raw = upgrade("/ws", "").replacen("GET", "POST", 1);
    let r = refused(&server, raw.as_bytes());
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
}

#[test]
fn websocket_version_8_is_426_naming_version_13() {
    let server = Server::start(&[]);
    let raw = upgrade("/ws", "").replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let r = refused(&server, raw.as_bytes());
    assert_eq!(r.status, 426);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
}

#[test]
fn head_over_8_kib_is_431() {
    let server = Server::start(&[]);
    // A complete head that is too long.
    let raw = upgrade("/ws", &format!("X-Pad: {}\r\n", "p".repeat(9000)));
    let r = refused(&server, raw.as_bytes());
    assert_eq!(r.status, 431);
    // A head that keeps growing without ending is refused once it passes the limit.
    let raw = format!("GET /sse HTTP/1.1\r\nX-Pad: {}", "p".repeat(9000));
    let r = refused(&server, raw.as_bytes());
    assert_eq!(r.status, 431);
}

#[test]
fn too_many_headers_is_431_and_64_are_fine() {
    let server = Server::start(&[]);
    let headers =
        |n: usize| -> String { (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>() };
    // Host + 63 = 64 header lines.
    let ok = format!("GET /sse HTTP/1.1\r\nHost: h\r\n{}\r\n", headers(63));
    let mut s = server.client_tcp();
    s.write_all(ok.as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(s);
    let (status, _) = common::read_head(&mut r).unwrap();
    assert_eq!(status, 200);
    // Host + 64 = 65 header lines.
    let raw = format!("GET /sse HTTP/1.1\r\nHost: h\r\n{}\r\n", headers(64));
    let resp = refused(&server, raw.as_bytes());
    assert_eq!(resp.status, 431);
}

#[test]
fn garbage_is_400() {
    let server = Server::start(&[]);
    let tls_hello: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03];
    for raw in [
        b"hello there\r\n\r\n".as_slice(),
        b"\x00\x01\x02\x03\r\n\r\n",
        tls_hello,
        b"GET /ws HTTP/9.9\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
    ] {
        let r = refused(&server, raw);
        assert_eq!(r.status, 400, "{:?}", lossy(raw));
    }
}

#[test]
fn refusals_leave_no_connection_behind_and_count_as_http_errors() {
    let server = Server::start(&[]);
    for _ in 0..5 {
        refused(&server, b"GET /nope HTTP/1.1\r\n\r\n");
        refused(&server, b"garbage\r\n\r\n");
    }
    common::wait_until("handshake gauge back to 0", common::STEP, || {
        let s = server.stats();
        (s["handshake"] == 0 && s["connections"] == 0).then_some(())
    });
    server.wait_metric("c10m_http_errors_total", &[], 10.0);
    server.wait_metric("c10m_closes_total", &["reason=\"http_done\""], 10.0);
}

#[test]
fn a_head_sent_byte_by_byte_still_upgrades() {
    let server = Server::start(&[]);
    let mut s = server.client_tcp();
    for b in upgrade("/ws?user=slow", "").bytes() {
        s.write_all(&[b]).unwrap();
    }
    let mut r = std::io::BufReader::new(s);
    let (status, headers) = common::read_head(&mut r).unwrap();
    assert_eq!(status, 101, "{headers:?}");
    server.wait_connections(1);
}

#[test]
fn frames_in_the_same_write_as_the_handshake_are_processed() {
    let server = Server::start(&[]);
    let mut s = server.client_tcp();
    let mut raw = upgrade("/ws?user=eager", "").into_bytes();
    raw.extend(client_frame(FIN | OP_TEXT, br#"{"subscribe":"early"}"#, true));
    s.write_all(&raw).unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut s, &mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", lossy(&head));
    let mut ws = RawWs::from_stream(s);
    let reply = ws.recv().expect("subscribe reply");
    assert_eq!(reply.opcode, OP_TEXT);
    assert_eq!(lossy(&reply.payload), r#"{"subscribed":"early"}"#);
}

// ---- WebSocket protocol violations ----

/// Sends `bytes` after the handshake and expects a close frame with `code`, then EOF.
fn violation(server: &Server, path: &str, bytes: &[u8], code: u16) {
    let mut ws = server.raw_ws(path);
    ws.send_bytes(bytes);
    ws.expect_close(code);
}

#[test]
fn unmasked_client_frame_is_1002() {
    let server = Server::start(&[]);
    violation(&server, "/ws", &client_frame(FIN | OP_TEXT, b"hi", false), 1002);
}

#[test]
fn reserved_opcodes_are_1002() {
    let server = Server::start(&[]);
    for op in [0x3, 0x7, 0xB, 0xF] {
        violation(&server, "/ws", &client_frame(FIN | op, b"x", true), 1002);
    }
}

#[test]
fn rsv_bits_are_1002() {
    let server = Server::start(&[]);
    for rsv in [0x40, 0x20, 0x10] {
        violation(&server, "/ws", &client_frame(FIN | rsv | OP_TEXT, b"x", true), 1002);
    }
}

#[test]
fn invalid_utf8_text_is_1007() {
    let server = Server::start(&["--echo"]);
    violation(&server, "/ws", &client_frame(FIN | OP_TEXT, b"ok \xff", true), 1007);
    // Split over fragments: a bad sequence in the second fragment fails too.
    let mut bytes = client_frame(OP_TEXT, b"caf\xc3", true);
    bytes.extend(client_frame(FIN | OP_CONT, b"\x28", true));
    violation(&server, "/echo", &bytes, 1007);
    // A message that ends inside a sequence.
    violation(&server, "/echo", &client_frame(FIN | OP_TEXT, b"caf\xc3", true), 1007);
}

#[test]
fn valid_utf8_split_across_fragments_is_fine() {
    let server = Server::start(&["--echo"]);
    let mut ws = server.raw_ws("/echo");
    ws.send(OP_TEXT, b"caf\xc3");
    ws.send(FIN | OP_CONT, b"\xa9!");
    let f = ws.recv().unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, "café!".as_bytes()));
}

#[test]
fn message_over_message_bytes_max_is_1009() {
    let server = Server::start(&["--echo", "--message-bytes-max", "1000"]);
    // At the limit it is echoed.
    let mut ws = server.raw_ws("/echo");
    ws.send(FIN | OP_BINARY, &[7u8; 1000]);
    assert_eq!(ws.recv().unwrap().payload, vec![7u8; 1000]);
    // One frame over it.
    violation(&server, "/echo", &client_frame(FIN | OP_BINARY, &[7u8; 1001], true), 1009);
    // Fragments that are each small but together too big.
    let mut bytes = client_frame(OP_TEXT, &[b'a'; 600], true);
    bytes.extend(client_frame(FIN | OP_CONT, &[b'a'; 600], true));
    violation(&server, "/echo", &bytes, 1009);
    // On /ws too, announced by the header alone.
    let mut header = vec![FIN | OP_TEXT, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    violation(&server, "/ws", &header, 1009);
}

#[test]
fn default_message_limit_is_64_kib() {
    let server = Server::start(&["--echo"]);
    let mut ws = server.raw_ws("/echo");
    ws.send(FIN | OP_BINARY, &vec![1u8; 65536]);
    assert_eq!(ws.recv().unwrap().payload.len(), 65536);
    violation(&server, "/echo", &client_frame(FIN | OP_BINARY, &vec![1u8; 65537], true), 1009);
}

#[test]
fn bad_close_codes_are_1002() {
    let server = Server::start(&[]);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535] {
        let bytes = client_frame(FIN | OP_CLOSE, &close_payload(code, ""), true);
        violation(&server, "/ws", &bytes, 1002);
    }
    // One byte of close payload.
    violation(&server, "/ws", &client_frame(FIN | OP_CLOSE, &[3], true), 1002);
}

#[test]
fn close_reason_that_is_not_utf8_is_1007() {
    let server = Server::start(&[]);
    let mut payload = close_payload(1000, "");
    payload.extend_from_slice(b"\xff\xfe");
    violation(&server, "/ws", &client_frame(FIN | OP_CLOSE, &payload, true), 1007);
}

#[test]
fn client_close_is_echoed_with_its_code() {
    let server = Server::start(&[]);
    for code in [1000u16, 1001, 1003, 1011, 3000, 4000, 4999] {
        let mut ws = server.raw_ws("/ws?user=closer");
        ws.send(FIN | OP_CLOSE, &close_payload(code, "bye"));
        ws.expect_close(code);
    }
    // A close without a code is answered with 1000.
    let mut ws = server.raw_ws("/ws");
    ws.send(FIN | OP_CLOSE, b"");
    ws.expect_close(1000);
    server.wait_connections(0);
    server.wait_metric("c10m_closes_total", &["reason=\"ws_close\""], 8.0);
}

#[test]
fn client_close_through_tungstenite_is_echoed() {
    use tungstenite::protocol::frame::{coding::CloseCode, CloseFrame};
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=t");
    ws.close(Some(CloseFrame { code: CloseCode::Library(4321), reason: "done".into() })).unwrap();
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4321),
        other => panic!("expected the close echoed, got {other:?}"),
    }
    assert!(matches!(ws.read(), Err(tungstenite::Error::ConnectionClosed)));
}

#[test]
fn ping_is_answered_with_pong_carrying_the_same_payload() {
    let server = Server::start(&[]);
    let mut ws = server.raw_ws("/ws");
    for payload in [&b""[..], b"hello", &[0xffu8; 125][..]] {
        ws.send(FIN | OP_PING, payload);
        let f = ws.recv().expect("pong");
        assert_eq!((f.opcode, f.fin, f.masked), (OP_PONG, true, false));
        assert_eq!(f.payload, payload);
    }
    // Unsolicited pongs are ignored.
    ws.send(FIN | OP_PONG, b"unasked");
    ws.send(FIN | OP_PING, b"still");
    assert_eq!(ws.recv().unwrap().payload, b"still");
}

#[test]
fn ping_in_the_middle_of_a_fragmented_message_is_answered() {
    let server = Server::start(&["--echo"]);
    let mut ws = server.raw_ws("/echo");
    ws.send(OP_TEXT, b"hel");
    ws.send(FIN | OP_PING, b"mid");
    let pong = ws.recv().unwrap();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (OP_PONG, &b"mid"[..]));
    ws.send(OP_CONT, b"lo ");
    ws.send(FIN | OP_CONT, b"world");
    let f = ws.recv().unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, &b"hello world"[..]));
}

#[test]
fn control_frame_violations_are_1002() {
    let server = Server::start(&[]);
    // Over 125 bytes.
    violation(&server, "/ws", &client_frame(FIN | OP_PING, &[0u8; 126], true), 1002);
    // Fragmented control frame.
    violation(&server, "/ws", &client_frame(OP_PING, b"x", true), 1002);
}

#[test]
fn fragmentation_violations_are_1002() {
    let server = Server::start(&[]);
    // Continuation with no message started.
    violation(&server, "/ws", &client_frame(FIN | OP_CONT, b"x", true), 1002);
    // A new message before the fragmented one ended.
    let mut bytes = client_frame(OP_TEXT, b"a", true);
    bytes.extend(client_frame(FIN | OP_TEXT, b"b", true));
    violation(&server, "/ws", &bytes, 1002);
    // A 64-bit length with the top bit set.
    let mut header = vec![FIN | OP_BINARY, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    violation(&server, "/ws", &header, 1002);
}

#[test]
fn frames_split_byte_by_byte_are_reassembled() {
    let server = Server::start(&["--echo"]);
    let mut ws = server.raw_ws("/echo");
    let payload = "x".repeat(300);
    for b in client_frame(FIN | OP_TEXT, payload.as_bytes(), true) {
        ws.send_bytes(&[b]);
    }
    assert_eq!(ws.recv().unwrap().payload, payload.as_bytes());
}

#[test]
fn protocol_errors_move_the_metrics() {
    let server = Server::start(&[]);
    violation(&server, "/ws", &client_frame(FIN | OP_TEXT, b"hi", false), 1002);
    violation(&server, "/ws", &client_frame(FIN | OP_TEXT, b"\xff", true), 1007);
    server.wait_metric("c10m_ws_protocol_errors_total", &[], 2.0);
    server.wait_metric("c10m_closes_total", &["reason=\"protocol_error\""], 2.0);
    server.wait_connections(0);
}

#[test]
fn a_peer_that_vanishes_is_counted_as_peer_gone() {
    let server = Server::start(&[]);
    let ws = server.raw_ws("/ws?user=gone");
    let sse = server.sse_connect("user=gone");
    server.wait_connections(2);
    drop(ws);
    drop(sse);
    server.wait_connections(0);
    server.wait_metric("c10m_closes_total", &["reason=\"peer_gone\""], 2.0);
    // Nothing is delivered to the gone user, and publishing to it is harmless.
    let (status, _) = server.publish("user=gone", "anyone?");
    assert_eq!(status, 202);
}

#[test]
fn browser_style_upgrade_headers_are_accepted() {
    let server = Server::start(&[]);
    let raw = format!(
        "GET /ws?user=fx HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\n\
         Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\
         Origin: http://example.test\r\n\r\n"
    );
    let mut s = server.client_tcp();
    s.write_all(raw.as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(s);
    let (status, headers) = common::read_head(&mut r).unwrap();
    assert_eq!(status, 101, "{headers:?}");
    let ext = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"));
    assert_eq!(
        ext.map(|(_, v)| v.as_str()),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "the offered extension is agreed without context takeover: {headers:?}"
    );
    server.wait_connections(1);
}
