use bytes::{BufMut, BytesMut};

use crate::error::DecodeError;
use crate::frame::{check_response, Reader, LEN_PREFIX, MIN_RESPONSE_BODY_LEN};
use crate::op::{Op, FRAMING_ERROR_OP, RESPONSE_BIT};
use crate::status::Status;

/// The result bytes of an OK response; non-OK responses carry [`ResultBody::Empty`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultBody {
    /// PING, CANCEL, and every non-OK response.
    Empty,
    /// BUY and CONFIRM.
    Order { order_id: u64 },
    /// RESERVE.
    Hold { hold_id: u64, expires_unix_ms: u64 },
    /// STOCK.
    Stock { total: i64, remaining: i64 },
    /// ORDERS (1.1): the user's orders for the event, oldest first.
    Orders(OrderList),
}

/// ORDERS' result: `(order_id, qty)` of each of a user's orders for an event, oldest
/// first. At most `u16::MAX` entries (the most a per-user limit allows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderList(pub Vec<(u64, u16)>);

/// Bytes of one ORDERS entry: order_id:u64 qty:u16.
pub const ORDER_ENTRY_LEN: usize = 10;

impl ResultBody {
    fn len(&self) -> usize {
        match self {
            ResultBody::Empty => 0,
            ResultBody::Order { .. } => 8,
            ResultBody::Hold { .. } | ResultBody::Stock { .. } => 16,
            ResultBody::Orders(list) => {
                2 + ORDER_ENTRY_LEN * list.0.len().min(usize::from(u16::MAX))
            }
        }
    }
}

/// One response. `op` is the byte on the wire: the request's op with
/// [`RESPONSE_BIT`] set, or [`FRAMING_ERROR_OP`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub op: u8,
    pub req_id: u64,
    pub status: Status,
    pub result: ResultBody,
}

impl Response {
    /// An OK response to `op` carrying `result`.
    pub const fn ok(op: Op, req_id: u64, result: ResultBody) -> Self {
        Response {
            op: op.response_code(),
            req_id,
            status: Status::Ok,
            result,
        }
    }

    /// A non-OK response to a request whose op byte was `request_op` (known or not).
    pub const fn error(request_op: u8, req_id: u64, status: Status) -> Self {
        Response {
            op: request_op | RESPONSE_BIT,
            req_id,
            status,
            result: ResultBody::Empty,
        }
    }

    /// The one response sent before closing a connection whose frames cannot be split.
    pub const fn framing_error() -> Self {
        Response {
            op: FRAMING_ERROR_OP,
            req_id: 0,
            status: Status::BadRequest,
            result: ResultBody::Empty,
        }
    }

    /// The request op this answers, when it is one this version knows.
    pub const fn request_op(&self) -> Option<Op> {
        Op::from_code(self.op & !RESPONSE_BIT)
    }

    /// Bytes this response takes on the wire, prefix included.
    pub fn encoded_len(&self) -> usize {
        LEN_PREFIX + MIN_RESPONSE_BODY_LEN as usize + self.result.len()
    }

    /// Appends the whole frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        dst.put_u32(MIN_RESPONSE_BODY_LEN + self.result.len() as u32);
        dst.put_u8(self.op);
        dst.put_u64(self.req_id);
        dst.put_u8(self.status.code());
        match &self.result {
            ResultBody::Empty => {}
            &ResultBody::Order { order_id } => dst.put_u64(order_id),
            &ResultBody::Hold {
                hold_id,
                expires_unix_ms,
            } => {
                dst.put_u64(hold_id);
                dst.put_u64(expires_unix_ms);
            }
            &ResultBody::Stock { total, remaining } => {
                dst.put_i64(total);
                dst.put_i64(remaining);
            }
            ResultBody::Orders(list) => {
                let entries = &list.0[..list.0.len().min(usize::from(u16::MAX))];
                dst.put_u16(entries.len() as u16);
                for &(order_id, qty) in entries {
                    dst.put_u64(order_id);
                    dst.put_u16(qty);
                }
            }
        }
    }
}

/// Decodes the response at the front of `buf`, returning it and the bytes it consumed.
/// Used by clients (loadgen, tests); a response's shape is fixed by its op and status.
pub fn decode_response(buf: &[u8], max_frame: u32) -> Result<(Response, usize), DecodeError> {
    let frame_len = check_response(buf, max_frame)?;
    let body = buf.get(LEN_PREFIX..frame_len).unwrap_or_default();
    let mut r = Reader::new(body);
    let (Some(op), Some(req_id), Some(status_code)) = (r.u8(), r.u64(), r.u8()) else {
        return Err(DecodeError::Incomplete);
    };
    if op & RESPONSE_BIT == 0 {
        return Err(DecodeError::NotAResponse { op, frame_len });
    }
    let Some(status) = Status::from_code(status_code) else {
        return Err(DecodeError::UnknownStatus {
            status: status_code,
            frame_len,
        });
    };
    let bad_length = DecodeError::BadResultLength {
        op,
        status: status_code,
        frame_len,
    };
    let expected = match (status, Op::from_code(op & !RESPONSE_BIT)) {
        (Status::Ok, Some(Op::Orders)) => {
            let n = body
                .get(MIN_RESPONSE_BODY_LEN as usize..MIN_RESPONSE_BODY_LEN as usize + 2)
                .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
            2 + ORDER_ENTRY_LEN * n
        }
        (Status::Ok, Some(request_op)) => request_op.ok_result_len(),
        (Status::Ok, None) => return Err(bad_length),
        _ => 0,
    };
    if r.remaining() != expected {
        return Err(bad_length);
    }
    let result = match (status, Op::from_code(op & !RESPONSE_BIT)) {
        (Status::Ok, Some(Op::Buy | Op::Confirm)) => {
            r.u64().map(|order_id| ResultBody::Order { order_id })
        }
        (Status::Ok, Some(Op::Reserve)) => (|| {
            Some(ResultBody::Hold {
                hold_id: r.u64()?,
                expires_unix_ms: r.u64()?,
            })
        })(),
        (Status::Ok, Some(Op::Stock)) => (|| {
            Some(ResultBody::Stock {
                total: r.i64()?,
                remaining: r.i64()?,
            })
        })(),
        (Status::Ok, Some(Op::Orders)) => (|| {
            let n = r.u16()?;
            let entries = (0..n)
                .map(|_| Some((r.u64()?, r.u16()?)))
                .collect::<Option<Vec<_>>>()?;
            Some(ResultBody::Orders(OrderList(entries)))
        })(),
        _ => Some(ResultBody::Empty),
    };
    match result {
        Some(result) => Ok((
            Response {
                op,
                req_id,
                status,
                result,
            },
            frame_len,
        )),
        None => Err(bad_length),
    }
}
