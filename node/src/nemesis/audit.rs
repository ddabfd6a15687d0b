//! The checks after the faults are healed: equal heads, every block on every node, the ledger
//! replayed against what the clients were told and what each node's database holds, `verify`
//! on every data dir, and the reads of each key checked for linearizability.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::history::{Op, OpKind, Outcome};
use super::linearizability::{check_register, RegKind, RegOp, Verdict};
use crate::config::ClusterConfig;
use crate::ledger::{self, Block, Genesis, TxOutcome};
use crate::store::Store;

/// Blocks fetched at once from one node during the scan.
const SCAN_PARALLEL: usize = 16;
/// Search steps the linearizability checker may take per key.
const WGL_BUDGET: u64 = 5_000_000;

/// One check and its result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    /// A failed check that is not enforced is a known finding (printed, not a violation).
    pub enforced: bool,
}

impl Check {
    pub fn new(name: &str, problems: &[String], ok_detail: String, enforced: bool) -> Check {
        Check {
            name: name.into(),
            passed: problems.is_empty(),
            detail: if problems.is_empty() {
                ok_detail
            } else {
                summarize(problems)
            },
            enforced,
        }
    }
}

/// The first few problems and how many more there were.
fn summarize(problems: &[String]) -> String {
    let mut s = problems
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > 5 {
        s.push_str(&format!("; … {} more", problems.len() - 5));
    }
    s
}

async fn get_json(http: &reqwest::Client, url: String, timeout: Duration) -> Option<(u16, Value)> {
    let resp = http.get(url).timeout(timeout).send().await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.json().await.unwrap_or(Value::Null)))
}

/// Every node's `(height, head hash)`, None for a node that does not answer.
pub async fn heads(cluster: &ClusterConfig, http: &reqwest::Client) -> Vec<Option<(u64, String)>> {
    let mut out = Vec::new();
    for node in &cluster.nodes {
        let url = format!("http://{}/v1/status", node.api);
        let head = match get_json(http, url, Duration::from_secs(2)).await {
            Some((200, v)) => v["height"]
                .as_u64()
                .zip(v["head_hash"].as_str().map(str::to_string)),
            _ => None,
        };
        out.push(head);
    }
    out
}

