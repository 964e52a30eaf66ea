//! Hostile clients against the real server: slow heads and bodies (slowloris), readers that
//! stop reading while publishes flow, a publish flood with memory held to a stated bound,
//! connection floods past `--conns-per-shard-max`, and the malformed-input cases the other
//! suites do not already cover (frame limit apart from message limit, half-closed admin
//! requests).
//!
//! Every wait has a deadline; every thread a client starts ends by a deadline too. Traffic goes
//! to 127.0.0.1 only. See docs/hardening.md for what each test stands for.

mod common;

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    close_payload, metric_sum, read_response, read_to_eof, tcp, wait_until, ws_text, AdminConn,
    Server, FIN, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, STEP,
};

/// The timer wheel's resolution; a timer fires no earlier than its deadline minus this.
const TICK: Duration = Duration::from_millis(100);

/// What a dripping client saw.
#[derive(Debug)]
struct Drip {
    /// Bytes the server sent back.
    got: Vec<u8>,
    /// The server ended the connection (EOF or reset) before the deadline.
    closed: bool,
    /// Time from the first byte written to the end (or the deadline).
    elapsed: Duration,
    /// Bytes of `bytes` written.
    sent: usize,
}

/// Writes `bytes` one at a time, one every `period`, reading whatever comes back in between,
/// until the server ends the connection or `limit` passes. This is slowloris.
fn drip(mut s: TcpStream, bytes: &[u8], period: Duration, limit: Duration) -> Drip {
    s.set_read_timeout(Some(period)).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    loop {
        if sent < bytes.len() && s.write_all(&bytes[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        // Wait one period for an answer: that paces the writes too.
        let until = Instant::now() + period;
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) => return Drip { got, closed: true, elapsed: start.elapsed(), sent },
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Drip { got, closed: true, elapsed: start.elapsed(), sent };
                }
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    break
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("drip read: {e}"),
            }
        }
        if start.elapsed() >= limit {
            return Drip { got, closed: false, elapsed: start.elapsed(), sent };
        }
    }
}

/// Starts `n` dripping clients on threads; each connects with `connect` and drips `bytes`.
fn drip_many(
    n: usize,
    connect: impl Fn() -> TcpStream,
    bytes: &'static [u8],
    period: Duration,
    limit: Duration,
) -> Vec<thread::JoinHandle<Drip>> {
    (0..n)
        .map(|_| {
            let s = connect();
            thread::spawn(move || drip(s, bytes, period, limit))
        })
        .collect()
}

/// One honest WebSocket and one honest SSE client connect as `user` and each get a message
/// published to it. They are the only client connections past their handshake.
fn honest_clients_get_through(server: &Server, user: &str) {
    let mut ws = server.ws_connect(&format!("/ws?user={user}"));
    let mut sse = server.sse_connect(&format!("user={user}"));
    server.wait_connections(2);
    let msg = format!("hello {user}");
    server.admin_conn().publish(&format!("user={user}"), &msg);
    assert_eq!(ws_text(&mut ws), msg);
    assert_eq!(sse.next_text(), msg);
}

// ---- slow heads and bodies ----

#[test]
fn slowloris_heads_on_the_client_port_are_cut_by_the_handshake_timeout() {
    let server = Server::start(&["--handshake-timeout-ms", "1000"]);
    // A head that never ends: a new header byte every 200 ms.
    static HEAD: &[u8] = b"GET /ws?user=slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let client = server.client;
    let started = Instant::now();
    let drips =
        drip_many(40, || tcp(client), HEAD, Duration::from_millis(200), Duration::from_secs(6));
    // While they drip, honest clients get in and get their message.
    honest_clients_get_through(&server, "honest");
    assert!(started.elapsed() < Duration::from_millis(900), "honest clients took too long");
    for d in drips {
        let d = d.join().expect("drip thread");
        assert!(d.closed, "a slowloris head outlived the handshake timeout: {d:?}");
        assert!(d.elapsed + TICK >= Duration::from_millis(1000), "cut early: {d:?}");
        assert!(d.elapsed < Duration::from_millis(2500), "cut late: {d:?}");
        assert!(d.sent >= 4, "the drip never got going: {d:?}");
        let text = common::lossy(&d.got);
        assert!(text.starts_with("HTTP/1.1 408 "), "expected 408, got {text:?}");
    }
    server.wait_metric("c10m_closes_total", &["reason=\"handshake_timeout\""], 40.0);
    wait_until("no connection left in handshake", STEP, || {
        (server.stats()["handshake"] == 0).then_some(())
    });
}

