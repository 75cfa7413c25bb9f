//! A connection's standing, consulted for every request it sends: whether it is being
//! shed (over `--max-conns`: everything answers OVERLOADED) and whether it has presented
//! one of `--auth-token-file`'s tokens (AUTH, protocol 1.1).

/// What a connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Over `--max-conns`: its first requests are answered OVERLOADED, then it closes.
    pub shed: bool,
    /// It may buy: no token is required, or it presented a good one.
    pub authenticated: bool,
}

impl Access {
    pub fn new(shed: bool, tokens_required: bool) -> Self {
        Access {
            shed,
            authenticated: !tokens_required,
        }
    }
}
