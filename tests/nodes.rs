//! `GET /nodes` on the client listener (the smart client's endpoint choice) and the browser
//! tab counts clients report (`?tabs=N`, `{"tabs":N}`, `c10m_client_tabs`), on one node;
//! the cluster's node list is in tests/cluster.rs.

mod common;

use common::{metric_sum, run_to_exit, wait_until, ws_text, Server, STEP};
use tungstenite::Message;

fn nodes(server: &Server) -> serde_json::Value {
    let r = server.client_request(b"GET /nodes HTTP/1.1\r\nHost: x\r\nOrigin: http://app\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    r.json()
}

#[test]
fn a_standalone_node_lists_itself_with_its_load() {
    let server = Server::start(&[
        "--public-url",
        "wss://push.example.com",
        "--conns-per-shard-max",
        "50",
        "--memory-bytes-max",
        "1073741824",
    ]);
    let v = nodes(&server);
    assert!(v["self"].is_null(), "{v}");
    let list = v["nodes"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    let me = &list[0];
    assert!(me["id"].is_null());
    assert_eq!(me["url"], "wss://push.example.com");
    assert_eq!(me["capacity"], 100, "50 per shard × 2 shards");
    assert_eq!(me["draining"], false);
    let headroom = me["mem_headroom"].as_f64().unwrap();
    assert!(headroom > 0.5 && headroom < 1.0, "{me}");

    // Ten connections show as load 0.1 within the next refresh.
    let _clients: Vec<_> = (0..10).map(|i| server.ws_connect(&format!("/ws?user=u{i}"))).collect();
    server.wait_connections(10);
    let me = wait_until("/nodes shows 10 connections", STEP, || {
        let v = nodes(&server);
        (v["nodes"][0]["connections"] == 10).then(|| v["nodes"][0].clone())
    });
    assert_eq!(me["load"], 0.1);

    // A preflight, a wrong method, and a node without a public URL or memory budget.
    let r = server.client_request(
        b"OPTIONS /nodes HTTP/1.1\r\nHost: x\r\nOrigin: http://app\r\n\
          Access-Control-Request-Method: GET\r\n\r\n",
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = server.client_request(b"POST /nodes HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    let plain = Server::start(&[]);
    let me = &nodes(&plain)["nodes"][0];
    assert!(me["url"].is_null() && me["mem_headroom"].is_null(), "{me}");
}

#[test]
fn origins_outside_the_allowed_list_are_refused() {
    let server = Server::start(&["--allowed-origin", "https://app.example"]);
    let r = server
        .client_request(b"GET /nodes HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n");
    assert_eq!(r.status, 403);
    let r = server
        .client_request(b"GET /nodes HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn a_bad_public_url_is_refused_with_advice() {
    let (code, out) = run_to_exit(&["serve", "--public-url", "push.example.com"]);
    assert_ne!(code, 0);
    assert!(out.contains("public_url") && out.contains("wss://"), "{out}");
}

fn tabs(server: &Server) -> f64 {
    metric_sum(&server.metrics(), "c10m_client_tabs", &[])
}

fn wait_tabs(server: &Server, want: f64) {
    wait_until(&format!("c10m_client_tabs = {want}"), STEP, || {
        (tabs(server) == want).then_some(())
    });
}

#[test]
fn clients_report_how_many_tabs_share_their_connection() {
    let server = Server::start(&[]);
    let mut shared = server.ws_connect("/ws?user=a&tabs=3");
    let _plain = server.ws_connect("/ws?user=b");
    let sse = server.sse_connect("user=c&tabs=2");
    server.wait_connections(3);
    wait_tabs(&server, 6.0);
    assert_eq!(server.stats()["tabs"], 6);

    // The shared connection's count changes as tabs come and go.
    shared.send(Message::text(r#"{"tabs":5}"#)).unwrap();
    assert_eq!(ws_text(&mut shared), r#"{"tabs":5}"#);
    wait_tabs(&server, 8.0);
    shared.send(Message::text(r#"{"tabs":0}"#)).unwrap();
    assert!(ws_text(&mut shared).contains("tabs: give a whole number"), "refused, kept");
    wait_tabs(&server, 8.0);

    // Closing a connection takes its tabs with it.
    drop(sse);
    server.wait_connections(2);
    wait_tabs(&server, 6.0);
    shared.close(None).unwrap();
    server.wait_connections(1);
    wait_tabs(&server, 1.0);

    // Out of range at the handshake: 400 with the reason.
    for bad in ["0", "1001", "x"] {
        let req = format!("GET /sse?user=d&tabs={bad} HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = server.client_request(req.as_bytes());
        assert_eq!(r.status, 400, "tabs={bad}");
        assert!(r.text().contains("1..=1000"), "{}", r.text());
    }
}
