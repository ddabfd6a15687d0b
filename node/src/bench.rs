//! `faultline bench`: a saturating run per protocol and cluster size, measured from the running
//! system's own counters, written as DIR/results.csv and three SVG charts. The point is to show
//! Raft's O(n) messages per committed batch against PBFT's O(n²).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::config::Protocol;
use crate::local::{run_scenario, Scenario, Summary};
use crate::sim::SimConfig;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub protocols: Vec<Protocol>,
    pub nodes: Vec<usize>,
    pub duration: Duration,
    pub clients: usize,
    /// Transactions per request (1: `POST /v1/tx`, one at a time).
    pub batch: usize,
    pub payload: usize,
    pub out: PathBuf,
}

pub const CSV_HEADER: &str =
    "protocol,nodes,committed,tx_per_s,p50_ms,p99_ms,msgs_per_tx,bytes_per_tx,msgs_per_batch";

/// Runs every (protocol, size) pair, writes the CSV and charts, and prints the rows.
pub fn bench(spec: &BenchSpec) -> Result<Vec<Summary>> {
    std::fs::create_dir_all(&spec.out)
        .with_context(|| format!("cannot create {}", spec.out.display()))?;
    let mut runs = Vec::new();
    for &p in &spec.protocols {
        for &n in &spec.nodes {
            if n < p.min_nodes() {
                eprintln!(
                    "skipping {p} with {n} nodes: {p} needs at least {} nodes",
                    p.min_nodes()
                );
                continue;
            }
            runs.push((p, n));
        }
    }
    if runs.is_empty() {
        anyhow::bail!("no size in --nodes is large enough for the chosen protocol (pbft needs at least 4 nodes)");
    }
    let bar = indicatif::ProgressBar::new(runs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let rows = crate::local::block_on_interruptible(async {
        let mut rows = Vec::new();
        for (p, n) in runs {
            bar.set_message(format!("{p} n={n}"));
            let mut sc = Scenario::new(p, n, spec.duration);
            sc.name = "bench".into();
            sc.clients = spec.clients.max(1);
            sc.batch = spec.batch.max(1);
            sc.payload = spec.payload;
            let s = run_scenario(&sc)
                .await
                .with_context(|| format!("{p} with {n} nodes"))?;
            bar.println(format!(
                "{p} n={n}: {} tx, {:.0} tx/s, p50 {:.1} ms, p99 {:.1} ms, {:.1} msgs/batch, {:.2} msgs/tx, verdict {}",
                s.committed, s.tx_per_s, s.p50_ms, s.p99_ms, s.msgs_per_batch, s.msgs_per_tx, s.verdict
            ));
            bar.inc(1);
            rows.push(s);
        }
        Ok(rows)
    });
    bar.finish_and_clear();
    let rows = rows?;
    write_csv(&spec.out.join("results.csv"), &rows)?;
    charts(&spec.out, &rows)?;
    outln!("{}", Summary::header());
    for r in &rows {
        outln!("{}", r.row());
    }
    outln!(
        "wrote {}/results.csv, messages_per_tx.svg, throughput.svg, latency.svg",
        spec.out.display()
    );
    Ok(rows)
}

fn write_csv(path: &Path, rows: &[Summary]) -> Result<()> {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{:.1},{:.2},{:.2},{:.3},{:.1},{:.2}",
            r.protocol,
            r.nodes,
            r.committed,
            r.tx_per_s,
            r.p50_ms,
            r.p99_ms,
            r.msgs_per_tx,
            r.bytes_per_tx,
            r.msgs_per_batch
        );
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))
}

