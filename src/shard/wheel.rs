//! A hashed timer wheel: one per shard, holding at most a few entries per connection.
//!
//! Every connection has at most one armed deadline that matters (handshake timeout, next
//! ping, pong deadline, SSE heartbeat, idle timeout); the engine decides which one it was when
//! the entry fires. The wheel only maps "when" to an opaque `u64` key.
//!
//! ```text
//!   time ─► tick k covers the milliseconds ((k-1)·tick_ms, k·tick_ms]; a deadline is due at
//!           the end of its tick: deadline_tick = ceil(deadline_ms / tick_ms)
//!
//!   buckets[deadline_tick & (slots-1)]:   [0] [1] [2] … [slots-1]     one Vec<Entry> each
//!                                              ▲
//!                                        elapsed_tick & mask (every tick <= elapsed_tick fired)
//!
//!   Entry = { key: u64, deadline_ms: u64 }   16 bytes, no per-entry allocation
//! ```
//!
//! A deadline further than `slots` ticks away (beyond the horizon) sits in its bucket like any
//! other and is skipped each lap until it is due, so there is no overflow list and no
//! cascading. An `expire` after a long gap walks each bucket at most once, not every elapsed
//! tick. An entry keeps its exact `deadline_ms`, so the engine can compare a firing with its
//! own record and drop a stale one; duplicate keys are allowed for that reason.
//!
//! Memory: 16 bytes per entry plus each bucket's spare `Vec` capacity (kept between laps so a
//! steady state does not allocate), plus 24 bytes per bucket. Every re-arm adds an entry while
//! the old one waits to fire, so the engine should re-arm lazily (when the old entry fires)
//! rather than on every byte of activity.

#![forbid(unsafe_code)]

use std::mem::size_of;

/// The bytes one scheduled entry takes in a bucket.
pub const ENTRY_BYTES: usize = 16;
/// Capacity a bucket keeps after it drains; past it, spare room is released.
pub const BUCKET_KEEP_ENTRIES: usize = 64;

/// The tick the engine runs the wheel at, in milliseconds: fine enough for handshake and pong
/// deadlines (seconds), coarse enough that an idle shard wakes at most ten times a second.
pub const TICK_MS_DEFAULT: u64 = 100;

/// The number of buckets the engine uses: with the default tick, one lap is 102.4 s, so the
/// common deadlines (handshake, ping, pong, heartbeat) land within one lap and are never
/// skipped; longer ones (idle timeouts) are skipped a few times.
pub const SLOTS_DEFAULT: usize = 1024;

/// The most buckets a wheel may have. An empty bucket costs 24 bytes and a long gap walks
/// every bucket once, so 65,536 buckets (1.5 MiB, a walk of a few hundred microseconds) is
/// already far beyond what a shard needs.
pub const SLOTS_MAX: usize = 1 << 16;

/// The coarsest tick allowed, in milliseconds: a wheel ticking slower than once a minute could
/// not serve a handshake timeout.
pub const TICK_MS_MAX: u64 = 60_000;

/// The shortest lap the defaults must cover, in milliseconds: the usual ping interval (30 s)
/// and its pong deadline fit in one lap with room to spare.
const HORIZON_MS_DEFAULT_MIN: u64 = 60_000;

const _: () = assert!(size_of::<Entry>() == ENTRY_BYTES);
const _: () = assert!(SLOTS_MAX.is_power_of_two());
const _: () = assert!(SLOTS_DEFAULT.is_power_of_two());
const _: () = assert!(SLOTS_DEFAULT <= SLOTS_MAX);
const _: () = assert!(TICK_MS_DEFAULT > 0 && TICK_MS_DEFAULT <= TICK_MS_MAX);
const _: () = assert!(TICK_MS_DEFAULT * SLOTS_DEFAULT as u64 >= HORIZON_MS_DEFAULT_MIN);

/// One scheduled deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    key: u64,
    /// The deadline exactly as given to `insert`; its tick is derived when needed.
    deadline_ms: u64,
}

/// A hashed timer wheel. See the module documentation for the layout.
pub struct Wheel {
    tick_ms: u64,
    /// `slots - 1`; `slots` is a power of two.
    mask: u64,
    /// Entry `e` lives in `buckets[tick(e) & mask]`, and `tick(e) > elapsed_tick`.
    buckets: Box<[Vec<Entry>]>,
    /// Entries inserted with a deadline tick at or before `elapsed_tick`: they fire at the
    /// next `expire`, whatever time it passes.
    overdue: Vec<Entry>,
    /// Every tick up to and including this one has been expired. Never decreases.
    elapsed_tick: u64,
    /// The number of entries in `buckets` and `overdue` together.
    len: usize,
}

