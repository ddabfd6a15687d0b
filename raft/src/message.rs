//! Wire types: log entries, durable state, snapshots and the messages peers exchange.
//!
//! These are plain data with serde derives; the node crate chooses the encoding (postcard).
//! The bytes on the wire, field by field, are in docs/PROTOCOL.md §4.
//! Nothing here trusts a peer: the core validates every field it reads from a [`Message`].

use serde::{Deserialize, Serialize};

/// Identifier of a cluster member: a number from the cluster's configuration.
pub type NodeId = u64;

/// The members of the cluster as of some log position (Raft thesis §4). Voters form quorums,
/// vote and may lead; learners receive the log but neither vote nor count towards a commit
/// (thesis §4.2.1: a new server catches up as a non-voting member before it joins a quorum,
/// so that adding it never stalls commits). Both lists are sorted, without duplicates, and
/// disjoint; [`Membership::new`] makes them so.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Members that vote and count towards a quorum.
    pub voters: Vec<NodeId>,
    /// Members that only receive the log.
    pub learners: Vec<NodeId>,
}

impl Membership {
    /// Sorted and deduplicated; `None` if there is no voter or a node is both voter and
    /// learner.
    pub fn new(mut voters: Vec<NodeId>, mut learners: Vec<NodeId>) -> Option<Membership> {
        voters.sort_unstable();
        voters.dedup();
        learners.sort_unstable();
        learners.dedup();
        if voters.is_empty() || learners.iter().any(|l| voters.binary_search(l).is_ok()) {
            return None;
        }
        Some(Membership { voters, learners })
    }

    /// Whether the lists are in the form [`Membership::new`] makes (a peer's entry may not be).
    pub fn is_well_formed(&self) -> bool {
        let sorted = |v: &[NodeId]| v.windows(2).all(|w| w[0] < w[1]);
        !self.voters.is_empty()
            && sorted(&self.voters)
            && sorted(&self.learners)
            && !self.learners.iter().any(|l| self.is_voter(*l))
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.binary_search(&id).is_ok()
    }

    /// Voters, then learners.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(&self.learners).copied()
    }

    /// Votes (or acknowledgements) needed for a majority of the voters (Raft §5.2).
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Thesis §4.1: a change of at most one voter keeps every majority of the old voters
    /// overlapping every majority of the new ones, so the cluster can switch without joint
    /// consensus. Learners may come and go freely: they are in no majority.
    pub fn is_single_step_to(&self, next: &Membership) -> bool {
        let added = next.voters.iter().filter(|v| !self.is_voter(**v)).count();
        let removed = self.voters.iter().filter(|v| !next.is_voter(**v)).count();
        added + removed <= 1
    }

    /// Upper bound on the encoded size (postcard: two length prefixes and a varint per id).
    pub fn encoded_bound(&self) -> usize {
        20 + 10 * (self.voters.len() + self.learners.len())
    }
}

/// One replicated log entry. An entry with empty `data` and no `conf` is the no-op a new
/// leader appends (Raft §8) so it can commit entries of earlier terms; applications skip it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Term of the leader that created the entry.
    pub term: u64,
    /// Position in the log, starting at 1.
    pub index: u64,
    /// A configuration entry: the membership from this entry on. Every member uses the
    /// latest one in its log, committed or not, and falls back to the previous one if the
    /// entry is truncated away (thesis §4.1). `data` still goes to the application, which
    /// records why the membership changed.
    pub conf: Option<Membership>,
    /// Opaque command for the state machine; empty for the leader no-op. Encoded as one byte
    /// string (same postcard bytes as a sequence, but copied at once instead of byte by byte:
    /// a multi-megabyte entry took long enough to encode and decode to cost elections).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Entry {
    /// A plain entry carrying `data`.
    pub fn new(term: u64, index: u64, data: Vec<u8>) -> Entry {
        Entry {
            term,
            index,
            conf: None,
            data,
        }
    }

    /// Whether this is the leader no-op of Raft §8 (carries no command).
    pub fn is_noop(&self) -> bool {
        self.data.is_empty() && self.conf.is_none()
    }

    /// Upper bound on this entry's encoded size, as the message budget counts it.
    pub fn encoded_bound(&self) -> usize {
        crate::config::Config::entry_size(self.data.len())
            .saturating_add(self.conf.as_ref().map_or(0, Membership::encoded_bound))
    }
}

/// The state that must survive a crash before a node answers a vote or an append (Raft §5,
/// figure 2 "persistent state"). `commit` is persisted too so a restart re-applies no less than
/// it had applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// Candidate that received this node's vote in `term`, if any (one vote per term, §5.2).
    pub vote: Option<NodeId>,
    /// Highest log index known to be committed.
    pub commit: u64,
}

/// A point-in-time image of the application state covering the log up to `index` (Raft §7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Last log index the snapshot covers.
    pub index: u64,
    /// Term of the entry at `index`, needed for the consistency check of the next append.
    pub term: u64,
    /// The membership in force at `index` (thesis §4: the log prefix it replaces may have
    /// held the configuration entries that made it).
    pub conf: Membership,
    /// Opaque application state.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A message between two members. `term` is the sender's term, except for pre-vote traffic,
/// which carries the term the pre-candidate would campaign for (thesis §9.6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// Sender's term (see the type docs for pre-vote).
    pub term: u64,
    /// What the message says.
    pub body: MessageBody,
}

