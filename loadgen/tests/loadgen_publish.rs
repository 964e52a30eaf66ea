//! Publish and receive through the real server: every stamped payload arrives, latency
//! and fan-out are measured, nothing is lost, for broadcasts, topics and users.

mod support;

use support::{run_loadgen, Server};

#[test]
fn broadcast_reaches_every_websocket() {
    let server = Server::start(&[]);
    let (report, stdout) = run_loadgen(
        "publish-all",
        &[
            "--target",
            &server.client,
            "--admin",
            &server.admin,
            "--conns",
            "100",
            "--rate",
            "0",
            "--hold",
            "2s",
            "--publish-rate",
            "20",
            "--publish-count",
            "20",
            "--publish-to",
            "all",
            "--payload-bytes",
            "100",
            "--drain",
            "1s",
        ],
    );
    let m = &report.messages;
    assert_eq!(m.accepted, 20, "{stdout}");
    assert_eq!(m.expected, 2000, "{stdout}");
    assert_eq!(m.delivered, 2000, "{stdout}");
    assert_eq!(m.lost, 0);
    assert_eq!(m.duplicated, 0);
    assert_eq!(report.latency_us.count, 2000);
    assert!(report.latency_us.p50 > 0 && report.latency_us.max < 5_000_000);
    assert_eq!(report.fanout_us.count, 20);
    assert!(report.fanout_complete_us.p99 >= report.fanout_us.p50);
}

#[test]
fn topic_publishes_reach_only_subscribers_over_sse() {
    let server = Server::start(&[]);
    let (report, stdout) = run_loadgen(
        "publish-topic",
        &[
            "--proto",
            "sse",
            "--target",
            &server.client,
            "--admin",
            &server.admin,
            "--conns",
            "120",
            "--rate",
            "0",
            "--topics",
            "t{n%4},news",
            "--hold",
            "2s",
            "--publish-rate",
            "20",
            "--publish-count",
            "20",
            "--publish-to",
            "topic",
            "--drain",
            "1s",
        ],
    );
    let m = &report.messages;
    assert_eq!(m.accepted, 20, "{stdout}");
    // Each topic t0..t3 has 30 subscribers.
    assert_eq!(m.expected, 20 * 30, "{stdout}");
    assert_eq!(m.delivered, m.expected, "{stdout}");
    assert_eq!(m.received, m.expected);
    assert_eq!(m.lost, 0);
}

#[test]
fn user_publishes_reach_that_users_connections() {
    let server = Server::start(&[]);
    let (report, stdout) = run_loadgen(
        "publish-user",
        &[
            "--target",
            &server.client,
            "--admin",
            &server.admin,
            "--conns",
            "60",
            "--rate",
            "0",
            "--users",
            "u{n%20}",
            "--hold",
            "2s",
            "--publish-rate",
            "25",
            "--publish-count",
            "25",
            "--publish-to",
            "user",
            "--drain",
            "1s",
        ],
    );
    let m = &report.messages;
    assert_eq!(m.accepted, 25, "{stdout}");
    // Every user has three connections.
    assert_eq!(m.expected, 25 * 3, "{stdout}");
    assert_eq!(m.delivered, m.expected, "{stdout}");
    assert_eq!(m.lost, 0);
}

#[test]
fn deflate_runs_receive_compressed_broadcasts_and_count_their_wire_bytes() {
    let server = Server::start(&[]);
    let run = |name: &str, deflate: bool| {
        let mut args = vec![
            "--target",
            &server.client,
            "--admin",
            &server.admin,
            "--conns",
            "50",
            "--rate",
            "0",
            "--hold",
            "2s",
            "--publish-rate",
            "20",
            "--publish-count",
            "10",
            "--payload-bytes",
            "500",
            "--payload-fill",
            "json",
            "--drain",
            "1s",
        ];
        if deflate {
            args.push("--deflate");
        }
        run_loadgen(name, &args)
    };
    let (plain, out) = run("deflate-off", false);
    assert_eq!((plain.messages.delivered, plain.messages.lost), (500, 0), "{out}");
    assert_eq!(plain.messages.compressed, 0);
    assert_eq!(plain.messages.data_bytes, 500 * 504, "4-byte header + 500 B each: {out}");
    let (z, out) = run("deflate-on", true);
    assert_eq!((z.messages.delivered, z.messages.lost), (500, 0), "{out}");
    assert_eq!(z.messages.compressed, 500, "{out}");
    let per = z.messages.data_bytes as f64 / 500.0;
    assert!(per < 400.0, "{per} wire bytes per delivery compressed: {out}");
}

#[test]
fn batched_and_pipelined_user_publishes_are_all_delivered() {
    let server = Server::start(&[]);
    for (name, flag, n) in
        [("batch", "--publish-batch", "50"), ("pipeline", "--publish-pipeline", "20")]
    {
        let (report, stdout) = run_loadgen(
            &format!("publish-{name}"),
            &[
                "--target",
                &server.client,
                "--admin",
                &server.admin,
                "--conns",
                "60",
                "--rate",
                "0",
                "--users",
                "u{n%20}",
                "--hold",
                "2s",
                "--publish-rate",
                "200",
                "--publish-count",
                "200",
                "--publish-to",
                "user",
                "--payload-fill",
                "json",
                flag,
                n,
                "--drain",
                "1s",
            ],
        );
        let m = &report.messages;
        assert_eq!(m.accepted, 200, "{name}: {stdout}");
        assert_eq!(m.expected, 200 * 3, "{name}: {stdout}");
        assert_eq!((m.delivered, m.lost, m.duplicated), (m.expected, 0, 0), "{name}: {stdout}");
    }
}
