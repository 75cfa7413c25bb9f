//! One event's buyers on one shard: user id → [`UserTally`], an open-addressing table
//! written for the selling path's one likely cache miss.
//!
//! Why not a library map: a pass decides up to thousands of buyers, each landing on a
//! random slot of a table of millions, so the pass is a chain of cache misses paid one
//! after the other. [`UserTable::prefetch`] lets the caller ask for a request's slot while
//! it is still decoding the ones before it (MICA-style batched lookups), and for that the
//! slot's address must be known before the probe — which `std`/hashbrown/griddle do not
//! expose.
//!
//! # Layout
//! 16-byte slots `{user, tally}`, four to a cache line, linear probing from the slot the
//! hash's top bits name, at most three quarters full (counting tombstones). Key 0 marks
//! an empty slot and key 1 a removed one; users 0 and 1 themselves live beside the table.
//! The hash is ahash with a per-process random key, so clients cannot choose user ids
//! that pile onto one run of slots.
//!
//! # Growth never stops the loop
//! A full table is not rehashed in one go. The next table is allocated (zeroed memory,
//! nothing touched) when the current one is five eighths full, and its pages are faulted
//! in a step per loop pass ([`UserTable::tend`]) while the rest fills; at three quarters
//! it becomes the current table and every insert then moves [`MOVE_PER_INSERT`] slots of
//! the old one across. Until the old table is empty a lookup looks in both (a user is
//! always in exactly one: moved entries leave a tombstone behind). The sizes are chosen
//! so the old table is always emptied before the new one fills.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use super::UserTally;

/// Slots scanned and moved out of the old table per insert while a table grows. The new
/// table has room for at least a quarter of the old one's size in inserts before it must
/// grow again, and a move takes an eighth of it: growth always finishes first.
pub const MOVE_PER_INSERT: usize = 8;
/// Bytes of the next table faulted in per insert while it is made ahead. It must be all
/// faulted in within the eighth of the current table's size in inserts left before it is
/// needed: 256 bytes per insert (it is twice the size, 16-byte slots); twice that, so it
/// is done halfway. Tied to inserts rather than a fixed amount per pass so the cost —
/// a page fault is 2–12 µs on these VMs — is spread in proportion to the work.
pub const FAULT_CREDIT_PER_INSERT: usize = 512;
const PAGE: usize = 4096;
/// Smallest table (four cache lines).
const MIN_SLOTS: usize = 16;
const EMPTY: u64 = 0;
const REMOVED: u64 = 1;

/// A user's slot: the key and what they hold and bought.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
struct Slot {
    user: u64,
    tally: UserTally,
}

/// A zeroed array of slots owned by the table. Zeroed memory is all empty slots and
/// comes from the kernel untouched, so making a large table costs no page faults until
/// its slots are written (or [`UserTable::tend`] faults them in ahead of use).
struct Slots {
    ptr: NonNull<Slot>,
    len: usize,
}

// SAFETY: `Slots` owns its memory like a `Box<[Slot]>`; `Slot` is plain data.
unsafe impl Send for Slots {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Slots {}

impl Slots {
    /// `len` empty slots; `len` is a power of two.
    fn zeroed(len: usize) -> Slots {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (len >= MIN_SLOTS).
        let raw = unsafe { alloc::alloc_zeroed(layout) }.cast::<Slot>();
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Slots { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::array::<Slot>(len).unwrap_or_else(|_| panic!("user table of {len} slots"))
    }

    fn as_slice(&self) -> &[Slot] {
        // SAFETY: `ptr` holds `len` initialised slots (all-zero bytes are a valid
        // `Slot`) for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [Slot] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<Slot>()
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr().cast(), Self::layout(self.len)) }
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slots({})", self.len)
    }
}

/// One power-of-two array with its counts.
#[derive(Debug)]
struct Table {
    slots: Slots,
    /// `64 - log2(len)`: the hash's top bits name the home slot.
    shift: u32,
    /// Slots holding a user.
    live: usize,
    /// Slots holding a user or a tombstone: what probes must walk past.
    used: usize,
}

impl Table {
    fn new(len: usize) -> Table {
        Table {
            slots: Slots::zeroed(len),
            shift: 64 - len.trailing_zeros(),
            live: 0,
            used: 0,
        }
    }

    fn len(&self) -> usize {
        self.slots.len
    }

    /// Most used slots before the table must be replaced.
    fn limit(&self) -> usize {
        self.len() / 4 * 3
    }

