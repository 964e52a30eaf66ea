//! Pure protocol state machines: bytes and time in, events and bytes out.
//! Nothing here touches a socket or a clock, so it is unit-tested and fuzzed without a ring.
//!
//! - [`http1`]: request head parsing, request bodies for the admin API, plain responses.
//! - [`ws`]: the RFC 6455 handshake, the frame encoder and the per-connection receive session.
//! - [`sse`]: the Server-Sent Events encoder.
//! - [`deflate`]: permessage-deflate negotiation and the per-shard compressor and inflater.
//!
//! Every function here takes peer bytes as untrusted: malformed input becomes an error value
//! or a close code, never a panic.
#![forbid(unsafe_code)]

pub mod deflate;
pub mod http1;
pub mod sse;
pub mod ws;

/// Appends the decimal digits of `n` without allocating; it is used on every SSE event.
pub(crate) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::push_decimal;

    #[test]
    fn decimal_digits() {
        for n in [0, 7, 10, 99, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
