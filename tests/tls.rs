//! TLS on the client listeners, over real sockets: the rustls client for the bulk, and real
//! third-party clients (Python `websockets`, curl) for delivery. Certificates are fixtures
//! under tests/fixtures/tls: a test CA, and two server certificates it signed for localhost
//! and 127.0.0.1.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use common::{metric_sum, LineChild, Server, STEP};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::Message;

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;
type TlsWs = tungstenite::WebSocket<TlsStream>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

fn fixture_str(name: &str) -> String {
    fixture(name).to_str().expect("UTF-8 path").to_owned()
}

/// A TLS server with the first fixture certificate, plus `extra` flags.
fn tls_server(extra: &[&str]) -> Server {
    let (cert, key) = (fixture_str("server.pem"), fixture_str("server.key"));
    let mut args = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that trusts the certificates in `roots` (PEM fixture names).
fn client_config(
    roots: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(CertificateDer::from_pem_file(fixture(r)).expect("fixture PEM")).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn trusting() -> Arc<rustls::ClientConfig> {
    client_config(&["ca.pem"], rustls::DEFAULT_VERSIONS)
}

/// Connects and completes the TLS handshake (bounded by the socket timeouts).
fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> io::Result<TlsStream> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, common::tcp(addr));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// The server certificate a fresh handshake presents.
fn presented_cert(addr: SocketAddr) -> Vec<u8> {
    let s = tls_connect(addr, trusting()).expect("TLS handshake");
    s.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

fn cert_der(name: &str) -> Vec<u8> {
    CertificateDer::from_pem_file(fixture(name)).unwrap().to_vec()
}

fn tls_ws(server: &Server, cfg: Arc<rustls::ClientConfig>, path: &str) -> TlsWs {
    let stream = tls_connect(server.client, cfg).expect("TLS handshake");
    let url = format!("wss://localhost:{}{path}", server.client.port());
    let (ws, resp) = tungstenite::client::client(url, stream)
        .unwrap_or_else(|e| panic!("WebSocket handshake over TLS on {path}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// The next text or binary message, answering nothing (pings are answered by tungstenite).
fn next_data(ws: &mut TlsWs) -> Vec<u8> {
    let deadline = Instant::now() + STEP;
    loop {
        assert!(Instant::now() < deadline, "no message within {STEP:?}");
        match ws.read().expect("WebSocket read over TLS") {
            Message::Text(t) => return t.as_bytes().to_vec(),
            Message::Binary(b) => return b.to_vec(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn tls_metric(server: &Server, name: &str, labels: &[&str]) -> f64 {
    common::metric_sum(&server.metrics(), name, labels)
}

#[test]
fn websocket_delivery_over_tls13_and_tls12() {
    let server = tls_server(&[]);
    for (i, version) in [&rustls::version::TLS13, &rustls::version::TLS12].into_iter().enumerate() {
        let cfg = client_config(&["ca.pem"], &[version]);
        let user = format!("v{i}");
        let mut ws = tls_ws(&server, cfg, &format!("/ws?user={user}"));
        {
            let conn = &ws.get_ref().conn;
            assert_eq!(conn.protocol_version(), Some(version.version));
            assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        }
        server.wait_connections(1);
        // One message within a record, one spanning several 16 KiB records.
        let big: String = "0123456789abcdef".repeat(3000);
        for body in ["hello over tls", big.as_str()] {
            let (status, _) = server.publish(&format!("user={user}"), body);
            assert_eq!(status, 202);
            assert_eq!(next_data(&mut ws), body.as_bytes());
        }
        ws.close(None).unwrap();
        // The close handshake completes over TLS, then the connection is gone.
        let deadline = Instant::now() + STEP;
        while !matches!(ws.read(), Err(tungstenite::Error::ConnectionClosed)) {
            assert!(Instant::now() < deadline, "no close handshake");
        }
        server.wait_connections(0);
    }
    server.wait_metric("c10m_tls_handshakes_total", &[], 2.0);
    assert_eq!(tls_metric(&server, "c10m_tls_failures_total", &[]), 0.0);
}

/// Home-shard placement moves a TLS connection with its session: the record layer's keys
/// and sequence numbers carry on on the other shard, both ways, on both versions.
#[test]
fn tls_connections_moved_to_their_home_shard_keep_their_session() {
    let server = tls_server(&[]);
    let mut conns = Vec::new();
    for i in 0..40 {
        let version = if i % 2 == 0 { &rustls::version::TLS13 } else { &rustls::version::TLS12 };
        let cfg = client_config(&["ca.pem"], &[version]);
        conns.push((format!("p{i}"), tls_ws(&server, cfg, &format!("/ws?user=p{i}"))));
        if tls_metric(&server, "c10m_placements_total", &[]) >= 4.0 {
            break;
        }
    }
    let moved = tls_metric(&server, "c10m_placements_total", &[]);
    assert!(moved >= 4.0, "only {moved} of {} TLS connections moved", conns.len());
    server.wait_connections(conns.len() as u64);
    for (user, ws) in &mut conns {
        assert_eq!(server.publish(&format!("user={user}"), format!("to {user}")).0, 202);
        assert_eq!(next_data(ws), format!("to {user}").as_bytes());
        ws.send(Message::Ping(b"both ways".to_vec())).unwrap();
    }
    assert_eq!(tls_metric(&server, "c10m_user_publishes_forwarded_total", &[]), 0.0);
    assert_eq!(tls_metric(&server, "c10m_tls_failures_total", &[]), 0.0);
}

#[test]
fn echo_of_large_messages_crosses_records_and_receives() {
    let server = tls_server(&["--echo", "--recv-buffer-bytes", "1024"]);
    let mut ws = tls_ws(&server, trusting(), "/echo");
    for len in [1usize, 1000, 20_000, 60_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        ws.send(Message::Binary(payload.clone())).unwrap();
        assert_eq!(next_data(&mut ws), payload, "echo of {len} bytes");
    }
}

#[test]
fn sse_delivery_over_tls_with_rustls_and_curl() {
    let server = tls_server(&[]);
    // rustls client, SSE.
    let mut s = tls_connect(server.client, trusting()).unwrap();
    s.write_all(b"GET /sse?topics=news HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reader = BufReader::new(s);
    let (status, _) = common::read_head(&mut reader).expect("SSE head over TLS");
    assert_eq!(status, 200);
    // curl, SSE, the same topic.
    let url = format!("https://localhost:{}/sse?topics=news", server.client.port());
    let ca = fixture_str("ca.pem");
    let mut curl = LineChild::spawn(Command::new("curl").args([
        "-sS",
        "-N",
        "--max-time",
        "20",
        "--cacert",
        &ca,
        &url,
    ]));
    curl.expect_line(|l| l.starts_with("retry:"));
    server.wait_connections(2);
    let (status, _) = server.publish("topic=news", "sse over tls");
    assert_eq!(status, 202);
    curl.expect_line(|l| l == "data: sse over tls");
    let deadline = Instant::now() + STEP;
    let mut line = String::new();
    while line.trim_end() != "data: sse over tls" {
        line.clear();
        assert!(Instant::now() < deadline, "no event on the rustls SSE client");
        reader.read_line(&mut line).expect("SSE line over TLS");
    }
}

#[test]
fn python_websockets_client_gets_published_messages() {
    let server = tls_server(&[]);
    let script = r#"
import ssl, sys
from websockets.sync.client import connect
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.set_alpn_protocols(["http/1.1"])
with connect(sys.argv[1], ssl=ctx, open_timeout=30) as ws:
    print("open", ws.socket.version(), ws.socket.selected_alpn_protocol(), flush=True)
    print("ext", ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
    print("msg", ws.recv(timeout=30), flush=True)
    print("msg", ws.recv(timeout=30), flush=True)
"#;
    let url = format!("wss://127.0.0.1:{}/ws?user=py", server.client.port());
    let mut py = LineChild::spawn(Command::new("python3").args([
        "-c",
        script,
        &url,
        &fixture_str("ca.pem"),
    ]));
    let open = py.expect_line(|l| l.starts_with("open "));
    assert!(open.contains("TLSv1.3") && open.contains("http/1.1"), "{open}");
    // websockets offers permessage-deflate by default: compressed frames inside TLS records.
    let ext = py.expect_line(|l| l.starts_with("ext "));
    assert!(ext.contains("permessage-deflate"), "{ext}");
    server.wait_connections(1);
    let (status, _) = server.publish("user=py", "hello python");
    assert_eq!(status, 202);
    py.expect_line(|l| l == "msg hello python");
    let long = r#"{"note":"a longer message, compressed before it is encrypted"},"#.repeat(8);
    server.publish("user=py", &long);
    py.expect_line(|l| l.strip_prefix("msg ") == Some(long.as_str()));
    assert_eq!(metric_sum(&server.metrics(), "c10m_ws_deflated_frames_total", &[]), 1.0);
    server.wait_connections(0);
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = TempDir::new("reload");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::copy(fixture("server.pem"), &cert).unwrap();
    std::fs::copy(fixture("server.key"), &key).unwrap();
    let server =
        Server::start(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let mut old = tls_ws(&server, trusting(), "/ws?user=keep");
    server.wait_connections(1);
    assert_eq!(presented_cert(server.client), cert_der("server.pem"));

    // A new pair: new handshakes present it, the open connection keeps working.
    std::fs::copy(fixture("server2.pem"), &cert).unwrap();
    std::fs::copy(fixture("server2.key"), &key).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_metric("c10m_tls_reloads_total", &[], 1.0);
    assert_eq!(presented_cert(server.client), cert_der("server2.pem"));
    server.publish("user=keep", "after reload");
    assert_eq!(next_data(&mut old), b"after reload");
    old.send(Message::Ping(b"still here".to_vec())).unwrap();

    // A broken file: the reload fails, the certificate in use stays.
    std::fs::write(&cert, b"not a certificate").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_metric("c10m_tls_reload_failures_total", &[], 1.0);
    // Logged right after the counter moved: wait (bounded) for the line to be read.
    common::wait_until("the reload failure's log line", common::STEP, || {
        server.stderr().contains("keeping the current certificate").then_some(())
    });
    assert_eq!(presented_cert(server.client), cert_der("server2.pem"));
    server.publish("user=keep", "after failed reload");
    assert_eq!(next_data(&mut old), b"after failed reload");
    assert_eq!(tls_metric(&server, "c10m_connections", &[]), 1.0);
}

#[test]
fn tls_from_the_config_file() {
    let dir = TempDir::new("config");
    let file = dir.0.join("c10m.toml");
    let toml = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        fixture_str("server.pem"),
        fixture_str("server.key")
    );
    std::fs::write(&file, toml).unwrap();
    let server = Server::start(&["--config", file.to_str().unwrap()]);
    assert_eq!(presented_cert(server.client), cert_der("server.pem"));
}

/// A server started with a bad certificate or key exits at once, naming the flag.
#[test]
fn bad_certificate_or_key_refuses_to_start_naming_the_flag() {
    let base = ["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--shards", "1"];
    let missing = fixture_str("missing.pem");
    let cases = [
        (missing.clone(), fixture_str("server.key"), "--tls-cert"),
        (fixture_str("garbage.pem"), fixture_str("server.key"), "--tls-cert"),
        (fixture_str("server.pem"), fixture_str("garbage.pem"), "--tls-key"),
        (fixture_str("server.pem"), missing, "--tls-key"),
        (fixture_str("server.pem"), fixture_str("server2.key"), "--tls-key"),
        // A certificate where the key belongs is no key.
        (fixture_str("server.pem"), fixture_str("server.pem"), "--tls-key"),
    ];
    for (cert, key, flag) in cases {
        let mut args = base.to_vec();
        args.extend(["--tls-cert", cert.as_str(), "--tls-key", key.as_str()]);
        let (code, err) = common::run_to_exit(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: the message names {flag}: {err}");
    }
    let mut args = base.to_vec();
    let cert = fixture_str("server.pem");
    args.extend(["--tls-cert", cert.as_str()]);
    let (code, err) = common::run_to_exit(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--tls-key"), "{err}");
}

#[test]
fn untrusting_clients_fail_the_handshake_and_are_counted() {
    let server = tls_server(&[]);
    let mut ws = tls_ws(&server, trusting(), "/ws?user=bystander");
    server.wait_connections(1);
    // rustls trusting only the other certificate: it refuses ours with an alert.
    let stranger = client_config(&["server2.pem"], rustls::DEFAULT_VERSIONS);
    let err = tls_connect(server.client, stranger).map(|_| ()).expect_err("handshake must fail");
    assert!(err.to_string().contains("certificate"), "{err}");
    // curl without our CA.
    let url = format!("https://localhost:{}/sse", server.client.port());
    let out = Command::new("curl").args(["-sS", "--max-time", "5", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(60), "curl: {}", String::from_utf8_lossy(&out.stderr));
    server.wait_metric("c10m_tls_failures_total", &["reason=\"cert_rejected\""], 2.0);
    // The server is healthy: the bystander still gets publishes, new clients connect.
    server.publish("user=bystander", "still served");
    assert_eq!(next_data(&mut ws), b"still served");
    let mut again = tls_ws(&server, trusting(), "/ws?user=new");
    server.publish("user=new", "new one");
    assert_eq!(next_data(&mut again), b"new one");
}

#[test]
fn plain_http_on_a_tls_listener_is_closed_and_counted() {
    let server = tls_server(&[]);
    let mut ws = tls_ws(&server, trusting(), "/ws?user=bystander");
    server.wait_connections(1);
    let mut plain = server.client_tcp();
    plain.write_all(b"GET /ws?user=x HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let answer = common::read_to_eof(&mut plain);
    assert!(!answer.starts_with(b"HTTP/"), "no HTTP answer: {:?}", common::lossy(&answer));
    // At most a TLS alert record (content type 21).
    assert!(answer.is_empty() || answer[0] == 21, "{answer:?}");
    server.wait_metric("c10m_tls_failures_total", &["reason=\"not_tls\""], 1.0);
    server.publish("user=bystander", "unaffected");
    assert_eq!(next_data(&mut ws), b"unaffected");
    assert_eq!(tls_metric(&server, "c10m_connections_handshake", &[]), 0.0);
}

#[test]
fn a_handshake_that_never_finishes_times_out() {
    let server = tls_server(&["--handshake-timeout-ms", "300"]);
    let mut s = server.client_tcp();
    // A TLS record header that promises more than ever comes.
    s.write_all(&[22, 3, 1, 0, 200, 1]).unwrap();
    let answer = common::read_to_eof(&mut s);
    assert!(answer.is_empty(), "nothing in plaintext: {answer:?}");
    server.wait_metric("c10m_closes_total", &["reason=\"handshake_timeout\""], 1.0);
    assert_eq!(tls_metric(&server, "c10m_connections_handshake", &[]), 0.0);
}

#[test]
fn graceful_closes_send_close_notify() {
    let server = tls_server(&[]);
    let s = tls_connect(server.client, trusting()).unwrap();
    let mut s = s;
    // An error answer: the server closes after it, with close_notify (a clean TLS EOF).
    s.write_all(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("a clean TLS end (close_notify), not a truncation");
    assert!(out.starts_with(b"HTTP/1.1 404 "), "{:?}", common::lossy(&out));
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("c10m-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A live upgrade moves TLS connections with their record state: WebSocket clients on TLS 1.3
/// and 1.2 keep their TCP connection and their TLS session, receive what the new process sends
/// (a message spanning several records), and send to it (echo). A successor without TLS is
/// refused and the old process keeps serving.
#[test]
fn a_live_upgrade_moves_tls_connections() {
    let path = std::env::temp_dir().join(format!("c10m-tls-upgrade-{}.sock", std::process::id()));
    let p = path.to_str().unwrap();
    let mut old = tls_server(&["--control-socket", p, "--echo"]);
    let mut clients: Vec<TlsWs> = [&rustls::version::TLS13, &rustls::version::TLS12]
        .into_iter()
        .enumerate()
        .map(|(i, v)| tls_ws(&old, client_config(&["ca.pem"], &[v]), &format!("/ws?user=t{i}")))
        .collect();
    let mut echo = tls_ws(&old, trusting(), "/echo");
    old.wait_connections(3);
    for (i, ws) in clients.iter_mut().enumerate() {
        old.publish(&format!("user=t{i}"), "before");
        assert_eq!(next_data(ws), b"before");
    }
    let ports: Vec<u16> =
        clients.iter().map(|w| w.get_ref().sock.local_addr().unwrap().port()).collect();
    let (client, admin) = (old.client.to_string(), old.admin.to_string());
    let (cert, key) = (fixture_str("server.pem"), fixture_str("server.key"));
    let base = ["serve", "--listen", &client, "--admin", &admin, "--shards", "2"];

    // Without TLS the successor is refused, naming what to change.
    let plain: Vec<&str> = base.iter().copied().chain(["--takeover", p]).collect();
    let (code, err) = common::run_to_exit(&plain);
    assert_ne!(code, 0);
    assert!(err.contains("TLS off, this one on"), "{err}");
    old.publish("user=t0", "still the old one");
    assert_eq!(next_data(&mut clients[0]), b"still the old one");

    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--tls-cert", &cert, "--tls-key", &key, "--echo", "--takeover", p])
        .chain(["--control-socket", p])
        .collect();
    // Publishes go on through the switch: the old process seals what it sends before a
    // connection's export, the new one what was forwarded after it. Bounded in count and time.
    let mut admin = old.admin_conn();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = std::sync::Arc::clone(&done);
    let publisher = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut n = 0;
        while n < 20 || !stop.load(std::sync::atomic::Ordering::Acquire) {
            assert!(std::time::Instant::now() < deadline && n < 20_000, "publishing did not end");
            admin.publish(&format!("user=t{}", n % 2), format!("p{n}"));
            n += 1;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        n
    });
    let new = Server::spawn(&args);
    let status = old.wait_exit(std::time::Duration::from_secs(60)).expect("the old one exits");
    done.store(true, std::sync::atomic::Ordering::Release);
    assert!(status.success(), "{}", old.stderr());
    let n = publisher.join().expect("publisher");
    for (i, ws) in clients.iter_mut().enumerate() {
        for k in (0..n).filter(|k| k % 2 == i) {
            assert_eq!(next_data(ws), format!("p{k}").as_bytes(), "client {i}, once and in order");
        }
    }
    assert_eq!(common::metric_sum(&new.metrics(), "c10m_handover_received_total", &[]), 4.0);
    let big = "0123456789abcdef".repeat(3000);
    for (i, ws) in clients.iter_mut().enumerate() {
        let (status, _) = new.publish(&format!("user=t{i}"), &big);
        assert_eq!(status, 202);
        assert_eq!(next_data(ws), big.as_bytes(), "over TLS from the new process");
        assert_eq!(ws.get_ref().sock.local_addr().unwrap().port(), ports[i], "same connection");
    }
    echo.send(Message::text("sent to the new process")).unwrap();
    assert_eq!(next_data(&mut echo), b"sent to the new process");
    assert_eq!(tls_metric(&new, "c10m_tls_failures_total", &[]), 0.0);
    assert_eq!(tls_metric(&new, "c10m_tls_handshakes_total", &[]), 0.0, "no new handshake");
}
