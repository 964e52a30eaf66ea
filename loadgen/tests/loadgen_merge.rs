//! Merging: two runs' JSON reports merge into one whose counts and histograms add up.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use c10m_loadgen::report::Report;
use support::{report_path, run_loadgen, wait_bounded, Server, LOADGEN};

#[test]
fn two_reports_merge_into_one() {
    let server = Server::start(&[]);
    let args = |conns: &'static str| {
        vec![
            "--target".to_string(),
            server.client.clone(),
            "--admin".into(),
            server.admin.clone(),
            "--conns".into(),
            conns.into(),
            "--rate".into(),
            "0".into(),
            "--hold".into(),
            "1s".into(),
            "--publish-rate".into(),
            "10".into(),
            "--publish-count".into(),
            "5".into(),
            "--drain".into(),
            "500ms".into(),
        ]
    };
    let a_args = args("30");
    let b_args = args("50");
    let (a, _) = run_loadgen("merge-a", &a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let (b, _) = run_loadgen("merge-b", &b_args.iter().map(String::as_str).collect::<Vec<_>>());
    let (pa, pb, pm) = (report_path("ma"), report_path("mb"), report_path("merged"));
    std::fs::write(&pa, serde_json::to_string(&a).unwrap()).unwrap();
    std::fs::write(&pb, serde_json::to_string(&b).unwrap()).unwrap();
    let child = Command::new(LOADGEN)
        .arg("merge")
        .args([&pa, &pb])
        .arg("--json")
        .arg(&pm)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(20));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let merged: Report = serde_json::from_str(&std::fs::read_to_string(&pm).unwrap()).unwrap();
    for p in [pa, pb, pm] {
        let _ = std::fs::remove_file(p);
    }
    assert_eq!(merged.runs, 2);
    assert_eq!(merged.connections.planned, 80);
    assert_eq!(
        merged.connections.established,
        a.connections.established + b.connections.established
    );
    assert_eq!(merged.messages.delivered, a.messages.delivered + b.messages.delivered);
    assert_eq!(merged.latency_us.count, a.latency_us.count + b.latency_us.count);
    assert_eq!(merged.connect_us.count, 80);
    assert_eq!(merged.latency_us.max, a.latency_us.max.max(b.latency_us.max));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 run(s)"));
}
