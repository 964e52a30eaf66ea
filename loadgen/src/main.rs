//! `c10m-loadgen`: command-line entry. See README.md for usage.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use c10m_loadgen::config::{self, Pattern};
use c10m_loadgen::plan::{Plan, Proto, PublishTo, CONNS_PER_SHARD_DEFAULT, TARGETS_MAX};
use c10m_loadgen::report::Report;
use c10m_loadgen::runner;

#[derive(Parser)]
#[command(
    name = "c10m-loadgen",
    version,
    about = "Load generator for c10m",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Open connections, hold them, publish, report (the default).
    Run(Box<RunArgs>),
    /// Merge JSON reports of runs made side by side into one report.
    Merge {
        /// Reports written with --json.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write the merged report here as JSON too.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtoArg {
    Ws,
    Sse,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FillArg {
    X,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum PublishToArg {
    User,
    Topic,
    All,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Protocol of the client connections.
    #[arg(long, value_enum, default_value = "ws")]
    proto: ProtoArg,
    /// Server client listener, HOST:PORT; repeat for several (round robin).
    #[arg(long = "target", default_value = "127.0.0.1:8080")]
    targets: Vec<String>,
    /// Source IPv4 addresses to fan out over, e.g. 127.0.0.2-127.0.0.40 (each source and
    /// target pair has its own local port range).
    #[arg(long)]
    sources: Option<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    conns: u64,
    /// Connects per second (the ramp); 0 means as fast as possible.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// How long to hold the connections once the ramp is over (500ms, 40s, 2m, 1h).
    #[arg(long, default_value = "30s")]
    hold: String,
    /// User id pattern: {n} is the connection index, {n%K} the index modulo K.
    #[arg(long, default_value = "u{n}")]
    users: String,
    /// Comma-separated topic patterns every connection subscribes to (e.g. news,t{n%10}).
    #[arg(long)]
    topics: Option<String>,
    /// Reconnect after failures and server closes, with full-jitter exponential backoff.
    #[arg(long)]
    reconnect: bool,
    /// First reconnect delay cap; doubles per consecutive failure.
    #[arg(long, default_value = "100ms")]
    backoff_base: String,
    /// Largest reconnect delay cap.
    #[arg(long, default_value = "10s")]
    backoff_max: String,
    /// Give up an attempt whose connect and upgrade take longer.
    #[arg(long, default_value = "10s")]
    connect_timeout: String,
    /// Client shards (threads, one ring each); default ceil(conns / 19000).
    #[arg(long)]
    shards: Option<usize>,
    /// Pin shard threads to cores.
    #[arg(long)]
    pin: bool,
    /// Server admin listener for publishing; repeat to send every publish to each (nodes
    /// that do not share a bus).
    #[arg(long = "admin", default_value = "127.0.0.1:8081")]
    admins: Vec<String>,
    /// File holding the admin API's bearer key (the server's --admin-key-file).
    #[arg(long)]
    admin_key_file: Option<PathBuf>,
    /// Publishes per second during the hold; 0 disables publishing.
    #[arg(long, default_value_t = 0.0)]
    publish_rate: f64,
    /// Wait this long after the hold begins before the first publish (e.g. 30s).
    #[arg(long, default_value = "0s")]
    publish_delay: String,
    /// Audience of each publish: a user (by --users bucket), a topic (first --topics
    /// pattern), or everyone.
    #[arg(long, value_enum, default_value = "all")]
    publish_to: PublishToArg,
    /// Stop after this many publishes.
    #[arg(long)]
    publish_count: Option<u64>,
    /// Payload size; never below the stamp (`s=<seq> t=<ns> `).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Padding after the stamp: x (a run of one byte) or json (a realistic notification,
    /// for compression runs).
    #[arg(long, value_enum, default_value = "x")]
    payload_fill: FillArg,
    /// Offer permessage-deflate on WebSocket connections (what browsers offer) and inflate
    /// compressed messages.
    #[arg(long)]
    deflate: bool,
    /// Send publishes N at a time in one POST /publish/batch (1: one POST /publish each).
    #[arg(long, default_value_t = 1)]
    publish_batch: u32,
    /// Write N single publish requests back to back, then read their N answers.
    #[arg(long, default_value_t = 1)]
    publish_pipeline: u32,
    /// Wait this long after the hold for late deliveries before reporting.
    #[arg(long, default_value = "2s")]
    drain: String,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The server's pid, to report its RSS growth per connection.
    #[arg(long)]
    server_pid: Option<u32>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

fn plan(args: &RunArgs) -> Result<Plan, String> {
    let targets: Vec<SocketAddr> =
        args.targets.iter().map(|t| config::parse_target(t)).collect::<Result<_, _>>()?;
    let sources = match &args.sources {
        Some(s) => config::parse_sources(s)?,
        None => Vec::new(),
    };
    let topics = match &args.topics {
        Some(t) => config::parse_topics(t)?,
        None => Vec::new(),
    };
    let publish_to = match args.publish_to {
        PublishToArg::User => PublishTo::User,
        PublishToArg::Topic => PublishTo::Topic,
        PublishToArg::All => PublishTo::All,
    };
    if publish_to == PublishTo::Topic && topics.is_empty() && args.publish_rate > 0.0 {
        return Err("--publish-to topic needs --topics".into());
    }
    if args.conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    if !(args.rate >= 0.0 && args.publish_rate >= 0.0) {
        return Err("--rate and --publish-rate must not be negative".into());
    }
    let shards =
        args.shards.unwrap_or_else(|| args.conns.div_ceil(CONNS_PER_SHARD_DEFAULT) as usize).max(1);
    if targets.len() > TARGETS_MAX {
        return Err(format!("{} targets given; at most {TARGETS_MAX}", targets.len()));
    }
    let admins =
        args.admins.iter().map(|a| config::parse_target(a)).collect::<Result<Vec<_>, _>>()?;
    let admin_key = match &args.admin_key_file {
        Some(path) => Some(config::read_admin_key(path)?),
        None => None,
    };
    Ok(Plan {
        proto: match args.proto {
            ProtoArg::Ws => Proto::Ws,
            ProtoArg::Sse => Proto::Sse,
        },
        targets,
        sources,
        conns: args.conns,
        rate: args.rate,
        hold: config::parse_duration(&args.hold)?,
        users: Pattern::parse(&args.users)?,
        topics,
        reconnect: args.reconnect,
        backoff_base: config::parse_duration(&args.backoff_base)?,
        backoff_max: config::parse_duration(&args.backoff_max)?,
        connect_timeout: config::parse_duration(&args.connect_timeout)?,
        shards,
        pin: args.pin,
        admins,
        admin_key,
        publish_rate: args.publish_rate,
        publish_delay: config::parse_duration(&args.publish_delay)?,
        publish_to,
        publish_count: args.publish_count,
        payload_bytes: args.payload_bytes.min(c10m_loadgen::payload::PAYLOAD_BYTES_MAX),
        payload_json: args.payload_fill == FillArg::Json,
        deflate: args.deflate,
        publish_batch: args.publish_batch.max(1),
        publish_pipeline: args.publish_pipeline.max(1),
        drain: config::parse_duration(&args.drain)?,
        json: args.json.clone(),
        server_pid: args.server_pid,
        quiet: args.quiet,
    })
}

fn write_json(path: &PathBuf, report: &Report) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn run(args: &RunArgs) -> Result<(), String> {
    let plan = plan(args)?;
    let json = plan.json.clone();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = runner::run(plan, command)?;
    print!("{}", report.table());
    if let Some(path) = json {
        write_json(&path, &report)?;
    }
    Ok(())
}

fn merge(files: &[PathBuf], json: Option<&PathBuf>) -> Result<(), String> {
    let mut reports = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("reading {}: {e}", f.display()))?;
        let report: Report = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a c10m-loadgen report: {e}", f.display()))?;
        reports.push(report);
    }
    let merged = Report::merge(&reports);
    print!("{}", merged.table());
    if let Some(path) = json {
        write_json(path, &merged)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        None => run(&cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Merge { files, json }) => merge(files, json.as_ref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("c10m-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
