//! Liveness: when a WebSocket client is judged gone, without blaming it for the server's own
//! load. The shard meets this module at a few calls: [`Liveness::advance`] whenever the loop
//! reads the clock, [`on_ws_timer`] when a client's timer fires, [`on_kernel_queue`] with the
//! answer to a kernel-queue question, and [`decide`] once per loop turn.
//!
//! The rules, each of which closes a way a live client used to be timed out:
//!
//! 1. **A liveness clock.** Client deadlines (pong, idle, handshake) run on a clock that advances by at
//!    most [`STEP_CREDIT_MS_MAX`] each time the loop reads the time. A shard that stalls (CPU
//!    starvation, SIGSTOP, a turn spent on a huge broadcast) does not count the stall against
//!    its clients; what it did not count is in `c10m_liveness_uncredited_ms_total`.
//! 2. **A ping's deadline runs once the ping has left.** A ping queued behind an outbox starts
//!    its clock when its last byte was handed to the kernel (`Outbox::ping_end`); until then
//!    the client is judged by whether its outbox drains (`Outbox::last_tx`).
//! 3. **Any bytes are a sign of life**: a pong, any other frame, or the socket becoming
//!    readable (the shard stamps `last_rx` on each).
//! 4. **The kernel is asked before a verdict.** When a pong is overdue, or a ping still waits
//!    behind an outbox that sent nothing for a pong timeout, SIOCOUTQ tells how many bytes
//!    the client has not acknowledged. More than
//!    [`KERNEL_QUEUE_SLACK_BYTES`] means the ping sits behind a backlog: if that backlog
//!    shrank since the last look (or this is the first look), the client is still reading
//!    its way to the ping and gets another `pong_timeout_ms`.
//! 5. **Verdicts wait for the end of a window** ([`WINDOW_MS`]) and are taken together. When
//!    more of them fall in one window than a healthy shard produces, the mass-timeout guard
//!    postpones them all; otherwise they are closed, at most [`CLOSES_PER_TURN_MAX`] per loop
//!    turn, so a close wave cannot starve the loop.
//!
//! **The guard.** It engages when one window holds at least `mass_timeout_min` verdicts
//! *and* more than half of the pongs the shard expects per window (its WebSocket connections
//! × `WINDOW_MS / ping_interval_ms`): with 30 s pings, 1.7 % of the shard's connections
//! failing within one second. Phones that die on their own do so a few at a time; so many at
//! once means the host, the NIC or the path failed, and closing would only start a reconnect
//! storm. Engaged, it postpones every verdict for `pong_timeout_ms` (the pong deadline starts
//! again; a client that answers is kept), logs once, and counts
//! (`c10m_mass_timeout_guards_total`, `c10m_liveness_postponed_total`). Its engagement lasts
//! `pong_timeout_ms`; it cannot engage again for [`rearm_ms`] after that, so a postponed
//! connection's next verdict falls in that pause and is carried out: a dead peer is closed at
//! most `ping_interval_ms + 4 × pong_timeout_ms + 2 × WINDOW_MS` after its last sign of life
//! (one pong wait, one kernel-queue extension, one postponement and its repeated kernel
//! look), plus timer rounding. With the defaults that is about 72 s.

use std::collections::HashMap;

use super::conn::{elapsed_ms, stamp, Chunk, Closing, Conn, Kind};
use super::Shard;
use crate::config::Limits;
use crate::metrics::{bump, CloseReason};

/// The most the liveness clock advances in one step, however long the step took: a bit more
/// than the longest a healthy shard waits between two looks at the clock (one 100 ms tick).
pub const STEP_CREDIT_MS_MAX: u64 = 250;
/// Verdicts gathered before the shard decides on them together.
pub const WINDOW_MS: u64 = 1_000;
/// Liveness closes carried out per loop turn; the rest wait for the next turn.
pub const CLOSES_PER_TURN_MAX: usize = 256;
/// Unacknowledged bytes the kernel may hold for a client whose ping is all that is left
/// in flight: the ping itself (2 bytes, 24 as a TLS record) and a small frame after it.
pub const KERNEL_QUEUE_SLACK_BYTES: i32 = 64;
/// A WebSocket ping with no payload.
pub const PING_FRAME: &[u8] = &[0x89, 0x00];

