//! Ledger mode (`--redis`): several nodes on one real redis-server sell one event
//! exactly, holds cross nodes, a dead node's holds come back, Redis going away answers
//! UNAVAILABLE, a flushed Function library is reloaded under load, and a reply the node
//! cannot read is no answer at all.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::redis_server::RedisServer;
use common::{event, hold, order_id, Client};
use ticketd::{EventSpec, ServerHandle};
use ticketd_proto::{Command, Purchase, Request, Status};

fn node(
    redis: &RedisServer,
    id: u16,
    nodes: u32,
    events: &[EventSpec],
    ttl: Duration,
) -> ServerHandle {
    redis.create_events(events, ttl);
    let mut config = redis.node_config(id, nodes, events);
    config.hold_ttl = ttl;
    ticketd::start(config).expect("node starts")
}

#[test]
fn three_nodes_of_two_shards_sell_one_event_exactly() {
    const STOCK: i64 = 600;
    let redis = RedisServer::start();
    let events = [event(1, STOCK, 2)];
    let nodes: Vec<ServerHandle> = (1..=3)
        .map(|id| node(&redis, id, 3, &events, Duration::from_secs(60)))
        .collect();
    let addrs: Vec<_> = nodes.iter().map(|n| n.local_addr()).collect();
    let barrier = Arc::new(Barrier::new(24));
    let threads: Vec<_> = (0..24u64)
        .map(|c| {
            let (addr, barrier) = (addrs[c as usize % 3], Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut wire = BytesMut::new();
                let mut sent = HashMap::new();
                for i in 0..100u64 {
                    // 400 users, limit 2: 800 wanted from three nodes, 600 exist.
                    let user = (c * 37 + i * 11) % 400;
                    Request {
                        req_id: i + 1,
                        command: Command::Buy(Purchase {
                            event: 1,
                            user,
                            qty: 1,
                        }),
                    }
                    .encode(&mut wire);
                    sent.insert(i + 1, user);
                }
                barrier.wait();
                client.send_raw(&wire);
                (0..100)
                    .map(|_| {
                        let r = client.recv();
                        (sent[&r.req_id], r)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut oks = Vec::new();
    let mut per_user: HashMap<u64, u32> = HashMap::new();
    for thread in threads {
        for (user, response) in thread.join().unwrap() {
            assert!(
                matches!(
                    response.status,
                    Status::Ok | Status::SoldOut | Status::LimitReached
                ),
                "{response:?}"
            );
            if response.status == Status::Ok {
                oks.push(order_id(&response));
                *per_user.entry(user).or_default() += 1;
            }
        }
    }
    // The ledger is asked again until it is exhausted, whatever the gates did.
    let mut client = Client::connect(addrs[0]);
    let mut extra_user = 10_000;
    while client.stock(1).1 > 0 {
        let r = client.buy(1, extra_user, 1);
        if r.status == Status::Ok {
            oks.push(order_id(&r));
        }
        extra_user += 1;
    }
    let unique: HashSet<u64> = oks.iter().copied().collect();
    assert_eq!(unique.len(), oks.len(), "order ids unique");
    assert_eq!(
        oks.len() as i64,
        STOCK,
        "the OKs the clients saw are the total"
    );
    assert_eq!(redis.ledger_sold(1), STOCK, "Redis's sold count");
    assert_eq!(
        redis.outbox_order_ids(1),
        unique,
        "every order is in the stream"
    );
    assert!(per_user.values().all(|&n| n <= 2), "nobody above the limit");
    for addr in &addrs {
        assert_eq!(
            Client::connect(*addr).stock(1),
            (STOCK, 0),
            "STOCK through any node"
        );
    }
    let summary = nodes.into_iter().next().unwrap().shutdown();
    let e = summary.event(1).unwrap();
    assert_eq!((e.total, e.sold, e.remaining), (STOCK, STOCK, 0));
}

#[test]
fn a_hold_taken_on_one_node_is_confirmed_and_cancelled_through_others() {
    let redis = RedisServer::start();
    let events = [event(1, 10, 1)];
    let nodes: Vec<ServerHandle> = (1..=3)
        .map(|id| node(&redis, id, 3, &events, Duration::from_secs(60)))
        .collect();
    let mut a = Client::connect(nodes[0].local_addr());
    let mut b = Client::connect(nodes[1].local_addr());
    let mut c = Client::connect(nodes[2].local_addr());
    let (first, _) = hold(&a.reserve(1, 7, 1));
    let order = order_id(&b.confirm(first));
    assert_eq!(
        order_id(&c.confirm(first)),
        order,
        "a retry anywhere: the same order"
    );
    assert_eq!(a.cancel(first).status, Status::NotFound);
    let (second, _) = hold(&b.reserve(1, 8, 1));
    assert_eq!(c.cancel(second).status, Status::Ok);
    assert_eq!(a.confirm(second).status, Status::NotFound);
    assert_eq!(a.confirm(0xDEAD).status, Status::NotFound);
    assert_eq!(redis.ledger_sold(1), 1);
    assert_eq!(redis.outbox_order_ids(1), HashSet::from([order]));
}

#[test]
fn a_dead_nodes_hold_expires_and_is_sold_again() {
    let redis = RedisServer::start();
    let events = [event(1, 1, 1)];
    let ttl = Duration::from_millis(300);
    let a = node(&redis, 1, 2, &events, ttl);
    let b = node(&redis, 2, 2, &events, ttl);
    let (hold_id, _) = hold(&Client::connect(a.local_addr()).reserve(1, 1, 1));
    drop(a); // node A goes away with its hold
    let mut client = Client::connect(b.local_addr());
    assert_eq!(
        client.buy(1, 2, 1).status,
        Status::SoldOut,
        "held by the dead node"
    );
    // Once the hold expires on Redis's clock, B sells the ticket (its gate asks again).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.buy(1, 2, 1);
        if r.status == Status::Ok {
            break;
        }
        assert_eq!(r.status, Status::SoldOut);
        assert!(
            Instant::now() < deadline,
            "the dead node's hold never came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.confirm(hold_id).status, Status::Expired);
    assert_eq!(redis.ledger_sold(1), 1);
}

#[test]
fn with_redis_gone_requests_answer_unavailable_within_the_timeout() {
    let mut redis = RedisServer::start();
    let n = node(&redis, 1, 1, &[event(1, 100, 1)], Duration::from_secs(60));
    let mut client = Client::connect(n.local_addr());
    assert_eq!(client.buy(1, 1, 1).status, Status::Ok);
    redis.stop();
    for user in 2..6 {
        let started = Instant::now();
        let r = client.buy(1, user, 1);
        assert_eq!(r.status, Status::Unavailable, "never OK without the ledger");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    let r = client.call(Command::Stock { event: 1 });
    assert_eq!(r.status, Status::Unavailable);
}

#[test]
fn a_function_flush_under_load_is_recovered_without_double_deduction() {
    let redis = RedisServer::start();
    let n = node(
        &redis,
        1,
        1,
        &[event(1, 10_000, 1)],
        Duration::from_secs(60),
    );
    let mut client = Client::connect(n.local_addr());
    let mut oks = 0;
    for user in 0..300u64 {
        if user == 150 {
            redis::cmd("FUNCTION")
                .arg("FLUSH")
                .query::<String>(&mut redis.client())
                .unwrap();
        }
        match client.buy(1, user, 1).status {
            Status::Ok => oks += 1,
            other => panic!("user {user}: {other}"),
        }
    }
    assert_eq!(oks, 300);
    assert_eq!(redis.ledger_sold(1), 300, "each sale deducted once");
    assert_eq!(redis.outbox_order_ids(1).len(), 300);
}

#[test]
fn a_joining_node_keeps_the_sales_refuses_a_different_definition_and_never_creates() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(60);
    let first = node(&redis, 1, 1, &[event(1, 10, 1)], ttl);
    assert_eq!(
        Client::connect(first.local_addr()).buy(1, 1, 1).status,
        Status::Ok
    );
    drop(first);
    let joined = node(&redis, 2, 1, &[event(1, 10, 1)], ttl);
    assert_eq!(Client::connect(joined.local_addr()).stock(1), (10, 9));
    drop(joined);
    // Another total, limit or TTL than the ledger's: refused, naming both values.
    for (spec, node_ttl, needle) in [
        (
            event(1, 999, 1),
            ttl,
            "the Redis ledger has total 10, this node was given 999",
        ),
        (
            event(1, 10, 2),
            ttl,
            "per-user limit 1, this node was given 2",
        ),
        (
            event(1, 10, 1),
            Duration::from_secs(5),
            "hold TTL 1m, this node was given 5s (--hold-ttl)",
        ),
    ] {
        let mut config = redis.node_config(3, 1, &[spec]);
        config.hold_ttl = node_ttl;
        let refused = ticketd::start(config)
            .err()
            .expect("a mismatch refuses to start");
        let message = refused.to_string();
        assert!(message.contains(needle), "{message}");
        assert!(message.contains("create-events --update"), "{message}");
    }
    // An event nobody created is not sold, and the node does not create it.
    let mut config = redis.node_config(4, 1, &[event(1, 10, 1), event(2, 50, 1)]);
    config.hold_ttl = ttl;
    config.admin = ticketd::config::AdminAddr::Given("127.0.0.1:0".parse().unwrap());
    let lonely = ticketd::start(config).expect("a node starts with a missing event");
    let admin = lonely.admin_addr().expect("admin endpoint");
    common::wait_until(|| common::http_get(admin, "/readyz").0 == 503);
    let (_, reasons) = common::http_get(admin, "/readyz");
    assert!(
        reasons.contains("event 2: missing from the Redis ledger"),
        "{reasons}"
    );
    assert!(!reasons.contains("event 1"), "{reasons}");
    assert_eq!(common::http_get(admin, "/healthz").0, 200);
    let mut client = Client::connect(lonely.local_addr());
    assert_eq!(client.buy(2, 1, 1).status, Status::NotFound);
    assert_eq!(client.reserve(2, 1, 1).status, Status::NotFound);
    assert_eq!(
        client.call(Command::Stock { event: 2 }).status,
        Status::NotFound
    );
    assert_eq!(
        client.buy(1, 2, 1).status,
        Status::Ok,
        "event 1 still sells"
    );
    // Its Redis traffic, as an operator's Prometheus sees it.
    let mut metrics = String::new();
    common::wait_until(|| {
        metrics = common::http_get(admin, "/metrics").1;
        metrics.contains("\nticketd_event_sold_tickets{event=\"1\"} 1\n")
    });
    for needle in [
        "\nticketd_node_info{node_id=\"4\",ledger=\"redis\"",
        "\nticketd_ready 0\n",
        "\nticketd_requests_total{op=\"BUY\",status=\"NOT_FOUND\"} 1\n",
        "\nticketd_requests_total{op=\"BUY\",status=\"OK\"} 1\n",
        "\nticketd_redis_call_duration_seconds_count ",
        "\nticketd_redis_in_flight_calls 0\n",
        "\nticketd_redis_reconnects_total 0\n",
        "\nticketd_event_gate_tickets{event=\"1\"} ",
        "\nticketd_ledger_up 1\n",
    ] {
        assert!(metrics.contains(needle), "{needle} in {metrics}");
    }
    // The global figures, read from Redis at scrape time: what STOCK says, and nothing
    // for the event Redis lacks.
    let (total, remaining) = client.stock(1);
    let (_, metrics) = common::http_get(admin, "/metrics");
    for needle in [
        format!("\nticketd_ledger_total_tickets{{event=\"1\"}} {total}\n"),
        format!("\nticketd_ledger_remaining_tickets{{event=\"1\"}} {remaining}\n"),
    ] {
        assert!(metrics.contains(&needle), "{needle} in {metrics}");
    }
    assert!(
        !metrics.contains("ticketd_ledger_total_tickets{event=\"2\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("ticketd_event_remaining_tickets"),
        "{metrics}"
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg(ticketd::redis_ledger::EventKeys::new(2).meta())
        .query(&mut redis.client())
        .unwrap();
    assert!(!exists, "the node never created event 2");
}

#[test]
fn the_script_flavour_sells_settles_and_survives_a_script_flush() {
    let redis = RedisServer::start();
    redis.create_events(&[event(1, 100, 1)], Duration::from_secs(15 * 60));
    let mut config = redis.node_config(4, 1, &[event(1, 100, 1)]);
    if let Some(r) = config.redis.as_mut() {
        r.scripts = true;
    }
    let n = ticketd::start(config).unwrap();
    let mut client = Client::connect(n.local_addr());
    assert_eq!(client.buy(1, 1, 1).status, Status::Ok);
    let (hold_id, _) = hold(&client.reserve(1, 2, 1));
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<String>(&mut redis.client())
        .unwrap();
    // NOSCRIPT: the script is loaded again and the call re-sent.
    assert_ne!(order_id(&client.confirm(hold_id)), 0);
    assert_eq!(client.buy(1, 3, 1).status, Status::Ok);
    assert_eq!(client.stock(1), (100, 97));
    assert_eq!(redis.ledger_sold(1), 3);
    assert_eq!(redis.outbox_order_ids(1).len(), 3);
}

/// `users` BUY one ticket each of event 1 at `addr`, from eight connections at once;
/// returns how many were answered with each status.
fn rush(addr: std::net::SocketAddr, users: std::ops::Range<u64>) -> HashMap<Status, usize> {
    let users: Vec<u64> = users.collect();
    let threads: Vec<_> = users
        .chunks(users.len().div_ceil(8).max(1))
        .map(|chunk| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                chunk
                    .into_iter()
                    .map(|user| client.buy(1, user, 1).status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut counts = HashMap::new();
    for thread in threads {
        for status in thread.join().unwrap() {
            *counts.entry(status).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn cancelled_holds_are_sold_again_at_once_never_sold_out_while_they_remain() {
    // The reserve-then-cancel flow: the gate was charged by the holds; their tickets
    // must be sellable the moment they are cancelled.
    let redis = RedisServer::start();
    let n = node(&redis, 1, 1, &[event(1, 1_000, 1)], Duration::from_secs(60));
    let mut client = Client::connect(n.local_addr());
    let holds: Vec<u64> = (0..1_000)
        .map(|user| hold(&client.reserve(1, user, 1)).0)
        .collect();
    assert_eq!(client.buy(1, 5_000, 1).status, Status::SoldOut, "all held");
    for hold_id in holds {
        assert_eq!(client.cancel(hold_id).status, Status::Ok);
    }
    let counts = rush(n.local_addr(), 10_000..10_200);
    assert_eq!(counts.get(&Status::Ok), Some(&200), "{counts:?}");
    assert_eq!(client.stock(1), (1_000, 800));
}

#[test]
fn a_dry_gate_asks_the_ledger_so_one_node_sells_another_nodes_share() {
    // Two nodes, so each gate holds half; every buyer comes to node A. Exactly as many
    // buyers as tickets: any SOLD_OUT would be a ticket turned away unsold.
    let redis = RedisServer::start();
    let events = [event(1, 1_000, 1)];
    let a = node(&redis, 1, 2, &events, Duration::from_secs(60));
    let _b = node(&redis, 2, 2, &events, Duration::from_secs(60));
    let counts = rush(a.local_addr(), 0..1_000);
    assert_eq!(counts.get(&Status::Ok), Some(&1_000), "{counts:?}");
    // Now it is sold out: the next buyers are told so.
    let after = rush(a.local_addr(), 1_000..1_100);
    assert_eq!(after.get(&Status::SoldOut), Some(&100), "{after:?}");
    assert_eq!(redis.ledger_sold(1), 1_000);
    // Sold out for good (nothing held) is answered locally, but a total raised on
    // purpose is seen again within a second.
    common::create_events(redis.addr(), &["1:1010"], &["--update", "--hold-ttl", "1m"]);
    let mut client = Client::connect(a.local_addr());
    let mut user = 5_000;
    common::wait_until(|| {
        user += 1;
        client.buy(1, user, 1).status == Status::Ok
    });
}

#[test]
fn after_a_node_dies_its_holds_expire_and_are_sold_not_refused() {
    let redis = RedisServer::start();
    let events = [event(1, 1_000, 1)];
    // Long enough for the rush below to finish before the holds expire.
    let ttl = Duration::from_secs(4);
    let a = node(&redis, 1, 2, &events, ttl);
    let b = node(&redis, 2, 2, &events, ttl);
    let mut on_b = Client::connect(b.local_addr());
    for user in 0..300 {
        assert_eq!(on_b.reserve(1, user, 1).status, Status::Ok);
    }
    drop(on_b);
    drop(b); // its 300 holds stay in the ledger until they expire
    let counts = rush(a.local_addr(), 1_000..2_000);
    assert_eq!(counts.get(&Status::Ok), Some(&700), "{counts:?}");
    assert_eq!(
        counts.get(&Status::SoldOut),
        Some(&300),
        "only the held tickets are refused: {counts:?}"
    );
    let mut client = Client::connect(a.local_addr());
    common::wait_until(|| client.stock(1) == (1_000, 300));
    let later = rush(a.local_addr(), 2_000..2_300);
    assert_eq!(later.get(&Status::Ok), Some(&300), "{later:?}");
    assert_eq!(redis.ledger_sold(1), 1_000);
}

#[test]
fn orders_reads_the_global_ledger_from_any_node() {
    let redis = RedisServer::start();
    let events = [event(1, 100, 3)];
    let a = node(&redis, 1, 2, &events, Duration::from_secs(60));
    let b = node(&redis, 2, 2, &events, Duration::from_secs(60));
    let mut on_a = Client::connect(a.local_addr());
    let mut on_b = Client::connect(b.local_addr());
    let bought = order_id(&on_a.buy(1, 7, 2));
    let (hold_id, _) = hold(&on_a.reserve(1, 7, 1));
    let confirmed = order_id(&on_b.confirm(hold_id));
    assert_eq!(on_b.orders(1, 7), vec![(bought, 2), (confirmed, 1)]);
    assert_eq!(on_a.orders(1, 7), vec![(bought, 2), (confirmed, 1)]);
    assert_eq!(on_a.orders(1, 8), vec![]);
    assert_eq!(
        on_a.call(Command::Orders { event: 5, user: 7 }).status,
        Status::NotFound
    );
}

/// A ledger-mode node with the HTTP front end, selling event 1 (`stock` tickets, one a
/// buyer); the node and its HTTP address.
fn http_node(redis: &RedisServer, stock: i64) -> (ServerHandle, std::net::SocketAddr) {
    let events = [event(1, stock, 1)];
    let ttl = Duration::from_secs(60);
    redis.create_events(&events, ttl);
    let mut config = redis.node_config(1, 1, &events);
    config.hold_ttl = ttl;
    config.http = Some("127.0.0.1:0".parse().unwrap());
    let node = ticketd::start(config).unwrap();
    let http = node.http_addr().expect("http");
    (node, http)
}

#[test]
fn http_buys_go_through_the_ledger_too() {
    let redis = RedisServer::start();
    let (_node, http) = http_node(&redis, 2);
    let get = |user: u64| common::http_get(http, &format!("/buy/ticket?user={user}")).1;
    assert!(get(1).starts_with("{\"code\":1,"), "a sale");
    assert!(get(1).starts_with("{\"code\":-2,"), "the ledger's limit");
    assert!(get(2).starts_with("{\"code\":1,"));
    assert!(
        get(3).starts_with("{\"code\":-1,"),
        "sold out in the ledger"
    );
    assert_eq!(redis.ledger_sold(1), 2);
    assert_eq!(redis.outbox_order_ids(1).len(), 2);
}

#[test]
fn weighted_nodes_hold_gates_in_proportion_to_their_weights() {
    let redis = RedisServer::start();
    let events = [event(1, 10_000, 1)];
    redis.create_events(&events, Duration::from_secs(60));
    let gates: Vec<i64> = (1..=4u16)
        .map(|weight| {
            let mut config = redis.node_config(weight, 4, &events);
            config.hold_ttl = Duration::from_secs(60);
            if let Some(ledger) = config.redis.as_mut() {
                ledger.share = ticketd::config::Share {
                    weight: u32::from(weight),
                    total_weight: 10,
                };
                ledger.buffer = 25;
            }
            let node = ticketd::start(config).expect("node starts");
            let (gate, _) = node.stock(1).expect("the event is in the catalog");
            node.shutdown();
            gate
        })
        .collect();
    assert_eq!(
        gates,
        [1_025, 2_025, 3_025, 4_025],
        "weight/10 of 10,000, plus the buffer"
    );
}

/// FCALLs Redis has run since it started (INFO commandstats).
fn fcalls_run(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.client())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// A one-shard node on `redis` selling event 1 (`stock` tickets) with `depth` calls in
/// flight, whose calls never time out while a test keeps Redis paused; and the FCALLs
/// Redis has run once it made its first sale (so the connection is up).
fn node_for_pauses(redis: &RedisServer, stock: i64, depth: usize) -> (ServerHandle, u64) {
    let events = [event(1, stock, 1)];
    redis.create_events(&events, Duration::from_secs(60));
    let mut config = redis.node_config(1, 1, &events);
    config.hold_ttl = Duration::from_secs(60);
    config.shards = 1;
    let ledger = config.redis.as_mut().unwrap();
    ledger.timeout = Duration::from_secs(20);
    ledger.depth = depth;
    let node = ticketd::start(config).expect("node starts");
    assert_eq!(
        Client::connect(node.local_addr()).buy(1, 0, 1).status,
        Status::Ok
    );
    (node, fcalls_run(redis))
}

/// Redis stops running writing commands (an FCALL is one) until [`resume_writes`]: the
/// node's calls stay in flight.
fn pause_writes(redis: &RedisServer) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query(&mut redis.client())
        .unwrap();
}

fn resume_writes(redis: &RedisServer) {
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut redis.client())
        .unwrap();
}

#[test]
fn purchases_that_arrive_while_calls_are_in_flight_gather_into_one_call() {
    let redis = RedisServer::start();
    let (node, before) = node_for_pauses(&redis, 100, 2);
    // Purchases keep arriving while Redis is paused, each in a loop pass of its own.
    pause_writes(&redis);
    let buyers = 30;
    let mut clients: Vec<Client> = (1..=buyers)
        .map(|user| {
            let mut client = Client::connect(node.local_addr());
            let req_id = client.next_req_id();
            client.send(common::buy_request(req_id, user));
            std::thread::sleep(Duration::from_millis(10));
            client
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    resume_writes(&redis);
    let mut orders = HashSet::new();
    for client in &mut clients {
        let answer = client.recv();
        assert_eq!(answer.status, Status::Ok);
        assert!(orders.insert(order_id(&answer)), "an order id twice");
    }
    assert_eq!(redis.ledger_sold(1), 1 + buyers as i64);
    // The first two purchases went out as calls of their own (--redis-depth 2); every
    // later one waited for them and went out together. (Sent a pass at a time: 30 calls.)
    let calls = fcalls_run(&redis) - before;
    assert!(calls <= 3, "{calls} calls for {buyers} purchases");
}

#[test]
fn a_batch_that_reaches_the_largest_call_goes_out_without_waiting() {
    let max = ticketd::shard::remote::MAX_CALL_STEPS as u64;
    let redis = RedisServer::start();
    let (node, before) = node_for_pauses(&redis, 3 * max as i64, 1);
    pause_writes(&redis);
    // A call in flight (paused in Redis), then more purchases than one call carries.
    let mut first = Client::connect(node.local_addr());
    let req_id = first.next_req_id();
    first.send(common::buy_request(req_id, 1));
    std::thread::sleep(Duration::from_millis(50));
    let mut client = Client::connect(node.local_addr());
    let mut bytes = BytesMut::new();
    let users = 2..max + 100;
    for user in users.clone() {
        common::buy_request(user, user).encode(&mut bytes);
    }
    client.send_raw(&bytes);
    std::thread::sleep(Duration::from_millis(300));
    resume_writes(&redis);
    assert_eq!(first.recv().status, Status::Ok);
    for _ in users.clone() {
        assert_eq!(client.recv().status, Status::Ok);
    }
    assert_eq!(redis.ledger_sold(1), (users.end) as i64);
    // The one in flight, the first MAX_CALL_STEPS purchases at once, the rest after.
    assert_eq!(fcalls_run(&redis) - before, 3);
}

#[test]
fn stats_count_a_nodes_sales_redis_calls_and_refills() {
    let redis = RedisServer::start();
    let events = [event(1, 40, 1)];
    redis.create_events(&events, Duration::from_secs(60));
    let mut config = redis.node_config(1, 4, &events);
    config.hold_ttl = Duration::from_secs(60);
    config.admin = ticketd::config::AdminAddr::Given("127.0.0.1:0".parse().unwrap());
    let node = ticketd::start(config).expect("node starts");
    let mut client = Client::connect(node.local_addr());
    // The gate holds a quarter (10): the other 30 are sold after refills from Redis.
    for user in 0..40 {
        assert_eq!(client.buy(1, user, 1).status, Status::Ok, "user {user}");
    }
    assert_eq!(client.buy(1, 99, 1).status, Status::SoldOut);
    let admin = node.admin_addr().expect("admin endpoint");
    let (code, stats) = common::http_get(admin, "/stats");
    assert_eq!(code, 200);
    let value = |name: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {stats}"))
    };
    assert_eq!(value("ticketd_sold_tickets"), 40);
    assert!(value("ticketd_gate_refills") >= 1, "{stats}");
    assert!(value("ticketd_redis_calls") >= 40 / 10, "{stats}");
    assert_eq!(value("ticketd_unavailable_answers"), 0);
}

#[test]
fn metrics_say_when_redis_cannot_be_read_and_come_back_with_it() {
    let redis = RedisServer::start();
    redis.create_events(&[event(1, 10, 1)], Duration::from_secs(15 * 60));
    let mut config = redis.node_config(5, 1, &[event(1, 10, 1)]);
    config.admin = ticketd::config::AdminAddr::Given("127.0.0.1:0".parse().unwrap());
    let node = ticketd::start(config).expect("node starts");
    let admin = node.admin_addr().expect("admin endpoint");
    common::wait_until(|| {
        common::http_get(admin, "/metrics")
            .1
            .contains("\nticketd_ledger_remaining_tickets{event=\"1\"} 10\n")
    });
    // Redis frozen: the scrape still answers (its Redis read gives up), saying so.
    redis.freeze(true);
    let (code, metrics) = common::http_get(admin, "/metrics");
    redis.freeze(false);
    assert_eq!(code, 200);
    assert!(metrics.contains("\nticketd_ledger_up 0\n"), "{metrics}");
    assert!(
        !metrics.contains("ticketd_ledger_remaining_tickets{"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    // And the next scrape reads it again, on a fresh connection.
    common::wait_until(|| {
        common::http_get(admin, "/metrics")
            .1
            .contains("\nticketd_ledger_up 1\n")
    });
}

/// A ledger library of ticketd's name whose `ticketd_decide` sells a ticket, then answers
/// what no node can read (a library of another shape, or a bug in one). Its other
/// functions are there so that nothing the node calls is missing (a missing function
/// makes the node load its own library again).
const UNREADABLE_DECIDE: &str = "#!lua name=ticketd
redis.register_function('ticketd_decide', function(keys, args)
  redis.call('HINCRBY', keys[1], 'sold', 1)
  return 'not an answer'
end)
redis.register_function('ticketd_stock', function(keys, args) return {100, 50, 0} end)
redis.register_function('ticketd_settle', function(keys, args) return 'not an answer' end)
redis.register_function('ticketd_orders', function(keys, args) return {0} end)
redis.register_function('ticketd_define', function(keys, args) return {'OK'} end)
";

/// Puts `code` in place of the ledger library the node loaded.
fn load_library(redis: &RedisServer, code: &str) {
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(code)
        .query(&mut redis.client())
        .unwrap();
}

#[test]
fn a_ledger_reply_that_cannot_be_read_gets_no_answer_and_its_connection_closes() {
    let redis = RedisServer::start();
    let (node, _) = node_for_pauses(&redis, 100, 2);
    let mut bystander = Client::connect(node.local_addr());
    load_library(&redis, UNREADABLE_DECIDE);
    let mut client = Client::connect(node.local_addr());
    let req_id = client.next_req_id();
    client.send(common::buy_request(req_id, 1));
    // Redis ran the call and it sold, but its reply says nothing the node can read: every
    // status would claim an outcome (UNAVAILABLE: that nothing happened), so none is
    // sent. The connection closes, as a lost one would; ORDERS is the client's way on.
    client.expect_eof();
    assert_eq!(redis.ledger_sold(1), 2, "the call did sell");
    // The node serves on: with its library back, another connection buys.
    let _: String = ticketd::redis_ledger::load_functions()
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(bystander.buy(1, 2, 1).status, Status::Ok);
    assert_eq!(redis.ledger_sold(1), 3);
}

#[test]
fn an_http_buy_whose_ledger_reply_cannot_be_read_gets_no_response() {
    let redis = RedisServer::start();
    let (_node, http) = http_node(&redis, 100);
    let get = |user: u64| common::try_http_get(http, &format!("/buy/ticket?user={user}"));
    assert!(get(1).unwrap().1.starts_with("{\"code\":1,"), "a sale");
    load_library(&redis, UNREADABLE_DECIDE);
    // No status line at all: any response would claim an outcome.
    let answered = get(2);
    assert!(
        answered
            .as_ref()
            .is_err_and(|e| e.contains("no status line")),
        "{answered:?}"
    );
    assert_eq!(redis.ledger_sold(1), 2, "the call did sell");
}
