//! Live upgrade of a cluster node: the successor takes over its connections and its place in
//! the cluster (the same node id, its registry entries, its position in the history store),
//! while publishes go on at this node and at another one. Real Redis and NATS (with
//! JetStream), real WebSocket and SSE clients on real sockets.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backends::{cluster_stat, delaying_proxy, Backends};
use common::stand_in::{FromOld, StandIn};
use common::{publisher, ws_text, Server, SseItem, STEP};

fn control_path(name: &str) -> String {
    let p = std::env::temp_dir().join(format!("c10m-test-{}-{name}.sock", std::process::id()));
    p.to_string_lossy().into_owned()
}

/// How long the old node's marker took to come back from the bus, from its log line; the
/// test fails when the log says the fence went without it.
fn marker_back_ms(log: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains("commands from the bus are in ("))
        .unwrap_or_else(|| panic!("the old node's marker came back: {log}"));
    let ms = line.rsplit_once(" (").and_then(|(_, rest)| rest.split(' ').next());
    ms.and_then(|ms| ms.parse().ok()).unwrap_or_else(|| panic!("a time in ms: {line}"))
}

/// The flags of node `id`'s successor: its listeners by their real ports, its cluster.
fn successor_args(b: &Backends, old: &Server, id: &str, path: &str, extra: &[&str]) -> Vec<String> {
    let (client, admin) = (old.client.to_string(), old.admin.to_string());
    let mut args = vec![
        "serve",
        "--listen",
        &client,
        "--admin",
        &admin,
        "--shards",
        "2",
        "--node-id",
        id,
        "--registry",
        &b.redis_url,
        "--bus",
        &b.nats_url,
        "--takeover",
        path,
        "--control-socket",
        path,
    ];
    args.extend_from_slice(extra);
    args.iter().map(|s| s.to_string()).collect()
}

/// Every stream a client of user `u{i % 30}` and topic `t{i % 3}` follows, each once and in
/// order: broadcasts from node b (`a…`) and from the moving node (`x…`), its topic's and its
/// user's messages from node b.
fn check(i: usize, got: &[String], counts: &[usize; 4]) {
    let (topic, user) = (format!("t{}-", i % 3), format!("u{}-", i % 30));
    let want_topic: Vec<String> =
        (0..counts[1]).filter(|n| n % 3 == i % 3).map(|n| format!("{topic}{n}")).collect();
    let want_user: Vec<String> =
        (0..counts[2]).filter(|n| n % 30 == i % 30).map(|n| format!("{user}{n}")).collect();
    let want_a: Vec<String> = (0..counts[0]).map(|n| format!("a{n}")).collect();
    let want_x: Vec<String> = (0..counts[3]).map(|n| format!("x{n}")).collect();
    let pick = |p: &str| got.iter().filter(|m| m.starts_with(p)).cloned().collect::<Vec<_>>();
    assert_eq!(pick("a"), want_a, "client {i}: broadcasts from node b");
    assert_eq!(pick("x"), want_x, "client {i}: broadcasts accepted by the moving node");
    assert_eq!(pick(&topic), want_topic, "client {i}: topic");
    assert_eq!(pick(&user), want_user, "client {i}: user");
    let known = want_a.len() + want_x.len() + want_topic.len() + want_user.len();
    assert_eq!(got.len(), known, "client {i}: nothing else, nothing twice: {got:?}");
}

/// What client `i` reads up to the last message (`end`) and until every message it is
/// owed came (its user's stream and its topics' come from different partitions, in no
/// order with each other); the stream's id of `end`, if it has ids.
fn read_all(
    i: usize,
    counts: &[usize; 4],
    mut next: impl FnMut() -> (Option<String>, String),
) -> (Vec<String>, Option<String>) {
    let owed = counts[0]
        + counts[3]
        + (0..counts[1]).filter(|n| n % 3 == i % 3).count()
        + (0..counts[2]).filter(|n| n % 30 == i % 30).count();
    let (mut got, mut end) = (Vec::new(), None);
    while end.is_none() || got.len() < owed {
        match next() {
            (id, m) if m == "end" => end = Some(id),
            (_, m) => got.push(m),
        }
    }
    (got, end.flatten())
}

