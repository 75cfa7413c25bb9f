//! Serving each protocol on a connection: binary frames decoded straight from the read
//! buffer, and HTTP requests one at a time, in order.

use std::time::Instant;

use bytes::Buf;

use super::Connection;
use crate::shard::http::{self, Target};
use crate::shard::mailbox::ConnRef;
use crate::shard::Dispatcher;

impl Connection {
    /// Feeds freshly read bytes through the dispatcher, keeping any incomplete tail.
    pub(super) fn serve_binary(
        &mut self,
        bytes: &[u8],
        dispatcher: &mut Dispatcher,
        conn: ConnRef,
        now: Instant,
    ) {
        let shed = self.shedding;
        // An answer is at most twice its request's size (the smallest request, 13 bytes,
        // gets 14; STOCK's 17 get 30).
        self.output.reserve(2 * (self.input.len() + bytes.len()));
        let handled = if self.input.is_empty() {
            // Common case: decode straight from the read buffer, copy only a partial tail.
            let handled = dispatcher.handle_frames(
                conn,
                bytes,
                &mut self.output,
                &mut self.in_flight,
                now,
                shed,
            );
            if !handled.framing_lost {
                self.input
                    .extend_from_slice(bytes.get(handled.consumed..).unwrap_or_default());
            }
            handled
        } else {
            self.input.extend_from_slice(bytes);
            let handled = dispatcher.handle_frames(
                conn,
                &self.input,
                &mut self.output,
                &mut self.in_flight,
                now,
                shed,
            );
            self.input.advance(handled.consumed.min(self.input.len()));
            handled
        };
        // A shed connection is done once it has had its answers.
        if handled.framing_lost || (shed && handled.consumed > 0) {
            self.lingering = true;
            self.owes_framing_error = handled.framing_lost;
            self.input.clear();
        }
    }

    /// Answers the HTTP requests buffered in `input`, one at a time: a request whose
    /// answer is decided elsewhere holds the rest until it is written.
    pub(super) fn serve_http(&mut self, dispatcher: &mut Dispatcher, conn: ConnRef, now: Instant) {
        if self.shedding {
            // Over --max-conns: shed before any work, in the endpoint's own JSON.
            self.output
                .http_error(503, "overloaded; retry later", false, false);
            self.input.clear();
            self.close_when_settled = true;
            return;
        }
        while self.http_waiting.is_none() && !self.close_when_settled && !self.lingering {
            // Like the binary protocol: a client that does not read gets at most one
            // output buffer's worth of answers; the rest of its requests wait unparsed.
            if self.output.is_full() {
                return;
            }
            // An HTTP answer is about 150 bytes, whatever its request's size.
            self.output.reserve(256);
            let head = match http::parse(&self.input) {
                http::Parsed::Incomplete => return,
                http::Parsed::Invalid(code) => {
                    dispatcher.bad_requests += 1;
                    self.output
                        .http_error(code, "malformed HTTP request", false, false);
                    // Close like a binary framing error: FIN after the answer, then
                    // discard input until the peer closes, so unread bytes do not reset
                    // it away.
                    self.input.clear();
                    self.lingering = true;
                    return;
                }
                http::Parsed::Request(head) => head,
            };
            self.input.advance(head.consumed.min(self.input.len()));
            let (keep_alive, http10) = (head.keep_alive, head.http10);
            match head.target {
                Target::Buy { user: None, .. } if !dispatcher.settings.http_anonymous => {
                    self.output.http_error(
                        400,
                        "user= is required (anonymous buyers only with --http-anonymous)",
                        keep_alive,
                        http10,
                    )
                }
                Target::Buy { event, user } => {
                    match dispatcher.http_buy(conn, event, user, &mut self.in_flight, now) {
                        Some(response) => self.output.http_outcome(&response, &head),
                        None => self.http_waiting = Some(head),
                    }
                }
                Target::NotFound => self.output.http_error(
                    404,
                    "not found: try GET /buy/ticket",
                    keep_alive,
                    http10,
                ),
                Target::MethodNotAllowed => {
                    self.output
                        .http_error(405, "method not allowed: use GET", keep_alive, http10)
                }
                Target::BadQuery(why) => self.output.http_error(400, why, keep_alive, http10),
            }
            if !keep_alive {
                self.close_when_settled = true;
            }
        }
    }
}