const _: () = assert!(STEP_CREDIT_MS_MAX > super::TICK_MS);
const _: () = assert!(WINDOW_MS >= super::TICK_MS);

/// The pause after an engagement of the guard during which it cannot engage again, so every
/// connection it postponed gets its verdict carried out.
pub fn rearm_ms(l: &Limits) -> u64 {
    3 * l.pong_timeout_ms + 2 * WINDOW_MS
}

/// What a client's timer finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Alive: look again after this many liveness milliseconds.
    Wait(u64),
    /// Time for a ping.
    Ping,
    /// The pong is overdue, or the outbox has not drained for a pong timeout: ask the
    /// kernel's send queue.
    AskKernel,
    /// Gone, for this reason (the verdict still waits for its window).
    Dead(CloseReason),
}

/// Judges a WebSocket connection at liveness time `live_ms`. Pure: no clock, no socket.
pub fn judge(conn: &Conn, l: &Limits, live_ms: u64) -> Verdict {
    let since_rx = elapsed_ms(live_ms, conn.last_rx);
    if l.idle_timeout_ms > 0 && since_rx >= l.idle_timeout_ms {
        return Verdict::Dead(CloseReason::IdleTimeout);
    }
    let idle_left = if l.idle_timeout_ms > 0 { l.idle_timeout_ms - since_rx } else { u64::MAX };
    let wait = |ms: u64| Verdict::Wait(ms.min(idle_left).max(1));
    if !conn.awaiting_pong {
        let since_ping = elapsed_ms(live_ms, conn.last_ping);
        if since_ping >= l.ping_interval_ms {
            return Verdict::Ping;
        }
        return wait(l.ping_interval_ms - since_ping);
    }
    let out = conn.outbox.as_deref();
    if let Some(o) = out.filter(|o| o.ping_end > 0) {
        // The ping has not left: the client is judged by whether its outbox drains. A send
        // blocked on a full socket completes only once a third of the buffer is free, so a
        // slow reader can go a while without one: the kernel's queue has the last word.
        let since_tx = elapsed_ms(live_ms, o.last_tx);
        if since_tx >= l.pong_timeout_ms {
            return Verdict::AskKernel;
        }
        return wait(l.pong_timeout_ms - since_tx);
    }
    // The ping left at `last_ping`; bytes queued after it still draining count too.
    let mut quiet = elapsed_ms(live_ms, conn.last_ping);
    if let Some(o) = out {
        quiet = quiet.min(elapsed_ms(live_ms, o.last_tx));
    }
    if quiet < l.pong_timeout_ms {
        return wait(l.pong_timeout_ms - quiet);
    }
    Verdict::AskKernel
}

/// A verdict waiting for its window, or a close waiting for its turn.
#[derive(Debug, Clone, Copy)]
struct Doomed {
    slot: u32,
    generation: u32,
    reason: CloseReason,
}

/// A shard's liveness state: its clock, its loop-lag figures and its pending verdicts.
#[derive(Default)]
pub struct Liveness {
    /// The liveness clock, in milliseconds.
    pub now_ms: u64,
    /// Real shard milliseconds at the last [`Liveness::advance`].
    real_ms: u64,
    /// When the current wait was asked to end at the latest (real ms).
    wake_due_ms: u64,
    /// When the current turn's work began (real ms), after the wait.
    turn_began_ms: u64,
    /// Worst lateness and longest turn in the current second, and when that second began.
    lag_max_ms: u64,
    turn_max_ms: u64,
    second_began_ms: u64,
    /// Verdicts of the current window, and when it ends (real ms).
    verdicts: Vec<Doomed>,
    window_end_ms: u64,
    /// Verdicts decided on, closed a budget per turn.
    closing: std::collections::VecDeque<Doomed>,
    /// The guard postpones verdicts until this time (real ms), and may not engage again
    /// before `guard_rearm_ms`.
    guard_until_ms: u64,
    guard_rearm_ms: u64,
    /// The kernel's unacknowledged bytes at the last look, by slot (with the generation),
    /// for connections whose overdue ping sits behind a backlog. Usually empty.
    kernel_queue: HashMap<u32, (u32, u32)>,
}

