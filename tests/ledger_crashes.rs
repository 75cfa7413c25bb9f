//! Ledger mode through crashes: a node killed with SIGKILL mid-sale, and Redis itself
//! crashing and restarting under load (AOF, fsync always).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{order_id, Client, TicketdProcess};
use ticketd_proto::Status;

#[test]
fn a_node_killed_mid_sale_loses_no_acknowledged_order_and_the_others_sell_the_rest() {
    const STOCK: i64 = 3_000;
    let redis = RedisServer::start();
    common::create_events(redis.addr(), &["1:3000"], &[]);
    let mut nodes: Vec<TicketdProcess> = (1..=3)
        .map(|id| {
            let args: Vec<String> = [
                "--shards",
                "2",
                "--nodes",
                "3",
                "--event",
                "1:3000",
                "--redis-timeout",
                "300ms",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(["--node-id".into(), id.to_string()])
            .chain(["--redis".into(), format!("redis://{}", redis.addr())])
            .collect();
            TicketdProcess::spawn(&args)
        })
        .collect();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let next_user = Arc::new(AtomicUsize::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let buyers: Vec<_> = (0..9)
        .map(|i| {
            let addr = nodes[i % 3].addr;
            let (seen, next_user, stop) =
                (Arc::clone(&seen), Arc::clone(&next_user), Arc::clone(&stop));
            std::thread::spawn(move || {
                let Ok(stream) = std::net::TcpStream::connect(addr) else {
                    return;
                };
                drop(stream);
                let mut client = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    let user = next_user.fetch_add(1, Ordering::Relaxed) as u64;
                    // A killed node ends this buyer: the catch stops the thread quietly.
                    let Ok(response) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            client.buy(1, user, 1)
                        }))
                    else {
                        return;
                    };
                    if response.status == Status::Ok {
                        seen.lock().unwrap().push(order_id(&response));
                    }
                }
            })
        })
        .collect();
    // Kill node 1 once the sale is under way.
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 500 {
        assert!(Instant::now() < deadline, "the sale never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    nodes[0].child.kill().unwrap(); // SIGKILL
    nodes[0].child.wait().unwrap();
    let acknowledged_before_kill: HashSet<u64> = seen.lock().unwrap().iter().copied().collect();

    // The two survivors sell everything, node 1's share included.
    let mut survivor = Client::connect(nodes[1].addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while survivor.stock(1).1 > 0 {
        assert!(
            Instant::now() < deadline,
            "tickets left unsold: {:?}",
            survivor.stock(1)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for buyer in buyers {
        let _ = buyer.join();
    }
    let outbox = redis.outbox_order_ids(1);
    assert!(
        acknowledged_before_kill.is_subset(&outbox),
        "every OK seen before the kill is in the stream"
    );
    let all_seen: HashSet<u64> = seen.lock().unwrap().iter().copied().collect();
    assert!(all_seen.is_subset(&outbox));
    assert_eq!(redis.ledger_sold(1), STOCK);
    assert_eq!(outbox.len() as i64, STOCK, "one stream entry per sale");
}

#[test]
fn a_redis_crash_under_load_neither_loses_nor_doubles_a_sale() {
    let mut redis = RedisServer::start_durable();
    let events = [common::event(1, 100_000, 1)];
    redis.create_events(&events, Duration::from_secs(15 * 60));
    let config = redis.node_config(1, 1, &events);
    let node = ticketd::start(config).unwrap();
    let addr = node.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let sold = Arc::new(AtomicUsize::new(0));
    let buyers: Vec<_> = (0..4u64)
        .map(|t| {
            let (stop, sold) = (Arc::clone(&stop), Arc::clone(&sold));
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let (mut oks, mut unavailable) = (Vec::new(), 0);
                let mut user = t * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    user += 1;
                    let r = client.buy(1, user, 1);
                    match r.status {
                        Status::Ok => {
                            oks.push(order_id(&r));
                            sold.fetch_add(1, Ordering::Relaxed);
                        }
                        Status::Unavailable => unavailable += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                (oks, unavailable)
            })
        })
        .collect();
    // Crash Redis only once sales are flowing, and stop only once they flow again.
    common::wait_until(|| sold.load(Ordering::Relaxed) >= 200);
    let before_crash = sold.load(Ordering::Relaxed);
    redis.restart(); // SIGKILL, then start again from the AOF
    common::wait_until(|| sold.load(Ordering::Relaxed) >= before_crash + 200);
    stop.store(true, Ordering::Relaxed);
    let mut oks = Vec::new();
    for buyer in buyers {
        oks.extend(buyer.join().unwrap().0);
    }
    let outbox = redis.outbox_order_ids(1);
    let seen: HashSet<u64> = oks.iter().copied().collect();
    assert_eq!(seen.len(), oks.len(), "no order acknowledged twice");
    assert!(seen.is_subset(&outbox), "no acknowledged sale lost");
    assert_eq!(
        redis.ledger_sold(1),
        outbox.len() as i64,
        "no double deduction"
    );
    assert_eq!(
        redis.ledger_sold(1),
        oks.len() as i64,
        "the ledger sold what clients were told"
    );
    // And the service recovered: it sells again after the restart.
    assert_eq!(
        Client::connect(addr).buy(1, 999_999_999, 1).status,
        Status::Ok
    );
}

#[test]
fn a_restarted_ledger_node_never_issues_an_order_or_hold_id_again() {
    let redis = RedisServer::start();
    common::create_events(redis.addr(), &["1:100:3"], &[]);
    let args: Vec<String> = ["--shards", "1", "--node-id", "7", "--event", "1:100:3"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--redis".into(), format!("redis://{}", redis.addr())])
        .collect();
    let mut issued = HashSet::new();
    for (run, user) in [(0, 1u64), (1, 2), (2, 3)] {
        let node = TicketdProcess::spawn(&args);
        let mut client = Client::connect(node.addr);
        let order = order_id(&client.buy(1, user, 1));
        let (hold_id, _) = common::hold(&client.reserve(1, user, 1));
        let confirmed = order_id(&client.confirm(hold_id));
        for id in [order, hold_id, confirmed] {
            assert!(issued.insert(id), "run {run}: id {id:#x} issued again");
        }
        // Killed without a chance to write anything down.
        node.kill9();
    }
    let outbox = redis.outbox_order_ids(1);
    assert_eq!(
        outbox.len(),
        6,
        "one stream entry per order, none dropped as a repeat"
    );
    let audit = std::process::Command::new(env!("CARGO_BIN_EXE_ticketd"))
        .args(["audit", "--redis", &format!("redis://{}", redis.addr())])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.status.success(), "{report}");
    assert!(report.contains("audit: OK"), "{report}");
}

#[test]
fn a_ledger_that_lost_its_data_is_never_refilled_by_a_node() {
    // Redis without persistence, restarted: every event and sale is gone. A running node
    // must stop selling and say so; a node started afterwards must not create the event
    // again with its full stock (that sold 16,000 of 10,000 before).
    let mut redis = RedisServer::start();
    common::create_events(redis.addr(), &["1:100"], &[]);
    let url = format!("redis://{}", redis.addr());
    let args = |id: u16| -> Vec<String> {
        [
            "--shards",
            "1",
            "--event",
            "1:100",
            "--redis-timeout",
            "300ms",
            "--admin",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["--node-id".into(), id.to_string()])
        .chain(["--redis".into(), url.clone()])
        .collect()
    };
    let running = TicketdProcess::spawn(&args(1));
    let admin = common::logged_addr(&running.log_text(), "admin");
    common::wait_until(|| common::http_get(admin, "/readyz").0 == 200);
    let mut client = Client::connect(running.addr);
    for user in 0..60 {
        assert_eq!(client.buy(1, user, 1).status, Status::Ok);
    }
    redis.restart();
    let mut user = 1_000;
    common::wait_until(|| {
        user += 1;
        client.buy(1, user, 1).status == Status::NotFound
    });
    common::wait_until(|| {
        running
            .log_text()
            .contains("event 1 does not exist in the Redis ledger")
    });
    let log = running.log_text();
    assert!(log.contains("lost the Redis connection"), "{log}");
    assert!(log.contains("Redis connection back after"), "{log}");

    let ready = |node: &TicketdProcess| {
        common::http_get(common::logged_addr(&node.log_text(), "admin"), "/readyz")
    };
    let (code, reasons) = ready(&running);
    assert_eq!(code, 503, "{reasons}");
    assert!(reasons.contains("event 1: missing"), "{reasons}");

    let late = TicketdProcess::spawn(&args(2));
    let (code, reasons) = ready(&late);
    assert_eq!(code, 503, "{reasons}");
    assert!(reasons.contains("event 1: missing"), "{reasons}");
    assert!(
        late.log_text()
            .contains("event 1 does not exist in the Redis ledger"),
        "{}",
        late.log_text()
    );
    let mut late_client = Client::connect(late.addr);
    assert_eq!(late_client.buy(1, 5_000, 1).status, Status::NotFound);
    let exists: bool = redis::cmd("EXISTS")
        .arg(ticketd::redis_ledger::EventKeys::new(1).meta())
        .query(&mut redis.client())
        .unwrap();
    assert!(!exists, "no node created the event again");
}

#[test]
fn a_redis_with_a_password_a_database_and_an_acl_user_is_used_as_the_url_says() {
    let redis = RedisServer::start_secured("s3cret");
    let port = redis.port;
    let tool = |args: &[&str]| common::ticketd_tool(args);
    for (url, db) in [
        // The default user with a password, database 2.
        (format!("redis://:s3cret@127.0.0.1:{port}/2"), 2),
        // An ACL user, database 3.
        (format!("redis://alice:wonderland@127.0.0.1:{port}/3"), 3),
    ] {
        tool(&["create-events", "--redis", &url, "--event", "1:10"]).expect("create-events");
        let node = TicketdProcess::spawn(&[
            "--shards".into(),
            "1".into(),
            "--event".into(),
            "1:10".into(),
            "--redis".into(),
            url.clone(),
        ]);
        assert!(
            !node.log_text().contains("s3cret") && !node.log_text().contains("wonderland"),
            "no password in the log:\n{}",
            node.log_text()
        );
        let mut client = Client::connect(node.addr);
        assert_eq!(client.buy(1, 7, 1).status, Status::Ok);
        assert_eq!(client.orders(1, 7).len(), 1);
        let audit = tool(&["audit", "--redis", &url]).expect("audit passes");
        assert!(audit.contains("audit: OK"), "{audit}");
        // The sale is in the database the URL named.
        let mut c = redis.client();
        redis::cmd("SELECT").arg(db).query::<()>(&mut c).unwrap();
        let sold: i64 = redis::cmd("HGET")
            .arg(ticketd::redis_ledger::EventKeys::new(1).meta())
            .arg("sold")
            .query(&mut c)
            .unwrap();
        assert_eq!(sold, 1, "database {db}");
    }
    // A wrong password is a clear start-up error; TLS is refused until supported.
    let wrong = format!("redis://:nope@127.0.0.1:{port}/2");
    let error =
        TicketdProcess::try_spawn(&["--event".into(), "1:10".into(), "--redis".into(), wrong])
            .err()
            .expect("refused");
    assert!(
        error.to_lowercase().contains("auth") || error.contains("WRONGPASS"),
        "{error}"
    );
    let tls = tool(&[
        "create-events",
        "--redis",
        "rediss://127.0.0.1:6380",
        "--event",
        "1:1",
    ])
    .expect_err("rediss refused");
    assert!(tls.contains("TLS) is not supported yet"), "{tls}");
}
