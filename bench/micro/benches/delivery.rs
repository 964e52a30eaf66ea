//! The user-space part of one delivery, per recipient: a shard encodes a published message
//! once and queues the shared frame on each recipient's outbox (created for the send, dropped
//! when it completes), and the history log retains the message once and rebuilds it for a
//! replay. The kernel's send is not here (bench/PROFILE.md: it is 98 % of a delivery).

use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;

use c10m::history::{Limits, Log, Stream};
use c10m::proto::ws;
use c10m::push::Message;
use c10m::shard::conn::{Chunk, Iov, Outbox, IOV_CHUNKS};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const RECIPIENTS: usize = 1000;

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("delivery");
    group.throughput(Throughput::Elements(RECIPIENTS as u64));
    // An idle recipient holds no outbox: one is made, the frame queued, the send's
    // completion consumes it, and the outbox goes.
    group.bench_function("fan_out_1000_idle_recipients", |b| {
        let mut frame = Vec::with_capacity(64);
        b.iter(|| {
            frame.clear();
            ws::write_frame(&mut frame, ws::OpCode::Text, black_box(&[b'x'; 32]));
            let shared: Rc<[u8]> = Rc::from(&frame[..]);
            for _ in 0..RECIPIENTS {
                let mut o = Box::new(Outbox::default());
                o.bytes += shared.len();
                o.chunks.push_back(Chunk::Shared(Rc::clone(&shared)));
                black_box(&o);
                o.consume(shared.len());
            }
        })
    });
    // Recipients behind by a few messages: the frame joins an existing outbox, and every
    // fourth one a vectored send takes the queued chunks: their iovecs are written into the
    // outbox's boxed `Iov` (as `Shard::send_next` does), then its completion consumes them.
    group.bench_function("fan_out_1000_busy_recipients", |b| {
        let mut outboxes: Vec<Outbox> = (0..RECIPIENTS).map(|_| Outbox::default()).collect();
        let mut frame = Vec::with_capacity(64);
        b.iter(|| {
            frame.clear();
            ws::write_frame(&mut frame, ws::OpCode::Text, black_box(&[b'x'; 32]));
            let shared: Rc<[u8]> = Rc::from(&frame[..]);
            for o in outboxes.iter_mut() {
                o.bytes += shared.len();
                o.chunks.push_back(Chunk::Shared(Rc::clone(&shared)));
                if o.chunks.len() >= 4 {
                    let count = o.chunks.len().min(IOV_CHUNKS);
                    let iov = o.iov.get_or_insert_with(Iov::new);
                    for (i, chunk) in o.chunks.iter().take(count).enumerate() {
                        let bytes = chunk.bytes();
                        let base = bytes.as_ptr() as *mut libc::c_void;
                        iov.vecs[i] = libc::iovec { iov_base: base, iov_len: bytes.len() };
                    }
                    iov.msg.msg_iov = iov.vecs.as_mut_ptr();
                    iov.msg.msg_iovlen = count;
                    black_box(&iov.msg);
                    let n = o.bytes;
                    o.consume(n);
                }
            }
        })
    });
    group.finish();
}

fn history(c: &mut Criterion) {
    let limits = Limits { ttl_ms: 120_000, per_stream: 1000, bytes: 1 << 30 };
    let mut group = c.benchmark_group("history");
    group.throughput(Throughput::Elements(1));
    group.bench_function("retain_64_byte_message_1000_topics", |b| {
        let mut log = Log::new(limits);
        let names: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
        let mut i = 0usize;
        let mut now_us = 0u64;
        b.iter(|| {
            let seq = log.next_seq();
            let m =
                Arc::new(Message { id: seq, seq, part: 0, payload: [b'x'; 64].into(), text: true });
            now_us += 10;
            i = (i + 1) % names.len();
            log.retain(Stream::Topic(&names[i]), &m, now_us);
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("replay_100_of_a_topic", |b| {
        b.iter_batched_ref(
            || {
                let mut log = Log::new(limits);
                for k in 0..1000u64 {
                    let seq = log.next_seq();
                    let topic = format!("t{}", k % 10);
                    let m = Arc::new(Message {
                        id: seq,
                        seq,
                        part: 0,
                        payload: [b'x'; 64].into(),
                        text: true,
                    });
                    log.retain(Stream::Topic(&topic), &m, k);
                }
                log
            },
            |log| black_box(log.replay(&[Stream::Topic("t3")], 0, 1 << 20)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, fan_out, history);
criterion_main!(benches);
