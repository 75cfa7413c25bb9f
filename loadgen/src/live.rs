//! The live progress line of a run on a terminal: how long it has run, answers so far,
//! the rate over the last moment, and the statuses so far. Not on a terminal (a pipe, a
//! file, CI), nothing is drawn: reports and logs stay clean.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ticketd_proto::Status;

/// How often the line is redrawn.
pub const REDRAW_EVERY: Duration = Duration::from_millis(250);

pub struct LiveLine {
    bar: ProgressBar,
    /// The answers and time of the last redraw, for the rate.
    last: (Instant, u64),
}

impl LiveLine {
    pub fn start() -> LiveLine {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        LiveLine {
            bar,
            last: (Instant::now(), 0),
        }
    }

    /// Redraws with the answers so far, by status code.
    pub fn update(&mut self, statuses: &[u64]) {
        let now = Instant::now();
        let answered: u64 = statuses.iter().sum();
        let seconds = now.duration_since(self.last.0).as_secs_f64();
        let rate = if seconds > 0.0 {
            answered.saturating_sub(self.last.1) as f64 / seconds
        } else {
            0.0
        };
        self.last = (now, answered);
        self.bar.set_message(describe(answered, rate, statuses));
        self.bar.tick();
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// `answered 120000  412000/s  OK 10000  SOLD_OUT 110000`: statuses that occurred.
fn describe(answered: u64, rate: f64, statuses: &[u64]) -> String {
    let mut line = format!("answered {answered}  {rate:.0}/s");
    for (status, &count) in Status::ALL.iter().zip(statuses) {
        if count > 0 {
            line.push_str(&format!("  {} {count}", status.name()));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_only_statuses_that_occurred() {
        let mut statuses = [0; Status::ALL.len()];
        statuses[usize::from(Status::Ok.code())] = 3;
        statuses[usize::from(Status::SoldOut.code())] = 7;
        assert_eq!(
            describe(10, 2500.4, &statuses),
            "answered 10  2500/s  OK 3  SOLD_OUT 7"
        );
    }
}
