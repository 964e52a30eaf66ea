//! The input split at fuzz-chosen points and fed in order. The first byte says how many
//! split lengths follow (0..=15), one byte each, and with its bit 4 whether permessage-deflate
//! was agreed; the rest is the stream. Any split must give
//! exactly the events and replies of feeding the stream at once, and byte-at-a-time too.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let deflate = count & 0x10 != 0;
    let count = usize::from(count & 0x0F).min(rest.len());
    let (lengths, stream) = rest.split_at(count);
    let mut chunks = Vec::new();
    let mut remaining = stream;
    for &length in lengths {
        let (chunk, tail) = remaining.split_at(usize::from(length).min(remaining.len()));
        chunks.push(chunk);
        remaining = tail;
    }
    chunks.push(remaining);
    let split = common::feed_all(chunks, deflate);
    let whole = common::feed_all([stream], deflate);
    assert_eq!(split, whole, "a split changed the outcome");
    if stream.len() <= 512 {
        assert_eq!(
            common::feed_all(stream.chunks(1), deflate),
            whole,
            "byte-at-a-time differs"
        );
    }
});
