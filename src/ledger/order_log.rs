//! A shard's orders: append-only, in chunks of [`CHUNK`]. A full chunk is frozen and
//! shared (`Arc`), which buys two things the loop needs to never stop the world:
//!
//! - the log grows one chunk at a time; a single growing `Vec` would, now and then,
//!   copy every order the shard ever made in one step;
//! - the journal's snapshot of every order is handed to the writer thread by reference
//!   ([`OrderLog::share`]: the frozen chunks' pointers and a copy of the open chunk) and
//!   encoded there, so a rotation costs the loop microseconds, not a pass of its own.
//!
//! Orders are never changed once made (a chain link to the same user's previous order
//! is set when an order is pushed), so sharing frozen chunks is safe.

use std::sync::Arc;

use super::Order;

/// Orders per chunk: 16,384 × 40 bytes = 640 KiB, allocated once per chunk.
pub const CHUNK: usize = 16 * 1024;

#[derive(Debug, Default)]
pub struct OrderLog {
    frozen: Vec<Arc<Vec<Order>>>,
    /// The open chunk (capacity [`CHUNK`] once the first order is in).
    tail: Vec<Order>,
}

impl OrderLog {
    pub fn new() -> Self {
        OrderLog::default()
    }

    pub fn len(&self) -> usize {
        self.frozen.len() * CHUNK + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `index`th order made (0 first).
    pub fn get(&self, index: usize) -> Option<&Order> {
        let (chunk, within) = (index / CHUNK, index % CHUNK);
        match chunk.cmp(&self.frozen.len()) {
            std::cmp::Ordering::Less => self.frozen[chunk].get(within),
            std::cmp::Ordering::Equal => self.tail.get(within),
            std::cmp::Ordering::Greater => None,
        }
    }

    pub fn push(&mut self, order: Order) {
        if self.tail.capacity() == 0 {
            self.tail.reserve_exact(CHUNK);
        }
        self.tail.push(order);
        if self.tail.len() == CHUNK {
            let full = std::mem::take(&mut self.tail);
            self.frozen.push(Arc::new(full));
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Order> {
        self.frozen
            .iter()
            .flat_map(|chunk| chunk.iter())
            .chain(self.tail.iter())
    }

    /// Every order so far, for another thread to read: the frozen chunks by reference,
    /// the open one copied (at most [`CHUNK`] orders).
    pub fn share(&self) -> SharedOrders {
        SharedOrders {
            frozen: self.frozen.clone(),
            tail: self.tail.clone(),
        }
    }
}

/// The orders of a shard at one moment, readable on any thread.
#[derive(Debug, Clone, Default)]
pub struct SharedOrders {
    frozen: Vec<Arc<Vec<Order>>>,
    tail: Vec<Order>,
}

impl SharedOrders {
    pub fn len(&self) -> usize {
        self.frozen.len() * CHUNK + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` orders from the `from`th on (0 first), all from one chunk: empty
    /// only past the last order.
    pub fn run_from(&self, from: usize, max: usize) -> &[Order] {
        let (chunk, within) = (from / CHUNK, from % CHUNK);
        let run = match self.frozen.get(chunk) {
            Some(full) => full.get(within..).unwrap_or(&[]),
            None if chunk == self.frozen.len() => self.tail.get(within..).unwrap_or(&[]),
            None => &[],
        };
        &run[..run.len().min(max)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(n: usize) -> Order {
        Order::new(n as u64, n as u64 * 7, 1, 1, 0, 0)
    }

    #[test]
    fn orders_are_found_by_index_across_chunks_and_shared_as_they_were() {
        let mut log = OrderLog::new();
        let n = 2 * CHUNK + 5;
        for i in 0..n {
            log.push(order(i));
        }
        assert_eq!(log.len(), n);
        for i in [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK, n - 1] {
            assert_eq!(log.get(i).map(|o| o.order_id), Some(i as u64), "{i}");
        }
        assert!(log.get(n).is_none());
        assert!(log.get(10 * CHUNK).is_none());
        let shared = log.share();
        log.push(order(n));
        assert_eq!(shared.len(), n, "a share does not see later orders");
        let mut ids = Vec::new();
        loop {
            let run = shared.run_from(ids.len(), 1000);
            if run.is_empty() {
                break;
            }
            assert!(run.len() <= 1000);
            ids.extend(run.iter().map(|o| o.order_id));
        }
        assert_eq!(ids, (0..n as u64).collect::<Vec<_>>());
        assert!(shared.run_from(n + CHUNK, 10).is_empty());
        assert!(log.iter().map(|o| o.order_id).eq(0..=n as u64));
    }
}
