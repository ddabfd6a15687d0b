//! The safety audit of a local cluster: the correct nodes' ledgers compared at their common
//! height (a binary search finds the first diverging height) and acknowledged transactions
//! looked up in the blocks.

use std::collections::HashMap;

use super::LocalCluster;

/// The outcome of comparing the ledgers of the correct nodes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SafetyReport {
    pub safe: bool,
    /// The first height at which two correct nodes hold different blocks.
    pub first_diverging_height: Option<u64>,
    /// Heights 1..=compared_height were compared on every correct node that answered.
    pub compared_height: u64,
    /// The correct nodes that answered and were compared.
    pub checked_nodes: Vec<u64>,
}

impl LocalCluster {
    /// Compares the ledgers of the correct nodes. Blocks are hash-chained and every node
    /// computes the hashes of its own chain, so two correct nodes that agree at height h agree
    /// at every height below it: one comparison at the common height decides safety, and a
    /// binary search finds the first diverging height.
    pub async fn safety(&self) -> SafetyReport {
        let heads = self.correct_heights().await;
        let nodes: Vec<usize> = heads.iter().map(|h| h.0).collect();
        let min = heads.iter().map(|h| h.1).min().unwrap_or(0);
        let mut report = SafetyReport {
            safe: true,
            first_diverging_height: None,
            compared_height: min,
            checked_nodes: nodes.iter().map(|&i| i as u64).collect(),
        };
        if nodes.len() < 2 || min == 0 {
            return report;
        }
        if self.agree_at(&nodes, min).await != Some(false) {
            return report;
        }
        // Invariant: agree at lo (height 0 is the shared genesis), differ at hi.
        let (mut lo, mut hi) = (0, min);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.agree_at(&nodes, mid).await == Some(false) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        report.safe = false;
        report.first_diverging_height = Some(hi);
        report
    }

    /// Whether every node in `nodes` holds the same block hash at height `h` (None if a node
    /// did not return the block).
    async fn agree_at(&self, nodes: &[usize], h: u64) -> Option<bool> {
        let mut first: Option<[u8; 32]> = None;
        for &i in nodes {
            let hash = self.block(i, h).await?.hash;
            match &first {
                None => first = Some(hash),
                Some(f) if *f != hash => return Some(false),
                Some(_) => {}
            }
        }
        Some(true)
    }

    /// How many acknowledged transactions (tx hash, committed height) are not in the block at
    /// that height on correct node `i`; with the ledgers found equal this covers every correct
    /// node. Heights above the node's ledger count as missing.
    pub async fn missing_acked(&self, i: usize, acked: &[([u8; 32], u64)]) -> u64 {
        let mut by_height: HashMap<u64, Vec<[u8; 32]>> = HashMap::new();
        for (hash, h) in acked {
            by_height.entry(*h).or_default().push(*hash);
        }
        let mut missing = 0;
        for (h, hashes) in by_height {
            let in_block: std::collections::HashSet<[u8; 32]> = match self.block(i, h).await {
                Some(b) => b.txs.iter().map(|t| t.hash()).collect(),
                None => Default::default(),
            };
            missing += hashes.iter().filter(|x| !in_block.contains(*x)).count() as u64;
        }
        missing
    }
}
