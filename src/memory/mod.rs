//! The process's allocator: the system's, with three things done differently for blocks of
//! [`LARGE`] bytes or more — in practice the events' user tables, whose pages a sale
//! touches at random:
//!
//! - made while a shard starts, they are faulted in at once ([`prefault`]), so the sale's
//!   first buyers do not each pay a page fault inside a loop pass;
//! - freed by a shard (a table's old half, once a growing table has moved its last entry
//!   out), they are given back a few MiB per loop pass ([`release`]) instead of in one
//!   `munmap` that stopped the loop for ~13 ms;
//! - with `--huge-pages`, they come from the kernel's reserved huge pages where it has
//!   them ([`huge`]).
//!
//! Every other block, and every block on other threads, is the system allocator's alone.

pub mod huge;
pub mod prefault;
pub mod release;

use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::Range;

/// Blocks at least this large are handled here: tables, not buffers or order chunks.
pub const LARGE: usize = 4 << 20;
/// The page size `madvise` works in (x86-64 and most others).
const PAGE: usize = 4096;

/// The addresses of the whole pages inside the block `[addr, addr + len)` (empty when
/// there are none). Only these are ever advised: the allocator's header just before a
/// block and its neighbour's just after it share their partial pages with it.
fn whole_pages(addr: usize, len: usize) -> Range<usize> {
    let start = addr.next_multiple_of(PAGE);
    let end = (addr + len) / PAGE * PAGE;
    start..end.max(start)
}

/// The global allocator of the `ticketd` binary (see the module's text).
pub struct LargeBlockAlloc;

// SAFETY: every block comes from `System` and goes back to it with the layout it was
// made with; the additions only `madvise` whole pages inside a block (populate it, or
// drop the pages of one its owner has freed) and may delay its `dealloc`.
unsafe impl GlobalAlloc for LargeBlockAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(block) = huge_block(layout) {
            return block;
        }
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        let block = unsafe { System.alloc(layout) };
        prefault::populate_if_asked(block, layout.size());
        block
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // A huge-page block is a new mapping: zeroed already.
        if let Some(block) = huge_block(layout) {
            return block;
        }
        // SAFETY: as for `alloc`.
        let block = unsafe { System.alloc_zeroed(layout) };
        prefault::populate_if_asked(block, layout.size());
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= LARGE && (huge::free(ptr, layout) || release::defer(ptr, layout)) {
            return;
        }
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() >= LARGE && huge::owns(ptr) {
            // Not the system allocator's block: move it by hand.
            let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                return std::ptr::null_mut();
            };
            // SAFETY: `new_layout` has a non-zero size (a realloc's contract) and the
            // old block is live for `layout.size()` bytes; the two do not overlap.
            unsafe {
                let block = self.alloc(new_layout);
                if !block.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, block, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                return block;
            }
        }
        // SAFETY: as for `alloc`.
        let block = unsafe { System.realloc(ptr, layout, new_size) };
        prefault::populate_if_asked(block, new_size);
        block
    }
}

/// A block of [`LARGE`] bytes or more in reserved huge pages, where `--huge-pages` asked
/// for them and the pool had them ([`huge`]), populated like any other large block.
fn huge_block(layout: Layout) -> Option<*mut u8> {
    if layout.size() < LARGE || !huge::enabled() {
        return None;
    }
    let block = huge::alloc(layout)?;
    prefault::populate_if_asked(block, layout.size());
    Some(block)
}

/// How many of the whole pages inside `[addr, addr + len)` are resident (`mincore`).
#[cfg(test)]
fn resident_pages(addr: usize, len: usize) -> usize {
    let pages = whole_pages(addr, len);
    let mut flags = vec![0u8; pages.len() / PAGE];
    // SAFETY: the range lies in a live mapping (the callers' blocks are not yet given
    // back); mincore writes one byte per page into `flags`, which has room for each.
    let done = unsafe {
        libc::mincore(
            pages.start as *mut libc::c_void,
            pages.len(),
            flags.as_mut_ptr(),
        )
    };
    assert_eq!(done, 0, "mincore: {}", std::io::Error::last_os_error());
    flags.iter().filter(|&&f| f & 1 == 1).count()
}
