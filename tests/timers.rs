//! Timers: WebSocket pings and pong timeouts, idle timeouts (WebSocket and admin), the
//! handshake timeout, SSE heartbeats, and the slow-consumer limit.
//!
//! Lower bounds on elapsed time are loose (a timer may fire a little late, never early by
//! more than the wheel's resolution); upper bounds are the harness's read timeouts.

mod common;

use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

use common::{read_response, read_to_eof, ws_text, Server, SseItem, OP_PING};
use tungstenite::Message;

/// The timer wheel's resolution; a timer fires no earlier than its deadline minus this.
const TICK: Duration = Duration::from_millis(100);

#[test]
fn server_pings_websocket_clients() {
    let server = Server::start(&["--ping-interval-ms", "400", "--pong-timeout-ms", "300"]);
    let mut ws = server.ws_connect("/ws?user=p");
    let start = Instant::now();
    // The first ping comes after a random 25-100 % of the interval, then every interval.
    match ws.read().expect("read") {
        Message::Ping(payload) => {
            assert!(start.elapsed() + TICK >= Duration::from_millis(100), "{:?}", start.elapsed());
            assert!(payload.len() <= 125);
        }
        other => panic!("expected a ping first, got {other:?}"),
    }
    ws.flush().unwrap();
    let first = Instant::now();
    match ws.read().expect("read") {
        Message::Ping(_) => {
            assert!(first.elapsed() + TICK >= Duration::from_millis(400), "{:?}", first.elapsed())
        }
        other => panic!("expected a second ping, got {other:?}"),
    }
}

#[test]
fn a_client_that_answers_pings_stays_connected() {
    let server = Server::start(&["--ping-interval-ms", "200", "--pong-timeout-ms", "300"]);
    let mut ws = server.ws_connect("/ws?user=alive");
    // tungstenite answers each ping with a pong on the next read or write.
    let mut pings = 0;
    while pings < 4 {
        match ws.read().expect("read") {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    ws.flush().unwrap();
    server.wait_connections(1);
    server.admin_conn().publish("user=alive", "still here");
    assert_eq!(ws_text(&mut ws), "still here");
}

#[test]
fn a_client_that_never_answers_pings_is_dropped() {
    let server = Server::start(&["--ping-interval-ms", "300", "--pong-timeout-ms", "300"]);
    let mut ws = server.raw_ws("/ws?user=mute");
    let ping = ws.recv().expect("a ping");
    assert_eq!(ping.opcode, OP_PING);
    let pinged = Instant::now();
    // No pong: the server resets TCP (no close handshake with a dead peer, and nothing left
    // in its send queue); the verdict waits for the end of a one-second window.
    ws.expect_eof();
    assert!(
        pinged.elapsed() + TICK >= Duration::from_millis(300),
        "dropped {:?} after the ping, before the pong timeout",
        pinged.elapsed()
    );
    server.wait_connections(0);
    server.wait_metric("c10m_closes_total", &["reason=\"ping_timeout\""], 1.0);
}

#[test]
fn idle_websocket_is_closed_with_1001() {
    let server = Server::start(&["--idle-timeout-ms", "500"]);
    let mut ws = server.ws_connect("/ws?user=idle");
    let start = Instant::now();
    match ws.read() {
        Ok(Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
        }
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert!(start.elapsed() + TICK >= Duration::from_millis(500), "{:?}", start.elapsed());
    // tungstenite replied with its close; the server then ends TCP.
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(m) => panic!("unexpected {m:?} after close"),
        Err(e) => panic!("unexpected error after close: {e}"),
    }
    server.wait_connections(0);
    server.wait_metric("c10m_closes_total", &["reason=\"idle_timeout\""], 1.0);
}

#[test]
fn client_traffic_postpones_the_idle_timeout() {
    let server = Server::start(&["--idle-timeout-ms", "600"]);
    let mut ws = server.raw_ws("/ws?user=chatty");
    let start = Instant::now();
    let mut quiet = start;
    // Talk every 150 ms for well over the idle limit; each message is answered.
    while start.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(150));
        ws.send(common::FIN | OP_PING, b"k");
        quiet = Instant::now();
        let pong = ws.recv().expect("pong, not a close");
        assert_eq!(pong.opcode, common::OP_PONG, "{pong:?}");
    }
    // Then silence: closed with 1001.
    let close = ws.recv().expect("close frame");
    assert_eq!(close.close_code(), Some(1001));
    assert!(quiet.elapsed() + TICK >= Duration::from_millis(600), "{:?}", quiet.elapsed());
}

