//! A whole cluster on this machine: a testnet written into a directory, one `faultline run`
//! child process per node on free loopback ports, crash (SIGKILL) and restart, and the safety
//! audit that compares the ledgers of the correct nodes afterwards.
//!
//! Every child is killed when the [`LocalCluster`] is dropped, so an error, a panic or a
//! Ctrl-C that drops the future owning it never leaves node processes behind.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::{ClusterConfig, NodeConfig, Protocol, Timing};
use crate::faults::ByzantineSpec;
use crate::testnet::{self, TestnetSpec};

/// How often a wait polls the nodes.
const POLL: Duration = Duration::from_millis(100);

/// Why a local cluster could not be set up or inspected.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot write the testnet: {0}")]
    Testnet(String),
    #[error("cannot find free loopback ports: {0}")]
    Ports(std::io::Error),
    #[error("cannot start node {node}: {source}")]
    Spawn { node: usize, source: std::io::Error },
    #[error("node {node} exited during startup (see {log})")]
    Exited { node: usize, log: String },
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { secs: u64, what: String },
    #[error("cannot read or write {path}: {detail}")]
    Io { path: String, detail: String },
    #[error("cannot locate the faultline binary: {0}")]
    Exe(std::io::Error),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// What cluster to run.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub protocol: Protocol,
    pub nodes: usize,
    /// Client keys to create (one per workload client).
    pub clients: usize,
    pub byzantine: Vec<ByzantineSpec>,
    /// Where to write the testnet and logs; a temporary directory (removed afterwards) if None.
    pub dir: Option<PathBuf>,
    /// Give this node a much shorter election timeout than the others, so it deterministically
    /// becomes the Raft leader (used to put a Byzantine node in the leader's seat).
    pub eager_leader: Option<u64>,
}

/// The outcome of comparing the ledgers of the correct nodes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SafetyReport {
    pub safe: bool,
    /// The first height at which two correct nodes hold different blocks.
    pub first_diverging_height: Option<u64>,
    /// Heights 1..=compared_height were compared on every correct node that answered.
    pub compared_height: u64,
    /// The correct nodes that answered and were compared.
    pub checked_nodes: Vec<u64>,
}

/// A running cluster of child processes; dropping it kills every child.
pub struct LocalCluster {
    /// Keeps a temporary directory alive (and removes it on drop, unless kept).
    tmp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub config: ClusterConfig,
    pub byzantine: Vec<u64>,
    children: Vec<Option<Child>>,
    exe: PathBuf,
    http: reqwest::Client,
    /// Start nodes with `--allow-partition` (the live view's partition control).
    allow_partition: bool,
}

/// `count` distinct loopback ports that were free a moment ago: all are bound at once (so the
/// kernel hands out distinct ones) and released just before the nodes bind them; a collision
/// with another process in between is caught at startup and retried.
pub fn free_ports(count: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ClusterError::Ports)?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ClusterError::Ports)
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// An HTTP client for talking to the local nodes.
pub fn http_client() -> Result<reqwest::Client, ClusterError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| ClusterError::Http(e.to_string()))
}

impl LocalCluster {
    /// Writes the testnet (not started).
    pub fn create(spec: &ClusterSpec) -> Result<LocalCluster, ClusterError> {
        let (tmp, dir) = match &spec.dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("faultline-local-")
                    .tempdir()
                    .map_err(|e| io_err(Path::new("temporary directory"), e))?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let cluster_path = testnet::write(&TestnetSpec {
            protocol: spec.protocol,
            nodes: spec.nodes,
            dir: dir.clone(),
            host: Ipv4Addr::LOCALHOST.into(),
            hosts: Vec::new(),
            // Placeholder ports: start() rewrites cluster.toml with free ones.
            base_port: 1024,
            clients: spec.clients.max(1),
            byzantine: spec.byzantine.clone(),
            timing: Timing::default(),
        })
        .map_err(|e| ClusterError::Testnet(format!("{e:#}")))?;
        if let Some(eager) = spec.eager_leader {
            for i in 0..spec.nodes as u64 {
                let path = dir.join(format!("node-{i}")).join("node.toml");
                let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
                let mut node: NodeConfig = toml::from_str(&text).map_err(|e| io_err(&path, e))?;
                if i == eager {
                    node.timing.election_ticks = 6;
                    node.timing.heartbeat_ticks = 2;
                } else {
                    node.timing.election_ticks = 100;
                }
                let text = toml::to_string_pretty(&node).map_err(|e| io_err(&path, e))?;
                std::fs::write(&path, text).map_err(|e| io_err(&path, e))?;
            }
        }
        let config = ClusterConfig::load(&cluster_path).map_err(|e| io_err(&cluster_path, e))?;
        Ok(LocalCluster {
            tmp,
            dir,
            config,
            byzantine: spec.byzantine.iter().map(|b| b.node).collect(),
            children: (0..spec.nodes).map(|_| None).collect(),
            exe: std::env::current_exe().map_err(ClusterError::Exe)?,
            http: http_client()?,
            allow_partition: false,
        })
    }

