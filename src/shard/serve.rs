//! Serving each protocol on a connection: binary frames decoded straight from the read
//! buffer, and HTTP requests one at a time, in order.

use super::*;

/// Feeds freshly read bytes through the dispatcher, keeping any incomplete tail.
pub(super) fn ingest(
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
pub(super) fn serve_http(
    dispatcher: &mut Dispatcher,
    conn: ConnRef,
    session: &mut Session,
    now: Instant,
) {
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
