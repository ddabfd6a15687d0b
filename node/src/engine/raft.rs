//! The Raft engine: `faultline-raft`'s sans-IO core wired to the store and ledger. One Raft
//! entry carries one batch of transactions (postcard `Vec<Tx>`); each committed non-empty
//! entry becomes one block.

use std::collections::VecDeque;

use faultline_raft::{
    Config as RaftConfig, Entry, HardState, Message, PersistedState, RawNode, Role, Snapshot,
};

use super::{
    encode, Engine, EngineError, EngineStatus, NodeId, Outgoing, ProposeError, Rejected, Step,
};
use crate::config::Protocol;
use crate::ledger::Tx;
use crate::store::{AppliedBlock, EngineOp, LedgerSnapshot, NewBlock, Store, WriteBatch};

const KEY_HARD_STATE: &[u8] = b"raft/hard_state";
const KEY_SNAPSHOT: &[u8] = b"raft/snapshot";
const KEY_APPLIED: &[u8] = b"raft/applied";

/// Knobs of the Raft engine beyond the core's own.
#[derive(Clone, Debug)]
pub struct RaftOptions {
    pub election_tick: u32,
    pub heartbeat_tick: u32,
    pub max_batch_txs: usize,
    /// Proposed but uncommitted entries allowed before new batches wait (pipelining depth).
    pub max_inflight_batches: usize,
    /// Take a snapshot and compact the log every this many applied entries.
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

pub struct RaftEngine {
    raw: RawNode,
    opts: RaftOptions,
    pending: VecDeque<Tx>,
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
}

/// The leading fields of a postcard-encoded [`Message`]: enough to name it without decoding
/// (and copying) its entries a second time.
#[derive(serde::Deserialize)]
struct MessageHeader {
    _from: u64,
    _to: u64,
    _term: u64,
    /// postcard encodes the `MessageBody` variant index as a varint u32.
    body_variant: u32,
}

/// The snake_case type name of an encoded Raft message, or "unknown" if it does not parse.
pub fn message_kind(bytes: &[u8]) -> &'static str {
    const NAMES: [&str; 7] = [
        "append_entries",
        "append_entries_response",
        "request_vote",
        "request_vote_response",
        "install_snapshot",
        "install_snapshot_response",
        "timeout_now",
    ];
    postcard::take_from_bytes::<MessageHeader>(bytes)
        .ok()
        .and_then(|(h, _)| NAMES.get(h.body_variant as usize).copied())
        .unwrap_or("unknown")
}

fn decode_hard_state(bytes: &[u8]) -> Result<HardState, EngineError> {
    postcard::from_bytes(bytes).map_err(|e| EngineError::Corrupt(format!("raft hard state: {e}")))
}

