//! Liveness under the server's own trouble: a client is judged by what it does, never by
//! time the server spent elsewhere (a backlog it is draining, a stopped process), forced
//! closes free their kernel send queue, and the mass-timeout guard engages when too many
//! clients seem to die at once while real dead peers are still closed within a bound.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{metric_sum, parse_server_frame, wait_until, Server, FIN, OP_PING, OP_PONG, OP_TEXT};

fn metric(server: &Server, name: &str, labels: &[&str]) -> f64 {
    metric_sum(&server.metrics(), name, labels)
}

/// Reads a WebSocket stream at about `bytes_per_s`, answering every ping, until `want` text
/// frames arrived. Returns the number of pings answered.
fn drain_slowly(stream: &mut TcpStream, bytes_per_s: usize, want: usize) -> (usize, usize) {
    let mut buf = Vec::new();
    let (mut texts, mut pings) = (0, 0);
    let chunk_bytes = bytes_per_s / 10;
    let started = Instant::now();
    let mut read_total = 0usize;
    while texts < want {
        assert!(started.elapsed() < Duration::from_secs(60), "draining took over 60 s");
        // Stay on the schedule: read one chunk per tenth of a second.
        let due = Duration::from_millis((read_total / chunk_bytes) as u64 * 100);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut chunk = vec![0u8; chunk_bytes];
        let n = match stream.read(&mut chunk) {
            Ok(0) => panic!("closed after {texts} messages and {pings} pings"),
            Ok(n) => n,
            Err(e) => panic!("closed after {texts} messages and {pings} pings: {e}"),
        };
        read_total += n;
        buf.extend_from_slice(&chunk[..n]);
        while let Some((frame, used)) = parse_server_frame(&buf) {
            buf.drain(..used);
            match frame.opcode {
                OP_TEXT => texts += 1,
                OP_PING => {
                    pings += 1;
                    let pong = common::client_frame(FIN | OP_PONG, &frame.payload, true);
                    stream.write_all(&pong).expect("pong");
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }
    (texts, pings)
}

#[test]
fn a_client_draining_a_backlog_slowly_is_kept_and_a_silent_one_is_not() {
    // Pings every 2 s, 3 s for the pong: a 600 KB backlog read at 40 KB/s takes 15 s, so a
    // pong deadline that ran from the ping's queueing would close the reader several times.
    let server = Server::start(&[
        "--shards",
        "1",
        "--ping-interval-ms",
        "2000",
        "--pong-timeout-ms",
        "3000",
        "--idle-timeout-ms",
        "0",
    ]);
    let mut reader = server.raw_ws("/ws?user=reader");
    let mut silent = server.raw_ws("/ws?user=silent");
    for s in [&reader.stream, &silent.stream] {
        common::set_rcvbuf(s, 16 * 1024);
    }
    server.wait_connections(2);
    let messages = 60;
    let payload = vec![b'x'; 10_000];
    let mut admin = server.admin_conn();
    for _ in 0..messages {
        admin.publish("user=reader", &payload);
        admin.publish("user=silent", &payload);
    }
    let started = Instant::now();
    let (texts, pings) = drain_slowly(&mut reader.stream, 40_000, messages);
    let took = started.elapsed();
    assert_eq!(texts, messages);
    assert!(pings >= 1, "no ping reached the reader in {took:?}");
    assert!(took > Duration::from_secs(8), "the backlog drained in {took:?}: not slow");
    // The reader is still connected and gets what comes next.
    admin.publish("user=reader", "after the backlog");
    reader.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let next = reader.recv_skip_pings().expect("a frame after the backlog");
    assert_eq!(common::lossy(&next.payload), "after the backlog");
    // The silent client, with the same settings and the same backlog, was closed for it.
    assert_eq!(metric(&server, "c10m_closes_total", &["reason=\"ping_timeout\""]), 1.0);
    assert_eq!(server.stats()["ws"], 1);
    silent.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while silent.recv().is_some() {}
}

/// Live clients in a thread each: read everything, answer pings at once.
struct LiveClients {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
    pings: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl LiveClients {
    fn open(server: &Server, n: usize) -> LiveClients {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let pings = Arc::new(AtomicUsize::new(0));
        let threads = (0..n)
            .map(|i| {
                let mut ws = server.ws_connect(&format!("/ws?user=live{i}"));
                ws.get_mut().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
                let pinged = Arc::clone(&pings);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match ws.read() {
                            Ok(tungstenite::Message::Ping(_)) => {
                                ws.flush().map_err(|e| format!("pong: {e}"))?;
                                pinged.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(tungstenite::Message::Text(_)) => {
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(other) => return Err(format!("client {i} got {other:?}")),
                            Err(tungstenite::Error::Io(e))
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(e) => return Err(format!("client {i}: {e}")),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        LiveClients { stop, received, pings, threads }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client thread").expect("a live client was disconnected");
        }
    }
}

#[test]
fn a_stopped_server_blames_no_live_client_for_its_stop() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--ping-interval-ms",
        "500",
        "--pong-timeout-ms",
        "500",
        "--idle-timeout-ms",
        "1500",
    ]);
    let clients = LiveClients::open(&server, 20);
    server.wait_connections(20);
    // Two rounds of pings first, so pong deadlines are running when the process stops.
    let pings = Arc::clone(&clients.pings);
    wait_until("pings answered", Duration::from_secs(10), || {
        (pings.load(Ordering::Relaxed) >= 40).then_some(())
    });
    server.signal(libc::SIGSTOP);
    // Longer than the pong timeout, the ping interval and the idle timeout together.
    std::thread::sleep(Duration::from_millis(3000));
    server.signal(libc::SIGCONT);
    // Long enough afterwards for every deadline the stop could have spoiled to come due.
    std::thread::sleep(Duration::from_millis(2500));
    for reason in ["ping_timeout", "idle_timeout"] {
        let label = format!("reason=\"{reason}\"");
        assert_eq!(metric(&server, "c10m_closes_total", &[&label]), 0.0, "{reason} closes");
    }
    let uncredited = metric(&server, "c10m_liveness_uncredited_ms_total", &[]);
    assert!(uncredited >= 2000.0, "the stop was not seen: {uncredited} ms uncredited");
    assert_eq!(server.stats()["ws"], 20);
    server.publish("all", "still here");
    let received = Arc::clone(&clients.received);
    wait_until("the broadcast", Duration::from_secs(5), || {
        (received.load(Ordering::Relaxed) == 20).then_some(())
    });
    clients.finish();
}

/// The server side's send queue (`tx_queue`) for each connection from `client_ports` to
/// `server_port`, from /proc/net/tcp: None for a connection the server no longer holds.
fn server_send_queue(server_port: u16, client_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state, queues) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(4)?);
        if port(local)? != server_port || port(remote)? != client_port {
            return None;
        }
        // State 0A is a listener; every other row is the accepted connection.
        (*state != "0A").then(|| u64::from_str_radix(queues.split(':').next()?, 16).ok())?
    })
}

#[test]
fn a_slow_consumer_is_reset_and_leaves_no_send_queue_behind() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--outbox-bytes-max",
        "131072",
        "--close-timeout-ms",
        "500",
    ]);
    let ws = server.raw_ws("/ws?user=stuck");
    common::set_rcvbuf(&ws.stream, 4096);
    let client_port = ws.stream.local_addr().unwrap().port();
    server.wait_connections(1);
    let mut admin = server.admin_conn();
    let payload = vec![b's'; 60_000];
    let mut published = 0;
    let mut queued_seen = 0;
    while metric(&server, "c10m_closes_total", &["reason=\"slow_consumer\""]) < 1.0 {
        admin.publish("user=stuck", &payload);
        published += 1;
        queued_seen =
            queued_seen.max(server_send_queue(server.client.port(), client_port).unwrap_or(0));
        assert!(published < 2000, "no slow-consumer close after {published} publishes");
    }
    assert!(queued_seen > 0, "the server's send queue never filled");
    // The 1008 close frame cannot reach a client that does not read; after close_timeout_ms
    // the connection is reset and the kernel holds nothing more for it.
    wait_until("the server's socket to go", Duration::from_secs(5), || {
        server_send_queue(server.client.port(), client_port).is_none().then_some(())
    });
    assert!(metric(&server, "c10m_closes_reset_total", &[]) >= 1.0);
}

