/// Set in a response's op byte: response op = request op | `RESPONSE_BIT`.
pub const RESPONSE_BIT: u8 = 0x80;

/// The op byte of the one response sent when a request cannot be framed (its length is
/// out of range); it carries `req_id` 0 and status `BAD_REQUEST`, then the server closes.
pub const FRAMING_ERROR_OP: u8 = 0xFF;

/// A request operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    Ping = 0x01,
    Buy = 0x02,
    Reserve = 0x03,
    Confirm = 0x04,
    Cancel = 0x05,
    Stock = 0x06,
    /// 1.1: presents a token (`token_len:u16 token`); args vary in length.
    Auth = 0x07,
    /// 1.1: a user's orders for an event.
    Orders = 0x08,
}

impl Op {
    /// Every op, in code order.
    pub const ALL: [Op; 8] = [
        Op::Ping,
        Op::Buy,
        Op::Reserve,
        Op::Confirm,
        Op::Cancel,
        Op::Stock,
        Op::Auth,
        Op::Orders,
    ];

    /// The op for a request op byte, if it is one this version knows.
    pub const fn from_code(code: u8) -> Option<Op> {
        match code {
            0x01 => Some(Op::Ping),
            0x02 => Some(Op::Buy),
            0x03 => Some(Op::Reserve),
            0x04 => Some(Op::Confirm),
            0x05 => Some(Op::Cancel),
            0x06 => Some(Op::Stock),
            0x07 => Some(Op::Auth),
            0x08 => Some(Op::Orders),
            _ => None,
        }
    }

    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The op byte of this op's responses.
    pub const fn response_code(self) -> u8 {
        self as u8 | RESPONSE_BIT
    }

    /// Length of the args that follow `req_id` in a request body; for AUTH, whose token
    /// varies, the length of its `token_len` field (the token follows it).
    pub const fn args_len(self) -> usize {
        match self {
            Op::Ping => 0,
            Op::Auth => 2,
            Op::Buy | Op::Reserve => 4 + 8 + 2,
            Op::Confirm | Op::Cancel => 8,
            Op::Stock => 4,
            Op::Orders => 4 + 8,
        }
    }

    /// Length of the result that follows the status byte in an OK response; for
    /// ORDERS, whose result is `n:u16` then `n` entries of 10 bytes, the length with n = 0.
    pub const fn ok_result_len(self) -> usize {
        match self {
            Op::Ping | Op::Cancel | Op::Auth => 0,
            Op::Orders => 2,
            Op::Buy | Op::Confirm => 8,
            Op::Reserve | Op::Stock => 16,
        }
    }

    /// The name used in the spec, e.g. `"BUY"`.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Ping => "PING",
            Op::Buy => "BUY",
            Op::Reserve => "RESERVE",
            Op::Confirm => "CONFIRM",
            Op::Cancel => "CANCEL",
            Op::Stock => "STOCK",
            Op::Auth => "AUTH",
            Op::Orders => "ORDERS",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
            assert_eq!(op.response_code() & !RESPONSE_BIT, op.code());
        }
        for code in [0x00, 0x09, 0x7F, 0x81, 0xFF] {
            assert_eq!(Op::from_code(code), None);
        }
    }
}
