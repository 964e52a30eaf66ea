//! History on a cluster: the nodes keep it in the shared store (a JetStream stream on the
//! bus, `src/cluster/store.rs`), which numbers every publish, so every node shows the same
//! ids and a client resumes on any node. Real Redis and NATS (with JetStream), real curl.

mod common;

use std::process::Command;

use common::backends::{cluster_stat, free_port, spawn, Backends};
use common::{curl_sse, sse_data, sse_last_id, wait_until, LineChild, Server, STEP};

/// The SSE lines up to and including `data: {payload}`, and the id just before it.
fn event(curl: &mut LineChild, payload: &str) -> String {
    let want = format!("data: {payload}");
    let lines = curl.lines_until(|l| l == want);
    sse_last_id(&lines)
}

#[test]
fn an_sse_client_resumes_on_another_node_with_exactly_what_it_missed_then_live_ones() {
    let b = Backends::start();
    let a_node = b.node("a", &[], 0);
    let b_node = b.node("b", &[], 1);
    let mut curl = curl_sse(&a_node, "user=ann&topics=news", None);
    a_node.wait_connections(1);
    assert_eq!(a_node.publish("user=ann", "before").0, 202);
    let last = event(&mut curl, "before");
    drop(curl);
    a_node.wait_connections(0);

    // Missed while away, published at the other node, with others' messages between.
    let mut admin = b_node.admin_conn();
    for i in 0..50 {
        admin.publish("user=ann", format!("u{i}"));
        admin.publish("topic=news", format!("t{i}"));
        admin.publish("user=bob", "not yours");
        admin.publish("topic=other", "not yours");
    }
    wait_until("node b read all 201 messages", STEP, || {
        (cluster_stat(&b_node, "store_in") == 201).then_some(())
    });

    let mut curl = curl_sse(&b_node, "user=ann&topics=news", Some(&last));
    let mut got = Vec::new();
    let mut seen = Vec::new();
    while got.len() < 100 {
        let lines = curl.lines_until(|l| l.starts_with("data: "));
        got.extend(sse_data(&lines));
        seen.extend(lines);
    }
    let user: Vec<&String> = got.iter().filter(|d| d.starts_with('u')).collect();
    let topic: Vec<&String> = got.iter().filter(|d| d.starts_with('t')).collect();
    let want_u: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
    let want_t: Vec<String> = (0..50).map(|i| format!("t{i}")).collect();
    assert_eq!(got.len(), 100, "exactly the missed messages: {got:?}");
    assert_eq!(user, want_u.iter().collect::<Vec<_>>(), "the user's stream, in order");
    assert_eq!(topic, want_t.iter().collect::<Vec<_>>(), "the topic's stream, in order");
    assert!(!seen.iter().any(|l| l.contains("c10m-gap")), "no gap: {seen:?}");
    // Then live ones, from either node, once.
    assert_eq!(a_node.publish("user=ann", "live").0, 202);
    assert_eq!(curl.expect_line(|l| l.starts_with("data: ")), "data: live");
    assert_eq!(b_node.publish("all", "end").0, 202);
    assert_eq!(curl.expect_line(|l| l.starts_with("data: ")), "data: end");
    let metrics = b_node.metrics();
    assert_eq!(common::metric_sum(&metrics, "c10m_resumes_total", &[]), 1.0);
    assert_eq!(common::metric_sum(&metrics, "c10m_replayed_total", &[]), 100.0);
    for n in [&a_node, &b_node] {
        let text = n.metrics();
        assert_eq!(common::metric_sum(&text, "c10m_cluster_dropped_total", &[]), 0.0, "{text}");
    }
}

#[test]
fn every_node_shows_the_same_ids_for_publishes_from_nodes_and_from_backends() {
    let b = Backends::start();
    let a_node = b.node("a", &[], 0);
    let b_node = b.node("b", &[], 1);
    let mut on_a = curl_sse(&a_node, "topics=news", None);
    let mut on_b = curl_sse(&b_node, "topics=news", None);
    a_node.wait_connections(1);
    b_node.wait_connections(1);
    assert_eq!(a_node.publish("topic=news", "from a").0, 202);
    let (ia, ib) = (event(&mut on_a, "from a"), event(&mut on_b, "from a"));
    assert_eq!(ia, ib, "one id on every node");
    // A backend publishing straight to the bus is stored and numbered the same way.
    b.backend_publish(&[("c10m.topic.news", "from a backend")]);
    let (ja, jb) = (event(&mut on_a, "from a backend"), event(&mut on_b, "from a backend"));
    assert_eq!(ja, jb, "one id on every node");
    assert_ne!(ia, ja);
    // Ids are epoch-topics positions; the topic position counts up.
    let topics = |id: &str| u64::from_str_radix(id.split('-').nth(1).unwrap(), 36).unwrap();
    assert!(topics(&ja) > topics(&ia), "{ia} then {ja}");
    assert_eq!(ia.split('-').next(), ja.split('-').next(), "one epoch");
}

