//! View changes (PBFT §4.4, §4.5.2): validating VIEW-CHANGE messages with their checkpoint and
//! prepared-certificate proofs, and the deterministic computation of the NEW-VIEW's re-issued
//! pre-prepares (set O) that both the new primary and every backup perform.

use std::collections::{BTreeMap, BTreeSet};

use crate::certificate::NULL_DIGEST;
use crate::checkpoint::StableCheckpoint;
use crate::config::{Config, NodeId};
use crate::crypto::VerifyCache;
use crate::message::{
    decode_payload, verify_cached, Payload, PreparedProof, SignedMessage, ViewChange,
};
use crate::reject::RejectReason;

/// A prepared certificate reduced to what the view-change rule needs. It names the batch by
/// digest only (the signed pre-prepare header + 2f PREPAREs): the body lives in the replica's
/// body store, so a VIEW-CHANGE carrying up to L certificates is O(L·n) small signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedCert {
    pub view: u64,
    pub digest: [u8; 32],
    pub proof: PreparedProof,
}

/// A validated VIEW-CHANGE.
#[derive(Clone, Debug)]
pub struct VcEntry {
    pub msg: SignedMessage,
    pub vc: ViewChange,
    pub certs: BTreeMap<u64, PreparedCert>,
}

/// The outcome of the §4.4 new-view rule over a set of view changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewViewPlan {
    /// min-s: the latest stable checkpoint among the view changes, with its proof.
    pub stable: StableCheckpoint,
    /// max-s: the highest prepared sequence number (or min-s).
    pub max_seq: u64,
    /// For each n in (min-s, max-s]: the digest to re-issue (null = empty batch). Only digests:
    /// replicas that lack a body fetch it by digest before they prepare it.
    pub reissue: Vec<(u64, [u8; 32])>,
}

/// Validates a VIEW-CHANGE's proofs (its own signature is checked by the caller):
/// - C: 2f+1 distinct signed CHECKPOINTs for (stable_seq, stable_digest), or genesis;
/// - P: each certificate is a pre-prepare signed by the primary of its view (< new_view) with
///   2f matching prepares from distinct backups, its seq in (stable_seq, stable_seq + L].
///
/// All embedded signatures are checked together with one batch verification.
pub(crate) fn validate_view_change(
    cfg: &Config,
    cache: &mut VerifyCache,
    msg: SignedMessage,
    vc: ViewChange,
) -> Result<VcEntry, RejectReason> {
    let n = cfg.n() as u64;
    let q = cfg.quorum();
    let mut to_verify: Vec<(&SignedMessage, NodeId)> = Vec::new();
    if vc.stable_seq == 0 {
        if !vc.checkpoint_proof.is_empty() || vc.stable_digest != [0u8; 32] {
            return Err(RejectReason::BadProof);
        }
    } else {
        if vc.stable_seq % cfg.checkpoint_interval != 0 {
            return Err(RejectReason::BadProof);
        }
        let mut signers = BTreeSet::new();
        for m in &vc.checkpoint_proof {
            let Payload::Checkpoint(c) =
                decode_payload(&m.payload).map_err(|_| RejectReason::BadProof)?
            else {
                return Err(RejectReason::BadProof);
            };
            if c.seq != vc.stable_seq || c.state_digest != vc.stable_digest || c.replica >= n {
                return Err(RejectReason::BadProof);
            }
            if !signers.insert(c.replica) {
                return Err(RejectReason::BadProof);
            }
            to_verify.push((m, c.replica));
        }
        if signers.len() < q {
            return Err(RejectReason::BadProof);
        }
    }
    let mut certs = BTreeMap::new();
    for proof in &vc.prepared {
        let Payload::PrePrepare(pp) =
            decode_payload(&proof.pre_prepare.payload).map_err(|_| RejectReason::BadProof)?
        else {
            return Err(RejectReason::BadProof);
        };
        let primary = cfg.primary(pp.view);
        if pp.view >= vc.new_view
            || pp.replica != primary
            || pp.seq <= vc.stable_seq
            || pp.seq > vc.stable_seq.saturating_add(cfg.watermark_window)
            || certs.contains_key(&pp.seq)
        {
            return Err(RejectReason::BadProof);
        }
        to_verify.push((&proof.pre_prepare, primary));
        let mut signers = BTreeSet::new();
        for m in &proof.prepares {
            let Payload::Prepare(p) =
                decode_payload(&m.payload).map_err(|_| RejectReason::BadProof)?
            else {
                return Err(RejectReason::BadProof);
            };
            if p.view != pp.view
                || p.seq != pp.seq
                || p.digest != pp.digest
                || p.replica >= n
                || p.replica == primary
                || !signers.insert(p.replica)
            {
                return Err(RejectReason::BadProof);
            }
            to_verify.push((m, p.replica));
        }
        if signers.len() + 1 < q {
            return Err(RejectReason::BadProof);
        }
        certs.insert(
            pp.seq,
            PreparedCert {
                view: pp.view,
                digest: pp.digest,
                proof: proof.clone(),
            },
        );
    }
    if !verify_cached(cache, &cfg.public_keys, &to_verify) {
        return Err(RejectReason::BadSignature);
    }
    Ok(VcEntry { msg, vc, certs })
}

/// PBFT §4.4 new-view rule: min-s is the highest stable checkpoint in V, max-s the highest
/// prepared seq; every n in between gets the request of the certificate with the highest view,
/// or a null request. Deterministic in the order of `entries` (ties cannot occur between
/// correct certificates: two prepared certificates of one view and seq share the digest).
pub fn compute_plan(entries: &[VcEntry]) -> NewViewPlan {
    let mut stable = StableCheckpoint::genesis();
    for e in entries {
        if e.vc.stable_seq > stable.seq {
            stable = StableCheckpoint {
                seq: e.vc.stable_seq,
                digest: e.vc.stable_digest,
                proof: e.vc.checkpoint_proof.clone(),
            };
        }
    }
    let mut best: BTreeMap<u64, &PreparedCert> = BTreeMap::new();
    for e in entries {
        for (seq, c) in &e.certs {
            if *seq <= stable.seq {
                continue;
            }
            match best.get(seq) {
                Some(b) if b.view >= c.view => {}
                _ => {
                    best.insert(*seq, c);
                }
            }
        }
    }
    let max_seq = best.keys().next_back().copied().unwrap_or(stable.seq);
    let reissue = (stable.seq + 1..=max_seq)
        .map(|s| match best.get(&s) {
            Some(c) => (s, c.digest),
            None => (s, NULL_DIGEST),
        })
        .collect();
    NewViewPlan {
        stable,
        max_seq,
        reissue,
    }
}
