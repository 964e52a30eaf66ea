//! `deploy/` against the real server: every metric the Grafana dashboard and the Prometheus
//! rules query is a family in `/metrics` of a running c10m (the `c10m_cluster_*` ones of a
//! running cluster node), every label value they select is one c10m writes, and, when
//! `promtool` is installed (Debian's `prometheus` package), it accepts the rules and the
//! dashboard's queries.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Server;

const DASHBOARD: &str = "deploy/grafana/c10m.json";
const RULES: &str = "deploy/prometheus/alerts.yml";

/// Panel types that ship with Grafana (no plugin to install).
const BUILTIN_PANELS: &[&str] =
    &["row", "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "text"];

fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// A PromQL expression of deploy/, and where it is.
struct Query {
    origin: String,
    expr: String,
    /// Whether the expression is PromQL (a dashboard variable's `label_values(...)` is not).
    promql: bool,
    /// Whether it must select a metric (an alert or a panel; a recording rule may be a
    /// constant).
    selects: bool,
}

/// Every panel, rows' nested panels included.
fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut todo: Vec<&serde_json::Value> =
        d["panels"].as_array().expect("panels").iter().collect();
    let mut all = Vec::new();
    while let Some(p) = todo.pop() {
        todo.extend(p["panels"].as_array().into_iter().flatten());
        all.push(p);
    }
    all
}

fn dashboard_queries(d: &serde_json::Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("a target without expr: {t}"));
            let origin = format!("{DASHBOARD} panel {}", p["title"]);
            out.push(Query { origin, expr: expr.to_owned(), promql: true, selects: true });
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating.list") {
        if v["type"] == "query" {
            let expr = v["definition"].as_str().expect("a query variable's definition");
            let origin = format!("{DASHBOARD} variable {}", v["name"]);
            out.push(Query { origin, expr: expr.to_owned(), promql: false, selects: true });
        }
    }
    out
}

/// The `expr:` values of the rules file (plain, quoted, or `|` / `>` block scalars), and the
/// names it records. Line parsing: the file keeps to one key per line.
fn rules_queries(text: &str) -> (Vec<Query>, BTreeSet<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let (mut out, mut records) = (Vec::new(), BTreeSet::new());
    let (mut rule, mut alert) = (String::new(), false);
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let key = line.trim_start();
        let indent = line.len() - key.len();
        let key = key.strip_prefix("- ").unwrap_or(key);
        if let Some(name) = key.strip_prefix("alert:") {
            (rule, alert) = (name.trim().to_owned(), true);
        } else if let Some(name) = key.strip_prefix("record:") {
            (rule, alert) = (name.trim().to_owned(), false);
            records.insert(rule.clone());
        } else if let Some(value) = key.strip_prefix("expr:") {
            let value = value.trim();
            let expr = if value.is_empty() || value.starts_with(['|', '>']) {
                let mut body = Vec::new();
                while let Some(next) = lines.get(i + 1) {
                    let deeper = next.len() - next.trim_start().len() > indent;
                    if !(deeper || next.trim().is_empty()) {
                        break;
                    }
                    body.push(next.trim());
                    i += 1;
                }
                body.join(" ")
            } else if let Some(v) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                v.replace("\\\"", "\"").replace("\\\\", "\\")
            } else if let Some(v) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
                v.replace("''", "'")
            } else {
                value.to_owned()
            };
            assert!(!expr.trim().is_empty(), "{RULES}: rule {rule} has an empty expr");
            let origin = format!("{RULES} rule {rule}");
            out.push(Query { origin, expr, promql: true, selects: alert });
        }
        i += 1;
    }
    (out, records)
}

/// A metric a PromQL expression selects, with its label matchers (label, operator, value).
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// Skips the string literal that starts at `i` (`"`, `'` or a backtick); returns its value
/// and the index after it.
fn string_at(b: &[u8], i: usize) -> (String, usize) {
    let quote = b[i];
    let mut j = i + 1;
    let mut value = Vec::new();
    while j < b.len() && b[j] != quote {
        if b[j] == b'\\' && quote != b'`' && j + 1 < b.len() {
            j += 1;
        }
        value.push(b[j]);
        j += 1;
    }
    (String::from_utf8_lossy(&value).into_owned(), j + 1)
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// The metric names in a PromQL expression: identifiers that are not functions, aggregation
/// modifiers' label lists, keywords, numbers, durations (`[5m]`, `[$__rate_interval]`) or
/// string contents. Keywords and label names never start with `c10m`, so the caller keeps
/// the names it cares about by prefix.
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let skip_ws = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = string_at(b, i).1;
        } else if c == b'[' {
            i += b[i..].iter().position(|&c| c == b']').map_or(b.len() - i, |p| p + 1);
        } else if c.is_ascii_digit() || c == b'.' || c == b'$' {
            i += 1;
            while i < b.len() && (is_ident(b[i]) || b[i] == b'.') {
                i += 1;
            }
        } else if is_ident(c) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            let ident = &expr[start..i];
            let next = skip_ws(i);
            let grouping = ["by", "without", "on", "ignoring", "group_left", "group_right"];
            if next < b.len() && b[next] == b'(' {
                if grouping.contains(&ident) {
                    i = next + b[next..].iter().position(|&c| c == b')').expect("closed (") + 1;
                }
                continue;
            }
            let mut matchers = Vec::new();
            if next < b.len() && b[next] == b'{' {
                i = next + 1;
                loop {
                    i = skip_ws(i);
                    if i >= b.len() || b[i] == b'}' {
                        i += 1;
                        break;
                    }
                    let l = i;
                    while i < b.len() && is_ident(b[i]) {
                        i += 1;
                    }
                    let label = expr[l..i].to_owned();
                    i = skip_ws(i);
                    let o = i;
                    while i < b.len() && matches!(b[i], b'=' | b'!' | b'~') {
                        i += 1;
                    }
                    let op = expr[o..i].to_owned();
                    i = skip_ws(i);
                    assert!(
                        i < b.len() && matches!(b[i], b'"' | b'\'' | b'`'),
                        "cannot read the matchers of {ident} in {expr:?}"
                    );
                    let (value, after) = string_at(b, i);
                    matchers.push((label, op, value));
                    i = skip_ws(after);
                    if i < b.len() && b[i] == b',' {
                        i += 1;
                    }
                }
            }
            out.push(Selector { name: ident.to_owned(), matchers });
        } else {
            i += 1;
        }
    }
    out
}