impl RaftEngine {
    /// Starts a node: fresh if the store holds no Raft state, else restarted from it.
    pub fn open(
        id: NodeId,
        n: usize,
        opts: RaftOptions,
        store: &Store,
    ) -> Result<Self, EngineError> {
        let mut cfg = RaftConfig::new(id, (0..n as u64).collect());
        cfg.election_tick = opts.election_tick;
        cfg.heartbeat_tick = opts.heartbeat_tick;
        cfg.seed = opts.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        cfg.max_inflight = 256;
        cfg.validate()
            .map_err(|e| EngineError::Config(e.to_string()))?;
        let hard_state = match store.engine_get(KEY_HARD_STATE)? {
            Some(b) => Some(decode_hard_state(&b)?),
            None => None,
        };
        let snapshot: Option<Snapshot> = match store.engine_get(KEY_SNAPSHOT)? {
            Some(b) => Some(
                postcard::from_bytes(&b)
                    .map_err(|e| EngineError::Corrupt(format!("raft snapshot: {e}")))?,
            ),
            None => None,
        };
        let applied: u64 = match store.engine_get(KEY_APPLIED)? {
            Some(b) => postcard::from_bytes(&b)
                .map_err(|e| EngineError::Corrupt(format!("raft applied index: {e}")))?,
            None => 0,
        };
        let mut entries = Vec::new();
        for (index, bytes) in store.engine_log()? {
            let e: Entry = postcard::from_bytes(&bytes)
                .map_err(|e| EngineError::Corrupt(format!("raft log entry {index}: {e}")))?;
            entries.push(e);
        }
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.index);
        let raw = if hard_state.is_none() && entries.is_empty() && snapshot.is_none() {
            RawNode::new(cfg).map_err(|e| EngineError::Config(e.to_string()))?
        } else {
            RawNode::restart(
                cfg,
                PersistedState {
                    hard_state: hard_state.unwrap_or_default(),
                    snapshot,
                    entries,
                    applied,
                },
            )
            .map_err(|e| EngineError::Corrupt(e.to_string()))?
        };
        Ok(RaftEngine {
            raw,
            opts,
            pending: VecDeque::new(),
            last_proposed: 0,
            applied,
            snapshot_index,
            snapshot_to_persist: None,
            leader_changes: 0,
            last_leader: None,
            reads: Vec::new(),
        })
    }

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
            let take = self.pending.len().min(self.opts.max_batch_txs);
            let batch: Vec<Tx> = self.pending.drain(..take).collect();
            let data = postcard::to_allocvec(&batch).unwrap_or_default();
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
        let msg: Message = postcard::from_bytes(bytes).map_err(|_| Rejected {
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
        self.track_leader();
        if self.raw.role() != Role::Leader && !self.pending.is_empty() {
            // Raft §8: only the leader proposes; clients retry at the new leader.
            self.pending.clear();
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
        self.pending.extend(txs);
        Ok(())
    }

    fn poll(&mut self, _store: &Store) -> Result<Step, EngineError> {
        self.propose_pending();
        let mut write = WriteBatch::default();
        if let Some(snap) = self.snapshot_to_persist.take() {
            write.engine.push(EngineOp::Put {
                key: KEY_SNAPSHOT.to_vec(),
                value: postcard::to_allocvec(&snap).unwrap_or_default(),
            });
            write
                .engine
                .push(EngineOp::LogCompactTo { upto: snap.index });
        }
        if !self.raw.has_ready() {
            return Ok(Step {
                write,
                messages: Vec::new(),
            });
        }
        let ready = self.raw.ready();
        // Ready contract: snapshot, then entries (truncating a conflicting suffix), then hard
        // state — all in this one atomic write, before any message leaves.
        if let Some(snap) = ready.snapshot {
            let ledger: LedgerSnapshot = postcard::from_bytes(&snap.data)
                .map_err(|e| EngineError::Corrupt(format!("snapshot from leader: {e}")))?;
            write.install_snapshot = Some(ledger);
            write.engine.push(EngineOp::LogTruncateFrom { from: 0 });
            write.engine.push(EngineOp::Put {
                key: KEY_SNAPSHOT.to_vec(),
                value: postcard::to_allocvec(&snap).unwrap_or_default(),
            });
            self.applied = snap.index;
            self.snapshot_index = snap.index;
        }
        if let Some(first) = ready.entries.first() {
            write
                .engine
                .push(EngineOp::LogTruncateFrom { from: first.index });
            for e in &ready.entries {
                write.engine.push(EngineOp::LogPut {
                    index: e.index,
                    value: postcard::to_allocvec(e).unwrap_or_default(),
                });
            }
        }
        if let Some(hs) = ready.hard_state {
            write.engine.push(EngineOp::Put {
                key: KEY_HARD_STATE.to_vec(),
                value: postcard::to_allocvec(&hs).unwrap_or_default(),
            });
        }
        for e in &ready.committed {
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
        if !ready.committed.is_empty() {
            // Atomic with the blocks: a restart never re-applies an entry.
            write.engine.push(EngineOp::Put {
                key: KEY_APPLIED.to_vec(),
                value: postcard::to_allocvec(&self.applied).unwrap_or_default(),
            });
        }
        self.reads
            .extend(ready.read_states.iter().map(|r| (r.ctx, r.index)));
        let messages = ready
            .messages
            .into_iter()
            .map(|m| Outgoing {
                to: m.to,
                kind: m.type_name(),
                bytes: encode(&m),
            })
            .collect();
        self.track_leader();
        Ok(Step { write, messages })
    }

    fn applied(&mut self, _blocks: &[AppliedBlock], store: &Store) -> Result<(), EngineError> {
        // Raft §7: compact the log behind a snapshot of the applied state.
        if self.applied >= self.snapshot_index + self.opts.compact_every {
            let ledger = store.snapshot()?;
            let data = postcard::to_allocvec(&ledger).unwrap_or_default();
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
                Role::Leader => "leader",
                Role::Follower => "follower",
                Role::Candidate => "candidate",
                Role::PreCandidate => "pre_candidate",
            },
            term: Some(s.term),
            view: None,
            leader: s.leader,
            commit_index: s.commit,
        }
    }

    fn leader_changes(&self) -> u64 {
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

    fn ready_reads(&mut self) -> Vec<u64> {
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

#[cfg(test)]
mod kind_tests {
    use faultline_raft::{Entry, Message, MessageBody, Snapshot};

    #[test]
    fn message_kind_names_every_message_like_type_name() {
        let bodies = vec![
            MessageBody::AppendEntries {
                prev_log_index: 3,
                prev_log_term: 1,
                entries: vec![Entry {
                    term: 1,
                    index: 4,
                    data: vec![1, 2, 3],
                }],
                leader_commit: 2,
                read_ctx: Some(9),
            },
            MessageBody::AppendEntriesResponse {
                success: true,
                match_index: 4,
                reject_hint: None,
                read_ctx: None,
            },
            MessageBody::RequestVote {
                last_log_index: 1,
                last_log_term: 1,
                pre_vote: true,
                transfer: false,
            },
            MessageBody::RequestVoteResponse {
                granted: true,
                pre_vote: false,
            },
            MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    index: 1,
                    term: 1,
                    data: vec![0; 10],
                },
            },
            MessageBody::InstallSnapshotResponse { match_index: 7 },
            MessageBody::TimeoutNow,
        ];
        for body in bodies {
            let m = Message {
                from: 300,
                to: 1,
                term: u64::MAX,
                body,
            };
            let bytes = postcard::to_allocvec(&m).unwrap();
            assert_eq!(super::message_kind(&bytes), m.type_name());
        }
        assert_eq!(super::message_kind(&[0xff]), "unknown");
    }
}
