//! loadgen end to end: the real binary against a real ticketd on loopback, its JSON
//! report, its verdicts and exit codes, and its worker processes.

use std::path::PathBuf;
use std::process::{Command, Output};

use ticketd::{Config, EventSpec, ServerHandle};

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

fn server(stock: i64, limit: u16) -> ServerHandle {
    let mut config = Config::new(vec![EventSpec {
        id: 1,
        stock,
        per_user_limit: limit,
    }]);
    config.shards = 2;
    ticketd::start(config).expect("server starts")
}

/// A file named `name` in a directory of its own, deleted with it when the test ends
/// (each test its own, so none is left in the temp dir).
struct Scratch {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.path
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

fn json_path(name: &str) -> Scratch {
    let dir = tempfile::Builder::new()
        .prefix("loadgen-test-")
        .tempdir()
        .unwrap();
    let path = dir.path().join(name);
    Scratch { _dir: dir, path }
}

fn run(server: &ServerHandle, args: &[&str], json: &PathBuf) -> (Output, serde_json::Value) {
    let out = Command::new(LOADGEN)
        .args(["--addr", &server.local_addr().to_string(), "--threads", "2"])
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    let report = std::fs::read_to_string(json)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null);
    (out, report)
}

fn verdicts(report: &serde_json::Value) -> Vec<(String, String)> {
    report["invariants"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["verdict"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn a_rush_sells_exactly_the_stock_and_the_report_has_every_field() {
    let server = server(100, 1);
    let json = json_path("rush.json");
    let (out, report) = run(
        &server,
        &[
            "--conns",
            "20",
            "--requests",
            "1000",
            "--users",
            "1000",
            "--depth",
            "4",
        ],
        &json,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["conns"], 20);
    assert_eq!(report["requests"], 1000);
    assert_eq!(report["statuses"]["OK"], 100);
    assert_eq!(report["statuses"]["SOLD_OUT"], 900);
    assert_eq!(report["sold"], 100);
    assert!(report["elapsed_s"].as_f64().unwrap() > 0.0);
    assert!(report["throughput_rps"].as_f64().unwrap() > 0.0);
    for p in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(report["latency_us"][p].as_f64().unwrap() > 0.0, "{p}");
    }
    assert!(
        report.get("latency_uncorrected_us").is_none(),
        "closed loop has one latency"
    );
    for (name, verdict) in verdicts(&report) {
        assert_eq!(verdict, "pass", "{name}");
    }
    assert_eq!(server.stock(1), Some((100, 0)));
}

#[test]
fn open_loop_reports_corrected_and_uncorrected_latency() {
    let server = server(1_000_000, 1);
    let json = json_path("rate.json");
    let (out, report) = run(
        &server,
        &[
            "--conns",
            "10",
            "--rate",
            "2000",
            "--duration",
            "1s",
            "--op",
            "ping",
        ],
        &json,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = report["requests"].as_u64().unwrap();
    assert!(
        (1_500..=2_100).contains(&requests),
        "about 2,000 in one second: {requests}"
    );
    assert_eq!(report["mode"], "open-loop");
    assert!(report["latency_uncorrected_us"]["p99"].as_f64().unwrap() > 0.0);
    // Measured from the intended send time, the corrected latency is never the smaller.
    assert!(
        report["latency_us"]["max"].as_f64() >= report["latency_uncorrected_us"]["max"].as_f64()
    );
}

#[test]
fn reserve_confirm_sells_through_holds() {
    let server = server(50, 1);
    let json = json_path("holds.json");
    let (out, report) = run(
        &server,
        &[
            "--conns",
            "5",
            "--requests",
            "200",
            "--op",
            "reserve-confirm",
            "--depth",
            "2",
        ],
        &json,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["sold"], 50);
    let summary = server.shutdown();
    let e = summary.event(1).unwrap();
    assert_eq!((e.sold, e.held, e.orders), (50, 0, 50));
}

#[test]
fn a_broken_invariant_fails_the_run() {
    // --limit 0 claims nobody may buy anything: every sale breaks it.
    let server = server(10, 1);
    let json = json_path("limit.json");
    let (out, report) = run(
        &server,
        &["--conns", "2", "--requests", "20", "--limit", "0"],
        &json,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        report["invariants"]["users_within_limit"]["verdict"],
        "fail"
    );
}

#[test]
fn more_connections_than_one_process_may_hold_use_worker_processes() {
    // 450 buyers over three processes for 400 tickets: the sell-out must be exact
    // across the merged results.
    let server = server(400, 1);
    let json = json_path("workers.json");
    // A 300-file limit leaves 200 connections per process: 450 need 3 processes.
    let script = format!(
        "ulimit -n 300 && exec {LOADGEN} --addr {} --threads 1 --conns 450 --requests 450 --json {}",
        server.local_addr(),
        json.display()
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["processes"], 3);
    assert_eq!(report["conns"], 450);
    assert_eq!(report["requests"], 450);
    assert_eq!(report["sold"], 400);
    assert_eq!(report["statuses"]["SOLD_OUT"], 50);
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker processes"));
    for (name, verdict) in verdicts(&report) {
        assert_eq!(verdict, "pass", "{name}");
    }
}

#[test]
fn nothing_listening_is_a_clear_error() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let out = Command::new(LOADGEN)
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--conns",
            "1",
            "--requests",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("STOCK") && stderr.contains("refused"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["--conns", "0", "--requests", "1"],
        vec!["--conns", "5", "--requests", "2"],
        vec!["--conns", "1"],
        vec!["--conns", "1", "--requests", "1", "--depth", "0"],
    ] {
        let out = Command::new(LOADGEN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn a_server_that_never_answers_ends_the_run_at_the_timeout_saying_how_far_it_got() {
    // A listener that never accepts: connections sit in its backlog, nothing answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(LOADGEN)
        .args(["--addr", &silent.local_addr().unwrap().to_string()])
        .args(["--no-stock-check", "--threads", "1", "--conns", "4"])
        .args(["--requests", "4", "--timeout", "2s"])
        .output()
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gave up after 2s (--timeout)"), "{stderr}");
    assert!(
        stderr.contains("requests are still unanswered") || stderr.contains("still connecting"),
        "{stderr}"
    );
}

/// A TCP relay to `upstream` that can cut every connection it relays so far, like a
/// node dying behind a balancer; connections made after a cut are relayed normally.
struct CuttingRelay {
    addr: std::net::SocketAddr,
    clients: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CuttingRelay {
    fn start(upstream: std::net::SocketAddr) -> Self {
        use std::io::copy;
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&clients);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                kept.lock().unwrap().push(client.try_clone().unwrap());
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let _ = copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingRelay { addr, clients }
    }

    /// Cuts every connection relayed so far; returns how many.
    fn cut(&self) -> usize {
        let mut clients = self.clients.lock().unwrap();
        for client in clients.iter() {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        std::mem::take(&mut *clients).len()
    }
}

#[test]
fn reconnect_survives_cut_connections_and_reports_what_was_lost() {
    let server = server(1_000_000, 1);
    let relay = CuttingRelay::start(server.local_addr());
    let json = json_path("reconnect.json");
    let child = Command::new(LOADGEN)
        .args(["--addr", &relay.addr.to_string(), "--threads", "1"])
        .args([
            "--conns",
            "8",
            "--depth",
            "16",
            "--duration",
            "3s",
            "--reconnect",
        ])
        .arg("--json")
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Cut everything once, a second into the 3 s run (the connections are in by then,
    // after the STOCK check's own, which has closed).
    std::thread::sleep(std::time::Duration::from_secs(1));
    let cut = relay.cut();
    assert!(cut >= 8, "every connection was relayed and cut ({cut})");
    let out = child.wait_with_output().unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(report["broken_conns"], 8, "{stdout}");
    assert_eq!(report["reconnects"], 8, "{stdout}");
    let (sent, answered, lost) = (
        report["sent"].as_u64().unwrap(),
        report["requests"].as_u64().unwrap(),
        report["lost"].as_u64().unwrap(),
    );
    assert_eq!(
        sent,
        answered + lost,
        "every request answered or counted lost"
    );
    // The run went on after the cut: far more than the depth was answered.
    assert!(answered > 8 * 16 * 4, "{stdout}");
    let checks = &report["invariants"];
    assert_eq!(checks["server_agrees"]["verdict"], "pass", "{stdout}");
    assert_eq!(checks["order_ids_unique"]["verdict"], "pass", "{stdout}");
    if lost > 0 {
        assert!(!out.status.success(), "lost answers fail the run: {stdout}");
        assert_eq!(checks["every_request_answered"]["verdict"], "fail");
    }
    assert!(
        stdout.contains("8 connections broke mid-run, 8 reopened"),
        "{stdout}"
    );
}

#[test]
fn a_flood_from_one_address_is_overloaded_while_another_is_served() {
    let mut config = Config::new(vec![EventSpec {
        id: 1,
        stock: 1_000_000_000,
        per_user_limit: 1,
    }]);
    config.shards = 2;
    config.rate_per_ip = Some(2_000.0);
    let server = ticketd::start(config).expect("server starts");
    let addr = server.local_addr().to_string();
    let run = |source: &str, json: &PathBuf, load: &[&str]| {
        Command::new(LOADGEN)
            .args(["--addr", &addr, "--threads", "1", "--source-ip", source])
            .args(["--op", "stock", "--no-stock-check", "--duration", "2s"])
            .args(load)
            .arg("--json")
            .arg(json)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("loadgen starts")
    };
    let (flood_json, measure_json) = (json_path("flood.json"), json_path("measure.json"));
    let flood = run("127.0.0.2", &flood_json, &["--conns", "8", "--depth", "32"]);
    let measure = run(
        "127.0.0.3",
        &measure_json,
        &["--conns", "4", "--rate", "400"],
    );
    let flood_out = flood.wait_with_output().expect("flood ends");
    let measure_out = measure.wait_with_output().expect("measure ends");
    let read = |path: &PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).expect("report")).expect("json")
    };
    let (flood, measure) = (read(&flood_json), read(&measure_json));
    let overloaded = flood["statuses"]["OVERLOADED"].as_u64().unwrap_or(0);
    let ok = flood["statuses"]["OK"].as_u64().unwrap_or(0);
    assert!(
        overloaded > 0,
        "the flood is held to its rate: {}",
        String::from_utf8_lossy(&flood_out.stdout)
    );
    // 2 s at 2,000/s, a burst of a second's worth, and the drain after the run.
    assert!(ok <= 7_000, "held to its rate: {ok}");
    assert!(
        !flood_out.status.success(),
        "OVERLOADED is not a decision: the run fails"
    );
    assert_eq!(
        measure["statuses"]["OK"],
        measure["requests"],
        "the other address is served in full: {}",
        String::from_utf8_lossy(&measure_out.stdout)
    );
    assert!(measure_out.status.success());
}

#[test]
fn auth_token_file_opens_every_connection_with_auth() {
    use std::io::Write;
    let tokens_path = json_path("tokens.txt");
    std::fs::File::create(&tokens_path)
        .and_then(|mut f| f.write_all(b"# gateways\nload-token-1\n"))
        .expect("token file");
    let mut config = Config::new(vec![EventSpec {
        id: 1,
        stock: 100,
        per_user_limit: 1,
    }]);
    config.shards = 2;
    config.auth_tokens = Some(ticketd::auth::TokenSet::load(&tokens_path).expect("tokens"));
    let server = ticketd::start(config).expect("server starts");
    let args = ["--conns", "10", "--requests", "500", "--users", "500"];
    let token_arg = tokens_path.display().to_string();
    let json = json_path("auth.json");
    let mut with_token = args.to_vec();
    with_token.extend(["--auth-token-file", &token_arg]);
    let (out, report) = run(&server, &with_token, &json);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(report["sold"], 100);
    assert_eq!(report["statuses"]["SOLD_OUT"], 400);
    // Without it every request is refused, and the run says so.
    let (out, report) = run(&server, &args, &json_path("noauth.json"));
    assert!(!out.status.success());
    let said = format!(
        "{}{}{report}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("UNAUTHORIZED"), "{said}");
}

/// Runs `command` (a shell line) on a pseudo-terminal (`script`), returning all it drew.
fn on_a_terminal(command: &str) -> String {
    let out = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .output()
        .expect("script (util-linux) runs");
    let drawn = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{command}: {drawn}");
    drawn
}

#[test]
fn a_live_line_is_drawn_on_a_terminal_and_nowhere_else() {
    let server = server(1_000_000, 1);
    let addr = server.local_addr();
    // One process, then three worker processes (a 300-file limit), on a terminal: the
    // line shows the answers and their statuses while the run goes.
    for (limits, conns, seed) in [("", 10, 11), ("ulimit -n 300 && ", 450, 12)] {
        let drawn = on_a_terminal(&format!(
            "{limits}{LOADGEN} --addr {addr} --threads 1 --conns {conns} --rate 4000 --duration 1500ms --no-stock-check --seed {seed}"
        ));
        assert!(drawn.contains("answered "), "{conns} conns: {drawn}");
        assert!(drawn.contains("/s  OK "), "{conns} conns: {drawn}");
    }
    // Piped, as in CI: no line, only the report.
    let out = Command::new(LOADGEN)
        .args([
            "--addr",
            &addr.to_string(),
            "--threads",
            "1",
            "--conns",
            "10",
        ])
        .args(["--rate", "4000", "--duration", "1s", "--no-stock-check"])
        .args(["--seed", "13"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let everything = [out.stdout, out.stderr].concat();
    let text = String::from_utf8_lossy(&everything);
    assert!(!text.contains("/s  "), "{text}");
    assert!(!text.contains('\r'), "{text}");
}
