//! Home-shard placement over real sockets: WebSocket and SSE connections accepted on one
//! shard move to their user's home shard after the request head, and a push to the user
//! is then delivered there, with no second mesh hop (`c10m_user_publishes_forwarded_total`
//! stays 0). With `--home-placement off` the same users are forwarded, which shows that the
//! counter sees the hop placement saves.

mod common;

use std::io::{Read, Write};

use common::{
    client_frame, close_payload, metric_sum, ws_text, RawWs, Server, FIN, OP_CLOSE, OP_PING,
    OP_PONG,
};

const WS_USERS: usize = 30;
const SSE_USERS: usize = 10;

/// Connects the users, publishes once to each, checks every one got exactly its own
/// message; returns the server's metrics afterwards.
fn users_get_their_pushes(server: &Server) -> String {
    let mut ws: Vec<_> =
        (0..WS_USERS).map(|i| server.ws_connect(&format!("/ws?user=w{i}"))).collect();
    let mut sse: Vec<_> =
        (0..SSE_USERS).map(|i| server.sse_connect(&format!("user=s{i}"))).collect();
    // One user with three connections: all of them on the same (home) shard.
    let mut many: Vec<_> = (0..3).map(|_| server.ws_connect("/ws?user=many")).collect();
    let stats = server.wait_connections((WS_USERS + SSE_USERS + 3) as u64);
    assert!(
        stats["shards"].as_array().unwrap().iter().all(|s| s["connections"].as_u64() > Some(0)),
        "users on both shards: {stats}"
    );
    for i in 0..WS_USERS {
        assert_eq!(server.publish(&format!("user=w{i}"), format!("to w{i}")).0, 202);
    }
    for i in 0..SSE_USERS {
        assert_eq!(server.publish(&format!("user=s{i}"), format!("to s{i}")).0, 202);
    }
    assert_eq!(server.publish("user=many", "to many").0, 202);
    for (i, c) in ws.iter_mut().enumerate() {
        assert_eq!(ws_text(c), format!("to w{i}"));
    }
    for (i, c) in sse.iter_mut().enumerate() {
        assert_eq!(c.next_event().1, format!("to s{i}").into_bytes());
    }
    for c in &mut many {
        assert_eq!(ws_text(c), "to many");
    }
    server.metrics()
}

#[test]
fn connections_move_to_their_users_home_shard_and_pushes_take_one_hop() {
    let server = Server::start(&["--shards", "2"]);
    let m = users_get_their_pushes(&server);
    let (out, adopted) = (
        metric_sum(&m, "c10m_placements_total", &[]),
        metric_sum(&m, "c10m_placements_adopted_total", &[]),
    );
    // SO_REUSEPORT spreads accepts by port, and users by a keyed hash: about half move.
    assert!(out > 0.0, "no connection moved:\n{m}");
    assert_eq!(out, adopted, "every move is taken over");
    assert_eq!(metric_sum(&m, "c10m_placement_failures_total", &[]), 0.0);
    assert_eq!(
        metric_sum(&m, "c10m_user_publishes_forwarded_total", &[]),
        0.0,
        "a user's connections all live on its home shard"
    );
    assert_eq!(metric_sum(&m, "c10m_connections_handshake", &[]), 0.0, "{m}");
}

#[test]
fn without_placement_pushes_cross_to_the_accepting_shard() {
    let server = Server::start(&["--shards", "2", "--home-placement", "off"]);
    let m = users_get_their_pushes(&server);
    assert_eq!(metric_sum(&m, "c10m_placements_total", &[]), 0.0);
    assert!(metric_sum(&m, "c10m_user_publishes_forwarded_total", &[]) > 0.0, "{m}");
}

#[test]
fn a_moved_connection_keeps_what_followed_its_head_and_closes_cleanly() {
    let server = Server::start(&["--shards", "2"]);
    // A ping frame in the same write as the upgrade request: it arrives with the head,
    // moves with it, and the home shard answers it after the 101.
    let mut moved = 0.0;
    for i in 0..40 {
        let mut stream = common::tcp(server.client);
        let mut bytes = format!(
            "GET /ws?user=f{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        bytes.extend_from_slice(&client_frame(FIN | OP_PING, b"are you there", true));
        stream.write_all(&bytes).unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(stream.read(&mut b).unwrap(), 1, "head cut short: {head:?}");
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));
        let mut raw = RawWs::from_stream(stream);
        let pong = raw.recv().expect("the pong");
        assert_eq!((pong.opcode, pong.payload.as_slice()), (OP_PONG, &b"are you there"[..]));
        raw.send(FIN | OP_CLOSE, &close_payload(1000, "bye"));
        raw.expect_close(1000);
        moved = metric_sum(&server.metrics(), "c10m_placements_total", &[]);
        if moved >= 3.0 {
            break;
        }
    }
    assert!(moved >= 3.0, "only {moved} of 40 connections moved");
    server.wait_connections(0);
}
