//! Real Redis and NATS for cluster tests: `redis-server` and `nats-server` on free loopback
//! ports, killed on drop, and cluster nodes started against them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{wait_until, Server, STEP};

/// How long nats-server may take to answer after its start: JetStream's start is slow
/// while other tests load the machine.
const NATS_START: std::time::Duration = std::time::Duration::from_secs(20);

/// NATS subscriptions each node holds.
pub const SUBSCRIPTIONS_PER_NODE: u64 = 7;

/// A server process of the test, killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn spawn(program: &str, args: &[&str]) -> Proc {
    match Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(child) => Proc(child),
        Err(e) => panic!(
            "cannot start {program} ({e}): run scripts/test.sh, which installs redis-server \
             and nats-server (apt-get install redis-server nats-server)"
        ),
    }
}

/// Real Redis and NATS for one test.
pub struct Backends {
    pub redis: Option<Proc>,
    pub nats: Option<Proc>,
    pub redis_port: u16,
    pub redis_url: String,
    pub nats_url: String,
    pub nats_port: u16,
    pub nats_monitor: u16,
    /// A cluster of two NATS servers ([`Backends::start_clustered`]): the first one's
    /// routes, and the second server.
    cluster: Option<Routes>,
    pub second: Option<SecondNats>,
}

/// A clustered nats-server's routes.
#[derive(Clone, Copy)]
struct Routes {
    /// Where it listens for routes, and where it connects one.
    listen: u16,
    to: u16,
    /// Whether it tells clients the cluster's client URLs (`connect_urls`).
    advertise: bool,
}

/// The second NATS server of [`Backends::start_clustered`].
pub struct SecondNats {
    _proc: Proc,
    pub url: String,
    monitor: u16,
}

impl Backends {
    pub fn start() -> Backends {
        Backends::start_with(None)
    }

    /// [`Backends::start`] with two NATS servers in one cluster (both with JetStream; the
    /// first one's `nats_url`, the second one's `second.url`), whose route holds what the
    /// first server sends the second for `route_delay`: a message published on the first
    /// reaches the second one's subscribers that much after the first one's. Returns once
    /// the route is up and JetStream has its metadata leader. With `advertise` false the
    /// servers tell clients no other server's URL (`--no_advertise`).
    pub fn start_clustered(route_delay: Duration, advertise: bool) -> Backends {
        // The first server's route is to itself: JetStream in a cluster wants one
        // configured; the second server's route is the one that connects them.
        let listen = free_port();
        let mut b = Backends::start_with(Some(Routes { listen, to: listen, advertise }));
        let to = delaying_proxy(listen, route_delay);
        // Other ports if one was taken meanwhile, as for the first server (bounded).
        for _ in 0..3 {
            let (port, monitor, listen) = (free_port(), free_port(), free_port());
            let mut proc = spawn_nats(port, monitor, Some(Routes { listen, to, advertise }));
            if answers(&mut proc, monitor) {
                let url = format!("nats://127.0.0.1:{port}");
                b.second = Some(SecondNats { _proc: proc, url, monitor });
                break;
            }
        }
        assert!(b.second.is_some(), "the second nats-server did not start");
        wait_until("the NATS cluster's JetStream has a leader", NATS_START, || {
            let jsz = monitoring(b.nats_monitor, "/jsz")?;
            jsz["meta_cluster"]["leader"].as_str().filter(|l| !l.is_empty()).map(drop)
        });
        b
    }

    fn start_with(cluster: Option<Routes>) -> Backends {
        let (rp, np, mp) = (free_port(), free_port(), free_port());
        let mut b = Backends {
            redis: None,
            nats: None,
            redis_port: rp,
            redis_url: format!("redis://127.0.0.1:{rp}"),
            nats_url: format!("nats://127.0.0.1:{np}"),
            nats_port: np,
            nats_monitor: mp,
            cluster,
            second: None,
        };
        b.start_redis();
        // A free port can be taken by another test's process between our probe and
        // nats-server's bind: then it exits at once, and it starts again on other ports
        // (bounded).
        for _ in 0..3 {
            if b.try_start_nats() {
                return b;
            }
            (b.nats_port, b.nats_monitor) = (free_port(), free_port());
            b.nats_url = format!("nats://127.0.0.1:{}", b.nats_port);
        }
        b.start_nats();
        b
    }

