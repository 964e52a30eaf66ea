//! A bounded single-producer single-consumer ring: the building block of the shard mesh.
//!
//! The mesh holds one ring per ordered pair of shards (Seastar's smp queues), so every ring has
//! exactly one writer thread and one reader thread and needs no lock and no compare-and-swap:
//! each side owns one index and only reads the other's.
//!
//! ```text
//!            consumer owns head                 producer owns tail
//!                    │                                   │
//!   slots:  [ free | item | item | item | item | free | free | free ]   capacity = 8 (2^k)
//!                    ▲ head & mask                       ▲ tail & mask
//!
//!   head, tail: free-running counters (wrapping usize); slot = counter & mask;
//!   len = tail - head (wrapping), 0 <= len <= capacity.
//! ```
//!
//! `head` and `tail` sit on separate cache lines so the two cores do not fight over one line,
//! and each side keeps a private copy of the other side's counter, reloading it only when the
//! ring looks full (producer) or empty (consumer). In the steady state a push touches only the
//! producer's own line and the slot; the consumer's line is read once per "looks full".
//!
//! Ordering: the producer writes the slot, then publishes `tail` with Release; the consumer
//! loads `tail` with Acquire before reading the slot. Symmetrically the consumer moves the item
//! out, then publishes `head` with Release; the producer loads `head` with Acquire before it
//! overwrites that slot.
//!
//! Neither end is `Clone` and neither is `Sync`: the protocol is only sound with one producer
//! and one consumer, and the type system enforces that (`push` and `pop` take `&mut self`, and
//! an end cannot be shared between threads by reference). Each end is `Send` so it can be moved
//! to the shard thread that owns it.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The largest capacity a ring may have, in items.
///
/// A mesh ring carries small messages in batches between two shards; a few thousand slots
/// absorb any burst a shard produces between two polls. Anything near this limit is a
/// configuration mistake (N² rings of it would be gigabytes), so `channel` refuses it.
pub const CAPACITY_MAX: usize = 1 << 24;

/// The padding and alignment of each counter, in bytes.
///
/// 128 rather than 64: on x86-64 the spatial prefetcher pulls cache lines in pairs, so two
/// counters on adjacent 64-byte lines still interfere (crossbeam's `CachePadded` does the same).
const COUNTER_ALIGN_BYTES: usize = 128;

// The counters are free-running and compared with wrapping subtraction, which is only
// unambiguous while the capacity is at most half the counter range.
const _: () = assert!(CAPACITY_MAX.is_power_of_two());
const _: () = assert!(CAPACITY_MAX <= usize::MAX / 2);
const _: () = assert!(std::mem::align_of::<CachePadded<AtomicUsize>>() == COUNTER_ALIGN_BYTES);
const _: () = assert!(std::mem::size_of::<CachePadded<AtomicUsize>>() == COUNTER_ALIGN_BYTES);

/// Keeps its content alone on its cache line (and the adjacent one the prefetcher pairs it with).
#[repr(align(128))]
struct CachePadded<T>(T);

/// The state both ends share: the two counters and the slots.
struct Shared<T> {
    /// Count of items popped so far (wrapping). Written by the consumer only.
    head: CachePadded<AtomicUsize>,
    /// Count of items pushed so far (wrapping). Written by the producer only.
    /// Invariant: 0 <= tail - head <= capacity.
    tail: CachePadded<AtomicUsize>,
    /// Slot `i & mask` is initialised exactly when `head <= i < tail` (in wrapping order).
    /// The `UnsafeCell` makes `Shared` `!Sync`; the ends assert thread safety by hand below.
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

impl<T> Shared<T> {
    fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Both ends are gone (this is the last `Arc`), and `Arc`'s drop synchronises with the
        // other end's final release, so plain reads see the last published counters.
        let head = *self.head.0.get_mut();
        let tail = *self.tail.0.get_mut();
        let len = tail.wrapping_sub(head);
        assert!(len <= self.capacity());
        let mask = self.mask();
        for i in 0..len {
            let slot = self.slots[head.wrapping_add(i) & mask].get_mut();
            // SAFETY: slots in [head, tail) hold initialised items that nobody moved out, and
            // each is dropped exactly once here because the counters are not used again.
            unsafe { slot.assume_init_drop() };
        }
    }
}

/// The sending end of a ring. Exactly one exists per ring.
///
/// `Send` so it can move to its shard's thread; not `Clone` and not `Sync`, because a second
/// producer racing on `tail` would overwrite items (single producer by construction).
///
/// ```compile_fail
/// fn assert_sync<S: Sync>() {}
/// assert_sync::<c10m::mesh::spsc::Producer<u64>>();
/// ```
///
/// ```compile_fail
/// fn assert_clone<S: Clone>() {}
/// assert_clone::<c10m::mesh::spsc::Producer<u64>>();
/// ```
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Private copy of `shared.tail`: only this end writes it, so it never needs a load.
    tail: usize,
    /// The consumer's `head` as last seen; stale means "smaller", so it can only make the ring
    /// look fuller than it is, never emptier.
    head_seen: usize,
}

