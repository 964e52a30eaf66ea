//! Reads the measurements `bench/run.sh` collected (one JSON line per loadgen run, with the
//! harness's own /proc samples, plus the loadgen's `--json` reports), one folder per suite,
//! and writes `bench/RESULTS.md` (a section per suite: medians over repetitions, ratios to
//! c10m, and the rows where c10m does not lead with the reason recorded for each) and an SVG
//! bar chart per suite.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use clap::Parser;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde::Deserialize;

#[derive(Parser)]
struct Args {
    /// A suite's results folder: runs.jsonl, meta.json and the loadgen reports; repeat for
    /// several suites, each with its --svg.
    #[arg(long, required = true)]
    results: Vec<PathBuf>,
    /// Where to write the Markdown tables.
    #[arg(long)]
    md: PathBuf,
    /// Where to write each suite's chart (SVG), in --results order; the Markdown links it by
    /// file name, so put it beside --md.
    #[arg(long, required = true)]
    svg: Vec<PathBuf>,
    /// Why c10m does not lead a row: lines of `SUITE<TAB>METRIC<TAB>SERVER<TAB>text`, where
    /// SUITE and SERVER (the leader) may be `*`; `#` starts a comment line.
    #[arg(long)]
    explain: Option<PathBuf>,
}

/// One line of runs.jsonl: a loadgen run and what the harness read from /proc around it.
#[derive(Deserialize)]
struct Run {
    server: String,
    rep: u32,
    scenario: String,
    report: String,
    rss_before: u64,
    rss_held: u64,
    slab_before: u64,
    slab_held: u64,
    cpu_before: u64,
    cpu_after: u64,
    clk_tck: u64,
}

#[derive(Deserialize)]
struct Meta {
    /// The suite's name (ws, sse, c100k) and its heading.
    #[serde(default)]
    suite: String,
    #[serde(default)]
    title: String,
    machine: String,
    date: String,
    command: String,
    conns: u64,
    reps: u32,
    servers: Vec<String>,
    /// Servers of `servers` that were not run, and why.
    #[serde(default)]
    unable: BTreeMap<String, String>,
    #[serde(default)]
    notes: Vec<String>,
}

#[derive(Deserialize, Default)]
struct Summary {
    count: u64,
    p50: u64,
    p99: u64,
    p999: u64,
}

