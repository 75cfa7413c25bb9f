//! HTTP compatibility: serving `GET /buy/ticket[?event=E&user=U]` on a connection
//! (answered in the JSON shape the Go/Java + Redis prototypes use, written by
//! [`crate::shard::output`], so `ab` and `wrk` measure ticketd exactly the way they
//! measured those). Parsing is httparse's; this module only interprets.
//!
//! One request per connection is in flight at a time (the next is parsed once the
//! current one is answered), so answers always leave in request order as HTTP requires.

use std::time::Instant;

use bytes::Buf;

use super::Connection;
use crate::shard::mailbox::ConnRef;
use crate::shard::Dispatcher;
use crate::signed_links::{parse_sig, LinkParts};

/// Largest request head accepted; a longer one gets 431 and a close.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body skipped over (GET has none; a POST body is ignored).
pub const MAX_BODY: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// GET /buy/ticket with what its query named: the event (`None`: the first), the
    /// user (`None`: a fresh anonymous one, with `--http-anonymous`), and a signed
    /// link's expiry and signature (`--http-secret`).
    Buy(LinkParts),
    NotFound,
    MethodNotAllowed,
    BadQuery(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub target: Target,
    pub keep_alive: bool,
    pub http10: bool,
    /// Bytes of head and body, to drop from the input.
    pub consumed: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Incomplete,
    Request(Head),
    /// Not HTTP, or too large: answer with this status code and close.
    Invalid(u16),
}

