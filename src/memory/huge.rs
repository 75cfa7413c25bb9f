//! Large blocks in the kernel's reserved huge pages (`--huge-pages`).
//!
//! A user table of millions of buyers is read at random, and with 4 KiB pages nearly
//! every probe misses the TLB: the page walk was about a quarter of the selling path's
//! time in the endless all-selling run (docs/PROFILING.md). Transparent huge pages would
//! remove most of those walks, but on a VM whose free memory the host takes back, each
//! fresh 2 MiB page cost ~2.8 ms to fault in the middle of a sale (BENCHMARKS.md, "why
//! writing from the server's core stalls it"). The pages an operator reserves with
//! `sysctl vm.nr_hugepages=N` are different: they stay out of the free lists, so once
//! touched they stay backed, and taking one costs its zeroing only.
//!
//! With [`enable`] called, [`super::LargeBlockAlloc`] asks for each block of
//! [`super::LARGE`] bytes or more here first: an anonymous `MAP_HUGETLB` mapping, its
//! length rounded up to whole huge pages. Without `MAP_NORESERVE` the kernel reserves
//! every page of it at `mmap`, so a short pool fails the `mmap` (and the block comes from
//! the ordinary allocator) instead of a later fault killing the process with SIGBUS. The
//! mapping's start is kept in [`BLOCKS`] so that its free can tell it from the ordinary
//! allocator's blocks; giving it back is one `munmap`, which returns the pages to the
//! pool without zeroing or freeing 4 KiB pages one by one.

use std::alloc::Layout;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The size of a huge page on x86-64 (the kernel's default `Hugepagesize`).
pub const HUGE_PAGE: usize = 2 << 20;
/// Live huge-page blocks at once: a shard's user tables (one per event, two while one
/// grows). A block beyond it comes from the ordinary allocator.
const SLOTS: usize = 256;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The start of each live huge-page block (0: a free slot).
static BLOCKS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

thread_local! {
    /// What blocks this thread asked for got: huge-page bytes mapped and blocks that fell
    /// back to ordinary pages. Only ever added to, so a shard's start can say what its
    /// own tables got while other shards start beside it. (`const`, with no destructor:
    /// the global allocator may reach it on any thread, at any time.)
    static TAKEN_HERE: Cell<Taken> = const { Cell::new(Taken::NONE) };
}

/// What the calling thread's large blocks got so far ([`taken_here`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Bytes of huge pages mapped for its blocks (those since given back included).
    pub huge_bytes: usize,
    /// Its blocks that wanted huge pages and got ordinary ones.
    pub fell_back: usize,
}

impl Taken {
    /// Nothing yet.
    pub const NONE: Taken = Taken {
        huge_bytes: 0,
        fell_back: 0,
    };
}

/// What the calling thread's large blocks got so far.
pub fn taken_here() -> Taken {
    TAKEN_HERE.try_with(Cell::get).unwrap_or(Taken::NONE)
}

fn note_here(huge_bytes: usize, fell_back: usize) {
    let _ = TAKEN_HERE.try_with(|taken| {
        let before = taken.get();
        taken.set(Taken {
            huge_bytes: before.huge_bytes + huge_bytes,
            fell_back: before.fell_back + fell_back,
        });
    });
}

/// Large blocks are asked for in huge pages from now on.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn mapping_len(layout: Layout) -> usize {
    layout.size().next_multiple_of(HUGE_PAGE)
}

/// What a shard's start got, called on its thread once its tables are made: its tables
/// in huge pages, or a warning that the pool was short (nothing when `--huge-pages` was
/// not given). Counted per thread, so shards starting side by side each tell their own.
pub fn report_start(shard: usize) {
    if !enabled() {
        return;
    }
    let taken = taken_here();
    match taken.fell_back {
        0 => tracing::info!(
            shard,
            huge_mib = taken.huge_bytes >> 20,
            "user tables in reserved huge pages"
        ),
        n => tracing::warn!(
            shard,
            huge_mib = taken.huge_bytes >> 20,
            ordinary_tables = n,
            "--huge-pages: the reserved pool was short (vm.nr_hugepages, HugePages_Free in \
             /proc/meminfo); these tables use ordinary pages"
        ),
    }
}

