//! The cluster's history store: one JetStream stream, [`STREAM`], that captures every
//! publish subject of the bus (`c10m.topic.>`, `c10m.all`, `c10m.user.>`). Why JetStream
//! and not Redis Streams: bench/HISTORY_STORES.md (one stream for millions of per-user
//! subjects costs no per-stream floor, and the append is also the fan-out).
//!
//! - **Ids.** The stream's sequence numbers are the positions every node gives clients: a
//!   publish gets its number where it is stored, so every node shows the same ids, and a
//!   client resumes on any node. The epoch is derived from the stream's creation time: a
//!   stream lost and created anew (the bus restarted without its store) has a new epoch, and
//!   positions from before it report an `epoch` gap.
//! - **Delivery.** Every node reads the whole stream in order (an ordered consumer from the
//!   top it found at startup) and hands each message to its partition shard as if it had
//!   been published there, numbered already; the shards keep the window in their logs as on
//!   a single node, so replays are answered locally. A node holds what was stored since it
//!   started: a position from before that reports an `expired` gap.
//! - **Window.** The stream's limits are the node's history limits (`history_ttl_ms` as its
//!   maximum age, `history_per_stream_max` per subject); the first node to start creates the
//!   stream, and a node with other limits updates it and says so in its log.
//!
//! The bridge's side lives here too (`impl Bridge`): `Bridge::to_store` turns a shard's
//! publish into a store publish, `Bridge::on_store` hands what the reader read to the
//! partitions (backfill first), `Bridge::send_tops` moves their tops.
//!
//! A backend may publish to the same subjects with a JetStream publish (acknowledged once
//! stored) or a core publish; either way the message is stored and numbered.
#![forbid(unsafe_code)]

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{bus, Bridge, ClusterDrop, ClusterStats, Out};
use crate::push::{home_shard, Backfilled, Message, Msg, PublishUser};
use async_nats::HeaderMap;

/// The stream's name in the NATS account.
pub const STREAM: &str = "C10M_HISTORY";
/// How long a node waits for the bus at startup (it may be starting too).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The window the stream keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub ttl_ms: u64,
    pub per_subject: u32,
}

/// What a node starts from: the stream's epoch, its last sequence, and its first retained
/// one (the node's logs are filled from there up to `top` before it delivers live ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    pub epoch: u32,
    pub top: u64,
    pub first: u64,
}

impl Start {
    /// The highest position whose messages the node will not have: below the first
    /// retained one (everything, when the stream holds nothing).
    pub fn floor(&self) -> u64 {
        if (1..=self.top).contains(&self.first) {
            self.first - 1
        } else {
            self.top
        }
    }
}

/// The stream's configuration for `window`.
pub fn config(window: Window) -> stream::Config {
    let age = Duration::from_millis(window.ttl_ms);
    stream::Config {
        name: STREAM.into(),
        subjects: vec![bus::TOPIC_WILDCARD.into(), bus::ALL.into(), bus::USER_WILDCARD.into()],
        max_age: age,
        max_messages_per_subject: i64::from(window.per_subject),
        storage: stream::StorageType::Memory,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        // Retried publishes (same `Nats-Msg-Id`) are stored once within it.
        duplicate_window: age.min(Duration::from_secs(120)),
        num_replicas: 1,
        ..Default::default()
    }
}

/// The epoch of a stream created at `created_ns` (Unix nanoseconds): never 0.
pub fn epoch_of(created_ns: i128) -> u32 {
    let mixed = (created_ns as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    ((mixed >> 96) as u32).max(1)
}

fn start_of(info: &stream::Info) -> Start {
    Start {
        epoch: epoch_of(info.created.unix_timestamp_nanos()),
        top: info.state.last_sequence,
        first: info.state.first_sequence,
    }
}

fn store_error(url: &str, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!(
        "history store on {url}: {what}: {e}; the bus must run JetStream (nats-server -js), \
         or set history_ttl_ms = 0 for at-most-once cluster delivery without history"
    ))
}

