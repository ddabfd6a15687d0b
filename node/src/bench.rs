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

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub protocols: Vec<Protocol>,
    pub nodes: Vec<usize>,
    pub duration: Duration,
    pub clients: usize,
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