impl Wheel {
    /// Creates an empty wheel whose time starts at `now_ms`.
    ///
    /// `tick_ms` is the resolution (the engine uses [`TICK_MS_DEFAULT`]); `slots` is the number
    /// of buckets, a power of two (the engine uses [`SLOTS_DEFAULT`]). One lap of the wheel,
    /// its horizon, is `tick_ms * slots` milliseconds; deadlines beyond it are allowed.
    ///
    /// # Panics
    ///
    /// When `tick_ms` is 0 or above [`TICK_MS_MAX`], or `slots` is not a power of two or is
    /// above [`SLOTS_MAX`].
    pub fn new(tick_ms: u64, slots: usize, now_ms: u64) -> Wheel {
        assert!(tick_ms > 0, "a timer wheel tick must be at least 1 ms");
        assert!(tick_ms <= TICK_MS_MAX, "timer wheel tick {tick_ms} ms > {TICK_MS_MAX} ms");
        assert!(slots.is_power_of_two(), "timer wheel slots {slots} is not a power of two");
        assert!(slots <= SLOTS_MAX, "timer wheel slots {slots} > {SLOTS_MAX}");
        Wheel {
            tick_ms,
            mask: slots as u64 - 1,
            buckets: (0..slots).map(|_| Vec::new()).collect(),
            overdue: Vec::new(),
            elapsed_tick: now_ms / tick_ms,
            len: 0,
        }
    }

    /// Schedules `key` to fire at or after `deadline_ms`, at the first tick boundary at or
    /// after it (rounded up, never early).
    ///
    /// `key` is opaque to the wheel (the engine builds it from slot and generation); the same
    /// key may be inserted more than once and each insert fires once. A deadline beyond the
    /// horizon waits in its bucket until due. A deadline whose tick is at or before the wheel's
    /// time (the last `expire`, rounded down to a tick) fires at the next `expire`.
    ///
    /// Allocates only when the target bucket's `Vec` grows past its capacity.
    pub fn insert(&mut self, key: u64, deadline_ms: u64) {
        let entry = Entry { key, deadline_ms };
        let tick = deadline_ms.div_ceil(self.tick_ms);
        if tick <= self.elapsed_tick {
            self.overdue.push(entry);
        } else {
            self.buckets[self.bucket_index(tick)].push(entry);
        }
        self.len += 1;
    }

