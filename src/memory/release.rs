//! Large blocks a shard frees are given back to the system a step per loop pass.
//!
//! A user table that outgrows its presize moves its entries to a table twice as large a
//! few per insert; when the last one has moved, the old table is freed — tens of MB, one
//! `munmap` that frees every page in one call: a loop pass of ~13 ms with no page fault
//! in it (docs/BENCHMARKS.md, "what the long loop passes are"). On a shard thread (after
//! [`defer_large_frees`]) such a free only notes the block; each loop pass then drops up
//! to [`STEP`] bytes of its pages (`madvise(MADV_DONTNEED)`, the page-freeing part of
//! `munmap`) with [`release_some`], and frees the emptied block once it is bare. Handing
//! the free to a thread of its own was tried first and made passes longer on one core.
//!
//! A few blocks wait at most ([`WAITING`]); past that a free is done at once, as before.
//! Blocks still waiting when the thread ends stay with the process until it exits.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::{whole_pages, PAGE};

/// Bytes given back per loop pass: well under a millisecond of page freeing.
pub const STEP: usize = 4 << 20;
/// Freed blocks that may wait at once on one thread.
const WAITING: usize = 8;

#[derive(Clone, Copy)]
struct Freed {
    addr: usize,
    size: usize,
    align: usize,
    /// Bytes of its whole pages already dropped.
    dropped: usize,
}

const NONE: Freed = Freed {
    addr: 0,
    size: 0,
    align: 0,
    dropped: 0,
};

thread_local! {
    static DEFERRING: Cell<bool> = const { Cell::new(false) };
    // `Cell`s of plain values: the allocator may read them without allocating and
    // without a borrow that a nested call could trip over.
    static FREED: Cell<[Freed; WAITING]> = const { Cell::new([NONE; WAITING]) };
    static WAITING_NOW: Cell<usize> = const { Cell::new(0) };
}

/// From now on, large blocks this thread frees wait for [`release_some`].
pub fn defer_large_frees() {
    DEFERRING.with(|d| d.set(true));
}

/// Blocks waiting on this thread.
pub fn waiting() -> usize {
    WAITING_NOW.try_with(Cell::get).unwrap_or(0)
}

/// Notes a freed large block for [`release_some`]; false when this thread does not
/// defer frees or has no room (the caller frees it at once).
pub(super) fn defer(ptr: *mut u8, layout: Layout) -> bool {
    if DEFERRING.try_with(Cell::get) != Ok(true) {
        return false;
    }
    let Ok(mut freed) = FREED.try_with(Cell::get) else {
        return false;
    };
    let Some(slot) = freed.iter_mut().find(|f| f.addr == 0) else {
        return false;
    };
    *slot = Freed {
        addr: ptr as usize,
        size: layout.size(),
        align: layout.align(),
        dropped: 0,
    };
    FREED.with(|f| f.set(freed));
    WAITING_NOW.with(|n| n.set(n.get() + 1));
    true
}

/// Drops up to `budget` bytes of pages of the oldest waiting block, and frees it once
/// none are left. Does nothing when no block waits.
pub fn release_some(budget: usize) {
    if waiting() == 0 {
        return;
    }
    let mut freed = FREED.with(Cell::get);
    let Some(block) = freed.iter_mut().find(|f| f.addr != 0) else {
        return;
    };
    // Only whole pages inside the block: the allocator's own header (just before it)
    // and its neighbour's (just after it) keep theirs.
    let (start, end) = {
        let pages = whole_pages(block.addr, block.size);
        (pages.start, pages.end)
    };
    let from = start + block.dropped;
    if from < end {
        let step = budget.max(PAGE).min(end - from) / PAGE * PAGE;
        // SAFETY: the range lies inside a block its owner has freed and that has not
        // gone back to the allocator yet, so nothing else can be using it; DONTNEED
        // drops its pages (they would read as zeros).
        unsafe { libc::madvise(from as *mut libc::c_void, step, libc::MADV_DONTNEED) };
        block.dropped += step;
    }
    if start + block.dropped >= end {
        if let Ok(layout) = Layout::from_size_align(block.size, block.align) {
            // SAFETY: the block came from `System` with this layout and its owner freed
            // it: this is that free, done now.
            unsafe { System.dealloc(block.addr as *mut u8, layout) };
        }
        *block = NONE;
        WAITING_NOW.with(|n| n.set(n.get() - 1));
    }
    FREED.with(|f| f.set(freed));
}

#[cfg(test)]
mod tests {
    use super::super::{resident_pages, LargeBlockAlloc};
    use super::*;

