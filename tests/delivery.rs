//! Delivery: publishes to a user, a topic or everyone reach exactly the right WebSocket and SSE
//! connections, across shards, with the payload unchanged.

mod common;

use common::{ws_next, ws_subscribe, ws_text, ws_unsubscribe, Server, Sse, Ws};
use tungstenite::Message;

/// The marker published to everyone after a test's real traffic: a client's next message
/// must be it, so nothing unexpected arrived first.
const END: &str = "--end--";

fn expect_end_ws(ws: &mut Ws, who: &str) {
    let got = ws_text(ws);
    assert_eq!(got, END, "{who} got an unexpected message before the end marker");
}

fn expect_end_sse(sse: &mut Sse, who: &str) {
    let got = sse.next_text();
    assert_eq!(got, END, "{who} got an unexpected event before the end marker");
}

fn total_delivered(server: &Server) -> u64 {
    let stats = server.stats();
    stats["shards"]
        .as_array()
        .expect("shards array")
        .iter()
        .map(|s| s["delivered"].as_u64().expect("delivered"))
        .sum()
}

#[test]
fn ws_user_publish_arrives_as_text_frame() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=alice");
    server.wait_connections(1);
    let (status, body) = server.publish("user=alice", "hello alice");
    assert_eq!(status, 202, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["id"].is_u64(), "{body}");
    assert_eq!(ws_text(&mut ws), "hello alice");
}

#[test]
fn sse_event_carries_a_position_id_and_one_data_line_per_payload_line() {
    let server = Server::start(&[]);
    let mut sse = server.sse_connect("user=bob");
    assert_eq!(sse.retry_ms, Some(2000));
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    admin.publish("user=bob", "first line\nsecond line\r\nthird");
    let (got_id, data) = sse.next_event();
    let first = common::position(&got_id.expect("an id"));
    assert_eq!(
        common::lossy(&data),
        "first line\nsecond line\nthird",
        "the client joins data: lines with LF"
    );
    admin.publish("user=bob", "");
    let (got_id, data) = sse.next_event();
    let second = common::position(&got_id.expect("an id"));
    assert_eq!(second.epoch, first.epoch);
    assert!(second.user > first.user, "the user's position moves: {first:?} {second:?}");
    assert!(data.is_empty(), "an empty payload is one empty data: line");
}

#[test]
fn sse_wire_format_is_exact() {
    let server = Server::start(&[]);
    let mut sse = server.sse_connect("user=wire");
    server.wait_connections(1);
    server.admin_conn().publish("user=wire", "a\nb");
    // Blocks before the event carry only a position (or a heartbeat): skip them.
    let block = loop {
        let mut block = Vec::new();
        loop {
            let mut line = Vec::new();
            std::io::BufRead::read_until(&mut sse.reader, b'\n', &mut line).expect("read");
            assert!(!line.is_empty(), "EOF after {:?}", common::lossy(&block));
            block.extend_from_slice(&line);
            if line == b"\n" {
                break;
            }
        }
        let text = common::lossy(&block);
        if text.contains("data:") {
            break text;
        }
    };
    let (id_line, rest) = block.split_once('\n').expect("an id line");
    let id = id_line.strip_prefix("id: ").expect("the event starts with its id");
    common::position(id);
    assert_eq!(rest, "data: a\ndata: b\n\n");
}

#[test]
fn non_utf8_payload_arrives_as_binary_frame_unchanged() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=bin");
    server.wait_connections(1);
    let payload = vec![0xff, 0x00, 0x80, b'a', 0xc3];
    let (status, _) = server.publish("user=bin", &payload);
    assert_eq!(status, 202);
    match ws_next(&mut ws) {
        Message::Binary(b) => assert_eq!(b, payload),
        other => panic!("expected binary, got {other:?}"),
    }
}

#[test]
fn maximum_size_payload_arrives_unchanged_over_ws_and_sse() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=big");
    let mut sse = server.sse_connect("user=big");
    server.wait_connections(2);
    let payload: String = (0..65536).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    server.admin_conn().publish("user=big", &payload);
    assert_eq!(ws_text(&mut ws), payload);
    let (got_id, data) = sse.next_event();
    common::position(&got_id.expect("an id"));
    assert_eq!(data, payload.as_bytes());
}

#[test]
fn user_with_ws_and_sse_connections_gets_the_message_on_both() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=carol");
    let mut sse = server.sse_connect("user=carol");
    let mut other = server.ws_connect("/ws?user=dave");
    server.wait_connections(3);
    let mut admin = server.admin_conn();
    admin.publish("user=carol", "for carol");
    assert_eq!(ws_text(&mut ws), "for carol");
    assert_eq!(sse.next_event().1, b"for carol".to_vec());
    admin.publish("all", END);
    expect_end_ws(&mut ws, "carol ws");
    expect_end_sse(&mut sse, "carol sse");
    expect_end_ws(&mut other, "dave");
    assert_eq!(total_delivered(&server), 2 + 3);
}

