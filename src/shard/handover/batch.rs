//! The old shard's batches: which connections go next, their freeze, their export
//! (IORING_OP_FIXED_FD_INSTALL and one SCM_RIGHTS message), the ack, and what happens to a
//! connection the new process does not take.

use super::*;

/// A batch frozen this long (freeze to ack) is logged with where its time went.
const SLOW_FREEZE_US: u64 = 100_000;

/// User commands kept for an exported connection: its user's name and the command.
pub(super) type HeldCommands = Vec<(Box<str>, crate::push::Command)>;

impl Shard {
    /// Freezes a connection picked for the batch: nothing of it is read any more (its poll
    /// stays armed: a completion is not acted on, and cancelling one poll among thousands
    /// costs the kernel a hash-chain walk), and a send waiting on a client that does not
    /// read is cancelled (it has sent nothing: a send that sent some completes at once), so
    /// its queued bytes move with it.
    pub(super) fn freeze(&mut self, slot: u32, generation: u32) {
        let Some(c) = self.conns.get(slot, generation) else { return };
        let send = c.outbox.as_ref().is_some_and(|o| o.in_flight);
        if c.kind != Kind::Admin {
            self.handover.frozen.insert(slot);
        }
        if send {
            self.handover.sends_cancelled.insert(slot);
            self.cancel_op(Op::Send, generation, slot);
        }
    }

    /// A frozen connection that will not go with this batch is read again and sends on.
    pub(super) fn unfreeze(&mut self, slot: u32, generation: u32) {
        if self.handover.frozen.remove(&slot) {
            self.arm_poll(slot, generation);
            self.submit_send(slot, generation);
        }
    }

    /// Whether a connection can go with a batch now (`frozen`: its poll and held send are
    /// cancelled already), later, or never.
    pub(super) fn movable(&self, slot: u32, generation: u32, conn: &Conn, frozen: bool) -> Movable {
        if !conn.is_open() || self.handover.refused.contains(&slot) {
            return Movable::Never;
        }
        let Some(_) = kind_code(conn.kind) else {
            return if conn.kind == Kind::Handshake { Movable::Later } else { Movable::Never };
        };
        // An established TLS session moves with its record state; one that failed does not.
        let tls_stuck =
            self.tls.has(slot, generation) && self.tls.export(slot, generation).is_none();
        if tls_stuck {
            return Movable::Never;
        }
        if (conn.kind == Kind::Admin) != self.handover.admin_turn {
            return Movable::Later;
        }
        // A send waiting on the client is what the freeze cancels; a poll may stay armed.
        let ops = match frozen {
            true => quiet_soon(conn),
            false => conn.recv_armed || conn.cancel_armed,
        };
        let busy = ops
            || conn.partial.is_some()
            || conn.ws.handover_byte().is_none()
            || self.resuming.contains_key(&slot);
        if busy {
            Movable::Later
        } else {
            Movable::Now
        }
    }

