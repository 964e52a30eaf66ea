//! A glommio 0.9 push server serving the c10m contract, written the way glommio's own
//! examples shape a thread-per-core server: one `LocalExecutor` per core, each with its own
//! SO_REUSEPORT listeners (client and admin), a shard-local registry in `Rc<RefCell<…>>`,
//! a bounded `local_channel` per connection, and a full `channel_mesh` between executors.
//! A publish arrives at whichever executor accepted the admin connection; that executor
//! delivers to its own connections and sends the publish once to every other executor.
//!
//! glommio has no direct descriptors: every connection is a process fd, so one process holds
//! at most RLIMIT_NOFILE (20,000 here) connections.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use clap::Parser;
use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use futures_util::SinkExt;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::{Latency, LocalExecutorPoolBuilder, PoolPlacement, Shares};

/// Messages queued per connection before further ones are dropped for that connection.
const QUEUE_MESSAGES_MAX: usize = 64;
/// Publishes in flight between two executors.
const MESH_MESSAGES_MAX: usize = 1024;
/// Request head, and publish body.
const HEAD_BYTES_MAX: usize = 8192;
const BODY_BYTES_MAX: usize = 64 * 1024;

#[derive(Parser, Clone)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin: String,
    /// Executors; 0 = one per CPU.
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// Latency bound of the task queue the mesh receivers run in, in ms; 0 = glommio's
    /// default queue (Latency::NotImportant). See bench/README.md for the trade-off.
    #[arg(long, default_value_t = 0)]
    mesh_latency_ms: u64,
}

#[derive(Clone, Debug)]
enum Audience {
    All,
    User(String),
    Topic(String),
}

/// What crosses the mesh: a publish, with the sequence number its admin executor gave it.
type Publish = (Audience, u64, String);
/// What a connection's queue holds: the sequence number and the text, shared.
type Msg = (u64, Rc<str>);

/// The executor-local registry. glommio's `LocalSender` is not `Clone`, so `all` owns each
/// connection's sender and the user and topic maps hold connection ids.
#[derive(Default)]
struct Registry {
    next_conn: Cell<u64>,
    all: RefCell<HashMap<u64, LocalSender<Msg>>>,
    users: RefCell<HashMap<String, HashSet<u64>>>,
    topics: RefCell<HashMap<String, HashSet<u64>>>,
}

impl Registry {
    fn register(self: &Rc<Self>, user: &str, topics: &[String], tx: LocalSender<Msg>) -> Guard {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        self.all.borrow_mut().insert(id, tx);
        self.users.borrow_mut().entry(user.to_owned()).or_default().insert(id);
        let mut topic_map = self.topics.borrow_mut();
        for topic in topics {
            topic_map.entry(topic.clone()).or_default().insert(id);
        }
        Guard { registry: Rc::clone(self), id, user: user.to_owned(), topics: topics.to_vec() }
    }

    fn deliver(&self, audience: &Audience, seq: u64, text: &str) {
        let text: Rc<str> = Rc::from(text);
        let all = self.all.borrow();
        let send = |tx: &LocalSender<Msg>| {
            // A full queue means a slow reader: drop for that connection, as c10m does.
            let _ = tx.try_send((seq, Rc::clone(&text)));
        };
        let ids = match audience {
            Audience::All => return all.values().for_each(send),
            Audience::User(user) => self.users.borrow().get(user).cloned(),
            Audience::Topic(topic) => self.topics.borrow().get(topic).cloned(),
        };
        ids.unwrap_or_default().iter().filter_map(|id| all.get(id)).for_each(send);
    }
}

/// Unregisters a connection when its handler returns; dropping the sender ends its queue.
struct Guard {
    registry: Rc<Registry>,
    id: u64,
    user: String,
    topics: Vec<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let r = &self.registry;
        r.all.borrow_mut().remove(&self.id);
        remove_id(&mut r.users.borrow_mut(), &self.user, self.id);
        let mut topics = r.topics.borrow_mut();
        for topic in &self.topics {
            remove_id(&mut topics, topic, self.id);
        }
    }
}

