//! The Redis Function library against a real redis-server (started here on a private
//! loopback port in a temp dir, killed by PID when the test ends): batch decisions,
//! exactly-once replay, holds and their expiry on Redis's clock, and exact stock under
//! concurrent callers.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use redis::{Connection, Value};
use ticketd::redis_ledger::setup::Definition;
use ticketd::redis_ledger::{self, Decision, EventKeys, ReplyError, Step};
use ticketd_proto::Status;

/// Creates the event as `ticketd create-events` does (an existing one is left as it
/// is) and returns the ledger's `[total, sold, held]`.
fn init(c: &mut Connection, event: u32, total: i64, limit: u16, ttl_ms: u64) -> Vec<i64> {
    define(c, event, total, limit, ttl_ms, false);
    meta(c, event)
}

fn define(
    c: &mut Connection,
    event: u32,
    total: i64,
    per_user_limit: u16,
    hold_ttl_ms: u64,
    update: bool,
) -> Vec<String> {
    let def = Definition {
        total,
        per_user_limit,
        hold_ttl_ms,
    };
    redis_ledger::define_event(event, &def, update)
        .query(c)
        .unwrap()
}

fn meta(c: &mut Connection, event: u32) -> Vec<i64> {
    redis::cmd("HMGET")
        .arg(EventKeys::new(event).meta())
        .arg("total")
        .arg("sold")
        .arg("held")
        .query(c)
        .unwrap()
}

fn decide(c: &mut Connection, event: u32, call: u64, steps: &[Step]) -> Vec<Decision> {
    let reply: Value = redis_ledger::decide(event, &call.to_string(), 1, 60_000, steps)
        .query(c)
        .unwrap();
    redis_ledger::parse_decisions(&reply, steps).unwrap()
}

fn stock(c: &mut Connection, event: u32) -> (i64, i64) {
    let v: Vec<i64> = redis_ledger::stock(event).query(c).unwrap();
    (v[0], v[1])
}

/// Each outbox entry's orders as (order id, user, qty), in stream order.
fn outbox(c: &mut Connection, event: u32) -> Vec<Vec<(u64, u64, u16)>> {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(EventKeys::new(event).orders())
        .arg("-")
        .arg("+")
        .query(c)
        .unwrap();
    entries
        .iter()
        .map(|(_, fields)| {
            redis_ledger::outbox_orders(fields)
                .unwrap()
                .iter()
                .map(|o| (o.order_id, o.user, o.qty))
                .collect()
        })
        .collect()
}

/// Orders in the event's outbox stream (each entry carries one call's orders).
fn outbox_len(c: &mut Connection, event: u32) -> usize {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(EventKeys::new(event).orders())
        .arg("-")
        .arg("+")
        .query(c)
        .unwrap();
    entries
        .iter()
        .map(|(_, fields)| redis_ledger::outbox_orders(fields).unwrap().len())
        .sum()
}

fn buy(user: u64, order_id: u64) -> Step {
    Step::Buy {
        user,
        qty: 1,
        order_id,
    }
}

#[test]
fn a_batch_sells_exactly_the_stock_once_per_user_and_records_each_order() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    assert_eq!(init(&mut c, 1, 3, 1, 60_000), vec![3, 0, 0]);
    let steps = [
        buy(10, 100),
        buy(10, 101),
        buy(11, 102),
        buy(12, 103),
        buy(13, 104),
    ];
    assert_eq!(
        decide(&mut c, 1, 1, &steps),
        vec![
            Decision::Ordered { order_id: 100 },
            Decision::Refused(Status::LimitReached),
            Decision::Ordered { order_id: 102 },
            Decision::Ordered { order_id: 103 },
            Decision::Refused(Status::SoldOut),
        ]
    );
    assert_eq!(stock(&mut c, 1), (3, 0));
    assert_eq!(outbox_len(&mut c, 1), 3);
    // Sold + qty must stay within total: the prototypes' off-by-one is not here.
    assert_eq!(
        decide(&mut c, 1, 2, &[buy(14, 105)]),
        vec![Decision::Refused(Status::SoldOut)]
    );
}

#[test]
fn a_retried_call_returns_its_first_results_and_changes_nothing() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 10, 1, 60_000);
    let steps = [buy(1, 100), buy(2, 101)];
    let first = decide(&mut c, 1, 77, &steps);
    let again = decide(&mut c, 1, 77, &steps);
    assert_eq!(first, again);
    assert_eq!(stock(&mut c, 1), (10, 8), "deducted once");
    assert_eq!(outbox_len(&mut c, 1), 2, "recorded once");
    // A new call id is a new decision: both users are now at their limit.
    assert_eq!(
        decide(&mut c, 1, 78, &steps),
        vec![Decision::Refused(Status::LimitReached); 2]
    );
}

#[test]
fn init_never_overwrites_an_event_in_progress_and_unknown_events_are_not_found() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 5, 1, 60_000);
    decide(&mut c, 1, 1, &[buy(1, 100)]);
    assert_eq!(
        init(&mut c, 1, 999, 9, 1),
        vec![5, 1, 0],
        "a joining node keeps the sales"
    );
    assert_eq!(
        decide(&mut c, 2, 1, &[buy(1, 1)]),
        vec![Decision::Refused(Status::NotFound)]
    );
    assert_eq!(stock(&mut c, 2), (-1, -1));
}

