//! Running load threads inside one process, and running several worker processes when
//! one process cannot hold every connection.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connect;
use crate::driver::{run_thread, ConnTarget, Progress, RunSettings, StartGate};
use crate::live::REDRAW_EVERY;
use crate::report::{ThreadResult, WireResult};

/// How often progress is reported while connecting.
const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// Which connections a process drives and how.
#[derive(Debug, Clone)]
pub struct ProcessPlan {
    /// Global connection indices start..end.
    pub range: (u64, u64),
    pub threads: usize,
    pub addrs: Vec<std::net::SocketAddr>,
    pub source_addrs: u32,
    /// `--source-ip`: every connection from this address.
    pub source_ip: Option<std::net::IpAddr>,
    pub settings: Arc<RunSettings>,
}

/// The load threads of this process.
pub struct LocalRun {
    pub progress: Arc<Progress>,
    gate: Arc<StartGate>,
    handles: Vec<JoinHandle<ThreadResult>>,
}

impl LocalRun {
    /// Spawns one pinned thread per `plan.threads`, each connecting its share.
    pub fn spawn(plan: &ProcessPlan) -> std::io::Result<LocalRun> {
        let progress = Arc::new(Progress::default());
        let gate = Arc::new(StartGate::default());
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (start, end) = plan.range;
        let count = end - start;
        let threads = plan.threads.max(1) as u64;
        let mut handles = Vec::new();
        for t in 0..threads {
            let from = start + count * t / threads;
            let to = start + count * (t + 1) / threads;
            let targets: Vec<ConnTarget> = (from..to)
                .map(|global| {
                    let addr = plan.addrs[(global % plan.addrs.len() as u64) as usize];
                    ConnTarget {
                        global,
                        addr,
                        source: plan
                            .source_ip
                            .or_else(|| connect::source_for(addr, global, plan.source_addrs)),
                    }
                })
                .collect();
            let core = (!cores.is_empty()).then(|| cores[t as usize % cores.len()]);
            let (settings, progress, gate) = (
                Arc::clone(&plan.settings),
                Arc::clone(&progress),
                Arc::clone(&gate),
            );
            let handle = std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    run_thread(targets, settings, progress, gate)
                })?;
            handles.push(handle);
        }
        Ok(LocalRun {
            progress,
            gate,
            handles,
        })
    }

    /// Waits until every thread has finished connecting, calling `tick` meanwhile.
    pub fn wait_ready(&self, mut tick: impl FnMut(&Progress)) {
        while self.progress.threads_ready.load(Ordering::Acquire) < self.handles.len() as u64 {
            tick(&self.progress);
            std::thread::sleep(PROGRESS_TICK);
        }
        tick(&self.progress);
    }

    pub fn start(&self) {
        self.gate.open();
    }

    /// [`LocalRun::join`], calling `tick` with the live counters every
    /// [`REDRAW_EVERY`] until the threads are done.
    pub fn join_watching(self, mut tick: impl FnMut(&Progress)) -> ThreadResult {
        while !self.handles.iter().all(|h| h.is_finished()) {
            tick(&self.progress);
            std::thread::sleep(REDRAW_EVERY);
        }
        tick(&self.progress);
        self.join()
    }

    pub fn join(self) -> ThreadResult {
        let mut total = ThreadResult::new();
        for handle in self.handles {
            match handle.join() {
                Ok(result) => total.merge(result),
                Err(_) => {
                    *total
                        .connect_errors
                        .entry("a load thread panicked".into())
                        .or_default() += 1
                }
            }
        }
        total
    }
}

/// Lines a worker writes on its stdout, one JSON object each.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerMessage {
    Progress {
        established: u64,
        failed: u64,
    },
    Ready,
    /// While running: answers so far, by status code.
    Live {
        statuses: Vec<u64>,
    },
    Result(Box<WireResult>),
}

