//! The driver-facing API: feed inputs, drain a [`Ready`], persist, send, apply.

use crate::config::{Config, ConfigError};
use crate::error::{ProposeError, RaftError};
use crate::log::RaftLog;
use crate::message::{Entry, HardState, Membership, Message, NodeId, Snapshot};
use crate::raft::{Raft, Role};
use crate::read_only::ReadState;

/// Everything the driver must do after an input.
///
/// Contract, in this order:
/// 1. Make durable, atomically (one fsync): `snapshot` if any (it replaces the whole stored
///    log and the application restores its state from `snapshot.data`), then `entries` (if
///    `entries[0].index` is at or below the last stored index, first truncate the stored log
///    from that index: those entries were overwritten by a leader, Raft §5.3), then
///    `hard_state`.
/// 2. Only then send `messages`: a vote or an append acknowledgement must never leave before
///    what it promises is on disk (Raft §5, figure 2).
/// 3. Apply `committed` in order (no-op entries with empty data are skipped by the
///    application), and serve each of `read_states` once applied up to its index.
///
/// `ready()` drains: the core assumes the driver does all of the above; there is no
/// `advance()`.
///
/// With [`Config::parallel_leader_append`] (thesis §10.2.1) a leader's `Ready` moves its
/// messages to `early_messages`, which the driver may send before step 1, and the driver
/// reports each persisted `Ready` with [`RawNode::on_persisted`]: only then does the leader
/// count its own new entries towards a commit.
#[derive(Debug, Default)]
pub struct Ready {
    /// New term/vote/commit to persist, if changed since the last `Ready`.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader: install it.
    pub snapshot: Option<Snapshot>,
    /// Log entries to persist (possibly overwriting a stored suffix).
    pub entries: Vec<Entry>,
    /// Messages to send after persisting.
    pub messages: Vec<Message>,
    /// Messages that may leave before this `Ready` is persisted: a leader's appends and
    /// heartbeats under [`Config::parallel_leader_append`], when the `Ready` changes no term
    /// or vote and installs no snapshot (they promise nothing about this node's disk).
    pub early_messages: Vec<Message>,
    /// Entries to apply, in order; includes leader no-ops.
    pub committed: Vec<Entry>,
    /// Linearizable reads now allowed (thesis §6.4).
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.early_messages.is_empty()
            && self.committed.is_empty()
            && self.read_states.is_empty()
    }
}

/// What a restarting node read back from its storage.
#[derive(Clone, Debug, Default)]
pub struct PersistedState {
    /// Last persisted term/vote/commit.
    pub hard_state: HardState,
    /// Latest snapshot (installed from a leader or made by `compact`), if any.
    pub snapshot: Option<Snapshot>,
    /// Stored entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Highest index the application's durable state reflects (at least the snapshot
    /// index); committed entries after it are handed out again in the first `Ready`.
    pub applied: u64,
}

/// A point-in-time summary, for status endpoints and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Vote cast in the current term.
    pub vote: Option<NodeId>,
    /// Known leader of the current term.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: u64,
    /// Highest index handed out for applying.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// First index still in the log (snapshot index + 1).
    pub first_index: u64,
    /// Term of the last log entry.
    pub last_term: u64,
    /// Leadership transfer target, while one is in progress.
    pub transferee: Option<NodeId>,
}

/// A Raft member, sans-IO. Drive it with [`tick`](Self::tick), [`step`](Self::step),
/// [`propose`](Self::propose), and drain [`ready`](Self::ready) after each input.
pub struct RawNode {
    raft: Raft,
    /// Hard state as of the last `Ready` (or as restored): only changes are emitted.
    prev_hard_state: HardState,
}