/// Finds the stream, creating it or bringing its limits to `window`.
pub async fn ensure(
    js: &jetstream::Context,
    url: &str,
    window: Window,
) -> io::Result<stream::Info> {
    let want = config(window);
    let mut looked = 0;
    loop {
        looked += 1;
        match js.get_stream(STREAM).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| store_error(url, "stream info", e))?.clone();
                let c = &info.config;
                if c.max_age == want.max_age
                    && c.max_messages_per_subject == want.max_messages_per_subject
                    && c.subjects == want.subjects
                {
                    return Ok(info);
                }
                tracing::warn!(
                    stream = STREAM,
                    max_age_ms = c.max_age.as_millis() as u64,
                    per_subject = c.max_messages_per_subject,
                    "the history stream had other limits; updating it to this node's"
                );
                return js
                    .update_stream(want)
                    .await
                    .map_err(|e| store_error(url, "updating the stream", e));
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                match js.create_stream(want.clone()).await {
                    Ok(mut s) => {
                        return Ok(s
                            .info()
                            .await
                            .map_err(|e| store_error(url, "stream info", e))?
                            .clone())
                    }
                    // Another node starting at the same moment created it first: look again.
                    Err(_) if looked == 1 => continue,
                    Err(e) => return Err(store_error(url, "creating it", e)),
                }
            }
            Err(e) => return Err(store_error(url, "looking it up", e)),
        }
    }
}

/// Opens the stream before the shards start (they need its epoch and top), on a connection
/// of its own. None when the bus does not answer within `CONNECT_TIMEOUT`: the node then
/// starts without the store, delivers locally, and takes the store's epoch (its window as
/// backfill) once the bus answers. An error is a bus that answers but cannot hold the
/// history (no JetStream, subjects taken by another stream).
pub fn open(url: &str, window: Window) -> io::Result<Option<Start>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let client = loop {
            let connect = async_nats::ConnectOptions::new().name("c10m-store").connect(url);
            match tokio::time::timeout_at(deadline, connect).await {
                Ok(Ok(client)) => break client,
                Ok(Err(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => {
                    tracing::warn!(
                        bus = url,
                        "cluster: the bus does not answer; starting without the history \
                         store (publishes stay on this node until it does)"
                    );
                    return Ok(None);
                }
            }
        };
        let js = jetstream::new(client.clone());
        let info = ensure(&js, url, window).await?;
        let _ = client.drain().await;
        Ok(Some(start_of(&info)))
    })
}

/// The stream's start as it is now (after the bus came back: a new creation time means the
/// store lost it).
pub async fn current(js: &jetstream::Context, url: &str, window: Window) -> io::Result<Start> {
    ensure(js, url, window).await.map(|info| start_of(&info))
}

/// Publish acknowledgements the store may owe at once.
const ACKS_IN_FLIGHT_MAX: usize = 4096;
/// How often the reader checks that the stream is still the one it reads.
const CHECK_MS: u64 = 1000;
/// Pause before the reader opens the stream again after losing it.
const RETRY_MS: u64 = 250;

/// What the reader hands the bridge.
pub enum Event {
    /// The next stored message, with its sequence and how long ago it was stored.
    Stored { seq: u64, age_ms: u64, message: async_nats::Message },
    /// The stream is another than the node's: made anew (what it holds is delivered), or
    /// the first one this node reaches (`backfill`: what it holds fills the logs).
    Epoch { start: Start, backfill: bool },
    /// A live upgrade's new process starts reading after `top`, where the old one stopped
    /// (its shards' logs came from the old process up to there).
    Resume { top: u64 },
}

/// Where the new process of a live upgrade starts reading the store, once the old one is
/// done ([`Reader::run_after`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// At `next`, under `epoch`: the old process handed its shards every message before it.
    At { epoch: u32, next: u64 },
    /// The handover did not end as planned: from what the stream holds now on.
    Now,
}

/// Reads the whole stream in order, from its first retained message at the node's start
/// (those up to the start's top fill the logs: the backfill), for as long as the node runs:
/// an ordered consumer, opened again (from the next sequence) whenever it fails, and from
/// the new stream's first message under a new epoch when the stream is found made anew.
pub struct Reader {
    pub js: jetstream::Context,
    pub url: String,
    pub window: Window,
    pub start: Start,
    /// Whether `start` is the store's (false: the bus did not answer at startup).
    pub known: bool,
}

