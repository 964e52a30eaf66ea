//! Logs: a bad configuration is one error line and a non-zero exit, in either format;
//! `--log-format json` writes one JSON object per line; a line a peer can cause (an admin
//! request without the key) is rate-limited.

mod common;

use std::time::Duration;

use common::{run_to_exit, temp_file, Server};

fn one_line(err: &str) -> &str {
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line, not {}: {err}", lines.len());
    lines[0]
}

#[test]
fn a_bad_configuration_is_one_clear_line_and_a_non_zero_exit() {
    let file = temp_file("logs", "bad.toml", "shards = 2\nshardz = 3\n");
    let (code, err) = run_to_exit(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    let line = one_line(&err);
    assert!(line.contains("ERROR") && line.contains("bad.toml:2:1"), "{line}");
    assert!(line.contains("unknown field `shardz`") && line.contains("`shards`"), "{line}");

    let (code, err) = run_to_exit(&["serve", "--compression-level", "12", "--log-format", "json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(one_line(&err)).expect("a JSON line");
    assert_eq!(v["level"], "ERROR");
    let msg = v["fields"]["message"].as_str().unwrap();
    assert!(msg.contains("compression_level = 12 must be within 1..=9"), "{msg}");

    let (code, err) = run_to_exit(&["serve", "--log-format", "yaml"]);
    assert_eq!(code, 2);
    assert!(one_line(&err).contains("--log-format: text or json"), "{err}");
}

#[test]
fn json_logs_are_one_object_per_line_and_peer_caused_lines_are_limited() {
    let key = temp_file("logs", "admin.key", "logs-test-admin-key-0123456789\n");
    let server = Server::start(&[
        "--shards",
        "1",
        "--log-format",
        "json",
        "--admin-key-file",
        key.to_str().unwrap(),
    ]);
    let mut admin = server.admin_conn();
    for _ in 0..20 {
        assert_eq!(admin.request("GET", "/stats", b"").status, 401);
    }
    let refused = "refused with 401";
    let err = common::wait_until("the 401 line", Duration::from_secs(5), || {
        let err = server.stderr();
        err.contains(refused).then_some(err)
    });
    let mut listening = false;
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
        listening |= v["fields"]["message"] == "listening" && v["fields"]["shards"] == 1;
    }
    assert!(listening, "the start is logged with its listeners and shards: {err}");
    assert_eq!(err.matches(refused).count(), 1, "20 refusals, one line: {err}");
}
