//! The history of a nemesis run: every client operation with its invocation and completion
//! times (nanoseconds since the run's start) and what the client learned, plus every fault.

use crate::ledger::TxOutcome;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A put of a value unique to this operation.
    Put { key: String, value: String },
    Transfer {
        from: String,
        to: String,
        amount: u64,
    },
    /// `GET /v1/kv/KEY` with the default (linearizable) consistency.
    Read { key: String },
}

/// What the client learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A write acknowledged as committed (for PBFT: f+1 matching signed replies).
    Committed { height: u64, result: TxOutcome },
    /// A read answered: the value, or None for `404` (absent).
    Read(Option<String>),
    /// Definitely not done (a read that failed, a write refused with 400/403).
    Failed(String),
    /// A write that was never acknowledged within its retry window: it may or may not have
    /// taken effect (Jepsen's `:info`).
    Unknown(String),
}

/// One client operation.
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    /// The transaction's `(seq, hash)` for writes.
    pub tx: Option<(u64, [u8; 32])>,
    pub kind: OpKind,
    pub invoke_ns: u64,
    /// None for [`Outcome::Unknown`].
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
    /// Requests sent for this op (more than one: retried with the same `(client, seq)`).
    pub attempts: u32,
}

impl Op {
    pub fn is_write(&self) -> bool {
        self.tx.is_some()
    }

    pub fn acked(&self) -> bool {
        matches!(self.outcome, Outcome::Committed { .. })
    }
}

/// What the nemesis did to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL.
    Kill,
    /// Started again from its data dir.
    Restart,
    /// SIGSTOP.
    Pause,
    /// SIGCONT.
    Resume,
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill -9",
            FaultKind::Restart => "restart",
            FaultKind::Pause => "SIGSTOP",
            FaultKind::Resume => "SIGCONT",
        })
    }
}

/// One nemesis action.
#[derive(Clone, Debug)]
pub struct Fault {
    pub at_ns: u64,
    pub node: usize,
    pub kind: FaultKind,
    /// Whether the node was the leader/primary when it was hit.
    pub was_leader: bool,
}
