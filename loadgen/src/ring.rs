//! All io_uring code: ring setup with a sparse fixed-file table, the one unsafe verb
//! (`push`), waiting, and socket addresses the kernel reads.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use io_uring::{cqueue, squeue, types, IoUring};

/// Submission queue entries per ring. Ring memory counts against RLIMIT_MEMLOCK (8 MiB
/// here, for all rings of the process together), so rings stay small.
pub const SQ_ENTRIES: u32 = 512;
/// Completion queue entries per ring; a broadcast completes one poll per connection, so
/// the queue is larger than the submission side (overflow is kept by the kernel anyway).
pub const CQ_ENTRIES: u32 = 4096;
/// Longest linked chain the shard pushes at once.
pub const CHAIN_MAX: usize = 8;

const _: () = assert!(CHAIN_MAX < SQ_ENTRIES as usize);
const _: () = assert!(CQ_ENTRIES >= SQ_ENTRIES);

/// One completion, copied out of the queue.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

/// A SINGLE_ISSUER | DEFER_TASKRUN ring with a sparse fixed-file table.
pub struct Ring {
    ring: IoUring<squeue::Entry, cqueue::Entry>,
}

impl Ring {
    /// Creates the ring and registers `files` empty fixed-file slots.
    pub fn new(files: u32) -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOMEM) => io::Error::other(format!(
                    "io_uring setup failed with ENOMEM: ring memory counts against \
                     RLIMIT_MEMLOCK (ulimit -l); raise it or use fewer --shards ({e})"
                )),
                _ => io::Error::other(format!("io_uring setup failed: {e} (kernel ≥ 6.11 needed)")),
            })?;
        ring.submitter().register_files_sparse(files).map_err(|e| {
            io::Error::other(format!(
                "registering {files} fixed-file slots failed: {e}; the kernel caps a ring's \
                 table at the soft RLIMIT_NOFILE, so use more --shards"
            ))
        })?;
        Ok(Ring { ring })
    }

    /// Room left in the submission queue.
    pub fn room(&mut self) -> usize {
        let sq = self.ring.submission();
        sq.capacity() - sq.len()
    }

    /// Queues `entries` as one unit (a linked chain is never split across submissions),
    /// submitting first if the queue lacks room.
    ///
    /// # Safety
    ///
    /// Every buffer and address the entries point to stays valid and unmoved until the
    /// completion of the entry that names it has been reaped.
    pub unsafe fn push(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        debug_assert!(entries.len() <= CHAIN_MAX);
        if self.room() < entries.len() {
            self.submit()?;
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { self.ring.submission().push_multiple(entries) }
            .map_err(|_| io::Error::other("submission queue full after submit"))
    }

    pub fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY: the completion side is full; reaping makes room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits what is queued and waits up to `timeout` for at least one completion.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Moves the ready completions into `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        out.extend(self.ring.completion().map(|c| Completion {
            user_data: c.user_data(),
            result: c.result(),
            flags: c.flags(),
        }));
    }
}

/// An IPv4 socket address in the kernel's layout, kept at a stable place while
/// operations that name it are in flight.
#[derive(Clone, Copy)]
pub struct RawAddr(libc::sockaddr_in);

impl RawAddr {
    pub fn new(addr: SocketAddrV4) -> RawAddr {
        RawAddr(libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
            sin_zero: [0; 8],
        })
    }

    pub fn from_socket_addr(addr: SocketAddr) -> Option<RawAddr> {
        match addr {
            SocketAddr::V4(v4) => Some(RawAddr::new(v4)),
            SocketAddr::V6(_) => None,
        }
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.0 as *const libc::sockaddr_in).cast()
    }

    pub const LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
}
