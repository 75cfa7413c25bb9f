//! How long a connection may sit in each state: a request left half-sent (header
//! timeout), nothing at all going on (idle timeout), answers the client does not take
//! (write timeout). Without these, clients that connect and never finish — slowloris —
//! hold every slot `--max-conns` allows and shut real buyers out.

use std::time::{Duration, Instant};

use super::{Connection, Protocol};
use crate::limits::Timeouts;

/// Which limit a connection passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    Header,
    Idle,
    Write,
}

impl Connection {
    /// Notes that bytes arrived or left, at `now`.
    pub(super) fn touched(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// Which limit, if any, the connection has passed at `now`. Lingering and shed
    /// connections have their own deadline and are left alone.
    pub fn overdue(&self, now: Instant, limits: &Timeouts) -> Option<Overdue> {
        if self.lingering || self.access.shed || self.close_when_done {
            return None;
        }
        let quiet = now.saturating_duration_since(self.last_activity);
        let passed = |limit: Option<Duration>| limit.is_some_and(|l| quiet >= l);
        if !self.output.is_empty() {
            return passed(limits.write).then_some(Overdue::Write);
        }
        if self.in_flight > 0 || self.http_waiting.is_some() || self.throttled_until.is_some() {
            return None;
        }
        if !self.input.is_empty() {
            return passed(limits.header).then_some(Overdue::Header);
        }
        let idle = match self.protocol {
            Protocol::Binary => limits.idle_binary,
            Protocol::Http => limits.idle_http,
        };
        passed(idle).then_some(Overdue::Idle)
    }

    /// A half-sent request ran out of time: say so where the protocol has a way (the
    /// framing error for binary, 408 for HTTP), then close like a connection that lost
    /// framing.
    pub fn time_out_header(&mut self) {
        self.input.clear();
        self.lingering = true;
        match self.protocol {
            Protocol::Binary => self.owes_framing_error = true,
            Protocol::Http => self.output.http_error(
                408,
                "request timeout: the request was not completed in time",
                false,
                false,
            ),
        }
    }
}
