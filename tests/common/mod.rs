//! Integration test harness: starts the real `c10m` binary on port 0 and talks to it with real
//! clients over real sockets on 127.0.0.1.
//!
//! Nothing here waits forever: every socket has read and write timeouts, the start line is
//! awaited with a deadline, and conditions are polled with [`wait_until`] against a deadline
//! instead of sleeping and hoping.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub mod backends;
mod raw_ws;
pub use raw_ws::*;
mod sse;
pub mod stand_in;
pub use sse::*;
mod ws_client;
pub use ws_client::*;

/// The longest any single wait in a test may take before it fails.
pub const STEP: Duration = Duration::from_secs(5);

/// Runs `c10m` with `args`, expecting it to exit by itself within [`STEP`] (a refused
/// configuration); returns its exit code and stderr. Kills it and fails otherwise.
pub fn run_to_exit(args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_c10m"));
    cmd.args(args);
    let (status, _, err) = run_bounded(&mut cmd, STEP);
    (status.code().unwrap_or(-1), err)
}

/// Runs `cmd` to its exit within `limit`, killing it and failing the test past that;
/// returns its status, stdout and stderr (each read as it comes, so neither pipe fills).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// A running `c10m serve`, killed on drop.
pub struct Server {
    child: Child,
    pub client: SocketAddr,
    /// Every client listener, in the order given (`client` is the first).
    pub clients: Vec<SocketAddr>,
    pub admin: SocketAddr,
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// `c10m serve` on 127.0.0.1 port 0 (client and admin), two shards unless `extra` says
    /// otherwise, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
        if !extra.contains(&"--shards") {
            args.extend_from_slice(&["--shards", "2"]);
        }
        args.extend_from_slice(extra);
        Server::spawn(&args)
    }

    /// Runs the binary with exactly `args` and waits (bounded) for its start line.
    pub fn spawn(args: &[&str]) -> Server {
        Server::spawn_with_env(args, &[])
    }

    /// [`Server::spawn`] with extra environment variables.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn_bin(env!("CARGO_BIN_EXE_c10m").as_ref(), args, env)
    }

    /// [`Server::spawn_with_env`] of the binary at `bin`.
    pub fn spawn_bin(bin: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn c10m");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || forward_lines(stdout, tx));
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr_pipe);
            let mut line = String::new();
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with("c10m listening") => break l,
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "c10m printed no start line within 20 s; stderr:\n{}",
                        stderr.lock().unwrap()
                    );
                }
            }
        };
        let field = |key: &str| -> Vec<SocketAddr> {
            let value = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in start line {line:?}"));
            value
                .split(',')
                .map(|a| a.parse().unwrap_or_else(|e| panic!("bad address {a:?} in {line:?}: {e}")))
                .collect()
        };
        let clients = field("clients=");
        let (client, admin) = (clients[0], field("admin=")[0]);
        Server { child, client, clients, admin, stdout: rx, stderr }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The stdout lines after the start line that arrived within `timeout` (until EOF).
    pub fn stdout_lines(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => return lines,
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    // ---- raw TCP ----

    /// A plain TCP connection to the client listener, with timeouts.
    pub fn client_tcp(&self) -> TcpStream {
        tcp(self.client)
    }

    /// A plain TCP connection to the admin listener, with timeouts.
    pub fn admin_tcp(&self) -> TcpStream {
        tcp(self.admin)
    }

    /// Sends `raw` to the client listener and reads one response.
    pub fn client_request(&self, raw: &[u8]) -> Response {
        let mut s = self.client_tcp();
        s.write_all(raw).expect("write request");
        read_response(&mut BufReader::new(s)).expect("read response")
    }

    // ---- admin API ----

    pub fn admin_conn(&self) -> AdminConn {
        AdminConn { reader: BufReader::new(self.admin_tcp()) }
    }

    /// `POST /publish?{target}` on a fresh connection. Publishes on different connections
    /// may be handled by different shards: one answered before the next is sent is delivered
    /// before it, but overlapping ones are not ordered.
    pub fn publish(&self, target: &str, body: impl AsRef<[u8]>) -> (u16, String) {
        let r = self.admin_conn().request("POST", &format!("/publish?{target}"), body);
        (r.status, r.text())
    }

    pub fn stats(&self) -> serde_json::Value {
        let r = self.admin_conn().request("GET", "/stats", b"");
        assert_eq!(r.status, 200, "/stats: {}", r.text());
        serde_json::from_slice(&r.body).expect("/stats is JSON")
    }

    pub fn metrics(&self) -> String {
        let r = self.admin_conn().request("GET", "/metrics", b"");
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        r.text()
    }

    /// Waits until `/stats` reports exactly `n` client connections (WebSocket + SSE).
    pub fn wait_connections(&self, n: u64) -> serde_json::Value {
        wait_until(&format!("{n} client connections in /stats"), STEP, || {
            let s = self.stats();
            (s["connections"].as_u64() == Some(n)).then_some(s)
        })
    }

    /// Waits until the sum of a metric over the samples matching `labels` is at least `min`.
    pub fn wait_metric(&self, name: &str, labels: &[&str], min: f64) -> f64 {
        let mut last = String::new();
        let what = format!("{name}{labels:?} >= {min}");
        wait_until_or(&what, STEP, &mut last, |last| {
            let text = self.metrics();
            let v = metric_sum(&text, name, labels);
            *last = text;
            (v >= min).then_some(v)
        })
    }

    // ---- WebSocket ----

    /// A tungstenite WebSocket client on `path_and_query` (e.g. `/ws?user=a`), with read and
    /// write timeouts so nothing hangs.
    pub fn ws_connect(&self, path_and_query: &str) -> Ws {
        self.try_ws_connect(path_and_query)
            .unwrap_or_else(|e| panic!("WebSocket handshake on {path_and_query}: {e}"))
    }

    pub fn try_ws_connect(&self, path_and_query: &str) -> Result<Ws, Box<tungstenite::Error>> {
        let url = format!("ws://{}{}", self.client, path_and_query);
        let (ws, resp) =
            tungstenite::client::client(url, tcp(self.client)).map_err(|e| match e {
                tungstenite::HandshakeError::Failure(e) => Box::new(e),
                tungstenite::HandshakeError::Interrupted(_) => {
                    Box::new(tungstenite::Error::Io(io::ErrorKind::TimedOut.into()))
                }
            })?;
        assert_eq!(resp.status(), 101);
        Ok(ws)
    }

    /// A WebSocket client that speaks raw frames, for what tungstenite refuses to send.
    pub fn raw_ws(&self, path_and_query: &str) -> RawWs {
        self.raw_ws_with(path_and_query, "").0
    }

    /// [`Server::raw_ws`] with more request headers (each ending in CRLF); also returns the
    /// 101's head.
    pub fn raw_ws_with(&self, path_and_query: &str, headers: &str) -> (RawWs, String) {
        raw_ws_to(self.client, path_and_query, headers)
    }

    // ---- SSE ----

    /// `GET /sse?{query}`; checks the 200 head and the first `retry:` block.
    pub fn sse_connect(&self, query: &str) -> Sse {
        self.sse_connect_with(query, "")
    }

    /// [`Server::sse_connect`] with extra header lines (each ending in CRLF).
    pub fn sse_connect_with(&self, query: &str, headers: &str) -> Sse {
        sse_connect_to(self.client, query, headers)
    }
}

