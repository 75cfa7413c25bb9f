//! A connection's unsent answers, and the one place answers become bytes: binary frames
//! (laid out by `ticketd_proto`), the HTTP endpoint's JSON, and the framing error.

use bytes::{Buf, BufMut, BytesMut};
use ticketd_proto::{Response, ResultBody, Status};

use crate::ids::IdText;
use crate::limits::{OUTPUT_CAPACITY, OUTPUT_HIGH_WATER};
use crate::stats::{AnswerKind, ShardMeter};

/// Encoded answers not yet written to the client.
#[derive(Debug, Default)]
pub struct Output {
    bytes: BytesMut,
    /// Where every answer is counted, by op and status (the shard's counters).
    counters: ShardMeter,
    /// Answers of one kind not yet added to `counters`: a pipelined batch is mostly
    /// alike (BUY answered SOLD_OUT, again and again), so it costs one count per run
    /// and per write, not one per answer. Added before its bytes are written.
    untallied: Option<(AnswerKind, u64)>,
}

impl Output {
    /// An output whose answers are counted nowhere a server reads (benches, fuzzing).
    pub fn new() -> Self {
        Output::default()
    }

    /// An output counting its answers in `counters`, which only the calling shard's
    /// thread writes.
    pub fn counted(counters: ShardMeter) -> Self {
        Output {
            bytes: BytesMut::new(),
            counters,
            untallied: None,
        }
    }

    /// Counts one answer (the run of alike ones grows, or the last run is added).
    fn tally(&mut self, op: u8, status: Status) {
        let kind = AnswerKind::of(op, status);
        match &mut self.untallied {
            Some((run, n)) if *run == kind => *n += 1,
            other => {
                if let Some((run, n)) = other.replace((kind, 1)) {
                    self.counters.answered_many(run, n);
                }
            }
        }
    }

    /// Adds the counted answers to the shard's counters; before their bytes leave, so a
    /// client never sees an answer a scrape does not.
    fn settle_tally(&mut self) {
        if let Some((run, n)) = self.untallied.take() {
            self.counters.answered_many(run, n);
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// At or over [`OUTPUT_HIGH_WATER`]: decide nothing more for this client until it
    /// reads.
    pub fn is_full(&self) -> bool {
        self.bytes.len() >= OUTPUT_HIGH_WATER
    }

    /// What is still to be written (its answers are counted by now).
    pub fn pending(&mut self) -> &[u8] {
        self.settle_tally();
        &self.bytes
    }

    /// Drops every unsent answer (benches reuse one buffer).
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// `n` bytes were written.
    pub fn advance(&mut self, n: usize) {
        self.bytes.advance(n.min(self.bytes.len()));
    }

    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Makes room for about `estimate` more bytes in one allocation of the size needed
    /// (at most [`OUTPUT_CAPACITY`]), instead of a chain of doublings whose freed steps
    /// would stay resident: a connection's memory is its buffers' sizes.
    pub fn reserve(&mut self, estimate: usize) {
        let want = (self.bytes.len() + estimate).min(OUTPUT_CAPACITY);
        if self.bytes.capacity() < want {
            let mut grown = BytesMut::with_capacity(want);
            grown.extend_from_slice(&self.bytes);
            self.bytes = grown;
        }
    }

    /// Frees the buffer if it is empty and larger than `limit`; returns the bytes freed.
    pub fn release_if_idle(&mut self, limit: usize) -> usize {
        if self.bytes.is_empty() && self.bytes.capacity() > limit {
            let freed = self.bytes.capacity();
            self.bytes = BytesMut::new();
            return freed;
        }
        0
    }

    /// A binary answer frame.
    pub fn frame(&mut self, response: &Response) {
        self.tally(response.op, response.status);
        response.encode(&mut self.bytes);
    }

    /// A binary refusal of a request that did nothing.
    pub fn refusal(&mut self, op: u8, req_id: u64, status: Status) {
        self.frame(&Response::error(op, req_id, status));
    }

    /// The last frame of a stream that could not be framed.
    pub fn framing_error(&mut self) {
        self.frame(&Response::framing_error());
    }

    /// The HTTP endpoint's answer to a BUY, in the prototypes' shape: code 1 on
    /// success, -1 when sold out, and further negative codes for the other statuses.
    pub fn http_outcome(&mut self, response: &Response, keep_alive: bool, http10: bool) {
        self.tally(response.op, response.status);
        let order;
        let (http, code, msg) = match response.status {
            Status::Ok => {
                order = match response.result {
                    // Fixed width, so every success has the same length (ab counts a
                    // change of length as a failed request).
                    ResultBody::Order { order_id } => format!("order {}", IdText(order_id)),
                    _ => "order placed".to_string(),
                };
                (200, 1, order.as_str())
            }
            Status::SoldOut => (200, -1, "sold out"),
            Status::LimitReached => (200, -2, "limit reached: this user already bought"),
            Status::NotFound => (404, -3, "no such event"),
            Status::BadRequest => (400, -5, "bad request"),
            Status::Unavailable => (503, -6, "ledger unavailable; nothing was sold"),
            Status::Overloaded => (503, -7, "overloaded; retry later"),
            Status::Unauthorized => (403, -8, "unauthorized"),
            Status::Expired => (200, -4, "expired"),
        };
        self.http_json(http, code, msg, keep_alive, http10);
    }

    /// HTTP answers that need no ticket logic: unknown path, wrong method, bad query,
    /// overload, and requests that could not be parsed.
    pub fn http_error(&mut self, http: u16, msg: &str, keep_alive: bool, http10: bool) {
        let (code, status) = match http {
            503 => (-7, Status::Overloaded),
            403 => (-8, Status::Unauthorized),
            404 => (-5, Status::NotFound),
            _ => (-5, Status::BadRequest),
        };
        self.tally(0, status);
        self.http_json(http, code, msg, keep_alive, http10);
    }

    fn http_json(&mut self, http: u16, code: i32, msg: &str, keep_alive: bool, http10: bool) {
        let body = format!("{{\"code\":{code},\"msg\":\"{msg}\",\"data\":null}}");
        let reason = match http {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            403 => "Forbidden",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Payload Too Large",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let connection = match (keep_alive, http10) {
            (true, true) => "Connection: keep-alive\r\n",
            (false, false) => "Connection: close\r\n",
            _ => "",
        };
        let head = format!(
            "{version} {http} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{connection}\r\n",
            body.len()
        );
        self.bytes.reserve(head.len() + body.len());
        self.bytes.put_slice(head.as_bytes());
        self.bytes.put_slice(body.as_bytes());
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.settle_tally();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_have_the_prototype_shape() {
        let mut out = Output::new();
        out.http_outcome(&Response::error(0x02, 0, Status::SoldOut), false, true);
        let text = String::from_utf8(out.pending().to_vec()).expect("ASCII");
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"code\":-1,\"msg\":\"sold out\",\"data\":null}"));
        assert!(text.contains("Content-Length: 40\r\n"));
    }

    #[test]
    fn reserve_sizes_once_and_release_frees_only_idle_buffers() {
        let mut out = Output::new();
        out.reserve(10 * OUTPUT_CAPACITY);
        assert_eq!(out.capacity(), OUTPUT_CAPACITY, "capped");
        out.framing_error();
        assert_eq!(out.release_if_idle(0), 0, "not while answers wait");
        let n = out.len();
        out.advance(n);
        let held = out.capacity();
        assert!(held > 16 * 1024);
        assert_eq!(out.release_if_idle(16 * 1024), held);
        assert_eq!(out.capacity(), 0);
    }
}
