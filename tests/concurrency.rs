//! Many connections at once: pipelining, an exact sell-out, per-user limits across
//! connections and shards, and holds finished through other connections.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};

use bytes::BytesMut;
use common::{event, hold, order_id, start, Client};
use ticketd_proto::{Command, Purchase, Request, ResultBody, Status};

#[test]
fn pipelined_requests_are_all_answered_and_matched_by_req_id() {
    let server = start(&[event(1, 1_000, 1)], 4);
    let mut client = Client::connect(server.local_addr());

    // One write carrying 2,000 requests of every kind; users spread over all shards, so
    // some answers come from other shards and may overtake local ones.
    let mut expected = HashMap::new();
    let mut wire = BytesMut::new();
    for i in 0..2_000u64 {
        let command = match i % 4 {
            0 => Command::Ping,
            1 => Command::Buy(Purchase {
                event: 1,
                user: i,
                qty: 1,
            }),
            2 => Command::Stock { event: 1 },
            _ => Command::Cancel { hold_id: 7 },
        };
        let req_id = 1_000_000 + i;
        Request { req_id, command }.encode(&mut wire);
        expected.insert(req_id, command);
    }
    client.send_raw(&wire);

    let mut orders = HashSet::new();
    for _ in 0..expected.len() {
        let response = client.recv();
        let command = expected
            .remove(&response.req_id)
            .expect("each req_id answered once");
        assert_eq!(response.request_op(), Some(command.op()));
        match command {
            Command::Ping => assert_eq!(response.status, Status::Ok),
            Command::Buy(_) => assert!(orders.insert(order_id(&response))),
            Command::Stock { .. } => assert!(matches!(response.result, ResultBody::Stock { .. })),
            _ => assert_eq!(response.status, Status::NotFound),
        }
    }
    assert!(expected.is_empty());
    assert_eq!(orders.len(), 500);
    assert_eq!(client.stock(1), (1_000, 500));
}

#[test]
fn a_rush_from_many_connections_sells_exactly_the_stock() {
    const STOCK: i64 = 2_000;
    const LIMIT: u16 = 2;
    const CONNECTIONS: u64 = 32;
    const USERS: u64 = 1_500; // 1,500 users × up to 2 = more demand than stock
    const REQUESTS_PER_CONNECTION: u64 = 400;

    let server = start(&[event(1, STOCK, LIMIT)], 4);
    let addr = server.local_addr();
    let barrier = Arc::new(Barrier::new(CONNECTIONS as usize));
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                // Pipeline everything: the same users come from every connection, with
                // qty 1 or 2, so limits are contended across connections and shards.
                let mut wire = BytesMut::new();
                let mut sent = HashMap::new();
                for i in 0..REQUESTS_PER_CONNECTION {
                    let user = (c * 7919 + i * 104_729) % USERS;
                    let qty = 1 + ((c + i) % 2) as u16;
                    let req_id = i + 1;
                    Request {
                        req_id,
                        command: Command::Buy(Purchase {
                            event: 1,
                            user,
                            qty,
                        }),
                    }
                    .encode(&mut wire);
                    sent.insert(req_id, (user, qty));
                }
                barrier.wait();
                client.send_raw(&wire);
                let mut outcomes = Vec::new();
                for _ in 0..REQUESTS_PER_CONNECTION {
                    let response = client.recv();
                    let (user, qty) = sent.remove(&response.req_id).expect("known req_id");
                    outcomes.push((user, qty, response));
                }
                outcomes
            })
        })
        .collect();

    let mut sold = 0i64;
    let mut order_ids = HashSet::new();
    let mut per_user: HashMap<u64, u32> = HashMap::new();
    let mut statuses: HashMap<Status, u64> = HashMap::new();
    for thread in threads {
        for (user, qty, response) in thread.join().expect("client thread") {
            *statuses.entry(response.status).or_default() += 1;
            if response.status == Status::Ok {
                assert!(
                    order_ids.insert(order_id(&response)),
                    "order ids are unique"
                );
                sold += i64::from(qty);
                *per_user.entry(user).or_default() += u32::from(qty);
            }
        }
    }
    assert_eq!(sold, STOCK, "sold exactly the stock: {statuses:?}");
    assert!(
        per_user.values().all(|&n| n <= u32::from(LIMIT)),
        "nobody above the limit"
    );
    assert!(statuses[&Status::SoldOut] > 0 && statuses[&Status::LimitReached] > 0);
    assert!(!order_ids.contains(&0));

    let mut client = Client::connect(addr);
    assert_eq!(client.stock(1), (STOCK, 0));
    let summary = server.shutdown();
    let e = summary.event(1).unwrap();
    assert_eq!(
        (e.sold, e.remaining, e.orders),
        (STOCK, 0, order_ids.len() as u64)
    );
    assert!(e.is_balanced());
}

#[test]
fn one_user_on_many_connections_gets_exactly_the_limit() {
    let server = start(&[event(1, 1_000, 3)], 4);
    let addr = server.local_addr();
    let barrier = Arc::new(Barrier::new(24));
    let threads: Vec<_> = (0..24)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                barrier.wait();
                (0..5)
                    .map(|_| client.buy(1, 42, 1).status)
                    .filter(|s| *s == Status::Ok)
                    .count()
            })
        })
        .collect();
    let oks: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(oks, 3);
}

#[test]
fn holds_are_confirmed_and_cancelled_from_other_connections() {
    let server = start(&[event(1, 100, 1)], 4);
    let addr = server.local_addr();
    // Many connections, so RESERVE and its CONFIRM/CANCEL land on different shards and
    // are forwarded to the hold's owner.
    let mut reservers: Vec<Client> = (0..8).map(|_| Client::connect(addr)).collect();
    let mut finishers: Vec<Client> = (0..8).map(|_| Client::connect(addr)).collect();
    let mut confirmed = HashSet::new();
    for user in 0..40u64 {
        let (hold_id, _) = hold(&reservers[user as usize % 8].reserve(1, user, 1));
        let finisher = &mut finishers[(user as usize * 3 + 1) % 8];
        if user % 2 == 0 {
            assert!(confirmed.insert(order_id(&finisher.confirm(hold_id))));
            // A retry through yet another connection sees the same order.
            let again = finishers[(user as usize + 5) % 8].confirm(hold_id);
            assert!(confirmed.contains(&order_id(&again)));
        } else {
            assert_eq!(finisher.cancel(hold_id).status, Status::Ok);
            assert_eq!(
                finishers[(user as usize + 5) % 8].confirm(hold_id).status,
                Status::NotFound
            );
        }
    }
    assert_eq!(finishers[0].stock(1), (100, 80));
    let summary = server.shutdown();
    let e = summary.event(1).unwrap();
    assert_eq!((e.sold, e.held, e.orders), (20, 0, 20));
}
