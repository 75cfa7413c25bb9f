//! Hammers one event's stock from many threads, as many shards would, and checks the
//! count exactly: no oversell, and no undersell under any interleaving.

use std::sync::{Arc, Barrier};

use ticketd::stock::Stock;

/// xorshift: deterministic, dependency-free per-thread randomness.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Each thread takes tickets (qty 1..=3) until a qty-1 take fails. A correct stock
/// refuses qty 1 only when nothing is left anywhere, so the takes must add up to the
/// total exactly and nothing may remain.
fn run_to_sell_out(total: i64, slices: usize, threads: usize, with_returns: bool) {
    let stock = Arc::new(Stock::new(total, slices));
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let stock = Arc::clone(&stock);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let home = t % slices;
                let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
                let mut taken = 0i64;
                barrier.wait();
                loop {
                    let qty = 1 + (next(&mut seed) % 3) as i64;
                    if stock.take(home, qty) {
                        taken += qty;
                        // Now and then hand one back, as a cancelled hold would.
                        if with_returns && next(&mut seed).is_multiple_of(8) {
                            stock.give_back(home, 1);
                            taken -= 1;
                        }
                    } else if qty == 1 {
                        break;
                    }
                }
                taken
            })
        })
        .collect();
    let taken: i64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(taken, total, "takes add up to the stock exactly");
    assert_eq!(stock.remaining(), 0, "nothing left behind");
}

#[test]
fn many_threads_sell_exactly_the_stock() {
    for round in 0..20 {
        run_to_sell_out(10_000 + round, 4, 8, false);
    }
}

#[test]
fn more_threads_than_slices_and_tiny_stock() {
    for total in [0, 1, 2, 3, 7, 64] {
        run_to_sell_out(total, 2, 16, false);
    }
}

#[test]
fn sells_exactly_with_tickets_returned_during_the_rush() {
    for _ in 0..10 {
        run_to_sell_out(5_000, 4, 8, true);
    }
}

#[test]
fn one_slice_per_thread_all_stealing_at_the_end() {
    run_to_sell_out(100_000, 8, 8, false);
}

/// The end of a sale is where gathers overlap: thousands of short sales with a tiny
/// stock make that race happen every round instead of once.
#[test]
fn thousands_of_contended_sell_outs() {
    for round in 0..3_000 {
        run_to_sell_out(5 + round % 20, 4, 6, round % 3 == 0);
    }
}