    /// (Re)starts redis-server on its port, empty, and waits until it answers.
    pub fn start_redis(&mut self) {
        let port = self.redis_port.to_string();
        let args = ["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        self.redis = Some(spawn("redis-server", &args));
        wait_until("redis-server answers PING", STEP, || {
            let mut con =
                redis::Client::open(self.redis_url.as_str()).ok()?.get_connection().ok()?;
            redis::cmd("PING").query::<String>(&mut con).ok()
        });
    }

    /// (Re)starts nats-server on its ports and waits until its monitoring answers.
    pub fn start_nats(&mut self) {
        self.start_nats_process();
        wait_until("nats-server monitoring answers", NATS_START, || self.nats_subscriptions());
    }

    fn start_nats_process(&mut self) {
        self.nats = Some(spawn_nats(self.nats_port, self.nats_monitor, self.cluster));
    }

    /// [`Backends::start_nats`], false if nats-server exits (or is not answering) instead.
    fn try_start_nats(&mut self) -> bool {
        self.start_nats_process();
        let started = self.nats.as_mut().is_some_and(|p| answers(p, self.nats_monitor));
        if !started {
            self.nats = None;
        }
        started
    }

    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(self.redis_url.as_str()).unwrap().get_connection().unwrap()
    }

    /// The nodes whose entry for `user` has not expired.
    pub fn nodes_of(&self, user: &str) -> Vec<String> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                as u64;
        redis::cmd("ZRANGEBYSCORE")
            .arg(format!("c10m:u:{user}"))
            .arg(now)
            .arg("+inf")
            .query(&mut self.redis())
            .unwrap()
    }

    /// The node ids in the heartbeat set, expired or not.
    pub fn heartbeats(&self) -> Vec<String> {
        redis::cmd("ZRANGE").arg("c10m:nodes").arg(0).arg(-1).query(&mut self.redis()).unwrap()
    }

    pub fn key_exists(&self, user: &str) -> bool {
        redis::cmd("EXISTS").arg(format!("c10m:u:{user}")).query::<i64>(&mut self.redis()).unwrap()
            == 1
    }

    /// Subscriptions the NATS server holds, from its monitoring endpoint.
    pub fn nats_subscriptions(&self) -> Option<u64> {
        subscriptions_at(self.nats_monitor)
    }

    /// Starts a node and waits until it reaches Redis and NATS and its subscriptions are in
    /// place (each node holds seven: its node subject, topics, broadcast, commands,
    /// presence requests, the user queue and its presence replies), and with history on
    /// (the default) until it reads the history store, which it subscribes after the rest.
    pub fn node(&self, id: &str, extra: &[&str], nodes_before: u64) -> Server {
        self.node_on_bus(id, &self.nats_url, extra, nodes_before)
    }

    /// [`Backends::node`] reaching NATS at `bus_url` (a [`delaying_proxy`] in front of it).
    pub fn node_on_bus(
        &self,
        id: &str,
        bus_url: &str,
        extra: &[&str],
        nodes_before: u64,
    ) -> Server {
        let mut args = vec!["--node-id", id, "--registry", &self.redis_url, "--bus", bus_url];
        args.extend_from_slice(extra);
        let server = Server::start(&args);
        wait_until(&format!("node {id} connected to Redis and NATS"), STEP, || {
            let c = &server.stats()["cluster"];
            (c["registry_connected"] == true && c["bus_connected"] == true).then_some(())
        });
        let history_off = extra.windows(2).any(|w| w == ["--history-ttl-ms", "0"]);
        if !history_off {
            wait_until(&format!("node {id} reads the history store"), STEP, || {
                (server.stats()["cluster"]["store_connected"] == true).then_some(())
            });
        }
        // A node on the second server of a cluster counts on that server.
        let monitor = match &self.second {
            Some(second) if second.url == bus_url => second.monitor,
            _ => self.nats_monitor,
        };
        let want = SUBSCRIPTIONS_PER_NODE * (nodes_before + 1);
        wait_until(&format!("{want} NATS subscriptions"), STEP, || {
            subscriptions_at(monitor).filter(|&n| n >= want)
        });
        server
    }

    /// A raw NATS client connection past the server's INFO line: its reader and writer.
    fn nats_raw(&self) -> (BufReader<TcpStream>, TcpStream) {
        let s = TcpStream::connect(("127.0.0.1", self.nats_port)).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("INFO "), "{line}");
        (r, s)
    }

    /// Publishes raw NATS protocol as a backend would, and waits for the server's PONG, so
    /// the messages have been processed when this returns.
    pub fn backend_publish(&self, msgs: &[(&str, &str)]) {
        let (mut r, mut w) = self.nats_raw();
        let mut line = String::new();
        let mut out = String::from("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
        for (subject, body) in msgs {
            out.push_str(&format!("PUB {subject} {}\r\n{body}\r\n", body.len()));
        }
        out.push_str("PING\r\n");
        w.write_all(out.as_bytes()).unwrap();
        let deadline = Instant::now() + STEP;
        loop {
            assert!(Instant::now() < deadline, "no PONG from nats-server");
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(!line.starts_with("-ERR"), "{line}");
            if line.starts_with("PONG") {
                return;
            }
        }
    }

    /// Sends a request as a backend would (`PUB subject inbox`) and returns the payloads of
    /// the first `want` replies, waiting at most [`STEP`] for them.
    pub fn backend_request(&self, subject: &str, body: &str, want: usize) -> Vec<String> {
        let (mut r, mut w) = self.nats_raw();
        let mut line = String::new();
        let inbox = "_INBOX.test";
        let out = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {inbox} 1\r\n\
             PUB {subject} {inbox} {}\r\n{body}\r\nPING\r\n",
            body.len()
        );
        w.write_all(out.as_bytes()).unwrap();
        let deadline = Instant::now() + STEP;
        let mut replies = Vec::new();
        while replies.len() < want {
            assert!(Instant::now() < deadline, "{} of {want} replies: {replies:?}", replies.len());
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(!line.starts_with("-ERR"), "{line}");
            // MSG <subject> <sid> <bytes>
            if let Some(head) = line.strip_prefix("MSG ") {
                let bytes: usize = head.split_whitespace().last().unwrap().parse().unwrap();
                let mut payload = vec![0; bytes + 2];
                r.read_exact(&mut payload).unwrap();
                payload.truncate(bytes);
                replies.push(String::from_utf8(payload).unwrap());
            }
        }
        replies
    }
}

