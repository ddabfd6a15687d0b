//! `faultline local` and `faultline demo`: a whole cluster as child processes on loopback, a
//! client workload, a schedule of crashes, restarts and Byzantine nodes, and one summary row
//! per run with the safety verdict (did all correct nodes keep the same ledger?).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use tokio::signal::unix::{signal, SignalKind};

use crate::cluster::{ClusterSpec, LocalCluster};
use crate::config::ByzantineSpec;
use crate::config::Protocol;
use crate::workload::{self, WorkloadSpec};

/// How long a cluster may take to elect a leader and connect.
const STARTUP: Duration = Duration::from_secs(30);
/// How long the correct nodes may take to catch up after the workload before the audit.
const CONVERGE: Duration = Duration::from_secs(15);

/// Which node a scheduled crash or restart hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Node(u64),
    /// Crash: whoever is leader/primary at that moment; restart: the node crashed that way.
    Leader,
}

/// `I@SECS` (or `leader@SECS`) on the command line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultAt {
    pub target: Target,
    pub at: f64,
}

impl std::str::FromStr for FaultAt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, t) = s
            .split_once('@')
            .ok_or_else(|| format!("expected I@SECS (e.g. 1@2.5 or leader@2), got {s:?}"))?;
        let target = if i.trim() == "leader" {
            Target::Leader
        } else {
            Target::Node(
                i.trim()
                    .parse()
                    .map_err(|_| format!("node index {i:?} is neither a number nor `leader`"))?,
            )
        };
        let at: f64 = t
            .trim()
            .parse()
            .map_err(|_| format!("time {t:?} is not a number of seconds"))?;
        if !(at.is_finite() && at >= 0.0) {
            return Err(format!("time {t:?} must be zero or more seconds"));
        }
        Ok(FaultAt { target, at })
    }
}

impl std::fmt::Display for FaultAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.target {
            Target::Node(i) => write!(f, "{i}@{}", self.at),
            Target::Leader => write!(f, "leader@{}", self.at),
        }
    }
}

/// One run of `local` (and one scenario of `demo`).
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub protocol: Protocol,
    pub nodes: usize,
    pub duration: Duration,
    pub rate: Option<f64>,
    pub clients: usize,
    pub batch: usize,
    pub payload: usize,
    pub byzantine: Vec<ByzantineSpec>,
    pub crash: Vec<FaultAt>,
    pub restart: Vec<FaultAt>,
    pub dir: Option<PathBuf>,
}

impl Scenario {
    pub fn new(protocol: Protocol, nodes: usize, duration: Duration) -> Scenario {
        Scenario {
            name: "custom".into(),
            protocol,
            nodes,
            duration,
            rate: None,
            clients: 4,
            batch: 100,
            payload: 16,
            byzantine: Vec::new(),
            crash: Vec::new(),
            restart: Vec::new(),
            dir: None,
        }
    }