    /// Old side: freezes the next batch, exports it once quiet, or finishes when nothing is
    /// left.
    pub(super) fn move_some(&mut self) {
        self.handover.look_soon = true;
        if self.shared.placements.load(Ordering::SeqCst) > 0 {
            // A connection on its way between two shards (placement) arrives first, to be
            // swept with the others there.
            return;
        }
        if !self.my_turn() {
            // Asleep until the probes are in or a shard ahead is done (either rings this
            // one), or the next tick.
            self.handover.look_soon = false;
            return;
        }
        match self.handover.batch.as_ref() {
            Some(b) if !b.installing => return self.export_frozen(),
            Some(_) => {
                self.handover.look_soon = false;
                return;
            }
            None => {}
        }
        // Descriptors for this batch, from the process's budget; none left: look again
        // next turn, once other shards' batches are acknowledged.
        let want = batch_conns(self.shards(), self.shared.hub.lanes);
        let Some(allowed) = self.take_fds(want) else { return };
        let mut picked = Vec::new();
        let (mut later, mut too_big) = (0usize, 0usize);
        // A batch is one SOCK_SEQPACKET message: its records stay under BATCH_BYTES_MAX
        // (checked again at the export: publishes queue meanwhile).
        let mut bytes = 0usize;
        let bound = self.conns.slot_bound();
        let mut slot = self.handover.cursor;
        while slot < bound && picked.len() < allowed {
            if let Some((generation, conn)) = self.conns.get_at(slot) {
                if !self.handover.exported.contains(&slot) {
                    match self.movable(slot, generation, conn, false) {
                        Movable::Now => {
                            let cost = self.record_bytes(slot, generation, conn);
                            if cost > handover::BATCH_BYTES_MAX {
                                // More queued than one message carries: it sends on and
                                // is looked at again (or closed with a goaway at the end).
                                too_big += 1;
                            } else if bytes + cost > handover::BATCH_BYTES_MAX {
                                break;
                            } else {
                                bytes += cost;
                                picked.push((slot, generation));
                            }
                        }
                        Movable::Later => later += 1,
                        Movable::Never => {}
                    }
                }
            }
            slot += 1;
        }
        self.give_fds(allowed - picked.len());
        let wrapped = slot >= bound;
        self.handover.cursor = if wrapped { 0 } else { slot };
        if picked.is_empty() {
            if wrapped {
                self.nothing_left(later, too_big);
            }
            return;
        }
        self.handover.stalled_since_ms = 0;
        self.handover.frozen_at_ms = self.live.now_ms;
        for &(slot, generation) in &picked {
            self.freeze(slot, generation);
        }
        self.handover.batch_seq += 1;
        self.handover.batch = Some(OutBatch {
            conns: picked,
            installing: false,
            frozen_at_us: self.precise_us(),
            fds: Vec::new(),
            installs_left: 0,
            sent: None,
            sent_at_us: 0,
            seq: self.handover.batch_seq,
        });
        self.export_frozen();
    }

    /// Whether this shard may move its clients now. Shards take turns, in order, at most
    /// one per core at once: with more shards than cores, every batch in flight would wait
    /// for the scheduler behind all the others (1,000,000 connections on 53 shards and 2
    /// cores: a batch frozen p50 118 ms, all shards at once), while a few at a time keep
    /// each batch's round trip to its own work. The admin connections' turn (every shard
    /// at once) is not limited.
    fn my_turn(&mut self) -> bool {
        if self.handover.turn || self.handover.admin_turn {
            return true;
        }
        // The start first: every new shard has started and taken its history, so that no
        // batch is frozen while both processes are busy with that.
        if self.shared.hub.probes_acked.load(Ordering::Acquire) < self.shards() {
            return false;
        }
        let done = self.shared.hub.clients_done.load(Ordering::Acquire);
        let lanes = self.shared.hub.lanes;
        self.handover.turn = self.id < done + lanes;
        if self.handover.turn {
            tracing::info!(
                shard = self.id,
                lanes,
                "handover: this shard's turn to move its clients"
            );
        }
        self.handover.turn
    }

    fn wake_other_shards(&mut self) {
        for to in (0..self.shards()).filter(|&to| to != self.id) {
            self.mesh.wake(to);
        }
    }