#[derive(Deserialize)]
struct Connections {
    peak_up: u64,
    connect_rate_per_s: f64,
    #[serde(default)]
    failures: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct Messages {
    expected: u64,
    delivered: u64,
    lost: u64,
}

#[derive(Deserialize)]
struct Report {
    connections: Connections,
    messages: Messages,
    latency_us: Summary,
    fanout_us: Summary,
    fanout_complete_us: Summary,
}

/// The metrics, in table order: key, label, unit, whether lower is better.
const METRICS: &[(&str, &str, &str, bool)] = &[
    ("user_b", "user-space memory per idle connection", "B", true),
    ("user_mb", "user-space memory with every connection held (whole server)", "MB", true),
    ("kernel_b", "kernel memory per connection (slab, both ends)", "B", true),
    ("connect_rate", "connect rate (all offered at once, --rate 0)", "conn/s", false),
    ("fanout_ms", "broadcast fan-out, first→last (p50)", "ms", true),
    ("fanout_send_ms", "broadcast fan-out, send→last (p50)", "ms", true),
    ("deliveries_per_s", "broadcast deliveries per second", "msg/s", false),
    ("lat_p50_ms", "targeted push latency p50", "ms", true),
    ("lat_p99_ms", "targeted push latency p99", "ms", true),
    ("lat_p999_ms", "targeted push latency p99.9", "ms", true),
    ("cpu_bcast_us", "server CPU per broadcast delivery", "µs", true),
    ("cpu_user_us", "server CPU per targeted delivery", "µs", true),
    ("lost", "messages lost (all scenarios, sum)", "msgs", true),
    ("failures", "connection failures (all scenarios, sum)", "conns", true),
];

/// metric -> server -> one value per repetition.
type Values = BTreeMap<&'static str, BTreeMap<String, Vec<f64>>>;
/// metric -> server -> median.
type Medians = BTreeMap<&'static str, BTreeMap<String, f64>>;

/// One suite's measurements, read from its results folder.
struct Suite {
    meta: Meta,
    values: Values,
    medians: Medians,
    svg: PathBuf,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.results.len() != args.svg.len() {
        return Err("give one --svg per --results".into());
    }
    let explain = match &args.explain {
        Some(path) => fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        None => String::new(),
    };
    let mut suites = Vec::new();
    for (dir, svg) in args.results.iter().zip(&args.svg) {
        let suite = read_suite(dir, svg)?;
        chart(&suite.meta, &suite.medians, svg)?;
        suites.push(suite);
    }
    fs::write(&args.md, markdown(&suites, &explain))
        .map_err(|e| format!("{}: {e}", args.md.display()))?;
    Ok(())
}

fn read_suite(dir: &Path, svg: &Path) -> Result<Suite, String> {
    let meta: Meta = read_json(&dir.join("meta.json"))?;
    let lines = fs::read_to_string(dir.join("runs.jsonl")).map_err(|e| e.to_string())?;
    let mut runs: BTreeMap<(String, u32), BTreeMap<String, (Run, Report)>> = BTreeMap::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let run: Run = serde_json::from_str(line).map_err(|e| format!("runs.jsonl: {e}"))?;
        let report: Report = read_json(&dir.join(&run.report))?;
        runs.entry((run.server.clone(), run.rep))
            .or_default()
            .insert(run.scenario.clone(), (run, report));
    }
    let mut values = Values::new();
    for ((server, _), scenarios) in &runs {
        for (key, value) in metrics(scenarios) {
            values.entry(key).or_default().entry(server.clone()).or_default().push(value);
        }
    }
    let medians = values
        .iter()
        .map(|(k, per)| (*k, per.iter().map(|(s, v)| (s.clone(), median(v))).collect()))
        .collect();
    Ok(Suite { meta, values, medians, svg: svg.to_path_buf() })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// One repetition's figures for one server, from its three scenario runs.
fn metrics(s: &BTreeMap<String, (Run, Report)>) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    let cpu_s =
        |run: &Run| (run.cpu_after.saturating_sub(run.cpu_before)) as f64 / run.clk_tck as f64;
    if let Some((run, rep)) = s.get("idle") {
        let n = rep.connections.peak_up.max(1) as f64;
        out.push(("user_b", (run.rss_held as f64 - run.rss_before as f64) / n));
        out.push(("user_mb", run.rss_held as f64 / 1e6));
        out.push(("kernel_b", (run.slab_held as f64 - run.slab_before as f64) / n));
        out.push(("connect_rate", rep.connections.connect_rate_per_s));
    }
    let idle_cpu = s.get("idle").map(|(run, _)| cpu_s(run));
    if let Some((run, rep)) = s.get("broadcast") {
        let n = rep.connections.peak_up as f64;
        out.push(("fanout_ms", rep.fanout_us.p50 as f64 / 1e3));
        out.push(("fanout_send_ms", rep.fanout_complete_us.p50 as f64 / 1e3));
        if rep.fanout_complete_us.p50 > 0 {
            out.push(("deliveries_per_s", n / (rep.fanout_complete_us.p50 as f64 / 1e6)));
        }
        if let Some(idle) = idle_cpu {
            let delivered = rep.messages.delivered.max(1) as f64;
            out.push(("cpu_bcast_us", ((cpu_s(run) - idle) / delivered * 1e6).max(0.0)));
        }
    }
    if let Some((run, rep)) = s.get("targeted") {
        if rep.latency_us.count > 0 {
            out.push(("lat_p50_ms", rep.latency_us.p50 as f64 / 1e3));
            out.push(("lat_p99_ms", rep.latency_us.p99 as f64 / 1e3));
            out.push(("lat_p999_ms", rep.latency_us.p999 as f64 / 1e3));
        }
        if let Some(idle) = idle_cpu {
            let delivered = rep.messages.delivered.max(1) as f64;
            out.push(("cpu_user_us", ((cpu_s(run) - idle) / delivered * 1e6).max(0.0)));
        }
    }
    let lost: u64 = s.values().map(|(_, r)| r.messages.lost).sum();
    let failures: u64 = s.values().flat_map(|(_, r)| r.connections.failures.values()).sum();
    out.push(("lost", lost as f64));
    out.push(("failures", failures as f64));
    let _ = s.values().map(|(_, r)| r.messages.expected).sum::<u64>();
    out
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{:.0}", v)
    } else if v.abs() >= 10.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

