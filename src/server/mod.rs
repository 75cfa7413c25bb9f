//! Starting and stopping a whole node: bind the listeners, build the shard mesh, spawn
//! one pinned thread per shard, and on shutdown collect what each decided.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::{Poll, Waker};

use crate::admin::{Admin, AdminViews};
use crate::catalog::Catalog;
use crate::clock::WallClock;
use crate::config::AdminAddr;
use crate::config::{Config, RedisConfig};
use crate::journal::{self, JournalError};
use crate::listener;
use crate::metrics::{LedgerProbe, NodeMetrics};
use crate::placement;
use crate::readiness::Readiness;
use crate::redis_ledger::flavor::Flavor;
use crate::redis_ledger::setup;
use crate::shard::mailbox::{Mailbox, Peer};
use crate::shard::{
    self, HoldRoutes, Shard, ShardParts, ShardReport, ShardSettings, ShutdownSignal,
};
use crate::stats::NodeStats;
use crate::summary::Summary;

mod banner;
mod embedded;
mod ledger_mode;

use embedded::{available_stock, open_journal, specs_of};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{addr} is already served by another process (another ticketd?); stop it, choose another --listen, or pass --share-port to serve one port from several processes on purpose")]
    PortInUse { addr: SocketAddr },
    #[error("cannot create the event loop of shard {shard}: {source}")]
    Poll { shard: usize, source: io::Error },
    #[error("cannot prepare the ledger: {0}")]
    Ledger(#[from] setup::LedgerError),
    #[error("cannot spawn the thread of shard {shard}: {source}")]
    Spawn { shard: usize, source: io::Error },
    #[error("cannot use the data dir: {0}")]
    Journal(#[from] JournalError),
    #[error("the journal sold and holds {taken} tickets of event {event}, more than its total {total}; it contradicts itself, restore the data dir from a backup")]
    Oversold { event: u32, total: i64, taken: i64 },
}

/// A running node. Dropping it shuts the node down and waits for its threads.
pub struct ServerHandle {
    local_addr: SocketAddr,
    /// `--admin`: /healthz and /readyz.
    admin: Option<Admin>,
    /// Ledger mode: where the figures of the final summary come from.
    redis: Option<(RedisConfig, Flavor)>,
    http_addr: Option<SocketAddr>,
    catalog: Arc<Catalog>,
    shutdown: Arc<ShutdownSignal>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<ShardReport>>,
    /// Held (with its lock) until the shards have stopped.
    _data_dir: Option<journal::store::DataDir>,
    /// `--share-port`: this node id's claim on the port.
    _node_lock: Option<std::fs::File>,
}

/// Starts a node. When this returns, every listener is bound and accepting (queued in
/// the kernel until its shard polls), so clients may connect at once.
pub fn start(config: Config) -> Result<ServerHandle, StartError> {
    config.validate()?;
    if config.huge_pages {
        crate::memory::huge::enable();
    }
    let shards = config.shards;
    let clock = WallClock::now();
    // The embedded ledger recovers from its journal first: the events and what is
    // left of their stock come from there.
    let opened = match (&config.journal, &config.redis) {
        (Some(journal_config), None) => Some((
            open_journal(journal_config, &config, clock)?,
            journal_config.clone(),
        )),
        _ => None,
    };
    // Ledger mode: Redis holds the totals; each shard's slices become this node's gate.
    let (catalog_events, remote, missing) = match &config.redis {
        None => (
            opened
                .as_ref()
                .map_or_else(|| config.events.clone(), |(o, _)| specs_of(&o.events)),
            None,
            Vec::new(),
        ),
        Some(redis) => {
            let (gates, settings, missing) = ledger_mode::prepare(redis, &config)?;
            (gates, Some(settings), missing)
        }
    };
    let catalog = match &opened {
        Some((opened, _)) => {
            let available = available_stock(&catalog_events, &opened.state)?;
            Arc::new(Catalog::partly_taken(&catalog_events, &available, shards))
        }
        None => Arc::new(Catalog::new(&catalog_events, shards)),
    };
    if !config.share_port && listener::is_served(config.listen) {
        return Err(StartError::PortInUse {
            addr: config.listen,
        });
    }
    let node_lock = match config.share_port {
        true => listener::claim_node_on_port(config.listen.port(), config.node_id).map_err(
            |source| StartError::Listen {
                addr: config.listen,
                source,
            },
        )?,
        false => None,
    };
    let listeners =
        listener::bind_group(config.listen, shards).map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listeners
        .first()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?
        .unwrap_or(config.listen);

    let http_listeners: Vec<Option<std::net::TcpListener>> = match config.http {
        Some(addr) => listener::bind_group(addr, shards)
            .map_err(|source| StartError::Listen { addr, source })?
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..shards).map(|_| None).collect(),
    };
    let http_addr = match http_listeners.first() {
        Some(Some(l)) => Some(l.local_addr().map_err(|source| StartError::Listen {
            addr: config.http.unwrap_or(config.listen),
            source,
        })?),
        _ => None,
    };
    let stats = Arc::new(NodeStats::new(shards, catalog.len()));
    let fail_stop = Arc::new(AtomicBool::new(false));
    let readiness = Arc::new(
        Readiness::new(
            catalog.iter().map(|e| e.id).collect(),
            shards,
            config.redis.is_some(),
        )
        .with_fail_stop(Arc::clone(&fail_stop)),
    );
    for (event, &missing) in missing.iter().enumerate() {
        for shard in 0..shards {
            readiness.set_missing(event, shard, missing);
        }
    }
    let admin = match config.admin.addr() {
        Some(addr) => {
            let started = std::net::TcpListener::bind(addr).and_then(|l| {
                let views = AdminViews {
                    readiness: Arc::clone(&readiness),
                    stats: Arc::clone(&stats),
                    metrics: NodeMetrics::new(
                        Arc::clone(&stats),
                        Arc::clone(&catalog),
                        Arc::clone(&readiness),
                        config.node_id,
                        remote
                            .as_ref()
                            .map(|r| LedgerProbe::new(r.addr, r.login.clone(), r.flavor.clone())),
                    ),
                    node_id: config.node_id,
                };
                Admin::start(l, views)
            });
            match (started, config.admin) {
                (Ok(admin), _) => Some(admin),
                // Not asked for by name: a second node on this machine still starts.
                (Err(e), AdminAddr::Default(_)) => {
                    tracing::warn!(
                        %addr,
                        error = %e,
                        "admin endpoint (metrics, health) not started: its default address \
                         is taken; give --admin HOST:PORT, or --admin off to silence this"
                    );
                    None
                }
                (Err(source), _) => return Err(StartError::Listen { addr, source }),
            }
        }
        None => None,
    };

    let mut polls = Vec::with_capacity(shards);
    let mut peers = Vec::with_capacity(shards);
    let mut inboxes = Vec::with_capacity(shards);
    for shard in 0..shards {
        let poll = Poll::new().map_err(|source| StartError::Poll { shard, source })?;
        let waker = shard::waker_for(&poll).map_err(|source| StartError::Poll { shard, source })?;
        let (sender, inbox) = crossbeam_channel::unbounded();
        peers.push(Peer { sender, waker });
        inboxes.push(inbox);
        polls.push(poll);
    }
    let peers: Arc<[Peer]> = peers.into();
    let shutdown = Arc::new(ShutdownSignal::default());
    let (data_dir, mut shard_journals, hold_routes) = match opened {
        Some((opened, journal_config)) => {
            let (dir, journals, routes) = embedded::spawn_writers(
                opened,
                &journal_config,
                &config,
                &peers,
                &fail_stop,
                clock,
                &stats,
            )?;
            (Some(dir), journals, Arc::new(routes))
        }
        None => (
            None,
            (0..shards).map(|_| None).collect(),
            Arc::new(HoldRoutes::default()),
        ),
    };
    let plan = placement::plan(shards);
    let conns = Arc::new(crate::shard::budget::ConnBudget::new(config.max_conns));
    let conns_per_ip = config
        .max_conns_per_ip
        .map(|max| Arc::new(crate::shard::admission::ConnsPerIp::new(max)));

    let mut threads = Vec::with_capacity(shards);
    // Each shard says when it is ready to serve (its tables mapped and faulted in), and
    // the start-up line waits for all of them: before it, a client that connected got
    // nothing until the shard's tables were in, and the line came before the shards' own.
    let (ready, all_ready) = std::sync::mpsc::channel::<()>();
    let parts = polls
        .into_iter()
        .zip(inboxes)
        .zip(listeners.into_iter().zip(http_listeners))
        .enumerate();
    for (index, ((poll, inbox), (listener, http_listener))) in parts {
        let core = plan.get(index).copied().flatten();
        let parts = ShardParts {
            settings: ShardSettings {
                index,
                shards,
                node_id: config.node_id,
                max_frame: config.max_frame,
                http_anonymous: config.http_anonymous,
                readiness: Arc::clone(&readiness),
                conns: Arc::clone(&conns),
                hold_ttl: config.hold_ttl,
                remote: remote.clone(),
                fail_stop: Arc::clone(&fail_stop),
                hold_routes: Arc::clone(&hold_routes),
                counters: stats.shard(index),
                auth: config.auth_tokens.clone(),
                timeouts: config.timeouts,
                conns_per_ip: conns_per_ip.clone(),
                rate_per_ip: config.rate_per_ip,
                http_links: config.http_links.clone(),
                pass_budget: config.pass_budget,
            },
            poll,
            listener,
            http_listener,
            mailbox: Mailbox {
                inbox,
                peers: Arc::clone(&peers),
            },
            catalog: Arc::clone(&catalog),
            shutdown: Arc::clone(&shutdown),
            journal: shard_journals.get_mut(index).and_then(Option::take),
        };
        let ready = ShardReady(ready.clone());
        let thread = std::thread::Builder::new()
            .name(format!("ticketd-shard-{index}"))
            .spawn(move || {
                // Pin first, so everything the shard allocates is touched from its core.
                if !placement::pin_current_thread(core) {
                    tracing::warn!(shard = index, "could not pin to a core; running unpinned");
                }
                // Its presized tables are faulted in now, before the sale.
                let (shard, populated) = crate::memory::prefault::populating(|| Shard::new(parts));
                if populated > 0 {
                    tracing::debug!(
                        shard = index,
                        mib = populated >> 20,
                        "tables faulted in before the sale"
                    );
                }
                crate::memory::huge::report_start(index);
                drop(ready);
                match shard {
                    Ok(shard) => shard.run(),
                    Err(e) => panic!("shard {index} could not start: {e}"),
                }
            })
            .map_err(|source| StartError::Spawn {
                shard: index,
                source,
            })?;
        threads.push(thread);
    }
    drop(ready);
    for _ in 0..shards {
        // An error: every shard has said so or is gone (a shard that could not start
        // takes the process down by its panic).
        if all_ready.recv().is_err() {
            break;
        }
    }

    banner::log_started(&banner::Started {
        config: &config,
        catalog: &catalog,
        plan: &plan,
        local_addr,
        http_addr,
        admin_addr: admin.as_ref().map(Admin::addr),
        data_dir: data_dir.as_ref().map(|d| d.path()),
        flavor: remote.as_ref().map(|r| &r.flavor),
    });
    Ok(ServerHandle {
        local_addr,
        admin,
        redis: config
            .redis
            .clone()
            .zip(remote.as_ref().map(|r| r.flavor.clone())),
        http_addr,
        catalog,
        shutdown,
        wakers: peers.iter().map(|p| Arc::clone(&p.waker)).collect(),
        threads,
        _data_dir: data_dir,
        _node_lock: node_lock,
    })
}

