//! Starting the shards: resource limits, listeners, rings, the mesh, and threads.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use crate::config::{Config, RING_FILES_KERNEL_MAX};
use crate::metrics::ShardStats;
use crate::ring::Ring;
use crate::shard::{Listener, Shard, Shared};
use crate::sys;

/// Buffer group id of every shard's provided-buffer ring.
const BUFFER_GROUP: u16 = 0;

/// A running server: its threads and the addresses it actually listens on.
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub admin: Vec<SocketAddr>,
    pub shards: usize,
    /// Direct descriptors per shard.
    pub files_per_shard: u32,
    /// Connections per shard (the table less the 503 reserve).
    pub conns_per_shard: u32,
    threads: Vec<JoinHandle<io::Result<()>>>,
    /// The cluster bridge, stopped after the shards (it writes their last registry removals).
    bridge: Option<crate::cluster::Running>,
}

impl Server {
    /// Waits for every shard to finish (after a shutdown).
    pub fn join(self) -> io::Result<()> {
        let mut first_err = None;
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(io::Error::other("a shard thread panicked"));
                }
            }
        }
        if let Some(bridge) = self.bridge {
            if let Err(e) = bridge.stop() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Binds one socket per address for the first shard; port 0 becomes a real port, which the
/// other shards then bind too.
fn bind_first(
    addrs: &[SocketAddr],
    backlog: u32,
    sndbuf: u32,
) -> io::Result<(Vec<socket2::Socket>, Vec<SocketAddr>)> {
    let mut socks = Vec::new();
    let mut bound = Vec::new();
    for &addr in addrs {
        // SO_REUSEPORT would let a second server on the same port silently take half the
        // connections; a plain bind first fails if anyone else holds the address.
        if addr.port() != 0 {
            sys::exclusive_probe(addr).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr}: {e} (is another server running there?)"),
                )
            })?;
        }
        let sock = sys::reuseport_listener(addr, backlog, sndbuf)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local = sock.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not inet"))?;
        socks.push(sock);
        bound.push(local);
    }
    Ok((socks, bound))
}

/// How a server starts besides its configuration: its control socket, and what it takes
/// over from a running server (a live upgrade, [`crate::handover`]).
#[derive(Default)]
pub struct Upgrade {
    /// Serve takeovers on this control socket; `explicit`: a failure to bind it is an error,
    /// not a warning.
    pub control: Option<(std::path::PathBuf, bool)>,
    /// Take over the listeners and connections of the server on this control socket.
    pub takeover: Option<std::path::PathBuf>,
    /// This process's command line, for SIGUSR2.
    pub argv: Vec<std::ffi::OsString>,
}

/// Starts the shards and returns once every one is ready (or the first error).
pub fn start(cfg: Config, signals: sys::Signals) -> io::Result<Server> {
    start_with(cfg, signals, Upgrade::default())
}