    /// A pass found nothing to move now: look again while some are busy (until the
    /// deadline), else this shard's clients are done, or (admin turn) everything is.
    pub(super) fn nothing_left(&mut self, later: usize, too_big: usize) {
        if self.handover.stalled_since_ms == 0 {
            self.handover.stalled_since_ms = self.now_ms;
        }
        // Clients that do not read as fast as they are sent to: their queues may never fit a
        // message; after a while they stay (their goaway at the end makes them resume).
        let slow_wait = too_big > 0 && self.now_ms < self.handover.stalled_since_ms + SLOW_WAIT_MS;
        // Busy ones get MOVE_DEADLINE_MS from when nothing else was left, within the hard
        // deadline: a shard whose connections took long to move (a million on two cores)
        // still gives its last busy ones their time.
        let busy_wait = self.now_ms < self.handover.stalled_since_ms + MOVE_DEADLINE_MS;
        if busy_wait && self.now_ms < self.handover.deadline_ms {
            // Busy ones: look again; the admin connections' turn waits for them.
            let busy = || {
                self.handover.admin_turn
                    || self.conns.iter().any(|(s, g, c)| {
                        c.kind != Kind::Admin
                            && matches!(self.movable(s, g, c, false), Movable::Later)
                            && !self.handover.exported.contains(&s)
                    })
            };
            if slow_wait || (later > 0 && busy()) {
                return;
            }
        }
        if !self.handover.admin_turn {
            self.handover.phase = Phase::ClientsDone;
            self.shared.hub.clients_done.fetch_add(1, Ordering::AcqRel);
            tracing::info!(shard = self.id, "handover: this shard's clients have moved");
            // The next shard's turn (and, once all are done, the admin turn): wake them.
            self.wake_other_shards();
            return;
        }
        // Publishes are fenced: what this shard forwards is complete; the final counter.
        self.flush_forwards();
        if !self.send_start() {
            return;
        }
        self.handover.phase = Phase::Done;
        self.handover.forwarding = false;
        let freezes = std::mem::take(&mut self.handover.freezes_us);
        self.shared.hub.freezes_us.lock().unwrap_or_else(|e| e.into_inner()).extend(freezes);
        self.resume_sends();
    }

    /// Old side: once the frozen batch is quiet (or its wait is over), exports the quiet
    /// ones: from here on publishes for them are forwarded, not queued.
    pub(super) fn export_frozen(&mut self) {
        let Some(mut b) = self.handover.batch.take() else { return };
        let waited = self.precise_us().saturating_sub(b.frozen_at_us);
        let mut ready = Vec::with_capacity(b.conns.len());
        let mut waiting = Vec::new();
        for &(slot, generation) in &b.conns {
            match self.conns.get(slot, generation) {
                Some(c) if c.is_open() && quiet_soon(c) => waiting.push((slot, generation)),
                Some(c) if matches!(self.movable(slot, generation, c, true), Movable::Now) => {
                    ready.push((slot, generation))
                }
                _ => self.unfreeze(slot, generation),
            }
        }
        if !waiting.is_empty() && waited < FREEZE_WAIT_US {
            self.give_fds(b.conns.len() - ready.len() - waiting.len());
            ready.extend(waiting);
            b.conns = ready;
            self.handover.batch = Some(b);
            return;
        }
        for (slot, generation) in waiting {
            self.unfreeze(slot, generation);
        }
        // What was queued while it froze counts: the batch stays one message.
        let mut bytes = 0usize;
        ready.retain(|&(slot, generation)| {
            let cost = self
                .conns
                .get(slot, generation)
                .map_or(0, |c| self.record_bytes(slot, generation, c));
            bytes += cost;
            bytes <= handover::BATCH_BYTES_MAX
        });
        for &(slot, generation) in b.conns.iter().filter(|c| !ready.contains(c)) {
            self.unfreeze(slot, generation);
        }
        self.give_fds(b.conns.len() - ready.len());
        if ready.is_empty() {
            return;
        }
        // Forwards so far go before the batch (these connections had those publishes
        // queued here); forwards from now on go after it.
        self.flush_forwards();
        self.handover.fwd_hold = true;
        for &(slot, generation) in &ready {
            self.handover.exported.insert(slot);
            let fd = self.conns.get(slot, generation).map_or(0, |c| c.fd);
            let entry = opcode::FixedFdInstall::new(types::Fixed(fd), 0)
                .build()
                .user_data(user_data(Op::FdInstall, generation, slot));
            // SAFETY: the install names no user memory; its answer is the completion's result.
            unsafe { self.ring.push(&entry) };
        }
        b.fds = vec![-1; ready.len()];
        b.installs_left = ready.len();
        b.conns = ready;
        b.installing = true;
        self.handover.batch = Some(b);
        self.handover.look_soon = false;
    }

