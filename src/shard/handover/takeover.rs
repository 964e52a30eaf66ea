//! The new process's side of a live upgrade, in one shard: batches from the channel placed
//! in the fixed-file table, each connection rebuilt from its record, and the ack.

use super::*;

impl Shard {
    /// New side: places the next received batch in the fixed-file table.
    pub(super) fn install_next(&mut self) {
        while self.handover.installing.is_none() {
            let Some((msg, owned)) = self.handover.queued.pop_front() else { return };
            match msg.first().copied() {
                Some(record::MSG_FORWARD) => {
                    self.on_forwards(&msg);
                    continue;
                }
                Some(record::MSG_START) => {
                    // The old shard's last message: everything it sent is applied.
                    self.on_start(&msg[1..]);
                    self.shared.hub.taken.fetch_add(1, Ordering::AcqRel);
                    continue;
                }
                _ => {}
            }
            let Some((seq, records)) =
                record::decode_batch(&msg[1..], self.shared.hub.layout.load(Ordering::Relaxed))
            else {
                tracing::error!(shard = self.id, "handover: a malformed batch was refused");
                let seq = u32::from_le_bytes(
                    msg.get(1..5).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]),
                );
                self.ack(seq, &[]);
                continue;
            };
            if records.len() != owned.len() || records.is_empty() {
                self.ack(seq, &vec![false; records.len()]);
                continue;
            }
            let slots: Box<[RawFd]> = owned.iter().map(AsRawFd::as_raw_fd).collect();
            let entry = opcode::FilesUpdate::new(slots.as_ptr(), slots.len() as u32)
                // IORING_FILE_INDEX_ALLOC (~0U): the kernel picks free slots and writes them back.
                .offset(-1)
                .build()
                .user_data(user_data(Op::Channel, 1, 0));
            // SAFETY: `slots` lives in `installing` until this completes (`on_installed`).
            unsafe { self.ring.push(&entry) };
            self.handover.installing = Some(InBatch { seq, records, slots, owned });
        }
    }

    pub(super) fn on_installed(&mut self, result: i32) {
        let Some(b) = self.handover.installing.take() else { return };
        let placed = result.max(0) as usize;
        drop(b.owned);
        let mut taken = Vec::with_capacity(b.records.len());
        for (i, rec) in b.records.into_iter().enumerate() {
            if i >= placed {
                taken.push(false);
                continue;
            }
            let fd = b.slots[i] as u32;
            let ok = self.adopt(rec, fd);
            if !ok {
                // Not ours after all: free the slot (the old process keeps the connection).
                self.refusing += 1;
                self.submit_close_fd(fd, u32::MAX, 0);
            }
            taken.push(ok);
        }
        self.ack(b.seq, &taken);
        self.install_next();
    }

    fn ack(&mut self, seq: u32, taken: &[bool]) {
        let mut out = Vec::new();
        record::encode_ack(seq, taken, &mut out);
        let _ = self.channel_send(&out, Vec::new());
    }

    /// New side: rebuilds one connection from its record in fixed slot `fd`.
    fn adopt(&mut self, rec: Record, fd: u32) -> bool {
        let kind = match rec.kind {
            1 => Kind::Ws,
            2 => Kind::Echo,
            3 => Kind::Sse,
            4 => Kind::Admin,
            _ => return false,
        };
        let Some(ident) = Ident::from_packed(rec.ident) else { return false };
        let tls = match rec.tls.is_empty() {
            true => None,
            false => match crate::tls::Session::import(&rec.tls) {
                Some(s) => Some(s),
                None => return false,
            },
        };
        let live = self.live.now_ms;
        let mut conn = Conn::new(fd, kind, live);
        conn.json = rec.json;
        conn.awaiting_pong = rec.awaiting_pong;
        conn.last_rx = stamp(live.wrapping_sub(rec.rx_age_ms as u64));
        conn.last_ping = stamp(live.wrapping_sub(rec.ping_age_ms as u64));
        let Some(session) = ws::Session::from_handover(rec.ws, &rec.ws_partial) else {
            return false;
        };
        conn.ws = session;
        conn.ident = ident;
        let Ok((slot, generation)) = self.conns.insert(conn) else { return false };
        if let Some(s) = tls {
            self.tls.adopt(slot, generation, Box::new(s));
        }
        let stats = &self.shared.stats[self.id];
        bump(
            match kind {
                Kind::Sse => &stats.conns_sse,
                Kind::Admin => &stats.conns_admin,
                _ => &stats.conns_ws,
            },
            1,
        );
        if rec.extra_tabs > 0 {
            bump(&stats.tabs_extra, rec.extra_tabs as u64);
            self.tabs.insert(slot, (generation, rec.extra_tabs));
        }
        bump(&stats.handover_received, 1);
        self.shared.hub.received.fetch_add(1, Ordering::Relaxed);
        if !rec.grants.is_empty() {
            self.grants.insert(slot, (generation, rec.grants.into_boxed_slice()));
        }
        if rec.expires_in_ms > 0 {
            let at = self.now_ms + rec.expires_in_ms;
            self.schedule_expiry(slot, generation, at);
        }
        let lifetime_left_ms = rec.lifetime_left_ms;
        if rec.old_id != 0 {
            self.handover.moved.insert(rec.old_id, (slot, generation));
        }
        self.handover.moved_in.insert((slot, generation));
        let id = self.conn_id(slot, generation);
        let (user, topics): (Option<String>, Vec<String>) = match self.conns.get(slot, generation) {
            Some(c) => {
                (c.ident.user().map(str::to_owned), c.ident.topics().map(str::to_owned).collect())
            }
            None => (None, Vec::new()),
        };
        if let Some(user) = user {
            // No replay: the connection missed nothing (what was published since its freeze
            // is queued in its record or forwarded behind its batch).
            self.register_user(&user, id, crate::shard::resume::NO_REPLAY, None);
        }
        for topic in &topics {
            self.topics.subscribe(topic, slot, generation);
        }
        let l = &self.shared.cfg.limits;
        let (hb_ms, idle_ms) = (l.sse_heartbeat_ms, l.idle_timeout_ms);
        match kind {
            Kind::Ws | Kind::Echo => {
                self.carry_lifetime(slot, generation, lifetime_left_ms);
                self.schedule_ws(slot, generation);
            }
            Kind::Sse => {
                self.carry_lifetime(slot, generation, lifetime_left_ms);
                self.schedule(slot, generation, self.now_ms + hb_ms);
            }
            _ => {
                if idle_ms > 0 {
                    self.schedule(slot, generation, self.now_ms + idle_ms);
                }
            }
        }
        if !rec.outbox.is_empty() {
            bump(&self.shared.stats[self.id].handover_queued_bytes, rec.outbox.len() as u64);
            // Already framed (and sealed, on TLS): it goes on the wire as it is, a ping in it
            // keeping its place.
            self.queue_raw(slot, generation, Chunk::Owned(rec.outbox));
            if let Some(o) = self.conns.get_mut(slot, generation).and_then(|c| c.outbox.as_mut()) {
                o.ping_end = rec.ping_end as usize;
            }
        }
        if kind == Kind::Admin && self.shared.hub.admin_held() {
            self.handover.held_admin.push((slot, generation));
        } else {
            self.arm_poll(slot, generation);
        }
        true
    }

    /// The lifetime a moved connection had left, when this process also limits lifetimes;
    /// a fresh one when the old process did not (or wrote no layout-4 record).
    fn carry_lifetime(&mut self, slot: u32, generation: u32, left_ms: u64) {
        if self.shared.cfg.limits.conn_lifetime_ms_max == 0 {
            return;
        }
        match left_ms {
            0 => self.schedule_lifetime(slot, generation),
            left => self.schedule_lifetime_at(slot, generation, self.now_ms + left),
        }
    }
}