/// [`start`], with a control socket and possibly a takeover.
pub fn start_with(cfg: Config, signals: sys::Signals, upgrade: Upgrade) -> io::Result<Server> {
    // Keys first: a bad key file is reported before any address is taken.
    let client_auth = match (cfg.auth.as_deref(), &cfg.jwt_key) {
        (Some("jwt"), Some(path)) => crate::auth::ClientAuth::jwt_from_file(path),
        _ => Ok(crate::auth::ClientAuth::None),
    }
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let admin_key = match &cfg.admin_key_file {
        Some(path) => Some(
            crate::auth::admin_key_from_file(path)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
        ),
        None => None,
    };
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::tls::TlsServer::load(cert, key)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
        ),
        _ => None,
    };
    let shards = if cfg.shards == 0 { sys::online_cpus() } else { cfg.shards };
    let nofile = sys::raise_nofile()?;
    // The table holds the registry's connections plus a reserve for answering 503.
    let reserve = crate::shard::ACCEPT_REFUSE_RESERVE as u64;
    let files = (cfg.limits.conns_per_shard_max as u64 + reserve)
        .min(nofile)
        .min(RING_FILES_KERNEL_MAX as u64) as u32;
    if files as u64 <= reserve {
        return Err(io::Error::other(format!(
            "RLIMIT_NOFILE is {nofile}: too low to hold any connection; raise it above {reserve}"
        )));
    }
    let backlog = cfg.limits.listen_backlog;
    let sndbuf = cfg.limits.socket_send_buffer_bytes;
    let l = &cfg.limits;
    let history_on = l.history_ttl_ms > 0 && l.history_per_stream_max > 0;
    let mut inherited = match &upgrade.takeover {
        Some(path) => {
            let me = crate::handover::Successor {
                shards,
                listen: &cfg.listen,
                admin: &cfg.admin,
                tls: cfg.tls_cert.is_some(),
                node: cfg.cluster.node_id.as_deref().filter(|_| cfg.cluster.enabled()),
                store: history_on,
            };
            Some(crate::handover::take_over(path, &me)?)
        }
        None => None,
    };
    let mut premade: Vec<Option<(Vec<socket2::Socket>, Vec<socket2::Socket>)>> =
        (0..shards).map(|_| None).collect();
    let (listen, admin) = match inherited.as_mut() {
        Some(inh) => {
            let local = |v: &[socket2::Socket]| -> io::Result<Vec<SocketAddr>> {
                v.iter()
                    .map(|s| {
                        s.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not inet"))
                    })
                    .collect()
            };
            let (c, a) = &inh.listeners[0];
            let addrs = (local(c)?, local(a)?);
            for (slot, l) in premade.iter_mut().zip(std::mem::take(&mut inh.listeners)) {
                *slot = Some(l);
            }
            addrs
        }
        None => {
            let (first_client, listen) = bind_first(&cfg.listen, backlog, sndbuf)?;
            let (first_admin, admin) = bind_first(&cfg.admin, backlog, 0)?;
            premade[0] = Some((first_client, first_admin));
            (listen, admin)
        }
    };
    let hub = crate::handover::Hub::new(shards);
    if let Some(inh) = inherited.as_mut() {
        hub.admin_go.store(false, Ordering::Release);
        hub.layout.store(inh.layout, Ordering::Relaxed);
        *hub.inbound.lock().unwrap_or_else(|e| e.into_inner()) =
            std::mem::take(&mut inh.channels).into_iter().map(Some).collect();
    }
    // On a cluster node the bridge is the mesh's last participant: it takes the last end, and
    // its doorbell ring is the last peer.
    let directory = Arc::new(crate::nodes::Directory::new(&cfg, shards));
    directory.rss_bytes.store(sys::rss_bytes(), Ordering::Relaxed);
    let mut bridge = if cfg.cluster.enabled() {
        Some(crate::cluster::Prepared::new(&cfg.cluster, Arc::clone(&directory))?)
    } else {
        None
    };
    // A cluster node with history keeps it in the cluster's store, which numbers messages.
    // A successor reads it from where its predecessor stops, told once that one is done.
    let l = &cfg.limits;
    let window = crate::cluster::store::Window {
        ttl_ms: l.history_ttl_ms,
        per_subject: l.history_per_stream_max,
    };
    let mut store_resume = None;
    let store = match (bridge.as_mut(), inherited.as_ref()) {
        (Some(b), None) if history_on => Some(b.open_store(window, history_epoch())?),
        (Some(b), Some(inh)) if history_on => {
            if let Some(id) = &inh.bus_server {
                b.follow_bus_server(id.clone());
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            store_resume = Some(tx);
            Some(b.take_store(window, inh.epoch, rx))
        }
        _ => None,
    };
    let (mut ends, peers) = crate::mesh::build(
        shards,
        cfg.limits.mesh_ring_entries as usize,
        cfg.limits.mesh_backlog_max as usize,
        bridge.is_some(),
    );
    let bridge = bridge.map(|b| {
        peers[shards].ring_fd.store(b.bell_fd(), Ordering::Release);
        (b, ends.pop().expect("build made the bridge's end last"))
    });
    let shared = Arc::new(Shared {
        stats: (0..shards).map(|_| ShardStats::default()).collect(),
        peers: Arc::clone(&peers),
        user_keys: inherited.as_ref().map_or_else(crate::push::UserKeys::default, |i| i.user_keys),
        client_auth,
        admin_key,
        signals,
        rss_bytes: std::sync::atomic::AtomicU64::new(sys::rss_bytes()),
        started: AtomicBool::new(false),
        placements: std::sync::atomic::AtomicU64::new(0),
        emptied: std::sync::atomic::AtomicUsize::new(0),
        cluster: bridge.as_ref().map(|(b, _)| Arc::clone(&b.stats)),
        tls,
        bans: crate::shard::command::Bans::default(),
        history_epoch: store
            .map(|s| s.epoch)
            .or(inherited.as_ref().map(|i| i.epoch))
            .unwrap_or_else(history_epoch)
            .into(),
        store_start: store,
        clock_origin: std::time::Instant::now(),
        hub,
        directory,
        cfg,
    });
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    let mut threads = Vec::new();
    for (id, mesh) in ends.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let ready = ready_tx.clone();
        let core =
            if shared.cfg.pin && !cores.is_empty() { Some(cores[id % cores.len()]) } else { None };
        let premade = premade[id].take();
        let (listen, admin) = (listen.clone(), admin.clone());
        let t = std::thread::Builder::new().name(format!("c10m-shard-{id}")).spawn(move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
            let setup = || -> io::Result<Shard> {
                let (c, a) = match premade {
                    Some(p) => p,
                    None => (bind_all(&listen, backlog, sndbuf)?, bind_all(&admin, backlog, 0)?),
                };
                // As configured (a port may be 0): `c` is in the order of `cfg.listen`.
                let cfg = &shared.cfg;
                let compress = |addr: &SocketAddr| {
                    cfg.compression
                        && (cfg.compression_listen.is_empty()
                            || cfg.compression_listen.contains(addr))
                };
                let mut listeners: Vec<Listener> = c
                    .into_iter()
                    .zip(&cfg.listen)
                    .map(|(sock, addr)| Listener::new(sock, false, compress(addr)))
                    .collect();
                listeners.extend(a.into_iter().map(|sock| Listener::new(sock, true, false)));
                // Copies for a live upgrade, which passes every listener to the new process.
                let copies: Vec<std::os::fd::OwnedFd> = listeners
                    .iter()
                    .filter_map(|l| l.sock.as_ref()?.try_clone().ok())
                    .map(std::os::fd::OwnedFd::from)
                    .collect();
                shared.hub.listeners.lock().unwrap_or_else(|e| e.into_inner())[id] = copies;
                let l = &shared.cfg.limits;
                let mut ring = Ring::new(l.ring_entries, files)?;
                let bufs =
                    ring.register_buf_ring(l.recv_buffers, l.recv_buffer_bytes, BUFFER_GROUP)?;
                shared.peers[id].ring_fd.store(ring.fd(), Ordering::Release);
                Ok(Shard::new(id, ring, bufs, Arc::clone(&shared), listeners, mesh))
            };
            let shard = match setup() {
                Ok(s) => {
                    let _ = ready.send(Ok(()));
                    s
                }
                Err(e) => {
                    let e = io::Error::new(e.kind(), format!("shard {id}: {e}"));
                    let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            };
            let result = shard.run();
            shared.peers[id].ring_fd.store(-1, Ordering::Release);
            result
        })?;
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.signals.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
            Err(_) => return Err(io::Error::other("a shard thread died during start")),
        }
    }
    let bridge = match bridge {
        Some((bridge, end)) => {
            let bytes_max = shared.cfg.limits.message_bytes_max as usize;
            let stop = Arc::clone(&shared.signals.stop);
            Some(bridge.spawn(end, shared.user_keys, bytes_max, stop)?)
        }
        None => None,
    };
    shared.started.store(true, Ordering::Release);
    let conns_per_shard = files - crate::shard::ACCEPT_REFUSE_RESERVE;
    let plan = sys::host::Plan {
        shards: shards as u64,
        conns_per_shard: conns_per_shard as u64,
        conns_per_shard_wanted: shared.cfg.limits.conns_per_shard_max as u64,
        listen_backlog: backlog as u64,
    };
    for w in sys::host::warnings(std::path::Path::new("/proc/sys"), &plan) {
        tracing::warn!("{w}");
    }
    let replacing = match (&upgrade.control, &upgrade.takeover) {
        (Some((path, _)), Some(from)) => (path == from).then(|| path.clone()),
        _ => None,
    };
    if let Some((path, explicit)) = upgrade.control {
        // The default path is named by the admin port: the bound one, when it was 0.
        let path = match &upgrade.takeover {
            None if !explicit => crate::handover::default_control_path(&admin, &listen),
            _ => path,
        };
        let serving = crate::handover::Serving {
            shared: Arc::clone(&shared),
            listen: listen.clone(),
            admin: admin.clone(),
            shards,
            argv: upgrade.argv,
        };
        match crate::handover::serve(path, serving, replacing.is_some()) {
            Ok(()) => {}
            Err(e) if explicit => {
                shared.signals.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
            Err(e) => tracing::warn!("no live upgrade: {e}"),
        }
    }
    if let Some(inh) = inherited {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new().name("c10m-takeover".into()).spawn(move || {
            if !bus_answers(&shared) {
                tracing::error!(
                    "takeover: the cluster bus does not answer this process; it stops and the \
                     old one serves on"
                );
                shared.signals.stop.store(true, Ordering::Relaxed);
                return;
            }
            let timeout = std::time::Duration::from_secs(600);
            let bus_server = shared.cluster.as_ref().map(|c| c.bus_server());
            let done = crate::handover::finish(inh.control, &shared.hub, bus_server, timeout);
            match &done {
                Ok(done) => {
                    let received = shared.hub.received.load(Ordering::Relaxed);
                    let ms = done["ms"].as_u64().unwrap_or(0);
                    tracing::info!(
                        received,
                        ms,
                        "takeover: done: {received} connections taken over in {ms} ms"
                    );
                }
                Err(e) => tracing::error!("takeover: {e}; serving what was taken over"),
            }
            if let Some(tx) = store_resume {
                let _ = tx.send(store_resume_point(done.ok().as_ref()));
            }
            if let Some(path) = replacing {
                // The old process is gone or going: the control path is this process's now.
                let _ = std::fs::rename(crate::handover::replacement_path(&path), &path);
            }
        })?;
    }
    Ok(Server { listen, admin, shards, files_per_shard: files, conns_per_shard, threads, bridge })
}

