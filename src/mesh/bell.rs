//! The bridge's doorbell: a tiny io_uring ring that shards ring with MSG_RING like any shard,
//! with an eventfd registered on it so that an async runtime can wait for the ring.
//!
//! The bridge runs tokio, not a ring loop: it waits on the eventfd (readable when the kernel
//! posts a completion to the ring), then clears both. The same ring sends the bridge's own
//! doorbells to shards; those sends skip their success completion, so ringing a shard never
//! wakes the bridge itself.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

use crate::ring::{user_data, Op};

/// Submission entries of the bridge's ring: one doorbell per shard per turn at most.
const BELL_ENTRIES: u32 = 64;

/// Attempts at one submission before the bridge gives up on its ring.
const SUBMIT_TRIES: usize = 8;

/// The bridge's ring. Owned and driven by the bridge thread only.
pub struct Bell {
    ring: IoUring,
}

/// The eventfd the kernel signals when the bridge's ring gets a completion.
pub struct EventFd(OwnedFd);

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl EventFd {
    /// Registers the eventfd with the current tokio runtime (call inside it).
    pub fn into_async(self) -> io::Result<tokio::io::unix::AsyncFd<EventFd>> {
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: `EventFd` owns a valid descriptor and closes it only when dropped, which
        // happens after the AsyncFd that owns it deregisters it.
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, interest) }
            .map_err(|e| e.into())
    }

    /// Resets the counter; harmless when it is already zero (non-blocking).
    pub fn clear(&self) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a local u64 from an eventfd this struct owns.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

impl Bell {
    /// Creates the ring and its eventfd.
    pub fn new() -> io::Result<(Bell, EventFd)> {
        let ring = IoUring::new(BELL_ENTRIES).map_err(|e| {
            io::Error::new(e.kind(), format!("cluster bridge: io_uring setup failed: {e}"))
        })?;
        // SAFETY: eventfd(2) with constant flags has no memory preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd(2) and is owned by nobody else.
        let efd = EventFd(unsafe { OwnedFd::from_raw_fd(fd) });
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        Ok((Bell { ring }, efd))
    }

    /// The fd shards send their MSG_RING doorbells to.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Throws away the doorbell completions that woke us: they carry nothing.
    pub fn drain(&mut self) {
        for _ in self.ring.completion() {}
    }

    /// Rings each shard ring in `fds` (skipping -1: a shard that has stopped).
    pub fn ring(&mut self, fds: &[i32]) -> io::Result<()> {
        let mut queued = false;
        for &fd in fds.iter().filter(|&&fd| fd >= 0) {
            let entry =
                opcode::MsgRingData::new(types::Fd(fd), 0, user_data(Op::Doorbell, 0, 0), None)
                    .build()
                    .flags(squeue::Flags::SKIP_SUCCESS)
                    .user_data(user_data(Op::DoorbellSent, 0, 0));
            // SAFETY: a message to another ring names no user memory.
            while unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.submit()?;
            }
            queued = true;
        }
        if queued {
            self.submit()?;
        }
        Ok(())
    }

    /// Submits; a full completion queue (EBUSY) is emptied first, a signal (EINTR) retried.
    fn submit(&mut self) -> io::Result<()> {
        for _ in 0..SUBMIT_TRIES {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => {
                    self.drain()
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("cluster bridge: its ring stayed busy"))
    }
}
