//! Accepting connections: the multishot accept, single-shot accepts where a peer's address
//! counts (per-source limits) or where every accept must be backed by a free slot of the
//! fixed-file table (near its end), and the cancel when listeners close.

use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use super::conn::{Conn, Kind};
use super::Shard;
use crate::metrics::bump;
use crate::ring::{user_data, Completion, Op};

/// Single-shot accepts kept armed per client listener when per-source limits are on: enough
/// to take a burst per loop turn without the multishot accept's batching.
pub const ACCEPT_SINGLE: usize = 8;

/// Slots beyond the listen backlog that a multishot accept needs free: connections that
/// complete their handshake while it drains the queue.
const MULTISHOT_MARGIN: u32 = 256;

/// Address-less single-shot accepts kept armed per listener near a full table: enough to
/// take a burst per loop turn on an overloaded shard.
pub const ACCEPT_TIGHT: usize = 64;

/// The `single` of an address-less single-shot accept (see [`Shard::on_accept`]).
const ACCEPT_PLAIN: u32 = 0xFFFF;

/// Where one single-shot accept writes its peer's address.
pub struct AcceptAddr {
    pub addr: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl Default for AcceptAddr {
    fn default() -> AcceptAddr {
        // SAFETY: sockaddr_storage is plain bytes; all zeroes is AF_UNSPEC.
        AcceptAddr { addr: unsafe { std::mem::zeroed() }, len: 0 }
    }
}

impl Shard {
    /// Arms the accepts of every listener that has none armed, unless the table is full or
    /// the shard is shutting down: one multishot accept; or [`ACCEPT_SINGLE`] single-shot
    /// accepts on client listeners when a per-source connect rate is set (unlike the
    /// multishot one, they report each peer's address); or, on every listener once the
    /// fixed-file table is nearly full, up to [`ACCEPT_TIGHT`] single-shot accepts without
    /// an address.
    ///
    /// Near the table's end every accept in flight is backed by a free slot: a multishot
    /// accept takes the whole listen queue in one go, and a connection the kernel accepts
    /// into a full table is closed unanswered (ENFILE), where it should have been told 503.
    /// Accepts wait exclusively (one wakes per connection), so many armed cost nothing.
    pub(super) fn arm_accepts(&mut self) {
        if self.now_ms < self.accept_blocked_until_ms || self.shutdown_deadline_ms.is_some() {
            return;
        }
        let per_source = self.shared.cfg.limits.accept_rate_per_source_per_s_max > 0;
        let free = self.free_slots();
        let tight = free <= self.multishot_floor();
        let singles: u32 =
            self.listeners.iter().map(|l| l.pending.count_ones() + u32::from(l.plain)).sum();
        let mut budget = free.saturating_sub(singles);
        for i in 0..self.listeners.len() {
            let l = &self.listeners[i];
            let Some(sock) = l.sock.as_ref() else { continue };
            if !self.handover_allows_accept(l.admin) {
                continue;
            }
            let fd = types::Fd(sock.as_raw_fd());
            let with_address = per_source && !l.admin;
            if (tight || with_address) && l.armed {
                // Its end (ECANCELED) clears `armed`; single-shot accepts follow then.
                self.stop_multishot(i);
                continue;
            }
            if tight && !with_address {
                while budget > 0 && usize::from(self.listeners[i].plain) < ACCEPT_TIGHT {
                    let entry = opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                        .file_index(Some(types::DestinationSlot::auto_target()))
                        .build()
                        .user_data(user_data(Op::Accept, ACCEPT_PLAIN, i as u32));
                    // SAFETY: an accept without an address names no user memory.
                    unsafe { self.ring.push(&entry) };
                    self.listeners[i].plain += 1;
                    budget -= 1;
                }
                continue;
            }
            if with_address {
                for k in 0..ACCEPT_SINGLE {
                    if budget == 0 {
                        break;
                    }
                    if self.listeners[i].pending & (1 << k) != 0 {
                        continue;
                    }
                    let a = &mut self.accept_addrs[i * ACCEPT_SINGLE + k];
                    a.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                    let entry = opcode::Accept::new(
                        fd,
                        (&raw mut a.addr).cast::<libc::sockaddr>(),
                        &raw mut a.len,
                    )
                    .file_index(Some(types::DestinationSlot::auto_target()))
                    .build()
                    .user_data(user_data(Op::Accept, k as u32 + 1, i as u32));
                    // SAFETY: the address slot is owned by the shard, which drops its ring
                    // (so no accept is in flight) before it; the slot is not reused until
                    // this accept completes (its `pending` bit).
                    unsafe { self.ring.push(&entry) };
                    self.listeners[i].pending |= 1 << k;
                    budget -= 1;
                }
                continue;
            }
            if l.armed {
                continue;
            }
            let entry = opcode::AcceptMulti::new(fd)
                .allocate_file_index(true)
                .build()
                .user_data(user_data(Op::Accept, 0, i as u32));
            // SAFETY: a multishot accept into the fixed table names no user memory.
            unsafe { self.ring.push(&entry) };
            let l = &mut self.listeners[i];
            l.armed = true;
            l.stopping = false;
        }
    }