/// The receiving end of a ring. Exactly one exists per ring.
///
/// `Send` so it can move to its shard's thread; not `Clone` and not `Sync`, because a second
/// consumer racing on `head` would read one item twice (single consumer by construction).
///
/// ```compile_fail
/// fn assert_sync<S: Sync>() {}
/// assert_sync::<c10m::mesh::spsc::Consumer<u64>>();
/// ```
///
/// ```compile_fail
/// fn assert_clone<S: Clone>() {}
/// assert_clone::<c10m::mesh::spsc::Consumer<u64>>();
/// ```
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Private copy of `shared.head`: only this end writes it, so it never needs a load.
    head: usize,
    /// The producer's `tail` as last seen; stale means "smaller", so it can only make the ring
    /// look emptier than it is, never fuller.
    tail_seen: usize,
}

// SAFETY: a `Producer` only writes slots outside [head, tail) and the `tail` counter, a
// `Consumer` only reads slots inside [head, tail) and writes `head`, and the Release/Acquire
// pairs on the counters order every slot access between the two threads. Moving an end to
// another thread moves values of `T` across threads, hence `T: Send`. Neither end is `Sync`
// (its `Arc<Shared<T>>` is not), so each end is used by one thread at a time.
unsafe impl<T: Send> Send for Producer<T> {}
// SAFETY: see the `Send` impl for `Producer` just above; the argument is symmetric.
unsafe impl<T: Send> Send for Consumer<T> {}

/// Creates a ring holding up to `capacity` items, rounded up to a power of two.
///
/// This is the only allocation the ring ever makes: `push` and `pop` never allocate.
///
/// # Panics
///
/// When `capacity` is 0 or, after rounding, greater than [`CAPACITY_MAX`].
pub fn channel<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    assert!(capacity > 0, "an SPSC ring needs a capacity of at least one item");
    assert!(capacity <= CAPACITY_MAX, "SPSC ring capacity {capacity} > {CAPACITY_MAX}");
    let capacity = capacity.next_power_of_two();
    assert!(capacity <= CAPACITY_MAX);

    let slots: Box<[UnsafeCell<MaybeUninit<T>>]> =
        (0..capacity).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
    assert_eq!(slots.len(), capacity);
    let shared = Arc::new(Shared {
        head: CachePadded(AtomicUsize::new(0)),
        tail: CachePadded(AtomicUsize::new(0)),
        slots,
    });
    let producer = Producer { shared: Arc::clone(&shared), tail: 0, head_seen: 0 };
    let consumer = Consumer { shared, head: 0, tail_seen: 0 };
    (producer, consumer)
}

impl<T> Producer<T> {
    /// Appends `value`, or hands it back as `Err(value)` when the ring is full.
    ///
    /// Never blocks and never allocates; the caller decides what to do with a full ring
    /// (keep the value in a local backlog, drop it and count, or ring the doorbell and retry).
    pub fn push(&mut self, value: T) -> Result<(), T> {
        let capacity = self.shared.capacity();
        if self.tail.wrapping_sub(self.head_seen) == capacity {
            // Looks full with the cached head: refresh it, the consumer may have moved on.
            // Acquire pairs with the consumer's Release store, so its move out of the slot
            // we are about to reuse happens before our write into it.
            self.head_seen = self.shared.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head_seen) == capacity {
                return Err(value);
            }
        }
        assert!(self.tail.wrapping_sub(self.head_seen) < capacity);

        let slot = self.shared.slots[self.tail & self.shared.mask()].get();
        // SAFETY: the slot at `tail` is outside [head, tail) because the ring is not full, so
        // the consumer does not touch it until we publish the new tail below, and it holds no
        // initialised item, so overwriting it leaks nothing.
        unsafe { (*slot).write(value) };
        self.tail = self.tail.wrapping_add(1);
        // Release publishes the slot write to the consumer's Acquire load of `tail`.
        self.shared.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Whether a `push` now would fail; a snapshot, since the consumer may free a slot at once.
    pub fn is_full(&self) -> bool {
        let capacity = self.shared.capacity();
        if self.tail.wrapping_sub(self.head_seen) < capacity {
            // The cached head only lags the real one, so "not full" by it is certain.
            return false;
        }
        let head = self.shared.head.0.load(Ordering::Acquire);
        self.tail.wrapping_sub(head) == capacity
    }

    /// The number of items the ring holds when full (a power of two).
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }
}

