//! The admin listener: publish, stats, metrics, health; keep-alive, pipelining, bodies split
//! across writes, chunked bodies, and the refusals.

mod common;

use std::io::Write;

use common::{metric_sum, read_to_eof, ws_text, Server};

#[test]
fn publish_answers_202_with_a_numeric_id() {
    let server = Server::start(&[]);
    for target in ["user=x", "topic=t", "all"] {
        let (status, body) = server.publish(target, "m");
        assert_eq!(status, 202, "{target}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(json["id"].is_u64(), "{body}");
        assert_eq!(json.as_object().unwrap().len(), 1, "{body}");
    }
}

#[test]
fn publish_target_must_be_exactly_one() {
    let server = Server::start(&[]);
    for target in [
        "",
        "user=",
        "topic=",
        "user=a&topic=b",
        "user=a&all",
        "topic=b&all",
        "user=a&topic=b&all",
        "nobody=x",
    ] {
        let (status, body) = server.publish(target, "m");
        assert_eq!(status, 400, "?{target}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(json["error"].is_string(), "{body}");
    }
    let long = format!("user={}", "u".repeat(257));
    assert_eq!(server.publish(&long, "m").0, 400);
    let at_limit = format!("user={}", "u".repeat(256));
    assert_eq!(server.publish(&at_limit, "m").0, 202);
}

#[test]
fn body_over_message_bytes_max_is_413() {
    let server = Server::start(&[]);
    let (status, _) = server.publish("all", vec![b'a'; 65536]);
    assert_eq!(status, 202);
    let (status, body) = server.publish("all", vec![b'a'; 65537]);
    assert_eq!(status, 413, "{body}");
}

#[test]
fn body_limit_follows_the_flag_and_closes_the_connection() {
    let server = Server::start(&["--message-bytes-max", "100"]);
    let mut admin = server.admin_conn();
    let ok = admin.request("POST", "/publish?all", [b'b'; 100]);
    assert_eq!(ok.status, 202);
    let big = admin.request("POST", "/publish?all", [b'b'; 101]);
    assert_eq!(big.status, 413);
    assert_eq!(big.header("connection"), Some("close"));
    let rest = read_to_eof(admin.reader.get_mut());
    assert!(rest.is_empty() && admin.reader.buffer().is_empty());
    // A chunked body that grows past the limit is refused too.
    let mut admin = server.admin_conn();
    admin.send_raw(
        b"POST /publish?all HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
          40\r\n",
    );
    admin.send_raw(&[b'c'; 64]);
    admin.send_raw(b"\r\n40\r\n");
    let r = admin.read();
    assert_eq!(r.status, 413, "{}", r.text());
}

#[test]
fn wrong_methods_are_405_with_allow() {
    let server = Server::start(&[]);
    let mut admin = server.admin_conn();
    let r = admin.request("GET", "/publish?all", b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    for path in ["/stats", "/metrics", "/healthz"] {
        let r = admin.request("POST", path, b"");
        assert_eq!(r.status, 405, "{path}");
        assert_eq!(r.header("allow"), Some("GET"), "{path}");
    }
    let r = admin.request("GET", "/nope", b"");
    assert_eq!(r.status, 404);
    // Still the same connection: errors in routing do not close it.
    assert_eq!(admin.request("GET", "/healthz", b"").status, 200);
}

#[test]
fn healthz_is_ok() {
    let server = Server::start(&[]);
    let r = server.admin_conn().request("GET", "/healthz", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim_end(), "ok");
}

#[test]
fn stats_counts_connections_per_protocol_and_shard() {
    let server = Server::start(&["--shards", "2"]);
    let stats = server.stats();
    for key in ["connections", "ws", "sse", "admin", "handshake"] {
        assert!(stats[key].is_u64(), "{key} in {stats}");
    }
    let shards = stats["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(s["shard"], i);
        for key in ["connections", "ws", "sse", "published", "delivered"] {
            assert!(s[key].is_u64(), "{key} in {s}");
        }
    }
    let _ws: Vec<_> = (0..6).map(|i| server.ws_connect(&format!("/ws?user=w{i}"))).collect();
    let _sse: Vec<_> = (0..4).map(|i| server.sse_connect(&format!("user=s{i}"))).collect();
    let stats = server.wait_connections(10);
    assert_eq!(stats["ws"], 6);
    assert_eq!(stats["sse"], 4);
    let per: u64 = stats["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(per, 10);
    // The admin connection answering /stats counts itself.
    assert!(stats["admin"].as_u64().unwrap() >= 1, "{stats}");
}

#[test]
fn metrics_are_prometheus_text_that_moves() {
    let server = Server::start(&["--shards", "2"]);
    let mut ws = server.ws_connect("/ws?user=m");
    let _sse = server.sse_connect("user=m");
    server.wait_connections(2);
    let text = server.metrics();
    for needle in [
        "# TYPE c10m_connections gauge",
        "c10m_connections{shard=\"0\"}",
        "c10m_connections{shard=\"1\"}",
        "c10m_closes_total{shard=\"0\",reason=\"protocol_error\"}",
        "c10m_closes_total{shard=\"1\",reason=\"idle_timeout\"}",
        "c10m_messages_delivered_total{shard=\"0\"}",
        "c10m_messages_published_total{shard=\"1\"}",
        "c10m_ws_protocol_errors_total{shard=\"0\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert_eq!(metric_sum(&text, "c10m_connections", &[]), 2.0);
    assert_eq!(metric_sum(&text, "c10m_connections_ws", &[]), 1.0);
    assert_eq!(metric_sum(&text, "c10m_connections_sse", &[]), 1.0);
    assert_eq!(metric_sum(&text, "c10m_messages_published_total", &[]), 0.0);
    // Every sample line is `name{labels} value` or `name value` with a number.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (_, v) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(v.parse::<f64>().is_ok(), "bad value in {line:?}");
    }
    server.admin_conn().publish("user=m", "counted");
    assert_eq!(ws_text(&mut ws), "counted");
    server.wait_metric("c10m_messages_published_total", &[], 1.0);
    server.wait_metric("c10m_messages_delivered_total", &[], 2.0);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = Server::start(&[]);
    let mut admin = server.admin_conn();
    for i in 0..20 {
        let r = admin.request("POST", "/publish?topic=ka", format!("m{i}"));
        assert_eq!(r.status, 202);
        assert_ne!(r.header("connection"), Some("close"));
        assert_eq!(admin.request("GET", "/healthz", b"").status, 200);
    }
    assert!(server.stats()["admin"].as_u64().unwrap() >= 2);
}

#[test]
fn pipelined_requests_get_responses_in_order() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=pipe");
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    admin.send_raw(
        b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /publish?user=pipe HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nfirst\
          GET /nope HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /publish?user=pipe HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nsecond",
    );
    let r1 = admin.read();
    let r2 = admin.read();
    let r3 = admin.read();
    let r4 = admin.read();
    assert_eq!(r1.status, 200);
    assert_eq!(r1.text().trim_end(), "ok");
    assert_eq!(r2.status, 202);
    assert_eq!(r3.status, 404);
    assert_eq!(r4.status, 202);
    let (id2, id4) = (r2.json()["id"].as_u64().unwrap(), r4.json()["id"].as_u64().unwrap());
    assert_ne!(id2, id4);
    assert_eq!(ws_text(&mut ws), "first");
    assert_eq!(ws_text(&mut ws), "second");
}

#[test]
fn requests_split_across_writes_are_reassembled() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=split");
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    let body = "a body that arrives in pieces";
    let raw = format!(
        "POST /publish?user=split HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for piece in raw.as_bytes().chunks(7) {
        admin.send_raw(piece);
        admin.reader.get_mut().flush().unwrap();
    }
    assert_eq!(admin.read().status, 202);
    assert_eq!(ws_text(&mut ws), body);
    // A large body across many reads of the server's 4 KiB receive buffers.
    let big: String = (0..60_000).map(|i| char::from(b'A' + (i % 26) as u8)).collect();
    let r = admin.request("POST", "/publish?user=split", &big);
    assert_eq!(r.status, 202);
    assert_eq!(ws_text(&mut ws), big);
}

#[test]
fn chunked_publish_body_is_delivered_joined() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=chunky");
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    admin.send_raw(
        b"POST /publish?user=chunky HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    let r = admin.read();
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(ws_text(&mut ws), "hello world!");
    // The connection is still usable.
    assert_eq!(admin.request("GET", "/healthz", b"").status, 200);
}

#[test]
fn ambiguous_or_broken_bodies_are_400_and_close() {
    let server = Server::start(&[]);
    for raw in [
        &b"POST /publish?all HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST /publish?all HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /publish?all HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /publish?all HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"this is not http\r\n\r\n",
    ] {
        let mut admin = server.admin_conn();
        admin.send_raw(raw);
        let r = admin.read();
        assert_eq!(r.status, 400, "{:?}: {}", common::lossy(raw), r.text());
        assert_eq!(r.header("connection"), Some("close"));
        let rest = read_to_eof(admin.reader.get_mut());
        assert!(rest.is_empty());
    }
}

#[test]
fn connection_close_and_http_1_0_end_the_connection_after_the_response() {
    let server = Server::start(&[]);
    let mut admin = server.admin_conn();
    admin.send_raw(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert_eq!(admin.read().status, 200);
    assert!(read_to_eof(admin.reader.get_mut()).is_empty());
    let mut admin = server.admin_conn();
    admin.send_raw(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(admin.read().status, 200);
    assert!(read_to_eof(admin.reader.get_mut()).is_empty());
    // HTTP/1.0 with keep-alive stays open.
    let mut admin = server.admin_conn();
    admin.send_raw(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(admin.read().status, 200);
    admin.send_raw(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(admin.read().status, 200);
}

#[test]
fn admin_head_limits_apply() {
    let server = Server::start(&[]);
    let mut admin = server.admin_conn();
    admin
        .send_raw(format!("GET /stats HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(9000)).as_bytes());
    assert_eq!(admin.read().status, 431);
    let mut admin = server.admin_conn();
    let headers: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
    admin.send_raw(format!("GET /stats HTTP/1.1\r\n{headers}\r\n").as_bytes());
    assert_eq!(admin.read().status, 431);
}

#[test]
fn client_endpoints_do_not_exist_on_the_admin_listener() {
    let server = Server::start(&[]);
    let mut s = server.admin_tcp();
    s.write_all(b"GET /sse?user=a HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let r = common::read_response(&mut std::io::BufReader::new(s)).unwrap();
    assert_eq!(r.status, 404);
    // And publishing does not exist on the client listener.
    let r = server
        .client_request(b"POST /publish?all HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 404);
}

/// RFC 9110 section 10.1.1: a server that receives `Expect: 100-continue` MUST answer at once
/// with 100 (Continue) or a final status. Clients that wait for it (older libcurl for bodies
/// over 1 KiB, .NET's HttpClient) otherwise stall on every publish until their own timeout.
#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = Server::start(&[]);
    let mut admin = server.admin_conn();
    admin.reader.get_mut().set_read_timeout(Some(std::time::Duration::from_secs(1))).unwrap();
    admin.send_raw(
        b"POST /publish?all HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\
          Expect: 100-continue\r\n\r\n",
    );
    let (status, _) = common::read_head(&mut admin.reader)
        .expect("an interim 100 Continue (or a final status) before the body is sent");
    assert_eq!(status, 100);
    admin.send_raw(b"hello");
    assert_eq!(admin.read().status, 202);
}

#[test]
fn expect_100_continue_over_the_limit_is_refused_at_once() {
    let server = Server::start(&[]);
    let mut admin = server.admin_conn();
    admin.send_raw(
        b"POST /publish?all HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\
          Expect: 100-continue\r\n\r\n",
    );
    assert_eq!(admin.read().status, 413);
}
