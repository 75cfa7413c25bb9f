//! One shard: a pinned thread running its own `mio` event loop over its own listener,
//! its connections, its slice of every event's stock, and its users' ledger.

pub mod budget;
mod dispatch;
pub mod http;
pub mod mailbox;
pub mod remote;
pub mod session;
mod trim;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use ticketd_proto::Response;

pub use dispatch::{Dispatcher, Handled, Held, HoldRoutes};
use mailbox::{ConnRef, Mailbox, Message};
use session::{Protocol, Session};

use crate::catalog::Catalog;
use crate::clock::WallClock;
use crate::journal::commit::Outcome;
use crate::journal::writer::WriterHandle;
use crate::journal::{Commit, Recovered};
use crate::ledger::{EventTally, Ledger};

/// Wakes the shard when another shard sent it a batch or shutdown was asked.
pub const WAKER_TOKEN: Token = Token(0);
const LISTENER_TOKEN: Token = Token(1);
const HTTP_LISTENER_TOKEN: Token = Token(2);
/// The shard's Redis connection (`--redis`).
const REDIS_TOKEN: Token = Token(3);
/// Session slab keys are offset by this to form their tokens.
const FIRST_SESSION_TOKEN: usize = 4;

/// Size of the per-shard read buffer, and so of one read call.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection in one pass before others get their turn.
const READ_BUDGET_PER_PASS: usize = 4 * READ_CHUNK;
/// Readiness events taken per poll.
const EVENTS_CAPACITY: usize = 1024;
/// How long a connection that lost framing may keep sending before it is closed.
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);
/// When the open-file limit stops accept, retry after this long.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// On shutdown: the longest wait for clients to take the answers they are owed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections over `--max-conns` that a shard keeps just long enough to answer their
/// first requests OVERLOADED; beyond this they are closed unanswered.
pub const MAX_SHEDDING_SESSIONS: usize = 64;
/// On shutdown: how often a shard looks whether all shards are done.
const SHUTDOWN_TICK: Duration = Duration::from_millis(5);

/// How far one readiness event's read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Stop after a read that did not fill the buffer: the socket was empty then, and
    /// edge-triggered epoll reports any later data as a new event. Saves the read that
    /// would only return `WouldBlock` — a syscall per request at one request per read.
    UntilShortRead,
    /// Read until `WouldBlock` or EOF: the peer closed (its EOF must be seen), or there
    /// is no event in hand (a queued re-read).
    ToEnd,
}

/// Shared between the shards and whoever stops them.
#[derive(Debug, Default)]
pub struct ShutdownSignal {
    requested: AtomicBool,
    finished: AtomicUsize,
}

impl ShutdownSignal {
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
    }

    fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// The fixed settings of one shard.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    pub index: usize,
    pub shards: usize,
    pub node_id: u16,
    pub max_frame: u32,
    /// `--http-anonymous`: an HTTP BUY without `user=` is a fresh buyer (benchmarks).
    pub http_anonymous: bool,
    /// What `/readyz` reports; the shard writes what it learns.
    pub readiness: Arc<crate::readiness::Readiness>,
    /// `--max-conns`, shared by every shard of the node.
    pub conns: Arc<budget::ConnBudget>,
    pub hold_ttl: Duration,
    /// `--redis`: decide through the global ledger.
    pub remote: Option<remote::RemoteSettings>,
}

/// Counters of one shard's life, reported when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardStats {
    pub accepted: u64,
    /// Connections over `--max-conns`: answered OVERLOADED, or closed unanswered when
    /// even the shedding slots were taken.
    pub refused: u64,
    pub bad_requests: u64,
    /// Answers from other shards whose connection had gone.
    pub orphan_replies: u64,
}

/// What a shard hands back when it stops.
#[derive(Debug, Clone)]
pub struct ShardReport {
    pub index: usize,
    pub tallies: Vec<EventTally>,
    pub stats: ShardStats,
}

/// Everything a shard thread needs, built on the spawning thread.
pub struct ShardParts {
    pub settings: ShardSettings,
    pub poll: Poll,
    pub listener: std::net::TcpListener,
    /// The `--http` listener, if any.
    pub http_listener: Option<std::net::TcpListener>,
    pub mailbox: Mailbox,
    pub catalog: Arc<Catalog>,
    pub shutdown: Arc<ShutdownSignal>,
    /// The embedded ledger's journal, when it has one.
    pub journal: Option<ShardJournal>,
    /// Raised node-wide when a journal write fails.
    pub fail_stop: Arc<AtomicBool>,
    pub hold_routes: Arc<HoldRoutes>,
}

