use bytes::{BufMut, BytesMut};

use crate::error::DecodeError;
use crate::frame::{check_request, Reader, LEN_PREFIX, MIN_BODY_LEN};
use crate::op::Op;

/// One request: the client's `req_id`, echoed in the response, and what it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub req_id: u64,
    pub command: Command,
}

/// The args of BUY and RESERVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Purchase {
    pub event: u32,
    pub user: u64,
    pub qty: u16,
}

/// What a request asks, with its args.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Ping,
    Buy(Purchase),
    Reserve(Purchase),
    Confirm {
        hold_id: u64,
    },
    Cancel {
        hold_id: u64,
    },
    Stock {
        event: u32,
    },
    /// 1.1: the orders `user` holds for `event`.
    Orders {
        event: u32,
        user: u64,
    },
    /// 1.1: a token of `token_len` bytes is presented. The token itself stays in the
    /// frame (see [`auth_token`]), so a command stays small and `Copy`; to send one, use
    /// [`encode_auth`] ([`Request::encode`] writes a token of zeros of that length).
    Auth {
        token_len: u16,
    },
}

/// Longest token AUTH may carry (1.1).
pub const MAX_TOKEN_LEN: usize = 255;

/// The token of the AUTH request that `decode_request` just decoded from the front of
/// `buf` and said took `used` bytes.
pub fn auth_token(buf: &[u8], used: usize, token_len: u16) -> &[u8] {
    let end = used.min(buf.len());
    buf.get(end.saturating_sub(usize::from(token_len))..end)
        .unwrap_or_default()
}

/// Appends an AUTH frame presenting `token` (at most [`MAX_TOKEN_LEN`] bytes; a longer
/// one is cut there).
pub fn encode_auth(req_id: u64, token: &[u8], dst: &mut BytesMut) {
    let token = token.get(..MAX_TOKEN_LEN).unwrap_or(token);
    dst.put_u32(MIN_BODY_LEN + 2 + token.len() as u32);
    dst.put_u8(Op::Auth.code());
    dst.put_u64(req_id);
    dst.put_u16(token.len() as u16);
    dst.put_slice(token);
}

impl Command {
    pub const fn op(&self) -> Op {
        match self {
            Command::Ping => Op::Ping,
            Command::Buy(_) => Op::Buy,
            Command::Reserve(_) => Op::Reserve,
            Command::Confirm { .. } => Op::Confirm,
            Command::Cancel { .. } => Op::Cancel,
            Command::Stock { .. } => Op::Stock,
            Command::Orders { .. } => Op::Orders,
            Command::Auth { .. } => Op::Auth,
        }
    }
}

impl Request {
    /// Bytes this request takes on the wire, prefix included.
    pub const fn encoded_len(&self) -> usize {
        let token = match self.command {
            Command::Auth { token_len } => token_len as usize,
            _ => 0,
        };
        LEN_PREFIX + MIN_BODY_LEN as usize + self.command.op().args_len() + token
    }

    /// Appends the whole frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let op = self.command.op();
        dst.reserve(self.encoded_len());
        dst.put_u32((self.encoded_len() - LEN_PREFIX) as u32);
        dst.put_u8(op.code());
        dst.put_u64(self.req_id);
        match self.command {
            Command::Ping => {}
            Command::Buy(p) | Command::Reserve(p) => {
                dst.put_u32(p.event);
                dst.put_u64(p.user);
                dst.put_u16(p.qty);
            }
            Command::Confirm { hold_id } | Command::Cancel { hold_id } => dst.put_u64(hold_id),
            Command::Stock { event } => dst.put_u32(event),
            Command::Orders { event, user } => {
                dst.put_u32(event);
                dst.put_u64(user);
            }
            Command::Auth { token_len } => {
                dst.put_u16(token_len);
                dst.put_bytes(0, usize::from(token_len));
            }
        }
    }
}

/// Phase two: decodes the request at the front of `buf`, returning it and the bytes it
/// consumed. Errors other than [`DecodeError::Incomplete`] and the framing errors carry
/// the op and `req_id` to answer with, and the frame length to skip.
pub fn decode_request(buf: &[u8], max_frame: u32) -> Result<(Request, usize), DecodeError> {
    let frame_len = check_request(buf, max_frame)?;
    let body = buf.get(LEN_PREFIX..frame_len).unwrap_or_default();
    let mut r = Reader::new(body);
    // check_request guaranteed at least MIN_BODY_LEN body bytes.
    let (Some(op_code), Some(req_id)) = (r.u8(), r.u64()) else {
        return Err(DecodeError::Incomplete);
    };
    let Some(op) = Op::from_code(op_code) else {
        return Err(DecodeError::UnknownOp {
            op: op_code,
            req_id,
            frame_len,
        });
    };
    let bad_args = DecodeError::BadArgsLength {
        op,
        req_id,
        frame_len,
    };
    if op == Op::Auth {
        // token_len:u16 then exactly that many bytes, 1..=255 of them.
        return match r.u16() {
            Some(n)
                if (1..=MAX_TOKEN_LEN).contains(&usize::from(n))
                    && r.remaining() == usize::from(n) =>
            {
                Ok((
                    Request {
                        req_id,
                        command: Command::Auth { token_len: n },
                    },
                    frame_len,
                ))
            }
            _ => Err(bad_args),
        };
    }
    if r.remaining() != op.args_len() {
        return Err(bad_args);
    }
    let command = match op {
        Op::Ping => Some(Command::Ping),
        Op::Buy => purchase(&mut r).map(Command::Buy),
        Op::Reserve => purchase(&mut r).map(Command::Reserve),
        Op::Confirm => r.u64().map(|hold_id| Command::Confirm { hold_id }),
        Op::Cancel => r.u64().map(|hold_id| Command::Cancel { hold_id }),
        Op::Stock => r.u32().map(|event| Command::Stock { event }),
        // Handled above.
        Op::Auth => None,
        Op::Orders => (|| {
            Some(Command::Orders {
                event: r.u32()?,
                user: r.u64()?,
            })
        })(),
    };
    match command {
        Some(command) => Ok((Request { req_id, command }, frame_len)),
        None => Err(bad_args),
    }
}

fn purchase(r: &mut Reader<'_>) -> Option<Purchase> {
    Some(Purchase {
        event: r.u32()?,
        user: r.u64()?,
        qty: r.u16()?,
    })
}
