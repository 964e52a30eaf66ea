//! Edges and volume: limits at their exact boundary, many connections, large payloads that
//! need several sends, users with many connections that come and go, more shards than cores.

mod common;

use std::io::Write;

use common::{client_frame, read_head, ws_text, Server, Sse, Ws, FIN, OP_BINARY, OP_TEXT};

const END: &str = "--end--";

/// A request head of exactly `len` bytes (request line, headers, blank line).
fn sse_head_of_len(len: usize) -> String {
    let base = "GET /sse?user=edge HTTP/1.1\r\nHost: h\r\nX-Pad: \r\n\r\n";
    assert!(len >= base.len());
    format!(
        "GET /sse?user=edge HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(len - base.len())
    )
}

#[test]
fn head_of_exactly_8192_bytes_is_accepted_and_8193_is_431() {
    let server = Server::start(&[]);
    let ok = sse_head_of_len(8192);
    assert_eq!(ok.len(), 8192);
    let mut s = server.client_tcp();
    s.write_all(ok.as_bytes()).unwrap();
    let (status, _) = read_head(&mut std::io::BufReader::new(s)).unwrap();
    assert_eq!(status, 200, "a head of exactly head_bytes_max");
    let r = server.client_request(sse_head_of_len(8193).as_bytes());
    assert_eq!(r.status, 431);
}

#[test]
fn head_limit_follows_the_flag() {
    let server = Server::start(&["--head-bytes-max", "512", "--headers-max", "4"]);
    let r = server.client_request(sse_head_of_len(513).as_bytes());
    assert_eq!(r.status, 431);
    let mut s = server.client_tcp();
    s.write_all(sse_head_of_len(512).as_bytes()).unwrap();
    let (status, _) = read_head(&mut std::io::BufReader::new(s)).unwrap();
    assert_eq!(status, 200);
    let five = "GET /sse HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n";
    assert_eq!(server.client_request(five.as_bytes()).status, 431);
}

#[test]
fn many_frames_in_one_write_are_each_answered_in_order() {
    let server = Server::start(&["--echo"]);
    let mut ws = server.raw_ws("/echo");
    let mut bytes = Vec::new();
    for i in 0..200 {
        bytes.extend(client_frame(FIN | OP_TEXT, format!("frame {i}").as_bytes(), true));
    }
    ws.send_bytes(&bytes);
    for i in 0..200 {
        let f = ws.recv().expect("echo");
        assert_eq!(common::lossy(&f.payload), format!("frame {i}"));
    }
}