impl ServerHandle {
    /// The address the listeners are bound to (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin endpoint's address, when `--admin` was given.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::addr)
    }

    /// The HTTP endpoint's address, when `--http` was given.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Live view of an event's stock: (total, remaining).
    pub fn stock(&self, event_id: u32) -> Option<(i64, i64)> {
        let index = self.catalog.index_of(event_id)?;
        let stock = &self.catalog.get(index).stock;
        Some((stock.total(), stock.remaining()))
    }

    /// Stops accepting, answers what was already read, waits for every shard and
    /// returns what the node sold.
    pub fn shutdown(mut self) -> Summary {
        self.stop_and_collect()
    }

    fn stop_and_collect(&mut self) -> Summary {
        self.shutdown.request();
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        let reports: Vec<ShardReport> = self
            .threads
            .drain(..)
            .filter_map(|thread| thread.join().ok())
            .collect();
        let mut summary = Summary::collect(&self.catalog, &reports);
        if let Some((redis, flavor)) = &self.redis {
            let ids: Vec<u32> = self.catalog.iter().map(|e| e.id).collect();
            match setup::snapshot(redis, flavor, &ids) {
                Ok(views) => summary.use_ledger_view(&views),
                Err(e) => {
                    tracing::warn!(error = %e, "summary shows this node's gate, not the ledger")
                }
            }
        }
        summary
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_and_collect();
        }
    }
}

/// A shard thread's word that it is ready to serve, given when dropped: after its
/// tables are in, or as its thread unwinds from a failed start, so the start-up line
/// never waits for a shard that will not come.
struct ShardReady(std::sync::mpsc::Sender<()>);

impl Drop for ShardReady {
    fn drop(&mut self) {
        // The receiver is gone only once start-up has stopped waiting.
        let _ = self.0.send(());
    }
}
