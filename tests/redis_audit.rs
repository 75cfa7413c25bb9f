//! `ticketd audit --redis` on a real redis-server: an event of several scan pages is read
//! whole, a violation planted anywhere in it is found, and an event that sells while it
//! is read is reported as changed, never judged on sums that raced with the sale.

mod common;

use std::ops::Range;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::{event, Client};
use ticketd::config::RedisUrl;
use ticketd::redis_ledger::EventKeys;
use ticketd::tools::audit_redis::audit_redis_observed;
use ticketd::ServerHandle;
use ticketd_proto::Status;

/// A ledger-mode node of one shard selling event 1: 100,000 tickets, two per user.
fn node(redis: &RedisServer) -> ServerHandle {
    let events = [event(1, 100_000, 2)];
    let hold_ttl = Duration::from_secs(60);
    redis.create_events(&events, hold_ttl);
    let mut config = redis.node_config(1, 1, &events);
    config.hold_ttl = hold_ttl;
    ticketd::start(config).expect("node starts")
}

/// Sells one ticket of event 1 to each of `users`, a window of requests in flight at a
/// time; every one must sell.
fn sell(node: &ServerHandle, users: Range<u64>) {
    let mut client = Client::connect(node.local_addr());
    let users: Vec<u64> = users.collect();
    for window in users.chunks(256) {
        for &user in window {
            let req_id = client.next_req_id();
            client.send(common::buy_request(req_id, user));
        }
        for _ in window {
            assert_eq!(client.recv().status, Status::Ok);
        }
    }
}

/// A ledger whose event 1 sold one ticket to each of users 1..=`buyers`: its Redis, its
/// node, and its URL.
fn sold_to(buyers: u64) -> (RedisServer, ServerHandle, RedisUrl) {
    let redis = RedisServer::start();
    let node = node(&redis);
    sell(&node, 1..buyers + 1);
    let url = ticketd::config::parse_redis_url(&format!("redis://{}", redis.addr())).unwrap();
    (redis, node, url)
}

/// The audit's row for event 1: total, sold, held, remaining, orders, buyers.
fn row_of_event_1(report: &str) -> Vec<i64> {
    let row = report
        .lines()
        .find(|line| line.split_whitespace().next() == Some("1"))
        .unwrap_or_else(|| panic!("no row for event 1 in:\n{report}"));
    row.split_whitespace()
        .skip(1)
        .map(|n| n.parse().expect("a number"))
        .collect()
}