#[test]
fn control_messages_pipelined_in_one_write_are_each_answered() {
    let server = Server::start(&[]);
    let mut ws = server.raw_ws("/ws?user=pipe");
    let mut bytes = Vec::new();
    for i in 0..50 {
        let msg = format!("{{\"subscribe\":\"t{i}\"}}");
        bytes.extend(client_frame(FIN | OP_TEXT, msg.as_bytes(), true));
    }
    // A binary frame on /ws is ignored, not answered.
    bytes.extend(client_frame(FIN | OP_BINARY, b"ignored", true));
    bytes.extend(client_frame(FIN | OP_TEXT, br#"{"unsubscribe":"t0"}"#, true));
    ws.send_bytes(&bytes);
    for i in 0..50 {
        let f = ws.recv().expect("reply");
        assert_eq!(common::lossy(&f.payload), format!("{{\"subscribed\":\"t{i}\"}}"));
    }
    let f = ws.recv().expect("reply");
    assert_eq!(common::lossy(&f.payload), r#"{"unsubscribed":"t0"}"#);
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    admin.publish("topic=t0", "not for you");
    admin.publish("topic=t49", "for you");
    let f = ws.recv().expect("topic message");
    assert_eq!(common::lossy(&f.payload), "for you");
}

#[test]
fn topics_per_connection_are_capped_at_64() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=cap");
    for i in 0..70 {
        let reply =
            common::ws_control(&mut ws, serde_json::json!({ "subscribe": format!("c{i}") }));
        // Past the cap the server may answer with an error or with a plain acknowledgement,
        // but must not deliver the topic.
        assert!(reply.get("subscribed").is_some() || reply.get("error").is_some(), "{reply}");
    }
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    admin.publish("topic=c63", "within cap");
    admin.publish("topic=c64", "over cap");
    admin.publish("all", END);
    assert_eq!(ws_text(&mut ws), "within cap");
    assert_eq!(ws_text(&mut ws), END, "topic 65 must not be delivered");
}

/// The control-message contract: a subscribe is answered with `{"subscribed":T}` only when
/// the connection is subscribed; otherwise with `{"error":…}`.
#[test]
fn subscribe_past_the_topic_cap_is_refused_with_an_error() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=cap");
    for i in 0..64 {
        common::ws_subscribe(&mut ws, &format!("c{i}"));
    }
    let reply = common::ws_control(&mut ws, serde_json::json!({ "subscribe": "c64" }));
    assert!(
        reply.get("error").is_some(),
        "the 65th topic is not subscribed (nothing is delivered on it), yet the reply is {reply}"
    );
}

#[test]
fn large_messages_to_one_client_arrive_whole_and_in_order() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=bulk");
    let mut sse = server.sse_connect("user=bulk");
    server.wait_connections(2);
    let mut admin = server.admin_conn();
    let payload = |i: usize| -> String {
        let c = char::from(b'a' + (i % 26) as u8);
        format!("{i}:{}", c.to_string().repeat(50_000 + i * 100))
    };
    // 15 × ~52 KB stays under the 1 MiB outbox limit even if the kernel buffers nothing, so
    // neither client is a slow consumer while the other is being read.
    for i in 0..15 {
        admin.publish("user=bulk", payload(i));
    }
    for i in 0..15 {
        assert_eq!(ws_text(&mut ws), payload(i), "ws message {i}");
        assert_eq!(sse.next_text(), payload(i), "sse message {i}");
    }
}

#[test]
fn broadcast_of_a_large_message_to_hundreds_of_connections() {
    let server = Server::start(&["--shards", "2"]);
    let mut ws: Vec<Ws> = (0..150).map(|i| server.ws_connect(&format!("/ws?user=h{i}"))).collect();
    let mut sse: Vec<Sse> = (0..150).map(|i| server.sse_connect(&format!("user=h{i}"))).collect();
    server.wait_connections(300);
    let big = "B".repeat(40_000);
    let mut admin = server.admin_conn();
    admin.publish("all", &big);
    admin.publish("all", END);
    for (i, c) in ws.iter_mut().enumerate() {
        assert_eq!(ws_text(c).len(), big.len(), "ws {i}");
        assert_eq!(ws_text(c), END, "ws {i}");
    }
    for (i, c) in sse.iter_mut().enumerate() {
        assert_eq!(c.next_text(), big, "sse {i}");
        assert_eq!(c.next_text(), END, "sse {i}");
    }
}

/// One user with many connections over both protocols; connections leave in an order that
/// exercises every position in the home shard's index; each publish reaches exactly the
/// connections still open.
#[test]
fn a_user_with_many_connections_that_come_and_go() {
    let server = Server::start(&["--shards", "2"]);
    enum C {
        Ws(Ws),
        Sse(Sse),
    }
    let mut conns: Vec<Option<C>> = (0..8)
        .map(|i| {
            Some(if i % 2 == 0 {
                C::Ws(server.ws_connect("/ws?user=many"))
            } else {
                C::Sse(server.sse_connect("user=many"))
            })
        })
        .collect();
    let mut open = conns.len() as u64;
    server.wait_connections(open);
    let mut admin = server.admin_conn();
    // Close the first, the last, then middle ones, one by one, publishing after each.
    for (round, victim) in [0usize, 7, 3, 4, 1, 6, 2, 5].into_iter().enumerate() {
        let text = format!("round {round}");
        admin.publish("user=many", &text);
        for (i, c) in conns.iter_mut().enumerate() {
            match c {
                Some(C::Ws(ws)) => assert_eq!(ws_text(ws), text, "conn {i}"),
                Some(C::Sse(sse)) => assert_eq!(sse.next_text(), text, "conn {i}"),
                None => {}
            }
        }
        conns[victim] = None;
        open -= 1;
        server.wait_connections(open);
    }
    // A fresh connection of the same user gets exactly one copy.
    let mut fresh = server.ws_connect("/ws?user=many");
    server.wait_connections(1);
    admin.publish("user=many", "fresh");
    admin.publish("all", END);
    let mut got = vec![ws_text(&mut fresh), ws_text(&mut fresh)];
    got.sort();
    assert_eq!(got, [END, "fresh"]);
    let mut admin2 = server.admin_conn();
    admin2.publish("all", "after");
    assert_eq!(ws_text(&mut fresh), "after", "no duplicate copy of the user message");
}

