use super::*;

fn msg(seq: u64, payload: &str) -> Arc<Message> {
    Arc::new(Message { id: seq, seq, part: 0, payload: payload.as_bytes().into(), text: true })
}

fn log(ttl_ms: u64, per_stream: usize) -> Log {
    Log::new(Limits { ttl_ms, per_stream, bytes: 1 << 20 })
}

/// Times are in milliseconds here; the log counts microseconds.
fn publish(log: &mut Log, stream: Stream<'_>, payload: &str, now_ms: u64) -> u64 {
    let seq = log.next_seq();
    log.retain(stream, &msg(seq, payload), now_ms * 1000);
    seq
}

fn payloads(r: &Replay) -> Vec<String> {
    r.messages.iter().map(|(_, m)| String::from_utf8(m.payload.to_vec()).unwrap()).collect()
}

#[test]
fn tokens_round_trip_and_refuse_what_the_server_does_not_write() {
    for t in [
        Token { epoch: 1, topics: 0, user: None },
        Token { epoch: u32::MAX, topics: u64::MAX, user: Some(u64::MAX) },
        Token { epoch: 77, topics: 123_456, user: Some(0) },
    ] {
        assert_eq!(Token::parse(t.to_text().as_bytes()), Some(t));
    }
    assert_eq!(Token { epoch: 36, topics: 35, user: Some(1) }.to_text(), "10-z-1");
    for bad in
        ["", "0-1", "a", "a-", "-1", "a-b-c-d", "A-1", "a-1-", "zzzzzzzzzzzzzz-1", "1z1z1z1z-1"]
    {
        assert_eq!(Token::parse(bad.as_bytes()), None, "{bad:?}");
    }
    assert_eq!(Token::parse(&[b'1'; 65]), None);
}

#[test]
fn a_replay_returns_what_came_after_the_position_for_those_streams_in_order() {
    let mut l = log(60_000, 100);
    publish(&mut l, Stream::User("a"), "a1", 0);
    let since = publish(&mut l, Stream::Topic("t"), "t1", 0);
    publish(&mut l, Stream::User("b"), "b1", 1);
    publish(&mut l, Stream::Topic("t"), "t2", 2);
    publish(&mut l, Stream::User("a"), "a2", 3);
    publish(&mut l, Stream::All, "all1", 4);
    let r = l.replay(&[Stream::User("a"), Stream::Topic("t"), Stream::All], since, 1 << 20);
    assert_eq!(payloads(&r), ["t2", "a2", "all1"]);
    assert!(r.gaps.is_empty());
    assert_eq!(r.messages.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 0, 2]);
    // Nothing missed: an empty replay, no gap.
    let r = l.replay(&[Stream::User("a")], l.top(), 1 << 20);
    assert!(r.messages.is_empty() && r.gaps.is_empty());
    // A stream that never had a message, resumed from inside the window: no gap.
    assert!(l.replay(&[Stream::Topic("never")], 1, 1 << 20).gaps.is_empty());
}

#[test]
fn gaps_are_reported_for_age_count_and_unknown_positions() {
    let mut l = log(1_000, 2);
    let s1 = publish(&mut l, Stream::User("a"), "a1", 0);
    publish(&mut l, Stream::User("a"), "a2", 0);
    publish(&mut l, Stream::User("a"), "a3", 0);
    // Count: a1 was evicted, so from before it the stream cannot be resumed...
    let r = l.replay(&[Stream::User("a")], s1 - 1, 1 << 20);
    assert_eq!(r.gaps, [(0, GapReason::TooMany)]);
    assert!(r.messages.is_empty(), "never a partial history");
    // ...but from a1 on it can.
    assert_eq!(payloads(&l.replay(&[Stream::User("a")], s1, 1 << 20)), ["a2", "a3"]);
    // Age: after the window everything left, and the index with it.
    l.trim(5_000_000);
    assert_eq!(l.usage(), (0, 0));
    let r = l.replay(&[Stream::User("a")], s1, 1 << 20);
    assert_eq!(r.gaps, [(0, GapReason::Expired)]);
    // A stream with no index resumed from before the horizon: cannot be proven.
    assert_eq!(l.replay(&[Stream::Topic("x")], 1, 1 << 20).gaps, [(0, GapReason::Expired)]);
    // A stream that comes back after its old entries expired still reports their loss.
    publish(&mut l, Stream::User("a"), "a4", 6_000);
    let r = l.replay(&[Stream::User("a")], s1, 1 << 20);
    assert_eq!(r.gaps, [(0, GapReason::Expired)]);
    // From the future.
    let r = l.replay(&[Stream::User("a")], l.top() + 1, 1 << 20);
    assert_eq!(r.gaps, [(0, GapReason::Unknown)]);
}

#[test]
fn the_memory_bound_evicts_the_oldest_and_a_replay_over_its_bytes_is_a_gap() {
    let mut l = Log::new(Limits { ttl_ms: 60_000, per_stream: 1000, bytes: 3000 });
    for i in 0..100 {
        publish(&mut l, Stream::Topic(&format!("t{}", i % 3)), &"x".repeat(50), i);
    }
    let (n, bytes) = l.usage();
    assert!(bytes <= 3000 && n > 0, "{n} messages, {bytes} bytes");
    let r = l.replay(&[Stream::Topic("t0")], 1, 1 << 20);
    assert_eq!(r.gaps, [(0, GapReason::Expired)]);
    let since = l.top() - 6;
    let r = l.replay(&[Stream::Topic("t0"), Stream::Topic("t1")], since, 100);
    assert!(r.messages.is_empty());
    assert_eq!(r.gaps, [(0, GapReason::TooMany), (1, GapReason::TooMany)]);
}

