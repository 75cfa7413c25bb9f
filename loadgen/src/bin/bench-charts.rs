//! `bench-charts DIR`: draws a `make bench` run's figures as SVG in DIR, from the
//! `results.json` that scripts/bench_report.py wrote there and the node's `/metrics`
//! scrape of the all-selling run (`throughput-metrics.txt`):
//!
//! - `throughput.svg`: requests per second of ticketd's scenarios beside the peers
//!   (Redis, the no-logic server, the quoted Go prototype), bars on a log scale;
//! - `latency-sweep.svg`: p99 latency against the offered rate, open loop, for ticketd
//!   and the no-logic server of the same sweep, with the 1 ms line;
//! - `loop-passes.svg`: how long the all-selling run's loop passes took, per
//!   power-of-two bucket.
//!
//! A figure missing from the run (a quick run skips some) is left out of its chart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plotters::prelude::*;
use serde_json::Value;

const WIDTH: u32 = 900;

type Failure = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: bench-charts DIR (a make bench output dir with results.json)");
        return ExitCode::from(2);
    };
    match draw_all(&dir) {
        Ok(written) => {
            for path in written {
                println!("drew {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-charts: {e}");
            ExitCode::FAILURE
        }
    }
}

fn draw_all(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let results_path = dir.join("results.json");
    let text = std::fs::read_to_string(&results_path)
        .map_err(|e| format!("{}: {e}", results_path.display()))?;
    let results: Value = serde_json::from_str(&text)?;
    let title_note = describe_run(&results);
    let mut written = Vec::new();

    let bars = throughput_bars(&results);
    if !bars.is_empty() {
        let path = dir.join("throughput.svg");
        draw_bars(&path, &bars, &title_note)?;
        written.push(path);
    }
    let ticketd = sweep(&results["latency_sweep"]);
    let reference = sweep(&results["no_logic"]["latency_sweep"]);
    if !ticketd.is_empty() {
        let path = dir.join("latency-sweep.svg");
        draw_sweep(&path, &ticketd, &reference, &title_note)?;
        written.push(path);
    }
    let metrics = dir.join("throughput-metrics.txt");
    if let Ok(text) = std::fs::read_to_string(&metrics) {
        let buckets = loop_pass_buckets(&text);
        if buckets.iter().any(|&(_, n)| n > 0) {
            let path = dir.join("loop-passes.svg");
            draw_passes(&path, &buckets, &title_note)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// "full run, 2026-11-25, servers on core 0, load on core 1".
fn describe_run(results: &Value) -> String {
    let date = results["date"].as_str().unwrap_or("?");
    let date = date.split('T').next().unwrap_or(date);
    format!(
        "{} run {date}, servers on core {}, load on core {}",
        if results["quick"].as_bool() == Some(true) {
            "quick"
        } else {
            "full"
        },
        results["pinning"]["servers_core"],
        results["pinning"]["load_core"],
    )
}

/// (label, requests a second, is it ticketd's own).
fn throughput_bars(results: &Value) -> Vec<(String, f64, bool)> {
    let scenario = |name: &str| results["scenarios"][name]["throughput_rps"].as_f64();
    let rows: [(&str, Option<f64>, bool); 10] = [
        (
            "ticketd: rejections after sell-out",
            scenario("throughput_rejecting"),
            true,
        ),
        (
            "ticketd: every request sells, fsync off",
            scenario("throughput_fsync_off"),
            true,
        ),
        (
            "ticketd: every request sells, fsync always",
            scenario("throughput"),
            true,
        ),
        (
            "ticketd ledger mode: every request sells",
            scenario("ledger_throughput"),
            true,
        ),
        (
            "no-logic server (the kernel's ceiling)",
            results["no_logic"]["throughput_rps"].as_f64(),
            false,
        ),
        (
            "Redis INCR -P 64",
            results["redis"]["incr_p64_rps"].as_f64(),
            false,
        ),
        (
            "Redis INCR, unpipelined",
            results["redis"]["incr_p1_rps"].as_f64(),
            false,
        ),
        (
            "Redis EVALSHA check+HINCRBY",
            results["redis"]["evalsha_check_hincrby_rps"].as_f64(),
            false,
        ),
        (
            "ticketd HTTP: ab -c 100",
            results["http"]["ab_rps"].as_f64(),
            true,
        ),
        (
            "Go+Redis prototype: ab -c 100 (quoted)",
            results["quoted_references"]["go_prototype_ab_all_redis_rps"].as_f64(),
            false,
        ),
    ];
    rows.into_iter()
        .filter_map(|(label, value, ours)| {
            value
                .filter(|v| *v > 0.0)
                .map(|v| (label.to_owned(), v, ours))
        })
        .collect()
}

/// (offered rate, p99 µs), by rate.
fn sweep(points: &Value) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = points
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p["rate"].as_f64()?, p["p99_us"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// Per-bucket counts of `ticketd_loop_pass_duration_seconds` (upper bound in µs, count),
/// from the cumulative buckets of a Prometheus scrape.
fn loop_pass_buckets(metrics: &str) -> Vec<(u64, u64)> {
    let mut cumulative: Vec<(u64, u64)> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("ticketd_loop_pass_duration_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let seconds: f64 = le.parse().ok()?;
            Some(((seconds * 1e6).round() as u64, count.trim().parse().ok()?))
        })
        .collect();
    cumulative.sort();
    let mut previous = 0;
    cumulative
        .into_iter()
        .map(|(bound, total)| {
            let count = total.saturating_sub(previous);
            previous = total;
            (bound, count)
        })
        .collect()
}

fn si(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.0}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

fn draw_bars(path: &Path, bars: &[(String, f64, bool)], note: &str) -> Result<(), Failure> {
    let height = 90 + 34 * bars.len() as u32;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = bars.iter().map(|b| b.1).fold(1.0, f64::max) * 4.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Requests per second, one server core ({note})"),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(290)
        .build_cartesian_2d((1e3..top).log_scale(), (0..bars.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_formatter(&|v| si(*v))
        .x_desc("requests/s (log scale); blue: ticketd, grey: peers and references")
        .draw()?;
    for (i, (_, value, ours)) in bars.iter().enumerate() {
        let colour = if *ours {
            BLUE.mix(0.7)
        } else {
            RGBColor(150, 150, 150).mix(0.8)
        };
        let mut bar = Rectangle::new(
            [
                (1e3, SegmentValue::Exact(i)),
                (*value, SegmentValue::Exact(i + 1)),
            ],
            colour.filled(),
        );
        bar.set_margin(3, 3, 0, 0);
        chart.draw_series(std::iter::once(bar))?;
        chart.draw_series(std::iter::once(Text::new(
            si(*value),
            (*value * 1.08, SegmentValue::CenterOf(i)),
            ("sans-serif", 13),
        )))?;
    }
    root.present()?;
    Ok(())
}

fn draw_sweep(
    path: &Path,
    ticketd: &[(f64, f64)],
    reference: &[(f64, f64)],
    note: &str,
) -> Result<(), Failure> {
    let root = SVGBackend::new(path, (WIDTH, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = ticketd.iter().chain(reference);
    let max_rate = all.clone().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let max_p99 = all.map(|p| p.1).fold(1000.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("p99 latency against offered rate, 1,000 connections, open loop ({note})"),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_rate, (10.0..max_p99).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered requests/s")
        .y_desc("p99 latency, µs (log scale)")
        .x_label_formatter(&|v| si(*v))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 1000.0), (max_rate, 1000.0)],
            RED.mix(0.5).stroke_width(1),
        ))?
        .label("1 ms")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.mix(0.5)));
    for (points, label, colour) in [
        (ticketd, "ticketd (every request sells)", BLUE),
        (reference, "no-logic server (fixed OK)", BLACK),
    ] {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn draw_passes(path: &Path, buckets: &[(u64, u64)], note: &str) -> Result<(), Failure> {
    // From the first bucket that has passes to the last one that has.
    let first = buckets.iter().position(|b| b.1 > 0).unwrap_or(0);
    let last = buckets.iter().rposition(|b| b.1 > 0).unwrap_or(0);
    let shown = &buckets[first..=last];
    let root = SVGBackend::new(path, (WIDTH, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let most = shown.iter().map(|b| b.1).max().unwrap_or(1) as f64 * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Loop passes under the all-selling load, by duration ({note})"),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..shown.len()).into_segmented(), (0.5..most).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(shown.len())
        .x_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(i) => {
                shown.get(*i).map_or_else(String::new, |b| bound_text(b.0))
            }
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 11))
        .x_desc("pass duration: at most (power-of-two buckets)")
        .y_desc("passes (log scale)")
        .draw()?;
    chart.draw_series(shown.iter().enumerate().filter(|(_, b)| b.1 > 0).map(
        |(i, &(_, count))| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.5),
                    (SegmentValue::Exact(i + 1), count as f64),
                ],
                BLUE.mix(0.7).filled(),
            );
            bar.set_margin(0, 0, 2, 2);
            bar
        },
    ))?;
    root.present()?;
    Ok(())
}

/// A bucket's upper bound in µs, short: `8µs`, `512µs`, `16ms`, `1.0s`, `more`.
fn bound_text(us: u64) -> String {
    if us > 1 << 40 {
        "more".to_owned()
    } else if us >= 1_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets_become_per_bucket_counts() {
        let scrape = "ticketd_loop_pass_duration_seconds_bucket{le=\"0.000002\"} 3\n\
                      ticketd_loop_pass_duration_seconds_bucket{le=\"0.000001\"} 1\n\
                      ticketd_loop_pass_duration_seconds_bucket{le=\"0.000004\"} 3\n\
                      ticketd_loop_pass_duration_seconds_count 3\n";
        assert_eq!(loop_pass_buckets(scrape), vec![(1, 1), (2, 2), (4, 0)]);
    }
}
