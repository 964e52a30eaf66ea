//! Runs a plan: starts the shards and the publisher, prints one progress line per
//! second, holds, drains, and assembles the report.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::plan::Plan;
use crate::publisher::{self, PublishResult};
use crate::report::{
    Connections, Memory, Messages, PublishRow, Report, Summary, PUBLISH_ROWS_MAX, REPORT_VERSION,
};
use crate::shard::{Shard, ShardResult};
use crate::shared::{latency_histogram, Reason, Shared};
use crate::sys;

/// Fixed-file slots a ring keeps free below RLIMIT_NOFILE.
const SLOTS_SPARE: u64 = 16;

/// Checks the plan against this host's limits; errors say what to change.
pub fn check(plan: &Plan, nofile: u64) -> Result<Vec<String>, String> {
    let per_shard = plan.shard_conns(0);
    if per_shard + SLOTS_SPARE > nofile {
        let need = plan.conns.div_ceil(nofile.saturating_sub(SLOTS_SPARE).max(1));
        return Err(format!(
            "{} connections over {} shard(s) need {} fixed-file slots per ring, but a ring's \
             table is capped at RLIMIT_NOFILE ({nofile}): use --shards {need} or more",
            plan.conns, plan.shards, per_shard
        ));
    }
    let mut notes = Vec::new();
    let pairs = (plan.targets.len() * plan.sources.len().max(1)) as u64;
    if let Some(ports) = sys::local_ports() {
        let per_pair = plan.conns.div_ceil(pairs);
        if per_pair > ports {
            notes.push(format!(
                "{per_pair} connections per (source, target) pair exceed the {ports} local ports \
                 of net.ipv4.ip_local_port_range: expect ports_exhausted failures; add source \
                 addresses (--sources 127.0.0.2-127.0.0.{}) or widen the port range",
                1 + plan.conns.div_ceil(ports * plan.targets.len() as u64).min(254)
            ));
        }
    }
    Ok(notes)
}

