//! A shard's connections: accepting them (within `--max-conns`), reading them (with a
//! byte budget per connection, a time budget per pass, and back-pressure), writing what
//! they are owed in one write per pass, lingering after a framing error, and closing
//! them. Each [`Connection`] does its own I/O; this keeps the lists of which to read,
//! flush and close, and when.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};
use slab::Slab;
use ticketd_proto::Response;

use super::access::Access;
use super::admission::ConnsPerIp;
use super::budget::ConnBudget;
use super::connection::{Connection, FlushEnd, Overdue, Protocol, ReadDepth, ReadEnd};
use super::mailbox::ConnRef;
use super::pass_clock::PassClock;
use super::settings::ShardSettings;
use super::trim::Trimmer;
use super::Dispatcher;
use crate::limits::{Timeouts, MAX_SHEDDING_CONNECTIONS};
use crate::stats::{Refusal, ShardMeter, TimedOut};

pub const LISTENER_TOKEN: Token = Token(1);
pub const HTTP_LISTENER_TOKEN: Token = Token(2);
/// Connection slab keys are offset by this to form their tokens; tokens below it are
/// the shard's own (waker, listeners, Redis).
const FIRST_CONNECTION_TOKEN: usize = 4;

/// Size of the per-shard read buffer, and so of one read call.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection in one pass before others get their turn.
const READ_BUDGET_PER_PASS: usize = 4 * READ_CHUNK;
/// How long a connection that lost framing may keep sending before it is closed.
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);
/// When the open-file limit stops accept, retry after this long.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Counters of a shard's connections, reported when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    pub accepted: u64,
    /// Connections over `--max-conns`: answered OVERLOADED, or closed unanswered when
    /// even the shedding slots were taken.
    pub refused: u64,
    /// Answers decided elsewhere whose connection had gone.
    pub orphan_replies: u64,
}

pub struct Connections {
    shard: usize,
    registry: Registry,
    listener: Option<TcpListener>,
    http_listener: Option<TcpListener>,
    open: Slab<Connection>,
    /// Connections in `open` that are being shed (over `--max-conns`).
    shedding: usize,
    next_generation: u32,
    budget: Arc<ConnBudget>,
    scratch: Box<[u8]>,
    /// Connections with output to write, in the order they were first owed it.
    dirty: VecDeque<usize>,
    /// Connections that may have unread input (byte budget spent, resumed after
    /// back-pressure, or left by a pass whose time was spent), oldest first.
    read_queue: VecDeque<usize>,
    /// This pass's time for reading and writing (`--pass-budget`).
    clock: PassClock,
    /// Connections that lost framing (or are being shed), by close deadline.
    lingering: VecDeque<(Instant, usize, u32)>,
    accept_retry_at: Option<Instant>,
    /// Accepting has been failing since then, this many times (logged once).
    accept_starved: Option<(Instant, u64)>,
    /// Shutting down: nothing more is read.
    stopping: bool,
    trimmer: Trimmer,
    stats: ConnStats,
    /// `--auth-token-file`: binary connections start unauthenticated.
    tokens_required: bool,
    /// Time limits per connection state, and when connections are next looked over.
    timeouts: Timeouts,
    sweep_at: Option<Instant>,
    counters: ShardMeter,
    /// `--max-conns-per-ip`.
    conns_per_ip: Option<Arc<ConnsPerIp>>,
    /// Connections paused by `--rate-per-ip`, by when they may be read again.
    throttled: BinaryHeap<Reverse<(Instant, usize, u32)>>,
}

