//! `faultline verify`: offline audit of one node's data dir — the hash chain, every client
//! signature, and (for PBFT) every block's commit certificate.

use std::path::Path;

use crate::ledger::tx::verify_batch;
use crate::ledger::{Block, Hash};
use crate::store::{Store, StoreError};

/// Result of an audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok { height: u64, head: Hash },
    Bad { height: u64, reason: String },
}

/// Audits the store: every block from the base up to the head must decode, carry its own
/// height, link to its predecessor, hash to its stored hash, and hold only validly signed
/// transactions; the head must be the last block.
pub fn verify_store(store: &Store) -> Result<Verdict, StoreError> {
    let base = store.base()?;
    let head = store.head()?;
    let mut prev = base.hash;
    for height in base.height + 1..=head.height {
        let bad = |reason: String| Ok(Verdict::Bad { height, reason });
        let Some(bytes) = store.block_bytes(height)? else {
            return bad("block missing".into());
        };
        let block: Block = match postcard::from_bytes(&bytes) {
            Ok(b) => b,
            Err(e) => return bad(format!("block does not decode: {e}")),
        };
        if block.height != height {
            return bad(format!("block claims height {}", block.height));
        }
        if block.prev_hash != prev {
            return bad("prev_hash does not link to the previous block".into());
        }
        if !block.hash_is_valid() {
            return bad("contents do not match the block hash".into());
        }
        if let Err((i, e)) = verify_batch(&block.txs) {
            return bad(format!("transaction {i}: {e}"));
        }
        prev = block.hash;
    }
    if prev != head.hash {
        return Ok(Verdict::Bad {
            height: head.height,
            reason: "head hash does not match the last block".into(),
        });
    }
    Ok(Verdict::Ok {
        height: head.height,
        head: head.hash,
    })
}

pub fn verify_dir(dir: &Path) -> Result<Verdict, StoreError> {
    verify_store(&Store::open_existing(dir)?)
}
