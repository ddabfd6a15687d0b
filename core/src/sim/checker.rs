//! Invariants the simulator checks after every step (docs/ARCHITECTURE.md §4): no two correct
//! nodes commit different blocks at the same height, every committed transaction was signed by
//! a permitted client, and (at the end) acknowledged writes are in every caught-up correct
//! ledger.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::engine::NodeId;
use crate::ledger::{Block, Hash};

/// The first safety violation seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// First height at which the correct ledgers disagree (or the bad block's height).
    pub height: u64,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Checker {
    /// height -> (block hash, first correct node that committed it).
    chain: BTreeMap<u64, (Hash, NodeId)>,
    permitted: BTreeSet<[u8; 32]>,
    /// Replica keys: the only permitted signers of PBFT read markers.
    replicas: BTreeSet<[u8; 32]>,
    /// Transactions whose client signature already verified (each is checked once).
    verified: HashSet<Hash>,
    pub violation: Option<Violation>,
}

impl Checker {
    pub fn new(permitted: impl IntoIterator<Item = [u8; 32]>) -> Self {
        Checker {
            permitted: permitted.into_iter().collect(),
            ..Default::default()
        }
    }

    /// Also accepts read markers (docs/SPEC.md "Read markers") signed by these replica keys.
    pub fn with_replicas(mut self, replicas: impl IntoIterator<Item = [u8; 32]>) -> Self {
        self.replicas = replicas.into_iter().collect();
        self
    }

    /// Records a violation (lost writes and failed audits come from outside this checker).
    pub fn flag(&mut self, height: u64, detail: String) {
        // Keep the lowest height: that is where the ledgers first diverge.
        if self.violation.as_ref().is_none_or(|v| height < v.height) {
            self.violation = Some(Violation { height, detail });
        }
    }

    /// A correct node appended `block`.
    pub fn committed(&mut self, node: NodeId, block: &Block) {
        match self.chain.get(&block.height) {
            Some((hash, first)) if *hash != block.hash => {
                let first = *first;
                self.flag(
                    block.height,
                    format!(
                        "fork: nodes {first} and {node} committed different blocks at height {}",
                        block.height
                    ),
                );
            }
            Some(_) => {}
            None => {
                self.chain.insert(block.height, (block.hash, node));
            }
        }
        for (i, tx) in block.txs.iter().enumerate() {
            let h = tx.hash();
            if self.verified.contains(&h) {
                continue;
            }
            let signers = if tx.op.is_read_marker() {
                &self.replicas
            } else {
                &self.permitted
            };
            if !signers.contains(&tx.client) || tx.verify().is_err() {
                self.flag(
                    block.height,
                    format!("node {node} committed transaction {i} at height {} that no permitted client signed", block.height),
                );
            } else {
                self.verified.insert(h);
            }
        }
    }

    /// A correct node jumped to `(height, hash)` by installing a snapshot.
    pub fn installed(&mut self, node: NodeId, height: u64, hash: Hash) {
        if let Some((h, first)) = self.chain.get(&height) {
            if *h != hash {
                let first = *first;
                self.flag(height, format!("fork: node {node} installed a snapshot whose head differs from node {first}'s block at height {height}"));
            }
        }
    }

    /// Distinct heights committed by any correct node.
    pub fn height(&self) -> u64 {
        self.chain.keys().next_back().copied().unwrap_or(0)
    }
}
