//! ticketd: a lock-free, shard-per-core flash-sale ticket server.
//!
//! ```text
//!                 clients (wire protocol v1, docs/PROTOCOL.md)
//!                   │            │             │
//!          SO_REUSEPORT: the kernel spreads connections over listeners
//!                   ▼            ▼             ▼
//!   ┌─ ticketd-shard-0 (core 0) ─┐   ┌─ ticketd-shard-1 (core 1) ─┐
//!   │ mio::Poll  listener  slab  │   │ mio::Poll  listener  slab  │
//!   │ Dispatcher ── Ledger(users │◄─►│ Dispatcher ── Ledger(users │  crossbeam channel
//!   │   hash→0, holds, orders)   │   │   hash→1, holds, orders)   │  + mio::Waker
//!   └─────────────┬──────────────┘   └─────────────┬──────────────┘
//!                 │ fetch_sub own slice; CAS-steal others when empty
//!                 ▼                                ▼
//!        Catalog: per event, Stock = [CachePadded<AtomicI64>; shards]
//! ```
//!
//! A request is decoded on the shard whose connection read it. PING and STOCK are
//! answered there. BUY and RESERVE go to the shard that owns the user
//! ([`routing::owner_of_user`]), CONFIRM and CANCEL to the shard that issued the hold
//! (its id says which, [`ids`]). The owner decides alone, so per-user limits need no
//! lock, and stock is taken from the owner's slice. See `docs/ARCHITECTURE.md`.

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod fuzz_checks;
pub mod ids;
pub mod journal;
pub mod ledger;
pub mod limits;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod placement;
pub mod readiness;
pub mod redis_ledger;
pub mod routing;
pub mod server;
pub mod shard;
pub mod signed_links;
pub mod stats;
pub mod stock;
pub mod summary;
pub mod tools;

pub use config::{Config, EventSpec};
pub use server::{start, ServerHandle, StartError};
pub use summary::{EventSummary, Summary};