impl<T> Consumer<T> {
    /// Removes the oldest item, or returns `None` when the ring is empty. Never blocks.
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.tail_seen {
            // Looks empty with the cached tail: refresh it, the producer may have pushed.
            // Acquire pairs with the producer's Release store, so its write into the slot
            // happens before our read of it.
            self.tail_seen = self.shared.tail.0.load(Ordering::Acquire);
            if self.head == self.tail_seen {
                return None;
            }
        }
        assert!(self.tail_seen.wrapping_sub(self.head) <= self.shared.capacity());

        let slot = self.shared.slots[self.head & self.shared.mask()].get();
        // SAFETY: the slot at `head` is inside [head, tail), so the producer initialised it and
        // published it with Release (we loaded `tail` with Acquire), and it does not touch it
        // again until we publish the new head below; reading moves the item out exactly once.
        let value = unsafe { (*slot).assume_init_read() };
        self.head = self.head.wrapping_add(1);
        // Release orders our read of the slot before the producer's reuse of it.
        self.shared.head.0.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Whether the ring holds nothing right now.
    ///
    /// A racy snapshot: the producer may push the moment after this returns `true`. A `false`
    /// is stable, though, since only this end removes items.
    pub fn is_empty(&self) -> bool {
        if self.head != self.tail_seen {
            // The cached tail only lags the real one, so "not empty" by it is certain.
            return false;
        }
        self.shared.tail.0.load(Ordering::Acquire) == self.head
    }

    /// The number of items in the ring right now: a snapshot that is a lower bound, since the
    /// producer may push more at any moment but only this end removes items.
    pub fn len(&self) -> usize {
        let tail = self.shared.tail.0.load(Ordering::Acquire);
        let len = tail.wrapping_sub(self.head);
        assert!(len <= self.shared.capacity());
        len
    }

