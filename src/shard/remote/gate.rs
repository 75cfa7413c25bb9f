//! Ledger mode's gate on one shard: the tickets this node may send to Redis without
//! asking first (its share of each event, kept in the catalog's stock slices), and what
//! happens when they run out. A dry gate never refuses by itself: purchases park on one
//! STOCK ask per event, and only Redis's word makes them SOLD_OUT. Once Redis said
//! nothing is left and nothing is held, purchases are refused here for a short while.

use std::time::{Duration, Instant};

use ticketd_proto::{Op, Status};

use super::super::mailbox::ConnRef;
use crate::stock::Stock;

/// An event the ledger reported with nothing left and nothing held is sold out for
/// good (sold tickets never come back; only holds do), so a dry gate answers SOLD_OUT
/// locally — asking again after this long, in case the total was raised on purpose
/// (`ticketd create-events --update`).
pub const EXHAUSTED_RECHECK: Duration = Duration::from_secs(1);

/// A BUY or RESERVE on its way to the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    pub op: Op,
    pub user: u64,
    pub qty: u16,
    pub conn: ConnRef,
    pub req_id: u64,
}

/// What the gate says to a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Its tickets came from the gate: send it to Redis carrying them.
    Taken,
    /// Redis said lately that nothing remains or is held.
    SoldOut,
    /// The gate is dry: it waits for the next ask's answer.
    Parked,
}

/// What the answer to an ask means for one parked purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it to Redis with `gate_qty` tickets of the gate (0: ungated, Redis decides).
    Decide { gate_qty: u16 },
    /// Answer it with this status now.
    Refuse(Status),
}

/// What Redis said of an event: total (negative: the event does not exist), remaining,
/// and held when it said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerView {
    pub total: i64,
    pub remaining: i64,
    pub held: Option<i64>,
}

#[derive(Debug, Default)]
struct EventGate {
    /// Purchases that found the gate dry since the last ask went out.
    parked: Vec<Parked>,
    /// An ask is in flight; newly parked purchases wait for the next.
    asking: bool,
    /// When the ledger last said nothing is left and nothing held.
    exhausted: Option<Instant>,
}

#[derive(Debug)]
pub struct Gate {
    shard: usize,
    events: Vec<EventGate>,
}

impl Gate {
    pub fn new(shard: usize, events: usize) -> Self {
        Gate {
            shard,
            events: (0..events).map(|_| EventGate::default()).collect(),
        }
    }

    /// A purchase of `event`, whose gate is `stock`.
    pub fn admit(&mut self, stock: &Stock, event: usize, p: Parked, now: Instant) -> Admission {
        let Some(gate) = self.events.get_mut(event) else {
            return Admission::SoldOut;
        };
        if stock.take(self.shard, i64::from(p.qty)) {
            Admission::Taken
        } else if gate
            .exhausted
            .is_some_and(|at| now.saturating_duration_since(at) < EXHAUSTED_RECHECK)
        {
            Admission::SoldOut
        } else {
            gate.parked.push(p);
            Admission::Parked
        }
    }

    /// Takes the purchases parked on `event` if an ask should go out for them now (none
    /// in flight): the ask is then in flight until [`Gate::answered`] or
    /// [`Gate::ask_failed`].
    pub fn take_ask(&mut self, event: usize) -> Option<Vec<Parked>> {
        let gate = self.events.get_mut(event)?;
        if gate.parked.is_empty() || gate.asking {
            return None;
        }
        gate.asking = true;
        Some(std::mem::take(&mut gate.parked))
    }

    /// Remembers what Redis said of `event` (any STOCK answer, asked or not).
    pub fn learned(&mut self, event: usize, view: LedgerView, now: Instant) {
        if let Some(gate) = self.events.get_mut(event) {
            gate.exhausted =
                (view.total >= 0 && view.remaining <= 0 && view.held == Some(0)).then_some(now);
        }
    }

    /// The ask for `event` failed (no answer): its purchases are refused by the caller.
    pub fn ask_failed(&mut self, event: usize) {
        if let Some(gate) = self.events.get_mut(event) {
            gate.asking = false;
        }
    }