pub fn run(plan: Plan, command: String) -> Result<Report, String> {
    let nofile = sys::raise_nofile().map_err(|e| format!("reading RLIMIT_NOFILE: {e}"))?;
    let mut notes = check(&plan, nofile)?;
    for note in &notes {
        eprintln!("note: {note}");
    }
    let plan = Arc::new(plan);
    let user_buckets = plan.users.buckets(plan.conns);
    let topic_buckets = plan.topics.first().map_or(0, |t| t.buckets(plan.conns));
    let shared = Arc::new(Shared::new(user_buckets, topic_buckets, plan.seq_max()));
    let go = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut shards: Vec<JoinHandle<Result<ShardResult, String>>> = Vec::new();
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    for id in 0..plan.shards {
        let (plan, shared, go, ready) =
            (plan.clone(), shared.clone(), go.clone(), ready_tx.clone());
        let core = (plan.pin && !cores.is_empty()).then(|| cores[id % cores.len()]);
        let handle = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let shard = match Shard::new(id, plan, shared) {
                    Ok(shard) => shard,
                    Err(e) => {
                        let msg = format!("shard {id}: {e}");
                        let _ = ready.send(Err(msg.clone()));
                        return Err(msg);
                    }
                };
                let _ = ready.send(Ok(()));
                drop(ready);
                shard.run(&go).map_err(|e| format!("shard {id}: {e}"))
            })
            .map_err(|e| format!("spawning shard {id}: {e}"))?;
        shards.push(handle);
    }
    drop(ready_tx);
    let mut startup_error = None;
    for _ in 0..plan.shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                startup_error.get_or_insert(e);
            }
            Err(_) => {
                startup_error.get_or_insert("a shard died while starting".to_string());
                break;
            }
        }
    }
    if let Some(e) = startup_error {
        shared.stop.store(true, Relaxed);
        for h in shards {
            let _ = h.join();
        }
        return Err(e);
    }
    let mut memory = Memory {
        loadgen_rss_start: sys::rss_bytes(None).unwrap_or(0),
        server_pid: plan.server_pid,
        server_rss_start: plan.server_pid.and_then(|p| sys::rss_bytes(Some(p))),
        ..Memory::default()
    };
    let publish_stop = Arc::new(AtomicBool::new(false));
    let publisher = (plan.publish_rate > 0.0).then(|| {
        let (plan, shared, stop) = (plan.clone(), shared.clone(), publish_stop.clone());
        std::thread::spawn(move || publisher::run(plan, shared, stop))
    });
    let start = Instant::now();
    go.store(true, Relaxed);

    let mut progress = Progress::new(start);
    let mut ramp_s = None;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        progress.tick(&plan, &shared);
        if ramp_s.is_none() && shared.first_done.load(Relaxed) >= plan.conns {
            ramp_s = Some(start.elapsed().as_secs_f64());
            shared.holding.store(true, Relaxed);
        }
        if let Some(ramp) = ramp_s {
            if start.elapsed().as_secs_f64() >= ramp + plan.hold.as_secs_f64() {
                break;
            }
        }
        if shards.iter().any(|h| h.is_finished()) {
            break;
        }
    }
    memory.loadgen_rss_held = sys::rss_bytes(None).unwrap_or(0);
    memory.server_rss_held = plan.server_pid.and_then(|p| sys::rss_bytes(Some(p)));
    memory.conns_held = shared.up.load(Relaxed).max(0) as u64;
    memory.recompute();
    let up_at_end = memory.conns_held;
    publish_stop.store(true, Relaxed);
    let published = publisher.map(|h| h.join().map_err(|_| "publisher panicked".to_string()));
    let published = published.transpose()?;
    let drain_end = Instant::now() + plan.drain;
    while Instant::now() < drain_end {
        std::thread::sleep(Duration::from_millis(250).min(drain_end - Instant::now()));
        progress.tick(&plan, &shared);
    }
    shared.stop.store(true, Relaxed);
    let mut results = Vec::new();
    for h in shards {
        results.push(h.join().map_err(|_| "a shard panicked".to_string())??);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let ramp_s = ramp_s.unwrap_or(elapsed_s);
    if shared.failures[Reason::PortsExhausted as usize].load(Relaxed) > 0 {
        notes.push(
            "local ports ran out (EADDRNOTAVAIL): add --sources 127.0.0.2-127.0.0.N or widen \
             net.ipv4.ip_local_port_range"
                .into(),
        );
    }
    Ok(assemble(AssembleInput {
        plan: &plan,
        shared: &shared,
        results,
        published,
        memory,
        up_at_end,
        elapsed_s,
        ramp_s,
        notes,
        command,
    }))
}

struct AssembleInput<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    results: Vec<ShardResult>,
    published: Option<PublishResult>,
    memory: Memory,
    up_at_end: u64,
    elapsed_s: f64,
    ramp_s: f64,
    notes: Vec<String>,
    command: String,
}

