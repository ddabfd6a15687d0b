//! Errors the core reports. None of them means the core is broken: a bad peer message is
//! ignored and reported, never acted on.

use thiserror::Error;

use crate::config::ConfigError;
use crate::message::NodeId;

/// Errors from [`crate::RawNode::step`], [`crate::RawNode::restart`] and
/// [`crate::RawNode::compact`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RaftError {
    /// The configuration is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// A message from a node that is not a member (or claims to be us); ignored.
    #[error("message from unknown peer {0}")]
    UnknownPeer(NodeId),
    /// A message addressed to another node; ignored.
    #[error("message for node {to} delivered to node {me}")]
    WrongRecipient {
        /// The message's recipient.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
    /// A malformed or protocol-violating message; ignored.
    #[error("invalid message from {from}: {reason}")]
    InvalidMessage {
        /// Sender.
        from: NodeId,
        /// What was wrong.
        reason: &'static str,
    },
    /// `compact` was given snapshot data that would not fit one InstallSnapshot message.
    #[error("snapshot of {size} bytes exceeds the {max}-byte message budget")]
    SnapshotTooLarge {
        /// Size of the snapshot data.
        size: usize,
        /// Largest snapshot data an InstallSnapshot may carry.
        max: usize,
    },
    /// The persisted state handed to `restart` is inconsistent.
    #[error("corrupt persisted state: {0}")]
    CorruptState(&'static str),
    /// `compact` was asked for an index that is already compacted, not yet applied, or beyond
    /// the log.
    #[error("cannot compact to {index}: must be in ({snapshot_index}, {applied}]")]
    CompactOutOfRange {
        /// Requested index.
        index: u64,
        /// Current snapshot index.
        snapshot_index: u64,
        /// Highest applied index.
        applied: u64,
    },
}

/// Why a client request (proposal, read, transfer) was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProposeError {
    /// Only the leader accepts requests; `leader` is whom to ask instead, if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Known leader of the current term, if any.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is under way; proposals would delay it (thesis §3.10).
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// Empty data is reserved for the leader no-op.
    #[error("empty proposal")]
    Empty,
    /// The proposal could never be sent: one entry with this data alone would exceed the
    /// message budget ([`crate::Config::max_msg_bytes`]). Split it into smaller commands.
    #[error("proposal of {size} bytes exceeds the {max}-byte limit of one entry")]
    TooLarge {
        /// Size of the refused data.
        size: usize,
        /// Largest data an entry may carry ([`crate::Config::max_entry_data_bytes`]).
        max: usize,
    },
    /// A membership change while an earlier one is not yet committed, or before this
    /// leader has committed an entry of its term (thesis §4.1); retry once it has.
    #[error("a membership change is still in progress; retry once it commits")]
    ConfChangePending,
    /// The proposed membership is malformed or changes more than one voter (thesis §4.1).
    #[error("invalid membership change: {0}")]
    InvalidMembership(&'static str),
    /// The transfer target is not a member.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
}