#[test]
fn update_keeps_the_sales_and_never_goes_below_them() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 5, 1, 60_000);
    decide(&mut c, 1, 1, &[buy(1, 100), buy(2, 101)]);
    let refused = define(&mut c, 1, 1, 1, 60_000, true);
    assert_eq!(refused[0], "ERR");
    assert!(refused[1].contains("below the 2 tickets"), "{refused:?}");
    assert_eq!(define(&mut c, 1, 8, 2, 30_000, true), vec!["OK"]);
    assert_eq!(meta(&mut c, 1), vec![8, 2, 0], "total raised, sales kept");
    assert_eq!(stock(&mut c, 1), (8, 6));
}

#[test]
fn holds_confirm_cancel_and_their_retries() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 2, 1, 60_000);
    let held = decide(
        &mut c,
        1,
        1,
        &[Step::Reserve {
            user: 1,
            qty: 1,
            hold_id: 500,
        }],
    );
    assert!(
        matches!(held[0], Decision::Held { hold_id: 500, expires_unix_ms } if expires_unix_ms > 0)
    );
    assert_eq!(stock(&mut c, 1), (2, 1), "held is not remaining");
    // The hold counts toward the limit.
    assert_eq!(
        decide(&mut c, 1, 2, &[buy(1, 101)]),
        vec![Decision::Refused(Status::LimitReached)]
    );
    let confirm = Step::Confirm {
        hold_id: 500,
        order_id: 600,
    };
    assert_eq!(
        decide(&mut c, 1, 3, &[confirm]),
        vec![Decision::Ordered { order_id: 600 }]
    );
    let retry = Step::Confirm {
        hold_id: 500,
        order_id: 601,
    };
    assert_eq!(
        decide(&mut c, 1, 4, &[retry]),
        vec![Decision::Ordered { order_id: 600 }],
        "same order"
    );
    assert_eq!(
        decide(&mut c, 1, 5, &[Step::Cancel { hold_id: 500 }]),
        vec![Decision::Refused(Status::NotFound)]
    );

    decide(
        &mut c,
        1,
        6,
        &[Step::Reserve {
            user: 2,
            qty: 1,
            hold_id: 501,
        }],
    );
    assert_eq!(
        decide(&mut c, 1, 7, &[Step::Cancel { hold_id: 501 }]),
        vec![Decision::Cancelled {
            event_id: 1,
            qty: 1
        }],
        "the cancel names what went back on sale"
    );
    assert_eq!(
        decide(&mut c, 1, 8, &[Step::Cancel { hold_id: 501 }]),
        vec![Decision::Cancelled {
            event_id: 1,
            qty: 0
        }],
        "a repeated cancel returns nothing twice"
    );
    assert_eq!(
        decide(
            &mut c,
            1,
            9,
            &[Step::Confirm {
                hold_id: 501,
                order_id: 602
            }]
        ),
        vec![Decision::Refused(Status::NotFound)]
    );
    assert_eq!(
        stock(&mut c, 1),
        (2, 1),
        "the cancelled ticket is back on sale"
    );
    assert_eq!(
        decide(&mut c, 1, 10, &[buy(2, 603)]),
        vec![Decision::Ordered { order_id: 603 }],
        "room back"
    );
    assert_eq!(
        decide(&mut c, 1, 11, &[Step::Cancel { hold_id: 999 }]),
        vec![Decision::Refused(Status::NotFound)]
    );
    assert_eq!(outbox_len(&mut c, 1), 2);
}

#[test]
fn holds_expire_on_redis_clock_without_their_node() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 1, 1, 100);
    decide(
        &mut c,
        1,
        1,
        &[Step::Reserve {
            user: 1,
            qty: 1,
            hold_id: 500,
        }],
    );
    assert_eq!(stock(&mut c, 1), (1, 0));
    // The node that took the hold never comes back; any caller's STOCK or decision
    // expires it once Redis's clock passes the deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stock(&mut c, 1) != (1, 1) {
        assert!(Instant::now() < deadline, "the hold never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        decide(
            &mut c,
            1,
            2,
            &[Step::Confirm {
                hold_id: 500,
                order_id: 600
            }]
        ),
        vec![Decision::Refused(Status::Expired)]
    );
    assert_eq!(
        decide(&mut c, 1, 3, &[buy(2, 601)]),
        vec![Decision::Ordered { order_id: 601 }]
    );
}

#[test]
fn concurrent_callers_sell_exactly_the_stock() {
    let redis = RedisServer::start();
    init(&mut redis.client(), 1, 500, 2, 60_000);
    let port = redis.port;
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                    .unwrap()
                    .get_connection()
                    .unwrap();
                let mut sold = 0;
                for call in 0..40u64 {
                    // Users overlap across threads, so limits are contended too.
                    let steps: Vec<Step> = (0..10)
                        .map(|i| buy((call * 10 + i) % 300, t << 32 | call << 8 | i))
                        .collect();
                    let call_id = t << 32 | call;
                    sold += decide(&mut c, 1, call_id, &steps)
                        .iter()
                        .filter(|d| matches!(d, Decision::Ordered { .. }))
                        .count();
                }
                sold
            })
        })
        .collect();
    let sold: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let mut c = redis.client();
    // 300 users × limit 2 = 600 wanted, 500 exist.
    assert_eq!(sold, 500);
    assert_eq!(stock(&mut c, 1), (500, 0));
    assert_eq!(outbox_len(&mut c, 1), 500);
}

#[test]
fn functions_reload_after_a_flush() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 5, 1, 60_000);
    redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query::<String>(&mut c)
        .unwrap();
    let lost = redis_ledger::decide(1, "1", 1, 60_000, &[buy(1, 1)]).query::<Value>(&mut c);
    assert!(lost.is_err(), "FCALL fails while the library is gone");
    redis_ledger::load_functions()
        .query::<String>(&mut c)
        .unwrap();
    assert_eq!(
        decide(&mut c, 1, 1, &[buy(1, 100)]),
        vec![Decision::Ordered { order_id: 100 }]
    );
}

