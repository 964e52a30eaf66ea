//! Killing the server mid-run: established connections are counted as ended by the
//! server, reconnects follow with jittered backoff, and come back when a server returns.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use c10m_loadgen::report::Report;
use support::{http_get, report_path, wait_bounded, Server, LOADGEN};

fn ws_connections(admin: &str) -> u64 {
    let Some(resp) = http_get(admin, "/stats") else {
        return 0;
    };
    let Some((_, body)) = resp.split_once("\r\n\r\n") else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    v["ws"].as_u64().unwrap_or(0)
}

#[test]
fn server_kill_counts_failures_and_reconnects_with_jitter() {
    let mut server = Server::start(&[]);
    let json = report_path("reconnect");
    let child = Command::new(LOADGEN)
        .args(["--target", &server.client, "--admin", &server.admin, "--conns", "100"])
        .args(["--rate", "0", "--hold", "6s", "--drain", "0s", "--reconnect", "--quiet"])
        .args(["--backoff-base", "50ms", "--backoff-max", "400ms", "--json"])
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start c10m-loadgen");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ws_connections(&server.admin) < 100 {
        assert!(Instant::now() < deadline, "connections did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    // Let the clients find the server gone and fail a few reconnects.
    std::thread::sleep(Duration::from_millis(1500));
    let client = server.client.clone();
    let admin = server.admin.clone();
    let restarted = Command::new(support::server_binary())
        .args(["serve", "--shards", "1", "--no-pin", "--listen", &client, "--admin", &admin])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("restart c10m");
    let mut restarted = Server { child: restarted, client, admin };
    let out = wait_bounded(child, Duration::from_secs(60));
    restarted.kill();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("parse");
    let _ = std::fs::remove_file(&json);
    let f = &report.connections.failures;
    let ended = f["server_closed"] + f["reset"];
    assert_eq!(ended, 100, "{stdout}");
    assert!(f["refused"] > 0, "reconnects while the server was down: {stdout}");
    assert!(report.connections.reconnects > 100, "{stdout}");
    assert!(report.connections.established >= 200, "all came back: {stdout}");
    assert_eq!(report.connections.up_at_end, 100, "{stdout}");
    // Full jitter: the delays spread out instead of all being the cap.
    assert!(report.backoff_us.count > 100);
    assert!(report.backoff_us.min < report.backoff_us.max / 2, "{stdout}");
    // The cap, within the histogram's three significant digits.
    assert!(report.backoff_us.max <= 401_000, "{stdout}");
    assert!(stdout.contains("reconnect attempt"), "{stdout}");
}
