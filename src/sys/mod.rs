//! OS wrappers: resource limits, listeners, signals, process memory, host checks.

pub mod host;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the new soft limit.
///
/// Each ring's fixed-file table is capped at the soft limit when it is registered, so this
/// decides how many connections one shard can hold. The io-uring crate does not do it.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the rlimit struct we own; the pointer is valid.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct we own; raising soft to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// The soft RLIMIT_MEMLOCK in bytes, for error messages about ring setup.
pub fn memlock_bytes() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the rlimit struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    lim.rlim_cur
}

/// A non-blocking SO_REUSEPORT TCP listener: every shard binds its own on the same address
/// and the kernel spreads new connections across them.
/// `send_buffer_bytes` (0: leave the kernel's autotuning) is inherited by accepted sockets.
pub fn reuseport_listener(
    addr: SocketAddr,
    backlog: u32,
    send_buffer_bytes: u32,
) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    // Accepted sockets inherit it: a push is small and should leave at once, not wait for
    // the ACK of the previous one (Nagle with delayed ACKs costs up to 40 ms).
    sock.set_tcp_nodelay(true)?;
    if send_buffer_bytes > 0 {
        sock.set_send_buffer_size(send_buffer_bytes as usize)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(sock)
}

/// Binds `addr` without SO_REUSEPORT and lets it go: an error means another socket holds it.
pub fn exclusive_probe(addr: SocketAddr) -> io::Result<()> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())
}

/// Resident set size of this process in bytes, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// Kernel memory of every TCP socket on the host (buffers queued in either direction), from
/// the `mem` pages of /proc/net/sockstat: host-wide, an estimate of what connections cost
/// beyond this process's RSS.
pub fn tcp_mem_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages = text
        .lines()
        .find_map(|l| l.strip_prefix("TCP: "))
        .and_then(|l| {
            let mut it = l.split_whitespace();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).find(|(k, _)| *k == "mem")
        })
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// Tells the service manager (systemd, `Type=notify`) `state`, e.g. `READY=1` or
/// `MAINPID=N`, when it gave this process a `NOTIFY_SOCKET`; a no-op otherwise.
pub fn notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr)),
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::warn!("NOTIFY_SOCKET: cannot tell the service manager {state:?}: {e}");
    }
}

/// Returns this thread's freed allocator pages to the OS (mimalloc, the global allocator of
/// the binary). A shard calls it once a burst (a broadcast's outboxes, a drained mesh
/// backlog) is over, and the cluster bridge once a wave's registry writes are, because
/// mimalloc purges idle pages only on later allocator calls, which an idle thread rarely
/// makes.
pub fn release_free_memory() {
    // SAFETY: mi_collect has no preconditions; it only walks the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// The environment variable that leaves transparent huge pages to the allocator.
pub const ALLOW_THP: &std::ffi::CStr = c"MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process unless `MIMALLOC_ALLOW_THP` is set (then
/// mimalloc decides: `1` on, `0` off). Returns 0 when it turned them off, -1 when the variable
/// is set, and the errno of a refused `prctl` otherwise.
///
/// mimalloc madvises its arenas `MADV_HUGEPAGE`, so where THP is `always` or `madvise` every
/// shard faults in 2 MiB pages at its start that idle connections never fill: on the
/// development box a server with 100,000 connections on 6 shards was 47 MB without them and
/// 71–81 MB with them, one with 998,000 on 54 shards 230 against 308 MiB
/// (docs/measurements.md, "Transparent huge pages"). `PR_SET_THP_DISABLE` is checked when a
/// page faults in, so it holds for what the allocator reserved before, and a successor
/// started by SIGUSR2 inherits it (with the same environment, so the same answer).
///
/// It allocates nothing, so the binary can call it from a constructor, before the first
/// allocation faults in the allocator's first segment.
pub fn huge_pages_off_unless_allowed() -> i32 {
    // SAFETY: getenv reads the environment with a NUL-terminated name; nothing in this
    // process changes the environment concurrently (this runs before main or in it).
    if !unsafe { libc::getenv(ALLOW_THP.as_ptr()) }.is_null() {
        return -1;
    }
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL);
    }
    0
}

/// Online CPUs, the default shard count.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Flags the signals set; shards look at them every tick.
#[derive(Clone, Default)]
pub struct Signals {
    /// SIGINT: close everything now and exit.
    pub stop: Arc<AtomicBool>,
    /// SIGTERM: drain at `drain_rate_per_s`, then exit.
    pub drain: Arc<AtomicBool>,
    /// SIGHUP: reload the TLS certificate and key; cleared by the shard that does it.
    pub reload: Arc<AtomicBool>,
    /// SIGUSR2: start this binary anew and hand it every connection (a live upgrade).
    pub upgrade: Arc<AtomicBool>,
}

/// Registers SIGINT, SIGTERM, SIGHUP and SIGUSR2.
pub fn signals() -> io::Result<Signals> {
    let s = Signals::default();
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&s.stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&s.drain))?;
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&s.reload))?;
    signal_hook::flag::register(signal_hook::consts::SIGUSR2, Arc::clone(&s.upgrade))?;
    Ok(s)
}
