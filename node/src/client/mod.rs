//! `faultline client`: signs and submits transactions and queries the nodes of a cluster.
//! Raft: a write goes to any node (followers forward to the leader); on failure the next node is
//! tried. PBFT: a write goes to every node and is accepted once f+1 nodes sent matching replies
//! whose signatures verify against their public keys in cluster.toml (at least one is correct).

mod reads;
mod writes;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::config::{ClusterConfig, Protocol};
use crate::ledger::{Op, Tx};
use reads::{balance, get};
pub use reads::{decide_read, read_pbft, DecidedRead};
pub use writes::{verified_reply, write};

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

/// A committed write as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    pub height: u64,
    pub tx_hash: String,
    pub result: Value,
}

pub fn run(cluster_path: &Path, key: Option<PathBuf>, cmd: ClientCommand) -> Result<()> {
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
            .join("client-0.key")
    });
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
        outln!(
            "committed height={} tx_hash={} result={}",
            r.height,
            r.tx_hash,
            r.result
        );
        Ok(())
    })
}

/// A sequence number that increases across runs and retries: microseconds since the epoch.
fn next_seq() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

fn err_text(body: &Value) -> String {
    body.get("error")
        .and_then(Value::as_str)
        .map_or_else(|| body.to_string(), str::to_string)
}

async fn get_json(http: &reqwest::Client, url: String) -> Result<(u16, Value)> {
    let resp = http.get(url).send().await?;
    let code = resp.status().as_u16();
    Ok((code, resp.json().await.unwrap_or(Value::Null)))
}

/// Asks every node for the receipt; for PBFT, f+1 matching signed receipts are required (at
/// least one correct node vouches for it), for Raft one verified receipt.
async fn receipt(cluster: &ClusterConfig, http: &reqwest::Client, hash: &str) -> Result<()> {
    let need = match cluster.protocol {
        Protocol::Raft => 1,
        Protocol::Pbft => cluster.f + 1,
    };
    let mut votes: HashMap<(u64, String), HashSet<u64>> = HashMap::new();
    let mut not_found = 0;
    let mut last = String::from("no node answered");
    for node in &cluster.nodes {
        let url = format!("http://{}/v1/txs/{hash}", node.api);
        match get_json(http, url).await {
            Ok((200, v)) => {
                if let Some((id, r)) = verified_reply(cluster, &v) {
                    let voters = votes.entry((r.height, r.result.to_string())).or_default();
                    voters.insert(id);
                    if voters.len() >= need {
                        outln!(
                            "committed height={} tx_hash={} result={}",
                            r.height,
                            r.tx_hash,
                            r.result
                        );
                        return Ok(());
                    }
                } else {
                    last = format!(
                        "node {}: a receipt whose signature does not verify",
                        node.id
                    );
                }
            }
            Ok((404, _)) => not_found += 1,
            Ok((_, v)) => last = format!("node {}: {}", node.id, err_text(&v)),
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

fn field(v: &Value, k: &str) -> String {
    match v.get(k) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
    }
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
        match get_json(http, format!("http://{}/v1/status", node.api)).await {
            Ok((200, v)) => outln!(
                "{:>4} {:<22} {:<13} {:>6} {:>6} {:>6} {:>8} {:>8} {:>5}  {}",
                node.id,
                node.api.to_string(),
                field(&v, "role"),
                field(&v, "term"),
                field(&v, "view"),
                field(&v, "leader"),
                field(&v, "height"),
                field(&v, "commit_index"),
                field(&v, "peers_connected"),
                field(&v, "head_hash"),
            ),
            _ => outln!("{:>4} {:<22} unreachable", node.id, node.api.to_string()),
        }
    }
    Ok(())
}

async fn head(cluster: &ClusterConfig, http: &reqwest::Client) -> Result<()> {
    for node in &cluster.nodes {
        match get_json(http, format!("http://{}/v1/status", node.api)).await {
            Ok((200, v)) => outln!(
                "node {} height={} head={}",
                node.id,
                field(&v, "height"),
                field(&v, "head_hash")
            ),
            _ => outln!("node {} unreachable", node.id),
        }
    }
    Ok(())
}

async fn block(cluster: &ClusterConfig, http: &reqwest::Client, height: u64) -> Result<()> {
    let mut last = String::new();
    for node in &cluster.nodes {
        match get_json(http, format!("http://{}/v1/blocks/{height}", node.api)).await {
            Ok((200, v)) => {
                outln!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            Ok((_, v)) => last = format!("node {}: {}", node.id, err_text(&v)),
            Err(e) => last = format!("node {} unreachable: {e}", node.id),
        }
    }
    bail!("no node returned block {height} ({last})")
}