/// A shard's journal: its writer, and the recovered state its ledger starts from.
pub struct ShardJournal {
    pub writer: WriterHandle,
    /// Bytes of the segment the writer starts on (its snapshot).
    pub snapshot_len: u64,
    /// A segment is rotated once it holds this much (and twice its snapshot) beyond it.
    pub rotate_min: u64,
    pub state: Arc<Recovered>,
    pub clock: WallClock,
}

pub struct Shard {
    settings: ShardSettings,
    poll: Poll,
    listener: Option<TcpListener>,
    http_listener: Option<TcpListener>,
    sessions: Slab<Session>,
    /// Sessions in `sessions` that are being shed (over `--max-conns`).
    shedding: usize,
    next_generation: u32,
    dispatcher: Dispatcher,
    mailbox: Mailbox,
    scratch: Box<[u8]>,
    /// Sessions with output to write at the end of this pass.
    dirty: Vec<usize>,
    /// Sessions that may have unread input (read budget spent, or resumed after
    /// back-pressure).
    read_queue: Vec<usize>,
    /// Sessions that lost framing, by close deadline.
    lingering: VecDeque<(Instant, usize, u32)>,
    accept_retry_at: Option<Instant>,
    /// Accepting has been failing since then, this many times (logged once).
    accept_starved: Option<(Instant, u64)>,
    /// Ledger mode: completions read this pass, and the answers they produce.
    redis_done: Vec<crate::redis_ledger::conn::Completion<u64>>,
    redis_answers: Vec<(ConnRef, Response)>,
    /// Items the journal released this pass.
    released: Vec<(Held, Outcome)>,
    shutdown: Arc<ShutdownSignal>,
    stopping: Option<Instant>,
    finished: bool,
    stats: ShardStats,
    trimmer: trim::Trimmer,
}