    /// Keeps the directory (and its node logs) after the cluster is gone, e.g. after a failure
    /// worth investigating; returns where it is.
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(t) = self.tmp.take() {
            let _ = t.keep();
        }
        self.dir.clone()
    }

    pub fn n(&self) -> usize {
        self.children.len()
    }

    pub fn is_byzantine(&self, i: u64) -> bool {
        self.byzantine.contains(&i)
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}.log"))
    }

    /// Picks free ports, starts every node and waits until all answer and agree on a leader;
    /// retries with new ports (and wiped data dirs) if a node dies at startup, e.g. because
    /// another process took its port in the meantime.
    pub async fn start(&mut self, deadline: Duration) -> Result<(), ClusterError> {
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                self.kill_all();
                for i in 0..self.n() {
                    let data = self.dir.join(format!("node-{i}")).join("data");
                    let _ = std::fs::remove_dir_all(data);
                }
            }
            self.assign_ports()?;
            for i in 0..self.n() {
                self.spawn(i)?;
            }
            match self.wait_ready(deadline).await {
                Ok(()) => return Ok(()),
                Err(e @ ClusterError::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ClusterError::Timeout {
            secs: deadline.as_secs(),
            what: "the cluster to start".into(),
        }))
    }

    fn assign_ports(&mut self) -> Result<(), ClusterError> {
        let n = self.n();
        let ports = free_ports(2 * n)?;
        for (i, node) in self.config.nodes.iter_mut().enumerate() {
            node.p2p = format!("/ip4/127.0.0.1/tcp/{}", ports[i]);
            node.api = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ports[n + i]);
        }
        let path = self.dir.join("cluster.toml");
        let text = toml::to_string_pretty(&self.config).map_err(|e| io_err(&path, e))?;
        std::fs::write(&path, text).map_err(|e| io_err(&path, e))
    }

    /// Starts node `i` (again) from its node.toml, appending to its log file.
    pub fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        let log_path = self.log_path(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_err(&log_path, e))?;
        let mut cmd = Command::new(&self.exe);
        die_with_parent(&mut cmd);
        cmd.arg("run")
            .arg("--config")
            .arg(self.dir.join(format!("node-{i}")).join("node.toml"));
        if self.allow_partition {
            cmd.arg("--allow-partition");
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| ClusterError::Spawn { node: i, source })?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Nodes started from now on accept partition requests from loopback
    /// (`faultline run --allow-partition`).
    pub fn set_allow_partition(&mut self, on: bool) {
        self.allow_partition = on;
    }

    /// Rewrites node `i`'s node.toml with `byzantine = MODE` (or without it) for its next start.
    /// A Byzantine Raft node also gets a short election timeout, so that it takes over when the
    /// leader fails: Raft trusts its leader, which is where a Byzantine node does its harm.
    pub fn set_byzantine(
        &mut self,
        i: usize,
        mode: Option<crate::faults::ByzantineMode>,
    ) -> Result<(), ClusterError> {
        let path = self.dir.join(format!("node-{i}")).join("node.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let mut node: NodeConfig = toml::from_str(&text).map_err(|e| io_err(&path, e))?;
        node.byzantine = mode;
        if self.config.protocol == Protocol::Raft {
            let d = Timing::default();
            (node.timing.election_ticks, node.timing.heartbeat_ticks) = match mode {
                Some(_) => (6, 2),
                None => (d.election_ticks, d.heartbeat_ticks),
            };
        }
        let text = toml::to_string_pretty(&node).map_err(|e| io_err(&path, e))?;
        std::fs::write(&path, text).map_err(|e| io_err(&path, e))?;
        self.byzantine.retain(|&b| b != i as u64);
        if mode.is_some() {
            self.byzantine.push(i as u64);
        }
        Ok(())
    }

    /// Tells node `i` to cut itself off from exactly `blocked` (`POST /v1/admin/partition`);
    /// whether it answered.
    pub async fn set_blocked(&self, i: usize, blocked: &[u64]) -> bool {
        let Some(node) = self.config.nodes.get(i) else {
            return false;
        };
        self.http
            .post(format!("http://{}/v1/admin/partition", node.api))
            .json(&serde_json::json!({ "blocked": blocked }))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// SIGKILL: a crash, whatever the node had not fsynced is gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id of node `i`, if it was started and not killed since.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children.get(i)?.as_ref().map(Child::id)
    }

    /// Runs nodes from `exe` instead of this process's own executable (a test harness is not
    /// the `faultline` binary).
    pub fn set_exe(&mut self, exe: PathBuf) {
        self.exe = exe;
    }

    /// SIGTERM, then waits (bounded) for a clean exit, else SIGKILL; returns whether the node
    /// shut down cleanly with status 0.
    pub fn terminate(&mut self, i: usize, deadline: Duration) -> bool {
        let Some(mut c) = self.children.get_mut(i).and_then(Option::take) else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// A cluster that did not start: stops every node and keeps the logs for the operator,
    /// whose error then says where they are.
    pub fn start_failed(&mut self, e: ClusterError) -> anyhow::Error {
        self.kill_all();
        let dir = self.keep_dir();
        anyhow::Error::new(e).context(format!(
            "the {} cluster did not start (node logs kept in {})",
            self.config.protocol,
            dir.display()
        ))
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.n() {
            self.kill(i);
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.children.get(i).is_some_and(Option::is_some)
    }

    /// The first started node that has exited on its own, if any.
    pub fn exited(&mut self) -> Option<usize> {
        self.children.iter_mut().enumerate().find_map(|(i, c)| {
            c.as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .map(|_| i)
        })
    }

    async fn get_json(&self, i: usize, path: &str) -> Option<Value> {
        let node = self.config.nodes.get(i)?;
        let resp = self
            .http
            .get(format!("http://{}{path}", node.api))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// GET /v1/status of node `i`, None if it does not answer.
    pub async fn status(&self, i: usize) -> Option<Value> {
        self.get_json(i, "/v1/status").await
    }

    /// The leader (raft) or primary (pbft) most running nodes name right now.
    pub async fn leader(&self) -> Option<u64> {
        let mut votes: HashMap<u64, usize> = HashMap::new();
        for i in 0..self.n() {
            if !self.is_running(i) {
                continue;
            }
            if let Some(l) = self.status(i).await.and_then(|s| s["leader"].as_u64()) {
                *votes.entry(l).or_default() += 1;
            }
        }
        votes.into_iter().max_by_key(|(_, c)| *c).map(|(l, _)| l)
    }

    /// Waits until every running node answers, is connected to all other running nodes, and
    /// all name the same leader/primary (which, for raft, says it is the leader).
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<(), ClusterError> {
        let start = Instant::now();
        loop {
            if let Some(i) = self.exited() {
                return Err(ClusterError::Exited {
                    node: i,
                    log: self.log_path(i).display().to_string(),
                });
            }
            if self.ready().await {
                return Ok(());
            }
            if start.elapsed() > deadline {
                return Err(ClusterError::Timeout {
                    secs: deadline.as_secs(),
                    what: "every node to answer and agree on a leader".into(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Byzantine nodes must answer and connect, but only the correct ones need to agree on the
    /// leader (a `disrupt` node may never settle).
    async fn ready(&self) -> bool {
        let running: Vec<usize> = (0..self.n()).filter(|&i| self.is_running(i)).collect();
        let mut leader = None;
        for &i in &running {
            let Some(s) = self.status(i).await else {
                return false;
            };
            if s["peers_connected"].as_u64() < Some(running.len().saturating_sub(1) as u64) {
                return false;
            }
            if self.is_byzantine(i as u64) {
                continue;
            }
            let Some(l) = s["leader"].as_u64() else {
                return false;
            };
            if leader.is_some_and(|x| x != l) {
                return false;
            }
            leader = Some(l);
        }
        match (self.config.protocol, leader) {
            (_, None) => false,
            (Protocol::Pbft, Some(_)) => true,
            (Protocol::Raft, Some(l)) => match self.status(l as usize).await {
                Some(s) => s["role"] == "leader",
                None => false,
            },
        }
    }

    /// Sums the sent-message counters over the nodes that answer.
    pub async fn message_totals(&self) -> MessageTotals {
        let mut total = MessageTotals::default();
        for node in &self.config.nodes {
            let Ok(resp) = self
                .http
                .get(format!("http://{}/metrics", node.api))
                .timeout(Duration::from_secs(5))
                .send()
                .await
            else {
                continue;
            };
            let Ok(text) = resp.text().await else {
                continue;
            };
            total.add(&parse_message_totals(&text));
        }
        total
    }

    /// The correct (non-Byzantine) nodes that are running.
    pub fn correct_running(&self) -> Vec<usize> {
        (0..self.n())
            .filter(|&i| self.is_running(i) && !self.is_byzantine(i as u64))
            .collect()
    }

    /// Heights of the correct running nodes that answer.
    pub async fn correct_heights(&self) -> Vec<(usize, u64, String)> {
        let mut out = Vec::new();
        for i in self.correct_running() {
            if let Some(s) = self.status(i).await {
                if let (Some(h), Some(hash)) = (s["height"].as_u64(), s["head_hash"].as_str()) {
                    out.push((i, h, hash.to_string()));
                }
            }
        }
        out
    }

    /// Waits (bounded) until the correct running nodes report the same height and head, so the
    /// audit compares finished ledgers; returns whether they converged.
    pub async fn wait_converged(&self, deadline: Duration) -> bool {
        let start = Instant::now();
        let want = self.correct_running().len();
        loop {
            let heads = self.correct_heights().await;
            if heads.len() == want && heads.windows(2).all(|w| w[0].1 == w[1].1) {
                return true;
            }
            if start.elapsed() > deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// GET /v1/blocks/{h} of node `i`.
    pub async fn block(&self, i: usize, h: u64) -> Option<Value> {
        self.get_json(i, &format!("/v1/blocks/{h}")).await
    }

    /// Compares the ledgers of the correct nodes. Blocks are hash-chained and every node
    /// computes the hashes of its own chain, so two correct nodes that agree at height h agree
    /// at every height below it: one comparison at the common height decides safety, and a
    /// binary search finds the first diverging height.
    pub async fn safety(&self) -> SafetyReport {
        let heads = self.correct_heights().await;
        let nodes: Vec<usize> = heads.iter().map(|h| h.0).collect();
        let min = heads.iter().map(|h| h.1).min().unwrap_or(0);
        let mut report = SafetyReport {
            safe: true,
            first_diverging_height: None,
            compared_height: min,
            checked_nodes: nodes.iter().map(|&i| i as u64).collect(),
        };
        if nodes.len() < 2 || min == 0 {
            return report;
        }
        if self.agree_at(&nodes, min).await != Some(false) {
            return report;
        }
        // Invariant: agree at lo (height 0 is the shared genesis), differ at hi.
        let (mut lo, mut hi) = (0, min);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.agree_at(&nodes, mid).await == Some(false) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        report.safe = false;
        report.first_diverging_height = Some(hi);
        report
    }

    /// Whether every node in `nodes` holds the same block hash at height `h` (None if a node
    /// did not return the block).
    async fn agree_at(&self, nodes: &[usize], h: u64) -> Option<bool> {
        let mut first: Option<String> = None;
        for &i in nodes {
            let b = self.block(i, h).await?;
            let hash = b["hash"].as_str()?.to_string();
            match &first {
                None => first = Some(hash),
                Some(f) if *f != hash => return Some(false),
                Some(_) => {}
            }
        }
        Some(true)
    }

    /// How many acknowledged transactions (tx hash, committed height) are not in the block at
    /// that height on correct node `i`; with the ledgers found equal this covers every correct
    /// node. Heights above the node's ledger count as missing.
    pub async fn missing_acked(&self, i: usize, acked: &[([u8; 32], u64)]) -> u64 {
        let mut by_height: HashMap<u64, Vec<[u8; 32]>> = HashMap::new();
        for (hash, h) in acked {
            by_height.entry(*h).or_default().push(*hash);
        }
        let mut missing = 0;
        for (h, hashes) in by_height {
            let in_block: std::collections::HashSet<[u8; 32]> = match self.block(i, h).await {
                Some(b) => serde_json::from_value::<crate::ledger::Block>(b)
                    .map(|b| b.txs.iter().map(|t| t.hash()).collect())
                    .unwrap_or_default(),
                None => Default::default(),
            };
            missing += hashes.iter().filter(|x| !in_block.contains(*x)).count() as u64;
        }
        missing
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Message types that relay a client's transaction between nodes rather than run consensus
/// on a batch (PBFT backups hand every request they receive to the primary).
pub const CLIENT_RELAY_TYPES: [&str; 1] = ["request"];

/// Sent-message counters, summed over types (and nodes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MessageTotals {
    /// Every message sent (`faultline_messages_sent_total`, all types).
    pub messages: f64,
    /// Every byte sent (`faultline_message_bytes_sent_total`, all types).
    pub bytes: f64,
    /// Messages of the consensus protocol proper: all types but the client relays.
    pub protocol_messages: f64,
}

impl MessageTotals {
    pub fn add(&mut self, o: &MessageTotals) {
        self.messages += o.messages;
        self.bytes += o.bytes;
        self.protocol_messages += o.protocol_messages;
    }

    /// `self - before`, floored at zero (a restarted node's counters start again at zero).
    pub fn since(&self, before: &MessageTotals) -> MessageTotals {
        MessageTotals {
            messages: (self.messages - before.messages).max(0.0),
            bytes: (self.bytes - before.bytes).max(0.0),
            protocol_messages: (self.protocol_messages - before.protocol_messages).max(0.0),
        }
    }
}

/// Sums the sent-message and sent-byte counters of one node's Prometheus text.
pub fn parse_message_totals(text: &str) -> MessageTotals {
    let mut t = MessageTotals::default();
    for line in text.lines() {
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if line.starts_with("faultline_messages_sent_total") {
            t.messages += value;
            let relay = CLIENT_RELAY_TYPES
                .iter()
                .any(|k| line.contains(&format!("type=\"{k}\"")));
            if !relay {
                t.protocol_messages += value;
            }
        } else if line.starts_with("faultline_message_bytes_sent_total") {
            t.bytes += value;
        }
    }
    t
}

/// Linux: the node gets SIGKILL when the thread that started it dies, which for `local`, `demo`
/// and `bench` is when the process dies, even by SIGKILL. Every other way out already kills
/// the nodes (the cluster's Drop, the SIGINT/SIGTERM handler); this covers the one that cannot.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: runs in the forked child before exec; prctl and getppid are async-signal-safe and
    // the closure only reads a copied integer.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then no signal would come.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the parent process exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_sent_counters_of_every_type() {
        let text = "# HELP x\nfaultline_messages_sent_total{type=\"prepare\"} 10\nfaultline_messages_sent_total{type=\"commit\"} 5\nfaultline_message_bytes_sent_total{type=\"commit\"} 700\nfaultline_messages_received_total{type=\"commit\"} 99\n";
        let t = parse_message_totals(text);
        assert_eq!(
            (t.messages, t.bytes, t.protocol_messages),
            (15.0, 700.0, 15.0)
        );
        let relay = "faultline_messages_sent_total{type=\"request\"} 7\nfaultline_messages_sent_total{type=\"commit\"} 5\n";
        let t = parse_message_totals(relay);
        assert_eq!((t.messages, t.protocol_messages), (12.0, 5.0));
    }

    #[test]
    fn free_ports_are_distinct() {
        let p = free_ports(8).unwrap();
        let set: std::collections::HashSet<_> = p.iter().collect();
        assert_eq!(set.len(), 8);
    }
}
