//! The message log for the current view: one slot per sequence number in the watermark window
//! (PBFT §4.2). Slots are rebuilt on every view change; prepared certificates survive separately
//! (the P set, see `view_change`).

use std::collections::BTreeMap;

use crate::config::NodeId;
use crate::crypto::Signature64;
use crate::message::{PrePrepare, SignedMessage};

/// Agreement state of one sequence number in the current view.
#[derive(Clone, Debug)]
pub struct Slot {
    pub view: u64,
    /// The one pre-prepare accepted for (view, seq) — a backup accepts at most one (§4.2).
    pub pre_prepare: Option<(SignedMessage, PrePrepare)>,
    /// Prepares by sender; the first one from each sender wins.
    pub prepares: BTreeMap<NodeId, ([u8; 32], SignedMessage)>,
    /// Commits by sender (only the signature is kept: it is what a certificate needs).
    pub commits: BTreeMap<NodeId, ([u8; 32], Signature64)>,
    /// prepared(m, v, n, i) holds (§4.2) and our COMMIT has been signed.
    pub prepared: bool,
    /// committed-local(m, v, n, i) holds (§4.2).
    pub committed: bool,
    /// The pre-prepare came in a NEW-VIEW's O set: its requests count as in flight here
    /// (they are handed on at the next view change if they do not execute).
    pub reissued: bool,
}

impl Slot {
    pub fn new(view: u64) -> Self {
        Slot {
            view,
            pre_prepare: None,
            prepares: BTreeMap::new(),
            commits: BTreeMap::new(),
            prepared: false,
            committed: false,
            reissued: false,
        }
    }

    /// Digest of the accepted pre-prepare, if any.
    pub fn digest(&self) -> Option<[u8; 32]> {
        self.pre_prepare.as_ref().map(|(_, p)| p.digest)
    }

    /// Prepares matching `digest` from backups (the primary never prepares, §4.2).
    pub fn matching_prepares(&self, digest: &[u8; 32], primary: NodeId) -> Vec<&SignedMessage> {
        self.prepares
            .iter()
            .filter(|(id, (d, _))| **id != primary && d == digest)
            .map(|(_, (_, m))| m)
            .collect()
    }

    /// Commits matching `digest`, in replica order.
    pub fn matching_commits(&self, digest: &[u8; 32]) -> Vec<(NodeId, Signature64)> {
        self.commits
            .iter()
            .filter(|(_, (d, _))| d == digest)
            .map(|(id, (_, s))| (*id, *s))
            .collect()
    }
}
