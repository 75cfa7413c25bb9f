//! The shard's non-blocking Redis connection, driven by a mio loop here as a shard
//! drives it, against a real redis-server: pipelining, the handshake, error replies,
//! a crash mid-stream, nothing listening, and a Redis that stops answering.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use mio::{Events, Poll, Token};
use redis::Value;
use ticketd::redis_ledger::conn::{Completion, ConnSettings, RedisConn};
use ticketd::redis_ledger::setup::Definition;
use ticketd::redis_ledger::{self, Decision, Step};

/// Event 1: 10 tickets, one per user, one-minute holds.
const DEFINITION: Definition = Definition {
    total: 10,
    per_user_limit: 1,
    hold_ttl_ms: 60_000,
};

const TOKEN: Token = Token(7);

fn settings(timeout_ms: u64) -> ConnSettings {
    ConnSettings {
        timeout: Duration::from_millis(timeout_ms),
        max_in_flight: 16,
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
    }
}

/// Runs the loop until `done` holds for what completed so far (or fails after 10 s).
fn drive(
    poll: &mut Poll,
    conn: &mut RedisConn<u64>,
    mut done: impl FnMut(&[Completion<u64>], &RedisConn<u64>) -> bool,
) -> Vec<Completion<u64>> {
    let mut events = Events::with_capacity(64);
    let mut completed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = Instant::now();
        conn.tick(poll.registry(), now, &mut completed);
        if done(&completed, conn) {
            return completed;
        }
        assert!(now < deadline, "gave up; so far: {completed:?}");
        let timeout = conn
            .next_deadline()
            .map_or(Duration::from_millis(10), |d| {
                d.saturating_duration_since(now)
            })
            .min(Duration::from_millis(10));
        poll.poll(&mut events, Some(timeout)).unwrap();
        for event in events.iter() {
            assert_eq!(event.token(), TOKEN);
            conn.on_event(poll.registry(), event, Instant::now(), &mut completed);
        }
    }
}

fn replies(completed: &[Completion<u64>]) -> Vec<(u64, i64)> {
    completed
        .iter()
        .filter_map(|c| match c {
            Completion::Reply {
                tag,
                value: Value::Int(n),
            } => Some((*tag, *n)),
            _ => None,
        })
        .collect()
}

#[test]
fn pipelined_calls_are_answered_in_order() {
    let redis = RedisServer::start();
    let mut poll = Poll::new().unwrap();
    let mut conn = RedisConn::new(redis.addr(), TOKEN, settings(2_000), &[]);
    for i in 0..100u64 {
        conn.send(redis::cmd("INCR").arg("counter"), i, Instant::now());
    }
    let completed = drive(&mut poll, &mut conn, |c, _| c.len() == 100);
    let expected: Vec<(u64, i64)> = (0..100).map(|i| (i, i as i64 + 1)).collect();
    assert_eq!(replies(&completed), expected);
    assert_eq!(conn.connects, 1);
}

#[test]
fn error_replies_belong_to_their_call_and_the_stream_goes_on() {
    let redis = RedisServer::start();
    let mut poll = Poll::new().unwrap();
    let mut conn = RedisConn::new(redis.addr(), TOKEN, settings(2_000), &[]);
    conn.send(&redis::cmd("NOSUCHCOMMAND"), 1, Instant::now());
    conn.send(redis::cmd("INCR").arg("x"), 2, Instant::now());
    let completed = drive(&mut poll, &mut conn, |c, _| c.len() == 2);
    assert!(
        matches!(&completed[0], Completion::ErrorReply { tag: 1, .. }),
        "{completed:?}"
    );
    assert_eq!(replies(&completed), vec![(2, 1)]);
}

