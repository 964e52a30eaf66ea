//! Live upgrade: a second `c10m serve --takeover PATH` takes over the listeners and open
//! connections of the first, whose control socket PATH is. Real clients on real sockets:
//! the connections opened before the upgrade are the same TCP connections after it (the
//! client never sees a close, an EOF or a reset: it keeps reading on the same socket), and
//! every message published while it runs arrives exactly once, in order.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stand_in::StandIn;
use common::ws_text;
use common::{Server, SseItem};

/// A control socket path of its own for each test.
fn control_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("c10m-test-{}-{name}.sock", std::process::id()))
}

/// The flags of a successor: the same listeners (by their real ports) and shard count.
fn successor_args(old: &Server, shards: &str, path: &str) -> Vec<String> {
    [
        "serve",
        "--listen",
        &old.client.to_string(),
        "--admin",
        &old.admin.to_string(),
        "--shards",
        shards,
        "--takeover",
        path,
        "--control-socket",
        path,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn sse_data(sse: &mut common::Sse) -> (Option<String>, String) {
    loop {
        match sse.next_item().expect("read SSE").expect("SSE stream ended") {
            SseItem::Event { id, data } => return (id, String::from_utf8(data).unwrap()),
            _ => continue,
        }
    }
}

#[test]
fn upgrade_keeps_connections_and_delivers_every_publish_once() {
    let path = control_path("exactly-once");
    let p = path.to_str().unwrap();
    let mut old = Server::start(&["--control-socket", p]);
    let mut wss: Vec<_> =
        (0..8).map(|i| old.ws_connect(&format!("/ws?user=u{i}&topics=news"))).collect();
    // The first SSE client speaks for three browser tabs; the count moves with it.
    let mut sses: Vec<_> = (0..4)
        .map(|i| old.sse_connect(&format!("user=s{i}&tabs={}", 1 + 2 * (i == 0) as u8)))
        .collect();
    old.wait_connections(12);
    // Before: delivered by the old process.
    old.publish("all", "before");
    for ws in &mut wss {
        assert_eq!(ws_text(ws), "before");
    }
    let mut epoch = Vec::new();
    for sse in &mut sses {
        let (id, data) = sse_data(sse);
        assert_eq!(data, "before");
        epoch.push(id.expect("an id").split('-').next().unwrap().to_owned());
    }
    let ports: Vec<u16> = wss.iter().map(|w| w.get_ref().local_addr().unwrap().port()).collect();

    // A publisher on one keep-alive admin connection keeps publishing through the switch
    // until the old process is gone; its connection moves too. Bounded in count and time.
    let mut admin = old.admin_conn();
    let published = Arc::new(AtomicUsize::new(0));
    let switched = Arc::new(AtomicBool::new(false));
    let (count, stop) = (Arc::clone(&published), Arc::clone(&switched));
    let publisher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i = 0;
        while i < 20 || !stop.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline && i < 20_000, "publishing did not end");
            admin.publish("all", format!("m{i}"));
            i += 1;
            count.store(i, Ordering::Release);
        }
        (admin, i)
    });
    common::wait_until("publishing", Duration::from_secs(10), || {
        (published.load(Ordering::Acquire) >= 10).then_some(())
    });
    // A status page's stream does not move: it ends, so the page reconnects to the new one.
    let (mut page, _) = common::status_stream(old.admin, "");
    let args = successor_args(&old, "2", p);
    let before = published.load(Ordering::Acquire);
    let new = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let status = old.wait_exit(Duration::from_secs(60)).expect("the old process exits");
    let during = published.load(Ordering::Acquire) - before;
    switched.store(true, Ordering::Release);
    assert!(status.success(), "old process: {status:?}\n{}", old.stderr());
    assert!(old.stderr().contains("connections handed over"), "{}", old.stderr());
    let (mut admin, n) = publisher.join().expect("publisher");
    common::wait_until("the status stream ends", Duration::from_secs(10), || {
        common::next_status(&mut page).is_none().then_some(())
    });
    assert!(during > 0, "publishes went on while the connections moved");

    // Every message exactly once and in order, on the same sockets.
    for ws in &mut wss {
        for i in 0..n {
            assert_eq!(ws_text(ws), format!("m{i}"));
        }
    }
    for (k, sse) in sses.iter_mut().enumerate() {
        for i in 0..n {
            let (id, data) = sse_data(sse);
            assert_eq!(data, format!("m{i}"));
            let e = id.expect("an id");
            assert_eq!(e.split('-').next().unwrap(), epoch[k], "history epoch kept");
        }
    }
    // After: user, topic and broadcast routes work in the new process, on the moved
    // keep-alive admin connection too.
    admin.publish("user=u3", "to-u3");
    assert_eq!(ws_text(&mut wss[3]), "to-u3");
    admin.publish("topic=news", "news-1");
    for ws in &mut wss {
        assert_eq!(ws_text(ws), "news-1");
    }
    new.publish("user=s2", "to-s2");
    assert_eq!(sse_data(&mut sses[2]).1, "to-s2");
    let after: Vec<u16> = wss.iter().map(|w| w.get_ref().local_addr().unwrap().port()).collect();
    assert_eq!(ports, after, "the same TCP connections");
    let received = new.wait_metric("c10m_handover_received_total", &[], 13.0);
    assert!(received >= 13.0, "12 clients and the publisher's admin connection: {received}");
    let stats = new.stats();
    assert_eq!(stats["ws"], 8, "{stats}");
    assert_eq!(stats["sse"], 4, "{stats}");
    assert_eq!(stats["tabs"], 14, "12 connections, one of them for 3 tabs: {stats}");
    // A new client connects to the new process on the same port.
    let mut fresh = new.ws_connect("/ws?user=fresh");
    new.wait_connections(13);
    new.publish("user=fresh", "hello");
    assert_eq!(ws_text(&mut fresh), "hello");
}

