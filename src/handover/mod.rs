//! Live upgrade: a new process takes over the listeners and the open connections of a running
//! one, without a reconnect (`docs/handover.md`).
//!
//! The process-level half lives here: the control socket every server listens on, the hello
//! and version check, passing the listeners, and the end. The per-connection half runs inside
//! each shard ([`crate::shard::handover`]): old shard i hands its connections to new shard i
//! over a SOCK_SEQPACKET pair that the new process made, in batches of at most
//! [`BATCH_MAX`] sockets (SCM_RIGHTS) with one [`Record`] each.
//!
//! ```text
//!  new (N)                                old (O)
//!  connect(control) ─ hello{layout, shards, addrs} + S channel ends ─▶ check uid, layout
//!  ◀─ welcome{epoch, user keys} + every shard's listener sockets ─────
//!  start the shards on those sockets
//!  ready ──────────────────────────────────────────────────────────▶ shards: stop accepting,
//!                                                                     freeze the admin API,
//!                      (per shard, on its channel)                     fence the mesh, then
//!  shard i ◀─ start{history top} · batch{records} + fds ·· ─────────── shard i
//!  shard i ── ack{per record} ──────────────────────────────────────▶ close the old slot
//!  ◀─ done{moved, store next} ──────────────────────────────────────── every shard is done
//!  serve the admin API                                                exit
//! ```
//!
//! Publishes go on at O's admin API while the clients move: each old shard forwards what it
//! numbers and delivers to its new shard, in order with its batches
//! ([`crate::shard::handover`]). Only the final fence pauses them, until the admin
//! connections have moved to N, which serves them once `done` is in.
//!
//! On a cluster node the history store delivers every publish; O's bridge stops reading it
//! at a known sequence behind a fence before that final one, `done` carries the sequence,
//! and N's bridge reads on from there (`docs/handover.md`, "On a cluster node").

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod record;
mod socket;

pub use record::Record;
use socket::{bind_control, connect, peer_uid, recv_json, send_json};
pub use socket::{channel_pair, recv_with_fds, send_with_fds};

/// The layout of the records and messages this binary writes and reads. A new process
/// refuses an old one whose layout it cannot read, and the old one keeps serving.
/// 2: a record carries the connection's TLS record state and a WebSocket frame in progress.
/// 3: each shard's history log travels before its start message.
/// 4: a record carries the connection's browser tab count and what is left of its maximum
/// lifetime.
/// 5: publishes go on while connections move: a record carries the connection's old id, and
/// the old shard forwards what it numbers and delivers (`F` messages) in order with its
/// batches.
/// 6: the forwards carry user commands from other nodes too ([`record::STREAM_COMMAND`]),
/// so a connection on its way gets a `disconnect` or `subscribe` that reached the old
/// process after its freeze.
pub const LAYOUT: u32 = 6;
/// The oldest layout this binary reads (from an older process it takes over).
pub const LAYOUT_MIN: u32 = 1;

/// Sockets per SCM_RIGHTS message: the kernel's SCM_MAX_FD.
pub const BATCH_MAX: usize = 253;

/// Bytes of records in one batch message, well under a SOCK_SEQPACKET datagram's limit.
pub const BATCH_BYTES_MAX: usize = 192 * 1024;

