//! A Jepsen-style nemesis over real processes, used by `faultline local --nemesis` and by
//! tests/nemesis.rs: concurrent clients ([`clients`]) write and read while the nemesis
//! ([`schedule`]) kills, restarts, pauses and resumes nodes; the run's [`history`] is then
//! checked ([`audit`], [`linearizability`]) after every fault is healed.

pub mod audit;
pub mod clients;
pub mod history;
pub mod linearizability;
pub mod schedule;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cluster::{ClusterSpec, LocalCluster};
use crate::config::Protocol;
use audit::Check;
use history::{FaultKind, Op, OpKind, Outcome};

/// How long the cluster may take to start and elect a leader.
const STARTUP: Duration = Duration::from_secs(30);
/// How long the nodes may take to agree on one head after the faults are healed.
const CONVERGE: Duration = Duration::from_secs(60);
/// Bound on the clients finishing their in-flight writes after the faults end.
const DRAIN: Duration = Duration::from_secs(45);

/// Set to `0` to report PBFT's read checks as findings instead of violations (see
/// [`NemesisSpec::strict_reads`]); they are violations by default.
pub const STRICT_PBFT_READS_ENV: &str = "FAULTLINE_NEMESIS_STRICT_PBFT_READS";

/// What to run.
#[derive(Clone, Debug)]
pub struct NemesisSpec {
    pub protocol: Protocol,
    pub nodes: usize,
    /// Length of the fault phase (the clients run during it).
    pub duration: Duration,
    pub clients: usize,
    /// Registers the clients put to and read.
    pub keys: usize,
    pub seed: u64,
    /// Where to write the testnet and logs (kept); a temporary dir (removed) if None.
    pub dir: Option<PathBuf>,
    /// The `faultline` binary the nodes run; this process's executable if None.
    pub exe: Option<PathBuf>,
    /// Whether non-linearizable or stale reads are violations. They are by default for both
    /// protocols: Raft confirms leadership first (ReadIndex, thesis §6.4) and a PBFT replica
    /// orders a read marker and answers once it has executed it (TOCS §5.1.3). For PBFT,
    /// FAULTLINE_NEMESIS_STRICT_PBFT_READS=0 turns them into findings (to measure a build
    /// without read markers).
    pub strict_reads: bool,
}

impl NemesisSpec {
    pub fn new(protocol: Protocol, duration: Duration) -> NemesisSpec {
        NemesisSpec {
            protocol,
            nodes: match protocol {
                Protocol::Raft => 3,
                Protocol::Pbft => 4,
            },
            duration,
            clients: 4,
            keys: 3,
            seed: 1,
            dir: None,
            exe: None,
            strict_reads: strict_reads_default(protocol),
        }
    }
}

/// Raft: always strict. PBFT: strict unless FAULTLINE_NEMESIS_STRICT_PBFT_READS=0.
pub fn strict_reads_default(protocol: Protocol) -> bool {
    protocol == Protocol::Raft || std::env::var(STRICT_PBFT_READS_ENV).as_deref() != Ok("0")
}

/// Everything a run found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NemesisReport {
    pub protocol: String,
    pub nodes: usize,
    pub seed: u64,
    pub fault_secs: f64,
    pub total_secs: f64,
    pub ops: usize,
    pub writes: usize,
    pub acked_txs: usize,
    pub unknown_writes: usize,
    /// Unknown writes the ledger shows applied.
    pub unknown_applied: usize,
    pub retried_writes: usize,
    pub reads: usize,
    pub failed_reads: usize,
    pub kills: usize,
    pub restarts: usize,
    pub pauses: usize,
    pub resumes: usize,
    pub leader_hits: usize,
    pub unexpected_exits: usize,
    pub height: u64,
    pub txs_in_blocks: u64,
    /// Txs ordered more than once (retries), applied once.
    pub reordered_duplicates: u64,
    pub stale_reads: usize,
    pub checks: Vec<Check>,
    pub dir: String,
}

