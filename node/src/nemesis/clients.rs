//! The workload: concurrent clients, each with its own key and one operation at a time, doing
//! transfers between the genesis accounts, puts of unique values to a few keys, and reads of
//! those keys from random nodes. A write that fails or times out is sent again with the SAME
//! `(client, seq)` to the next node (raft) or to every replica (pbft) until it is acknowledged
//! or its retry window ends; a node must answer such a duplicate with the original result and
//! never apply it twice, which the audit checks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::Value;

use super::history::{Op, OpKind, Outcome};
use crate::config::{ClusterConfig, Protocol};
use crate::ledger::{self, Tx, TxOutcome};

/// How long one write keeps retrying before it is recorded as unknown. Longer than a leader
/// election or view change plus a restart, so that under at most f faults a write normally
/// gets its answer.
const WRITE_WINDOW: Duration = Duration::from_secs(30);
/// One request's timeout: a SIGSTOPped node never answers, so a client must move on.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);
/// A read's timeout (a failed read is dropped from the history: it had no effect).
const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a round of attempts that all failed.
const BACKOFF: Duration = Duration::from_millis(200);

/// What every client shares.
pub struct Ctx {
    pub cluster: ClusterConfig,
    pub http: reqwest::Client,
    pub start: Instant,
    /// Set when the clients must stop starting new operations.
    pub stop: AtomicBool,
    /// The registers the workload writes and reads.
    pub keys: Vec<String>,
    /// The accounts transfers move money between.
    pub accounts: Vec<String>,
}

impl Ctx {
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Runs one client until `ctx.stop`; returns its operations.
pub async fn run_client(ctx: Arc<Ctx>, id: usize, key: SigningKey, seed: u64) -> Vec<Op> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ops = Vec::new();
    let mut seq = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let roll = rng.next_u64() % 10;
        let key_name = ctx.keys[(rng.next_u64() % ctx.keys.len() as u64) as usize].clone();
        let op = if roll < 3 {
            read(&ctx, id, key_name, &mut rng).await
        } else {
            seq += 1;
            let op = if roll < 6 {
                ledger::Op::Put {
                    key: key_name,
                    // Unique per write, so a read names the write it saw.
                    value: format!("c{id}-s{seq}"),
                }
            } else {
                let n = ctx.accounts.len() as u64;
                let from = (rng.next_u64() % n) as usize;
                let to = (from + 1 + (rng.next_u64() % (n - 1)) as usize) % n as usize;
                ledger::Op::Transfer {
                    from: ctx.accounts[from].clone(),
                    to: ctx.accounts[to].clone(),
                    // Up to half a genesis balance, so overdrafts happen and must be refused.
                    amount: 1 + rng.next_u64() % (crate::testnet::GENESIS_BALANCE / 2),
                }
            };
            write(&ctx, id, Tx::sign(&key, seq, op), &mut rng).await
        };
        ops.push(op);
        // A short think time keeps the ledger from growing faster than the audit can scan.
        tokio::time::sleep(Duration::from_millis(rng.next_u64() % 20)).await;
    }
    ops
}

async fn read(ctx: &Ctx, client: usize, key: String, rng: &mut ChaCha8Rng) -> Op {
    let node = &ctx.cluster.nodes[(rng.next_u64() % ctx.cluster.nodes.len() as u64) as usize];
    let invoke_ns = ctx.now_ns();
    let url = format!("http://{}/v1/kv/{key}", node.api);
    let outcome = match ctx.http.get(url).timeout(READ_TIMEOUT).send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            match code {
                200 => match body.get("value").and_then(Value::as_str) {
                    Some(v) => Outcome::Read(Some(v.to_string())),
                    None => Outcome::Failed(format!("node {}: reply without value", node.id)),
                },
                404 => Outcome::Read(None),
                _ => Outcome::Failed(format!("node {}: {code} {body}", node.id)),
            }
        }
        Err(e) => Outcome::Failed(format!("node {}: {e}", node.id)),
    };
    Op {
        client,
        tx: None,
        kind: OpKind::Read { key },
        invoke_ns,
        complete_ns: Some(ctx.now_ns()),
        outcome,
        attempts: 1,
    }
}

/// The answer to one attempt.
enum Attempt {
    Acked {
        height: u64,
        result: TxOutcome,
    },
    /// 400/403: the transaction itself is unacceptable; retrying cannot help.
    Refused(String),
    Retry(String),
}