/// How long the old process waits for the new one's hello and ready, and the new one for
/// the old one's answers.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the shards of one process share about a handover.
pub struct Hub {
    /// Duplicates of every shard's listeners (client listeners, then admin), made at start,
    /// so the control thread can pass them.
    pub listeners: Mutex<Vec<Vec<OwnedFd>>>,
    /// Old side: the channel to the new process, per shard, taken by the shard once `out_go`.
    pub out: Mutex<Vec<Option<OwnedFd>>>,
    pub out_go: AtomicBool,
    /// Old side: the shard has nothing more to hand over.
    pub out_done: Box<[AtomicBool]>,
    /// Old side: shards whose client connections have all moved (admin connections then
    /// freeze on every shard at once, so publishes pause only for the fence at the end).
    pub clients_done: std::sync::atomic::AtomicUsize,
    /// The cores this process may run on, read before the shards pin themselves (a pinned
    /// shard sees one): how many old shards move their clients at once.
    pub lanes: usize,
    /// Old side: shards whose new shard acknowledged their probe (the new process has
    /// started them and taken their history): no batch freezes before every one has.
    pub probes_acked: std::sync::atomic::AtomicUsize,
    /// Old side: how long each batch of connections stayed frozen (µs), all shards.
    pub freezes_us: Mutex<Vec<u32>>,
    /// Old side: a shard's channel failed: the handover is off, the shards serve on.
    pub out_failed: AtomicBool,
    /// Old side: the shard is handing over (from taking its channel until done or reverted).
    pub out_active: Box<[AtomicBool]>,
    /// Old side: the number of the handover under way (its fences carry it).
    pub attempt: AtomicU32,
    /// New side: the channel from the old process, per shard, taken by the shard at start.
    pub inbound: Mutex<Vec<Option<OwnedFd>>>,
    /// New side: the old process is done; the admin API may serve.
    pub admin_go: AtomicBool,
    /// New side: shards that applied their old shard's last message (a cluster node reads
    /// the store once every shard has).
    pub taken: std::sync::atomic::AtomicUsize,
    /// Connections handed over (old side) and taken over (new side).
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// New side: the layout the old process writes its records in.
    pub layout: AtomicU32,
    /// Old side: process fds the shards may still make for batches ([`fd_budget`]): a
    /// shard takes what a batch needs before installing it and gives it back at the ack,
    /// when the new process has placed them in its rings and closed its copies.
    pub fds_free: std::sync::atomic::AtomicI64,
}

impl Hub {
    /// The hub of a process that was not started by a takeover; made before the shards
    /// start.
    pub fn new(shards: usize) -> Hub {
        Hub {
            listeners: Mutex::new((0..shards).map(|_| Vec::new()).collect()),
            out: Mutex::new((0..shards).map(|_| None).collect()),
            out_go: AtomicBool::new(false),
            out_done: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            clients_done: std::sync::atomic::AtomicUsize::new(0),
            probes_acked: std::sync::atomic::AtomicUsize::new(0),
            lanes: std::thread::available_parallelism().map_or(1, |n| n.get()),
            freezes_us: Mutex::new(Vec::new()),
            out_failed: AtomicBool::new(false),
            out_active: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            attempt: AtomicU32::new(0),
            inbound: Mutex::new((0..shards).map(|_| None).collect()),
            admin_go: AtomicBool::new(true),
            taken: std::sync::atomic::AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            layout: AtomicU32::new(LAYOUT),
            fds_free: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Whether this process waits for its predecessor before serving the admin API.
    pub fn admin_held(&self) -> bool {
        !self.admin_go.load(Ordering::Acquire)
    }
}

/// What the new process got from the old one before its shards start.
pub struct Inherited {
    /// Per shard: (client listeners, admin listeners), as the old shard held them.
    pub listeners: Vec<(Vec<socket2::Socket>, Vec<socket2::Socket>)>,
    /// Per shard: this process's end of the shard's channel.
    pub channels: Vec<OwnedFd>,
    pub epoch: u32,
    pub user_keys: crate::push::UserKeys,
    /// The layout the old process writes.
    pub layout: u32,
    /// The control connection, to say ready and hear done ([`finish`]).
    pub control: OwnedFd,
    /// A cluster node: the id of the bus server the old process is on (an older one does
    /// not say).
    pub bus_server: Option<String>,
}

/// The control socket's path when none is given: one per server, named by its first admin
/// (else client) port.
pub fn default_control_path(admin: &[SocketAddr], listen: &[SocketAddr]) -> PathBuf {
    let port = admin.first().or(listen.first()).map_or(0, SocketAddr::port);
    PathBuf::from(format!("/run/c10m/c10m-{port}.sock"))
}

fn addrs(v: &[SocketAddr]) -> serde_json::Value {
    serde_json::Value::from(v.iter().map(ToString::to_string).collect::<Vec<_>>())
}

fn parse_addrs(v: &serde_json::Value) -> Vec<SocketAddr> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether a configured address (port 0: any port) names a bound one.
fn same_addrs(wanted: &[SocketAddr], bound: &[SocketAddr]) -> bool {
    wanted.len() == bound.len()
        && wanted
            .iter()
            .zip(bound)
            .all(|(w, b)| w.ip() == b.ip() && (w.port() == 0 || w.port() == b.port()))
}

/// What the old process's control thread needs to know.
pub struct Serving {
    pub shared: Arc<crate::shard::Shared>,
    pub listen: Vec<SocketAddr>,
    pub admin: Vec<SocketAddr>,
    pub shards: usize,
    /// The command line to start anew on SIGUSR2, with `--takeover PATH` added.
    pub argv: Vec<std::ffi::OsString>,
}

/// Binds the control socket and serves takeovers on a thread until the process stops. A
/// successor that took over `path` binds beside it first ([`replacement_path`]) and moves
/// its socket over the old one once the old process is done.
pub fn serve(path: PathBuf, s: Serving, replacing: bool) -> io::Result<()> {
    let bind_at = if replacing { replacement_path(&path) } else { path.clone() };
    let sock = bind_control(&bind_at).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "control socket {}: {e} (give --control-socket PATH, or --control-socket off)",
                path.display()
            ),
        )
    })?;
    std::thread::Builder::new().name("c10m-control".into()).spawn(move || {
        if !control_loop(&sock, &path, &s) {
            let _ = std::fs::remove_file(&path);
        }
    })?;
    Ok(())
}

