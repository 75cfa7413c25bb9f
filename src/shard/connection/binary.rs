//! The binary protocol on one connection's buffers: whole frames decoded straight from
//! the read (or from the kept tail), answers into the output, an incomplete frame kept.
//! Apart from the socket so the same code can be driven by the fuzz targets.

use std::time::Instant;

use bytes::{Buf, BytesMut};

use crate::shard::access::Access;
use crate::shard::mailbox::ConnRef;
use crate::shard::output::Output;
use crate::shard::Dispatcher;

/// A binary connection's buffers and standing, borrowed for one batch of bytes.
pub struct BinaryStream<'a> {
    /// Bytes read but not yet a whole frame.
    pub input: &'a mut BytesMut,
    pub output: &'a mut Output,
    /// Requests decided elsewhere and not yet answered.
    pub in_flight: &'a mut u32,
    pub access: &'a mut Access,
}

/// What a batch left the connection as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryEnd {
    Open,
    /// Nothing more is read: the stream lost framing (the framing error is owed, after
    /// every answer before it), an AUTH failed, or a shed connection had its answers.
    Closing {
        owes_framing_error: bool,
    },
    /// Over `--rate-per-ip`: read nothing more until then; what is left waits in input.
    Throttled(Instant),
}

impl BinaryStream<'_> {
    /// Feeds `bytes` (empty: just what is kept) through the dispatcher.
    pub fn serve(
        &mut self,
        bytes: &[u8],
        dispatcher: &mut Dispatcher,
        conn: ConnRef,
        now: Instant,
    ) -> BinaryEnd {
        let shed = self.access.shed;
        // An answer is at most twice its request's size (the smallest request, 13 bytes,
        // gets 14; STOCK's 17 get 30).
        self.output.reserve(2 * (self.input.len() + bytes.len()));
        let handled = if self.input.is_empty() {
            // Common case: decode straight from the read buffer, copy only a partial tail.
            let handled = dispatcher.handle_frames(
                conn,
                bytes,
                self.output,
                self.in_flight,
                now,
                self.access,
            );
            if !handled.framing_lost && !handled.closing {
                self.input
                    .extend_from_slice(bytes.get(handled.consumed..).unwrap_or_default());
            }
            handled
        } else {
            self.input.extend_from_slice(bytes);
            let handled = dispatcher.handle_frames(
                conn,
                self.input,
                self.output,
                self.in_flight,
                now,
                self.access,
            );
            self.input.advance(handled.consumed.min(self.input.len()));
            handled
        };
        // A shed connection is done once it has had its answers; so is one whose AUTH
        // failed.
        if handled.framing_lost || handled.closing || (shed && handled.consumed > 0) {
            self.input.clear();
            return BinaryEnd::Closing {
                owes_framing_error: handled.framing_lost,
            };
        }
        match handled.throttle_until {
            Some(until) => BinaryEnd::Throttled(until),
            None => BinaryEnd::Open,
        }
    }
}
