//! The Raft engine: `faultline-raft`'s sans-IO core wired to the store and ledger. One Raft
//! entry carries one batch of transactions (postcard `Vec<Tx>`); each committed non-empty
//! entry becomes one block.
//!
//! A Raft snapshot is a ledger point (the head [`Head`] at the snapshot's index), not the
//! ledger: a follower that installs one fetches the blocks it lacks by block sync
//! ([`super::block_sync`]) and applies them, so every replica holds the whole chain.
//!
//! On the wire every message is one tag byte ([`TAG_RAFT`], [`TAG_SYNC`]) and a postcard body.

use std::collections::VecDeque;
use std::sync::Arc;

use faultline_raft::{
    Config as RaftConfig, Entry, HardState, Message, PersistedState, RawNode, Role, Snapshot,
};

use super::block_sync::{BlockSync, Outcome, SyncMessage};
use super::{Engine, EngineError, EngineStatus, NodeId, Outgoing, ProposeError, Rejected, Step};
use crate::config::Protocol;
use crate::ledger::Tx;
use crate::store::{AppliedBlock, EngineOp, Head, NewBlock, Store, WriteBatch};

/// Wire tag of a Raft message.
pub const TAG_RAFT: u8 = 0;
/// Wire tag of a block-sync message.
pub const TAG_SYNC: u8 = 1;
/// Block-sync requests queued for serving; more are dropped (the requester retries).
const MAX_SERVE_QUEUE: usize = 16;
/// Staged bytes applied per tick while finishing a block sync, so a long sync does not keep
/// the driver from answering heartbeats.
const SYNC_APPLY_BYTES: usize = 8 << 20;

fn tagged<T: serde::Serialize>(tag: u8, value: &T) -> Arc<[u8]> {
    let mut out = vec![tag];
    // postcard serialization of our own types into a Vec cannot fail (no maps with
    // non-string keys, no unsized sequences).
    out.extend(postcard::to_allocvec(value).unwrap_or_default());
    out.into()
}

/// A Raft message as sent on the wire.
pub fn encode_raft(m: &Message) -> Arc<[u8]> {
    tagged(TAG_RAFT, m)
}

/// The Raft message in `bytes`, if it is one and decodes.
pub fn decode_raft(bytes: &[u8]) -> Option<Message> {
    match bytes.split_first() {
        Some((&TAG_RAFT, body)) => postcard::from_bytes(body).ok(),
        _ => None,
    }
}

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

/// The snake_case type name of a wire message (Raft or block sync), or "unknown" if it does
/// not parse.
pub fn message_kind(bytes: &[u8]) -> &'static str {
    match bytes.split_first() {
        Some((&TAG_RAFT, body)) => raft_message_kind(body),
        // postcard encodes the `SyncMessage` variant index as a varint u32 first.
        Some((&TAG_SYNC, [0, ..])) => "block_request",
        Some((&TAG_SYNC, [1, ..])) => "block_response",
        _ => "unknown",
    }
}

/// The snake_case type name of a postcard-encoded Raft message (without the wire tag).
fn raft_message_kind(bytes: &[u8]) -> &'static str {
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

/// The ledger point a Raft snapshot names.
fn decode_point(bytes: &[u8]) -> Result<Head, EngineError> {
    postcard::from_bytes(bytes).map_err(|e| EngineError::Corrupt(format!("raft snapshot: {e}")))
}