async fn write(ctx: &Ctx, client: usize, tx: Tx, rng: &mut ChaCha8Rng) -> Op {
    let hash = tx.hash();
    let kind = match &tx.op {
        ledger::Op::Put { key, value } => OpKind::Put {
            key: key.clone(),
            value: value.clone(),
        },
        ledger::Op::Transfer { from, to, amount } => OpKind::Transfer {
            from: from.clone(),
            to: to.clone(),
            amount: *amount,
        },
        ledger::Op::Delete { key } => OpKind::Put {
            key: key.clone(),
            value: String::new(),
        },
        // Nemesis clients never build markers (only replicas sign them).
        ledger::Op::Read {} => OpKind::Put {
            key: String::new(),
            value: String::new(),
        },
    };
    let body = serde_json::to_vec(&tx).unwrap_or_default();
    let invoke_ns = ctx.now_ns();
    let started = Instant::now();
    let n = ctx.cluster.nodes.len();
    let mut next = (rng.next_u64() % n as u64) as usize;
    let mut attempts = 0u32;
    let mut last = String::from("no attempt");
    let outcome = loop {
        if started.elapsed() > WRITE_WINDOW {
            break Outcome::Unknown(last);
        }
        attempts += 1;
        let answer = match ctx.cluster.protocol {
            Protocol::Raft => {
                let a = raft_attempt(ctx, next % n, &body, &hash).await;
                next += 1;
                a
            }
            Protocol::Pbft => pbft_attempt(ctx, &body, &hash).await,
        };
        match answer {
            Attempt::Acked { height, result } => break Outcome::Committed { height, result },
            Attempt::Refused(e) => break Outcome::Failed(e),
            Attempt::Retry(e) => last = e,
        }
        if ctx.cluster.protocol == Protocol::Pbft || next % n == 0 {
            tokio::time::sleep(BACKOFF).await;
        }
    };
    let complete_ns = match outcome {
        Outcome::Unknown(_) => None,
        _ => Some(ctx.now_ns()),
    };
    Op {
        client,
        tx: Some((tx.seq, hash)),
        kind,
        invoke_ns,
        complete_ns,
        outcome,
        attempts,
    }
}

/// Checks a committed reply: signed by the node it names, for this transaction.
fn check_reply(ctx: &Ctx, body: &Value, hash: &[u8; 32]) -> Option<(u64, u64, TxOutcome)> {
    let (node, r) = crate::client::verified_reply(&ctx.cluster, body)?;
    if r.tx_hash != hex::encode(hash) {
        return None;
    }
    let result: TxOutcome = serde_json::from_value(r.result).ok()?;
    Some((node, r.height, result))
}

/// Raft: one node (a follower forwards to the leader).
async fn raft_attempt(ctx: &Ctx, i: usize, body: &[u8], hash: &[u8; 32]) -> Attempt {
    let node = &ctx.cluster.nodes[i];
    let req = ctx
        .http
        .post(format!("http://{}/v1/tx", node.api))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .timeout(ATTEMPT_TIMEOUT);
    match req.send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            match code {
                200 => match check_reply(ctx, &body, hash) {
                    Some((_, height, result)) => Attempt::Acked { height, result },
                    None => Attempt::Retry(format!("node {}: unverifiable reply {body}", node.id)),
                },
                400 | 403 => Attempt::Refused(format!("node {}: {code} {body}", node.id)),
                _ => Attempt::Retry(format!("node {}: {code} {body}", node.id)),
            }
        }
        Err(e) => Attempt::Retry(format!("node {}: {e}", node.id)),
    }
}

/// PBFT: every replica; acknowledged by f+1 matching signed replies from distinct replicas
/// (at least one of them correct, PBFT §4.1).
async fn pbft_attempt(ctx: &Ctx, body: &[u8], hash: &[u8; 32]) -> Attempt {
    let need = ctx.cluster.f + 1;
    let mut tasks = tokio::task::JoinSet::new();
    for node in &ctx.cluster.nodes {
        let req = ctx
            .http
            .post(format!("http://{}/v1/tx", node.api))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .timeout(ATTEMPT_TIMEOUT);
        let id = node.id;
        tasks.spawn(async move {
            let resp = req.send().await.map_err(|e| format!("node {id}: {e}"))?;
            let code = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            Ok::<_, String>((id, code, body))
        });
    }
    let mut votes: HashMap<(u64, String), HashSet<u64>> = HashMap::new();
    let mut last = String::from("no replica answered");
    while let Some(res) = tasks.join_next().await {
        let (id, code, body) = match res {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                last = e;
                continue;
            }
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        if code == 400 || code == 403 {
            return Attempt::Refused(format!("node {id}: {code} {body}"));
        }
        if code != 200 {
            last = format!("node {id}: {code} {body}");
            continue;
        }
        let Some((node, height, result)) = check_reply(ctx, &body, hash) else {
            last = format!("node {id}: unverifiable reply {body}");
            continue;
        };
        let k = (height, serde_json::to_string(&result).unwrap_or_default());
        let voters = votes.entry(k).or_default();
        voters.insert(node);
        if voters.len() >= need {
            return Attempt::Acked { height, result };
        }
    }
    Attempt::Retry(last)
}

/// Runs `clients` clients until `stop` is set; returns all operations.
pub async fn run_all(ctx: Arc<Ctx>, keys: Vec<SigningKey>, seed: u64) -> Vec<Op> {
    let mut tasks = tokio::task::JoinSet::new();
    for (id, key) in keys.into_iter().enumerate() {
        tasks.spawn(run_client(
            ctx.clone(),
            id,
            key,
            seed.wrapping_add(id as u64 + 1),
        ));
    }
    let mut ops = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(mut o) = r {
            ops.append(&mut o);
        }
    }
    ops.sort_by_key(|o| o.invoke_ns);
    ops
}
