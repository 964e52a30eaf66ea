//! One buffer into a fresh `Session`: no panic, and the run's invariants hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::feed_all([data], false);
    common::feed_all([data], true);
});
