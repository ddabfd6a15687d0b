//! The PBFT engine: `faultline-bft`'s sans-IO replica wired to the store and ledger. A request
//! is one postcard-encoded signed transaction; sequence number n is block height n (null
//! requests from a view change become empty blocks), and each block keeps its commit
//! certificate so `faultline verify` can audit it offline.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use ed25519_dalek::{SigningKey, VerifyingKey};
use faultline_bft::{
    App, CommitCertificate, CommittedBatch, Config as BftConfig, InvalidBatch, PersistOp, Replica,
    Signature64, SubmitError,
};

use super::{Engine, EngineError, EngineStatus, NodeId, Outgoing, ProposeError, Rejected, Step};
use crate::config::Protocol;
use crate::ledger::block::{batch_digest_of_hashes, CommitSignature};
use crate::ledger::tx::verify_batch;
use crate::ledger::{Block, Certificate, Tx};
use crate::store::{AppliedBlock, EngineOp, NewBlock, Store, WriteBatch};

/// Engine-KV key holding the cluster's replica public keys and f, so `faultline verify` can
/// check certificates from the data dir alone.
pub const KEY_CLUSTER: &[u8] = b"cluster/pbft_keys";

/// Largest encoded request accepted from a client or peer.
const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Transactions whose signatures this replica already checked (bounded; cleared when full).
const VERIFIED_CACHE: usize = 1 << 20;