#[test]
fn an_idle_stream_costs_nothing_and_history_off_retains_nothing() {
    let mut l = log(1_000, 10);
    publish(&mut l, Stream::User("a"), "a1", 0);
    assert_eq!(l.usage(), (1, 2 + ENTRY_BYTES + STREAM_BYTES));
    l.trim(1_000_000);
    assert_eq!(l.usage(), (0, 0));
    assert!(l.streams.is_empty());
    let mut off = log(0, 10);
    let s = publish(&mut off, Stream::User("a"), "a1", 0);
    assert_eq!(off.usage(), (0, 0));
    assert_eq!(off.replay(&[Stream::User("a")], s - 1, 1 << 20).gaps, [(0, GapReason::Expired)]);
    assert!(off.replay(&[Stream::User("a")], s, 1 << 20).gaps.is_empty());
}

#[test]
fn a_new_connection_gets_what_its_user_got_while_it_registered_and_nothing_older() {
    let mut l = log(60_000, 100);
    publish(&mut l, Stream::User("a"), "old", 100);
    publish(&mut l, Stream::User("b"), "other", 200);
    publish(&mut l, Stream::User("a"), "new", 200);
    let r = l.replay_from_time(&[Stream::User("a")], 199_999);
    assert_eq!(payloads(&r), ["new"]);
    assert!(r.gaps.is_empty());
    assert!(l.replay_from_time(&[Stream::User("a")], 201_000).messages.is_empty());
    assert!(l.replay_from_time(&[Stream::User("c")], 0).messages.is_empty());
    // Times are kept to the microsecond: a message numbered in the same millisecond, just
    // before the connection registered, is not replayed to it; one just after is.
    let seq = l.next_seq();
    l.retain(Stream::User("a"), &msg(seq, "before"), 300_100);
    let seq = l.next_seq();
    l.retain(Stream::User("a"), &msg(seq, "after"), 300_900);
    assert_eq!(payloads(&l.replay_from_time(&[Stream::User("a")], 300_500)), ["after"]);
}

#[test]
fn topic_prefixes_set_their_own_window_and_off_reports_a_gap_only_after_a_message() {
    let prefixes = TopicLimits::from([("tick.".to_owned(), 0), ("chat.".to_owned(), 2)]);
    let mut l =
        Log::with_topics(Limits { ttl_ms: 60_000, per_stream: 100, bytes: 1 << 20 }, prefixes);
    let before = l.top();
    assert!(l.replay(&[Stream::Topic("tick.eur")], before, 1 << 20).gaps.is_empty());
    publish(&mut l, Stream::Topic("tick.eur"), "1.08", 0);
    assert_eq!(l.usage().0, 0, "no history for tick.*");
    let r = l.replay(&[Stream::Topic("tick.usd"), Stream::Topic("news")], before, 1 << 20);
    assert_eq!(r.gaps, [(0, GapReason::Off)]);
    for i in 0..3 {
        publish(&mut l, Stream::Topic("chat.room"), &format!("c{i}"), 1);
    }
    let r = l.replay(&[Stream::Topic("chat.room")], before, 1 << 20);
    assert_eq!(r.gaps, [(0, GapReason::TooMany)], "chat.* keeps 2");
    // Other streams are untouched by either.
    assert!(l.replay(&[Stream::User("u")], before, 1 << 20).gaps.is_empty());
}

/// A live upgrade's copy of a log answers every resume as the original does: the same
/// messages after each position, the same gaps (a stream's count bound, the age window),
/// and it numbers on from the same top. A cut or altered export is refused.
#[test]
fn an_exported_log_resumes_like_the_original() {
    let mut l = log(60_000, 3);
    for i in 0..5 {
        publish(&mut l, Stream::User("a"), &format!("a{i}"), i);
        publish(&mut l, Stream::Topic("t"), &format!("t{i}"), i);
    }
    publish(&mut l, Stream::All, "all", 6);
    let exported = l.export(7_000);
    let mut copy = log(60_000, 3);
    assert!(copy.import(&exported, 9_000), "imports into an empty log");
    assert_eq!(copy.top(), l.top());
    assert_eq!(copy.usage(), l.usage());
    let streams = [Stream::User("a"), Stream::Topic("t"), Stream::All, Stream::User("nobody")];
    for since in 0..=l.top() {
        let (want, got) =
            (l.replay(&streams, since, 1 << 20), copy.replay(&streams, since, 1 << 20));
        assert_eq!(payloads(&got), payloads(&want), "since {since}");
        assert_eq!(format!("{:?}", got.gaps), format!("{:?}", want.gaps), "since {since}");
    }
    assert!(!copy.import(&exported, 0), "not into a log that holds messages");
    for cut in [1, 9, exported.len() / 2, exported.len() - 1] {
        assert!(!log(60_000, 3).import(&exported[..cut], 0), "cut at {cut}");
    }
    let next = publish(&mut copy, Stream::User("a"), "after", 9);
    assert_eq!(next, l.top() + 1);
    // Ages travel: an entry made at 2 ms was 5 ms old at the export (7 ms), so it is at
    // 4 ms on the new clock (import at 9 ms); the 60 s window drops it then, not before.
    let held = copy.usage().0;
    copy.trim(59_000_000);
    assert_eq!(copy.usage().0, held);
    copy.trim(4_000 + 60_000_000);
    assert!(copy.usage().0 < held && copy.usage().0 > 0, "{:?} of {held}", copy.usage());
}
