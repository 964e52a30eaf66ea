//! The `c10m` binary: `c10m serve [flags]`.

use clap::{Parser, Subcommand};

use c10m::config::ServeArgs;

#[cfg(not(feature = "alloc-census"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What [`thp_off`] did (see `c10m::sys::huge_pages_off_unless_allowed`).
static HUGE_PAGES: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Runs from `.init_array`, before Rust's runtime makes the first allocation, so not even
/// the allocator's first segment faults in as a huge page (1.7 MB on an idle server when
/// the same call ran at the top of `main`).
extern "C" fn thp_off() {
    let r = c10m::sys::huge_pages_off_unless_allowed();
    HUGE_PAGES.store(r, std::sync::atomic::Ordering::Relaxed);
}

#[used]
#[link_section = ".init_array"]
static THP_OFF: extern "C" fn() = thp_off;

/// A measurement build counts what is live (src/census.rs).
#[cfg(feature = "alloc-census")]
#[global_allocator]
static GLOBAL: c10m::census::Counted = c10m::census::Counted;

#[derive(Parser)]
#[command(
    name = "c10m",
    version,
    about = "Push server for millions of idle WebSocket and SSE connections"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(Box<ServeArgs>),
}

fn main() {
    #[cfg(feature = "alloc-census")]
    c10m::census::start();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(a)) => *a,
        None => ServeArgs::default(),
    };
    let format = args.log_format.as_deref().unwrap_or("text").parse::<c10m::log::Format>();
    if let Err(e) = format.and_then(c10m::log::init) {
        eprintln!("c10m: error: {e}");
        std::process::exit(2);
    }
    match HUGE_PAGES.load(std::sync::atomic::Ordering::Relaxed) {
        0 => tracing::debug!("transparent huge pages off (MIMALLOC_ALLOW_THP=1 allows them)"),
        -1 => tracing::info!(
            "MIMALLOC_ALLOW_THP is set: transparent huge pages as the allocator says ({:?})",
            std::env::var_os("MIMALLOC_ALLOW_THP").unwrap_or_default()
        ),
        errno => tracing::warn!(
            "cannot turn transparent huge pages off: PR_SET_THP_DISABLE: {}",
            std::io::Error::from_raw_os_error(errno)
        ),
    }
    if let Err(e) = run(&args) {
        // One line: what is wrong and what to change.
        tracing::error!("{e}");
        std::process::exit(1);
    }
}

/// The command line without a `--takeover PATH` (SIGUSR2 adds its own).
fn strip_takeover(argv: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(argv.len());
    let mut skip = false;
    for a in argv {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--takeover" {
            skip = true;
            continue;
        }
        if a.to_str().is_some_and(|s| s.starts_with("--takeover=")) {
            continue;
        }
        out.push(a);
    }
    out
}

fn run(args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = args.resolve()?;
    // SAFETY: setting SIGPIPE to ignored before any thread starts has no preconditions;
    // sends also pass MSG_NOSIGNAL, this covers any other write path.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let signals = c10m::sys::signals()?;
    let control = match args.control_socket.as_deref() {
        Some("off") => None,
        Some(path) => Some((std::path::PathBuf::from(path), true)),
        None => Some((c10m::handover::default_control_path(&cfg.admin, &cfg.listen), false)),
    };
    // A takeover's successor keeps the control path it took over from, for the next one.
    let control = control.map(|(path, explicit)| match &args.takeover {
        Some(from) if !explicit => (from.clone(), false),
        _ => (path, explicit),
    });
    let upgrade = c10m::server::Upgrade {
        control,
        takeover: args.takeover.clone(),
        argv: strip_takeover(std::env::args_os().collect()),
    };
    let server = c10m::server::start_with(cfg, signals, upgrade)?;
    let list = |v: &[std::net::SocketAddr]| {
        v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    };
    let (clients, admin) = (list(&server.listen), list(&server.admin));
    let (shards, conns_per_shard) = (server.shards, server.conns_per_shard);
    // The ready line, on stdout in every log format: scripts and supervisors wait for it.
    println!(
        "c10m listening clients={clients} admin={admin} shards={shards} \
         conns_per_shard={conns_per_shard}"
    );
    tracing::info!(clients, admin, shards, conns_per_shard, "listening");
    c10m::sys::notify("READY=1");
    server.join()?;
    tracing::info!("stopped");
    println!("c10m stopped");
    Ok(())
}
