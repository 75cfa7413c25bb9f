//! One shard: a pinned thread running its own `mio` event loop (this file: poll, timers,
//! shutdown) over its connections ([`connections`], each a [`connection::Connection`]
//! doing its own I/O), deciding through its [`Dispatcher`] with the embedded ledger or the
//! Redis ledger ([`Decider`], chosen once at start).

pub mod access;
pub mod admission;
pub mod budget;
mod connection;
pub use connection::http;
pub use connection::{BinaryEnd, BinaryStream};
mod connections;
mod dispatch;
mod durability;
pub mod mailbox;
pub mod output;
pub mod pass_clock;
pub mod remote;
mod settings;
mod trim;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use ticketd_proto::Response;

use connection::Protocol;
use connections::{ConnStats, Connections, HTTP_LISTENER_TOKEN, LISTENER_TOKEN};
pub use dispatch::{Decider, Dispatcher, Handled, Held, HoldRoutes};
use mailbox::{ConnRef, Mailbox, Message};
pub use settings::ShardSettings;

use crate::catalog::Catalog;
use crate::clock::WallClock;
use crate::journal::commit::Outcome;
use crate::journal::writer::WriterHandle;
use crate::journal::{Commit, Recovered};
use crate::ledger::{EventTally, Ledger};

/// Wakes the shard when another shard sent it a batch or shutdown was asked.
pub const WAKER_TOKEN: Token = Token(0);
/// The shard's Redis connection (`--redis`). Tokens 1 and 2 are the listeners'; the
/// connections' start at 4.
const REDIS_TOKEN: Token = Token(3);

/// Readiness events taken per poll.
const EVENTS_CAPACITY: usize = 1024;
/// On shutdown: the longest wait for clients to take the answers they are owed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// On shutdown: how often a shard looks whether all shards are done.
const SHUTDOWN_TICK: Duration = Duration::from_millis(5);

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
}

/// A shard's journal: its writer, and the recovered state its ledger starts from.
pub struct ShardJournal {
    pub writer: WriterHandle,
    /// Bytes of the segment the writer starts on (its snapshot).
    pub snapshot_len: u64,
    /// A segment is rotated once it holds this much garbage (and twice the live state).
    pub rotate_min: u64,
    pub state: Arc<Recovered>,
    pub clock: WallClock,
}

pub struct Shard {
    settings: Arc<ShardSettings>,
    poll: Poll,
    connections: Connections,
    dispatcher: Dispatcher,
    mailbox: Mailbox,
    /// Ledger mode: completions read this pass, and the answers they produce.
    redis_done: Vec<crate::redis_ledger::conn::Completion<u64>>,
    redis_answers: Vec<(ConnRef, Response)>,
    /// Items the journal released this pass.
    released: Vec<(Held, Outcome)>,
    shutdown: Arc<ShutdownSignal>,
    stopping: Option<Instant>,
    finished: bool,
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
        } = parts;
        let settings = Arc::new(settings);
        let connections = Connections::new(
            &settings,
            poll.registry().try_clone()?,
            listener,
            http_listener,
        )?;
        let decider = match (settings.remote.clone(), journal) {
            // Ledger mode: the Redis ledger, and no embedded ledger at all.
            (Some(remote), _) => Decider::Redis(remote::RemoteLedger::new(
                &settings,
                &catalog,
                remote,
                REDIS_TOKEN,
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
        let dispatcher = Dispatcher::with_decider(Arc::clone(&settings), catalog, decider);
        Ok(Shard {
            settings,
            poll,
            connections,
            dispatcher,
            mailbox,
            redis_done: Vec::new(),
            redis_answers: Vec::new(),
            released: Vec::new(),
            shutdown,
            stopping: None,
            finished: false,
        })
    }

    /// Runs the event loop until every shard has finished shutting down.
    ///
    /// # Panics
    /// If `epoll_wait` itself fails: the shard cannot go on, and the process-wide panic
    /// hook takes the whole server down rather than leave it half alive.
    pub fn run(mut self) -> ShardReport {
        // A freed table's pages go back a step per pass, not in one long munmap.
        crate::memory::release::defer_large_frees();
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
            self.connections.begin_pass(now);
            // Connections an earlier pass left unread go first.
            self.connections.read_queued(&mut self.dispatcher, now);
            for event in events.iter() {
                match event.token() {
                    WAKER_TOKEN => {}
                    LISTENER_TOKEN => self.connections.accept(Protocol::Binary, now),
                    HTTP_LISTENER_TOKEN => self.connections.accept(Protocol::Http, now),
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
                    _ => {
                        self.connections.on_event(event, &mut self.dispatcher, now);
                    }
                }
            }
            self.handle_inbox(now);
            self.connections.resume_throttled(now);
            self.connections.read_queued(&mut self.dispatcher, now);
            self.drive_remote(now);
            if let Decider::Embedded { ledger, .. } = &mut self.dispatcher.decider {
                ledger.expire_due(now);
            }
            self.connections.close_expired_lingerers(now);
            self.connections.enforce_timeouts(now);
            self.connections.retry_accept(now);
            self.commit_pass(now);
            crate::memory::release::release_some(crate::memory::release::STEP);
            if let Decider::Embedded { ledger, .. } = &mut self.dispatcher.decider {
                ledger.tend_tables(crate::ledger::TEND_PER_PASS);
            }
            self.connections.flush_dirty(now);
            self.dispatcher.outbox.flush(&self.mailbox.peers);
            let counters = &self.settings.counters;
            counters.publish_tallies(self.dispatcher.decider.tallies());
            counters.loop_pass(now.elapsed());
            if self.shutdown_step(now) {
                break;
            }
        }
        self.finish_journal();
        let ConnStats {
            accepted,
            refused,
            orphan_replies,
        } = self.connections.stats();
        ShardReport {
            index: self.settings.index,
            tallies: self.dispatcher.decider.tallies().to_vec(),
            stats: ShardStats {
                accepted,
                refused,
                bad_requests: self.dispatcher.bad_requests,
                orphan_replies,
            },
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        // Answers released at the end of the last pass can have decided more (the next
        // request of an HTTP pipeline): their records must go to the journal now, not at
        // the next wake-up. Connections left unread or unwritten are owed a turn now too.
        if self.connections.has_waiting() || self.dispatcher.decider.has_unsubmitted_records() {
            return Some(Duration::ZERO);
        }
        let deadlines = [
            self.dispatcher.decider.next_deadline(),
            self.connections.next_deadline(),
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

    fn handle_inbox(&mut self, now: Instant) {
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

    /// An answer decided elsewhere (another shard, or Redis) for one of our connections.
    fn deliver(&mut self, conn: ConnRef, response: Response, now: Instant) {
        self.connections
            .deliver(conn, response, &mut self.dispatcher, now);
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
        remote.flush(now);
        let abandoned = remote.take_abandoned();
        for (conn, response) in answers.drain(..) {
            self.deliver(conn, response, now);
        }
        for conn in abandoned {
            self.connections.abandon(conn, now);
        }
        // Answers can queue new requests (HTTP pipelines): send those this pass too.
        if let Some(remote) = self.dispatcher.decider.remote_mut() {
            remote.flush(now);
            remote.publish_state();
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
            self.connections.stop_accepting();
        }
        if !self.finished {
            let done = self.connections.all_owed_nothing();
            if done || self.stopping.is_some_and(|deadline| now >= deadline) {
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