/// Starts nats-server: JetStream holds the cluster's history (`src/cluster/store.rs`);
/// its store directory is fresh on every start, so a restart loses the stream, as a bus
/// without its store would. Clustered, it listens for routes and connects one.
fn spawn_nats(port: u16, monitor: u16, cluster: Option<Routes>) -> Proc {
    let dir = std::env::temp_dir().join(format!("c10m-js-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (port, monitor) = (port.to_string(), monitor.to_string());
    let dir = dir.to_string_lossy().into_owned();
    let mut args = vec!["-a", "127.0.0.1", "-p", &port, "-m", &monitor, "-js", "-sd", &dir];
    let (name, listen, to);
    if let Some(r) = cluster {
        name = format!("s{port}");
        (listen, to) =
            (format!("nats://127.0.0.1:{}", r.listen), format!("nats://127.0.0.1:{}", r.to));
        let flags = ["--cluster", &listen, "--cluster_name", "c10m-test", "--server_name", &name];
        args.extend(flags.into_iter().chain(["--routes", &to]));
        if !r.advertise {
            args.push("--no_advertise");
        }
    }
    spawn("nats-server", &args)
}

/// Whether a nats-server just started answers on its monitoring port within [`NATS_START`];
/// false as soon as it exits instead (its port was taken).
fn answers(nats: &mut Proc, monitor: u16) -> bool {
    let deadline = Instant::now() + NATS_START;
    while Instant::now() < deadline {
        if subscriptions_at(monitor).is_some() {
            return true;
        }
        if !matches!(nats.0.try_wait(), Ok(None)) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A nats-server monitoring endpoint's JSON.
fn monitoring(monitor: u16, path: &str) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(("127.0.0.1", monitor)).ok()?;
    s.set_read_timeout(Some(STEP)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

/// Subscriptions a NATS server holds, from its monitoring endpoint.
fn subscriptions_at(monitor: u16) -> Option<u64> {
    monitoring(monitor, "/subsz")?["num_subscriptions"].as_u64()
}

pub fn cluster_stat(server: &Server, name: &str) -> u64 {
    server.stats()["cluster"][name].as_u64().unwrap_or_else(|| panic!("no cluster.{name}"))
}

/// A TCP proxy on loopback in front of `127.0.0.1:upstream` that holds every byte the upstream
/// sends for `delay` before passing it on, while what the client sends goes straight through:
/// a bus that delivers to one node late. It serves at most 8 connections; each one's threads
/// end when either side closes. Returns its port.
pub fn delaying_proxy(upstream: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().take(8) {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), Duration::ZERO);
            pipe(server, client, delay);
        }
    });
    port
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (at, bytes) in rx {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
