//! Host checks at start: settings that would stop the server from reaching its configured
//! capacity. Each finding says what to change; `tuning/check.sh` makes the same comparisons
//! for an operator before the server runs.
#![forbid(unsafe_code)]

use std::path::Path;

/// What the server will try to hold, for comparing with the host.
pub struct Plan {
    pub shards: u64,
    pub conns_per_shard: u64,
    /// The `conns_per_shard_max` asked for, before RLIMIT_NOFILE lowered it.
    pub conns_per_shard_wanted: u64,
    pub listen_backlog: u64,
}

/// Kernel memory one idle TCP socket costs, measured on the development machines
/// (see DESIGN.md): about 4.0 KB, plus an armed poll.
const SOCKET_KERNEL_BYTES: u64 = 4_300;

fn read_u64s(root: &Path, key: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(root.join(key)).ok()?;
    text.split_whitespace().map(|v| v.parse().ok()).collect()
}

/// Findings for the host whose `/proc/sys` is at `proc_sys` (a directory, so tests can give
/// a fixture).
pub fn warnings(proc_sys: &Path, plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    let total = plan.shards * plan.conns_per_shard;
    if plan.conns_per_shard < plan.conns_per_shard_wanted {
        out.push(format!(
            "RLIMIT_NOFILE limits each shard to {} connections ({} in all): raise the process \
             limit (LimitNOFILE= in the systemd unit, fs.nr_open) or run more shards",
            plan.conns_per_shard, total
        ));
    }
    let one = |key: &str| read_u64s(proc_sys, key).and_then(|v| v.first().copied());
    if let Some(max) = one("net/core/somaxconn") {
        if max < plan.listen_backlog {
            out.push(format!(
                "net.core.somaxconn = {max} caps the accept queue below listen_backlog = {}: \
                 set it to at least {}",
                plan.listen_backlog, plan.listen_backlog
            ));
        }
    }
    if let Some(max) = one("net/ipv4/tcp_max_syn_backlog") {
        if max < plan.listen_backlog {
            out.push(format!(
                "net.ipv4.tcp_max_syn_backlog = {max} is below listen_backlog = {}: reconnect \
                 waves will see SYN drops; raise it",
                plan.listen_backlog
            ));
        }
    }
    if let Some(max) = one("fs/file-max") {
        // Direct descriptors stay out of the fd table but every socket is still a file.
        if max < total {
            out.push(format!(
                "fs.file-max = {max} is below the {total} sockets the shards may hold: raise it"
            ));
        }
    }
    if let Some(max) = one("net/netfilter/nf_conntrack_max") {
        if max < total {
            out.push(format!(
                "nf_conntrack_max = {max} is below {total} connections: raise it, or exempt \
                 the client port from tracking (iptables -t raw ... -j NOTRACK)"
            ));
        }
    }
    if let Some(mem) = read_u64s(proc_sys, "net/ipv4/tcp_mem") {
        // tcp_mem is in pages; its third value is the hard limit for all TCP buffers.
        if let Some(&hard_pages) = mem.get(2) {
            let need = total * SOCKET_KERNEL_BYTES / 4096;
            if hard_pages < need / 4 {
                out.push(format!(
                    "net.ipv4.tcp_mem hard limit is {hard_pages} pages; {total} connections \
                     will press it under load: see tuning/sysctl.conf"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(entries: &[(&str, &str)]) -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for (key, value) in entries {
            let path = dir.0.join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, value).unwrap();
        }
        dir
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let n = N.fetch_add(1, Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("c10m-host-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn plan() -> Plan {
        Plan {
            shards: 2,
            conns_per_shard: 19_936,
            conns_per_shard_wanted: 1_048_576,
            listen_backlog: 4096,
        }
    }

    #[test]
    fn flags_each_setting_that_is_too_low() {
        let dir = fixture(&[
            ("net/core/somaxconn", "128\n"),
            ("net/ipv4/tcp_max_syn_backlog", "256\n"),
            ("fs/file-max", "1000\n"),
            ("net/netfilter/nf_conntrack_max", "1000\n"),
            ("net/ipv4/tcp_mem", "10\t20\t30\n"),
        ]);
        let w = warnings(&dir.0, &plan());
        for needle in [
            "RLIMIT_NOFILE",
            "somaxconn",
            "tcp_max_syn_backlog",
            "file-max",
            "conntrack",
            "tcp_mem",
        ] {
            assert!(w.iter().any(|m| m.contains(needle)), "no warning about {needle}: {w:?}");
        }
    }

    #[test]
    fn a_tuned_host_gets_no_warning() {
        let dir = fixture(&[
            ("net/core/somaxconn", "65535\n"),
            ("net/ipv4/tcp_max_syn_backlog", "65535\n"),
            ("fs/file-max", "10000000\n"),
            ("net/ipv4/tcp_mem", "1000000 2000000 4000000\n"),
        ]);
        let mut p = plan();
        p.conns_per_shard_wanted = p.conns_per_shard;
        assert_eq!(warnings(&dir.0, &p), Vec::<String>::new());
    }
}
