//! History and resume: a client that comes back with its last position gets exactly what it
//! missed, in order per stream, then live messages; a gap the window cannot cover is
//! reported; long polls lose nothing; reconnects the server causes (goaways) lose nothing.
//! Real clients where one exists: curl for SSE, Python `websockets` for WebSocket, Python's
//! `http.client` for long polling.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{curl_sse, position, sse_data, sse_last_id, LineChild, Server, SseItem, STEP};

/// Publishes `n` messages to the user and `n` to the topic, interleaved.
fn publish_interleaved(server: &Server, user: &str, topic: &str, n: usize) {
    let mut admin = server.admin_conn();
    for i in 0..n {
        admin.publish(&format!("user={user}"), format!("u{i}"));
        admin.publish(&format!("topic={topic}"), format!("t{i}"));
    }
}

/// Checks that `got` is exactly u0..u{n} and t0..t{n}, each stream in order.
fn assert_exactly_interleaved(got: &[String], n: usize) {
    let user: Vec<&String> = got.iter().filter(|d| d.starts_with('u')).collect();
    let topic: Vec<&String> = got.iter().filter(|d| d.starts_with('t')).collect();
    let want_u: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let want_t: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    assert_eq!(got.len(), 2 * n, "exactly the missed messages: {got:?}");
    assert_eq!(user, want_u.iter().collect::<Vec<_>>(), "the user's stream, in order");
    assert_eq!(topic, want_t.iter().collect::<Vec<_>>(), "the topic's stream, in order");
}

#[test]
fn an_sse_client_resuming_with_last_event_id_gets_exactly_what_it_missed_then_live_ones() {
    let server = Server::start(&[]);
    let mut curl = curl_sse(&server, "user=ann&topics=news", None);
    server.wait_connections(1);
    server.publish("user=ann", "before");
    let lines = curl.lines_until(|l| l == "data: before");
    let last = sse_last_id(&lines);
    drop(curl);
    server.wait_connections(0);
    publish_interleaved(&server, "ann", "news", 50);
    // A topic it does not read and another user's messages are not replayed.
    server.publish("topic=other", "not yours");
    server.publish("user=bob", "not yours");

    let mut curl = curl_sse(&server, "user=ann&topics=news", Some(&last));
    let mut got = Vec::new();
    let mut seen = Vec::new();
    while got.len() < 100 {
        let lines = curl.lines_until(|l| l.starts_with("data: "));
        got.extend(sse_data(&lines));
        seen.extend(lines);
    }
    assert_exactly_interleaved(&got, 50);
    assert!(!seen.iter().any(|l| l.contains("c10m-gap")), "no gap: {seen:?}");
    // Then live ones, and nothing else.
    server.publish("user=ann", "live");
    curl.expect_line(|l| l.starts_with("data: ")).eq("data: live").then_some(()).expect("live");
    server.publish("all", "end");
    assert_eq!(curl.expect_line(|l| l.starts_with("data: ")), "data: end");
    let metrics = server.metrics();
    assert_eq!(common::metric_sum(&metrics, "c10m_resumes_total", &[]), 1.0);
    assert_eq!(common::metric_sum(&metrics, "c10m_replayed_total", &[]), 100.0);
}

/// Connects an SSE client with `query`, publishes `payload` to `target`, checks it arrives,
/// disconnects, and returns the client's last position.
fn position_after_one(server: &Server, query: &str, target: &str, payload: &str) -> String {
    let mut sse = server.sse_connect(query);
    server.wait_connections(1);
    server.publish(target, payload);
    assert_eq!(sse.next_text(), payload);
    let last = sse.last_id.clone().expect("an id");
    drop(sse);
    server.wait_connections(0);
    last
}

/// The next `n` SSE blocks that are not heartbeats (events, named events, retries).
fn next_items(sse: &mut common::Sse, n: usize) -> Vec<SseItem> {
    let mut items = Vec::new();
    while items.len() < n {
        match sse.next_item().expect("read") {
            Some(SseItem::Comment(_)) => continue,
            Some(item) => items.push(item),
            None => panic!("EOF after {items:?}"),
        }
    }
    items
}

/// A Python `websockets` client that prints every text frame it gets, one per line.
const PY_WS: &str = r#"
import sys
from websockets.sync.client import connect
with connect(sys.argv[1], open_timeout=10) as ws:
    print("open", flush=True)
    while True:
        print(ws.recv(timeout=30), flush=True)
