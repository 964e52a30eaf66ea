//! Every io_uring call of the engine: ring setup, submission, completions, the
//! provided-buffer ring, and the layout of `user_data`.
//!
//! `user_data` layout (64 bits), drawn where it is defined:
//!
//! ```text
//!  63      56 55                    32 31                              0
//! ┌──────────┬────────────────────────┬─────────────────────────────────┐
//! │  op (8)  │  generation (24 bits)  │  registry slot / listener (32)  │
//! └──────────┴────────────────────────┴─────────────────────────────────┘
//! ```
//!
//! A completion names the connection it belongs to by slot and generation, so a completion
//! that arrives after its connection was freed and the slot reused is recognised as stale.

pub mod bufring;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

pub use bufring::BufRing;

/// What a submitted operation was, stored in the top byte of `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Multishot accept on listener `slot` (index into the shard's listener list).
    Accept = 1,
    /// One-shot readiness poll on a connection.
    Poll = 2,
    /// Receive into a provided buffer after readiness.
    Recv = 3,
    /// Send of the connection's in-flight outbox chunk.
    Send = 4,
    /// A connection's shutdown on close, or a cancel of one of its operations (or of a
    /// listener's accept when the slot is `u32::MAX`).
    Cancel = 5,
    /// Close of a connection's direct descriptor.
    Close = 6,
    /// SIOCOUTQ on a connection (IORING_OP_URING_CMD): its unacknowledged send bytes.
    KernelQueue = 7,
    /// A doorbell from another shard (MSG_RING); carries no connection.
    Doorbell = 8,
    /// Our own MSG_RING submission completing on this ring.
    DoorbellSent = 9,
    /// A live upgrade's channel to the other process: its readiness poll (generation 0)
    /// or the installation of a received batch into the fixed-file table (generation 1).
    Channel = 10,
    /// A live upgrade: a connection's direct descriptor made into a process fd.
    FdInstall = 11,
    /// A connection's direct descriptor sent to its user's home shard (MSG_RING); the slot
    /// is the move's token (`crate::shard::placement`).
    Move = 12,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Accept,
            2 => Op::Poll,
            3 => Op::Recv,
            4 => Op::Send,
            5 => Op::Cancel,
            6 => Op::Close,
            7 => Op::KernelQueue,
            8 => Op::Doorbell,
            9 => Op::DoorbellSent,
            10 => Op::Channel,
            11 => Op::FdInstall,
            12 => Op::Move,
            _ => return None,
        })
    }
}

/// Generations wrap at 24 bits; a slot would have to be reused 16 million times while one
/// completion is outstanding for a stale id to be mistaken for a live one.
pub const GENERATION_MASK: u32 = (1 << 24) - 1;

/// Packs an operation, generation and slot into `user_data`.
pub fn user_data(op: Op, generation: u32, slot: u32) -> u64 {
    ((op as u64) << 56) | (((generation & GENERATION_MASK) as u64) << 32) | slot as u64
}

/// Unpacks `user_data`; `None` for a value this engine never submits.
pub fn parse_user_data(ud: u64) -> Option<(Op, u32, u32)> {
    let op = Op::from_u8((ud >> 56) as u8)?;
    Some((op, ((ud >> 32) as u32) & GENERATION_MASK, ud as u32))
}

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// Whether a multishot operation stays armed after this completion.
    pub fn more(&self) -> bool {
        io_uring::cqueue::more(self.flags)
    }

    /// The provided buffer this completion filled, if any.
    pub fn buffer_id(&self) -> Option<u16> {
        io_uring::cqueue::buffer_select(self.flags)
    }
}

/// A shard's ring: SINGLE_ISSUER and DEFER_TASKRUN, so it must be created and driven by the
/// shard's own thread.
pub struct Ring {
    ring: IoUring,
    /// Slots in the fixed-file table.
    files: u32,
    /// Completions reaped while making room to submit; handed out first by `drain`.
    spilled: Vec<Completion>,
}

/// The kernel's cap on completion queue entries (IORING_MAX_CQ_ENTRIES).
const CQ_ENTRIES_MAX: u32 = 65_536;

