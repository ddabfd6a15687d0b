//! Writes: one signed transaction submitted per the cluster's protocol — raft to one node at
//! a time until one commits it, pbft to every node until f+1 matching signed replies agree —
//! and the check of a node's signed reply.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{err_text, WriteResult};
use crate::config::{ClusterConfig, Protocol};
use crate::ledger::{Tx, TxOutcome};

/// How long a write keeps trying (leader elections, restarts) before giving up.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);

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
