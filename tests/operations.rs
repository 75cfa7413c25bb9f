//! Every operation and every status the embedded node can produce, over real sockets.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{event, hold, order_id, start, start_with, wait_until, Client};
use ticketd_proto::{Command, Op, ResultBody, Status};

#[test]
fn ping_answers_ok_with_no_result() {
    let server = start(&[], 2);
    let mut client = Client::connect(server.local_addr());
    let response = client.call(Command::Ping);
    assert_eq!(response.status, Status::Ok);
    assert_eq!(response.result, ResultBody::Empty);
}

#[test]
fn buy_sells_then_enforces_the_limit_then_sells_out() {
    let server = start(&[event(1, 3, 1)], 2);
    let mut client = Client::connect(server.local_addr());

    let first = client.buy(1, 100, 1);
    assert_ne!(order_id(&first), 0);
    assert_eq!(client.buy(1, 100, 1).status, Status::LimitReached);

    assert_eq!(client.buy(1, 101, 1).status, Status::Ok);
    assert_eq!(client.buy(1, 102, 1).status, Status::Ok);
    assert_eq!(client.buy(1, 103, 1).status, Status::SoldOut);
    assert_eq!(client.stock(1), (3, 0));

    let summary = server.shutdown();
    let e = summary.event(1).unwrap();
    assert_eq!((e.sold, e.held, e.remaining, e.orders), (3, 0, 0, 3));
}

#[test]
fn buy_validates_qty_and_event() {
    let server = start(&[event(1, 10, 2)], 2);
    let mut client = Client::connect(server.local_addr());
    assert_eq!(client.buy(1, 1, 0).status, Status::BadRequest, "qty 0");
    assert_eq!(
        client.buy(1, 1, 3).status,
        Status::BadRequest,
        "qty over the limit"
    );
    assert_eq!(
        client.buy(2, 1, 1).status,
        Status::NotFound,
        "unknown event"
    );
    assert_eq!(client.reserve(2, 1, 1).status, Status::NotFound);
    assert_eq!(client.reserve(1, 1, 0).status, Status::BadRequest);
    assert_eq!(client.stock(1), (10, 10), "nothing was deducted");
    // qty up to the limit in one request is fine.
    assert_eq!(client.buy(1, 1, 2).status, Status::Ok);
    assert_eq!(client.stock(1), (10, 8));
}

#[test]
fn sold_out_takes_nothing_when_qty_exceeds_what_is_left() {
    let server = start(&[event(1, 3, 5)], 2);
    let mut client = Client::connect(server.local_addr());
    assert_eq!(client.buy(1, 1, 2).status, Status::Ok);
    assert_eq!(client.buy(1, 2, 2).status, Status::SoldOut);
    assert_eq!(client.stock(1), (3, 1));
    assert_eq!(client.buy(1, 2, 1).status, Status::Ok);
}

#[test]
fn reserve_confirm_and_retries() {
    let ttl = Duration::from_secs(60);
    let server = start_with(&[event(1, 5, 2)], |c| c.hold_ttl = ttl);
    let mut client = Client::connect(server.local_addr());

    let before = now_ms();
    let (hold_id, expires) = hold(&client.reserve(1, 7, 2));
    assert_ne!(hold_id, 0);
    let ttl_ms = ttl.as_millis() as u64;
    // The server's wall clock is one system-clock reading at start plus monotonic time
    // (src/clock.rs), each floored to whole ms, and the system clock may be slewed
    // meanwhile: it can read a few ms off this process's `SystemTime` (CI once saw it
    // outside the exact bounds). Within 50 ms still pins the expiry to now + TTL (60 s).
    const SLACK_MS: u64 = 50;
    assert!(
        expires + SLACK_MS >= before + ttl_ms && expires <= now_ms() + ttl_ms + SLACK_MS,
        "expiry {expires} is now + TTL ({} .. {})",
        before + ttl_ms,
        now_ms() + ttl_ms
    );
    assert_eq!(client.stock(1), (5, 3), "held tickets are not remaining");
    assert_eq!(
        client.buy(1, 7, 1).status,
        Status::LimitReached,
        "holds count"
    );

    let order = order_id(&client.confirm(hold_id));
    assert_eq!(
        order_id(&client.confirm(hold_id)),
        order,
        "confirm is idempotent"
    );
    assert_eq!(
        client.cancel(hold_id).status,
        Status::NotFound,
        "cancel after confirm"
    );
    assert_eq!(client.stock(1), (5, 3));

    let summary = server.shutdown();
    let e = summary.event(1).unwrap();
    assert_eq!((e.sold, e.held, e.remaining, e.orders), (2, 0, 3, 1));
}

#[test]
fn cancel_returns_tickets_and_room_and_is_idempotent() {
    let server = start(&[event(1, 1, 1)], 2);
    let mut client = Client::connect(server.local_addr());
    let (hold_id, _) = hold(&client.reserve(1, 7, 1));
    assert_eq!(client.buy(1, 8, 1).status, Status::SoldOut);

    assert_eq!(client.cancel(hold_id).status, Status::Ok);
    assert_eq!(
        client.cancel(hold_id).status,
        Status::Ok,
        "cancel is idempotent"
    );
    assert_eq!(
        client.confirm(hold_id).status,
        Status::NotFound,
        "confirm after cancel"
    );
    assert_eq!(client.stock(1), (1, 1), "back on sale at once");
    // The user has their room back, and the ticket sells again.
    assert_eq!(client.buy(1, 7, 1).status, Status::Ok);
}

