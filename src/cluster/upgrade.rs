//! A live upgrade's part in the cluster bridge: the old process stops handing its shards
//! stored messages at a known sequence, and fences them once the commands the bus has for
//! this node are in ([`Bridge::hold_store`], docs/handover.md, "On a cluster node").
#![forbid(unsafe_code)]

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::{FutureExt, StreamExt};

use super::{Bridge, Out, MESH_BATCH_MAX};
use crate::push::{Message, Msg};

/// How long a live upgrade's fence waits for the bridge's own marker to come back from the
/// bus (`Bridge::hold_store`); past it the fence goes out without it.
pub(super) const MARK_WAIT: Duration = Duration::from_secs(1);

/// The marker's subject after the reply prefix (presence replies there are numbers).
pub(super) const MARK: &str = "handover-";

/// A live upgrade's marker on its way through the bus (`Bridge::hold_store`).
pub(super) struct Mark {
    attempt: u32,
    sent: std::time::Instant,
    back: bool,
    /// The new process is on another bus server: the marker orders nothing, the fence
    /// waits the whole [`MARK_WAIT`].
    full_wait: bool,
}

impl Mark {
    /// The fence may go: the marker is back (and orders the commands), or [`MARK_WAIT`] is
    /// over.
    pub(super) fn due(&self) -> bool {
        (self.back && !self.full_wait) || self.sent.elapsed() >= MARK_WAIT
    }
}

impl Bridge {
    /// A live upgrade: every shard's clients have moved and a shard asks the bridge to
    /// stop handing it stored messages. The bridge stops (the reader's queue waits), notes
    /// where the new process reads on, and sends every shard a fence behind all it handed
    /// them, so the shards forward every message up to there before they finish.
    ///
    /// Commands from other nodes (`c10m.cmd`) reach both processes, each at its own pace:
    /// one the new process received before a connection it names arrived there must still
    /// reach the old shards while they forward. Every connection has arrived by now, so the
    /// bridge publishes a marker to its own inbox and sends the fence once the marker is
    /// back (or after [`MARK_WAIT`]): the bus server queued every such command for this
    /// node before the marker. That needs one server for both processes (the new one
    /// connects to this one's: [`super::connect`]); on two servers of a NATS cluster, whose routes
    /// deliver each at its own pace, the fence waits the whole [`MARK_WAIT`] instead.
    pub(super) fn hold_store(&mut self, attempt: u32) {
        if self.held == attempt {
            return; // Another shard's ask for the same handover.
        }
        self.held = attempt;
        self.stats.handover.release.store(false, Relaxed);
        let next = self.store_top + 1;
        self.stats.handover.next.store(next, Relaxed);
        tracing::info!(next, "handover: the history store is delivered up to {}", self.store_top);
        let payload = Box::default();
        let msg = Arc::new(Message { id: 0, seq: 0, part: 0, payload, text: true });
        let subject = format!("{}{MARK}{attempt}", self.reply_prefix);
        self.publish(Out { subject, reply: None, headers: HeaderMap::new(), msg });
        let (theirs, mine) = (self.stats.handover.peer_server(), self.stats.bus_server());
        let full_wait = !theirs.is_empty() && theirs != mine;
        if full_wait {
            tracing::warn!(
                "handover: the new process is on bus server {theirs}, this one on {mine}; \
                 the fence waits {} ms for commands their routes deliver late",
                MARK_WAIT.as_millis()
            );
        }
        let sent = std::time::Instant::now();
        self.mark = Some(Mark { attempt, sent, back: false, full_wait });
    }

    /// The marker is back (or its wait is over): what the bus delivered before it is in the
    /// other subscriptions' queues by now (one reader fills them in order), so it goes to
    /// the shards first, then the fence.
    pub(super) fn fence_after_mark(
        &mut self,
        subs: &mut (impl futures_util::Stream<Item = async_nats::Message> + Unpin),
    ) {
        let Some(mark) = self.mark.take() else { return };
        for _ in 0..MESH_BATCH_MAX {
            match subs.next().now_or_never() {
                Some(Some(m)) => self.on_bus(m),
                _ => break,
            }
        }
        let ms = mark.sent.elapsed().as_secs_f64() * 1000.0;
        if mark.full_wait {
            tracing::info!("handover: commands from the bus are in ({ms:.1} ms, the whole wait)");
        } else if mark.back {
            tracing::info!("handover: commands from the bus are in ({ms:.1} ms)");
        } else {
            tracing::warn!(
                "handover: this node's marker did not come back from the bus in {ms:.0} ms; \
                 fencing without it"
            );
        }
        for s in 0..self.mesh.shards() {
            self.send(s, Msg::Fence { round: 0, attempt: mark.attempt });
        }
    }

    /// A marker back from the bus: the one this upgrade waits for, if `attempt` is its.
    pub(super) fn on_mark(&mut self, attempt: &str) {
        if let Some(mark) = self.mark.as_mut() {
            mark.back |= attempt == mark.attempt.to_string();
        }
    }
}
