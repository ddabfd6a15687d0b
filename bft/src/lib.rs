//! Sans-IO PBFT core (Castro & Liskov, OSDI'99 / TOCS'02) with ed25519-signed messages.
//!
//! The [`Replica`] is a deterministic state machine: inputs are signed messages from peers
//! ([`Replica::step`]), ticks ([`Replica::tick`]), client requests ([`Replica::submit`]) and the
//! node's execution reports ([`Replica::executed`], [`Replica::send_state`]); outputs are drained
//! with [`Replica::ready`]. No clocks, threads, files or randomness: the same inputs give the
//! same outputs byte for byte.

mod arrivals;
pub mod certificate;
pub mod checkpoint;
pub mod config;
pub mod crypto;
pub mod log;
pub mod message;
mod persist;
mod reject;
pub mod replica;
mod request_book;
pub mod state_transfer;
mod timer;
pub mod view_change;

use std::sync::Arc;

use thiserror::Error;

pub use certificate::{CertificateError, NULL_DIGEST};
pub use config::{request_cost, Config, ConfigError, NodeId, MAX_MESSAGE_BYTES};
pub use crypto::{Signature64, DOMAIN};
pub use message::{
    decode_and_verify, decode_payload, decode_signed, encode_payload, sign, sign_message, Batch,
    BatchRequest, Checkpoint, Commit, CommitCertificate, CommittedBatch, MessageKind, NewView,
    Payload, PrePrepare, Prepare, PreparedProof, Proposal, Request, SignedMessage, StateRequest,
    StateResponse, ViewChange,
};
pub use reject::{RejectReason, Rejected};
pub use replica::Replica;
pub use state_transfer::{Fetch, ServeRequest};

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
    #[error("request is invalid")]
    Invalid,
    #[error("request is already queued, in flight or recently executed")]
    Duplicate,
    #[error("request of {0} bytes is too large")]
    TooLarge(usize),
}

/// Why `Replica::restore` failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RestoreError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("corrupt persisted record {0}")]
    Corrupt(String),
}

/// A durable write. The driver applies all of `Ready::persist` atomically (one transaction)
/// before sending any of `Ready::messages`: what a replica signs is durable before it leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// One message to send. A broadcast expands into one `Outgoing` per peer sharing one `Arc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: NodeId,
    pub kind: MessageKind,
    pub bytes: Arc<[u8]>,
}

/// Everything the replica produced since the last `ready()`. Order of application: persist,
/// then send messages; committed batches are applied in order.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    pub persist: Vec<PersistOp>,
    pub messages: Vec<Outgoing>,
    pub committed: Vec<CommittedBatch>,
    pub fetch: Option<Fetch>,
    pub serve: Vec<ServeRequest>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.fetch.is_none()
            && self.serve.is_empty()
    }
}

/// A snapshot of the replica's protocol position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub view: u64,
    pub primary: NodeId,
    pub in_view_change: bool,
    pub last_executed: u64,
    pub low_watermark: u64,
    pub stable_checkpoint: u64,
    pub stable_digest: [u8; 32],
    pub queued_requests: usize,
    pub pending_requests: usize,
}
