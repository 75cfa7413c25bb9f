//! The one line a node logs when it has started: its mode, where it listens, its cores,
//! its events and its limits, in words.

use std::net::SocketAddr;
use std::path::Path;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::journal;
use crate::redis_ledger::flavor::Flavor;
use core_affinity::CoreId;

/// What the start-up line reports.
pub(super) struct Started<'a> {
    pub config: &'a Config,
    pub catalog: &'a Catalog,
    pub plan: &'a [Option<CoreId>],
    pub local_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub data_dir: Option<&'a Path>,
    pub flavor: Option<&'a Flavor>,
}

pub(super) fn log_started(started: &Started<'_>) {
    let &Started {
        config,
        catalog,
        plan,
        local_addr,
        http_addr,
        admin_addr,
        data_dir,
        flavor,
    } = started;
    let shards = config.shards;
    let cores: Vec<String> = plan
        .iter()
        .map(|c| c.map_or_else(|| "unpinned".to_owned(), |c| c.id.to_string()))
        .collect();
    let off = || "off".to_owned();
    let mode = match (&config.redis, data_dir) {
        (Some(redis), _) => format!(
            "ledger mode: Redis at {} ({}), node {}, gates sized to weight {} of {}",
            redis.addr,
            match flavor {
                Some(Flavor::Scripts { .. }) => "scripts",
                _ => "functions",
            },
            config.node_id,
            redis.share.weight,
            redis.share.total_weight
        ),
        (None, Some(dir)) => format!(
            "embedded ledger journaled in {} (fsync {})",
            dir.display(),
            config.journal.as_ref().map_or("always", |j| match j.fsync {
                journal::FsyncMode::Always => "always",
                journal::FsyncMode::Batch => "batch",
                journal::FsyncMode::Off => "off",
            })
        ),
        (None, None) => "embedded ledger in memory only (no journal)".to_owned(),
    };
    let events: Vec<String> = catalog
        .iter()
        .map(|e| {
            format!(
                "event {} ({} {}, {} per user)",
                e.id,
                e.stock.total(),
                if config.redis.is_some() {
                    "in this node's gate"
                } else {
                    "tickets"
                },
                e.per_user_limit
            )
        })
        .collect();
    tracing::info!(
        addr = %local_addr,
        http = %http_addr.map_or_else(off, |a| a.to_string()),
        admin = %admin_addr.map_or_else(off, |a| a.to_string()),
        shards,
        cores = %cores.join(","),
        max_conns = config.max_conns,
        "ticketd started: {mode}; binary protocol on {local_addr}{}{}; {shards} shard(s) on core(s) {}; {}; up to {} connections, frames up to {} bytes, holds last {}",
        http_addr.map_or_else(String::new, |a| format!(", HTTP on {a}")),
        admin_addr.map_or_else(String::new, |a| format!(", metrics and health on {a}")),
        cores.join(", "),
        if events.is_empty() { "no events yet".to_owned() } else { events.join(", ") },
        config.max_conns,
        config.max_frame,
        humantime::format_duration(config.hold_ttl),
    );
}
