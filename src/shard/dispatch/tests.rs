//! The dispatcher holds answers until the journal has made what they show durable.

use std::time::Duration;

use super::*;
use crate::config::EventSpec;
use crate::journal::commit::RecordBuf;
use crate::journal::writer::{Progress, WriterHandle};

/// A dispatcher whose journal writer never makes anything durable.
fn stalled_journal() -> Dispatcher {
    let spec = EventSpec {
        id: 1,
        stock: 10,
        per_user_limit: 1,
    };
    let catalog = Arc::new(Catalog::new(&[spec], 1));
    let mut ledger = Ledger::new(0, 0, Arc::clone(&catalog), Duration::from_secs(60));
    ledger.journal = RecordBuf::new(true);
    let (jobs, inbox) = crossbeam_channel::unbounded();
    std::mem::forget(inbox); // jobs pile up, unwritten
    let writer = WriterHandle {
        jobs,
        progress: Arc::new(Progress::default()),
        thread: std::thread::spawn(|| ()),
    };
    let decider = Decider::Embedded {
        ledger,
        commit: Some(Commit::new(writer, 0, u64::MAX)),
    };
    Dispatcher::with_decider(
        Arc::new(ShardSettings::standalone(0, 1, 0, 1024)),
        catalog,
        decider,
    )
}

fn end_pass(d: &mut Dispatcher) {
    if let Decider::Embedded {
        ledger,
        commit: Some(commit),
    } = &mut d.decider
    {
        commit.submit(ledger.journal.take());
    }
}

#[test]
fn no_answer_leaves_before_the_sale_it_shows_is_durable() {
    let mut d = stalled_journal();
    let conn = ConnRef {
        shard: 0,
        slot: 0,
        generation: 1,
    };
    let now = Instant::now();
    let buy = LedgerOp::Buy {
        event: 0,
        user: 7,
        qty: 1,
    };
    let orders = LedgerOp::Orders { event: 0, user: 7 };
    assert!(d.apply_owned(conn, 1, buy, now).is_none(), "the BUY waits");
    assert!(
        d.apply_owned(conn, 2, orders, now).is_none(),
        "ORDERS in the same pass waits for the sale it lists"
    );
    end_pass(&mut d);
    assert!(
        d.apply_owned(conn, 3, orders, now).is_none(),
        "ORDERS in a later pass still waits: the sale's job is not durable"
    );
    assert!(
        d.apply_owned(conn, 4, buy, now).is_none(),
        "so does a LIMIT_REACHED that depends on it"
    );
}
