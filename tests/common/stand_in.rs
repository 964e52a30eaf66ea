//! A stand-in successor's end of the handover channels (the library's own takeover gives
//! them): it reads what the old shards send, as a new process would, but decides itself
//! what to acknowledge, so tests can stall, refuse or abandon a handover.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use c10m::handover::record::{self, Forward};
use c10m::handover::{Inherited, Successor};

/// What the old process sent on one channel.
#[derive(Debug)]
pub enum FromOld {
    /// A batch of `conns` connections (their descriptors are closed here; the old process
    /// keeps its own until the ack).
    Batch { seq: u32, conns: usize },
    /// A whole forwarded message holding `commands` user commands (and maybe publishes).
    Commands(usize),
}

/// A takeover (its control connection, listeners and channels, all closed when this is
/// dropped, as a SIGKILL would) and what arrived on its channels in pieces.
pub struct StandIn {
    inh: Inherited,
    pieces: Vec<Vec<u8>>,
}

impl StandIn {
    /// Takes over from the server at control socket `path` as `me` and says ready, so the
    /// old shards begin to hand over.
    pub fn take_over(path: &Path, me: &Successor<'_>) -> StandIn {
        let inh = c10m::handover::take_over(path, me).expect("the old process welcomes it");
        c10m::handover::send_with_fds(inh.control.as_raw_fd(), br#"{"ready":true}"#, &[], false)
            .expect("ready");
        let pieces = inh.channels.iter().map(|_| Vec::new()).collect();
        StandIn { inh, pieces }
    }

    /// The next batch on any channel, within `limit`: `(channel, seq, connections)`.
    pub fn batch(&mut self, limit: Duration) -> (usize, u32, usize) {
        match self.next(limit) {
            (chan, FromOld::Batch { seq, conns }) => (chan, seq, conns),
            other => panic!("a batch, got {other:?}"),
        }
    }

    /// The next batch or forwarded commands on any channel, within `limit`: `(channel,
    /// what)`. Each old shard's probe (an empty batch) is acknowledged on the way, as a new
    /// shard does once it has started, so the old shards go on to their batches.
    pub fn next(&mut self, limit: Duration) -> (usize, FromOld) {
        let (mut buf, mut fds) = (vec![0u8; 1 << 20], Vec::new());
        let mut seen = Vec::new();
        super::wait_until_or("a batch or commands from the old process", limit, &mut seen, |seen| {
            for i in 0..self.inh.channels.len() {
                let chan = self.inh.channels[i].as_raw_fd();
                fds.clear();
                let n = match c10m::handover::recv_with_fds(chan, &mut buf, &mut fds, true) {
                    Ok(Some(n)) if n > 0 => n,
                    _ => continue,
                };
                seen.push(buf[0] as char);
                match buf[0] {
                    record::MSG_BATCH if n >= 5 => {
                        let seq = u32::from_le_bytes(buf[1..5].try_into().unwrap());
                        if fds.is_empty() {
                            self.ack(i, seq, &[]);
                            continue;
                        }
                        return Some((i, FromOld::Batch { seq, conns: fds.len() }));
                    }
                    record::MSG_FORWARD if n >= 2 => {
                        self.pieces[i].extend_from_slice(&buf[2..n]);
                        if buf[1] != 1 {
                            continue;
                        }
                        let body = std::mem::take(&mut self.pieces[i]);
                        let all = Forward::decode_all(&body).expect("well-formed forwards");
                        let commands =
                            all.iter().filter(|f| f.stream == record::STREAM_COMMAND).count();
                        if commands > 0 {
                            return Some((i, FromOld::Commands(commands)));
                        }
                    }
                    _ => {}
                }
            }
            None
        })
    }

    /// Answers batch `seq` on channel `chan`: `taken[i]` for its i-th connection.
    pub fn ack(&self, chan: usize, seq: u32, taken: &[bool]) {
        let mut out = Vec::new();
        record::encode_ack(seq, taken, &mut out);
        let fd = self.inh.channels[chan].as_raw_fd();
        c10m::handover::send_with_fds(fd, &out, &[], false).expect("ack");
    }
}