/// Whether [`enable`] was called.
pub(super) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A zeroed block for `layout` in huge pages, or `None` (an alignment a huge page does
/// not give, the pool short, or every slot taken).
pub(super) fn alloc(layout: Layout) -> Option<*mut u8> {
    if layout.align() > HUGE_PAGE || layout.size() == 0 {
        return None;
    }
    let len = mapping_len(layout);
    // SAFETY: a new private anonymous mapping; nothing else refers to its range.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        note_here(0, 1);
        return None;
    }
    let start = addr as usize;
    let registered = BLOCKS.iter().any(|slot| {
        slot.compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    });
    if !registered {
        // SAFETY: the mapping made above, never handed out.
        unsafe { libc::munmap(addr, len) };
        note_here(0, 1);
        return None;
    }
    note_here(len, 0);
    Some(addr.cast())
}

/// Whether `ptr` is a live block of this module's.
pub(super) fn owns(ptr: *mut u8) -> bool {
    let start = ptr as usize;
    start != 0
        && BLOCKS
            .iter()
            .any(|slot| slot.load(Ordering::Acquire) == start)
}

/// Gives back `ptr` if it is a block of this module's (true), else leaves it (false).
pub(super) fn free(ptr: *mut u8, layout: Layout) -> bool {
    let start = ptr as usize;
    if start == 0 {
        return false;
    }
    // A plain load first: a compare-exchange on every slot would be a locked operation
    // each, for each large block any thread frees.
    let released = BLOCKS.iter().any(|slot| {
        slot.load(Ordering::Acquire) == start
            && slot
                .compare_exchange(start, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    });
    if !released {
        return false;
    }
    let len = mapping_len(layout);
    // SAFETY: `ptr` was mapped by `alloc` with this layout's length and its owner has
    // freed it; its slot is cleared, so nothing else unmaps it.
    unsafe { libc::munmap(ptr.cast(), len) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel page size of the mapping that holds `addr`, from /proc/self/smaps.
    fn page_size_at(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((from, to)) = range.split_once('-') {
                    if let (Ok(from), Ok(to)) = (
                        usize::from_str_radix(from, 16),
                        usize::from_str_radix(to, 16),
                    ) {
                        inside = (from..to).contains(&addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(size) = line.strip_prefix("KernelPageSize:") {
                    return Some(size.trim().to_owned());
                }
            }
        }
        None
    }

    fn free_huge_pages() -> usize {
        std::fs::read_to_string("/proc/meminfo")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_block_in_huge_pages_is_zeroed_usable_and_given_back_and_a_short_pool_says_no() {
        // A pool of our own for the test, where the machine lets us make one (root);
        // the size it had is put back when the test ends, failed or not.
        const POOL: &str = "/proc/sys/vm/nr_hugepages";
        struct PutBack(usize);
        impl Drop for PutBack {
            fn drop(&mut self) {
                let _ = std::fs::write(POOL, self.0.to_string());
            }
        }
        let before: usize = std::fs::read_to_string(POOL)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let made = std::fs::write(POOL, (before + 4).to_string()).is_ok();
        let _put_back = made.then_some(PutBack(before));
        let grown = made && free_huge_pages() >= 3;
        let layout = Layout::from_size_align(5 << 20, 4096).unwrap();
        let start = taken_here();
        let block = alloc(layout);
        let after_block = taken_here();
        if grown {
            let block = block.expect("three huge pages from a pool with four free");
            assert_eq!(after_block.huge_bytes - start.huge_bytes, 3 * HUGE_PAGE);
            let addr = block as usize;
            assert_eq!(addr % HUGE_PAGE, 0);
            assert!(owns(block));
            assert_eq!(page_size_at(addr).as_deref(), Some("2048 kB"));
            // SAFETY: 5 MiB mapped above, ours until freed.
            let bytes = unsafe { std::slice::from_raw_parts_mut(block, 5 << 20) };
            assert!(bytes.iter().all(|&b| b == 0), "a new block reads zeros");
            bytes.fill(7);
            assert!(free(block, layout));
            assert!(!owns(block));
            assert_eq!(page_size_at(addr), None, "unmapped");
            assert!(!free(block, layout), "a second free is not ours");
        }
        // More than the pool holds: no block (a fault could not be served later).
        let huge = Layout::from_size_align((free_huge_pages() + 1) * HUGE_PAGE, 4096).unwrap();
        assert_eq!(alloc(huge), None);
        assert!(grown || block.is_none(), "no pool, no block");
        assert_eq!(
            taken_here().fell_back,
            after_block.fell_back + 1,
            "the block refused is counted on the thread that asked"
        );
        // What a thread took is its own: a shard's start reports only its tables.
        let elsewhere = std::thread::spawn(taken_here).join().unwrap();
        assert_eq!(elsewhere, Taken::NONE);
    }
}
