//! The `ticketd` binary itself: CLI errors, start-up log, thread names and pinning,
//! and a clean SIGTERM shutdown with a per-event summary.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

mod common;
use common::Client;
use ticketd_proto::Status;

const BIN: &str = env!("CARGO_BIN_EXE_ticketd");

#[test]
fn help_documents_every_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--event",
        "--hold-ttl",
        "--shards",
        "--max-frame",
        "--max-conns",
        "--node-id",
        "--http",
        "--http-anonymous",
        "--data-dir",
        "--fsync",
        "--raise-totals",
        "--redis",
        "--nodes",
        "--buffer",
        "--redis-timeout",
        "--redis-depth",
        "--redis-scripts",
        "--admin",
        "--share-port",
        "--huge-pages",
        "--pass-budget",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = Command::new(BIN)
        .args(["create-events", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--redis", "--event", "--hold-ttl", "--update", "--reset"] {
        assert!(help.contains(flag), "create-events --help lacks {flag}");
    }
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    for (args, needle) in [
        (vec!["--event", "1"], "ID:STOCK"),
        (vec!["--event", "1:10", "--event", "1:5"], "twice"),
        (vec!["--shards", "0"], "--shards"),
        (vec!["--max-frame", "8"], "--max-frame"),
        (vec!["--hold-ttl", "soon"], "hold-ttl"),
        // Every count and duration has an upper bound too, named with the flag.
        (
            vec!["--hold-ttl", "100years"],
            "--hold-ttl must be between 1ms and 7days",
        ),
        (vec!["--max-frame", "200000"], "--max-frame must be between"),
        (
            vec!["--pass-budget", "2s"],
            "--pass-budget must be at most 1s, got 2s",
        ),
        (vec!["--max-conns", "0"], "--max-conns must be between 1"),
        (
            vec!["--redis", "127.0.0.1:1", "--nodes", "0"],
            "--nodes must be between 1 and 4096, got 0",
        ),
        (
            vec![
                "--redis",
                "127.0.0.1:1",
                "--weight",
                "5",
                "--total-weight",
                "4",
            ],
            "--weight must be between 1 and 4, got 5",
        ),
        (
            vec!["--redis", "127.0.0.1:1", "--weight", "1"],
            "--total-weight",
        ),
        (
            vec!["--redis", "127.0.0.1:1", "--redis-timeout", "0s"],
            "--redis-timeout must be between 1ms",
        ),
        (
            vec!["--redis", "127.0.0.1:1", "--buffer=-1"],
            "--buffer must be between 0",
        ),
    ] {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend(&args);
        refused_with_exit_2(&all, needle);
    }
}

/// Runs the binary with `args` (and a private data dir): it must exit 2 with `needle` in
/// its message. Returns the message.
fn refused_with_exit_2(args: &[&str], needle: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    stderr
}

/// Kills the child by PID if the test fails midway.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_stops_cleanly_and_prints_the_summary() {
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--event",
            "1:10",
        ])
        .args(["--event", "2:5:2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    let pid = child.0.id();

    // The start-up line names the address; read it rather than sleep.
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut startup = String::new();
    while !startup.contains("ticketd started") {
        startup.clear();
        assert!(
            stderr.read_line(&mut startup).unwrap() > 0,
            "exited before starting"
        );
    }
    let startup = strip_ansi(&startup);
    let addr: SocketAddr = startup
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("start-up line has addr=");
    // In words, not Rust debug output.
    for words in [
        "embedded ledger journaled in",
        "2 shard(s) on core(s)",
        "event 1 (10 tickets, 1 per user), event 2 (5 tickets, 2 per user)",
        "shards=2",
    ] {
        assert!(startup.contains(words), "{startup}");
    }
    assert!(!startup.contains("Some("), "{startup}");

    // A thread names itself once it runs, which may be just after the log line.
    common::wait_until(|| {
        let threads = thread_names(pid);
        ["ticketd-shard-0", "ticketd-shard-1"]
            .iter()
            .all(|name| threads.iter().any(|t| t == name))
    });

    let mut client = Client::connect(addr);
    assert_eq!(client.buy(1, 1, 1).status, Status::Ok);
    let (hold_id, _) = common::hold(&client.reserve(2, 1, 2));
    assert_ne!(hold_id, 0);

    common::signal(pid, "-TERM");
    client.expect_eof();
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));

    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    assert_eq!(
        rows[0],
        ["event", "total", "sold", "held", "remaining", "orders"]
    );
    assert_eq!(rows[1], ["1", "10", "1", "0", "9", "1"], "{stdout}");
    assert_eq!(rows[2], ["2", "5", "0", "2", "3", "0"], "{stdout}");
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// The log is coloured only on a terminal, but be safe either way.
fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// A free port on loopback (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Starts the binary on `listen` with `args`; the exit status and stderr if it exits
/// within a moment, or the running child.
fn run_on(listen: &str, args: &[&str]) -> Result<Reaper, (Option<i32>, String)> {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", listen, "--event", "1:10"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut log = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("ticketd started") {
            std::thread::spawn(move || lines.for_each(drop));
            std::mem::forget(data); // the process keeps using it until it is killed
            return Ok(Reaper(child));
        }
    }
    let status = child.wait().unwrap();
    Err((status.code(), log))
}

#[test]
fn a_port_already_served_refuses_the_start_unless_shared_on_purpose() {
    let listen = format!("127.0.0.1:{}", free_port());
    let _first = run_on(&listen, &[]).expect("the first starts");
    let (code, log) = run_on(&listen, &[]).err().expect("the second is refused");
    assert_eq!(code, Some(1));
    assert!(log.contains("already served by another process"), "{log}");
    assert!(log.contains("--share-port"), "{log}");
    assert!(log.trim_end().ends_with("see --help"), "{log}");

    let shared = format!("127.0.0.1:{}", free_port());
    let _a = run_on(&shared, &["--share-port", "--node-id", "1"]).expect("a starts");
    let _b = run_on(&shared, &["--share-port", "--node-id", "2"]).expect("b shares the port");
    let (_, log) = run_on(&shared, &["--share-port", "--node-id", "1"])
        .err()
        .expect("a second node 1 on the port is refused");
    assert!(log.contains("node id 1 already serves port"), "{log}");
}

#[test]
fn flags_that_cannot_work_are_refused_naming_the_flag() {
    for (args, needle) in [
        (
            vec!["--http", "127.0.0.1:7999", "--listen", "127.0.0.1:7999"],
            "--listen and --http are the same address",
        ),
        (vec!["--nodes", "3"], "--nodes is a ledger-mode flag"),
        (vec!["--buffer", "5"], "--buffer is a ledger-mode flag"),
        (
            vec!["--redis-timeout", "1s"],
            "--redis-timeout is a ledger-mode flag",
        ),
        (vec!["--event", "2:0"], "stock must be at least 1"),
    ] {
        let stderr = refused_with_exit_2(&args, needle);
        // Ours end "see --help"; clap's own parse errors "try '--help'".
        assert!(
            stderr.trim_end().ends_with("--help") || stderr.trim_end().ends_with("'--help'."),
            "{stderr}"
        );
    }
}

#[test]
fn hostnames_are_accepted_where_addresses_are() {
    let listen = format!("localhost:{}", free_port());
    let _server = run_on(&listen, &[]).expect("--listen localhost:PORT starts");
}
