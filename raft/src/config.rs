//! Static configuration of one Raft member and its validation.

use thiserror::Error;

use crate::message::NodeId;

/// Configuration of one member. `voters` and `learners` are the membership the cluster
/// started with; configuration entries in the log change it from there (thesis §4.1, see
/// [`crate::RawNode::propose_conf_change`]).
#[derive(Clone, Debug)]
pub struct Config {
    /// This member's id; must appear in `voters` or `learners`.
    pub id: NodeId,
    /// Initial voting members, self included if it votes.
    pub voters: Vec<NodeId>,
    /// Initial non-voting members: they receive the log and do not vote (a node joining a
    /// running cluster starts as one of these).
    pub learners: Vec<NodeId>,
    /// Base election timeout in ticks; the real timeout is drawn from
    /// `[election_tick, 2 * election_tick)` so split votes are rare (Raft §5.2).
    pub election_tick: u32,
    /// Ticks between leader heartbeats; must be below `election_tick` or followers time out.
    pub heartbeat_tick: u32,
    /// Probe with a pre-vote before disrupting the cluster with a new term (thesis §9.6).
    pub pre_vote: bool,
    /// Leader steps down when it has not heard from a quorum for an election timeout, and
    /// followers with a live leader ignore vote requests (thesis §6.2 leader lease).
    pub check_quorum: bool,
    /// Maximum AppendEntries in flight per follower in the replicate state (flow control).
    pub max_inflight: usize,
    /// Maximum entries in one AppendEntries (batching bound).
    pub max_entries_per_msg: usize,
    /// The size budget of one message on the wire, envelope included: an AppendEntries is
    /// packed with entries while their encoded size fits, a proposal that could never fit in
    /// one message is refused ([`crate::ProposeError::TooLarge`]), and so is a compaction
    /// whose snapshot would not fit an InstallSnapshot. The transport refuses larger frames,
    /// so an entry above it would be retried forever and wedge replication.
    pub max_msg_bytes: usize,
    /// Seed of the election-jitter RNG, so runs are reproducible.
    pub seed: u64,
    /// Thesis §10.2.1: the leader writes its log in parallel with replicating it. Its own
    /// appends are then counted towards a commit only once the driver reports them durable
    /// ([`crate::RawNode::on_persisted`]), and its messages come out in
    /// [`crate::Ready::early_messages`], to be sent before persisting. Off by default: the
    /// plain contract persists everything before sending anything.
    pub parallel_leader_append: bool,
}

/// Upper bound on the encoded size of a [`crate::Message`] without its entries or snapshot
/// data: three ids/terms, the body tag, four varint u64s, an optional read context and the
/// length prefix of the entry vector. postcard writes a u64 in at most 10 bytes.
pub const MESSAGE_OVERHEAD: usize = 128;
/// Upper bound on the encoded size of an [`crate::Entry`] besides its data: term, index and
/// the data's length prefix, each a varint of at most 10 bytes.
pub const ENTRY_OVERHEAD: usize = 32;
/// Smallest accepted [`Config::max_msg_bytes`]: room for the envelope and some data.
pub const MIN_MSG_BYTES: usize = 1024;

impl Config {
    /// Largest `data` a proposal may carry: one such entry alone fills an AppendEntries to
    /// exactly [`Config::max_msg_bytes`].
    pub fn max_entry_data_bytes(&self) -> usize {
        self.max_msg_bytes
            .saturating_sub(MESSAGE_OVERHEAD + ENTRY_OVERHEAD)
    }

    /// Encoded-size bound of one entry with `data_len` bytes of data.
    pub fn entry_size(data_len: usize) -> usize {
        data_len.saturating_add(ENTRY_OVERHEAD)
    }

    /// Defaults matching etcd-raft's usual settings: 10-tick elections, 1-tick heartbeats,
    /// pre-vote and check-quorum on. The seed defaults to the id so members draw different
    /// timeouts.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Self {
        Config {
            id,
            voters,
            learners: Vec::new(),
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            max_inflight: 256,
            max_entries_per_msg: 64,
            max_msg_bytes: 4 << 20,
            seed: id,
            parallel_leader_append: false,
        }
    }

    /// Reject configurations that would break liveness or the core's invariants.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.voters.contains(&self.id) && !self.learners.contains(&self.id) {
            return Err(ConfigError::SelfNotVoter(self.id));
        }
        let mut sorted = self.voters.clone();
        sorted.extend(&self.learners);
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateVoter(w[0]));
        }
        if self.heartbeat_tick == 0 {
            return Err(ConfigError::ZeroHeartbeatTick);
        }
        if self.heartbeat_tick >= self.election_tick {
            return Err(ConfigError::HeartbeatNotBelowElection {
                heartbeat_tick: self.heartbeat_tick,
                election_tick: self.election_tick,
            });
        }
        if self.max_inflight == 0 {
            return Err(ConfigError::Zero("max_inflight"));
        }
        if self.max_entries_per_msg == 0 {
            return Err(ConfigError::Zero("max_entries_per_msg"));
        }
        if self.max_msg_bytes < MIN_MSG_BYTES {
            return Err(ConfigError::MessageBudgetTooSmall {
                max_msg_bytes: self.max_msg_bytes,
                min: MIN_MSG_BYTES,
            });
        }
        Ok(())
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// `id` is in neither `voters` nor `learners`.
    #[error("node {0} is not in its own voter or learner list")]
    SelfNotVoter(NodeId),
    /// A member is listed twice (in one list, or as both voter and learner).
    #[error("member {0} is listed twice")]
    DuplicateVoter(NodeId),
    /// `heartbeat_tick` is zero.
    #[error("heartbeat_tick must be at least 1")]
    ZeroHeartbeatTick,
    /// Heartbeats would not arrive before followers time out.
    #[error("heartbeat_tick ({heartbeat_tick}) must be below election_tick ({election_tick})")]
    HeartbeatNotBelowElection {
        /// Configured heartbeat interval.
        heartbeat_tick: u32,
        /// Configured election timeout.
        election_tick: u32,
    },
    /// `max_msg_bytes` leaves no room for entries.
    #[error("max_msg_bytes ({max_msg_bytes}) must be at least {min}")]
    MessageBudgetTooSmall {
        /// Configured budget.
        max_msg_bytes: usize,
        /// Smallest accepted budget.
        min: usize,
    },
    /// A limit that must be positive is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}