impl Reader {
    pub async fn run(self, tx: mpsc::Sender<Event>, stats: Arc<ClusterStats>) {
        let Reader { js, url, window, mut start, mut known } = self;
        let mut next = start.floor() + 1;
        let mut complained = false;
        loop {
            let now = match current(&js, &url, window).await {
                Ok(now) => now,
                Err(e) => {
                    stats.store_connected.store(false, Relaxed);
                    if !std::mem::replace(&mut complained, true) {
                        tracing::warn!("cluster: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
                    continue;
                }
            };
            if now.epoch != start.epoch {
                let backfill = !std::mem::replace(&mut known, true);
                if backfill {
                    tracing::info!("cluster: the history store answers; taking its epoch");
                } else {
                    tracing::warn!(
                        old = start.epoch,
                        new = now.epoch,
                        "cluster: the history stream was made anew (the bus lost its store); \
                         positions from before now report an epoch gap"
                    );
                }
                ClusterStats::bump(&stats.store_epochs, 1);
                start = now;
                // The new stream from its first message: as backfill for a node that never
                // had the store, live for one that lost it (this node missed those).
                next = now.floor() + 1;
                if tx.send(Event::Epoch { start: now, backfill }).await.is_err() {
                    return;
                }
            }
            match read(&js, next, &tx, &stats, start.epoch, &url, window).await {
                Ok(Some(n)) => next = n,
                Ok(None) => return,
                Err(e) => {
                    if !std::mem::replace(&mut complained, true) {
                        tracing::warn!("cluster: reading the history store: {e}");
                    }
                }
            }
            stats.store_connected.store(false, Relaxed);
            tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
        }
    }
}

impl Reader {
    /// A live upgrade's new process: reads nothing while connections move (the old process
    /// reads the store and forwards what it delivers), then from where the old one stopped,
    /// without a backfill, since the logs came with the connections.
    pub async fn run_after(
        mut self,
        resume: tokio::sync::oneshot::Receiver<Resume>,
        tx: mpsc::Sender<Event>,
        stats: Arc<ClusterStats>,
    ) {
        let (epoch, next) = match resume.await {
            Ok(Resume::At { epoch, next }) => (epoch, next),
            Ok(Resume::Now) | Err(_) => {
                let mut complained = false;
                let now = loop {
                    match current(&self.js, &self.url, self.window).await {
                        Ok(now) => break now,
                        Err(e) if !std::mem::replace(&mut complained, true) => {
                            tracing::warn!("cluster: {e}");
                        }
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
                };
                (self.start.epoch, now.top + 1)
            }
        };
        let top = next.saturating_sub(1);
        tracing::info!(next, "takeover: reading the history store from sequence {next}");
        self.start = Start { epoch, top, first: 0 };
        self.known = true;
        if tx.send(Event::Resume { top }).await.is_ok() {
            self.run(tx, stats).await;
        }
    }
}

/// Reads from `next` until the consumer fails or the stream changes; returns the next
/// sequence to read (None: the bridge is gone).
async fn read(
    js: &jetstream::Context,
    mut next: u64,
    tx: &mpsc::Sender<Event>,
    stats: &ClusterStats,
    epoch: u32,
    url: &str,
    window: Window,
) -> Result<Option<u64>, async_nats::Error> {
    let stream = js.get_stream(STREAM).await?;
    let config = consumer::pull::OrderedConfig {
        deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: next },
        ..Default::default()
    };
    let mut messages = stream.create_consumer(config).await?.messages().await?;
    stats.store_connected.store(true, Relaxed);
    let mut check = tokio::time::interval(Duration::from_millis(CHECK_MS));
    check.tick().await;
    loop {
        tokio::select! {
            m = messages.next() => {
                let m = match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(Some(next)),
                };
                let info = m.info()?;
                let seq = info.stream_sequence;
                let now_ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i128);
                let age_ms = ((now_ns - info.published.unix_timestamp_nanos()) / 1_000_000)
                    .max(0) as u64;
                if seq < next {
                    continue; // Sent again after the consumer was made anew.
                }
                next = seq + 1;
                let event = Event::Stored { seq, age_ms, message: m.message };
                if tx.send(event).await.is_err() {
                    return Ok(None);
                }
            }
            _ = check.tick() => {
                // A slow answer is no reason to stop reading (a bus that is down shows in
                // `bus_connected`); a failed one or another stream is.
                let check = tokio::time::timeout(Duration::from_millis(CHECK_MS), current(js, url, window));
                match check.await {
                    Ok(Ok(now)) if now.epoch != epoch => return Ok(Some(next)),
                    Ok(Err(_)) => return Ok(Some(next)),
                    _ => {}
                }
            }
        }
    }
}

