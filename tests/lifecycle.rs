//! The lifecycle controller against the real server: a paced drain sends every connection a
//! goaway at the configured rate, lifetimes end in goaways, admission refuses with 503 past
//! the memory budget while open connections keep working, and a user's connection cap.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{wait_until, Server};

/// Opens a WebSocket by hand and returns the stream positioned after the 101 head.
fn raw_ws(server: &Server, query: &str) -> TcpStream {
    let mut s = server.client_tcp();
    write!(
        s,
        "GET /ws?{query} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("handshake head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", common::lossy(&head));
    s
}

/// A server close frame at the start of `buf`: (code, reason), or None if incomplete.
fn close_frame(buf: &[u8]) -> Option<(u16, String)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[0], 0x88, "expected only a close frame, got {buf:?}");
    let len = (buf[1] & 0x7f) as usize;
    if buf.len() < 2 + len || len < 2 {
        return None;
    }
    let code = u16::from_be_bytes([buf[2], buf[3]]);
    Some((code, common::lossy(&buf[4..2 + len])))
}

#[test]
fn a_paced_drain_sends_every_connection_a_goaway_at_the_rate() {
    const CONNS: usize = 1_000;
    const RATE: u32 = 250; // so the drain takes about 4 s
    let mut server = Server::start(&[]);
    let mut socks: Vec<TcpStream> =
        (0..CONNS).map(|i| raw_ws(&server, &format!("user=d{i}"))).collect();
    server.wait_connections(CONNS as u64);
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    let mut admin = server.admin_conn();
    let started = Instant::now();
    let r = admin.request("POST", &format!("/drain?rate={RATE}"), "");
    assert_eq!(r.status, 202);
    // The admin API stays up during the drain.
    assert_eq!(admin.request("GET", "/healthz", "").status, 503, "not healthy while draining");
    let mut bufs = vec![Vec::new(); CONNS];
    let mut done: Vec<Option<(Duration, u16, String)>> = vec![None; CONNS];
    let deadline = started + Duration::from_secs(30);
    let mut chunk = [0u8; 512];
    while done.iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "drain did not finish");
        let mut progress = false;
        for (i, s) in socks.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            match s.read(&mut chunk) {
                Ok(0) => panic!("connection {i} closed without a goaway"),
                Ok(n) => {
                    bufs[i].extend_from_slice(&chunk[..n]);
                    if let Some((code, reason)) = close_frame(&bufs[i]) {
                        done[i] = Some((started.elapsed(), code, reason));
                    }
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("connection {i}: {e}"),
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let mut times: Vec<Duration> = Vec::new();
    for (code, reason) in done.iter().flatten().map(|(t, c, r)| {
        times.push(*t);
        (c, r)
    }) {
        assert_eq!(*code, 1001);
        let goaway: serde_json::Value = serde_json::from_str(reason).expect("JSON reason");
        assert_eq!(goaway["goaway"], true);
        let after = goaway["reconnect_after_ms"].as_u64().unwrap();
        assert!(after <= 5_000, "reconnect_after_ms {after} is within the configured bound");
    }
    times.sort();
    let last = *times.last().unwrap();
    let expected = Duration::from_secs_f64(CONNS as f64 / RATE as f64);
    // Paced, not all at once: the last goaway comes near CONNS / RATE seconds, and the
    // first half is out well before the end.
    assert!(last >= expected.mul_f64(0.6), "drained in {last:?}, expected about {expected:?}");
    assert!(last <= expected.mul_f64(2.0) + Duration::from_secs(1), "drained in {last:?}");
    assert!(times[CONNS / 2] <= last.mul_f64(0.75), "half by {:?} of {last:?}", times[CONNS / 2]);
    // Every connection gone, the process exits by itself.
    let status = server.wait_exit(Duration::from_secs(15)).expect("exit after the drain");
    assert!(status.success());
}

#[test]
fn lifetimes_end_in_goaways_spread_by_jitter() {
    let server =
        Server::start(&["--conn-lifetime-ms-max", "1500", "--conn-lifetime-jitter-pct", "50"]);
    let mut socks: Vec<TcpStream> =
        (0..20).map(|i| raw_ws(&server, &format!("user=l{i}"))).collect();
    let opened = Instant::now();
    let mut ends = Vec::new();
    for s in &mut socks {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        let (code, reason) = loop {
            let n = s.read(&mut chunk).expect("a goaway before the read timeout");
            assert!(n > 0, "closed without a goaway");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(f) = close_frame(&buf) {
                break f;
            }
        };
        ends.push(opened.elapsed());
        assert_eq!(code, 1001);
        assert!(reason.contains("reconnect_after_ms"), "{reason}");
    }
    // Lifetimes are drawn from [750 ms, 1500 ms]; none ends before its shortest bound.
    assert!(ends.iter().all(|t| *t >= Duration::from_millis(700)), "{ends:?}");
    server.wait_metric("c10m_closes_total", &["reason=\"lifetime\""], 20.0);
}

#[test]
fn memory_admission_refuses_with_503_and_spares_open_connections() {
    // A probe with the same flags tells this build's idle RSS; the budget leaves room for
    // about 200 connections above it.
    let probe = Server::start(&["--shards", "1"]);
    let rss = probe.stats()["rss_bytes"].as_u64().unwrap();
    drop(probe);
    let budget = (rss + 200 * (4_300 + 256)).to_string();
    let server = Server::start(&["--shards", "1", "--memory-bytes-max", &budget]);
    let mut open = Vec::new();
    let mut refused = None;
    for i in 0..3_000 {
        let mut s = server.client_tcp();
        // A refused connection is answered and closed at accept, maybe before the request
        // arrives: the write may then fail (EPIPE), and the answer is still there to read.
        let _ = write!(
            s,
            "GET /ws?user=m{i} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut head = [0u8; 12];
        s.read_exact(&mut head).expect("a status line");
        if &head == b"HTTP/1.1 503" {
            let rest = common::lossy(&common::read_to_eof(&mut s));
            assert!(rest.contains("Retry-After"), "{rest}");
            refused = Some(i);
            break;
        }
        assert_eq!(&head, b"HTTP/1.1 101");
        let mut tail = [0u8; 1];
        let mut seen = Vec::new();
        while !seen.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut tail).unwrap();
            seen.push(tail[0]);
        }
        open.push(s);
    }
    let refused_at = refused.expect("a connection past the budget is refused");
    assert!(refused_at > 0, "the budget admitted some connections first");
    // The ones already open keep working.
    assert_eq!(server.publish("all", "still here").0, 202);
    for s in open.iter_mut().take(10) {
        let mut frame = [0u8; 12];
        s.read_exact(&mut frame).unwrap();
        assert_eq!(&frame[2..], b"still here");
    }
    server.wait_metric("c10m_accepts_refused_memory_total", &[], 1.0);
}

