//! Sans-IO PBFT core (Castro & Liskov, OSDI'99 / TOCS'02) with ed25519-signed messages.
//!
//! The [`Replica`] is a deterministic state machine: inputs are signed messages from peers
//! ([`Replica::step`]), ticks ([`Replica::tick`]), client requests ([`Replica::submit`]) and the
//! node's execution reports ([`Replica::executed`], [`Replica::send_state`]); outputs are drained
//! with [`Replica::ready`]. No clocks, threads, files or randomness: the same inputs give the
//! same outputs byte for byte.
//!
//! Implemented: pre-prepare/prepare/commit with batching and pipelining inside the watermark
//! window (PBFT §4.2), checkpoints and garbage collection (§4.3), view change with checkpoint
//! and prepared proofs and a deterministic NEW-VIEW (§4.4, §4.5.2), state transfer of committed
//! batches with their commit certificates (TOCS §5.3.2), and restart from persisted records.
//! Every wire message, its bytes and what is signed: docs/PROTOCOL.md §5.
//!
//! Everything a node needs is re-exported here; the modules are private.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod arrivals;
mod certificate;
mod checkpoint;
mod config;
mod crypto;
mod kind;
mod log;
mod message;
mod persist;
mod reject;
mod replica;
mod request_book;
mod state_transfer;
mod timer;
mod view_change;

use std::sync::Arc;

use thiserror::Error;

pub use certificate::{CertificateError, NULL_DIGEST};
pub use config::{request_cost, Config, ConfigError, NodeId, ENVELOPE_RESERVE, MAX_MESSAGE_BYTES};
pub use crypto::{Signature64, DOMAIN};
pub use kind::MessageKind;
pub use message::{
    decode_and_verify, decode_payload, decode_signed, encode_payload, sign, sign_message, Batch,
    BatchRequest, Checkpoint, Commit, CommitCertificate, CommittedBatch, NewView, Payload,
    PrePrepare, Prepare, PreparedProof, Proposal, Request, SignedMessage, StateRequest,
    StateResponse, StatusReport, ViewChange,
};
pub use reject::{RejectReason, Rejected};
pub use replica::{Replica, MAX_REQUEST_BYTES};
pub use state_transfer::ServeRequest;

/// What the replicated application supplies: validation and digests of opaque requests.
pub trait App {
    /// Digest of one client request, or None if it is invalid (bad client signature, unknown
    /// client, undecodable).
    fn request_digest(&self, request: &[u8]) -> Option<[u8; 32]>;
    /// Validate a whole batch (batch signature verification inside) and return the batch digest,
    /// or Err if any request is invalid.
    fn batch_digest(&self, requests: &[Vec<u8>]) -> Result<[u8; 32], InvalidBatch>;
}

/// A batch containing at least one invalid request.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid batch")]
pub struct InvalidBatch;

/// Why a client request was not accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// The app refused it ([`App::request_digest`] gave None): ordering it would waste a
    /// slot on a request no replica executes.
    #[error("request is invalid")]
    Invalid,
    /// Already queued, ordered, waited for or recently executed here: clients retransmit, and
    /// a request must be ordered once.
    #[error("request is already queued, in flight or recently executed")]
    Duplicate,
    /// No batch under the message budget could carry it ([`Config::batch_budget`]), or it is
    /// over [`MAX_REQUEST_BYTES`].
    #[error("request of {0} bytes is too large")]
    TooLarge(usize),
}

/// Why [`Replica::restore`] failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RestoreError {
    /// The configuration or key is unusable ([`Replica::new`] refuses it too).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A persisted record does not decode: restoring without it could make the replica sign
    /// something that conflicts with what it signed before the crash, so it does not start.
    #[error("corrupt persisted record {0}")]
    Corrupt(String),
}

/// A durable write. The driver applies all of `Ready::persist` atomically (one transaction)
/// before sending any of `Ready::messages`: what a replica signs is durable before it leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistOp {
    /// Store `value` under `key`, replacing any earlier value.
    Put {
        /// The record's key (under `bft/`).
        key: Vec<u8>,
        /// Its encoding.
        value: Vec<u8>,
    },
    /// Remove a record: garbage collection below a stable checkpoint (PBFT §4.3).
    Delete {
        /// The record's key.
        key: Vec<u8>,
    },
}

/// One message to send. A broadcast expands into one `Outgoing` per peer sharing one `Arc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The receiving replica.
    pub to: NodeId,
    /// What it is, for the node's per-kind message counts.
    pub kind: MessageKind,
    /// The encoded [`SignedMessage`], ready for the wire.
    pub bytes: Arc<[u8]>,
}

/// Everything the replica produced since the last `ready()`. Order of application: persist,
/// then send messages; committed batches are applied in order.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// Writes to make durable, in order and atomically, before any message is sent.
    pub persist: Vec<PersistOp>,
    /// Messages to send once `persist` is durable.
    pub messages: Vec<Outgoing>,
    /// Batches committed in sequence order, without gaps: the node executes them and reports
    /// checkpoint digests with [`Replica::executed`].
    pub committed: Vec<CommittedBatch>,
    /// Peers asking for committed batches: the node reads them from its ledger and answers with
    /// [`Replica::send_state`] (the core keeps no executed batches).
    pub serve: Vec<ServeRequest>,
}

impl Ready {
    /// Nothing to persist, send, execute or serve: the driver may stop polling.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.serve.is_empty()
    }
}

/// A snapshot of the replica's protocol position, for the node's status page and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This replica.
    pub id: NodeId,
    /// The current view (or, in a view change, the view being moved to).
    pub view: u64,
    /// The primary of `view`.
    pub primary: NodeId,
    /// True between sending VIEW-CHANGE and entering the new view: no normal-case progress.
    pub in_view_change: bool,
    /// The highest seq handed to the node for execution.
    pub last_executed: u64,
    /// h: sequence numbers at or below it are no longer accepted (PBFT §4.2 watermarks).
    pub low_watermark: u64,
    /// The seq of the last stable checkpoint (equal to `low_watermark`).
    pub stable_checkpoint: u64,
    /// The state digest at the stable checkpoint.
    pub stable_digest: [u8; 32],
    /// Requests queued at this primary for the next batch; with `pending_requests`, what the
    /// node's admission limit counts.
    pub queued_requests: usize,
    /// Requests this replica received and waits to see executed.
    pub pending_requests: usize,
    /// Requests this replica knows of that have not executed here: queued, ordered or waited
    /// for, each once. Zero on every replica of a quiet cluster means no further batch is on
    /// its way until a client sends more.
    pub unexecuted_requests: usize,
}