impl Liveness {
    /// Moves the liveness clock to real time `real_ms`, crediting at most
    /// [`STEP_CREDIT_MS_MAX`]; returns the milliseconds not credited.
    pub fn advance(&mut self, real_ms: u64) -> u64 {
        let step = real_ms.saturating_sub(self.real_ms);
        self.real_ms = self.real_ms.max(real_ms);
        let credit = step.min(STEP_CREDIT_MS_MAX);
        self.now_ms += credit;
        step - credit
    }

    /// The loop is about to wait until `due_ms` at the latest.
    pub fn before_wait(&mut self, now_ms: u64, due_ms: u64) {
        self.turn_max_ms = self.turn_max_ms.max(now_ms.saturating_sub(self.turn_began_ms));
        self.wake_due_ms = due_ms;
    }

    /// The loop woke at `now_ms`. Returns the last full second's (worst lateness, longest
    /// turn) when a second has just ended.
    pub fn after_wait(&mut self, now_ms: u64) -> Option<(u64, u64)> {
        self.lag_max_ms = self.lag_max_ms.max(now_ms.saturating_sub(self.wake_due_ms));
        self.turn_began_ms = now_ms;
        if now_ms < self.second_began_ms + 1_000 {
            return None;
        }
        self.second_began_ms = now_ms;
        let figures = (self.lag_max_ms, self.turn_max_ms);
        (self.lag_max_ms, self.turn_max_ms) = (0, 0);
        Some(figures)
    }

    /// Work is waiting: the loop must not sleep.
    pub fn busy(&self) -> bool {
        !self.closing.is_empty()
    }

    /// A connection is gone: forget what was remembered of it.
    pub fn forget(&mut self, slot: u32) {
        if !self.kernel_queue.is_empty() {
            self.kernel_queue.remove(&slot);
        }
    }
}

/// A WebSocket client's timer fired: ping, wait, ask the kernel, or record a verdict.
pub(super) fn on_ws_timer(shard: &mut Shard, slot: u32, generation: u32) {
    let live = shard.live.now_ms;
    let Some(conn) = shard.conns.get(slot, generation) else { return };
    if shard.handover_holds_sends(slot, conn) {
        // Frozen for a live upgrade: it is not read, so nothing from its client can be heard;
        // it is judged after the move (with its ages as of the freeze), or here if it stays.
        return shard.schedule(slot, generation, shard.now_ms + 1000);
    }
    match judge(conn, &shard.shared.cfg.limits, live) {
        Verdict::Wait(_) => shard.schedule_ws(slot, generation),
        Verdict::Ping => {
            // A `format=json` client cannot see pings: it gets its position with each.
            shard.send_position(slot, generation);
            if shard.queue(slot, generation, Chunk::Static(PING_FRAME)) {
                if let Some(conn) = shard.conns.get_mut(slot, generation) {
                    conn.awaiting_pong = true;
                    if let Some(out) = conn.outbox.as_mut() {
                        out.ping_end = out.bytes;
                    }
                }
            }
            shard.schedule_ws(slot, generation);
        }
        Verdict::AskKernel => shard.ask_kernel_queue(slot, generation),
        Verdict::Dead(reason) => shard.live.verdicts.push(Doomed { slot, generation, reason }),
    }
}

/// The kernel's answer to [`Shard::ask_kernel_queue`]: `result` unacknowledged bytes, or an
/// error.
pub(super) fn on_kernel_queue(shard: &mut Shard, slot: u32, generation: u32, result: i32) {
    let live = shard.live.now_ms;
    let Some(conn) = shard.conns.get_mut(slot, generation) else { return };
    if !conn.is_open() {
        return;
    }
    if !conn.awaiting_pong {
        // Answered meanwhile.
        shard.live.kernel_queue.remove(&slot);
        return shard.schedule_ws(slot, generation);
    }
    let bytes = result.max(0) as u32;
    // The reading stays with a verdict: a postponed connection is judged against it next time.
    let seen = shard.live.kernel_queue.insert(slot, (generation, bytes));
    let stalled = seen.is_some_and(|(g, before)| g == generation && bytes >= before);
    if result <= KERNEL_QUEUE_SLACK_BYTES || stalled {
        // Nothing but the ping in flight, or a backlog that did not shrink since the last look.
        let reason = CloseReason::PingTimeout;
        return shard.live.verdicts.push(Doomed { slot, generation, reason });
    }
    // Still reading its way to the ping: another pong timeout from now.
    conn.last_ping = stamp(live);
    if let Some(out) = conn.outbox.as_mut() {
        out.last_tx = stamp(live);
    }
    bump(&shard.stats().liveness_draining, 1);
    shard.schedule_ws(slot, generation);
}

