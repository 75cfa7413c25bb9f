//! The whole topology of `make cluster`, through real nginx (weighted round robin
//! 1:2:3:4, stream and http fronts), four ledger-mode nodes as processes, and a real
//! Redis with AOF always — and its faults: a node killed mid-rush, a node cut off from
//! Redis, a node frozen, Redis restarted with its data and without it.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, ONE_AT_A_TIME};

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn verdict(report: &serde_json::Value, check: &str) -> String {
    report["invariants"][check]["verdict"]
        .as_str()
        .unwrap_or("missing")
        .to_owned()
}

/// Waits (bounded) for `condition`, checking every 20 ms.
fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_rush_through_nginx_sells_the_stock_exactly_in_proportion_to_the_weights() {
    let _one = serial();
    let cluster = Cluster::up(1, "1:10000", &[]);
    // Demand a little over the stock (0.5%): every node sells about what it is sent,
    // and the last requests find it sold out.
    let out = cluster
        .loadgen(
            "rush",
            &[
                "--conns",
                "1000",
                "--requests",
                "10050",
                "--users",
                "1000000",
            ],
        )
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let (report, seen) = cluster.results("rush");
    assert_eq!(report["sold"], 10_000, "{stdout}");
    for check in [
        "exact_sell_out",
        "server_agrees",
        "order_ids_unique",
        "orders_agree",
    ] {
        assert_eq!(verdict(&report, check), "pass", "{check}: {stdout}");
    }
    let stream = cluster.stream_orders();
    assert_eq!(stream.len(), 10_000, "one stream entry per sale");
    assert_eq!(cluster.ledger_field("sold"), 10_000, "Redis's sold");
    let seen_ids: HashSet<u64> = seen.iter().map(|&(id, _)| id).collect();
    assert_eq!(seen_ids.len(), 10_000);
    assert!(
        seen_ids.iter().all(|id| stream.contains_key(id)),
        "every OK a client saw is in the orders stream"
    );
    // Per node, within ±5% of 1:2:3:4.
    for (node, weight) in [(1u16, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)] {
        let sold = stream.values().filter(|&&n| n == node).count() as f64;
        let expected = 10_000.0 * weight / 10.0;
        assert!(
            (sold - expected).abs() <= expected * 0.05,
            "node {node} sold {sold}, expected {expected} ± 5%\n{}",
            cluster.sh(&["report"])
        );
    }
    // The per-node view the script prints.
    let view = cluster.sh(&["report"]);
    assert!(view.contains("total sold in the ledger: 10000"), "{view}");
    // And the HTTP front: ab through nginx's http upstream sells too.
    let front_http = cluster.sh(&["front-http"]);
    let ab = cluster.sh(&[
        "exec",
        "ab",
        "-q",
        "-n",
        "200",
        "-c",
        "10",
        &format!("http://{}/buy/ticket", front_http.trim()),
    ]);
    assert!(ab.contains("Complete requests:      200"), "{ab}");
    assert!(ab.contains("Failed requests:        0"), "{ab}");
}

#[test]
fn a_node_killed_mid_rush_loses_no_acknowledged_sale_and_the_others_sell_the_rest() {
    let _one = serial();
    let cluster = Cluster::up(2, "1:10000", &[]);
    // Twice the stock, paced so the sale lasts a few seconds.
    let run = cluster.spawn_loadgen(
        "kill",
        &[
            "--conns",
            "200",
            "--rate",
            "5000",
            "--duration",
            "4s",
            "--users",
            "1000000",
        ],
    );
    wait_for("the first 1,500 sales", Duration::from_secs(20), || {
        cluster.stream_len() >= 1_500
    });
    cluster.sh(&["kill-node", "2"]);
    let at_kill = cluster.stream_len();
    assert!(at_kill < 9_000, "the kill came mid-rush ({at_kill} sold)");
    let out = run.wait_with_output().expect("loadgen finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (report, seen) = cluster.results("kill");
    // No undersell, no oversell: the survivors sold what node 2 had not.
    let stream = cluster.stream_orders();
    assert_eq!(stream.len(), 10_000, "{stdout}");
    assert_eq!(cluster.ledger_field("sold"), 10_000);
    assert!(
        seen.iter().all(|(id, _)| stream.contains_key(id)),
        "every OK a client saw is in the orders stream"
    );
    let sold_seen = report["sold"].as_u64().unwrap_or(0);
    let lost = report["lost"].as_u64().unwrap_or(0);
    assert!(
        sold_seen <= 10_000 && sold_seen + lost >= 10_000,
        "{stdout}"
    );
    assert!(report["broken_conns"].as_u64().unwrap_or(0) > 0, "{stdout}");
    assert!(report["reconnects"].as_u64().unwrap_or(0) > 0, "{stdout}");
    for check in ["exact_sell_out", "server_agrees", "order_ids_unique"] {
        assert_eq!(verdict(&report, check), "pass", "{check}: {stdout}");
    }
    let after_kill: HashSet<u16> = stream.values().copied().collect();
    assert!(after_kill.contains(&1) && after_kill.contains(&3) && after_kill.contains(&4));
}
