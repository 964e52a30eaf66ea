//! The final report: figures, the table printed at the end, the JSON written for scripts,
//! and merging several reports (from several load-generator processes) into one.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::shared::latency_histogram;

/// 2: loop lag and turn times, pongs, per-publish rows (reports of version 1 still merge:
/// the new fields default to empty).
pub const REPORT_VERSION: u32 = 2;

/// Per-publish rows kept in a report; a run with more keeps the first ones.
pub const PUBLISH_ROWS_MAX: usize = 1000;

/// A histogram's summary plus its non-empty buckets, so reports merge exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    /// `[value, count]` pairs.
    pub buckets: Vec<(u64, u64)>,
}

impl Summary {
    pub fn from_histogram(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
            buckets: h
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        }
    }

    pub fn to_histogram(&self) -> Histogram<u64> {
        let mut h = latency_histogram();
        for (value, count) in &self.buckets {
            h.saturating_record_n(*value, *count);
        }
        h
    }

    pub fn merge(&self, other: &Summary) -> Summary {
        let mut h = self.to_histogram();
        let _ = h.add(other.to_histogram());
        Summary::from_histogram(&h)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    pub planned: u64,
    pub attempts: u64,
    pub established: u64,
    pub reconnects: u64,
    pub peak_up: u64,
    pub up_at_end: u64,
    /// Failed attempts and ended connections by reason.
    pub failures: BTreeMap<String, u64>,
    /// Connects per second while ramping (established / ramp time).
    pub connect_rate_per_s: f64,
    pub ramp_s: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Messages {
    pub published: u64,
    pub accepted: u64,
    pub publish_errors: u64,
    /// Deliveries the receivers should have seen (connections up in each audience).
    pub expected: u64,
    /// Distinct deliveries (each connection counted once per sequence number).
    pub delivered: u64,
    pub lost: u64,
    pub received: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Messages without our stamp.
    pub foreign: u64,
    pub heartbeats: u64,
    pub pings: u64,
    /// Pongs sent (send completed) in answer to pings.
    #[serde(default)]
    pub pongs: u64,
    /// Pongs that waited for an earlier send of their connection to complete.
    #[serde(default)]
    pub pongs_deferred: u64,
    /// Seconds from the first publish to the last one's answer.
    #[serde(default)]
    pub publish_s: f64,
    /// Wire bytes of the WebSocket data frames received (0 for SSE).
    #[serde(default)]
    pub data_bytes: u64,
    /// Data frames that came compressed.
    #[serde(default)]
    pub compressed: u64,
    pub received_per_s: f64,
}

/// One accepted publish: what its audience received and when (times from its send stamp).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PublishRow {
    pub seq: u64,
    /// Send stamp, CLOCK_REALTIME ns.
    pub sent_ns: u64,
    /// Connections up in the audience when it was sent.
    pub expected: u64,
    /// Connections of the audience, up or not.
    pub audience: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Send stamp to first and to last delivery, µs (0: none delivered).
    pub first_us: u64,
    pub last_us: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub loadgen_rss_start: u64,
    pub loadgen_rss_held: u64,
    pub server_pid: Option<u32>,
    pub server_rss_start: Option<u64>,
    pub server_rss_held: Option<u64>,
    /// Connections up when the `held` figures were read.
    pub conns_held: u64,
    pub loadgen_bytes_per_conn: f64,
    pub server_bytes_per_conn: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    /// How many runs were merged into this report.
    pub runs: u32,
    pub command: String,
    pub proto: String,
    pub targets: Vec<String>,
    pub shards: u64,
    pub elapsed_s: f64,
    pub connections: Connections,
    pub messages: Messages,
    pub connect_us: Summary,
    pub upgrade_us: Summary,
    pub latency_us: Summary,
    /// Per broadcast or topic publish: first to last delivery.
    pub fanout_us: Summary,
    /// Per publish: send stamp to last delivery.
    pub fanout_complete_us: Summary,
    pub publish_request_us: Summary,
    pub backoff_us: Summary,
    /// How late each shard's loop got to a completion due at a known time (the lag probe,
    /// every 50 ms), µs.
    #[serde(default)]
    pub loop_lag_us: Summary,
    /// Busy time of each loop turn, µs; its max is the longest single turn.
    #[serde(default)]
    pub loop_turn_us: Summary,
    /// Each shard's largest loop lag, µs, by shard.
    #[serde(default)]
    pub loop_lag_max_us_by_shard: Vec<u64>,
    /// Ping read to its pong's send completion, µs.
    #[serde(default)]
    pub pong_us: Summary,
    /// Ping readiness (poll completion seen) to its pong's send completion, µs: adds the
    /// wait for a read behind other readable connections.
    #[serde(default)]
    pub pong_ready_us: Summary,
    /// Accepted publishes, in sequence order (at most `PUBLISH_ROWS_MAX`).
    #[serde(default)]
    pub publishes: Vec<PublishRow>,
    pub memory: Memory,
    pub notes: Vec<String>,
}

