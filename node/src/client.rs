//! `faultline client`: signs and submits transactions and queries the nodes of a cluster.
//! Raft: a write goes to any node (followers forward to the leader); on failure the next node is
//! tried. PBFT: a write goes to every node and is accepted once f+1 nodes sent matching replies
//! whose signatures verify against their public keys in cluster.toml (at least one is correct).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::config::{ClusterConfig, Protocol};
use crate::ledger::{Op, Tx, TxOutcome};

/// How long a write keeps trying (leader elections, restarts) before giving up.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);

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

/// Submits one signed transaction per the cluster's protocol.
pub async fn write(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    tx: &Tx,
) -> Result<WriteResult> {
    match cluster.protocol {
        Protocol::Raft => write_raft(cluster, http, tx).await,
        Protocol::Pbft => write_pbft(cluster, http, tx).await,
    }
}

async fn write_raft(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    tx: &Tx,
) -> Result<WriteResult> {
    let start = Instant::now();
    let mut last_err = String::from("no node answered");
    let mut i = 0usize;
    while start.elapsed() < WRITE_DEADLINE {
        let node = &cluster.nodes[i % cluster.nodes.len()];
        i += 1;
        let url = format!("http://{}/v1/tx", node.api);
        match http.post(&url).json(tx).send().await {
            Ok(resp) => {
                let code = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if code.is_success() {
                    return parse_reply(&body).context("unexpected reply");
                }
                if code.is_client_error() {
                    bail!(
                        "node {} refused the transaction: {}",
                        node.id,
                        err_text(&body)
                    );
                }
                last_err = format!("node {}: {}", node.id, err_text(&body));
            }
            Err(e) => last_err = format!("node {} unreachable: {e}", node.id),
        }
        if i % cluster.nodes.len() == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    bail!("the transaction was not committed in time ({last_err})")
}

fn err_text(body: &Value) -> String {
    body.get("error")
        .and_then(Value::as_str)
        .map_or_else(|| body.to_string(), str::to_string)
}

fn parse_reply(body: &Value) -> Option<WriteResult> {
    Some(WriteResult {
        height: body.get("height")?.as_u64()?,
        tx_hash: body.get("tx_hash")?.as_str()?.to_string(),
        result: body.get("result")?.clone(),
    })
}

/// Checks a node's signed reply; returns the signing node and the write result it vouches for.
pub fn verified_reply(cluster: &ClusterConfig, body: &Value) -> Option<(u64, WriteResult)> {
    let r = parse_reply(body)?;
    let node = cluster.node(body.get("node")?.as_u64()?)?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&r.tx_hash, &mut hash).ok()?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(body.get("signature")?.as_str()?, &mut sig).ok()?;
    let outcome: TxOutcome = serde_json::from_value(r.result.clone()).ok()?;
    crate::reply::verify(&node.public_key, &hash, r.height, &outcome, &sig).then_some((node.id, r))
}

async fn write_pbft(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    tx: &Tx,
) -> Result<WriteResult> {
    let need = cluster.f + 1;
    let start = Instant::now();
    while start.elapsed() < WRITE_DEADLINE {
        let mut tasks = tokio::task::JoinSet::new();
        for node in &cluster.nodes {
            let url = format!("http://{}/v1/tx", node.api);
            let req = http.post(url).json(tx);
            tasks.spawn(async move {
                let resp = req.send().await.ok()?;
                resp.json::<Value>().await.ok()
            });
        }
        // Matching replies counted per distinct signing node: one node's reply relayed twice
        // (or replayed) must not count twice.
        let mut votes: HashMap<(u64, String, String), HashSet<u64>> = HashMap::new();
        while let Some(res) = tasks.join_next().await {
            let Ok(Some(body)) = res else { continue };
            if let Some((node, r)) = verified_reply(cluster, &body) {
                let k = (r.height, r.tx_hash.clone(), r.result.to_string());
                let voters = votes.entry(k).or_default();
                voters.insert(node);
                if voters.len() >= need {
                    return Ok(r);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("fewer than f+1 = {need} matching signed replies arrived in time")
}

async fn get_json(http: &reqwest::Client, url: String) -> Result<(u16, Value)> {
    let resp = http.get(url).send().await?;
    let code = resp.status().as_u16();
    Ok((code, resp.json().await.unwrap_or(Value::Null)))
}

async fn get(cluster: &ClusterConfig, http: &reqwest::Client, key: &str) -> Result<()> {
    let mut last = String::new();
    for node in &cluster.nodes {
        let url = format!("http://{}/v1/kv/{key}", node.api);
        match get_json(http, url).await {
            Ok((200, v)) => {
                outln!(
                    "{} = {} (height {})",
                    key,
                    v.get("value").and_then(Value::as_str).unwrap_or(""),
                    v.get("height").unwrap_or(&Value::Null)
                );
                return Ok(());
            }
            Ok((404, _)) => {
                outln!("{key} not found");
                return Ok(());
            }
            Ok((_, v)) => last = format!("node {}: {}", node.id, err_text(&v)),
            Err(e) => last = format!("node {} unreachable: {e}", node.id),
        }
    }
    bail!("no node could answer the read ({last})")
}

async fn balance(cluster: &ClusterConfig, http: &reqwest::Client, account: &str) -> Result<()> {
    let mut last = String::new();
    for node in &cluster.nodes {
        let url = format!("http://{}/v1/balances/{account}", node.api);
        match get_json(http, url).await {
            Ok((200, v)) => {
                outln!(
                    "{account} = {} (height {})",
                    v.get("balance").unwrap_or(&Value::Null),
                    v.get("height").unwrap_or(&Value::Null)
                );
                return Ok(());
            }
            Ok((_, v)) => last = format!("node {}: {}", node.id, err_text(&v)),
            Err(e) => last = format!("node {} unreachable: {e}", node.id),
        }
    }
    bail!("no node could answer the read ({last})")
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
