//! A whole cluster on this machine: a testnet written into a directory, one `faultline run`
//! child process per node on free loopback ports, crash (SIGKILL) and restart, and the safety
//! audit that compares the ledgers of the correct nodes afterwards.
//!
//! Every child is killed when the [`LocalCluster`] is dropped, so an error, a panic or a
//! Ctrl-C that drops the future owning it never leaves node processes behind.

mod probes;
mod process;
mod safety;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::config::ByzantineSpec;
use crate::config::{ClusterConfig, NodeConfig, Protocol, Timing};
use crate::testnet::{self, TestnetSpec};
pub use probes::{parse_message_totals, MessageTotals, CLIENT_RELAY_TYPES};
pub use safety::SafetyReport;

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
            // One admin key (admin-0.key), so an operator can try `faultline admin` on it.
            admins: 1,
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
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

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