/// The families of a `/metrics` text (from `# TYPE`), each with the label sets of its samples.
fn families(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().expect("a TYPE line names its family");
            out.entry(name.to_owned()).or_default();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, _value) = line.rsplit_once(' ').expect("a sample has a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("closed labels")),
            None => (series, ""),
        };
        let mut set = BTreeMap::new();
        let lb = labels.as_bytes();
        let mut i = 0;
        while i < lb.len() {
            let eq = i + labels[i..].find('=').expect("label=value");
            let (value, after) = string_at(lb, eq + 1);
            set.insert(labels[i..eq].to_owned(), value);
            i = after + usize::from(after < lb.len() && lb[after] == b',');
        }
        let samples = out.get_mut(name).unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
        samples.push(set);
    }
    out
}

/// Every query of deploy/ (dashboard first), and the names the rules record.
fn all_queries() -> (Vec<Query>, BTreeSet<String>) {
    let mut queries = dashboard_queries(&dashboard());
    let (rules, records) = rules_queries(&read(RULES));
    assert!(!queries.is_empty() && !rules.is_empty(), "no queries found in deploy/");
    queries.extend(rules);
    (queries, records)
}

fn is_ours(name: &str) -> bool {
    name.starts_with("c10m_") || name.starts_with("c10m:")
}

#[test]
fn every_metric_deploy_queries_is_exported_with_the_labels_it_selects() {
    let (queries, records) = all_queries();

    let server = Server::start(&[]);
    let plain = families(&server.metrics());
    let cluster_prefixed: Vec<&String> =
        plain.keys().filter(|n| n.starts_with("c10m_cluster_")).collect();
    assert!(cluster_prefixed.is_empty(), "a single node exports {cluster_prefixed:?}");

    // A cluster node exports its c10m_cluster_* families whether or not Redis and NATS
    // answer: here nothing listens on the port it is given.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (registry, bus) = (format!("redis://127.0.0.1:{port}"), format!("nats://127.0.0.1:{port}"));
    let node = Server::start(&[
        "--shards",
        "1",
        "--node-id",
        "n1",
        "--registry",
        &registry,
        "--bus",
        &bus,
    ]);
    let clustered = families(&node.metrics());

    let mut used = BTreeSet::new();
    for q in &queries {
        let sel: Vec<Selector> =
            selectors(&q.expr).into_iter().filter(|s| is_ours(&s.name) || s.name == "up").collect();
        assert!(!q.selects || !sel.is_empty(), "{}: selects no metric: {:?}", q.origin, q.expr);
        for s in sel.iter().filter(|s| is_ours(&s.name)) {
            used.insert(s.name.clone());
            if s.name.starts_with("c10m:") {
                assert!(
                    records.contains(&s.name),
                    "{}: {} is not recorded in {RULES}",
                    q.origin,
                    s.name
                );
                continue;
            }
            let (exported, by) = if s.name.starts_with("c10m_cluster_") {
                (&clustered, "a cluster node")
            } else {
                (&plain, "a single node")
            };
            let samples = exported.get(&s.name).unwrap_or_else(|| {
                panic!("{}: {} is not a family in /metrics of {by}", q.origin, s.name)
            });
            assert!(!samples.is_empty(), "{}: {} has no samples", q.origin, s.name);
            for (label, op, value) in &s.matchers {
                if op != "=" || value.contains('$') {
                    continue;
                }
                let values: BTreeSet<&str> =
                    samples.iter().filter_map(|set| set.get(label).map(String::as_str)).collect();
                assert!(
                    values.contains(value.as_str()),
                    "{}: {}{{{label}=\"{value}\"}}: c10m writes {label} = {values:?}",
                    q.origin,
                    s.name
                );
            }
        }
    }

    // What the dashboard and the rules are for; also shows the parsing found the names.
    for want in [
        "c10m_connections_ws",
        "c10m_connections_sse",
        "c10m_accepts_total",
        "c10m_closes_total",
        "c10m_messages_published_total",
        "c10m_messages_delivered_total",
        "c10m_messages_dropped_total",
        "c10m_resident_memory_bytes",
        "c10m_loop_lag_ms",
        "c10m_history_bytes",
        "c10m_ws_deflate_agreed_total",
        "c10m_ws_deflated_frames_total",
        "c10m_ws_inflate_refused_total",
        "c10m_accepts_refused_total",
        "c10m_accepts_refused_memory_total",
        "c10m_cluster_registry_connected",
        "c10m_cluster_bus_connected",
        "c10m_cluster_live_nodes",
        "c10m_cluster_dropped_total",
    ] {
        assert!(used.contains(want), "deploy/ does not query {want}; it queries {used:?}");
    }
}

