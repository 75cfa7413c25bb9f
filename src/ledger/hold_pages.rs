//! Live holds by id, grouped by runs of 64 consecutive ids into pages, each a small
//! vector of only the holds it has, sorted by id. Holds are issued in id order (an
//! order or a hold takes the next id), so a new hold is pushed at the end of the last
//! page, and a page costs what its holds do (24 bytes each, its vector's header and its
//! B-tree entry), whether they came dense (a RESERVE rush) or sparse among sales. A B-tree of single holds filled in key
//! order leaves most of its nodes half empty; and a page is freed the moment its last
//! hold ends, so a RESERVE+CANCEL flood leaves nothing behind.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Ids per page (a power of two, at most 256: a slot is a `u8`).
const PAGE: u64 = 64;
const PAGE_BITS: u32 = PAGE.trailing_zeros();

/// A live hold as a page keeps it: 24 bytes, its slot in the page in the padding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackedHold {
    pub user: u64,
    /// Nanoseconds after the owner's epoch.
    pub deadline_ns: u64,
    /// Catalog index of the event.
    pub event: u32,
    pub qty: u16,
    slot: u8,
}

impl PackedHold {
    pub fn new(user: u64, deadline_ns: u64, event: u32, qty: u16) -> Self {
        PackedHold {
            user,
            deadline_ns,
            event,
            qty,
            slot: 0,
        }
    }
}

/// A map from hold id to [`PackedHold`], in id order.
#[derive(Debug, Default)]
pub struct HoldPages {
    /// Each page shared (`Arc`) so a snapshot takes them by reference
    /// ([`HoldPages::share`]); a page changed while a snapshot holds it is copied first.
    pages: BTreeMap<u64, Arc<Vec<PackedHold>>>,
    len: usize,
}

fn split(id: u64) -> (u64, u8) {
    (id >> PAGE_BITS, (id & (PAGE - 1)) as u8)
}

fn join(page: u64, slot: u8) -> u64 {
    (page << PAGE_BITS) | u64::from(slot)
}

impl HoldPages {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, id: u64, mut hold: PackedHold) {
        let (page, slot) = split(id);
        hold.slot = slot;
        let holds = Arc::make_mut(self.pages.entry(page).or_default());
        match holds.binary_search_by_key(&slot, |h| h.slot) {
            Ok(at) => holds[at] = hold,
            Err(at) => {
                // Grow by half, not double, and never past a full page: a page's memory
                // follows its holds.
                if holds.len() == holds.capacity() {
                    let room = PAGE as usize - holds.len();
                    holds.reserve_exact((holds.len() / 2).clamp(1, room.max(1)));
                }
                holds.insert(at, hold);
                self.len += 1;
            }
        }
    }

    pub fn get(&self, id: u64) -> Option<PackedHold> {
        let (page, slot) = split(id);
        let holds = self.pages.get(&page)?;
        holds
            .binary_search_by_key(&slot, |h| h.slot)
            .ok()
            .map(|at| holds[at])
    }

    pub fn contains(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    pub fn remove(&mut self, id: u64) -> Option<PackedHold> {
        let (page, slot) = split(id);
        let Entry::Occupied(mut entry) = self.pages.entry(page) else {
            return None;
        };
        let holds = Arc::make_mut(entry.get_mut());
        let at = holds.binary_search_by_key(&slot, |h| h.slot).ok()?;
        let hold = holds.remove(at);
        if holds.is_empty() {
            entry.remove();
        } else if holds.len() * 4 <= holds.capacity() {
            holds.shrink_to(holds.len() * 2);
        }
        self.len -= 1;
        Some(hold)
    }

    /// Every hold as it is now, for another thread to read: the pages by reference.
    pub fn share(&self) -> SharedHoldPages {
        SharedHoldPages {
            pages: self
                .pages
                .iter()
                .map(|(&page, holds)| (page, Arc::clone(holds)))
                .collect(),
        }
    }

    /// The hold with the lowest id in `low..=high`, if any.
    pub fn first_in(&self, low: u64, high: u64) -> Option<(u64, PackedHold)> {
        self.pages
            .range(split(low).0..=split(high).0)
            .flat_map(|(&page, holds)| holds.iter().map(move |h| (join(page, h.slot), *h)))
            .find(|&(id, _)| id >= low)
            .filter(|&(id, _)| id <= high)
    }
}

/// [`HoldPages`] at one moment, readable on any thread.
#[derive(Debug, Clone, Default)]
pub struct SharedHoldPages {
    pages: Vec<(u64, Arc<Vec<PackedHold>>)>,
}

impl SharedHoldPages {
    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// The holds of pages `from .. from + max`, in id order.
    pub fn holds(&self, from: usize, max: usize) -> impl Iterator<Item = (u64, PackedHold)> + '_ {
        self.pages
            .iter()
            .skip(from)
            .take(max)
            .flat_map(|(page, holds)| holds.iter().map(move |h| (join(*page, h.slot), *h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(user: u64) -> PackedHold {
        PackedHold::new(user, 0, 0, 1)
    }

    #[test]
    fn holds_are_found_removed_and_walked_in_id_order_and_empty_pages_freed() {
        let mut pages = HoldPages::default();
        for id in [5u64, 1, 70, 64, 200, 100_000] {
            pages.insert(id, hold(id * 10));
        }
        pages.insert(5, hold(51));
        assert_eq!(pages.len(), 6);
        assert_eq!(pages.get(5).map(|h| h.user), Some(51));
        assert_eq!(pages.get(6), None);
        assert_eq!(
            pages
                .share()
                .holds(0, usize::MAX)
                .map(|(id, _)| id)
                .collect::<Vec<_>>(),
            [1, 5, 64, 70, 200, 100_000]
        );
        assert_eq!(pages.first_in(2, 1000).map(|(id, _)| id), Some(5));
        assert_eq!(pages.first_in(71, 199), None);
        assert_eq!(pages.first_in(71, 200).map(|(id, _)| id), Some(200));
        assert_eq!(pages.remove(5).map(|h| h.user), Some(51));
        assert_eq!(pages.remove(5), None);
        assert_eq!(pages.remove(1).map(|h| h.user), Some(10));
        assert_eq!(
            pages.pages.len(),
            3,
            "the first page went with its last hold"
        );
        assert!(!pages.contains(1));
        for id in [64, 70, 200, 100_000] {
            pages.remove(id);
        }
        assert!(pages.is_empty());
        assert!(pages.pages.is_empty());
    }

    #[test]
    fn a_page_holds_only_the_holds_it_has() {
        let mut pages = HoldPages::default();
        // One hold in every 64 ids (holds sparse among sales): one small vector each.
        for page in 0..100u64 {
            pages.insert(page * PAGE + 7, hold(page));
        }
        assert!(pages.pages.values().all(|holds| holds.capacity() == 1));
        let shared = pages.share();
        assert_eq!(shared.holds(0, 1000).count(), 100);
        // A dense page grows by half at a time and shrinks back as holds end.
        for slot in 0..PAGE {
            pages.insert(1_000 * PAGE + slot, hold(slot));
        }
        let dense = &pages.pages[&1_000];
        assert_eq!(dense.len(), 64);
        assert_eq!(dense.capacity(), 64, "a full page has no room to spare");
        for slot in 0..60 {
            pages.remove(1_000 * PAGE + slot);
        }
        assert!(pages.pages[&1_000].capacity() <= 16);
    }
}
