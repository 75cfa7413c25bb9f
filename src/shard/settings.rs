//! What a shard is given at start: its place among the shards, the node's flags that
//! shape its answers, and the node-wide handles it shares with the others. Built once
//! per shard by the server and shared (one `Arc`) by the loop, its connections and its
//! dispatcher, so no setting is copied into another struct that could disagree.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::admission::ConnsPerIp;
use super::budget::ConnBudget;
use super::remote::RemoteSettings;
use crossbeam_utils::CachePadded;

use crate::auth::TokenSet;
use crate::limits::Timeouts;
use crate::readiness::Readiness;
use crate::signed_links::LinkSigner;
use crate::stats::{ShardCounters, ShardMeter};

/// Holds recovered from the journal whose owner is not the shard their id names (the
/// shard count changed across a restart): hold id -> owning shard. Read-only.
pub type HoldRoutes = HashMap<u64, usize, ahash::RandomState>;

#[derive(Debug)]
pub struct ShardSettings {
    pub index: usize,
    pub shards: usize,
    pub node_id: u16,
    pub max_frame: u32,
    pub hold_ttl: Duration,
    /// `--http-anonymous`: an HTTP BUY without `user=` is a fresh anonymous buyer
    /// (benchmarks). Off, it is refused (one client could otherwise empty a limit-1
    /// event alone).
    pub http_anonymous: bool,
    /// `--redis`: decide through the global ledger.
    pub remote: Option<RemoteSettings>,
    /// What `/readyz` reports; the shard writes what it learns.
    pub readiness: Arc<Readiness>,
    /// `--max-conns`, shared by every shard of the node.
    pub conns: Arc<ConnBudget>,
    /// Raised node-wide when a journal write fails: nothing is sold until a restart.
    pub fail_stop: Arc<AtomicBool>,
    /// Holds recovered onto a shard other than the one their id names.
    pub hold_routes: Arc<HoldRoutes>,
    /// This shard's counters (the admin endpoint sums every shard's); only this
    /// shard's thread writes them.
    pub counters: ShardMeter,
    /// `--auth-token-file`: binary connections must AUTH first.
    pub auth: Option<TokenSet>,
    /// How long a connection may sit in each state.
    pub timeouts: Timeouts,
    /// `--max-conns-per-ip`, shared by every shard of the node.
    pub conns_per_ip: Option<Arc<ConnsPerIp>>,
    /// `--rate-per-ip`: requests a second per source address, for the node.
    pub rate_per_ip: Option<f64>,
    /// `--http-secret`: the HTTP front sells only to signed links.
    pub http_links: Option<LinkSigner>,
    /// `--pass-budget`: a loop pass's time for reading and writing connections.
    pub pass_budget: Duration,
}

impl ShardSettings {
    /// One shard of `shards` on its own, embedded, with no connection limit: for
    /// benches and tests that drive a dispatcher without a server.
    pub fn standalone(index: usize, shards: usize, node_id: u16, max_frame: u32) -> Self {
        ShardSettings {
            index,
            shards,
            node_id,
            max_frame,
            hold_ttl: Duration::from_secs(900),
            http_anonymous: false,
            remote: None,
            readiness: Arc::new(Readiness::new(Vec::new(), shards, false)),
            conns: Arc::new(ConnBudget::new(usize::MAX)),
            fail_stop: Arc::default(),
            hold_routes: Arc::default(),
            counters: Arc::new(CachePadded::new(ShardCounters::new(0))),
            auth: None,
            timeouts: Timeouts::NONE,
            conns_per_ip: None,
            rate_per_ip: None,
            http_links: None,
            pass_budget: super::pass_clock::DEFAULT_PASS_BUDGET,
        }
    }
}