    pub(in crate::shard) fn on_fd_install(&mut self, slot: u32, generation: u32, result: i32) {
        let Some(b) = self.handover.batch.as_mut() else {
            if result >= 0 {
                // SAFETY: the install made this fd for us and nothing else holds it.
                unsafe { libc::close(result) };
            }
            return;
        };
        if let Some(i) = b.conns.iter().position(|&c| c == (slot, generation)) {
            b.fds[i] = result.max(-1);
            b.installs_left -= 1;
        }
        if b.installs_left == 0 && b.sent.is_none() {
            self.send_batch();
        }
    }

    /// Takes up to `want` descriptors from the process's budget; None when it is spent.
    pub(super) fn take_fds(&self, want: usize) -> Option<usize> {
        let free = &self.shared.hub.fds_free;
        let mut have = free.load(Ordering::Acquire);
        loop {
            let n = have.min(want as i64);
            if n <= 0 {
                return None;
            }
            match free.compare_exchange_weak(have, have - n, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(n as usize),
                Err(now) => have = now,
            }
        }
    }

    pub(super) fn give_fds(&self, n: usize) {
        self.shared.hub.fds_free.fetch_add(n as i64, Ordering::AcqRel);
    }

    pub(super) fn send_batch(&mut self) {
        let Some(mut b) = self.handover.batch.take() else { return };
        let mut records = Vec::new();
        let mut fds = Vec::new();
        let mut sent = Vec::new();
        for (i, &(slot, generation)) in b.conns.iter().enumerate() {
            let fd = std::mem::replace(&mut b.fds[i], -1);
            // SAFETY: a process fd our install made for this batch; nothing else owns it.
            let fd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
            match fd.and_then(|fd| Some((self.record_of(slot, generation)?, fd))) {
                Some((r, fd)) => {
                    records.push(r);
                    fds.push(fd);
                    sent.push(i);
                }
                None => self.thaw(slot, generation),
            }
        }
        let mut out = Vec::new();
        record::encode_batch(b.seq, &records, &mut out);
        // The message holds its own references; ours close once it is sent.
        let ok = records.is_empty() || self.channel_send(&out, fds);
        // Publishes for the batch's connections since its export follow it.
        self.handover.fwd_hold = false;
        if ok {
            self.flush_forwards();
        }
        if !ok || records.is_empty() {
            // A failed send reverted the whole handover (`channel_failed`): every connection
            // is thawed already, and this batch's are no exception.
            return self.give_fds(b.conns.len());
        }
        b.sent = Some(sent);
        b.sent_at_us = self.precise_us();
        self.handover.batch = Some(b);
    }

    /// A connection the new process did not take stays here and is served on, but what was
    /// forwarded for it since its export went to the new process: the shutdown at the end
    /// closes it with a goaway, so its client reconnects (to the new process) and resumes.
    pub(super) fn thaw(&mut self, slot: u32, generation: u32) {
        self.handover.exported.remove(&slot);
        self.send_held(slot, generation);
        match self.handover.side_commands.remove(&slot) {
            Some((g, commands)) if g == generation => {
                self.apply_held_commands(slot, generation, commands)
            }
            _ => {}
        }
        self.handover.refused.insert(slot);
        self.handover.frozen.remove(&slot);
        self.arm_poll(slot, generation);
        self.submit_send(slot, generation);
    }

