//! State shared by the shards, the publisher and the progress printer: counters that are
//! only ever added to, per-bucket "connections up" gauges, and one record per published
//! sequence number. Shards add in batches, so these cache lines stay cool.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Why a connection attempt failed or an established connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// ECONNREFUSED: nothing listens (server down or restarting).
    Refused = 0,
    /// EADDRNOTAVAIL: no local port left for a (source, target) pair.
    PortsExhausted,
    /// The connect or the upgrade did not finish within --connect-timeout.
    Timeout,
    /// The server answered the upgrade with an unexpected status or accept key.
    Rejected,
    /// Established connection: the server closed it (EOF or a close frame).
    ServerClosed,
    /// ECONNRESET / EPIPE.
    Reset,
    /// The server sent bytes that break the protocol.
    Protocol,
    /// Creating the socket failed (slot table full, out of memory).
    Socket,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Refused,
        Reason::PortsExhausted,
        Reason::Timeout,
        Reason::Rejected,
        Reason::ServerClosed,
        Reason::Reset,
        Reason::Protocol,
        Reason::Socket,
        Reason::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Refused => "refused",
            Reason::PortsExhausted => "ports_exhausted",
            Reason::Timeout => "timeout",
            Reason::Rejected => "rejected",
            Reason::ServerClosed => "server_closed",
            Reason::Reset => "reset",
            Reason::Protocol => "protocol",
            Reason::Socket => "socket",
            Reason::Other => "other",
        }
    }

    /// Maps a negative completion result to a reason.
    pub fn from_errno(errno: i32) -> Reason {
        match errno {
            libc::ECONNREFUSED => Reason::Refused,
            libc::EADDRNOTAVAIL | libc::EADDRINUSE => Reason::PortsExhausted,
            libc::ETIMEDOUT | libc::ECANCELED => Reason::Timeout,
            libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => Reason::Reset,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => Reason::Socket,
            _ => Reason::Other,
        }
    }
}

/// What the receivers learned about one published sequence number.
#[derive(Default)]
pub struct SeqRecord {
    /// Send stamp (CLOCK_REALTIME ns); 0 until published.
    pub sent_ns: AtomicU64,
    /// Connections that should receive it (those up in its audience when it was sent).
    pub expected: AtomicU32,
    /// Connections it is aimed at, up or not: `audience - expected` were down when it was
    /// sent (reconnecting), so at-most-once delivery skipped them.
    pub audience: AtomicU32,
    /// Connections that received it at least once.
    pub delivered: AtomicU32,
    /// `u64::MAX - first delivery ns`, so that a zeroed record means "none yet".
    pub first_inv_ns: AtomicU64,
    pub last_ns: AtomicU64,
    /// Set once the admin API accepted the publish.
    pub accepted: AtomicBool,
}

impl SeqRecord {
    pub fn deliver(&self, now_ns: u64) {
        self.delivered.fetch_add(1, Relaxed);
        self.first_inv_ns.fetch_max(u64::MAX - now_ns, Relaxed);
        self.last_ns.fetch_max(now_ns, Relaxed);
    }

    pub fn first_ns(&self) -> Option<u64> {
        match self.first_inv_ns.load(Relaxed) {
            0 => None,
            inv => Some(u64::MAX - inv),
        }
    }
}

/// Message counters kept by each shard and added here in batches.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageCounts {
    pub received: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub foreign: u64,
    pub heartbeats: u64,
    pub pings: u64,
    /// Pongs whose send completed.
    pub pongs: u64,
    /// Pongs that had to wait for an earlier send of their connection.
    pub pongs_deferred: u64,
    /// Wire bytes (header and payload) of the data frames received.
    pub data_bytes: u64,
    /// Data frames that came compressed (permessage-deflate).
    pub compressed: u64,
}