    /// Every scheduled `(key, deadline_ms)`, in no particular order (a live upgrade reads the
    /// lifetimes it carries from here, once).
    pub fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.buckets.iter().flatten().chain(&self.overdue).map(|e| (e.key, e.deadline_ms))
    }

    /// Moves every entry due at `now_ms` into `out` as `(key, deadline_ms)`, with the deadline
    /// exactly as inserted, and advances the wheel to `now_ms`. `out` is appended to, in no
    /// particular order.
    ///
    /// Time never goes backwards for the wheel: a `now_ms` before the last one is treated as
    /// the last one. Called every tick with nothing due, it looks at one bucket; after a long
    /// gap it walks each bucket at most once, however many ticks elapsed.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<(u64, u64)>) {
        let out_len_before = out.len();
        out.extend(self.overdue.drain(..).map(|e| (e.key, e.deadline_ms)));

        let now_tick = (now_ms / self.tick_ms).max(self.elapsed_tick);
        let ticks_elapsed = now_tick - self.elapsed_tick;
        if ticks_elapsed > 0 {
            // Due means deadline_tick <= now_tick, that is deadline_ms <= now_tick * tick_ms:
            // compared in milliseconds so the scan needs no division. No overflow, since
            // now_tick * tick_ms <= max(now_ms, the last now_ms).
            let due_ms = now_tick * self.tick_ms;
            let slots = self.mask + 1;
            // Only buckets of ticks in (elapsed_tick, now_tick] can hold due entries; after a
            // gap of a full lap or more, that is every bucket, each visited once.
            // An inclusive range, so a wheel at the end of time does not overflow.
            let first_tick = self.elapsed_tick + 1;
            let last_tick = self.elapsed_tick + ticks_elapsed.min(slots);
            assert!(last_tick <= now_tick);
            for tick in first_tick..=last_tick {
                let index = self.bucket_index(tick);
                Self::expire_bucket(&mut self.buckets[index], due_ms, out);
            }
            self.elapsed_tick = now_tick;
        }

        let fired = out.len() - out_len_before;
        assert!(fired <= self.len);
        self.len -= fired;
        assert!(self.overdue.is_empty());
    }

    /// Moves the entries of one bucket due by `due_ms` into `out`; the rest stay.
    fn expire_bucket(bucket: &mut Vec<Entry>, due_ms: u64, out: &mut Vec<(u64, u64)>) {
        // Swap-remove keeps the scan linear without shifting; order in a bucket is irrelevant.
        let mut i = 0;
        while i < bucket.len() {
            if bucket[i].deadline_ms <= due_ms {
                let entry = bucket.swap_remove(i);
                out.push((entry.key, entry.deadline_ms));
            } else {
                i += 1;
            }
        }
        // A burst (a reconnect wave) can leave a bucket with room for thousands of entries
        // that will not come back for a lap: give that memory back.
        if bucket.capacity() > BUCKET_KEEP_ENTRIES && bucket.len() < bucket.capacity() / 4 {
            bucket.shrink_to(bucket.len() * 2);
        }
    }

    /// Milliseconds from `now_ms` until the next tick boundary at which something may be due,
    /// or `None` when the wheel is empty.
    ///
    /// An upper bound on how long the shard may sleep, computed in O(1): it is conservative
    /// (the next tick boundary, not the earliest deadline). It is 0 when `expire` has work now:
    /// overdue entries, or ticks that passed since the last `expire`.
    pub fn next_wakeup_ms(&self, now_ms: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        if !self.overdue.is_empty() || now_ms / self.tick_ms > self.elapsed_tick {
            return Some(0);
        }
        let next_boundary_ms = (self.elapsed_tick + 1).saturating_mul(self.tick_ms);
        Some(next_boundary_ms.saturating_sub(now_ms))
    }

    /// The number of scheduled entries, counting every duplicate.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The resolution, in milliseconds.
    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// The number of buckets.
    pub fn slots(&self) -> usize {
        self.buckets.len()
    }

    /// One lap of the wheel, in milliseconds: deadlines further away are skipped at least once.
    pub fn horizon_ms(&self) -> u64 {
        self.tick_ms * (self.mask + 1)
    }

    fn bucket_index(&self, tick: u64) -> usize {
        // The mask is below SLOTS_MAX, so the result fits any usize.
        (tick & self.mask) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a tiny deterministic generator, so failures reproduce from the seed.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    fn expire(wheel: &mut Wheel, now_ms: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        wheel.expire(now_ms, &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn entry_is_sixteen_bytes() {
        assert_eq!(size_of::<Entry>(), 16);
    }

    #[test]
    #[should_panic(expected = "not a power of two")]
    fn slots_must_be_a_power_of_two() {
        let _ = Wheel::new(100, 1000, 0);
    }

    #[test]
    #[should_panic(expected = "at least 1 ms")]
    fn tick_must_be_positive() {
        let _ = Wheel::new(0, 1024, 0);
    }

    #[test]
    fn fires_at_the_tick_boundary_rounded_up() {
        let mut wheel = Wheel::new(100, 16, 1_000);
        wheel.insert(1, 1_150);
        wheel.insert(2, 1_200);
        wheel.insert(3, 1_201);
        assert!(expire(&mut wheel, 1_150).is_empty(), "1_150 rounds up to the tick at 1_200");
        assert!(expire(&mut wheel, 1_199).is_empty());
        assert_eq!(expire(&mut wheel, 1_200), [(1, 1_150), (2, 1_200)]);
        assert!(expire(&mut wheel, 1_299).is_empty());
        assert_eq!(expire(&mut wheel, 1_300), [(3, 1_201)]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn past_deadline_fires_at_next_expire() {
        let mut wheel = Wheel::new(100, 16, 5_000);
        wheel.insert(1, 4_000);
        wheel.insert(2, 0);
        wheel.insert(3, 5_000);
        assert_eq!(wheel.next_wakeup_ms(5_000), Some(0));
        // Same time as the wheel's: no tick passes, yet the overdue entries fire.
        assert_eq!(expire(&mut wheel, 5_000), [(1, 4_000), (2, 0), (3, 5_000)]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn beyond_horizon_waits_whole_laps() {
        // Horizon: 8 ticks of 10 ms = 80 ms. A deadline 3.5 laps away shares its bucket with
        // nearer ones and must be skipped until due.
        let mut wheel = Wheel::new(10, 8, 0);
        wheel.insert(1, 285);
        wheel.insert(2, 45);
        let mut fired = Vec::new();
        for now_ms in 0..=400 {
            for (key, deadline_ms) in expire(&mut wheel, now_ms) {
                assert!(deadline_ms <= now_ms);
                fired.push((key, now_ms));
            }
        }
        assert_eq!(fired, [(2, 50), (1, 290)]);
    }

    #[test]
    fn long_gap_fires_everything_due_and_keeps_the_rest() {
        let mut wheel = Wheel::new(100, 1024, 0);
        let ten_minutes_ms = 600_000;
        for key in 0..2_000u64 {
            wheel.insert(key, key * 500); // 0 ms .. 999.5 s
        }
        let fired = expire(&mut wheel, ten_minutes_ms);
        assert_eq!(fired.len(), 1_201); // deadlines 0, 500, …, 600_000
        assert!(fired.iter().all(|&(_, deadline_ms)| deadline_ms <= ten_minutes_ms));
        assert_eq!(wheel.len(), 2_000 - 1_201);
        let rest = expire(&mut wheel, 2 * ten_minutes_ms);
        assert_eq!(rest.len(), 2_000 - 1_201);
        assert!(wheel.is_empty());
    }

    #[test]
    fn huge_gap_walks_each_bucket_once() {
        // 2^50 ticks of 1 ms: a walk per elapsed tick would not finish; a walk per bucket does.
        let mut wheel = Wheel::new(1, 1024, 0);
        wheel.insert(1, 10);
        wheel.insert(2, 1 << 49);
        wheel.insert(3, (1 << 50) + 1);
        assert_eq!(expire(&mut wheel, 1 << 50), [(1, 10), (2, 1 << 49)]);
        assert_eq!(expire(&mut wheel, u64::MAX), [(3, (1 << 50) + 1)]);
        // At the end of time the wheel still accepts and fires entries without overflowing.
        wheel.insert(4, u64::MAX);
        assert_eq!(expire(&mut wheel, u64::MAX), [(4, u64::MAX)]);
        assert_eq!(wheel.next_wakeup_ms(u64::MAX), None);
    }

    #[test]
    fn time_going_backwards_is_ignored() {
        let mut wheel = Wheel::new(100, 16, 10_000);
        wheel.insert(1, 10_500);
        assert!(expire(&mut wheel, 9_000).is_empty());
        assert!(expire(&mut wheel, 10_400).is_empty());
        // A late call with an earlier time neither fires nor rewinds the wheel.
        assert!(expire(&mut wheel, 3_000).is_empty());
        wheel.insert(2, 10_300); // at or before the wheel's time: overdue
        assert_eq!(expire(&mut wheel, 3_000), [(2, 10_300)]);
        assert_eq!(expire(&mut wheel, 10_500), [(1, 10_500)]);
    }

    #[test]
    fn duplicate_keys_each_fire() {
        let mut wheel = Wheel::new(100, 16, 0);
        wheel.insert(7, 300);
        wheel.insert(7, 300);
        wheel.insert(7, 900);
        assert_eq!(wheel.len(), 3);
        assert_eq!(expire(&mut wheel, 300), [(7, 300), (7, 300)]);
        assert_eq!(wheel.len(), 1);
        assert_eq!(expire(&mut wheel, 900), [(7, 900)]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn len_accounting() {
        let mut wheel = Wheel::new(100, 64, 0);
        assert!(wheel.is_empty());
        assert_eq!(wheel.len(), 0);
        for key in 0..100 {
            wheel.insert(key, key * 100);
        }
        assert_eq!(wheel.len(), 100);
        let mut out = Vec::new();
        // `expire` appends: what `out` held before is not counted as fired.
        out.push((u64::MAX, 0));
        wheel.expire(4_950, &mut out);
        assert_eq!(out.len(), 1 + 50); // deadlines 0..=4_900
        assert_eq!(wheel.len(), 50);
        wheel.expire(u64::MAX, &mut out);
        assert_eq!(out.len(), 101);
        assert!(wheel.is_empty());
    }

    #[test]
    fn next_wakeup_is_an_upper_bound_on_sleep() {
        let mut wheel = Wheel::new(100, 16, 1_000);
        assert_eq!(wheel.next_wakeup_ms(1_000), None);
        wheel.insert(1, 5_000);
        assert_eq!(wheel.next_wakeup_ms(1_000), Some(100));
        assert_eq!(wheel.next_wakeup_ms(1_030), Some(70));
        // A tick passed without an expire: there may be work right now.
        assert_eq!(wheel.next_wakeup_ms(1_100), Some(0));
        assert!(expire(&mut wheel, 1_100).is_empty());
        assert_eq!(wheel.next_wakeup_ms(1_100), Some(100));
        assert_eq!(expire(&mut wheel, 5_000), [(1, 5_000)]);
        assert_eq!(wheel.next_wakeup_ms(5_000), None);
    }

    #[test]
    fn extreme_deadlines_do_not_overflow() {
        let mut wheel = Wheel::new(100, 16, u64::MAX - 1_000);
        wheel.insert(1, u64::MAX);
        assert!(expire(&mut wheel, u64::MAX - 500).is_empty());
        assert!(wheel.next_wakeup_ms(u64::MAX - 500).is_some());
        assert!(expire(&mut wheel, u64::MAX).is_empty());
        // u64::MAX rounds up to a tick past the end of time: it stays, and never fires early.
        assert_eq!(wheel.len(), 1);
    }

    /// Checks the wheel against a plain list over random deadlines (in the past, within the
    /// horizon and many laps beyond it), random steps of time (none, small, long gaps, and
    /// backwards) and inserts interleaved with expiries: at each `expire` exactly the entries
    /// whose tick has come fire, so nothing fires early and nothing is late or lost.
    #[test]
    fn random_schedule_matches_a_model() {
        for seed in 1..=20u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let tick_ms = 1 + rng.below(150);
            let slots = 1usize << rng.below(8);
            let start_ms = rng.below(1 << 40);
            let horizon_ms = tick_ms * slots as u64;
            let mut wheel = Wheel::new(tick_ms, slots, start_ms);

            let mut model: Vec<(u64, u64)> = Vec::new();
            let mut wheel_now_ms = start_ms;
            let mut now_ms = start_ms;
            let mut next_key = 0u64;
            for _ in 0..2_000 {
                for _ in 0..rng.below(8) {
                    let deadline_ms = match rng.below(4) {
                        0 => now_ms.saturating_sub(rng.below(3 * horizon_ms)),
                        1 => now_ms + rng.below(horizon_ms),
                        _ => now_ms + rng.below(10 * horizon_ms),
                    };
                    // Some duplicates of a recent key, as the engine's re-arms produce.
                    let key = if next_key > 0 && rng.below(10) == 0 {
                        next_key - 1
                    } else {
                        next_key += 1;
                        next_key
                    };
                    wheel.insert(key, deadline_ms);
                    model.push((key, deadline_ms));
                }
                assert_eq!(wheel.len(), model.len());

                now_ms = match rng.below(10) {
                    0 => now_ms.saturating_sub(rng.below(5 * tick_ms)),
                    1 => now_ms,
                    2 => now_ms + rng.below(20 * horizon_ms),
                    _ => now_ms + rng.below(3 * tick_ms),
                };
                assert_eq!(wheel.next_wakeup_ms(now_ms).is_none(), model.is_empty());

                let fired = expire(&mut wheel, now_ms);
                wheel_now_ms = wheel_now_ms.max(now_ms);
                let due_tick = wheel_now_ms / tick_ms;
                let mut expected: Vec<(u64, u64)> = Vec::new();
                model.retain(|&(key, deadline_ms)| {
                    let due = deadline_ms.div_ceil(tick_ms) <= due_tick;
                    if due {
                        expected.push((key, deadline_ms));
                    }
                    !due
                });
                expected.sort_unstable();
                assert_eq!(fired, expected, "seed {seed}, now {now_ms}");
                assert!(fired.iter().all(|&(_, d)| d <= wheel_now_ms), "fired early");
                assert_eq!(wheel.len(), model.len());

                // Sleeping for the advertised time must not skip past a due entry's tick.
                let sleep_ms = wheel.next_wakeup_ms(now_ms);
                assert_eq!(sleep_ms.is_none(), model.is_empty());
                if let Some(earliest_ms) = model.iter().map(|&(_, d)| d).min() {
                    let earliest_tick_ms = earliest_ms.div_ceil(tick_ms) * tick_ms;
                    assert!(now_ms + sleep_ms.unwrap() <= earliest_tick_ms);
                }
            }

            let end_ms = now_ms + 20 * horizon_ms;
            let rest = expire(&mut wheel, end_ms);
            assert_eq!(rest.len(), model.len());
            assert!(wheel.is_empty());
        }
    }
}
