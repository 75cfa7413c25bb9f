//! Connections that break mid-run: their requests in flight are counted lost; with
//! `--reconnect` they are opened again (with backoff, given up after a while), without
//! it their unstarted requests never start. The run-wide counters live here too.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::time::{Duration, Instant};

use mio::{Interest, Poll, Token};

use super::conn::{Conn, Link, CONNECT_TIMEOUT};
use crate::connect;
use crate::report::ThreadResult;

/// `--reconnect`: first wait before opening a broken connection again (doubling per
/// failed try, up to the cap), and how long a connection may stay down before it is
/// given up (its unstarted requests then never start).
const RECONNECT_FIRST_WAIT: Duration = Duration::from_millis(20);
const RECONNECT_MAX_WAIT: Duration = Duration::from_millis(500);
const RECONNECT_GIVE_UP: Duration = Duration::from_secs(10);

/// Run-wide counters of one thread's drive loop, and its broken connections' retries.
pub(super) struct Tally {
    /// Requests still to start on live connections (None: until the deadline).
    pub(super) quota_left: Option<u64>,
    /// `--reconnect`: broken connections are opened again.
    pub(super) reconnect: bool,
    /// (when, connection): a retry due, or a reconnect to time out.
    pub(super) retries: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Tally {
    /// Accounts once for a connection that died: its requests in flight are lost. It is
    /// opened again later (`--reconnect`), or its unstarted quota will never start.
    pub(super) fn bury_if_dead(
        &mut self,
        conn: &mut Conn,
        i: usize,
        now: Instant,
        result: &mut ThreadResult,
    ) {
        if !conn.dead || conn.buried {
            return;
        }
        conn.buried = true;
        result.broken_conns += 1;
        result.lost += u64::from(conn.in_flight());
        // Nothing it had in flight will be answered on a new connection.
        for slot in conn.slots.iter_mut() {
            *slot = None;
        }
        conn.free = (0..conn.slots.len() as u32).rev().collect();
        conn.out.clear();
        conn.input.clear();
        conn.waiting_due = None;
        if self.reconnect {
            conn.down_since = Some(now);
            conn.attempts = 0;
            self.retry_later(conn, i, now);
        } else {
            self.give_up(conn);
        }
    }

    /// Schedules the next connect of a broken connection, or gives it up once it has
    /// been down for [`RECONNECT_GIVE_UP`].
    pub(super) fn retry_later(&mut self, conn: &mut Conn, i: usize, now: Instant) {
        let wait = RECONNECT_FIRST_WAIT
            .saturating_mul(1 << conn.attempts.min(8))
            .min(RECONNECT_MAX_WAIT);
        let down = conn
            .down_since
            .map_or(Duration::ZERO, |at| now.duration_since(at));
        if down + wait > RECONNECT_GIVE_UP {
            self.give_up(conn);
            return;
        }
        conn.link = Link::Retrying { due: now + wait };
        self.retries.push(Reverse((now + wait, i)));
    }

    pub(super) fn give_up(&mut self, conn: &mut Conn) {
        conn.link = Link::Up;
        if let (Some(total), Some(left)) = (self.quota_left.as_mut(), conn.quota_left) {
            *total -= left;
        }
        conn.quota_left = conn.quota_left.map(|_| 0);
    }

    /// Starts the connects whose retry is due, and fails those that took too long.
    pub(super) fn retry_due(
        &mut self,
        poll: &Poll,
        conns: &mut [Conn],
        now: Instant,
        result: &mut ThreadResult,
    ) {
        while let Some(&Reverse((due, i))) = self.retries.peek() {
            if due > now {
                break;
            }
            self.retries.pop();
            let Some(conn) = conns.get_mut(i) else {
                continue;
            };
            match conn.link {
                Link::Retrying { due } if due <= now => {
                    match connect::start_connect(conn.target.addr, conn.target.source) {
                        Ok(mut stream) => {
                            match poll.registry().register(
                                &mut stream,
                                Token(i),
                                Interest::WRITABLE,
                            ) {
                                Ok(()) => {
                                    conn.stream = stream;
                                    conn.wants_write = false;
                                    conn.link = Link::Connecting { since: now };
                                    self.retries.push(Reverse((now + CONNECT_TIMEOUT, i)));
                                }
                                Err(e) => self.reconnect_failed(conn, i, now, &e, result),
                            }
                        }
                        Err(e) => self.reconnect_failed(conn, i, now, &e, result),
                    }
                }
                Link::Connecting { since } if now.duration_since(since) >= CONNECT_TIMEOUT => {
                    let _ = poll.registry().deregister(&mut conn.stream);
                    let timed_out = io::Error::from_raw_os_error(libc::ETIMEDOUT);
                    self.reconnect_failed(conn, i, now, &timed_out, result);
                }
                _ => {}
            }
        }
    }

    pub(super) fn reconnect_failed(
        &mut self,
        conn: &mut Conn,
        i: usize,
        now: Instant,
        e: &io::Error,
        result: &mut ThreadResult,
    ) {
        *result
            .connect_errors
            .entry(format!("reconnect: {}", connect::explain(e)))
            .or_default() += 1;
        conn.attempts += 1;
        self.retry_later(conn, i, now);
    }

    /// A readiness event on a reconnecting connection: true once it is up again.
    pub(super) fn reconnected(
        &mut self,
        poll: &Poll,
        conn: &mut Conn,
        i: usize,
        now: Instant,
        result: &mut ThreadResult,
    ) -> bool {
        let outcome = match conn.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match conn.stream.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
                Err(e) => Err(e),
            },
        };
        let outcome = outcome.and_then(|()| {
            poll.registry()
                .reregister(&mut conn.stream, Token(i), Interest::READABLE)
        });
        match outcome {
            Ok(()) => {
                conn.link = Link::Up;
                conn.dead = false;
                conn.buried = false;
                conn.down_since = None;
                conn.attempts = 0;
                result.reconnects += 1;
                true
            }
            Err(e) => {
                let _ = poll.registry().deregister(&mut conn.stream);
                self.reconnect_failed(conn, i, now, &e, result);
                false
            }
        }
    }
}
