//! The backend's API beyond `POST /publish`, against the real server with real clients:
//! `POST /publish/batch` (newline-delimited JSON, one answer per line, one mesh message per
//! shard per batch).

mod common;

use common::{metric_sum, ws_close_json, ws_subscribe, ws_text, Server};

fn batch(server: &Server, body: &str) -> (u16, serde_json::Value) {
    let r = server.admin_conn().request("POST", "/publish/batch", body);
    let v = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    (r.status, v)
}

#[test]
fn a_batch_reaches_users_topics_and_everyone_with_an_answer_per_line() {
    let server = Server::start(&[]);
    let mut alice = server.ws_connect("/ws?user=alice");
    let mut bob = server.ws_connect("/ws?user=bob&topics=news");
    server.wait_connections(2);
    let body = [
        r#"{"user":"alice","data":"for alice"}"#,
        r#"{"topic":"news","data":{"headline":"batch"}}"#,
        "",
        r#"{"user":"bob","b64":"aGkgYm9i"}"#,
        r#"{"user":"nobody-here","data":"into history"}"#,
        r#"{"all":true,"data":"everyone"}"#,
        r#"{"topic":"news"}"#,
        "not json",
    ]
    .join("\n");
    let (status, answer) = batch(&server, &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["published"].as_u64(), answer["failed"].as_u64()), (Some(5), Some(2)));
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 7, "no entry for the blank line: {answer}");
    for r in &results[..5] {
        assert!(r["id"].as_u64().is_some(), "{r}");
    }
    assert_eq!(results[5]["line"], 7);
    assert!(results[5]["error"].as_str().unwrap().contains("missing \"data\""), "{answer}");
    assert_eq!(results[6]["line"], 8);
    assert!(results[6]["error"].as_str().unwrap().contains("invalid JSON"), "{answer}");

    // The user's stream and the broadcast stream are numbered by different partitions and
    // may interleave either way: compare them sorted.
    let mut got = vec![ws_text(&mut alice), ws_text(&mut alice)];
    got.sort();
    assert_eq!(got, ["everyone", "for alice"]);
    let mut got = vec![ws_text(&mut bob), ws_text(&mut bob), ws_text(&mut bob)];
    got.sort();
    assert_eq!(got, ["everyone", "hi bob", r#"{"headline":"batch"}"#]);
}

#[test]
fn a_thousand_line_batch_goes_out_as_a_few_mesh_messages_and_arrives_in_order() {
    let server = Server::start(&[]);
    // 200 users: about half are homed on the shard that did not accept the batch (the
    // user hash is keyed per process), far more than the 400 lines asserted below.
    let users = 200;
    let mut clients: Vec<_> =
        (0..users).map(|i| server.ws_connect(&format!("/ws?user=u{i}"))).collect();
    server.wait_connections(users as u64);
    let body: String = (0..1000)
        .map(|n| format!("{{\"user\":\"u{}\",\"data\":\"m{}\"}}\n", n % users, n / users))
        .collect();
    let before = metric_sum(&server.metrics(), "c10m_mesh_batches_total", &[]);
    let (status, answer) = batch(&server, &body);
    assert_eq!((status, answer["published"].as_u64()), (200, Some(1000)), "{answer}");
    for (i, ws) in clients.iter_mut().enumerate() {
        for k in 0..1000 / users {
            assert_eq!(ws_text(ws), format!("m{k}"), "client u{i}");
        }
    }
    let m = server.metrics();
    let batches = metric_sum(&m, "c10m_mesh_batches_total", &[]) - before;
    // Two shards: the accepting shard sends one batch to the other home shard, and each home
    // shard at most one batch of deliveries to the other: a handful, not a thousand.
    assert!((1.0..=4.0).contains(&batches), "{batches} mesh batches for 1,000 lines");
    assert!(metric_sum(&m, "c10m_mesh_batched_messages_total", &[]) >= 400.0);
}

#[test]
fn oversized_batches_get_413_and_a_missing_key_401() {
    let server = Server::start(&["--batch-lines-max", "10", "--batch-bytes-max", "65536"]);
    let eleven: String = (0..11).map(|n| format!("{{\"all\":true,\"data\":{n}}}\n")).collect();
    let (status, answer) = batch(&server, &eleven);
    assert_eq!(status, 413);
    assert!(answer["error"].as_str().unwrap().contains("batch_lines_max = 10"), "{answer}");
    let r = server.admin_conn().request("POST", "/publish/batch", vec![b'\n'; 70_000]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("batch_bytes_max"), "{}", r.text());
    let r = server.admin_conn().request("GET", "/publish/batch", "");
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));

    let dir = std::env::temp_dir().join(format!("c10m-backend-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("admin.key");
    std::fs::write(&key, "backend-key-0123456789\n").unwrap();
    let keyed = Server::start(&["--admin-key-file", key.to_str().unwrap()]);
    let r = keyed.admin_conn().request("POST", "/publish/batch", r#"{"all":true,"data":1}"#);
    assert_eq!(r.status, 401);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_subscriber_added_by_control_message_gets_batch_topic_publishes() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws");
    ws_subscribe(&mut ws, "late");
    let (status, _) = batch(
        &server,
        "{\"topic\":\"late\",\"data\":\"one\"}\n{\"topic\":\"late\",\"data\":\"two\"}",
    );
    assert_eq!(status, 200);
    assert_eq!(ws_text(&mut ws), "one");
    assert_eq!(ws_text(&mut ws), "two");
}

fn post(server: &Server, target: &str) -> (u16, serde_json::Value) {
    let r = server.admin_conn().request("POST", target, "");
    let v = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    (r.status, v)
}

#[test]
fn disconnect_closes_every_connection_of_the_user_and_a_ban_refuses_it_for_a_while() {
    let server = Server::start(&[]);
    let mut a = server.ws_connect("/ws?user=mallory");
    let mut b = server.ws_connect("/ws?user=mallory");
    let mut sse = server.sse_connect("user=mallory");
    let mut good = server.ws_connect("/ws?user=good");
    server.wait_connections(4);
    let (status, v) = post(&server, "/disconnect?user=mallory&ban_s=2&reason=password%20changed");
    assert_eq!((status, v["ban_s"].as_u64()), (202, Some(2)), "{v}");
    for ws in [&mut a, &mut b] {
        let (code, reason) = ws_close_json(ws);
        assert_eq!(code, 4003);
        assert_eq!(reason["reconnect"], false);
        assert_eq!(reason["reason"], "password changed");
    }
    loop {
        match sse.next_item().expect("SSE read") {
            Some(common::SseItem::Named { event, data }) if event == "disconnect" => {
                let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
                assert_eq!(v["reconnect"], false);
                break;
            }
            Some(_) => continue,
            None => panic!("SSE closed without a disconnect event"),
        }
    }
    sse.expect_eof();
    server.wait_connections(1);
    // Banned: refused at the handshake with what to expect.
    let r = server
        .client_request(b"GET /sse?user=mallory HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 403);
    assert!(r.text().contains("disconnected for"), "{}", r.text());
    assert!(server.try_ws_connect("/ws?user=mallory").is_err());
    // Others are untouched.
    server.publish("user=good", "still here");
    assert_eq!(ws_text(&mut good), "still here");
    // The ban ends by itself.
    common::wait_until("the ban to end", std::time::Duration::from_secs(10), || {
        server.try_ws_connect("/ws?user=mallory").ok()
    });
    let m = server.metrics();
    assert_eq!(metric_sum(&m, "c10m_disconnects_total", &[]), 3.0);
    assert!(metric_sum(&m, "c10m_banned_refused_total", &[]) >= 2.0);
    assert_eq!(metric_sum(&m, "c10m_closes_total", &["reason=\"disconnected\""]), 3.0);
}

#[test]
fn server_side_subscribe_and_unsubscribe_reach_every_connection_of_the_user() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=sam");
    let mut sse = server.sse_connect("user=sam");
    server.wait_connections(2);
    let (status, _) = post(&server, "/subscribe?user=sam&topic=news");
    assert_eq!(status, 202);
    let said: serde_json::Value = serde_json::from_str(&ws_text(&mut ws)).unwrap();
    assert_eq!((said["subscribed"].as_str(), said["server"].as_bool()), (Some("news"), Some(true)));
    let named = |sse: &mut common::Sse, want: &str| loop {
        match sse.next_item().expect("SSE read") {
            Some(common::SseItem::Named { event, data }) if event == want => return data,
            Some(common::SseItem::Event { data, .. }) => return data,
            Some(_) => continue,
            None => panic!("SSE closed"),
        }
    };
    assert!(String::from_utf8(named(&mut sse, "subscribed")).unwrap().contains("\"news\""));
    server.publish("topic=news", "headline");
    assert_eq!(ws_text(&mut ws), "headline");
    assert_eq!(named(&mut sse, "-"), b"headline");

    let (status, _) = post(&server, "/unsubscribe?user=sam&topic=news");
    assert_eq!(status, 202);
    let said: serde_json::Value = serde_json::from_str(&ws_text(&mut ws)).unwrap();
    assert_eq!(said["unsubscribed"], "news");
    assert!(String::from_utf8(named(&mut sse, "unsubscribed")).unwrap().contains("\"news\""));
    // No longer subscribed: the next thing either gets is the user's own message.
    server.publish("topic=news", "not for sam");
    server.publish("user=sam", "for sam");
    assert_eq!(ws_text(&mut ws), "for sam");
    assert_eq!(named(&mut sse, "-"), b"for sam");
}

#[test]
fn command_errors_name_the_field() {
    let server = Server::start(&[]);
    for (target, field) in [
        ("/disconnect", "user:"),
        ("/disconnect?user=", "user:"),
        ("/disconnect?user=u&ban_s=soon", "ban_s:"),
        ("/disconnect?user=u&ban_s=99999999", "ban_s:"),
        ("/disconnect?user=u&reason=%22quoted%22", "reason:"),
        ("/subscribe?user=u", "topic:"),
        ("/unsubscribe?topic=t", "user:"),
    ] {
        let (status, v) = post(&server, target);
        assert_eq!(status, 400, "{target}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(field), "{target}: {v}");
    }
    let r = server.admin_conn().request("GET", "/disconnect?user=u", "");
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
}

fn presence(server: &Server, query: &str) -> serde_json::Value {
    let r = server.admin_conn().request("GET", &format!("/presence?{query}"), "");
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    r.json()
}

#[test]
fn presence_counts_users_and_topic_subscribers_as_they_change() {
    let server = Server::start(&[]);
    let a = server.ws_connect("/ws?user=ann&topics=room");
    let _sse = server.sse_connect("user=ann&topics=room");
    let mut users: Vec<_> =
        (0..6).map(|i| server.ws_connect(&format!("/ws?user=p{i}&topics=room"))).collect();
    server.wait_connections(8);
    let v = presence(&server, "user=ann");
    assert_eq!((v["online"].as_bool(), v["connections"].as_u64()), (Some(true), Some(2)), "{v}");
    let v = presence(&server, "user=nobody");
    assert_eq!((v["online"].as_bool(), v["connections"].as_u64()), (Some(false), Some(0)), "{v}");
    let v = presence(&server, "users=p0,p1,p2,p3,p4,p5,ghost");
    for i in 0..6 {
        assert_eq!(v["users"][format!("p{i}")]["connections"], 1, "{v}");
    }
    assert_eq!(v["users"]["ghost"]["online"], false, "{v}");
    let v = presence(&server, "users=ann,ann");
    assert_eq!(v["users"]["ann"]["connections"], 2, "a name given twice counts once: {v}");
    assert_eq!(v["scope"], "node", "a standalone node answers for itself");
    assert_eq!(presence(&server, "topic=room")["subscribers"], 8);
    assert_eq!(presence(&server, "topic=empty")["subscribers"], 0);

    drop(a);
    users.truncate(3);
    common::wait_until("counts to follow the closes", std::time::Duration::from_secs(5), || {
        let ann = presence(&server, "user=ann")["connections"].as_u64();
        let room = presence(&server, "topic=room")["subscribers"].as_u64();
        (ann == Some(1) && room == Some(4)).then_some(())
    });
}

#[test]
fn pipelined_presence_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let _a = server.ws_connect("/ws?user=u1&topics=t");
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    let mut both = Vec::new();
    for q in ["user=u1", "topic=t", "users=u1,u2"] {
        both.extend_from_slice(format!("GET /presence?{q} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    both.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    admin.send_raw(&both);
    assert_eq!(admin.read().json()["connections"], 1);
    assert_eq!(admin.read().json()["subscribers"], 1);
    assert_eq!(admin.read().json()["users"]["u2"]["connections"], 0);
    assert_eq!(admin.read().status, 200);
}

#[test]
fn presence_errors_name_the_field() {
    let server = Server::start(&[]);
    for (q, says) in [
        ("", "exactly one of"),
        ("user=a&topic=b", "exactly one of"),
        ("users=a,,b", "users:"),
        (&format!("users={}", vec!["x"; 1001].join(",")), "users: at most 1000"),
    ] {
        let r = server.admin_conn().request("GET", &format!("/presence?{q}"), "");
        assert_eq!(r.status, 400, "{q}");
        assert!(r.json()["error"].as_str().unwrap().contains(says), "{q}: {}", r.text());
    }
    let r = server.admin_conn().request("POST", "/presence?user=a", "");
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET")));
}
