//! Graceful shutdown on SIGTERM and SIGINT: WebSockets get close 1001, SSE streams end, admin
//! and half-open connections are dropped, and the process prints `c10m stopped` and exits 0
//! within `shutdown_timeout_ms`.

mod common;

use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use common::{read_to_eof, Server};
use tungstenite::Message;

/// Slack for process exit beyond the configured shutdown bound (debug build, busy CI).
const EXIT_SLACK: Duration = Duration::from_secs(3);

fn expect_stopped(server: &mut Server, bound: Duration) {
    let start = Instant::now();
    let status = server
        .wait_exit(bound + EXIT_SLACK)
        .unwrap_or_else(|| panic!("still running {:?} after the signal", bound + EXIT_SLACK));
    assert!(status.success(), "exit status {status:?}; stderr:\n{}", server.stderr());
    let lines = server.stdout_lines(Duration::from_secs(2));
    assert!(lines.iter().any(|l| l == "c10m stopped"), "stdout after start: {lines:?}");
    assert!(start.elapsed() <= bound + EXIT_SLACK);
}

fn shutdown_with_clients(sig: i32) {
    let mut server = Server::start(&["--shutdown-timeout-ms", "3000"]);
    let mut ws: Vec<_> = (0..4).map(|i| server.ws_connect(&format!("/ws?user=w{i}"))).collect();
    let mut sse: Vec<_> = (0..4).map(|i| server.sse_connect(&format!("user=s{i}"))).collect();
    server.wait_connections(8);
    let signalled = Instant::now();
    server.signal(sig);
    for (i, c) in ws.iter_mut().enumerate() {
        match c.read() {
            Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001, "ws {i}: {f:?}"),
            other => panic!("ws {i}: expected close 1001, got {other:?}"),
        }
        // tungstenite queued its close reply; flushing it lets the server finish at once.
        let _ = c.flush();
    }
    for (i, c) in sse.iter_mut().enumerate() {
        c.expect_eof();
        assert!(signalled.elapsed() < Duration::from_secs(3), "sse {i} ended late");
    }
    expect_stopped(&mut server, Duration::from_millis(3000));
    // With every client cooperating, exit does not wait for the bound.
    assert!(
        signalled.elapsed() < Duration::from_millis(2500),
        "took {:?} with cooperative clients",
        signalled.elapsed()
    );
}

#[test]
fn sigterm_closes_websockets_with_1001_ends_sse_and_exits_0() {
    shutdown_with_clients(libc::SIGTERM);
}

#[test]
fn sigint_does_the_same() {
    shutdown_with_clients(libc::SIGINT);
}

#[test]
fn idle_server_stops_promptly() {
    let mut server = Server::start(&[]);
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    expect_stopped(&mut server, Duration::from_millis(1000));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn a_client_that_ignores_the_close_cannot_hold_shutdown_past_its_bound() {
    let mut server =
        Server::start(&["--shutdown-timeout-ms", "800", "--close-timeout-ms", "30000"]);
    let mut raw = server.raw_ws("/ws?user=stubborn");
    server.wait_connections(1);
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    let close = raw.recv_skip_pings().expect("close frame");
    assert_eq!(close.close_code(), Some(1001));
    // No close reply: the server still exits within the shutdown bound.
    expect_stopped(&mut server, Duration::from_millis(800));
    assert!(t.elapsed() < Duration::from_millis(800) + EXIT_SLACK, "{:?}", t.elapsed());
    raw.expect_eof();
}

#[test]
fn admin_and_half_open_connections_are_dropped_on_shutdown() {
    let mut server = Server::start(&["--shutdown-timeout-ms", "2000"]);
    let mut admin = server.admin_conn();
    assert_eq!(admin.request("GET", "/healthz", b"").status, 200);
    let mut half = server.client_tcp();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\n").unwrap();
    common::wait_until("the half head to be accepted", common::STEP, || {
        (server.stats()["handshake"] == 1).then_some(())
    });
    server.signal(libc::SIGTERM);
    assert!(read_to_eof(admin.reader.get_mut()).is_empty());
    let rest = read_to_eof(&mut half);
    assert!(rest.is_empty(), "{:?}", common::lossy(&rest));
    expect_stopped(&mut server, Duration::from_millis(2000));
}

#[test]
fn publishes_before_the_signal_are_delivered_before_the_close() {
    let mut server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=last");
    let mut sse = server.sse_connect("user=last");
    server.wait_connections(2);
    server.admin_conn().publish("user=last", "last words");
    assert_eq!(common::ws_text(&mut ws), "last words");
    assert_eq!(sse.next_text(), "last words");
    server.signal(libc::SIGTERM);
    match ws.read() {
        Ok(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let _ = ws.flush();
    sse.expect_eof();
    expect_stopped(&mut server, Duration::from_secs(10));
}

#[test]
fn listeners_close_on_shutdown() {
    let mut server = Server::start(&["--shutdown-timeout-ms", "1000"]);
    let client = server.client;
    server.signal(libc::SIGTERM);
    expect_stopped(&mut server, Duration::from_millis(1000));
    // Nobody listens any more: connecting fails, or the connection ends without an answer.
    if let Ok(mut s) = std::net::TcpStream::connect_timeout(&client, Duration::from_secs(1)) {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(b"GET /sse HTTP/1.1\r\n\r\n");
        let mut r = BufReader::new(s);
        assert!(common::read_response(&mut r).is_err(), "a stopped server answered");
    }
}
