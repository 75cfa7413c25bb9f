//! The ticketd wire protocol, version 1.
//!
//! Every frame, in both directions, is a big-endian `u32` length followed by that many
//! body bytes. A request body is `op:u8 req_id:u64 args…`; a response body is
//! `op|0x80:u8 req_id:u64 status:u8 result…`. The full contract, with hex test vectors,
//! is in `docs/PROTOCOL.md`.
//!
//! Decoding is two-phase, so a reader can call it on whatever bytes it has:
//! [`check_request`] looks only at the length prefix and says whether a whole frame is
//! buffered (or why the stream cannot be framed), then [`decode_request`] parses it and
//! returns the request together with the number of bytes it consumed. Neither touches
//! the buffer, allocates, or panics on any input.
//!
//! ```
//! use bytes::BytesMut;
//! use ticketd_proto::{decode_request, Command, Request, DEFAULT_MAX_FRAME};
//!
//! let mut buf = BytesMut::new();
//! Request { req_id: 7, command: Command::Ping }.encode(&mut buf);
//! assert_eq!(&buf[..], &[0, 0, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0, 7]);
//! let (request, consumed) = decode_request(&buf, DEFAULT_MAX_FRAME).unwrap();
//! assert_eq!(consumed, 13);
//! assert_eq!(request.command, Command::Ping);
//! ```

mod error;
mod frame;
mod op;
mod request;
mod response;
mod status;

pub use error::DecodeError;
pub use frame::{check_request, check_response, LEN_PREFIX, MIN_BODY_LEN};
pub use op::{Op, FRAMING_ERROR_OP, RESPONSE_BIT};
pub use request::{
    auth_token, decode_request, encode_auth, Command, Purchase, Request, MAX_TOKEN_LEN,
};
pub use response::{decode_response, OrderList, Response, ResultBody, ORDER_ENTRY_LEN};
pub use status::Status;

/// The server's default `MAX_FRAME`: the largest request body it accepts, in bytes.
pub const DEFAULT_MAX_FRAME: u32 = 1024;
