//! The mesh: one bounded SPSC ring per ordered pair of shards.

pub mod spsc;
