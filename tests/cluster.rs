//! Cluster nodes against real Redis and NATS servers: each test starts `redis-server` and
//! `nats-server` on free loopback ports (killed on drop) and several `c10m serve --node-id`
//! processes, then checks delivery across nodes and registry expiry. `scripts/test.sh`
//! installs both servers when they are missing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::backends::{cluster_stat, Backends, SUBSCRIPTIONS_PER_NODE};
use common::{wait_until, ws_close_json, ws_text, Server, STEP};

/// Nodes without history: publishes travel on the bus alone (at most once), looked up in
/// the registry. The history store's path is tested in tests/cluster_history.rs.
const BUS_ONLY: &[&str] = &["--history-ttl-ms", "0"];

#[test]
fn publish_at_one_node_reaches_a_user_on_another() {
    let b = Backends::start();
    let a_node = b.node("a", BUS_ONLY, 0);
    let b_node = b.node("b", BUS_ONLY, 1);
    let mut bob = b_node.ws_connect("/ws?user=bob");
    let mut carol = b_node.sse_connect("user=carol");
    wait_until("bob and carol registered on b", STEP, || {
        (b.nodes_of("bob") == ["b"] && b.nodes_of("carol") == ["b"]).then_some(())
    });
    let (status, body) = a_node.publish("user=bob", "hello bob");
    assert_eq!(status, 202, "{body}");
    assert_eq!(ws_text(&mut bob), "hello bob");
    // The event carries the position of carol's node (history ids are per node for now).
    let (status, body) = a_node.publish("user=carol", "hello carol");
    assert_eq!(status, 202, "{body}");
    let (event_id, data) = carol.next_event();
    assert_eq!(data, b"hello carol");
    let event_id = event_id.expect("an SSE event id");
    assert_eq!(event_id.split('-').count(), 3, "epoch-topics-user position: {event_id}");
    assert_eq!(cluster_stat(&a_node, "lookups"), 2);
    assert_eq!(cluster_stat(&b_node, "bus_in"), 2);
    // A clean disconnect removes the entry.
    drop(bob);
    wait_until("bob's entry removed", STEP, || (!b.key_exists("bob")).then_some(()));
    assert_eq!(b.nodes_of("carol"), ["b"]);
    let metrics = b_node.metrics();
    assert_eq!(common::metric_sum(&metrics, "c10m_cluster_dropped_total", &[]), 0.0, "{metrics}");
}

#[test]
fn topic_and_broadcast_reach_every_node_exactly_once() {
    let b = Backends::start();
    let nodes: Vec<Server> =
        ["a", "b", "c"].iter().enumerate().map(|(i, id)| b.node(id, BUS_ONLY, i as u64)).collect();
    let mut clients: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| n.ws_connect(&format!("/ws?user=u{i}&topics=news")))
        .collect();
    for n in &nodes {
        n.wait_connections(1);
    }
    let mut expect_everywhere = |what: &str| {
        for (i, c) in clients.iter_mut().enumerate() {
            assert_eq!(ws_text(c), what, "client on node {i}");
        }
    };
    assert_eq!(nodes[0].publish("topic=news", "t1").0, 202);
    expect_everywhere("t1");
    assert_eq!(nodes[1].publish("all", "b1").0, 202);
    expect_everywhere("b1");
    // A topic name that is no NATS subject token travels in a header.
    let mut odd = nodes.iter().map(|n| n.ws_connect("/ws?user=o&topics=a%20b")).collect::<Vec<_>>();
    for n in &nodes {
        n.wait_connections(2);
    }
    assert_eq!(nodes[2].publish("topic=a%20b", "spaced").0, 202);
    for c in odd.iter_mut() {
        assert_eq!(ws_text(c), "spaced");
    }
    // A duplicate of anything above would arrive before this marker.
    assert_eq!(nodes[2].publish("topic=news", "end").0, 202);
    expect_everywhere("end");
    // Each origin skips its own messages when NATS echoes them back; the echo of "end" may
    // come after the clients already have it (local delivery does not wait for the bus).
    let mut own: Vec<u64> = Vec::new();
    common::wait_until_or(
        "each origin to skip its own messages [1, 1, 2]",
        STEP,
        &mut own,
        |own| {
            *own = nodes.iter().map(|n| cluster_stat(n, "bus_in_own")).collect();
            (*own == [1, 1, 2]).then_some(())
        },
    );
    for n in &nodes {
        let text = n.metrics();
        assert_eq!(common::metric_sum(&text, "c10m_cluster_dropped_total", &[]), 0.0, "{text}");
    }
}