impl RawNode {
    /// A fresh member with an empty log at term 0.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let log = RaftLog::new(None, Vec::new(), 0, 0);
        let hs = HardState::default();
        Ok(RawNode {
            raft: Raft::new(config, hs, log),
            prev_hard_state: hs,
        })
    }

    /// A member restarted from storage. Term and vote come back exactly as persisted, so it
    /// can never vote twice in a term (Raft §5.2); it starts as a follower.
    pub fn restart(config: Config, state: PersistedState) -> Result<Self, RaftError> {
        config.validate()?;
        let PersistedState {
            hard_state,
            snapshot,
            entries,
            applied,
        } = state;
        let (si, st) = snapshot.as_ref().map_or((0, 0), |s| (s.index, s.term));
        let mut prev_term = st;
        for (i, e) in entries.iter().enumerate() {
            if e.index != si + 1 + i as u64 {
                return Err(RaftError::CorruptState(
                    "entries not contiguous after the snapshot",
                ));
            }
            if e.term < prev_term || e.term > hard_state.term {
                return Err(RaftError::CorruptState("entry terms out of order"));
            }
            if e.conf.as_ref().is_some_and(|c| !c.is_well_formed()) {
                return Err(RaftError::CorruptState("malformed configuration entry"));
            }
            prev_term = e.term;
        }
        let last = si + entries.len() as u64;
        if hard_state.commit > last {
            return Err(RaftError::CorruptState(
                "commit index beyond the stored log",
            ));
        }
        if snapshot.as_ref().is_some_and(|s| !s.conf.is_well_formed()) {
            return Err(RaftError::CorruptState("malformed snapshot membership"));
        }
        if st > hard_state.term {
            return Err(RaftError::CorruptState(
                "snapshot term above the hard state term",
            ));
        }
        let commit = hard_state.commit.max(si);
        let applied = applied.max(si);
        if applied > commit {
            return Err(RaftError::CorruptState("applied index beyond commit"));
        }
        let log = RaftLog::new(snapshot, entries, commit, applied);
        let hs = HardState {
            commit,
            ..hard_state
        };
        Ok(RawNode {
            raft: Raft::new(config, hs, log),
            prev_hard_state: hs,
        })
    }

    /// Advance logical time by one tick: drives election timeouts, heartbeats and
    /// check-quorum.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Feed one message from a peer. An `Err` reports a message that was ignored (unknown
    /// sender, wrong recipient, malformed or protocol-violating); the node is unaffected.
    pub fn step(&mut self, msg: Message) -> Result<(), RaftError> {
        self.raft.step(msg)
    }

    /// Append a command to the log (leader only). Returns its index; whether it commits is
    /// learnt from `Ready::committed`. Proposals made before the next `ready()` are sent
    /// together (batching).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<u64, ProposeError> {
        self.raft.propose(data)
    }

    /// Change the membership to `conf` (leader only): one voter added or removed, learners
    /// added, removed or promoted, at most one change uncommitted at a time (thesis §4.1).
    /// The change is in force on each member as soon as it appends the entry; `data` reaches
    /// the application with the entry in `Ready::committed`. A leader that removes itself
    /// steps down once the entry commits (thesis §4.2.2).
    pub fn propose_conf_change(
        &mut self,
        conf: Membership,
        data: Vec<u8>,
    ) -> Result<u64, ProposeError> {
        self.raft.propose_conf_change(conf, data)
    }

    /// The membership in force on this node: the latest in its log (thesis §4.1).
    pub fn membership(&self) -> &Membership {
        self.raft.membership()
    }

    /// Request a linearizable read (leader only, thesis §6.4). A [`ReadState`] with this
    /// `ctx` appears in a later `Ready` once leadership is confirmed by a quorum.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        self.raft.read_index(ctx)
    }

    /// Hand leadership to `to` (thesis §3.10). Proposals are refused until it completes or
    /// an election timeout passes.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), ProposeError> {
        self.raft.transfer_leadership(to)
    }

    /// The application has snapshotted its state at applied index `index` into `data`: drop
    /// the log up to `index` (Raft §7). The driver persists the snapshot itself and may
    /// delete stored entries up to `index`. The snapshot is what lagging followers get.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), RaftError> {
        self.raft.compact(index, data)
    }

    /// Hold (`true`) or resume (`false`) handing committed entries to the application.
    /// Replication, voting and commitment go on; only `Ready::committed` stays empty, and the
    /// applied index stays where it is. For an application whose state is not yet where the
    /// log starts: after installing a snapshot that names a state it must first fetch (Raft
    /// §7 leaves how the state machine is restored to the application), applying the entries
    /// after the snapshot on top of an older state would corrupt it.
    pub fn hold_apply(&mut self, hold: bool) {
        self.raft.log.apply_held = hold;
    }

    /// Whether applying is held (see [`RawNode::hold_apply`]).
    pub fn apply_held(&self) -> bool {
        self.raft.log.apply_held
    }

    /// The snapshot the log currently starts from (made by [`RawNode::compact`] or received
    /// from the leader), so the driver persists exactly what the core will serve.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.raft.log.snapshot.as_ref()
    }

    /// Whether `ready()` would return anything.
    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        r.log.pending_snapshot.is_some()
            || r.log.has_unstable()
            || r.hard_state() != self.prev_hard_state
            || !r.msgs.is_empty()
            || r.log.has_committed_to_apply()
            || !r.read_states.is_empty()
            || (r.role == Role::Leader && (r.pending_bcast || r.has_unsent_read_round()))
    }

    /// Drain everything the driver must do; see [`Ready`] for the contract.
    pub fn ready(&mut self) -> Ready {
        self.raft.flush();
        let r = &mut self.raft;
        let hs = r.hard_state();
        let hard_state = (hs != self.prev_hard_state).then_some(hs);
        let same_term_and_vote =
            hs.term == self.prev_hard_state.term && hs.vote == self.prev_hard_state.vote;
        self.prev_hard_state = hs;
        let snapshot = r.log.pending_snapshot.take();
        let messages = std::mem::take(&mut r.msgs);
        let early = r.cfg.parallel_leader_append
            && r.role == Role::Leader
            && same_term_and_vote
            && snapshot.is_none();
        let (messages, early_messages) = if early {
            (Vec::new(), messages)
        } else {
            (messages, Vec::new())
        };
        Ready {
            hard_state,
            snapshot,
            entries: r.log.take_unstable(),
            messages,
            early_messages,
            committed: r.log.take_committed(),
            read_states: std::mem::take(&mut r.read_states),
        }
    }

    /// The driver has made the log durable up to `index`, whose entry has term `term`: the
    /// last entry of the `Ready`s it persisted. Needed only with
    /// [`Config::parallel_leader_append`], where a leader counts its own entries towards a
    /// commit from this call on (thesis §10.2.1); a report for an entry overwritten since is
    /// ignored.
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        self.raft.on_persisted(index, term);
    }

    /// A summary of this node's state.
    pub fn status(&self) -> Status {
        let r = &self.raft;
        Status {
            id: r.id,
            role: r.role,
            term: r.term,
            vote: r.vote,
            leader: r.leader,
            commit: r.log.committed,
            applied: r.log.applied,
            last_index: r.log.last_index(),
            first_index: r.log.first_index(),
            last_term: r.log.last_term(),
            transferee: r.is_transferring(),
        }
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.raft.role
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.raft.term
    }

    /// Known leader of the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.leader
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    /// The election timeout drawn for the current term (for tests of §5.2 randomisation).
    pub fn randomized_election_timeout(&self) -> u32 {
        self.raft.randomized_election_timeout()
    }

    /// Whether ReadIndex requests are waiting for quorum confirmation.
    pub fn has_pending_reads(&self) -> bool {
        self.raft.has_pending_reads()
    }
}
