//! Deterministic application of a transaction to the ledger state: KV puts/deletes, balance
//! transfers that never overdraw, per-client exactly-once by `seq`.

use serde::{Deserialize, Serialize};

use super::tx::{Op, Tx};

/// What applying one transaction did. JSON: `"ok"` or `{"error":"insufficient funds"}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxOutcome {
    Ok,
    Error(String),
}

/// Where and how a transaction was applied; kept per `(client, seq)` so a duplicate submission
/// gets the original answer and is never applied twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRecord {
    pub height: u64,
    #[serde(with = "super::hexser")]
    pub tx_hash: [u8; 32],
    pub outcome: TxOutcome,
}

/// The state a transaction reads and writes. Implemented over a redb write transaction by the
/// store, so applying a block and persisting it are one atomic commit.
pub trait StateAccess {
    type Error;
    fn balance(&mut self, account: &str) -> Result<u64, Self::Error>;
    fn set_balance(&mut self, account: &str, amount: u64) -> Result<(), Self::Error>;
    fn put(&mut self, key: &str, value: &str) -> Result<(), Self::Error>;
    fn delete(&mut self, key: &str) -> Result<(), Self::Error>;
    fn last_seq(&mut self, client: &[u8; 32]) -> Result<Option<u64>, Self::Error>;
    fn set_last_seq(&mut self, client: &[u8; 32], seq: u64) -> Result<(), Self::Error>;
}

/// Outcome of [`apply_tx`]: a transaction is either applied (with its outcome) or recognised as
/// a duplicate of an earlier `(client, seq)` and skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Applied(TxOutcome),
    Duplicate,
    /// A PBFT read marker ([`Op::Read`]): it only marks a position in the order, so it has no
    /// outcome, no receipt and does not touch the signer's seq.
    ReadMarker,
}

/// Applies one transaction. Signatures are not checked here: a block reaches the ledger only
/// after the consensus layer admitted its transactions (Raft: the leader; PBFT: 2f+1 replicas),
/// and re-verifying on every replica would double the dominant CPU cost. `faultline verify` and
/// the simulator's invariants check them independently.
pub fn apply_tx<S: StateAccess>(state: &mut S, tx: &Tx) -> Result<Applied, S::Error> {
    if tx.op.is_read_marker() {
        return Ok(Applied::ReadMarker);
    }
    // Exactly-once: seq must increase per client (docs/SPEC.md).
    if let Some(last) = state.last_seq(&tx.client)? {
        if tx.seq <= last {
            return Ok(Applied::Duplicate);
        }
    }
    state.set_last_seq(&tx.client, tx.seq)?;
    let outcome = match &tx.op {
        Op::Put { key, value } => {
            state.put(key, value)?;
            TxOutcome::Ok
        }
        Op::Delete { key } => {
            state.delete(key)?;
            TxOutcome::Ok
        }
        Op::Transfer { from, to, amount } => transfer(state, from, to, *amount)?,
        Op::Read {} => return Ok(Applied::ReadMarker),
    };
    Ok(Applied::Applied(outcome))
}

fn transfer<S: StateAccess>(
    state: &mut S,
    from: &str,
    to: &str,
    amount: u64,
) -> Result<TxOutcome, S::Error> {
    let from_balance = state.balance(from)?;
    let Some(new_from) = from_balance.checked_sub(amount) else {
        return Ok(TxOutcome::Error("insufficient funds".into()));
    };
    if from == to {
        return Ok(TxOutcome::Ok);
    }
    let to_balance = state.balance(to)?;
    let Some(new_to) = to_balance.checked_add(amount) else {
        return Ok(TxOutcome::Error("balance overflow".into()));
    };
    state.set_balance(from, new_from)?;
    state.set_balance(to, new_to)?;
    Ok(TxOutcome::Ok)
}
