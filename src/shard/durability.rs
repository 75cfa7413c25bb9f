//! A shard's side of the journal: each pass's records handed to the writer as one job,
//! segment rotation, and the answers and returned tickets released once their job is
//! durable.

use super::*;

impl Shard {
    /// The journal's part of a pass: hand this pass's records to the writer (with the
    /// returned tickets that wait on them), start a new segment when this one has
    /// gathered garbage, let the writer onto the core while answers wait on it, and send
    /// the answers whose records are now durable.
    pub(super) fn commit_pass(&mut self, now: Instant) {
        let Decider::Embedded {
            ledger,
            commit: Some(commit),
        } = &mut self.dispatcher.decider
        else {
            return;
        };
        if ledger.journal.is_pending() {
            if let Some(job) = commit.barrier(true) {
                for (event, qty) in ledger.take_returns() {
                    commit.hold(job, Held::Return { event, qty });
                }
            }
            let records = ledger.journal.take();
            tracing::debug!(
                shard = self.settings.index,
                bytes = records.len(),
                "journal batch submitted"
            );
            commit.submit(records);
            if commit.wants_rotation(ledger.live_state_estimate()) && !commit.failed() {
                let snapshot = ledger.snapshot(now);
                tracing::debug!(
                    shard = self.settings.index,
                    snapshot_bytes = snapshot.len(),
                    "journal segment holds more than twice the live state in garbage: starting a new one"
                );
                commit.rotate(snapshot);
            }
        }
        if commit.is_holding() {
            let_the_writer_run();
        }
        let mut released = std::mem::take(&mut self.released);
        commit.release(|item, outcome| released.push((item, outcome)));
        self.apply_released(&mut released, now);
        self.released = released;
    }

    /// At exit: wait for the writer to make everything durable, then put the last
    /// returned tickets back (so the summary balances) and answer what is left.
    pub(super) fn finish_journal(&mut self) {
        let Decider::Embedded {
            commit: Some(commit),
            ..
        } = &mut self.dispatcher.decider
        else {
            return;
        };
        let mut released = std::mem::take(&mut self.released);
        commit.finish(|item, outcome| released.push((item, outcome)));
        self.apply_released(&mut released, Instant::now());
        self.dispatcher.outbox.flush(&self.mailbox.peers);
    }

    /// Puts held answers and returned tickets back into play once their job is durable.
    pub(super) fn apply_released(&mut self, released: &mut Vec<(Held, Outcome)>, now: Instant) {
        for (item, outcome) in released.drain(..) {
            match item {
                Held::Answer(conn, response) => {
                    let response = match outcome {
                        Outcome::Durable => response,
                        // Its records never reached disk: the operation did not happen.
                        Outcome::Failed => Response::error(
                            response.op,
                            response.req_id,
                            ticketd_proto::Status::Unavailable,
                        ),
                    };
                    if conn.shard == self.settings.index {
                        self.deliver(conn, response, now);
                    } else {
                        self.dispatcher
                            .outbox
                            .push(conn.shard, Message::Reply { conn, response });
                    }
                }
                Held::Return { event, qty } => {
                    if let (Outcome::Durable, Decider::Embedded { ledger, .. }) =
                        (outcome, &self.dispatcher.decider)
                    {
                        ledger.give_back(event, qty);
                    }
                }
            }
        }
    }
}

/// Answers wait on the writer: hand it the core for a moment, if it wants it.
///
/// The writer is a thread of its own, but where it shares the shard's core (a server
/// pinned to one core, or every core busy with a shard) the scheduler lets a busy shard
/// run on until it sleeps: the job just submitted, and a sync that already finished,
/// waited for the shard to run out of work, and the shard then idled through the whole
/// sync with every answer held behind it (perf sched: the writer ran only once the
/// shard slept, after 2–3.5 ms of its passes; the shard ~15% idle with `--fsync
/// always`). Yielding here lets the writer start this job's write and sync, or publish
/// the last one, while the shard goes on deciding; when the writer has nothing to do, or
/// sits in its sync, the yield returns at once. The price is more, smaller syncs, each
/// some CPU: worth it where the core would otherwise idle through them, ~8% where a
/// client on the same cores keeps them busy anyway. (docs/BENCHMARKS.md, "the writer
/// let onto the shard's core".)
fn let_the_writer_run() {
    std::thread::yield_now();
}