    /// The faults as one short text (`none`, `byz 0=equivocate`, `crash leader@2 ...`).
    pub fn faults(&self) -> String {
        let mut parts = Vec::new();
        for b in &self.byzantine {
            parts.push(format!("byz {}={}", b.node, b.mode));
        }
        for c in &self.crash {
            parts.push(format!("crash {c}"));
        }
        for r in &self.restart {
            parts.push(format!("restart {r}"));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

/// The summary row `local`, `demo` and `bench` print.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub protocol: String,
    pub nodes: usize,
    pub faults: String,
    pub committed: u64,
    pub tx_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub msgs_per_tx: f64,
    pub bytes_per_tx: f64,
    /// Consensus messages per committed block, without client-request relays (the O(n) vs
    /// O(n²) figure); msgs_per_tx and bytes_per_tx count every message.
    pub msgs_per_batch: f64,
    pub blocks: u64,
    pub duration_s: f64,
    /// `safe` or `UNSAFE`.
    pub verdict: String,
    pub first_diverging_height: Option<u64>,
    /// Acknowledged transactions missing from the correct nodes' ledgers.
    pub acked_missing: u64,
    pub retries: u64,
    /// Pre-signed transactions ran out before the window ended.
    pub exhausted: bool,
    /// Where the testnet and node logs are (gone afterwards when it was a temporary dir).
    pub dir: String,
}

impl Summary {
    pub fn safe(&self) -> bool {
        self.verdict == "safe"
    }

    pub fn header() -> String {
        format!(
            "{:<10} {:<8} {:>5} {:<34} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}  {}",
            "scenario",
            "protocol",
            "nodes",
            "faults",
            "committed",
            "tx/s",
            "p50 ms",
            "p99 ms",
            "msgs/tx",
            "bytes/tx",
            "verdict"
        )
    }

    pub fn row(&self) -> String {
        let mut verdict = self.verdict.clone();
        if let Some(h) = self.first_diverging_height {
            verdict.push_str(&format!(" (diverged at height {h})"));
        } else if self.acked_missing > 0 {
            verdict.push_str(&format!(" ({} acked tx lost)", self.acked_missing));
        }
        format!(
            "{:<10} {:<8} {:>5} {:<34} {:>9} {:>8.0} {:>8.1} {:>8.1} {:>8.2} {:>9.0}  {}",
            self.scenario,
            self.protocol,
            self.nodes,
            self.faults,
            self.committed,
            self.tx_per_s,
            self.p50_ms,
            self.p99_ms,
            self.msgs_per_tx,
            self.bytes_per_tx,
            verdict
        )
    }
}

/// Runs one scenario end to end; every node process is gone when this returns (or is dropped).
pub async fn run_scenario(sc: &Scenario) -> Result<Summary> {
    let (eager, n) = (raft_eager_leader(sc), sc.nodes);
    for f in sc.crash.iter().chain(&sc.restart) {
        if let Target::Node(i) = f.target {
            if i as usize >= n {
                bail!("fault {f}: there are only nodes 0..{}", n.saturating_sub(1));
            }
        }
    }
    let mut cluster = LocalCluster::create(&ClusterSpec {
        protocol: sc.protocol,
        nodes: n,
        clients: sc.clients.max(1),
        byzantine: sc.byzantine.clone(),
        dir: sc.dir.clone(),
        eager_leader: eager,
    })?;
    if let Err(e) = cluster.start(STARTUP).await {
        return Err(cluster.start_failed(e));
    }
    let keys = (0..sc.clients.max(1))
        .map(|j| crate::keys::read_key(&cluster.dir.join(format!("client-{j}.key"))))
        .collect::<Result<Vec<_>, _>>()?;
    let http = crate::cluster::http_client()?;
    let spec = WorkloadSpec {
        duration: sc.duration,
        rate: sc.rate,
        batch: sc.batch,
        payload: sc.payload,
        // Signed up front: enough for 40k tx/s over the window, shared by the clients (a
        // saturating run that used them all up would end early and measure a shorter span);
        // a client sending one transaction per round trip needs no more than 5k per second.
        max_txs_per_client: ((sc.duration.as_secs_f64() * 40_000.0) as usize / sc.clients.max(1))
            .min((sc.duration.as_secs_f64() * 5_000.0 * sc.batch as f64) as usize)
            .max(1000),
    };
    let prepared = workload::prepare(&keys, &spec).await;
    let before = cluster.message_totals().await;
    let height_before = max_height(&cluster).await;
    let config = cluster.config.clone();
    let faults = run_faults(&mut cluster, sc);
    let load = workload::run(&config, prepared, &http);
    let (fault_result, report) = tokio::join!(faults, load);
    fault_result?;
    let after = cluster.message_totals().await;
    cluster.wait_converged(CONVERGE).await;
    let blocks = max_height(&cluster).await.saturating_sub(height_before);
    let safety = cluster.safety().await;
    // Checked on the correct node with the shortest ledger: the ledgers were just found equal
    // up to its height, so what it holds every correct node holds.
    let lowest = cluster
        .correct_heights()
        .await
        .into_iter()
        .min_by_key(|h| h.1)
        .map(|h| h.0);
    let acked_missing = match lowest {
        Some(i) if safety.safe => cluster.missing_acked(i, &report.acked).await,
        _ => 0,
    };
    let delta = after.since(&before);
    let (msgs, bytes) = (delta.messages, delta.bytes);
    let per = |x: f64, d: u64| if d > 0 { x / d as f64 } else { 0.0 };
    Ok(Summary {
        scenario: sc.name.clone(),
        protocol: sc.protocol.to_string(),
        nodes: n,
        faults: sc.faults(),
        committed: report.committed,
        tx_per_s: report.tx_per_s(),
        p50_ms: report.quantile_ms(0.5),
        p99_ms: report.quantile_ms(0.99),
        msgs_per_tx: per(msgs, report.committed),
        bytes_per_tx: per(bytes, report.committed),
        msgs_per_batch: per(delta.protocol_messages, blocks),
        blocks,
        duration_s: report.elapsed.as_secs_f64(),
        verdict: if safety.safe && acked_missing == 0 {
            "safe"
        } else {
            "UNSAFE"
        }
        .into(),
        first_diverging_height: safety.first_diverging_height,
        acked_missing,
        retries: report.retries,
        exhausted: report.exhausted,
        dir: cluster.dir.display().to_string(),
    })
}

/// A Byzantine Raft node is put in the leader's seat (a much shorter election timeout), since
/// that is where Raft's trust in its leader shows; PBFT keeps its normal rotation.
fn raft_eager_leader(sc: &Scenario) -> Option<u64> {
    (sc.protocol == Protocol::Raft)
        .then(|| sc.byzantine.first().map(|b| b.node))
        .flatten()
}

async fn max_height(cluster: &LocalCluster) -> u64 {
    cluster
        .correct_heights()
        .await
        .iter()
        .map(|h| h.1)
        .max()
        .unwrap_or(0)
}

/// Applies the crash/restart schedule, measured from the workload's start.
async fn run_faults(cluster: &mut LocalCluster, sc: &Scenario) -> Result<()> {
    #[derive(Clone, Copy)]
    enum Kind {
        Crash,
        Restart,
    }
    let mut events: Vec<(f64, Kind, Target)> = sc
        .crash
        .iter()
        .map(|c| (c.at, Kind::Crash, c.target))
        .chain(sc.restart.iter().map(|r| (r.at, Kind::Restart, r.target)))
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let start = Instant::now();
    let mut crashed_leader = None;
    for (at, kind, target) in events {
        tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
        let node = match target {
            Target::Node(i) => Some(i as usize),
            Target::Leader => match kind {
                Kind::Crash => cluster.leader().await.map(|l| l as usize),
                Kind::Restart => crashed_leader,
            },
        };
        let Some(i) = node else { continue };
        match kind {
            Kind::Crash => {
                cluster.kill(i);
                if target == Target::Leader {
                    crashed_leader = Some(i);
                }
            }
            Kind::Restart => {
                if !cluster.is_running(i) {
                    cluster.spawn(i)?;
                }
            }
        }
    }
    Ok(())
}

/// Runs `fut` on a fresh runtime; Ctrl-C drops it (killing every node process it owns through
/// the cluster's Drop) and turns into an error.
pub fn block_on_interruptible<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        // Registered before the work starts, so a signal never hits the default handler (which
        // would end this process and orphan the nodes).
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = fut => r,
            _ = int.recv() => bail!("interrupted; every node process was stopped"),
            _ = term.recv() => bail!("terminated; every node process was stopped"),
        }
    })
}

