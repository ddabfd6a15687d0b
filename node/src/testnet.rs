//! `faultline testnet`: writes every file a cluster needs (docs/SPEC.md "Files"), usable as-is on
//! loopback.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::ByzantineSpec;
use crate::config::{
    AdminEntry, Batching, ClientEntry, ClusterConfig, Limits, NodeConfig, NodeEntry, Protocol,
    Timing,
};
use crate::keys;
use crate::ledger::Genesis;

/// What to generate.
#[derive(Clone, Debug)]
pub struct TestnetSpec {
    pub protocol: Protocol,
    pub nodes: usize,
    pub dir: PathBuf,
    pub host: IpAddr,
    /// One address per node (multi-host clusters); empty: every node on `host`.
    pub hosts: Vec<IpAddr>,
    pub base_port: u16,
    pub clients: usize,
    /// Admin keys to create (`admin-<j>.key`, listed as `[[admin]]`).
    pub admins: usize,
    pub byzantine: Vec<ByzantineSpec>,
    pub timing: Timing,
}

/// Accounts funded at genesis, so transfers work out of the box.
pub const GENESIS_ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "dave"];
pub const GENESIS_BALANCE: u64 = 1_000_000;

/// Writes the files and returns the path of cluster.toml.
pub fn write(spec: &TestnetSpec) -> Result<PathBuf> {
    let n = spec.nodes;
    if n < spec.protocol.min_nodes() {
        match spec.protocol {
            Protocol::Raft => bail!("raft needs at least 1 node, got --nodes {n}"),
            Protocol::Pbft => bail!(
                "pbft needs at least 4 nodes (n = 3f+1 with f = 1; with fewer, one Byzantine node can split the rest), got --nodes {n}"
            ),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for b in &spec.byzantine {
        if b.node as usize >= n {
            bail!("--byzantine {}: there are only nodes 0..{}", b.node, n - 1);
        }
        if !seen.insert(b.node) {
            bail!("--byzantine {}: one mode per node", b.node);
        }
    }
    if !spec.hosts.is_empty() {
        if spec.hosts.len() != n {
            bail!(
                "--hosts lists {} addresses for --nodes {n}: give one address per node",
                spec.hosts.len()
            );
        }
        let mut distinct = std::collections::BTreeSet::new();
        for h in &spec.hosts {
            if !distinct.insert(h) {
                bail!("--hosts lists {h} twice: each node needs its own address (use --host for several nodes on one machine)");
            }
        }
    }
    let last_port = u32::from(spec.base_port) + 2 * n as u32;
    if last_port > u32::from(u16::MAX) {
        bail!(
            "--base-port {} leaves no room for {n} nodes (2 ports each)",
            spec.base_port
        );
    }
    let cluster_path = spec.dir.join("cluster.toml");
    if cluster_path.exists() {
        bail!(
            "{} already exists; pick an empty --dir (refusing to overwrite a cluster's keys)",
            cluster_path.display()
        );
    }
    std::fs::create_dir_all(&spec.dir)
        .with_context(|| format!("cannot create {}", spec.dir.display()))?;

    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let node_dir = spec.dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&node_dir)
            .with_context(|| format!("cannot create {}", node_dir.display()))?;
        let key = keys::generate()?;
        keys::write_key(&node_dir.join("node.key"), &key)?;
        let public_key = key.verifying_key().to_bytes();
        // On one host every node needs its own ports; across hosts every node uses the same
        // two, so one firewall rule and one unit file fit all of them.
        let (host, p2p_port, api_port) = match spec.hosts.get(i) {
            Some(&h) => (h, spec.base_port, spec.base_port + 1),
            None => (
                spec.host,
                spec.base_port + i as u16,
                spec.base_port + (n + i) as u16,
            ),
        };
        let ip = match host {
            IpAddr::V4(_) => "ip4",
            IpAddr::V6(_) => "ip6",
        };
        nodes.push(NodeEntry {
            id: i as u64,
            peer_id: keys::peer_id(&public_key)?.to_string(),
            public_key,
            p2p: format!("/{ip}/{host}/tcp/{p2p_port}"),
            api: SocketAddr::new(host, api_port),
        });
        let node = NodeConfig {
            id: i as u64,
            cluster: PathBuf::from("../cluster.toml"),
            key_file: PathBuf::from("node.key"),
            data_dir: PathBuf::from("data"),
            byzantine: spec
                .byzantine
                .iter()
                .find(|b| b.node == i as u64)
                .map(|b| b.mode),
            timing: spec.timing.clone(),
            batching: Batching::default(),
            limits: Limits::default(),
        };
        write_toml(&node_dir.join("node.toml"), &node)?;
    }
    let clients = write_keys(&spec.dir, "client", spec.clients)?
        .into_iter()
        .map(|public_key| ClientEntry { public_key })
        .collect();
    let admins = write_keys(&spec.dir, "admin", spec.admins)?
        .into_iter()
        .map(|public_key| AdminEntry { public_key })
        .collect();
    let cluster = ClusterConfig {
        protocol: spec.protocol,
        f: spec.protocol.max_faults(n),
        nodes,
        clients,
        admins,
        genesis: Genesis {
            balances: GENESIS_ACCOUNTS
                .iter()
                .map(|a| (a.to_string(), GENESIS_BALANCE))
                .collect(),
        },
    };
    cluster.validate()?;
    write_toml(&cluster_path, &cluster)?;
    Ok(cluster_path)
}

/// Writes `DIR/<prefix>-<j>.key` for j in 0..count; returns their public keys.
fn write_keys(dir: &Path, prefix: &str, count: usize) -> Result<Vec<[u8; 32]>> {
    (0..count)
        .map(|j| {
            let key = keys::generate()?;
            keys::write_key(&dir.join(format!("{prefix}-{j}.key")), &key)?;
            Ok(key.verifying_key().to_bytes())
        })
        .collect()
}

fn write_toml<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = toml::to_string_pretty(value).context("cannot encode TOML")?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