    pub(super) fn on_ack(&mut self, seq: u32, taken: &[bool]) {
        if seq == self.handover.probe_seq {
            if !std::mem::replace(&mut self.handover.probed, true) {
                let acked = self.shared.hub.probes_acked.fetch_add(1, Ordering::AcqRel) + 1;
                if acked == self.shards() {
                    self.wake_other_shards();
                }
            }
            return;
        }
        let Some(b) = self.handover.batch.take_if(|b| b.seq == seq) else { return };
        self.give_fds(b.conns.len());
        let now_us = self.precise_us();
        let frozen_us = now_us.saturating_sub(b.frozen_at_us);
        self.handover.freezes_us.push(frozen_us.min(u32::MAX as u64) as u32);
        if frozen_us >= SLOW_FREEZE_US {
            // Where a long freeze went: this shard's side (quiet, installs, the send) or
            // the new process's (its receive, placement and ack).
            let ms = |us: u64| us as f64 / 1000.0;
            tracing::info!(
                shard = self.id,
                batch = seq,
                conns = b.conns.len(),
                "handover: a batch stayed frozen {:.1} ms: {:.1} ms here to export it, {:.1} ms \
                 for the new process to take it",
                ms(frozen_us),
                ms(b.sent_at_us.saturating_sub(b.frozen_at_us)),
                ms(now_us.saturating_sub(b.sent_at_us)),
            );
        }
        let sent = b.sent.unwrap_or_default();
        let mut moved = 0;
        for (k, &i) in sent.iter().enumerate() {
            let (slot, generation) = b.conns[i];
            if taken.get(k).copied().unwrap_or(false) {
                self.handover.exported.remove(&slot);
                self.handover.side.remove(&slot);
                self.handover.side_commands.remove(&slot);
                self.handover.frozen.remove(&slot);
                self.hand_over_done(slot, generation);
                moved += 1;
            } else {
                self.thaw(slot, generation);
            }
        }
        bump(&self.stats().handover_sent, moved);
        self.shared.hub.sent.fetch_add(moved, Ordering::Relaxed);
    }

    /// Old side: bytes for an exported connection, kept until its ack.
    pub(in crate::shard) fn handover_hold(&mut self, slot: u32, generation: u32, chunk: Chunk) {
        let (g, held) = self.handover.side.entry(slot).or_insert((generation, Vec::new()));
        if *g == generation {
            held.push(chunk);
        }
    }

    /// Old side: a connection back from its export (refused, or the handover reverted)
    /// gets what was queued for it meanwhile, in order.
    pub(super) fn send_held(&mut self, slot: u32, generation: u32) {
        let Some((g, held)) = self.handover.side.remove(&slot) else { return };
        if g == generation {
            for chunk in held {
                self.queue(slot, generation, chunk);
            }
        }
    }

    /// Old side: a user command for an exported connection, kept until its ack.
    pub(in crate::shard) fn handover_hold_command(
        &mut self,
        slot: u32,
        generation: u32,
        name: &str,
        cmd: &crate::push::Command,
    ) {
        let entry = self.handover.side_commands.entry(slot).or_insert((generation, Vec::new()));
        if entry.0 == generation {
            entry.1.push((name.into(), cmd.clone()));
        }
    }

    /// Old side: a connection back from its export gets the commands it missed, in order.
    pub(super) fn apply_held_commands(
        &mut self,
        slot: u32,
        generation: u32,
        commands: HeldCommands,
    ) {
        let id = crate::registry::ConnId { shard: self.id as u16, slot, generation };
        for (name, cmd) in commands {
            // Back here: it was forwarded when it came, and the new process does not hold
            // this connection.
            self.apply_conn_command(crate::push::ConnCommand { conns: vec![id], name, cmd });
        }
    }

    pub(in crate::shard) fn handover_keep_user(&mut self, user: &str, id: crate::registry::ConnId) {
        self.handover.kept_users.push((user.into(), id));
    }

    /// The new process holds the connection: forget it here and close only our slot (the
    /// socket stays open through the new process's). Its poll, left armed, keeps its own
    /// reference until it fires or the ring goes; its completion finds no connection.
    pub(super) fn hand_over_done(&mut self, slot: u32, generation: u32) {
        self.leave_open(slot, generation, CloseReason::Handover);
        if let Some(c) = self.conns.get_mut(slot, generation) {
            c.closing = crate::shard::conn::Closing::Cancelling(CloseReason::Handover);
            c.poll_armed = false;
        }
        self.maybe_close(slot, generation);
    }
}
