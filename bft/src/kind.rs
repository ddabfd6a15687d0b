//! The kind of a wire message, for metrics and for selecting messages in tests and fault
//! injection. Separate from `message` so that reading a kind needs nothing but the bytes.

use serde::Deserialize;

/// The kind of a wire message: one variant per [`Payload`](crate::Payload) variant, in the
/// same order.
///
/// [`MessageKind::as_str`] is the `type` label of the node's per-peer message metrics, so the
/// labels never change. A [`Proposal`](crate::Proposal) is the normal-case PRE-PREPARE with its
/// batch and is labelled `pre_prepare` like a bare header: to an operator both are the
/// primary's pre-prepare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    /// [`Payload::Request`](crate::Payload::Request).
    Request,
    /// [`Payload::PrePrepare`](crate::Payload::PrePrepare).
    PrePrepare,
    /// [`Payload::Prepare`](crate::Payload::Prepare).
    Prepare,
    /// [`Payload::Commit`](crate::Payload::Commit).
    Commit,
    /// [`Payload::Checkpoint`](crate::Payload::Checkpoint).
    Checkpoint,
    /// [`Payload::ViewChange`](crate::Payload::ViewChange).
    ViewChange,
    /// [`Payload::NewView`](crate::Payload::NewView).
    NewView,
    /// [`Payload::StateRequest`](crate::Payload::StateRequest).
    StateRequest,
    /// [`Payload::StateResponse`](crate::Payload::StateResponse).
    StateResponse,
    /// [`Payload::Proposal`](crate::Payload::Proposal).
    Proposal,
    /// [`Payload::BatchRequest`](crate::Payload::BatchRequest).
    BatchRequest,
    /// [`Payload::Batch`](crate::Payload::Batch).
    Batch,
    /// [`Payload::Status`](crate::Payload::Status).
    Status,
}

impl MessageKind {
    /// Every kind, indexed by the `Payload` variant index that starts an encoded payload.
    pub const ALL: [MessageKind; 13] = [
        MessageKind::Request,
        MessageKind::PrePrepare,
        MessageKind::Prepare,
        MessageKind::Commit,
        MessageKind::Checkpoint,
        MessageKind::ViewChange,
        MessageKind::NewView,
        MessageKind::StateRequest,
        MessageKind::StateResponse,
        MessageKind::Proposal,
        MessageKind::BatchRequest,
        MessageKind::Batch,
        MessageKind::Status,
    ];

    /// The snake_case metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Request => "request",
            MessageKind::PrePrepare | MessageKind::Proposal => "pre_prepare",
            MessageKind::Prepare => "prepare",
            MessageKind::Commit => "commit",
            MessageKind::Checkpoint => "checkpoint",
            MessageKind::ViewChange => "view_change",
            MessageKind::NewView => "new_view",
            MessageKind::StateRequest => "state_request",
            MessageKind::StateResponse => "state_response",
            MessageKind::BatchRequest => "batch_request",
            MessageKind::Batch => "batch",
            MessageKind::Status => "status",
        }
    }

    /// The kind of an encoded [`SignedMessage`](crate::SignedMessage), read without decoding
    /// the payload or checking the signature, so that counting received messages by kind costs
    /// next to nothing. The envelope's payload bytes come first, and a payload starts with its
    /// variant index. None if the bytes do not get that far.
    pub fn of_wire(bytes: &[u8]) -> Option<MessageKind> {
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow)]
            payload: &'a [u8],
        }
        let (envelope, _) = postcard::take_from_bytes::<Envelope<'_>>(bytes).ok()?;
        let (variant, _) = postcard::take_from_bytes::<u32>(envelope.payload).ok()?;
        MessageKind::ALL
            .get(usize::try_from(variant).ok()?)
            .copied()
    }
}
