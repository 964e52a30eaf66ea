//! The publisher: one thread driving c10m's admin API over a keep-alive connection per
//! admin listener at `--publish-rate`, stamping each payload with its sequence number and
//! send time.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::payload;
use crate::plan::{Plan, PublishTo};
use crate::proto::http;
use crate::shared::{latency_histogram, Shared};
use crate::sys;

/// How long one publish may take before the connection is dropped and counted as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed publish so a dead server is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const RESPONSE_BYTES_MAX: usize = 4 << 20;

#[derive(Debug)]
pub struct PublishResult {
    pub published: u64,
    pub accepted: u64,
    pub errors: u64,
    /// Admin request round trip, µs.
    pub request_us: Histogram<u64>,
    /// From the first publish's send to the last one's answer, seconds.
    pub elapsed_s: f64,
    pub last_error: Option<String>,
}

struct Admin {
    stream: Option<TcpStream>,
    host: String,
    buf: Vec<u8>,
}

impl Admin {
    /// Sends `request` (one or several pipelined HTTP requests) and reads `answers`
    /// responses; returns their statuses.
    fn publish(&mut self, request: &[u8], answers: usize) -> Result<Vec<u16>, String> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(
                &self.host.parse().map_err(|_| "bad admin")?,
                RESPONSE_TIMEOUT,
            )
            .map_err(|e| format!("admin connect: {e}"))?;
            s.set_read_timeout(Some(RESPONSE_TIMEOUT)).ok();
            s.set_nodelay(true).ok();
            self.stream = Some(s);
        }
        let result = self.exchange(request, answers);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self, request: &[u8], answers: usize) -> Result<Vec<u16>, String> {
        let stream = self.stream.as_mut().ok_or("no admin connection")?;
        stream.write_all(request).map_err(|e| format!("admin write: {e}"))?;
        self.buf.clear();
        let mut statuses = Vec::with_capacity(answers);
        let mut chunk = [0u8; 16384];
        loop {
            match http::parse_response(&self.buf) {
                Ok(Some((status, used))) => {
                    self.buf.drain(..used);
                    statuses.push(status);
                    if statuses.len() == answers {
                        return Ok(statuses);
                    }
                    continue;
                }
                Ok(None) if self.buf.len() > RESPONSE_BYTES_MAX => {
                    return Err("admin response too long".into())
                }
                Ok(None) => {}
                Err(e) => return Err(format!("admin response malformed: {e:?}")),
            }
            let n = stream.read(&mut chunk).map_err(|e| format!("admin read: {e}"))?;
            if n == 0 {
                return Err("admin closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Publishes from the moment the hold begins until `stop`, `--publish-count`, or the
/// preallocated sequence records run out.
pub fn run(plan: Arc<Plan>, shared: Arc<Shared>, stop: Arc<AtomicBool>) -> PublishResult {
    let mut result = PublishResult {
        published: 0,
        accepted: 0,
        errors: 0,
        request_us: latency_histogram(),
        elapsed_s: 0.0,
        last_error: None,
    };
    while !shared.holding.load(Relaxed) {
        if stop.load(Relaxed) {
            return result;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut admins: Vec<Admin> = plan
        .admins
        .iter()
        .map(|a| Admin { stream: None, host: a.to_string(), buf: Vec::new() })
        .collect();
    let buckets = match plan.publish_to {
        PublishTo::All => 1,
        PublishTo::User => shared.user_up.len() as u64,
        PublishTo::Topic => shared.topic_up.len() as u64,
    };
    // Connections per bucket, up or not: the planned audience of a publish to the bucket.
    let mut sizes = vec![0u32; buckets.max(1) as usize];
    for n in 0..plan.conns {
        let b = match plan.publish_to {
            PublishTo::All => 0,
            PublishTo::User => plan.user_bucket(n),
            PublishTo::Topic => plan.topic_bucket(n).unwrap_or(0),
        };
        if let Some(size) = sizes.get_mut(b) {
            *size += 1;
        }
    }
    let delay_end = Instant::now() + plan.publish_delay;
    while Instant::now() < delay_end {
        if stop.load(Relaxed) {
            return result;
        }
        std::thread::sleep((delay_end - Instant::now()).min(Duration::from_millis(20)));
    }
    let seq_max = shared.records.len() as u64 - 1;
    let count = plan.publish_count.unwrap_or(u64::MAX).min(seq_max);
    let mut rng = sys::realtime_ns() | 1;
    let start = Instant::now();
    let mut request = Vec::new();
    let mut body = Vec::new();
    // Publishes made but not sent yet: a batch or a pipeline fills up first.
    let group = plan.publish_batch.max(plan.publish_pipeline).max(1) as usize;
    let mut pending: Vec<(u64, http::Audience, Vec<u8>)> = Vec::with_capacity(group);
    for seq in 1..=count {
        let due = start + Duration::from_secs_f64((seq - 1) as f64 / plan.publish_rate);
        while Instant::now() < due {
            if stop.load(Relaxed) {
                return result;
            }
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(20)));
        }
        if stop.load(Relaxed) {
            break;
        }
        result.elapsed_s = start.elapsed().as_secs_f64();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let bucket = rng % buckets.max(1);
        let expected = match plan.publish_to {
            PublishTo::All => shared.up.load(Relaxed).max(0) as u32,
            PublishTo::User => shared.user_up[bucket as usize].load(Relaxed),
            PublishTo::Topic => shared.topic_up[bucket as usize].load(Relaxed),
        };
        let record = &shared.records[seq as usize];
        let sent_ns = sys::realtime_ns();
        record.expected.store(expected, Relaxed);
        record.audience.store(sizes.get(bucket as usize).copied().unwrap_or(0), Relaxed);
        record.sent_ns.store(sent_ns, Relaxed);
        body.clear();
        let fill = if plan.payload_json { payload::JSON_FILL } else { b"x" };
        payload::encode_with(&mut body, seq, sent_ns, plan.payload_bytes, fill);
        pending.push((seq, plan.audience(bucket), body.clone()));
        result.published += 1;
        if pending.len() < group && seq < count {
            continue;
        }
        send(&plan, &shared, &mut admins, &mut request, &mut pending, &mut result);
    }
    if !pending.is_empty() {
        send(&plan, &shared, &mut admins, &mut request, &mut pending, &mut result);
    }
    result.elapsed_s = start.elapsed().as_secs_f64();
    result
}

/// Sends what is pending to every admin: one batch request, or single requests pipelined.
/// Every admin gets the same sequence numbers: a client sits on one server, so it sees each
/// message once whichever of them holds it.
fn send(
    plan: &Plan,
    shared: &Shared,
    admins: &mut [Admin],
    request: &mut Vec<u8>,
    pending: &mut Vec<(u64, http::Audience, Vec<u8>)>,
    result: &mut PublishResult,
) {
    let batch = plan.publish_batch > 1;
    let t = Instant::now();
    let mut accepted = false;
    for admin in admins.iter_mut() {
        request.clear();
        let key = plan.admin_key.as_deref();
        let answers = if batch {
            let lines: Vec<(http::Audience, Vec<u8>)> =
                pending.iter().map(|(_, a, b)| (a.clone(), b.clone())).collect();
            http::batch_request(request, &admin.host, key, &lines);
            1
        } else {
            for (_, audience, body) in pending.iter() {
                http::publish_request(request, &admin.host, key, audience, body);
            }
            pending.len()
        };
        let ok = if batch { 200 } else { 202 };
        match admin.publish(request, answers) {
            Ok(statuses) if statuses.iter().all(|&s| s == ok) => accepted = true,
            Ok(statuses) => {
                result.errors += 1;
                let bad = statuses.iter().find(|&&s| s != ok).copied().unwrap_or(0);
                result.last_error = Some(format!("{} answered {bad}", admin.host));
            }
            Err(e) => {
                result.errors += 1;
                result.last_error = Some(format!("{}: {e}", admin.host));
            }
        }
    }
    if accepted {
        for (seq, _, _) in pending.iter() {
            shared.records[*seq as usize].accepted.store(true, Relaxed);
        }
        result.accepted += pending.len() as u64;
        result.request_us.saturating_record((t.elapsed().as_micros() as u64).max(1));
    } else {
        std::thread::sleep(RETRY_PAUSE);
    }
    pending.clear();
}