impl NemesisReport {
    /// Failed checks that count.
    pub fn violations(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| !c.passed && c.enforced)
            .collect()
    }

    /// Failed checks that are known findings.
    pub fn findings(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| !c.passed && !c.enforced)
            .collect()
    }

    pub fn ok(&self) -> bool {
        self.violations().is_empty()
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut s = format!(
            "nemesis {} n={} seed={}: {:.0} s of faults ({:.0} s in all)\n",
            self.protocol, self.nodes, self.seed, self.fault_secs, self.total_secs
        );
        s.push_str(&format!(
            "  ops {}: {} writes ({} acknowledged, {} unknown of which {} applied, {} retried), {} reads ({} failed)\n",
            self.ops,
            self.writes,
            self.acked_txs,
            self.unknown_writes,
            self.unknown_applied,
            self.retried_writes,
            self.reads,
            self.failed_reads
        ));
        s.push_str(&format!(
            "  faults: {} kill -9, {} restarts, {} SIGSTOP, {} SIGCONT ({} hit the leader/primary); {} unexpected exits\n",
            self.kills, self.restarts, self.pauses, self.resumes, self.leader_hits, self.unexpected_exits
        ));
        s.push_str(&format!(
            "  ledger: height {}, {} txs in blocks, {} ordered twice and applied once; stale reads {}\n",
            self.height, self.txs_in_blocks, self.reordered_duplicates, self.stale_reads
        ));
        for c in &self.checks {
            let mark = match (c.passed, c.enforced) {
                (true, _) => "ok   ",
                (false, true) => "FAIL ",
                (false, false) => "known",
            };
            s.push_str(&format!("  {mark} {}: {}\n", c.name, c.detail));
        }
        let verdict = if self.ok() {
            if self.findings().is_empty() {
                "PASS".to_string()
            } else {
                format!("PASS with {} known finding(s)", self.findings().len())
            }
        } else {
            format!("FAIL: {} violation(s)", self.violations().len())
        };
        s.push_str(&format!("  result: {verdict} (logs: {})\n", self.dir));
        s
    }
}