/// Where a successor binds its control socket until it replaces its predecessor's.
pub fn replacement_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{}", std::process::id()));
    PathBuf::from(p)
}

/// Serves takeovers until the process stops; true once one succeeded (the path belongs to
/// the successor then).
fn control_loop(sock: &OwnedFd, path: &Path, s: &Serving) -> bool {
    let stop = &s.shared.signals.stop;
    while !stop.load(Ordering::Relaxed) {
        if s.shared.signals.upgrade.swap(false, Ordering::Relaxed) {
            spawn_successor(path, s);
        }
        let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd on the stack.
        if unsafe { libc::poll(&raw mut pfd, 1, 100) } <= 0 {
            continue;
        }
        // SAFETY: accept4 on our listening socket; the result is checked.
        let fd = unsafe {
            libc::accept4(
                sock.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            continue;
        }
        // SAFETY: a new descriptor owned here.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        match hand_over(&conn, s) {
            Ok(moved) => {
                tracing::info!(moved, "handover: done, {moved} connections handed over; exiting");
                stop.store(true, Ordering::Relaxed);
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {
                tracing::debug!("control socket: {e}");
            }
            Err(e) => {
                if s.shared.hub.out_go.load(Ordering::Acquire) {
                    reset_after_failure(&s.shared);
                }
                tracing::warn!(error = %e, "handover refused or failed, still serving: {e}");
                let _ = send_json(
                    &conn,
                    &serde_json::json!({"ok": false, "error": e.to_string()}),
                    &[],
                );
            }
        }
    }
    false
}

/// A handover failed after the shards began: they revert (they watch `out_failed`); once
/// none is handing over, the hub is as before, so the operator may try again. Bounded.
fn reset_after_failure(shared: &crate::shard::Shared) {
    let hub = &shared.hub;
    hub.out_failed.store(true, Ordering::Release);
    if let Some(cluster) = &shared.cluster {
        // The bridge reads the store on, should it have stopped for this handover.
        cluster.handover.release.store(true, Ordering::Relaxed);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.out_active.iter().any(|a| a.load(Ordering::Acquire)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    hub.out.lock().unwrap_or_else(|e| e.into_inner()).iter_mut().for_each(|c| *c = None);
    for d in hub.out_done.iter() {
        d.store(false, Ordering::Release);
    }
    hub.clients_done.store(0, Ordering::Release);
    hub.probes_acked.store(0, Ordering::Release);
    hub.freezes_us.lock().unwrap_or_else(|e| e.into_inner()).clear();
    hub.out_go.store(false, Ordering::Release);
    hub.out_failed.store(false, Ordering::Release);
}

/// How many connection fds may be out of the rings at once, in this process (installed for
/// a batch), in the channel (SCM_RIGHTS in flight, charged to the user against
/// RLIMIT_NOFILE) and in the new process until its rings hold them: half of what this
/// process's limit leaves free, so both processes stay under it whatever it is; at least
/// one batch.
fn fd_budget() -> i64 {
    let limit = crate::sys::raise_nofile().unwrap_or(1024) as i64;
    let open = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count()) as i64;
    ((limit - open) / 2).max(BATCH_MAX as i64)
}

/// SIGUSR2: starts this binary anew with the same arguments and `--takeover`.
fn spawn_successor(path: &Path, s: &Serving) {
    let exe = match std::env::current_exe() {
        // The upgrade itself replaces the file: /proc/self/exe then reads "PATH (deleted)",
        // and what is at PATH now is the binary to start.
        Ok(e) => match e.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(path) => std::path::PathBuf::from(path),
            None => e,
        },
        Err(e) => return tracing::error!("upgrade: cannot find this binary: {e}"),
    };
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(s.argv.iter().skip(1)).arg("--takeover").arg(path);
    match cmd.spawn() {
        Ok(child) => {
            tracing::info!(exe = %exe.display(), pid = child.id(), "upgrade: successor started")
        }
        Err(e) => tracing::error!(exe = %exe.display(), "upgrade: cannot start the successor: {e}"),
    }
}

/// The old side of one takeover. Returns the connections handed over once the new process
/// has them all; an error before the shards start moving leaves everything as it was.
fn hand_over(conn: &OwnedFd, s: &Serving) -> io::Result<u64> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let uid = peer_uid(conn)?;
    if uid != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("control peer runs as uid {uid}, this server as {me}"),
        ));
    }
    let mut channels = Vec::new();
    let hello = recv_json(conn, STEP_TIMEOUT, &mut channels).map_err(|e| match e.kind() {
        // Another server starting on this path checks whether anyone answers here.
        io::ErrorKind::UnexpectedEof => {
            io::Error::new(io::ErrorKind::ConnectionAborted, "a probe: closed before its hello")
        }
        _ => e,
    })?;
    let field = |k: &str| hello.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let (lo, hi) = (field("layout_min") as u32, field("layout_max") as u32);
    if !(lo..=hi).contains(&LAYOUT) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "state layout {LAYOUT} of this server is not one the new binary reads \
                 ({lo}..={hi}); use the paced drain (SIGTERM) instead"
            ),
        ));
    }
    let shared = &s.shared;
    let reason = if field("shards") as usize != s.shards {
        Some(format!("the new process has {} shards, this one {}", field("shards"), s.shards))
    } else if channels.len() != s.shards {
        Some(format!("{} channels for {} shards", channels.len(), s.shards))
    } else if !same_addrs(&parse_addrs(&hello["listen"]), &s.listen)
        || !same_addrs(&parse_addrs(&hello["admin"]), &s.admin)
    {
        Some(format!(
            "listeners differ: this server has clients={:?} admin={:?}",
            s.listen, s.admin
        ))
    } else if let Some(why) = cluster_refusal(shared, &hello) {
        Some(why)
    } else if hello["tls"].as_bool() != Some(shared.tls.is_some()) {
        let on = |b: bool| if b { "on" } else { "off" };
        Some(format!(
            "the new process has TLS {}, this one {}: give it the same --tls-cert and --tls-key",
            on(hello["tls"].as_bool() == Some(true)),
            on(shared.tls.is_some())
        ))
    } else if shared.signals.drain.load(Ordering::Relaxed)
        || shared.hub.out_go.load(Ordering::Relaxed)
    {
        Some("a drain or handover is already under way".into())
    } else {
        None
    };
    if let Some(r) = reason {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, r));
    }
    let listeners = shared.hub.listeners.lock().unwrap_or_else(|e| e.into_inner());
    let counts: Vec<serde_json::Value> = listeners
        .iter()
        .map(|l| serde_json::json!([s.listen.len(), l.len() - s.listen.len()]))
        .collect();
    let fds: Vec<RawFd> = listeners.iter().flatten().map(AsRawFd::as_raw_fd).collect();
    let keys = shared.user_keys;
    // A cluster node's bus server: the new process connects to the same one
    // (`crate::cluster::Prepared::follow_bus_server`).
    let bus_server = shared.cluster.as_ref().map(|c| c.bus_server());
    let welcome = serde_json::json!({
        "ok": true, "layout": LAYOUT, "epoch": shared.epoch(),
        "keys": [keys.0.to_string(), keys.1.to_string()], "listeners": counts,
        "listen": addrs(&s.listen), "admin": addrs(&s.admin), "bus_server": bus_server,
    });
    for chunk in fds.chunks(BATCH_MAX).enumerate() {
        let msg = if chunk.0 == 0 { welcome.clone() } else { serde_json::json!({"more": true}) };
        send_json(conn, &msg, chunk.1)?;
    }
    drop(listeners);
    let ready = recv_json(conn, STEP_TIMEOUT, &mut Vec::new())?;
    if ready.get("ready").and_then(serde_json::Value::as_bool) != Some(true) {
        return Err(io::Error::other(format!("the new process did not start: {ready}")));
    }
    if let Some(cluster) = &shared.cluster {
        // Whether one bus server delivers to both processes: the bridge's fence waits for
        // its marker accordingly (`crate::cluster::upgrade`, `Bridge::hold_store`).
        let theirs = ready["bus_server"].as_str().unwrap_or_default();
        cluster.handover.set_peer_server(theirs);
    }
    let started = Instant::now();
    tracing::info!("handover: the new process is ready; handing over connections");
    *shared.hub.out.lock().unwrap_or_else(|e| e.into_inner()) =
        channels.into_iter().map(Some).collect();
    let budget = fd_budget();
    shared.hub.fds_free.store(budget, Ordering::Release);
    tracing::info!(fds_in_flight_max = budget, "handover: at most {budget} descriptors in flight");
    shared.hub.attempt.fetch_add(1, Ordering::AcqRel);
    shared.hub.out_go.store(true, Ordering::SeqCst);
    let mut logged = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(5));
        if shared.hub.out_failed.load(Ordering::Acquire) {
            return Err(io::Error::other("a shard's channel to the new process failed"));
        }
        if shared.hub.out_done.iter().all(|d| d.load(Ordering::Acquire)) {
            break;
        }
        if logged.elapsed() >= Duration::from_secs(1) {
            logged = Instant::now();
            let sent = shared.hub.sent.load(Ordering::Relaxed);
            tracing::info!(sent, "handover: {sent} connections handed over so far");
        }
    }
    let moved = shared.hub.sent.load(Ordering::Relaxed);
    let ms = started.elapsed().as_millis() as u64;
    let mut freezes =
        std::mem::take(&mut *shared.hub.freezes_us.lock().unwrap_or_else(|e| e.into_inner()));
    freezes.sort_unstable();
    let at = |q: f64| {
        let i = ((freezes.len() as f64 * q) as usize).min(freezes.len().saturating_sub(1));
        freezes.get(i).map_or(0.0, |&us| us as f64 / 1000.0)
    };
    let (p50, p99, max) = (at(0.5), at(0.99), at(1.0));
    tracing::info!(
        moved,
        ms,
        batches = freezes.len(),
        freeze_p50_ms = p50,
        freeze_p99_ms = p99,
        freeze_max_ms = max,
        "handover: {moved} connections moved in {ms} ms; a batch frozen p50 {p50:.1} ms, \
         p99 {p99:.1} ms, the longest frozen {max:.1} ms"
    );
    let mut done = serde_json::json!({"done": true, "moved": moved, "ms": ms});
    if let Some(cluster) = &shared.cluster {
        // Where the new process reads the store on: the old one delivered all before it.
        let next = cluster.handover.next.load(Ordering::Relaxed);
        tracing::info!(next, "handover: the new process reads the history store from {next}");
        done["store_next"] = next.into();
        done["store_epoch"] = shared.epoch().into();
    }
    send_json(conn, &done, &[])?;
    if let Some(cluster) = &shared.cluster {
        cluster.handover.handed_over.store(true, Ordering::Relaxed);
    }
    // The new process tells the service manager it is the main process now, then says bye:
    // under systemd this process must not exit first. Bounded; an older successor says
    // nothing and costs the wait.
    let _ = recv_json(conn, Duration::from_secs(2), &mut Vec::new());
    Ok(moved)
}

