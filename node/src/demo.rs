//! `faultline demo`: the showcase. Part one runs both protocols as real processes on loopback
//! (normal, leader crash and restart, an equivocating leader); part two runs every Byzantine
//! mode against both protocols in the simulator (the real engines, store and ledger on a
//! simulated network with crashes, partitions and drops), plus f + 1 colluding PBFT replicas to
//! show that the bound n ≥ 3f + 1 is tight. Everything lands in one table on the terminal and in
//! `report.html` (tables and charts in one self-contained file).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::Serialize;

use crate::config::Protocol;
use crate::config::{ByzantineMode, ByzantineSpec};
use crate::local::{block_on_interruptible, run_scenario, FaultAt, Scenario, Summary, Target};
use crate::sim::Outcome;
use crate::sim::{self, SimConfig, SimReport};

/// Seconds of workload in each real-process run.
const RUN_SECS: u64 = 6;
/// Fault-phase ticks (10 ms each) of a simulated PBFT matrix run (Raft rows, ~20x cheaper,
/// keep the simulator's default 1,000: a follower that acknowledges without storing breaks Raft
/// only once a crash has wiped what it claimed to hold); the simulator adds 6 s of healing.
const PBFT_MATRIX_STEPS: u64 = 300;

/// `faultline demo`: both parts, the table, and `report.html` in `dir` (or the working
/// directory).
pub fn demo(dir: Option<PathBuf>) -> Result<()> {
    let started = Instant::now();
    let runs = real_runs(dir.as_deref())?;
    outln!();
    outln!("Part 1: real processes over libp2p on loopback ({RUN_SECS} s of load each)");
    outln!("{}", Summary::header());
    for r in &runs {
        outln!("{}", r.row());
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message("part 2: every Byzantine mode in the simulator");
    spinner.enable_steady_tick(Duration::from_millis(200));
    let matrix = byzantine_matrix(&MatrixSpec::default());
    spinner.finish_and_clear();
    let matrix = matrix?;
    outln!();
    outln!(
        "Part 2: every Byzantine mode, simulated (real engines, store and ledger; crashes, \
         partitions and 5% drops; up to {} seeds a Raft row and {} a PBFT row, stopping at the \
         first violation)",
        MatrixSpec::default().max_seeds,
        MatrixSpec::default().pbft_seeds
    );
    outln!("{}", MatrixRow::header());
    for r in &matrix {
        outln!("{}", r.row());
    }
    outln!(
        "\nPBFT (n=4, f=1) keeps one ledger with a crashed node and with any one Byzantine node; \
         Raft survives crashes but trusts its peers: an equivocating or corrupt leader, or a \
         follower acknowledging what it never stored, forks or loses acknowledged writes \
         (UNSAFE is the expected result), and a disrupting node forces elections. With f+1 = 2 \
         colluding replicas of 4 PBFT forks too: the bound n >= 3f+1 is tight."
    );
    let report = dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("report.html");
    std::fs::write(&report, report_html(&runs, &matrix)?)
        .with_context(|| format!("cannot write {}", report.display()))?;
    outln!(
        "{} real runs and {} simulated rows in {:.0} s; wrote {}",
        runs.len(),
        matrix.len(),
        started.elapsed().as_secs_f64(),
        report.display()
    );
    Ok(())
}

/// Part one: normal, leader crash + restart and an equivocating leader, pbft then raft.
fn real_runs(dir: Option<&Path>) -> Result<Vec<Summary>> {
    let duration = Duration::from_secs(RUN_SECS);
    let mut scenarios = Vec::new();
    for name in ["normal", "crash", "byzantine"] {
        for (proto, n) in [(Protocol::Pbft, 4), (Protocol::Raft, 3)] {
            let mut sc = Scenario::new(proto, n, duration);
            sc.name = name.into();
            match name {
                "crash" => {
                    sc.crash = vec![FaultAt {
                        target: Target::Leader,
                        at: 2.0,
                    }];
                    sc.restart = vec![FaultAt {
                        target: Target::Leader,
                        at: 4.0,
                    }];
                }
                // Node 0 is PBFT's primary of view 0, and the eager Raft leader.
                "byzantine" => {
                    sc.byzantine = vec![ByzantineSpec {
                        node: 0,
                        mode: ByzantineMode::Equivocate,
                    }]
                }
                _ => {}
            }
            scenarios.push(sc);
        }
    }
    let bar = indicatif::ProgressBar::new(scenarios.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let rows = block_on_interruptible(async {
        let mut rows = Vec::new();
        for (k, mut sc) in scenarios.into_iter().enumerate() {
            if let Some(d) = dir {
                sc.dir = Some(d.join(format!("{k}-{}-{}", sc.name, sc.protocol)));
            }
            bar.set_message(format!("{} {} ({})", sc.name, sc.protocol, sc.faults()));
            let s = run_scenario(&sc).await?;
            bar.println(s.row());
            bar.inc(1);
            rows.push(s);
        }
        Ok(rows)
    });
    bar.finish_and_clear();
    rows
}

/// What part two runs.
#[derive(Clone, Debug)]
pub struct MatrixSpec {
    /// Seeds tried per row at most (a row stops at its first violation).
    pub max_seeds: u64,
    /// The same for the PBFT rows with faults, which cost ~20x a Raft row each.
    pub pbft_seeds: u64,
    /// Fault-phase ticks of the PBFT rows.
    pub pbft_steps: u64,
}

impl Default for MatrixSpec {
    fn default() -> Self {
        MatrixSpec {
            max_seeds: 8,
            pbft_seeds: 2,
            pbft_steps: PBFT_MATRIX_STEPS,
        }
    }
}

/// One simulated row: a protocol with some Byzantine nodes, over seeds 1, 2, … until the first
/// violation or `max_seeds`.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixRow {
    pub protocol: Protocol,
    pub nodes: usize,
    pub byzantine: String,
    /// Crashes, partitions and drops as well (the f + 1 row has none: the fork needs no help).
    pub faults: bool,
    pub seeds: u64,
    pub ok: u64,
    pub stalled: u64,
    /// The first seed that was unsafe, and what the checker saw.
    pub unsafe_seed: Option<u64>,
    pub detail: Option<String>,
    /// What the row is there to show.
    pub expected: &'static str,
}

impl MatrixRow {
    /// Unsafe if any seed was, stalled if some seed made no progress (or oversized), else ok.
    pub fn verdict(&self) -> Outcome {
        if self.unsafe_seed.is_some() {
            Outcome::Unsafe
        } else if self.stalled > 0 {
            Outcome::Stalled
        } else {
            Outcome::Ok
        }
    }

    pub fn header() -> String {
        format!(
            "{:<8} {:>5} {:<26} {:>5} {:>4} {:>7}  {:<8} {}",
            "protocol",
            "nodes",
            "byzantine",
            "seeds",
            "ok",
            "stalled",
            "verdict",
            "first violation"
        )
    }

    pub fn row(&self) -> String {
        let first = match (self.unsafe_seed, &self.detail) {
            (Some(seed), Some(d)) => format!("seed {seed}: {d}"),
            (Some(seed), None) => format!("seed {seed}"),
            _ => "-".into(),
        };
        format!(
            "{:<8} {:>5} {:<26} {:>5} {:>4} {:>7}  {:<8} {}",
            self.protocol.to_string(),
            self.nodes,
            self.byzantine,
            self.seeds,
            self.ok,
            self.stalled,
            self.verdict().as_str(),
            first
        )
    }
}

/// One row to run.
struct Job {
    protocol: Protocol,
    nodes: usize,
    byzantine: Vec<ByzantineSpec>,
    faults: bool,
    seeds: u64,
    expected: &'static str,
}

/// Part two: each of the six modes at node 0 (PBFT's first primary, Raft's eager leader) for
/// PBFT n=4 and Raft n=3 under crashes, partitions and drops; then two equivocators among four
/// PBFT replicas (f + 1: a fork) and among seven (f = 2: safe). Rows run on every core.
pub fn byzantine_matrix(spec: &MatrixSpec) -> Result<Vec<MatrixRow>> {
    let mut jobs = Vec::new();
    for mode in ByzantineMode::ALL {
        let raft_expected = match mode {
            ByzantineMode::Equivocate | ByzantineMode::Corrupt | ByzantineMode::AckWithoutStore => {
                "raft breaks"
            }
            ByzantineMode::Disrupt => "raft may stall",
            _ => "raft survives",
        };
        for (protocol, nodes, expected) in [
            (Protocol::Pbft, 4, "pbft safe"),
            (Protocol::Raft, 3, raft_expected),
        ] {
            jobs.push(Job {
                protocol,
                nodes,
                byzantine: vec![ByzantineSpec { node: 0, mode }],
                faults: true,
                seeds: spec.max_seeds,
                expected,
            });
        }
    }
    let pair = |a, b| {
        vec![
            ByzantineSpec {
                node: a,
                mode: ByzantineMode::Equivocate,
            },
            ByzantineSpec {
                node: b,
                mode: ByzantineMode::Equivocate,
            },
        ]
    };
    jobs.push(Job {
        protocol: Protocol::Pbft,
        nodes: 4,
        byzantine: pair(0, 1),
        faults: false,
        seeds: 1,
        expected: "f+1 of 4 fork",
    });
    jobs.push(Job {
        protocol: Protocol::Pbft,
        nodes: 7,
        byzantine: pair(0, 1),
        faults: false,
        seeds: 1,
        expected: "f of 7 safe",
    });
    for job in jobs.iter_mut() {
        if job.protocol == Protocol::Pbft && job.faults {
            job.seeds = spec.pbft_seeds;
        }
    }
    let rows: Mutex<Vec<Option<MatrixRow>>> = Mutex::new(vec![None; jobs.len()]);
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(k) else { return };
                match run_job(job, spec.pbft_steps) {
                    Ok(row) => {
                        if let Ok(mut rows) = rows.lock() {
                            rows[k] = Some(row);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut errors) = errors.lock() {
                            errors.push(e.to_string());
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = errors.into_inner().ok().and_then(|e| e.into_iter().next()) {
        anyhow::bail!("a simulated demo run failed: {e}");
    }
    rows.into_inner()
        .map_err(|_| anyhow::anyhow!("a simulated demo run panicked"))?
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .context("a simulated demo row is missing")
}

fn run_job(job: &Job, pbft_steps: u64) -> Result<MatrixRow> {
    let mut row = MatrixRow {
        protocol: job.protocol,
        nodes: job.nodes,
        byzantine: job
            .byzantine
            .iter()
            .map(|b| format!("{}={}", b.node, b.mode))
            .collect::<Vec<_>>()
            .join(" "),
        faults: job.faults,
        seeds: 0,
        ok: 0,
        stalled: 0,
        unsafe_seed: None,
        detail: None,
        expected: job.expected,
    };
    for seed in 1..=job.seeds {
        let cfg = SimConfig {
            byzantine: job.byzantine.clone(),
            crash: job.faults,
            partition: job.faults,
            drop: if job.faults { 0.05 } else { 0.0 },
            ..SimConfig::new(job.protocol, job.nodes, seed)
        };
        let cfg = match job.protocol {
            Protocol::Pbft => SimConfig {
                steps: pbft_steps,
                ..cfg
            },
            Protocol::Raft => cfg,
        };
        let report: SimReport = sim::run(cfg).with_context(|| {
            format!(
                "{} n={} {} seed {seed}",
                job.protocol, job.nodes, row.byzantine
            )
        })?;
        row.seeds += 1;
        match report.verdict() {
            Outcome::Ok => row.ok += 1,
            Outcome::Unsafe => {
                row.unsafe_seed = Some(seed);
                row.detail = report.detail.clone();
                break;
            }
            Outcome::Stalled | Outcome::Oversized => row.stalled += 1,
        }
    }
    Ok(row)
}

/// The whole report: both tables and two charts, one file with no outside references.
fn report_html(runs: &[Summary], matrix: &[MatrixRow]) -> Result<String> {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut h = String::new();
    h.push_str(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>faultline demo</title><style>\
         body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;\
         margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
         td.l,th.l{text-align:left}.unsafe{background:#fdd;font-weight:bold}.stalled{background:#ffd}\
         .safe{background:#dfd}</style></head><body><h1>faultline demo</h1>",
    );
    h.push_str(
        "<h2>Real processes over libp2p on loopback</h2><table><tr><th class=l>scenario</th>\
         <th class=l>protocol</th><th>nodes</th><th class=l>faults</th><th>committed</th>\
         <th>tx/s</th><th>p50 ms</th><th>p99 ms</th><th>msgs/tx</th><th>msgs/batch</th>\
         <th class=l>verdict</th></tr>",
    );
    for r in runs {
        let class = if r.safe() { "safe" } else { "unsafe" };
        let mut verdict = r.verdict.clone();
        if let Some(at) = r.first_diverging_height {
            let _ = write!(verdict, " (diverged at height {at})");
        } else if r.acked_missing > 0 {
            let _ = write!(verdict, " ({} acked tx lost)", r.acked_missing);
        }
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td class=l>{}</td><td>{}</td><td class=l>{}</td><td>{}</td>\
             <td>{:.0}</td><td>{:.1}</td><td>{:.1}</td><td>{:.2}</td><td>{:.1}</td>\
             <td class=\"l {class}\">{}</td></tr>",
            esc(&r.scenario),
            esc(&r.protocol),
            r.nodes,
            esc(&r.faults),
            r.committed,
            r.tx_per_s,
            r.p50_ms,
            r.p99_ms,
            r.msgs_per_tx,
            r.msgs_per_batch,
            esc(&verdict)
        );
    }
    h.push_str("</table>");
    h.push_str(&bar_chart(
        "Committed transactions per second",
        "tx/s",
        runs,
        |r| r.tx_per_s,
    )?);
    h.push_str(&bar_chart(
        "Consensus messages per committed batch (raft 2(n-1), pbft 2n(n-1))",
        "messages / batch",
        runs,
        |r| r.msgs_per_batch,
    )?);
    h.push_str(
        "<h2>Every Byzantine mode, simulated</h2><p>The real engines, store and ledger on a \
         simulated network; crashes, partitions and 5% drops unless noted; seeds 1, 2, … until \
         the first violation.</p><table><tr><th class=l>protocol</th><th>nodes</th>\
         <th class=l>byzantine</th><th class=l>faults</th><th>seeds</th><th>ok</th>\
         <th>stalled</th><th class=l>verdict</th><th class=l>shows</th>\
         <th class=l>first violation</th></tr>",
    );
    for r in matrix {
        let verdict = r.verdict();
        let class = match verdict {
            Outcome::Unsafe => "unsafe",
            Outcome::Stalled | Outcome::Oversized => "stalled",
            Outcome::Ok => "safe",
        };
        let first = match (r.unsafe_seed, &r.detail) {
            (Some(seed), Some(d)) => format!("seed {seed}: {d}"),
            (Some(seed), None) => format!("seed {seed}"),
            _ => String::new(),
        };
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td>{}</td><td class=l>{}</td><td class=l>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td class=\"l {class}\">{verdict}</td><td class=l>{}</td>\
             <td class=l>{}</td></tr>",
            r.protocol,
            r.nodes,
            esc(&r.byzantine),
            if r.faults {
                "crash, partition, drop 5%"
            } else {
                "none"
            },
            r.seeds,
            r.ok,
            r.stalled,
            r.expected,
            esc(&first)
        );
    }
    h.push_str(
        "</table><p>PBFT (n=4, f=1) keeps one ledger with any one Byzantine replica. Raft \
         tolerates crashes only: an equivocating or corrupt leader, or a follower that \
         acknowledges entries it never stored, breaks it. Two colluding equivocators among four \
         PBFT replicas (f+1) fork the correct ones: each half of the correct replicas gathers \
         its 2f+1 votes from itself and the two liars, which is why n must be at least 3f+1; \
         among seven replicas (f=2) the same two cannot.</p></body></html>\n",
    );
    Ok(h)
}

/// A bar per real run, coloured by protocol, as inline SVG.
fn bar_chart(
    title: &str,
    y_label: &str,
    runs: &[Summary],
    y: impl Fn(&Summary) -> f64,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {title}: {e}");
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let y_max = runs.iter().map(&y).fold(1.0f64, f64::max) * 1.15;
        let labels: Vec<String> = runs
            .iter()
            .map(|r| format!("{} {}", r.scenario, r.protocol))
            .collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..runs.len() as f64 - 0.5, 0.0..y_max)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(runs.len().max(1))
            .x_label_formatter(&|x| {
                let k = x.round();
                if (x - k).abs() < 1e-6 && k >= 0.0 {
                    labels.get(k as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .draw()
            .map_err(|e| draw(&e))?;
        chart
            .draw_series(runs.iter().enumerate().map(|(k, r)| {
                let color = if r.protocol == "raft" { BLUE } else { RED };
                let x = k as f64;
                Rectangle::new([(x - 0.35, 0.0), (x + 0.35, y(r))], color.mix(0.7).filled())
            }))
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    Ok(svg)
}
