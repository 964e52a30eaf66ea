//! Holds the criterion benches in `benches/`; run `cargo bench` here.
