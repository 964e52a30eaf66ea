//! The protocol hot paths: a server frame per delivery, a client frame (masked) per read,
//! and one request head per connection.

use std::hint::black_box;

use c10m::proto::deflate::{Deflater, Inflater};
use c10m::proto::http1::{parse_request, HeadLimits};
use c10m::proto::ws::{write_frame, OpCode, Session, WsLimits};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const LIMITS: WsLimits = WsLimits { frame_bytes_max: 1 << 20, message_bytes_max: 1 << 20 };

/// A client frame: final, masked, `opcode`, with `payload`.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn ws_write_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws::write_frame");
    for size in [32usize, 1024, 65536] {
        let payload = vec![b'x'; size];
        let mut out = Vec::with_capacity(size + 16);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            b.iter(|| {
                out.clear();
                write_frame(&mut out, OpCode::Text, black_box(payload));
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn ws_session_feed(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws::Session::feed");
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut inflater = Inflater::new();
    for size in [32usize, 1024, 65536] {
        let input = masked_frame(0x1, &vec![b'x'; size]);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::new("text", size), &input, |b, input| {
            let mut session = Session::new();
            b.iter(|| {
                events.clear();
                out.clear();
                session.feed(black_box(input), &LIMITS, &mut inflater, &mut events, &mut out);
                black_box(events.len())
            })
        });
    }
    // The frame an idle connection sees most: a ping, answered with a pong into `out`.
    let ping = masked_frame(0x9, b"keepalive");
    group.throughput(Throughput::Bytes(ping.len() as u64));
    group.bench_function("ping", |b| {
        let mut session = Session::new();
        b.iter(|| {
            events.clear();
            out.clear();
            session.feed(black_box(&ping), &LIMITS, &mut inflater, &mut events, &mut out);
            black_box(out.len())
        })
    });
    // A 1 KiB text frame split into 7-byte reads: the boxed partial-frame path.
    let split = masked_frame(0x1, &[b'y'; 1024]);
    group.throughput(Throughput::Bytes(split.len() as u64));
    group.bench_function("text_1024_split_7", |b| {
        let mut session = Session::new();
        b.iter(|| {
            events.clear();
            out.clear();
            for piece in split.chunks(7) {
                session.feed(black_box(piece), &LIMITS, &mut inflater, &mut events, &mut out);
            }
            black_box(events.len())
        })
    });
    group.finish();
}

fn http1_parse_request(c: &mut Criterion) {
    let limits = HeadLimits { head_bytes_max: 8192, headers_max: 32 };
    let upgrade = b"GET /ws?user=u12345&topics=news,t7 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0\r\n\
        Origin: https://example.com\r\nAccept-Encoding: gzip, deflate\r\n\r\n";
    let publish = b"POST /publish?topic=news HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n\
        Content-Length: 32\r\n\r\n";
    let mut group = c.benchmark_group("http1::parse_request");
    for (name, head) in [("ws_upgrade", &upgrade[..]), ("publish", &publish[..])] {
        group.throughput(Throughput::Bytes(head.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), head, |b, head| {
            b.iter(|| black_box(parse_request(black_box(head), &limits).ok()))
        });
    }
    // Half a head: the "need more" answer a slow client gets on every read.
    let partial = &upgrade[..upgrade.len() / 2];
    group.bench_function("partial", |b| {
        b.iter(|| black_box(parse_request(black_box(partial), &limits).ok()))
    });
    group.finish();
}

/// A realistic notification (462 B) and a price tick (32 B).
const NOTIFICATION: &[u8] = br#"{"type":"notification","id":"n_8f3a2c91","user":"u_1029384","created_at":"2026-12-02T19:20:11.482Z","title":"New comment on your post","body":"Alice replied: Great write-up, thanks for sharing the numbers on connection cost!","actor":{"id":"u_5521","name":"Alice Martin","avatar":"https://cdn.example.com/a/5521.jpg"},"target":{"kind":"post","id":"p_77120","url":"https://example.com/p/77120#c_99812"},"read":false,"priority":"normal","tags":["comment","reply"]}"#;
const TICK: &[u8] = br#"{"px":101.25,"sym":"ABC","t":1}"#;

/// permessage-deflate: c10m's per-shard compressor (flate2 + zlib-rs, reset per message) at
/// levels 1 and 6, beside miniz_oxide and libdeflate on the same payloads, and the inflate
/// of a client message. Prints each compressed size once.
fn deflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate");
    for (name, payload) in [("json462", NOTIFICATION), ("tick32", TICK)] {
        group.throughput(Throughput::Bytes(payload.len() as u64));
        for level in [1u32, 6] {
            let mut d = Deflater::new(level, 0);
            let mut out = Vec::with_capacity(1024);
            out.clear();
            let shrank = d.frame(&mut out, OpCode::Text, payload);
            eprintln!("c10m zlib-rs L{level} {name}: frame {} B (compressed: {shrank})", out.len());
            group.bench_function(format!("c10m_zlib_rs_L{level}/{name}"), |b| {
                b.iter(|| {
                    out.clear();
                    black_box(d.frame(&mut out, OpCode::Text, black_box(payload)))
                })
            });
            let flags =
                miniz_oxide::deflate::core::create_comp_flags_from_zip_params(level as i32, -15, 0);
            let mut mz = miniz_oxide::deflate::core::CompressorOxide::new(flags);
            let mut buf = vec![0u8; payload.len() + 64];
            group.bench_function(format!("miniz_oxide_L{level}/{name}"), |b| {
                b.iter(|| {
                    mz.reset();
                    let (_, _, n) = miniz_oxide::deflate::core::compress(
                        &mut mz,
                        black_box(payload),
                        &mut buf,
                        miniz_oxide::deflate::core::TDEFLFlush::Sync,
                    );
                    black_box(n)
                })
            });
            let lvl = libdeflater::CompressionLvl::new(level as i32).unwrap();
            let mut ld = libdeflater::Compressor::new(lvl);
            group.bench_function(format!("libdeflate_L{level}/{name}"), |b| {
                b.iter(|| black_box(ld.deflate_compress(black_box(payload), &mut buf).unwrap()))
            });
        }
    }
    let mut d = Deflater::new(6, 0);
    let mut frame = Vec::new();
    d.frame(&mut frame, OpCode::Text, NOTIFICATION);
    let body = frame[4..].to_vec();
    let mut inflater = Inflater::new();
    group.throughput(Throughput::Bytes(NOTIFICATION.len() as u64));
    group.bench_function("c10m_inflate/json462", |b| {
        b.iter(|| black_box(inflater.inflate(black_box(&body), 1 << 16).unwrap().len()))
    });
    group.finish();
}

criterion_group!(benches, ws_write_frame, ws_session_feed, http1_parse_request, deflate);
criterion_main!(benches);