/// The worker side: connect, report ready, wait for "go" on stdin, run, report.
pub fn worker_main(plan: &ProcessPlan) -> Result<(), String> {
    let run = LocalRun::spawn(plan).map_err(|e| format!("cannot spawn load threads: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    let mut say = |message: &WorkerMessage| -> Result<(), String> {
        let line = serde_json::to_string(message).map_err(|e| e.to_string())?;
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("coordinator went away: {e}"))
    };
    let mut failure = None;
    run.wait_ready(|p| {
        let message = WorkerMessage::Progress {
            established: p.established.load(Ordering::Relaxed),
            failed: p.failed.load(Ordering::Relaxed),
        };
        if let Err(e) = say(&message) {
            failure.get_or_insert(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    say(&WorkerMessage::Ready)?;
    let mut go = String::new();
    std::io::stdin()
        .read_line(&mut go)
        .map_err(|e| format!("no start signal: {e}"))?;
    run.start();
    let mut failure = None;
    let result = run.join_watching(|p| {
        let message = WorkerMessage::Live {
            statuses: p.statuses().to_vec(),
        };
        if let Err(e) = say(&message) {
            failure.get_or_insert(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let wire = WireResult::from_result(&result).map_err(|e| e.to_string())?;
    say(&WorkerMessage::Result(Box::new(wire)))
}

/// The coordinator side of several worker processes.
pub struct WorkerSet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    messages: mpsc::Receiver<(usize, Option<WorkerMessage>)>,
    readers: Vec<JoinHandle<()>>,
}

impl WorkerSet {
    /// Starts one worker per range, each running this same executable with `args` plus
    /// `--worker START:END`.
    pub fn spawn(args: &[String], ranges: &[(u64, u64)]) -> Result<WorkerSet, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
        let (tx, messages) = mpsc::channel();
        let mut set = WorkerSet {
            children: Vec::new(),
            stdins: Vec::new(),
            messages,
            readers: Vec::new(),
        };
        for (index, (start, end)) in ranges.iter().enumerate() {
            let mut child = Command::new(&exe)
                .args(args)
                .arg("--worker")
                .arg(format!("{start}:{end}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start worker process {index}: {e}"))?;
            let stdout = child.stdout.take().ok_or("worker has no stdout")?;
            let stdin = child.stdin.take().ok_or("worker has no stdin")?;
            let tx = tx.clone();
            set.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let message = serde_json::from_str::<WorkerMessage>(&line).ok();
                    if tx.send((index, message)).is_err() {
                        break;
                    }
                }
                let _ = tx.send((index, None));
            }));
            set.children.push(child);
            set.stdins.push(stdin);
        }
        Ok(set)
    }

    /// Waits until every worker is connected, calling `tick(established, failed)`.
    pub fn wait_ready(&self, mut tick: impl FnMut(u64, u64)) -> Result<(), String> {
        let n = self.children.len();
        let mut progress = vec![(0u64, 0u64); n];
        let mut ready = vec![false; n];
        while !ready.iter().all(|r| *r) {
            match self.messages.recv_timeout(Duration::from_secs(120)) {
                Ok((
                    i,
                    Some(WorkerMessage::Progress {
                        established,
                        failed,
                    }),
                )) => {
                    progress[i] = (established, failed);
                    let (e, f) = progress
                        .iter()
                        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
                    tick(e, f);
                }
                Ok((i, Some(WorkerMessage::Ready))) => ready[i] = true,
                Ok((i, _)) => return Err(format!("worker {i} stopped before it was ready")),
                Err(_) => return Err("workers did not report for two minutes".into()),
            }
        }
        Ok(())
    }

    pub fn start(&mut self) -> Result<(), String> {
        for (i, stdin) in self.stdins.iter_mut().enumerate() {
            writeln!(stdin, "go").map_err(|e| format!("worker {i} is gone: {e}"))?;
        }
        Ok(())
    }

    /// Collects and merges every worker's result, calling `tick` with the answers so far
    /// by status code (summed over the workers) as they report them.
    pub fn join(mut self, mut tick: impl FnMut(&[u64])) -> Result<ThreadResult, String> {
        let n = self.children.len();
        let mut total = ThreadResult::new();
        let mut reported = vec![false; n];
        let mut live: Vec<Vec<u64>> = vec![Vec::new(); n];
        while !reported.iter().all(|r| *r) {
            match self.messages.recv() {
                Ok((i, Some(WorkerMessage::Live { statuses }))) => {
                    live[i] = statuses;
                    let mut sum = vec![0u64; live.iter().map(Vec::len).max().unwrap_or(0)];
                    for worker in &live {
                        for (s, n) in sum.iter_mut().zip(worker) {
                            *s += n;
                        }
                    }
                    tick(&sum);
                }
                Ok((i, Some(WorkerMessage::Result(wire)))) => {
                    total.merge(wire.into_result().map_err(|e| e.to_string())?);
                    reported[i] = true;
                }
                Ok((_, Some(_))) => {}
                // A worker's output ends after its result; before it, that is a failure.
                Ok((i, None)) if !reported[i] => {
                    return Err(format!("worker {i} exited without a result"))
                }
                Ok((_, None)) => {}
                Err(_) => return Err("lost every worker".into()),
            }
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok(total)
    }
}

impl Drop for WorkerSet {
    fn drop(&mut self) {
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