#[test]
fn the_dashboard_needs_no_plugin_and_reads_the_datasource_variable() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds = vars.iter().find(|v| v["name"] == "datasource").expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = &p["title"];
        let kind = p["type"].as_str().unwrap_or_default();
        assert!(BUILTIN_PANELS.contains(&kind), "panel {title}: type {kind:?} is a plugin");
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "panel {title}: id used twice");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "panel {title}: no gridPos");
        if kind == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}: {t}");
        }
    }
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"]["uid"], "${datasource}", "variable {}", v["name"]);
    }
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_description() {
    let text = read(RULES);
    let blocks: Vec<&str> = text.split("- alert:").skip(1).collect();
    assert!(blocks.len() >= 8, "{RULES}: {} alerts", blocks.len());
    for block in blocks {
        let end = ["- record:", "- name:"].iter().filter_map(|k| block.find(k)).min();
        let block = &block[..end.unwrap_or(block.len())];
        let name = block.lines().next().unwrap().trim();
        for key in ["severity:", "summary:", "description:"] {
            assert!(block.contains(key), "{RULES}: alert {name} has no {key}");
        }
    }
}

/// `promtool` on PATH, if it is installed.
fn promtool() -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs).map(|d| d.join("promtool")).find(|p| p.is_file())
}

/// Runs `cmd` to its end within `limit`; returns whether it succeeded and its output.
fn run_bounded(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let (status, out, err) = common::run_bounded(cmd, limit);
    (status.success(), out + &err)
}

#[test]
fn promtool_accepts_the_rules_and_the_dashboard_queries() {
    let Some(promtool) = promtool() else {
        println!(
            "promtool not on PATH: skipped `promtool check rules` (apt-get install prometheus)"
        );
        return;
    };
    let limit = Duration::from_secs(60);
    let (ok, out) =
        run_bounded(Command::new(&promtool).args(["check", "rules"]).arg(path(RULES)), limit);
    assert!(ok && out.contains("SUCCESS"), "promtool check rules {RULES}:\n{out}");

    // The panels' queries, with Grafana's variables filled in, as recording rules: promtool
    // parses each one.
    let mut rules = String::from("groups:\n  - name: c10m-dashboard\n    rules:\n");
    for (n, q) in dashboard_queries(&dashboard()).iter().filter(|q| q.promql).enumerate() {
        let expr = q
            .expr
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*")
            .replace('\'', "''");
        assert!(!expr.contains('$'), "{}: an unknown variable in {expr:?}", q.origin);
        rules += &format!("      - record: c10m:dashboard_{n}\n        expr: '{expr}'\n");
    }
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-dashboard-{}.rules.yml", std::process::id()));
    std::fs::write(&file, &rules).unwrap();
    let (ok, out) = run_bounded(Command::new(&promtool).args(["check", "rules"]).arg(&file), limit);
    let _ = std::fs::remove_file(&file);
    assert!(ok && out.contains("SUCCESS"), "promtool on the dashboard's queries:\n{out}\n{rules}");
}

/// The bundled unit under a real systemd (PID 1 of namespaces the script makes, the host's
/// files out of its reach): `systemctl reload` is a live upgrade that systemd follows, the
/// new process becoming the unit's main one while the unit stays active, and the clients
/// stay on their TCP connections and hear from the new process (`scripts/systemd_reload.sh`
/// checks each reload and says PASS).
#[test]
fn systemctl_reload_of_the_bundled_unit_is_a_live_upgrade() {
    let (status, out, err) = common::run_bounded(
        Command::new("bash")
            .arg(path("scripts/systemd_reload.sh"))
            .args(["2", "20"])
            .env("C10M_BIN", env!("CARGO_BIN_EXE_c10m")),
        Duration::from_secs(150),
    );
    assert!(status.success(), "systemd_reload.sh: {status:?}\n{out}\n{err}");
    assert_eq!(out.matches("unit active, 20 of 20 clients got the broadcast").count(), 2, "{out}");
    assert!(out.contains("local ports unchanged: True") && out.contains("PASS"), "{out}");
    assert!(!out.contains("unchanged: False"), "{out}");
}
