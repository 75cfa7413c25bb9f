//! The run's overall time limit (`--timeout`): a run that cannot finish — a server that
//! stopped accepting or answering — ends with a report of how far it got instead of
//! waiting forever. Worker processes die with the coordinator (`PR_SET_PDEATHSIG`).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the run is doing, for the message.
pub mod phase {
    pub const CONNECTING: u8 = 0;
    pub const RUNNING: u8 = 1;
}

/// Progress the watchdog reports if the run overstays.
#[derive(Debug, Default)]
pub struct Watch {
    pub phase: AtomicU8,
    pub established: AtomicU64,
    pub failed: AtomicU64,
}

impl Watch {
    /// Connections so far, while connecting.
    pub fn connecting(&self, established: u64, failed: u64) {
        self.established.store(established, Ordering::Relaxed);
        self.failed.store(failed, Ordering::Relaxed);
    }

    /// Every connection is up or failed: the run proper starts.
    pub fn running(&self) {
        self.phase.store(phase::RUNNING, Ordering::Relaxed);
    }
}

/// Starts the watchdog: after `limit`, it prints what is missing and exits with 1.
pub fn start(limit: Duration, conns: u64, watch: Arc<Watch>) {
    let started = Instant::now();
    let _ = std::thread::Builder::new()
        .name("loadgen-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            let established = watch.established.load(Ordering::Relaxed);
            let failed = watch.failed.load(Ordering::Relaxed);
            let what = match watch.phase.load(Ordering::Relaxed) {
                phase::CONNECTING => format!(
                    "still connecting: {established} of {conns} connections established, {failed} failed, {} never answered the connect",
                    conns.saturating_sub(established + failed)
                ),
                _ => format!(
                    "connected ({established} of {conns}), but requests are still unanswered"
                ),
            };
            eprintln!(
                "\nloadgen: gave up after {} (--timeout): {what}. Is the server running, \
                 and does it hold --conns connections (its --max-conns, its open-file limit)?",
                humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
            );
            std::process::exit(1);
        });
}

/// In a worker process: die with the coordinator, so a coordinator that gives up (or
/// is killed) leaves no load running.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a signal for this process; no memory
    // is passed.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}
