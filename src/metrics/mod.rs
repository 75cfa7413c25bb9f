//! `GET /metrics`: the node's counters in the Prometheus / OpenMetrics text format,
//! encoded by the `prometheus-client` crate from one read of every shard's counters
//! ([`crate::stats`]) and of the catalog's stock. Built at scrape time on the admin
//! thread; nothing here runs on a shard.
//!
//! Names follow Prometheus's conventions: counters end in `_total`, durations are
//! histograms in `_seconds`, sizes in `_bytes`. docs/OPERATIONS.md lists every metric.

mod ledger;

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use ticketd_proto::{Op, Status};

pub use ledger::{LedgerFigures, LedgerProbe};

use crate::catalog::Catalog;
use crate::readiness::Readiness;
use crate::stats::histogram::{upper_bound, BUCKETS};
use crate::stats::{HistogramSnapshot, NodeStats, Totals, UNPARSED_OP};

/// The content type of what [`NodeMetrics::render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything `/metrics` reads.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
}

#[derive(Debug)]
struct Sources {
    stats: Arc<NodeStats>,
    catalog: Arc<Catalog>,
    readiness: Arc<Readiness>,
    node_id: u16,
    /// `--redis`: the catalog's stock is this node's gate, not what remains for sale;
    /// what remains is read from Redis at scrape time.
    ledger: Option<LedgerProbe>,
}

impl NodeMetrics {
    pub fn new(
        stats: Arc<NodeStats>,
        catalog: Arc<Catalog>,
        readiness: Arc<Readiness>,
        node_id: u16,
        ledger: Option<LedgerProbe>,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Sources {
            stats,
            catalog,
            readiness,
            node_id,
            ledger,
        }));
        NodeMetrics { registry }
    }

    /// The exposition, ending in `# EOF`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a
        // collector, and an empty answer says so to the scraper.
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: its descriptor, then one sample per label set.
struct Family<'a, 'b> {
    encoder: &'a mut DescriptorEncoder<'b>,
}

impl Family<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, unit: Option<&Unit>, rows: &[(Labels, u64)]) {
        self.write(name, help, unit, MetricType::Counter, rows, |v, e| {
            ConstCounter::new(v).encode(e)
        });
    }

    fn gauge(&mut self, name: &str, help: &str, unit: Option<&Unit>, rows: &[(Labels, i64)]) {
        self.write(name, help, unit, MetricType::Gauge, rows, |v, e| {
            ConstGauge::new(v).encode(e)
        });
    }

    fn gauge_f64(&mut self, name: &str, help: &str, unit: Option<&Unit>, value: f64) {
        self.write(
            name,
            help,
            unit,
            MetricType::Gauge,
            &[(Vec::new(), value)],
            |v, e| ConstGauge::new(v).encode(e),
        );
    }

    fn write<V: Copy>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        kind: MetricType,
        rows: &[(Labels, V)],
        encode: impl Fn(V, prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result,
    ) {
        let Ok(mut metric) = self.encoder.encode_descriptor(name, help, unit, kind) else {
            return;
        };
        if let [(labels, value)] = rows {
            if labels.is_empty() {
                let _ = encode(*value, metric);
                return;
            }
        }
        for (labels, value) in rows {
            if let Ok(sample) = metric.encode_family(labels) {
                let _ = encode(*value, sample);
            }
        }
    }

    /// A histogram of values recorded in `unit_per_value` units each (1e-6 for µs
    /// reported in seconds).
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        snapshot: &HistogramSnapshot,
        scale: f64,
    ) {
        let Ok(mut metric) =
            self.encoder
                .encode_descriptor(name, help, unit, MetricType::Histogram)
        else {
            return;
        };
        let buckets: Vec<(f64, u64)> = snapshot
            .counts
            .iter()
            .enumerate()
            .map(|(bucket, &count)| {
                let bound = if bucket == BUCKETS - 1 {
                    f64::MAX
                } else {
                    upper_bound(bucket) as f64 * scale
                };
                (bound, count)
            })
            .collect();
        let _ = metric.encode_histogram::<NoLabelSet>(
            snapshot.sum as f64 * scale,
            snapshot.count(),
            &buckets,
            None,
        );
    }
}

fn plain(value: u64) -> Vec<(Labels, u64)> {
    vec![(Vec::new(), value)]
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

const MICROS: f64 = 1e-6;

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let t = self.stats.totals();
        let mut f = Family {
            encoder: &mut encoder,
        };
        self.node(&mut f);
        requests(&mut f, &t);
        connections(&mut f, &t);
        self.events(&mut f, &t);
        loop_passes(&mut f, &t);
        if self.ledger.is_some() {
            redis(&mut f, &t);
        } else {
            journal(&mut f, &t);
        }
        Ok(())
    }
}

