//! Byzantine PBFT replicas: each mode is a real attack on the protocol, made of validly or
//! invalidly signed messages. PBFT's checks (signatures, digests, quorums of 2f+1, view change)
//! must keep every correct replica safe and, after a view change, live.

use std::sync::Arc;

use ed25519_dalek::{SigningKey, VerifyingKey};
use faultline_bft::{
    decode_and_verify, decode_payload, decode_signed, sign, sign_message, Commit, Payload,
    PrePrepare, Prepare, ViewChange, NULL_DIGEST,
};

use crate::config::ByzantineMode;
use crate::config::Protocol;
use crate::engine::pbft::PbftEngine;
use crate::engine::{Engine, EngineError, NodeId, Outgoing, ProposeError, Rejected, Step};
use crate::ledger::Tx;
use crate::store::Store;

pub struct ByzantinePbft {
    inner: PbftEngine,
    mode: ByzantineMode,
    id: NodeId,
    n: u64,
    key: SigningKey,
    keys: Vec<VerifyingKey>,
    extra: Vec<Outgoing>,
    ticks: u64,
    /// (view, seq, digest, replica) an equivocator already answered with matching votes, so
    /// that it answers once per digest and replica rather than once per message.
    answered: std::collections::HashSet<(u64, u64, [u8; 32], NodeId)>,
}

/// How many answered votes an equivocator remembers before it forgets them all (a forgotten
/// one is merely answered again, and a correct replica ignores the duplicate).
const MAX_REMEMBERED_VOTES: usize = 16_384;

impl ByzantinePbft {
    pub fn new(
        inner: PbftEngine,
        mode: ByzantineMode,
        id: NodeId,
        key: SigningKey,
        keys: Vec<VerifyingKey>,
    ) -> Self {
        ByzantinePbft {
            n: keys.len() as u64,
            inner,
            mode,
            id,
            key,
            keys,
            extra: Vec::new(),
            ticks: 0,
            answered: Default::default(),
        }
    }

    fn broadcast(&mut self, payload: &Payload) {
        let bytes: Arc<[u8]> = sign(payload, &self.key).into();
        for to in (0..self.n).filter(|p| *p != self.id) {
            self.extra.push(Outgoing {
                to,
                kind: payload.kind().as_str(),
                bytes: bytes.clone(),
            });
        }
    }

    /// Rewrites one outgoing message according to the mode; None drops it.
    fn transform(&self, m: Outgoing) -> Option<Outgoing> {
        let Ok(signed) = decode_signed(&m.bytes) else {
            return Some(m);
        };
        let Ok(payload) = faultline_bft::decode_payload(&signed.payload) else {
            return Some(m);
        };
        let resign = |p: Payload| {
            Some(Outgoing {
                to: m.to,
                kind: p.kind().as_str(),
                bytes: sign(&p, &self.key).into(),
            })
        };
        match self.mode {
            ByzantineMode::Silent => None,
            ByzantineMode::Forge => match payload {
                // Claim another replica's identity, signed with our own key.
                Payload::Prepare(mut p) => {
                    p.replica = (self.id + 1) % self.n;
                    resign(Payload::Prepare(p))
                }
                Payload::Commit(mut c) => {
                    c.replica = (self.id + 1) % self.n;
                    resign(Payload::Commit(c))
                }
                _ => {
                    // An invalid signature.
                    let mut s = signed;
                    s.signature.0[7] ^= 0x40;
                    Some(Outgoing {
                        to: m.to,
                        kind: m.kind,
                        bytes: s.to_wire().into(),
                    })
                }
            },
            ByzantineMode::Corrupt => match payload {
                Payload::Prepare(mut p) => {
                    p.digest[0] ^= 1;
                    resign(Payload::Prepare(p))
                }
                Payload::Commit(mut c) => {
                    c.digest[0] ^= 1;
                    resign(Payload::Commit(c))
                }
                Payload::Proposal(mut p) => {
                    // Alter a client's transaction; keep the signed header (the digest of the
                    // original).
                    if let Some(r) = p.requests.first_mut() {
                        if let Some(b) = r.last_mut() {
                            *b ^= 1;
                        }
                    }
                    resign(Payload::Proposal(p))
                }
                Payload::Checkpoint(mut c) => {
                    c.state_digest[0] ^= 1;
                    resign(Payload::Checkpoint(c))
                }
                _ => Some(m),
            },
            ByzantineMode::Equivocate => match payload {
                // As voter it tells each replica what that replica wants to hear (see
                // `answer_votes`), so its honest votes would only contradict that.
                Payload::Prepare(_) | Payload::Commit(_) => None,
                // As primary: a different batch for the same (view, seq) to half the backups.
                Payload::Proposal(mut p) if m.to % 2 == 1 => {
                    let Ok(Payload::PrePrepare(mut pp)) = decode_payload(&p.pre_prepare.payload)
                    else {
                        return Some(m);
                    };
                    p.requests.pop();
                    pp.digest = if p.requests.is_empty() {
                        NULL_DIGEST
                    } else {
                        self.app_digest(&p.requests)?
                    };
                    p.pre_prepare = sign_message(&Payload::PrePrepare(pp), &self.key);
                    resign(Payload::Proposal(p))
                }
                _ => Some(m),
            },
            ByzantineMode::AckWithoutStore | ByzantineMode::Disrupt => Some(m),
        }
    }