#[test]
fn full_width_ids_pass_through_lua_untouched() {
    // Lua numbers are doubles: ids above 2^53 must travel as strings.
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 5, 1, 60_000);
    let (hold_id, order_id) = (u64::MAX - 1, (1u64 << 63) | 12_345_678_901);
    let held = decide(
        &mut c,
        1,
        1,
        &[Step::Reserve {
            user: u64::MAX,
            qty: 1,
            hold_id,
        }],
    );
    assert!(matches!(held[0], Decision::Held { hold_id: h, .. } if h == hold_id));
    assert_eq!(
        decide(&mut c, 1, 2, &[Step::Confirm { hold_id, order_id }]),
        vec![Decision::Ordered { order_id }]
    );
}

fn settle(c: &mut Connection, call: u64, steps: &[Step]) -> Vec<Decision> {
    let reply: Value = redis_ledger::settle(&call.to_string(), 1, 60_000, steps)
        .query(c)
        .unwrap();
    redis_ledger::parse_decisions(&reply, steps).unwrap()
}

#[test]
fn holds_are_settled_by_hold_id_alone_across_events() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 5, 1, 60_000);
    init(&mut c, 2, 5, 1, 60_000);
    decide(
        &mut c,
        1,
        1,
        &[Step::Reserve {
            user: 1,
            qty: 1,
            hold_id: 500,
        }],
    );
    decide(
        &mut c,
        2,
        2,
        &[Step::Reserve {
            user: 1,
            qty: 1,
            hold_id: 501,
        }],
    );
    let steps = [
        Step::Confirm {
            hold_id: 500,
            order_id: 600,
        },
        Step::Cancel { hold_id: 501 },
        Step::Confirm {
            hold_id: 999,
            order_id: 601,
        },
    ];
    let expected = vec![
        Decision::Ordered { order_id: 600 },
        Decision::Cancelled {
            event_id: 2,
            qty: 1,
        },
        Decision::Refused(Status::NotFound),
    ];
    assert_eq!(settle(&mut c, 10, &steps), expected);
    assert_eq!(
        settle(&mut c, 10, &steps),
        expected,
        "replayed, not re-applied"
    );
    assert_eq!(stock(&mut c, 1), (5, 4));
    assert_eq!(
        stock(&mut c, 2),
        (5, 5),
        "the cancelled hold is back on sale"
    );
    assert_eq!(outbox_len(&mut c, 1), 1);
    assert_eq!(
        settle(
            &mut c,
            11,
            &[Step::Confirm {
                hold_id: 501,
                order_id: 602
            }]
        ),
        vec![Decision::Refused(Status::NotFound)],
        "a cancelled hold cannot be confirmed"
    );
}

fn orders_of(c: &mut Connection, event: u32, user: u64) -> Vec<(u64, u16)> {
    let reply: Value = redis_ledger::orders(event, user).query(c).unwrap();
    redis_ledger::parse_orders(&reply).unwrap().unwrap()
}

fn buyer_entry(c: &mut Connection, event: u32, user: u64) -> Option<String> {
    redis::cmd("HGET")
        .arg(EventKeys::new(event).buyers())
        .arg(user)
        .query(c)
        .unwrap()
}

#[test]
fn a_buyers_entry_keeps_held_tickets_then_orders_and_goes_when_empty() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 10, 3, 60_000);
    let reserve = |user, qty, hold_id| Step::Reserve { user, qty, hold_id };
    decide(
        &mut c,
        1,
        1,
        &[buy(7, 100), reserve(7, 2, 500), reserve(8, 1, 501)],
    );
    assert_eq!(buyer_entry(&mut c, 1, 7).as_deref(), Some("2|100"));
    assert_eq!(buyer_entry(&mut c, 1, 8).as_deref(), Some("1|"));
    // Bought 1 + held 2 is user 7's limit of 3.
    assert_eq!(
        decide(&mut c, 1, 2, &[buy(7, 101)]),
        vec![Decision::Refused(Status::LimitReached)]
    );
    let settled = decide(
        &mut c,
        1,
        3,
        &[
            Step::Confirm {
                hold_id: 500,
                order_id: 600,
            },
            Step::Cancel { hold_id: 501 },
        ],
    );
    assert_eq!(
        settled,
        vec![
            Decision::Ordered { order_id: 600 },
            Decision::Cancelled {
                event_id: 1,
                qty: 1
            }
        ]
    );
    assert_eq!(buyer_entry(&mut c, 1, 7).as_deref(), Some("100,600:2"));
    assert_eq!(
        buyer_entry(&mut c, 1, 8),
        None,
        "nothing held, nothing bought"
    );
    assert_eq!(orders_of(&mut c, 1, 7), vec![(100, 1), (600, 2)]);
    assert_eq!(meta(&mut c, 1), vec![10, 3, 0]);
}