/// A successor on a cluster node is on the bus before the first connection moves (its
/// publishes go through the store, commands and presence requests reach it); bounded.
fn bus_answers(shared: &Shared) -> bool {
    let Some(cluster) = &shared.cluster else { return true };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cluster.bus_connected.load(Ordering::Relaxed) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

/// Where a successor on a cluster node reads the store from: where the old process
/// stopped ([`crate::handover::finish`] returns once every shard has applied what its old
/// shard sent, so the store's next messages come after those); from the stream's top
/// should the handover have ended otherwise.
fn store_resume_point(done: Option<&serde_json::Value>) -> crate::cluster::store::Resume {
    use crate::cluster::store::Resume;
    let at = done.and_then(|d| Some((d["store_epoch"].as_u64()?, d["store_next"].as_u64()?)));
    let Some((epoch, next)) = at.filter(|&(_, next)| next > 0) else {
        tracing::warn!("takeover: the old process named no store position; reading from its top");
        return Resume::Now;
    };
    Resume::At { epoch: epoch as u32, next }
}

fn bind_all(addrs: &[SocketAddr], backlog: u32, sndbuf: u32) -> io::Result<Vec<socket2::Socket>> {
    addrs
        .iter()
        .map(|&a| {
            sys::reuseport_listener(a, backlog, sndbuf)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))
        })
        .collect()
}

/// A random, non-zero epoch for this run's history positions.
fn history_epoch() -> u32 {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    (h as u32).max(1)
}
