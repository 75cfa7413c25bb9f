//! What the ledger's Lua answers, decoded: the answers of a decide or settle call, a
//! user's orders, and a buyer's entry. The forms are written down at the top of
//! `ticketd.lua`; anything else is a [`ReplyError`], never a guess.

use redis::Value;
use ticketd_proto::Status;

use super::{Decision, Step};

/// A reply the ledger should never give.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("expected {expected} results, got {got}")]
    Count { expected: usize, got: usize },
    #[error("malformed result {index}: {value}")]
    Malformed { index: usize, value: String },
    /// The library's own word that it has no decisions to give (a text starting `!`):
    /// it found one of its steps unanswered, kept the call's changes and says so.
    #[error("the ledger library answered no decisions: {0}")]
    Library(String),
}

fn text_of(reply: &Value) -> Option<&str> {
    match reply {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// Decodes the answers of a [`super::decide`] or [`super::settle`] call for `steps`:
/// one string, a letter per step (O ok, S sold out, L limit reached, N not found,
/// E expired), then, space-separated, what each OK RESERVE (its expiry), CONFIRM (its
/// order id) and CANCEL (`event:tickets released`) carries, in step order. A BUY's OK
/// carries nothing: its order id is the one the step sent.
pub fn parse_decisions(reply: &Value, steps: &[Step]) -> Result<Vec<Decision>, ReplyError> {
    let malformed = |index: usize| ReplyError::Malformed {
        index,
        value: format!("{reply:?}"),
    };
    let text = text_of(reply).ok_or_else(|| malformed(0))?;
    if let Some(why) = text.strip_prefix('!') {
        return Err(ReplyError::Library(why.to_owned()));
    }
    let (codes, extras) = text.split_once(' ').unwrap_or((text, ""));
    if codes.len() != steps.len() {
        return Err(ReplyError::Count {
            expected: steps.len(),
            got: codes.len(),
        });
    }
    let mut extras = extras.split(' ').filter(|e| !e.is_empty());
    let decisions = codes
        .bytes()
        .zip(steps)
        .enumerate()
        .map(|(index, (code, step))| {
            let refused = match code {
                b'O' => None,
                b'S' => Some(Status::SoldOut),
                b'L' => Some(Status::LimitReached),
                b'N' => Some(Status::NotFound),
                b'E' => Some(Status::Expired),
                _ => return Err(malformed(index)),
            };
            if let Some(status) = refused {
                return Ok(Decision::Refused(status));
            }
            let mut extra = || extras.next().ok_or_else(|| malformed(index));
            let number = |text: &str| text.parse::<u64>().map_err(|_| malformed(index));
            Ok(match *step {
                Step::Buy { order_id, .. } => Decision::Ordered { order_id },
                Step::Confirm { .. } => Decision::Ordered {
                    order_id: number(extra()?)?,
                },
                Step::Reserve { hold_id, .. } => Decision::Held {
                    hold_id,
                    expires_unix_ms: number(extra()?)?,
                },
                Step::Cancel { .. } => {
                    let (event, qty) = extra()?.split_once(':').ok_or_else(|| malformed(index))?;
                    Decision::Cancelled {
                        event_id: event.parse().map_err(|_| malformed(index))?,
                        qty: qty.parse().map_err(|_| malformed(index))?,
                    }
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if extras.next().is_some() {
        return Err(malformed(steps.len()));
    }
    Ok(decisions)
}

/// One order in a user's list: `order_id` (one ticket) or `order_id:qty`.
fn parse_order(order: &str) -> Option<(u64, u16)> {
    let (id, qty) = order.split_once(':').unwrap_or((order, "1"));
    Some((id.parse().ok()?, qty.parse().ok()?))
}

/// A buyer's entry in `{ev:ID}:buyers`: `[held|]order,order,…` — the tickets their live
/// holds keep (left out when none), then their orders. Returns (held, orders), or `None`
/// when it is not in that form.
pub fn parse_buyer(entry: &str) -> Option<(i64, Vec<(u64, u16)>)> {
    let (held, list) = match entry.split_once('|') {
        Some((held, list)) => (held.parse().ok()?, list),
        None => (0, entry),
    };
    let orders = list
        .split(',')
        .filter(|o| !o.is_empty())
        .map(parse_order)
        .collect::<Option<Vec<_>>>()?;
    Some((held, orders))
}

/// Decodes the reply to [`super::orders`]: `None` when the event does not exist.
pub fn parse_orders(reply: &Value) -> Result<Option<Vec<(u64, u16)>>, ReplyError> {
    let malformed = || ReplyError::Malformed {
        index: 0,
        value: format!("{reply:?}"),
    };
    let Value::Array(fields) = reply else {
        return Err(malformed());
    };
    match fields.first() {
        Some(Value::Int(0)) => return Ok(None),
        Some(Value::Int(1)) => {}
        _ => return Err(malformed()),
    }
    let text = fields.get(1).and_then(text_of).ok_or_else(malformed)?;
    text.split(',')
        .filter(|order| !order.is_empty())
        .map(|order| parse_order(order).ok_or_else(malformed))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn buy(order_id: u64) -> Step {
        Step::Buy {
            user: 1,
            qty: 1,
            order_id,
        }
    }

    #[test]
    fn answers_decode_per_step_with_what_ok_steps_carry() {
        let steps = [
            buy(10),
            Step::Reserve {
                user: 2,
                qty: 1,
                hold_id: 11,
            },
            buy(12),
            Step::Confirm {
                hold_id: 11,
                order_id: 13,
            },
            Step::Cancel { hold_id: 14 },
            buy(15),
        ];
        assert_eq!(
            parse_decisions(&bulk("OOSOOL 1767225600000 9 7:2"), &steps).unwrap(),
            vec![
                Decision::Ordered { order_id: 10 },
                Decision::Held {
                    hold_id: 11,
                    expires_unix_ms: 1_767_225_600_000
                },
                Decision::Refused(Status::SoldOut),
                Decision::Ordered { order_id: 9 },
                Decision::Cancelled {
                    event_id: 7,
                    qty: 2
                },
                Decision::Refused(Status::LimitReached),
            ]
        );
        assert_eq!(
            parse_decisions(&bulk("NE"), &steps[..2]).unwrap(),
            vec![
                Decision::Refused(Status::NotFound),
                Decision::Refused(Status::Expired)
            ]
        );
    }

    #[test]
    fn answers_that_do_not_fit_their_steps_are_errors() {
        let steps = [
            buy(1),
            Step::Reserve {
                user: 2,
                qty: 1,
                hold_id: 3,
            },
        ];
        for (bad, why) in [
            ("O", "one answer for two steps"),
            ("OOO 5", "three answers for two steps"),
            ("OO", "the RESERVE's expiry missing"),
            ("OO 5 6", "an extra left over"),
            ("OO x", "an expiry that is no number"),
            ("OX 5", "an unknown letter"),
        ] {
            assert!(
                parse_decisions(&bulk(bad), &steps).is_err(),
                "{why}: {bad:?}"
            );
        }
        assert!(parse_decisions(&Value::Array(vec![]), &steps).is_err());
        assert!(parse_decisions(&Value::Int(1), &steps).is_err());
        let cancel = [Step::Cancel { hold_id: 1 }];
        for bad in ["O 7", "O 7:x", "O 7:70000"] {
            assert!(parse_decisions(&bulk(bad), &cancel).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_librarys_own_no_answer_is_its_own_error_with_its_words() {
        let steps = [buy(1), buy(2)];
        // Even where the text happens to be as long as the steps are many.
        for text in ["!ticketd: a bug", "!O"] {
            assert_eq!(
                parse_decisions(&bulk(text), &steps),
                Err(ReplyError::Library(text[1..].to_owned())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn buyer_entries_and_order_lists_take_both_order_forms() {
        assert_eq!(parse_buyer("5"), Some((0, vec![(5, 1)])));
        assert_eq!(parse_buyer("2|"), Some((2, vec![])));
        assert_eq!(parse_buyer("1|5,6:3"), Some((1, vec![(5, 1), (6, 3)])));
        for bad in ["x", "1|x", "|5", "5:", "5:1:1"] {
            assert_eq!(parse_buyer(bad), None, "{bad:?}");
        }
        let reply = Value::Array(vec![Value::Int(1), bulk("7:2,8")]);
        assert_eq!(parse_orders(&reply), Ok(Some(vec![(7, 2), (8, 1)])));
        assert_eq!(parse_orders(&Value::Array(vec![Value::Int(0)])), Ok(None));
        let bad = Value::Array(vec![Value::Int(1), bulk("7:x")]);
        assert!(parse_orders(&bad).is_err());
    }
}
