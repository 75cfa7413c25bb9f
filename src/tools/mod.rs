//! Commands that read a ledger instead of serving: the order feed and the audit.

pub mod audit;
pub mod orders;