    #[test]
    fn a_freed_large_block_goes_back_a_step_at_a_time_and_small_ones_at_once() {
        // Its own thread: the deferring flag and the waiting blocks are per thread.
        std::thread::spawn(|| {
            defer_large_frees();
            let alloc = LargeBlockAlloc;
            let size = 32 << 20;
            let layout = Layout::from_size_align(size, 4096).unwrap();
            // SAFETY: a plain allocation, written whole, then freed with its layout.
            let block = unsafe { alloc.alloc(layout) };
            assert!(!block.is_null());
            unsafe { block.write_bytes(1, size) };
            let addr = block as usize;
            let all = resident_pages(addr, size);
            assert!(
                all > (size / PAGE) * 9 / 10,
                "{all} pages resident after writing"
            );
            // SAFETY: as above.
            unsafe { alloc.dealloc(block, layout) };
            assert_eq!(waiting(), 1, "the free waits");
            assert_eq!(resident_pages(addr, size), all, "nothing given back yet");
            release_some(8 << 20);
            let left = resident_pages(addr, size);
            assert!(
                left <= all - (8 << 20) / PAGE && left >= all - (8 << 20) / PAGE - 2,
                "one step drops 8 MiB of pages: {all} -> {left}"
            );
            let mut passes = 1;
            while waiting() > 0 {
                release_some(8 << 20);
                passes += 1;
                assert!(passes <= 5, "32 MiB in 8 MiB steps takes 4 or 5 passes");
            }
            // A small block is freed at once, never waiting.
            let small = Layout::from_size_align(4096, 8).unwrap();
            // SAFETY: as above.
            let little = unsafe { alloc.alloc(small) };
            unsafe { alloc.dealloc(little, small) };
            assert_eq!(waiting(), 0);
        })
        .join()
        .unwrap();
    }

    /// Whether glibc's header before `block` (the chunk's size word) marks it as mapped
    /// on its own rather than carved from a heap.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn mapped_on_its_own(block: *mut u8) -> bool {
        const IS_MMAPPED: usize = 0x2;
        // SAFETY: glibc keeps every chunk's size word just before the block it returns.
        unsafe { block.cast::<usize>().sub(1).read() & IS_MMAPPED != 0 }
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_large_block_carved_from_the_heap_goes_back_without_harming_its_neighbours() {
        // glibc serves blocks under its mmap threshold from a heap, next to other
        // chunks, and raises that threshold (up to 32 MiB) to the size of a mapped block
        // freed: after a 16 MiB block comes and goes, 6 MiB comes from a heap. Such a
        // block's first and last pages are shared with its neighbours' headers; only the
        // whole pages inside it may be dropped.
        std::thread::spawn(|| {
            defer_large_frees();
            let alloc = LargeBlockAlloc;
            let big = Layout::from_size_align(16 << 20, 8).unwrap();
            // SAFETY: plain allocations, each freed with its own layout.
            unsafe { alloc.dealloc(alloc.alloc(big), big) };
            while waiting() > 0 {
                release_some(64 << 20);
            }
            let size = (6 << 20) + 40;
            let layout = Layout::from_size_align(size, 8).unwrap();
            let small = Layout::from_size_align(200, 8).unwrap();
            // SAFETY: as above; each block is written only within its own size.
            let (before, block, after) = unsafe {
                let before = alloc.alloc(small);
                let block = alloc.alloc(layout);
                let after = alloc.alloc(small);
                before.write_bytes(0xAB, 200);
                block.write_bytes(1, size);
                after.write_bytes(0xCD, 200);
                (before, block, after)
            };
            assert!(!before.is_null() && !block.is_null() && !after.is_null());
            assert!(
                !mapped_on_its_own(block),
                "the 6 MiB block was mapped on its own: this test needs one from a heap"
            );
            let addr = block as usize;
            let resident = resident_pages(addr, size);
            // SAFETY: as above.
            unsafe { alloc.dealloc(block, layout) };
            assert_eq!(waiting(), 1, "the free waits");
            let mut passes = 0;
            while waiting() > 0 {
                release_some(2 << 20);
                passes += 1;
                assert!(passes <= 4, "6 MiB in 2 MiB steps takes 3 or 4 passes");
                if waiting() > 0 {
                    let left = resident_pages(addr, size);
                    assert!(
                        left < resident,
                        "a step dropped pages: {resident} -> {left}"
                    );
                }
            }
            // SAFETY: `before` and `after` are live blocks of 200 bytes.
            let (b, a) = unsafe {
                (
                    std::slice::from_raw_parts(before, 200),
                    std::slice::from_raw_parts(after, 200),
                )
            };
            assert!(b.iter().all(|&x| x == 0xAB), "the block before is intact");
            assert!(a.iter().all(|&x| x == 0xCD), "the block after is intact");
            // The heap takes the space back and hands it out again, whole and writable.
            // SAFETY: as above.
            unsafe {
                let again = alloc.alloc(layout);
                assert!(!again.is_null());
                again.write_bytes(7, size);
                assert_eq!(again.add(size - 1).read(), 7);
                alloc.dealloc(again, layout);
                alloc.dealloc(before, small);
                alloc.dealloc(after, small);
            }
            while waiting() > 0 {
                release_some(64 << 20);
            }
        })
        .join()
        .unwrap();
    }
}
