//! permessage-deflate (RFC 7692) against the real server: negotiation, compressed publishes
//! shared with the clients that agreed, plain frames for the rest of the same broadcast,
//! compressed client messages, the decompression-bomb bound, per-listener configuration.
//! Real clients where one exists: Python `websockets` offers the extension by default.

mod common;

use std::process::Command;

use common::{client_frame, Frame, RawWs, FIN, OP_BINARY, OP_TEXT};
use common::{raw_ws_to, run_to_exit, LineChild, Server};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// What Chromium, Firefox and Python `websockets` offer.
const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// A realistic notification of about 500 bytes.
fn notification() -> String {
    let body = "Alice replied: great write-up, thanks for sharing the numbers. ".repeat(5);
    let v = serde_json::json!({
        "type": "notification", "id": "n_8f3a2c91", "user": "u_1029384",
        "created_at": "2026-12-02T19:20:11.482Z", "title": "New comment on your post",
        "body": body, "read": false, "tags": ["comment", "reply"],
    });
    v.to_string()
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync).expect("valid deflate");
    out
}

fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(9), false);
    let mut z = Vec::with_capacity(payload.len() + 64);
    c.compress_vec(payload, &mut z, FlushCompress::Sync).unwrap();
    z.truncate(z.len() - 4);
    z
}

fn extension_line(head: &str) -> Option<&str> {
    head.split("\r\n").find(|l| l.to_ascii_lowercase().starts_with("sec-websocket-extensions:"))
}

/// The next data frame, skipping the pings a long test may see.
fn next_data(ws: &mut RawWs) -> Frame {
    ws.recv_skip_pings().expect("a frame")
}