/// Why a cluster node and its would-be successor cannot hand over, if they cannot: they
/// must be the same node (the registry's entries and the store's position pass from one to
/// the other), with the store numbering and reachable.
fn cluster_refusal(shared: &crate::shard::Shared, hello: &serde_json::Value) -> Option<String> {
    let mine = shared.cluster.as_ref().map(|c| c.node_id.as_str());
    let theirs = hello["node"].as_str();
    if mine != theirs {
        let name = |n: Option<&str>| n.map_or("not a cluster node".into(), |n| format!("node {n}"));
        return Some(format!(
            "the new process is {}, this one {}: give it the same --node-id, --registry \
             and --bus",
            name(theirs),
            name(mine)
        ));
    }
    let cluster = shared.cluster.as_ref()?;
    if !shared.store_numbers() {
        return Some(
            "a cluster node without history (history_ttl_ms = 0) cannot hand over: its bus \
             delivery has no position to pass on; use the paced drain (SIGTERM)"
                .into(),
        );
    }
    if hello["store"].as_bool() != Some(true) {
        return Some(
            "the new process has history off, this one on: give it the same \
             history_ttl_ms and history_per_stream_max"
                .into(),
        );
    }
    if !cluster.store_usable() {
        return Some(
            "the history store does not answer now (/stats cluster.store_connected \
             is false); try again once it does, or use the paced drain"
                .into(),
        );
    }
    None
}