/// A successor with three shards asks the server on `path` (two shards) to hand over: it
/// is refused before anything moves, says why, and the server says it is still serving.
fn refused_for_its_shard_count(old: &Server, path: &str) {
    let args = successor_args(old, "3", path);
    let (status, out, err) = common::run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_c10m")).args(&args),
        Duration::from_secs(30),
    );
    assert!(!status.success(), "refused takeover exits non-zero: {out}{err}");
    assert!(err.contains("refused") && err.contains("shards"), "says why: {err}");
    assert!(old.stderr().contains("still serving"), "{}", old.stderr());
}

#[test]
fn a_refused_takeover_leaves_the_old_process_serving() {
    let path = control_path("refused");
    let p = path.to_str().unwrap();
    let old = Server::start(&["--control-socket", p]);
    let mut ws = old.ws_connect("/ws?user=alice");
    old.wait_connections(1);
    refused_for_its_shard_count(&old, p);
    old.publish("user=alice", "still here");
    assert_eq!(ws_text(&mut ws), "still here");
    let fresh = old.ws_connect("/ws?user=bob");
    drop(fresh);
}

/// Without `--control-socket`, each server's control socket is named by its admin port, the
/// bound one when the flag said port 0: two such servers on one host each get their own.
#[test]
fn the_default_control_socket_is_named_by_the_bound_admin_port() {
    let (a, b) = (Server::start(&[]), Server::start(&[]));
    for s in [&a, &b] {
        // Bound before the server says it listens.
        let path = format!("/run/c10m/c10m-{}.sock", s.admin.port());
        assert!(std::path::Path::new(&path).exists(), "{path} not bound: {}", s.stderr());
        // The socket answers for this server, which refuses and keeps serving.
        refused_for_its_shard_count(s, &path);
        assert!(!s.stderr().contains("no live upgrade"), "{}", s.stderr());
    }
}

/// The successor started by SIGUSR2, found by its command line (it is the old process's
/// child, not ours).
fn successor_pid(path: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let takeover = args.windows(2).any(|w| w[0] == b"--takeover" && w[1] == path.as_bytes());
        if takeover {
            return Some(pid);
        }
    }
    None
}