    /// Fixed-file slots not held by a connection or by a refusal still being answered.
    fn free_slots(&self) -> u32 {
        let held = self.conns.len() as u64 + self.refusing as u64;
        (self.ring.files() as u64).saturating_sub(held) as u32
    }

    /// Free slots at or below which accepts go single-shot: a multishot accept may take a
    /// full listen queue, and what arrives while it runs, before the shard sees any of it.
    fn multishot_floor(&self) -> u32 {
        self.shared.cfg.limits.listen_backlog.saturating_add(MULTISHOT_MARGIN)
    }

    /// Ends the multishot accepts, so that the next turn arms them anew, and a new accept
    /// first takes what waits in the listen queue. A live upgrade's new process does this
    /// once the old one is gone: the kernel wakes one accept per connection, and a wakeup
    /// that went to the old process's accept as it was cancelled would leave its connection
    /// waiting in the queue until the next one arrives.
    pub(super) fn restart_accepts(&mut self) {
        for i in 0..self.listeners.len() {
            if self.listeners[i].sock.is_some() && self.listeners[i].armed {
                self.stop_multishot(i);
            }
        }
    }

    /// Cancels listener `i`'s multishot accept, once.
    fn stop_multishot(&mut self, i: usize) {
        if std::mem::replace(&mut self.listeners[i].stopping, true) {
            return;
        }
        self.cancel_op(Op::Accept, 0, i as u32);
    }

    /// Stops accepting: cancels the accepts and closes the listeners, the client ones only
    /// when `clients_only` (a drain keeps the admin API reachable until it ends).
    pub(super) fn cancel_accepts(&mut self, clients_only: bool) {
        let mut cancelled = false;
        for i in 0..self.listeners.len() {
            let l = &self.listeners[i];
            let Some(sock) = l.sock.as_ref() else { continue };
            if clients_only && l.admin {
                continue;
            }
            let builder = types::CancelBuilder::fd(types::Fd(sock.as_raw_fd())).all();
            let entry = opcode::AsyncCancel2::new(builder).build().user_data(user_data(
                Op::Cancel,
                0,
                u32::MAX,
            ));
            // SAFETY: a cancel names no user memory.
            unsafe { self.ring.push(&entry) };
            cancelled = true;
        }
        if !cancelled {
            return;
        }
        // Submit the cancels before the sockets close, so the accepts end with ECANCELED.
        let _ = self.ring.submit_and_wait(std::time::Duration::ZERO);
        for l in &mut self.listeners {
            if !(clients_only && l.admin) {
                l.sock = None;
            }
        }
    }

    /// `single` is 0 for the multishot accept, k + 1 for single-shot accept k (with an
    /// address slot), [`ACCEPT_PLAIN`] for one without.
    pub(super) fn on_accept(&mut self, listener: u32, single: u32, c: Completion) {
        let Some(l) = self.listeners.get_mut(listener as usize) else {
            return;
        };
        let mut source = None;
        if single == 0 {
            if !c.more() {
                l.armed = false;
            }
        } else if single == ACCEPT_PLAIN {
            l.plain = l.plain.saturating_sub(1);
        } else {
            let k = single as usize - 1;
            l.pending &= !(1u8 << k);
            if c.result >= 0 {
                let a = &self.accept_addrs[listener as usize * ACCEPT_SINGLE + k];
                source = super::lifecycle::source_key(a);
            }
        }
        let (admin, compress) = (l.admin, l.compress);
        if l.sock.is_none() && c.result >= 0 {
            // Accepted just before the cancel: the listener is closed, so is this.
            return self.refuse(c.result as u32, admin);
        }
        if c.result < 0 {
            if c.result == -libc::ENFILE {
                // Every slot of the fixed-file table is taken: new connections wait in the
                // listen queue until one closes.
                bump(&self.stats().accepts_refused, 1);
                // A close frees a slot and lifts this at once; the deadline makes sure a
                // close that completed just before this answer cannot leave it stuck.
                self.accept_blocked_until_ms = self.now_ms + super::TICK_MS;
            }
            return;
        }
        let fd = c.result as u32;
        bump(&self.stats().accepts, 1);
        if !admin && source.is_some_and(|key| !self.admit_source(key)) {
            return self.refuse_with(fd, false, super::io::REFUSAL_SOURCE);
        }
        if !admin && !self.admit_connection() {
            return self.refuse(fd, admin);
        }
        let kind = if admin { Kind::Admin } else { Kind::Handshake };
        let mut conn = Conn::new(fd, kind, self.live.now_ms);
        if !compress {
            conn.ws = crate::proto::ws::Session::without_compression();
        }
        match self.conns.insert(conn) {
            Ok((slot, generation)) => {
                let stats = self.stats();
                bump(if admin { &stats.conns_admin } else { &stats.conns_handshake }, 1);
                let l = &self.shared.cfg.limits;
                let at = self.now_ms
                    + if admin { l.idle_timeout_ms.max(1) } else { l.handshake_timeout_ms };
                if !admin || l.idle_timeout_ms > 0 {
                    self.schedule(slot, generation, at);
                }
                if !admin && !self.tls_accept(slot, generation) {
                    return;
                }
                self.arm_poll(slot, generation);
            }
            Err(_) => {
                bump(&self.stats().accepts_refused, 1);
                self.refuse(fd, admin);
            }
        }
    }
}