fn audit_binary(url: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ticketd"))
        .args(["audit", "--redis", url])
        .output()
        .expect("ticketd audit runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn an_event_of_many_pages_is_read_whole_and_what_was_planted_in_it_is_found() {
    let (redis, _node, _) = sold_to(5_000);
    let url = format!("redis://{}", redis.addr());
    let (passed, report) = audit_binary(&url);
    assert!(passed && report.contains("audit: OK"), "{report}");
    assert_eq!(
        row_of_event_1(&report),
        vec![100_000, 5_000, 0, 95_000, 5_000, 5_000],
        "every buyer and order counted:\n{report}"
    );

    // Two faults a bug could leave: a buyer above the limit, and an order id in the
    // stream twice. Where HSCAN and the stream put them is theirs to choose.
    let keys = EventKeys::new(1);
    let mut c = redis.client();
    redis::cmd("HSET")
        .arg(keys.buyers())
        .arg(9_000_001u64)
        .arg("41,42,43")
        .query::<()>(&mut c)
        .unwrap();
    let repeated = *redis.outbox_order_ids(1).iter().next().unwrap();
    redis::cmd("XADD")
        .arg(keys.orders())
        .arg("*")
        .arg(&["node", "9", "call", "planted", "orders"][..])
        .arg(format!("{repeated}:9000002:1"))
        .query::<()>(&mut c)
        .unwrap();
    let (passed, report) = audit_binary(&url);
    assert!(!passed, "{report}");
    for expected in [
        "event 1: user 9000001 has 3 tickets, above the per-user limit 2".to_owned(),
        format!("order id {repeated} is in the order stream twice"),
        "event 1: the order stream holds 5001 tickets but the ledger says 5000 sold".to_owned(),
        "event 1: users hold or bought 5003 tickets but sold + held is 5000".to_owned(),
    ] {
        assert!(
            report.contains(&expected),
            "{expected:?} missing in:\n{report}"
        );
    }
    assert_eq!(row_of_event_1(&report)[5], 5_001, "{report}");
}

#[test]
fn an_event_that_sells_while_it_is_read_is_reported_changed_not_judged() {
    let (_redis, node, url) = sold_to(3_000);
    let buyers = EventKeys::new(1).buyers();

    // Read page by page with nothing selling: judged whole, and clean.
    let mut buyer_pages = 0;
    let quiet = audit_redis_observed(&url, &[1], &mut |key| {
        if key == buyers {
            buyer_pages += 1;
        }
    });
    assert!(quiet.is_clean(), "{}", quiet.render());
    assert!(buyer_pages >= 3, "{buyer_pages} pages of buyers");

    // A sale lands after the first page of buyers: whichever page its buyer falls in,
    // the sums read no longer belong to one moment.
    let mut client = Client::connect(node.local_addr());
    let mut sold = false;
    let busy = audit_redis_observed(&url, &[1], &mut |key| {
        if key == buyers && !sold {
            sold = true;
            assert_eq!(client.buy(1, 9_000_000, 1).status, Status::Ok);
        }
    });
    assert!(sold);
    let report = busy.render();
    assert!(!busy.is_clean(), "{report}");
    assert!(
        busy.violations.is_empty(),
        "a sale during the audit is not a violation:\n{report}"
    );
    assert!(
        report.contains("UNSETTLED: event 1 changed while it was audited (sold 3000 -> 3001"),
        "{report}"
    );

    // Once the sale is over the same audit is whole and clean again.
    let settled = audit_redis_observed(&url, &[1], &mut |_| {});
    assert!(settled.is_clean(), "{}", settled.render());
}

#[test]
fn an_audit_ends_while_the_stream_grows_faster_than_it_is_read() {
    let (redis, _node, url) = sold_to(300);
    let stream = EventKeys::new(1).orders();
    let mut c = redis.client();
    let entries: usize = redis::cmd("XLEN").arg(&stream).query(&mut c).unwrap();
    // After each page of the stream, 150 more entries: more than a page.
    let (mut pages, mut added) = (0, 0u64);
    let report = audit_redis_observed(&url, &[1], &mut |key| {
        if key != stream {
            return;
        }
        pages += 1;
        // (An audit that chased the stream would read on for as long as this adds.)
        if pages > 50 {
            return;
        }
        for _ in 0..150 {
            added += 1;
            redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg(&["node", "9", "call", "growing", "orders"][..])
                .arg(format!("{}:{}:1", 1_000_000_000 + added, 5_000_000 + added))
                .query::<()>(&mut c)
                .unwrap();
        }
    });
    // The pages of what was there at the start (100 entries each), and one that finds
    // nothing more up to there.
    assert!(
        pages <= entries.div_ceil(100) + 1,
        "{pages} pages of a stream of {entries} entries read: it read past where it stood \
         at the start"
    );
    let text = report.render();
    assert!(report.violations.is_empty(), "{text}");
    assert!(
        text.contains("UNSETTLED: event 1 changed while it was audited"),
        "{text}"
    );
}

#[test]
fn a_ledger_broken_everywhere_lists_a_thousand_violations_and_counts_the_rest() {
    let (redis, _node, _) = sold_to(10);
    let mut c = redis.client();
    let mut planted = redis::cmd("HSET");
    planted.arg(EventKeys::new(1).buyers());
    for user in 0..1_200u64 {
        planted.arg(1_000_000 + user).arg("41,42,43");
    }
    planted.query::<()>(&mut c).unwrap();
    let (passed, report) = audit_binary(&format!("redis://{}", redis.addr()));
    assert!(!passed);
    let listed = report
        .lines()
        .filter(|line| line.starts_with("VIOLATION: event 1: user"))
        .count();
    assert_eq!(listed, 1_000, "{report}");
    // 1,200 buyers above the limit, and the buyers' tickets against sold + held.
    assert!(
        report.contains("VIOLATION: … and 201 more, not listed (the first 1000 are)"),
        "{report}"
    );
    assert!(
        report.trim_end().ends_with("audit: 1201 violation(s)"),
        "{report}"
    );
}
