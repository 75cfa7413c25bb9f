//! Wall-clock times for the journal and the wire, derived from the monotonic clock the
//! event loop already reads: one `SystemTime` reading at start, then arithmetic, so a
//! pass pays no extra clock call and times never run backwards within a run.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    base: Instant,
    base_unix_ms: u64,
}

impl WallClock {
    pub fn now() -> Self {
        WallClock {
            base: Instant::now(),
            base_unix_ms: unix_ms_now(),
        }
    }

    /// `at` in Unix milliseconds.
    pub fn unix_ms(&self, at: Instant) -> u64 {
        match at.checked_duration_since(self.base) {
            Some(after) => self.base_unix_ms.saturating_add(millis(after)),
            None => self
                .base_unix_ms
                .saturating_sub(millis(self.base.saturating_duration_since(at))),
        }
    }

    /// The instant of Unix time `unix_ms`, clamped to at most [`FAR_FUTURE`] ahead (a
    /// time read from a file must not overflow later arithmetic on it).
    pub fn instant(&self, unix_ms: u64) -> Instant {
        if unix_ms >= self.base_unix_ms {
            let ahead = Duration::from_millis(unix_ms - self.base_unix_ms).min(FAR_FUTURE);
            self.base.checked_add(ahead).unwrap_or(self.base)
        } else {
            let before = Duration::from_millis(self.base_unix_ms - unix_ms);
            self.base.checked_sub(before).unwrap_or(self.base)
        }
    }
}

/// Furthest ahead [`WallClock::instant`] goes: far beyond any deadline ticketd makes
/// (hold TTLs are at most a week), far from `Instant`'s limits.
pub const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The system clock in Unix milliseconds (0 before 1970).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_and_unix_times_convert_both_ways() {
        let clock = WallClock::now();
        let later = clock.base + Duration::from_millis(1500);
        let ms = clock.unix_ms(later);
        assert_eq!(ms, clock.base_unix_ms + 1500);
        assert_eq!(clock.instant(ms), later);
        assert_eq!(
            clock.unix_ms(clock.instant(clock.base_unix_ms - 10)) + 10,
            clock.base_unix_ms
        );
        // A deadline of u64::MAX ms (a damaged or hostile file) is clamped, and a TTL
        // added to it does not overflow.
        let far = clock.instant(u64::MAX);
        assert_eq!(far, clock.base + FAR_FUTURE);
        let _ = far + Duration::from_secs(7 * 24 * 3600);
    }
}