/// `faultline local`: prints the row (or JSON) and returns whether the run was safe.
pub fn local(sc: Scenario, json: bool) -> Result<bool> {
    let s = block_on_interruptible(run_scenario(&sc))?;
    if json {
        outln!("{}", serde_json::to_string(&s)?);
    } else {
        outln!("{}", Summary::header());
        outln!("{}", s.row());
    }
    Ok(s.safe())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_times_parse_node_or_leader() {
        let f: FaultAt = "1@2.5".parse().unwrap();
        assert_eq!((f.target, f.at), (Target::Node(1), 2.5));
        let f: FaultAt = "leader@4".parse().unwrap();
        assert_eq!((f.target, f.at), (Target::Leader, 4.0));
        for bad in ["1", "x@2", "1@-1", "1@soon", "1@inf"] {
            assert!(bad.parse::<FaultAt>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_byzantine_raft_node_is_made_the_eager_leader_but_not_in_pbft() {
        let mut sc = Scenario::new(Protocol::Raft, 3, Duration::from_secs(1));
        sc.byzantine = vec!["2=equivocate".parse().unwrap()];
        assert_eq!(raft_eager_leader(&sc), Some(2));
        sc.protocol = Protocol::Pbft;
        assert_eq!(raft_eager_leader(&sc), None);
        assert_eq!(sc.faults(), "byz 2=equivocate");
    }
}
