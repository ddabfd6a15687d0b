//! `faultline client`: signs and submits transactions and queries the nodes of a cluster, by
//! the client protocol of [`crate::client_protocol`]. Raft: a write goes to one node (followers
//! forward to the leader); on failure the next node is tried. PBFT: a write goes to every node
//! and is accepted once f+1 nodes sent matching replies whose signatures verify against their
//! public keys in cluster.toml (at least one is correct).

pub mod admin;
mod reads;
pub mod wire;
pub mod writes;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::api_types::{BatchEntry, CommittedReply, StatusReply};
use crate::client_protocol::{Vouched, WriteQuorum};
use crate::config::ClusterConfig;
use crate::ledger::{Op, Tx};
use reads::{balance, get};
pub use reads::{decide_read, read_pbft};
use wire::Answer;
pub use writes::write;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Remove KEY.
    Delete { key: String },
    /// Move AMOUNT from account FROM to account TO.
    Transfer {
        from: String,
        to: String,
        amount: u64,
    },
    /// Read KEY (linearizable).
    Get { key: String },
    /// Read ACCOUNT's balance (linearizable; an account never credited has 0).
    Balance { account: String },
    /// What became of the transaction with this hash (e.g. after a write timed out).
    Receipt { hash: String },
    /// Every node's status, as a table.
    Status,
    /// Every node's height and head hash.
    Head,
    /// Print the block at HEIGHT as JSON.
    Block { height: u64 },
}

/// What a one-shot CLI command needs: the cluster, a runtime, an HTTP client, and the key file
/// (`key`, else `default_key` next to cluster.toml).
pub(crate) struct Cli {
    pub cluster: ClusterConfig,
    pub rt: tokio::runtime::Runtime,
    pub http: reqwest::Client,
    pub key_path: PathBuf,
}

impl Cli {
    pub(crate) fn new(cluster_path: &Path, key: Option<PathBuf>, default_key: &str) -> Result<Cli> {
        let cluster = ClusterConfig::load(cluster_path)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .context("cannot build the HTTP client")?;
        let key_path = key.unwrap_or_else(|| {
            cluster_path
                .parent()
                .unwrap_or(Path::new("."))
                .join(default_key)
        });
        Ok(Cli {
            cluster,
            rt,
            http,
            key_path,
        })
    }
}

pub fn run(cluster_path: &Path, key: Option<PathBuf>, cmd: ClientCommand) -> Result<()> {
    let Cli {
        cluster,
        rt,
        http,
        key_path,
    } = Cli::new(cluster_path, key, "client-0.key")?;
    rt.block_on(async {
        let op = match cmd {
            ClientCommand::Put { key, value } => Op::Put { key, value },
            ClientCommand::Delete { key } => Op::Delete { key },
            ClientCommand::Transfer { from, to, amount } => Op::Transfer { from, to, amount },
            ClientCommand::Get { key } => return get(&cluster, &http, &key).await,
            ClientCommand::Balance { account } => return balance(&cluster, &http, &account).await,
            ClientCommand::Receipt { hash } => return receipt(&cluster, &http, &hash).await,
            ClientCommand::Status => return status(&cluster, &http).await,
            ClientCommand::Head => return head(&cluster, &http).await,
            ClientCommand::Block { height } => return block(&cluster, &http, height).await,
        };
        let sk = crate::keys::read_key(&key_path)?;
        let tx = Tx::sign(&sk, next_seq(), op);
        let hash = hex::encode(tx.hash());
        let r = write(&cluster, &http, &tx).await.with_context(|| {
            format!("tx_hash={hash} may still commit: check with `faultline client receipt {hash}`")
        })?;
        print_committed(&r);
        Ok(())
    })
}

/// A sequence number that increases across runs and retries: microseconds since the epoch.
fn next_seq() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// The line a decided write or receipt prints; `result` as the JSON the node sent.
fn print_committed(e: &BatchEntry) {
    outln!(
        "committed height={} tx_hash={} result={}",
        e.height,
        hex::encode(e.tx_hash),
        serde_json::to_string(&e.result).unwrap_or_default()
    );
}

async fn get_answer(http: &reqwest::Client, url: String) -> Result<Answer> {
    Ok(wire::send(http.get(url)).await?)
}