/// Once per loop turn: at the end of a window, postpones its verdicts (guard) or queues them
/// for closing; then closes up to [`CLOSES_PER_TURN_MAX`] of the queued ones.
pub(super) fn decide(shard: &mut Shard) {
    let now = shard.now_ms;
    if now >= shard.live.window_end_ms {
        shard.live.window_end_ms = now + WINDOW_MS;
        let verdicts = std::mem::take(&mut shard.live.verdicts);
        if !verdicts.is_empty() {
            decide_window(shard, &verdicts);
        }
    }
    let mut budget = CLOSES_PER_TURN_MAX;
    while budget > 0 {
        let Some(d) = shard.live.closing.pop_front() else { break };
        if still_doomed(shard, d) {
            budget -= 1;
            carry_out(shard, d);
        } else {
            revive(shard, d);
        }
    }
}

fn decide_window(shard: &mut Shard, verdicts: &[Doomed]) {
    let now = shard.now_ms;
    let l = &shard.shared.cfg.limits;
    let engaged = now < shard.live.guard_until_ms;
    let conns = shard.stats().conns_ws.load(std::sync::atomic::Ordering::Relaxed);
    let expected = conns.saturating_mul(WINDOW_MS) / l.ping_interval_ms.max(1);
    let min = l.mass_timeout_min as u64;
    let mass = min > 0 && verdicts.len() as u64 >= min.max(expected / 2 + 1);
    if !engaged && mass && now >= shard.live.guard_rearm_ms {
        shard.live.guard_until_ms = now + l.pong_timeout_ms;
        shard.live.guard_rearm_ms = shard.live.guard_until_ms + rearm_ms(l);
        bump(&shard.stats().mass_timeout_guards, 1);
        // Once per engagement: the guard re-arms only after `rearm_ms`.
        tracing::warn!(
            shard = shard.id,
            timeouts = verdicts.len(),
            window_ms = WINDOW_MS,
            connections = conns,
            "mass-timeout guard: {} liveness timeouts in {} ms (a healthy shard expects under \
             {}): postponing them for {} ms; this looks like a stalled host or network, not \
             dead clients",
            verdicts.len(),
            WINDOW_MS,
            min.max(expected / 2 + 1),
            l.pong_timeout_ms
        );
    }
    let postpone = now < shard.live.guard_until_ms;
    for &d in verdicts {
        if !still_doomed(shard, d) {
            revive(shard, d);
        } else if postpone {
            let live = shard.live.now_ms;
            // The deadline that ran out starts again.
            if let Some(conn) = shard.conns.get_mut(d.slot, d.generation) {
                if d.reason == CloseReason::IdleTimeout {
                    conn.last_rx = stamp(live);
                } else {
                    conn.last_ping = stamp(live);
                    if let Some(out) = conn.outbox.as_mut() {
                        out.last_tx = stamp(live);
                    }
                }
            }
            bump(&shard.stats().timeouts_postponed, 1);
            shard.schedule_ws(d.slot, d.generation);
        } else {
            shard.live.closing.push_back(d);
        }
    }
}

/// A verdict that no longer holds: the connection, if still open, gets its timer back.
fn revive(shard: &mut Shard, d: Doomed) {
    let open = shard.conns.get(d.slot, d.generation).is_some_and(|c| c.closing == Closing::Open);
    if open {
        shard.schedule_ws(d.slot, d.generation);
    }
}

/// Whether a verdict still holds: the connection is open and still silent.
fn still_doomed(shard: &Shard, d: Doomed) -> bool {
    let Some(conn) = shard.conns.get(d.slot, d.generation) else { return false };
    if conn.closing != Closing::Open || !matches!(conn.kind, Kind::Ws | Kind::Echo) {
        return false;
    }
    match judge(conn, &shard.shared.cfg.limits, shard.live.now_ms) {
        Verdict::Dead(_) => true,
        // The verdict came from the kernel's queue, which `judge` does not see.
        Verdict::AskKernel => d.reason == CloseReason::PingTimeout,
        Verdict::Wait(_) | Verdict::Ping => false,
    }
}

