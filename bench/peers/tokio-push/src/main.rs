//! An idiomatic tokio push server serving the c10m contract, as a tokio user would write it:
//! a multi-threaded runtime, axum routes (its WebSocket support is tokio-tungstenite), one
//! task per connection, a registry of per-connection `mpsc` senders behind a mutex, and a
//! publish that walks the audience and `try_send`s a shared `Utf8Bytes` to each.
//!
//! Client listener: `GET /ws?user=ID&topics=a,b` (text frames), `GET /sse?user=ID&topics=a,b`
//! (`id:` + `data:` lines). Admin listener: `POST /publish?user=ID | ?topic=T | ?all` → 202,
//! `GET /healthz` → 200.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use futures_util::{SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;

/// Messages queued per connection before further ones are dropped for that connection.
const QUEUE_MESSAGES_MAX: usize = 64;
/// tungstenite's read buffer per WebSocket connection.
const READ_BUFFER_BYTES: usize = 4096;
/// Client listener backlog (nginx is configured with the same).
const LISTEN_BACKLOG: u32 = 4096;

#[derive(Parser)]
struct Args {
    /// Client listener (WebSocket and SSE).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Admin listener (publish, healthz).
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin: String,
    /// Runtime worker threads; 0 = one per CPU (tokio's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// One published message: its sequence number (the SSE `id:`) and its text.
type Msg = (u64, Utf8Bytes);
type Tx = mpsc::Sender<Msg>;

#[derive(Default)]
struct Inner {
    all: HashMap<u64, Tx>,
    users: HashMap<String, HashMap<u64, Tx>>,
    topics: HashMap<String, HashMap<u64, Tx>>,
}

#[derive(Default)]
struct Registry {
    next_conn: AtomicU64,
    next_seq: AtomicU64,
    dropped: AtomicU64,
    inner: Mutex<Inner>,
}

impl Registry {
    fn register(self: &Arc<Self>, user: &str, topics: &[String], tx: Tx) -> Guard {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock().unwrap();
        inner.all.insert(id, tx.clone());
        inner.users.entry(user.to_owned()).or_default().insert(id, tx.clone());
        for topic in topics {
            inner.topics.entry(topic.clone()).or_default().insert(id, tx.clone());
        }
        Guard { registry: Arc::clone(self), id, user: user.to_owned(), topics: topics.to_vec() }
    }

    fn publish(&self, audience: Audience, text: Utf8Bytes) -> usize {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let inner = self.inner.lock().unwrap();
        let targets = match audience {
            Audience::All => Some(&inner.all),
            Audience::User(user) => inner.users.get(&user),
            Audience::Topic(topic) => inner.topics.get(&topic),
        };
        let Some(targets) = targets else { return 0 };
        for tx in targets.values() {
            if tx.try_send((seq, text.clone())).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        targets.len()
    }
}

/// Removes a connection from the registry when its task or stream ends.
struct Guard {
    registry: Arc<Registry>,
    id: u64,
    user: String,
    topics: Vec<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut inner = self.registry.inner.lock().unwrap();
        inner.all.remove(&self.id);
        if let Some(conns) = inner.users.get_mut(&self.user) {
            conns.remove(&self.id);
            if conns.is_empty() {
                inner.users.remove(&self.user);
            }
        }
        for topic in &self.topics {
            if let Some(conns) = inner.topics.get_mut(topic) {
                conns.remove(&self.id);
                if conns.is_empty() {
                    inner.topics.remove(topic);
                }
            }
        }
    }
}

enum Audience {
    All,
    User(String),
    Topic(String),
}

#[derive(Deserialize)]
struct Subscribe {
    user: String,
    #[serde(default)]
    topics: String,
}

impl Subscribe {
    fn topic_list(&self) -> Vec<String> {
        self.topics.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect()
    }
}

async fn ws_handler(
    ws: WebSocketUpgrade,
    Query(sub): Query<Subscribe>,
    State(registry): State<Arc<Registry>>,
) -> impl IntoResponse {
    // tungstenite's defaults (128 KiB read buffer, 128 KiB write buffer) are sized for
    // throughput; a push server holding many idle connections shrinks them, as its users do.
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .on_upgrade(move |socket| ws_connection(socket, sub, registry))
}

async fn ws_connection(socket: WebSocket, sub: Subscribe, registry: Arc<Registry>) {
    let (tx, mut rx) = mpsc::channel(QUEUE_MESSAGES_MAX);
    let _guard = registry.register(&sub.user, &sub.topic_list(), tx);
    drop(sub);
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some((_, text)) = msg else { break };
                if sink.send(Message::Text(text)).await.is_err() {
                    break;
                }
            }
            incoming = stream.next() => match incoming {
                // Pings are answered by tungstenite; clients send nothing else we need.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The SSE body: the connection's queue as events, unregistering when hyper drops it.
struct SseStream {
    rx: mpsc::Receiver<Msg>,
    _guard: Guard,
}

impl Stream for SseStream {
    type Item = Result<Event, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|msg| {
            msg.map(|(seq, text)| Ok(Event::default().id(seq.to_string()).data(text.as_str())))
        })
    }
}

async fn sse_handler(
    Query(sub): Query<Subscribe>,
    State(registry): State<Arc<Registry>>,
) -> impl IntoResponse {
    let (tx, rx) = mpsc::channel(QUEUE_MESSAGES_MAX);
    let guard = registry.register(&sub.user, &sub.topic_list(), tx);
    Sse::new(SseStream { rx, _guard: guard }).keep_alive(KeepAlive::default())
}

async fn publish_handler(
    Query(params): Query<HashMap<String, String>>,
    State(registry): State<Arc<Registry>>,
    body: Bytes,
) -> impl IntoResponse {
    let audience = if let Some(user) = params.get("user") {
        Audience::User(user.clone())
    } else if let Some(topic) = params.get("topic") {
        Audience::Topic(topic.clone())
    } else if params.contains_key("all") {
        Audience::All
    } else {
        return (StatusCode::BAD_REQUEST, "need ?user=, ?topic= or ?all\n").into_response();
    };
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return (StatusCode::BAD_REQUEST, "payload must be UTF-8\n").into_response();
    };
    let receivers = registry.publish(audience, Utf8Bytes::from(text));
    (StatusCode::ACCEPTED, format!("{{\"receivers\":{receivers}}}\n")).into_response()
}

/// `TcpListener::bind` listens with a backlog of 1024; a server that expects connection
/// storms asks for more (the kernel caps it at net.core.somaxconn).
fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let addr: std::net::SocketAddr =
        addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn healthz() -> &'static str {
    "ok\n"
}

fn main() {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        builder.worker_threads(args.threads);
    }
    let runtime = builder.enable_all().build().expect("tokio runtime");
    runtime.block_on(serve(args));
}

async fn serve(args: Args) {
    let registry = Arc::new(Registry::default());
    let clients = Router::new()
        .route("/ws", get(ws_handler))
        .route("/sse", get(sse_handler))
        .with_state(Arc::clone(&registry));
    let admin = Router::new()
        .route("/publish", post(publish_handler))
        .route("/healthz", get(healthz))
        .with_state(registry);
    let client_listener = listen(&args.listen).expect("bind --listen");
    let admin_listener = tokio::net::TcpListener::bind(&args.admin).await.expect("bind --admin");
    let admin_task = tokio::spawn(async move { axum::serve(admin_listener, admin).await });
    tokio::select! {
        r = axum::serve(client_listener, clients) => r.expect("client listener"),
        r = admin_task => r.expect("admin task").expect("admin listener"),
        _ = tokio::signal::ctrl_c() => {}
    }
}