/// Publishes to the store, with up to [`ACKS_IN_FLIGHT_MAX`] acknowledgements outstanding;
/// a publish the store does not acknowledge is counted (`store_failed`).
pub(super) async fn publisher(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Out>,
    stats: Arc<ClusterStats>,
) {
    let mut acks = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            o = rx.recv(), if acks.len() < ACKS_IN_FLIGHT_MAX => {
                let Some(o) = o else { break };
                let publish = jetstream::message::PublishMessage::build()
                    .payload(o.msg.payload.to_vec().into())
                    .headers(o.headers);
                match js.send_publish(o.subject, publish).await {
                    Ok(ack) => acks.push(std::future::IntoFuture::into_future(ack)),
                    Err(_) => {
                        stats.store_pending.fetch_sub(1, Relaxed);
                        stats.dropped(ClusterDrop::StoreFailed, 1);
                    }
                }
            }
            Some(ack) = acks.next(), if !acks.is_empty() => {
                stats.store_pending.fetch_sub(1, Relaxed);
                match ack {
                    Ok(_) => ClusterStats::bump(&stats.stored, 1),
                    Err(_) => stats.dropped(ClusterDrop::StoreFailed, 1),
                }
            }
        }
    }
}

/// The bridge's side of the store: what it publishes to it, what it reads from it.
impl Bridge {
    /// A publish for the history store: its subject, the name in a header where the subject
    /// cannot carry it, and a `Nats-Msg-Id`, so a repeat is stored once. None for what is
    /// not a publish, or while the store is unreachable.
    pub(super) fn to_store(&self, msg: &Msg) -> Option<Out> {
        if !self.stats.store_usable() {
            return None;
        }
        let (subject, name, m) = match msg {
            Msg::PublishUser(p) => {
                let (s, in_header) = bus::user_subject(&p.user);
                (s, in_header.then_some((bus::H_USER, &*p.user)), &p.msg)
            }
            Msg::PublishTopic { topic, msg } => {
                let (s, in_header) = bus::topic_subject(topic);
                (s, in_header.then_some((bus::H_TOPIC, &**topic)), msg)
            }
            Msg::PublishAll { msg } => (bus::ALL.to_owned(), None, msg),
            _ => return None,
        };
        let mut headers = HeaderMap::new();
        if let Some((h, name)) = name {
            if !bus::valid_header(name) {
                return None;
            }
            headers.insert(h, name);
        }
        let id = format!("{}.{}", self.store_ids.as_deref().unwrap_or_default(), m.id);
        headers.insert("Nats-Msg-Id", id.as_str());
        Some(Out { subject, reply: None, headers, msg: Arc::clone(m) })
    }

