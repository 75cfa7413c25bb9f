//! A real Prometheus (Debian's package, on a private port with its own data dir) scrapes
//! a ticketd process while loadgen rushes it; what Prometheus stored agrees exactly with
//! what loadgen saw: requests by status, tickets sold and remaining.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::cluster::loadgen;
use common::{logged_addr, TicketdProcess};

const STOCK: u64 = 3_000;
const REQUESTS: u64 = 5_000;

/// Prometheus, stopped by PID when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n  - job_name: ticketd\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus runs (make test installs Debian's package)");
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(addr, "/-/ready").map(|(code, _)| code) != Some(200) {
            assert!(Instant::now() < deadline, "prometheus never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// One instant query: every series's labels and value.
    fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) =
            get(self.addr, &format!("/api/v1/query?query={encoded}")).expect("prometheus answers");
        assert_eq!(code, 200, "{promql}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|series| {
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (series["metric"].clone(), value)
            })
            .collect()
    }

    /// Waits for a scrape of the node later than `unix` seconds; returns its time.
    fn scrape_after(&self, unix: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let scraped = self.query("timestamp(ticketd_ready)");
            if let Some(&(_, at)) = scraped.first().filter(|(_, at)| *at > unix) {
                return at;
            }
            assert!(
                Instant::now() < deadline,
                "no scrape after {unix}: {scraped:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn one(&self, promql: &str) -> f64 {
        match self.query(promql).as_slice() {
            [(_, value)] => *value,
            other => panic!("{promql}: expected one series, got {other:?}"),
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut all = String::new();
    stream.read_to_string(&mut all).ok()?;
    let code = all.split(' ').nth(1)?.parse().ok()?;
    let body = all.split("\r\n\r\n").nth(1).unwrap_or_default();
    // Prometheus answers chunked: the JSON is on the line between the chunk sizes.
    let body = body
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or(body)
        .to_owned();
    Some((code, body))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn prometheus_scrapes_exactly_what_loadgen_saw() {
    let node = TicketdProcess::spawn(&[
        "--event".into(),
        format!("1:{STOCK}"),
        "--admin".into(),
        "127.0.0.1:0".into(),
        "--shards".into(),
        "2".into(),
    ]);
    let admin = logged_addr(&node.log_text(), "admin");
    let prometheus = Prometheus::start(admin);

    let report_path = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(loadgen())
        .args(["--addr", &node.addr.to_string()])
        .args(["--conns", "20", "--depth", "4", "--threads", "1"])
        .args(["--requests", &REQUESTS.to_string()])
        .arg("--json")
        .arg(report_path.path())
        .output()
        .expect("loadgen runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let finished = unix_now();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_path.path()).unwrap()).unwrap();
    let statuses = report["statuses"].as_object().expect("statuses").clone();
    let ok = statuses.get("OK").and_then(|v| v.as_u64()).unwrap_or(0);
    assert_eq!(ok, STOCK, "loadgen sold out the event: {report}");

    // Wait for two scrapes taken after the run ended: the figures are final, and every
    // series has the two samples a rate needs (the run may fit between two scrapes).
    let first_after = prometheus.scrape_after(finished);
    prometheus.scrape_after(first_after);

    let mut seen = 0;
    for (status, count) in &statuses {
        let count = count.as_u64().unwrap();
        if count == 0 {
            continue;
        }
        seen += count;
        let query = format!(r#"ticketd_requests_total{{op="BUY",status="{status}"}}"#);
        assert_eq!(prometheus.one(&query), count as f64, "{query}");
    }
    assert_eq!(seen, REQUESTS, "loadgen saw every answer");
    assert_eq!(
        prometheus.one(r#"sum(ticketd_requests_total{op="BUY"})"#),
        REQUESTS as f64
    );
    assert_eq!(
        prometheus.one(r#"ticketd_event_sold_tickets{event="1"}"#),
        ok as f64
    );
    assert_eq!(
        prometheus.one(r#"ticketd_event_remaining_tickets{event="1"}"#),
        (STOCK - ok) as f64
    );
    assert_eq!(prometheus.one("ticketd_sold_tickets_total"), ok as f64);
    assert_eq!(
        prometheus.one("sum(ticketd_decisions_total)"),
        prometheus.one("sum(ticketd_requests_total)"),
    );
    assert!(prometheus.one("ticketd_journal_sync_duration_seconds_count") >= 1.0);
    assert_eq!(prometheus.one("up"), 1.0);

    // Every query of the Grafana dashboard in docs/ is valid PromQL over these metrics,
    // and those about an embedded node find data.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../docs/grafana/ticketd-dashboard.json")).unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let expr = expr.replace("$__rate_interval", "1m");
            let result = prometheus.query(&expr);
            let ledger_only = ["redis", "gate", "ledger"].iter().any(|w| expr.contains(w));
            assert_eq!(
                result.is_empty(),
                ledger_only,
                "{expr}: {result:?} (panel {})",
                panel["title"]
            );
            queries += 1;
        }
    }
    assert!(queries >= 4, "the dashboard has its panels");
    node.kill9();
}
