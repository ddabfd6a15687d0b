//! Sans-IO Raft core.
//!
//! A deterministic state machine in the etcd-raft / raft-rs style: the driver feeds it
//! messages ([`RawNode::step`]), ticks ([`RawNode::tick`]) and client requests
//! ([`RawNode::propose`], [`RawNode::read_index`]), then drains a [`Ready`] and follows its
//! contract (persist, then send, then apply). No IO, clocks, threads or global randomness:
//! the same inputs produce the same outputs, byte for byte, which is what makes the
//! simulator and the tests reproducible.
//!
//! Implemented: leader election with randomized timeouts (Raft §5.2), pre-vote (thesis §9.6),
//! check-quorum and leader lease (thesis §6.2), log replication with fast conflict back-off
//! (§5.3), commitment of current-term entries only (§5.4.2), per-follower probe/replicate
//! flow control with pipelining and batching, the leader no-op (§8), snapshots and
//! InstallSnapshot (§7), ReadIndex reads (thesis §6.4), leadership transfer (thesis §3.10),
//! and restart from persisted state.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
mod log;
mod message;
mod progress;
mod raft;
mod raw_node;
mod read_only;

pub use config::{Config, ConfigError, ENTRY_OVERHEAD, MESSAGE_OVERHEAD, MIN_MSG_BYTES};
pub use error::{ProposeError, RaftError};
pub use message::{
    Entry, HardState, Membership, Message, MessageBody, MessageKind, NodeId, Snapshot,
};
pub use progress::ProgressState;
pub use raft::Role;
pub use raw_node::{PersistedState, RawNode, Ready, Status};
pub use read_only::ReadState;
