//! The PBFT engine: `faultline-bft`'s sans-IO replica wired to the store and ledger. A request
//! is one postcard-encoded signed transaction; sequence number n is block height n (null
//! requests from a view change become empty blocks), and each block keeps its commit
//! certificate so `faultline verify` can audit it offline.

mod ledger;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use ed25519_dalek::{SigningKey, VerifyingKey};
use faultline_bft::{CommittedBatch, Config as BftConfig, PersistOp, Replica, SubmitError};

use super::{Engine, EngineError, EngineStatus, NodeId, Outgoing, ProposeError, Rejected, Step};
use crate::config::Protocol;
use crate::ledger::{Op, Tx};
use crate::store::{AppliedBlock, EngineOp, NewBlock, Store, WriteBatch};
pub use ledger::{check_block_certificate, LedgerApp};
use ledger::{from_certificate, to_certificate};

/// Engine-KV key holding the cluster's replica public keys and f, so `faultline verify` can
/// check certificates from the data dir alone.
pub const KEY_CLUSTER: &[u8] = b"cluster/pbft_keys";

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
    /// Seeds the read-marker nonces. `faultline run` draws it from the operating system; the
    /// simulator derives it from its seed and the restart count, so a restarted replica never
    /// reuses a nonce it may already have had ordered before it crashed.
    pub read_nonce_seed: u64,
}

/// Default [`PbftOptions::max_pending_txs`], as Raft's.
pub const DEFAULT_MAX_PENDING_TXS: usize = 200_000;

/// Linearizable reads waiting at one replica for their marker; one more is refused with
/// `Busy` (the API's 503 + Retry-After), so a flood of reads cannot grow memory without bound.
pub const MAX_PENDING_READS: usize = 4096;

/// A marker not executed after this many ticks (100 s at the default 10 ms) is forgotten: its
/// readers have long been answered 503 by the API's 10 s timeout.
const READ_MARKER_TTL_TICKS: u64 = 10_000;

/// Reads waiting for one read marker to be ordered and executed.
struct MarkerWait {
    issued_tick: u64,
    ctxs: Vec<u64>,
}