#[test]
fn backend_publishes_straight_to_nats_reach_users_topics_and_everyone() {
    let b = Backends::start();
    let a_node = b.node("a", BUS_ONLY, 0);
    let b_node = b.node("b", BUS_ONLY, 1);
    let mut on_a = a_node.ws_connect("/ws?user=ann&topics=news");
    let mut on_b = b_node.ws_connect("/ws?user=bob&topics=news");
    wait_until("both registered", STEP, || {
        (b.nodes_of("ann") == ["a"] && b.nodes_of("bob") == ["b"]).then_some(())
    });
    // Whichever node the queue group picks, each user gets its message once.
    b.backend_publish(&[("c10m.user.bob", "to bob"), ("c10m.user.ann", "to ann")]);
    assert_eq!(ws_text(&mut on_b), "to bob");
    assert_eq!(ws_text(&mut on_a), "to ann");
    b.backend_publish(&[("c10m.topic.news", "news"), ("c10m.all", "all")]);
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(ws_text(c), "news");
        assert_eq!(ws_text(c), "all");
    }
    // A message for a user with no node is counted, not delivered anywhere.
    b.backend_publish(&[("c10m.user.nobody", "x")]);
    wait_until("lookup of nobody counted", STEP, || {
        (cluster_stat(&a_node, "lookups_empty") + cluster_stat(&b_node, "lookups_empty") == 1)
            .then_some(())
    });
}

#[test]
fn a_killed_nodes_entries_expire_and_a_live_nodes_are_refreshed() {
    let b = Backends::start();
    let ttl = ["--registry-ttl-ms", "1500"];
    let a_node = b.node("a", &ttl, 0);
    let b_node = b.node("b", &ttl, 1);
    let _ann = a_node.ws_connect("/ws?user=ann");
    let _dave = b_node.ws_connect("/ws?user=dave");
    wait_until("both registered", STEP, || {
        (b.nodes_of("ann") == ["a"] && b.nodes_of("dave") == ["b"]).then_some(())
    });
    // Past twice the TTL, refreshes keep live entries (observed every 100 ms for 3.2 s).
    let until = Instant::now() + Duration::from_millis(3200);
    while Instant::now() < until {
        assert_eq!(b.nodes_of("dave"), ["b"], "a live node's entry lapsed");
        std::thread::sleep(Duration::from_millis(100));
    }
    b_node.signal(libc::SIGKILL);
    wait_until("dave's entry expired after b was killed", STEP, || {
        (!b.key_exists("dave")).then_some(())
    });
    assert_eq!(b.nodes_of("ann"), ["a"]);
    assert!(cluster_stat(&a_node, "registry_batches") >= 2, "refreshes are batched writes");
}