#[test]
fn idle_admin_connection_is_closed() {
    let server = Server::start(&["--idle-timeout-ms", "400"]);
    let mut silent = server.admin_tcp();
    let start = Instant::now();
    assert!(read_to_eof(&mut silent).is_empty());
    assert!(start.elapsed() + TICK >= Duration::from_millis(400), "{:?}", start.elapsed());
    // One that made a request first is closed after the same silence.
    let mut admin = server.admin_conn();
    assert_eq!(admin.request("GET", "/healthz", b"").status, 200);
    let after = Instant::now();
    assert!(read_to_eof(admin.reader.get_mut()).is_empty());
    assert!(after.elapsed() + TICK >= Duration::from_millis(400), "{:?}", after.elapsed());
}

#[test]
fn handshake_timeout_answers_408_and_closes() {
    let server = Server::start(&["--handshake-timeout-ms", "300"]);
    // Half a head.
    let mut s = server.client_tcp();
    s.write_all(b"GET /ws?user=half HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    let start = Instant::now();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).expect("408");
    assert_eq!(resp.status, 408);
    assert!(start.elapsed() + TICK >= Duration::from_millis(300), "{:?}", start.elapsed());
    assert!(read_to_eof(r.get_mut()).is_empty());
    // Nothing at all.
    let s = server.client_tcp();
    let resp = read_response(&mut BufReader::new(s)).expect("408");
    assert_eq!(resp.status, 408);
    server.wait_metric("c10m_closes_total", &["reason=\"handshake_timeout\""], 2.0);
    common::wait_until("handshake gauge at 0", common::STEP, || {
        (server.stats()["handshake"] == 0).then_some(())
    });
}

#[test]
fn a_completed_handshake_is_not_timed_out() {
    let server = Server::start(&["--handshake-timeout-ms", "200", "--sse-heartbeat-ms", "100"]);
    let mut ws = server.ws_connect("/ws?user=done");
    let mut sse = server.sse_connect("user=done");
    // Outlive the handshake timeout by several heartbeats.
    for _ in 0..5 {
        assert_eq!(sse.next_item().unwrap(), Some(SseItem::Comment("hb".into())));
    }
    server.wait_connections(2);
    server.admin_conn().publish("user=done", "both alive");
    assert_eq!(ws_text(&mut ws), "both alive");
    assert_eq!(sse.next_text(), "both alive");
}

#[test]
fn sse_heartbeats_arrive_and_sse_is_exempt_from_idle_timeout() {
    let server = Server::start(&["--sse-heartbeat-ms", "200", "--idle-timeout-ms", "300"]);
    let mut sse = server.sse_connect("user=hb");
    let start = Instant::now();
    let mut beats = 0;
    while beats < 4 {
        match sse.next_item().expect("read") {
            Some(SseItem::Comment(c)) => {
                assert_eq!(c, "hb");
                beats += 1;
            }
            other => panic!("expected a heartbeat, got {other:?}"),
        }
    }
    // Four beats at 200 ms: the stream outlived the 300 ms idle timeout.
    assert!(start.elapsed() + TICK >= Duration::from_millis(800), "{:?}", start.elapsed());
    server.wait_connections(1);
    server.admin_conn().publish("user=hb", "after beats");
    assert_eq!(sse.next_text(), "after beats");
}

#[test]
fn slow_consumer_is_closed_when_its_outbox_overflows() {
    let server = Server::start(&["--outbox-bytes-max", "131072"]);
    // A WebSocket client that never reads; a small receive buffer makes the kernel's share
    // of the backlog small, so the server's outbox fills.
    let mut ws = server.raw_ws("/ws?user=slow");
    common::set_rcvbuf(&ws.stream, 4096);
    let mut fast = server.ws_connect("/ws?user=fast");
    server.wait_connections(2);
    let payload = vec![b's'; 60_000];
    let mut admin = server.admin_conn();
    let mut published = 0;
    loop {
        admin.publish("user=slow", &payload);
        published += 1;
        let text = server.metrics();
        if common::metric_sum(&text, "c10m_closes_total", &["reason=\"slow_consumer\""]) >= 1.0 {
            break;
        }
        assert!(published < 2000, "no slow-consumer close after {published} publishes");
    }
    server.wait_metric("c10m_messages_dropped_total", &["reason=\"slow_consumer\""], 1.0);
    // The slow client is gone from the counts; the fast one is unaffected.
    server.wait_connections(1);
    admin.publish("user=fast", "unaffected");
    assert_eq!(ws_text(&mut fast), "unaffected");
    // The first queued frame went out whole. (The rest may end mid-frame: a client that
    // does not read is cut off after the close timeout, with a 4 KiB window that takes long
    // to drain, so the test stops here.)
    let first = ws.recv().expect("the first frame");
    assert_eq!((first.opcode, first.payload.len()), (common::OP_TEXT, payload.len()));
}