/// Ticks a block-sync request may stay unanswered before another peer is asked.
fn sync_timeout(opts: &RaftOptions) -> u32 {
    opts.election_tick.saturating_mul(2)
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
        // The core packs AppendEntries to the budget minus the wire tag in front of it.
        cfg.max_msg_bytes = opts.max_message_bytes.saturating_sub(1);
        let max_batch_bytes = opts
            .max_message_bytes
            .saturating_sub(ENVELOPE_ROOM)
            .min(cfg.max_entry_data_bytes());
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
        let point = match &snapshot {
            Some(s) => Some(decode_point(&s.data)?),
            None => None,
        };
        let mut raw = if hard_state.is_none() && entries.is_empty() && snapshot.is_none() {
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
            let data = postcard::to_allocvec(&txs).unwrap_or_default();
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

    /// Block sync, once per poll: stage what arrived, ask for what is missing, apply what is
    /// staged, and release the held Raft entries once the ledger reaches the snapshot.
    fn sync_step(
        &mut self,
        store: &Store,
        write: &mut WriteBatch,
        messages: &mut Vec<Outgoing>,
    ) -> Result<(), EngineError> {
        write.clear_staging |= std::mem::take(&mut self.clear_staging);
        write.stage.append(&mut self.to_stage);
        let Some(sync) = &mut self.sync else {
            return Ok(());
        };
        let head = store.head()?;
        let target = sync.target();
        if head.height >= target.height {
            if head.height != target.height || head.hash != target.hash {
                return Err(EngineError::Corrupt(format!(
                    "block sync ended at height {} hash {}, not at the snapshot's height {} hash {}",
                    head.height,
                    hex::encode(head.hash),
                    target.height,
                    hex::encode(target.hash)
                )));
            }
            tracing::debug!(height = head.height, "block sync complete");
            self.sync = None;
            self.raw.hold_apply(false);
            let held = std::mem::take(&mut self.held);
            self.apply_entries(&held, write);
            return Ok(());
        }
        if sync.fetched(head.height) {
            if self.apply_credit && write.stage.is_empty() {
                let blocks = store.staged_blocks_limited(
                    head.height + 1,
                    target.height,
                    SYNC_APPLY_BYTES,
                )?;
                if blocks.is_empty() {
                    // Fetched but not staged: the staging table lost blocks (it is emptied
                    // with a new target). Fetch again from the top.
                    tracing::warn!(
                        height = head.height,
                        "staged blocks missing; block sync restarts"
                    );
                    *sync = BlockSync::new(
                        target,
                        None,
                        self.peers.clone(),
                        self.raw.leader(),
                        sync_timeout(&self.opts),
                    );
                    write.clear_staging = true;
                } else {
                    self.apply_credit = false;
                    write.synced = blocks;
                }
            }
        } else if let Some((to, req)) = sync.next_request(head.height) {
            messages.push(Outgoing {
                to,
                kind: "block_request",
                bytes: tagged(TAG_SYNC, &req),
            });
        }
        Ok(())
    }

    /// Answers queued block requests from the store: the top of the asked range that fits one
    /// message, or nothing if this node does not hold the range's top.
    fn serve_requests(
        &mut self,
        store: &Store,
        messages: &mut Vec<Outgoing>,
    ) -> Result<(), EngineError> {
        if self.serve.is_empty() {
            return Ok(());
        }
        // Wire tag, variant, two varint heights and the vector's length prefix.
        let budget = self.opts.max_message_bytes.saturating_sub(64);
        let head = store.head()?.height;
        while let Some((to, lo, hi)) = self.serve.pop_front() {
            let mut blocks = Vec::new();
            let mut bytes = 0usize;
            if hi <= head {
                for h in (lo..=hi).rev() {
                    let Some(b) = store.block(h)? else { break };
                    let size = postcard_size(&b);
                    if bytes + size > budget {
                        break;
                    }
                    bytes += size;
                    blocks.push(b);
                }
                blocks.reverse();
            }
            let resp = SyncMessage::Response { lo, hi, blocks };
            messages.push(Outgoing {
                to,
                kind: "block_response",
                bytes: tagged(TAG_SYNC, &resp),
            });
        }
        Ok(())
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
                value: postcard::to_allocvec(&self.applied).unwrap_or_default(),
            });
        }
    }

    fn on_sync_message(&mut self, from: NodeId, body: &[u8]) -> Result<(), Rejected> {
        let msg: SyncMessage = postcard::from_bytes(body).map_err(|_| Rejected {
            reason: "malformed",
        })?;
        if from >= self.n || from == self.raw.id() {
            return Err(Rejected {
                reason: "unknown_peer",
            });
        }
        match msg {
            SyncMessage::Request { lo, hi } => {
                if lo == 0 || hi < lo {
                    return Err(Rejected { reason: "invalid" });
                }
                if self.serve.len() < MAX_SERVE_QUEUE {
                    self.serve.push_back((from, lo, hi));
                }
                Ok(())
            }
            SyncMessage::Response { lo, hi, blocks } => {
                let Some(sync) = &mut self.sync else {
                    return Ok(()); // late answer to a finished sync
                };
                match sync.on_response(from, lo, hi, blocks) {
                    Ok(Outcome::Stage(blocks)) => {
                        self.to_stage.extend(blocks);
                        Ok(())
                    }
                    Ok(Outcome::Ignored | Outcome::Unavailable) => Ok(()),
                    Err(e) => {
                        tracing::warn!(peer = from, error = %e, "block sync: blocks refused; asking another peer");
                        Err(Rejected { reason: e.reason() })
                    }
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
                value: postcard::to_allocvec(&snap).unwrap_or_default(),
            });
            write
                .engine
                .push(EngineOp::LogCompactTo { upto: snap.index });
        }
        self.sync_step(store, &mut write, &mut messages)?;
        self.serve_requests(store, &mut messages)?;
        if !self.raw.has_ready() {
            return Ok(Step { write, messages });
        }
        let ready = self.raw.ready();
        // Ready contract: snapshot, then entries (truncating a conflicting suffix), then hard
        // state — all in this one atomic write, before any message leaves.
        if let Some(snap) = ready.snapshot {
            let point = decode_point(&snap.data)?;
            write.engine.push(EngineOp::LogTruncateFrom { from: 0 });
            write.engine.push(EngineOp::Put {
                key: KEY_SNAPSHOT.to_vec(),
                value: postcard::to_allocvec(&snap).unwrap_or_default(),
            });
            write.engine.push(EngineOp::Put {
                key: KEY_APPLIED.to_vec(),
                value: postcard::to_allocvec(&snap.index).unwrap_or_default(),
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
        if self.sync.is_some() {
            // Handed out in the Ready that installed the snapshot, before the hold: they
            // follow the snapshot, so they wait for block sync too.
            self.held.extend(ready.committed);
        } else {
            self.apply_entries(&ready.committed, &mut write);
        }
        self.reads
            .extend(ready.read_states.iter().map(|r| (r.ctx, r.index)));
        messages.extend(ready.messages.into_iter().map(|m| Outgoing {
            to: m.to,
            kind: m.type_name(),
            bytes: encode_raft(&m),
        }));
        self.track_leader();
        Ok(Step { write, messages })
    }

    fn applied(&mut self, _blocks: &[AppliedBlock], store: &Store) -> Result<(), EngineError> {
        // Raft §7: compact the log behind a snapshot. The snapshot names the ledger point
        // (head at the applied index); the blocks stay, so followers behind it sync them.
        if self.sync.is_none() && self.applied >= self.snapshot_index + self.opts.compact_every {
            let data = postcard::to_allocvec(&store.head()?).unwrap_or_default();
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
            let bytes = super::encode_raft(&m);
            assert_eq!(super::message_kind(&bytes), m.type_name());
        }
        assert_eq!(super::message_kind(&[0xff]), "unknown");
        assert_eq!(super::message_kind(&[0, 0xff]), "unknown");
        let req = super::SyncMessage::Request { lo: 1, hi: 2 };
        let resp = super::SyncMessage::Response {
            lo: 1,
            hi: 2,
            blocks: Vec::new(),
        };
        assert_eq!(
            super::message_kind(&super::tagged(super::TAG_SYNC, &req)),
            "block_request"
        );
        assert_eq!(
            super::message_kind(&super::tagged(super::TAG_SYNC, &resp)),
            "block_response"
        );
    }
}
