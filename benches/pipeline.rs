//! A read buffer full of pipelined BUY requests handled end to end in-process: decode,
//! route, limit check, stock take, order record, response encode. This is the work a
//! shard does per read, minus the syscalls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ticketd::catalog::Catalog;
use ticketd::ledger::Ledger;
use ticketd::shard::access::Access;
use ticketd::shard::mailbox::ConnRef;
use ticketd::shard::output::Output;
use ticketd::shard::{Dispatcher, ShardSettings};
use ticketd::EventSpec;
use ticketd_proto::{Command, Purchase, Request, DEFAULT_MAX_FRAME};

const BATCH: u64 = 1_024;
/// Buyers in the selling bench: the user table stays this size, as in a sale of a
/// million tickets, instead of growing for as long as criterion runs.
const USER_POOL: u64 = 1_000_000;

fn dispatcher(stock: i64, per_user_limit: u16) -> Dispatcher {
    let catalog = Arc::new(Catalog::new(
        &[EventSpec {
            id: 1,
            stock,
            per_user_limit,
        }],
        1,
    ));
    let ledger = Ledger::new(0, 0, catalog, Duration::from_secs(900));
    Dispatcher::new(
        Arc::new(ShardSettings::standalone(0, 1, 0, DEFAULT_MAX_FRAME)),
        ledger,
    )
}

fn buys(first_user: u64) -> BytesMut {
    let mut wire = BytesMut::new();
    for i in 0..BATCH {
        Request {
            req_id: i,
            command: Command::Buy(Purchase {
                event: 1,
                user: (first_user + i) % USER_POOL,
                qty: 1,
            }),
        }
        .encode(&mut wire);
    }
    wire
}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH));
    let conn = ConnRef {
        shard: 0,
        slot: 0,
        generation: 1,
    };

    // Every BUY sells: a pool of a million buyers, each allowed many tickets, against an
    // endless stock. Each BUY probes a million-entry user table and appends an order.
    let mut selling = dispatcher(1 << 40, u16::MAX);
    let mut next_user = 0u64;
    let mut output = Output::new();
    group.bench_function("buy_1024_selling", |b| {
        b.iter_batched_ref(
            || {
                next_user += BATCH;
                buys(next_user)
            },
            |wire| {
                output.clear();
                let mut in_flight = 0;
                selling.handle_frames(
                    conn,
                    wire,
                    &mut output,
                    &mut in_flight,
                    Instant::now(),
                    &mut Access::local(),
                )
            },
            BatchSize::SmallInput,
        )
    });

    // The rush after sell-out: every BUY is refused.
    let mut sold_out = dispatcher(0, 1);
    let wire = buys(0);
    group.bench_function("buy_1024_sold_out", |b| {
        b.iter(|| {
            output.clear();
            let mut in_flight = 0;
            sold_out.handle_frames(
                conn,
                &wire,
                &mut output,
                &mut in_flight,
                Instant::now(),
                &mut Access::local(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
