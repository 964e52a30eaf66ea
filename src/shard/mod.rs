//! placeholder

pub mod wheel;