/// What a new process says of itself in its hello, beside its listeners.
#[derive(Clone, Copy)]
pub struct Successor<'a> {
    pub shards: usize,
    pub listen: &'a [SocketAddr],
    pub admin: &'a [SocketAddr],
    pub tls: bool,
    /// Its cluster node id, and whether its history is on (the store numbers then).
    pub node: Option<&'a str>,
    pub store: bool,
}

/// The new side's first step, before its shards start: hello, the version check, and the
/// listeners. An `Err` names why the old process refused.
pub fn take_over(path: &Path, me: &Successor<'_>) -> io::Result<Inherited> {
    let Successor { shards, listen, admin, tls, node, store } = *me;
    let control = connect(path).map_err(|e| {
        io::Error::new(e.kind(), format!("takeover: cannot reach {}: {e}", path.display()))
    })?;
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..shards {
        let (a, b) = channel_pair()?;
        mine.push(a);
        theirs.push(b);
    }
    let hello = serde_json::json!({
        "layout_min": LAYOUT_MIN, "layout_max": LAYOUT, "version": env!("CARGO_PKG_VERSION"),
        "shards": shards, "listen": addrs(listen), "admin": addrs(admin), "tls": tls,
        "node": node, "store": store,
    });
    let raw: Vec<RawFd> = theirs.iter().map(AsRawFd::as_raw_fd).collect();
    send_json(&control, &hello, &raw)?;
    drop(theirs);
    let mut fds = Vec::new();
    let welcome = recv_json(&control, STEP_TIMEOUT, &mut fds)?;
    if welcome.get("ok").and_then(serde_json::Value::as_bool) != Some(true) {
        let why = welcome.get("error").and_then(|e| e.as_str()).unwrap_or("no reason given");
        return Err(io::Error::other(format!("takeover refused by the running server: {why}")));
    }
    let counts: Vec<(usize, usize)> = welcome["listeners"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| (c[0].as_u64().unwrap_or(0) as usize, c[1].as_u64().unwrap_or(0) as usize))
                .collect()
        })
        .unwrap_or_default();
    let total: usize = counts.iter().map(|(c, a)| c + a).sum();
    while fds.len() < total {
        recv_json(&control, STEP_TIMEOUT, &mut fds)?;
    }
    if counts.len() != shards || fds.len() != total {
        return Err(io::Error::other("takeover: the listeners did not arrive"));
    }
    let mut fds = fds.into_iter().map(socket2::Socket::from);
    let listeners = counts
        .iter()
        .map(|&(c, a)| {
            let client: Vec<_> = fds.by_ref().take(c).collect();
            (client, fds.by_ref().take(a).collect())
        })
        .collect();
    let key = |i: usize| {
        welcome["keys"][i].as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or_default()
    };
    Ok(Inherited {
        listeners,
        channels: mine,
        epoch: welcome["epoch"].as_u64().unwrap_or(1) as u32,
        user_keys: crate::push::UserKeys(key(0), key(1)),
        layout: welcome["layout"].as_u64().unwrap_or(1) as u32,
        control,
        bus_server: welcome["bus_server"].as_str().map(str::to_owned),
    })
}