    fn home(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    /// The slot holding `user`, if any. Ends at an empty slot, which a table never runs
    /// out of (it is at most three quarters used).
    fn find(&self, user: u64, hash: u64) -> Option<usize> {
        let slots = self.slots.as_slice();
        let mask = slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            let key = slots[i].user;
            if key == user {
                return Some(i);
            }
            if key == EMPTY {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Puts `user`, known to be in neither table, in the first free slot of its run.
    fn put(&mut self, user: u64, hash: u64, tally: UserTally) -> usize {
        let mask = self.len() - 1;
        let mut i = self.home(hash);
        let slots = self.slots.as_mut_slice();
        loop {
            let key = slots[i].user;
            if key == EMPTY || key == REMOVED {
                if key == EMPTY {
                    self.used += 1;
                }
                self.live += 1;
                slots[i] = Slot { user, tally };
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    fn remove_at(&mut self, i: usize) -> UserTally {
        let slot = &mut self.slots.as_mut_slice()[i];
        slot.user = REMOVED;
        self.live -= 1;
        std::mem::take(&mut slot.tally)
    }

    fn prefetch(&self, hash: u64) {
        let slot = &self.slots.as_slice()[self.home(hash)];
        prefetch_line(std::ptr::from_ref(slot).cast());
    }
}

#[cfg(target_arch = "x86_64")]
fn prefetch_line(addr: *const i8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch is a hint: it never faults and changes no memory, and SSE is
    // part of every x86-64 CPU.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(addr) }
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch_line(_addr: *const i8) {}

/// The old table while its users move to the current one: slots before `cursor` have
/// been moved.
#[derive(Debug)]
struct Moving {
    table: Table,
    cursor: usize,
}

/// The next table, made ahead of time: bytes before `faulted` have their pages mapped;
/// `credit` is how many more may be faulted in, earned by inserts.
#[derive(Debug)]
struct Next {
    table: Table,
    faulted: usize,
    credit: usize,
}

/// One event's buyers on one shard (see the module's text).
#[derive(Debug)]
pub struct UserTable {
    hasher: ahash::RandomState,
    current: Table,
    old: Option<Moving>,
    next: Option<Next>,
    /// Users 0 and 1, whose ids the slots use as markers.
    marker_users: [Option<UserTally>; 2],
}

impl UserTable {
    /// A table that holds `capacity` users without growing.
    pub fn with_capacity(capacity: usize) -> UserTable {
        UserTable {
            hasher: ahash::RandomState::new(),
            current: Table::new(slots_for(capacity)),
            old: None,
            next: None,
            marker_users: [None; 2],
        }
    }

    /// Users in the table.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let markers = self.marker_users.iter().flatten().count();
        self.current.live + self.old.as_ref().map_or(0, |m| m.table.live) + markers
    }

    /// Starts fetching `user`'s slot into the cache, for a lookup a little later.
    pub fn prefetch(&self, user: u64) {
        if user > REMOVED {
            let hash = self.hasher.hash_one(user);
            self.current.prefetch(hash);
            if let Some(moving) = &self.old {
                moving.table.prefetch(hash);
            }
        }
    }

    pub fn get(&self, user: u64) -> Option<&UserTally> {
        if let Some(m) = marker(user) {
            return self.marker_users[m].as_ref();
        }
        let hash = self.hasher.hash_one(user);
        if let Some(i) = self.current.find(user, hash) {
            return Some(&self.current.slots.as_slice()[i].tally);
        }
        let moving = self.old.as_ref()?;
        let i = moving.table.find(user, hash)?;
        Some(&moving.table.slots.as_slice()[i].tally)
    }

    pub fn get_mut(&mut self, user: u64) -> Option<&mut UserTally> {
        if let Some(m) = marker(user) {
            return self.marker_users[m].as_mut();
        }
        let hash = self.hasher.hash_one(user);
        if let Some(i) = self.current.find(user, hash) {
            return Some(&mut self.current.slots.as_mut_slice()[i].tally);
        }
        let moving = self.old.as_mut()?;
        let i = moving.table.find(user, hash)?;
        Some(&mut moving.table.slots.as_mut_slice()[i].tally)
    }

    /// Adds `user`, who must not be in the table, and returns their tally.
    pub fn insert_new(&mut self, user: u64, tally: UserTally) -> &mut UserTally {
        if let Some(m) = marker(user) {
            return self.marker_users[m].insert(tally);
        }
        self.move_some();
        if let Some(next) = self.next.as_mut() {
            next.credit += FAULT_CREDIT_PER_INSERT;
        }
        if self.current.used + 1 > self.current.limit() {
            self.grow();
        } else if self.next.is_none() && self.current.used >= self.current.len() / 8 * 5 {
            self.prepare_next();
        }
        let hash = self.hasher.hash_one(user);
        let i = self.current.put(user, hash, tally);
        &mut self.current.slots.as_mut_slice()[i].tally
    }

    /// `user`'s tally, added empty if they have none.
    pub fn get_or_insert(&mut self, user: u64) -> &mut UserTally {
        // Two lookups only on the restore and confirm paths, not the selling one.
        if self.get(user).is_none() {
            return self.insert_new(user, UserTally::default());
        }
        self.get_mut(user)
            .unwrap_or_else(|| unreachable!("just found"))
    }

    pub fn remove(&mut self, user: u64) -> Option<UserTally> {
        if let Some(m) = marker(user) {
            return self.marker_users[m].take();
        }
        let hash = self.hasher.hash_one(user);
        if let Some(i) = self.current.find(user, hash) {
            return Some(self.current.remove_at(i));
        }
        let moving = self.old.as_mut()?;
        let i = moving.table.find(user, hash)?;
        Some(moving.table.remove_at(i))
    }

    /// Between loop passes: faults in what inserts have earned of the next table's pages
    /// (whole pages, at most `budget` bytes), so that the inserts that later land on them
    /// do not each stop for a page fault — thousands at once in the first passes of a
    /// fresh table. Returns the bytes faulted in.
    pub fn tend(&mut self, budget: usize) -> usize {
        let Some(next) = self.next.as_mut() else {
            return 0;
        };
        let left = next.table.slots.bytes() - next.faulted;
        let step = next.credit.next_multiple_of(PAGE).min(budget).min(left);
        if step == 0 {
            return 0;
        }
        let start = next.table.slots.ptr.as_ptr() as usize + next.faulted;
        crate::memory::prefault::populate_range(start, step);
        next.faulted += step;
        next.credit = next.credit.saturating_sub(step);
        step
    }

    /// Bytes of slots held: the current table, the one emptying, the one made ahead.
    pub fn bytes(&self) -> usize {
        self.current.slots.bytes()
            + self.old.as_ref().map_or(0, |m| m.table.slots.bytes())
            + self.next.as_ref().map_or(0, |n| n.table.slots.bytes())
    }

    /// What the table should grow to from its present counts: never smaller, and with
    /// room for at least twice its users (so growth finishes before the next).
    fn next_len(&self, expected_live: usize) -> usize {
        self.current
            .len()
            .max((expected_live.saturating_mul(2)).next_power_of_two())
    }

    fn prepare_next(&mut self) {
        // The most users there can be when the current table reaches its limit.
        let headroom = self.current.limit() - self.current.used;
        let len = self.next_len(self.current.live + headroom + 1);
        self.next = Some(Next {
            table: Table::new(len),
            faulted: 0,
            credit: 0,
        });
    }

    /// Makes a larger (or, when mostly tombstones, equal) table current; the old one's
    /// users move across over the next inserts.
    fn grow(&mut self) {
        // Cannot happen with MOVE_PER_INSERT's arithmetic; if it did, finishing the move
        // at once keeps every user in one of at most two tables.
        while self.old.is_some() {
            self.move_some();
        }
        let len = self.next_len(self.current.live + 1);
        let fresh = match self.next.take() {
            Some(next) if next.table.len() == len => next.table,
            _ => Table::new(len),
        };
        let old = std::mem::replace(&mut self.current, fresh);
        self.old = Some(Moving {
            table: old,
            cursor: 0,
        });
    }

    /// Moves the users of the next [`MOVE_PER_INSERT`] old slots into the current table,
    /// and drops the old table once it is empty.
    fn move_some(&mut self) {
        let Some(moving) = self.old.as_mut() else {
            return;
        };
        let end = (moving.cursor + MOVE_PER_INSERT).min(moving.table.len());
        for i in moving.cursor..end {
            let user = moving.table.slots.as_slice()[i].user;
            if user > REMOVED {
                let tally = moving.table.remove_at(i);
                let hash = self.hasher.hash_one(user);
                self.current.put(user, hash, tally);
            }
        }
        moving.cursor = end;
        if end == moving.table.len() {
            self.old = None;
        }
    }
}

/// Where user 0 or 1 is kept beside the slots (their ids are the slots' markers): an
/// index into `marker_users`, 0 or 1.
fn marker(user: u64) -> Option<usize> {
    (user <= REMOVED).then_some(user as usize)
}

/// Slots for `capacity` users within the three-quarters limit.
fn slots_for(capacity: usize) -> usize {
    (capacity.saturating_mul(4) / 3 + 1)
        .next_power_of_two()
        .max(MIN_SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn tally(n: u16) -> UserTally {
        UserTally {
            bought: n,
            held: 0,
            last_order: u32::from(n),
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u64),
        Remove(u64),
        Bump(u64),
        Tend,
    }

    fn step() -> impl Strategy<Value = Step> {
        // A small key space so removes and bumps hit, plus the two marker ids.
        let user = prop_oneof![0u64..4, 0u64..3000, any::<u64>()];
        prop_oneof![
            4 => user.clone().prop_map(Step::Insert),
            2 => user.clone().prop_map(Step::Remove),
            2 => user.prop_map(Step::Bump),
            1 => Just(Step::Tend),
        ]
    }

    fn agrees(table: &UserTable, model: &HashMap<u64, u16>) {
        assert_eq!(table.len(), model.len());
        for (&user, &n) in model {
            assert_eq!(table.get(user).map(|t| t.bought), Some(n), "user {user}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the order of inserts, removals and growth, the table holds what a
        /// plain map holds (growth starts at 12 users, so every case grows many times and
        /// rebuilds over tombstones).
        #[test]
        fn the_table_agrees_with_a_map(steps in prop::collection::vec(step(), 1..4000)) {
            let mut table = UserTable::with_capacity(1);
            let mut model: HashMap<u64, u16> = HashMap::new();
            for step in steps {
                match step {
                    Step::Insert(user) => {
                        if table.get(user).is_none() {
                            table.insert_new(user, tally(1));
                            model.insert(user, 1);
                        }
                    }
                    Step::Remove(user) => {
                        let gone = table.remove(user).map(|t| t.bought);
                        prop_assert_eq!(gone, model.remove(&user));
                    }
                    Step::Bump(user) => {
                        if let Some(t) = table.get_mut(user) {
                            t.bought += 1;
                        }
                        if let Some(n) = model.get_mut(&user) {
                            *n += 1;
                        }
                    }
                    Step::Tend => {
                        table.tend(4096);
                    }
                }
                for user in [0, 1, 2, 7] {
                    prop_assert_eq!(
                        table.get(user).map(|t| t.bought),
                        model.get(&user).copied()
                    );
                }
            }
            agrees(&table, &model);
        }
    }

    #[test]
    fn growth_moves_every_user_and_finishes_before_the_next() {
        let mut table = UserTable::with_capacity(100);
        let first = table.current.len();
        let mut model = HashMap::new();
        for user in 2..200_000u64 {
            table.insert_new(user, tally(user as u16));
            model.insert(user, user as u16);
            // Never three tables' worth of users in play: `grow` never found one moving.
            if let Some(moving) = &table.old {
                assert!(moving.table.len() < table.current.len() || moving.cursor > 0);
            }
        }
        assert!(table.current.len() > first * 1000);
        agrees(&table, &model);
    }

    #[test]
    fn a_table_of_removed_users_is_rebuilt_at_its_size_not_doubled() {
        let mut table = UserTable::with_capacity(1000);
        let len = table.current.len();
        // Ten times the table's size in users who come and go, never more than 100 at
        // once: tombstones fill it, and it must rebuild in place, not grow.
        for user in 2..(len as u64 * 10) {
            table.insert_new(user, tally(1));
            if user >= 102 {
                assert!(table.remove(user - 100).is_some());
            }
        }
        assert_eq!(table.len(), 100);
        assert_eq!(table.current.len(), len);
    }

    #[test]
    fn the_next_table_is_made_ahead_and_faulted_in_by_tend() {
        let mut table = UserTable::with_capacity(1000);
        let len = table.current.len();
        let mut user = 2;
        while table.next.is_none() {
            table.insert_new(user, tally(1));
            user += 1;
        }
        assert!(table.current.used >= len / 8 * 5);
        let next_bytes = table.next.as_ref().map_or(0, |n| n.table.slots.bytes());
        assert_eq!(next_bytes, 2 * len * 16);
        // Nothing is faulted in before inserts earn it.
        assert_eq!(table.tend(usize::MAX), 0);
        let made = table.next.as_ref().map(|n| n.table.slots.ptr);
        // One tend per ten inserts, as a loop pass would: by the time the table grows,
        // all of the next one is faulted in, a page-rounded share of the inserts at a
        // time.
        let mut faulted = 0;
        while table.old.is_none() {
            for _ in 0..10 {
                table.insert_new(user, tally(1));
                user += 1;
            }
            let step = table.tend(usize::MAX);
            assert!(step <= (10 * FAULT_CREDIT_PER_INSERT).next_multiple_of(PAGE));
            faulted += step;
        }
        assert_eq!(faulted, next_bytes);
        // The table made ahead is the one growth uses.
        assert_eq!(Some(table.current.slots.ptr), made);
    }
}