/// Asks every node for the receipt; for PBFT, f+1 matching signed receipts are required (at
/// least one correct node vouches for it), for Raft one verified receipt.
async fn receipt(cluster: &ClusterConfig, http: &reqwest::Client, hash: &str) -> Result<()> {
    let mut tx_hash = [0u8; 32];
    if hex::decode_to_slice(hash, &mut tx_hash).is_err() {
        bail!("{hash:?} is not a transaction hash (64 hex characters)");
    }
    let mut quorum = WriteQuorum::new(cluster, [tx_hash]);
    let need = quorum.need();
    let mut not_found = 0;
    let mut last = String::from("no node answered");
    for node in &cluster.nodes {
        let url = format!("http://{}/v1/txs/{hash}", node.api);
        match get_answer(http, url).await {
            Ok(a) if a.code == 200 => {
                let vouched = a
                    .json::<CommittedReply>()
                    .and_then(|r| Vouched::committed(cluster, &r));
                match vouched {
                    Some(v) => {
                        if let Some(e) = quorum.add(v) {
                            print_committed(e);
                            return Ok(());
                        }
                    }
                    None => {
                        last = format!(
                            "node {}: a receipt whose signature does not verify",
                            node.id
                        )
                    }
                }
            }
            Ok(a) if a.code == 404 => not_found += 1,
            Ok(a) => last = format!("node {}: {}", node.id, a.error_text()),
            Err(e) => last = format!("node {} unreachable: {e}", node.id),
        }
    }
    if not_found > cluster.n() - need {
        bail!(
            "unknown transaction: {not_found} of {} nodes have not applied {hash}",
            cluster.n()
        );
    }
    bail!("fewer than {need} matching signed receipts ({last})")
}

/// A status field as the table shows it: `-` for null.
fn field(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

async fn node_status(http: &reqwest::Client, api: std::net::SocketAddr) -> Option<StatusReply> {
    wire::get(http.get(format!("http://{api}/v1/status"))).await
}

async fn status(cluster: &ClusterConfig, http: &reqwest::Client) -> Result<()> {
    outln!(
        "{:>4} {:<22} {:<13} {:>6} {:>6} {:>6} {:>8} {:>8} {:>5}  head",
        "id",
        "api",
        "role",
        "term",
        "view",
        "leader",
        "height",
        "commit",
        "peers"
    );
    for node in &cluster.nodes {
        match node_status(http, node.api).await {
            Some(s) => outln!(
                "{:>4} {:<22} {:<13} {:>6} {:>6} {:>6} {:>8} {:>8} {:>5}  {}",
                node.id,
                node.api.to_string(),
                s.role,
                field(s.term),
                field(s.view),
                field(s.leader),
                s.height,
                s.commit_index,
                s.peers_connected,
                hex::encode(s.head_hash),
            ),
            None => outln!("{:>4} {:<22} unreachable", node.id, node.api.to_string()),
        }
    }
    Ok(())
}

async fn head(cluster: &ClusterConfig, http: &reqwest::Client) -> Result<()> {
    for node in &cluster.nodes {
        match node_status(http, node.api).await {
            Some(s) => outln!(
                "node {} height={} head={}",
                node.id,
                s.height,
                hex::encode(s.head_hash)
            ),
            None => outln!("node {} unreachable", node.id),
        }
    }
    Ok(())
}

async fn block(cluster: &ClusterConfig, http: &reqwest::Client, height: u64) -> Result<()> {
    let mut last = String::new();
    for node in &cluster.nodes {
        match get_answer(http, format!("http://{}/v1/blocks/{height}", node.api)).await {
            Ok(a) if a.code == 200 => match a.json::<crate::ledger::Block>() {
                Some(b) => {
                    // Printed with its keys sorted, as this command always has.
                    outln!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::to_value(&b)?)?
                    );
                    return Ok(());
                }
                None => last = format!("node {}: not a block: {}", node.id, a.error_text()),
            },
            Ok(a) => last = format!("node {}: {}", node.id, a.error_text()),
            Err(e) => last = format!("node {} unreachable: {e}", node.id),
        }
    }
    bail!("no node returned block {height} ({last})")
}
