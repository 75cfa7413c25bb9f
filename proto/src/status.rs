/// A response status. Every non-OK status means nothing was deducted and no order
/// was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    SoldOut = 1,
    LimitReached = 2,
    NotFound = 3,
    Expired = 4,
    BadRequest = 5,
    Unavailable = 6,
    Overloaded = 7,
    /// 1.1: no valid AUTH on this connection; nothing was done.
    Unauthorized = 8,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::SoldOut,
        Status::LimitReached,
        Status::NotFound,
        Status::Expired,
        Status::BadRequest,
        Status::Unavailable,
        Status::Overloaded,
        Status::Unauthorized,
    ];

    pub const fn from_code(code: u8) -> Option<Status> {
        match code {
            0 => Some(Status::Ok),
            1 => Some(Status::SoldOut),
            2 => Some(Status::LimitReached),
            3 => Some(Status::NotFound),
            4 => Some(Status::Expired),
            5 => Some(Status::BadRequest),
            6 => Some(Status::Unavailable),
            7 => Some(Status::Overloaded),
            8 => Some(Status::Unauthorized),
            _ => None,
        }
    }

    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The name used in the spec, e.g. `"SOLD_OUT"`; reports and JSON use it too.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::SoldOut => "SOLD_OUT",
            Status::LimitReached => "LIMIT_REACHED",
            Status::NotFound => "NOT_FOUND",
            Status::Expired => "EXPIRED",
            Status::BadRequest => "BAD_REQUEST",
            Status::Unavailable => "UNAVAILABLE",
            Status::Overloaded => "OVERLOADED",
            Status::Unauthorized => "UNAUTHORIZED",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_nine_is_unknown() {
        for (i, status) in Status::ALL.into_iter().enumerate() {
            assert_eq!(status.code() as usize, i);
            assert_eq!(Status::from_code(status.code()), Some(status));
        }
        assert_eq!(Status::from_code(9), None);
        assert_eq!(Status::from_code(0xFF), None);
    }
}
