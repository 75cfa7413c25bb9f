//! Which shard owns a user: a pure function of the user id, so every shard routes the
//! same user to the same owner without sharing any state.

/// The shard that decides for `user` among `shards` shards.
pub fn owner_of_user(user: u64, shards: usize) -> usize {
    // Fibonacci hashing spreads sequential ids; the high bits are the well-mixed ones.
    let mixed = user.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (mixed % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_users_spread_evenly() {
        let mut counts = [0usize; 4];
        for user in 0..40_000 {
            counts[owner_of_user(user, 4)] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn one_shard_owns_everybody() {
        assert_eq!(owner_of_user(u64::MAX, 1), 0);
    }
}
