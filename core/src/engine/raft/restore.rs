//! The Raft engine's durable state and how a node starts from it: the engine-store keys of
//! the hard state, the snapshot and the applied index, and [`RaftEngine::open`], which starts
//! fresh or restarts from the log, snapshot and hard state in the store — resuming a block
//! sync that was under way when the node stopped.

use std::collections::VecDeque;

use faultline_raft::{Config as RaftConfig, Entry, HardState, PersistedState, RawNode, Snapshot};

use super::sync::sync_timeout;
use super::{RaftEngine, RaftOptions, ENVELOPE_ROOM};
use crate::engine::block_sync::BlockSync;
use crate::engine::{EngineError, NodeId};
use crate::store::{Head, Store};

pub(super) const KEY_HARD_STATE: &[u8] = b"raft/hard_state";
pub(super) const KEY_SNAPSHOT: &[u8] = b"raft/snapshot";
pub(super) const KEY_APPLIED: &[u8] = b"raft/applied";

/// The ledger point a Raft snapshot names.
pub(super) fn decode_point(bytes: &[u8]) -> Result<Head, EngineError> {
    postcard::from_bytes(bytes).map_err(|e| EngineError::Corrupt(format!("raft snapshot: {e}")))
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
        // The leader's appends leave while its own write is under way; `drive` sends them
        // early and the engine reports each committed step (thesis §10.2.1).
        cfg.parallel_leader_append = true;
        // The core packs AppendEntries to the budget minus the wire tag in front of it.
        cfg.max_msg_bytes = opts.max_message_bytes.saturating_sub(1);
        let max_batch_bytes = opts
            .max_message_bytes
            .saturating_sub(ENVELOPE_ROOM)
            .min(cfg.max_entry_data_bytes());
        cfg.validate().map_err(faultline_raft::RaftError::from)?;
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
        let point = match &snapshot {
            Some(s) => Some(decode_point(&s.data)?),
            None => None,
        };
        let mut raw = if hard_state.is_none() && entries.is_empty() && snapshot.is_none() {
            RawNode::new(cfg).map_err(faultline_raft::RaftError::from)?
        } else {
            RawNode::restart(
                cfg,
                PersistedState {
                    hard_state: hard_state.unwrap_or_default(),
                    snapshot,
                    entries,
                    applied,
                },
            )?
        };
        let peers: Vec<NodeId> = (0..n as u64).filter(|&p| p != id).collect();
        let timeout = sync_timeout(&opts);
        let mut sync = None;
        let mut clear_staging = false;
        if let Some(point) = point {
            let head = store.head()?;
            if head.height < point.height {
                // A block sync was under way when the node stopped: resume from what is
                // staged if it still chains to the snapshot head, else start over.
                let staged = match store.staged_range()? {
                    Some((lo, hi)) if hi == point.height && lo > head.height => {
                        let top = store.staged_blocks(hi, hi)?;
                        let low = store.staged_blocks(lo, lo)?;
                        match (top.first(), low.first()) {
                            (Some(t), Some(l)) if t.hash == point.hash => Some((lo, l.prev_hash)),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                clear_staging = staged.is_none();
                raw.hold_apply(true);
                sync = Some(BlockSync::new(point, staged, peers.clone(), None, timeout));
            }
        }
        Ok(RaftEngine {
            raw,
            opts,
            pending: VecDeque::new(),
            dropped: Vec::new(),
            max_batch_bytes,
            peers,
            n: n as u64,
            sync,
            held: Vec::new(),
            to_stage: Vec::new(),
            clear_staging,
            apply_credit: true,
            serve: VecDeque::new(),
            last_proposed: 0,
            applied,
            snapshot_index,
            snapshot_to_persist: None,
            leader_changes: 0,
            last_leader: None,
            reads: Vec::new(),
            unreported: None,
        })
    }
}
