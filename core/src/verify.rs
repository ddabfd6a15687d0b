//! `faultline verify`: offline audit of one node's data dir — the hash chain, every client
//! signature, and (for PBFT) every block's commit certificate.

use std::path::Path;

use crate::engine::pbft::{check_block_certificate, KEY_CLUSTER};
use crate::ledger::tx::verify_batch;
use crate::ledger::{Block, Hash};
use crate::store::{Store, StoreError};

/// Result of an audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok {
        height: u64,
        head: Hash,
    },
    /// The chain checks out, but it starts at `first`, not at height 1: the blocks below were
    /// never stored (a snapshot installed by a version that did not fetch them).
    Partial {
        first: u64,
        height: u64,
        head: Hash,
    },
    Bad {
        height: u64,
        reason: String,
    },
}

/// Audits the store: every block from height 1 (or from the base, for a data dir that starts
/// at an installed snapshot: then the verdict is at best [`Verdict::Partial`]) up to the head
/// must decode, carry its own
/// height, link to its predecessor, hash to its stored hash, and hold only validly signed
/// transactions; the head must be the last block.
pub fn verify_store(store: &Store) -> Result<Verdict, StoreError> {
    // A PBFT node records the replica keys and f in its data dir, so certificates can be
    // checked from the data dir alone.
    let pbft: Option<(u64, Vec<[u8; 32]>)> = match store.engine_get(KEY_CLUSTER)? {
        Some(bytes) => Some(
            postcard::from_bytes(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("recorded cluster keys: {e}")))?,
        ),
        None => None,
    };
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
        // A read marker is signed by a PBFT replica; Raft never orders one.
        if let Some(i) = block.txs.iter().position(|t| {
            t.op.is_read_marker()
                && pbft
                    .as_ref()
                    .is_none_or(|(_, keys)| !keys.contains(&t.client))
        }) {
            return bad(format!(
                "transaction {i}: a read marker not signed by a replica"
            ));
        }
        if let Some((f, keys)) = &pbft {
            if let Err(e) = check_block_certificate(&block, keys, *f as usize) {
                return bad(e);
            }
        }
        prev = block.hash;
    }
    if prev != head.hash {
        return Ok(Verdict::Bad {
            height: head.height,
            reason: "head hash does not match the last block".into(),
        });
    }
    if base.height > 0 {
        return Ok(Verdict::Partial {
            first: base.height + 1,
            height: head.height,
            head: head.hash,
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
