//! Shared helpers for the integration tests: start the real c10m server on free loopback
//! ports, run the load generator binary, read its JSON report.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use c10m_loadgen::report::Report;

pub const LOADGEN: &str = env!("CARGO_BIN_EXE_c10m-loadgen");
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the server binary once per test process and returns its path.
pub fn server_binary() -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "c10m", "--bin", "c10m"])
            .current_dir(workspace())
            .status()
            .expect("run cargo build -p c10m");
        assert!(status.success(), "building the c10m server failed");
    });
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    target.join("debug").join("c10m")
}

/// A c10m server on free ports, killed when dropped.
pub struct Server {
    pub child: Child,
    pub client: String,
    pub admin: String,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let bin = server_binary();
        let client = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin)
            .args(["serve", "--shards", "1", "--no-pin", "--listen", &client, "--admin", &admin])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start c10m");
        let mut server = Server { child, client, admin };
        server.wait_ready();
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("c10m exited before it was ready: {status}");
            }
            if http_get(&self.admin, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("c10m was not ready within {READY_DEADLINE:?}");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One GET with `Connection: close`; `None` when the server is not there.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    http_get_auth(addr, path, None)
}

/// [`http_get`] with `Authorization: Bearer KEY` when a key is given.
pub fn http_get_auth(addr: &str, path: &str, key: Option<&str>) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A unique path for a JSON report.
pub fn report_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("c10m-loadgen-{name}-{}.json", std::process::id()))
}

/// Runs the load generator with `args` (plus `--json`), bounded in time, and returns its
/// report and stdout.
pub fn run_loadgen(name: &str, args: &[&str]) -> (Report, String) {
    let json = report_path(name);
    let child = Command::new(LOADGEN)
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start c10m-loadgen");
    let out = wait_bounded(child, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "c10m-loadgen failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("report written");
    let _ = std::fs::remove_file(&json);
    (serde_json::from_str(&text).expect("report parses"), stdout)
}

/// Waits for `child`, killing it if it runs past `limit`.
pub fn wait_bounded(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().expect("collect output"),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                panic!("process ran past {limit:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for child: {e}"),
        }
    }
}

/// Reads an HTTP request head line by line (for the in-test servers); None at EOF.
pub fn read_head(reader: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            return Some(lines);
        }
        lines.push(line);
    }
}

/// The in-test servers' side of a WebSocket upgrade: reads the request head, answers 101
/// with the key's accept value, and returns the reader (any bytes after the head stay in it)
/// and the writer. None if the client went away first.
pub fn accept_upgrade(stream: TcpStream) -> Option<(BufReader<TcpStream>, TcpStream)> {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let head = read_head(&mut reader)?;
    let key = head
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let mut out = stream;
    let _ = write!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        c10m_loadgen::proto::ws::accept(&key)
    );
    Some((reader, out))
}