/// Forty users over WebSocket and SSE, spread over two shards by SO_REUSEPORT and left there
/// (`--home-placement off`), so many users live on a shard other than their home shard: each
/// gets exactly its own message.
#[test]
fn cross_shard_user_routing_delivers_each_message_to_its_user_only() {
    let server = Server::start(&["--shards", "2", "--home-placement", "off"]);
    const USERS: usize = 40;
    let mut ws: Vec<(usize, Ws)> = Vec::new();
    let mut sse: Vec<(usize, Sse)> = Vec::new();
    for i in 0..USERS {
        if i % 2 == 0 {
            ws.push((i, server.ws_connect(&format!("/ws?user=u{i}"))));
        } else {
            sse.push((i, server.sse_connect(&format!("user=u{i}"))));
        }
    }
    let stats = server.wait_connections(USERS as u64);
    let per_shard: Vec<u64> = stats["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["connections"].as_u64().unwrap())
        .collect();
    assert_eq!(per_shard.len(), 2);
    assert!(per_shard.iter().all(|&n| n > 0), "both shards hold connections: {per_shard:?}");
    let mut admin = server.admin_conn();
    let mut ids = vec![0; USERS];
    for (i, id) in ids.iter_mut().enumerate() {
        *id = admin.publish(&format!("user=u{i}"), format!("for u{i}"));
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), USERS, "ids are unique: {ids:?}");
    for (i, c) in &mut ws {
        assert_eq!(ws_text(c), format!("for u{i}"), "ws user u{i}");
    }
    for (i, c) in &mut sse {
        let (id, data) = c.next_event();
        assert_eq!(common::lossy(&data), format!("for u{i}"), "sse user u{i}");
        common::position(&id.expect("an id"));
    }
    admin.publish("all", END);
    for (i, c) in &mut ws {
        expect_end_ws(c, &format!("u{i}"));
    }
    for (i, c) in &mut sse {
        expect_end_sse(c, &format!("u{i}"));
    }
    assert_eq!(total_delivered(&server), 2 * USERS as u64);
}

/// Topic subscribers (by query, by control message, over SSE) get a topic publish; the other
/// connections do not.
#[test]
fn topic_publish_reaches_subscribers_only() {
    let server = Server::start(&["--shards", "2"]);
    let mut subs_ws: Vec<Ws> = Vec::new();
    let mut subs_sse: Vec<Sse> = Vec::new();
    let mut others_ws: Vec<Ws> = Vec::new();
    let mut others_sse: Vec<Sse> = Vec::new();
    for i in 0..6 {
        subs_ws.push(server.ws_connect(&format!("/ws?user=q{i}&topics=news,sport")));
        let mut late = server.ws_connect(&format!("/ws?user=c{i}"));
        ws_subscribe(&mut late, "news");
        subs_ws.push(late);
        subs_sse.push(server.sse_connect(&format!("user=s{i}&topics=weather,news")));
        others_ws.push(server.ws_connect(&format!("/ws?user=o{i}&topics=sport")));
        others_ws.push(server.ws_connect("/ws"));
        others_sse.push(server.sse_connect("topics=newsletter"));
    }
    let total = (subs_ws.len() + subs_sse.len() + others_ws.len() + others_sse.len()) as u64;
    server.wait_connections(total);
    let mut admin = server.admin_conn();
    admin.publish("topic=news", "breaking");
    admin.publish("all", END);
    for (i, c) in subs_ws.iter_mut().enumerate() {
        assert_eq!(ws_text(c), "breaking", "ws subscriber {i}");
        expect_end_ws(c, &format!("ws subscriber {i}"));
    }
    for (i, c) in subs_sse.iter_mut().enumerate() {
        let (got, data) = c.next_event();
        assert_eq!(data, b"breaking".to_vec());
        // The first message the sequencer numbered.
        assert_eq!(common::position(&got.expect("an id")).topics, 1);
        expect_end_sse(c, &format!("sse subscriber {i}"));
    }
    for (i, c) in others_ws.iter_mut().enumerate() {
        expect_end_ws(c, &format!("ws non-subscriber {i}"));
    }
    for (i, c) in others_sse.iter_mut().enumerate() {
        expect_end_sse(c, &format!("sse non-subscriber {i}"));
    }
    let subs = (subs_ws.len() + subs_sse.len()) as u64;
    assert_eq!(total_delivered(&server), subs + total);
}

#[test]
fn broadcast_reaches_every_ws_and_sse_connection_exactly_once() {
    let server = Server::start(&["--shards", "2"]);
    let mut ws: Vec<Ws> = (0..20).map(|i| server.ws_connect(&format!("/ws?user=b{i}"))).collect();
    ws.push(server.ws_connect("/ws"));
    let mut sse: Vec<Sse> =
        (0..20).map(|i| server.sse_connect(&format!("user=b{i}&topics=x"))).collect();
    sse.push(server.sse_connect(""));
    let n = (ws.len() + sse.len()) as u64;
    let stats = server.wait_connections(n);
    assert!(
        stats["shards"].as_array().unwrap().iter().all(|s| s["connections"].as_u64().unwrap() > 0),
        "both shards hold connections: {stats}"
    );
    let mut admin = server.admin_conn();
    admin.publish("all", "to everyone");
    admin.publish("all", END);
    for (i, c) in ws.iter_mut().enumerate() {
        assert_eq!(ws_text(c), "to everyone", "ws {i}");
        expect_end_ws(c, &format!("ws {i}"));
    }
    for (i, c) in sse.iter_mut().enumerate() {
        let (got, data) = c.next_event();
        assert_eq!(data, b"to everyone".to_vec());
        common::position(&got.expect("an id"));
        expect_end_sse(c, &format!("sse {i}"));
    }
    assert_eq!(total_delivered(&server), 2 * n);
}