fn remove_id(map: &mut HashMap<String, HashSet<u64>>, key: &str, id: u64) {
    if let Some(ids) = map.get_mut(key) {
        ids.remove(&id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

/// The parts of a request head a handler needs.
struct Head {
    method: String,
    path: String,
    query: HashMap<String, String>,
    ws_key: Option<String>,
    content_length: usize,
    /// Bytes read past the head (the start of a body, or early WebSocket frames).
    rest: Vec<u8>,
}

/// Reads one request head; `None` on EOF, a bad head or one past HEAD_BYTES_MAX.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Head> {
    let mut chunk = [0u8; 2048];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(buf) {
            let target = req.path?;
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
            };
            let head = Head {
                method: req.method?.to_owned(),
                path: path.to_owned(),
                query: parse_query(query),
                ws_key: header("sec-websocket-key").map(str::to_owned),
                content_length: header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0),
                rest: buf[len..].to_vec(),
            };
            buf.clear();
            return Some(head);
        }
        if buf.len() >= HEAD_BYTES_MAX {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn subscription(head: &Head) -> Option<(String, Vec<String>)> {
    let user = head.query.get("user")?.clone();
    let topics = head
        .query
        .get("topics")
        .map(|t| t.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    Some((user, topics))
}

async fn client(mut stream: TcpStream, registry: Rc<Registry>) {
    let mut buf = Vec::new();
    let Some(head) = read_head(&mut stream, &mut buf).await else { return };
    let sub = subscription(&head);
    match (head.method.as_str(), head.path.as_str(), sub, head.ws_key.clone()) {
        ("GET", "/ws", Some((user, topics)), Some(key)) => {
            ws_client(stream, head, &key, &user, &topics, registry).await
        }
        ("GET", "/sse", Some((user, topics)), _) => sse_client(stream, &user, &topics, registry).await,
        _ => {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        }
    }
}

async fn ws_client(
    mut stream: TcpStream,
    head: Head,
    key: &str,
    user: &str,
    topics: &[String],
    registry: Rc<Registry>,
) {
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let ws = WebSocketStream::from_partially_read(stream, head.rest, Role::Server, None).await;
    let (tx, rx) = local_channel::new_bounded(QUEUE_MESSAGES_MAX);
    let guard = registry.register(user, topics, tx);
    let (mut sink, mut incoming) = futures_util::StreamExt::split(ws);
    // The reader half lives in its own task with one receive always armed (dropping and
    // re-creating a glommio read on every delivery would cancel and resubmit it). It owns
    // the registration: when the peer goes, the sender is dropped and the writer ends too.
    glommio::spawn_local(async move {
        let _guard = guard;
        // Pings are answered by tungstenite; clients send nothing else we need.
        while let Some(Ok(message)) = incoming.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .detach();
    while let Some((_, text)) = rx.recv().await {
        if sink.send(Message::Text(text.to_string())).await.is_err() {
            return;
        }
    }
}

async fn sse_client(mut stream: TcpStream, user: &str, topics: &[String], registry: Rc<Registry>) {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n";
    if stream.write_all(head).await.is_err() {
        return;
    }
    let (tx, rx) = local_channel::new_bounded(QUEUE_MESSAGES_MAX);
    let _guard = registry.register(user, topics, tx);
    let mut scratch = [0u8; 512];
    let mut out = String::new();
    loop {
        // The client sends nothing after its head: a read that completes means EOF.
        let next = future::or(async { Some(rx.recv().await) }, async {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(None),
            }
        })
        .await;
        match next {
            Some(Some((seq, text))) => {
                out.clear();
                out.push_str("id: ");
                out.push_str(&seq.to_string());
                out.push_str("\ndata: ");
                out.push_str(&text);
                out.push_str("\n\n");
                if stream.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
            Some(None) => {}
            None => return,
        }
    }
}

/// One executor's side of the mesh and its publish counter.
struct Node {
    registry: Rc<Registry>,
    senders: Senders<Publish>,
    next_seq: Cell<u64>,
}

impl Node {
    async fn publish(&self, audience: Audience, text: String) {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        self.registry.deliver(&audience, seq, &text);
        let me = self.senders.peer_id();
        for peer in (0..self.senders.nr_consumers()).filter(|&p| p != me) {
            let _ = self.senders.send_to(peer, (audience.clone(), seq, text.clone())).await;
        }
    }
}

async fn admin(mut stream: TcpStream, node: Rc<Node>) {
    let mut buf = Vec::new();
    // Keep-alive: one request after another until the client closes.
    while let Some(mut head) = read_head(&mut stream, &mut buf).await {
        let (status, body): (&str, &str) = match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/healthz") => ("200 OK", "ok\n"),
            ("POST", "/publish") if head.content_length <= BODY_BYTES_MAX => {
                let mut payload = std::mem::take(&mut head.rest);
                let mut chunk = vec![0u8; 4096];
                while payload.len() < head.content_length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => payload.extend_from_slice(&chunk[..n]),
                    }
                }
                buf = payload.split_off(head.content_length);
                let q = &head.query;
                let audience = if let Some(user) = q.get("user") {
                    Some(Audience::User(user.clone()))
                } else if let Some(topic) = q.get("topic") {
                    Some(Audience::Topic(topic.clone()))
                } else if q.contains_key("all") {
                    Some(Audience::All)
                } else {
                    None
                };
                match (audience, String::from_utf8(payload)) {
                    (Some(audience), Ok(text)) => {
                        node.publish(audience, text).await;
                        ("202 Accepted", "{}\n")
                    }
                    _ => ("400 Bad Request", "need ?user=, ?topic= or ?all and a UTF-8 body\n"),
                }
            }
            _ => ("404 Not Found", ""),
        };
        let response =
            format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn shard(args: Args, mesh: MeshBuilder<Publish, glommio::channels::channel_mesh::Full>) {
    let (senders, mut receivers): (Senders<Publish>, Receivers<Publish>) =
        mesh.join().await.expect("join the channel mesh");
    let registry = Rc::new(Registry::default());
    let me = senders.peer_id() as u64;
    // Sequence numbers are unique across executors: the executor id in the top bits.
    let node = Rc::new(Node { registry: Rc::clone(&registry), senders, next_seq: Cell::new(me << 48) });
    // Mesh receivers run in glommio's default (latency-insensitive) task queue unless
    // --mesh-latency-ms asks for a bound. With a bound, a parked executor sees a publish from
    // another executor sooner when the box is overloaded (p50 123 ms → 3 ms at load ~100
    // here), but glommio then arms and removes preemption timers on every wake, which cost
    // 60 % more CPU per targeted push when measured on a calmer box (550 vs 346 µs).
    let latency = match args.mesh_latency_ms {
        0 => Latency::NotImportant,
        ms => Latency::Matters(Duration::from_millis(ms)),
    };
    let mesh_queue = glommio::executor().create_task_queue(Shares::default(), latency, "mesh");
    for (_, receiver) in receivers.streams() {
        let registry = Rc::clone(&registry);
        glommio::spawn_local_into(async move {
            while let Some((audience, seq, text)) = receiver.recv().await {
                registry.deliver(&audience, seq, &text);
            }
        }, mesh_queue)
        .expect("spawn a mesh receiver")
        .detach();
    }
    let admin_listener = TcpListener::bind(&args.admin).expect("bind --admin");
    let admin_node = Rc::clone(&node);
    glommio::spawn_local(async move {
        loop {
            if let Ok(stream) = admin_listener.accept().await {
                glommio::spawn_local(admin(stream, Rc::clone(&admin_node))).detach();
            }
        }
    })
    .detach();
    let listener = TcpListener::bind(&args.listen).expect("bind --listen");
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(client(stream, Rc::clone(&registry))).detach();
            }
            // EMFILE past the open-files limit: back off briefly instead of spinning.
            Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn main() {
    let args = Args::parse();
    let shards = if args.shards == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.shards
    };
    let mesh = MeshBuilder::full(shards, MESH_MESSAGES_MAX);
    LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(shards, None))
        .on_all_shards(move || shard(args.clone(), mesh.clone()))
        .expect("start executors")
        .join_all();
}