/// Waits (bounded) until every node answers with the same height and head hash.
pub async fn converge(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    deadline: Duration,
) -> (Check, Option<u64>) {
    let start = Instant::now();
    loop {
        let hs = heads(cluster, http).await;
        let first = hs.first().cloned().flatten();
        if first.is_some() && hs.iter().all(|h| *h == first) {
            let (height, hash) = first.unwrap_or_default();
            let check = Check::new(
                "same head on every node",
                &[],
                format!(
                    "height {height}, head {} after {:.1} s",
                    &hash[..hash.len().min(16)],
                    start.elapsed().as_secs_f64()
                ),
                true,
            );
            return (check, Some(height));
        }
        if start.elapsed() > deadline {
            let problems: Vec<String> = hs
                .iter()
                .enumerate()
                .map(|(i, h)| match h {
                    Some((height, hash)) => {
                        format!("node {i} at {height} {}", &hash[..hash.len().min(16)])
                    }
                    None => format!("node {i} does not answer"),
                })
                .collect();
            let max = hs.iter().flatten().map(|h| h.0).max();
            let mut check = Check::new("same head on every node", &problems, String::new(), true);
            check.detail = format!(
                "not converged after {} s: {}",
                deadline.as_secs(),
                check.detail
            );
            return (check, max);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the scan of one node found.
pub struct NodeBlocks {
    pub blocks: BTreeMap<u64, Block>,
    /// Heights that answered 404.
    pub missing: Vec<u64>,
    /// Heights that failed otherwise (no answer, bad JSON, another status).
    pub errors: Vec<String>,
}

/// Fetches blocks 1..=height from node `i` with `GET /v1/blocks/H`.
pub async fn scan_node(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    i: usize,
    height: u64,
) -> NodeBlocks {
    let mut out = NodeBlocks {
        blocks: BTreeMap::new(),
        missing: Vec::new(),
        errors: Vec::new(),
    };
    let api = cluster.nodes[i].api;
    let mut next = 1u64;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < SCAN_PARALLEL && next <= height {
            let (http, h) = (http.clone(), next);
            tasks.spawn(async move {
                let url = format!("http://{api}/v1/blocks/{h}");
                (h, get_json(&http, url, Duration::from_secs(10)).await)
            });
            next += 1;
        }
        let Some(res) = tasks.join_next().await else {
            break;
        };
        let Ok((h, answer)) = res else { continue };
        match answer {
            Some((200, v)) => match serde_json::from_value::<Block>(v) {
                Ok(b) if b.height == h => {
                    out.blocks.insert(h, b);
                }
                Ok(b) => out
                    .errors
                    .push(format!("height {h}: block claims height {}", b.height)),
                Err(e) => out.errors.push(format!("height {h}: {e}")),
            },
            Some((404, _)) => out.missing.push(h),
            Some((code, v)) => out.errors.push(format!("height {h}: {code} {v}")),
            None => out.errors.push(format!("height {h}: no answer")),
        }
    }
    out.missing.sort_unstable();
    out
}

/// `a..=b` runs of sorted heights, for short messages.
fn ranges(hs: &[u64]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < hs.len() {
        let mut j = i;
        while j + 1 < hs.len() && hs[j + 1] == hs[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            hs[i].to_string()
        } else {
            format!("{}..={}", hs[i], hs[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Checks that every node holds every block and that all agree at every height; returns the
/// index of a node with the complete chain, if any.
pub fn compare_chains(scans: &[NodeBlocks], height: u64) -> (Vec<Check>, Option<usize>) {
    let mut missing = Vec::new();
    for (i, s) in scans.iter().enumerate() {
        if !s.missing.is_empty() {
            missing.push(format!(
                "node {i} answers 404 for blocks {} of 1..={height}",
                ranges(&s.missing)
            ));
        }
        for e in s.errors.iter().take(3) {
            missing.push(format!("node {i}: {e}"));
        }
    }
    let mut differ = Vec::new();
    for h in 1..=height {
        let mut first: Option<(usize, [u8; 32])> = None;
        for (i, s) in scans.iter().enumerate() {
            let Some(b) = s.blocks.get(&h) else { continue };
            match first {
                None => first = Some((i, b.hash)),
                Some((j, hash)) if hash != b.hash => differ.push(format!(
                    "height {h}: node {j} and node {i} hold different blocks"
                )),
                Some(_) => {}
            }
        }
    }
    let complete = scans
        .iter()
        .position(|s| s.missing.is_empty() && s.errors.is_empty());
    let checks = vec![
        Check::new(
            "every block 1..=height on every node (GET /v1/blocks/H)",
            &missing,
            format!("{} nodes × {height} blocks", scans.len()),
            true,
        ),
        Check::new(
            "the same block at every height",
            &differ,
            format!("{height} heights compared"),
            true,
        ),
    ];
    (checks, complete)
}

/// The ledger replayed from the blocks.
#[derive(Default)]
pub struct Replay {
    /// tx hash -> (height, outcome) of its one application.
    pub applied: HashMap<[u8; 32], (u64, TxOutcome)>,
    /// (client, seq) of every applied tx.
    pub applied_seqs: Vec<([u8; 32], u64, [u8; 32])>,
    /// How often each tx hash appears in blocks (a retried tx may be ordered twice; only the
    /// first is applied).
    pub occurrences: HashMap<[u8; 32], u32>,
    /// Per key, the values its applied puts wrote, in ledger order.
    pub puts: HashMap<String, Vec<String>>,
    pub kv: BTreeMap<String, String>,
    pub balances: BTreeMap<String, i128>,
    pub txs_in_blocks: u64,
}

/// Replays the chain: exactly-once by per-client seq (SPEC: a seq at or below the last applied
/// one is a duplicate), transfers applied when the node recorded `ok` (so the balance checks
/// test what the node did, not what this replay would do) and each recorded outcome compared
/// with the rule (an overdraft must be refused).
pub fn replay(
    blocks: &BTreeMap<u64, Block>,
    genesis: &Genesis,
    recorded: &dyn Fn(&[u8; 32], u64) -> Option<ledger::TxRecord>,
) -> (Replay, Vec<Check>) {
    let mut r = Replay {
        balances: genesis
            .balances
            .iter()
            .map(|(a, b)| (a.clone(), i128::from(*b)))
            .collect(),
        ..Replay::default()
    };
    let total = genesis.total() as i128;
    let mut last_seq: HashMap<[u8; 32], u64> = HashMap::new();
    let (mut negative, mut unconserved, mut rule, mut records) = (vec![], vec![], vec![], vec![]);
    for (h, block) in blocks {
        for tx in &block.txs {
            // A PBFT read marker changes nothing and has no record (docs/SPEC.md).
            if tx.op.is_read_marker() {
                continue;
            }
            r.txs_in_blocks += 1;
            let hash = tx.hash();
            *r.occurrences.entry(hash).or_default() += 1;
            if last_seq.get(&tx.client).is_some_and(|l| tx.seq <= *l) {
                continue;
            }
            last_seq.insert(tx.client, tx.seq);
            let by_rule = match &tx.op {
                ledger::Op::Transfer { from, amount, .. } => {
                    if r.balances.get(from).copied().unwrap_or(0) < i128::from(*amount) {
                        TxOutcome::Error("insufficient funds".into())
                    } else {
                        TxOutcome::Ok
                    }
                }
                _ => TxOutcome::Ok,
            };
            let outcome = match recorded(&tx.client, tx.seq) {
                Some(rec) if rec.tx_hash == hash && rec.height == *h => rec.outcome,
                Some(rec) => {
                    records.push(format!(
                        "seq {} applied at height {h} but recorded at height {} as {}",
                        tx.seq,
                        rec.height,
                        hex::encode(&rec.tx_hash[..6])
                    ));
                    rec.outcome
                }
                None => {
                    records.push(format!(
                        "seq {} applied at height {h} has no tx record",
                        tx.seq
                    ));
                    by_rule.clone()
                }
            };
            if outcome != by_rule {
                rule.push(format!(
                    "height {h}: {:?} recorded {outcome:?}, the rule gives {by_rule:?}",
                    tx.op
                ));
            }
            match &tx.op {
                ledger::Op::Put { key, value } => {
                    r.kv.insert(key.clone(), value.clone());
                    r.puts.entry(key.clone()).or_default().push(value.clone());
                }
                ledger::Op::Delete { key } => {
                    r.kv.remove(key);
                }
                ledger::Op::Transfer { from, to, amount } if outcome == TxOutcome::Ok => {
                    *r.balances.entry(from.clone()).or_default() -= i128::from(*amount);
                    *r.balances.entry(to.clone()).or_default() += i128::from(*amount);
                    if r.balances.get(from).is_some_and(|b| *b < 0) {
                        negative.push(format!("height {h}: {from} below zero"));
                    }
                }
                ledger::Op::Transfer { .. } | ledger::Op::Read {} => {}
            }
            r.applied.insert(hash, (*h, outcome));
            r.applied_seqs.push((tx.client, tx.seq, hash));
        }
        let sum: i128 = r.balances.values().sum();
        if sum != total {
            unconserved.push(format!("height {h}: total {sum} != genesis {total}"));
        }
    }
    let checks = vec![
        Check::new(
            "balances never negative (replayed at every height)",
            &negative,
            format!("{} accounts over {} blocks", r.balances.len(), blocks.len()),
            true,
        ),
        Check::new(
            "balances conserved at every height",
            &unconserved,
            format!("total {total} at every height"),
            true,
        ),
        Check::new(
            "recorded transfer results follow the rule (overdrafts refused)",
            &rule,
            format!("{} applied txs", r.applied.len()),
            true,
        ),
        Check::new(
            "a tx record for every applied tx, at its height",
            &records,
            format!("{} records", r.applied.len()),
            true,
        ),
    ];
    (r, checks)
}

/// Every acknowledged write applied exactly once at its acknowledged height with its
/// acknowledged result; every tx in the ledger one a client sent.
pub fn check_acked(ops: &[Op], r: &Replay) -> Check {
    let mut problems = Vec::new();
    let sent: HashSet<[u8; 32]> = ops.iter().filter_map(|o| o.tx.map(|t| t.1)).collect();
    let mut acked = 0;
    for op in ops {
        let (Some((seq, hash)), Outcome::Committed { height, result }) = (op.tx, &op.outcome)
        else {
            continue;
        };
        acked += 1;
        match r.applied.get(&hash) {
            None => problems.push(format!(
                "client {} seq {seq} acknowledged at height {height} is not applied in the ledger",
                op.client
            )),
            Some((h, o)) if h != height || o != result => problems.push(format!(
                "client {} seq {seq}: acknowledged at {height} as {result:?}, applied at {h} as {o:?}",
                op.client
            )),
            Some(_) => {}
        }
    }
    let foreign = r.occurrences.keys().filter(|h| !sent.contains(*h)).count();
    if foreign > 0 {
        problems.push(format!("{foreign} txs in the ledger that no client sent"));
    }
    Check::new(
        "every acknowledged tx applied exactly once, at its height, with its result",
        &problems,
        format!("{acked} acknowledged txs"),
        true,
    )
}

/// What a node's database says after a clean shutdown.
pub fn check_store(
    i: usize,
    store: &Store,
    r: &Replay,
    keys: &[String],
    genesis: &Genesis,
    height: u64,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut note = |p: String| problems.push(format!("node {i}: {p}"));
    match crate::verify::verify_store(store) {
        Ok(crate::verify::Verdict::Ok { height: h, .. }) if h == height => {}
        Ok(crate::verify::Verdict::Ok { height: h, .. }) => {
            note(format!("verify ok but at height {h}, not {height}"))
        }
        Ok(crate::verify::Verdict::Partial { first, height, .. }) => note(format!(
            "verify: the chain starts at height {first}, not 1 (head {height}); blocks below were never stored"
        )),
        Ok(crate::verify::Verdict::Bad { height, reason }) => {
            note(format!("verify: bad at height {height}: {reason}"))
        }
        Err(e) => note(format!("verify: {e}")),
    }
    match store.total_balance() {
        Ok(t) if t == genesis.total() => {}
        Ok(t) => note(format!("total balance {t} != genesis {}", genesis.total())),
        Err(e) => note(format!("total balance: {e}")),
    }
    for (account, want) in &r.balances {
        match store.balance(account) {
            Ok(b) if i128::from(b) == *want => {}
            Ok(b) => note(format!("balance of {account} {b}, replay gives {want}")),
            Err(e) => note(format!("balance of {account}: {e}")),
        }
    }
    for k in keys {
        match store.get(k) {
            Ok(v) if v.as_ref() == r.kv.get(k) => {}
            Ok(v) => note(format!("{k} = {v:?}, replay gives {:?}", r.kv.get(k))),
            Err(e) => note(format!("{k}: {e}")),
        }
    }
    let mut missing = 0;
    for (client, seq, hash) in &r.applied_seqs {
        match store.tx_record(client, *seq) {
            Ok(Some(rec)) => {
                if r.applied.get(hash) != Some(&(rec.height, rec.outcome.clone())) {
                    note(format!("tx record of seq {seq} differs from the ledger"));
                }
            }
            Ok(None) => missing += 1,
            Err(e) => note(format!("tx record of seq {seq}: {e}")),
        }
    }
    if missing > 0 {
        note(format!(
            "{missing} of {} applied txs have no tx record (a duplicate of them would not get its original answer)",
            r.applied_seqs.len()
        ));
    }
    problems
}

/// What the read checks found.
pub struct ReadFindings {
    pub checks: Vec<Check>,
    /// Reads that returned a value older than one whose write had completed before the read
    /// began (by the ledger's order of that key's puts).
    pub stale: usize,
    pub reads: usize,
}

/// Checks every key's reads and writes for linearizability (WGL) and counts stale reads;
/// `strict` decides whether a non-linearizable key is a violation or a known finding.
pub fn check_reads(
    ops: &[Op],
    r: &Replay,
    keys: &[String],
    strict: bool,
    why: &str,
) -> ReadFindings {
    let mut verdicts = Vec::new();
    let mut bad = Vec::new();
    let mut phantom = Vec::new();
    let mut stale = 0;
    let mut reads = 0;
    for key in keys {
        let order: HashMap<&str, usize> = r
            .puts
            .get(key)
            .map(|v| {
                v.iter()
                    .enumerate()
                    .map(|(i, s)| (s.as_str(), i + 1))
                    .collect()
            })
            .unwrap_or_default();
        let observed: HashSet<&str> = ops
            .iter()
            .filter_map(|o| match (&o.kind, &o.outcome) {
                (OpKind::Read { key: k }, Outcome::Read(Some(v))) if k == key => Some(v.as_str()),
                _ => None,
            })
            .collect();
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut id = |v: &str| {
            let next = ids.len() as u32;
            *ids.entry(v.to_string()).or_insert(next)
        };
        let mut reg = Vec::new();
        // (ack time, ledger position) of acknowledged puts, for the stale-read count.
        let mut acked: Vec<(u64, usize)> = Vec::new();
        for op in ops {
            match (&op.kind, &op.outcome) {
                (OpKind::Put { key: k, value }, Outcome::Committed { .. }) if k == key => {
                    reg.push(RegOp {
                        invoke: op.invoke_ns,
                        ret: op.complete_ns,
                        kind: RegKind::Write(id(value)),
                    });
                    if let (Some(t), Some(p)) = (op.complete_ns, order.get(value.as_str())) {
                        acked.push((t, *p));
                    }
                }
                // An unanswered put stays open forever, unless it cannot matter: one the
                // ledger never applied never took effect, and one no read observed can be
                // dropped (any linearization keeps working with it removed, and one without
                // it extends by placing it last) — which keeps the search small.
                (OpKind::Put { key: k, value }, Outcome::Unknown(_))
                    if k == key
                        && order.contains_key(value.as_str())
                        && observed.contains(value.as_str()) =>
                {
                    reg.push(RegOp {
                        invoke: op.invoke_ns,
                        ret: None,
                        kind: RegKind::Write(id(value)),
                    })
                }
                (OpKind::Read { key: k }, Outcome::Read(v)) if k == key => {
                    reads += 1;
                    if let Some(v) = v {
                        if !order.contains_key(v.as_str()) {
                            phantom
                                .push(format!("{key}: read {v:?}, which the ledger never applied"));
                        }
                    }
                    reg.push(RegOp {
                        invoke: op.invoke_ns,
                        ret: op.complete_ns,
                        kind: RegKind::Read(v.as_deref().map(&mut id)),
                    });
                }
                _ => {}
            }
        }
        // Stale: an acknowledged put later in the ledger completed before this read began.
        acked.sort_unstable();
        let mut newest_by = Vec::with_capacity(acked.len());
        let mut best = 0;
        for &(t, p) in &acked {
            best = best.max(p);
            newest_by.push((t, best));
        }
        for op in ops {
            let (OpKind::Read { key: k }, Outcome::Read(v)) = (&op.kind, &op.outcome) else {
                continue;
            };
            if k != key {
                continue;
            }
            let p = v
                .as_deref()
                .and_then(|v| order.get(v))
                .copied()
                .unwrap_or(0);
            let idx = newest_by.partition_point(|(t, _)| *t < op.invoke_ns);
            if idx > 0 && newest_by[idx - 1].1 > p {
                stale += 1;
            }
        }
        let n_ops = reg.len();
        let verdict = check_register(&reg, None, WGL_BUDGET);
        verdicts.push(format!("{key}: {n_ops} ops {verdict:?}"));
        match verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => {
                bad.push(format!("{key} ({n_ops} ops) is not linearizable"))
            }
            Verdict::Unknown => bad.push(format!(
                "{key} ({n_ops} ops): the search gave up after {WGL_BUDGET} steps"
            )),
        }
    }
    let mut lin = Check::new(
        "reads linearizable per key (WGL register checker)",
        &bad,
        verdicts.join(", "),
        strict,
    );
    if !bad.is_empty() && !strict {
        lin.detail = format!("{} [known: {why}]", lin.detail);
    }
    let mut stale_check = Check::new(
        "no stale reads (by the ledger's order of puts)",
        &if stale > 0 {
            vec![format!(
                "{stale} of {reads} reads returned an overwritten value"
            )]
        } else {
            vec![]
        },
        format!("{reads} reads"),
        strict,
    );
    if stale > 0 && !strict {
        stale_check.detail = format!("{} [known: {why}]", stale_check.detail);
    }
    ReadFindings {
        checks: vec![
            lin,
            stale_check,
            Check::new(
                "reads return only applied values",
                &phantom,
                format!("{reads} reads"),
                true,
            ),
        ],
        stale,
        reads,
    }
}
