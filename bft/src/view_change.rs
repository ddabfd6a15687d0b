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

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::message::{sign_message, Checkpoint, PrePrepare, Prepare};

    const N: usize = 4; // f = 1, quorum 3
    const K: u64 = 4;
    const L: u64 = 16;

    fn key(i: NodeId) -> SigningKey {
        SigningKey::from_bytes(&[i as u8 + 1; 32])
    }

    fn cfg() -> Config {
        let mut c = Config::new(0, (0..N as u64).map(|i| key(i).verifying_key()).collect());
        c.checkpoint_interval = K;
        c.watermark_window = L;
        c
    }

    fn checkpoint(seq: u64, digest: [u8; 32], from: NodeId) -> SignedMessage {
        let p = Payload::Checkpoint(Checkpoint {
            seq,
            state_digest: digest,
            replica: from,
        });
        sign_message(&p, &key(from))
    }

    /// A pre-prepare for (view, seq, digest) naming `claimed` as its signer, signed by `by`.
    fn pre_prepare_by(
        view: u64,
        seq: u64,
        digest: [u8; 32],
        claimed: NodeId,
        by: NodeId,
    ) -> SignedMessage {
        let p = Payload::PrePrepare(PrePrepare {
            view,
            seq,
            digest,
            replica: claimed,
        });
        sign_message(&p, &key(by))
    }

    fn prepare(view: u64, seq: u64, digest: [u8; 32], from: NodeId) -> SignedMessage {
        let p = Payload::Prepare(Prepare {
            view,
            seq,
            digest,
            replica: from,
        });
        sign_message(&p, &key(from))
    }

    /// A prepared certificate: the primary's pre-prepare and prepares from `backups`.
    fn proof(view: u64, seq: u64, digest: [u8; 32], backups: &[NodeId]) -> PreparedProof {
        let primary = view % N as u64;
        PreparedProof {
            pre_prepare: pre_prepare_by(view, seq, digest, primary, primary),
            prepares: backups
                .iter()
                .map(|b| prepare(view, seq, digest, *b))
                .collect(),
        }
    }

    fn view_change(
        new_view: u64,
        from: NodeId,
        stable: (u64, [u8; 32], Vec<SignedMessage>),
        prepared: Vec<PreparedProof>,
    ) -> (SignedMessage, ViewChange) {
        let vc = ViewChange {
            new_view,
            replica: from,
            stable_seq: stable.0,
            stable_digest: stable.1,
            checkpoint_proof: stable.2,
            prepared,
        };
        (
            sign_message(&Payload::ViewChange(vc.clone()), &key(from)),
            vc,
        )
    }

    fn genesis() -> (u64, [u8; 32], Vec<SignedMessage>) {
        (0, [0; 32], Vec::new())
    }

    /// A stable checkpoint at `seq` proven by `signers`.
    fn stable(seq: u64, signers: &[NodeId]) -> (u64, [u8; 32], Vec<SignedMessage>) {
        let d = [seq as u8; 32];
        (
            seq,
            d,
            signers.iter().map(|s| checkpoint(seq, d, *s)).collect(),
        )
    }

    fn validate(
        stable: (u64, [u8; 32], Vec<SignedMessage>),
        prepared: Vec<PreparedProof>,
    ) -> Result<VcEntry, RejectReason> {
        let (m, vc) = view_change(2, 1, stable, prepared);
        validate_view_change(&cfg(), &mut VerifyCache::new(64), m, vc)
    }

    fn err(r: Result<VcEntry, RejectReason>) -> RejectReason {
        r.map(|_| ()).unwrap_err()
    }

    #[test]
    fn genesis_needs_no_proof_and_takes_none() {
        assert!(validate(genesis(), Vec::new()).is_ok());
        let mut g = genesis();
        g.1 = [1; 32];
        assert_eq!(err(validate(g, Vec::new())), RejectReason::BadProof);
        let mut g = genesis();
        g.2.push(checkpoint(0, [0; 32], 2));
        assert_eq!(err(validate(g, Vec::new())), RejectReason::BadProof);
    }

    #[test]
    fn checkpoint_proof_needs_a_quorum_of_distinct_matching_signers() {
        assert!(validate(stable(8, &[0, 2, 3]), Vec::new()).is_ok());
        assert!(validate(stable(8, &[0, 1, 2, 3]), Vec::new()).is_ok());
        // 2f signers: one short.
        assert_eq!(
            err(validate(stable(8, &[0, 3]), Vec::new())),
            RejectReason::BadProof
        );
        // One signer twice does not make a third.
        assert_eq!(
            err(validate(stable(8, &[0, 3, 3]), Vec::new())),
            RejectReason::BadProof
        );
        // A checkpoint for another digest or seq among them.
        let mut s = stable(8, &[0, 2]);
        s.2.push(checkpoint(8, [9; 32], 3));
        assert_eq!(err(validate(s, Vec::new())), RejectReason::BadProof);
        let mut s = stable(8, &[0, 2]);
        s.2.push(checkpoint(4, [8; 32], 3));
        assert_eq!(err(validate(s, Vec::new())), RejectReason::BadProof);
        // A signer outside the cluster.
        let mut s = stable(8, &[0, 2]);
        s.2.push(checkpoint(8, [8; 32], 7));
        assert_eq!(err(validate(s, Vec::new())), RejectReason::BadProof);
        // Not a checkpoint seq (a multiple of K).
        assert_eq!(
            err(validate(stable(6, &[0, 2, 3]), Vec::new())),
            RejectReason::BadProof
        );
        // A proof message that is not a checkpoint at all.
        let mut s = stable(8, &[0, 2]);
        s.2.push(prepare(0, 8, [8; 32], 3));
        assert_eq!(err(validate(s, Vec::new())), RejectReason::BadProof);
    }

    #[test]
    fn a_forged_checkpoint_signature_is_refused() {
        let mut s = stable(8, &[0, 2]);
        let p = Payload::Checkpoint(Checkpoint {
            seq: 8,
            state_digest: [8; 32],
            replica: 3,
        });
        s.2.push(sign_message(&p, &key(1))); // claims 3, signed by 1
        assert_eq!(err(validate(s, Vec::new())), RejectReason::BadSignature);
    }

    #[test]
    fn prepared_certificates_need_the_primary_and_2f_matching_backups() {
        let d = [5; 32];
        let e = validate(genesis(), vec![proof(1, 3, d, &[0, 2])]).expect("valid certificate");
        assert_eq!(e.certs.len(), 1);
        assert_eq!((e.certs[&3].view, e.certs[&3].digest), (1, d));
        // 2f - 1 prepares.
        assert_eq!(
            err(validate(genesis(), vec![proof(1, 3, d, &[2])])),
            RejectReason::BadProof
        );
        // The primary's own prepare does not count (it never prepares, §4.2).
        assert_eq!(
            err(validate(genesis(), vec![proof(1, 3, d, &[1, 2])])),
            RejectReason::BadProof
        );
        // One backup twice.
        assert_eq!(
            err(validate(genesis(), vec![proof(1, 3, d, &[2, 2])])),
            RejectReason::BadProof
        );
        // A prepare for another digest.
        let mut p = proof(1, 3, d, &[0]);
        p.prepares.push(prepare(1, 3, [6; 32], 2));
        assert_eq!(err(validate(genesis(), vec![p])), RejectReason::BadProof);
        // A prepare of another view.
        let mut p = proof(1, 3, d, &[0]);
        p.prepares.push(prepare(0, 3, d, 2));
        assert_eq!(err(validate(genesis(), vec![p])), RejectReason::BadProof);
        // A pre-prepare not from its view's primary (replica 2 is not the primary of view 1).
        let mut p = proof(1, 3, d, &[0, 3]);
        p.pre_prepare = pre_prepare_by(1, 3, d, 2, 2);
        assert_eq!(err(validate(genesis(), vec![p])), RejectReason::BadProof);
        // Two certificates for one seq.
        assert_eq!(
            err(validate(
                genesis(),
                vec![proof(0, 3, d, &[1, 2]), proof(1, 3, d, &[0, 2])]
            )),
            RejectReason::BadProof
        );
    }

    #[test]
    fn prepared_certificates_must_be_of_an_earlier_view_and_inside_the_window() {
        let d = [5; 32];
        // The view change is for view 2: a certificate of view 2 cannot exist yet.
        assert_eq!(
            err(validate(genesis(), vec![proof(2, 3, d, &[0, 1])])),
            RejectReason::BadProof
        );
        // At or below the stable checkpoint.
        assert_eq!(
            err(validate(
                stable(8, &[0, 2, 3]),
                vec![proof(1, 8, d, &[0, 2])]
            )),
            RejectReason::BadProof
        );
        // Just inside and just beyond the high watermark h + L.
        assert!(validate(stable(8, &[0, 2, 3]), vec![proof(1, 8 + L, d, &[0, 2])]).is_ok());
        assert_eq!(
            err(validate(
                stable(8, &[0, 2, 3]),
                vec![proof(1, 9 + L, d, &[0, 2])]
            )),
            RejectReason::BadProof
        );
    }

    #[test]
    fn forged_signatures_inside_a_certificate_are_refused() {
        let d = [5; 32];
        // The pre-prepare names the primary (1) but is signed by replica 3.
        let mut p = proof(1, 3, d, &[0, 2]);
        p.pre_prepare = pre_prepare_by(1, 3, d, 1, 3);
        assert_eq!(
            err(validate(genesis(), vec![p])),
            RejectReason::BadSignature
        );
        // A prepare that names replica 2 but is signed by replica 0.
        let mut p = proof(1, 3, d, &[0]);
        let forged = Payload::Prepare(Prepare {
            view: 1,
            seq: 3,
            digest: d,
            replica: 2,
        });
        p.prepares.push(sign_message(&forged, &key(0)));
        assert_eq!(
            err(validate(genesis(), vec![p])),
            RejectReason::BadSignature
        );
    }

    // ------------------------------------------------------------------ compute_plan

    /// A validated view change from `from` with the given stable checkpoint and certificates.
    fn entry(
        from: NodeId,
        stable: (u64, [u8; 32], Vec<SignedMessage>),
        prepared: Vec<PreparedProof>,
    ) -> VcEntry {
        let (m, vc) = view_change(5, from, stable, prepared);
        validate_view_change(&cfg(), &mut VerifyCache::new(64), m, vc).expect("valid")
    }

    #[test]
    fn nothing_prepared_reissues_nothing() {
        let plan = compute_plan(&[entry(0, genesis(), vec![]), entry(1, genesis(), vec![])]);
        assert_eq!(plan.stable, StableCheckpoint::genesis());
        assert_eq!(plan.max_seq, 0);
        assert!(plan.reissue.is_empty());
        let plan = compute_plan(&[]);
        assert_eq!((plan.max_seq, plan.reissue.len()), (0, 0));
    }

    #[test]
    fn the_latest_stable_checkpoint_is_min_s_with_its_proof() {
        let s8 = stable(8, &[0, 2, 3]);
        let plan = compute_plan(&[
            entry(0, stable(4, &[0, 1, 2]), vec![]),
            entry(1, s8.clone(), vec![]),
            entry(2, genesis(), vec![]),
        ]);
        assert_eq!(plan.stable.seq, 8);
        assert_eq!(plan.stable.digest, s8.1);
        assert_eq!(plan.stable.proof, s8.2);
        assert_eq!(
            plan.max_seq, 8,
            "max-s is min-s when nothing prepared above it"
        );
        assert!(plan.reissue.is_empty());
    }

    #[test]
    fn the_certificate_of_the_highest_view_wins_in_either_order() {
        let old = entry(0, genesis(), vec![proof(1, 2, [1; 32], &[0, 2])]);
        let new = entry(1, genesis(), vec![proof(3, 2, [3; 32], &[0, 1])]);
        let other = entry(2, genesis(), vec![]);
        for entries in [
            [old.clone(), new.clone(), other.clone()],
            [new.clone(), other.clone(), old.clone()],
        ] {
            let plan = compute_plan(&entries);
            assert_eq!(plan.max_seq, 2);
            assert_eq!(plan.reissue, vec![(1, NULL_DIGEST), (2, [3; 32])]);
        }
    }

    #[test]
    fn gaps_up_to_max_s_are_filled_with_null_requests() {
        let plan = compute_plan(&[
            entry(0, genesis(), vec![proof(1, 2, [2; 32], &[0, 2])]),
            entry(1, genesis(), vec![proof(1, 5, [5; 32], &[0, 2])]),
            entry(2, genesis(), vec![]),
        ]);
        assert_eq!(plan.max_seq, 5);
        assert_eq!(
            plan.reissue,
            vec![
                (1, NULL_DIGEST),
                (2, [2; 32]),
                (3, NULL_DIGEST),
                (4, NULL_DIGEST),
                (5, [5; 32]),
            ]
        );
    }

    #[test]
    fn certificates_at_or_below_min_s_are_dropped() {
        // Replica 1's stable checkpoint 0 lets it carry certificates for 3 and 6; replica 0's
        // checkpoint at 4 makes 3 irrelevant.
        let plan = compute_plan(&[
            entry(0, stable(4, &[0, 1, 2]), vec![]),
            entry(
                1,
                genesis(),
                vec![proof(1, 3, [3; 32], &[0, 2]), proof(1, 6, [6; 32], &[0, 2])],
            ),
            entry(2, genesis(), vec![]),
        ]);
        assert_eq!(plan.stable.seq, 4);
        assert_eq!(plan.max_seq, 6);
        assert_eq!(plan.reissue, vec![(5, NULL_DIGEST), (6, [6; 32])]);
    }

    #[test]
    fn equal_views_keep_the_first_certificate_so_the_plan_is_deterministic() {
        // Two certificates of one view and seq with different digests cannot both come from
        // correct replicas; whatever the entries hold, the first in order is kept.
        let a = entry(0, genesis(), vec![proof(1, 1, [1; 32], &[0, 2])]);
        let b = entry(1, genesis(), vec![proof(1, 1, [2; 32], &[0, 2])]);
        assert_eq!(
            compute_plan(&[a.clone(), b.clone()]).reissue,
            vec![(1, [1; 32])]
        );
        assert_eq!(compute_plan(&[b, a]).reissue, vec![(1, [2; 32])]);
    }
}
