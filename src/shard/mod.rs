//! One shard: a pinned thread running its own `mio` event loop over its own listener,
//! its connections, its slice of every event's stock, and its users' ledger.

pub mod budget;
mod connections;
mod durability;
mod serve;

use serve::{ingest, serve_http};
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

pub use dispatch::{Decider, Dispatcher, Handled, Held, HoldRoutes};
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
        let decider = match (settings.remote.clone(), journal) {
            // Ledger mode: the Redis ledger, and no embedded ledger at all.
            (Some(remote), _) => Decider::Redis(remote::RemoteLedger::new(
                settings.index,
                settings.node_id,
                &catalog,
                remote,
                REDIS_TOKEN,
                Arc::clone(&settings.readiness),
            )),
            (None, Some(journal)) => Decider::Embedded {
                ledger: Ledger::restore(
                    settings.index,
                    settings.shards,
                    settings.node_id,
                    Arc::clone(&catalog),
                    settings.hold_ttl,
                    &journal.state,
                    journal.clock,
                ),
                commit: Some(Commit::new(
                    journal.writer,
                    journal.snapshot_len,
                    journal.rotate_min,
                )),
            },
            (None, None) => Decider::Embedded {
                ledger: Ledger::new(
                    settings.index,
                    settings.node_id,
                    Arc::clone(&catalog),
                    settings.hold_ttl,
                ),
                commit: None,
            },
        };
        let mut dispatcher = Dispatcher::with_decider(
            settings.index,
            settings.shards,
            settings.node_id,
            settings.max_frame,
            catalog,
            decider,
        );
        dispatcher.http_anonymous = settings.http_anonymous;
        dispatcher.fail_stop = fail_stop;
        dispatcher.hold_routes = hold_routes;
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
                        if let Some(remote) = self.dispatcher.decider.remote_mut() {
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
            if let Decider::Embedded { ledger, .. } = &mut self.dispatcher.decider {
                ledger.expire_due(now);
            }
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
        let tallies = self.dispatcher.decider.tallies();
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
            self.dispatcher.decider.next_deadline(),
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
        let Some(remote) = self.dispatcher.decider.remote_mut() else {
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
        if let Some(remote) = self.dispatcher.decider.remote_mut() {
            remote.flush();
        }
        self.redis_answers = answers;
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

/// Builds a waker for a poll, before the poll moves to its shard's thread.
pub fn waker_for(poll: &Poll) -> io::Result<Arc<Waker>> {
    Waker::new(poll.registry(), WAKER_TOKEN).map(Arc::new)
}
