//! One engine interface, two protocols (docs/ARCHITECTURE.md §2). The driver (real node or
//! simulator), storage, API, metrics and benchmarks are written once against [`Engine`]; the
//! only difference between a Raft run and a PBFT run is the engine plugged in.
//!
//! The driving loop, identical everywhere:
//! 1. feed an input: [`Engine::on_message`], [`Engine::on_tick`] or [`Engine::propose`];
//! 2. [`Engine::poll`] drains the engine's output into a [`Step`];
//! 3. commit `step.write` to the [`Store`] (one atomic, fsynced transaction: engine state and
//!    the committed blocks together) — only then send `step.messages` (durability before
//!    acknowledgement, docs/ARCHITECTURE.md §6);
//! 4. hand the applied blocks back with [`Engine::applied`], and poll again until the step is
//!    empty.

pub mod block_sync;
pub mod pbft;
pub mod raft;

use std::sync::Arc;

use crate::config::Protocol;
use crate::ledger::Tx;
use crate::store::{AppliedBlock, Store, StoreError, WriteBatch};

pub type NodeId = u64;

/// A message for one peer: `kind` is the snake_case protocol message name used by metrics.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub to: NodeId,
    pub kind: &'static str,
    pub bytes: Arc<[u8]>,
}

/// What the driver must do after an input: make `write` durable, then send `messages`.
#[derive(Debug, Default)]
pub struct Step {
    pub write: WriteBatch,
    pub messages: Vec<Outgoing>,
    /// Messages that may leave before `write` is durable: a Raft leader's appends, written
    /// in parallel with its own log (thesis §10.2.1). They promise nothing about this node's
    /// disk; everything in `messages` does, so those wait for the commit.
    pub early: Vec<Outgoing>,
}

impl Step {
    pub fn is_empty(&self) -> bool {
        self.write.is_empty() && self.messages.is_empty() && self.early.is_empty()
    }
}

/// Why an inbound message was dropped; `reason` is the metrics label
/// (`faultline_messages_rejected_total{reason}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message rejected: {reason}")]
pub struct Rejected {
    pub reason: &'static str,
}

/// Why a proposal was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("too many transactions are waiting; retry later")]
    Busy,
    /// A transaction that fits in no batch under the cluster's message budget
    /// (`limits.max_message_bytes`); the API answers `413`.
    #[error("a transaction of {bytes} bytes cannot fit in any batch (at most {max} bytes)")]
    TooLarge { bytes: usize, max: usize },
}

/// Why a leadership transfer was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("node {0} is not a voting member")]
    NotAVoter(NodeId),
    #[error("a leadership transfer is already under way")]
    InProgress,
    #[error("{0} has no leadership transfer: its leader changes only by a view change")]
    Unsupported(Protocol),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("persisted engine state is unusable: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Config(String),
    /// The Raft core refused its configuration or the persisted state it was restarted from;
    /// kept typed so a caller can tell which (`RaftError::Config` vs `CorruptState`).
    #[error("raft: {0}")]
    Raft(#[from] faultline_raft::RaftError),
}

/// A node's role in its protocol, as `/v1/status` shows it (snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Raft: the leader of its term, the only node that proposes.
    Leader,
    /// Raft: follows a leader (or waits for one).
    Follower,
    /// Raft: campaigning for votes in a new term (Raft §5.2).
    Candidate,
    /// Raft: asking whether it would win before raising its term (thesis §9.6).
    PreCandidate,
    /// PBFT: the primary of the current view, which orders requests (PBFT §4.2).
    Primary,
    /// PBFT: a backup of the current view.
    Backup,
    /// PBFT: changing to a later view (PBFT §4.4); no requests are ordered meanwhile.
    ViewChange,
}

impl Role {
    /// The name `/v1/status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre_candidate",
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::ViewChange => "view_change",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `/v1/status` and the metrics show; fields a protocol lacks are `None`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineStatus {
    pub role: Role,
    pub term: Option<u64>,
    pub view: Option<u64>,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    /// Transactions this node holds that are not committed yet: Raft, proposals waiting at the
    /// leader and its log entries above the commit index; PBFT, client requests (and read
    /// markers) the replica knows of and has not executed. Zero on every node of a quiet
    /// cluster means nothing more will commit until a client sends more.
    pub pending_txs: u64,
}

/// A consensus protocol as the node drives it.
pub trait Engine: Send {
    fn protocol(&self) -> Protocol;
    fn id(&self) -> NodeId;
    /// A message from `from` (already authenticated by the transport).
    fn on_message(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), Rejected>;
    /// One tick of the logical clock (Timing::tick_ms of real time).
    fn on_tick(&mut self);
    /// Client transactions whose signatures the caller already checked.
    fn propose(&mut self, txs: Vec<Tx>) -> Result<(), ProposeError>;
    /// Drains the output produced so far.
    fn poll(&mut self, store: &Store) -> Result<Step, EngineError>;
    /// The blocks a committed `Step` appended (checkpoints, compaction).
    fn applied(&mut self, blocks: &[AppliedBlock], store: &Store) -> Result<(), EngineError>;
    fn status(&self) -> EngineStatus;
    /// How often leadership moved, as this node saw it: Raft, leaders it saw elected; PBFT,
    /// views it entered (each names a new primary). Reported under the protocol's own name
    /// (`faultline_leader_changes_total` / `faultline_view_changes_total`, the simulator's
    /// `leader_changes` / `view_changes`).
    fn leadership_changes(&self) -> u64;

