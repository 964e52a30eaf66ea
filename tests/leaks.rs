//! Memory that must not grow with churn: connections that subscribe to topics and leave;
//! and no transparent huge pages unless the environment asks for them.
//!
//! Measured through `/stats` `rss_bytes` on a one-shard server: a warm-up round reusing the
//! same topic names settles the allocator; rounds with fresh names must then not grow the
//! process by more than noise, because no topic has a subscriber once its connection closed.

mod common;

use std::io::{BufReader, Write};

use common::{read_head, Server};

const TOPICS_PER_CONN: usize = 64;
const NAME_BYTES: usize = 200;

/// Opens a WebSocket subscribed to 64 topics named from `prefix`, waits for the 101, closes.
fn churn(server: &Server, conns: usize, prefix: impl Fn(usize) -> String) {
    for c in 0..conns {
        let p = prefix(c);
        let topics: Vec<String> = (0..TOPICS_PER_CONN)
            .map(|t| format!("{p}-{t:03}-{}", "x".repeat(NAME_BYTES - p.len() - 5)))
            .collect();
        let head = format!(
            "GET /ws?topics={} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            topics.join(",")
        );
        let mut s = server.client_tcp();
        s.write_all(head.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let (status, _) = read_head(&mut r).unwrap();
        assert_eq!(status, 101);
    }
    server.wait_connections(0);
}

fn rss(server: &Server) -> i64 {
    server.stats()["rss_bytes"].as_i64().expect("rss_bytes")
}

#[test]
fn topics_without_subscribers_do_not_accumulate() {
    let server = Server::start(&["--shards", "1", "--head-bytes-max", "65536"]);
    // Warm up with reused names: whatever the index keeps for them is kept once.
    churn(&server, 300, |_| "same".to_owned());
    let warm = rss(&server);
    churn(&server, 300, |_| "same".to_owned());
    let reused = rss(&server) - warm;
    // 300 connections × 64 fresh names of 200 bytes: ~3.8 MB of names alone if kept.
    churn(&server, 300, |c| format!("n{c:05}"));
    let fresh = rss(&server) - warm - reused;
    assert!(
        fresh < 1_500_000,
        "RSS grew {fresh} bytes over 19,200 topics that no connection subscribes to any more \
         (the same churn with reused names grew {reused} bytes)"
    );
}

/// A `Name:   value` line of /proc/PID/`file`.
fn proc_field(pid: i32, file: &str, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| {
        panic!("no {name} in /proc/{pid}/{file}:\n{text}");
    });
    line[name.len()..].trim().to_owned()
}

#[test]
fn transparent_huge_pages_are_off_unless_the_environment_allows_them() {
    // Six shards: each one's arena would start with huge pages where the host allows them.
    let server = Server::start(&["--shards", "6"]);
    let held: Vec<_> = (0..60).map(|i| server.ws_connect(&format!("/ws?user=u{i}"))).collect();
    server.wait_connections(60);
    let pid = server.pid();
    assert_eq!(proc_field(pid, "status", "THP_enabled:"), "0", "THP_enabled of the default");
    assert_eq!(
        proc_field(pid, "smaps_rollup", "AnonHugePages:"),
        "0 kB",
        "huge pages resident in a server started with the defaults"
    );
    drop(held);

    let allowed = Server::spawn_with_env(
        &["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--shards", "2"],
        &[("MIMALLOC_ALLOW_THP", "1")],
    );
    assert_eq!(
        proc_field(allowed.pid(), "status", "THP_enabled:"),
        "1",
        "THP_enabled with MIMALLOC_ALLOW_THP=1"
    );
    let stderr = allowed.stderr();
    assert!(
        stderr.contains("MIMALLOC_ALLOW_THP is set"),
        "the server says that the allocator decides; stderr:\n{stderr}"
    );
}