#[test]
fn a_user_over_the_connection_cap_loses_the_newest() {
    let server = Server::start(&["--conns-per-user-max", "2"]);
    let mut a = server.ws_connect("/ws?user=capped");
    let _b = server.ws_connect("/ws?user=capped");
    server.wait_connections(2);
    let mut c = raw_ws(&server, "user=capped");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 128];
    let (code, reason) = wait_until("the eviction", Duration::from_secs(5), || {
        let n = c.read(&mut chunk).ok()?;
        buf.extend_from_slice(&chunk[..n]);
        close_frame(&buf)
    });
    assert_eq!(code, 1008);
    assert!(reason.contains("too many connections"), "{reason}");
    // The first two still get the user's messages.
    assert_eq!(server.publish("user=capped", "kept").0, 202);
    assert_eq!(common::ws_text(&mut a), "kept");
}

#[test]
fn a_drain_at_rate_zero_answers_then_closes_everything_at_once() {
    let mut server = Server::start(&[]);
    let mut socks: Vec<TcpStream> =
        (0..50).map(|i| raw_ws(&server, &format!("user=z{i}"))).collect();
    let mut sse = server.sse_connect("user=zs");
    server.wait_connections(51);
    let mut admin = server.admin_conn();
    let r = admin.request("POST", "/drain?rate=0", "");
    assert_eq!(r.status, 202, "the answer comes before the admin connection closes");
    for s in &mut socks {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        let (code, reason) = loop {
            let n = s.read(&mut chunk).expect("a goaway");
            assert!(n > 0, "closed without a goaway");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(f) = close_frame(&buf) {
                break f;
            }
        };
        assert_eq!(code, 1001);
        assert!(reason.contains("\"goaway\":true"), "{reason}");
    }
    sse.expect_eof();
    let status = server.wait_exit(Duration::from_secs(10)).expect("exit after the drain");
    assert!(status.success());
}

/// Sends a WebSocket upgrade from a socket bound to `source` and returns the status code and
/// the stream (positioned after the head).
fn upgrade_from(server: &Server, source: [u8; 4], user: &str) -> (u16, TcpStream) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from((source, 0)).into()).unwrap();
    sock.connect(&server.client.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(common::STEP)).unwrap();
    // A refused connection is answered and closed at accept, maybe before this arrives:
    // the write may then fail, and the answer is still there to read.
    let _ = write!(
        s,
        "GET /ws?user={user} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("a response head");
        head.push(byte[0]);
    }
    let text = common::lossy(&head);
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    if code == 429 {
        assert!(text.contains("Retry-After: 1"), "{text}");
    }
    (code, s)
}

#[test]
fn a_source_over_its_connect_rate_gets_429_and_other_sources_are_spared() {
    // 2 new connections a second per source (1 per shard): a burst of 30 from one address
    // mostly gets 429, while another address is still admitted.
    let server = Server::start(&["--accept-rate-per-source-per-s-max", "2"]);
    let mut open = Vec::new();
    let mut refused = 0;
    for i in 0..30 {
        match upgrade_from(&server, [127, 0, 0, 1], &format!("s{i}")) {
            (101, s) => open.push(s),
            (429, _) => refused += 1,
            (code, _) => panic!("unexpected status {code}"),
        }
    }
    assert!(refused >= 1 && !open.is_empty(), "admitted {}, refused {refused}", open.len());
    let (code, mut other) = upgrade_from(&server, [127, 0, 0, 2], "other");
    assert_eq!(code, 101, "a different source address has its own budget");
    // Admitted connections work; the counter matches what clients saw.
    assert_eq!(server.publish("all", "hello").0, 202);
    for s in open.iter_mut().chain(std::iter::once(&mut other)) {
        let mut frame = [0u8; 7];
        s.read_exact(&mut frame).unwrap();
        assert_eq!(&frame[2..], b"hello");
    }
    let counted = server.wait_metric("c10m_accepts_refused_source_total", &[], refused as f64);
    assert_eq!(counted, refused as f64);
}

#[test]
fn the_global_connect_rate_refuses_with_503() {
    let server = Server::start(&["--accept-rate-per-s-max", "2"]);
    let mut admitted = 0;
    let mut refused = 0;
    for i in 0..30 {
        match upgrade_from(&server, [127, 0, 0, 1], &format!("g{i}")) {
            (101, _) => admitted += 1,
            (503, _) => refused += 1,
            (code, _) => panic!("unexpected status {code}"),
        }
    }
    assert!(refused >= 1 && admitted >= 1, "admitted {admitted}, refused {refused}");
    let counted = server.wait_metric("c10m_accepts_refused_rate_total", &[], refused as f64);
    assert_eq!(counted, refused as f64);
}