    /// The equivocating voter: whoever shows it a digest (in a PREPARE or COMMIT) gets a
    /// matching PREPARE and COMMIT back, sent to that replica alone. With at most f such
    /// replicas this changes nothing: a correct replica still needs 2f + 1 votes, so f + 1 of
    /// them are correct, and two quorums share a correct replica that voted once (PBFT §4.2,
    /// quorum intersection). With f + 1 of them (two of four, one the primary sending each half
    /// of the backups another batch) each half gathers its own 2f + 1 and the correct replicas
    /// commit different blocks at one height: `faultline demo`'s proof that the bound n ≥ 3f + 1
    /// is tight.
    fn answer_votes(&mut self, bytes: &[u8]) {
        let (view, seq, digest, to) = match decode_and_verify(bytes, &self.keys) {
            Ok((Payload::Prepare(p), _)) => (p.view, p.seq, p.digest, p.replica),
            Ok((Payload::Commit(c), _)) => (c.view, c.seq, c.digest, c.replica),
            _ => return,
        };
        if to == self.id || to >= self.n {
            return;
        }
        if self.answered.len() >= MAX_REMEMBERED_VOTES {
            self.answered.clear();
        }
        if !self.answered.insert((view, seq, digest, to)) {
            return;
        }
        let replica = self.id;
        for vote in [
            Payload::Prepare(Prepare {
                view,
                seq,
                digest,
                replica,
            }),
            Payload::Commit(Commit {
                view,
                seq,
                digest,
                replica,
            }),
        ] {
            self.extra.push(Outgoing {
                to,
                kind: vote.kind().as_str(),
                bytes: sign(&vote, &self.key).into(),
            });
        }
    }

    /// The ledger's batch digest of our own (valid) batch minus one request.
    fn app_digest(&self, requests: &[Vec<u8>]) -> Option<[u8; 32]> {
        let txs: Vec<Tx> = requests
            .iter()
            .map(|r| postcard::from_bytes(r).ok())
            .collect::<Option<_>>()?;
        let hashes: Vec<[u8; 32]> = txs.iter().map(Tx::hash).collect();
        Some(crate::ledger::block::batch_digest_of_hashes(&hashes))
    }
}

impl Engine for ByzantinePbft {
    fn protocol(&self) -> Protocol {
        Protocol::Pbft
    }

    fn id(&self) -> NodeId {
        self.id
    }

    fn on_message(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), Rejected> {
        if self.mode == ByzantineMode::Equivocate {
            self.answer_votes(bytes);
        }
        if self.mode == ByzantineMode::AckWithoutStore {
            // Vote for every digest seen, without checking the batch.
            let header = match decode_and_verify(bytes, &self.keys) {
                Ok((Payload::PrePrepare(pp), _)) => Some(pp),
                Ok((Payload::Proposal(p), _)) => match decode_payload(&p.pre_prepare.payload) {
                    Ok(Payload::PrePrepare(pp)) => Some(pp),
                    _ => None,
                },
                _ => None,
            };
            if let Some(PrePrepare {
                view, seq, digest, ..
            }) = header
            {
                let replica = self.id;
                self.broadcast(&Payload::Prepare(Prepare {
                    view,
                    seq,
                    digest,
                    replica,
                }));
                self.broadcast(&Payload::Commit(Commit {
                    view,
                    seq,
                    digest,
                    replica,
                }));
            }
        }
        self.inner.on_message(from, bytes)
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        self.inner.on_tick();
        if self.mode == ByzantineMode::Disrupt && self.ticks % 10 == 0 {
            let s = self.inner.replica().status();
            let vc = ViewChange {
                new_view: s.view.saturating_add(1000),
                replica: self.id,
                stable_seq: s.stable_checkpoint,
                stable_digest: s.stable_digest,
                checkpoint_proof: Vec::new(),
                prepared: Vec::new(),
            };
            self.broadcast(&Payload::ViewChange(vc));
        }
    }

    fn propose(&mut self, txs: Vec<Tx>) -> Result<(), ProposeError> {
        self.inner.propose(txs)
    }

    fn poll(&mut self, store: &Store) -> Result<Step, EngineError> {
        let mut step = self.inner.poll(store)?;
        if self.mode == ByzantineMode::AckWithoutStore {
            step.write.engine.clear();
        }
        let msgs = std::mem::take(&mut step.messages);
        step.messages = msgs.into_iter().filter_map(|m| self.transform(m)).collect();
        if self.mode != ByzantineMode::Silent {
            step.messages.append(&mut self.extra);
        }
        self.extra.clear();
        Ok(step)
    }

    passthrough_engine_methods!();
}
