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
        let rows: Vec<[String; 6]> = self
            .events
            .iter()
            .map(|e| {
                [
                    e.id.to_string(),
                    e.total.to_string(),
                    e.sold.to_string(),
                    e.held.to_string(),
                    e.remaining.to_string(),
                    e.orders.to_string(),
                ]
            })
            .collect();
        // Columns as wide as their widest value (at least 10 and 12), so large sales
        // stay aligned.
        let mut widths = [10, 12, 12, 12, 12, 12];
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: [&str; 6]| -> fmt::Result {
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                let gap = if i == 0 { "" } else { " " };
                write!(f, "{gap}{cell:>width$}")?;
            }
            Ok(())
        };
        line(f, ["event", "total", "sold", "held", "remaining", "orders"])?;
        writeln!(f)?;
        for (row, e) in rows.iter().zip(&self.events) {
            line(f, row.each_ref().map(String::as_str))?;
            writeln!(f, "{}", if e.is_balanced() { "" } else { "  UNBALANCED" })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_stays_aligned_with_large_numbers() {
        let event = |id, total: i64, sold: i64| EventSummary {
            id,
            total,
            sold,
            held: 0,
            remaining: total - sold,
            orders: sold as u64,
        };
        let summary = Summary {
            events: vec![event(1, 10_000, 1), event(2, 1 << 40, 123_456_789_012)],
            stats: ShardStats::default(),
        };
        let text = summary.to_string();
        let lines: Vec<&str> = text.lines().take(3).collect();
        // Every row ends its columns at the same places as the header.
        let ends = |line: &str| -> Vec<usize> {
            let bytes = line.as_bytes();
            (0..bytes.len())
                .filter(|&i| bytes[i] != b' ' && bytes.get(i + 1).is_none_or(|&b| b == b' '))
                .collect()
        };
        assert_eq!(ends(lines[0]), ends(lines[1]), "{text}");
        assert_eq!(ends(lines[0]), ends(lines[2]), "{text}");
        // Small numbers keep the documented layout.
        let small = Summary {
            events: vec![event(1, 10_000, 1)],
            stats: ShardStats::default(),
        };
        assert!(small.to_string().starts_with(
            "     event        total         sold         held    remaining       orders\n         1        10000            1            0         9999            1\n"
        ));
    }
}