#[test]
fn a_store_that_lost_its_stream_starts_a_new_epoch_and_delivery_goes_on_meanwhile() {
    let mut b = Backends::start();
    let a_node = b.node("a", &[], 0);
    let mut curl = curl_sse(&a_node, "user=ann&topics=news", None);
    a_node.wait_connections(1);
    assert_eq!(a_node.publish("user=ann", "stored").0, 202);
    let old = event(&mut curl, "stored");

    // The bus goes away: this node's clients still get what is published here.
    b.nats = None;
    wait_until("a sees the store gone", STEP, || {
        (a_node.stats()["cluster"]["store_connected"] == false).then_some(())
    });
    assert_eq!(a_node.publish("topic=news", "while down").0, 202);
    event(&mut curl, "while down");

    // It comes back without its store: a new stream, a new epoch.
    b.start_nats();
    wait_until("a reads the new stream", STEP, || {
        let c = &a_node.stats()["cluster"];
        (c["store_connected"] == true && c["store_epochs"] == 1).then_some(())
    });
    assert_eq!(a_node.publish("user=ann", "after").0, 202);
    let new = event(&mut curl, "after");
    assert_ne!(old.split('-').next(), new.split('-').next(), "{old} then {new}: a new epoch");
    drop(curl);
    a_node.wait_connections(0);

    // A position from the old stream cannot be proven: every stream reports the epoch.
    let mut curl = curl_sse(&a_node, "user=ann&topics=news", Some(&old));
    let lines = curl.lines_until(|l| l.contains(r#""stream":"topic:news""#));
    let gaps: Vec<&String> = lines.iter().filter(|l| l.starts_with("data: ")).collect();
    assert!(gaps.iter().all(|l| l.contains(r#""reason":"epoch""#)), "{lines:?}");
    // A position from the new one resumes.
    drop(curl);
    a_node.wait_connections(0);
    assert_eq!(a_node.publish("user=ann", "resumed").0, 202);
    let mut curl = curl_sse(&a_node, "user=ann&topics=news", Some(&new));
    let lines = curl.lines_until(|l| l == "data: resumed");
    assert!(!lines.iter().any(|l| l.contains("c10m-gap")), "{lines:?}");
}

#[test]
fn a_node_started_after_the_publishes_fills_its_history_from_the_store() {
    let b = Backends::start();
    let a_node = b.node("a", &[], 0);
    let mut curl = curl_sse(&a_node, "user=ann&topics=news", None);
    a_node.wait_connections(1);
    assert_eq!(a_node.publish("topic=news", "before").0, 202);
    let last = event(&mut curl, "before");
    drop(curl);
    a_node.wait_connections(0);
    let mut admin = a_node.admin_conn();
    for i in 0..20 {
        admin.publish("user=ann", format!("u{i}"));
        admin.publish("topic=news", format!("t{i}"));
        admin.publish("user=bob", "not yours");
    }
    wait_until("a read all 61 messages", STEP, || {
        (cluster_stat(&a_node, "store_in") == 61).then_some(())
    });

    // b starts now: what the store held comes into its logs before anything live.
    let b_node = b.node("b", &[], 1);
    let mut curl = curl_sse(&b_node, "user=ann&topics=news", Some(&last));
    let mut got = Vec::new();
    let mut seen = Vec::new();
    while got.len() < 40 {
        let lines = curl.lines_until(|l| l.starts_with("data: "));
        got.extend(sse_data(&lines));
        seen.extend(lines);
    }
    let user: Vec<String> = got.iter().filter(|d| d.starts_with('u')).cloned().collect();
    let topic: Vec<String> = got.iter().filter(|d| d.starts_with('t')).cloned().collect();
    assert_eq!(user, (0..20).map(|i| format!("u{i}")).collect::<Vec<_>>(), "{got:?}");
    assert_eq!(topic, (0..20).map(|i| format!("t{i}")).collect::<Vec<_>>(), "{got:?}");
    assert!(!seen.iter().any(|l| l.contains("c10m-gap")), "no gap: {seen:?}");
    // A new connection on b gets only what comes after it.
    let mut fresh = curl_sse(&b_node, "user=ann&topics=news", None);
    b_node.wait_connections(2);
    assert_eq!(b_node.publish("user=ann", "live").0, 202);
    assert_eq!(curl.expect_line(|l| l.starts_with("data: ")), "data: live");
    assert_eq!(fresh.expect_line(|l| l.starts_with("data: ")), "data: live");
    // Its log holds what the store had (the gauge is refreshed once a second).
    wait_until("b's history holds the 62 messages", STEP, || {
        let text = b_node.metrics();
        (common::metric_sum(&text, "c10m_history_messages", &[]) == 62.0).then_some(())
    });
}

#[test]
fn a_node_started_before_its_bus_delivers_locally_then_takes_the_stores_epoch() {
    let mut b = Backends::start();
    b.nats = None;
    let args = ["--node-id", "a", "--registry", &b.redis_url, "--bus", &b.nats_url];
    let a_node = Server::start(&args);
    let mut curl = curl_sse(&a_node, "user=ann&topics=news", None);
    a_node.wait_connections(1);
    assert_eq!(a_node.publish("user=ann", "local").0, 202);
    event(&mut curl, "local");

    b.start_nats();
    wait_until("a reads the store", STEP, || {
        let c = &a_node.stats()["cluster"];
        (c["store_connected"] == true && c["store_epochs"] == 1).then_some(())
    });
    assert_eq!(a_node.publish("user=ann", "stored").0, 202);
    let id = event(&mut curl, "stored");
    drop(curl);
    a_node.wait_connections(0);
    assert_eq!(a_node.publish("topic=news", "missed").0, 202);
    let mut curl = curl_sse(&a_node, "user=ann&topics=news", Some(&id));
    let lines = curl.lines_until(|l| l == "data: missed");
    assert!(!lines.iter().any(|l| l.contains("c10m-gap")), "{lines:?}");
}

#[test]
fn a_bus_without_jetstream_is_refused_with_what_to_change() {
    let b = Backends::start();
    let (port, monitor) = (free_port(), free_port());
    let (p, m) = (port.to_string(), monitor.to_string());
    let _plain = spawn("nats-server", &["-a", "127.0.0.1", "-p", &p, "-m", &m]);
    let bus = format!("nats://127.0.0.1:{port}");
    wait_until("the plain nats-server listens", STEP, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let out = Command::new(env!("CARGO_BIN_EXE_c10m"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--node-id", "n1"])
        .args(["--registry", &b.redis_url, "--bus", &bus])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nats-server -js") && err.contains("history_ttl_ms = 0"), "{err}");
    // Without history the same bus serves the at-most-once path.
    let node = Server::start(&[
        "--node-id",
        "n1",
        "--registry",
        &b.redis_url,
        "--bus",
        &bus,
        "--history-ttl-ms",
        "0",
    ]);
    node.wait_connections(0);
}

/// Nodes that start at the same moment on a bus without the stream yet: whichever creates
/// it first, every one finds it and uses it (JetStream answers the others' create with
/// "subjects overlap" or, with other limits, "name already in use"). Eight starts at once,
/// half of them with other limits, through the nodes' own `store::ensure`.
#[test]
fn nodes_starting_at_once_share_the_stream_one_of_them_created() {
    let b = Backends::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let windows = [(120_000, 1000), (60_000, 500)]
        .map(|(ttl_ms, per_subject)| c10m::cluster::store::Window { ttl_ms, per_subject });
    let results = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(async_nats::connect(b.nats_url.as_str()).await.expect("NATS"));
        }
        let url = b.nats_url.as_str();
        let starts = clients.iter().enumerate().map(|(i, c)| {
            let js = async_nats::jetstream::new(c.clone());
            async move { c10m::cluster::store::ensure(&js, url, windows[i % 2]).await }
        });
        tokio::time::timeout(STEP, futures_util::future::join_all(starts)).await
    });
    let results = results.expect("within the step");
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "start {i}: {r:?}");
    }
    let created: Vec<_> = results.iter().flatten().map(|info| info.created).collect();
    assert!(created.windows(2).all(|w| w[0] == w[1]), "one stream: {created:?}");
}