#[test]
fn slow_bodies_on_the_client_port_are_cut_too() {
    // A POST /sse with a dripping body never becomes a stream: the head is complete, so the
    // request is refused (405) at once and the drip does not hold the connection.
    let server = Server::start(&["--handshake-timeout-ms", "1000"]);
    static REQ: &[u8] =
        b"POST /sse?user=b HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\nxxxxxxxxxxxxxx";
    let mut s = server.client_tcp();
    s.write_all(&REQ[..REQ.len() - 14]).unwrap();
    let d = drip(s, &REQ[REQ.len() - 14..], Duration::from_millis(200), Duration::from_secs(4));
    assert!(d.closed, "{d:?}");
    assert!(common::lossy(&d.got).starts_with("HTTP/1.1 405 "), "{:?}", common::lossy(&d.got));
}

#[test]
fn stalled_admin_heads_and_bodies_are_cut_by_the_idle_timeout() {
    let server = Server::start(&["--idle-timeout-ms", "600"]);
    let admin = server.admin;
    // Each client sends a part of a request and then falls silent.
    let parts: [&[u8]; 3] = [
        b"POST /publish?all HTTP/1.1\r\nHost: h\r\n",
        b"POST /publish?all HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc",
        b"POST /publish?all HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ];
    let threads: Vec<_> = parts
        .iter()
        .map(|part| {
            let mut s = tcp(admin);
            let part = part.to_vec();
            thread::spawn(move || {
                s.write_all(&part).unwrap();
                let start = Instant::now();
                let rest = read_to_eof(&mut s);
                (start.elapsed(), rest)
            })
        })
        .collect();
    honest_clients_get_through(&server, "during_stall");
    for t in threads {
        let (elapsed, rest) = t.join().unwrap();
        assert!(elapsed + TICK >= Duration::from_millis(600), "cut early: {elapsed:?}");
        // Nothing half-published is answered or delivered.
        assert!(rest.is_empty(), "{:?}", common::lossy(&rest));
    }
    server.wait_metric("c10m_closes_total", &["reason=\"idle_timeout\""], 3.0);
}

#[test]
fn slowloris_on_the_admin_port_is_cut() {
    // The admin port's only timer is the idle timeout, which every dripped byte resets. A
    // request that is never finished should be cut after a bound (as on the client port,
    // where --handshake-timeout-ms runs from accept), not held as long as bytes trickle in.
    let server = Server::start(&["--idle-timeout-ms", "1000", "--handshake-timeout-ms", "1000"]);
    static HEAD: &[u8] = b"POST /publish?all HTTP/1.1\r\nHost: h\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    static BODY: &[u8] = b"POST /publish?all HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    let admin = server.admin;
    let mut drips =
        drip_many(5, || tcp(admin), HEAD, Duration::from_millis(200), Duration::from_secs(5));
    // Slow bodies: the head at once, then the body a byte every 200 ms.
    for _ in 0..5 {
        let mut s = tcp(admin);
        let head_len = BODY.len() - 100;
        s.write_all(&BODY[..head_len]).unwrap();
        drips.push(thread::spawn(move || {
            drip(s, &BODY[head_len..], Duration::from_millis(200), Duration::from_secs(5))
        }));
    }
    for d in drips {
        let d = d.join().unwrap();
        assert!(d.closed, "a dripping admin request was held for 5 s: {d:?}");
    }
}

// ---- slow readers ----

/// How many messages a reader thread has taken.
type Progress = Arc<AtomicUsize>;

/// Reads `n` messages on a WebSocket in a thread, counting them in `progress`; returns them.
fn ws_reader(mut ws: common::Ws, n: usize, progress: Progress) -> thread::JoinHandle<Vec<String>> {
    thread::spawn(move || {
        (0..n)
            .map(|_| {
                let t = ws_text(&mut ws);
                progress.fetch_add(1, Ordering::Relaxed);
                t
            })
            .collect()
    })
}

fn sse_reader(
    mut sse: common::Sse,
    n: usize,
    progress: Progress,
) -> thread::JoinHandle<Vec<String>> {
    thread::spawn(move || {
        (0..n)
            .map(|_| {
                let t = sse.next_text();
                progress.fetch_add(1, Ordering::Relaxed);
                t
            })
            .collect()
    })
}

/// Waits until every reader has taken at least `n` messages. A publisher that runs ahead of
/// its readers by more than their outbox would make them slow consumers too; this keeps the
/// flood at the pace of the readers that read, and lets the non-readers fall behind.
fn wait_readers(readers: &[Progress], n: usize) {
    let deadline = Instant::now() + STEP;
    while readers.iter().any(|p| p.load(Ordering::Relaxed) < n) {
        assert!(Instant::now() < deadline, "readers stuck below {n} messages");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn slow_websocket_and_sse_readers_are_cut_while_fast_ones_get_every_message() {
    // The close timeout leaves the slow reader time to drain its socket (4 KiB window) after
    // publishing, so it can find the close frame behind the frames the kernel holds.
    let server = Server::start(&["--outbox-bytes-max", "131072", "--close-timeout-ms", "30000"]);
    // Two that never read, with small receive windows, and two that read everything; all
    // four subscribe to the same topic when they connect.
    let mut slow_ws = server.raw_ws("/ws?user=slow_ws&topics=feed");
    common::set_rcvbuf(&slow_ws.stream, 4096);
    let mut slow_sse = server.sse_connect("user=slow_sse&topics=feed");
    common::set_rcvbuf(slow_sse.reader.get_ref(), 4096);
    let fast_ws = server.ws_connect("/ws?user=fast_ws&topics=feed");
    let fast_sse = server.sse_connect("user=fast_sse&topics=feed");
    server.wait_connections(4);

    // Publish to the topic until both slow readers are cut, and then some more. Each fast
    // reader must see every message, in order.
    let payload_len = 16_000;
    let mut admin = server.admin_conn();
    let mut published = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // The fast readers read concurrently, or they too would become slow consumers.
    let total = 600;
    let progress: Vec<Progress> = (0..2).map(|_| Progress::default()).collect();
    let fast_ws = ws_reader(fast_ws, total, Arc::clone(&progress[0]));
    let fast_sse = sse_reader(fast_sse, total, Arc::clone(&progress[1]));
    // At most 4 messages (64 KB) ahead of the fast readers: half their outbox.
    const LAG: usize = 4;
    for i in 0..total {
        wait_readers(&progress, i.saturating_sub(LAG));
        let mut body = format!("{i:06}:").into_bytes();
        body.resize(payload_len, b'.');
        admin.publish("topic=feed", &body);
        published.push(String::from_utf8(body).unwrap());
        assert!(Instant::now() < deadline, "publishing took over 20 s");
    }
    let text = server.metrics();
    let cut = metric_sum(&text, "c10m_closes_total", &["reason=\"slow_consumer\""]);
    assert_eq!(cut, 2.0, "both slow readers are cut as slow consumers");
    let got_ws = fast_ws.join().expect("fast WebSocket reader");
    let got_sse = fast_sse.join().expect("fast SSE reader");
    assert!(got_ws == published, "the fast WebSocket reader missed or reordered messages");
    assert!(got_sse == published, "the fast SSE reader missed or reordered messages");
    // The fast readers hung up when their threads ended; the slow ones were cut.
    server.wait_connections(0);

    // The slow WebSocket, reading at last, finds whole frames of the feed, then close 1008.
    let mut frames = 0;
    loop {
        let f = slow_ws.recv().expect("a frame before EOF");
        if f.opcode == OP_CLOSE {
            assert_eq!(f.close_code(), Some(1008), "{:?}", common::lossy(&f.payload));
            break;
        }
        assert_eq!((f.opcode, f.payload.len()), (OP_TEXT, payload_len));
        assert_eq!(f.payload[..7], published[frames].as_bytes()[..7]);
        frames += 1;
    }
    slow_ws.send(FIN | OP_CLOSE, &close_payload(1000, ""));
    slow_ws.expect_eof();
    assert!(frames < total, "the slow reader got all {total} messages: it was not slow");
    // The slow SSE stream is ended; what arrived is a prefix of the feed.
    let mut raw = Vec::new();
    let _ = slow_sse.reader.read_to_end(&mut raw);
    let text = common::lossy(&raw);
    let events = text.matches("data: ").count();
    assert!(events < total, "the slow SSE reader got every message");
    server.wait_metric("c10m_messages_dropped_total", &["reason=\"slow_consumer\""], 2.0);
}

// ---- publish flood ----

/// Server RSS from /stats through an admin connection held open (so it works at the cap).
fn rss(admin: &mut AdminConn) -> u64 {
    let r = admin.request("GET", "/stats", b"");
    assert_eq!(r.status, 200);
    r.json()["rss_bytes"].as_u64().expect("rss_bytes")
}

#[test]
fn a_broadcast_flood_with_non_readers_keeps_rss_under_its_bound() {
    const NON_READERS: u64 = 64;
    const READERS: usize = 4;
    const OUTBOX: u64 = 256 * 1024;
    const MSG: usize = 60_000;
    const PUBLISHES: usize = 200;
    // The bound: what the server held before, plus a full outbox for every non-reader (they
    // are cut once theirs passes the limit; shared broadcast frames make the real figure far
    // smaller), plus 32 MiB for allocator slack, receive buffers and the readers' queues.
    const MARGIN: u64 = 32 << 20;
    let server =
        Server::start(&["--outbox-bytes-max", &OUTBOX.to_string(), "--close-timeout-ms", "500"]);
    let mut admin = server.admin_conn();
    let non_readers: Vec<_> = (0..NON_READERS)
        .map(|i| {
            let ws = server.raw_ws(&format!("/ws?user=nr{i}"));
            common::set_rcvbuf(&ws.stream, 4096);
            ws
        })
        .collect();
    let readers: Vec<_> =
        (0..READERS).map(|i| server.ws_connect(&format!("/ws?user=r{i}"))).collect();
    server.wait_connections(NON_READERS + READERS as u64);
    let baseline = rss(&mut admin);
    let bound = baseline + NON_READERS * OUTBOX + MARGIN;

    let progress: Vec<Progress> = (0..READERS).map(|_| Progress::default()).collect();
    let readers: Vec<_> = readers
        .into_iter()
        .zip(&progress)
        .map(|(ws, p)| ws_reader(ws, PUBLISHES, Arc::clone(p)))
        .collect();
    // Sample RSS while the flood runs, on an admin connection of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let mut conn = server.admin_conn();
        thread::spawn(move || {
            let mut peak = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                peak = peak.max(rss(&mut conn));
                thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let body = vec![b'f'; MSG];
    let start = Instant::now();
    for i in 0..PUBLISHES {
        // The readers may lag two messages (120 KB, under half their outbox).
        wait_readers(&progress, i.saturating_sub(2));
        admin.publish("all", &body);
        assert!(start.elapsed() < Duration::from_secs(60), "flood took over 60 s");
    }
    for r in readers {
        let got = r.join().expect("reader");
        assert_eq!(got.len(), PUBLISHES);
        assert!(got.iter().all(|m| m.len() == MSG));
    }
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap().max(rss(&mut admin));
    let text = server.metrics();
    let cut = metric_sum(&text, "c10m_closes_total", &["reason=\"slow_consumer\""]);
    eprintln!(
        "flood: {NON_READERS} non-readers, {READERS} readers, {PUBLISHES} × {MSG} B broadcasts \
         in {:?}; rss baseline {} KiB, peak {} KiB, bound {} KiB; slow-consumer closes {cut}",
        start.elapsed(),
        baseline >> 10,
        peak >> 10,
        bound >> 10
    );
    assert!(peak <= bound, "RSS peak {peak} over the bound {bound}");
    assert_eq!(cut, NON_READERS as f64, "every non-reader is cut as a slow consumer");
    drop(non_readers);
    server.wait_connections(0);
}

// ---- connection floods ----

/// A connection that gets the 503 refusal: status line, then EOF, without sending anything.
fn expect_refused(server: &Server, admin: &mut AdminConn) {
    let mut s = server.client_tcp();
    let got = read_to_eof(&mut s);
    let text = common::lossy(&got);
    if !text.starts_with("HTTP/1.1 503 ") {
        let stats = admin.request("GET", "/stats", b"").text();
        let metrics = admin.request("GET", "/metrics", b"").text();
        panic!("expected 503 then close, got {text:?}; stats {stats}\n{metrics}");
    }
}

#[test]
fn a_connection_flood_past_the_cap_gets_503_and_existing_clients_are_unaffected() {
    const CAP: u64 = 24;
    let server = Server::start(&["--shards", "1", "--conns-per-shard-max", &CAP.to_string()]);
    // The admin connection counts against the same cap: open it before the flood.
    let mut admin = server.admin_conn();
    let mut clients: Vec<_> =
        (0..CAP - 1).map(|i| server.ws_connect(&format!("/ws?user=c{i}"))).collect();
    let s = admin.request("GET", "/stats", b"").json();
    assert_eq!(s["connections"], CAP - 1);
    // A flood of new connections, more than the 64-slot refusal reserve, all at once.
    let flood = 150;
    let client = server.client;
    let threads: Vec<_> = (0..flood)
        .map(|_| {
            thread::spawn(move || {
                let mut s = tcp(client);
                common::lossy(&read_to_eof(&mut s))
            })
        })
        .collect();
    for t in threads {
        let text = t.join().unwrap();
        assert!(text.starts_with("HTTP/1.1 503 "), "expected 503 then close, got {text:?}");
    }
    // A WebSocket handshake is refused the same way.
    assert!(server.try_ws_connect("/ws?user=late").is_err());
    let text = admin.request("GET", "/metrics", b"").text();
    assert_eq!(metric_sum(&text, "c10m_accepts_refused_total", &[]), (flood + 1) as f64);
    // Existing clients are unaffected and still get publishes.
    admin.publish("all", "still here");
    for ws in clients.iter_mut() {
        assert_eq!(ws_text(ws), "still here");
    }
    // After some leave, new ones get in again, and the next one past the cap is refused.
    for mut ws in clients.drain(..5) {
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    }
    wait_until("5 clients gone", STEP, || {
        let s = admin.request("GET", "/stats", b"").json();
        (s["connections"] == CAP - 6).then_some(())
    });
    let mut fresh: Vec<_> =
        (0..5).map(|i| server.ws_connect(&format!("/ws?user=again{i}"))).collect();
    expect_refused(&server, &mut admin);
    admin.publish("all", "after the flood");
    for ws in clients.iter_mut().chain(fresh.iter_mut()) {
        assert_eq!(ws_text(ws), "after the flood");
    }
}

// ---- malformed input not covered elsewhere ----

#[test]
fn frame_limit_applies_to_each_data_frame_not_to_the_message() {
    let server =
        Server::start(&["--echo", "--frame-bytes-max", "1000", "--message-bytes-max", "5000"]);
    // Five frames of 1000 bytes make one 5000-byte message: echoed whole.
    let mut ws = server.raw_ws("/echo");
    let part = [b'p'; 1000];
    ws.send(OP_BINARY, &part);
    for _ in 0..3 {
        ws.send(OP_CONT, &part);
    }
    ws.send(FIN | OP_CONT, &part);
    let mut echoed = Vec::new();
    while echoed.len() < 5000 {
        let f = ws.recv_skip_pings().expect("echo");
        // The echo's opcode is checked in binary_messages_are_echoed_as_binary.
        assert!(f.opcode != OP_CLOSE, "closed: {:?}", f.close_code());
        echoed.extend_from_slice(&f.payload);
    }
    assert_eq!(echoed, vec![b'p'; 5000]);
    // Control frames are not data frames: a 125-byte ping with a 10-byte frame limit is fine.
    let server = Server::start(&["--echo", "--frame-bytes-max", "10"]);
    let mut ws = server.raw_ws("/echo");
    ws.send(FIN | OP_PING, &[b'k'; 125]);
    let pong = ws.recv().expect("pong");
    assert_eq!((pong.opcode, pong.payload.len()), (OP_PONG, 125));
    // One data frame of 11 bytes is over the limit: 1009.
    ws.send(FIN | OP_TEXT, b"0123456789a");
    ws.expect_close(1009);
}

#[test]
fn a_frame_header_announcing_16_eib_is_refused_without_waiting_for_it() {
    let server = Server::start(&["--echo"]);
    let mut ws = server.raw_ws("/echo");
    // 127 length with the top bit clear: 2^63 - 1 bytes announced, none sent.
    let mut bytes = vec![FIN | OP_BINARY, 0x80 | 127];
    bytes.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    ws.send_bytes(&bytes);
    ws.expect_close(1009);
}

#[test]
fn a_half_closed_admin_request_still_gets_its_response() {
    let server = Server::start(&[]);
    let mut ws = server.ws_connect("/ws?user=hc");
    server.wait_connections(1);
    let mut s = server.admin_tcp();
    s.write_all(b"POST /publish?user=hc HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nhalf")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).expect("a response after the half-close");
    assert_eq!(resp.status, 202, "{}", resp.text());
    assert!(read_to_eof(r.get_mut()).is_empty());
    assert_eq!(ws_text(&mut ws), "half");
    // A GET too.
    let mut s = server.admin_tcp();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let resp = read_response(&mut BufReader::new(s)).expect("a response");
    assert_eq!(resp.status, 200);
}

#[test]
fn pipelined_requests_then_a_half_close_get_every_response() {
    let server = Server::start(&[]);
    let mut s = server.admin_tcp();
    let n = 40;
    let mut reqs = Vec::new();
    for i in 0..n {
        let body = format!("m{i}");
        reqs.extend_from_slice(
            format!(
                "POST /publish?topic=none HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    reqs.extend_from_slice(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n");
    s.write_all(&reqs).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut r = BufReader::new(s);
    for i in 0..n {
        let resp = read_response(&mut r)
            .unwrap_or_else(|e| panic!("response {i} of {n} after a half-close: {e}"));
        assert_eq!(resp.status, 202);
    }
    let resp = read_response(&mut r).expect("the /metrics response");
    assert_eq!(resp.status, 200);
}

#[test]
fn a_half_closed_websocket_handshake_is_not_upgraded_into_a_dead_connection() {
    // Handshake then FIN at once: the server may answer 101, but must not keep the connection.
    let server = Server::start(&[]);
    let mut s = server.client_tcp();
    s.write_all(
        b"GET /ws?user=hh HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let _ = read_to_eof(&mut s);
    server.wait_connections(0);
    wait_until("handshake gauge at 0", STEP, || (server.stats()["handshake"] == 0).then_some(()));
}

#[test]
fn binary_messages_are_echoed_as_binary() {
    let server = Server::start(&["--echo"]);
    let mut ws = server.raw_ws("/echo");
    ws.send(FIN | OP_BINARY, b"plain ascii in a binary frame");
    let f = ws.recv_skip_pings().expect("echo");
    assert_eq!(f.payload, b"plain ascii in a binary frame");
    assert_eq!(f.opcode, OP_BINARY, "a binary message was echoed with opcode {}", f.opcode);
    // Fragmented too.
    ws.send(OP_BINARY, b"two ");
    ws.send(FIN | OP_CONT, b"parts");
    let f = ws.recv_skip_pings().expect("echo");
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_BINARY, &b"two parts"[..]));
}