#[test]
fn unknown_holds_and_events_are_not_found() {
    let server = start(&[event(1, 1, 1)], 2);
    let mut client = Client::connect(server.local_addr());
    for hold_id in [0, 1, 0xDEAD_BEEF, u64::MAX] {
        assert_eq!(client.confirm(hold_id).status, Status::NotFound);
        assert_eq!(client.cancel(hold_id).status, Status::NotFound);
    }
    let response = client.call(Command::Stock { event: 99 });
    assert_eq!(response.status, Status::NotFound);
    assert_eq!(response.result, ResultBody::Empty);
}

#[test]
fn expired_holds_answer_expired() {
    let server = start_with(&[event(1, 1, 1)], |c| {
        c.hold_ttl = Duration::from_millis(100)
    });
    let mut client = Client::connect(server.local_addr());
    let (a, _) = hold(&client.reserve(1, 1, 1));
    wait_until(|| client.stock(1) == (1, 1));
    assert_eq!(client.confirm(a).status, Status::Expired);
    assert_eq!(client.cancel(a).status, Status::Expired);
}

#[test]
fn connections_over_max_conns_are_answered_overloaded_and_closed() {
    let server = start_with(&[event(1, 10, 1)], |c| {
        c.shards = 1;
        c.max_conns = 2;
    });
    let mut held: Vec<Client> = (0..2)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut held {
        assert_eq!(c.call(Command::Ping).status, Status::Ok);
    }
    let mut extra = Client::connect(server.local_addr());
    let response = extra.buy(1, 5, 1);
    assert_eq!(response.status, Status::Overloaded);
    assert_eq!(response.result, ResultBody::Empty);
    extra.expect_eof();
    assert_eq!(held[0].stock(1), (10, 10), "shed before any work");

    // When a slot frees up, new connections are served again.
    drop(held.pop());
    wait_until(|| {
        let mut c = Client::connect(server.local_addr());
        c.call(Command::Ping).status == Status::Ok
    });
    let summary = server.shutdown();
    assert!(summary.stats.refused >= 1);
}

#[test]
fn max_conns_is_the_node_total_whatever_the_shards() {
    // Four shards, five connections allowed: the kernel spreads connections over the
    // shards' listeners unevenly, yet exactly five are served and the rest shed.
    let server = start_with(&[event(1, 10, 1)], |c| {
        c.shards = 4;
        c.max_conns = 5;
    });
    let mut held: Vec<Client> = (0..5)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut held {
        assert_eq!(c.call(Command::Ping).status, Status::Ok);
    }
    for _ in 0..4 {
        let mut extra = Client::connect(server.local_addr());
        assert_eq!(extra.call(Command::Ping).status, Status::Overloaded);
        extra.expect_eof();
    }
    assert_eq!(server.shutdown().stats.refused, 4);
}

#[test]
fn orders_lists_a_users_orders_oldest_first_from_any_connection() {
    // Limit 3: two BUYs and a confirmed hold for user 7; user 8 has nothing.
    let server = start(&[event(1, 100, 3), event(2, 10, 1)], 4);
    let mut c = Client::connect(server.local_addr());
    let first = order_id(&c.buy(1, 7, 1));
    let second = order_id(&c.buy(1, 7, 1));
    let (hold_id, _) = hold(&c.reserve(1, 7, 1));
    assert_eq!(
        c.orders(1, 7),
        vec![(first, 1), (second, 1)],
        "a live hold is no order"
    );
    let third = order_id(&c.confirm(hold_id));
    // Another connection (so perhaps another shard) sees the same list.
    let mut other = Client::connect(server.local_addr());
    assert_eq!(
        other.orders(1, 7),
        vec![(first, 1), (second, 1), (third, 1)]
    );
    assert_eq!(other.orders(1, 8), vec![], "no orders: OK with none");
    assert_eq!(other.orders(2, 7), vec![], "per event");
    assert_eq!(
        other.call(Command::Orders { event: 9, user: 7 }).status,
        Status::NotFound
    );
}

#[test]
fn the_admin_endpoint_answers_health_and_readiness() {
    let server = start_with(&[event(1, 10, 1)], |c| {
        c.admin = ticketd::config::AdminAddr::Given("127.0.0.1:0".parse().unwrap());
    });
    let admin = server.admin_addr().expect("admin endpoint");
    assert_eq!(common::http_get(admin, "/healthz"), (200, "ok\n".into()));
    assert_eq!(common::http_get(admin, "/readyz"), (200, "ready\n".into()));
    assert_eq!(common::http_get(admin, "/nope").0, 404);
    let mut client = Client::connect(server.local_addr());
    for user in 1..=3 {
        assert_eq!(client.buy(1, user, 1).status, Status::Ok);
    }
    assert_eq!(client.buy(1, 1, 1).status, Status::LimitReached);
    let (code, stats) = common::http_get(admin, "/stats");
    assert_eq!(code, 200);
    assert!(stats.contains("ticketd_sold_tickets 3\n"), "{stats}");
    assert!(stats.contains("ticketd_redis_calls 0\n"), "{stats}");
}

#[test]
fn responses_carry_the_request_op() {
    let server = start(&[event(1, 10, 1)], 2);
    let mut client = Client::connect(server.local_addr());
    for (command, op) in [
        (Command::Ping, Op::Ping),
        (Command::Stock { event: 1 }, Op::Stock),
        (Command::Cancel { hold_id: 5 }, Op::Cancel),
    ] {
        assert_eq!(client.call(command).op, op.response_code());
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
