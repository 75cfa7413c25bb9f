//! Commands that work on a ledger instead of serving: the order feed, the audit, and
//! creating events in the Redis ledger.

pub mod audit;
pub mod create_events;
pub mod orders;