impl Connections {
    /// Registers the listeners (binary, and HTTP if any) with `registry`; the rest comes
    /// from the shard's settings (budget, tokens, time limits, counters).
    pub fn new(
        settings: &ShardSettings,
        registry: Registry,
        listener: std::net::TcpListener,
        http_listener: Option<std::net::TcpListener>,
    ) -> io::Result<Self> {
        let timeouts = settings.timeouts;
        let mut listener = TcpListener::from_std(listener);
        registry.register(&mut listener, LISTENER_TOKEN, Interest::READABLE)?;
        let http_listener = match http_listener {
            Some(l) => {
                let mut l = TcpListener::from_std(l);
                registry.register(&mut l, HTTP_LISTENER_TOKEN, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        Ok(Connections {
            shard: settings.index,
            registry,
            listener: Some(listener),
            http_listener,
            open: Slab::new(),
            shedding: 0,
            next_generation: 0,
            budget: Arc::clone(&settings.conns),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            dirty: VecDeque::new(),
            read_queue: VecDeque::new(),
            clock: PassClock::new(settings.pass_budget, Instant::now()),
            lingering: VecDeque::new(),
            accept_retry_at: None,
            accept_starved: None,
            stopping: false,
            trimmer: Trimmer::default(),
            stats: ConnStats::default(),
            tokens_required: settings.auth.is_some(),
            sweep_at: timeouts.sweep_every().map(|every| Instant::now() + every),
            timeouts,
            counters: Arc::clone(&settings.counters),
            conns_per_ip: settings.conns_per_ip.clone(),
            throttled: BinaryHeap::new(),
        })
    }

    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// A readiness event for a connection's token: read and/or mark for a flush.
    /// Returns false if the token is not a connection's.
    pub fn on_event(&mut self, event: &Event, dispatcher: &mut Dispatcher, now: Instant) -> bool {
        let Some(slot) = event.token().0.checked_sub(FIRST_CONNECTION_TOKEN) else {
            return false;
        };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            if self.clock.may_read() {
                let depth = if event.is_read_closed() || event.is_error() {
                    ReadDepth::ToEnd
                } else {
                    ReadDepth::UntilShortRead
                };
                self.read(slot, dispatcher, now, depth);
            } else {
                // Its turn comes in a later pass (a queued read reads to the end).
                self.queue_read(slot);
            }
        }
        if event.is_writable() {
            self.mark_dirty(slot);
        }
        true
    }

    /// When something is due: a lingerer's close, an accept retry, a trim.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.lingering.front().map(|&(at, _, _)| at),
            self.accept_retry_at,
            self.trimmer.next_due(),
            self.sweep_at.filter(|_| !self.open.is_empty()),
            self.throttled.peek().map(|Reverse((at, _, _))| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Connections wait to be read or written: poll without sleeping.
    pub fn has_waiting(&self) -> bool {
        !self.read_queue.is_empty() || !self.dirty.is_empty()
    }

    /// A pass begins at `now`: its time for reading and writing starts.
    pub fn begin_pass(&mut self, now: Instant) {
        self.clock.begin(now);
    }

    fn queue_read(&mut self, slot: usize) {
        if let Some(connection) = self.open.get_mut(slot) {
            if connection.mark_queued() {
                self.read_queue.push_back(slot);
            }
        }
    }

    /// Accepts every pending connection on the listener for `protocol`.
    pub fn accept(&mut self, protocol: Protocol, now: Instant) {
        let listener = match protocol {
            Protocol::Binary => &self.listener,
            Protocol::Http => &self.http_listener,
        };
        let Some(listener) = listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    tracing::debug!(shard = self.shard, %peer, ?protocol, "accepted");
                    if let Some((since, tries)) = self.accept_starved.take() {
                        tracing::info!(
                            shard = self.shard,
                            failed_tries = tries,
                            after_ms = now.saturating_duration_since(since).as_millis() as u64,
                            "accepting connections again"
                        );
                    }
                    let refused = self.take_places(peer.ip()).err();
                    let shedding = refused.is_some();
                    if let Some(why) = refused {
                        self.stats.refused += 1;
                        self.counters.refused(why);
                        if self.shedding >= MAX_SHEDDING_CONNECTIONS {
                            continue;
                        }
                    }
                    // Answers are small and latency is the product: no Nagle.
                    let _ = stream.set_nodelay(true);
                    self.next_generation = self.next_generation.wrapping_add(1);
                    let tokens = self.tokens_required && protocol == Protocol::Binary;
                    let access = Access::new(shedding, tokens, peer.ip());
                    let mut connection = Connection::new(
                        stream,
                        self.next_generation,
                        protocol,
                        access,
                        Arc::clone(&self.counters),
                        now,
                    );
                    let entry = self.open.vacant_entry();
                    let token = Token(entry.key() + FIRST_CONNECTION_TOKEN);
                    if let Err(e) = connection.register(&self.registry, token) {
                        tracing::warn!(error = %e, "could not register a connection");
                        if !shedding {
                            self.give_places(peer.ip());
                        }
                        continue;
                    }
                    if shedding {
                        self.shedding += 1;
                        // Closed after its first answers, or after the linger timeout.
                        self.lingering.push_back((
                            now + LINGER_TIMEOUT,
                            entry.key(),
                            connection.generation(),
                        ));
                    } else {
                        self.stats.accepted += 1;
                        self.counters.accepted();
                    }
                    self.counters.opened();
                    entry.insert(connection);
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
                            shard = self.shard,
                            held = self.open.len(),
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

    /// Takes a place for a connection from `ip` in the node's `--max-conns` and, with
    /// `--max-conns-per-ip`, in its address's share; `false` (holding neither) when
    /// either is full: the connection is then shed.
    /// Takes a place in the node's and the address's budgets, or says which is full.
    fn take_places(&self, ip: std::net::IpAddr) -> Result<(), Refusal> {
        if !self.budget.try_take() {
            return Err(Refusal::MaxConns);
        }
        if let Some(per_ip) = &self.conns_per_ip {
            if !per_ip.try_take(ip) {
                self.budget.give_back();
                return Err(Refusal::PerIp);
            }
        }
        Ok(())
    }

    fn give_places(&self, ip: std::net::IpAddr) {
        self.budget.give_back();
        if let Some(per_ip) = &self.conns_per_ip {
            per_ip.give_back(ip);
        }
    }

    /// Retries accepting if the open-file limit stopped it and the pause is over.
    pub fn retry_accept(&mut self, now: Instant) {
        if self.accept_retry_at.is_some_and(|at| at <= now) {
            self.accept_retry_at = None;
            self.accept(Protocol::Binary, now);
            self.accept(Protocol::Http, now);
        }
    }

    fn read(&mut self, slot: usize, dispatcher: &mut Dispatcher, now: Instant, depth: ReadDepth) {
        if self.stopping {
            return;
        }
        let Some(connection) = self.open.get_mut(slot) else {
            return;
        };
        let conn = ConnRef {
            shard: self.shard,
            slot,
            generation: connection.generation(),
        };
        let end = connection.read(
            &mut self.scratch,
            READ_BUDGET_PER_PASS,
            depth,
            dispatcher,
            conn,
            now,
        );
        match end {
            ReadEnd::Broken => return self.close(slot),
            ReadEnd::BudgetSpent => {
                if connection.mark_queued() {
                    self.read_queue.push_back(slot);
                }
            }
            ReadEnd::Throttled(until) => {
                self.throttled
                    .push(Reverse((until, slot, connection.generation())));
            }
            ReadEnd::Idle => {}
        }
        self.mark_dirty(slot);
    }

    /// Reads the connections that may have input waiting, oldest first, while the pass
    /// has time; the rest keep their place for the next pass. (Those queued meanwhile —
    /// a read that spent its byte budget — wait for the next call.)
    pub fn read_queued(&mut self, dispatcher: &mut Dispatcher, now: Instant) {
        for _ in 0..self.read_queue.len() {
            if !self.clock.may_read() {
                break;
            }
            let Some(slot) = self.read_queue.pop_front() else {
                break;
            };
            if let Some(connection) = self.open.get_mut(slot) {
                connection.unqueue();
                self.read(slot, dispatcher, now, ReadDepth::ToEnd);
            }
        }
    }

    /// An answer decided elsewhere (another shard, or Redis) for one of ours.
    pub fn deliver(
        &mut self,
        conn: ConnRef,
        response: Response,
        dispatcher: &mut Dispatcher,
        now: Instant,
    ) {
        match self.open.get_mut(conn.slot) {
            Some(connection) if connection.generation() == conn.generation => {
                let before = connection.throttled_until();
                connection.deliver(response, dispatcher, conn, now);
                // The HTTP requests that waited for this answer may have met the rate.
                let after = connection.throttled_until();
                if let Some(until) = after.filter(|_| after != before) {
                    self.throttled
                        .push(Reverse((until, conn.slot, conn.generation)));
                }
                self.mark_dirty(conn.slot);
            }
            _ => self.stats.orphan_replies += 1,
        }
    }

    /// Closes a connection one of whose requests has an outcome this node cannot know
    /// (the ledger ran its call, but the reply could not be read): every status would
    /// claim an outcome, so that request gets none. The answers it already has are
    /// written first; for its client the rest is a lost connection, after which ORDERS
    /// tells what happened (docs/PROTOCOL.md).
    pub fn abandon(&mut self, conn: ConnRef, now: Instant) {
        let Some(connection) = self
            .open
            .get_mut(conn.slot)
            .filter(|c| c.generation() == conn.generation)
        else {
            return;
        };
        let token = Token(conn.slot + FIRST_CONNECTION_TOKEN);
        let _ = connection.flush(&self.registry, token, now);
        self.close(conn.slot);
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(connection) = self.open.get_mut(slot) {
            if connection.mark_dirty() {
                self.dirty.push_back(slot);
            }
        }
    }

    /// Writes the connections owed something, oldest first, while the pass has time;
    /// the rest keep their place (and their answers) for the next pass.
    pub fn flush_dirty(&mut self, now: Instant) {
        for _ in 0..self.dirty.len() {
            if !self.clock.may_write() {
                break;
            }
            let Some(slot) = self.dirty.pop_front() else {
                break;
            };
            self.flush(slot, now);
        }
        // The pass's last reading or writing is done: count what it left.
        for cut in self.clock.cuts() {
            self.counters.pass_cut(cut);
        }
        self.trimmer.maybe_trim(now);
    }

    fn flush(&mut self, slot: usize, now: Instant) {
        let Some(connection) = self.open.get_mut(slot) else {
            return;
        };
        let token = Token(slot + FIRST_CONNECTION_TOKEN);
        match connection.flush(&self.registry, token, now) {
            FlushEnd::Close => self.close(slot),
            FlushEnd::Open {
                lingering_from_now,
                resume_read,
            } => {
                if lingering_from_now {
                    self.lingering
                        .push_back((now + LINGER_TIMEOUT, slot, connection.generation()));
                }
                if resume_read && connection.mark_queued() {
                    self.read_queue.push_back(slot);
                }
                self.trimmer.freed(connection.release_idle_buffers());
            }
        }
    }

    /// Looks every connection over for the time limits (at most every quarter of the
    /// shortest one): a half-sent request is told so and closed, an idle connection or
    /// one that does not read its answers is closed.
    pub fn enforce_timeouts(&mut self, now: Instant) {
        let (Some(at), Some(every)) = (self.sweep_at, self.timeouts.sweep_every()) else {
            return;
        };
        if at > now {
            return;
        }
        self.sweep_at = Some(now + every);
        let limits = self.timeouts;
        let overdue: Vec<(usize, Overdue)> = self
            .open
            .iter()
            .filter_map(|(slot, c)| c.overdue(now, &limits).map(|o| (slot, o)))
            .collect();
        for (slot, why) in overdue {
            tracing::debug!(shard = self.shard, slot, ?why, "connection timed out");
            match why {
                Overdue::Header => {
                    self.counters.timed_out(TimedOut::Header);
                    if let Some(connection) = self.open.get_mut(slot) {
                        connection.time_out_header();
                        self.lingering.push_back((
                            now + LINGER_TIMEOUT,
                            slot,
                            connection.generation(),
                        ));
                    }
                    self.mark_dirty(slot);
                }
                Overdue::Idle => {
                    self.counters.timed_out(TimedOut::Idle);
                    self.close(slot);
                }
                Overdue::Write => {
                    self.counters.timed_out(TimedOut::Write);
                    self.close(slot);
                }
            }
        }
    }

    /// Queues for reading the connections whose rate pause is over.
    pub fn resume_throttled(&mut self, now: Instant) {
        while let Some(&Reverse((at, slot, generation))) = self.throttled.peek() {
            if at > now {
                break;
            }
            self.throttled.pop();
            if let Some(connection) = self.open.get_mut(slot) {
                // Only the entry of the pause in force ends it (an older entry of the
                // same connection must not cut a later pause short).
                let due = connection
                    .throttled_until()
                    .is_some_and(|until| until <= now);
                if connection.generation() == generation && due {
                    connection.end_throttle();
                    if connection.mark_queued() {
                        self.read_queue.push_back(slot);
                    }
                }
            }
        }
    }

    /// Closes the connections whose linger deadline has passed.
    pub fn close_expired_lingerers(&mut self, now: Instant) {
        while let Some(&(deadline, slot, generation)) = self.lingering.front() {
            if deadline > now {
                break;
            }
            self.lingering.pop_front();
            if self
                .open
                .get(slot)
                .is_some_and(|c| c.generation() == generation)
            {
                self.close(slot);
            }
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut connection) = self.open.try_remove(slot) {
            self.counters.closed();
            tracing::debug!(
                shard = self.shard,
                slot,
                shed = connection.is_shedding(),
                "connection closed"
            );
            self.trimmer.freed(connection.buffer_capacity());
            if connection.is_shedding() {
                self.shedding -= 1;
            } else {
                self.give_places(connection.source());
            }
            connection.deregister(&self.registry);
        }
    }

    /// Shutdown: stop accepting and reading; what is owed is still written.
    pub fn stop_accepting(&mut self) {
        self.stopping = true;
        let listeners = [self.listener.take(), self.http_listener.take()];
        for mut listener in listeners.into_iter().flatten() {
            let _ = self.registry.deregister(&mut listener);
        }
        self.read_queue.clear();
    }

    /// Every connection has been given everything it is owed.
    pub fn all_owed_nothing(&self) -> bool {
        self.open.iter().all(|(_, c)| c.owes_nothing())
    }
}
