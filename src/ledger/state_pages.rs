//! The bytes of the ended-holds bitmap ([`super::ended`]): a deque of bytes kept in
//! fixed pages, each shared (`Arc`), for two things the loop needs to never stop the
//! world:
//!
//! - the bitmap grows a page at a time; one `VecDeque<u8>` doubled now and then, copying
//!   (and faulting in) megabytes in one step — 20–69 ms passes in a 6 s RESERVE+CONFIRM
//!   run, and the bitmap spans two hold TTLs of ids;
//! - a snapshot takes the pages by reference ([`StatePages::share`]) and the journal
//!   writer encodes them; a page the loop writes to while a snapshot still holds it is
//!   copied first (`Arc::make_mut`), one page, not the bitmap.

use std::collections::VecDeque;
use std::sync::Arc;

/// Bytes per page: 262,144 ids of 2 bits.
const PAGE: usize = 64 << 10;

#[derive(Debug, Default)]
pub struct StatePages {
    pages: VecDeque<Arc<[u8]>>,
    /// Offset of byte 0 in the first page.
    start: usize,
    len: usize,
}

impl StatePages {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn locate(&self, i: usize) -> (usize, usize) {
        let at = self.start + i;
        (at / PAGE, at % PAGE)
    }

    pub fn get(&self, i: usize) -> Option<u8> {
        if i >= self.len {
            return None;
        }
        let (page, within) = self.locate(i);
        self.pages.get(page).map(|p| p[within])
    }

    /// Sets byte `i`, which must be below [`StatePages::len`].
    pub fn set(&mut self, i: usize, value: u8) {
        debug_assert!(i < self.len);
        let (page, within) = self.locate(i);
        if let Some(p) = self.pages.get_mut(page) {
            Arc::make_mut(p)[within] = value;
        }
    }

    /// Grows to `len` bytes, the new ones zero (never shrinks).
    pub fn grow_to(&mut self, len: usize) {
        while self.start + len > self.pages.len() * PAGE {
            self.pages.push_back(Arc::from(vec![0u8; PAGE]));
        }
        self.len = self.len.max(len);
    }

    /// Drops the first `n` bytes (all of them if there are fewer).
    pub fn drop_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        self.start += n;
        while self.start >= PAGE && !self.pages.is_empty() {
            self.pages.pop_front();
            self.start -= PAGE;
        }
        if self.len == 0 {
            self.clear();
        }
    }

    pub fn clear(&mut self) {
        self.pages.clear();
        self.start = 0;
        self.len = 0;
    }

    /// The bytes as they are now, for another thread to read: the pages by reference.
    pub fn share(&self) -> SharedStates {
        SharedStates {
            pages: self.pages.iter().cloned().collect(),
            start: self.start,
            len: self.len,
        }
    }
}

/// [`StatePages`]' bytes at one moment, readable on any thread.
#[derive(Debug, Clone, Default)]
pub struct SharedStates {
    pages: Vec<Arc<[u8]>>,
    start: usize,
    len: usize,
}

impl SharedStates {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Copies bytes `from ..` into `out` as far as they go; returns how many.
    pub fn copy_from(&self, from: usize, out: &mut [u8]) -> usize {
        let want = out.len().min(self.len.saturating_sub(from));
        let mut done = 0;
        while done < want {
            let at = self.start + from + done;
            let (page, within) = (at / PAGE, at % PAGE);
            let Some(p) = self.pages.get(page) else { break };
            let n = (PAGE - within).min(want - done);
            out[done..done + n].copy_from_slice(&p[within..within + n]);
            done += n;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        Grow(usize),
        Set(usize, u8),
        Drop(usize),
        Share,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3 * PAGE).prop_map(Step::Grow),
            (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Step::Set(i, v)),
            (0..2 * PAGE).prop_map(Step::Drop),
            Just(Step::Share),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Pages behave as one deque of bytes, and a shared copy never sees later writes.
        #[test]
        fn pages_agree_with_a_deque(steps in prop::collection::vec(step(), 1..60)) {
            let mut pages = StatePages::default();
            let mut model: VecDeque<u8> = VecDeque::new();
            let mut shared: Vec<(SharedStates, Vec<u8>)> = Vec::new();
            for s in steps {
                match s {
                    Step::Grow(n) => {
                        let len = model.len() + n;
                        pages.grow_to(len);
                        model.resize(len, 0);
                    }
                    Step::Set(i, v) if !model.is_empty() => {
                        let i = i % model.len();
                        pages.set(i, v);
                        model[i] = v;
                    }
                    Step::Set(..) => {}
                    Step::Drop(n) => {
                        pages.drop_front(n);
                        model.drain(..n.min(model.len()));
                    }
                    Step::Share => shared.push((pages.share(), model.iter().copied().collect())),
                }
                prop_assert_eq!(pages.len(), model.len());
                for i in [0, model.len() / 2, model.len().saturating_sub(1)] {
                    prop_assert_eq!(pages.get(i), model.get(i).copied());
                }
            }
            for (copy, then) in shared {
                let mut out = vec![0u8; then.len() + 5];
                prop_assert_eq!(copy.copy_from(0, &mut out), then.len());
                prop_assert_eq!(&out[..then.len()], &then[..]);
            }
        }
    }
}