/// One line per protocol of `y(row)` against the cluster size.
fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    rows: &[Summary],
    y: impl Fn(&Summary) -> f64,
    expected: Option<&dyn Fn(&str, f64) -> f64>,
) -> Result<()> {
    let root = SVGBackend::new(path, (720, 460)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let x_max = rows.iter().map(|r| r.nodes).max().unwrap_or(4) as f64 + 1.0;
    let x_min = rows.iter().map(|r| r.nodes).min().unwrap_or(3) as f64 - 1.0;
    let y_max = rows.iter().map(&y).fold(1.0f64, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_min.max(0.0)..x_max, 0.0..y_max)
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("nodes (n)")
        .x_label_formatter(&node_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| draw(&e))?;
    let colors = [("raft", BLUE), ("pbft", RED)];
    for (name, color) in colors {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.protocol == name)
            .map(|r| (r.nodes as f64, y(r)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| draw(&e))?
            .label(format!("{name} (measured)"))
            .legend(move |(x, yy)| PathElement::new(vec![(x, yy), (x + 20, yy)], color));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| draw(&e))?;
        if let Some(f) = expected {
            let ns: Vec<f64> = pts.iter().map(|p| p.0).collect();
            let exp: Vec<(f64, f64)> = ns.iter().map(|&n| (n, f(name, n))).collect();
            let light = color.mix(0.4);
            chart
                .draw_series(LineSeries::new(exp, light.stroke_width(1)))
                .map_err(|e| draw(&e))?
                .label(format!(
                    "{name} expected {}",
                    if name == "raft" { "2(n-1)" } else { "2n(n-1)" }
                ))
                .legend(move |(x, yy)| PathElement::new(vec![(x, yy), (x + 20, yy)], light));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}

fn charts(out: &Path, rows: &[Summary]) -> Result<()> {
    let expected = |proto: &str, n: f64| {
        if proto == "raft" {
            2.0 * (n - 1.0)
        } else {
            2.0 * n * (n - 1.0)
        }
    };
    line_chart(
        &out.join("messages_per_tx.svg"),
        "Protocol messages per committed batch (block)",
        "messages / batch",
        rows,
        |r| r.msgs_per_batch,
        Some(&expected),
    )?;
    line_chart(
        &out.join("throughput.svg"),
        "Committed transactions per second (saturating)",
        "tx/s",
        rows,
        |r| r.tx_per_s,
        None,
    )?;
    line_chart(
        &out.join("latency.svg"),
        "Commit latency p99 (send to acknowledgement)",
        "p99 ms",
        rows,
        |r| r.p99_ms,
        None,
    )
}

/// Cluster sizes are whole numbers: label only the integer ticks of the node axis.
fn node_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        String::new()
    }
}

/// Message cost of one simulated cluster: `bench --sim`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SimCost {
    pub protocol: Protocol,
    pub nodes: usize,
    pub blocks: u64,
    /// Every protocol message between nodes except client-request relays.
    pub messages: u64,
    pub msgs_per_batch: f64,
    /// Only the ordering round trips: AppendEntries and their responses (raft), PRE-PREPARE,
    /// PREPARE and COMMIT (pbft) — what the 2(n−1) and 2n(n−1) references count.
    pub ordering_per_batch: f64,
    pub expected_per_batch: f64,
}

pub const SIM_CSV_HEADER: &str =
    "protocol,nodes,blocks,messages,msgs_per_batch,ordering_msgs_per_batch,expected_per_batch";

/// The message count the protocol promises per committed batch: Raft's leader sends one
/// AppendEntries to each follower and gets one answer, 2(n−1) (Raft §5.3); PBFT's primary sends
/// n−1 PRE-PREPAREs, each backup n−1 PREPAREs and every replica n−1 COMMITs, 2n(n−1) counting
/// the primary's PRE-PREPAREs in place of its PREPAREs (PBFT §4.2).
pub fn expected_per_batch(protocol: Protocol, n: usize) -> f64 {
    let n = n as f64;
    match protocol {
        Protocol::Raft => 2.0 * (n - 1.0),
        Protocol::Pbft => 2.0 * n * (n - 1.0),
    }
}

