//! The mesh's SPSC ring: push/pop on one thread (the cost of the ring itself) and a
//! producer thread streaming to a consumer thread (cache-line traffic between cores).

use std::hint::black_box;
use std::thread;

use c10m::mesh::spsc::channel;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The mesh's message size: 32 bytes.
type Item = [u64; 4];

fn same_thread(c: &mut Criterion) {
    let (mut tx, mut rx) = channel::<Item>(1024);
    let mut group = c.benchmark_group("spsc");
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_pop_same_thread", |b| {
        b.iter(|| {
            tx.push(black_box([1, 2, 3, 4])).ok();
            black_box(rx.pop())
        })
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("batch_64_same_thread", |b| {
        b.iter(|| {
            for i in 0..64u64 {
                tx.push([i, 0, 0, 0]).ok();
            }
            while let Some(item) = rx.pop() {
                black_box(item);
            }
        })
    });
    group.finish();
}

fn cross_thread(c: &mut Criterion) {
    const ITEMS: u64 = 100_000;
    let mut group = c.benchmark_group("spsc");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(20);
    group.bench_function("stream_100k_cross_thread", |b| {
        b.iter(|| {
            let (mut tx, mut rx) = channel::<Item>(1024);
            let consumer = thread::spawn(move || {
                let mut seen = 0u64;
                while seen < ITEMS {
                    match rx.pop() {
                        Some(item) => {
                            black_box(item);
                            seen += 1;
                        }
                        None => std::hint::spin_loop(),
                    }
                }
                seen
            });
            for i in 0..ITEMS {
                let mut item = [i, 0, 0, 0];
                while let Err(back) = tx.push(item) {
                    item = back;
                    std::hint::spin_loop();
                }
            }
            black_box(consumer.join().unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, same_thread, cross_thread);
criterion_main!(benches);
