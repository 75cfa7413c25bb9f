//! The outcome checks: a run is judged on what it sold, not only on how fast.

use std::collections::{BTreeMap, HashMap};

use ticketd_proto::Status;

use crate::config::OpKind;
use crate::report::{StockView, ThreadResult, Verdict};

pub struct CheckInput<'a> {
    pub result: &'a ThreadResult,
    pub op: OpKind,
    pub limit: u32,
    pub conns_requested: u64,
    pub before: Option<StockView>,
    pub after: Option<StockView>,
    pub stock_skipped_because: Option<String>,
    /// ORDERS read back after the run for a sample of buyers: user -> order ids the
    /// server lists (`Err`: why it was not read).
    pub listed: Result<HashMap<u64, Vec<u64>>, String>,
}

/// Every order the clients were told about is one the server lists for that buyer (and,
/// when no answer was lost, the server lists no other): client and ledger agree.
fn orders_agree(r: &ThreadResult, listed: &Result<HashMap<u64, Vec<u64>>, String>) -> Verdict {
    let listed = match listed {
        Ok(listed) if !listed.is_empty() => listed,
        Ok(_) => return Verdict::skipped("no buyer to look up".to_string()),
        Err(why) => return Verdict::skipped(why.clone()),
    };
    let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
    for &(order_id, user) in &r.orders {
        if listed.contains_key(&user) {
            seen.entry(user).or_default().push(order_id);
        }
    }
    let mut disagree = 0;
    for (user, server) in listed {
        let mut client = seen.get(user).cloned().unwrap_or_default();
        let mut server = server.clone();
        client.sort_unstable();
        server.sort_unstable();
        let agrees = if r.lost == 0 {
            client == server
        } else {
            client.iter().all(|id| server.binary_search(id).is_ok())
        };
        if !agrees {
            disagree += 1;
        }
    }
    Verdict::check(
        disagree == 0,
        format!(
            "ORDERS for {} buyers: {} agree with what the clients were told{}",
            listed.len(),
            listed.len() - disagree,
            if r.lost > 0 {
                " (answers were lost: server may list more)"
            } else {
                ""
            }
        ),
    )
}