impl Shard {
    /// Allocates the shard's state; call on the shard's own (already pinned) thread.
    pub fn new(parts: ShardParts) -> io::Result<Shard> {
        let ShardParts {
            settings,
            poll,
            listener,
            http_listener,
            mailbox,
            catalog,
            shutdown,
            journal,
            fail_stop,
            hold_routes,
        } = parts;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER_TOKEN, Interest::READABLE)?;
        let http_listener = match http_listener {
            Some(l) => {
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, HTTP_LISTENER_TOKEN, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        let (ledger, commit) = match journal {
            Some(journal) => {
                let ledger = Ledger::restore(
                    settings.index,
                    settings.shards,
                    settings.node_id,
                    catalog,
                    settings.hold_ttl,
                    &journal.state,
                    journal.clock,
                );
                let commit = Commit::new(journal.writer, journal.snapshot_len, journal.rotate_min);
                (ledger, Some(commit))
            }
            None => (
                Ledger::new(settings.index, settings.node_id, catalog, settings.hold_ttl),
                None,
            ),
        };
        let mut dispatcher = Dispatcher::new(
            settings.index,
            settings.shards,
            settings.node_id,
            settings.max_frame,
            ledger,
        );
        dispatcher.commit = commit;
        dispatcher.http_anonymous = settings.http_anonymous;
        dispatcher.fail_stop = fail_stop;
        dispatcher.hold_routes = hold_routes;
        if let Some(remote) = settings.remote.clone() {
            dispatcher.remote = Some(remote::RemoteLedger::new(
                settings.index,
                settings.node_id,
                &dispatcher.catalog,
                remote,
                REDIS_TOKEN,
                Arc::clone(&settings.readiness),
            ));
        }
        Ok(Shard {
            settings,
            poll,
            listener: Some(listener),
            http_listener,
            sessions: Slab::new(),
            shedding: 0,
            next_generation: 0,
            dispatcher,
            mailbox,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            dirty: Vec::new(),
            read_queue: Vec::new(),
            lingering: VecDeque::new(),
            accept_retry_at: None,
            accept_starved: None,
            redis_done: Vec::new(),
            redis_answers: Vec::new(),
            released: Vec::new(),
            shutdown,
            stopping: None,
            finished: false,
            stats: ShardStats::default(),
            trimmer: trim::Trimmer::default(),
        })
    }

    /// Runs the event loop until every shard has finished shutting down.
    ///
    /// # Panics
    /// If `epoll_wait` itself fails: the shard cannot go on, and the process-wide panic
    /// hook takes the whole server down rather than leave it half alive.
    pub fn run(mut self) -> ShardReport {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("shard {}: poll failed: {e}", self.settings.index);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER_TOKEN => {}
                    LISTENER_TOKEN => self.accept(Protocol::Binary, now),
                    HTTP_LISTENER_TOKEN => self.accept(Protocol::Http, now),
                    REDIS_TOKEN => {
                        if let Some(remote) = self.dispatcher.remote.as_mut() {
                            remote.conn.on_event(
                                self.poll.registry(),
                                event,
                                now,
                                &mut self.redis_done,
                            );
                        }
                    }
                    Token(token) => {
                        let slot = token - FIRST_SESSION_TOKEN;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            let drain = if event.is_read_closed() || event.is_error() {
                                Drain::ToEnd
                            } else {
                                Drain::UntilShortRead
                            };
                            self.read_session(slot, now, drain);
                        }
                        if event.is_writable() {
                            self.mark_dirty(slot);
                        }
                    }
                }
            }
            self.drain_inbox(now);
            self.drain_read_queue(now);
            self.drive_remote(now);
            self.dispatcher.ledger.expire_due(now);
            self.close_expired_lingerers(now);
            if self.accept_retry_at.is_some_and(|at| at <= now) {
                self.accept_retry_at = None;
                self.accept(Protocol::Binary, now);
                self.accept(Protocol::Http, now);
            }
            self.commit_pass(now);
            self.flush_dirty(now);
            self.dispatcher.outbox.flush(&self.mailbox.peers);
            self.trimmer.maybe_trim(now);
            if self.shutdown_step(now) {
                break;
            }
        }
        self.finish_journal();
        self.stats.bad_requests = self.dispatcher.bad_requests;
        let tallies = match &self.dispatcher.remote {
            Some(remote) => remote.tallies.clone(),
            None => self.dispatcher.ledger.tallies().to_vec(),
        };
        ShardReport {
            index: self.settings.index,
            tallies,
            stats: self.stats,
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.read_queue.is_empty() {
            return Some(Duration::ZERO);
        }
        let deadlines = [
            self.dispatcher.ledger.next_deadline(),
            self.dispatcher
                .remote
                .as_ref()
                .and_then(|r| r.conn.next_deadline()),
            self.lingering.front().map(|&(at, _, _)| at),
            self.accept_retry_at,
            self.trimmer.next_due(),
        ];
        let timeout = deadlines
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.saturating_duration_since(now));
        match self.stopping {
            Some(_) => Some(timeout.map_or(SHUTDOWN_TICK, |t| t.min(SHUTDOWN_TICK))),
            None => timeout,
        }
    }

    fn accept(&mut self, protocol: Protocol, now: Instant) {
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

    fn read_session(&mut self, slot: usize, now: Instant, drain: Drain) {
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
            // Never read past the input bound: what cannot be decided yet waits in the
            // kernel's buffers, not in ours.
            let room = READ_CHUNK.min(session::INPUT_HIGH_WATER - session.input.len());
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

    fn drain_read_queue(&mut self, now: Instant) {
        let queued = std::mem::take(&mut self.read_queue);
        for slot in queued {
            if let Some(session) = self.sessions.get_mut(slot) {
                session.queued_read = false;
                self.read_session(slot, now, Drain::ToEnd);
            }
        }
    }

    fn drain_inbox(&mut self, now: Instant) {
        while let Ok(batch) = self.mailbox.inbox.try_recv() {
            for message in batch {
                match message {
                    Message::Decide {
                        reply_to,
                        req_id,
                        op,
                    } => {
                        if let Some(response) =
                            self.dispatcher.apply_owned(reply_to, req_id, op, now)
                        {
                            self.deliver(reply_to, response, now);
                        }
                    }
                    Message::Reply { conn, response } => self.deliver(conn, response, now),
                }
            }
        }
    }

    /// An answer decided elsewhere (another shard, or Redis) for one of our sessions.
    fn deliver(&mut self, conn: ConnRef, response: Response, now: Instant) {
        match self.sessions.get_mut(conn.slot) {
            Some(session) if session.generation == conn.generation => {
                session.in_flight = session.in_flight.saturating_sub(1);
                match session.http_waiting.take() {
                    Some(head) => {
                        http::write_outcome(
                            &mut session.output,
                            response.status,
                            response.result,
                            &head,
                        );
                        // Requests that arrived meanwhile can go now.
                        serve_http(&mut self.dispatcher, conn, session, now);
                    }
                    None => response.encode(&mut session.output),
                }
                self.mark_dirty(conn.slot);
            }
            _ => self.stats.orphan_replies += 1,
        }
    }

    /// Ledger mode: timeouts and reconnects, answers from Redis, then this pass's batches.
    fn drive_remote(&mut self, now: Instant) {
        let Some(remote) = self.dispatcher.remote.as_mut() else {
            return;
        };
        remote
            .conn
            .tick(self.poll.registry(), now, &mut self.redis_done);
        remote.report_connection(now);
        let mut answers = std::mem::take(&mut self.redis_answers);
        for completion in self.redis_done.drain(..) {
            remote.complete(&self.dispatcher.catalog, completion, now, &mut answers);
        }
        remote.flush();
        for (conn, response) in answers.drain(..) {
            self.deliver(conn, response, now);
        }
        // Answers can queue new requests (HTTP pipelines): send those this pass too.
        if let Some(remote) = self.dispatcher.remote.as_mut() {
            remote.flush();
        }
        self.redis_answers = answers;
    }

    /// The journal's part of a pass: hand this pass's records to the writer (with the
    /// returned tickets that wait on them), start a new segment when this one has
    /// outgrown the live state, and send the answers whose records are now durable.
    fn commit_pass(&mut self, now: Instant) {
        let dispatcher = &mut self.dispatcher;
        let Some(commit) = dispatcher.commit.as_mut() else {
            return;
        };
        let ledger = &mut dispatcher.ledger;
        if ledger.journal.is_pending() {
            if let Some(job) = commit.barrier(true) {
                for (event, qty) in ledger.take_returns() {
                    commit.hold(job, Held::Return { event, qty });
                }
            }
            let records = ledger.journal.take();
            tracing::debug!(
                shard = self.settings.index,
                bytes = records.len(),
                "journal batch submitted"
            );
            commit.submit(records);
            if commit.wants_rotation() && !commit.failed() {
                let snapshot = ledger.snapshot(now).freeze();
                tracing::debug!(
                    shard = self.settings.index,
                    snapshot_bytes = snapshot.len(),
                    "journal segment outgrew the live state: starting a new one"
                );
                commit.rotate(snapshot);
            }
        }
        let mut released = std::mem::take(&mut self.released);
        commit.release(|item, outcome| released.push((item, outcome)));
        self.apply_released(&mut released, now);
        self.released = released;
    }

    /// At exit: wait for the writer to make everything durable, then put the last
    /// returned tickets back (so the summary balances) and answer what is left.
    fn finish_journal(&mut self) {
        let Some(commit) = self.dispatcher.commit.as_mut() else {
            return;
        };
        let mut released = std::mem::take(&mut self.released);
        commit.finish(|item, outcome| released.push((item, outcome)));
        self.apply_released(&mut released, Instant::now());
        self.dispatcher.outbox.flush(&self.mailbox.peers);
    }

    fn apply_released(&mut self, released: &mut Vec<(Held, Outcome)>, now: Instant) {
        for (item, outcome) in released.drain(..) {
            match item {
                Held::Answer(conn, response) => {
                    let response = match outcome {
                        Outcome::Durable => response,
                        // Its records never reached disk: the operation did not happen.
                        Outcome::Failed => Response::error(
                            response.op,
                            response.req_id,
                            ticketd_proto::Status::Unavailable,
                        ),
                    };
                    if conn.shard == self.settings.index {
                        self.deliver(conn, response, now);
                    } else {
                        self.dispatcher
                            .outbox
                            .push(conn.shard, Message::Reply { conn, response });
                    }
                }
                Held::Return { event, qty } => {
                    if outcome == Outcome::Durable {
                        self.dispatcher.ledger.give_back(event, qty);
                    }
                }
            }
        }
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(session) = self.sessions.get_mut(slot) {
            if !session.dirty {
                session.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    fn flush_dirty(&mut self, now: Instant) {
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
    fn flush(&mut self, slot: usize, now: Instant) {
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

    fn close_expired_lingerers(&mut self, now: Instant) {
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

    fn close(&mut self, slot: usize) {
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

    /// Advances shutdown; returns true when the loop may end.
    fn shutdown_step(&mut self, now: Instant) -> bool {
        if self.stopping.is_none() {
            if !self.shutdown.is_requested() {
                return false;
            }
            self.stopping = Some(now + DRAIN_TIMEOUT);
            let listeners = [self.listener.take(), self.http_listener.take()];
            for mut listener in listeners.into_iter().flatten() {
                let _ = self.poll.registry().deregister(&mut listener);
            }
            self.read_queue.clear();
        }
        if !self.finished {
            let drained = self.sessions.iter().all(|(_, s)| s.is_settled());
            if drained || self.stopping.is_some_and(|deadline| now >= deadline) {
                self.finished = true;
                self.shutdown.finished.fetch_add(1, Ordering::AcqRel);
            }
        }
        // Keep answering other shards' forwarded requests until every shard is done.
        self.finished && self.shutdown.finished.load(Ordering::Acquire) == self.settings.shards
    }
}

/// Feeds freshly read bytes through the dispatcher, keeping any incomplete tail.
fn ingest(
    dispatcher: &mut Dispatcher,
    conn: ConnRef,
    session: &mut Session,
    bytes: &[u8],
    now: Instant,
) {
    let shed = session.shedding;
    // An answer is at most twice its request's size (the smallest request, 13 bytes,
    // gets 14; STOCK's 17 get 30).
    session.reserve_output(2 * (session.input.len() + bytes.len()));
    let handled = if session.input.is_empty() {
        // Common case: decode straight from the read buffer, copy only a partial tail.
        let handled = dispatcher.handle_frames(
            conn,
            bytes,
            &mut session.output,
            &mut session.in_flight,
            now,
            shed,
        );
        if !handled.framing_lost {
            session
                .input
                .extend_from_slice(bytes.get(handled.consumed..).unwrap_or_default());
        }
        handled
    } else {
        session.input.extend_from_slice(bytes);
        let handled = dispatcher.handle_frames(
            conn,
            &session.input,
            &mut session.output,
            &mut session.in_flight,
            now,
            shed,
        );
        session
            .input
            .advance(handled.consumed.min(session.input.len()));
        handled
    };
    // A shed connection is done once it has had its answers.
    if handled.framing_lost || (shed && handled.consumed > 0) {
        session.lingering = true;
        session.owes_framing_error = handled.framing_lost;
        session.input.clear();
    }
}

/// Answers the HTTP requests buffered in `session.input`, one at a time: a request whose
/// answer another shard decides holds the rest until it is written.
fn serve_http(dispatcher: &mut Dispatcher, conn: ConnRef, session: &mut Session, now: Instant) {
    if session.shedding {
        // Over --max-conns: shed before any work, in the endpoint's own JSON.
        http::write_error(
            &mut session.output,
            503,
            "overloaded; retry later",
            false,
            false,
        );
        session.input.clear();
        session.close_when_settled = true;
        return;
    }
    while session.http_waiting.is_none() && !session.close_when_settled && !session.lingering {
        // Like the binary protocol: a client that does not read gets at most one output
        // buffer's worth of answers; the rest of its requests wait unparsed.
        if session.output.len() >= session::OUTPUT_HIGH_WATER {
            return;
        }
        // An HTTP answer is about 150 bytes, whatever its request's size.
        session.reserve_output(256);
        let head = match http::parse(&session.input) {
            http::Parsed::Incomplete => return,
            http::Parsed::Invalid(code) => {
                dispatcher.bad_requests += 1;
                http::write_error(
                    &mut session.output,
                    code,
                    "malformed HTTP request",
                    false,
                    false,
                );
                // Close like a binary framing error: FIN after the answer, then discard
                // input until the peer closes, so unread bytes do not reset it away.
                session.input.clear();
                session.lingering = true;
                return;
            }
            http::Parsed::Request(head) => head,
        };
        session
            .input
            .advance(head.consumed.min(session.input.len()));
        let (keep_alive, http10) = (head.keep_alive, head.http10);
        match head.target {
            http::Target::Buy { user: None, .. } if !dispatcher.http_anonymous => {
                http::write_error(
                    &mut session.output,
                    400,
                    "user= is required (anonymous buyers only with --http-anonymous)",
                    keep_alive,
                    http10,
                )
            }
            http::Target::Buy { event, user } => {
                match dispatcher.http_buy(conn, event, user, &mut session.in_flight, now) {
                    Some(response) => http::write_outcome(
                        &mut session.output,
                        response.status,
                        response.result,
                        &head,
                    ),
                    None => session.http_waiting = Some(head),
                }
            }
            http::Target::NotFound => http::write_error(
                &mut session.output,
                404,
                "not found: try GET /buy/ticket",
                keep_alive,
                http10,
            ),
            http::Target::MethodNotAllowed => http::write_error(
                &mut session.output,
                405,
                "method not allowed: use GET",
                keep_alive,
                http10,
            ),
            http::Target::BadQuery(why) => {
                http::write_error(&mut session.output, 400, why, keep_alive, http10)
            }
        }
        if !keep_alive {
            session.close_when_settled = true;
        }
    }
}

/// Builds a waker for a poll, before the poll moves to its shard's thread.
pub fn waker_for(poll: &Poll) -> io::Result<Arc<Waker>> {
    Waker::new(poll.registry(), WAKER_TOKEN).map(Arc::new)
}
