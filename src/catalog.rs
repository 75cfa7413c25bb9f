//! The events on sale: fixed at start-up, shared read-only by every shard. Only their
//! stock slices change, and those are atomics.

use std::collections::HashMap;

use crate::config::EventSpec;
use crate::stock::{Stock, DEFAULT_QUIET_WAIT};

/// One event on sale.
#[derive(Debug)]
pub struct Event {
    pub id: u32,
    pub per_user_limit: u16,
    /// With the embedded ledger: the tickets. With `--redis`: this node's gate.
    pub stock: Stock,
}

/// All events, addressed by wire id or by dense index (used as a key in shard state).
#[derive(Debug)]
pub struct Catalog {
    events: Vec<Event>,
    by_id: HashMap<u32, usize, ahash::RandomState>,
}

impl Catalog {
    pub fn new(specs: &[EventSpec], shards: usize) -> Self {
        let available: Vec<i64> = specs.iter().map(|s| s.stock).collect();
        Self::partly_taken(specs, &available, shards)
    }

    /// Events of which only `available[i]` tickets of `specs[i]` are still on sale
    /// (recovered from the journal).
    ///
    /// # Panics
    /// If the lengths differ or an availability is outside `0..=stock`.
    pub fn partly_taken(specs: &[EventSpec], available: &[i64], shards: usize) -> Self {
        assert_eq!(specs.len(), available.len());
        let events: Vec<Event> = specs
            .iter()
            .zip(available)
            .map(|(spec, &available)| Event {
                id: spec.id,
                per_user_limit: spec.per_user_limit,
                stock: Stock::partly_taken(spec.stock, available, shards, DEFAULT_QUIET_WAIT),
            })
            .collect();
        let by_id = events
            .iter()
            .enumerate()
            .map(|(index, e)| (e.id, index))
            .collect();
        Catalog { events, by_id }
    }

    /// The dense index of the event with wire id `id`.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// # Panics
    /// If `index` did not come from [`Catalog::index_of`].
    pub fn get(&self, index: usize) -> &Event {
        &self.events[index]
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }
}
