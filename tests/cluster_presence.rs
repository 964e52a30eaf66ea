//! Cluster-wide presence against real Redis and NATS: two `c10m serve --node-id` processes,
//! `GET /presence` at either node, the same request straight over NATS (`c10m.presence`),
//! and a node killed while asked.

mod common;

use std::time::{Duration, Instant};

use common::backends::{cluster_stat, Backends};
use common::{wait_until, wait_until_or, Server, STEP};
use serde_json::{json, Value};

/// `crate::cluster::presence::WAIT_MS`: how long a node waits for the others.
const WAIT: Duration = Duration::from_millis(500);

fn presence(node: &Server, query: &str) -> Value {
    let r = node.admin_conn().request("GET", &format!("/presence?{query}"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn dropped_bad(node: &Server) -> u64 {
    node.stats()["cluster"]["dropped"]["bad_message"].as_u64().unwrap()
}

/// Starts nodes `one` and `two` with `args` and waits until each sees both heartbeats.
fn two_nodes(b: &Backends, args: &[&str]) -> (Server, Server) {
    let one = b.node("one", args, 0);
    let two = b.node("two", args, 1);
    for n in [&one, &two] {
        wait_until("both heartbeats read", STEP, || {
            (cluster_stat(n, "live_nodes") == 2).then_some(())
        });
    }
    (one, two)
}

#[test]
fn presence_at_either_node_counts_users_and_topics_on_every_node() {
    let b = Backends::start();
    let (one, two) = two_nodes(&b, &[]);
    let roam_one: Vec<_> = (0..2).map(|_| one.ws_connect("/ws?user=roam&topics=news")).collect();
    let roam_two = two.ws_connect("/ws?user=roam&topics=news");
    let solo = two.ws_connect("/ws?user=solo&topics=news");
    one.wait_connections(2);
    two.wait_connections(2);

    for (node, id, local) in [(&one, "one", 2), (&two, "two", 1)] {
        let p = presence(node, "user=roam");
        assert_eq!(
            p,
            json!({
                "user": "roam", "online": true, "connections": 3,
                "nodes": { "one": 2, "two": 1 }, "scope": "cluster",
                "node": { "id": id, "connections": local }, "answered": 2, "expected": 2,
            }),
            "at {id}"
        );
        let p = presence(node, "users=roam,solo,ghost,roam");
        assert_eq!(
            p,
            json!({
                "users": {
                    "roam": { "online": true, "connections": 3, "nodes": { "one": 2, "two": 1 } },
                    "solo": { "online": true, "connections": 1, "nodes": { "two": 1 } },
                    "ghost": { "online": false, "connections": 0, "nodes": {} },
                },
                "scope": "cluster", "answered": 2, "expected": 2,
            }),
            "at {id}"
        );
        let p = presence(node, "topic=news");
        assert_eq!(
            p,
            json!({
                "topic": "news", "subscribers": 4, "nodes": { "one": 2, "two": 2 },
                "scope": "cluster", "node": { "id": id, "subscribers": 2 },
                "answered": 2, "expected": 2,
            }),
            "at {id}"
        );
    }
    assert_eq!(cluster_stat(&one, "presence_asked"), 3);
    assert_eq!(cluster_stat(&one, "presence_served"), 3, "one answered two's three");
    assert_eq!(cluster_stat(&one, "presence_short"), 0);

    // A backend asks over NATS: each node replies with its own counts.
    let body = r#"{"users":["roam","solo","ghost"],"topic":"news"}"#;
    let mut replies: Vec<Value> = b
        .backend_request("c10m.presence", body, 2)
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    replies.sort_by_key(|r| r["node"].as_str().unwrap().to_owned());
    assert_eq!(
        replies,
        [
            json!({ "node": "one", "users": { "roam": 2 }, "topic": "news", "subscribers": 2 }),
            json!({ "node": "two", "users": { "roam": 1, "solo": 1 }, "topic": "news", "subscribers": 2 }),
        ]
    );
    let one_user = b.backend_request("c10m.presence", r#"{"user":"solo"}"#, 2);
    assert!(one_user.contains(&r#"{"node":"two","users":{"solo":1}}"#.to_owned()), "{one_user:?}");

    // Malformed requests (no reply subject, not JSON, no name) are counted on every node.
    b.backend_publish(&[("c10m.presence", r#"{"user":"roam"}"#)]);
    b.backend_request("c10m.presence", "not json", 0);
    b.backend_request("c10m.presence", r#"{"users":[""]}"#, 0);
    for n in [&one, &two] {
        wait_until("three bad requests counted", STEP, || (dropped_bad(n) == 3).then_some(()));
    }

    // Everyone leaves: both nodes count zero.
    drop((roam_one, roam_two, solo));
    let mut last = Value::Null;
    wait_until_or("presence to drop to zero", STEP, &mut last, |last| {
        *last = json!([presence(&one, "user=roam"), presence(&two, "topic=news")]);
        let (user, topic) = (&last[0], &last[1]);
        let gone =
            user["online"] == false && user["connections"] == 0 && user["nodes"] == json!({});
        (gone && topic["subscribers"] == 0 && topic["nodes"] == json!({})).then_some(())
    });
    assert_eq!(last[0]["answered"], 2);
}

#[test]
fn a_killed_node_is_waited_for_until_the_deadline_then_left_out_once_its_heartbeat_expires() {
    let b = Backends::start();
    // Heartbeats live 3 s: the killed node is still expected for a while.
    let (one, mut two) = two_nodes(&b, &["--node-ttl-ms", "3000"]);
    let _on_one = one.ws_connect("/ws?user=roam");
    let _on_two = two.ws_connect("/ws?user=roam");
    one.wait_connections(1);
    two.wait_connections(1);
    assert_eq!(presence(&one, "user=roam")["connections"], 2);

    two.signal(libc::SIGKILL);
    assert!(two.wait_exit(STEP).is_some(), "two did not die");
    let t = Instant::now();
    let p = presence(&one, "user=roam");
    let took = t.elapsed();
    assert!(took >= WAIT && took < WAIT + Duration::from_secs(2), "answered in {took:?}");
    assert_eq!(
        (&p["connections"], &p["nodes"], &p["answered"], &p["expected"]),
        (&json!(1), &json!({ "one": 1 }), &json!(1), &json!(2)),
        "{p}"
    );
    assert!(cluster_stat(&one, "presence_short") >= 1);

    // Once two's heartbeat expired, one expects itself only and answers at once.
    let mut last = Value::Null;
    wait_until_or("two's heartbeat to expire", STEP, &mut last, |last| {
        *last = presence(&one, "topic=none");
        (last["expected"] == 1).then_some(())
    });
    let t = Instant::now();
    let p = presence(&one, "user=roam");
    assert!(t.elapsed() < WAIT, "took {:?}", t.elapsed());
    assert_eq!(
        (&p["connections"], &p["answered"], &p["expected"]),
        (&json!(1), &json!(1), &json!(1))
    );
}
