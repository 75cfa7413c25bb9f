//! Reading a few requests ahead of the one being decided, to start fetching the user-table
//! entries they will need.
//!
//! A pass decides up to thousands of purchases, each for a buyer whose entry sits on a
//! random cache line of a table of millions. Decided one after another, each waits for
//! its own miss. Decoding a request [`WINDOW`] frames ahead and prefetching its entry lets
//! those misses overlap: by the time the request is decided its line has arrived
//! (MICA-style batched lookups). Decoding twice costs a few ns a frame; a miss costs
//! about a hundred.

use ticketd_proto::{decode_request, Request};

/// Frames read ahead of the one being decided: enough misses in flight to cover a miss's
/// latency, few enough that their lines are not evicted before use.
pub const WINDOW: usize = 16;

/// Where the read-ahead is in one buffer of request bytes.
#[derive(Debug, Default)]
pub struct Lookahead {
    /// Offset of the next frame to read ahead.
    at: usize,
    /// Frames read ahead and not yet decided.
    ahead: usize,
    /// A frame that does not decode (incomplete, or an error the decider will answer):
    /// nothing after it is read ahead.
    stopped: bool,
}

impl Lookahead {
    /// Reads frames ahead until [`WINDOW`] are ahead of the one about to be decided,
    /// handing each to `prefetch`.
    pub fn fill(&mut self, input: &[u8], max_frame: u32, mut prefetch: impl FnMut(&Request)) {
        while !self.stopped && self.ahead < WINDOW {
            let rest = input.get(self.at..).unwrap_or_default();
            match decode_request(rest, max_frame) {
                Ok((request, used)) => {
                    prefetch(&request);
                    self.at += used;
                    self.ahead += 1;
                }
                Err(_) => self.stopped = true,
            }
        }
    }

    /// One frame was decided.
    pub fn consumed_one(&mut self) {
        self.ahead = self.ahead.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use ticketd_proto::{Command, Purchase};

    fn buys(n: u64) -> Vec<u8> {
        let mut bytes = BytesMut::new();
        for user in 0..n {
            let command = Command::Buy(Purchase {
                event: 1,
                user,
                qty: 1,
            });
            Request {
                req_id: user,
                command,
            }
            .encode(&mut bytes);
        }
        bytes.to_vec()
    }

    #[test]
    fn each_frame_is_read_ahead_once_and_at_most_a_window_ahead() {
        let input = buys(20);
        let mut seen = Vec::new();
        let mut ahead = Lookahead::default();
        for decided in 0..20u64 {
            ahead.fill(&input, 1024, |r| seen.push(r.req_id));
            let expected: Vec<u64> = (0..(decided + WINDOW as u64).min(20)).collect();
            assert_eq!(seen, expected);
            ahead.consumed_one();
        }
    }

    #[test]
    fn an_incomplete_frame_stops_the_read_ahead() {
        let mut input = buys(3);
        input.truncate(input.len() - 1);
        let mut seen = 0;
        let mut ahead = Lookahead::default();
        ahead.fill(&input, 1024, |_| seen += 1);
        ahead.fill(&input, 1024, |_| seen += 1);
        assert_eq!(seen, 2);
    }
}
