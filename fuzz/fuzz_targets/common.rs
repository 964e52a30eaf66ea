//! Checks shared by the WebSocket targets.

use c10m::proto::deflate::{Agreed, Inflater};
use c10m::proto::ws::{Event, Session, WsLimits};

pub const LIMITS: WsLimits = WsLimits {
    frame_bytes_max: 1024,
    message_bytes_max: 4096,
};

/// What a whole run produced: every event, every reply byte, and whether it ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub out: Vec<u8>,
    pub closed: bool,
}

/// Feeds `chunks` in order, checking after each call that nothing follows the end and that
/// buffering stays within the limits. With `deflate`, the session has agreed to
/// permessage-deflate, so RSV1 messages are inflated (within `message_bytes_max`).
pub fn feed_all<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, deflate: bool) -> Outcome {
    let mut session = Session::new();
    if deflate {
        session.agree_compression(&Agreed::with_server_bits(15));
    }
    let mut inflater = Inflater::new();
    let (mut events, mut out) = (Vec::new(), Vec::new());
    for chunk in chunks {
        let was_closed = session.is_closed();
        let (events_before, out_before) = (events.len(), out.len());
        session.feed(chunk, &LIMITS, &mut inflater, &mut events, &mut out);
        if was_closed {
            assert_eq!((events.len(), out.len()), (events_before, out_before));
        }
        assert!(session.buffered_bytes() <= 14 + 125 + LIMITS.message_bytes_max);
        if session.is_closed() {
            assert_eq!(session.buffered_bytes(), 0);
        }
    }
    let outcome = Outcome {
        events,
        out,
        closed: session.is_closed(),
    };
    check(&outcome);
    outcome
}

/// Invariants of any run: events are well-formed, an ending event comes last and only with
/// `closed`, and `out` is a sequence of unmasked final server frames (Pongs, then at most
/// one Close at the very end).
pub fn check(outcome: &Outcome) {
    let endings = outcome.events.iter().filter(|e| ends(e)).count();
    assert!(endings <= 1);
    assert_eq!(outcome.closed, outcome.events.last().is_some_and(ends));
    for event in &outcome.events {
        match event {
            Event::Text(text) => {
                assert!(std::str::from_utf8(text).is_ok());
                assert!(text.len() <= LIMITS.message_bytes_max);
            }
            Event::Binary(data) => assert!(data.len() <= LIMITS.message_bytes_max),
            Event::Ping(data) | Event::Pong(data) => assert!(data.len() <= 125),
            Event::Closed { code, .. } => assert!(code.is_none_or(|c| (1000..5000).contains(&c))),
            Event::Fail { code, .. } => assert!(matches!(code, 1002 | 1007 | 1009)),
        }
    }
    let pings = outcome
        .events
        .iter()
        .filter(|e| matches!(e, Event::Ping(_)))
        .count();
    let mut rest = &outcome.out[..];
    let mut pongs = 0;
    let mut closes = 0;
    while let [b0, b1, tail @ ..] = rest {
        assert!(closes == 0, "a frame after our Close");
        assert!(*b1 < 126, "replies are control frames");
        let len = usize::from(*b1);
        assert!(tail.len() >= len);
        match b0 {
            0x8A => pongs += 1,
            0x88 => closes += 1,
            _ => panic!("unexpected reply opcode {b0:#x}"),
        }
        rest = &tail[len..];
    }
    assert!(rest.is_empty());
    assert_eq!(pongs, pings);
    assert_eq!(closes, usize::from(outcome.closed));
}

fn ends(event: &Event) -> bool {
    matches!(event, Event::Closed { .. } | Event::Fail { .. })
}
