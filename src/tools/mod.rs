//! Commands that work on a ledger instead of serving: the order feed, the audit,
//! creating events in the Redis ledger; and signing HTTP purchase links.

pub mod audit;
pub mod audit_redis;
pub mod create_events;
pub mod orders;
pub mod sign;
