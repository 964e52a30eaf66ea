//! Pure protocol state machines: bytes and time in, events and bytes out.
//! Nothing here touches a socket or a clock, so it is unit-tested and fuzzed without a ring.
#![forbid(unsafe_code)]

pub mod http1;
pub mod sse;
pub mod ws;
