//! The ledger checks: the chain replayed from the blocks (exactly-once by per-client seq,
//! balances never negative and conserved, recorded results by the rule), every acknowledged
//! write found in it, and each node's database compared with it.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::Check;
use crate::ledger::{self, Block, Genesis, TxOutcome};
use crate::nemesis::history::{Op, Outcome};
use crate::store::Store;

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