/// [`Server::sse_connect_with`] on a client listener's address (for other threads).
pub fn sse_connect_to(client: SocketAddr, query: &str, headers: &str) -> Sse {
    let mut s = tcp(client);
    let req = format!(
        "GET /sse?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\
         {headers}\r\n"
    );
    s.write_all(req.as_bytes()).expect("write SSE request");
    let mut reader = BufReader::new(s);
    let (status, headers) = read_head(&mut reader).expect("SSE response head");
    assert_eq!(status, 200, "SSE status; headers {headers:?}");
    let mut sse = Sse { reader, headers, retry_ms: None, last_id: None };
    match sse.next_item().expect("SSE retry block") {
        Some(SseItem::Retry(ms)) => sse.retry_ms = Some(ms),
        other => panic!("SSE stream must open with retry:, got {other:?}"),
    }
    sse
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A killed server leaves its default control socket (named by its admin port).
        let _ = std::fs::remove_file(format!("/run/c10m/c10m-{}.sock", self.admin.port()));
        if std::thread::panicking() {
            eprintln!("---- c10m stderr ----\n{}", self.stderr());
        }
    }
}

fn forward_lines(stdout: ChildStdout, tx: mpsc::Sender<String>) {
    let mut r = BufReader::new(stdout);
    let mut line = String::new();
    while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
        if tx.send(line.trim_end().to_owned()).is_err() {
            return;
        }
        line.clear();
    }
}

