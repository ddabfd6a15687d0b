//! Static configuration of one Raft member and its validation.

use thiserror::Error;

use crate::message::NodeId;

/// Configuration of one member. Membership is fixed: `voters` lists every member, self included.
#[derive(Clone, Debug)]
pub struct Config {
    /// This member's id; must appear in `voters`.
    pub id: NodeId,
    /// All members including self.
    pub voters: Vec<NodeId>,
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
    /// Maximum bytes of entry data in one AppendEntries; at least one entry is always sent.
    pub max_bytes_per_msg: usize,
    /// Seed of the election-jitter RNG, so runs are reproducible.
    pub seed: u64,
}

impl Config {
    /// Defaults matching etcd-raft's usual settings: 10-tick elections, 1-tick heartbeats,
    /// pre-vote and check-quorum on. The seed defaults to the id so members draw different
    /// timeouts.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Self {
        Config {
            id,
            voters,
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            max_inflight: 256,
            max_entries_per_msg: 64,
            max_bytes_per_msg: 1 << 20,
            seed: id,
        }
    }

    /// Reject configurations that would break liveness or the core's invariants.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.voters.contains(&self.id) {
            return Err(ConfigError::SelfNotVoter(self.id));
        }
        let mut sorted = self.voters.clone();
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
        if self.max_bytes_per_msg == 0 {
            return Err(ConfigError::Zero("max_bytes_per_msg"));
        }
        Ok(())
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// `id` is not in `voters`.
    #[error("node {0} is not in its own voter list")]
    SelfNotVoter(NodeId),
    /// A voter is listed twice.
    #[error("voter {0} is listed twice")]
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
    /// A limit that must be positive is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}
