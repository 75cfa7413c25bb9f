//! `GET /metrics` on the admin endpoint: the Prometheus text a scraper reads, checked
//! against what clients did over real sockets.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::time::{Duration, Instant};

use common::{event, http_get, metric_sample as sample, start_with, Client};
use ticketd::config::AdminAddr;
use ticketd_proto::{Command, Status};

fn scrape(admin: SocketAddr) -> String {
    let (code, body) = http_get(admin, "/metrics");
    assert_eq!(code, 200, "{body}");
    body
}

#[test]
fn metrics_count_what_clients_were_answered() {
    let server = start_with(&[event(1, 3, 1), event(2, 10, 2)], |c| {
        c.admin = AdminAddr::Given("127.0.0.1:0".parse().unwrap());
    });
    let admin = server.admin_addr().expect("admin endpoint");
    let mut client = Client::connect(server.local_addr());
    for user in 1..=3 {
        assert_eq!(client.buy(1, user, 1).status, Status::Ok);
    }
    assert_eq!(client.buy(1, 4, 1).status, Status::SoldOut);
    assert_eq!(client.buy(1, 1, 1).status, Status::LimitReached);
    assert_eq!(client.buy(9, 1, 1).status, Status::NotFound);
    assert_eq!(client.reserve(2, 5, 2).status, Status::Ok);
    assert_eq!(client.call(Command::Stock { event: 2 }).status, Status::Ok);
    let _second = Client::connect(server.local_addr());

    let expected = [
        (r#"ticketd_requests_total{op="BUY",status="OK"}"#, 3.0),
        (r#"ticketd_requests_total{op="BUY",status="SOLD_OUT"}"#, 1.0),
        (
            r#"ticketd_requests_total{op="BUY",status="LIMIT_REACHED"}"#,
            1.0,
        ),
        (
            r#"ticketd_requests_total{op="BUY",status="NOT_FOUND"}"#,
            1.0,
        ),
        (r#"ticketd_requests_total{op="RESERVE",status="OK"}"#, 1.0),
        (r#"ticketd_requests_total{op="STOCK",status="OK"}"#, 1.0),
        (r#"ticketd_event_total_tickets{event="1"}"#, 3.0),
        (r#"ticketd_event_sold_tickets{event="1"}"#, 3.0),
        (r#"ticketd_event_remaining_tickets{event="1"}"#, 0.0),
        (r#"ticketd_event_orders{event="1"}"#, 3.0),
        (r#"ticketd_event_held_tickets{event="2"}"#, 2.0),
        (r#"ticketd_event_remaining_tickets{event="2"}"#, 8.0),
        ("ticketd_sold_tickets_total", 3.0),
        ("ticketd_connections_accepted_total", 2.0),
        ("ticketd_connections_open", 2.0),
        (
            r#"ticketd_connections_refused_total{reason="max_conns"}"#,
            0.0,
        ),
        ("ticketd_ready", 1.0),
    ];
    // Each shard publishes its tallies at the end of the pass that answered: a scrape
    // can come a moment before that.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = scrape(admin);
    while Instant::now() < deadline
        && !expected
            .iter()
            .all(|&(series, value)| sample(&last, series) == Some(value))
    {
        std::thread::sleep(Duration::from_millis(20));
        last = scrape(admin);
    }
    for (series, value) in expected {
        assert_eq!(sample(&last, series), Some(value), "{series} in\n{last}");
    }
    let decided: f64 = (0..2)
        .filter_map(|shard| {
            sample(
                &last,
                &format!(r#"ticketd_decisions_total{{shard="{shard}"}}"#),
            )
        })
        .sum();
    assert_eq!(
        decided, 8.0,
        "every answer is some shard's decision\n{last}"
    );
    // A histogram of loop passes, with the +Inf bucket equal to the count.
    let passes = sample(&last, "ticketd_loop_pass_duration_seconds_count").unwrap();
    assert!(passes >= 1.0, "{last}");
    assert_eq!(
        sample(
            &last,
            r#"ticketd_loop_pass_duration_seconds_bucket{le="+Inf"}"#
        ),
        Some(passes)
    );
    assert!(last.contains("# TYPE ticketd_requests counter"), "{last}");
    assert!(
        last.contains("# TYPE ticketd_journal_sync_duration_seconds histogram"),
        "{last}"
    );
    assert!(last.trim_end().ends_with("# EOF"), "{last}");
}

#[test]
fn metrics_are_served_as_openmetrics_text_and_unknown_paths_are_404() {
    let server = start_with(&[event(1, 3, 1)], |c| {
        c.admin = AdminAddr::Given("127.0.0.1:0".parse().unwrap());
    });
    let admin = server.admin_addr().expect("admin endpoint");
    let mut stream = TcpStream::connect(admin).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(
        all.contains(
            "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ),
        "{all}"
    );
    let (code, body) = http_get(admin, "/nope");
    assert_eq!(code, 404);
    assert!(body.contains("/metrics"), "{body}");
}