pub struct Shared {
    pub stop: AtomicBool,
    /// Set by the main thread when the ramp is over and the hold began.
    pub holding: AtomicBool,
    pub attempts: AtomicU64,
    pub reconnects: AtomicU64,
    pub established: AtomicU64,
    pub up: AtomicI64,
    pub peak_up: AtomicI64,
    /// Connections whose first attempt has an outcome (up, or failed).
    pub first_done: AtomicU64,
    pub failures: [AtomicU64; Reason::ALL.len()],
    pub received: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub foreign: AtomicU64,
    pub heartbeats: AtomicU64,
    pub pings: AtomicU64,
    pub pongs: AtomicU64,
    pub pongs_deferred: AtomicU64,
    pub data_bytes: AtomicU64,
    pub compressed: AtomicU64,
    /// Largest loop lag, loop turn and pong time (ready → sent) of any shard since the
    /// progress printer last looked, µs.
    pub lag_max_us: AtomicU64,
    pub turn_max_us: AtomicU64,
    pub pong_max_us: AtomicU64,
    /// Connections up per user bucket and per bucket of the first topic pattern.
    pub user_up: Vec<AtomicU32>,
    pub topic_up: Vec<AtomicU32>,
    /// Indexed by sequence number; seq 0 is unused.
    pub records: Vec<SeqRecord>,
    /// The last unclassified error: `(op << 32) | errno`, for the report's notes.
    pub last_other: AtomicI64,
    /// Latency (µs) recorded since the progress printer last looked.
    pub live_latency: Mutex<Histogram<u64>>,
}

impl Shared {
    pub fn new(user_buckets: u64, topic_buckets: u64, seq_max: u64) -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            attempts: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            established: AtomicU64::new(0),
            up: AtomicI64::new(0),
            peak_up: AtomicI64::new(0),
            first_done: AtomicU64::new(0),
            failures: Default::default(),
            received: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            pongs: AtomicU64::new(0),
            pongs_deferred: AtomicU64::new(0),
            data_bytes: AtomicU64::new(0),
            compressed: AtomicU64::new(0),
            lag_max_us: AtomicU64::new(0),
            turn_max_us: AtomicU64::new(0),
            pong_max_us: AtomicU64::new(0),
            user_up: (0..user_buckets).map(|_| AtomicU32::new(0)).collect(),
            topic_up: (0..topic_buckets).map(|_| AtomicU32::new(0)).collect(),
            records: (0..=seq_max).map(|_| SeqRecord::default()).collect(),
            last_other: AtomicI64::new(0),
            live_latency: Mutex::new(latency_histogram()),
        }
    }

    pub fn fail(&self, reason: Reason) {
        self.failures[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn failures_by_reason(&self) -> Vec<(Reason, u64)> {
        Reason::ALL.iter().map(|r| (*r, self.failures[*r as usize].load(Relaxed))).collect()
    }

    /// A connection finished its upgrade (`delta = 1`) or went down (`-1`).
    pub fn set_up(&self, user_bucket: usize, topic_bucket: Option<usize>, delta: i32) {
        let now = self.up.fetch_add(i64::from(delta), Relaxed) + i64::from(delta);
        self.peak_up.fetch_max(now, Relaxed);
        let bump = |gauge: &AtomicU32| {
            if delta > 0 {
                gauge.fetch_add(1, Relaxed);
            } else {
                gauge.fetch_sub(1, Relaxed);
            }
        };
        if let Some(g) = self.user_up.get(user_bucket) {
            bump(g);
        }
        if let Some(g) = topic_bucket.and_then(|b| self.topic_up.get(b)) {
            bump(g);
        }
    }

    pub fn add_messages(&self, c: &MessageCounts) {
        self.received.fetch_add(c.received, Relaxed);
        self.duplicated.fetch_add(c.duplicated, Relaxed);
        self.reordered.fetch_add(c.reordered, Relaxed);
        self.foreign.fetch_add(c.foreign, Relaxed);
        self.heartbeats.fetch_add(c.heartbeats, Relaxed);
        self.pings.fetch_add(c.pings, Relaxed);
        self.pongs.fetch_add(c.pongs, Relaxed);
        self.pongs_deferred.fetch_add(c.pongs_deferred, Relaxed);
        self.data_bytes.fetch_add(c.data_bytes, Relaxed);
        self.compressed.fetch_add(c.compressed, Relaxed);
    }
}

/// Microsecond histograms from 1 µs to one hour, 3 significant figures.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}