/// A batch of distinct buyers is decided by position (no Lua table keyed by user); a
/// user whose hold the same call's sweep expired goes by name. Both must leave the
/// entries a batch decided step by step would, and keep the limit across calls.
#[test]
fn distinct_buyers_decided_by_position_keep_entries_and_limits() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 20, 2, 200);
    let reserve = |user, qty, hold_id| Step::Reserve { user, qty, hold_id };
    let first = [reserve(1, 2, 500), buy(2, 100)];
    assert!(redis_ledger::distinct_buyers(&first));
    decide(&mut c, 1, 1, &first);
    assert_eq!(buyer_entry(&mut c, 1, 1).as_deref(), Some("2|"));
    // Past the hold's deadline (Redis's clock), the next call's sweep gives user 1's two
    // tickets back before its steps: user 1 has room for two again.
    std::thread::sleep(Duration::from_millis(400));
    let second = [buy(1, 101), buy(2, 102), buy(3, 103), reserve(4, 2, 501)];
    assert!(redis_ledger::distinct_buyers(&second));
    assert_eq!(
        decide(&mut c, 1, 2, &second)[..3],
        [
            Decision::Ordered { order_id: 101 },
            Decision::Ordered { order_id: 102 },
            Decision::Ordered { order_id: 103 },
        ]
    );
    assert_eq!(buyer_entry(&mut c, 1, 1).as_deref(), Some("101"));
    assert_eq!(buyer_entry(&mut c, 1, 2).as_deref(), Some("100,102"));
    assert_eq!(buyer_entry(&mut c, 1, 3).as_deref(), Some("103"));
    assert_eq!(buyer_entry(&mut c, 1, 4).as_deref(), Some("2|"));
    // Limits hold on the next call: user 2 has two, user 4 holds two; users 1 and 3 one.
    assert_eq!(
        decide(
            &mut c,
            1,
            3,
            &[buy(2, 104), buy(4, 105), buy(1, 106), buy(3, 107)]
        ),
        vec![
            Decision::Refused(Status::LimitReached),
            Decision::Refused(Status::LimitReached),
            Decision::Ordered { order_id: 106 },
            Decision::Ordered { order_id: 107 },
        ]
    );
    assert_eq!(buyer_entry(&mut c, 1, 1).as_deref(), Some("101,106"));
    assert_eq!(orders_of(&mut c, 1, 3), vec![(103, 1), (107, 1)]);
    assert_eq!(meta(&mut c, 1), vec![20, 6, 2], "user 4 still holds two");
}

/// A rush's call (one-ticket BUYs of distinct users, stock for all) is decided whole up
/// to its first user with an entry, and step by step from there: every user who bought
/// before is judged by their entry wherever they stand, and every new one sells.
#[test]
fn a_rush_call_sells_its_new_buyers_and_judges_each_earlier_buyer_wherever_they_stand() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 1_000, 1, 60_000);
    decide(&mut c, 1, 1, &[buy(5, 105), buy(8, 108)]);
    let steps: Vec<Step> = (1..=10u64).map(|user| buy(user, 200 + user)).collect();
    assert!(redis_ledger::distinct_buyers(&steps));
    let decided = decide(&mut c, 1, 2, &steps);
    for (user, decision) in (1..=10u64).zip(&decided) {
        let expected = if user == 5 || user == 8 {
            Decision::Refused(Status::LimitReached)
        } else {
            Decision::Ordered {
                order_id: 200 + user,
            }
        };
        assert_eq!(*decision, expected, "user {user}");
    }
    for (user, entry) in [
        (1, "201"),
        (4, "204"),
        (5, "105"),
        (6, "206"),
        (8, "108"),
        (10, "210"),
    ] {
        assert_eq!(
            buyer_entry(&mut c, 1, user).as_deref(),
            Some(entry),
            "user {user}"
        );
    }
    assert_eq!(meta(&mut c, 1), vec![1_000, 10, 0]);
    let sold_in_call: Vec<(u64, u64, u16)> = [1, 2, 3, 4, 6, 7, 9, 10]
        .iter()
        .map(|&user| (200 + user, user, 1))
        .collect();
    assert_eq!(
        outbox(&mut c, 1)[1],
        sold_in_call,
        "the call's outbox entry"
    );
    // The same call again is a replay: nothing more sold.
    assert_eq!(decide(&mut c, 1, 2, &steps), decided);
    assert_eq!(meta(&mut c, 1), vec![1_000, 10, 0]);
}

/// The outbox entry of a call whose BUYs all sell is the caller's text of them; once one
/// is refused (or a CONFIRM is in the call) it is made order by order. Both must list
/// exactly the orders sold, in step order.
#[test]
fn the_outbox_lists_exactly_the_orders_sold_whether_or_not_every_buy_sold() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 6, 2, 60_000);
    let two = |user, order_id| Step::Buy {
        user,
        qty: 2,
        order_id,
    };
    decide(&mut c, 1, 1, &[buy(1, 100), two(2, 101)]);
    // User 1 refused at their limit after one sale, user 4's two do not fit, user 5's one
    // is the last ticket.
    decide(
        &mut c,
        1,
        2,
        &[
            buy(3, 102),
            buy(1, 103),
            buy(1, 104),
            two(4, 105),
            buy(5, 106),
        ],
    );
    let reserved = decide(
        &mut c,
        1,
        3,
        &[Step::Reserve {
            user: 6,
            qty: 1,
            hold_id: 500,
        }],
    );
    assert!(matches!(reserved[0], Decision::Refused(Status::SoldOut)));
    assert_eq!(
        outbox(&mut c, 1),
        vec![
            vec![(100, 1, 1), (101, 2, 2)],
            vec![(102, 3, 1), (103, 1, 1), (106, 5, 1)],
        ]
    );
    assert_eq!(meta(&mut c, 1), vec![6, 6, 0]);
    // A CONFIRM beside BUYs: each order once, in step order.
    init(&mut c, 2, 10, 4, 60_000);
    decide(
        &mut c,
        2,
        4,
        &[Step::Reserve {
            user: 7,
            qty: 1,
            hold_id: 501,
        }],
    );
    decide(
        &mut c,
        2,
        5,
        &[
            buy(8, 200),
            Step::Confirm {
                hold_id: 501,
                order_id: 201,
            },
            buy(9, 202),
        ],
    );
    assert_eq!(
        outbox(&mut c, 2),
        vec![vec![(200, 8, 1), (201, 7, 1), (202, 9, 1)]]
    );
}

