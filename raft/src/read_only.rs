//! Linearizable reads without writing to the log: the ReadIndex protocol of thesis §6.4.
//!
//! The leader records its commit index for each read, confirms it is still leader by a
//! heartbeat round carrying a fresh sequence number, and releases the read once a quorum has
//! echoed a sequence number at least as new. Sequence numbers are the leader's own (never the
//! client's context), so duplicate client contexts cannot confuse the accounting, and an ack
//! of a later round confirms every earlier one.

use std::collections::{BTreeMap, VecDeque};

use crate::message::NodeId;

/// A read that the application may serve once it has applied up to `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The context the application passed to `read_index`.
    pub ctx: u64,
    /// Commit index at the time of the request; serve the read after applying this far.
    pub index: u64,
}

#[derive(Debug)]
struct PendingRead {
    seq: u64,
    ctx: u64,
    index: u64,
}

#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    /// Last sequence number issued; monotonic for the life of the node.
    last_seq: u64,
    pending: VecDeque<PendingRead>,
    /// Highest sequence number each peer has echoed in the current term.
    acks: BTreeMap<NodeId, u64>,
    /// Reads received before the leader committed an entry of its term (thesis §6.4 step 1).
    pub(crate) awaiting_commit: Vec<u64>,
    /// A new round was started and its heartbeat is not yet sent.
    pub(crate) unsent: bool,
}

impl ReadOnly {
    /// Drop all state of the previous leadership; the sequence counter survives so old echoes
    /// can never match a new round.
    pub(crate) fn reset(&mut self) {
        self.pending.clear();
        self.acks.clear();
        self.awaiting_commit.clear();
        self.unsent = false;
    }

    /// Start a round for a read at commit index `index`; returns its sequence number.
    pub(crate) fn add(&mut self, ctx: u64, index: u64) -> u64 {
        self.last_seq += 1;
        self.pending.push_back(PendingRead {
            seq: self.last_seq,
            ctx,
            index,
        });
        self.unsent = true;
        self.last_seq
    }

    /// Sequence number to put on the next heartbeat, if any read is waiting.
    pub(crate) fn heartbeat_seq(&self) -> Option<u64> {
        self.pending.back().map(|p| p.seq)
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Record a peer's echo. Echoes of rounds never issued are ignored.
    pub(crate) fn ack(&mut self, from: NodeId, seq: u64) {
        if seq == 0 || seq > self.last_seq {
            return;
        }
        let e = self.acks.entry(from).or_insert(0);
        *e = (*e).max(seq);
    }

    /// Release, in order, every read whose round a quorum (self included) has confirmed.
    pub(crate) fn release(&mut self, quorum: usize) -> Vec<crate::ReadState> {
        let mut out = Vec::new();
        while let Some(front) = self.pending.front() {
            let confirmed = 1 + self.acks.values().filter(|&&s| s >= front.seq).count();
            if confirmed < quorum {
                break;
            }
            out.push(ReadState {
                ctx: front.ctx,
                index: front.index,
            });
            self.pending.pop_front();
        }
        out
    }
}