#[test]
fn users_on_both_shards_stay_registered_and_leave_with_their_last_connection() {
    let b = Backends::start();
    let args = ["--registry-ttl-ms", "1500", "--history-ttl-ms", "0"];
    let node = b.node("a", &args, 0);
    // Twenty users of one connection and pat with four, over both shards (SO_REUSEPORT).
    let _users: Vec<_> = (0..20).map(|i| node.ws_connect(&format!("/ws?user=r{i}"))).collect();
    let mut pat: Vec<_> = (0..4).map(|_| node.ws_connect("/ws?user=pat")).collect();
    node.wait_connections(24);
    let metrics = node.metrics();
    for shard in ["shard=\"0\"", "shard=\"1\""] {
        let held = common::metric_sum(&metrics, "c10m_connections", &[shard]);
        assert!(held > 0.0, "{shard} holds none: {metrics}");
    }
    let names: Vec<String> = (0..20).map(|i| format!("r{i}")).chain(["pat".into()]).collect();
    wait_until("every user registered", STEP, || {
        names.iter().all(|u| b.nodes_of(u) == ["a"]).then_some(())
    });
    assert_eq!(cluster_stat(&node, "online_users"), 21, "pat counts once");
    // Past twice the TTL, the walk of both shards keeps every entry (observed every 100 ms
    // for 3.2 s).
    let refreshes = cluster_stat(&node, "registry_refreshes");
    let until = Instant::now() + Duration::from_millis(3200);
    while Instant::now() < until {
        for u in &names {
            assert_eq!(b.nodes_of(u), ["a"], "{u}'s entry lapsed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(cluster_stat(&node, "registry_refreshes") >= refreshes + 2, "walks every 500 ms");
    // pat stays while a connection is left; had a close before the last one counted as
    // pat leaving, online_users would end below 20.
    pat.truncate(1);
    node.wait_connections(21);
    assert_eq!(b.nodes_of("pat"), ["a"]);
    pat.clear();
    wait_until("pat's entry removed", STEP, || (!b.key_exists("pat")).then_some(()));
    node.wait_connections(20);
    assert_eq!(cluster_stat(&node, "online_users"), 20, "pat left once");
    assert!((0..20).all(|i| b.nodes_of(&format!("r{i}")) == ["a"]));
}

#[test]
fn a_partial_cluster_configuration_is_refused_with_advice() {
    let out = Command::new(env!("CARGO_BIN_EXE_c10m"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--node-id", "n1"])
        .args(["--bus", "nats://127.0.0.1:4222"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("add --registry"), "{err}");
}

#[test]
fn a_node_that_shuts_down_cleanly_removes_its_entries() {
    let b = Backends::start();
    let mut node = b.node("a", &[], 0);
    // SSE clients: a shutdown ends their streams at once (no close handshake to wait for),
    // so the node exits right after their last announcements reach its bridge. Eight users
    // of two connections each, over both shards: a user's last connection often closes on
    // the shard that is not its home, which must hear of it before it exits.
    let users: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    let _clients: Vec<_> =
        users.iter().flat_map(|u| [0, 1].map(|_| node.sse_connect(&format!("user={u}")))).collect();
    node.wait_connections(16);
    wait_until("every user registered", STEP, || {
        users.iter().all(|u| b.nodes_of(u) == ["a"]).then_some(())
    });
    node.signal(libc::SIGINT);
    assert!(node.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()));
    // Removed by the node on its way out, not by the expiry; its heartbeat too.
    let left: Vec<&String> = users.iter().filter(|u| b.key_exists(u)).collect();
    assert!(left.is_empty(), "entries left: {left:?}");
    assert!(b.heartbeats().is_empty(), "heartbeat left: {:?}", b.heartbeats());
}

#[test]
fn a_killed_node_gets_no_publishes_once_its_heartbeat_expires() {
    let b = Backends::start();
    // Users' entries live 600 s (the default); the node heartbeat 600 ms.
    let args = ["--node-ttl-ms", "600", "--history-ttl-ms", "0"];
    let a_node = b.node("a", &args, 0);
    let b_node = b.node("b", &args, 1);
    let _dave = b_node.ws_connect("/ws?user=dave");
    wait_until("dave registered", STEP, || (b.nodes_of("dave") == ["b"]).then_some(()));
    wait_until("a sees two live nodes", STEP, || {
        (cluster_stat(&a_node, "live_nodes") == 2).then_some(())
    });
    assert_eq!(a_node.publish("user=dave", "x").0, 202);
    wait_until("a forwarded it to b", STEP, || {
        (cluster_stat(&a_node, "bus_out") == 1).then_some(())
    });
    b_node.signal(libc::SIGKILL);
    wait_until("a skips the dead node", STEP, || {
        assert_eq!(a_node.publish("user=dave", "y").0, 202);
        (cluster_stat(&a_node, "lookups_dead_node") >= 1).then_some(())
    });
    assert_eq!(b.nodes_of("dave"), ["b"], "dave's entry itself has not expired");
    // From now on nothing goes to b: three more publishes, three more lookups, no bus out.
    let out = cluster_stat(&a_node, "bus_out");
    let looked = cluster_stat(&a_node, "lookups");
    for _ in 0..3 {
        assert_eq!(a_node.publish("user=dave", "z").0, 202);
    }
    wait_until("three more lookups", STEP, || {
        (cluster_stat(&a_node, "lookups") >= looked + 3).then_some(())
    });
    assert_eq!(cluster_stat(&a_node, "bus_out"), out, "nothing more went to the dead node");
    wait_until("a counts one live node", STEP, || {
        (cluster_stat(&a_node, "live_nodes") == 1).then_some(())
    });
}

fn dropped(server: &Server, reason: &str) -> u64 {
    server.stats()["cluster"]["dropped"][reason].as_u64().unwrap()
}

#[test]
fn with_redis_or_nats_down_local_delivery_goes_on_and_drops_are_counted() {
    let mut b = Backends::start();
    let ttl = ["--registry-ttl-ms", "1500", "--history-ttl-ms", "0"];
    let a_node = b.node("a", &ttl, 0);
    let b_node = b.node("b", &ttl, 1);
    let mut ann = a_node.ws_connect("/ws?user=ann&topics=news");
    wait_until("ann registered", STEP, || (b.nodes_of("ann") == ["a"]).then_some(()));

    b.redis = None;
    for n in [&a_node, &b_node] {
        wait_until("the nodes see Redis down", STEP, || {
            (n.stats()["cluster"]["registry_connected"] == false).then_some(())
        });
    }
    assert_eq!(a_node.publish("user=ann", "local 1").0, 202);
    assert_eq!(ws_text(&mut ann), "local 1");
    wait_until("lookup drop counted", STEP, || {
        (dropped(&a_node, "registry_down") == 1).then_some(())
    });

    b.nats = None;
    wait_until("a sees NATS down", STEP, || {
        (a_node.stats()["cluster"]["bus_connected"] == false).then_some(())
    });
    assert_eq!(a_node.publish("topic=news", "local 2").0, 202);
    assert_eq!(ws_text(&mut ann), "local 2");
    wait_until("bus drop counted", STEP, || (dropped(&a_node, "bus_down") == 1).then_some(()));
    let text = a_node.metrics();
    assert_eq!(
        common::metric_sum(&text, "c10m_cluster_dropped_total", &["reason=\"bus_down\""]),
        1.0,
        "{text}"
    );

    // Both come back (empty): the nodes reconnect on their own, the refresh writes ann again,
    // and publishes cross nodes again.
    b.start_redis();
    b.start_nats();
    wait_until("ann registered again", STEP, || (b.nodes_of("ann") == ["a"]).then_some(()));
    wait_until("b reconnected to Redis", STEP, || {
        (b_node.stats()["cluster"]["registry_connected"] == true).then_some(())
    });
    wait_until("both nodes resubscribed", STEP, || {
        b.nats_subscriptions().filter(|&n| n >= 2 * SUBSCRIPTIONS_PER_NODE)
    });
    assert_eq!(b_node.publish("user=ann", "remote").0, 202);
    assert_eq!(ws_text(&mut ann), "remote");
    assert_eq!(b_node.publish("topic=news", "remote topic").0, 202);
    assert_eq!(ws_text(&mut ann), "remote topic");
}

#[test]
fn a_user_on_several_nodes_gets_each_publish_once_on_each() {
    let b = Backends::start();
    let nodes: Vec<Server> =
        ["a", "b", "c"].iter().enumerate().map(|(i, id)| b.node(id, &[], i as u64)).collect();
    let mut conns: Vec<_> = nodes.iter().map(|n| n.ws_connect("/ws?user=multi")).collect();
    // Two connections on c: still one registry member for c.
    conns.push(nodes[2].ws_connect("/ws?user=multi"));
    wait_until("multi registered on every node", STEP, || {
        let mut on = b.nodes_of("multi");
        on.sort();
        (on == ["a", "b", "c"]).then_some(())
    });
    for (i, text) in ["one", "two"].iter().enumerate() {
        assert_eq!(nodes[i].publish("user=multi", text).0, 202);
        for (j, c) in conns.iter_mut().enumerate() {
            assert_eq!(ws_text(c), *text, "connection {j}");
        }
    }
    // Closing one of c's two connections keeps c registered; closing both removes it.
    conns.pop();
    nodes[2].wait_connections(1);
    assert_eq!(nodes[2].publish("user=multi", "three").0, 202);
    for c in conns.iter_mut() {
        assert_eq!(ws_text(c), "three");
    }
    let mut on = b.nodes_of("multi");
    on.sort();
    assert_eq!(on, ["a", "b", "c"]);
    conns.pop();
    wait_until("c's member removed", STEP, || {
        let mut on = b.nodes_of("multi");
        on.sort();
        (on == ["a", "b"]).then_some(())
    });
}

#[test]
fn a_redis_restart_is_noticed_and_the_registry_rewritten_at_once() {
    let mut b = Backends::start();
    // The default registry TTL (600 s) would bring ann back only at the next refresh, 200 s
    // away; the vanished heartbeat (every 200 ms here) brings her back at once.
    let a_node = b.node("a", &["--node-ttl-ms", "600"], 0);
    let _ann = a_node.ws_connect("/ws?user=ann");
    wait_until("ann registered", STEP, || (b.nodes_of("ann") == ["a"]).then_some(()));
    assert_eq!(cluster_stat(&a_node, "registry_resyncs"), 0);
    b.redis = None;
    b.start_redis();
    wait_until("ann registered again", STEP, || (b.nodes_of("ann") == ["a"]).then_some(()));
    assert_eq!(cluster_stat(&a_node, "registry_resyncs"), 1);
}

#[test]
fn disconnect_and_subscribe_reach_a_users_connections_on_every_node() {
    let b = Backends::start();
    let one = b.node("one", &[], 0);
    let two = b.node("two", &[], 1);
    let mut on_one = one.ws_connect("/ws?user=roam");
    let mut on_two = two.ws_connect("/ws?user=roam");
    let mut other = two.ws_connect("/ws?user=other");
    one.wait_connections(1);
    two.wait_connections(2);

    // Server-side subscribe at node one: the connection on node two is subscribed too.
    let r = one.admin_conn().request("POST", "/subscribe?user=roam&topic=cnews", "");
    assert_eq!(r.status, 202, "{}", r.text());
    for ws in [&mut on_one, &mut on_two] {
        let said: serde_json::Value = serde_json::from_str(&ws_text(ws)).unwrap();
        assert_eq!(said["subscribed"], "cnews");
    }
    two.publish("topic=cnews", "cluster headline");
    assert_eq!(ws_text(&mut on_one), "cluster headline");
    assert_eq!(ws_text(&mut on_two), "cluster headline");

    // Disconnect with a ban at node one: both closed, and node two refuses the user too.
    let r = one.admin_conn().request("POST", "/disconnect?user=roam&ban_s=30", "");
    assert_eq!(r.status, 202, "{}", r.text());
    for ws in [&mut on_one, &mut on_two] {
        let (code, reason) = ws_close_json(ws);
        assert_eq!((code, reason["reconnect"].as_bool()), (4003, Some(false)));
    }
    wait_until("node two to refuse the banned user", STEP, || {
        two.try_ws_connect("/ws?user=roam").is_err().then_some(())
    });
    let r =
        two.client_request(b"GET /sse?user=roam HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 403, "{}", r.text());

    // A backend may send the command straight to NATS.
    b.backend_publish(&[("c10m.cmd", r#"{"user":"other","cmd":"disconnect","reason":"logout"}"#)]);
    let (code, reason) = ws_close_json(&mut other);
    assert_eq!((code, reason["reason"].as_str()), (4003, Some("logout")));
    assert!(two.try_ws_connect("/ws?user=other").is_ok(), "no ban without ban_s");
}

#[test]
fn a_batch_at_one_node_reaches_users_and_topics_on_another() {
    let b = Backends::start();
    let one = b.node("one", &[], 0);
    let two = b.node("two", &[], 1);
    let mut far: Vec<_> =
        (0..5).map(|i| two.ws_connect(&format!("/ws?user=far{i}&topics=bt"))).collect();
    two.wait_connections(5);
    wait_until("the users in the registry", STEP, || {
        (0..5).all(|i| b.key_exists(&format!("far{i}"))).then_some(())
    });
    let body: String = (0..50)
        .map(|n| format!("{{\"user\":\"far{}\",\"data\":\"b{}\"}}\n", n % 5, n / 5))
        .collect();
    let body = format!("{body}{{\"topic\":\"bt\",\"data\":\"to the topic\"}}\n");
    let r = one.admin_conn().request("POST", "/publish/batch", body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["published"], 51);
    for (i, ws) in far.iter_mut().enumerate() {
        let mut got: Vec<String> = (0..11).map(|_| ws_text(ws)).collect();
        let topic = got
            .iter()
            .position(|m| m == "to the topic")
            .unwrap_or_else(|| panic!("far{i}: {got:?}"));
        got.remove(topic);
        assert_eq!(got, (0..10).map(|k| format!("b{k}")).collect::<Vec<_>>(), "far{i}");
    }
}

fn nodes_list(server: &Server) -> Vec<serde_json::Value> {
    let r = server.client_request(b"GET /nodes HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["nodes"].as_array().cloned().unwrap_or_default()
}

#[test]
fn every_node_lists_the_live_nodes_with_their_load_and_drain() {
    let b = Backends::start();
    let a_node = b.node("a", &["--public-url", "ws://a.example:8080"], 0);
    let mut b_node = b.node("b", &["--public-url", "ws://b.example:8080"], 1);
    let held: Vec<_> = (0..3).map(|i| b_node.ws_connect(&format!("/ws?user=u{i}"))).collect();
    let list = wait_until("a lists b with its 3 connections", STEP, || {
        let list = nodes_list(&a_node);
        (list.len() == 2 && list[1]["connections"] == 3).then_some(list)
    });
    assert_eq!(list[0]["id"], "a", "the answering node comes first: {list:?}");
    assert_eq!(list[1]["id"], "b");
    assert_eq!(list[1]["url"], "ws://b.example:8080");
    assert_eq!(list[1]["draining"], false);
    let r = a_node.client_request(b"GET /nodes HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.json()["self"], "a");

    // A drain is told to the other nodes at once (the held clients keep b draining for a
    // few seconds at one goaway a second), and a node that exits leaves the list.
    let r = b_node.admin_conn().request("POST", "/drain?rate=1", b"");
    assert_eq!(r.status, 202, "{}", r.text());
    wait_until("a sees b draining", STEP, || {
        let list = nodes_list(&a_node);
        (list.len() == 2 && list[1]["draining"] == true).then_some(())
    });
    drop(held);
    assert!(b_node.wait_exit(STEP).is_some(), "b exits once its clients are gone");
    wait_until("b left a's list", STEP, || (nodes_list(&a_node).len() == 1).then_some(()));
}