/// A call of more steps than one HMGET names (the Lua reads 1,000 users at a time):
/// every chunk's entries land where their steps are.
#[test]
fn a_call_longer_than_one_read_decides_every_step_by_its_own_entry() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 10_000, 1, 60_000);
    // Users 1000..3500 have bought one ticket before (limit 1), every fifth of them.
    let before: Vec<Step> = (0..2500u64)
        .filter(|i| i.is_multiple_of(5))
        .map(|i| buy(1000 + i, 50_000 + i))
        .collect();
    decide(&mut c, 1, 1, &before);
    let steps: Vec<Step> = (0..2500u64).map(|i| buy(1000 + i, 60_000 + i)).collect();
    assert!(redis_ledger::distinct_buyers(&steps));
    let decided = decide(&mut c, 1, 2, &steps);
    for (i, decision) in decided.iter().enumerate() {
        let i = i as u64;
        let expected = if i.is_multiple_of(5) {
            Decision::Refused(Status::LimitReached)
        } else {
            Decision::Ordered {
                order_id: 60_000 + i,
            }
        };
        assert_eq!(*decision, expected, "step {i}");
    }
    assert_eq!(buyer_entry(&mut c, 1, 3499).as_deref(), Some("62499"));
    assert_eq!(buyer_entry(&mut c, 1, 3495).as_deref(), Some("52495"));
    assert_eq!(meta(&mut c, 1), vec![10_000, 2500, 0]);
}

/// Redis cannot undo a call's writes when a command in it fails. The keys a call may
/// write before reading — the outbox stream, the hold index, and in a settle the
/// deadlines and forget sets — are checked up front, so a wrong-typed one (someone else
/// wrote it) fails the call before it changes anything: no buyer recorded for a sale
/// never acknowledged, no hold without its index, no event of a settle half done.
#[test]
fn a_wrong_typed_outbox_or_hold_index_fails_the_call_before_any_change() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 10, 1, 60_000);
    init(&mut c, 2, 10, 1, 60_000);
    let holds_of = |c: &mut Connection, event: u32| -> usize {
        redis::cmd("HLEN")
            .arg(format!("{{ev:{event}}}:holds"))
            .query(c)
            .unwrap()
    };
    let orders_key = EventKeys::new(1).orders();
    let _: () = redis::cmd("SET")
        .arg(&orders_key)
        .arg("not a stream")
        .query(&mut c)
        .unwrap();
    let failed = redis_ledger::decide(1, "w1", 1, 60_000, &[buy(5, 100)]).query::<Value>(&mut c);
    let failed = failed.expect_err("a string where the outbox stream should be");
    assert!(failed.to_string().contains("not a stream"), "{failed}");
    assert_eq!(buyer_entry(&mut c, 1, 5), None, "no buyer recorded");
    assert_eq!(meta(&mut c, 1), vec![10, 0, 0]);
    let _: () = redis::cmd("DEL").arg(&orders_key).query(&mut c).unwrap();

    let _: () = redis::cmd("SET")
        .arg("ticketd:hold-events")
        .arg("not a hash")
        .query(&mut c)
        .unwrap();
    let reserve = Step::Reserve {
        user: 6,
        qty: 1,
        hold_id: 500,
    };
    let failed = redis_ledger::decide(1, "w2", 1, 60_000, &[buy(7, 101), reserve])
        .query::<Value>(&mut c)
        .expect_err("a string where the hold index should be");
    assert!(failed.to_string().contains("not a hash"), "{failed}");
    assert_eq!(holds_of(&mut c, 1), 0, "no hold without its index");
    assert_eq!(buyer_entry(&mut c, 1, 7), None);
    assert_eq!(meta(&mut c, 1), vec![10, 0, 0]);
    let _: () = redis::cmd("DEL")
        .arg("ticketd:hold-events")
        .query(&mut c)
        .unwrap();

    // A settle over two events whose second outbox is wrong changes neither.
    decide(&mut c, 1, 3, &[reserve]);
    decide(
        &mut c,
        2,
        4,
        &[Step::Reserve {
            user: 6,
            qty: 1,
            hold_id: 501,
        }],
    );
    let _: () = redis::cmd("SET")
        .arg(EventKeys::new(2).orders())
        .arg("not a stream")
        .query(&mut c)
        .unwrap();
    let confirm = |hold_id, order_id| Step::Confirm { hold_id, order_id };
    let failed = redis_ledger::settle("w5", 1, 60_000, &[confirm(500, 600), confirm(501, 601)])
        .query::<Value>(&mut c)
        .expect_err("the second event's outbox is a string");
    assert!(failed.to_string().contains("not a stream"), "{failed}");
    assert_eq!(meta(&mut c, 1), vec![10, 0, 1], "event 1's hold still held");
    assert_eq!(meta(&mut c, 2), vec![10, 0, 1]);
    assert_eq!(outbox_len(&mut c, 1), 0);
    // The same with its forget set (a settle runs no sweep that would read it first).
    let _: () = redis::cmd("DEL")
        .arg(EventKeys::new(2).orders())
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("{ev:2}:forget")
        .arg("not a zset")
        .query(&mut c)
        .unwrap();
    let failed = redis_ledger::settle("w6", 1, 60_000, &[confirm(500, 600), confirm(501, 601)])
        .query::<Value>(&mut c)
        .expect_err("the second event's forget set is a string");
    assert!(failed.to_string().contains("not a zset"), "{failed}");
    assert_eq!(meta(&mut c, 1), vec![10, 0, 1]);
    assert_eq!(meta(&mut c, 2), vec![10, 0, 1]);
    // Put right, the same settle goes through.
    let _: () = redis::cmd("DEL")
        .arg("{ev:2}:forget")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        settle(&mut c, 7, &[confirm(500, 600), confirm(501, 601)]),
        vec![
            Decision::Ordered { order_id: 600 },
            Decision::Ordered { order_id: 601 }
        ]
    );
    assert_eq!(outbox_len(&mut c, 1) + outbox_len(&mut c, 2), 2);
}