/// A publisher that waits for each answer before it publishes again, on whichever of its
/// keep-alive connections comes next (they are on different shards), has its messages
/// delivered in that order: for a user's stream (numbered on the user's home shard) and a
/// topic's (numbered on the sequencer), over WebSocket and SSE.
#[test]
fn publishes_answered_one_after_another_on_different_connections_arrive_in_order() {
    let server = Server::start(&["--shards", "2"]);
    let mut ws = server.ws_connect("/ws?user=order&topics=t");
    let mut sse = server.sse_connect("user=order&topics=t");
    server.wait_connections(2);
    let mut admins = admin_per_shard(&server);
    for target in ["user=order", "topic=t"] {
        let n = 400;
        for i in 0..n {
            admins[i % 2].publish(target, format!("{target} {i}"));
        }
        for i in 0..n {
            assert_eq!(ws_text(&mut ws), format!("{target} {i}"), "ws");
            assert_eq!(sse.next_text(), format!("{target} {i}"), "sse");
        }
    }
}

/// One keep-alive admin connection on each of a two-shard server's shards. A publish's id
/// names the shard that accepted it (id mod shards); the kernel spreads connections by port
/// hash, so this opens connections until both shards have one (bounded: 64 tries).
fn admin_per_shard(server: &Server) -> Vec<common::AdminConn> {
    let mut on: [Option<common::AdminConn>; 2] = [None, None];
    for _ in 0..64 {
        let mut admin = server.admin_conn();
        let shard = (admin.publish("user=nobody", "probe") % 2) as usize;
        on[shard].get_or_insert(admin);
        if on.iter().all(Option::is_some) {
            break;
        }
    }
    on.into_iter().map(|a| a.expect("an admin connection per shard")).collect()
}

/// With `--mesh-spin-us`, a shard that just took mesh messages polls its rings before it
/// sleeps: the spin sees pushes arrive (its counter moves) and they are delivered in order.
#[test]
fn a_shard_spinning_on_its_mesh_rings_delivers_what_arrives_in_order() {
    let server = Server::start(&["--shards", "2", "--mesh-spin-us", "1000"]);
    let mut ws = server.ws_connect("/ws?user=spin");
    server.wait_connections(1);
    let mut admins = admin_per_shard(&server);
    let (mut sent, mut hits) = (0, 0.0);
    // Rounds of 100 pushes pipelined on one admin connection, the shards taking turns, until
    // a spin saw one arrive (bounded: 20 rounds). Pipelined, the admin shard reads them over
    // several turns, so the user's home shard gets them a few µs apart, while it spins; one
    // at a time, each waits for a round trip through the test that a spinning shard on two
    // vCPUs may hold up past the spin.
    for round in 0..20 {
        let admin = &mut admins[round % 2];
        let first = sent;
        for _ in 0..100 {
            admin.send_request("POST", "/publish?user=spin", "", format!("spin {sent}"));
            sent += 1;
        }
        for i in first..sent {
            assert_eq!(admin.read().status, 202, "push {i}");
        }
        hits = common::metric_sum(&server.metrics(), "c10m_mesh_spin_hits_total", &[]);
        if hits > 0.0 {
            break;
        }
    }
    assert!(hits > 0.0, "no spin saw a message in {sent} pushes");
    for i in 0..sent {
        assert_eq!(ws_text(&mut ws), format!("spin {i}"));
    }
}