impl Report {
    /// Merges reports of runs that happened side by side (several processes against one
    /// server): counts and histograms add up, connect rates add up, the server's memory is
    /// taken from the run that saw the most of it, per-connection figures are recomputed.
    pub fn merge(reports: &[Report]) -> Report {
        let mut out = Report { version: REPORT_VERSION, ..Report::default() };
        for r in reports {
            out.runs += r.runs.max(1);
            if out.proto.is_empty() {
                out.proto = r.proto.clone();
            } else if out.proto != r.proto {
                out.proto = "mixed".into();
            }
            for t in &r.targets {
                if !out.targets.contains(t) {
                    out.targets.push(t.clone());
                }
            }
            out.shards += r.shards;
            out.elapsed_s = out.elapsed_s.max(r.elapsed_s);
            let (a, b) = (&mut out.connections, &r.connections);
            a.planned += b.planned;
            a.attempts += b.attempts;
            a.established += b.established;
            a.reconnects += b.reconnects;
            a.peak_up += b.peak_up;
            a.up_at_end += b.up_at_end;
            a.connect_rate_per_s += b.connect_rate_per_s;
            a.ramp_s = a.ramp_s.max(b.ramp_s);
            for (k, v) in &b.failures {
                *a.failures.entry(k.clone()).or_default() += v;
            }
            let (a, b) = (&mut out.messages, &r.messages);
            a.published += b.published;
            a.accepted += b.accepted;
            a.publish_errors += b.publish_errors;
            a.expected += b.expected;
            a.delivered += b.delivered;
            a.lost += b.lost;
            a.received += b.received;
            a.duplicated += b.duplicated;
            a.reordered += b.reordered;
            a.foreign += b.foreign;
            a.heartbeats += b.heartbeats;
            a.pings += b.pings;
            a.pongs += b.pongs;
            a.pongs_deferred += b.pongs_deferred;
            a.data_bytes += b.data_bytes;
            a.publish_s = a.publish_s.max(b.publish_s);
            a.compressed += b.compressed;
            a.received_per_s += b.received_per_s;
            out.connect_us = out.connect_us.merge(&r.connect_us);
            out.upgrade_us = out.upgrade_us.merge(&r.upgrade_us);
            out.latency_us = out.latency_us.merge(&r.latency_us);
            out.fanout_us = out.fanout_us.merge(&r.fanout_us);
            out.fanout_complete_us = out.fanout_complete_us.merge(&r.fanout_complete_us);
            out.publish_request_us = out.publish_request_us.merge(&r.publish_request_us);
            out.backoff_us = out.backoff_us.merge(&r.backoff_us);
            out.loop_lag_us = out.loop_lag_us.merge(&r.loop_lag_us);
            out.loop_turn_us = out.loop_turn_us.merge(&r.loop_turn_us);
            out.loop_lag_max_us_by_shard.extend_from_slice(&r.loop_lag_max_us_by_shard);
            out.pong_us = out.pong_us.merge(&r.pong_us);
            out.pong_ready_us = out.pong_ready_us.merge(&r.pong_ready_us);
            out.publishes.extend_from_slice(&r.publishes);
            let (a, b) = (&mut out.memory, &r.memory);
            a.loadgen_rss_start += b.loadgen_rss_start;
            a.loadgen_rss_held += b.loadgen_rss_held;
            a.conns_held += b.conns_held;
            if b.server_rss_held > a.server_rss_held {
                a.server_pid = b.server_pid;
                a.server_rss_held = b.server_rss_held;
            }
            a.server_rss_start = match (a.server_rss_start, b.server_rss_start) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            };
            for note in &r.notes {
                if !out.notes.contains(note) {
                    out.notes.push(note.clone());
                }
            }
        }
        out.command = "merge".into();
        out.memory.recompute();
        out
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let c = &self.connections;
        let m = &self.messages;
        let _ = writeln!(t, "c10m-loadgen report ({} run(s), {})", self.runs, self.proto);
        let _ = writeln!(t, "  targets            {}", self.targets.join(" "));
        let _ =
            writeln!(t, "  elapsed            {:.1} s, {} shard(s)", self.elapsed_s, self.shards);
        let _ = writeln!(t, "connections");
        let _ = writeln!(
            t,
            "  planned / peak up  {} / {}  (up at end {})",
            c.planned, c.peak_up, c.up_at_end
        );
        let _ = writeln!(
            t,
            "  attempts           {}  established {}  reconnects {}",
            c.attempts, c.established, c.reconnects
        );
        let _ = writeln!(
            t,
            "  connect rate       {:.0}/s over a {:.1} s ramp",
            c.connect_rate_per_s, c.ramp_s
        );
        let failures: Vec<String> =
            c.failures.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        let failures = if failures.is_empty() { "none".to_string() } else { failures.join(" ") };
        let _ = writeln!(t, "  failures           {failures}");
        let _ = writeln!(t, "messages");
        let _ = writeln!(
            t,
            "  published          {} (accepted {}, errors {}) in {:.2} s ({:.0}/s)",
            m.published,
            m.accepted,
            m.publish_errors,
            m.publish_s,
            m.accepted as f64 / m.publish_s.max(1e-3)
        );
        let _ = writeln!(
            t,
            "  delivered          {} of {} expected, lost {}, duplicated {}, reordered {}",
            m.delivered, m.expected, m.lost, m.duplicated, m.reordered
        );
        let _ = writeln!(
            t,
            "  received           {} ({:.0}/s), foreign {}, heartbeats {}, pings {}, pongs {} \
             (waited for a send {})",
            m.received,
            m.received_per_s,
            m.foreign,
            m.heartbeats,
            m.pings,
            m.pongs,
            m.pongs_deferred
        );
        if m.data_bytes > 0 {
            let _ = writeln!(
                t,
                "  data frames        {} wire bytes, {:.1} per message received, {} compressed",
                m.data_bytes,
                m.data_bytes as f64 / m.received.max(1) as f64,
                m.compressed
            );
        }
        if !self.publishes.is_empty() && self.publishes.len() <= PUBLISH_ROWS_SHOWN {
            for p in &self.publishes {
                let _ = writeln!(
                    t,
                    "  publish #{:<10} delivered {} of {} expected, lost {}, first {} last {}",
                    p.seq,
                    p.delivered,
                    p.expected,
                    p.lost,
                    micros(p.first_us),
                    micros(p.last_us)
                );
            }
        }
        let _ = writeln!(
            t,
            "{:<22}{:>10}{:>10}{:>10}{:>10}{:>10}{:>12}",
            "timings", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, s) in [
            ("  connect", &self.connect_us),
            ("  upgrade", &self.upgrade_us),
            ("  delivery latency", &self.latency_us),
            ("  fan-out first→last", &self.fanout_us),
            ("  fan-out send→last", &self.fanout_complete_us),
            ("  publish request", &self.publish_request_us),
            ("  reconnect backoff", &self.backoff_us),
            ("  pong read→sent", &self.pong_us),
            ("  pong ready→sent", &self.pong_ready_us),
            ("  loop lag", &self.loop_lag_us),
            ("  loop turn", &self.loop_turn_us),
        ] {
            if s.count == 0 {
                continue;
            }
            let _ = writeln!(
                t,
                "{:<22}{:>10}{:>10}{:>10}{:>10}{:>10}{:>12}",
                name,
                s.count,
                micros(s.p50),
                micros(s.p90),
                micros(s.p99),
                micros(s.p999),
                micros(s.max)
            );
        }
        let mem = &self.memory;
        let _ = writeln!(t, "memory (RSS, {} connections up when read)", mem.conns_held);
        let _ = writeln!(
            t,
            "  loadgen            {} → {}  ({:.0} B per connection)",
            mib(mem.loadgen_rss_start),
            mib(mem.loadgen_rss_held),
            mem.loadgen_bytes_per_conn
        );
        if let (Some(start), Some(held)) = (mem.server_rss_start, mem.server_rss_held) {
            let _ = writeln!(
                t,
                "  server (pid {})  {} → {}  ({:.0} B per connection)",
                mem.server_pid.map(|p| p.to_string()).unwrap_or_default(),
                mib(start),
                mib(held),
                mem.server_bytes_per_conn.unwrap_or(0.0)
            );
        }
        for note in &self.notes {
            let _ = writeln!(t, "note: {note}");
        }
        t
    }
}