/// The new side's last step: says ready (on a cluster node, with the id of its bus server),
/// waits for the old process to finish, then lets the admin API serve. Returns what the old
/// process reported.
pub fn finish(
    control: OwnedFd,
    hub: &Hub,
    bus_server: Option<String>,
    timeout: Duration,
) -> io::Result<serde_json::Value> {
    let ready = serde_json::json!({"ready": true, "bus_server": bus_server});
    send_json(&control, &ready, &[])?;
    let done = recv_json(&control, timeout, &mut Vec::new());
    if done.is_ok() && hub.layout.load(Ordering::Relaxed) >= 5 {
        // What the old shards sent is in the channels: once every shard has applied it (up
        // to its last start message, layout 5 on), this process numbers after the last
        // message the old one numbered (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub.taken.load(Ordering::Acquire) < hub.out_done.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Whatever the answer, the admin API must serve: this process holds the listeners now.
    hub.admin_go.store(true, Ordering::Release);
    let done = done?;
    if done.get("done").and_then(serde_json::Value::as_bool) != Some(true) {
        return Err(io::Error::other(format!("the old process stopped the handover: {done}")));
    }
    crate::sys::notify(&format!("MAINPID={}", std::process::id()));
    let _ = send_json(&control, &serde_json::json!({"bye": true}), &[]);
    Ok(done)
}