#[test]
fn the_mass_timeout_guard_postpones_a_wave_and_dead_peers_still_close_in_bound() {
    // 20 clients that never answer and one that does. With 2 s pings the shard expects about
    // 10 pongs a second, so 20 failures in a window or two are a mass timeout.
    let (ping_ms, pong_ms) = (2000u64, 1000u64);
    let server = Server::start(&[
        "--shards",
        "1",
        "--ping-interval-ms",
        &ping_ms.to_string(),
        "--pong-timeout-ms",
        &pong_ms.to_string(),
        "--mass-timeout-min",
        "5",
    ]);
    let live = LiveClients::open(&server, 1);
    let started = Instant::now();
    let mut dead: Vec<_> = (0..20).map(|i| server.raw_ws(&format!("/ws?user=dead{i}"))).collect();
    server.wait_connections(21);
    server.wait_metric("c10m_mass_timeout_guards_total", &[], 1.0);
    // Jitter spreads the verdicts over two or three windows; the one that engaged the guard
    // held at least the threshold (6 here), and all of those were postponed.
    assert!(metric(&server, "c10m_liveness_postponed_total", &[]) >= 6.0);
    // Logged once, right after the counter moved.
    wait_until("the guard's log line", Duration::from_secs(5), || {
        server.stderr().contains("postponing them").then_some(())
    });
    // Bound on a dead peer (see src/shard/liveness.rs): ping + 4 pong timeouts + 2 windows,
    // plus timer rounding.
    let bound = Duration::from_millis(ping_ms + 4 * pong_ms + 2 * 1000 + 1000);
    wait_until("the dead peers to be closed", bound.saturating_sub(started.elapsed()), || {
        (metric(&server, "c10m_closes_total", &["reason=\"ping_timeout\""]) == 20.0).then_some(())
    });
    for ws in &mut dead {
        ws.stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        while ws.recv().is_some() {}
    }
    assert_eq!(server.stats()["ws"], 1, "the live client stays");
    assert_eq!(metric(&server, "c10m_mass_timeout_guards_total", &[]), 1.0, "engaged once");
    live.finish();
}
