//! `ticketd create-events`: the one step that creates events in the Redis ledger. Nodes
//! only join events that exist, so a Redis that lost its data is never silently filled
//! with full stock again by a node that happens to start.

use std::time::Duration;

use crate::config::{EventSpec, RedisConfig, RedisUrl, DEFAULT_HOLD_TTL, MAX_HOLD_TTL};
use crate::redis_ledger::setup::{self, Created, Existing, LedgerError};

#[derive(Debug, Clone, clap::Args)]
pub struct CreateEventsArgs {
    /// The Redis ledger, e.g. `redis://127.0.0.1:6379`.
    #[arg(long, value_name = "URL", value_parser = crate::config::parse_redis_url)]
    pub redis: RedisUrl,
    /// An event to create: its id, total and per-user limit (default 1); repeatable.
    #[arg(long = "event", value_name = "ID:STOCK[:LIMIT]", required = true)]
    pub events: Vec<EventSpec>,
    /// How long a RESERVE holds tickets in this event (nodes must be started with the
    /// same `--hold-ttl`).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_HOLD_TTL,
          value_parser = crate::config::parse_duration)]
    pub hold_ttl: Duration,
    /// An event that exists gets this total, limit and hold TTL, keeping its sales
    /// (refused if the total would fall below what is sold and held).
    #[arg(long, conflicts_with = "reset")]
    pub update: bool,
    /// An event that exists is deleted — sales, holds, order stream — and created
    /// afresh. For tests and rehearsals; never during a sale.
    #[arg(long)]
    pub reset: bool,
    /// Install the ledger as a script (EVALSHA) instead of a Function library.
    #[arg(long)]
    pub redis_scripts: bool,
}

/// Why `create-events` did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(
        "--hold-ttl must be between 1ms and {}",
        humantime::format_duration(MAX_HOLD_TTL)
    )]
    HoldTtl,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Creates the events; returns one line per event saying what was done.
pub fn run(args: &CreateEventsArgs) -> Result<Vec<String>, CreateError> {
    if !(Duration::from_millis(1)..=MAX_HOLD_TTL).contains(&args.hold_ttl) {
        return Err(CreateError::HoldTtl);
    }
    let existing = match (args.update, args.reset) {
        (true, _) => Existing::Update,
        (_, true) => Existing::Reset,
        _ => Existing::Keep,
    };
    let config = RedisConfig {
        scripts: args.redis_scripts,
        login: args.redis.login.clone(),
        ..RedisConfig::new(args.redis.addr)
    };
    let done = setup::create_events(&config, &args.events, args.hold_ttl, existing)?;
    Ok(done
        .into_iter()
        .zip(&args.events)
        .map(|((id, created), spec)| {
            let what = match created {
                Created::Created => "created",
                Created::AlreadyThere => "already there, unchanged",
                Created::Updated => "updated, sales kept",
                Created::Reset => "reset: old sales deleted, created afresh",
            };
            format!(
                "event {id}: {what} (total {}, limit {}, hold TTL {})",
                spec.stock,
                spec.per_user_limit,
                humantime::format_duration(args.hold_ttl)
            )
        })
        .collect())
}