    /// A message read from the store, numbered: to its partition, as if published there.
    pub(super) fn on_store(&mut self, ev: Event) {
        let (seq, age_ms, m) = match ev {
            Event::Stored { seq, age_ms, message } => (seq, age_ms, message),
            Event::Resume { top } => {
                // Every partition's top is `top` now: the numbers up to it were the old
                // process's to deliver.
                self.store_top = top;
                self.tops_sent = 0;
                self.backfill_end = 0;
                return;
            }
            Event::Epoch { start, backfill } => {
                let top = start.floor();
                self.store_top = top;
                self.tops_sent = top;
                self.backfill_end = if backfill { start.top } else { 0 };
                let backfill_end = self.backfill_end;
                for s in 0..self.mesh.shards() {
                    // What the stream holds after its floor comes next.
                    self.send(s, Msg::Epoch { epoch: start.epoch, top, backfill_end });
                }
                return;
            }
        };
        ClusterStats::bump(&self.stats.store_in, 1);
        self.store_top = self.store_top.max(seq);
        if m.payload.len() > self.message_bytes_max {
            return self.stats.dropped(ClusterDrop::BadMessage, 1);
        }
        let header = |name: &str| {
            m.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned())
        };
        let name_ok = |n: &str| !n.is_empty() && n.len() <= crate::shard::client::NAME_BYTES_MAX;
        let payload: Box<[u8]> = m.payload.to_vec().into_boxed_slice();
        let text = std::str::from_utf8(&payload).is_ok();
        let numbered =
            |part: usize| Arc::new(Message { id: seq, seq, part: part as u16, payload, text });
        let sequencer = crate::history::SEQUENCER;
        if seq <= self.backfill_end {
            // Stored before this node started: for its partition's log only.
            let (part, stream) = match bus::route(m.subject.as_str()) {
                bus::Route::Topic(tail) => {
                    let topic = header(bus::H_TOPIC).unwrap_or_else(|| tail.to_owned());
                    (sequencer, name_ok(&topic).then(|| Backfilled::Topic(topic.into())))
                }
                bus::Route::All => (sequencer, Some(Backfilled::All)),
                bus::Route::User(tail) => {
                    let user = header(bus::H_USER).unwrap_or_else(|| tail.to_owned());
                    let home = home_shard(self.user_keys.hash(&user), self.mesh.shards());
                    (home, name_ok(&user).then(|| Backfilled::User(user.into())))
                }
                _ => (sequencer, None),
            };
            let Some(stream) = stream else {
                return self.stats.dropped(ClusterDrop::BadMessage, 1);
            };
            let b = crate::push::Backfill { stream, age_ms, msg: numbered(part) };
            return self.send(part, Msg::Backfill(Box::new(b)));
        }
        match bus::route(m.subject.as_str()) {
            bus::Route::Topic(tail) => {
                let topic = header(bus::H_TOPIC).unwrap_or_else(|| tail.to_owned());
                if !name_ok(&topic) {
                    return self.stats.dropped(ClusterDrop::BadMessage, 1);
                }
                let msg = numbered(sequencer);
                self.send(sequencer, Msg::PublishTopic { topic: topic.into(), msg });
            }
            bus::Route::All => self.send(sequencer, Msg::PublishAll { msg: numbered(sequencer) }),
            bus::Route::User(tail) => {
                let user = header(bus::H_USER).unwrap_or_else(|| tail.to_owned());
                if !name_ok(&user) {
                    return self.stats.dropped(ClusterDrop::BadMessage, 1);
                }
                let hash = self.user_keys.hash(&user);
                let home = home_shard(hash, self.mesh.shards());
                let p = PublishUser { user: user.into(), hash, msg: numbered(home) };
                self.send(home, Msg::PublishUser(Box::new(p)));
            }
            _ => self.stats.dropped(ClusterDrop::BadMessage, 1),
        }
    }

    /// Tells every partition how far the store got: the numbers since the last message it
    /// was sent are none of its own.
    pub(super) fn send_tops(&mut self) {
        if self.store_top <= self.tops_sent {
            return;
        }
        self.tops_sent = self.store_top;
        for s in 0..self.mesh.shards() {
            self.send(s, Msg::Top { part: s as u16, seq: self.store_top });
        }
    }

    pub(super) fn store_away(&mut self, deliver: impl FnOnce(&mut Bridge)) {
        ClusterStats::bump(&self.stats.store_local, 1);
        deliver(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_never_zero_and_differ_by_creation_time() {
        let a = epoch_of(1_764_000_000_000_000_000);
        let b = epoch_of(1_764_000_000_000_000_001);
        assert_ne!(a, b);
        assert_ne!(epoch_of(0), 0);
        assert_eq!(a, epoch_of(1_764_000_000_000_000_000));
    }

    #[test]
    fn the_stream_captures_every_publish_subject() {
        let c = config(Window { ttl_ms: 120_000, per_subject: 1000 });
        assert_eq!(c.subjects, ["c10m.topic.>", "c10m.all", "c10m.user.>"]);
        assert_eq!(c.max_age, Duration::from_secs(120));
        assert_eq!(c.max_messages_per_subject, 1000);
        assert!(c.duplicate_window <= c.max_age);
    }
}