pub fn run_checks(input: CheckInput<'_>) -> BTreeMap<&'static str, Verdict> {
    let r = input.result;
    let mut checks = BTreeMap::new();
    checks.insert(
        "connections_established",
        Verdict::check(
            r.established == input.conns_requested,
            format!(
                "{} of {} connections established",
                r.established, input.conns_requested
            ),
        ),
    );
    checks.insert(
        "every_request_answered",
        Verdict::check(
            r.lost == 0 && r.malformed == 0 && r.answered == r.sent,
            format!(
                "{} sent, {} answered, {} lost, {} malformed",
                r.sent, r.answered, r.lost, r.malformed
            ),
        ),
    );
    let selling = matches!(input.op, OpKind::Buy | OpKind::ReserveConfirm);
    // A run is judged on decisions: UNAVAILABLE, OVERLOADED and the like mean the server
    // did not decide (truthfully, but the sale did not happen either).
    let decided: &[Status] = match input.op {
        OpKind::Buy => &[Status::Ok, Status::SoldOut, Status::LimitReached],
        OpKind::ReserveConfirm => &[
            Status::Ok,
            Status::SoldOut,
            Status::LimitReached,
            Status::Expired,
        ],
        OpKind::Ping | OpKind::Stock => &[Status::Ok],
    };
    let undecided: Vec<String> = Status::ALL
        .iter()
        .filter(|s| !decided.contains(s) && r.statuses[usize::from(s.code())] > 0)
        .map(|s| format!("{} {}", s.name(), r.statuses[usize::from(s.code())]))
        .collect();
    checks.insert(
        "every_request_decided",
        Verdict::check(
            undecided.is_empty(),
            if undecided.is_empty() {
                "every answer was a decision".to_string()
            } else {
                format!("not decided: {}", undecided.join(", "))
            },
        ),
    );
    if !selling {
        return checks;
    }
    match (input.before, input.after) {
        (Some(before), Some(after)) => {
            let sold = r.sold as i64;
            checks.insert(
                "sold_within_stock",
                Verdict::check(
                    sold <= before.remaining,
                    format!("sold {sold}, {} were on sale", before.remaining),
                ),
            );
            let server_sold = before.remaining - after.remaining;
            // A lost answer may have been a sale the client never saw: then the server
            // may count up to that many more, never fewer.
            let lost = r.lost as i64;
            let unseen = if lost > 0 {
                format!(" ({lost} answers lost: up to {lost} sales unseen)")
            } else {
                String::new()
            };
            checks.insert(
                "server_agrees",
                Verdict::check(
                    (sold..=sold + lost).contains(&server_sold) && after.total == before.total,
                    format!(
                        "the server's remaining fell by {server_sold}; clients saw {sold} sales{unseen}"
                    ),
                ),
            );
            let demand_exceeded = r.statuses[usize::from(Status::SoldOut.code())] > 0;
            checks.insert(
                "exact_sell_out",
                if demand_exceeded {
                    Verdict::check(
                        (before.remaining - lost..=before.remaining).contains(&sold)
                            && after.remaining == 0,
                        format!(
                            "demand exceeded stock: sold {sold} of {}, {} left{unseen}",
                            before.remaining, after.remaining
                        ),
                    )
                } else {
                    Verdict::skipped(format!(
                        "demand ({sold} sold) did not exceed stock ({} on sale)",
                        before.remaining
                    ))
                },
            );
        }
        _ => {
            let why = input
                .stock_skipped_because
                .clone()
                .unwrap_or_else(|| "STOCK was not read".into());
            for name in ["sold_within_stock", "server_agrees", "exact_sell_out"] {
                checks.insert(name, Verdict::skipped(why.clone()));
            }
        }
    }
    checks.insert("orders_agree", orders_agree(r, &input.listed));
    if r.orders_truncated {
        let why = format!("more than {} orders: not tracked", r.orders.len());
        checks.insert("order_ids_unique", Verdict::skipped(why.clone()));
        checks.insert("users_within_limit", Verdict::skipped(why));
        return checks;
    }
    let mut ids: Vec<u64> = r.orders.iter().map(|&(id, _)| id).collect();
    ids.sort_unstable();
    let before_dedup = ids.len();
    ids.dedup();
    let zero = ids.first() == Some(&0);
    checks.insert(
        "order_ids_unique",
        Verdict::check(
            ids.len() == before_dedup && !zero,
            format!(
                "{before_dedup} orders, {} distinct ids{}",
                ids.len(),
                if zero { ", one is 0" } else { "" }
            ),
        ),
    );
    let mut per_user: HashMap<u64, u32> = HashMap::new();
    for &(_, user) in &r.orders {
        *per_user.entry(user).or_default() += 1;
    }
    let worst = per_user.values().copied().max().unwrap_or(0);
    checks.insert(
        "users_within_limit",
        Verdict::check(
            worst <= input.limit,
            format!(
                "{} buyers, most tickets to one user {worst}, limit {}",
                per_user.len(),
                input.limit
            ),
        ),
    );
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(result: &ThreadResult, before: i64, after: i64) -> CheckInput<'_> {
        CheckInput {
            result,
            op: OpKind::Buy,
            limit: 1,
            conns_requested: result.established,
            before: Some(StockView {
                total: before,
                remaining: before,
            }),
            after: Some(StockView {
                total: before,
                remaining: after,
            }),
            stock_skipped_because: None,
            // What an honest server lists: each buyer's one order.
            listed: Ok(result
                .orders
                .iter()
                .map(|&(order_id, user)| (user, vec![order_id]))
                .collect()),
        }
    }

    #[test]
    fn orders_agree_compares_what_clients_saw_with_what_the_server_lists() {
        let r = sold_out_run(2); // orders (1, user 1) and (2, user 2)
        let check = |listed: Vec<(u64, Vec<u64>)>| {
            let mut i = input(&r, 2, 0);
            i.listed = Ok(listed.into_iter().collect());
            !run_checks(i)["orders_agree"].failed()
        };
        assert!(check(vec![(1, vec![1]), (2, vec![2])]));
        assert!(
            !check(vec![(1, vec![1, 9])]),
            "the server lists an order nobody saw"
        );
        assert!(
            !check(vec![(2, vec![])]),
            "the server lost an order a client saw"
        );
    }

    fn sold_out_run(sold: u64) -> ThreadResult {
        let mut r = ThreadResult::new();
        r.established = 1;
        r.sent = sold + 5;
        r.answered = sold + 5;
        r.statuses[1] = 5;
        for i in 0..sold {
            r.track_order(i + 1, i + 1, 100);
        }
        r
    }

    #[test]
    fn an_exact_sell_out_passes_everything() {
        let r = sold_out_run(10);
        let checks = run_checks(input(&r, 10, 0));
        assert!(checks.values().all(|v| v.verdict == "pass"), "{checks:?}");
    }

    #[test]
    fn undersell_oversell_and_duplicates_fail() {
        let r = sold_out_run(9);
        assert!(
            run_checks(input(&r, 10, 1))["exact_sell_out"].failed(),
            "undersell"
        );
        let r = sold_out_run(11);
        assert!(
            run_checks(input(&r, 10, 0))["sold_within_stock"].failed(),
            "oversell"
        );
        let mut r = sold_out_run(2);
        r.orders[1].0 = r.orders[0].0;
        assert!(run_checks(input(&r, 2, 0))["order_ids_unique"].failed());
        let mut r = sold_out_run(2);
        r.orders[1].1 = r.orders[0].1;
        assert!(run_checks(input(&r, 2, 0))["users_within_limit"].failed());
        let mut r = sold_out_run(2);
        r.lost = 1;
        assert!(run_checks(input(&r, 2, 0))["every_request_answered"].failed());
        let mut r = sold_out_run(2);
        r.statuses[usize::from(Status::Unavailable.code())] = 3;
        assert!(run_checks(input(&r, 2, 0))["every_request_decided"].failed());
    }

    #[test]
    fn lost_answers_widen_the_agreement_by_exactly_their_number() {
        // 8 sales seen, 2 answers lost, the server sold all 10: honest.
        let mut r = sold_out_run(8);
        r.lost = 2;
        r.answered -= 2;
        let checks = run_checks(input(&r, 10, 0));
        assert_eq!(checks["server_agrees"].verdict, "pass", "{checks:?}");
        assert_eq!(checks["exact_sell_out"].verdict, "pass", "{checks:?}");
        assert!(
            checks["every_request_answered"].failed(),
            "the loss is reported"
        );
        // One lost answer cannot explain two unseen sales.
        let mut r = sold_out_run(8);
        r.lost = 1;
        r.answered -= 1;
        let checks = run_checks(input(&r, 10, 0));
        assert!(checks["server_agrees"].failed());
        assert!(checks["exact_sell_out"].failed());
        // Nor may the server count fewer sales than the clients saw.
        let mut r = sold_out_run(10);
        r.lost = 3;
        assert!(run_checks(input(&r, 10, 1))["server_agrees"].failed());
    }
}