    /// The number of items the ring holds when full (a power of two).
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    /// Counts its drops in a counter the test owns, so tests running in parallel do not mix.
    struct Counted<'a>(&'a AtomicUsize);

    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn capacity_rounds_up_to_a_power_of_two() {
        for (asked, expected) in [(1, 1), (2, 2), (3, 4), (5, 8), (64, 64), (1000, 1024)] {
            let (producer, consumer) = channel::<u32>(asked);
            assert_eq!(producer.capacity(), expected);
            assert_eq!(consumer.capacity(), expected);
        }
    }

    #[test]
    #[should_panic(expected = "at least one item")]
    fn zero_capacity_panics() {
        let _ = channel::<u32>(0);
    }

    #[test]
    #[should_panic(expected = "SPSC ring capacity")]
    fn capacity_above_max_panics() {
        let _ = channel::<u32>(CAPACITY_MAX + 1);
    }

    #[test]
    fn fifo_order() {
        let (mut producer, mut consumer) = channel(8);
        for i in 0..8 {
            producer.push(i).unwrap();
        }
        for i in 0..8 {
            assert_eq!(consumer.pop(), Some(i));
        }
        assert_eq!(consumer.pop(), None);
    }

    #[test]
    fn full_ring_returns_the_value() {
        let (mut producer, mut consumer) = channel(4);
        assert!(!producer.is_full());
        for i in 0..4 {
            producer.push(i).unwrap();
        }
        assert!(producer.is_full());
        assert_eq!(producer.push(99), Err(99));
        assert_eq!(consumer.len(), 4);

        assert_eq!(consumer.pop(), Some(0));
        assert!(!producer.is_full());
        producer.push(4).unwrap();
        assert!(producer.is_full());
        assert_eq!(producer.push(100), Err(100));
        let drained: Vec<i32> = std::iter::from_fn(|| consumer.pop()).collect();
        assert_eq!(drained, [1, 2, 3, 4]);
    }

    #[test]
    fn empty_ring_pops_none() {
        let (mut producer, mut consumer) = channel::<u64>(2);
        assert!(consumer.is_empty());
        assert_eq!(consumer.len(), 0);
        assert_eq!(consumer.pop(), None);
        producer.push(7).unwrap();
        assert!(!consumer.is_empty());
        assert_eq!(consumer.len(), 1);
        assert_eq!(consumer.pop(), Some(7));
        assert!(consumer.is_empty());
        assert_eq!(consumer.pop(), None);
    }

    #[test]
    fn wraparound_many_times() {
        let (mut producer, mut consumer) = channel(4);
        let laps = if cfg!(miri) { 50 } else { 10_000 };
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        // Uneven batch sizes move the fill level around so head and tail cross every slot
        // boundary in many phases.
        for lap in 0..laps {
            let batch = 1 + lap % 4;
            for _ in 0..batch {
                if producer.push(next_in).is_ok() {
                    next_in += 1;
                }
            }
            assert!(consumer.len() <= 4);
            for _ in 0..(1 + (lap * 7) % 3) {
                if let Some(value) = consumer.pop() {
                    assert_eq!(value, next_out);
                    next_out += 1;
                }
            }
        }
        while let Some(value) = consumer.pop() {
            assert_eq!(value, next_out);
            next_out += 1;
        }
        assert_eq!(next_in, next_out);
        assert!(next_in > laps as u64, "the ring must have wrapped many times");
    }

    #[test]
    fn wrapping_counters_near_usize_max() {
        // Starts both counters just below the wrap of usize to check the wrapping arithmetic.
        let (mut producer, mut consumer) = channel(4);
        let start = usize::MAX - 5;
        producer.shared.head.0.store(start, Ordering::Relaxed);
        producer.shared.tail.0.store(start, Ordering::Relaxed);
        producer.tail = start;
        producer.head_seen = start;
        consumer.head = start;
        consumer.tail_seen = start;
        for round in 0..5u32 {
            for i in 0..4 {
                producer.push(round * 10 + i).unwrap();
            }
            assert!(producer.is_full());
            assert_eq!(consumer.len(), 4);
            for i in 0..4 {
                assert_eq!(consumer.pop(), Some(round * 10 + i));
            }
            assert!(consumer.is_empty());
        }
    }

    #[test]
    fn drop_drops_remaining_items() {
        let drops = AtomicUsize::new(0);
        {
            let (mut producer, mut consumer) = channel(8);
            for _ in 0..6 {
                assert!(producer.push(Counted(&drops)).is_ok());
            }
            // Pop two (dropped here) and push two more so the remaining items wrap.
            drop(consumer.pop());
            drop(consumer.pop());
            assert_eq!(drops.load(Ordering::Relaxed), 2);
            for _ in 0..4 {
                assert!(producer.push(Counted(&drops)).is_ok());
            }
            assert_eq!(consumer.len(), 8);
            drop(producer);
            assert_eq!(drops.load(Ordering::Relaxed), 2, "items live while the consumer does");
            assert!(consumer.pop().is_some());
            assert_eq!(drops.load(Ordering::Relaxed), 3);
        }
        assert_eq!(drops.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn drop_consumer_first_drops_remaining_items() {
        let drops = AtomicUsize::new(0);
        let (mut producer, consumer) = channel(4);
        for _ in 0..3 {
            assert!(producer.push(Counted(&drops)).is_ok());
        }
        drop(consumer);
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        // The consumer is gone but the ring still holds the items; a push still works.
        assert!(producer.push(Counted(&drops)).is_ok());
        drop(producer);
        assert_eq!(drops.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn rejected_value_is_returned_not_dropped() {
        let drops = AtomicUsize::new(0);
        let (mut producer, _consumer) = channel(1);
        assert!(producer.push(Counted(&drops)).is_ok());
        let rejected = producer.push(Counted(&drops));
        assert!(rejected.is_err());
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        drop(rejected);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn zero_sized_items() {
        let (mut producer, mut consumer) = channel(2);
        producer.push(()).unwrap();
        producer.push(()).unwrap();
        assert_eq!(producer.push(()), Err(()));
        assert_eq!(consumer.pop(), Some(()));
        assert_eq!(consumer.pop(), Some(()));
        assert_eq!(consumer.pop(), None);
    }

    #[test]
    fn ends_are_send() {
        fn assert_send<S: Send>() {}
        assert_send::<Producer<Box<u64>>>();
        assert_send::<Consumer<Box<u64>>>();
    }

    /// Moves `count` heap-allocated items through a small ring between two threads, so the
    /// ring is full and empty many times, and checks order and that nothing is lost.
    fn stress(count: u64, capacity: usize) {
        let (mut producer, mut consumer) = channel::<Box<u64>>(capacity);
        let sender = thread::spawn(move || {
            for i in 0..count {
                let mut item = Box::new(i);
                loop {
                    match producer.push(item) {
                        Ok(()) => break,
                        Err(back) => {
                            item = back;
                            thread::yield_now();
                        }
                    }
                }
            }
        });
        let mut expected = 0u64;
        while expected < count {
            match consumer.pop() {
                Some(item) => {
                    assert_eq!(*item, expected);
                    expected += 1;
                }
                None => thread::yield_now(),
            }
        }
        sender.join().unwrap();
        assert_eq!(consumer.pop(), None);
        assert!(consumer.is_empty());
    }

    #[test]
    fn two_thread_stress() {
        let count = if cfg!(miri) { 2_000 } else { 1_000_000 };
        stress(count, 64);
    }

    #[test]
    fn two_thread_stress_capacity_one() {
        let count = if cfg!(miri) { 500 } else { 100_000 };
        stress(count, 1);
    }
}