/// The ledger as PBFT's application: decodes requests, checks client signatures (once per
/// transaction, in batches) and permitted clients, and computes the batch digest the ledger
/// hashes into its blocks.
pub struct LedgerApp {
    permitted: BTreeSet<[u8; 32]>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl LedgerApp {
    pub fn new(permitted: impl IntoIterator<Item = [u8; 32]>) -> Self {
        LedgerApp {
            permitted: permitted.into_iter().collect(),
            verified: Mutex::new(HashSet::new()),
        }
    }

    fn decode(&self, request: &[u8]) -> Option<Tx> {
        if request.len() > MAX_REQUEST_BYTES {
            return None;
        }
        let tx: Tx = postcard::from_bytes(request).ok()?;
        self.permitted.contains(&tx.client).then_some(tx)
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

/// Knobs of the PBFT engine.
#[derive(Clone, Debug)]
pub struct PbftOptions {
    pub checkpoint_interval: u64,
    pub max_batch_txs: usize,
    pub view_change_ticks: u32,
    /// The size budget every message must fit (`Limits::max_message_bytes`).
    pub max_message_bytes: usize,
    /// Requests waiting at this replica (queued at the primary or pending at a backup) before
    /// new client requests are refused with `Busy` (the API's 503 + Retry-After): memory stays
    /// bounded when clients outrun the cluster.
    pub max_pending_txs: usize,
}

/// Default [`PbftOptions::max_pending_txs`], as Raft's.
pub const DEFAULT_MAX_PENDING_TXS: usize = 200_000;

pub struct PbftEngine {
    replica: Replica<LedgerApp>,
    id: NodeId,
    public_keys: Vec<[u8; 32]>,
    f: usize,
    wrote_cluster: bool,
    view_changes: u64,
    last_view: u64,
    max_pending_txs: usize,
}

fn to_certificate(c: &CommitCertificate) -> Certificate {
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

fn from_certificate(c: &Certificate) -> CommitCertificate {
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

impl PbftEngine {
    pub fn open(
        id: NodeId,
        public_keys: Vec<[u8; 32]>,
        permitted_clients: Vec<[u8; 32]>,
        key: SigningKey,
        opts: PbftOptions,
        store: &Store,
    ) -> Result<Self, EngineError> {
        let keys: Vec<VerifyingKey> = public_keys
            .iter()
            .map(VerifyingKey::from_bytes)
            .collect::<Result<_, _>>()
            .map_err(|_| EngineError::Config("a replica public key is invalid".into()))?;
        let mut cfg = BftConfig::new(id, keys);
        cfg.checkpoint_interval = opts.checkpoint_interval.max(1);
        cfg.watermark_window = 4 * cfg.checkpoint_interval;
        cfg.max_batch = opts.max_batch_txs.max(1);
        cfg.max_message_bytes = opts.max_message_bytes;
        cfg.view_change_timeout_ticks = opts.view_change_ticks.max(1);
        cfg.request_timeout_ticks = opts.view_change_ticks.max(1).saturating_mul(2);
        let f = cfg.f();
        let app = LedgerApp::new(permitted_clients);
        let records: Vec<(Vec<u8>, Vec<u8>)> = store
            .engine_records()?
            .into_iter()
            .filter(|(k, _)| k.as_slice() != KEY_CLUSTER)
            .collect();
        let replica = if records.is_empty() {
            Replica::new(cfg, key, app).map_err(|e| EngineError::Config(e.to_string()))?
        } else {
            Replica::restore(cfg, key, app, records)
                .map_err(|e| EngineError::Corrupt(e.to_string()))?
        };
        Ok(PbftEngine {
            replica,
            id,
            public_keys,
            f,
            wrote_cluster: false,
            view_changes: 0,
            last_view: 0,
            max_pending_txs: opts.max_pending_txs.max(1),
        })
    }

    /// Direct access to the replica (Byzantine wrappers, tests).
    pub fn replica(&mut self) -> &mut Replica<LedgerApp> {
        &mut self.replica
    }

    fn track_view(&mut self) {
        let view = self.replica.status().view;
        if view != self.last_view {
            self.view_changes += 1;
            self.last_view = view;
        }
    }

    /// Reads committed blocks `from..=to` back as PBFT batches for a lagging replica: only as
    /// many as fit one reply under the message budget (the requester continues from where the
    /// reply ends), so a far-behind replica is served in bounded chunks and no more than one
    /// reply's worth of blocks is read per request.
    fn serve(
        &mut self,
        store: &Store,
        to: NodeId,
        from: u64,
        upto: u64,
    ) -> Result<(), EngineError> {
        let room = self
            .replica
            .config()
            .max_message_bytes
            .saturating_sub(faultline_bft::config::ENVELOPE_RESERVE);
        let mut used = 0usize;
        let mut batches = Vec::new();
        for h in from..=upto.min(from.saturating_add(256)) {
            let Some(block) = store.block(h)? else { break };
            let Some(cert) = &block.certificate else {
                break;
            };
            let requests: Vec<Vec<u8>> = block
                .txs
                .iter()
                .map(|t| postcard::to_allocvec(t).unwrap_or_default())
                .collect();
            let batch = CommittedBatch {
                seq: h,
                view: cert.view,
                requests,
                digest: cert.digest,
                certificate: from_certificate(cert),
            };
            let size = postcard::to_allocvec(&batch).map(|b| b.len()).unwrap_or(0);
            if !batches.is_empty() && used + size > room {
                break;
            }
            used += size;
            batches.push(batch);
        }
        if !batches.is_empty() {
            self.replica.send_state(to, batches);
        }
        Ok(())
    }
}

impl Engine for PbftEngine {
    fn protocol(&self) -> Protocol {
        Protocol::Pbft
    }

    fn id(&self) -> NodeId {
        self.id
    }

    fn on_message(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), Rejected> {
        let r = self
            .replica
            .step(from, bytes)
            .map_err(|r| Rejected { reason: r.reason });
        self.track_view();
        r
    }

    fn on_tick(&mut self) {
        self.replica.tick();
        self.track_view();
    }

    fn propose(&mut self, txs: Vec<Tx>) -> Result<(), ProposeError> {
        // The caller checked these signatures (the API batch-verifies every request): record
        // them so neither `submit` nor the pre-prepare's batch check verifies them again.
        let encoded: Vec<Vec<u8>> = txs
            .iter()
            .map(|tx| postcard::to_allocvec(tx).unwrap_or_default())
            .collect();
        // Refuse the whole request before submitting any of it if one transaction can never
        // be ordered: no batch under the message budget could carry it.
        let budget = self.replica.config().batch_budget();
        if let Some(big) = encoded
            .iter()
            .find(|b| faultline_bft::request_cost(b.len()) > budget)
        {
            return Err(ProposeError::TooLarge {
                bytes: big.len(),
                max: budget.saturating_sub(faultline_bft::request_cost(0)),
            });
        }
        let st = self.replica.status();
        if st.queued_requests + st.pending_requests + txs.len() > self.max_pending_txs {
            return Err(ProposeError::Busy);
        }
        let hashes: Vec<[u8; 32]> = txs.iter().map(Tx::hash).collect();
        self.replica.app().remember(&hashes);
        for bytes in encoded {
            match self.replica.submit(bytes) {
                Ok(()) | Err(SubmitError::Duplicate) => {}
                // The caller verified the signature; an invalid one here is not permitted.
                Err(SubmitError::Invalid) | Err(SubmitError::TooLarge(_)) => {}
            }
        }
        Ok(())
    }

    fn poll(&mut self, store: &Store) -> Result<Step, EngineError> {
        let mut write = WriteBatch::default();
        if !self.wrote_cluster {
            self.wrote_cluster = true;
            write.engine.push(EngineOp::Put {
                key: KEY_CLUSTER.to_vec(),
                value: postcard::to_allocvec(&(self.f as u64, &self.public_keys))
                    .unwrap_or_default(),
            });
        }
        let ready = self.replica.ready();
        for op in ready.persist {
            write.engine.push(match op {
                PersistOp::Put { key, value } => EngineOp::Put { key, value },
                PersistOp::Delete { key } => EngineOp::Delete { key },
            });
        }
        for batch in &ready.committed {
            let mut txs = Vec::with_capacity(batch.requests.len());
            for r in &batch.requests {
                let tx: Tx = postcard::from_bytes(r).map_err(|e| {
                    EngineError::Corrupt(format!("committed request at seq {}: {e}", batch.seq))
                })?;
                txs.push(tx);
            }
            write.blocks.push(NewBlock {
                txs,
                certificate: Some(to_certificate(&batch.certificate)),
            });
        }
        let messages = ready
            .messages
            .into_iter()
            .map(|m| Outgoing {
                to: m.to,
                kind: m.kind,
                bytes: m.bytes,
            })
            .collect();
        for s in ready.serve {
            self.serve(store, s.to, s.from_seq, s.to_seq)?;
        }
        self.track_view();
        Ok(Step { write, messages })
    }

    fn applied(&mut self, blocks: &[AppliedBlock], _store: &Store) -> Result<(), EngineError> {
        let k = self.replica.config().checkpoint_interval;
        for b in blocks {
            if b.block.height % k == 0 {
                // PBFT §4.3: the checkpoint's state digest is the ledger head after seq n.
                self.replica.executed(b.block.height, b.block.hash);
            }
        }
        Ok(())
    }

    fn status(&self) -> EngineStatus {
        let s = self.replica.status();
        EngineStatus {
            role: if s.in_view_change {
                "view_change"
            } else if s.primary == self.id {
                "primary"
            } else {
                "backup"
            },
            term: None,
            view: Some(s.view),
            leader: Some(s.primary),
            commit_index: s.last_executed,
        }
    }

    fn leader_changes(&self) -> u64 {
        self.view_changes
    }

    fn message_kind(&self, bytes: &[u8]) -> &'static str {
        message_kind(bytes)
    }
}

/// The snake_case name of an encoded PBFT message (`SignedMessage` on the wire: the payload
/// bytes come first, and a payload starts with its `Payload` variant index), read without
/// decoding or verifying the message; "unknown" if it does not parse.
pub fn message_kind(bytes: &[u8]) -> &'static str {
    /// `faultline_bft::Payload` variants in declaration order (append-only there).
    const NAMES: [&str; 12] = [
        "request",
        "pre_prepare",
        "prepare",
        "commit",
        "checkpoint",
        "view_change",
        "new_view",
        "state_request",
        "state_response",
        "pre_prepare",
        "batch_request",
        "batch",
    ];
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        payload: &'a [u8],
    }
    postcard::take_from_bytes::<Envelope<'_>>(bytes)
        .ok()
        .and_then(|(e, _)| postcard::take_from_bytes::<u32>(e.payload).ok())
        .and_then(|(variant, _)| NAMES.get(variant as usize).copied())
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Op;
    use crate::sim::{sim_client_key, sim_cluster, sim_node_key};

    #[test]
    fn a_replica_pushes_back_once_its_request_queue_is_full() {
        let cluster = sim_cluster(Protocol::Pbft, 4, 1).unwrap();
        let store =
            Store::with_backend(redb::backends::InMemoryBackend::new(), &cluster.genesis).unwrap();
        let opts = PbftOptions {
            checkpoint_interval: 16,
            max_batch_txs: 100,
            view_change_ticks: 100,
            max_message_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
            max_pending_txs: 5,
        };
        // A backup: requests stay pending until the primary orders them (it never runs here).
        let mut engine = PbftEngine::open(
            1,
            cluster.nodes.iter().map(|n| n.public_key).collect(),
            cluster.clients.iter().map(|c| c.public_key).collect(),
            sim_node_key(1),
            opts,
            &store,
        )
        .unwrap();
        let key = sim_client_key(0);
        let tx = |seq| {
            Tx::sign(
                &key,
                seq,
                Op::Put {
                    key: "k".into(),
                    value: "v".into(),
                },
            )
        };
        engine.propose((1..=5).map(tx).collect()).unwrap();
        assert_eq!(engine.propose(vec![tx(6)]), Err(ProposeError::Busy));
    }
}