/// Node a is upgraded while node b and node a itself publish to its clients: the same TCP
/// connections, every message once and in order, the ids going on from the store, and the
/// node still itself to the cluster afterwards (presence from node b counts its users).
#[test]
fn a_cluster_node_hands_over_while_publishes_go_on_at_every_node() {
    const WS: usize = 300;
    const SSE: usize = 12;
    let b = Backends::start();
    let path = control_path("cluster");
    let a = b.node("a", &["--control-socket", &path], 0);
    let other = b.node("b", &[], 1);
    let mut wss: Vec<_> =
        (0..WS).map(|i| a.ws_connect(&format!("/ws?user=u{}&topics=t{}", i % 30, i % 3))).collect();
    let mut sses: Vec<_> = (WS..WS + SSE)
        .map(|i| a.sse_connect(&format!("user=u{}&topics=t{}", i % 30, i % 3)))
        .collect();
    // It leaves before the switch and comes back after it.
    let mut away = a.sse_connect("user=u5&topics=t2");
    a.wait_connections((WS + SSE + 1) as u64);
    let ports: Vec<u16> = wss.iter().map(|w| w.get_ref().local_addr().unwrap().port()).collect();
    // The ids before the switch are the store's.
    assert_eq!(other.publish("all", "first").0, 202);
    for ws in wss.iter_mut() {
        assert_eq!(ws_text(ws), "first");
    }
    let sse_next = |sse: &mut common::Sse| loop {
        match sse.next_item().expect("read SSE").expect("SSE stream ended") {
            SseItem::Event { id, data } => return (id, String::from_utf8(data).unwrap()),
            _ => continue,
        }
    };
    for sse in sses.iter_mut() {
        assert_eq!(sse_next(sse).1, "first");
    }
    let (away_id, data) = sse_next(&mut away);
    assert_eq!(data, "first");
    drop(away);
    a.wait_connections((WS + SSE) as u64);

    let stop = Arc::new(AtomicBool::new(false));
    let threads = [
        publisher(&other, &stop, |n| ("all".into(), format!("a{n}"))),
        publisher(&other, &stop, |n| (format!("topic=t{}", n % 3), format!("t{}-{n}", n % 3))),
        publisher(&other, &stop, |n| (format!("user=u{}", n % 30), format!("u{}-{n}", n % 30))),
        // On node a's own admin API: its keep-alive connection moves with the rest.
        publisher(&a, &stop, |n| ("all".into(), format!("x{n}"))),
    ];
    let mut a = a;
    let args = successor_args(&b, &a, "a", &path, &[]);
    let new = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let status = a.wait_exit(Duration::from_secs(60));
    stop.store(true, Ordering::Release);
    let status = status.unwrap_or_else(|| panic!("the old process exits:\n{}", a.stderr()));
    assert!(status.success(), "old process: {status:?}\n{}", a.stderr());
    let log = a.stderr();
    assert!(log.contains("the history store is delivered up to"), "{log}");
    let counts: Vec<usize> = threads.into_iter().map(|t| t.join().expect("publisher").1).collect();
    let counts: [usize; 4] = counts.try_into().unwrap();
    common::wait_until("the new process reads the store", STEP, || {
        (new.stats()["cluster"]["store_connected"] == true).then_some(())
    });
    // Node b's publishes are stored before its last one (each went through one of its
    // shards, in no order with the others').
    let from_b = 1 + counts[..3].iter().sum::<usize>() as u64;
    common::wait_until("node b's publishes are stored", STEP, || {
        (cluster_stat(&other, "stored") >= from_b).then_some(())
    });
    assert_eq!(other.publish("all", "end").0, 202);
    for (i, sse) in sses.iter_mut().enumerate() {
        let got = read_all(WS + i, &counts, || sse_next(sse)).0;
        check(WS + i, &got, &counts);
    }
    for (i, ws) in wss.iter_mut().enumerate() {
        let got = read_all(i, &counts, || (None, ws_text(ws))).0;
        check(i, &got, &counts);
    }
    let after: Vec<u16> = wss.iter().map(|w| w.get_ref().local_addr().unwrap().port()).collect();
    assert_eq!(ports, after, "the same TCP connections");
    new.wait_metric("c10m_handover_received_total", &[], (WS + SSE) as f64);
    // A client that left before the switch resumes on the new process with exactly what
    // it missed: the logs moved, what the old process read went on to them, and the new one
    // read on from there.
    let away_id = away_id.expect("an SSE id");
    let mut back =
        new.sse_connect_with("user=u5&topics=t2", &format!("Last-Event-ID: {away_id}\r\n"));
    let (got, end_id) = read_all(5, &counts, || sse_next(&mut back));
    let epoch = |id: &str| id.split('-').next().map(str::to_owned);
    assert_eq!(epoch(&away_id), end_id.as_deref().and_then(epoch), "one epoch");
    check(5, &got, &counts);
    // Still node a to the cluster: node b's presence request is answered by the new process.
    common::wait_until("node b counts node a's connections of u0", STEP, || {
        let r = other.admin_conn().request("GET", "/presence?user=u0", "");
        let v = r.json();
        (v["nodes"]["a"] == 11).then_some(())
    });
    let text = new.metrics();
    assert_eq!(common::metric_sum(&text, "c10m_cluster_dropped_total", &[]), 0.0, "{text}");
}