fn markdown(suites: &[Suite], explain: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# c10m against its peers\n");
    let _ = writeln!(md, "Generated by `bench/run.sh` (do not edit by hand; rerun it).\n");
    for suite in suites {
        let _ = writeln!(md, "- [{}](#{})", title(&suite.meta), anchor(&title(&suite.meta)));
    }
    md.push('\n');
    for suite in suites {
        section(&mut md, suite, explain);
    }
    md
}

fn title(meta: &Meta) -> String {
    if meta.title.is_empty() {
        format!("{} connections", meta.conns)
    } else {
        meta.title.clone()
    }
}

/// The anchor GitHub gives a heading.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn section(md: &mut String, suite: &Suite, explain: &str) {
    let (meta, medians, values) = (&suite.meta, &suite.medians, &suite.values);
    let _ = writeln!(md, "## {}\n", title(meta));
    let _ = writeln!(md, "- machine: {}", meta.machine);
    let _ = writeln!(md, "- date: {}", meta.date);
    let _ = writeln!(md, "- command: `{}`", meta.command);
    let _ = writeln!(
        md,
        "- {} connections per scenario, {} repetitions interleaved across servers; each cell \
         is the median, with its ratio to c10m (×) in brackets.\n",
        meta.conns, meta.reps
    );
    let _ = write!(md, "| metric | unit | better |");
    for s in &meta.servers {
        let _ = write!(md, " {s} |");
    }
    let _ = write!(md, "\n|---|---|---|");
    for _ in &meta.servers {
        let _ = write!(md, "---:|");
    }
    md.push('\n');
    for (key, label, unit, lower) in METRICS {
        let Some(per) = medians.get(key) else { continue };
        let base = per.get("c10m").copied();
        let _ = write!(md, "| {label} | {unit} | {} |", if *lower { "lower" } else { "higher" });
        for s in &meta.servers {
            let cell = match (per.get(s), base) {
                _ if meta.unable.contains_key(s) => "unable".into(),
                (Some(v), _) if s == "c10m" => fmt(*v),
                (Some(v), Some(b)) if b.abs() > 1e-9 && !matches!(*key, "lost" | "failures") => {
                    format!("{} ({:.2}×)", fmt(*v), v / b)
                }
                (Some(v), _) => fmt(*v),
                (None, _) => "–".into(),
            };
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    let link = suite.svg.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let _ = writeln!(md, "\n![c10m and peers: {}]({link})\n", title(meta));
    not_leading(md, suite, explain);
    let _ = writeln!(md, "### Every repetition\n");
    for (key, label, unit, _) in METRICS {
        let Some(per) = values.get(key) else { continue };
        let _ = write!(md, "- {label} ({unit}):");
        for s in &meta.servers {
            if let Some(v) = per.get(s) {
                let list: Vec<String> = v.iter().map(|x| fmt(*x)).collect();
                let _ = write!(md, " {s} [{}];", list.join(", "));
            }
        }
        md.push('\n');
    }
    if !meta.notes.is_empty() || !meta.unable.is_empty() {
        let _ = writeln!(md, "\n### Notes\n");
        for (server, why) in &meta.unable {
            let _ = writeln!(md, "- {server}: unable to hold {} connections: {why}.", meta.conns);
        }
        for note in &meta.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    md.push('\n');
}

/// Lists the rows where a peer's median beats c10m's, with the spread of both and the reason
/// recorded in the explanations file. Other builds of c10m (`c10m-base`, `c10m-nohist`) are
/// not peers: their columns sit beside c10m's in the table and are not listed here.
fn not_leading(md: &mut String, suite: &Suite, explain: &str) {
    let (meta, medians, values) = (&suite.meta, &suite.medians, &suite.values);
    let mut rows = Vec::new();
    for (key, label, unit, lower) in METRICS {
        let Some(per) = medians.get(key) else { continue };
        let Some(&base) = per.get("c10m") else { continue };
        let better = |a: f64, b: f64| if *lower { a < b } else { a > b };
        let leader = per
            .iter()
            .filter(|(s, v)| !s.starts_with("c10m") && v.is_finite() && better(**v, base))
            .fold(None::<(&String, f64)>, |best, (s, v)| match best {
                Some((_, b)) if !better(*v, b) => best,
                _ => Some((s, *v)),
            });
        let Some((leader, v)) = leader else { continue };
        let reps = |s: &str| values.get(key).and_then(|p| p.get(s)).cloned().unwrap_or_default();
        let (ours, theirs) = (reps("c10m"), reps(leader));
        let list = |v: &[f64]| v.iter().map(|x| fmt(*x)).collect::<Vec<_>>().join(", ");
        // Some repetition of c10m is as good as one of the leader's: the ranges overlap.
        let overlap = ours.iter().any(|a| theirs.iter().any(|b| !better(*b, *a)));
        let why = explanation(explain, &meta.suite, key, leader)
            .unwrap_or_else(|| "no reason recorded in bench/explanations.tsv".to_string());
        rows.push(format!(
            "- **{label}**: {leader} {} {unit} against c10m's {} (repetitions: c10m [{}], \
             {leader} [{}]{}). {why}",
            fmt(v),
            fmt(base),
            list(&ours),
            list(&theirs),
            if overlap {
                "; they overlap: the order of the medians is within the noise"
            } else {
                ""
            },
        ));
    }
    if rows.is_empty() {
        let _ = writeln!(md, "c10m leads every row of this suite.\n");
        return;
    }
    let _ = writeln!(md, "### Where c10m does not lead\n");
    for row in rows {
        let _ = writeln!(md, "{row}");
    }
    md.push('\n');
}

/// The first explanation line matching (suite, metric, leader); `*` matches any suite or
/// leader.
fn explanation(text: &str, suite: &str, metric: &str, leader: &str) -> Option<String> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).find_map(|line| {
        let mut f = line.splitn(4, '\t');
        let (s, m, l, why) = (f.next()?, f.next()?, f.next()?, f.next()?);
        let matches = (s == "*" || s == suite) && m == metric && (l == "*" || l == leader);
        matches.then(|| why.trim().to_string())
    })
}

