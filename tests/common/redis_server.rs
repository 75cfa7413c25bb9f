//! A real redis-server for tests: a private loopback port, a temp dir, killed by PID.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Connection;

pub struct RedisServer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
    /// AOF with fsync on every write: acknowledged writes survive a crash.
    durable: bool,
    /// `requirepass`, when the server needs a login.
    password: Option<String>,
}

impl RedisServer {
    /// Starts redis-server on a free port and loads ticketd's Function library.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Like [`RedisServer::start`], with `appendonly yes` and `appendfsync always`.
    pub fn start_durable() -> RedisServer {
        Self::start_with(true)
    }

    /// A server that requires `password` (`requirepass`), and knows an ACL user
    /// `alice` with password `wonderland`.
    pub fn start_secured(password: &str) -> RedisServer {
        let server = Self::spawn_server(false, Some(password.to_owned()));
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("alice")
            .arg("on")
            .arg(">wonderland")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query::<String>(&mut server.client())
            .expect("ACL SETUSER");
        server
    }

    fn start_with(durable: bool) -> RedisServer {
        let server = Self::spawn_server(durable, None);
        let mut c = server.client();
        ticketd::redis_ledger::load_functions()
            .query::<String>(&mut c)
            .expect("FUNCTION LOAD");
        server
    }

    fn spawn_server(durable: bool, password: Option<String>) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!("ticketd-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = spawn(port, &dir, durable, password.as_deref());
        let server = RedisServer {
            child,
            dir,
            port,
            durable,
            password,
        };
        server.wait_until_up();
        server
    }

    /// Kills the server (as a crash would) and starts it again on the same port and
    /// directory: a durable one reloads its AOF; either way the Function library must be
    /// reloaded by whoever connects (functions are saved only with the data).
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(self.port, &self.dir, self.durable, self.password.as_deref());
        self.wait_until_up();
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: it keeps accepting connections
    /// in the kernel but answers nothing while frozen.
    pub fn freeze(&self, frozen: bool) {
        if frozen {
            super::freeze(self.child.id());
        } else {
            super::signal(self.child.id(), "-CONT");
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn try_client(&self) -> redis::RedisResult<Connection> {
        let auth = self
            .password
            .as_ref()
            .map_or_else(String::new, |p| format!(":{p}@"));
        redis::Client::open(format!("redis://{auth}127.0.0.1:{}/", self.port))?.get_connection()
    }

    pub fn client(&self) -> Connection {
        self.try_client().expect("connect to redis")
    }

    /// The ledger's sold count for `event`.
    pub fn ledger_sold(&self, event: u32) -> i64 {
        redis::cmd("HGET")
            .arg(ticketd::redis_ledger::EventKeys::new(event).meta())
            .arg("sold")
            .query(&mut self.client())
            .unwrap()
    }

    /// The order ids in `event`'s outbox stream.
    pub fn outbox_order_ids(&self, event: u32) -> std::collections::HashSet<u64> {
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(ticketd::redis_ledger::EventKeys::new(event).orders())
            .arg("-")
            .arg("+")
            .query(&mut self.client())
            .unwrap();
        entries
            .iter()
            .flat_map(|(_, fields)| ticketd::redis_ledger::outbox_orders(fields).unwrap())
            .map(|order| order.order_id)
            .collect()
    }

    /// Creates `events` with `hold_ttl`, as `ticketd create-events` does (an event that
    /// exists must match).
    pub fn create_events(&self, events: &[ticketd::EventSpec], hold_ttl: Duration) {
        ticketd::redis_ledger::setup::create_events(
            &ticketd::config::RedisConfig::new(self.addr()),
            events,
            hold_ttl,
            ticketd::redis_ledger::setup::Existing::Keep,
        )
        .expect("create the events");
    }

    /// A ledger-mode configuration for a node of `nodes` on this Redis. The events must
    /// have been created (a node never creates one).
    pub fn node_config(
        &self,
        node_id: u16,
        nodes: u32,
        events: &[ticketd::EventSpec],
    ) -> ticketd::Config {
        let mut config = ticketd::Config::new(events.to_vec());
        config.shards = 2;
        config.node_id = node_id;
        config.redis = Some(ticketd::config::RedisConfig {
            share: ticketd::config::Share::equal(nodes),
            timeout: Duration::from_millis(300),
            ..ticketd::config::RedisConfig::new(self.addr())
        });
        config
    }

    /// Bounded wait for it to answer PING: it is another process, not ours to signal.
    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.try_client() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn spawn(port: u16, dir: &PathBuf, durable: bool, password: Option<&str>) -> Child {
    let aof: &[&str] = if durable {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no"]
    };
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(aof)
        .args(password.map(|p| ["--requirepass", p]).into_iter().flatten())
        .args(["--daemonize", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (make test installs it)")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