/// A successor that is not the same cluster node, or has history off, is refused before
/// anything moves; so is a node without history, whose bus delivery has no position to hand
/// on. The old process serves on.
#[test]
fn a_cluster_node_refuses_a_successor_that_cannot_take_its_place() {
    let b = Backends::start();
    let path = control_path("cluster-refused");
    let a = b.node("a", &["--control-socket", &path], 0);
    let mut ws = a.ws_connect("/ws?user=alice");
    a.wait_connections(1);
    let bus_path = control_path("cluster-bus-only");
    let bus_only = b.node("c", &["--control-socket", &bus_path, "--history-ttl-ms", "0"], 1);
    let cases: [(&Server, &str, &str, &[&str], &str); 3] = [
        (&a, &path, "z", &[], "give it the same --node-id"),
        (&a, &path, "a", &["--history-ttl-ms", "0"], "history off"),
        (&bus_only, &bus_path, "c", &["--history-ttl-ms", "0"], "without history"),
    ];
    for (old, path, id, extra, why) in cases {
        let args = successor_args(&b, old, id, path, extra);
        let (status, out, err) = common::run_bounded(
            std::process::Command::new(env!("CARGO_BIN_EXE_c10m")).args(&args),
            Duration::from_secs(30),
        );
        assert!(!status.success(), "refused takeover exits non-zero: {out}{err}");
        assert!(err.contains("refused") && err.contains(why), "says why ({why}): {err}");
    }
    assert!(a.stderr().contains("still serving"), "{}", a.stderr());
    assert_eq!(a.publish("user=alice", "still here").0, 202);
    assert_eq!(ws_text(&mut ws), "still here");
}

/// Node b sends user commands for node a's clients all through node a's upgrade: every
/// connection gets each `subscribe` once, told once, whichever process held it when the
/// command came (the old one forwards what it applied behind the batches on their way), and
/// the subscriptions work in the new process; every connection of the users it disconnects
/// meanwhile is closed with 4003. The same TCP connections throughout.
#[test]
fn commands_from_another_node_reach_connections_that_move() {
    commands_reach_connections_that_move(Bus::Direct);
}

/// The same with the bus delivering to the old process 250 ms late (a proxy in front of its
/// NATS connection; the new process's is direct): most commands reach the new process
/// before the connection they name and the old one after that connection has left. The old
/// node's fence waits for its own marker, which comes back behind them, so the old shards
/// still forward them; without that wait, connections miss their notices.
#[test]
fn commands_the_bus_delivers_late_to_the_old_process_still_reach_moving_connections() {
    commands_reach_connections_that_move(Bus::LateToOld(Duration::from_millis(250)));
}

/// The same on a NATS cluster of two servers whose route delivers 250 ms late: node b is on
/// the first server, the old process on the second, and the successor's `--bus` names the
/// first. Each command reaches the first server's clients 250 ms before the second's, which
/// the old node's marker (sent on the second) cannot order. The successor connects to the
/// old process's server instead, named in the takeover's welcome, so one server delivers to
/// both and the marker orders the commands again; staying on the first server, connections
/// miss their notices.
#[test]
fn commands_from_another_server_of_a_nats_cluster_reach_moving_connections() {
    let route_delay = Duration::from_millis(250);
    commands_reach_connections_that_move(Bus::OtherServer { route_delay, advertise: true });
}

