//! Checkpoints and the stable checkpoint (PBFT §4.3): 2f+1 matching signed CHECKPOINTs for a
//! sequence number make it stable; the proof is kept for view changes and the low watermark
//! moves to it, letting the log below be garbage-collected.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::NodeId;
use crate::message::SignedMessage;

/// The last stable checkpoint and its proof. Sequence 0 (genesis) is stable by definition with
/// an empty proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableCheckpoint {
    pub seq: u64,
    pub digest: [u8; 32],
    pub proof: Vec<SignedMessage>,
}

impl StableCheckpoint {
    pub fn genesis() -> Self {
        StableCheckpoint {
            seq: 0,
            digest: [0u8; 32],
            proof: Vec::new(),
        }
    }
}

/// Checkpoint messages collected above the stable checkpoint, per seq and sender.
#[derive(Clone, Debug, Default)]
pub struct CheckpointVotes {
    votes: BTreeMap<u64, BTreeMap<NodeId, ([u8; 32], SignedMessage)>>,
}

impl CheckpointVotes {
    /// Records a verified checkpoint. Each sender keeps at most `per_sender` outstanding
    /// checkpoints (its lowest are dropped), so a Byzantine replica cannot grow memory by
    /// announcing far-future checkpoints.
    pub fn add(
        &mut self,
        seq: u64,
        from: NodeId,
        digest: [u8; 32],
        msg: SignedMessage,
        per_sender: usize,
    ) {
        self.votes
            .entry(seq)
            .or_default()
            .entry(from)
            .or_insert((digest, msg));
        let mine: Vec<u64> = self
            .votes
            .iter()
            .filter(|(_, m)| m.contains_key(&from))
            .map(|(s, _)| *s)
            .collect();
        if mine.len() > per_sender {
            for s in &mine[..mine.len() - per_sender] {
                if let Some(m) = self.votes.get_mut(s) {
                    m.remove(&from);
                }
            }
        }
    }

    pub fn has(&self, seq: u64, from: NodeId) -> bool {
        self.votes.get(&seq).is_some_and(|m| m.contains_key(&from))
    }

    /// If some digest at `seq` has `quorum` votes: that digest and the first `quorum` signed
    /// checkpoints (in replica order) as the proof.
    pub fn stable_at(&self, seq: u64, quorum: usize) -> Option<([u8; 32], Vec<SignedMessage>)> {
        let m = self.votes.get(&seq)?;
        let mut by_digest: BTreeMap<[u8; 32], Vec<&SignedMessage>> = BTreeMap::new();
        for (d, msg) in m.values() {
            by_digest.entry(*d).or_default().push(msg);
        }
        by_digest
            .into_iter()
            .find(|(_, v)| v.len() >= quorum)
            .map(|(d, v)| (d, v.into_iter().take(quorum).cloned().collect()))
    }

    /// Drops everything at or below `seq`.
    pub fn gc(&mut self, seq: u64) {
        self.votes = self.votes.split_off(&(seq + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Signature64;

    /// A stand-in for replica `from`'s signed CHECKPOINT (votes are verified before `add`).
    fn msg(from: NodeId, digest: [u8; 32]) -> SignedMessage {
        let mut payload = vec![from as u8];
        payload.extend_from_slice(&digest);
        SignedMessage {
            payload,
            signature: Signature64([from as u8; 64]),
        }
    }

    fn vote(v: &mut CheckpointVotes, seq: u64, from: NodeId, digest: [u8; 32]) {
        v.add(seq, from, digest, msg(from, digest), 8);
    }

    #[test]
    fn stable_exactly_at_the_quorum_not_one_below() {
        // n = 4, f = 1: quorum 2f + 1 = 3.
        let mut v = CheckpointVotes::default();
        vote(&mut v, 16, 3, [7; 32]);
        vote(&mut v, 16, 0, [7; 32]);
        assert_eq!(v.stable_at(16, 3), None, "2f votes are not a quorum");
        vote(&mut v, 16, 2, [7; 32]);
        let (digest, proof) = v.stable_at(16, 3).expect("2f + 1 matching votes");
        assert_eq!(digest, [7; 32]);
        // The proof is the quorum's signed checkpoints, in replica order.
        assert_eq!(
            proof,
            vec![msg(0, [7; 32]), msg(2, [7; 32]), msg(3, [7; 32])]
        );
        assert_eq!(v.stable_at(8, 3), None, "another seq has no votes");
    }

    #[test]
    fn conflicting_digests_do_not_add_up() {
        let mut v = CheckpointVotes::default();
        vote(&mut v, 16, 0, [1; 32]);
        vote(&mut v, 16, 1, [1; 32]);
        vote(&mut v, 16, 2, [2; 32]);
        vote(&mut v, 16, 3, [2; 32]);
        // Four votes, but no digest has three.
        assert_eq!(v.stable_at(16, 3), None);
        // n = 7 (quorum 5): a fifth vote for [2] decides it, and the proof holds only votes
        // for [2].
        for from in 4..=6 {
            vote(&mut v, 16, from, [2; 32]);
        }
        let (digest, proof) = v.stable_at(16, 5).expect("five votes for [2]");
        assert_eq!(digest, [2; 32]);
        assert_eq!(
            proof,
            (2..=6).map(|i| msg(i, [2; 32])).collect::<Vec<_>>(),
            "exactly a quorum of matching votes"
        );
    }

    #[test]
    fn a_replica_votes_once_per_seq() {
        let mut v = CheckpointVotes::default();
        vote(&mut v, 16, 1, [1; 32]);
        // A second, different vote from replica 1 neither replaces nor adds to its first.
        vote(&mut v, 16, 1, [2; 32]);
        vote(&mut v, 16, 2, [1; 32]);
        assert_eq!(v.stable_at(16, 3), None);
        vote(&mut v, 16, 3, [2; 32]);
        assert_eq!(v.stable_at(16, 3), None);
        vote(&mut v, 16, 0, [1; 32]);
        assert_eq!(v.stable_at(16, 3).map(|(d, _)| d), Some([1; 32]));
        assert!(v.has(16, 1) && !v.has(32, 1));
    }

    #[test]
    fn a_sender_keeps_only_its_highest_checkpoints() {
        let mut v = CheckpointVotes::default();
        vote(&mut v, 16, 0, [1; 32]);
        // A Byzantine replica announces far-future checkpoints: only its 3 highest are kept.
        for k in 1..=10u64 {
            v.add(16 * k, 3, [9; 32], msg(3, [9; 32]), 3);
        }
        let kept: Vec<u64> = (1..=10).filter(|k| v.has(16 * k, 3)).collect();
        assert_eq!(kept, vec![8, 9, 10]);
        assert!(v.has(16, 0), "other senders' votes are untouched");
    }

    #[test]
    fn gc_drops_votes_at_and_below_the_stable_checkpoint() {
        let mut v = CheckpointVotes::default();
        for seq in [16, 32, 48] {
            vote(&mut v, seq, 0, [1; 32]);
        }
        v.gc(32);
        assert!(!v.has(16, 0) && !v.has(32, 0) && v.has(48, 0));
    }
}
