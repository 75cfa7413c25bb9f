//! The large blocks a shard allocates while it starts — its events' presized user
//! tables — are faulted in then, before the sale, not by the sales that first write to
//! them.
//!
//! A buyer's entry lands on a random slot of its event's user table, so while the
//! table's pages are fresh nearly every sale touches a page for the first time and the
//! kernel's fault (about 2 µs: zero a page, map it) is paid inside a loop pass —
//! thousands in one pass (docs/BENCHMARKS.md, "what the long loop passes are").
//! [`super::LargeBlockAlloc`], on a thread inside [`populating`], asks the kernel to map
//! every page of each block of [`LARGE`] bytes or more at once
//! (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14+; elsewhere the pages are left to fault as
//! before), in 2 MiB pages where transparent huge pages allow (`MADV_HUGEPAGE` first: one
//! TLB entry covers 512 times as much of the table, so a random probe misses the TLB
//! less — sales/s +13% in a 1,000,000-ticket sale; the kernel may compact memory to find
//! them, a wait that belongs at start, which is why no other block asks for them).
//! Outside [`populating`] nothing is populated: a table that grows in the middle of a
//! sale is not populated in one go on the loop (that would be the stop-the-world pass
//! this avoids), and a background thread doing it on the same core made the loop's
//! passes longer, not shorter (tried; BENCHMARKS.md).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{whole_pages, LARGE};

thread_local! {
    static POPULATING: Cell<bool> = const { Cell::new(false) };
    /// Bytes this thread populated, for [`populating`]'s count.
    static POPULATED: Cell<usize> = const { Cell::new(0) };
}
/// Cleared when the kernel turns out not to know MADV_POPULATE_WRITE.
static SUPPORTED: AtomicBool = AtomicBool::new(true);

/// Runs `f` with the large blocks this thread allocates meanwhile populated (when the
/// process's global allocator is [`super::LargeBlockAlloc`]; otherwise it only runs
/// `f`), and says how many bytes were.
pub fn populating<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = POPULATING.with(|p| p.replace(true));
    let counted = POPULATED.with(Cell::get);
    let out = f();
    POPULATING.with(|p| p.set(before));
    (out, POPULATED.with(Cell::get) - counted)
}

pub(super) fn populate_if_asked(block: *mut u8, len: usize) {
    if len < LARGE || block.is_null() || !SUPPORTED.load(Ordering::Relaxed) {
        return;
    }
    // `try_with`: during the thread's own teardown there is nothing to ask.
    if POPULATING.try_with(Cell::get) != Ok(true) {
        return;
    }
    let pages = whole_pages(block as usize, len);
    if pages.is_empty() {
        return;
    }
    let (start, end) = (pages.start, pages.end);
    // SAFETY: as below; MADV_HUGEPAGE only asks for 2 MiB pages where it can (an
    // error, THP off or unsupported, leaves 4 KiB pages).
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
    // SAFETY: the range lies inside the block the allocator just returned to us;
    // MADV_POPULATE_WRITE maps its missing pages and changes no memory's contents.
    let done = unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_WRITE,
        )
    };
    if done == 0 {
        let _ = POPULATED.try_with(|n| n.set(n.get() + (end - start)));
    } else {
        // EINVAL: an older kernel. Anything else (ENOMEM under memory pressure): the
        // pages fault in as they are first written, as without this module.
        SUPPORTED.store(false, Ordering::Relaxed);
    }
}

/// Faults in the whole pages of `[addr, addr + len)`, a part of a live block the caller
/// owns, in 4 KiB pages (no huge pages: asking for them mid-sale let compaction stop the
/// loop). For a table made ahead of its use, a step per loop pass. Returns whether the
/// kernel did it (false on kernels without MADV_POPULATE_WRITE: the pages then fault in
/// as they are first written).
pub fn populate_range(addr: usize, len: usize) -> bool {
    let pages = whole_pages(addr, len);
    if pages.is_empty() || !SUPPORTED.load(Ordering::Relaxed) {
        return false;
    }
    // SAFETY: the caller owns the block these whole pages lie in; MADV_POPULATE_WRITE
    // maps missing pages and changes no memory's contents.
    let done = unsafe {
        libc::madvise(
            pages.start as *mut libc::c_void,
            pages.len(),
            libc::MADV_POPULATE_WRITE,
        )
    };
    done == 0
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::super::{resident_pages, LargeBlockAlloc};
    use super::*;

    #[test]
    fn a_large_block_made_while_populating_is_resident_at_once_and_others_are_not() {
        let alloc = LargeBlockAlloc;
        let layout = Layout::from_size_align(64 << 20, 4096).unwrap();
        // SAFETY: a plain allocation, freed below with the same layout.
        let lazy = unsafe { alloc.alloc(layout) };
        // SAFETY: as above.
        let (eager, populated) = populating(|| unsafe { alloc.alloc(layout) });
        assert!(!lazy.is_null() && !eager.is_null());
        let pages = layout.size() / 4096;
        let lazy_resident = resident_pages(lazy as usize, layout.size());
        let eager_resident = resident_pages(eager as usize, layout.size());
        // SAFETY: both came from `alloc` with `layout`.
        unsafe {
            alloc.dealloc(lazy, layout);
            alloc.dealloc(eager, layout);
        }
        if !SUPPORTED.load(Ordering::Relaxed) {
            eprintln!("this kernel cannot populate: nothing to check");
            return;
        }
        assert!(
            populated >= layout.size() - 4096,
            "counted {populated} bytes"
        );
        assert!(
            eager_resident >= pages - 1,
            "populated block: {eager_resident} of {pages} pages resident"
        );
        assert!(
            lazy_resident < pages / 64,
            "untouched block: {lazy_resident} of {pages} pages resident"
        );
    }
}