/// The same on a cluster that tells clients no other server's URL (`--no_advertise`): the
/// successor cannot reach the old process's server and stays on the first one, and says
/// so when it is ready; the old node's fence then waits the whole second for the commands
/// the route delivers late, instead of its marker, and every connection is still told of
/// each subscription once.
#[test]
fn commands_reach_moving_connections_when_the_new_process_is_on_another_nats_server() {
    let route_delay = Duration::from_millis(250);
    commands_reach_connections_that_move(Bus::OtherServer { route_delay, advertise: false });
}

/// How node a's two processes reach the bus in [`commands_reach_connections_that_move`].
#[derive(Clone, Copy, Debug)]
enum Bus {
    /// Both directly, one NATS server.
    Direct,
    /// One server, and what it sends the old process arrives that late (a proxy).
    LateToOld(Duration),
    /// Two servers in a cluster, whose route delivers `route_delay` late: node b and the
    /// successor's `--bus` on the first, the old process on the second; the servers tell
    /// clients each other's URLs if they `advertise`.
    OtherServer { route_delay: Duration, advertise: bool },
}

fn commands_reach_connections_that_move(bus: Bus) {
    const WS: usize = 1200;
    const USERS: usize = 60;
    // Under the 64 topics a connection may have.
    const PER_USER_MAX: usize = 40;
    const GONE_USERS: usize = 6;
    let b = match bus {
        Bus::OtherServer { route_delay, advertise } => {
            Backends::start_clustered(route_delay, advertise)
        }
        _ => Backends::start(),
    };
    let name = match bus {
        Bus::Direct => "direct",
        Bus::LateToOld(_) => "late",
        Bus::OtherServer { advertise: true, .. } => "cluster",
        Bus::OtherServer { advertise: false, .. } => "cluster-unadvertised",
    };
    let path = control_path(&format!("cluster-commands-{name}"));
    let old_bus = match bus {
        Bus::Direct => b.nats_url.clone(),
        Bus::LateToOld(delay) => {
            format!("nats://127.0.0.1:{}", delaying_proxy(b.nats_port, delay))
        }
        Bus::OtherServer { .. } => b.second.as_ref().expect("a second server").url.clone(),
    };
    let a = b.node_on_bus("a", &old_bus, &["--control-socket", &path], 0);
    let other = b.node("b", &[], 1);
    let mut wss: Vec<_> =
        (0..WS).map(|i| a.ws_connect(&format!("/ws?user=u{}", i % USERS))).collect();
    let mut gone: Vec<_> = (0..5 * GONE_USERS)
        .map(|i| a.ws_connect(&format!("/ws?user=d{}", i % GONE_USERS)))
        .collect();
    a.wait_connections((WS + gone.len()) as u64);
    let ports: Vec<u16> = wss.iter().map(|w| w.get_ref().local_addr().unwrap().port()).collect();
    let old_server = a.stats()["cluster"]["bus_server"].clone();
    assert!(old_server.as_str().is_some_and(|id| !id.is_empty()), "{old_server}");

    let (switching, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let commander = {
        let mut admin = other.admin_conn();
        let (switching, stop) = (Arc::clone(&switching), Arc::clone(&stop));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let (mut n, mut disconnected) = (0, 0);
            let mut post = |target: String| {
                let r = admin.request("POST", &target, "");
                assert_eq!(r.status, 202, "{target}: {}", r.text());
            };
            while n < 20 || !stop.load(Ordering::Acquire) || disconnected < GONE_USERS {
                assert!(Instant::now() < deadline, "the commands did not end");
                if n < USERS * PER_USER_MAX {
                    post(format!("/subscribe?user=u{}&topic=s{n}", n % USERS));
                    n += 1;
                }
                if switching.load(Ordering::Acquire) && n % 16 == 0 && disconnected < GONE_USERS {
                    post(format!("/disconnect?user=d{disconnected}"));
                    disconnected += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };
    let mut a = a;
    let args = successor_args(&b, &a, "a", &path, &[]);
    let new = Server::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    switching.store(true, Ordering::Release);
    let status = a.wait_exit(Duration::from_secs(60));
    stop.store(true, Ordering::Release);
    let status = status.unwrap_or_else(|| panic!("the old process exits:\n{}", a.stderr()));
    assert!(status.success(), "old process: {status:?}\n{}", a.stderr());
    let count = commander.join().expect("commander");
    // The old node's fence waited for its own marker back from the bus: the commands the
    // bus delivered to the new process before the last connection moved reached it first.
    let marker_ms = marker_back_ms(&a.stderr());
    match bus {
        Bus::LateToOld(delay) => {
            assert!(marker_ms >= delay.as_millis() as f64, "the bus was late: {marker_ms} ms")
        }
        Bus::OtherServer { advertise: true, .. } => {
            let log = new.stderr();
            assert!(log.contains("connected to the old process's server"), "{log}");
            assert_eq!(new.stats()["cluster"]["bus_server"], old_server, "on the same server");
        }
        Bus::OtherServer { advertise: false, .. } => {
            let log = new.stderr();
            assert!(log.contains("no client URL of the cluster"), "{log}");
            assert_ne!(new.stats()["cluster"]["bus_server"], old_server, "on another server");
            assert!(a.stderr().contains("the whole wait"), "{}", a.stderr());
            assert!(marker_ms >= 1000.0, "the old node waited the whole second: {marker_ms} ms");
        }
        Bus::Direct => {}
    }
    // The disconnected users' connections move only if the command came after them.
    new.wait_metric("c10m_handover_received_total", &[], WS as f64);

    // Each connection is told of each of its user's subscriptions, once.
    let topics_of = |i: usize| -> Vec<String> {
        (0..count).filter(|n| n % USERS == i % USERS).map(|n| format!("s{n}")).collect()
    };
    for (i, ws) in wss.iter_mut().enumerate() {
        let mut told: Vec<String> = (0..topics_of(i).len())
            .map(|_| {
                let m: serde_json::Value = serde_json::from_str(&ws_text(ws)).expect("JSON");
                assert_eq!(m["server"], true, "client {i}: {m}");
                m["subscribed"].as_str().unwrap_or_else(|| panic!("client {i}: {m}")).to_owned()
            })
            .collect();
        told.sort_by_key(|t| t[1..].parse::<usize>().unwrap_or(usize::MAX));
        assert_eq!(told, topics_of(i), "client {i}: every subscription, told once");
    }
    for (i, ws) in gone.iter_mut().enumerate() {
        loop {
            match common::ws_next(ws) {
                tungstenite::Message::Close(Some(f)) => {
                    assert_eq!(u16::from(f.code), 4003, "user d{}: {f:?}", i % GONE_USERS);
                    break;
                }
                tungstenite::Message::Text(_) => continue,
                other => panic!("user d{}: a close, got {other:?}", i % GONE_USERS),
            }
        }
    }
    // The subscriptions are the new process's: a message to each topic reaches its user's
    // connections, and nothing else came (no second notice).
    common::wait_until("the new process reads the store", STEP, || {
        (new.stats()["cluster"]["store_connected"] == true).then_some(())
    });
    let mut admin = other.admin_conn();
    for n in 0..count {
        admin.publish(&format!("topic=s{n}"), format!("s{n}"));
    }
    for (i, ws) in wss.iter_mut().enumerate() {
        let mut got: Vec<String> = (0..topics_of(i).len()).map(|_| ws_text(ws)).collect();
        got.sort_by_key(|t| t[1..].parse::<usize>().unwrap_or(usize::MAX));
        assert_eq!(got, topics_of(i), "client {i}: its topics' messages, once each");
    }
    assert_eq!(other.publish("all", "end").0, 202);
    for (i, ws) in wss.iter_mut().enumerate() {
        assert_eq!(ws_text(ws), "end", "client {i}: nothing else");
    }
    let after: Vec<u16> = wss.iter().map(|w| w.get_ref().local_addr().unwrap().port()).collect();
    assert_eq!(ports, after, "the same TCP connections");
    let text = new.metrics();
    assert_eq!(common::metric_sum(&text, "c10m_cluster_dropped_total", &[]), 0.0, "{text}");
}

/// Commands from another node for connections that come back to the old process: while
/// they are exported the old shard forwards each command and keeps a copy, and applies the
/// copy once they are back, refused by the new process in its ack or when the handover
/// reverts. The successor is a stand-in (the library's own takeover). Node a has one shard
/// and 70 WebSockets of 10 users, so its first batch holds 64 and its second the rest:
/// node b subscribes every user to `back` while the first is exported, which the stand-in
/// then refuses; and to `back2`, and disconnects user r9, while the second is exported,
/// then the stand-in goes away.
#[test]
fn commands_for_connections_that_come_back_apply_once() {
    const WS: usize = 70;
    const USERS: usize = 10;
    let b = Backends::start();
    let path = control_path("cluster-back");
    let a = b.node("a", &["--control-socket", &path, "--shards", "1"], 0);
    let other = b.node("b", &[], 1);
    let mut wss: Vec<_> =
        (0..WS).map(|i| a.ws_connect(&format!("/ws?user=r{}", i % USERS))).collect();
    a.wait_connections(WS as u64);
    let ports: Vec<u16> = wss.iter().map(|w| w.get_ref().local_addr().unwrap().port()).collect();
    let (client, admin) = ([a.client], [a.admin]);
    let me = c10m::handover::Successor {
        shards: 1,
        listen: &client,
        admin: &admin,
        tls: false,
        node: Some("a"),
        store: true,
    };
    let mut stand_in = StandIn::take_over(path.as_ref(), &me);
    let mut admin = other.admin_conn();
    let mut command = |target: String| {
        let r = admin.request("POST", &target, "");
        assert_eq!(r.status, 202, "{target}: {}", r.text());
    };
    let forwarded = |stand_in: &mut StandIn, want: usize| {
        let mut n = 0;
        while n < want {
            match stand_in.next(STEP) {
                (_, FromOld::Commands(k)) => n += k,
                (_, other) => panic!("the commands, got {other:?}"),
            }
        }
        assert_eq!(n, want, "one forward per user and command");
    };
    let notice = |ws: &mut common::Ws, topic: &str, i: usize| {
        let m: serde_json::Value = serde_json::from_str(&ws_text(ws)).expect("JSON");
        assert_eq!(m, serde_json::json!({"subscribed": topic, "server": true}), "client {i}");
    };

    // The first batch is exported; the commands reach node a, which forwards them.
    let (chan, seq, first) = stand_in.batch(STEP);
    assert_eq!(first, 64);
    (0..USERS).for_each(|u| command(format!("/subscribe?user=r{u}&topic=back")));
    forwarded(&mut stand_in, USERS);
    // Refused: its connections come back and their commands apply there. Every client is
    // told once, those that stayed at once, the refused ones now.
    stand_in.ack(chan, seq, &vec![false; first]);
    for (i, ws) in wss.iter_mut().enumerate() {
        notice(ws, "back", i);
    }

    // The second batch, then commands, then the stand-in goes away: the handover reverts
    // and the second batch's connections get theirs.
    let (_, _, second) = stand_in.batch(STEP);
    assert_eq!(second, WS - first, "the rest; the refused ones stay");
    (0..USERS).for_each(|u| command(format!("/subscribe?user=r{u}&topic=back2")));
    command(format!("/disconnect?user=r{}", USERS - 1));
    forwarded(&mut stand_in, USERS + 1);
    drop(stand_in);
    common::wait_until("the old process says it serves on", STEP, || {
        a.stderr().contains("still serving").then_some(())
    });
    for (i, ws) in wss.iter_mut().enumerate() {
        notice(ws, "back2", i);
        if i % USERS == USERS - 1 {
            match common::ws_next(ws) {
                tungstenite::Message::Close(Some(f)) => {
                    assert_eq!(u16::from(f.code), 4003, "client {i}: {f:?}")
                }
                other => panic!("client {i}: a close, got {other:?}"),
            }
        }
    }
    // The subscriptions are node a's: each topic's message once, and nothing else (no
    // second notice), on the same TCP connections.
    for topic in ["back", "back2"] {
        assert_eq!(other.publish(&format!("topic={topic}"), topic).0, 202);
    }
    assert_eq!(other.publish("all", "end").0, 202);
    for (i, ws) in wss.iter_mut().enumerate().filter(|(i, _)| i % USERS != USERS - 1) {
        let mut got = vec![ws_text(ws), ws_text(ws)];
        got.sort();
        assert_eq!(got, ["back", "back2"], "client {i}");
        assert_eq!(ws_text(ws), "end", "client {i}: nothing else");
        assert_eq!(ws.get_ref().local_addr().unwrap().port(), ports[i], "client {i}");
    }
}
