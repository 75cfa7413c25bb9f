//! One load thread: it opens its connections at the ramp rate, waits at the start gate,
//! then drives them — closed loop (`depth` in flight) or open loop (a constant rate,
//! each request scheduled ahead) — and returns what it saw.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Buf;
use mio::{Events, Interest, Poll, Token};
use ticketd_proto::{
    decode_response, Command, DecodeError, Op, Purchase, Request, ResultBody, Status,
    DEFAULT_MAX_FRAME,
};

mod broken;
mod conn;

use broken::Tally;
pub use conn::ConnTarget;
use conn::{connect_all, Conn, Link, Pending};

use crate::config::{OpKind, StopRule};
use crate::report::ThreadResult;
use crate::workload::UserSequence;

/// After the last send, how long to wait for outstanding answers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Open loop: most requests in flight per connection; later ones wait (and their wait
/// counts in the corrected latency).
pub(super) const MAX_OPEN_LOOP_IN_FLIGHT: u32 = 1024;
const READ_CHUNK: usize = 64 * 1024;

/// What every thread of a run shares.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub op: OpKind,
    pub event: u32,
    pub users: UserSequence,
    pub total_conns: u64,
    pub depth: u32,
    /// Open loop: requests per second per connection.
    pub rate_per_conn: Option<f64>,
    pub stop: StopRule,
    /// Time between two connects of one thread.
    pub connect_interval: Duration,
    pub max_tracked_orders: usize,
    /// Keep the connections open this long after the run.
    pub hold: Duration,
    /// Open a connection that broke mid-run again (`--reconnect`).
    pub reconnect: bool,
    /// `--auth-token-file`: sent with AUTH first on every connection.
    pub auth_token: Option<Vec<u8>>,
}

/// The `req_id` of the AUTH each connection opens with; no request uses it (slot ids
/// are below 2^32 in the low half).
const AUTH_REQ_ID: u64 = u64::MAX;

/// Queues the AUTH a connection must open with, if the run has a token.
fn open_with_auth(conn: &mut Conn, settings: &RunSettings) {
    if let Some(token) = &settings.auth_token {
        ticketd_proto::encode_auth(AUTH_REQ_ID, token, &mut conn.out);
    }
}

/// Live counters for progress reporting.
#[derive(Debug, Default)]
pub struct Progress {
    pub established: AtomicU64,
    pub failed: AtomicU64,
    pub threads_ready: AtomicU64,
    /// Answers so far by status code, added to by each thread every [`LIVE_EVERY`].
    pub statuses: [AtomicU64; Status::ALL.len()],
}

/// How often a load thread adds its answers to the live counters (a few shared adds a
/// second, never one per answer).
const LIVE_EVERY: Duration = Duration::from_millis(100);

impl Progress {
    /// Answers so far by status code.
    pub fn statuses(&self) -> [u64; Status::ALL.len()] {
        std::array::from_fn(|i| self.statuses[i].load(Ordering::Relaxed))
    }

    /// Adds what `result` answered since `published` (and notes it there).
    fn publish(&self, result: &ThreadResult, published: &mut [u64; Status::ALL.len()]) {
        for ((total, seen), live) in result
            .statuses
            .iter()
            .zip(published.iter_mut())
            .zip(&self.statuses)
        {
            if *total > *seen {
                live.fetch_add(*total - *seen, Ordering::Relaxed);
                *seen = *total;
            }
        }
    }
}

/// Holds every thread after its connect phase until the run starts, so all start
/// together and connecting is not measured.
#[derive(Debug, Default)]
pub struct StartGate {
    start: Mutex<Option<Instant>>,
    opened: Condvar,
}

impl StartGate {
    pub fn open(&self) -> Instant {
        let now = Instant::now();
        if let Ok(mut start) = self.start.lock() {
            *start = Some(now);
        }
        self.opened.notify_all();
        now
    }