fn carry_out(shard: &mut Shard, d: Doomed) {
    match d.reason {
        CloseReason::IdleTimeout => super::client::close_ws(
            shard,
            d.slot,
            d.generation,
            1001,
            "idle timeout",
            CloseReason::IdleTimeout,
        ),
        reason => shard.reset(d.slot, d.generation, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::conn::Outbox;

    fn limits() -> Limits {
        Limits {
            ping_interval_ms: 30_000,
            pong_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            ..Limits::default()
        }
    }

    fn conn_at(ms: u64) -> Conn {
        Conn::new(0, Kind::Ws, ms)
    }

    #[test]
    fn pings_when_due_and_waits_otherwise() {
        let l = limits();
        let c = conn_at(1_000);
        assert_eq!(judge(&c, &l, 1_000), Verdict::Wait(30_000));
        assert_eq!(judge(&c, &l, 31_000), Verdict::Ping);
    }

    #[test]
    fn a_ping_that_has_not_left_does_not_run_the_pong_deadline() {
        let l = limits();
        let mut c = conn_at(0);
        c.awaiting_pong = true;
        c.last_ping = stamp(0);
        c.last_rx = stamp(0);
        let out = Outbox {
            ping_end: 500_000,
            bytes: 600_000,
            last_tx: stamp(50_000),
            ..Default::default()
        };
        c.outbox = Some(Box::new(out));
        // 55 s after the ping was queued, but the outbox sent bytes 5 s ago: alive.
        assert_eq!(judge(&c, &l, 55_000), Verdict::Wait(5_000));
        // Nothing drained for a whole pong timeout: the kernel's queue decides.
        assert_eq!(judge(&c, &l, 60_000), Verdict::AskKernel);
    }

    #[test]
    fn after_the_ping_left_the_deadline_runs_and_then_the_kernel_is_asked() {
        let l = limits();
        let mut c = conn_at(0);
        c.awaiting_pong = true;
        c.last_ping = stamp(30_000);
        assert_eq!(judge(&c, &l, 35_000), Verdict::Wait(5_000));
        assert_eq!(judge(&c, &l, 40_000), Verdict::AskKernel);
        // Bytes after the ping still draining count as drain.
        let out = Outbox { bytes: 10, last_tx: stamp(39_000), ..Default::default() };
        c.outbox = Some(Box::new(out));
        assert_eq!(judge(&c, &l, 40_000), Verdict::Wait(9_000));
        assert_eq!(judge(&c, &l, 49_000), Verdict::AskKernel);
    }

    #[test]
    fn idle_timeout_runs_on_received_bytes() {
        let l = limits();
        let c = conn_at(0);
        assert_eq!(judge(&c, &l, 119_999), Verdict::Ping);
        assert_eq!(judge(&c, &l, 120_000), Verdict::Dead(CloseReason::IdleTimeout));
        let off = Limits { idle_timeout_ms: 0, ..limits() };
        assert_eq!(judge(&c, &off, 120_000), Verdict::Ping);
    }

    #[test]
    fn the_clock_credits_at_most_one_step() {
        let mut live = Liveness::default();
        assert_eq!(live.advance(100), 0);
        assert_eq!(live.now_ms, 100);
        // A 15 s stop counts as one step's credit.
        assert_eq!(live.advance(15_100), 15_000 - STEP_CREDIT_MS_MAX);
        assert_eq!(live.now_ms, 100 + STEP_CREDIT_MS_MAX);
        // Time never runs backwards.
        assert_eq!(live.advance(15_000), 0);
        assert_eq!(live.now_ms, 100 + STEP_CREDIT_MS_MAX);
    }

    #[test]
    fn lag_figures_roll_over_each_second() {
        let mut live = Liveness::default();
        live.before_wait(0, 100);
        assert_eq!(live.after_wait(130), None);
        live.before_wait(170, 270);
        assert_eq!(live.after_wait(1_300), Some((1_030, 40)));
        live.before_wait(1_310, 1_410);
        assert_eq!(live.after_wait(1_410), None);
    }
}