/// Connects with a bounded connect, read and write timeouts.
/// Shrinks a client's receive buffer so that, not reading, it backs up the server quickly.
/// A raw-frame WebSocket to `client` with extra request headers; returns it and the 101 head.
pub fn raw_ws_to(client: SocketAddr, path_and_query: &str, headers: &str) -> (RawWs, String) {
    let mut stream = tcp(client);
    let req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    stream.write_all(req.as_bytes()).expect("write handshake");
    // Byte by byte, so no frame byte after the head is swallowed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match stream.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!("handshake head cut short: {other:?} after {head:?}"),
        }
    }
    let head = String::from_utf8(head).expect("ASCII head");
    assert!(head.starts_with("HTTP/1.1 101 "), "expected 101, got {head:?}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head:?}");
    (RawWs::from_stream(stream), head)
}

pub fn set_rcvbuf(stream: &TcpStream, bytes: usize) {
    socket2::SockRef::from(stream).set_recv_buffer_size(bytes).expect("SO_RCVBUF");
}

pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, STEP).expect("connect");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_write_timeout(Some(STEP)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Opens `GET /status/events` on the admin listener (with `headers`) and returns the stream
/// after its head and first snapshot; [`next_status`] reads the following ones.
pub fn status_stream(
    admin: SocketAddr,
    headers: &str,
) -> (BufReader<TcpStream>, serde_json::Value) {
    let mut s = tcp(admin);
    let req = format!("GET /status/events HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).expect("write request");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 200"), "status stream refused: {line:?}");
    let first = next_status(&mut r).expect("a first snapshot");
    (r, first)
}

/// The next snapshot of a status stream; `None` at its end.
pub fn next_status(r: &mut BufReader<TcpStream>) -> Option<serde_json::Value> {
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("status stream: {e}"),
        }
        if let Some(json) = line.strip_prefix("data: ") {
            return Some(serde_json::from_str(json.trim_end()).expect("a JSON snapshot"));
        }
    }
}

/// A file under a temporary directory of this test process, with `contents`.
pub fn temp_file(tag: &str, name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("c10m-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// Polls `f` until it returns `Some`, failing the test after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let mut unused = ();
    wait_until_or(what, timeout, &mut unused, |_| f())
}

/// [`wait_until`] that shows `last` (what the last poll saw) when it fails.
pub fn wait_until_or<T, S: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    last: &mut S,
    mut f: impl FnMut(&mut S) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f(last) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sum of the samples of `name` whose label set contains every one of `labels`
/// (e.g. `reason="protocol_error"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = metric == name && labels.iter().all(|want| label_text.contains(want));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Reads bytes until EOF (or the read timeout, which fails the test).
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let deadline = Instant::now() + STEP;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return out,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("no EOF within {STEP:?} ({e}); got {:?}", lossy(&out)),
        }
        assert!(Instant::now() < deadline, "no EOF within {STEP:?}");
    }
}

pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        lossy(&self.body)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Reads a status line and headers (through the blank line).
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no status line"));
    }
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "head cut"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) =
            l.split_once(':').ok_or_else(|| io::Error::other(format!("bad header {l:?}")))?;
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
}

/// Reads one response: the head, then `Content-Length` bytes (or to EOF without one).
pub fn read_response<R: BufRead>(r: &mut R) -> io::Result<Response> {
    let (status, headers) = read_head(r)?;
    let mut resp = Response { status, headers, body: Vec::new() };
    match resp.header("content-length") {
        Some(len) => {
            let len: usize = len.parse().map_err(io::Error::other)?;
            resp.body.resize(len, 0);
            r.read_exact(&mut resp.body)?;
        }
        None => {
            r.read_to_end(&mut resp.body)?;
        }
    }
    Ok(resp)
}

/// A keep-alive connection to the admin listener. Requests on one connection are handled in
/// order by one shard, so publishes made through it keep their order per route.
pub struct AdminConn {
    pub reader: BufReader<TcpStream>,
}