    /// The snake_case protocol name of an inbound message, for the per-type receive counters
    /// (the transport sees opaque bytes). Engines that cannot tell say "unknown".
    fn message_kind(&self, _bytes: &[u8]) -> &'static str {
        "unknown"
    }

    /// Starts a linearizable read identified by `ctx` (Raft ReadIndex, thesis §6.4).
    /// `Ok(true)`: started; `ctx` comes back from [`Engine::ready_reads`] once this node has
    /// applied everything committed when the read began. `Ok(false)`: the protocol has no
    /// read-index path; the caller serves the read from its applied state (documented as such).
    fn read_index(&mut self, _ctx: u64) -> Result<bool, ProposeError> {
        Ok(false)
    }

    /// Block sync under way: `(lowest height fetched, target height)` (status endpoint).
    fn block_sync(&self) -> Option<(u64, u64)> {
        None
    }

    /// Hashes of transactions this node accepted with [`Engine::propose`] and then dropped
    /// without ordering them: a Raft leader that lost its role forgets its queue (Raft §8: only
    /// the leader proposes). They can no longer commit unless sent again, so their waiters are
    /// answered at once and clients retry at the new leader instead of waiting for a timeout.
    fn take_dropped(&mut self) -> Vec<[u8; 32]> {
        Vec::new()
    }

    /// Hands this leader's role to voter `to` (Raft thesis §3.10): it brings `to` up to date,
    /// tells it to campaign at once and refuses proposals meanwhile (at most an election
    /// timeout). Transferring to itself is a no-op.
    fn transfer_leader(&mut self, _to: NodeId) -> Result<(), TransferError> {
        Err(TransferError::Unsupported(self.protocol()))
    }

    /// Reads started with [`Engine::read_index`] that may now be served from the store; call
    /// after [`drive`] (the applied blocks they wait for are then durable).
    fn ready_reads(&mut self) -> Vec<u64> {
        Vec::new()
    }
}

/// Runs the driving loop's steps 2–4 until the engine has nothing more to say: commits each
/// step's write (engine state + blocks, one fsync) BEFORE collecting its messages, so nothing
/// leaves this node that its disk does not back. Returns the messages to send and the blocks
/// applied, in order.
pub fn drive(
    engine: &mut dyn Engine,
    store: &Store,
) -> Result<(Vec<Outgoing>, Vec<AppliedBlock>), EngineError> {
    let mut early = Vec::new();
    let (messages, applied) = drive_sending_early(engine, store, &mut |m| early.extend(m))?;
    early.extend(messages);
    Ok((early, applied))
}

/// [`drive`], handing each step's early messages to `send_early` before that step's commit,
/// so the network carries them while the disk writes (the node's driver; the simulator,
/// whose disk takes no time, sends them with the rest through [`drive`]).
pub fn drive_sending_early(
    engine: &mut dyn Engine,
    store: &Store,
    send_early: &mut dyn FnMut(Vec<Outgoing>),
) -> Result<(Vec<Outgoing>, Vec<AppliedBlock>), EngineError> {
    let mut messages = Vec::new();
    let mut applied = Vec::new();
    loop {
        let mut step = engine.poll(store)?;
        if step.is_empty() {
            return Ok((messages, applied));
        }
        if !step.early.is_empty() {
            send_early(std::mem::take(&mut step.early));
        }
        let blocks = if step.write.is_empty() {
            Vec::new()
        } else {
            store.commit(step.write)?
        };
        messages.extend(step.messages);
        engine.applied(&blocks, store)?;
        applied.extend(blocks);
    }
}

#[cfg(test)]
mod role_tests {
    use super::Role;

    /// `/v1/status` serializes the role with serde; logs and the simulator print `as_str`.
    #[test]
    fn a_role_has_one_name_in_json_and_text() {
        for r in [
            Role::Leader,
            Role::Follower,
            Role::Candidate,
            Role::PreCandidate,
            Role::Primary,
            Role::Backup,
            Role::ViewChange,
        ] {
            assert_eq!(serde_json::to_value(r).ok(), Some(r.as_str().into()));
        }
    }
}
