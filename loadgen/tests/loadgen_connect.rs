//! Connect: WebSocket and SSE connections to the real c10m server come up, are timed,
//! and the memory figures are reported.

mod support;

use support::{run_loadgen, Server};

#[test]
fn websocket_connections_come_up() {
    let server = Server::start(&[]);
    let pid = server.pid().to_string();
    let (report, stdout) = run_loadgen(
        "connect-ws",
        &[
            "--target",
            &server.client,
            "--admin",
            &server.admin,
            "--conns",
            "200",
            "--rate",
            "2000",
            "--hold",
            "500ms",
            "--drain",
            "0s",
            "--server-pid",
            &pid,
        ],
    );
    let c = &report.connections;
    assert_eq!(c.planned, 200);
    assert_eq!(c.established, 200, "{stdout}");
    assert_eq!(c.peak_up, 200);
    assert_eq!(c.up_at_end, 200);
    assert!(c.failures.values().all(|v| *v == 0), "{stdout}");
    assert_eq!(report.connect_us.count, 200);
    assert_eq!(report.upgrade_us.count, 200);
    assert!(c.connect_rate_per_s > 0.0);
    assert!(report.memory.loadgen_rss_held > 0);
    assert!(report.memory.server_rss_held.is_some());
    assert!(stdout.contains("connect rate"));
}

#[test]
fn sse_connections_come_up_with_source_fan_out() {
    let server = Server::start(&[]);
    let (report, stdout) = run_loadgen(
        "connect-sse",
        &[
            "--proto",
            "sse",
            "--target",
            &server.client,
            "--admin",
            &server.admin,
            "--sources",
            "127.0.0.2-127.0.0.4",
            "--conns",
            "150",
            "--shards",
            "2",
            "--rate",
            "0",
            "--hold",
            "500ms",
            "--drain",
            "0s",
        ],
    );
    assert_eq!(report.proto, "sse");
    assert_eq!(report.shards, 2);
    assert_eq!(report.connections.established, 150, "{stdout}");
    assert_eq!(report.connections.up_at_end, 150);
}

#[test]
fn refused_connections_are_counted_by_reason() {
    let port = support::free_port();
    let target = format!("127.0.0.1:{port}");
    let (report, _) = run_loadgen(
        "connect-refused",
        &["--target", &target, "--conns", "50", "--hold", "0s", "--drain", "0s"],
    );
    assert_eq!(report.connections.established, 0);
    assert_eq!(report.connections.failures["refused"], 50);
}
