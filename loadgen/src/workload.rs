//! Which user each request is for, reproducibly and without repetition.
//!
//! Request `j` of global connection `c` (of `C`) is global request `k = c + j·C`, so the
//! first N requests of a run are exactly k = 0..N whichever process or thread sends
//! them. Its user is `perm(k mod U) + 1`, where `perm` is an affine bijection of 0..U
//! chosen by the seed: while k < U no user repeats.

/// A seeded bijection of `0..users`, as `k ↦ (a·k + b) mod users` with `a` coprime to
/// `users`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserSequence {
    users: u64,
    a: u64,
    b: u64,
}

impl UserSequence {
    pub fn new(users: u64, seed: u64) -> Self {
        let users = users.max(1);
        let mixed = splitmix(seed);
        let mut a = (mixed % users).max(1);
        while gcd(a, users) != 1 {
            a = a % users + 1;
        }
        let b = splitmix(mixed) % users;
        UserSequence { users, a, b }
    }

    /// The user of global request `k` (never 0: ids start at 1).
    pub fn user(&self, k: u64) -> u64 {
        let k = u128::from(k % self.users);
        ((u128::from(self.a) * k + u128::from(self.b)) % u128::from(self.users)) as u64 + 1
    }
}

/// Requests for global connection `conn` of `conns` when `total` are to be sent.
pub fn quota(conn: u64, conns: u64, total: u64) -> u64 {
    total / conns + u64::from(conn < total % conns)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn users_do_not_repeat_while_they_last() {
        for (users, seed) in [(1, 0), (10, 3), (1_000, 7), (4_096, 1), (999_983, 42)] {
            let seq = UserSequence::new(users, seed);
            let seen: HashSet<u64> = (0..users).map(|k| seq.user(k)).collect();
            assert_eq!(seen.len() as u64, users);
            assert!(seen.iter().all(|&u| (1..=users).contains(&u)));
        }
    }

    #[test]
    fn the_seed_changes_the_order() {
        let a = UserSequence::new(1_000, 1);
        let b = UserSequence::new(1_000, 2);
        assert!((0..10).any(|k| a.user(k) != b.user(k)));
    }

    #[test]
    fn quotas_cover_the_total_exactly() {
        for (conns, total) in [(1, 5), (3, 10), (1_000, 1_000_000), (7, 7)] {
            assert_eq!(
                (0..conns).map(|c| quota(c, conns, total)).sum::<u64>(),
                total
            );
        }
    }

    #[test]
    fn striding_covers_each_request_once() {
        let (conns, total) = (7u64, 100u64);
        let mut seen = HashSet::new();
        for c in 0..conns {
            for j in 0..quota(c, conns, total) {
                assert!(seen.insert(c + j * conns));
            }
        }
        assert_eq!(seen, (0..total).collect());
    }
}
