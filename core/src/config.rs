//! `cluster.toml` and `node.toml` (docs/SPEC.md "Files"): who is in the cluster, how to reach them,
//! which clients may write, the genesis balances, and one node's local knobs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ledger::Genesis;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Raft,
    Pbft,
}

impl Protocol {
    /// The smallest cluster for this protocol (raft: 1 node; pbft: 3f+1 with f >= 1).
    pub fn min_nodes(self) -> usize {
        match self {
            Protocol::Raft => 1,
            Protocol::Pbft => 4,
        }
    }

    /// Faults tolerated by `n` nodes: raft n = 2f+1, pbft n = 3f+1.
    pub fn max_faults(self, n: usize) -> usize {
        match self {
            Protocol::Raft => n.saturating_sub(1) / 2,
            Protocol::Pbft => n.saturating_sub(1) / 3,
        }
    }

    /// Nodes that must be up and connected for the cluster to commit: a majority for raft
    /// (Raft §5.2), 2f+1 of 3f+1 for pbft (PBFT §4.1) — in both cases n − f.
    pub fn quorum(self, n: usize) -> usize {
        n - self.max_faults(n)
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Raft => "raft",
            Protocol::Pbft => "pbft",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub id: u64,
    pub peer_id: String,
    #[serde(with = "crate::ledger::hexser")]
    pub public_key: [u8; 32],
    /// libp2p multiaddr, e.g. `/ip4/127.0.0.1/tcp/7000`.
    pub p2p: String,
    /// HTTP API address, e.g. `127.0.0.1:8000`.
    pub api: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    #[serde(with = "crate::ledger::hexser")]
    pub public_key: [u8; 32],
}

/// A key that may sign administrative operations (docs/SPEC.md "Membership"): a signed admin
/// request names one of these or is refused with `403`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminEntry {
    #[serde(with = "crate::ledger::hexser")]
    pub public_key: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub protocol: Protocol,
    pub f: usize,
    #[serde(rename = "node")]
    pub nodes: Vec<NodeEntry>,
    #[serde(rename = "client", default)]
    pub clients: Vec<ClientEntry>,
    #[serde(rename = "admin", default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<AdminEntry>,
    #[serde(default)]
    pub genesis: Genesis,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.message().to_string(),
    })
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let c: ClusterConfig = read_toml(path)?;
        c.validate()?;
        Ok(c)
    }

    pub fn n(&self) -> usize {
        self.nodes.len()
    }

    /// Checks what a node relies on: ids 0..n in order, f within what n tolerates, every
    /// PeerId derived from its public key, no duplicate keys or addresses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.n();
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if n < self.protocol.min_nodes() {
            return bad(format!(
                "{} needs at least {} nodes, the cluster lists {n}",
                self.protocol,
                self.protocol.min_nodes()
            ));
        }
        if self.f > self.protocol.max_faults(n) {
            return bad(format!(
                "f = {} is more than {n} {} nodes tolerate (at most {})",
                self.f,
                self.protocol,
                self.protocol.max_faults(n)
            ));
        }
        let mut keys = BTreeSet::new();
        let mut apis = BTreeSet::new();
        let mut p2ps = BTreeSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.id != i as u64 {
                return bad(format!(
                    "node ids must be 0..{n} in order; entry {i} has id {}",
                    node.id
                ));
            }
            let derived = crate::keys::peer_id(&node.public_key).map_err(|_| {
                ConfigError::Invalid(format!("node {i}: public_key is not a valid ed25519 key"))
            })?;
            if derived.to_string() != node.peer_id {
                return bad(format!(
                    "node {i}: peer_id {} does not match its public_key (expected {derived})",
                    node.peer_id
                ));
            }
            if !keys.insert(node.public_key) {
                return bad(format!("node {i}: public_key is used twice"));
            }
            if !apis.insert(node.api) || !p2ps.insert(node.p2p.as_str()) {
                return bad(format!("node {i}: an address is used twice"));
            }
        }
        let mut admins = BTreeSet::new();
        for (j, admin) in self.admins.iter().enumerate() {
            if ed25519_dalek::VerifyingKey::from_bytes(&admin.public_key).is_err() {
                return bad(format!("admin {j}: public_key is not a valid ed25519 key"));
            }
            if !admins.insert(admin.public_key) {
                return bad(format!("admin {j}: public_key is listed twice"));
            }
        }
        Ok(())
    }

    pub fn is_admin(&self, key: &[u8; 32]) -> bool {
        self.admins.iter().any(|a| &a.public_key == key)
    }

    pub fn node(&self, id: u64) -> Option<&NodeEntry> {
        self.nodes.get(usize::try_from(id).ok()?)
    }

    pub fn is_client(&self, key: &[u8; 32]) -> bool {
        self.clients.iter().any(|c| &c.public_key == key)
    }
}

