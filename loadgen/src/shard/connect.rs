//! The connect side of a client shard: the ramp at `--rate`, connect timeouts and
//! reconnect delays, and one attempt's linked socket, connect, upgrade request and poll.

use super::*;

impl Shard {
    /// Starts the connections the ramp allows by now; returns when the next one is due.
    pub(super) fn ramp(&mut self, now: u64, rate: f64) -> io::Result<Option<u64>> {
        let started = self.conns.len() as u32;
        if started >= self.total {
            return Ok(None);
        }
        let allowed =
            if rate > 0.0 { ((now as f64 / 1e9) * rate).floor() as u64 + 1 } else { u64::MAX };
        let mut i = started;
        let limit = started.saturating_add(ATTEMPTS_PER_TURN);
        while i < self.total
            && i < limit
            && u64::from(i) < allowed
            && self.connecting < CONNECTING_MAX
        {
            let (target, _) = self.plan.route(self.global_index(i));
            self.conns.push(Conn {
                held: None,
                out: None,
                window: SeqWindow::default(),
                attempt_ns: 0,
                connected_ns: 0,
                gen: 0,
                state: State::Dead,
                flags: 0,
                inflight: 0,
                backoffs: 0,
                target: target as u16,
                chunked: None,
                sse: sse::Reader::default(),
                read_buf: 0,
            });
            self.start_attempt(i, now)?;
            i += 1;
        }
        if i >= self.total {
            return Ok(None);
        }
        if self.connecting >= CONNECTING_MAX {
            // A completion (or a connect timeout) makes room; spinning would not.
            return Ok(None);
        }
        if i >= limit || rate <= 0.0 {
            // More are due now: come back after the completions this turn brings.
            return Ok(Some(now));
        }
        Ok(Some(((i as f64 / rate) * 1e9) as u64))
    }

    pub(super) fn fire_timers(&mut self, now: u64) -> io::Result<()> {
        let mut fired = 0;
        while let Some(Reverse((deadline, i, gen))) = self.timers.peek().copied() {
            if deadline > now || fired >= TIMERS_PER_TURN {
                break;
            }
            fired += 1;
            self.timers.pop();
            let c = &self.conns[i as usize];
            if c.gen != gen {
                continue;
            }
            match c.state {
                State::Connecting | State::Upgrading => self.fail(i, Reason::Timeout)?,
                State::Backoff => self.connect_ready.push_back((i, gen)),
                _ => {}
            }
        }
        self.start_reconnects(now)
    }

    /// Starts reconnects whose delay is over, as many as `CONNECTING_MAX` and
    /// `ATTEMPTS_PER_TURN` allow; the rest wait for a later turn.
    pub(super) fn start_reconnects(&mut self, now: u64) -> io::Result<()> {
        let mut started = 0;
        while self.connecting < CONNECTING_MAX && started < ATTEMPTS_PER_TURN {
            let Some((i, gen)) = self.connect_ready.pop_front() else {
                break;
            };
            let c = &self.conns[i as usize];
            if c.gen != gen || c.state != State::Backoff {
                continue;
            }
            let from = usize::from(c.target);
            let r = self.random();
            let next = next_target(self.plan.targets.len(), from, r);
            self.conns[i as usize].target = next as u16;
            self.pending_reconnects += 1;
            self.start_attempt(i, now)?;
            started += 1;
        }
        Ok(())
    }

    pub(super) fn start_attempt(&mut self, i: u32, now: u64) -> io::Result<()> {
        let n = self.global_index(i);
        let (_, s) = self.plan.route(n);
        let path = self.plan.path(n);
        let c = &mut self.conns[i as usize];
        let t = usize::from(c.target);
        debug_assert_eq!(c.inflight, 0);
        debug_assert_eq!(c.flags & SLOT_OPEN, 0);
        c.gen = c.gen.wrapping_add(1) & GEN_MASK;
        c.state = State::Connecting;
        c.flags &= FIRST_DONE;
        c.attempt_ns = now;
        c.chunked = None;
        c.sse = sse::Reader::default();
        c.held = None;
        let gen = c.gen;
        let mut request = Vec::with_capacity(256);
        let host = &self.target_hosts[t];
        match self.plan.proto {
            Proto::Ws => {
                ws::upgrade_request(&mut request, host, &path, &ws_key(n, gen), self.plan.deflate)
            }
            Proto::Sse => sse::request(&mut request, host, &path),
        }
        let request = Box::new(request);
        let fd = types::Fixed(i);
        let link = squeue::Flags::IO_LINK;
        let mut chain: Vec<squeue::Entry> = Vec::with_capacity(6);
        let slot = types::DestinationSlot::try_from_slot_target(i)
            .map_err(|_| io::Error::other("slot index out of range"))?;
        chain.push(
            opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0)
                .file_index(Some(slot))
                .build()
                .flags(link)
                .user_data(user_data(OP_SOCKET, gen, i)),
        );
        if let Some(s) = s {
            chain.push(
                opcode::SetSockOpt::new(
                    fd,
                    libc::IPPROTO_IP as u32,
                    libc::IP_BIND_ADDRESS_NO_PORT as u32,
                    (&ONE as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
                .build()
                .flags(link)
                .user_data(user_data(OP_SOCKOPT, gen, i)),
            );
            chain.push(
                opcode::Bind::new(fd, self.sources[s].as_ptr(), RawAddr::LEN)
                    .build()
                    .flags(link)
                    .user_data(user_data(OP_BIND, gen, i)),
            );
        }
        chain.push(
            opcode::Connect::new(fd, self.targets[t].as_ptr(), RawAddr::LEN)
                .build()
                .flags(link)
                .user_data(user_data(OP_CONNECT, gen, i)),
        );
        chain.push(
            opcode::Send::new(fd, request.as_ptr(), request.len() as u32)
                .build()
                .flags(link)
                .user_data(user_data(OP_SEND_UPGRADE, gen, i)),
        );
        chain.push(
            opcode::PollAdd::new(fd, libc::POLLIN as u32)
                .build()
                .user_data(user_data(OP_POLL, gen, i)),
        );
        let c = &mut self.conns[i as usize];
        c.out = Some(request);
        c.inflight += chain.len() as u8;
        c.flags |= POLL_ARMED;
        self.connecting += 1;
        self.pending_attempts += 1;
        let deadline = now + self.plan.connect_timeout.as_nanos() as u64;
        self.timers.push(Reverse((deadline, i, gen)));
        // SAFETY: the addresses live in `self.targets`/`self.sources` and `ONE` is static,
        // none of which move or drop while the shard runs; the request buffer is owned by
        // `conns[i].out`, which is only dropped once the connection has nothing in flight.
        unsafe { self.ring.push(&chain) }
    }
}