impl Memory {
    pub fn recompute(&mut self) {
        let n = self.conns_held.max(1) as f64;
        self.loadgen_bytes_per_conn =
            self.loadgen_rss_held.saturating_sub(self.loadgen_rss_start) as f64 / n;
        self.server_bytes_per_conn = match (self.server_rss_start, self.server_rss_held) {
            (Some(s), Some(h)) => Some(h.saturating_sub(s) as f64 / n),
            _ => None,
        };
    }
}

/// Per-publish rows the table prints (more are only in the JSON).
const PUBLISH_ROWS_SHOWN: usize = 10;

/// Formats microseconds with a unit that keeps the number short.
pub fn micros(us: u64) -> String {
    match us {
        0..=9_999 => format!("{us}µs"),
        10_000..=9_999_999 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut h1 = latency_histogram();
        h1.record(100).unwrap();
        let mut h2 = latency_histogram();
        h2.record(300).unwrap();
        h2.record(500).unwrap();
        let mut a = Report { runs: 1, proto: "ws".into(), ..Report::default() };
        a.latency_us = Summary::from_histogram(&h1);
        a.messages.lost = 2;
        a.connections.failures.insert("refused".into(), 3);
        a.memory = Memory {
            loadgen_rss_start: 10,
            loadgen_rss_held: 110,
            conns_held: 10,
            ..Memory::default()
        };
        let mut b = a.clone();
        b.latency_us = Summary::from_histogram(&h2);
        b.loop_lag_us = Summary::from_histogram(&h2);
        b.loop_lag_max_us_by_shard = vec![500];
        b.messages.pongs = 7;
        let m = Report::merge(&[a, b]);
        assert_eq!(m.runs, 2);
        assert_eq!(m.latency_us.count, 3);
        assert_eq!(m.latency_us.max, 500);
        assert_eq!(m.messages.lost, 4);
        assert_eq!(m.connections.failures["refused"], 6);
        assert_eq!(m.memory.loadgen_bytes_per_conn, 10.0);
        assert_eq!(m.loop_lag_us.max, 500);
        assert_eq!(m.loop_lag_max_us_by_shard, vec![500]);
        assert_eq!(m.messages.pongs, 7);
        assert!(m.table().contains("loop lag"));
        assert!(m.table().contains("delivery latency"));
    }

    #[test]
    fn version_1_reports_still_parse() {
        let mut v = serde_json::to_value(Report::default()).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in ["loop_lag_us", "loop_turn_us", "loop_lag_max_us_by_shard", "pong_us"] {
            o.remove(k);
        }
        o.remove("publishes");
        o["messages"].as_object_mut().unwrap().remove("pongs");
        let r: Report = serde_json::from_value(v).unwrap();
        assert_eq!(r.loop_lag_us.count, 0);
    }

    #[test]
    fn units() {
        assert_eq!(micros(950), "950µs");
        assert_eq!(micros(12_500), "12.5ms");
        assert_eq!(micros(12_500_000), "12.50s");
    }
}