/// Ending or settling a hold writes its record, the deadlines and the forget set before
/// it reads its owner's entry, so a call that will end or settle holds checks the forget
/// set and the buyers hashes up front too: a wrong-typed one fails it before any change,
/// rather than leaving a hold out of the deadlines with its tickets still counted held.
#[test]
fn a_wrong_typed_forget_set_or_buyers_hash_fails_a_call_that_ends_holds_before_any_change() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 10, 1, 1);
    let reserve = |user, hold_id| Step::Reserve {
        user,
        qty: 1,
        hold_id,
    };
    decide(&mut c, 1, 1, &[reserve(6, 500), reserve(7, 501)]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let deadlines = |c: &mut Connection| -> usize {
        redis::cmd("ZCARD")
            .arg("{ev:1}:deadlines")
            .query(c)
            .unwrap()
    };
    let hold_records = |c: &mut Connection| -> Vec<String> {
        redis::cmd("HVALS").arg("{ev:1}:holds").query(c).unwrap()
    };
    let untouched = |c: &mut Connection| {
        assert_eq!(meta(c, 1), vec![10, 0, 2], "both holds still counted held");
        assert_eq!(deadlines(c), 2, "both holds still due to expire");
        assert!(
            hold_records(c).iter().all(|h| h.contains(" A ")),
            "{:?}",
            hold_records(c)
        );
    };
    // Both holds are due: a BUY's call would expire them first.
    let _: () = redis::cmd("SET")
        .arg("{ev:1}:forget")
        .arg("not a zset")
        .query(&mut c)
        .unwrap();
    let failed = redis_ledger::decide(1, "f1", 1, 60_000, &[buy(8, 100)])
        .query::<Value>(&mut c)
        .expect_err("a string where the forget set should be");
    assert!(failed.to_string().contains("not a zset"), "{failed}");
    untouched(&mut c);
    let _: () = redis::cmd("DEL")
        .arg("{ev:1}:forget")
        .query(&mut c)
        .unwrap();

    // A CONFIRM writes the hold before it reads the owner's entry.
    let _: () = redis::cmd("SET")
        .arg(EventKeys::new(1).buyers())
        .arg("not a hash")
        .query(&mut c)
        .unwrap();
    let confirm = Step::Confirm {
        hold_id: 500,
        order_id: 600,
    };
    let failed = redis_ledger::settle("f2", 1, 60_000, &[confirm])
        .query::<Value>(&mut c)
        .expect_err("a string where the buyers hash should be");
    assert!(failed.to_string().contains("not a hash"), "{failed}");
    untouched(&mut c);
    let failed = redis_ledger::decide(1, "f3", 1, 60_000, &[buy(8, 100)])
        .query::<Value>(&mut c)
        .expect_err("the same when the call's sweep ends them");
    assert!(failed.to_string().contains("not a hash"), "{failed}");
    untouched(&mut c);

    // Put right, the next call expires both.
    let _: () = redis::cmd("DEL")
        .arg(EventKeys::new(1).buyers())
        .query(&mut c)
        .unwrap();
    assert_eq!(
        decide(&mut c, 1, 4, &[buy(8, 100)]),
        vec![Decision::Ordered { order_id: 100 }]
    );
    assert_eq!(meta(&mut c, 1), vec![10, 1, 0]);
    assert_eq!(deadlines(&mut c), 0);
}