#[test]
fn a_crash_loses_calls_in_flight_and_the_handshake_restores_the_functions() {
    let mut redis = RedisServer::start();
    let mut poll = Poll::new().unwrap();
    let handshake = [redis_ledger::load_functions()];
    let mut conn = RedisConn::new(redis.addr(), TOKEN, settings(2_000), &handshake);
    redis_ledger::define_event(1, &DEFINITION, false)
        .query::<Vec<String>>(&mut redis.client())
        .unwrap();
    conn.send(&redis::cmd("PING"), 1, Instant::now());
    drive(&mut poll, &mut conn, |c, _| c.len() == 1);

    // A command that holds the server, so the crash finds it in flight.
    conn.send(redis::cmd("BLPOP").arg("nothing").arg(5), 2, Instant::now());
    drive(&mut poll, &mut conn, |_, c| {
        c.pending() == 1 && c.is_ready()
    });
    redis.restart(); // a fresh, empty Redis: no event, no Function library
    let completed = drive(&mut poll, &mut conn, |c, _| !c.is_empty());
    assert!(
        matches!(completed[0], Completion::Lost { tag: 2 }),
        "{completed:?}"
    );

    // Once a call on the new connection is answered, the handshake before it has run
    // and the library is back: the event can be created and FCALL works.
    conn.send(&redis::cmd("PING"), 4, Instant::now());
    drive(&mut poll, &mut conn, |c, _| !c.is_empty());
    redis_ledger::define_event(1, &DEFINITION, false)
        .query::<Vec<String>>(&mut redis.client())
        .expect("the handshake reloaded the Function library");
    let steps = [Step::Buy {
        user: 1,
        qty: 1,
        order_id: 100,
    }];
    conn.send(
        &redis_ledger::decide(1, "1", 1, 60_000, &steps),
        3,
        Instant::now(),
    );
    let completed = drive(&mut poll, &mut conn, |c, _| !c.is_empty());
    match &completed[0] {
        Completion::Reply { tag: 3, value } => assert_eq!(
            redis_ledger::parse_decisions(value, &steps).unwrap(),
            vec![Decision::Ordered { order_id: 100 }]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(conn.connects, 2);
}

#[test]
fn with_nothing_listening_calls_are_unsent_within_the_timeout() {
    let mut redis = RedisServer::start();
    let addr = redis.addr();
    redis.stop();
    let mut poll = Poll::new().unwrap();
    let mut conn = RedisConn::new(addr, TOKEN, settings(200), &[]);
    let sent_at = Instant::now();
    conn.send(&redis::cmd("PING"), 9, sent_at);
    let completed = drive(&mut poll, &mut conn, |c, _| !c.is_empty());
    assert!(
        matches!(completed[0], Completion::Unsent { tag: 9 }),
        "{completed:?}"
    );
    let waited = sent_at.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "not before the timeout: {waited:?}"
    );
    assert!(!conn.is_ready());
}

#[test]
fn a_redis_that_stops_answering_times_out_and_is_reconnected() {
    let redis = RedisServer::start();
    let mut poll = Poll::new().unwrap();
    let mut conn = RedisConn::new(redis.addr(), TOKEN, settings(300), &[]);
    // BLPOP longer than the timeout: no answer in time.
    conn.send(redis::cmd("BLPOP").arg("nothing").arg(3), 1, Instant::now());
    let completed = drive(&mut poll, &mut conn, |c, _| !c.is_empty());
    assert!(
        matches!(completed[0], Completion::Lost { tag: 1 }),
        "{completed:?}"
    );
    conn.send(redis::cmd("INCR").arg("after"), 2, Instant::now());
    let completed = drive(&mut poll, &mut conn, |c, _| !c.is_empty());
    assert_eq!(replies(&completed), vec![(2, 1)]);
    assert_eq!(conn.connects, 2);
}

#[test]
fn calls_wait_unsent_until_the_handshake_is_answered() {
    let redis = RedisServer::start();
    let mut poll = Poll::new().unwrap();
    let handshake = [redis::cmd("PING")];
    let mut conn = RedisConn::new(redis.addr(), TOKEN, settings(300), &handshake);
    // Frozen: the kernel accepts the connection, Redis answers nothing.
    redis.freeze(true);
    conn.send(redis::cmd("INCR").arg("frozen"), 1, Instant::now());
    let completed = drive(&mut poll, &mut conn, |c, _| !c.is_empty());
    redis.freeze(false);
    assert!(
        matches!(completed[0], Completion::Unsent { tag: 1 }),
        "never written behind an unanswered handshake, so certainly not done: {completed:?}"
    );
    assert!(!conn.is_ready());
    conn.send(redis::cmd("INCR").arg("frozen"), 2, Instant::now());
    let completed = drive(&mut poll, &mut conn, |c, _| !c.is_empty());
    assert_eq!(
        replies(&completed),
        vec![(2, 1)],
        "the first INCR never ran"
    );
}
