//! The Raft engine: `faultline-raft`'s sans-IO core wired to the store and ledger. One Raft
//! entry carries one batch of transactions (postcard `Vec<Tx>`); each committed non-empty
//! entry becomes one block.
//!
//! A Raft snapshot is a ledger point (the head [`Head`](crate::store::Head) at the snapshot's index), not the
//! ledger: a follower that installs one fetches the blocks it lacks by block sync
//! ([`super::block_sync`]) and applies them, so every replica holds the whole chain.
//!
//! On the wire every message is one tag byte ([`TAG_RAFT`], [`TAG_SYNC`]) and a postcard body.

mod restore;
mod sync;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use faultline_raft::{Entry, Message, RawNode, Role, Snapshot};

use super::block_sync::BlockSync;
use super::{Engine, EngineError, EngineStatus, NodeId, Outgoing, ProposeError, Rejected, Step};
use crate::config::Protocol;
use crate::ledger::Tx;
use crate::store::{AppliedBlock, EngineOp, NewBlock, Store, WriteBatch};
use restore::{decode_point, KEY_APPLIED, KEY_HARD_STATE, KEY_SNAPSHOT};
use sync::sync_timeout;
pub use wire::{decode_raft, encode_raft, message_kind, TAG_RAFT, TAG_SYNC};

/// Knobs of the Raft engine beyond the core's own.
#[derive(Clone, Debug)]
pub struct RaftOptions {
    pub election_tick: u32,
    pub heartbeat_tick: u32,
    pub max_batch_txs: usize,
    /// Proposed but uncommitted entries allowed before new batches wait (pipelining depth).
    pub max_inflight_batches: usize,
    /// Compact the Raft log (never the blocks) every this many applied entries.
    pub compact_every: u64,
    /// Transactions queued at the leader before proposals are refused (back-pressure).
    pub max_pending_txs: usize,
    /// The size budget every message must fit (`Limits::max_message_bytes`).
    pub max_message_bytes: usize,
    pub seed: u64,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            election_tick: 10,
            heartbeat_tick: 2,
            max_batch_txs: 2048,
            max_inflight_batches: 8,
            compact_every: 1024,
            max_pending_txs: 200_000,
            max_message_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
            seed: 0,
        }
    }
}

/// Room kept free in every message for what wraps a batch or a block: the Raft or block-sync
/// envelope (ids, terms, indexes, length prefixes), the block header (height, two hashes, the
/// certificate tag) and the wire tag. Far above what postcard writes for them (< 200 bytes), so
/// a batch cut to `max_message_bytes - ENVELOPE_ROOM` always fits one AppendEntries and one
/// block-sync response.
pub const ENVELOPE_ROOM: usize = 4096;

/// Encoded size of a value in postcard, without encoding it.
pub(crate) fn postcard_size<T: serde::Serialize>(value: &T) -> usize {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default()).unwrap_or(0)
}

/// Bound of the postcard length prefix of a `Vec` (a varint u64).
const VEC_PREFIX: usize = 10;

pub struct RaftEngine {
    raw: RawNode,
    opts: RaftOptions,
    /// Queued transactions with their encoded sizes (measured once, at proposal).
    pending: VecDeque<(Tx, usize)>,
    /// Hashes of `pending` transactions dropped on losing leadership, for
    /// [`Engine::take_dropped`].
    dropped: Vec<[u8; 32]>,
    /// Largest encoded batch (`Vec<Tx>`) one entry may carry (see [`ENVELOPE_ROOM`]).
    max_batch_bytes: usize,
    /// Index of the newest entry this node proposed (inflight = last_proposed - commit).
    last_proposed: u64,
    applied: u64,
    snapshot_index: u64,
    /// A snapshot taken after applying, to persist with the next step.
    snapshot_to_persist: Option<Snapshot>,
    leader_changes: u64,
    last_leader: Option<NodeId>,
    /// Confirmed ReadIndex requests `(ctx, commit index)` waiting for `applied` to reach it.
    reads: Vec<(u64, u64)>,
    /// Members other than this node (block-sync peers).
    peers: Vec<NodeId>,
    n: u64,
    /// The block sync in progress, if the ledger is below the installed snapshot.
    sync: Option<BlockSync>,
    /// Committed entries above a snapshot handed out in the same `Ready` that installed it;
    /// applied once block sync has reached the snapshot.
    held: Vec<Entry>,
    /// Verified blocks to stage with the next write.
    to_stage: Vec<crate::ledger::Block>,
    /// Staging must be emptied with the next write (a new sync target, or staged blocks
    /// found unusable at start).
    clear_staging: bool,
    /// One chunk of staged blocks may be applied per tick.
    apply_credit: bool,
    /// Block-sync requests from peers `(peer, lo, hi)`, served in `poll` (it has the store).
    serve: VecDeque<(NodeId, u64, u64)>,
    /// The log's last `(index, term)` as handed out by the last `Ready`, to report durable
    /// to the core once that step is committed.
    unreported: Option<(u64, u64)>,
}