/// Local knobs of one node. Every field but `id`, `cluster`, `key_file`, `data_dir` has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u64,
    /// Path to cluster.toml (relative paths are relative to node.toml's directory).
    pub cluster: PathBuf,
    pub key_file: PathBuf,
    pub data_dir: PathBuf,
    /// Run a misbehaviour instead of the honest protocol (for experiments only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byzantine: Option<ByzantineMode>,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub batching: Batching,
    #[serde(default)]
    pub limits: Limits,
}

/// Default [`Limits::max_message_bytes`]: 4 MiB, the network's frame limit
/// (`faultline_net::DEFAULT_MAX_FRAME_BYTES`; a node test keeps the two equal).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;
/// Smallest [`Limits::max_message_bytes`] accepted: room for the largest transaction (two
/// 64 KiB fields) with its envelope, so every legal transaction fits in some batch.
pub const MIN_MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Largest [`Limits::max_message_bytes`] accepted: a PBFT replica drops anything larger
/// undecoded, so a bigger budget would let a primary cut batches nobody accepts.
pub const MAX_MAX_MESSAGE_BYTES: usize = faultline_bft::MAX_MESSAGE_BYTES;

/// Resource limits. `max_message_bytes` is THE size budget of the system
/// (docs/ARCHITECTURE.md §8 "Every message fits"): the network refuses frames above it, and both
/// protocol cores cut batches and split everything that grows with load or history (view
/// changes, state transfer, block sync) so that no message they produce exceeds it. Every
/// node of a cluster must use the same value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Clock knobs. Protocol timeouts are counted in ticks so the cores stay clock-free.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// Length of one tick in milliseconds.
    pub tick_ms: u64,
    /// Raft: election timeout base, randomized in [election_ticks, 2*election_ticks).
    pub election_ticks: u32,
    /// Raft: heartbeat interval.
    pub heartbeat_ticks: u32,
    /// PBFT: view-change timeout (doubles on each consecutive view change).
    pub view_change_ticks: u32,
    /// PBFT: checkpoint interval K in sequence numbers.
    pub checkpoint_interval: u64,
    /// Raft: compact the Raft log (never the blocks) every this many applied entries; a
    /// follower behind the compacted log catches up by snapshot + block sync.
    pub compact_every: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            tick_ms: 10,
            election_ticks: 30,
            heartbeat_ticks: 5,
            view_change_ticks: 100,
            checkpoint_interval: 64,
            compact_every: 1024,
        }
    }
}

/// Batching knobs: how many client transactions go into one block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Batching {
    pub max_batch_txs: usize,
    /// Proposals allowed in flight before new ones wait (pipelining depth).
    pub max_inflight_batches: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_batch_txs: 2048,
            max_inflight_batches: 8,
        }
    }
}