#[test]
fn routing_with_more_shards_than_cores() {
    let server = Server::start(&["--shards", "4", "--no-pin"]);
    const USERS: usize = 60;
    let mut ws: Vec<Ws> =
        (0..USERS).map(|i| server.ws_connect(&format!("/ws?user=r{i}"))).collect();
    let stats = server.wait_connections(USERS as u64);
    let busy = stats["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["connections"].as_u64().unwrap() > 0)
        .count();
    assert!(busy >= 3, "connections spread over the shards: {stats}");
    let mut admin = server.admin_conn();
    for i in 0..USERS {
        admin.publish(&format!("user=r{i}"), format!("to r{i}"));
    }
    for (i, c) in ws.iter_mut().enumerate() {
        assert_eq!(ws_text(c), format!("to r{i}"));
    }
    admin.publish("all", END);
    for (i, c) in ws.iter_mut().enumerate() {
        assert_eq!(ws_text(c), END, "r{i} got something extra");
    }
}

#[test]
fn message_ids_are_unique_across_shards() {
    let server = Server::start(&["--shards", "2"]);
    let mut ids = std::collections::HashSet::new();
    for i in 0..60 {
        // Fresh connections land on either shard.
        let (status, body) = server.publish("all", format!("{i}"));
        assert_eq!(status, 202);
        let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_u64().unwrap();
        assert!(ids.insert(id), "id {id} given twice");
    }
}

#[test]
fn sse_payload_line_ends_of_every_kind_become_data_lines() {
    let server = Server::start(&[]);
    let mut sse = server.sse_connect("user=lines");
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    admin.publish("user=lines", "a\rb\nc\r\nd\n\ne\n");
    assert_eq!(sse.next_text(), "a\nb\nc\nd\n\ne\n");
    // Bytes that are not UTF-8 pass through SSE as given.
    admin.publish("user=lines", [0xff, b'x', 0xfe]);
    assert_eq!(sse.next_event().1, vec![0xff, b'x', 0xfe]);
}

#[test]
fn server_closes_an_idle_websocket_even_if_the_peer_never_answers_the_close() {
    let server = Server::start(&["--idle-timeout-ms", "300", "--close-timeout-ms", "300"]);
    let mut ws = server.raw_ws("/ws?user=deaf");
    let close = ws.recv_skip_pings().expect("close");
    assert_eq!(close.close_code(), Some(1001));
    ws.expect_eof();
    server.wait_connections(0);
}

#[test]
fn a_websocket_half_close_from_the_client_ends_the_connection() {
    let server = Server::start(&[]);
    let ws = server.raw_ws("/ws?user=half");
    server.wait_connections(1);
    ws.stream.shutdown(std::net::Shutdown::Write).unwrap();
    server.wait_connections(0);
    server.wait_metric("c10m_closes_total", &["reason=\"peer_gone\""], 1.0);
}

#[test]
fn sse_ignores_bytes_the_client_sends_after_its_request() {
    let server = Server::start(&[]);
    let mut sse = server.sse_connect("user=noisy");
    sse.reader.get_mut().write_all(b"unexpected bytes\r\n\r\nGET / HTTP/1.1\r\n\r\n").unwrap();
    server.wait_connections(1);
    server.admin_conn().publish("user=noisy", "still streaming");
    assert_eq!(sse.next_text(), "still streaming");
}

#[test]
fn hundreds_of_connections_open_and_close_without_leaking() {
    let server = Server::start(&["--shards", "2"]);
    for round in 0..3 {
        let ws: Vec<Ws> = (0..100).map(|i| server.ws_connect(&format!("/ws?user=l{i}"))).collect();
        let sse: Vec<Sse> =
            (0..100).map(|i| server.sse_connect(&format!("user=l{i}&topics=t"))).collect();
        server.wait_connections(200);
        drop(ws);
        drop(sse);
        let stats = server.wait_connections(0);
        assert_eq!(stats["handshake"], 0, "round {round}: {stats}");
    }
    // Users and topics from the closed connections deliver nothing.
    let mut ws = server.ws_connect("/ws?user=last");
    server.wait_connections(1);
    let before = delivered(&server);
    let mut admin = server.admin_conn();
    for i in 0..100 {
        admin.publish(&format!("user=l{i}"), "gone");
    }
    admin.publish("topic=t", "gone");
    admin.publish("all", END);
    assert_eq!(ws_text(&mut ws), END);
    assert_eq!(delivered(&server) - before, 1);
}

fn delivered(server: &Server) -> u64 {
    server.stats()["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["delivered"].as_u64().unwrap())
        .sum()
}