impl RaftEngine {
    /// Direct access to the core (Byzantine wrappers, tests).
    pub fn raw(&mut self) -> &mut RawNode {
        &mut self.raw
    }

    fn propose_pending(&mut self) {
        if self.raw.role() != Role::Leader {
            return;
        }
        let commit = self.raw.status().commit;
        while !self.pending.is_empty()
            && self.last_proposed.saturating_sub(commit) < self.opts.max_inflight_batches as u64
        {
            // Cut by count and by bytes: the entry must fit one AppendEntries and, as a
            // block, one block-sync response. `propose` refused every tx that fits no batch,
            // so the first one always fits.
            let mut bytes = VEC_PREFIX;
            let mut take = 0;
            for (_, size) in self.pending.iter().take(self.opts.max_batch_txs) {
                if take > 0 && bytes + size > self.max_batch_bytes {
                    break;
                }
                bytes += size;
                take += 1;
            }
            let batch: Vec<(Tx, usize)> = self.pending.drain(..take).collect();
            let txs: Vec<&Tx> = batch.iter().map(|(tx, _)| tx).collect();
            let data = crate::store::encode(&txs);
            match self.raw.propose(data) {
                Ok(index) => self.last_proposed = index,
                Err(_) => {
                    // Leadership is moving: keep the batch for whoever leads next.
                    for tx in batch.into_iter().rev() {
                        self.pending.push_front(tx);
                    }
                    return;
                }
            }
        }
    }

    /// Turns committed entries into blocks of `write` (no-ops and undecodable entries make
    /// none) and records the applied index atomically with them.
    fn apply_entries(&mut self, entries: &[Entry], write: &mut WriteBatch) {
        for e in entries {
            self.applied = e.index;
            if e.data.is_empty() {
                continue; // the leader's no-op (Raft §8)
            }
            match postcard::from_bytes::<Vec<Tx>>(&e.data) {
                Ok(txs) => write.blocks.push(NewBlock {
                    txs,
                    certificate: None,
                }),
                // Every honest node skips the same undecodable entry, so ledgers stay equal.
                Err(_) => {
                    tracing::warn!(index = e.index, "committed entry does not decode; skipped")
                }
            }
        }
        if !entries.is_empty() {
            // Atomic with the blocks: a restart never re-applies an entry.
            write.engine.push(EngineOp::Put {
                key: KEY_APPLIED.to_vec(),
                value: crate::store::encode(&self.applied),
            });
        }
    }

    fn track_leader(&mut self) {
        let leader = self.raw.leader();
        if leader.is_some() && leader != self.last_leader {
            self.leader_changes += 1;
        }
        if leader.is_some() {
            self.last_leader = leader;
        }
    }
}

impl Engine for RaftEngine {
    fn protocol(&self) -> Protocol {
        Protocol::Raft
    }

    fn id(&self) -> NodeId {
        self.raw.id()
    }

    fn on_message(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), Rejected> {
        let body = match bytes.split_first() {
            Some((&TAG_RAFT, body)) => body,
            Some((&TAG_SYNC, body)) => return self.on_sync_message(from, body),
            _ => {
                return Err(Rejected {
                    reason: "malformed",
                })
            }
        };
        let msg: Message = postcard::from_bytes(body).map_err(|_| Rejected {
            reason: "malformed",
        })?;
        if msg.from != from {
            // The transport authenticated `from`; a message claiming another sender is forged.
            return Err(Rejected {
                reason: "wrong_sender",
            });
        }
        self.raw.step(msg).map_err(|e| Rejected {
            reason: match e {
                faultline_raft::RaftError::UnknownPeer(_) => "unknown_peer",
                faultline_raft::RaftError::WrongRecipient { .. } => "wrong_recipient",
                _ => "invalid",
            },
        })?;
        self.track_leader();
        Ok(())
    }