/// Parses the request at the front of `input`.
pub fn parse(input: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(input) {
        // A whole head over the limit is refused like a partial one: the limit is on
        // what a client may make the server hold, not on how the bytes arrived.
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => return Parsed::Invalid(431),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => return Parsed::Invalid(431),
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Invalid(431),
        Err(_) => return Parsed::Invalid(400),
    };
    let http10 = request.version == Some(0);
    let mut keep_alive = !http10;
    let mut body_len = None;
    let mut chunked = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("connection") {
            let value = header.value.to_ascii_lowercase();
            if value.windows(5).any(|w| w == b"close") {
                keep_alive = false;
            } else if value.windows(10).any(|w| w == b"keep-alive") {
                keep_alive = true;
            }
        } else if header.name.eq_ignore_ascii_case("content-length") {
            // Two lengths (even equal ones) are how requests are smuggled past a
            // proxy that reads the other one: refuse rather than pick.
            if body_len.is_some() {
                return Parsed::Invalid(400);
            }
            match std::str::from_utf8(header.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
            {
                Some(n) if n <= MAX_BODY => body_len = Some(n),
                Some(_) => return Parsed::Invalid(413),
                None => return Parsed::Invalid(400),
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    // Chunked bodies are not supported on a GET endpoint; with a Content-Length too it
    // is the other smuggling shape.
    if chunked {
        return Parsed::Invalid(400);
    }
    let body_len = body_len.unwrap_or(0);
    if input.len() < head_len + body_len {
        return Parsed::Incomplete;
    }
    let target = match (request.method, request.path) {
        (Some("GET"), Some(path)) => route(path),
        (Some(_), Some(path)) if route(path) != Target::NotFound => Target::MethodNotAllowed,
        _ => Target::NotFound,
    };
    Parsed::Request(Head {
        target,
        keep_alive,
        http10,
        consumed: head_len + body_len,
    })
}

fn route(path: &str) -> Target {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    if path != "/buy/ticket" {
        return Target::NotFound;
    }
    let mut parts = LinkParts::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "event" => match value.parse() {
                Ok(v) => parts.event = Some(v),
                Err(_) => return Target::BadQuery("event must be a number from 0 to 4294967295"),
            },
            "user" => match value.parse() {
                Ok(v) => parts.user = Some(v),
                Err(_) => {
                    return Target::BadQuery("user must be a number from 0 to 18446744073709551615")
                }
            },
            "expires" => match value.parse() {
                Ok(v) => parts.expires = Some(v),
                Err(_) => return Target::BadQuery("expires must be a time in Unix seconds"),
            },
            "sig" => match parse_sig(value) {
                Some(sig) => parts.sig = Some(sig),
                None => return Target::BadQuery("sig must be 64 hex digits"),
            },
            _ => {}
        }
    }
    Target::Buy(parts)
}

/// The event (`None`: the first) and user (`None`: a fresh anonymous one) of a buy.
type Buyer = (Option<u32>, Option<u64>);

/// Who buys what for a `GET /buy/ticket`: with `--http-secret`, the signed link's event
/// and user (403 without a good, unexpired signature); otherwise the query's, a missing
/// user being refused (400) unless `--http-anonymous`.
fn buyer(dispatcher: &Dispatcher, parts: LinkParts) -> Result<Buyer, (u16, &'static str)> {
    if let Some(signer) = &dispatcher.settings.http_links {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return signer
            .verify(parts, now)
            .map(|(event, user)| (Some(event), Some(user)))
            .map_err(|refusal| (403, refusal.message()));
    }
    if parts.user.is_none() && !dispatcher.settings.http_anonymous {
        return Err((
            400,
            "user= is required (anonymous buyers only with --http-anonymous)",
        ));
    }
    Ok((parts.event, parts.user))
}

impl Connection {
    /// Answers the HTTP requests buffered in `input`, one at a time: a request whose
    /// answer is decided elsewhere holds the rest until it is written.
    pub(super) fn serve_http(&mut self, dispatcher: &mut Dispatcher, conn: ConnRef, now: Instant) {
        if self.access.shed {
            // Over --max-conns: shed before any work, in the endpoint's own JSON.
            self.output
                .http_error(503, "overloaded; retry later", false, false);
            self.input.clear();
            self.close_when_done = true;
            return;
        }
        while self.http_waiting.is_none() && !self.close_when_done && !self.lingering {
            // Like the binary protocol: a client that does not read gets at most one
            // output buffer's worth of answers; the rest of its requests wait unparsed.
            if self.output.is_full() {
                return;
            }
            // An HTTP answer is about 150 bytes, whatever its request's size.
            self.output.reserve(256);
            let head = match parse(&self.input) {
                Parsed::Incomplete => return,
                Parsed::Invalid(code) => {
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
                Parsed::Request(head) => head,
            };
            self.input.advance(head.consumed.min(self.input.len()));
            let (keep_alive, http10) = (head.keep_alive, head.http10);
            // Over --rate-per-ip: one 503, then nothing read until the next token.
            if let Err(wait) = dispatcher.admit(self.access.source, now) {
                self.output
                    .http_error(503, "overloaded; retry later", keep_alive, http10);
                if !keep_alive {
                    self.close_when_done = true;
                }
                self.throttled_until = Some(now + wait);
                return;
            }
            match head.target {
                Target::Buy(parts) => match buyer(dispatcher, parts) {
                    Err((code, why)) => self.output.http_error(code, why, keep_alive, http10),
                    Ok((event, user)) => {
                        match dispatcher.http_buy(conn, event, user, &mut self.in_flight, now) {
                            Some(response) => {
                                self.output.http_outcome(&response, keep_alive, http10)
                            }
                            None => self.http_waiting = Some(head),
                        }
                    }
                },
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
                self.close_when_done = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(input: &str) -> Head {
        match parse(input.as_bytes()) {
            Parsed::Request(head) => head,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keep_alive_defaults_differ_by_version() {
        let h = head("GET /buy/ticket HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(h.keep_alive && !h.http10);
        let h = head("GET /buy/ticket HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive && h.http10);
        let h = head("GET /buy/ticket HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = head("GET /buy/ticket HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive);
    }

    #[test]
    fn query_and_routes() {
        let h = head("GET /buy/ticket?event=3&user=42 HTTP/1.1\r\n\r\n");
        assert_eq!(
            h.target,
            Target::Buy(LinkParts {
                event: Some(3),
                user: Some(42),
                ..LinkParts::default()
            })
        );
        assert_eq!(
            h.consumed,
            "GET /buy/ticket?event=3&user=42 HTTP/1.1\r\n\r\n".len()
        );
        assert_eq!(head("GET /other HTTP/1.1\r\n\r\n").target, Target::NotFound);
        assert_eq!(
            head("POST /buy/ticket HTTP/1.1\r\n\r\n").target,
            Target::MethodNotAllowed
        );
        assert!(matches!(
            head("GET /buy/ticket?user=x HTTP/1.1\r\n\r\n").target,
            Target::BadQuery(_)
        ));
    }

    #[test]
    fn partial_garbage_and_oversized_input() {
        assert_eq!(parse(b"GET /buy/tic"), Parsed::Incomplete);
        assert_eq!(
            parse(b"\x00\x01\x02\x03 nonsense\r\n\r\n"),
            Parsed::Invalid(400)
        );
        let huge = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD + 1));
        assert_eq!(parse(huge.as_bytes()), Parsed::Invalid(431));
        assert_eq!(
            parse(b"GET /buy/ticket HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"),
            Parsed::Invalid(413)
        );
        let whole = format!(
            "GET /buy/ticket HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(
            parse(whole.as_bytes()),
            Parsed::Invalid(431),
            "a whole head too"
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for head in [
            "GET /buy/ticket HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET /buy/ticket HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET /buy/ticket HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /buy/ticket HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /buy/ticket HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "GET /buy/ticket HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n",
        ] {
            assert_eq!(parse(head.as_bytes()), Parsed::Invalid(400), "{head:?}");
        }
    }

    #[test]
    fn a_body_is_skipped_whole() {
        let input = b"GET /buy/ticket HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET";
        assert_eq!(
            head(std::str::from_utf8(input).unwrap()).consumed,
            input.len() - 3
        );
        assert_eq!(parse(&input[..input.len() - 5]), Parsed::Incomplete);
    }
}