/// `faultline bench --sim`: the real engines in the simulator, fault-free, for `duration` of
/// simulated time per (protocol, size); counts messages per committed batch, so the O(n) and
/// O(n²) curves can reach sizes no single machine could run as processes.
pub fn bench_sim(
    protocols: &[Protocol],
    nodes: &[usize],
    duration: Duration,
    out: &Path,
) -> Result<Vec<SimCost>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let runs: Vec<(Protocol, usize)> = protocols
        .iter()
        .flat_map(|&p| nodes.iter().map(move |&n| (p, n)))
        .filter(|&(p, n)| {
            let fits = n >= p.min_nodes();
            if !fits {
                eprintln!(
                    "skipping {p} with {n} nodes: {p} needs at least {} nodes",
                    p.min_nodes()
                );
            }
            fits
        })
        .collect();
    if runs.is_empty() {
        anyhow::bail!("no size in --nodes is large enough for the chosen protocol (pbft needs at least 4 nodes)");
    }
    let ticks = (duration.as_millis() / 10).max(30) as u64;
    let bar = indicatif::ProgressBar::new(runs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut rows = Vec::new();
    for (p, n) in runs {
        bar.set_message(format!("{p} n={n} (simulated)"));
        let cfg = SimConfig {
            steps: 0,
            heal_ticks: ticks,
            ..SimConfig::new(p, n, 1)
        };
        let report =
            crate::sim::run(cfg).with_context(|| format!("simulating {p} with {n} nodes"))?;
        if report.verdict() != crate::sim::Outcome::Ok {
            anyhow::bail!(
                "the fault-free simulation of {p} with {n} nodes was {}: {}",
                report.verdict(),
                report.detail.unwrap_or_default()
            );
        }
        let count = |kinds: &[&str]| -> u64 {
            kinds
                .iter()
                .map(|k| report.messages_by_type.get(k).copied().unwrap_or(0))
                .sum()
        };
        let ordering = match p {
            Protocol::Raft => count(&["append_entries", "append_entries_response"]),
            Protocol::Pbft => count(&["pre_prepare", "prepare", "commit"]),
        };
        let messages = report.messages - count(&["request"]);
        let blocks = report.height.max(1);
        let row = SimCost {
            protocol: p,
            nodes: n,
            blocks: report.height,
            messages,
            msgs_per_batch: messages as f64 / blocks as f64,
            ordering_per_batch: ordering as f64 / blocks as f64,
            expected_per_batch: expected_per_batch(p, n),
        };
        bar.println(format!(
            "{p} n={n}: {} blocks, {:.1} msgs/batch ({:.1} ordering; expected {:.0})",
            row.blocks, row.msgs_per_batch, row.ordering_per_batch, row.expected_per_batch
        ));
        bar.inc(1);
        rows.push(row);
    }
    bar.finish_and_clear();
    let mut csv = String::from(SIM_CSV_HEADER);
    csv.push('\n');
    for r in &rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{:.2},{:.2},{:.0}",
            r.protocol,
            r.nodes,
            r.blocks,
            r.messages,
            r.msgs_per_batch,
            r.ordering_per_batch,
            r.expected_per_batch
        );
    }
    let path = out.join("sim_results.csv");
    std::fs::write(&path, csv).with_context(|| format!("cannot write {}", path.display()))?;
    sim_chart(&out.join("sim_messages_per_batch.svg"), &rows, false)?;
    sim_chart(&out.join("sim_messages_per_batch_log.svg"), &rows, true)?;
    outln!(
        "{:<8} {:>5} {:>7} {:>14} {:>18} {:>10}",
        "protocol",
        "nodes",
        "blocks",
        "msgs/batch",
        "ordering/batch",
        "expected"
    );
    for r in &rows {
        outln!(
            "{:<8} {:>5} {:>7} {:>14.1} {:>18.1} {:>10.0}",
            r.protocol.to_string(),
            r.nodes,
            r.blocks,
            r.msgs_per_batch,
            r.ordering_per_batch,
            r.expected_per_batch
        );
    }
    outln!(
        "wrote {}/sim_results.csv, sim_messages_per_batch.svg, sim_messages_per_batch_log.svg",
        out.display()
    );
    Ok(rows)
}

/// Measured messages per batch against the cluster size with the 2(n−1) and 2n(n−1)
/// references, on a linear or a logarithmic message axis.
fn sim_chart(path: &Path, rows: &[SimCost], log: bool) -> Result<()> {
    let root = SVGBackend::new(path, (760, 480)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let x_max = rows.iter().map(|r| r.nodes).max().unwrap_or(4) as f64 + 1.0;
    let x_min = (rows.iter().map(|r| r.nodes).min().unwrap_or(3) as f64 - 1.0).max(0.0);
    let y_max = rows
        .iter()
        .map(|r| r.msgs_per_batch.max(r.expected_per_batch))
        .fold(1.0f64, f64::max)
        * 1.3;
    let title = if log {
        "Messages per committed batch (simulated, log scale)"
    } else {
        "Messages per committed batch (simulated)"
    };
    let series = |name: &str, measured: bool| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.protocol.to_string() == name)
            .map(|r| {
                let y = if measured {
                    r.msgs_per_batch
                } else {
                    r.expected_per_batch
                };
                (r.nodes as f64, y.max(1.0))
            })
            .collect()
    };
    let mut caption = ChartBuilder::on(&root);
    caption
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70);
    macro_rules! plot {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("nodes (n)")
                .x_label_formatter(&node_label)
                .y_desc("messages / batch")
                .draw()
                .map_err(|e| draw(&e))?;
            for (name, color) in [("raft", BLUE), ("pbft", RED)] {
                let pts = series(name, true);
                if pts.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|e| draw(&e))?
                    .label(format!("{name} measured"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(|e| draw(&e))?;
                let light = color.mix(0.45);
                chart
                    .draw_series(LineSeries::new(series(name, false), light.stroke_width(1)))
                    .map_err(|e| draw(&e))?
                    .label(if name == "raft" {
                        "raft 2(n-1)"
                    } else {
                        "pbft 2n(n-1)"
                    })
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], light));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| draw(&e))?;
        }};
    }
    if log {
        plot!(caption
            .build_cartesian_2d(x_min..x_max, (1.0..y_max).log_scale())
            .map_err(|e| draw(&e))?);
    } else {
        plot!(caption
            .build_cartesian_2d(x_min..x_max, 0.0..y_max)
            .map_err(|e| draw(&e))?);
    }
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}
