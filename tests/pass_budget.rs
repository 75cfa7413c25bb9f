//! `--pass-budget`: a loop pass out of time leaves the other connections' reading and
//! writing to the next pass, and the next passes serve them, in order, with nothing
//! lost. Checked with a zero budget (one connection read and one written per pass)
//! against a server held still (SIGSTOP) while every client sends, so its first pass
//! after SIGCONT finds all of them waiting.

mod common;

use std::collections::HashSet;

use bytes::BytesMut;
use common::{logged_addr, order_id, Client, TicketdProcess};
use ticketd_proto::{Command, Purchase, Request, Status};

const CLIENTS: u64 = 24;
const PIPELINED: u64 = 40;

/// The value of the sample written exactly `series` in a `/metrics` body.
fn sample(text: &str, series: &str) -> f64 {
    common::metric_sample(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[test]
fn a_pass_out_of_time_leaves_the_rest_to_the_next_and_nothing_is_lost() {
    let args: Vec<String> = [
        "--shards",
        "1",
        "--pass-budget",
        "0s",
        "--admin",
        "127.0.0.1:0",
        "--event",
        "1:1000000:1",
    ]
    .map(String::from)
    .to_vec();
    let server = TicketdProcess::spawn(&args);
    let admin = logged_addr(&server.log_text(), "admin");
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::connect(server.addr)).collect();
    // Every connection accepted and served once before the server is held still.
    for client in &mut clients {
        assert_eq!(client.call(Command::Stock { event: 1 }).status, Status::Ok);
    }

    let pid = server.child.id();
    common::freeze(pid);
    let mut sent = Vec::new();
    for (c, client) in clients.iter_mut().enumerate() {
        let mut bytes = BytesMut::new();
        let mut ids = Vec::new();
        for k in 0..PIPELINED {
            let req_id = client.next_req_id();
            let user = c as u64 * 1_000 + k + 1;
            let command = Command::Buy(Purchase {
                event: 1,
                user,
                qty: 1,
            });
            Request { req_id, command }.encode(&mut bytes);
            ids.push(req_id);
        }
        client.send_raw(&bytes);
        sent.push(ids);
    }
    common::signal(pid, "-CONT");

    // Each client gets every answer, in the order it asked, each a sale of its own.
    let mut orders = HashSet::new();
    for (client, ids) in clients.iter_mut().zip(&sent) {
        for &req_id in ids {
            let response = client.recv();
            assert_eq!(response.req_id, req_id, "answers out of order");
            assert_eq!(response.status, Status::Ok, "{response:?}");
            assert!(orders.insert(order_id(&response)), "an order id twice");
        }
    }
    let (_, remaining) = clients[0].stock(1);
    assert_eq!(remaining, 1_000_000 - (CLIENTS * PIPELINED) as i64);

    // And passes did run out of time, with reads and with writes left to later passes.
    let (code, metrics) = common::http_get(admin, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    let reads = sample(&metrics, r#"ticketd_loop_passes_cut_total{what="read"}"#);
    let writes = sample(&metrics, r#"ticketd_loop_passes_cut_total{what="write"}"#);
    assert!(
        reads > 0.0 && writes > 0.0,
        "a zero budget with {CLIENTS} clients waiting left nothing to later passes: \
         reads {reads}, writes {writes}"
    );
}
