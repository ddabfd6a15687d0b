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