#[test]
fn sigusr2_starts_a_successor_that_takes_over() {
    let path = control_path("usr2");
    let p = path.to_str().unwrap().to_owned();
    // A service manager's notify socket (what systemd gives a Type=notify unit): the old
    // process says READY=1, its successor MAINPID=<its pid> before the old one exits.
    let notify_path = control_path("usr2-notify");
    let _ = std::fs::remove_file(&notify_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--shards", "2"];
    let args: Vec<&str> = args.iter().copied().chain(["--control-socket", &p]).collect();
    let env = [("NOTIFY_SOCKET", notify_path.to_str().unwrap())];
    // The old process runs a copy of the binary, and the deploy replaces that file (a new
    // inode, as `install` or a package manager does): SIGUSR2 starts what is at the path now.
    let bin = control_path("usr2-bin");
    std::fs::copy(env!("CARGO_BIN_EXE_c10m"), &bin).expect("copy the binary");
    let mut old = Server::spawn_bin(&bin, &args, &env);
    let next = control_path("usr2-bin.next");
    std::fs::copy(env!("CARGO_BIN_EXE_c10m"), &next).expect("copy the binary");
    std::fs::rename(&next, &bin).expect("replace the binary");
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 from the old process");
    assert_eq!(&buf[..n], b"READY=1");
    let mut ws = old.ws_connect("/ws?user=carol");
    let mut sse = old.sse_connect("user=dave");
    old.wait_connections(2);
    old.signal(libc::SIGUSR2);
    let status = old.wait_exit(Duration::from_secs(60)).expect("the old process exits");
    assert!(status.success(), "{}", old.stderr());
    let pid = common::wait_until("the successor", Duration::from_secs(10), || successor_pid(&p));
    let stop = Stopper(pid);
    // Sent before the old process exited: it is waiting in the socket already.
    notify.set_nonblocking(true).unwrap();
    let mut said = Vec::new();
    while let Ok(n) = notify.recv(&mut buf) {
        said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(said.contains(&format!("MAINPID={pid}")), "{said:?}");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the successor's binary");
    assert_eq!(exe, bin, "the successor runs the replaced file");
    let _ = std::fs::remove_file(&bin);
    let _ = std::fs::remove_file(&notify_path);
    // The admin port is the same; the successor serves it.
    let mut admin = common::tcp(old.admin);
    let req = "POST /publish?user=carol HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    std::io::Write::write_all(&mut admin, req.as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(admin);
    let resp = common::read_response(&mut r).expect("answer");
    assert_eq!(resp.status, 202);
    assert_eq!(ws_text(&mut ws), "hello");
    let req = "POST /publish?user=dave HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nsse";
    std::io::Write::write_all(r.get_mut(), req.as_bytes()).unwrap();
    assert_eq!(common::read_response(&mut r).expect("answer").status, 202);
    assert_eq!(sse_data(&mut sse).1, "sse");
    drop(stop);
}

/// Stops a process that is not our child when the test ends, however it ends.
struct Stopper(i32);

impl Drop for Stopper {
    fn drop(&mut self) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(self.0, libc::SIGINT) };
    }
}

/// A frame half received when the upgrade comes completes after it: an echo client sends a
/// ping and the first half of a fragmented text message in one write (the pong says the old
/// process read them), the connection moves, and the rest goes to the new process, which
/// echoes the whole message on the same connection.
#[test]
fn a_half_received_message_completes_after_the_upgrade() {
    let path = control_path("half-frame");
    let p = path.to_str().unwrap();
    let mut old = Server::start(&["--control-socket", p, "--echo"]);
    let mut ws = old.raw_ws("/echo");
    let port = ws.stream.local_addr().unwrap().port();
    let first = common::client_frame(0x01, b"hello, ", true); // text, not final
    let second = common::client_frame(0x80, b"new process", true); // continuation, final
    let (head, tail) = second.split_at(4); // the final frame cut inside its header
    let mut bytes = common::client_frame(0x89, b"sync", true);
    bytes.extend_from_slice(&first);
    bytes.extend_from_slice(head);
    ws.send_bytes(&bytes);
    let pong = ws.recv().expect("a pong");
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xA, &b"sync"[..]));

    let args = successor_args(&old, "2", p);
    let new = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let status = old.wait_exit(Duration::from_secs(60)).expect("the old process exits");
    assert!(status.success(), "{}", old.stderr());
    assert_eq!(common::metric_sum(&new.metrics(), "c10m_handover_received_total", &[]), 1.0);
    ws.send_bytes(tail);
    let echo = ws.recv_skip_pings().expect("the echo");
    assert_eq!(echo.payload, b"hello, new process");
    assert_eq!(ws.stream.local_addr().unwrap().port(), port, "the same connection");
}