/// A call the library cannot read — a kind it does not know, or operands that do not
/// match the kinds — is refused with a message before anything changes.
#[test]
fn a_malformed_decide_call_is_refused_before_any_change() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 10, 1, 60_000);
    let keys = EventKeys::new(1);
    let [meta_key, users, holds, deadlines, forget, orders, user_orders, buyers] = keys.state();
    let call = |c: &mut Connection, id: &str, args: &[&str]| {
        let call_key = format!("{{ev:1}}:call:{id}");
        let keys = [
            &meta_key,
            &users,
            &holds,
            &deadlines,
            &forget,
            &orders,
            &user_orders,
            &meta_key,
            &buyers,
            &call_key,
            &meta_key,
        ]
        .map(String::as_str);
        let args: Vec<&str> = std::iter::once(id).chain(args.iter().copied()).collect();
        raw_decide(c, &keys, &args)
    };
    for (id, args, why) in [
        (
            "m1",
            &["1", "60000", "1", "D", "Q", "", "5", "100"][..],
            "no kind",
        ),
        (
            "m2",
            &["1", "60000", "2", "D", "B", "100:5:1", "5", "100"][..],
            "no kind",
        ),
        (
            "m3",
            &["1", "60000", "1", "D", "B", "100:5:1", "5"][..],
            "operands",
        ),
        (
            "m4",
            &["1", "60000", "1", "D", "B", "100:5:1", "5", "100", "7"][..],
            "operands",
        ),
        // A step count no call could have (checked before the kinds are compared).
        (
            "m5",
            &["1", "60000", "1000000000000", "D", "B", "", "5", "100"][..],
            "step count",
        ),
        (
            "m6",
            &["1", "60000", "-1", "D", "B", "", "5"][..],
            "step count",
        ),
        (
            "m7",
            &["1", "60000", "one", "D", "B", "", "5"][..],
            "step count",
        ),
        // A quantity that is not a count of tickets (a `b` BUY, an `R`).
        (
            "m8",
            &["1", "60000", "1", "D", "b", "100:5:x", "5", "x", "100"][..],
            "not a count of tickets",
        ),
        (
            "m9",
            &[
                "1", "60000", "2", "D", "BR", "100:5:1", "5", "6", "100", "0", "500",
            ][..],
            "not a count of tickets",
        ),
    ] {
        let refused = call(&mut c, id, args).expect_err(id);
        assert!(refused.to_string().contains(why), "{id}: {refused}");
    }
    assert_eq!(meta(&mut c, 1), vec![10, 0, 0], "nothing sold");
    assert_eq!(outbox_len(&mut c, 1), 0);
    assert_eq!(buyer_entry(&mut c, 1, 5), None);
    // The same call well formed sells.
    assert!(call(
        &mut c,
        "ok",
        &["1", "60000", "1", "D", "B", "100:5:1", "5", "100"]
    )
    .is_ok());
    assert_eq!(buyer_entry(&mut c, 1, 5).as_deref(), Some("100"));
}

/// Before the buyers hash the ledger kept each user's count in `{ev:ID}:users` and their orders in
/// `{ev:ID}:user-orders`. An event sold then goes on with its limits and orders, and each
/// user touched moves into `{ev:ID}:buyers`.
#[test]
fn an_event_sold_by_an_earlier_version_keeps_its_limits_and_orders() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 10, 2, 60_000);
    let [meta_key, users, .., user_orders, _] = EventKeys::new(1).state();
    let _: () = redis::cmd("HSET")
        .arg(&meta_key)
        .arg("sold")
        .arg(3)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&users)
        .arg(&["5", "1", "6", "2", "9", "1"][..])
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&user_orders)
        .arg(&["5", "100:1", "6", "101:2", "9", "102:1"][..])
        .query(&mut c)
        .unwrap();
    assert_eq!(
        decide(
            &mut c,
            1,
            1,
            &[buy(5, 200), buy(6, 201), buy(5, 202), buy(7, 203)]
        ),
        vec![
            Decision::Ordered { order_id: 200 },
            Decision::Refused(Status::LimitReached),
            Decision::Refused(Status::LimitReached),
            Decision::Ordered { order_id: 203 },
        ]
    );
    assert_eq!(orders_of(&mut c, 1, 5), vec![(100, 1), (200, 1)]);
    assert_eq!(orders_of(&mut c, 1, 6), vec![(101, 2)]);
    assert_eq!(
        orders_of(&mut c, 1, 9),
        vec![(102, 1)],
        "untouched, still read"
    );
    assert_eq!(buyer_entry(&mut c, 1, 5).as_deref(), Some("100:1,200"));
    assert_eq!(buyer_entry(&mut c, 1, 6).as_deref(), Some("101:2"));
    let left: Vec<String> = redis::cmd("HKEYS").arg(&users).query(&mut c).unwrap();
    assert_eq!(left, vec!["9".to_owned()], "moved users leave the old hash");
    let left: Vec<String> = redis::cmd("HKEYS").arg(&user_orders).query(&mut c).unwrap();
    assert_eq!(left, vec!["9".to_owned()]);
    assert_eq!(meta(&mut c, 1), vec![10, 5, 0]);
}

/// `ticketd_decide` called by hand with these keys and arguments (another version's
/// layout, or a malformed call).
fn raw_decide(c: &mut Connection, keys: &[&str], args: &[&str]) -> redis::RedisResult<Value> {
    redis::cmd("FCALL")
        .arg("ticketd_decide")
        .arg(keys.len())
        .arg(keys)
        .arg(args)
        .query(c)
}

/// Another version's library loaded in this one's place, as a node of that version would.
fn load_library(c: &mut Connection, library: &str) {
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(library)
        .query(c)
        .unwrap();
}

/// The call failed with the library's "another version" refusal.
fn refused_as_another_version(result: redis::RedisResult<Value>, what: &str) {
    let refused = result.expect_err(what);
    assert!(
        refused.to_string().contains("another ticketd version"),
        "{what}: {refused}"
    );
}

/// The library of the layout before the buyers hash, as that version loaded it.
const LIBRARY_BEFORE_BUYERS: &str = include_str!("fixtures/ticketd-library-before-buyers.lua");