/// Opcodes the engine needs, with the kernel version that brought each, for error messages.
const REQUIRED_OPS: &[(u8, &str, &str)] = &[
    (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT", "5.19"),
    (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD", "5.1"),
    (opcode::Recv::CODE, "IORING_OP_RECV", "5.6"),
    (opcode::Send::CODE, "IORING_OP_SEND", "5.6"),
    (opcode::AsyncCancel2::CODE, "IORING_OP_ASYNC_CANCEL", "5.19"),
    (opcode::Close::CODE, "IORING_OP_CLOSE", "5.15"),
    (opcode::Shutdown::CODE, "IORING_OP_SHUTDOWN", "5.11"),
    (opcode::MsgRingData::CODE, "IORING_OP_MSG_RING", "5.18"),
    (opcode::UringCmd16::CODE, "IORING_OP_URING_CMD", "6.7"),
];

impl Ring {
    /// Creates the ring and registers a sparse fixed-file table of `files` slots.
    pub fn new(entries: u32, files: u32) -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(entries.saturating_mul(4).min(CQ_ENTRIES_MAX))
            .build(entries)
            .map_err(|e| setup_error(e, entries))?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe).map_err(|e| {
            io::Error::new(e.kind(), format!("io_uring probe failed ({e}); needs Linux 5.6+"))
        })?;
        for &(code, name, version) in REQUIRED_OPS {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("kernel lacks {name} (Linux {version}+ needed)"),
                ));
            }
        }
        ring.submitter().register_files_sparse(files).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "registering {files} direct descriptors failed ({e}): lower \
                     conns_per_shard_max or raise RLIMIT_NOFILE (sparse tables need Linux 5.19+)"
                ),
            )
        })?;
        Ok(Ring { ring, files, spilled: Vec::new() })
    }

    /// The ring's file descriptor, the target of other shards' MSG_RING doorbells.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Slots in the fixed-file table.
    pub fn files(&self) -> u32 {
        self.files
    }

    /// Queues one entry, submitting first when the submission queue is full.
    ///
    /// # Safety
    /// Every buffer the entry points to must stay valid and unmoved until its completion
    /// arrives (the kernel owns it until then).
    pub unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: the caller guarantees the entry's buffers outlive the operation.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            // The queue is full: hand it to the kernel to make room. EBUSY means completions
            // must be reaped first: move them aside (`drain` returns them first) and retry.
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.spill_completions(),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
        }
    }

    fn spill_completions(&mut self) {
        for cqe in self.ring.completion() {
            self.spilled.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    /// Submits what is queued and waits for at least one completion or the timeout.
    /// A zero timeout only runs deferred task work and collects what is ready.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
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

    /// Gives back the room completions spilled in a burst took, down to `keep` entries.
    pub fn shrink(&mut self, keep: usize) {
        self.spilled.shrink_to(keep);
    }

    /// Moves every ready completion into `out`.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.spilled);
        for cqe in self.ring.completion() {
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }

    /// Registers a provided-buffer ring with this ring.
    pub fn register_buf_ring(
        &mut self,
        buffers: u32,
        buffer_bytes: u32,
        bgid: u16,
    ) -> io::Result<BufRing> {
        BufRing::new(&self.ring.submitter(), buffers, buffer_bytes, bgid)
    }
}

fn setup_error(e: io::Error, entries: u32) -> io::Error {
    let msg = match e.raw_os_error() {
        Some(libc::EINVAL) => format!(
            "io_uring setup rejected ({e}) for {entries} entries: either ring_entries is over \
             the kernel's limit (32768), or the kernel lacks IORING_SETUP_SINGLE_ISSUER or \
             IORING_SETUP_DEFER_TASKRUN (Linux 6.1+ needed)"
        ),
        Some(libc::ENOMEM) => format!(
            "io_uring setup failed ({e}) for {entries} entries: ring memory counts against \
             RLIMIT_MEMLOCK ({} bytes now); raise it (LimitMEMLOCK=) or lower ring_entries",
            crate::sys::memlock_bytes()
        ),
        Some(libc::ENOSYS) => "io_uring is not available (ENOSYS): Linux 6.1+ needed".into(),
        Some(libc::EPERM) => {
            format!("io_uring setup not permitted ({e}): check kernel.io_uring_disabled")
        }
        _ => format!("io_uring setup failed: {e}"),
    };
    io::Error::new(e.kind(), msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let ud = user_data(Op::Send, 0xABCDEF, 123_456);
        assert_eq!(parse_user_data(ud), Some((Op::Send, 0xABCDEF, 123_456)));
        let wrapped = user_data(Op::Poll, 0x1_000_001, 7);
        assert_eq!(parse_user_data(wrapped), Some((Op::Poll, 1, 7)));
        assert_eq!(parse_user_data(0), None);
    }
}
