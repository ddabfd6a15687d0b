//! Blocks: a batch of transactions hash-chained to the previous block with SHA-256, plus (for
//! PBFT) the commit certificate that lets anyone audit the block offline.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::tx::Tx;

pub type Hash = [u8; 32];

const BATCH_DOMAIN: &[u8] = b"faultline-batch-v1";
const BLOCK_DOMAIN: &[u8] = b"faultline-block-v1";

/// Digest of an ordered batch: SHA-256(domain ‖ count u32 BE ‖ each tx hash). It commits to every
/// signature and byte of every transaction, and it is the digest PBFT replicas sign, so a
/// certificate can be checked against a stored block without re-encoding anything.
pub fn batch_digest_of_hashes(tx_hashes: &[Hash]) -> Hash {
    let mut h = Sha256::new();
    h.update(BATCH_DOMAIN);
    h.update((tx_hashes.len() as u32).to_be_bytes());
    for t in tx_hashes {
        h.update(t);
    }
    h.finalize().into()
}

/// [`batch_digest_of_hashes`] of the transactions' hashes.
pub fn batch_digest(txs: &[Tx]) -> Hash {
    let hashes: Vec<Hash> = txs.iter().map(Tx::hash).collect();
    batch_digest_of_hashes(&hashes)
}

/// Hash of a block: SHA-256(domain ‖ height u64 BE ‖ prev_hash ‖ batch digest). The certificate
/// is evidence about the block, not part of it, so it is not hashed.
pub fn block_hash(height: u64, prev_hash: &Hash, batch_digest: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(BLOCK_DOMAIN);
    h.update(height.to_be_bytes());
    h.update(prev_hash);
    h.update(batch_digest);
    h.finalize().into()
}

/// PBFT's proof that 2f+1 replicas committed this block's batch: their COMMIT signatures over
/// `(view, seq, digest)`. Checked by `faultline verify` against the cluster's public keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub view: u64,
    pub seq: u64,
    #[serde(with = "super::hexser")]
    pub digest: Hash,
    pub commits: Vec<CommitSignature>,
}

/// One replica's COMMIT signature inside a [`Certificate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSignature {
    pub replica: u64,
    #[serde(with = "super::hexser")]
    pub signature: [u8; 64],
}

/// One block of the ledger. Heights start at 1; height 0 is the genesis state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub height: u64,
    #[serde(with = "super::hexser")]
    pub prev_hash: Hash,
    #[serde(with = "super::hexser")]
    pub hash: Hash,
    pub txs: Vec<Tx>,
    /// PBFT only (`null` for Raft blocks).
    #[serde(default)]
    pub certificate: Option<Certificate>,
}

impl Block {
    /// Builds the block that follows `(height - 1, prev_hash)`.
    pub fn new(
        height: u64,
        prev_hash: Hash,
        txs: Vec<Tx>,
        certificate: Option<Certificate>,
    ) -> Block {
        let hashes: Vec<Hash> = txs.iter().map(Tx::hash).collect();
        Self::with_tx_hashes(height, prev_hash, txs, certificate, &hashes)
    }

    /// [`Block::new`] for a caller that already holds the transactions' hashes.
    pub fn with_tx_hashes(
        height: u64,
        prev_hash: Hash,
        txs: Vec<Tx>,
        certificate: Option<Certificate>,
        tx_hashes: &[Hash],
    ) -> Block {
        let hash = block_hash(height, &prev_hash, &batch_digest_of_hashes(tx_hashes));
        Block {
            height,
            prev_hash,
            hash,
            txs,
            certificate,
        }
    }

    /// Recomputes the hash from the contents: false if any byte of any tx, the height or the
    /// link to the previous block was altered.
    pub fn hash_is_valid(&self) -> bool {
        block_hash(self.height, &self.prev_hash, &batch_digest(&self.txs)) == self.hash
    }
}
