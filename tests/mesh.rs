//! The shard mesh under pressure: tiny rings force the backlog path; a zero backlog forces
//! counted drops. Per route, order holds; nothing is duplicated; registrations are never lost.

mod common;

use std::collections::HashMap;

use common::{ws_text, Server, Ws};

/// `n` pipelined publishes in one write; returns their ids in order.
fn pipelined_publishes(admin: &mut common::AdminConn, reqs: &[(String, String)]) -> Vec<u64> {
    let mut bytes = Vec::new();
    for (target, body) in reqs {
        bytes.extend_from_slice(
            format!(
                "POST /publish?{target} HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    admin.send_raw(&bytes);
    reqs.iter()
        .map(|(t, _)| {
            let r = admin.read();
            assert_eq!(r.status, 202, "{t}: {}", r.text());
            r.json()["id"].as_u64().unwrap()
        })
        .collect()
}

/// Users spread over both shards; with `--home-placement off` (as the tests below that count
/// on it run) most user publishes cross the mesh twice (to the home shard, then to the
/// connection's shard).
fn users(server: &Server, n: usize) -> Vec<Ws> {
    let ws: Vec<Ws> =
        (0..n).map(|i| server.ws_connect(&format!("/ws?user=m{i}&topics=all-{}", i % 3))).collect();
    let stats = server.wait_connections(n as u64);
    assert!(
        stats["shards"].as_array().unwrap().iter().all(|s| s["connections"].as_u64().unwrap() > 0),
        "{stats}"
    );
    ws
}

#[test]
fn tiny_mesh_rings_lose_nothing_and_keep_order_per_route() {
    let server =
        Server::start(&["--shards", "2", "--mesh-ring-entries", "16", "--home-placement", "off"]);
    const USERS: usize = 20;
    const PER_USER: usize = 40;
    let mut ws = users(&server, USERS);
    let mut reqs = Vec::new();
    for seq in 0..PER_USER {
        for u in 0..USERS {
            reqs.push((format!("user=m{u}"), format!("m{u}#{seq}")));
        }
    }
    let mut admin = server.admin_conn();
    pipelined_publishes(&mut admin, &reqs);
    for (u, c) in ws.iter_mut().enumerate() {
        for seq in 0..PER_USER {
            assert_eq!(ws_text(c), format!("m{u}#{seq}"), "user m{u}");
        }
    }
    // Topics through the same tiny rings.
    let mut reqs = Vec::new();
    for seq in 0..100 {
        reqs.push((format!("topic=all-{}", seq % 3), format!("t{}#{seq}", seq % 3)));
    }
    pipelined_publishes(&mut admin, &reqs);
    for (u, c) in ws.iter_mut().enumerate() {
        for seq in (0..100).filter(|s| s % 3 == u % 3) {
            assert_eq!(ws_text(c), format!("t{}#{seq}", u % 3), "user m{u}");
        }
    }
    admin.publish("all", "--end--");
    for (u, c) in ws.iter_mut().enumerate() {
        assert_eq!(ws_text(c), "--end--", "user m{u} got extra messages");
    }
    let text = server.metrics();
    assert_eq!(common::metric_sum(&text, "c10m_messages_dropped_total", &[]), 0.0);
}

#[test]
fn a_full_mesh_without_backlog_drops_publishes_and_counts_them() {
    let server =
        Server::start(&["--shards", "2", "--mesh-ring-entries", "16", "--mesh-backlog-max", "0"]);
    let mut ws = users(&server, 10);
    let reqs: Vec<(String, String)> =
        (0..600).map(|i| ("all".to_owned(), format!("b{i}"))).collect();
    let mut admin = server.admin_conn();
    pipelined_publishes(&mut admin, &reqs);
    // The end marker goes through the same 16-entry rings: send it once they have drained
    // (deliveries and drops stop moving), or it may be dropped too.
    let mut last = (-1.0, -1.0);
    common::wait_until("the flood to drain", common::STEP, || {
        let m = server.metrics();
        let now = (
            common::metric_sum(&m, "c10m_messages_delivered_total", &[]),
            common::metric_sum(&m, "c10m_messages_dropped_total", &[]),
        );
        let settled = now == last;
        last = now;
        settled.then_some(())
    });
    admin.publish("all", "--end--");
    let mut counts = HashMap::new();
    for (u, c) in ws.iter_mut().enumerate() {
        let mut last = None;
        loop {
            let t = ws_text(c);
            if t == "--end--" {
                break;
            }
            let n: usize = t.strip_prefix('b').and_then(|n| n.parse().ok()).expect("b<n>");
            assert!(last.is_none_or(|l| n > l), "user m{u}: b{n} after b{last:?}");
            last = Some(n);
            *counts.entry(u).or_insert(0) += 1;
        }
    }
    // Some deliveries are lost, and each loss is counted.
    let dropped = server.wait_metric("c10m_messages_dropped_total", &["reason=\"mesh_full\""], 0.0);
    let missing: usize = (0..ws.len()).map(|u| 600 - counts.get(&u).copied().unwrap_or(0)).sum();
    assert!(missing > 0 && dropped >= 1.0, "a 16-entry ring with no backlog must overflow");
    // A broadcast goes to the sequencer (shard 0), which sends it on to every shard: a drop
    // on the way to the sequencer misses every connection, one on the way out the
    // connections of the shard it was sent to.
    let per_shard: Vec<u64> = server.stats()["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["connections"].as_u64().unwrap())
        .collect();
    let (least, all) = (*per_shard.iter().min().unwrap(), per_shard.iter().sum::<u64>());
    assert!(
        (dropped * least as f64..=dropped * all as f64).contains(&(missing as f64)),
        "{missing} missing deliveries for {dropped} drops with shards {per_shard:?}"
    );
    // Registrations are never dropped: a user that connects now is reachable.
    let mut late = server.ws_connect("/ws?user=late");
    server.wait_connections(11);
    admin.publish("user=late", "reachable");
    assert_eq!(ws_text(&mut late), "reachable");
}

#[test]
fn concurrent_publishers_each_keep_their_order() {
    let server =
        Server::start(&["--shards", "2", "--mesh-ring-entries", "32", "--home-placement", "off"]);
    const USERS: usize = 8;
    const THREADS: usize = 4;
    const PER: usize = 60;
    let mut ws = users(&server, USERS);
    let admin_addr = server.admin;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut admin =
                    common::AdminConn { reader: std::io::BufReader::new(common::tcp(admin_addr)) };
                let reqs: Vec<(String, String)> = (0..PER)
                    .flat_map(|seq| {
                        (0..USERS).map(move |u| (format!("user=m{u}"), format!("{t}:{seq}")))
                    })
                    .collect();
                pipelined_publishes(&mut admin, &reqs);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("publisher thread");
    }
    for (u, c) in ws.iter_mut().enumerate() {
        let mut next = [0usize; THREADS];
        for _ in 0..THREADS * PER {
            let msg = ws_text(c);
            let (t, seq) = msg.split_once(':').expect("t:seq");
            let (t, seq): (usize, usize) = (t.parse().unwrap(), seq.parse().unwrap());
            assert_eq!(seq, next[t], "user m{u}: publisher {t} out of order");
            next[t] += 1;
        }
    }
}
