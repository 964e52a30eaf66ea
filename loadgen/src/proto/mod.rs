//! Client-side protocol state machines: bytes in, events and bytes out. Nothing here
//! touches a socket or a clock, and nothing panics on what the server sends.

#![forbid(unsafe_code)]

pub mod http;
pub mod sse;
pub mod ws;

/// Largest response head (status line and headers) accepted from the server.
pub const HEAD_BYTES_MAX: usize = 8 * 1024;
