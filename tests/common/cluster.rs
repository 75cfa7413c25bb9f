//! A whole cluster for a test: `scripts/cluster.sh up` with this build's ticketd, in a
//! temp dir, with names and addresses of its own (network namespaces when the machine
//! allows, 127.x.y.z otherwise), torn down by `scripts/cluster.sh down` on drop.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;

use super::Client;

/// Cluster tests run one at a time: each is four nodes, nginx and Redis on two cores.
pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");

pub struct Cluster {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    prefix: String,
    pub event: u32,
}

/// The loadgen binary beside this build's ticketd, built if `cargo test` did not.
pub fn loadgen() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_ticketd")).with_file_name("loadgen");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "loadgen", "--bin", "loadgen"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "loadgen builds");
    }
    path
}

fn checked(output: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

impl Cluster {
    /// Brings a cluster up: `slot` picks its names and addresses (0..=200), `event` is
    /// `ID:STOCK[:LIMIT]`, weights 1:2:3:4.
    pub fn up(slot: u8, event: &str, extra_env: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut env: Vec<(String, String)> = vec![
            (
                "CLUSTER_DIR".into(),
                dir.path().join("cluster").display().to_string(),
            ),
            ("CLUSTER_PREFIX".into(), format!("tkt{slot}")),
            ("CLUSTER_SUBNET".into(), format!("10.78.{slot}")),
            ("CLUSTER_LOOPBACK".into(), format!("127.78.{slot}")),
            ("CLUSTER_EVENT".into(), event.into()),
            ("TICKETD".into(), env!("CARGO_BIN_EXE_ticketd").into()),
        ];
        env.extend(extra_env.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())));
        let cluster = Cluster {
            dir,
            env,
            prefix: format!("tkt{slot}"),
            event: event
                .split(':')
                .next()
                .and_then(|id| id.parse().ok())
                .expect("an event id"),
        };
        let out = cluster.command(&["up"]).output().expect("cluster.sh runs");
        checked(out, "cluster up");
        cluster
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("bash");
        command.arg(SCRIPT).args(args);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }

    /// Runs `scripts/cluster.sh ARGS`; panics on failure.
    pub fn sh(&self, args: &[&str]) -> String {
        checked(
            self.command(args).output().expect("cluster.sh runs"),
            "cluster.sh",
        )
    }

    pub fn netns(&self) -> bool {
        self.sh(&["topology"]).trim() == "netns"
    }

    pub fn front(&self) -> String {
        self.sh(&["front-addr"]).trim().to_owned()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// loadgen against the binary front, where the front is reachable, writing its JSON
    /// report and the orders it saw into the temp dir (`name`.json, `name`.orders).
    pub fn loadgen(&self, name: &str, args: &[&str]) -> Command {
        let json = self.path(&format!("{name}.json")).display().to_string();
        let orders = self.path(&format!("{name}.orders")).display().to_string();
        let mut command = self.command(&["exec"]);
        command
            .arg(loadgen())
            .args(["--addr", &self.front(), "--shared-ledger", "--reconnect"])
            .args(["--json", &json, "--orders-file", &orders])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    pub fn spawn_loadgen(&self, name: &str, args: &[&str]) -> Child {
        self.loadgen(name, args).spawn().expect("loadgen starts")
    }

    /// The JSON report and the (order id, user) pairs a loadgen run wrote.
    pub fn results(&self, name: &str) -> (serde_json::Value, Vec<(u64, u64)>) {
        let json = std::fs::read_to_string(self.path(&format!("{name}.json")))
            .expect("loadgen wrote its report");
        let orders = std::fs::read_to_string(self.path(&format!("{name}.orders")))
            .expect("loadgen wrote its orders");
        let orders = orders
            .lines()
            .filter_map(|line| {
                let (id, user) = line.split_once(' ')?;
                let id = u64::from_str_radix(id.trim_start_matches("0x"), 16).ok()?;
                Some((id, user.parse().ok()?))
            })
            .collect();
        (serde_json::from_str(&json).expect("a JSON report"), orders)
    }

    /// The ledger's orders stream: order id -> the node that sold it (each entry is one
    /// ledger call: its node, then its orders `order_id:user:qty,…`).
    pub fn stream_orders(&self) -> HashMap<u64, u16> {
        let key = format!("{{ev:{}}}:orders", self.event);
        let raw = self.sh(&["redis", "--raw", "XRANGE", &key, "-", "+"]);
        let mut orders = HashMap::new();
        let (mut node, mut last) = (None, "");
        for line in raw.lines() {
            match last {
                "node" => node = line.parse().ok(),
                "orders" => {
                    for made in line.split(',') {
                        if let (Some(id), Some(n)) =
                            (made.split(':').next().and_then(|i| i.parse().ok()), node)
                        {
                            orders.insert(id, n);
                        }
                    }
                }
                _ => {}
            }
            last = line;
        }
        orders
    }

    /// Tickets sold so far, as the ledger counts them.
    pub fn stream_len(&self) -> u64 {
        u64::try_from(self.ledger_field("sold")).unwrap_or(0)
    }

    /// A field of the event's record in the ledger (total, sold, held, …).
    pub fn ledger_field(&self, field: &str) -> i64 {
        let key = format!("{{ev:{}}}:meta", self.event);
        self.sh(&["redis", "HGET", &key, field])
            .trim()
            .parse()
            .unwrap_or(-1)
    }

    pub fn node_addr(&self, node: u8) -> SocketAddr {
        self.sh(&["node-addr", &node.to_string()])
            .trim()
            .parse()
            .expect("a node address")
    }

    /// `GET path` on node `node`'s admin endpoint: (status, body).
    pub fn node_get(&self, node: u8, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let addr: SocketAddr = self
            .sh(&["node-admin", &node.to_string()])
            .trim()
            .parse()
            .expect("an admin address");
        let mut stream = self.connect(addr);
        stream
            .set_read_timeout(Some(super::IO_TIMEOUT))
            .expect("timeout");
        let _ = write!(stream, "GET {path} HTTP/1.0\r\n\r\n");
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (code, body.to_owned())
    }

    /// What a part logged (`node-1`, `redis`, `nginx-error`, …).
    pub fn log(&self, name: &str) -> String {
        self.sh(&["log", name])
    }

    fn connect(&self, addr: SocketAddr) -> TcpStream {
        if self.netns() {
            connect_in_namespace(&format!("{}-lb", self.prefix), addr)
        } else {
            TcpStream::connect(addr).expect("connect")
        }
    }

    /// A blocking client connected straight to node `node` (from inside the front's
    /// namespace when the cluster has namespaces).
    pub fn client_of(&self, node: u8) -> Client {
        Client::from_stream(self.connect(self.node_addr(node)))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What each part said, for whoever reads the failed test's output.
            for part in [
                "node-1",
                "node-2",
                "node-3",
                "node-4",
                "redis",
                "nginx-error",
            ] {
                if let Ok(out) = self.command(&["log", part]).output() {
                    let text = String::from_utf8_lossy(&out.stdout);
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    eprintln!("--- {part} (last lines) ---");
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        let _ = self.command(&["down"]).output();
    }
}

/// Connects from inside network namespace `ns` (made by `ip netns add`): a thread
/// enters it, connects, and the socket stays in it for whoever uses it afterwards.
fn connect_in_namespace(ns: &str, addr: SocketAddr) -> TcpStream {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("the namespace exists");
        // SAFETY: setns on this thread alone, with an open namespace fd; the thread
        // ends right after, so no other code runs in the namespace by surprise.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        TcpStream::connect(addr).expect("connect in the namespace")
    })
    .join()
    .expect("the connecting thread")
}