pub struct PbftEngine {
    replica: Replica<LedgerApp>,
    id: NodeId,
    public_keys: Vec<[u8; 32]>,
    f: usize,
    wrote_cluster: bool,
    view_changes: u64,
    last_view: u64,
    max_pending_txs: usize,
    /// Signs read markers (the replica's own key, as for its protocol messages).
    key: SigningKey,
    /// splitmix64 state for marker nonces.
    nonce_state: u64,
    ticks: u64,
    /// Reads begun since the last marker was issued: they share the next marker. A read never
    /// joins a marker issued before it began, which might be ordered before the read began.
    reads_unmarked: Vec<u64>,
    /// Issued markers by nonce, with the reads each one answers.
    reads_marked: HashMap<u64, MarkerWait>,
    /// Reads whose marker is executed (its block is in a step already handed to the driver).
    reads_ready: Vec<u64>,
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
        let app = LedgerApp::new(permitted_clients).with_replicas(public_keys.iter().copied());
        let records: Vec<(Vec<u8>, Vec<u8>)> = store
            .engine_records()?
            .into_iter()
            .filter(|(k, _)| k.as_slice() != KEY_CLUSTER)
            .collect();
        let replica = if records.is_empty() {
            Replica::new(cfg, key.clone(), app).map_err(|e| EngineError::Config(e.to_string()))?
        } else {
            Replica::restore(cfg, key.clone(), app, records)
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
            key,
            nonce_state: opts.read_nonce_seed,
            ticks: 0,
            reads_unmarked: Vec::new(),
            reads_marked: HashMap::new(),
            reads_ready: Vec::new(),
        })
    }

    fn next_nonce(&mut self) -> u64 {
        // splitmix64: a full-period sequence, so nonces of one seed never repeat.
        self.nonce_state = self.nonce_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.nonce_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pending_reads(&self) -> usize {
        self.reads_unmarked.len()
            + self
                .reads_marked
                .values()
                .map(|w| w.ctxs.len())
                .sum::<usize>()
    }

    /// Orders one read marker for every read begun since the last one (TOCS §5.1.3: a read
    /// that must be linearizable without trusting any quorum of replies goes through the
    /// normal-case protocol like a write). `submit_own` relays it to the primary from a backup
    /// at once (no client sent it to the primary) and arms the request timer, so a primary that
    /// drops markers is replaced by a view change (PBFT §4.4) exactly as one that drops client
    /// requests.
    fn issue_marker(&mut self) {
        if self.reads_unmarked.is_empty() {
            return;
        }
        let nonce = self.next_nonce();
        let marker = Tx::sign(&self.key, nonce, Op::Read {});
        let bytes = crate::store::encode(&marker);
        self.replica.app().remember(&[marker.hash()]);
        let ctxs = std::mem::take(&mut self.reads_unmarked);
        match self.replica.submit_own(bytes) {
            Ok(()) => {
                self.reads_marked.insert(
                    nonce,
                    MarkerWait {
                        issued_tick: self.ticks,
                        ctxs,
                    },
                );
            }
            // Cannot happen for a fresh, well-formed marker of our own; the reads then time
            // out at the API (503) rather than being answered unordered.
            Err(e) => tracing::warn!(error = %e, "read marker not accepted by the replica"),
        }
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
            .saturating_sub(faultline_bft::ENVELOPE_RESERVE);
        let mut used = 0usize;
        let mut batches = Vec::new();
        for h in from..=upto.min(from.saturating_add(256)) {
            let Some(block) = store.block(h)? else { break };
            let Some(cert) = &block.certificate else {
                break;
            };
            let requests: Vec<Vec<u8>> = block.txs.iter().map(crate::store::encode).collect();
            let batch = CommittedBatch {
                seq: h,
                view: cert.view,
                requests,
                digest: cert.digest,
                certificate: from_certificate(cert),
            };
            let size = crate::store::encode(&batch).len();
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
        let r = self.replica.step(from, bytes).map_err(|r| Rejected {
            reason: r.reason.as_str(),
        });
        self.track_view();
        r
    }

    fn on_tick(&mut self) {
        self.replica.tick();
        self.ticks += 1;
        let now = self.ticks;
        self.reads_marked
            .retain(|_, w| now.saturating_sub(w.issued_tick) < READ_MARKER_TTL_TICKS);
        self.track_view();
    }

    /// A linearizable read (docs/SPEC.md "HTTP API"): answered once a read marker issued after
    /// the read began has been ordered and executed here, so the state served reflects every
    /// write that completed before the read began, whatever this replica's lag.
    fn read_index(&mut self, ctx: u64) -> Result<bool, ProposeError> {
        if self.pending_reads() >= MAX_PENDING_READS {
            return Err(ProposeError::Busy);
        }
        self.reads_unmarked.push(ctx);
        Ok(true)
    }

    fn ready_reads(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.reads_ready)
    }

    fn propose(&mut self, txs: Vec<Tx>) -> Result<(), ProposeError> {
        // The caller checked these signatures (the API batch-verifies every request): record
        // them so neither `submit` nor the pre-prepare's batch check verifies them again.
        let encoded: Vec<Vec<u8>> = txs.iter().map(crate::store::encode).collect();
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
                value: crate::store::encode(&(self.f as u64, &self.public_keys)),
            });
        }
        self.issue_marker();
        // Once per round of inputs (the driver polls after draining them).
        self.replica.propose_if_idle();
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
            let me = self.key.verifying_key().to_bytes();
            for tx in txs
                .iter()
                .filter(|t| t.op.is_read_marker() && t.client == me)
            {
                if let Some(w) = self.reads_marked.remove(&tx.seq) {
                    // The marker's block is in this step's write: the driver serves the reads
                    // (from `ready_reads`) only after that write is durable and applied.
                    self.reads_ready.extend(w.ctxs);
                }
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
                kind: m.kind.as_str(),
                bytes: m.bytes,
            })
            .collect();
        for s in ready.serve {
            self.serve(store, s.to, s.from_seq, s.to_seq)?;
        }
        self.track_view();
        Ok(Step {
            write,
            messages,
            early: Vec::new(),
        })
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
                crate::engine::Role::ViewChange
            } else if s.primary == self.id {
                crate::engine::Role::Primary
            } else {
                crate::engine::Role::Backup
            },
            term: None,
            view: Some(s.view),
            leader: Some(s.primary),
            commit_index: s.last_executed,
            pending_txs: s.unexecuted_requests as u64,
        }
    }

    fn leadership_changes(&self) -> u64 {
        self.view_changes
    }

    fn message_kind(&self, bytes: &[u8]) -> &'static str {
        message_kind(bytes)
    }
}

/// The snake_case name of an encoded PBFT message, read without decoding or verifying it;
/// "unknown" if it does not parse.
pub fn message_kind(bytes: &[u8]) -> &'static str {
    faultline_bft::MessageKind::of_wire(bytes).map_or("unknown", faultline_bft::MessageKind::as_str)
}