    fn on_tick(&mut self) {
        self.raw.tick();
        self.apply_credit = true;
        if let Some(sync) = &mut self.sync {
            sync.on_tick();
        }
        self.track_leader();
        if self.raw.role() != Role::Leader && !self.pending.is_empty() {
            // Raft §8: only the leader proposes; clients retry at the new leader.
            self.dropped
                .extend(self.pending.drain(..).map(|(tx, _)| tx.hash()));
        }
    }

    fn propose(&mut self, txs: Vec<Tx>) -> Result<(), ProposeError> {
        if self.raw.role() != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.raw.leader(),
            });
        }
        if self.pending.len() + txs.len() > self.opts.max_pending_txs {
            return Err(ProposeError::Busy);
        }
        let sized: Vec<(Tx, usize)> = txs
            .into_iter()
            .map(|tx| {
                let size = postcard_size(&tx);
                (tx, size)
            })
            .collect();
        let max = self.max_batch_bytes.saturating_sub(VEC_PREFIX);
        if let Some((_, bytes)) = sized.iter().find(|(_, size)| *size > max) {
            // It could never be sent: refused whole, before anything is queued.
            return Err(ProposeError::TooLarge { bytes: *bytes, max });
        }
        self.pending.extend(sized);
        Ok(())
    }

    fn poll(&mut self, store: &Store) -> Result<Step, EngineError> {
        self.propose_pending();
        let mut write = WriteBatch::default();
        let mut messages = Vec::new();
        if let Some(snap) = self.snapshot_to_persist.take() {
            write.engine.push(EngineOp::Put {
                key: KEY_SNAPSHOT.to_vec(),
                value: crate::store::encode(&snap),
            });
            write
                .engine
                .push(EngineOp::LogCompactTo { upto: snap.index });
        }
        self.sync_step(store, &mut write, &mut messages)?;
        self.serve_requests(store, &mut messages)?;
        if !self.raw.has_ready() {
            return Ok(Step {
                write,
                messages,
                early: Vec::new(),
            });
        }
        let ready = self.raw.ready();
        // Ready contract: snapshot, then entries (truncating a conflicting suffix), then hard
        // state — all in this one atomic write, before any message leaves.
        if let Some(snap) = ready.snapshot {
            let point = decode_point(&snap.data)?;
            write.engine.push(EngineOp::LogTruncateFrom { from: 0 });
            write.engine.push(EngineOp::Put {
                key: KEY_SNAPSHOT.to_vec(),
                value: crate::store::encode(&snap),
            });
            write.engine.push(EngineOp::Put {
                key: KEY_APPLIED.to_vec(),
                value: crate::store::encode(&snap.index),
            });
            self.applied = snap.index;
            self.snapshot_index = snap.index;
            // Entries applied before the snapshot arrived are either held (a sync under way)
            // or already blocks; anything held is covered by the snapshot now.
            self.held.clear();
            let head = store.head()?;
            if head.height < point.height {
                // Raft §7 leaves restoring the state to the application: ours fetches and
                // applies the missing blocks, and holds the entries after the snapshot until
                // then. A previous target's staged blocks are dropped.
                tracing::debug!(
                    from = head.height,
                    to = point.height,
                    "snapshot installed; block sync starts"
                );
                self.raw.hold_apply(true);
                write.clear_staging = true;
                write.stage.clear();
                self.sync = Some(BlockSync::new(
                    point,
                    None,
                    self.peers.clone(),
                    self.raw.leader(),
                    sync_timeout(&self.opts),
                ));
            }
        }
        if let Some(first) = ready.entries.first() {
            write
                .engine
                .push(EngineOp::LogTruncateFrom { from: first.index });
            for e in &ready.entries {
                write.engine.push(EngineOp::LogPut {
                    index: e.index,
                    value: crate::store::encode(e),
                });
            }
        }
        if let Some(hs) = ready.hard_state {
            write.engine.push(EngineOp::Put {
                key: KEY_HARD_STATE.to_vec(),
                value: crate::store::encode(&hs),
            });
        }
        if self.sync.is_some() {
            // Handed out in the Ready that installed the snapshot, before the hold: they
            // follow the snapshot, so they wait for block sync too.
            self.held.extend(ready.committed);
        } else {
            self.apply_entries(&ready.committed, &mut write);
        }
        self.reads
            .extend(ready.read_states.iter().map(|r| (r.ctx, r.index)));
        let outgoing = |m: faultline_raft::Message| Outgoing {
            to: m.to,
            kind: m.kind().as_str(),
            bytes: encode_raft(&m),
        };
        messages.extend(ready.messages.into_iter().map(outgoing));
        let early = ready.early_messages.into_iter().map(outgoing).collect();
        // Reported durable once this step's write is committed (`applied`).
        let st = self.raw.status();
        self.unreported = Some((st.last_index, st.last_term));
        self.track_leader();
        Ok(Step {
            write,
            messages,
            early,
        })
    }

    fn applied(&mut self, _blocks: &[AppliedBlock], store: &Store) -> Result<(), EngineError> {
        // The step is committed: the log it handed out is durable (thesis §10.2.1).
        if let Some((index, term)) = self.unreported.take() {
            self.raw.on_persisted(index, term);
        }
        // Raft §7: compact the log behind a snapshot. The snapshot names the ledger point
        // (head at the applied index); the blocks stay, so followers behind it sync them.
        if self.sync.is_none() && self.applied >= self.snapshot_index + self.opts.compact_every {
            let data = crate::store::encode(&store.head()?);
            let index = self.applied;
            match self.raw.compact(index, data) {
                Ok(()) => {
                    self.snapshot_index = index;
                    self.snapshot_to_persist = self.raw.snapshot().cloned();
                }
                Err(e) => tracing::debug!(error = %e, "compaction skipped"),
            }
        }
        Ok(())
    }

    fn status(&self) -> EngineStatus {
        let s = self.raw.status();
        EngineStatus {
            role: match s.role {
                Role::Leader => crate::engine::Role::Leader,
                Role::Follower => crate::engine::Role::Follower,
                Role::Candidate => crate::engine::Role::Candidate,
                Role::PreCandidate => crate::engine::Role::PreCandidate,
            },
            term: Some(s.term),
            view: None,
            leader: s.leader,
            commit_index: s.commit,
            pending_txs: self.pending.len() as u64
                + if s.role == Role::Leader {
                    s.last_index.saturating_sub(s.commit)
                } else {
                    0
                },
        }
    }

    fn leadership_changes(&self) -> u64 {
        self.leader_changes
    }

    fn message_kind(&self, bytes: &[u8]) -> &'static str {
        message_kind(bytes)
    }

    fn read_index(&mut self, ctx: u64) -> Result<bool, ProposeError> {
        if self.raw.role() != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.raw.leader(),
            });
        }
        self.raw
            .read_index(ctx)
            .map_err(|_| ProposeError::NotLeader {
                leader: self.raw.leader(),
            })?;
        Ok(true)
    }

    fn take_dropped(&mut self) -> Vec<[u8; 32]> {
        std::mem::take(&mut self.dropped)
    }

    fn transfer_leader(&mut self, to: NodeId) -> Result<(), super::TransferError> {
        use faultline_raft::ProposeError as P;
        self.raw.transfer_leadership(to).map_err(|e| match e {
            P::NotLeader { leader } => super::TransferError::NotLeader { leader },
            P::UnknownPeer(id) => super::TransferError::NotAVoter(id),
            _ => super::TransferError::InProgress,
        })
    }

    fn block_sync(&self) -> Option<(u64, u64)> {
        self.sync.as_ref().map(|s| (s.low(), s.target().height))
    }

    fn ready_reads(&mut self) -> Vec<u64> {
        if self.sync.is_some() {
            // The ledger is below the applied index until block sync completes.
            return Vec::new();
        }
        let applied = self.applied;
        let mut ready = Vec::new();
        self.reads.retain(|&(ctx, index)| {
            if index <= applied {
                ready.push(ctx);
                false
            } else {
                true
            }
        });
        ready
    }
}
