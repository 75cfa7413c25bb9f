//! A load thread's connections: what each holds (its requests in flight, its buffers,
//! its link to the server), and opening them all at the ramp rate before the run.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use ticketd_proto::Op;

use super::{Progress, RunSettings, MAX_OPEN_LOOP_IN_FLIGHT};
use crate::config::StopRule;
use crate::connect;
use crate::report::ThreadResult;
use crate::workload::quota;

/// A connect that has not completed after this long counts as failed.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to open: its global index, where to, and from which source address.
#[derive(Debug, Clone, Copy)]
pub struct ConnTarget {
    pub global: u64,
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) req_id: u64,
    pub(super) intended: Instant,
    pub(super) sent: Instant,
    pub(super) op: Op,
    pub(super) user: u64,
}

/// Where a connection stands with its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    Up,
    /// Broke; a new connect starts at `due` (`--reconnect`).
    Retrying {
        due: Instant,
    },
    /// A new connect is under way since then.
    Connecting {
        since: Instant,
    },
}

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) target: ConnTarget,
    pub(super) global: u64,
    pub(super) out: BytesMut,
    pub(super) input: BytesMut,
    pub(super) slots: Vec<Option<Pending>>,
    pub(super) free: Vec<u32>,
    /// Requests this connection has started (its `j` in the user sequence).
    pub(super) started: u64,
    /// Frames sent, for unique request ids.
    pub(super) sends: u64,
    /// Requests it may still start (request-count runs).
    pub(super) quota_left: Option<u64>,
    /// Open loop: a due request that found every slot taken.
    pub(super) waiting_due: Option<Instant>,
    pub(super) wants_write: bool,
    /// Not usable: broken (and, with `--reconnect`, until it is up again).
    pub(super) dead: bool,
    /// Its death has been accounted for (see `Tally::bury_if_dead`).
    pub(super) buried: bool,
    pub(super) link: Link,
    /// `--reconnect`: when it broke, and the connects tried since.
    pub(super) down_since: Option<Instant>,
    pub(super) attempts: u32,
}

impl Conn {
    pub(super) fn in_flight(&self) -> u32 {
        (self.slots.len() - self.free.len()) as u32
    }
}

pub(super) fn connect_all(
    poll: &mut Poll,
    targets: &[ConnTarget],
    settings: &RunSettings,
    progress: &Progress,
    result: &mut ThreadResult,
) -> Vec<Conn> {
    let mut events = Events::with_capacity(1024);
    let mut connecting: Vec<Option<(TcpStream, ConnTarget, Instant)>> =
        Vec::with_capacity(targets.len());
    // Indices into `connecting`, oldest connect first.
    let mut oldest_first: VecDeque<usize> = VecDeque::new();
    let mut open = 0usize;
    let mut next = 0usize;
    let ramp_start = Instant::now();
    let capacity = match settings.rate_per_conn {
        Some(_) => MAX_OPEN_LOOP_IN_FLIGHT,
        None => settings.depth,
    };
    let mut established: Vec<(TcpStream, ConnTarget)> = Vec::new();
    let fail = |result: &mut ThreadResult, e: &io::Error| {
        *result
            .connect_errors
            .entry(connect::explain(e))
            .or_default() += 1;
        progress.failed.fetch_add(1, Ordering::Relaxed);
    };
    while next < targets.len() || open > 0 {
        let now = Instant::now();
        // Start every connect whose turn on the ramp has come.
        while next < targets.len() && ramp_start + settings.connect_interval * next as u32 <= now {
            let target = targets[next];
            match connect::start_connect(target.addr, target.source) {
                Ok(mut stream) => {
                    let token = Token(connecting.len());
                    if let Err(e) = poll
                        .registry()
                        .register(&mut stream, token, Interest::WRITABLE)
                    {
                        fail(result, &e);
                    } else {
                        oldest_first.push_back(connecting.len());
                        connecting.push(Some((stream, target, now)));
                        open += 1;
                    }
                }
                Err(e) => fail(result, &e),
            }
            next += 1;
        }
        let until_next = (next < targets.len()).then(|| {
            (ramp_start + settings.connect_interval * next as u32).saturating_duration_since(now)
        });
        let timeout = until_next
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        for event in events.iter() {
            let index = event.token().0;
            let Some(slot) = connecting.get_mut(index) else {
                continue;
            };
            let Some((stream, _, _)) = slot.as_ref() else {
                continue;
            };
            let outcome = match stream.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match stream.peer_addr() {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                    Err(e) => Err(e),
                },
            };
            let Some((mut stream, target, _)) = slot.take() else {
                continue;
            };
            open -= 1;
            let _ = poll.registry().deregister(&mut stream);
            match outcome {
                Ok(()) => {
                    progress.established.fetch_add(1, Ordering::Relaxed);
                    established.push((stream, target));
                }
                Err(e) => fail(result, &e),
            }
        }
        // Connects that never completed. They start in time order, so only the oldest
        // still pending can have expired: look at the front, never scan them all (a
        // scan per pass falls behind at thousands of connects and then expires
        // connects whose completion is merely waiting in the event queue).
        let now = Instant::now();
        while let Some(&oldest) = oldest_first.front() {
            if let Some(slot @ Some(_)) = connecting.get_mut(oldest) {
                let expired = slot
                    .as_ref()
                    .is_some_and(|(_, _, at)| now.duration_since(*at) > CONNECT_TIMEOUT);
                if !expired {
                    break;
                }
                if let Some((mut stream, _, _)) = slot.take() {
                    let _ = poll.registry().deregister(&mut stream);
                    open -= 1;
                    fail(result, &io::Error::from_raw_os_error(libc::ETIMEDOUT));
                }
            }
            oldest_first.pop_front();
        }
    }
    // Register the established connections for the run.
    let mut conns = Vec::new();
    for (mut stream, target) in established {
        let global = target.global;
        let token = Token(conns.len());
        if let Err(e) = poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            fail(result, &e);
            continue;
        }
        let quota_left = match settings.stop {
            StopRule::Requests(total) => Some(quota(global, settings.total_conns, total)),
            StopRule::Duration(_) => None,
        };
        conns.push(Conn {
            stream,
            target,
            global,
            out: BytesMut::new(),
            input: BytesMut::new(),
            slots: vec![None; capacity as usize],
            free: (0..capacity).rev().collect(),
            started: 0,
            sends: 0,
            quota_left,
            waiting_due: None,
            wants_write: false,
            dead: false,
            buried: false,
            link: Link::Up,
            down_since: None,
            attempts: 0,
        });
    }
    conns
}