/// The Raft RPCs. Heartbeats are `AppendEntries` without entries; there is no separate type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Replicate entries after (`prev_log_index`, `prev_log_term`) (Raft §5.3), or, with no
    /// entries, a heartbeat (§5.2). `read_ctx` is the leader's ReadIndex round (thesis §6.4),
    /// echoed back by the follower.
    AppendEntries {
        /// Index of the entry immediately preceding `entries`.
        prev_log_index: u64,
        /// Term of that entry, for the consistency check.
        prev_log_term: u64,
        /// Entries to store, contiguous from `prev_log_index + 1`.
        entries: Vec<Entry>,
        /// Leader's commit index (for heartbeats: capped at what the follower is known to hold).
        leader_commit: u64,
        /// ReadIndex round to acknowledge, if any.
        read_ctx: Option<u64>,
    },
    /// Answer to `AppendEntries`. On success `match_index` is the last index known to match the
    /// leader's log. On rejection `match_index` is the rejected `prev_log_index` (so the leader
    /// can drop stale rejections) and `reject_hint` is `(index, term)`: the follower's best
    /// guess of where the logs may agree — its last index, or the last index whose term is not
    /// greater than the leader's `prev_log_term` — so the leader skips a whole term per round
    /// trip instead of one entry (the optimisation at the end of Raft §5.3).
    AppendEntriesResponse {
        /// Whether the consistency check passed.
        success: bool,
        /// See the variant docs.
        match_index: u64,
        /// `(index, term)` back-off hint on rejection.
        reject_hint: Option<(u64, u64)>,
        /// Echo of the request's `read_ctx`.
        read_ctx: Option<u64>,
    },
    /// Ask for a vote (Raft §5.2) or, with `pre_vote`, ask whether a vote would be granted
    /// without anyone changing term (thesis §9.6). `transfer` marks a campaign started by
    /// `TimeoutNow`, which may bypass the leader lease (thesis §3.10).
    RequestVote {
        /// Candidate's last log index (§5.4.1 up-to-date check).
        last_log_index: u64,
        /// Candidate's last log term (§5.4.1 up-to-date check).
        last_log_term: u64,
        /// This is a pre-vote probe.
        pre_vote: bool,
        /// Campaign requested by the current leader (leadership transfer).
        transfer: bool,
    },
    /// Answer to `RequestVote`.
    RequestVoteResponse {
        /// Whether the (pre-)vote is granted.
        granted: bool,
        /// Echo of the request's `pre_vote` flag.
        pre_vote: bool,
    },
    /// Replace the follower's log prefix with a snapshot (Raft §7), for followers whose next
    /// needed entry the leader has already compacted away.
    InstallSnapshot {
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// Answer to `InstallSnapshot`: the follower's log now matches the leader's up to
    /// `match_index`.
    InstallSnapshotResponse {
        /// Highest index known to match.
        match_index: u64,
    },
    /// Leader tells the transfer target to campaign at once (thesis §3.10).
    TimeoutNow,
}

/// The kind of a [`Message`], one per [`MessageBody`] variant: the stable vocabulary of metrics
/// and logs, so no table of names is kept anywhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// [`MessageBody::AppendEntries`] (heartbeats included).
    AppendEntries,
    /// [`MessageBody::AppendEntriesResponse`].
    AppendEntriesResponse,
    /// [`MessageBody::RequestVote`] (pre-votes included).
    RequestVote,
    /// [`MessageBody::RequestVoteResponse`].
    RequestVoteResponse,
    /// [`MessageBody::InstallSnapshot`].
    InstallSnapshot,
    /// [`MessageBody::InstallSnapshotResponse`].
    InstallSnapshotResponse,
    /// [`MessageBody::TimeoutNow`].
    TimeoutNow,
}

impl MessageKind {
    /// Every kind, in [`MessageBody`]'s declaration order: the variant index a serde encoder
    /// writes, so a codec can name a message from its first bytes without decoding it.
    pub const ALL: [MessageKind; 7] = [
        MessageKind::AppendEntries,
        MessageKind::AppendEntriesResponse,
        MessageKind::RequestVote,
        MessageKind::RequestVoteResponse,
        MessageKind::InstallSnapshot,
        MessageKind::InstallSnapshotResponse,
        MessageKind::TimeoutNow,
    ];

    /// The kind whose [`MessageBody`] variant has serde variant index `index`.
    pub fn from_variant_index(index: u32) -> Option<MessageKind> {
        MessageKind::ALL.get(index as usize).copied()
    }

    /// snake_case name, stable (metric label values): "append_entries", "request_vote", …
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::AppendEntries => "append_entries",
            MessageKind::AppendEntriesResponse => "append_entries_response",
            MessageKind::RequestVote => "request_vote",
            MessageKind::RequestVoteResponse => "request_vote_response",
            MessageKind::InstallSnapshot => "install_snapshot",
            MessageKind::InstallSnapshotResponse => "install_snapshot_response",
            MessageKind::TimeoutNow => "timeout_now",
        }
    }
}

impl MessageBody {
    /// This body's kind.
    pub fn kind(&self) -> MessageKind {
        match self {
            MessageBody::AppendEntries { .. } => MessageKind::AppendEntries,
            MessageBody::AppendEntriesResponse { .. } => MessageKind::AppendEntriesResponse,
            MessageBody::RequestVote { .. } => MessageKind::RequestVote,
            MessageBody::RequestVoteResponse { .. } => MessageKind::RequestVoteResponse,
            MessageBody::InstallSnapshot { .. } => MessageKind::InstallSnapshot,
            MessageBody::InstallSnapshotResponse { .. } => MessageKind::InstallSnapshotResponse,
            MessageBody::TimeoutNow => MessageKind::TimeoutNow,
        }
    }
}

impl Message {
    /// This message's kind.
    pub fn kind(&self) -> MessageKind {
        self.body.kind()
    }

    /// Whether this is a heartbeat: an `AppendEntries` that carries no entries.
    pub fn is_heartbeat(&self) -> bool {
        matches!(&self.body, MessageBody::AppendEntries { entries, .. } if entries.is_empty())
    }
}
