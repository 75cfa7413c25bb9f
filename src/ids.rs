//! Order and hold ids.
//!
//! # Layout
//! `node:12 | shard:8 | sequence:44`, most significant first. The node field makes ids
//! unique across a cluster; the shard field routes a CONFIRM or CANCEL to the shard that
//! owns the hold; the sequence starts at 1, so no id is ever 0.

const SEQUENCE_BITS: u32 = 44;
const SHARD_BITS: u32 = 8;
const NODE_BITS: u32 = 12;

/// Largest node id the layout has room for.
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;
/// Most shards a node may run: the shard field's range.
pub const MAX_SHARDS: usize = 1 << SHARD_BITS;

const SEQUENCE_MASK: u64 = (1 << SEQUENCE_BITS) - 1;
const SHARD_MASK: u64 = (1 << SHARD_BITS) - 1;

/// Hands out the ids of one shard: unique, increasing, never 0.
#[derive(Debug)]
pub struct IdGenerator {
    prefix: u64,
    last: u64,
    /// The last sequence this generator may issue (the end of a reserved block).
    limit: u64,
}

impl IdGenerator {
    /// # Panics
    /// If `node` or `shard` is outside the layout; both are validated at start-up.
    pub fn new(node: u16, shard: usize) -> Self {
        assert!(node <= MAX_NODE_ID && shard < MAX_SHARDS);
        IdGenerator {
            prefix: (u64::from(node) << (SHARD_BITS + SEQUENCE_BITS))
                | ((shard as u64) << SEQUENCE_BITS),
            last: 0,
            limit: SEQUENCE_MASK,
        }
    }

    /// A generator that continues after sequence `last` (recovered from the journal, or
    /// a reserved block), so no id is issued twice across restarts.
    pub fn resume(node: u16, shard: usize, last: u64) -> Self {
        IdGenerator {
            last,
            ..IdGenerator::new(node, shard)
        }
    }

    /// A generator for the reserved block of sequences `after + 1 ..= limit`.
    pub fn block(node: u16, shard: usize, after: u64, limit: u64) -> Self {
        IdGenerator {
            last: after,
            limit: limit.min(SEQUENCE_MASK),
            ..IdGenerator::new(node, shard)
        }
    }

    /// The next id, or `None` once the block is used up.
    pub fn try_next_id(&mut self) -> Option<u64> {
        if self.last >= self.limit {
            return None;
        }
        self.last += 1;
        Some(self.prefix | self.last)
    }

    /// The node and shard bits of every id this generator issues.
    pub fn prefix(&self) -> u64 {
        self.prefix
    }

    /// The sequence of the last id issued.
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    pub fn next_id(&mut self) -> u64 {
        // 2^44 ids is half a year at a million a second on one shard; wrapping would
        // reuse ids, so stop instead.
        self.last += 1;
        assert!(self.last <= SEQUENCE_MASK, "id sequence exhausted");
        self.prefix | self.last
    }
}

/// How every order and hold id is written for people (logs, errors, `ticketd orders`,
/// the HTTP answer, the README client): `0x` and 16 hexadecimal digits, so the
/// `node:12 | shard:8 | sequence:44` layout reads off the digits and every id has one
/// length. (The Redis ledger stores ids as decimal strings, Lua's safe form for 64 bits.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdText(pub u64);

impl std::fmt::Display for IdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// Reads an id written as [`IdText`] (or in decimal).
pub fn parse_id(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The node and shard bits of `id`: every id one generator issues shares them.
pub fn prefix_of(id: u64) -> u64 {
    id & !SEQUENCE_MASK
}

/// The sequence bits of `id`.
pub fn sequence_of(id: u64) -> u64 {
    id & SEQUENCE_MASK
}

/// The shard field of `id`.
pub fn field_of(id: u64) -> u16 {
    ((id >> SEQUENCE_BITS) & SHARD_MASK) as u16
}

/// The shard field and sequence of `id`, if node `node` issued it.
pub fn split(id: u64, node: u16) -> Option<(u16, u64)> {
    let id_node = id >> (SHARD_BITS + SEQUENCE_BITS);
    let field = ((id >> SEQUENCE_BITS) & SHARD_MASK) as u16;
    (id_node == u64::from(node) && id & SEQUENCE_MASK != 0).then_some((field, id & SEQUENCE_MASK))
}

/// The shard that issued `id`, if `id` could have been issued by node `node` with
/// `shards` shards.
pub fn owning_shard(id: u64, node: u16, shards: usize) -> Option<usize> {
    let id_node = id >> (SHARD_BITS + SEQUENCE_BITS);
    let shard = ((id >> SEQUENCE_BITS) & SHARD_MASK) as usize;
    (id & SEQUENCE_MASK != 0 && id_node == u64::from(node) && shard < shards).then_some(shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_zero_and_route_back_to_their_shard() {
        let mut ids = IdGenerator::new(5, 3);
        let first = ids.next_id();
        assert_ne!(first, 0);
        assert_eq!(owning_shard(first, 5, 4), Some(3));
        assert_eq!(owning_shard(first, 4, 4), None, "another node's id");
        assert_eq!(owning_shard(first, 5, 3), None, "shard out of range");
        assert!(ids.next_id() > first);
        assert_eq!(split(first, 5), Some((3, 1)));
        assert_eq!(split(first, 6), None);
        let mut resumed = IdGenerator::resume(5, 3, 41);
        assert_eq!(split(resumed.next_id(), 5), Some((3, 42)));
        let mut block = IdGenerator::block(5, 3, 10, 11);
        assert_eq!(
            block.try_next_id().and_then(|id| split(id, 5)),
            Some((3, 11))
        );
        assert_eq!(block.try_next_id(), None, "the block is used up");
    }

    #[test]
    fn ids_are_written_one_way_and_read_back() {
        assert_eq!(IdText(0x1_0000_0000_0001).to_string(), "0x0001000000000001");
        assert_eq!(parse_id("0x0001000000000001"), Some(0x1_0000_0000_0001));
        assert_eq!(parse_id("42"), Some(42));
        assert_eq!(parse_id("0xzz"), None);
    }

    #[test]
    fn zero_and_garbage_ids_belong_to_nobody() {
        assert_eq!(owning_shard(0, 0, 2), None);
        assert_eq!(owning_shard(u64::MAX, 0, 2), None);
    }
}