    fn wait(&self) -> Instant {
        let mut start = match self.start.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        loop {
            if let Some(at) = *start {
                return at;
            }
            start = match self.opened.wait(start) {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }
}

/// Runs one load thread to completion.
pub fn run_thread(
    targets: Vec<ConnTarget>,
    settings: Arc<RunSettings>,
    progress: Arc<Progress>,
    gate: Arc<StartGate>,
) -> ThreadResult {
    let mut result = ThreadResult::new();
    let mut poll = match Poll::new() {
        Ok(poll) => poll,
        Err(e) => {
            *result
                .connect_errors
                .entry(format!("cannot create a poller: {e}"))
                .or_default() += targets.len() as u64;
            progress.threads_ready.fetch_add(1, Ordering::AcqRel);
            gate.wait();
            return result;
        }
    };
    let mut conns = connect_all(&mut poll, &targets, &settings, &progress, &mut result);
    result.established = conns.len() as u64;
    progress.threads_ready.fetch_add(1, Ordering::AcqRel);
    let start = gate.wait();
    drive(
        &mut poll,
        &mut conns,
        &settings,
        &mut result,
        start,
        &progress,
    );
    if !settings.hold.is_zero() {
        std::thread::sleep(settings.hold);
    }
    result
}

fn drive(
    poll: &mut Poll,
    conns: &mut [Conn],
    settings: &RunSettings,
    result: &mut ThreadResult,
    start: Instant,
    progress: &Progress,
) {
    let mut published = [0; Status::ALL.len()];
    let mut publish_at = start + LIVE_EVERY;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; READ_CHUNK];
    let deadline = match settings.stop {
        StopRule::Duration(d) => Some(start + d),
        StopRule::Requests(_) => None,
    };
    // Completion is tracked with counters, never by scanning the connections: a scan
    // per wake-up costs a whole core at thousands of connections.
    let mut tally = Tally {
        quota_left: match settings.stop {
            StopRule::Requests(_) => Some(conns.iter().filter_map(|c| c.quota_left).sum()),
            StopRule::Duration(_) => None,
        },
        reconnect: settings.reconnect,
        retries: BinaryHeap::new(),
    };
    // Open loop: each connection's next intended send, earliest first.
    for conn in conns.iter_mut() {
        open_with_auth(conn, settings);
    }
    let interval = settings
        .rate_per_conn
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut schedule: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    if let Some(interval) = interval {
        let n = conns.len().max(1) as u32;
        for i in 0..conns.len() {
            // Spread the first sends over one interval so the load is smooth from t=0.
            schedule.push(Reverse((start + interval * i as u32 / n, i)));
        }
    } else {
        for (i, conn) in conns.iter_mut().enumerate() {
            fill_closed_loop(conn, settings, start, result, &mut tally);
            flush(poll, conn, i);
            tally.bury_if_dead(conn, i, start, result);
        }
    }
    let mut stopped_sending_at = None;
    loop {
        let now = Instant::now();
        let sending = deadline.is_none_or(|d| now < d);
        if !sending && stopped_sending_at.is_none() {
            stopped_sending_at = Some(now);
        }
        if let Some(interval) = interval.filter(|_| sending) {
            while let Some(&Reverse((due, i))) = schedule.peek() {
                if due > now {
                    break;
                }
                schedule.pop();
                let conn = &mut conns[i];
                if conn.dead || conn.quota_left == Some(0) {
                    continue;
                }
                if conn.free.is_empty() {
                    conn.waiting_due = Some(due);
                    continue;
                }
                start_request(conn, settings, due, now, result, &mut tally);
                schedule.push(Reverse((due + interval, i)));
                flush(poll, conn, i);
                tally.bury_if_dead(conn, i, now, result);
            }
        }
        tally.retry_due(poll, conns, now, result);
        let outstanding = result.sent - result.answered - result.lost;
        if outstanding == 0 && (!sending || tally.quota_left == Some(0)) {
            break;
        }
        if stopped_sending_at.is_some_and(|at| now.duration_since(at) > DRAIN_TIMEOUT) {
            break;
        }
        let timeout = match schedule.peek() {
            Some(&Reverse((due, _))) if sending => precise_wait(due.saturating_duration_since(now)),
            _ => Duration::from_millis(100),
        };
        let timeout = deadline
            .filter(|_| sending)
            .map_or(timeout, |d| timeout.min(d.saturating_duration_since(now)));
        let timeout = match tally.retries.peek() {
            Some(&Reverse((due, _))) => timeout.min(due.saturating_duration_since(now)),
            None => timeout,
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        let now = Instant::now();
        let sending = deadline.is_none_or(|d| now < d);
        for event in events.iter() {
            let i = event.token().0;
            let Some(conn) = conns.get_mut(i) else {
                continue;
            };
            if let Link::Connecting { .. } = conn.link {
                if tally.reconnected(poll, conn, i, now, result) && sending {
                    open_with_auth(conn, settings);
                    match interval {
                        None => fill_closed_loop(conn, settings, now, result, &mut tally),
                        Some(_) => schedule.push(Reverse((now, i))),
                    }
                    flush(poll, conn, i);
                    tally.bury_if_dead(conn, i, now, result);
                }
                continue;
            }
            if conn.dead {
                continue;
            }
            if event.is_writable() {
                flush(poll, conn, i);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                read_responses(
                    conn,
                    &mut scratch,
                    settings,
                    now,
                    event.is_read_closed(),
                    result,
                );
                if sending {
                    match interval {
                        None => fill_closed_loop(conn, settings, now, result, &mut tally),
                        Some(interval) => {
                            if let Some(due) = conn.waiting_due.take() {
                                start_request(conn, settings, due, now, result, &mut tally);
                                schedule.push(Reverse((due + interval, i)));
                            }
                        }
                    }
                }
                flush(poll, conn, i);
            }
            tally.bury_if_dead(conn, i, now, result);
        }
        if now >= publish_at {
            progress.publish(result, &mut published);
            publish_at = now + LIVE_EVERY;
        }
    }
    progress.publish(result, &mut published);
    result.elapsed = start.elapsed();
    for conn in conns.iter().filter(|c| !c.buried) {
        result.lost += u64::from(conn.in_flight());
    }
}

/// How long to block in epoll before a send due in `until`. epoll counts whole
/// milliseconds and mio rounds a shorter timeout up to one, which would send up to 1 ms
/// late and charge loadgen's oversleep to the server in the corrected latency. So sleep
/// whole milliseconds short of the due time, and poll without blocking (spin) for the
/// last one: the load thread has its own core.
fn precise_wait(until: Duration) -> Duration {
    let whole_ms = until.as_millis().saturating_sub(1);
    Duration::from_millis(u64::try_from(whole_ms).unwrap_or(u64::MAX))
}

fn fill_closed_loop(
    conn: &mut Conn,
    settings: &RunSettings,
    now: Instant,
    result: &mut ThreadResult,
    tally: &mut Tally,
) {
    while !conn.dead
        && conn.in_flight() < settings.depth
        && conn.quota_left != Some(0)
        && !conn.free.is_empty()
    {
        start_request(conn, settings, now, now, result, tally);
    }
}

/// Starts the connection's next request of the workload.
fn start_request(
    conn: &mut Conn,
    settings: &RunSettings,
    intended: Instant,
    now: Instant,
    result: &mut ThreadResult,
    tally: &mut Tally,
) {
    let k = conn.global + conn.started * settings.total_conns;
    conn.started += 1;
    if let Some(left) = conn.quota_left.as_mut() {
        *left -= 1;
        if let Some(total) = tally.quota_left.as_mut() {
            *total -= 1;
        }
    }
    let user = settings.users.user(k);
    let purchase = Purchase {
        event: settings.event,
        user,
        qty: 1,
    };
    let command = match settings.op {
        OpKind::Buy => Command::Buy(purchase),
        OpKind::ReserveConfirm => Command::Reserve(purchase),
        OpKind::Ping => Command::Ping,
        OpKind::Stock => Command::Stock {
            event: settings.event,
        },
    };
    send(conn, command, user, intended, now, result);
}

fn send(
    conn: &mut Conn,
    command: Command,
    user: u64,
    intended: Instant,
    now: Instant,
    result: &mut ThreadResult,
) {
    let Some(slot) = conn.free.pop() else { return };
    // The slot in the low bits, a per-connection counter above: stale answers are caught.
    conn.sends += 1;
    let req_id = (conn.sends << 32) | u64::from(slot);
    conn.slots[slot as usize] = Some(Pending {
        req_id,
        intended,
        sent: now,
        op: command.op(),
        user,
    });
    Request { req_id, command }.encode(&mut conn.out);
    result.sent += 1;
}

fn flush(poll: &Poll, conn: &mut Conn, token: usize) {
    while !conn.out.is_empty() && !conn.dead {
        match conn.stream.write(&conn.out) {
            Ok(0) => conn.dead = true,
            Ok(n) => conn.out.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => conn.dead = true,
        }
    }
    if conn.dead {
        let _ = poll.registry().deregister(&mut conn.stream);
        return;
    }
    let wants_write = !conn.out.is_empty();
    if wants_write != conn.wants_write {
        let interest = if wants_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if poll
            .registry()
            .reregister(&mut conn.stream, Token(token), interest)
            .is_ok()
        {
            conn.wants_write = wants_write;
        }
    }
}

fn read_responses(
    conn: &mut Conn,
    scratch: &mut [u8],
    settings: &RunSettings,
    now: Instant,
    peer_closed: bool,
    result: &mut ThreadResult,
) {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => {
                conn.dead = true;
                return;
            }
            Ok(n) => {
                conn.input.extend_from_slice(&scratch[..n]);
                let mut used = 0;
                loop {
                    match decode_response(&conn.input[used..], DEFAULT_MAX_FRAME) {
                        Ok((response, len)) => {
                            used += len;
                            handle_response(conn, response, settings, now, result);
                        }
                        Err(DecodeError::Incomplete) => break,
                        Err(_) => {
                            result.malformed += 1;
                            conn.dead = true;
                            return;
                        }
                    }
                }
                conn.input.advance(used);
                // A short read drained the socket; new data raises a new edge. Only a
                // peer that closed needs one more read, to see the end.
                if n < scratch.len() && !peer_closed {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                conn.dead = true;
                return;
            }
        }
    }
}

fn handle_response(
    conn: &mut Conn,
    response: ticketd_proto::Response,
    settings: &RunSettings,
    now: Instant,
    result: &mut ThreadResult,
) {
    if response.req_id == AUTH_REQ_ID {
        // Refused: the server closes the connection, which then counts as broken.
        if response.status != Status::Ok {
            *result
                .connect_errors
                .entry(format!("AUTH refused: {}", response.status))
                .or_default() += 1;
        }
        return;
    }
    let slot = (response.req_id & 0xFFFF_FFFF) as usize;
    let pending = match conn.slots.get_mut(slot) {
        Some(entry) if entry.is_some_and(|p| p.req_id == response.req_id) => entry.take(),
        _ => None,
    };
    let Some(pending) = pending else {
        result.malformed += 1;
        return;
    };
    conn.free.push(slot as u32);
    result.answered += 1;
    result.statuses[usize::from(response.status.code())] += 1;
    let corrected = now.saturating_duration_since(pending.intended);
    let uncorrected = now.saturating_duration_since(pending.sent);
    result
        .latency
        .saturating_record(corrected.as_nanos() as u64);
    result
        .latency_uncorrected
        .saturating_record(uncorrected.as_nanos() as u64);
    match (pending.op, response.status, response.result) {
        (Op::Buy | Op::Confirm, Status::Ok, ResultBody::Order { order_id }) => {
            result.track_order(order_id, pending.user, settings.max_tracked_orders);
        }
        (Op::Reserve, Status::Ok, ResultBody::Hold { hold_id, .. }) => {
            // Pay at once: the CONFIRM is part of the same purchase.
            send(
                conn,
                Command::Confirm { hold_id },
                pending.user,
                now,
                now,
                result,
            );
        }
        _ => {}
    }
}