/// Runs one nemesis test end to end; every node process is gone when this returns.
pub async fn run(spec: &NemesisSpec) -> Result<NemesisReport> {
    let began = Instant::now();
    let mut cluster = LocalCluster::create(&ClusterSpec {
        protocol: spec.protocol,
        nodes: spec.nodes,
        clients: spec.clients.max(1),
        byzantine: Vec::new(),
        dir: spec.dir.clone(),
        eager_leader: None,
    })?;
    if let Some(exe) = &spec.exe {
        cluster.set_exe(exe.clone());
    }
    if let Err(e) = cluster.start(STARTUP).await {
        cluster.kill_all();
        let dir = cluster.keep_dir();
        return Err(e).with_context(|| {
            format!("the cluster did not start (logs kept in {})", dir.display())
        });
    }
    let keys = (0..spec.clients.max(1))
        .map(|j| crate::keys::read_key(&cluster.dir.join(format!("client-{j}.key"))))
        .collect::<Result<Vec<_>, _>>()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .context("cannot build the HTTP client")?;
    let genesis = cluster.config.genesis.clone();
    let start = Instant::now();
    let ctx = Arc::new(clients::Ctx {
        cluster: cluster.config.clone(),
        http: http.clone(),
        start,
        stop: false.into(),
        keys: (0..spec.keys.max(1)).map(|k| format!("k{k}")).collect(),
        accounts: genesis.balances.keys().cloned().collect(),
    });
    let workload = tokio::spawn(clients::run_all(ctx.clone(), keys, spec.seed));
    let mut nemesis = schedule::Nemesis::new(cluster.config.f, spec.seed, start, http.clone());
    let faults = nemesis.run(&mut cluster, start + spec.duration).await;
    ctx.stop.store(true, Ordering::Relaxed);
    let healed = nemesis.heal_all(&mut cluster);
    let fault_secs = start.elapsed().as_secs_f64();
    faults?;
    healed?;
    let ops = match tokio::time::timeout(DRAIN, workload).await {
        Ok(Ok(ops)) => ops,
        Ok(Err(e)) => anyhow::bail!("the workload failed: {e}"),
        Err(_) => anyhow::bail!("the clients did not finish within {} s", DRAIN.as_secs()),
    };

    let mut checks = Vec::new();
    let exits: Vec<String> = nemesis
        .unexpected_exits
        .iter()
        .map(|(t, i)| format!("node {i} exited on its own at {:.1} s", *t as f64 / 1e9))
        .collect();
    checks.push(Check::new(
        "no node exits unless killed",
        &exits,
        "none".into(),
        true,
    ));
    let (head_check, height) = audit::converge(&cluster.config, &http, CONVERGE).await;
    checks.push(head_check);
    let height = height.unwrap_or(0);
    let mut scans = Vec::new();
    for i in 0..cluster.n() {
        scans.push(audit::scan_node(&cluster.config, &http, i, height).await);
    }
    let (chain_checks, complete) = audit::compare_chains(&scans, height);
    checks.extend(chain_checks);

    // Clean shutdown, then each node's database is read directly.
    let mut unclean = Vec::new();
    for i in 0..cluster.n() {
        if !cluster.terminate(i, Duration::from_secs(15)) {
            unclean.push(format!("node {i} did not exit 0 on SIGTERM"));
        }
    }
    checks.push(Check::new(
        "clean shutdown on SIGTERM",
        &unclean,
        "every node".into(),
        true,
    ));
    let stores: Vec<Result<crate::store::Store, String>> = (0..cluster.n())
        .map(|i| {
            let dir = cluster.dir.join(format!("node-{i}")).join("data");
            crate::store::Store::open_existing(&dir).map_err(|e| format!("node {i}: {e}"))
        })
        .collect();

    let mut report = NemesisReport {
        protocol: spec.protocol.to_string(),
        nodes: spec.nodes,
        seed: spec.seed,
        fault_secs,
        total_secs: 0.0,
        ops: ops.len(),
        writes: ops.iter().filter(|o| o.is_write()).count(),
        acked_txs: ops.iter().filter(|o| o.acked()).count(),
        unknown_writes: ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Unknown(_)))
            .count(),
        unknown_applied: 0,
        retried_writes: ops
            .iter()
            .filter(|o| o.is_write() && o.attempts > 1)
            .count(),
        reads: ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Read { .. }))
            .count(),
        failed_reads: ops
            .iter()
            .filter(|o| {
                matches!(o.kind, OpKind::Read { .. }) && matches!(o.outcome, Outcome::Failed(_))
            })
            .count(),
        kills: nemesis.count(FaultKind::Kill),
        restarts: nemesis.count(FaultKind::Restart),
        pauses: nemesis.count(FaultKind::Pause),
        resumes: nemesis.count(FaultKind::Resume),
        leader_hits: nemesis.faults.iter().filter(|f| f.was_leader).count(),
        unexpected_exits: nemesis.unexpected_exits.len(),
        height,
        txs_in_blocks: 0,
        reordered_duplicates: 0,
        stale_reads: 0,
        checks: Vec::new(),
        dir: String::new(),
    };
    let refused: Vec<String> = ops
        .iter()
        .filter_map(|o| match (&o.tx, &o.outcome) {
            (Some((seq, _)), Outcome::Failed(e)) => {
                Some(format!("client {} seq {seq} refused: {e}", o.client))
            }
            _ => None,
        })
        .collect();
    checks.push(Check::new(
        "no valid write refused",
        &refused,
        format!("{} writes", report.writes),
        true,
    ));

    match complete {
        Some(reference) => {
            audit_ledger(
                spec,
                &ctx.keys,
                &ops,
                &scans[reference].blocks,
                &stores,
                reference,
                height,
                &genesis,
                &mut report,
                &mut checks,
            );
        }
        None => checks.push(Check::new(
            "ledger replay",
            &["no node holds every block 1..=height, so the ledger cannot be replayed".into()],
            String::new(),
            true,
        )),
    }
    drop(stores);
    report.checks = checks;
    report.total_secs = began.elapsed().as_secs_f64();
    report.dir = if report.ok() {
        cluster.dir.display().to_string()
    } else {
        // Keep the evidence of a failed run.
        cluster.keep_dir().display().to_string()
    };
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn audit_ledger(
    spec: &NemesisSpec,
    keys: &[String],
    ops: &[Op],
    blocks: &std::collections::BTreeMap<u64, crate::ledger::Block>,
    stores: &[Result<crate::store::Store, String>],
    reference: usize,
    height: u64,
    genesis: &crate::ledger::Genesis,
    report: &mut NemesisReport,
    checks: &mut Vec<Check>,
) {
    let recorded = |client: &[u8; 32], seq: u64| match &stores[reference] {
        Ok(s) => s.tx_record(client, seq).ok().flatten(),
        Err(_) => None,
    };
    let (replay, replay_checks) = audit::replay(blocks, genesis, &recorded);
    checks.extend(replay_checks);
    checks.push(audit::check_acked(ops, &replay));
    report.txs_in_blocks = replay.txs_in_blocks;
    report.reordered_duplicates = replay.occurrences.values().filter(|c| **c > 1).count() as u64;
    report.unknown_applied = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Unknown(_)))
        .filter(|o| o.tx.is_some_and(|t| replay.applied.contains_key(&t.1)))
        .count();
    let mut store_problems = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        match s {
            Ok(store) => {
                store_problems.extend(audit::check_store(i, store, &replay, keys, genesis, height))
            }
            Err(e) => store_problems.push(e.clone()),
        }
    }
    checks.push(Check::new(
        "every data dir: verify passes; balances, keys and tx records equal the replay",
        &store_problems,
        format!("{} data dirs", stores.len()),
        true,
    ));
    let why =
        "PBFT reads are served from one replica's state; linearizable PBFT reads are issue 17";
    let reads = audit::check_reads(ops, &replay, keys, spec.strict_reads, why);
    report.stale_reads = reads.stale;
    checks.extend(reads.checks);
}

/// `faultline local --nemesis`: prints the report; returns whether no check was violated.
pub fn local(spec: NemesisSpec, json: bool) -> Result<bool> {
    let report = crate::local::block_on_interruptible(run(&spec))?;
    if json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!("{}", report.text().trim_end());
    }
    Ok(report.ok())
}

/// The same on a fresh runtime, for tests (no signal handling).
pub fn run_blocking(spec: &NemesisSpec) -> Result<NemesisReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(spec))
}
