//! Where each shard runs: a policy kept apart from the event loop.

use core_affinity::CoreId;

/// The core for each of `shards` shards: the cores this process may run on, in order,
/// wrapping when there are more shards than cores. Empty when the platform cannot tell
/// (then shards run unpinned).
pub fn plan(shards: usize) -> Vec<Option<CoreId>> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    (0..shards)
        .map(|i| (!cores.is_empty()).then(|| cores[i % cores.len()]))
        .collect()
}

/// Pins the calling thread; returns whether it worked.
pub fn pin_current_thread(core: Option<CoreId>) -> bool {
    core.is_some_and(core_affinity::set_for_current)
}
