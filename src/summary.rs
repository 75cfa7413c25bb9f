//! What a node sold, per event, collected from every shard when it stops.

use std::fmt;

use crate::catalog::Catalog;
use crate::shard::{ShardReport, ShardStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSummary {
    pub id: u32,
    pub total: i64,
    pub sold: i64,
    pub held: i64,
    pub remaining: i64,
    pub orders: u64,
}

impl EventSummary {
    /// Every ticket is sold, held or remaining, exactly once.
    pub fn is_balanced(&self) -> bool {
        self.sold + self.held + self.remaining == self.total
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub events: Vec<EventSummary>,
    pub stats: ShardStats,
}

impl Summary {
    pub fn collect(catalog: &Catalog, reports: &[ShardReport]) -> Self {
        let events = catalog
            .iter()
            .enumerate()
            .map(|(index, event)| {
                let (sold, held, orders) = reports
                    .iter()
                    .filter_map(|r| r.tallies.get(index))
                    .fold((0u64, 0u64, 0u64), |(s, h, o), t| {
                        (s + t.sold, h + t.held, o + t.orders)
                    });
                EventSummary {
                    id: event.id,
                    total: event.stock.total(),
                    sold: i64::try_from(sold).unwrap_or(i64::MAX),
                    held: i64::try_from(held).unwrap_or(i64::MAX),
                    remaining: event.stock.remaining(),
                    orders,
                }
            })
            .collect();
        let stats = reports
            .iter()
            .fold(ShardStats::default(), |acc, r| ShardStats {
                accepted: acc.accepted + r.stats.accepted,
                refused: acc.refused + r.stats.refused,
                bad_requests: acc.bad_requests + r.stats.bad_requests,
                orphan_replies: acc.orphan_replies + r.stats.orphan_replies,
            });
        Summary { events, stats }
    }

    /// Ledger mode: total, sold, held and remaining are the ledger's (all nodes');
    /// `orders` stays this node's BUY orders (a CONFIRM is settled by hold id alone and
    /// is counted in the ledger's `sold`, not per node).
    pub fn use_ledger_view(&mut self, views: &[crate::redis_ledger::setup::LedgerView]) {
        for (event, view) in self.events.iter_mut().zip(views) {
            event.total = view.total;
            event.sold = view.sold;
            event.held = view.held;
            event.remaining = view.remaining;
        }
    }

    pub fn event(&self, id: u32) -> Option<&EventSummary> {
        self.events.iter().find(|e| e.id == id)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>10} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "event", "total", "sold", "held", "remaining", "orders"
        )?;
        for e in &self.events {
            writeln!(
                f,
                "{:>10} {:>12} {:>12} {:>12} {:>12} {:>12}{}",
                e.id,
                e.total,
                e.sold,
                e.held,
                e.remaining,
                e.orders,
                if e.is_balanced() { "" } else { "  UNBALANCED" }
            )?;
        }
        write!(
            f,
            "connections accepted {}, refused at --max-conns {}, bad requests {}, \
             answers for connections already gone {}",
            self.stats.accepted,
            self.stats.refused,
            self.stats.bad_requests,
            self.stats.orphan_replies
        )
    }
}
