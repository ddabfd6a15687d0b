//! The ledger as PBFT sees it: [`LedgerApp`], the application that decodes requests as
//! signed transactions and computes the batch digest blocks hash, and the commit certificates
//! blocks keep, converted to and from the replica's and checked offline by `faultline verify`.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use ed25519_dalek::VerifyingKey;
use faultline_bft::{App, CommitCertificate, InvalidBatch, Signature64};

use crate::ledger::block::{batch_digest_of_hashes, CommitSignature};
use crate::ledger::tx::verify_batch;
use crate::ledger::{Block, Certificate, Tx};

/// Largest encoded request accepted from a client or peer.
const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Transactions whose signatures this replica already checked (bounded; cleared when full).
const VERIFIED_CACHE: usize = 1 << 20;

/// The ledger as PBFT's application: decodes requests, checks client signatures (once per
/// transaction, in batches) and permitted clients, and computes the batch digest the ledger
/// hashes into its blocks.
pub struct LedgerApp {
    permitted: BTreeSet<[u8; 32]>,
    /// The replicas' keys: the only signers of read markers ([`crate::ledger::Op::Read`]).
    replicas: BTreeSet<[u8; 32]>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl LedgerApp {
    pub fn new(permitted: impl IntoIterator<Item = [u8; 32]>) -> Self {
        LedgerApp {
            permitted: permitted.into_iter().collect(),
            replicas: BTreeSet::new(),
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Also accepts read markers signed by these replica keys (and by nobody else).
    pub fn with_replicas(mut self, replicas: impl IntoIterator<Item = [u8; 32]>) -> Self {
        self.replicas = replicas.into_iter().collect();
        self
    }

    /// A request is a transaction of a permitted client, or a read marker of a replica: a
    /// client cannot make replicas order markers, and a replica cannot sign client operations.
    fn decode(&self, request: &[u8]) -> Option<Tx> {
        if request.len() > MAX_REQUEST_BYTES {
            return None;
        }
        let tx: Tx = postcard::from_bytes(request).ok()?;
        let allowed = if tx.op.is_read_marker() {
            &self.replicas
        } else {
            &self.permitted
        };
        allowed.contains(&tx.client).then_some(tx)
    }

    /// Marks transactions whose signatures were checked (by this app or by the caller).
    pub fn remember(&self, hashes: &[[u8; 32]]) {
        if let Ok(mut v) = self.verified.lock() {
            if v.len() + hashes.len() > VERIFIED_CACHE {
                v.clear();
            }
            v.extend(hashes.iter().copied());
        }
    }

    fn unverified(&self, txs: &[Tx], hashes: &[[u8; 32]]) -> Vec<Tx> {
        let v = self.verified.lock().ok();
        txs.iter()
            .zip(hashes)
            .filter(|(_, h)| v.as_ref().is_none_or(|v| !v.contains(*h)))
            .map(|(t, _)| t.clone())
            .collect()
    }
}

impl App for LedgerApp {
    fn request_digest(&self, request: &[u8]) -> Option<[u8; 32]> {
        let tx = self.decode(request)?;
        let h = tx.hash();
        if self.unverified(std::slice::from_ref(&tx), &[h]).is_empty() {
            return Some(h);
        }
        tx.verify().ok()?;
        self.remember(&[h]);
        Some(h)
    }

    fn batch_digest(&self, requests: &[Vec<u8>]) -> Result<[u8; 32], InvalidBatch> {
        let mut txs = Vec::with_capacity(requests.len());
        for r in requests {
            txs.push(self.decode(r).ok_or(InvalidBatch)?);
        }
        let hashes: Vec<[u8; 32]> = txs.iter().map(Tx::hash).collect();
        let todo = self.unverified(&txs, &hashes);
        verify_batch(&todo).map_err(|_| InvalidBatch)?;
        self.remember(&hashes);
        Ok(batch_digest_of_hashes(&hashes))
    }
}

pub(super) fn to_certificate(c: &CommitCertificate) -> Certificate {
    Certificate {
        view: c.view,
        seq: c.seq,
        digest: c.digest,
        commits: c
            .commits
            .iter()
            .map(|(replica, sig)| CommitSignature {
                replica: *replica,
                signature: sig.0,
            })
            .collect(),
    }
}

pub(super) fn from_certificate(c: &Certificate) -> CommitCertificate {
    CommitCertificate {
        view: c.view,
        seq: c.seq,
        digest: c.digest,
        commits: c
            .commits
            .iter()
            .map(|s| (s.replica, Signature64(s.signature)))
            .collect(),
    }
}

/// Checks a stored block's PBFT certificate: 2f+1 valid COMMIT signatures over the digest of
/// exactly this block's transactions at this sequence number.
pub fn check_block_certificate(block: &Block, keys: &[[u8; 32]], f: usize) -> Result<(), String> {
    let Some(cert) = &block.certificate else {
        return Err("no commit certificate".into());
    };
    if cert.seq != block.height {
        return Err(format!("certificate is for sequence {} ", cert.seq));
    }
    let expected = if block.txs.is_empty() {
        faultline_bft::NULL_DIGEST
    } else {
        let hashes: Vec<[u8; 32]> = block.txs.iter().map(Tx::hash).collect();
        batch_digest_of_hashes(&hashes)
    };
    if cert.digest != expected {
        return Err("certificate digest does not match the block's transactions".into());
    }
    let keys: Vec<VerifyingKey> = keys
        .iter()
        .map(VerifyingKey::from_bytes)
        .collect::<Result<_, _>>()
        .map_err(|_| "a replica public key is invalid".to_string())?;
    from_certificate(cert)
        .verify(&keys, f)
        .map_err(|e| format!("commit certificate: {e}"))
}