fn assemble(input: AssembleInput<'_>) -> Report {
    let AssembleInput {
        plan,
        shared,
        results,
        published,
        memory,
        up_at_end,
        elapsed_s,
        ramp_s,
        mut notes,
        command,
    } = input;
    let mut connect = latency_histogram();
    let mut upgrade = latency_histogram();
    let mut latency = latency_histogram();
    let mut backoff = latency_histogram();
    let mut loop_lag = latency_histogram();
    let mut loop_turn = latency_histogram();
    let mut pong = latency_histogram();
    let mut pong_ready = latency_histogram();
    let mut lag_by_shard = Vec::with_capacity(results.len());
    for r in &results {
        let _ = connect.add(&r.connect_us);
        let _ = upgrade.add(&r.upgrade_us);
        let _ = latency.add(&r.latency_us);
        let _ = backoff.add(&r.backoff_us);
        let _ = loop_lag.add(&r.loop_lag_us);
        let _ = loop_turn.add(&r.loop_turn_us);
        let _ = pong.add(&r.pong_us);
        let _ = pong_ready.add(&r.pong_ready_us);
        lag_by_shard.push(if r.loop_lag_us.is_empty() { 0 } else { r.loop_lag_us.max() });
    }
    let mut fanout = latency_histogram();
    let mut complete = latency_histogram();
    let (mut expected, mut delivered, mut lost) = (0u64, 0u64, 0u64);
    let mut publishes = Vec::new();
    for (seq, record) in shared.records.iter().enumerate().skip(1) {
        if !record.accepted.load(Relaxed) {
            continue;
        }
        let e = u64::from(record.expected.load(Relaxed));
        let d = u64::from(record.delivered.load(Relaxed));
        expected += e;
        delivered += d;
        lost += e.saturating_sub(d);
        let last = record.last_ns.load(Relaxed);
        let sent = record.sent_ns.load(Relaxed);
        let mut row = PublishRow {
            seq: seq as u64,
            sent_ns: sent,
            expected: e,
            audience: u64::from(record.audience.load(Relaxed)),
            delivered: d,
            lost: e.saturating_sub(d),
            ..PublishRow::default()
        };
        if let Some(first) = record.first_ns() {
            fanout.saturating_record(((last - first) / 1000).max(1));
            complete.saturating_record((last.saturating_sub(sent) / 1000).max(1));
            row.first_us = (first.saturating_sub(sent) / 1000).max(1);
            row.last_us = (last.saturating_sub(sent) / 1000).max(1);
        }
        if publishes.len() < PUBLISH_ROWS_MAX {
            publishes.push(row);
        }
    }
    let established = shared.established.load(Relaxed);
    let reconnects = shared.reconnects.load(Relaxed);
    let failures: BTreeMap<String, u64> =
        shared.failures_by_reason().into_iter().map(|(r, v)| (r.name().to_string(), v)).collect();
    let ended = failures.get("server_closed").copied().unwrap_or(0)
        + failures.get("reset").copied().unwrap_or(0);
    if ended > 0 {
        notes.push(format!(
            "the server ended {ended} established connection(s){}",
            if plan.reconnect {
                format!(
                    "; {reconnects} reconnect attempt(s) followed, delayed by full-jitter \
                     exponential backoff (see the reconnect backoff row)"
                )
            } else {
                " (no --reconnect: they stayed down)".to_string()
            }
        ));
    }
    let other = shared.last_other.load(Relaxed);
    if other != 0 {
        notes.push(format!(
            "last unclassified error: {} (ring op {})",
            std::io::Error::from_raw_os_error((other & 0xffff_ffff) as i32),
            other >> 32
        ));
    }
    let publish = published.as_ref();
    if let Some(e) = publish.and_then(|p| p.last_error.as_ref()) {
        notes.push(format!("last publish error: {e}"));
    }
    let received = shared.received.load(Relaxed);
    Report {
        version: REPORT_VERSION,
        runs: 1,
        command,
        proto: plan.proto.name().into(),
        targets: plan.targets.iter().map(|t| t.to_string()).collect(),
        shards: plan.shards as u64,
        elapsed_s,
        connections: Connections {
            planned: plan.conns,
            attempts: shared.attempts.load(Relaxed),
            established,
            reconnects,
            peak_up: shared.peak_up.load(Relaxed).max(0) as u64,
            up_at_end,
            failures,
            connect_rate_per_s: established.min(plan.conns) as f64 / ramp_s.max(1e-3),
            ramp_s,
        },
        messages: Messages {
            published: publish.map_or(0, |p| p.published),
            accepted: publish.map_or(0, |p| p.accepted),
            publish_errors: publish.map_or(0, |p| p.errors),
            publish_s: publish.map_or(0.0, |p| p.elapsed_s),
            expected,
            delivered,
            lost,
            received,
            duplicated: shared.duplicated.load(Relaxed),
            reordered: shared.reordered.load(Relaxed),
            foreign: shared.foreign.load(Relaxed),
            heartbeats: shared.heartbeats.load(Relaxed),
            pings: shared.pings.load(Relaxed),
            pongs: shared.pongs.load(Relaxed),
            pongs_deferred: shared.pongs_deferred.load(Relaxed),
            data_bytes: shared.data_bytes.load(Relaxed),
            compressed: shared.compressed.load(Relaxed),
            received_per_s: received as f64 / (elapsed_s - ramp_s).max(1e-3),
        },
        connect_us: Summary::from_histogram(&connect),
        upgrade_us: Summary::from_histogram(&upgrade),
        latency_us: Summary::from_histogram(&latency),
        fanout_us: Summary::from_histogram(&fanout),
        fanout_complete_us: Summary::from_histogram(&complete),
        publish_request_us: publish
            .map(|p| Summary::from_histogram(&p.request_us))
            .unwrap_or_default(),
        backoff_us: Summary::from_histogram(&backoff),
        loop_lag_us: Summary::from_histogram(&loop_lag),
        loop_turn_us: Summary::from_histogram(&loop_turn),
        loop_lag_max_us_by_shard: lag_by_shard,
        pong_us: Summary::from_histogram(&pong),
        pong_ready_us: Summary::from_histogram(&pong_ready),
        publishes,
        memory,
        notes,
    }
}

