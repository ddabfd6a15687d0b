//! The index behind receipts (`GET /v1/txs/{hash}`): which blocks hold a transaction hash.
//!
//! It lives in memory and is rebuilt from the blocks when the store opens, as etcd keeps its
//! key index in memory over a revision-keyed backend. A persistent B-tree keyed by hash was the
//! single largest cost of a commit: hashes are uniformly random, so every transaction of a
//! commit lands in a different leaf page and redb copies, checksums and writes one 4 KiB page
//! per transaction (`faultline bench --protocol raft --nodes 3`: 10.3k tx/s with that table,
//! 17.0k without). Blocks are the durable truth, so nothing here needs to survive a crash.
//!
//! Each entry maps the first 8 bytes of a hash to a height (about 20 bytes per transaction in
//! the map, 200 MB for 10 million transactions). A lookup confirms the full hash in the block
//! and takes the answer from the durable per-(client, seq) record, so a prefix shared by two
//! transactions, or a duplicate resubmitted in a later block, never yields a wrong receipt.

use std::collections::HashMap;

use crate::ledger::Hash;

/// Hash prefix → heights of the blocks that hold a transaction with that prefix.
#[derive(Debug, Default)]
pub(super) struct ReceiptIndex {
    /// The first height seen for a prefix (almost every prefix has exactly one).
    first: HashMap<u64, u64>,
    /// Further heights for prefixes seen more than once: a resubmitted duplicate, or two
    /// transactions whose hashes share their first 8 bytes.
    more: HashMap<u64, Vec<u64>>,
}

fn prefix(hash: &Hash) -> u64 {
    let mut p = [0u8; 8];
    p.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(p)
}

impl ReceiptIndex {
    pub(super) fn insert(&mut self, hash: &Hash, height: u64) {
        let p = prefix(hash);
        match self.first.get(&p) {
            None => {
                self.first.insert(p, height);
            }
            Some(&h) if h == height => {}
            Some(_) => {
                let more = self.more.entry(p).or_default();
                if !more.contains(&height) {
                    more.push(height);
                }
            }
        }
    }

    /// Heights that may hold `hash`, oldest first; each must be confirmed against its block.
    pub(super) fn candidates(&self, hash: &Hash) -> Vec<u64> {
        let p = prefix(hash);
        let mut out: Vec<u64> = self.first.get(&p).copied().into_iter().collect();
        if let Some(more) = self.more.get(&p) {
            out.extend(more);
        }
        out
    }

    pub(super) fn len(&self) -> usize {
        self.first.len() + self.more.values().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefixes_and_duplicates_keep_every_height() {
        let mut ix = ReceiptIndex::default();
        let a = [1u8; 32];
        let mut b = [1u8; 32];
        b[31] = 2; // same first 8 bytes as `a`
        ix.insert(&a, 5);
        ix.insert(&a, 5);
        ix.insert(&b, 9);
        ix.insert(&a, 12);
        assert_eq!(ix.candidates(&a), vec![5, 9, 12]);
        assert_eq!(ix.candidates(&b), vec![5, 9, 12]);
        assert_eq!(ix.candidates(&[7u8; 32]), Vec::<u64>::new());
        assert_eq!(ix.len(), 3);
    }
}