impl Sources {
    fn node(&self, f: &mut Family<'_, '_>) {
        let mode = if self.ledger.is_some() {
            "redis"
        } else {
            "embedded"
        };
        f.gauge(
            "ticketd_node_info",
            "The node: its id, how it decides, its version (always 1).",
            None,
            &[(
                vec![
                    ("node_id", self.node_id.to_string()),
                    ("ledger", mode.to_owned()),
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                    ("shards", self.stats.shards().to_string()),
                ],
                1,
            )],
        );
        let ready = i64::from(self.readiness.problems().is_empty());
        f.gauge(
            "ticketd_ready",
            "1 when /readyz answers 200: the node can sell everything it was started to.",
            None,
            &[(Vec::new(), ready)],
        );
    }

    fn events(&self, f: &mut Family<'_, '_>, t: &Totals) {
        let event_rows =
            |value: &dyn Fn(usize, &crate::catalog::Event) -> i64| -> Vec<(Labels, i64)> {
                self.catalog
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (vec![("event", e.id.to_string())], value(i, e)))
                    .collect()
            };
        let tally = |i: usize| t.events.get(i).copied().unwrap_or_default();
        if let Some(probe) = &self.ledger {
            self.ledger_figures(f, probe);
            f.gauge(
                "ticketd_event_gate_tickets",
                "Ledger mode: tickets of this node's share it may still send to Redis \
                 without asking (what remains for sale is ticketd_ledger_remaining_tickets).",
                None,
                &event_rows(&|_, e| e.stock.remaining()),
            );
        } else {
            f.gauge(
                "ticketd_event_total_tickets",
                "Tickets the event was started with.",
                None,
                &event_rows(&|_, e| e.stock.total()),
            );
            f.gauge(
                "ticketd_event_remaining_tickets",
                "Tickets still for sale (neither sold nor held).",
                None,
                &event_rows(&|_, e| e.stock.remaining()),
            );
        }
        f.gauge(
            "ticketd_event_sold_tickets",
            "Tickets in orders (ledger mode: orders this node made).",
            None,
            &event_rows(&|i, _| to_i64(tally(i).0)),
        );
        f.gauge(
            "ticketd_event_held_tickets",
            "Tickets in live RESERVE holds (ledger mode: holds this node made).",
            None,
            &event_rows(&|i, _| to_i64(tally(i).1)),
        );
        f.gauge(
            "ticketd_event_orders",
            "Orders made (ledger mode: by this node).",
            None,
            &event_rows(&|i, _| to_i64(tally(i).2)),
        );
    }
}

impl Sources {
    /// Ledger mode: every event's global figures, as Redis has them now.
    fn ledger_figures(&self, f: &mut Family<'_, '_>, probe: &LedgerProbe) {
        let ids: Vec<u32> = self.catalog.iter().map(|e| e.id).collect();
        let read = probe.read(&ids);
        if let Err(e) = &read {
            tracing::warn!(error = %e, "metrics: could not read the events from Redis");
        }
        f.gauge(
            "ticketd_ledger_up",
            "1 when this scrape could read the events from the Redis ledger.",
            None,
            &[(Vec::new(), i64::from(read.is_ok()))],
        );
        let Ok(figures) = read else {
            return;
        };
        let rows = |pick: fn(&LedgerFigures) -> i64| -> Vec<(Labels, i64)> {
            ids.iter()
                .zip(&figures)
                .filter_map(|(id, f)| {
                    f.as_ref()
                        .map(|f| (vec![("event", id.to_string())], pick(f)))
                })
                .collect()
        };
        f.gauge(
            "ticketd_ledger_total_tickets",
            "Ledger mode: the event's total, from Redis at scrape time.",
            None,
            &rows(|f| f.total),
        );
        f.gauge(
            "ticketd_ledger_remaining_tickets",
            "Ledger mode: tickets still for sale over every node, from Redis at scrape time.",
            None,
            &rows(|f| f.remaining),
        );
        f.gauge(
            "ticketd_ledger_held_tickets",
            "Ledger mode: tickets in live holds over every node, from Redis at scrape time.",
            None,
            &rows(|f| f.held),
        );
    }
}

/// The label of an op slot ([`crate::stats::OP_SLOTS`]).
fn op_label(slot: usize) -> String {
    if slot == 0 {
        return UNPARSED_OP.to_owned();
    }
    Op::ALL.get(slot - 1).map_or_else(
        || UNPARSED_OP.to_owned(),
        |op| format!("{op:?}").to_uppercase(),
    )
}

fn requests(f: &mut Family<'_, '_>, t: &Totals) {
    let mut rows = Vec::new();
    for (slot, by_status) in t.requests.iter().enumerate() {
        for (status, &count) in Status::ALL.iter().zip(by_status) {
            // Every op and status that happened; a row at zero would only be noise.
            if count > 0 {
                rows.push((
                    vec![("op", op_label(slot)), ("status", status.name().to_owned())],
                    count,
                ));
            }
        }
    }
    f.counter(
        "ticketd_requests",
        "Answers sent, by request op and status (HTTP buys count as BUY; what never \
         parsed as a request as UNPARSED).",
        None,
        &rows,
    );
    let per_shard: Vec<(Labels, u64)> = t
        .shard_answers
        .iter()
        .enumerate()
        .map(|(shard, &n)| (vec![("shard", shard.to_string())], n))
        .collect();
    f.counter(
        "ticketd_decisions",
        "Answers sent, by the shard that sent them.",
        None,
        &per_shard,
    );
    f.counter(
        "ticketd_sold_tickets",
        "Tickets in orders this node made (BUY and CONFIRM).",
        None,
        &plain(t.sold),
    );
    f.counter(
        "ticketd_unavailable_answers",
        "Requests answered UNAVAILABLE because the ledger could not be reached or \
         the journal failed.",
        None,
        &plain(t.unavailable),
    );
}