const COLORS: [RGBColor; 7] = [
    RGBColor(0x1b, 0x9e, 0x77),
    RGBColor(0x66, 0x66, 0x66),
    RGBColor(0xd9, 0x5f, 0x02),
    RGBColor(0x75, 0x70, 0xb3),
    RGBColor(0xe7, 0x29, 0x8a),
    RGBColor(0x66, 0xa6, 0x1e),
    RGBColor(0xe6, 0xab, 0x02),
];

/// The panels of the chart: (metric key, title).
const PANELS: &[(&str, &str)] = &[
    ("user_b", "user memory / idle conn (B) ↓"),
    ("kernel_b", "kernel slab / conn, both ends (B) ↓"),
    ("connect_rate", "connect rate (conn/s) ↑"),
    ("fanout_send_ms", "broadcast to all, send→last (ms) ↓"),
    ("deliveries_per_s", "broadcast deliveries/s ↑"),
    ("lat_p99_ms", "targeted push latency p99 (ms) ↓"),
    ("cpu_bcast_us", "CPU per broadcast delivery (µs) ↓"),
    ("cpu_user_us", "CPU per targeted delivery (µs) ↓"),
];

fn chart(meta: &Meta, medians: &Medians, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let heading =
        format!("c10m vs peers: {}, medians of {} runs ({})", title(meta), meta.reps, meta.date);
    let root = root.titled(&heading, ("sans-serif", 20)).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((2, 4));
    let servers: &Vec<String> =
        &meta.servers.iter().filter(|s| !meta.unable.contains_key(*s)).cloned().collect();
    for (area, (key, panel_title)) in panels.iter().zip(PANELS) {
        let per = medians.get(key).cloned().unwrap_or_default();
        let vals: Vec<f64> =
            servers.iter().map(|s| per.get(s).copied().unwrap_or(0.0).max(0.0)).collect();
        let top = vals.iter().cloned().fold(0.0, f64::max).max(1e-9) * 1.2;
        let mut chart = ChartBuilder::on(area)
            .caption(*panel_title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(22)
            .y_label_area_size(48)
            .build_cartesian_2d((0..servers.len() - 1).into_segmented(), 0f64..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(servers.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    servers.get(*i).cloned().unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .y_label_formatter(&|v| short(*v))
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, v) in vals.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(
                    Histogram::vertical(&chart).style(color.filled()).margin(6).data([(i, *v)]),
                )
                .map_err(|e| e.to_string())?;
            chart
                .draw_series([Text::new(
                    short(*v),
                    (SegmentValue::CenterOf(i), *v + top * 0.02),
                    ("sans-serif", 11).into_font().color(&BLACK),
                )])
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

fn short(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