/// A client that does not read holds bytes queued in the old process; they move with its
/// connection and reach it, in order and once, from the new one.
#[test]
fn queued_bytes_of_a_client_that_does_not_read_move_with_it() {
    let path = control_path("outbox");
    let p = path.to_str().unwrap();
    // A 32 KiB kernel send buffer (SO_SNDBUF 16384, doubled): the rest of what is published
    // stays queued in the server.
    let mut old = Server::start(&["--control-socket", p, "--socket-send-buffer-bytes", "16384"]);
    // A small receive buffer from the SYN on, so the window the client offers stays small.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&old.client.into()).unwrap();
    let tcp: std::net::TcpStream = sock.into();
    tcp.set_read_timeout(Some(common::STEP)).unwrap();
    let url = format!("ws://{}/ws?user=slow", old.client);
    let (mut ws, _) = tungstenite::client::client(url, tcp).expect("WebSocket handshake");
    old.wait_connections(1);
    // 150 KB to a client that reads nothing: the socket buffers (about 40 KiB) fill, the rest
    // is queued in the server (under the 192 KiB a handover batch carries and under
    // outbox_bytes_max).
    let body = |i: usize| format!("{i:05}:{}", "x".repeat(994));
    let mut admin = old.admin_conn();
    for i in 0..150 {
        admin.publish("user=slow", body(i));
    }
    let port = ws.get_ref().local_addr().unwrap().port();
    let args = successor_args(&old, "2", p);
    let new = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let status = old.wait_exit(Duration::from_secs(60)).expect("the old process exits");
    assert!(status.success(), "{}", old.stderr());
    let m = new.metrics();
    // The client and the publisher's keep-alive admin connection.
    assert_eq!(common::metric_sum(&m, "c10m_handover_received_total", &[]), 2.0);
    let queued = common::metric_sum(&m, "c10m_handover_queued_bytes_total", &[]);
    assert!(queued > 10_000.0, "bytes queued in the old process moved: {queued}");
    for i in 0..150 {
        assert_eq!(ws_text(&mut ws), body(i));
    }
    new.publish("user=slow", "after");
    assert_eq!(ws_text(&mut ws), "after");
    assert_eq!(ws.get_ref().local_addr().unwrap().port(), port, "the same connection");
}

/// The history moves too: a client that reconnects after the upgrade with the id of a
/// message it got from the old process resumes from the new one's history, with the
/// messages after it and no gap.
#[test]
fn a_resume_after_the_upgrade_finds_the_old_process_history() {
    let path = control_path("history");
    let p = path.to_str().unwrap();
    let mut old = Server::start(&["--control-socket", p]);
    let mut sse = old.sse_connect("user=r&topics=news");
    old.wait_connections(1);
    let mut admin = old.admin_conn();
    for m in ["m1", "m2"] {
        admin.publish("user=r", m);
    }
    admin.publish("topic=news", "m3");
    // Two partitions (the user's, the topic's): their relative order is not promised, so the
    // client resumes from whichever came first and should get the other two.
    let (first, data) = sse_data(&mut sse);
    let mut after: Vec<String> = (0..2).map(|_| sse_data(&mut sse).1).collect();
    after.sort();
    let mut all = after.clone();
    all.push(data);
    all.sort();
    assert_eq!(all, ["m1", "m2", "m3"]);
    drop(sse);
    drop(admin);
    old.wait_connections(0);
    let args = successor_args(&old, "2", p);
    let new = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let status = old.wait_exit(Duration::from_secs(60)).expect("the old process exits");
    assert!(status.success(), "{}", old.stderr());
    let id = first.expect("an id");
    let mut back = new.sse_connect_with("user=r&topics=news", &format!("Last-Event-ID: {id}\r\n"));
    // Both missed messages (a gap event or a missing one fails here). They are of two
    // partitions (the user's and the topic's), whose relative order is not promised.
    let mut missed = Vec::new();
    while missed.len() < 2 {
        match back.next_item().expect("read").expect("stream open") {
            SseItem::Event { data, .. } => missed.push(String::from_utf8(data).unwrap()),
            SseItem::Named { event, .. } => panic!("{event} after the upgrade"),
            _ => {}
        }
    }
    missed.sort();
    assert_eq!(missed, after);
    new.publish("user=r", "m4");
    assert_eq!(sse_data(&mut back).1, "m4");
}

