//! Two servers, one killed mid-run: its clients reconnect to the other target instead of
//! retrying the dead one, and publishes sent to both admin listeners (with the admin key)
//! keep being accepted by the one still up.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use c10m_loadgen::report::Report;
use support::{http_get_auth, report_path, wait_bounded, Server, LOADGEN};

const KEY: &str = "failover-test-admin-key-0123456789";

fn ws_connections(admin: &str) -> u64 {
    let Some(resp) = http_get_auth(admin, "/stats", Some(KEY)) else {
        return 0;
    };
    let Some((_, body)) = resp.split_once("\r\n\r\n") else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    v["ws"].as_u64().unwrap_or(0)
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "{what} within {deadline:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn reconnects_move_to_the_surviving_target() {
    let key_file = std::env::temp_dir().join(format!("c10m-failover-{}.key", std::process::id()));
    std::fs::write(&key_file, format!("{KEY}\n")).expect("write the admin key");
    let key_arg = key_file.to_str().expect("utf-8 temp path");
    let mut a = Server::start(&["--admin-key-file", key_arg]);
    let b = Server::start(&["--admin-key-file", key_arg]);
    let json = report_path("failover");
    let child = Command::new(LOADGEN)
        .args(["--target", &a.client, "--target", &b.client, "--conns", "100", "--rate", "0"])
        .args(["--admin", &a.admin, "--admin", &b.admin, "--admin-key-file", key_arg])
        .args(["--publish-to", "user", "--publish-rate", "50", "--hold", "6s"])
        .args(["--reconnect", "--backoff-base", "50ms", "--backoff-max", "400ms"])
        .args(["--drain", "500ms", "--quiet", "--json"])
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start c10m-loadgen");
    // Round robin: half the connections on each server.
    wait_for("50 connections on each server", Duration::from_secs(20), || {
        ws_connections(&a.admin) == 50 && ws_connections(&b.admin) == 50
    });
    a.kill();
    // A client that kept retrying its first target would never arrive here.
    wait_for("all 100 connections on the surviving server", Duration::from_secs(10), || {
        ws_connections(&b.admin) == 100
    });
    let out = wait_bounded(child, Duration::from_secs(60));
    let _ = std::fs::remove_file(&key_file);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("parse");
    let _ = std::fs::remove_file(&json);
    let c = &report.connections;
    assert_eq!(c.up_at_end, 100, "{stdout}");
    assert_eq!(c.failures["server_closed"] + c.failures["reset"], 50, "{stdout}");
    assert!(c.established >= 150, "{stdout}");
    let m = &report.messages;
    // The key was sent (else every publish gets 401); the dead admin's requests failed.
    assert!(m.published > 50, "{stdout}");
    assert_eq!(m.accepted, m.published, "{stdout}");
    assert!(m.publish_errors > 0, "requests to the killed server fail: {stdout}");
    assert!(m.delivered > 0, "{stdout}");
}
