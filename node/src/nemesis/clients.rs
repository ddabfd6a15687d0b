//! The workload: concurrent clients, each with its own key and one operation at a time, doing
//! transfers between the genesis accounts, puts of unique values to a few keys, and reads of
//! those keys from random nodes. A write that fails or times out is sent again with the SAME
//! `(client, seq)` to the next node (raft) or to every replica (pbft) until it is acknowledged
//! or its retry window ends; a node must answer such a duplicate with the original result and
//! never apply it twice, which the audit checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::history::{Op, OpKind, Outcome};
use crate::api_types::{EntryResult, KvReply};
use crate::client::wire::{self, Trust};
use crate::client::writes::{drive, Pacing, Undecided};
use crate::client_protocol::ClientWrite;
use crate::config::ClusterConfig;
use crate::ledger::{self, Tx};

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
    let outcome = match wire::send(ctx.http.get(url).timeout(READ_TIMEOUT)).await {
        Ok(a) => match a.code {
            200 => match a.json::<KvReply>().and_then(|r| r.value) {
                Some(v) => Outcome::Read(Some(v)),
                None => Outcome::Failed(format!("node {}: reply without value", node.id)),
            },
            404 => Outcome::Read(None),
            code => Outcome::Failed(format!("node {}: {code} {}", node.id, a.error_text())),
        },
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
    let n = ctx.cluster.nodes.len() as u64;
    // Raft: a random first node, so that followers forward as often as leaders answer.
    let mut w = ClientWrite::new(&ctx.cluster, rng.next_u64() % n, [hash]);
    let pacing = Pacing {
        pause: BACKOFF,
        pause_every_retry: false,
        attempt_timeout: Some(ATTEMPT_TIMEOUT),
    };
    let driven = drive(
        &mut w,
        &ctx.cluster,
        &ctx.http,
        "/v1/tx",
        body.into(),
        Trust::Signed(&ctx.cluster),
        Instant::now() + WRITE_WINDOW,
        pacing,
        None,
    )
    .await;
    let attempts = driven.attempts;
    let outcome = match (driven.outcome, w.decided(&hash)) {
        (Ok(()), Some(e)) => match &e.result {
            EntryResult::Applied(result) => Outcome::Committed {
                height: e.height,
                result: result.clone(),
            },
            EntryResult::Rejected { rejected } => Outcome::Failed(rejected.clone()),
        },
        (Ok(()), None) => Outcome::Unknown("decided without a result".into()),
        (Err(Undecided::Refused(e)), _) => Outcome::Failed(e),
        (Err(Undecided::TimedOut(last)), _) => Outcome::Unknown(last),
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