    /// The answer to the ask for `event` (None: it could not be read). None left: each
    /// purchase is refused. Some left: the gate is refilled (at most its total) and as
    /// many purchases as the tickets left go to Redis, which decides them; the rest park
    /// again for the next ask, which Redis answers after those decisions (so a purchase
    /// Redis refuses for another reason leaves its ticket to them, never a false
    /// SOLD_OUT).
    pub fn answered(
        &mut self,
        stock: &Stock,
        event: usize,
        view: Option<LedgerView>,
        parked: Vec<Parked>,
    ) -> Vec<(Parked, Verdict)> {
        let Some(gate) = self.events.get_mut(event) else {
            return Vec::new();
        };
        gate.asking = false;
        let refusal = match view {
            None => Some(Status::Unavailable),
            Some(v) if v.total < 0 => Some(Status::NotFound),
            Some(v) if v.remaining <= 0 => Some(Status::SoldOut),
            Some(_) => None,
        };
        if let Some(status) = refusal {
            return parked
                .into_iter()
                .map(|p| (p, Verdict::Refuse(status)))
                .collect();
        }
        let mut left = view.map_or(0, |v| v.remaining);
        stock.give_back(self.shard, left.min(stock.total().max(1)));
        let mut verdicts = Vec::with_capacity(parked.len());
        for p in parked {
            if left <= 0 {
                gate.parked.push(p);
                continue;
            }
            left -= i64::from(p.qty);
            let gate_qty = if stock.take(self.shard, i64::from(p.qty)) {
                p.qty
            } else {
                0
            };
            verdicts.push((p, Verdict::Decide { gate_qty }));
        }
        verdicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buy(user: u64) -> Parked {
        Parked {
            op: Op::Buy,
            user,
            qty: 1,
            conn: ConnRef {
                shard: 0,
                slot: 0,
                generation: 1,
            },
            req_id: user,
        }
    }

    fn view(total: i64, remaining: i64, held: i64) -> Option<LedgerView> {
        Some(LedgerView {
            total,
            remaining,
            held: Some(held),
        })
    }

    #[test]
    fn a_full_gate_admits_and_a_dry_one_parks_on_one_ask() {
        let stock = Stock::new(2, 1);
        let mut gate = Gate::new(0, 1);
        let now = Instant::now();
        assert_eq!(gate.admit(&stock, 0, buy(1), now), Admission::Taken);
        assert_eq!(gate.admit(&stock, 0, buy(2), now), Admission::Taken);
        assert_eq!(gate.admit(&stock, 0, buy(3), now), Admission::Parked);
        assert_eq!(gate.admit(&stock, 0, buy(4), now), Admission::Parked);
        let asked = gate.take_ask(0).expect("an ask for the parked");
        assert_eq!(asked.len(), 2);
        assert_eq!(gate.admit(&stock, 0, buy(5), now), Admission::Parked);
        assert!(gate.take_ask(0).is_none(), "one ask in flight per event");
    }

    #[test]
    fn an_answer_lets_as_many_go_as_remain_and_parks_the_rest() {
        let stock = Stock::new(10, 1);
        assert!(stock.take(0, 10), "the gate starts dry");
        let mut gate = Gate::new(0, 1);
        let now = Instant::now();
        for user in 0..5 {
            gate.admit(&stock, 0, buy(user), now);
        }
        let asked = gate.take_ask(0).expect("ask");
        let verdicts = gate.answered(&stock, 0, view(10, 3, 0), asked);
        assert_eq!(verdicts.len(), 3, "three tickets left: three go to Redis");
        assert!(verdicts
            .iter()
            .all(|(_, v)| *v == Verdict::Decide { gate_qty: 1 }));
        let again = gate.take_ask(0).expect("the other two ask again");
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn none_left_refuses_and_is_believed_for_a_while() {
        let stock = Stock::new(1, 1);
        assert!(stock.take(0, 1));
        let mut gate = Gate::new(0, 1);
        let now = Instant::now();
        gate.admit(&stock, 0, buy(1), now);
        let asked = gate.take_ask(0).expect("ask");
        gate.learned(0, view(1, 0, 0).expect("view"), now);
        let verdicts = gate.answered(&stock, 0, view(1, 0, 0), asked);
        assert_eq!(verdicts, vec![(buy(1), Verdict::Refuse(Status::SoldOut))]);
        assert_eq!(gate.admit(&stock, 0, buy(2), now), Admission::SoldOut);
        let later = now + EXHAUSTED_RECHECK;
        assert_eq!(
            gate.admit(&stock, 0, buy(3), later),
            Admission::Parked,
            "asked again after the recheck interval"
        );
    }

    #[test]
    fn held_tickets_are_not_sold_out_for_good() {
        let stock = Stock::new(1, 1);
        assert!(stock.take(0, 1));
        let mut gate = Gate::new(0, 1);
        let now = Instant::now();
        gate.learned(0, view(1, 0, 1).expect("view"), now);
        assert_eq!(
            gate.admit(&stock, 0, buy(1), now),
            Admission::Parked,
            "a held ticket may come back: ask"
        );
    }

    #[test]
    fn a_failed_or_unreadable_ask_refuses_unavailable_and_allows_the_next() {
        let stock = Stock::new(1, 1);
        assert!(stock.take(0, 1));
        let mut gate = Gate::new(0, 1);
        let now = Instant::now();
        gate.admit(&stock, 0, buy(1), now);
        let asked = gate.take_ask(0).expect("ask");
        let verdicts = gate.answered(&stock, 0, None, asked);
        assert_eq!(
            verdicts,
            vec![(buy(1), Verdict::Refuse(Status::Unavailable))]
        );
        gate.admit(&stock, 0, buy(2), now);
        let asked = gate.take_ask(0).expect("the next ask goes out");
        gate.ask_failed(0);
        drop(asked);
        gate.admit(&stock, 0, buy(3), now);
        assert!(gate.take_ask(0).is_some(), "not stuck asking");
    }

    #[test]
    fn a_missing_event_is_not_found() {
        let stock = Stock::new(0, 1);
        let mut gate = Gate::new(0, 1);
        gate.admit(&stock, 0, buy(1), Instant::now());
        let asked = gate.take_ask(0).expect("ask");
        let verdicts = gate.answered(&stock, 0, view(-1, 0, 0), asked);
        assert_eq!(verdicts, vec![(buy(1), Verdict::Refuse(Status::NotFound))]);
    }
}
