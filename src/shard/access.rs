//! A connection's standing, consulted for every request it sends: whether it is being
//! shed (over `--max-conns`: everything answers OVERLOADED), whether it has presented
//! one of `--auth-token-file`'s tokens (AUTH, protocol 1.1), and where it comes from
//! (`--rate-per-ip`).

use std::net::{IpAddr, Ipv4Addr};

/// What a connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Over `--max-conns`: its first requests are answered OVERLOADED, then it closes.
    pub shed: bool,
    /// It may buy: no token is required, or it presented a good one.
    pub authenticated: bool,
    /// The peer's address.
    pub source: IpAddr,
}

impl Access {
    pub fn new(shed: bool, tokens_required: bool, source: IpAddr) -> Self {
        Access {
            shed,
            authenticated: !tokens_required,
            source,
        }
    }

    /// A connection with no peer (benches, fuzzing): not shed, no token needed.
    pub fn local() -> Self {
        Access::new(false, false, IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}
