//! State transfer (TOCS §5.3.2, simplified to replaying committed batches): a replica that
//! learns of a stable checkpoint above what it has executed asks a peer for the missing batches;
//! each batch comes with its commit certificate, so a response is self-certifying and one
//! correct peer suffices.

use crate::config::NodeId;
use crate::timer::Timer;

/// Emitted in `Ready::serve` when a peer asked for committed batches; the node answers with
/// `Replica::send_state(to, batches)` read from its ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeRequest {
    /// The replica that asked.
    pub to: NodeId,
    /// The first seq to send.
    pub from_seq: u64,
    /// The last seq to send, already capped at what this replica executed and at a bounded
    /// range, so one request never makes the node read an unbounded stretch of its ledger.
    pub to_seq: u64,
}

/// An outstanding fetch: which peers may serve it and when to try the next one.
#[derive(Clone, Debug)]
pub(crate) struct FetchState {
    pub to_seq: u64,
    pub peers: Vec<NodeId>,
    pub next_peer: usize,
    /// Runs out when the peer asked has had a request timeout to answer.
    pub retry: Timer,
}