fn connections(f: &mut Family<'_, '_>, t: &Totals) {
    f.gauge(
        "ticketd_connections_open",
        "Client connections held now (binary and HTTP, shed ones included).",
        None,
        &[(Vec::new(), to_i64(t.connections_open))],
    );
    f.counter(
        "ticketd_connections_accepted",
        "Client connections taken to be served.",
        None,
        &plain(t.accepted),
    );
    f.counter(
        "ticketd_connections_refused",
        "Client connections shed (OVERLOADED or closed unanswered), by the limit that \
         was full.",
        None,
        &[
            (
                vec![("reason", "max_conns".to_owned())],
                t.refused_max_conns,
            ),
            (vec![("reason", "per_ip".to_owned())], t.refused_per_ip),
        ],
    );
    f.counter(
        "ticketd_connections_timed_out",
        "Client connections closed by a time limit, by which.",
        None,
        &[
            (vec![("reason", "header".to_owned())], t.header_timeouts),
            (vec![("reason", "idle".to_owned())], t.idle_closes),
            (vec![("reason", "write".to_owned())], t.write_timeouts),
        ],
    );
}

fn loop_passes(f: &mut Family<'_, '_>, t: &Totals) {
    f.histogram(
        "ticketd_loop_pass_duration",
        "How long one pass of a shard's event loop took (a stop-the-world pass shows \
         in the top buckets).",
        Some(&Unit::Seconds),
        &t.passes_us,
        MICROS,
    );
    f.gauge_f64(
        "ticketd_loop_pass_longest",
        "The longest loop pass of any shard so far.",
        Some(&Unit::Seconds),
        t.longest_pass_us as f64 * MICROS,
    );
    f.counter(
        "ticketd_loop_passes_cut",
        "Loop passes whose time (--pass-budget) ran out with connections still to read, \
         or still to write; the next pass takes those first.",
        None,
        &[
            (vec![("what", "read".to_owned())], t.passes_cut_reads),
            (vec![("what", "write".to_owned())], t.passes_cut_writes),
        ],
    );
    f.histogram(
        "ticketd_loop_pass_answers",
        "Answers sent per loop pass that sent any (the batch size).",
        None,
        &t.pass_answers,
        1.0,
    );
}

fn journal(f: &mut Family<'_, '_>, t: &Totals) {
    f.counter(
        "ticketd_journal_written",
        "Bytes written to the journal (records and rotation snapshots).",
        Some(&Unit::Bytes),
        &plain(t.journal_bytes),
    );
    f.histogram(
        "ticketd_journal_write_duration",
        "One write of a batch of records.",
        Some(&Unit::Seconds),
        &t.journal_write_us,
        MICROS,
    );
    f.histogram(
        "ticketd_journal_sync_duration",
        "One fdatasync of the journal (none with --fsync off).",
        Some(&Unit::Seconds),
        &t.journal_sync_us,
        MICROS,
    );
    f.counter(
        "ticketd_journal_rotations",
        "Segments started from a snapshot.",
        None,
        &plain(t.journal_rotations),
    );
}

fn redis(f: &mut Family<'_, '_>, t: &Totals) {
    f.counter(
        "ticketd_redis_calls",
        "Calls sent to Redis (decisions, settlements, STOCK, ORDERS).",
        None,
        &plain(t.redis_calls),
    );
    f.histogram(
        "ticketd_redis_call_duration",
        "From a call's first send to its answer, retries included.",
        Some(&Unit::Seconds),
        &t.redis_call_us,
        MICROS,
    );
    f.histogram(
        "ticketd_redis_call_batch",
        "Purchases and settlements carried by one decision call.",
        None,
        &t.redis_batch,
        1.0,
    );
    f.gauge(
        "ticketd_redis_in_flight_calls",
        "Calls sent or waiting to be sent whose answer has not come.",
        None,
        &[(Vec::new(), to_i64(t.redis_in_flight))],
    );
    f.counter(
        "ticketd_redis_retries",
        "Calls sent again with the same call id after an answer was lost.",
        None,
        &plain(t.redis_retries),
    );
    f.counter(
        "ticketd_redis_reconnects",
        "Connections to Redis made after a shard's first.",
        None,
        &plain(t.redis_reconnects),
    );
    f.counter(
        "ticketd_gate_refills",
        "STOCK asks made because a shard's share of an event ran dry.",
        None,
        &plain(t.gate_refills),
    );
}