impl AdminConn {
    pub fn request(&mut self, method: &str, target: &str, body: impl AsRef<[u8]>) -> Response {
        self.request_with(method, target, "", body)
    }

    /// A request with extra header lines (`headers`: each ending in CRLF).
    pub fn request_with(
        &mut self,
        method: &str,
        target: &str,
        headers: &str,
        body: impl AsRef<[u8]>,
    ) -> Response {
        self.send_request(method, target, headers, body);
        self.read()
    }

    /// Writes a request without reading its answer (pipelining: [`AdminConn::read`] it later).
    pub fn send_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &str,
        body: impl AsRef<[u8]>,
    ) {
        let body = body.as_ref();
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.send_raw(&req);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    pub fn read(&mut self) -> Response {
        read_response(&mut self.reader).expect("read admin response")
    }

    /// Publishes and returns the message id from the 202 answer.
    pub fn publish(&mut self, target: &str, body: impl AsRef<[u8]>) -> u64 {
        let r = self.request("POST", &format!("/publish?{target}"), body);
        assert_eq!(r.status, 202, "publish {target}: {}", r.text());
        r.json()["id"].as_u64().unwrap_or_else(|| panic!("no id in {}", r.text()))
    }
}

// ---------------------------------------------------------------------------------------
// Client processes (curl, Python)

/// curl reading `server`'s `/sse?{query}`, with `Last-Event-ID` when given (60 s at most).
pub fn curl_sse(server: &Server, query: &str, last_event_id: Option<&str>) -> LineChild {
    let url = format!("http://{}/sse?{query}", server.client);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-N", "--max-time", "60", &url]);
    if let Some(id) = last_event_id {
        cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
    }
    LineChild::spawn(&mut cmd)
}

/// The `data:` payloads among SSE lines.
pub fn sse_data(lines: &[String]) -> Vec<String> {
    lines.iter().filter_map(|l| l.strip_prefix("data: ").map(str::to_owned)).collect()
}

/// The last `id:` among SSE lines.
pub fn sse_last_id(lines: &[String]) -> String {
    lines.iter().rev().find_map(|l| l.strip_prefix("id: ")).expect("an id line").to_owned()
}

/// How long [`LineChild`] waits for a line: generous, because only a failing test waits it
/// out, and a loaded CI machine can take seconds to start a Python client.
pub const LINE_WAIT: Duration = Duration::from_secs(40);

/// Why no line came: the client's output ended (it exited; its stderr says why) or the
/// wait ran out.
fn no_line(e: mpsc::RecvTimeoutError) -> String {
    match e {
        mpsc::RecvTimeoutError::Disconnected => "the client exited before the expected line".into(),
        mpsc::RecvTimeoutError::Timeout => format!("no expected line within {LINE_WAIT:?}"),
    }
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
pub struct LineChild {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl LineChild {
    pub fn spawn(cmd: &mut Command) -> LineChild {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn client");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        LineChild { child, lines, seen: Vec::new() }
    }

    /// Waits (bounded by [`LINE_WAIT`]) for a line that matches.
    pub fn expect_line(&mut self, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LINE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return l,
                Ok(l) => self.seen.push(l),
                Err(e) => panic!("{}; saw {:?}", no_line(e), self.seen),
            }
        }
    }

    /// The next line, if one comes within `wait`.
    pub fn try_line(&mut self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }

    /// Every line up to and including the first that matches (bounded as `expect_line`).
    pub fn lines_until(&mut self, want: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + LINE_WAIT;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let done = want(&l);
                    got.push(l);
                    if done {
                        return got;
                    }
                }
                Err(e) => panic!("{}; got {got:?}", no_line(e)),
            }
        }
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A publisher on its own admin connection to `server` until `stop` (and at least 20
/// publishes), at a backend's steady pace (every 2 ms); `make(n)` names the target and body.
/// Returns the admin connection (a live upgrade moves it too) and how many it made.
pub fn publisher(
    server: &Server,
    stop: &Arc<AtomicBool>,
    make: impl Fn(usize) -> (String, String) + Send + 'static,
) -> std::thread::JoinHandle<(AdminConn, usize)> {
    let mut admin = server.admin_conn();
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        while n < 20 || !stop.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline && n < 50_000, "publishing did not end");
            let (target, body) = make(n);
            admin.publish(&target, body);
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        (admin, n)
    })
}