#[test]
fn unsubscribe_stops_topic_delivery() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=un");
    ws_subscribe(&mut ws, "t");
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    admin.publish("topic=t", "one");
    assert_eq!(ws_text(&mut ws), "one");
    ws_unsubscribe(&mut ws, "t");
    admin.publish("topic=t", "two");
    admin.publish("all", END);
    expect_end_ws(&mut ws, "unsubscribed client");
    // Subscribing again works, once.
    ws_subscribe(&mut ws, "t");
    ws_subscribe(&mut ws, "t");
    admin.publish("topic=t", "three");
    admin.publish("all", END);
    assert_eq!(ws_text(&mut ws), "three");
    expect_end_ws(&mut ws, "resubscribed client");
}

#[test]
fn topic_given_twice_in_the_query_is_delivered_once() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?topics=dup,dup");
    let mut sse = server.sse_connect("topics=dup,,dup");
    server.wait_connections(2);
    let mut admin = server.admin_conn();
    admin.publish("topic=dup", "once");
    admin.publish("all", END);
    assert_eq!(ws_text(&mut ws), "once");
    expect_end_ws(&mut ws, "ws");
    assert_eq!(sse.next_text(), "once");
    expect_end_sse(&mut sse, "sse");
}

#[test]
fn control_message_errors_are_answered_and_keep_the_connection() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=ctl");
    for bad in [
        "not json",
        "{\"subscribe\":5}",
        "{\"subscribe\":\"\"}",
        "{\"bogus\":\"x\"}",
        "{\"subscribe\":\"a\",\"unsubscribe\":\"b\"}",
    ] {
        ws.send(Message::text(bad)).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&ws_text(&mut ws)).unwrap();
        assert!(reply["error"].is_string(), "{bad:?} -> {reply}");
    }
    // Still subscribed to nothing, still connected, still reachable.
    server.wait_connections(1);
    server.admin_conn().publish("user=ctl", "still here");
    assert_eq!(ws_text(&mut ws), "still here");
}

#[test]
fn a_closed_connection_no_longer_receives_and_a_reconnect_gets_one_copy() {
    let server = Server::start(&["--shards", "2"]);
    for round in 0..3 {
        let mut ws = server.ws_connect("/ws?user=re&topics=rt");
        server.wait_connections(1);
        let mut admin = server.admin_conn();
        admin.publish("user=re", format!("round {round}"));
        admin.publish("topic=rt", format!("topic {round}"));
        // The user message and the topic message take different routes; either order.
        let mut got = vec![ws_text(&mut ws), ws_text(&mut ws)];
        got.sort();
        assert_eq!(got, [format!("round {round}"), format!("topic {round}")]);
        admin.publish("all", END);
        expect_end_ws(&mut ws, "reconnected user");
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
        server.wait_connections(0);
    }
    assert_eq!(total_delivered(&server), 9);
}

#[test]
fn publish_to_a_user_without_connections_is_accepted_and_delivered_nowhere() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=present");
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    admin.publish("user=absent", "nobody");
    admin.publish("topic=nobody-listens", "nobody");
    admin.publish("all", END);
    expect_end_ws(&mut ws, "present");
    assert_eq!(total_delivered(&server), 1);
}

#[test]
fn percent_encoded_names_match() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=a%20b&topics=x%2Cy");
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    admin.publish("user=a+b", "user with space");
    assert_eq!(ws_text(&mut ws), "user with space");
    admin.publish("topic=x%2Cy", "comma topic");
    admin.publish("all", END);
    // `topics=x%2Cy` is split on the decoded comma or not; either way exactly one copy or
    // none may arrive, never two.
    let got = ws_text(&mut ws);
    if got != END {
        assert_eq!(got, "comma topic");
        expect_end_ws(&mut ws, "comma topic subscriber");
    }
}

#[test]
fn echo_endpoint_returns_text_and_binary() {
    let server = Server::start(&["--echo"]);
    let mut ws = server.ws_connect("/echo");
    ws.send(Message::text("ping me")).unwrap();
    assert_eq!(ws_text(&mut ws), "ping me");
    ws.send(Message::binary(vec![1u8, 2, 3, 0xff])).unwrap();
    assert_eq!(ws_next(&mut ws), Message::binary(vec![1u8, 2, 3, 0xff]));
    let big = "x".repeat(60_000);
    ws.send(Message::text(big.clone())).unwrap();
    assert_eq!(ws_text(&mut ws), big);
    // Echo connections are not subscribers.
    server.admin_conn().publish("all", "broadcast");
    ws.send(Message::text("after")).unwrap();
    assert_eq!(ws_text(&mut ws), "after");
}
