//! A shard's connections: accepting them (within `--max-conns`), reading them (with a
//! budget per pass and back-pressure), writing what they are owed in one write per
//! pass, lingering after a framing error, and closing them.

use super::*;

impl Shard {
    pub(super) fn accept(&mut self, protocol: Protocol, now: Instant) {
        let listener = match protocol {
            Protocol::Binary => &self.listener,
            Protocol::Http => &self.http_listener,
        };
        let Some(listener) = listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    tracing::debug!(shard = self.settings.index, %peer, ?protocol, "accepted");
                    if let Some((since, tries)) = self.accept_starved.take() {
                        tracing::info!(
                            shard = self.settings.index,
                            failed_tries = tries,
                            after_ms = now.saturating_duration_since(since).as_millis() as u64,
                            "accepting connections again"
                        );
                    }
                    let shedding = !self.settings.conns.try_take();
                    if shedding {
                        self.stats.refused += 1;
                        if self.shedding >= MAX_SHEDDING_SESSIONS {
                            continue;
                        }
                    }
                    // Answers are small and latency is the product: no Nagle.
                    let _ = stream.set_nodelay(true);
                    let entry = self.sessions.vacant_entry();
                    let token = Token(entry.key() + FIRST_SESSION_TOKEN);
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, token, Interest::READABLE)
                    {
                        tracing::warn!(error = %e, "could not register a connection");
                        if !shedding {
                            self.settings.conns.give_back();
                        }
                        continue;
                    }
                    self.next_generation = self.next_generation.wrapping_add(1);
                    let mut session = Session::new(stream, self.next_generation, protocol);
                    session.shedding = shedding;
                    if shedding {
                        self.shedding += 1;
                        // Closed after its first answers, or after the linger timeout.
                        self.lingering.push_back((
                            now + LINGER_TIMEOUT,
                            entry.key(),
                            session.generation,
                        ));
                    } else {
                        self.stats.accepted += 1;
                    }
                    entry.insert(session);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of file descriptors or memory: the pending connection stays in
                    // the backlog; try again shortly instead of spinning, and say so once
                    // per episode, not once per try.
                    let episode = self.accept_starved.get_or_insert((now, 0));
                    if episode.1 == 0 {
                        tracing::warn!(
                            error = %e,
                            shard = self.settings.index,
                            held = self.sessions.len(),
                            "cannot accept connections (out of file descriptors?); \
                             retrying every {} ms until connections close — lower \
                             --max-conns or raise the open-file limit",
                            ACCEPT_RETRY.as_millis()
                        );
                    }
                    episode.1 += 1;
                    self.accept_retry_at = Some(now + ACCEPT_RETRY);
                    break;
                }
            }
        }
    }

    pub(super) fn read_session(&mut self, slot: usize, now: Instant, drain: Drain) {
        if self.stopping.is_some() {
            return;
        }
        let Some(session) = self.sessions.get_mut(slot) else {
            return;
        };
        let conn = ConnRef {
            shard: self.settings.index,
            slot,
            generation: session.generation,
        };
        // Input left undecided while the client was behind (see `handle_frames`) is
        // decided first: the client may have nothing more to send to wake us.
        let settled_input = session.lingering || session.close_when_settled;
        if !session.input.is_empty() && !session.is_paused() && !settled_input {
            match session.protocol {
                Protocol::Binary => ingest(&mut self.dispatcher, conn, session, &[], now),
                Protocol::Http => serve_http(&mut self.dispatcher, conn, session, now),
            }
        }
        let mut budget = READ_BUDGET_PER_PASS;
        let mut broken = false;
        loop {
            if session.read_closed {
                break;
            }
            if session.is_paused() {
                session.read_stalled = true;
                break;
            }
            if budget == 0 {
                if !session.queued_read {
                    session.queued_read = true;
                    self.read_queue.push(slot);
                }
                break;
            }
            // Never read past the input bound, nor (binary: an answer is at most twice
            // its request) much more than the unsent output left room for: what cannot
            // be decided yet waits in the kernel's buffers, not in ours.
            let room = session.read_room(READ_CHUNK);
            match session.stream.read(&mut self.scratch[..room]) {
                Ok(0) => session.read_closed = true,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    let short = n < room;
                    let bytes = &self.scratch[..n];
                    match session.protocol {
                        _ if session.lingering || session.close_when_settled => {}
                        Protocol::Binary => ingest(&mut self.dispatcher, conn, session, bytes, now),
                        Protocol::Http => {
                            session.input.extend_from_slice(bytes);
                            serve_http(&mut self.dispatcher, conn, session, now);
                        }
                    }
                    if short && drain == Drain::UntilShortRead {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            self.close(slot);
        } else {
            self.mark_dirty(slot);
        }
    }

    pub(super) fn drain_read_queue(&mut self, now: Instant) {
        let queued = std::mem::take(&mut self.read_queue);
        for slot in queued {
            if let Some(session) = self.sessions.get_mut(slot) {
                session.queued_read = false;
                self.read_session(slot, now, Drain::ToEnd);
            }
        }
    }

    pub(super) fn mark_dirty(&mut self, slot: usize) {
        if let Some(session) = self.sessions.get_mut(slot) {
            if !session.dirty {
                session.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    pub(super) fn flush_dirty(&mut self, now: Instant) {
        let dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            self.flush(slot, now);
        }
        // Keep the allocation for the next pass.
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Writes what is owed (one write call unless the socket takes it piecemeal), then
    /// fixes up interest, back-pressure and the session's end of life.
    pub(super) fn flush(&mut self, slot: usize, now: Instant) {
        let Some(session) = self.sessions.get_mut(slot) else {
            return;
        };
        session.dirty = false;
        if session.owes_framing_error && session.in_flight == 0 {
            session.owes_framing_error = false;
            Response::framing_error().encode(&mut session.output);
        }
        let mut broken = false;
        while !session.output.is_empty() {
            match session.stream.write(&session.output) {
                Ok(0) => {
                    broken = true;
                    break;
                }
                Ok(n) => session.output.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            self.close(slot);
            return;
        }
        let wants_write = !session.output.is_empty();
        if wants_write != session.wants_write {
            let interest = if wants_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = Token(slot + FIRST_SESSION_TOKEN);
            if self
                .poll
                .registry()
                .reregister(&mut session.stream, token, interest)
                .is_err()
            {
                self.close(slot);
                return;
            }
            session.wants_write = wants_write;
        }
        if session.is_settled() {
            if session.read_closed || session.close_when_settled {
                self.close(slot);
                return;
            }
            if session.lingering && !session.write_shut {
                // The framing error is out: send FIN, then discard input until the peer
                // closes, so our close does not reset away the error frame.
                let _ = session.stream.shutdown(Shutdown::Write);
                session.write_shut = true;
                self.lingering
                    .push_back((now + LINGER_TIMEOUT, slot, session.generation));
            }
        }
        if session.read_stalled && !session.is_paused() {
            // It stopped reading for back-pressure with input perhaps still waiting;
            // edge-triggered readiness will not tell us again.
            session.read_stalled = false;
            if !session.queued_read {
                session.queued_read = true;
                self.read_queue.push(slot);
            }
        }
        let freed = session.release_idle_buffers();
        self.trimmer.freed(freed);
    }

    pub(super) fn close_expired_lingerers(&mut self, now: Instant) {
        while let Some(&(deadline, slot, generation)) = self.lingering.front() {
            if deadline > now {
                break;
            }
            self.lingering.pop_front();
            if self
                .sessions
                .get(slot)
                .is_some_and(|s| s.generation == generation)
            {
                self.close(slot);
            }
        }
    }

    pub(super) fn close(&mut self, slot: usize) {
        if let Some(mut session) = self.sessions.try_remove(slot) {
            tracing::debug!(
                shard = self.settings.index,
                slot,
                read_closed = session.read_closed,
                lingering = session.lingering,
                shed = session.shedding,
                "connection closed"
            );
            self.trimmer
                .freed(session.input.capacity() + session.output.capacity());
            if session.shedding {
                self.shedding -= 1;
            } else {
                self.settings.conns.give_back();
            }
            let _ = self.poll.registry().deregister(&mut session.stream);
        }
    }
}