impl NodeConfig {
    /// Loads node.toml and resolves its relative paths against the file's directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let mut c: NodeConfig = read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.cluster, &mut c.key_file, &mut c.data_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.validate(&path.display().to_string())?;
        Ok(c)
    }

    /// Checks the knobs; `origin` names the file in messages.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if self.timing.tick_ms == 0 || self.timing.heartbeat_ticks >= self.timing.election_ticks {
            return Err(ConfigError::Invalid(format!(
                "{origin}: need tick_ms > 0 and heartbeat_ticks < election_ticks"
            )));
        }
        if self.batching.max_batch_txs == 0 || self.batching.max_inflight_batches == 0 {
            return Err(ConfigError::Invalid(format!(
                "{origin}: batching sizes must be at least 1"
            )));
        }
        let max = self.limits.max_message_bytes;
        if !(MIN_MAX_MESSAGE_BYTES..=MAX_MAX_MESSAGE_BYTES).contains(&max) {
            return Err(ConfigError::Invalid(format!(
                "{origin}: limits.max_message_bytes must be between {MIN_MAX_MESSAGE_BYTES} and {MAX_MAX_MESSAGE_BYTES}, got {max}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(max_message_bytes: usize) -> NodeConfig {
        NodeConfig {
            id: 0,
            cluster: "cluster.toml".into(),
            key_file: "node.key".into(),
            data_dir: "data".into(),
            byzantine: None,
            timing: Timing::default(),
            batching: Batching::default(),
            limits: Limits { max_message_bytes },
        }
    }

    /// The budget must lie where both the network and every PBFT replica accept a full batch.
    #[test]
    fn message_budget_is_bounded_both_ways() {
        assert!(node(DEFAULT_MAX_MESSAGE_BYTES).validate("t").is_ok());
        assert!(node(MIN_MAX_MESSAGE_BYTES).validate("t").is_ok());
        assert!(node(MAX_MAX_MESSAGE_BYTES).validate("t").is_ok());
        assert!(node(MIN_MAX_MESSAGE_BYTES - 1).validate("t").is_err());
        let err = node(MAX_MAX_MESSAGE_BYTES + 1).validate("t").unwrap_err();
        assert!(err.to_string().contains("must be between"), "{err}");
    }
}

/// A misbehaviour a node can be started with to test the protocols against it (docs/SPEC.md
/// "Byzantine modes"); `faults` implements each one.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ByzantineMode {
    /// Receives everything, sends nothing (omission).
    Silent,
    /// As leader/primary sends conflicting proposals for one slot; as voter votes for everything.
    Equivocate,
    /// Sends messages with invalid signatures or claiming another sender.
    Forge,
    /// Sends tampered payloads: wrong digests, altered transactions, lies about its log.
    Corrupt,
    /// Acknowledges entries/phases without persisting or checking them.
    AckWithoutStore,
    /// Inflates term/view numbers to force elections or view changes.
    Disrupt,
}

impl ByzantineMode {
    pub const ALL: [ByzantineMode; 6] = [
        ByzantineMode::Silent,
        ByzantineMode::Equivocate,
        ByzantineMode::Forge,
        ByzantineMode::Corrupt,
        ByzantineMode::AckWithoutStore,
        ByzantineMode::Disrupt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ByzantineMode::Silent => "silent",
            ByzantineMode::Equivocate => "equivocate",
            ByzantineMode::Forge => "forge",
            ByzantineMode::Corrupt => "corrupt",
            ByzantineMode::AckWithoutStore => "ack-without-store",
            ByzantineMode::Disrupt => "disrupt",
        }
    }
}

impl std::fmt::Display for ByzantineMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `I=MODE` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByzantineSpec {
    pub node: u64,
    pub mode: ByzantineMode,
}

impl std::str::FromStr for ByzantineSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, m) = s
            .split_once('=')
            .ok_or_else(|| format!("expected I=MODE (e.g. 0=equivocate), got {s:?}"))?;
        let node = i
            .trim()
            .parse()
            .map_err(|_| format!("node index {i:?} is not a number"))?;
        let mode = <ByzantineMode as clap::ValueEnum>::from_str(m.trim(), true).map_err(|_| {
            let names: Vec<_> = ByzantineMode::ALL.iter().map(|m| m.name()).collect();
            format!("unknown mode {m:?}; one of: {}", names.join(", "))
        })?;
        Ok(ByzantineSpec { node, mode })
    }
}