/// A publish counts toward the progress line's running loss once it is this old: late
/// deliveries after it are not seen there (the final report counts them).
const SETTLE_NS: u64 = 2_000_000_000;

/// The once-a-second progress line.
struct Progress {
    start: Instant,
    last: Instant,
    last_established: u64,
    last_received: u64,
    last_pongs: u64,
    /// Sequence numbers up to this one are settled and in `lost` and `absent`.
    settled_seq: usize,
    lost: u64,
    /// Connections of the audience that were down when a publish was sent.
    absent: u64,
}

impl Progress {
    fn new(start: Instant) -> Progress {
        Progress {
            start,
            last: start,
            last_established: 0,
            last_received: 0,
            last_pongs: 0,
            settled_seq: 0,
            lost: 0,
            absent: 0,
        }
    }

    /// Adds the loss of publishes that became settled since the last call.
    fn settle(&mut self, shared: &Shared) {
        let now = sys::realtime_ns();
        while let Some(r) = shared.records.get(self.settled_seq + 1) {
            let sent = r.sent_ns.load(Relaxed);
            if sent == 0 || sent.saturating_add(SETTLE_NS) > now {
                break;
            }
            if r.accepted.load(Relaxed) {
                let expected = r.expected.load(Relaxed);
                self.lost += u64::from(expected.saturating_sub(r.delivered.load(Relaxed)));
                self.absent += u64::from(r.audience.load(Relaxed).saturating_sub(expected));
            }
            self.settled_seq += 1;
        }
    }

    fn tick(&mut self, plan: &Plan, shared: &Shared) {
        let dt = self.last.elapsed().as_secs_f64();
        if dt < 1.0 {
            return;
        }
        self.last = Instant::now();
        let established = shared.established.load(Relaxed);
        let received = shared.received.load(Relaxed);
        let connect_rate = (established - self.last_established) as f64 / dt;
        let msg_rate = (received - self.last_received) as f64 / dt;
        self.last_established = established;
        self.last_received = received;
        let (p50, p99) = match shared.live_latency.lock() {
            Ok(mut h) => {
                let q = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
                h.reset();
                q
            }
            Err(_) => (0, 0),
        };
        let failures: Vec<String> = shared
            .failures_by_reason()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|(r, v)| format!("{}={v}", r.name()))
            .collect();
        let failures = if failures.is_empty() { "0".to_string() } else { failures.join(",") };
        // The largest of the last second, over all shards (then reset).
        let lag_max = shared.lag_max_us.swap(0, Relaxed);
        let turn_max = shared.turn_max_us.swap(0, Relaxed);
        let pong_max = shared.pong_max_us.swap(0, Relaxed);
        let pongs = shared.pongs.load(Relaxed);
        let pong_rate = (pongs - self.last_pongs) as f64 / dt;
        self.last_pongs = pongs;
        if plan.quiet {
            return;
        }
        self.settle(shared);
        eprintln!(
            "[{:>6.1}s] up {}/{} +{:.0}/s reconnects {} fail {} | msgs {:.0}/s p50 {} p99 {} \
             lost {} absent {} | lag max {} turn max {} | pongs {:.0}/s max {} | rss {:.1} MiB",
            self.start.elapsed().as_secs_f64(),
            shared.up.load(Relaxed),
            plan.conns,
            connect_rate,
            shared.reconnects.load(Relaxed),
            failures,
            msg_rate,
            crate::report::micros(p50),
            crate::report::micros(p99),
            self.lost,
            self.absent,
            crate::report::micros(lag_max),
            crate::report::micros(turn_max),
            pong_rate,
            crate::report::micros(pong_max),
            sys::rss_bytes(None).unwrap_or(0) as f64 / (1024.0 * 1024.0),
        );
    }
}