/// A node and a library of different versions refuse each other's calls before changing
/// anything (so the node's UNAVAILABLE is true), in both directions.
#[test]
fn a_node_and_a_library_of_different_versions_refuse_each_other_unchanged() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 10, 1, 60_000);
    let keys = EventKeys::new(1);
    // A node of the earlier version against this library: its decide sent 8 keys.
    let [meta_key, users, holds, deadlines, forget, orders, user_orders, _] = keys.state();
    let earlier = raw_decide(
        &mut c,
        &[
            &meta_key,
            &users,
            &holds,
            &deadlines,
            &forget,
            &orders,
            &user_orders,
            "{ev:1}:call:old-1",
        ],
        &["old-1", "1", "60000", "1", "B", "5", "1", "100"],
    );
    refused_as_another_version(earlier, "an earlier node's call is refused");
    let earlier_settle: redis::RedisResult<Value> = redis::cmd("FCALL")
        .arg("ticketd_settle")
        .arg(1)
        .arg("ticketd:call:old-2")
        .arg(&["old-2", "1", "60000", "1", "X", "500", "0"][..])
        .query(&mut c);
    assert!(earlier_settle.is_err());

    // This version's node against the earlier library, which another node reloaded.
    let _: () = redis_ledger::mark_layout().query(&mut c).unwrap();
    load_library(&mut c, LIBRARY_BEFORE_BUYERS);
    let decided: redis::RedisResult<Value> =
        redis_ledger::decide(1, "new-1", 1, 60_000, &[buy(6, 101)]).query(&mut c);
    assert!(
        decided
            .as_ref()
            .is_err_and(|e| e.to_string().contains("WRONGTYPE")),
        "{decided:?}"
    );
    let settled: redis::RedisResult<Value> =
        redis_ledger::settle("new-2", 1, 60_000, &[Step::Cancel { hold_id: 500 }]).query(&mut c);
    assert!(
        settled
            .as_ref()
            .is_err_and(|e| e.to_string().contains("WRONGTYPE")),
        "{settled:?}"
    );
    assert_eq!(meta(&mut c, 1), vec![10, 0, 0], "nothing sold");
    assert_eq!(outbox_len(&mut c, 1), 0);
    let layout: String = redis::cmd("TYPE")
        .arg(redis_ledger::LAYOUT_KEY)
        .query(&mut c)
        .unwrap();
    assert_eq!(layout, "hash", "the guard is not overwritten");
}

/// The library before `ticketd_decide` took its `distinct` argument (ten keys).
const LIBRARY_TEN_KEYS: &str = include_str!("fixtures/ticketd-library-ten-keys.lua");

#[test]
fn a_node_and_a_library_either_side_of_the_distinct_argument_refuse_each_other() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 10, 1, 60_000);
    // A node of the ten-key layout against this library: refused before any change.
    let keys = EventKeys::new(1);
    let [meta_key, users, holds, deadlines, forget, orders, user_orders, buyers] = keys.state();
    let ten_keys = raw_decide(
        &mut c,
        &[
            &meta_key,
            &users,
            &holds,
            &deadlines,
            &forget,
            &orders,
            &user_orders,
            &meta_key,
            &buyers,
            "{ev:1}:call:ten-1",
        ],
        &["ten-1", "1", "60000", "1", "B", "5", "1", "100"],
    );
    refused_as_another_version(ten_keys, "a ten-key node's call is refused");
    // This node against the ten-key library, which another node reloaded.
    load_library(&mut c, LIBRARY_TEN_KEYS);
    let decided: redis::RedisResult<Value> =
        redis_ledger::decide(1, "new-1", 1, 60_000, &[buy(6, 101)]).query(&mut c);
    refused_as_another_version(
        decided,
        "this node's call is refused by the ten-key library",
    );
    assert_eq!(meta(&mut c, 1), vec![10, 0, 0], "nothing sold");
    assert_eq!(outbox_len(&mut c, 1), 0);
}

/// The library as shipped, with a bug put in on purpose: its RESERVE path forgets to
/// answer the step it has decided.
fn library_forgetting_reserve_answers() -> String {
    let library = include_str!("../src/redis_ledger/ticketd.lua");
    let answer = "answer(a, i, 'O', expires_text)";
    assert_eq!(
        library.matches(answer).count(),
        1,
        "the RESERVE's answer moved"
    );
    library.replace(answer, "")
}

/// A call whose library finds a step unanswered (only a bug can do that) has already
/// written that RESERVE's hold: it keeps all its changes counted — the hold in `held`, the
/// sale in `sold` — and answers a text no node reads as decisions, the same on replay.
/// When the hold expires, its tickets come back exactly: none sold twice, none lost.
#[test]
fn a_call_with_a_step_left_unanswered_keeps_its_changes_counted_and_answers_nothing() {
    let redis = RedisServer::start();
    let mut c = redis.client();
    init(&mut c, 1, 10, 1, 200);
    load_library(&mut c, &library_forgetting_reserve_answers());
    let steps = [
        buy(5, 100),
        Step::Reserve {
            user: 6,
            qty: 1,
            hold_id: 500,
        },
    ];
    for attempt in ["first", "replayed"] {
        let reply: Value = redis_ledger::decide(1, "u1", 1, 60_000, &steps)
            .query(&mut c)
            .unwrap_or_else(|e| panic!("{attempt}: the call failed instead: {e}"));
        match redis_ledger::parse_decisions(&reply, &steps) {
            Err(ReplyError::Library(why)) => {
                assert!(why.contains("without an answer"), "{attempt}: {why}")
            }
            other => panic!("{attempt}: {other:?}"),
        }
        assert_eq!(
            meta(&mut c, 1),
            vec![10, 1, 1],
            "{attempt}: the sale and the hold both counted"
        );
    }
    assert_eq!(outbox(&mut c, 1), vec![vec![(100, 5, 1)]]);
    assert_eq!(buyer_entry(&mut c, 1, 6).as_deref(), Some("1|"));

    // The hold expires on Redis's clock and gives back its one ticket: 9 left.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stock(&mut c, 1), (10, 9));
    assert_eq!(meta(&mut c, 1), vec![10, 1, 0]);
}
