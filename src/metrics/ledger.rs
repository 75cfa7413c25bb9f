//! Ledger mode: each event's global figures — total, remaining, held over every node —
//! read from Redis when Prometheus scrapes, on the admin thread (a node alone knows only
//! its own sales and its gate). One blocking connection, kept between scrapes and made
//! again after a failure, with short time limits so a slow Redis slows a scrape, never a
//! shard.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::RedisLogin;
use crate::redis_ledger::flavor::Flavor;

/// Longest a scrape waits for Redis, per step (connect, each call).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// An event as the ledger has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerFigures {
    pub total: i64,
    pub remaining: i64,
    pub held: i64,
}

pub struct LedgerProbe {
    addr: SocketAddr,
    login: RedisLogin,
    flavor: Flavor,
    conn: Mutex<Option<redis::Connection>>,
}

impl std::fmt::Debug for LedgerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerProbe")
            .field("addr", &self.addr)
            .finish()
    }
}

impl LedgerProbe {
    pub fn new(addr: SocketAddr, login: RedisLogin, flavor: Flavor) -> Self {
        LedgerProbe {
            addr,
            login,
            flavor,
            conn: Mutex::new(None),
        }
    }

    /// Per event id, in order: its figures, or `None` when the ledger lacks it. An error
    /// when Redis could not be asked.
    pub fn read(&self, events: &[u32]) -> Result<Vec<Option<LedgerFigures>>, String> {
        let mut slot = match self.conn.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if slot.is_none() {
            *slot = Some(self.connect().map_err(|e| e.to_string())?);
        }
        let Some(conn) = slot.as_mut() else {
            return Err("no connection".into());
        };
        let mut figures = Vec::with_capacity(events.len());
        for &event in events {
            let cmd = self.flavor.adapt(crate::redis_ledger::stock(event));
            match cmd.query::<Vec<i64>>(conn) {
                Ok(reply) => figures.push(match reply.as_slice() {
                    [total, remaining, held] if *total >= 0 => Some(LedgerFigures {
                        total: *total,
                        remaining: *remaining,
                        held: *held,
                    }),
                    _ => None,
                }),
                Err(e) => {
                    // Whatever broke, the next scrape starts on a fresh connection.
                    *slot = None;
                    return Err(e.to_string());
                }
            }
        }
        Ok(figures)
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.login.connection_info(self.addr)?)?;
        let conn = client.get_connection_with_timeout(PROBE_TIMEOUT)?;
        conn.set_read_timeout(Some(PROBE_TIMEOUT))?;
        conn.set_write_timeout(Some(PROBE_TIMEOUT))?;
        Ok(conn)
    }
}
