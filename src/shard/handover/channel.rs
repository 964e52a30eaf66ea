//! A shard's end of the handover channel to the other process: messages in pieces, what
//! waits for room, the receive side, and what a broken channel means on either side.

use super::*;

impl Shard {
    /// Sends `bytes` as messages of kind `kind` of at most one batch each (`kind`, 1 on the
    /// last piece, the bytes); at least one piece, an empty one for no bytes.
    pub(super) fn send_pieces(&mut self, kind: u8, bytes: &[u8]) -> bool {
        let mut pieces: Vec<&[u8]> = bytes.chunks(handover::BATCH_BYTES_MAX).collect();
        if pieces.is_empty() {
            pieces.push(&[]);
        }
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            let mut msg = Vec::with_capacity(piece.len() + 2);
            msg.extend_from_slice(&[kind, (i == last) as u8]);
            msg.extend_from_slice(piece);
            if !self.channel_send(&msg, Vec::new()) {
                return false;
            }
        }
        true
    }

    /// Sends one message on the channel, or queues it behind those waiting for room (the
    /// channel holds a few datagrams only, `net.unix.max_dgram_qlen`): a shard never blocks
    /// on it, since the other side may be waiting for this one to read. False and the
    /// handover is off when the channel failed.
    pub(super) fn channel_send(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) -> bool {
        if self.handover.chan.is_none() {
            return false;
        }
        if self.handover.out_q.is_empty() {
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            let chan = self.handover.chan.as_ref().map_or(-1, AsRawFd::as_raw_fd);
            match handover::send_with_fds(chan, bytes, &raw, true) {
                Ok(true) => return true,
                Ok(false) => self.handover.out_q_since_ms = self.now_ms,
                Err(e) => {
                    tracing::error!(shard = self.id, "handover: channel failed: {e}");
                    self.channel_failed();
                    return false;
                }
            }
        }
        self.handover.out_q.push_back((bytes.to_vec(), fds));
        true
    }

    /// Sends what waits for room on the channel; a channel without room for
    /// [`CHANNEL_STUCK_MS`] has failed.
    pub(super) fn flush_channel(&mut self) {
        while let Some((bytes, fds)) = self.handover.out_q.front() {
            let Some(chan) = self.handover.chan.as_ref() else { return };
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            match handover::send_with_fds(chan.as_raw_fd(), bytes, &raw, true) {
                Ok(true) => {
                    self.handover.out_q.pop_front();
                    self.handover.out_q_since_ms = self.now_ms;
                }
                Ok(false) if self.now_ms < self.handover.out_q_since_ms + CHANNEL_STUCK_MS => {
                    return;
                }
                Ok(false) => {
                    tracing::error!(shard = self.id, "handover: the other process reads nothing");
                    return self.channel_failed();
                }
                Err(e) => {
                    tracing::error!(shard = self.id, "handover: channel failed: {e}");
                    return self.channel_failed();
                }
            }
        }
    }

    /// The other process is gone or refuses: the old side serves on.
    pub(super) fn channel_failed(&mut self) {
        self.handover.chan = None;
        match self.handover.phase {
            Phase::Taking { .. } => {
                self.handover.phase = Phase::Idle;
                // Deliveries the forwards caused may still be on the mesh a moment.
                self.handover.moved_clear_at_ms = self.now_ms + 1000;
                // The old process is gone (its end closed): no wakeup is lost to it now.
                self.restart_accepts();
            }
            // Everything here went over; the process exits unless another shard failed
            // (then `drive_handover` sees `out_failed` and reverts this one too).
            Phase::Done => {}
            Phase::Idle => {}
            _ => {
                self.shared.hub.out_failed.store(true, Ordering::Release);
                self.revert_handover();
            }
        }
    }

    pub(super) fn arm_channel(&mut self) {
        let Some(chan) = self.handover.chan.as_ref() else { return };
        let entry = opcode::PollAdd::new(types::Fd(chan.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(user_data(Op::Channel, 0, 0));
        // SAFETY: a poll names no user memory.
        unsafe { self.ring.push(&entry) };
        self.handover.chan_armed = true;
    }

    /// The channel's poll or a batch's installation completed.
    pub(in crate::shard) fn on_channel(&mut self, what: u32, result: i32) {
        if what == 1 {
            return self.on_installed(result);
        }
        self.handover.chan_armed = false;
        let mut buf = std::mem::take(&mut self.handover.buf);
        buf.resize(handover::BATCH_BYTES_MAX + 64 * 1024, 0);
        while let Some(chan) = self.handover.chan.as_ref() {
            let mut fds = Vec::new();
            match handover::recv_with_fds(chan.as_raw_fd(), &mut buf, &mut fds, true) {
                Ok(None) => break,
                Ok(Some(0)) => {
                    self.channel_failed();
                    break;
                }
                Ok(Some(n)) => self.on_channel_message(&buf[..n], fds),
                Err(e) => {
                    tracing::error!(shard = self.id, "handover: channel failed: {e}");
                    self.channel_failed();
                    break;
                }
            }
        }
        self.handover.buf = buf;
        self.install_next();
    }

    fn on_channel_message(&mut self, msg: &[u8], fds: Vec<OwnedFd>) {
        match (msg.first().copied(), self.handover.phase) {
            (Some(record::MSG_ACK), Phase::Moving) => {
                let Some((seq, taken)) = record::decode_ack(&msg[1..]) else { return };
                self.on_ack(seq, &taken);
            }
            // The final counters, and forwarded publishes: in their place among the batches.
            (Some(record::MSG_START | record::MSG_FORWARD), Phase::Taking { started: true }) => {
                self.handover.queued.push_back((msg.to_vec(), fds));
            }
            (Some(record::MSG_START), Phase::Taking { started: false }) => {
                self.on_start(&msg[1..]);
                self.handover.phase = Phase::Taking { started: true };
            }
            (Some(record::MSG_HISTORY), Phase::Taking { started: false }) if msg.len() >= 2 => {
                self.handover.history_in.extend_from_slice(&msg[2..]);
                if msg[1] == 1 {
                    let log = std::mem::take(&mut self.handover.history_in);
                    if self.history.import(&log, self.precise_us()) {
                        let (messages, bytes) = self.history.usage();
                        let stats = self.stats();
                        stats.history_messages.store(messages as u64, Ordering::Relaxed);
                        stats.history_bytes.store(bytes as u64, Ordering::Relaxed);
                    } else {
                        tracing::warn!(
                            shard = self.id,
                            "takeover: the history log did not import; positions continue, \
                             resumes from before the upgrade get a gap"
                        );
                    }
                }
            }
            (Some(record::MSG_BATCH), Phase::Taking { .. }) => {
                self.handover.queued.push_back((msg.to_vec(), fds));
            }
            _ => {}
        }
    }
}
