//! Memory that must not grow with churn: connections that subscribe to topics and leave;
//! a receive pool that gives its pages back when quiet; and no transparent huge pages unless
//! the environment asks for them.
//!
//! Measured through `/stats` `rss_bytes` on a one-shard server: a warm-up round reusing the
//! same topic names settles the allocator; rounds with fresh names must then not grow the
//! process by more than noise, because no topic has a subscriber once its connection closed.

mod common;

use std::io::{BufReader, Write};

use std::time::{Duration, Instant};

use common::{read_head, Server, Ws};
use tungstenite::Message;

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

/// Sends a ping with `payload` and returns the pong's payload (other frames are skipped).
fn ping(ws: &mut Ws, payload: &[u8]) -> Vec<u8> {
    ws.send(Message::Ping(payload.to_vec())).expect("send ping");
    pong(ws)
}

fn pong(ws: &mut Ws) -> Vec<u8> {
    loop {
        match ws.read().expect("read a pong") {
            Message::Pong(p) => return p.to_vec(),
            Message::Close(c) => panic!("closed while waiting for a pong: {c:?}"),
            _ => continue,
        }
    }
}

/// 125 bytes that name client `i` and the round.
fn payload(i: usize, round: u8) -> Vec<u8> {
    (0..125).map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8) ^ round).collect()
}

#[test]
fn the_receive_pool_parks_buffers_when_quiet_and_refills_for_a_burst() {
    const CLIENTS: usize = 300;
    let server = Server::start(&["--shards", "1"]);
    let shard = |key: &str| server.stats()["shards"][0][key].as_u64().expect(key);
    let mut clients: Vec<Ws> =
        (0..CLIENTS).map(|i| server.ws_connect(&format!("/ws?user=p{i}"))).collect();
    server.wait_connections(CLIENTS as u64);

    // Quiet: once a second passes with no receive in flight, the ring gives up the buffers
    // it holds beyond its quiet size (the handshakes touched all 512 of them).
    let deadline = Instant::now() + Duration::from_secs(10);
    while shard("recv_buffers_in_ring") > 32 {
        assert!(
            Instant::now() < deadline,
            "the ring still holds {} buffers 10 s after the handshakes",
            shard("recv_buffers_in_ring")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Single pings need one buffer a turn: the ring stays at its quiet size.
    let mut round = 0u8;
    for _ in 0..3 {
        round = round.wrapping_add(1);
        for (i, ws) in clients.iter_mut().enumerate() {
            assert_eq!(ping(ws, &payload(i, round)), payload(i, round), "pong of client {i}");
        }
    }

    // A burst: every client's ping is queued while the server is stopped, so its next turns
    // find 300 sockets ready: the busiest turn raises the target (or a dry ring brings every
    // parked buffer back at once), and every pong still carries its own ping's bytes.
    round = round.wrapping_add(1);
    server.signal(libc::SIGSTOP);
    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::Ping(payload(i, round))).expect("send ping");
    }
    server.signal(libc::SIGCONT);
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(pong(ws), payload(i, round), "pong of client {i} after the burst");
    }
    // The gauge is set once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while shard("recv_buffers_in_ring") <= 32 {
        assert!(Instant::now() < deadline, "the ring is still at its quiet size after the burst");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = server.metrics();
    for name in ["c10m_recv_buffers_in_ring", "c10m_recv_buffers_starved_total"] {
        assert!(text.contains(name), "{name} in /metrics:\n{text}");
    }
}