/// A stand-in successor (two shards, plain, standalone) that has taken over `old`'s control
/// socket at `path` and received its first batch of exported connections, acknowledging none.
fn stand_in_with_a_batch(path: &std::path::Path, old: &Server) -> StandIn {
    let me = c10m::handover::Successor {
        shards: 2,
        listen: &[old.client],
        admin: &[old.admin],
        tls: false,
        node: None,
        store: true,
    };
    let mut stand_in = StandIn::take_over(path, &me);
    assert!(stand_in.batch(Duration::from_secs(10)).2 > 0);
    stand_in
}

/// A successor that dies in the middle (here a stand-in that says hello and ready through the
/// library's own takeover, then drops everything, as a SIGKILL would) leaves the old process
/// serving: its connections are thawed, get publishes, new clients connect, and a second
/// upgrade then succeeds.
#[test]
fn a_successor_that_dies_mid_handover_leaves_the_old_process_serving() {
    let path = control_path("killed");
    let p = path.to_str().unwrap();
    let mut old = Server::start(&["--control-socket", p]);
    let mut wss: Vec<_> = (0..4).map(|i| old.ws_connect(&format!("/ws?user=k{i}"))).collect();
    old.wait_connections(4);
    // A shard's history, start message, probe and first batch arrive: its connections are
    // exported, and the stand-in never acknowledges them.
    let stand_in = stand_in_with_a_batch(&path, &old);
    // While connections move, publishes are answered; what acts on connections waits.
    let r = old.admin_conn().request("GET", "/presence?user=k0", b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("live upgrade"), "{}", r.text());
    for i in 0..4 {
        assert_eq!(old.publish(&format!("user=k{i}"), "during").0, 202);
    }
    drop(stand_in); // The successor is gone: its channels, control connection and listeners close.
    common::wait_until("the old process says it serves on", Duration::from_secs(10), || {
        old.stderr().contains("still serving").then_some(())
    });
    // Nothing published meanwhile is lost, also for the connections it had exported.
    for (i, ws) in wss.iter_mut().enumerate() {
        assert_eq!(ws_text(ws), "during", "client {i}");
        let (status, _) = old.publish(&format!("user=k{i}"), "still here");
        assert_eq!(status, 202);
        assert_eq!(ws_text(ws), "still here");
    }
    let r = old.admin_conn().request("GET", "/presence?user=k0", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut late = old.ws_connect("/ws?user=late");
    old.wait_connections(5);
    old.publish("user=late", "hi");
    assert_eq!(ws_text(&mut late), "hi");
    // And the upgrade can be tried again: a real successor takes everything over.
    let args = successor_args(&old, "2", p);
    let new = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let status = old.wait_exit(Duration::from_secs(60)).expect("the old process exits");
    assert!(status.success(), "{}", old.stderr());
    new.publish("user=late", "moved");
    assert_eq!(ws_text(&mut late), "moved");
    for (i, ws) in wss.iter_mut().enumerate() {
        new.publish(&format!("user=k{i}"), "moved too");
        assert_eq!(ws_text(ws), "moved too");
    }
}

/// A successor that takes a batch and never acknowledges it (alive, not gone): past
/// `handover_timeout_ms` the old process calls the handover off and serves on, its
/// exported connections thawed with what was published meanwhile.
#[test]
fn a_handover_past_its_timeout_is_called_off() {
    let path = control_path("timeout");
    let p = path.to_str().unwrap();
    let old = Server::start(&["--control-socket", p, "--handover-timeout-ms", "1500"]);
    let mut wss: Vec<_> = (0..4).map(|i| old.ws_connect(&format!("/ws?user=s{i}"))).collect();
    old.wait_connections(4);
    let stand_in = stand_in_with_a_batch(&path, &old);
    for i in 0..4 {
        assert_eq!(old.publish(&format!("user=s{i}"), "meanwhile").0, 202);
    }
    // The stand-in is still there, and acknowledges nothing.
    common::wait_until("the old process calls it off", Duration::from_secs(10), || {
        let log = old.stderr();
        (log.contains("still moving after handover_timeout_ms") && log.contains("still serving"))
            .then_some(())
    });
    for (i, ws) in wss.iter_mut().enumerate() {
        assert_eq!(ws_text(ws), "meanwhile", "client {i}");
        assert_eq!(old.publish(&format!("user=s{i}"), "after").0, 202);
        assert_eq!(ws_text(ws), "after", "client {i}");
    }
    drop(stand_in);
    let mut late = old.ws_connect("/ws?user=late");
    old.wait_connections(5);
    old.publish("user=late", "hi");
    assert_eq!(ws_text(&mut late), "hi");
}

#[test]
fn a_moved_connection_keeps_what_was_left_of_its_lifetime() {
    let path = control_path("lifetime");
    let p = path.to_str().unwrap();
    let lifetime = ["--conn-lifetime-ms-max", "6000", "--conn-lifetime-jitter-pct", "0"];
    let mut args = vec!["--control-socket", p];
    args.extend_from_slice(&lifetime);
    let mut old = Server::start(&args);
    let connected = Instant::now();
    let mut ws = old.ws_connect("/ws?user=alice");
    old.wait_connections(1);
    // Three seconds of the six pass in the old process: a fresh lifetime in the new one
    // would end at 9 s or later, the carried one ends at 6 s.
    std::thread::sleep(Duration::from_secs(3));
    let mut successor = successor_args(&old, "2", p);
    successor.extend(lifetime.iter().map(|s| s.to_string()));
    let new = Server::spawn(&successor.iter().map(String::as_str).collect::<Vec<_>>());
    old.wait_exit(Duration::from_secs(30)).expect("the old process exits");
    new.publish("user=alice", "moved");
    assert_eq!(ws_text(&mut ws), "moved");
    let (code, reason) = common::ws_close_json(&mut ws);
    let at = connected.elapsed();
    assert_eq!(code, 1001, "{reason}");
    assert_eq!(reason["goaway"], true, "{reason}");
    assert!(at >= Duration::from_millis(5500) && at < Duration::from_millis(8500), "at {at:?}");
}

/// What one client of `publishes_go_on_while_connections_move` must get: every broadcast,
/// its topic's messages and its user's, each once and in order within its stream (streams
/// from different partitions may interleave).
fn check_streams(i: usize, got: &[String], all: usize, topics: usize, users: usize) {
    let (topic, user) = (format!("t{}-", i % 3), format!("u{}-", i % 100));
    let expect_topic: Vec<String> =
        (0..topics).filter(|n| n % 3 == i % 3).map(|n| format!("{topic}{n}")).collect();
    let expect_user: Vec<String> =
        (0..users).filter(|n| n % 100 == i % 100).map(|n| format!("{user}{n}")).collect();
    let expect_all: Vec<String> = (0..all).map(|n| format!("a{n}")).collect();
    let pick = |p: &str| got.iter().filter(|m| m.starts_with(p)).cloned().collect::<Vec<_>>();
    assert_eq!(pick("a"), expect_all, "client {i}: broadcasts");
    assert_eq!(pick(&topic), expect_topic, "client {i}: topic");
    assert_eq!(pick(&user), expect_user, "client {i}: user");
    let known = expect_all.len() + expect_topic.len() + expect_user.len();
    assert_eq!(got.len(), known, "client {i}: nothing else, nothing twice: {got:?}");
}

/// Publishes of one stream through `server` until `stop` ([`common::publisher`]): the
/// clients read only at the end, so a flood would leave them more queued than a batch
/// carries. `kind` 0: broadcasts `a{n}`; 1: topic `t{n % 3}`; 2: user `u{n % 100}`; 3: user
/// `late` (`l{n}`).
fn stream_publisher(
    server: &Server,
    stop: &Arc<AtomicBool>,
    kind: u8,
) -> std::thread::JoinHandle<(common::AdminConn, usize)> {
    common::publisher(server, stop, move |n| match kind {
        0 => ("all".into(), format!("a{n}")),
        1 => (format!("topic=t{}", n % 3), format!("t{}-{n}", n % 3)),
        2 => (format!("user=u{}", n % 100), format!("u{}-{n}", n % 100)),
        _ => ("user=late".into(), format!("l{n}")),
    })
}

/// How many each publisher made, in order, and an admin connection to go on with.
fn publishers_done(
    threads: Vec<std::thread::JoinHandle<(common::AdminConn, usize)>>,
) -> (Vec<usize>, common::AdminConn) {
    let mut admin = None;
    let counts = threads
        .into_iter()
        .map(|t| {
            let (a, n) = t.join().expect("publisher");
            admin = Some(a);
            n
        })
        .collect();
    (counts, admin.expect("a publisher"))
}

/// What a client got before the broadcast `end`.
fn until_end(ws: &mut common::Ws) -> Vec<String> {
    std::iter::from_fn(|| Some(ws_text(ws)).filter(|m| m != "end")).collect()
}

/// More shards than cores: the old shards move their clients in turns, one per core at a
/// time (here one core: the old process runs under `taskset -c 0`), while broadcasts, topic
/// and user publishes go on; the shards waiting for their turn deliver and forward as the
/// others, and every client gets each of its messages once and in order.
#[test]
fn shards_take_turns_when_they_outnumber_the_cores() {
    const CLIENTS: usize = 400;
    const SHARDS: usize = 4;
    let path = control_path("turns");
    let p = path.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_c10m");
    let shards = SHARDS.to_string();
    let args = ["-c", "0", bin, "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let args: Vec<&str> =
        args.into_iter().chain(["--shards", &shards, "--control-socket", p]).collect();
    let mut old = Server::spawn_bin("taskset".as_ref(), &args, &[]);
    let mut wss: Vec<_> = (0..CLIENTS)
        .map(|i| old.ws_connect(&format!("/ws?user=u{}&topics=t{}", i % 100, i % 3)))
        .collect();
    old.wait_connections(CLIENTS as u64);
    let ports: Vec<u16> = wss.iter().map(|w| w.get_ref().local_addr().unwrap().port()).collect();
    let switched = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..3).map(|kind| stream_publisher(&old, &switched, kind)).collect();
    let args = successor_args(&old, &shards, p);
    let new = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let status = old.wait_exit(Duration::from_secs(60));
    switched.store(true, Ordering::Release);
    let status = status.unwrap_or_else(|| panic!("the old process exits:\n{}", old.stderr()));
    assert!(status.success(), "old process: {status:?}\n{}", old.stderr());
    // One at a time: each shard's turn comes after the one before it has moved its clients.
    let log = old.stderr();
    let steps: Vec<(bool, String)> = log
        .lines()
        .filter_map(|l| {
            let turn = l.contains("this shard's turn to move its clients");
            let done = l.contains("this shard's clients have moved");
            let shard = l.split("shard=").nth(1)?.split_whitespace().next()?.to_owned();
            (turn || done).then_some((turn, shard))
        })
        .collect();
    let want: Vec<(bool, String)> =
        (0..SHARDS).flat_map(|s| [(true, s.to_string()), (false, s.to_string())]).collect();
    assert_eq!(steps, want, "{log}");
    assert!(log.contains("lanes=1"), "{log}");
    let (counts, mut admin) = publishers_done(threads);
    admin.publish("all", "end");
    for (i, ws) in wss.iter_mut().enumerate() {
        check_streams(i, &until_end(ws), counts[0], counts[1], counts[2]);
    }
    let after: Vec<u16> = wss.iter().map(|w| w.get_ref().local_addr().unwrap().port()).collect();
    assert_eq!(ports, after, "the same TCP connections");
    new.wait_metric("c10m_handover_received_total", &[], CLIENTS as f64);
}

/// Publishes go on while the connections move (no pause): the old process forwards what
/// it delivers to the new one in order with its batches, so a client gets each publish
/// once, from whichever process held it then. 1,500 WebSockets make several batches per
/// shard; three publishers (broadcasts, topics, users) run through the whole switch.
#[test]
fn publishes_go_on_while_connections_move() {
    const CLIENTS: usize = 1500;
    let path = control_path("forwarding");
    let p = path.to_str().unwrap();
    let old = Server::start(&["--control-socket", p]);
    let mut wss: Vec<_> = (0..CLIENTS)
        .map(|i| old.ws_connect(&format!("/ws?user=u{}&topics=t{}", i % 100, i % 3)))
        .collect();
    old.wait_connections(CLIENTS as u64);
    let ports: Vec<u16> = wss.iter().map(|w| w.get_ref().local_addr().unwrap().port()).collect();
    // A client that leaves before the publishes and comes back while connections move: it
    // resumes its topic on the new process (below).
    let mut away = old.sse_connect("topics=t1");
    let away_id = match away.next_block().expect("read SSE") {
        Some(SseItem::Position(id)) => id,
        other => panic!("a position after connecting, got {other:?}"),
    };
    drop(away);
    old.wait_connections(CLIENTS as u64);
    let switched = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4).map(|kind| stream_publisher(&old, &switched, kind)).collect();
    let mut old = old;
    let args = successor_args(&old, "2", p);
    let new = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // A client that connects while the connections move lands on the new process.
    let mut late = new.ws_connect("/ws?user=late");
    let mut back = new.sse_connect_with("topics=t1", &format!("Last-Event-ID: {away_id}\r\n"));
    let status = old.wait_exit(Duration::from_secs(60));
    switched.store(true, Ordering::Release);
    let status = status.unwrap_or_else(|| panic!("the old process exits:\n{}", old.stderr()));
    assert!(status.success(), "old process: {status:?}\n{}", old.stderr());
    assert!(old.stderr().contains("the longest frozen"), "{}", old.stderr());
    let (counts, mut admin) = publishers_done(threads);
    // The old process forwarded what it delivered while connections moved.
    let forwards = new.wait_metric("c10m_handover_forwards_total", &[], 1.0);
    assert!(forwards >= 1.0, "{forwards}");
    admin.publish("all", "end");
    for (i, ws) in wss.iter_mut().enumerate() {
        check_streams(i, &until_end(ws), counts[0], counts[1], counts[2]);
    }
    let after: Vec<u16> = wss.iter().map(|w| w.get_ref().local_addr().unwrap().port()).collect();
    assert_eq!(ports, after, "the same TCP connections");
    new.wait_metric("c10m_handover_received_total", &[], CLIENTS as f64);
    // The late client: from its first message on, every broadcast and every message to its
    // user once and in order, whichever process accepted them.
    new.publish("user=late", "l-final");
    let (mut got, mut seen_end, mut seen_final) = (Vec::new(), false, false);
    while !(seen_end && seen_final) {
        match ws_text(&mut late).as_str() {
            "end" => seen_end = true,
            "l-final" => seen_final = true,
            m => got.push(m.to_owned()),
        }
    }
    for (prefix, count) in [("a", counts[0]), ("l", counts[3])] {
        let run: Vec<usize> =
            got.iter().filter_map(|m| m.strip_prefix(prefix)?.parse().ok()).collect();
        let first = run.first().copied().unwrap_or(count);
        assert_eq!(run, (first..count).collect::<Vec<_>>(), "late client, {prefix} stream");
    }
    // The resuming one: every broadcast and every message to its topic since it left, once
    // and in order, its replay and its live messages from the new process's sequencer.
    let want_a: Vec<String> = (0..counts[0]).map(|n| format!("a{n}")).collect();
    let want_t: Vec<String> =
        (0..counts[1]).filter(|n| n % 3 == 1).map(|n| format!("t1-{n}")).collect();
    let mut got = Vec::new();
    loop {
        let (_, m) = sse_data(&mut back);
        if m == "end" {
            break;
        }
        got.push(m);
    }
    let pick = |p: &str| got.iter().filter(|m| m.starts_with(p)).cloned().collect::<Vec<_>>();
    assert_eq!(pick("a"), want_a, "resumed client: broadcasts");
    assert_eq!(pick("t1-"), want_t, "resumed client: its topic");
    assert_eq!(got.len(), want_a.len() + want_t.len(), "resumed client: nothing else");
}
