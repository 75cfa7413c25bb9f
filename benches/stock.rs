//! The stock path: an uncontended take from the own slice, the same take contended by
//! several threads, and the steal path when the own slice is empty.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use ticketd::stock::Stock;

/// Far more than any bench run takes, so the stock never runs out mid-measurement.
const ENDLESS: i64 = 1 << 40;

fn stock(c: &mut Criterion) {
    let mut group = c.benchmark_group("stock");
    group.throughput(Throughput::Elements(1));

    let own = Stock::new(ENDLESS, 2);
    group.bench_function("take_own_slice", |b| {
        b.iter(|| assert!(own.take(black_box(0), 1)))
    });

    // Slice 0 empty, everything in slice 1: every take steals.
    let lopsided = Stock::new(0, 2);
    lopsided.give_back(1, ENDLESS);
    group.bench_function("take_by_stealing", |b| {
        b.iter(|| assert!(lopsided.take(black_box(0), 1)))
    });

    let sold_out = Stock::new(0, 2);
    group.bench_function("sold_out_answer", |b| {
        b.iter(|| assert!(!sold_out.take(black_box(0), 1)))
    });

    // A background thread on the other core: first on its own slice (what shards do
    // normally: no shared cache line), then on ours (what happens when it steals).
    for (name, neighbour_home) in [
        ("take_own_slice_neighbour_on_its_slice", 1),
        ("take_own_slice_neighbour_on_our_slice", 0),
    ] {
        let shared = Arc::new(Stock::new(ENDLESS, 2));
        let stop = Arc::new(AtomicBool::new(false));
        let hammer = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    shared.take(neighbour_home, 1);
                }
            })
        };
        group.bench_function(name, |b| b.iter(|| assert!(shared.take(black_box(0), 1))));
        stop.store(true, Ordering::Relaxed);
        let _ = hammer.join();
    }
    group.finish();
}

criterion_group!(benches, stock);
criterion_main!(benches);