#[test]
fn one_broadcast_goes_compressed_to_clients_that_offered_and_plain_to_the_rest() {
    let server = Server::start(&[]);
    let (mut z, head) = raw_ws_to(server.client, "/ws?topics=news", OFFER);
    assert_eq!(
        extension_line(&head),
        Some(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover"
        ),
        "{head}"
    );
    let (mut plain, head) = raw_ws_to(server.client, "/ws?topics=news", "");
    assert_eq!(extension_line(&head), None, "no offer, no extension: {head}");
    server.wait_connections(2);

    let big = notification();
    assert!((450..600).contains(&big.len()), "{}", big.len());
    server.publish("topic=news", &big);
    let f = next_data(&mut z);
    assert_eq!((f.opcode, f.rsv), (OP_TEXT, 0x4), "a text frame with RSV1");
    assert!(f.payload.len() < big.len() * 3 / 4, "{} B for {} B", f.payload.len(), big.len());
    assert_eq!(inflate(&f.payload), big.as_bytes());
    let f = next_data(&mut plain);
    assert_eq!((f.opcode, f.rsv), (OP_TEXT, 0), "plain for the client that did not offer");
    assert_eq!(f.payload, big.as_bytes());

    // Under compression_min_bytes (128): plain for both.
    server.publish("topic=news", r#"{"px":101.25,"sym":"ABC","t":1}"#);
    for ws in [&mut z, &mut plain] {
        let f = next_data(ws);
        assert_eq!(
            (f.rsv, f.payload.as_slice()),
            (0, br#"{"px":101.25,"sym":"ABC","t":1}"#.as_slice())
        );
    }
    // Bytes: a binary payload is compressed too, and keeps its opcode.
    let bin: Vec<u8> = (0..400u32).map(|i| 0x80 + (i % 7) as u8).collect();
    server.publish("all", &bin);
    let f = next_data(&mut z);
    assert_eq!((f.opcode, f.rsv), (OP_BINARY, 0x4));
    assert_eq!(inflate(&f.payload), bin);
    assert_eq!(next_data(&mut plain).payload, bin);

    let m = server.metrics();
    assert_eq!(common::metric_sum(&m, "c10m_ws_deflate_agreed_total", &[]), 1.0);
    // One compressed frame per message and shard at most (two shards, one subscriber).
    assert_eq!(common::metric_sum(&m, "c10m_ws_deflated_frames_total", &[]), 2.0);
}

#[test]
fn a_smaller_server_window_is_echoed_and_longer_messages_go_plain() {
    let server = Server::start(&[]);
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8, \
                 permessage-deflate\r\n";
    let (mut ws, head) = raw_ws_to(server.client, "/ws?topics=w", offer);
    let line = extension_line(&head).expect("agreed");
    assert!(line.ends_with("; server_max_window_bits=8"), "{line}");
    server.wait_connections(1);
    let short = "abcabcabc ".repeat(20); // 200 B: within the 256-byte window
    let long = notification(); // ~500 B: past it
    server.publish("topic=w", &short);
    server.publish("topic=w", &long);
    let f = next_data(&mut ws);
    assert_eq!(f.rsv, 0x4);
    assert_eq!(inflate(&f.payload), short.as_bytes());
    let f = next_data(&mut ws);
    assert_eq!((f.rsv, f.payload.as_slice()), (0, long.as_bytes()));
}

#[test]
fn malformed_offers_are_declined_not_refused() {
    let server = Server::start(&[]);
    for offer in [
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; bogus",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "x-webkit-deflate-frame",
    ] {
        let (mut ws, head) =
            raw_ws_to(server.client, "/ws", &format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        assert_eq!(extension_line(&head), None, "{offer}: {head}");
        // RSV1 without the extension is a protocol error (1002).
        ws.send(FIN | 0x40 | OP_TEXT, &deflate(b"hello hello"));
        ws.expect_close(1002);
    }
}

#[test]
fn a_compressed_client_message_is_read_and_a_bomb_gets_1009_without_harm_to_others() {
    let server = Server::start(&["--echo"]);
    let (mut ws, _) = raw_ws_to(server.client, "/ws", OFFER);
    // A compressed control message subscribes like a plain one.
    ws.send(FIN | 0x40 | OP_TEXT, &deflate(br#"{"subscribe":"inbound"}"#));
    let f = next_data(&mut ws);
    assert_eq!(f.payload, br#"{"subscribed":"inbound"}"#);
    let (mut echo, _) = raw_ws_to(server.client, "/echo", OFFER);
    let text = "echo me, echo me, echo me, echo me ".repeat(40);
    echo.send(FIN | 0x40 | OP_TEXT, &deflate(text.as_bytes()));
    let f = next_data(&mut echo);
    assert_eq!(f.rsv, 0x4, "the echo is compressed too");
    assert_eq!(inflate(&f.payload), text.as_bytes());

    // 4 MiB of zeros deflate to about 4 KiB; message_bytes_max is 64 KiB.
    let bomb = deflate(&vec![0u8; 4 << 20]);
    assert!(bomb.len() < 8192, "{}", bomb.len());
    let (mut attacker, _) = raw_ws_to(server.client, "/ws", OFFER);
    attacker.send_bytes(&client_frame(FIN | 0x40 | OP_BINARY, &bomb, true));
    attacker.expect_close(1009);
    let m = server.wait_metric("c10m_ws_inflate_refused_total", &[], 1.0);
    assert_eq!(m, 1.0);
    // Invalid deflate data: 1007.
    let (mut bad, _) = raw_ws_to(server.client, "/ws", OFFER);
    bad.send(FIN | 0x40 | OP_TEXT, &[0xff; 16]);
    bad.expect_close(1007);
    // The first client still gets its publishes.
    server.publish("topic=inbound", notification());
    let f = next_data(&mut ws);
    assert_eq!(inflate(&f.payload), notification().as_bytes());
}

#[test]
fn compression_can_be_off_or_limited_to_listeners() {
    let server = Server::start(&["--compression", "off"]);
    let (_, head) = raw_ws_to(server.client, "/ws", OFFER);
    assert_eq!(extension_line(&head), None, "{head}");

    let server = Server::spawn(&[
        "serve",
        "--shards",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.2:0",
        "--admin",
        "127.0.0.1:0",
        "--compression-listen",
        "127.0.0.2:0",
    ]);
    let (_, head) = raw_ws_to(server.clients[0], "/ws", OFFER);
    assert_eq!(extension_line(&head), None, "127.0.0.1 does not compress: {head}");
    let (_, head) = raw_ws_to(server.clients[1], "/ws", OFFER);
    assert!(extension_line(&head).is_some(), "127.0.0.2 does: {head}");

    let (code, err) = run_to_exit(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--compression-listen",
        "127.0.0.3:9",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("compression_listen 127.0.0.3:9 is not a client listener"), "{err}");
    let (code, err) = run_to_exit(&["serve", "--compression-level", "12"]);
    assert_ne!(code, 0);
    assert!(err.contains("compression_level = 12 must be within 1..=9"), "{err}");
}

/// Python `websockets`, which offers permessage-deflate by default and compresses what it
/// sends: prints the agreed extension, subscribes (a compressed control message), then
/// prints each message it gets as JSON lines.
const PY_WS: &str = r#"
import json, sys
from websockets.sync.client import connect
with connect(sys.argv[1], open_timeout=10) as ws:
    print("ext", ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
    ws.send(json.dumps({"subscribe": "py"}))
    while True:
        m = ws.recv(timeout=30)
        print(json.dumps({"len": len(m), "data": m}), flush=True)
"#;

#[test]
fn python_websockets_negotiates_and_reads_compressed_publishes() {
    let server = Server::start(&[]);
    let url = format!("ws://{}/ws?format=json", server.client);
    let mut py = LineChild::spawn(Command::new("python3").args(["-c", PY_WS, &url]));
    let ext = py.expect_line(|l| l.starts_with("ext "));
    assert!(ext.contains("permessage-deflate") && ext.contains("server_no_context_takeover"));
    py.expect_line(|l| l.contains(r#"{\"subscribed\": \"py\"}"#) || l.contains("subscribed"));
    let big = notification();
    server.publish("topic=py", &big);
    let line = py.expect_line(|l| l.contains("\"data\"") && l.contains("notification"));
    let outer: serde_json::Value = serde_json::from_str(&line).unwrap();
    let envelope: serde_json::Value =
        serde_json::from_str(outer["data"].as_str().unwrap()).unwrap();
    assert_eq!(envelope["stream"], "topic:py");
    assert_eq!(envelope["data"], big.as_str());
    assert!(envelope["id"].as_str().is_some_and(|id| !id.is_empty()));
    let m = server.metrics();
    assert!(common::metric_sum(&m, "c10m_ws_deflated_frames_total", &[]) >= 1.0);
}