"#;

fn py_ws(server: &Server, query: &str) -> LineChild {
    let url = format!("ws://{}/ws?{query}", server.client);
    let mut child = LineChild::spawn(Command::new("python3").args(["-c", PY_WS, &url]));
    child.expect_line(|l| l == "open");
    child
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn a_json_websocket_client_resumes_from_its_last_id_with_nothing_twice_and_nothing_missing() {
    let server = Server::start(&[]);
    let mut py = py_ws(&server, "user=wes&topics=prices&format=json");
    // A position frame first, so even a client that got nothing can resume.
    let first = json(&py.expect_line(|l| l.starts_with('{')));
    position(first["id"].as_str().expect("a position"));
    server.publish("topic=prices", "before");
    let before = json(&py.expect_line(|l| l.contains("\"data\"")));
    assert_eq!(before["data"], "before");
    assert_eq!(before["stream"], "topic:prices");
    let last = before["id"].as_str().unwrap().to_owned();
    drop(py);
    server.wait_connections(0);
    publish_interleaved(&server, "wes", "prices", 50);
    server.publish("user=wes", [0xffu8, 0x00, 0x80]);

    let mut py =
        py_ws(&server, &format!("user=wes&topics=prices&format=json&last_event_id={last}"));
    let mut got = Vec::new();
    let mut ids = HashMap::new();
    let mut bin = None;
    // The user's replay and the topic's come from different partitions, in either order.
    while got.len() < 100 || bin.is_none() {
        let m = json(&py.expect_line(|l| l.contains("\"data")));
        if m.get("data_b64").is_some() {
            bin = Some(m);
            continue;
        }
        let data = m["data"].as_str().unwrap().to_owned();
        let stream = m["stream"].as_str().unwrap();
        assert_eq!(stream, if data.starts_with('u') { "user" } else { "topic:prices" }, "{m}");
        ids.insert(data.clone(), position(m["id"].as_str().unwrap()));
        got.push(data);
    }
    assert_exactly_interleaved(&got, 50);
    // Positions advance with each stream.
    assert!(ids["u49"].user > ids["u0"].user && ids["t49"].topics > ids["t0"].topics);
    // The binary payload came as base64; then live ones follow.
    let bin = bin.expect("the binary message");
    assert_eq!((&bin["data_b64"], &bin["stream"]), (&"/wCA".into(), &"user".into()));
    server.publish("topic=prices", "live");
    assert_eq!(json(&py.expect_line(|l| l.contains("\"data\"")))["data"], "live");
}

/// 1,000 long polls while a publisher thread, paced by the polls, publishes to the user and
/// the topic; then polls until nothing is left. Prints a JSON summary.
const PY_POLL: &str = r#"
import http.client, json, random, sys, threading
client, admin, polls = sys.argv[1], sys.argv[2], int(sys.argv[3])
random.seed(7)
published = {"user": [], "topic:feed": []}
turn = threading.Semaphore(0)
stop = threading.Event()
def publisher():
    conn = http.client.HTTPConnection(admin, timeout=10)
    n = 0
    while not stop.is_set():
        if not turn.acquire(timeout=0.2):
            continue
        for _ in range(random.choice([0, 1, 1, 2, 3])):
            target, stream = random.choice([("user=pat", "user"), ("topic=feed", "topic:feed")])
            body = f"m{n}"
            n += 1
            conn.request("POST", f"/publish?{target}", body=body)
            r = conn.getresponse(); r.read()
            assert r.status == 202, r.status
            published[stream].append(body)
threading.Thread(target=publisher, daemon=True).start()
def poll(since, timeout_ms):
    conn = http.client.HTTPConnection(client, timeout=10)
    q = "/poll?user=pat&topics=feed&timeout_ms=%d" % timeout_ms
    if since:
        q += "&since=" + since
    conn.request("GET", q)
    r = conn.getresponse()
    assert r.status == 200, r.status
    return json.loads(r.read())
got = {"user": [], "topic:feed": []}
gaps = []
since = poll(None, 0)["id"]
for i in range(polls):
    turn.release()
    a = poll(since, 50)
    since = a["id"]
    gaps += a["gaps"]
    for m in a["messages"]:
        got[m["stream"]].append(m["data"])
stop.set()
for _ in range(20):
    a = poll(since, 50)
    since = a["id"]
    gaps += a["gaps"]
    for m in a["messages"]:
        got[m["stream"]].append(m["data"])
print(json.dumps({"published": published, "got": got, "gaps": gaps}), flush=True)
"#;

#[test]
fn a_long_poll_client_loses_nothing_over_a_thousand_polls() {
    let server = Server::start(&[]);
    let client = server.client.to_string();
    let admin = server.admin.to_string();
    let mut py =
        LineChild::spawn(Command::new("python3").args(["-c", PY_POLL, &client, &admin, "1000"]));
    let deadline = Instant::now() + Duration::from_secs(120);
    let line = loop {
        assert!(Instant::now() < deadline, "no summary from the poller");
        if let Some(l) = py.try_line(Duration::from_secs(5)) {
            if l.starts_with('{') {
                break l;
            }
        }
    };
    let r = json(&line);
    assert_eq!(r["gaps"].as_array().unwrap().len(), 0, "{r}");
    for stream in ["user", "topic:feed"] {
        let published = r["published"][stream].as_array().unwrap();
        assert!(published.len() > 100, "{stream}: only {} published", published.len());
        let got = r["got"][stream].as_array().unwrap();
        let missing: Vec<_> = published.iter().filter(|m| !got.contains(m)).collect();
        let extra = got.len() as i64 - (published.len() - missing.len()) as i64;
        assert!(missing.is_empty() && extra == 0, "{stream}: missing {missing:?}, {extra} extra");
        assert_eq!(got, published, "{stream}: in order");
    }
    server.wait_metric("c10m_connections_poll", &[], 0.0);
}

#[test]
fn a_gap_beyond_the_window_is_reported_with_its_stream_and_reason_never_a_partial_history() {
    let server = Server::start(&["--history-per-stream-max", "5"]);
    let last = position_after_one(&server, "user=gus&topics=a,b", "topic=a", "first");
    for i in 0..10 {
        server.publish("user=gus", format!("u{i}"));
    }
    server.publish("topic=b", "b0");
    let mut sse =
        server.sse_connect_with("user=gus&topics=a,b", &format!("Last-Event-ID: {last}\r\n"));
    let items = next_items(&mut sse, 2);
    // The user's stream overflowed its window: one gap, none of its messages; topic b's
    // message comes as usual.
    assert!(
        items.contains(&SseItem::Named {
            event: "c10m-gap".into(),
            data: br#"{"stream":"user","reason":"too_many"}"#.to_vec(),
        }),
        "{items:?}"
    );
    assert!(items.iter().any(|i| matches!(i, SseItem::Event { data, .. } if data == b"b0")));
    server.publish("user=gus", "live");
    assert_eq!(sse.next_text(), "live");
    assert_eq!(common::metric_sum(&server.metrics(), "c10m_history_gaps_total", &[]), 1.0);

    // A position from another run of the server: every stream reports it.
    let other = Server::start(&[]);
    let mut sse = other.sse_connect_with("topics=a", &format!("Last-Event-ID: {last}\r\n"));
    let mut gaps = Vec::new();
    while gaps.len() < 2 {
        if let Some(SseItem::Named { event, data }) = sse.next_item().expect("read") {
            assert_eq!(event, "c10m-gap");
            gaps.push(String::from_utf8(data).unwrap());
        }
    }
    gaps.sort();
    assert_eq!(
        gaps,
        [r#"{"stream":"all","reason":"epoch"}"#, r#"{"stream":"topic:a","reason":"epoch"}"#,]
    );
}

#[test]
fn messages_older_than_the_window_leave_and_a_resume_from_before_them_is_a_gap() {
    // Longer than the once-a-second gauge update, so the gauge sees it come and go.
    let server = Server::start(&["--history-ttl-ms", "1500"]);
    let last = position_after_one(&server, "topics=t", "topic=t", "seen");
    server.publish("topic=t", "missed");
    server.wait_metric("c10m_history_messages", &[], 1.0);
    // Bounded wait for the window to pass (the log is trimmed once a second).
    common::wait_until("history emptied", STEP, || {
        let m = server.metrics();
        (common::metric_sum(&m, "c10m_history_messages", &[]) == 0.0).then_some(())
    });
    assert_eq!(common::metric_sum(&server.metrics(), "c10m_history_bytes", &[]), 0.0);
    let mut sse = server.sse_connect_with("topics=t", &format!("Last-Event-ID: {last}\r\n"));
    loop {
        match sse.next_item().expect("read") {
            Some(SseItem::Named { event, data }) => {
                assert_eq!(event, "c10m-gap");
                assert_eq!(data, br#"{"stream":"topic:t","reason":"expired"}"#);
                break;
            }
            Some(SseItem::Comment(_)) => continue,
            other => panic!("expected the gap first, got {other:?}"),
        }
    }
}

/// An SSE client that follows the server's goaways and resumes each time, until `end` has
/// come on both its streams (streams are ordered each, not with each other).
fn resuming_sse_client(client: std::net::SocketAddr, query: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    let mut last: Option<String> = None;
    let mut reconnects = 0;
    let mut ends = 0;
    loop {
        assert!(Instant::now() < deadline, "{query}: no end within 60 s; got {}", got.len());
        let header = last.as_ref().map(|l| format!("Last-Event-ID: {l}\r\n")).unwrap_or_default();
        let mut sse = common::sse_connect_to(client, query, &header);
        loop {
            let item = sse.next_item();
            if sse.last_id.is_some() {
                last.clone_from(&sse.last_id);
            }
            match item {
                Ok(Some(SseItem::Event { data, .. })) => {
                    let text = String::from_utf8(data).unwrap();
                    if text == "end" {
                        ends += 1;
                        if ends == 2 {
                            assert!(reconnects >= 2, "{query}: only {reconnects} goaways");
                            return got;
                        }
                        continue;
                    }
                    got.push(text);
                }
                Ok(Some(SseItem::Named { event, data })) => {
                    assert_eq!(event, "goaway", "{}", String::from_utf8_lossy(&data));
                }
                Ok(Some(SseItem::Comment(_) | SseItem::Retry(_) | SseItem::Position(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        reconnects += 1;
    }
}

#[test]
fn clients_that_resume_across_the_servers_own_goaways_lose_nothing() {
    // Every connection lives 0.4-0.5 s, then gets a goaway and comes back at once.
    let server =
        Server::start(&["--conn-lifetime-ms-max", "500", "--goaway-reconnect-ms-max", "0"]);
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let client = server.client;
            std::thread::spawn(move || {
                resuming_sse_client(client, &format!("user=r{i}&topics=feed"))
            })
        })
        .collect();
    server.wait_connections(4);
    let mut admin = server.admin_conn();
    let rounds = 300;
    let start = Instant::now();
    for n in 0..rounds {
        admin.publish("topic=feed", format!("f{n}"));
        admin.publish(&format!("user=r{}", n % 4), format!("u{n}"));
        // Spread over ~2 s, so every client is sent away several times meanwhile.
        let due = start + Duration::from_millis(7 * n as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    admin.publish("topic=feed", "end");
    for i in 0..4 {
        admin.publish(&format!("user=r{i}"), "end");
    }
    for (i, c) in clients.into_iter().enumerate() {
        let got = c.join().expect("client thread");
        let feed: Vec<String> = (0..rounds).map(|n| format!("f{n}")).collect();
        let mine: Vec<String> =
            (0..rounds).filter(|n| n % 4 == i).map(|n| format!("u{n}")).collect();
        let got_feed: Vec<String> = got.iter().filter(|d| d.starts_with('f')).cloned().collect();
        let got_mine: Vec<String> = got.iter().filter(|d| d.starts_with('u')).cloned().collect();
        assert_eq!(got_feed, feed, "client {i}: the topic, all of it, once, in order");
        assert_eq!(got_mine, mine, "client {i}: its own messages, once, in order");
    }
    assert!(common::metric_sum(&server.metrics(), "c10m_goaways_total", &[]) >= 8.0);
}

#[test]
fn a_topic_prefix_without_history_reports_off_and_others_still_resume() {
    let server = Server::start(&["--history-topic", "tick.=0"]);
    let last = position_after_one(&server, "topics=tick.eur,news", "topic=news", "seen");
    server.publish("topic=tick.eur", "1.08");
    server.publish("topic=news", "missed");
    let mut sse =
        server.sse_connect_with("topics=tick.eur,news", &format!("Last-Event-ID: {last}\r\n"));
    let items = next_items(&mut sse, 2);
    assert!(
        items.contains(&SseItem::Named {
            event: "c10m-gap".into(),
            data: br#"{"stream":"topic:tick.eur","reason":"off"}"#.to_vec(),
        }),
        "{items:?}"
    );
    assert!(items.iter().any(|i| matches!(i, SseItem::Event { data, .. } if data == b"missed")));
}
