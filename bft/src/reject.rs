//! Why a peer's message was dropped. Every check a peer can fail ends in one of these reasons,
//! never in a panic, and the node counts them by label (`faultline_messages_rejected_total`), so
//! a flood of forged or stale messages shows up on a dashboard as what it is.

use std::fmt;

use thiserror::Error;

/// Why [`Replica::step`](crate::Replica::step) (or one of the decoders) refused a message.
///
/// [`RejectReason::as_str`] is the metric label. Dashboards and alerts select on these exact
/// strings, so a label never changes once released; a new reason gets a new label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    /// Undecodable, non-canonical, or a field no correct replica would send (a checkpoint for
    /// a seq that is not a multiple of K, an empty state-request range, an oversized request).
    Malformed,
    /// Over the size a replica ever decodes, or a request no batch could carry.
    TooLarge,
    /// A signature (the envelope's or one inside a proof) does not verify.
    BadSignature,
    /// The sending peer or the claimed signer is not a cluster member.
    UnknownPeer,
    /// The message arrived from a peer other than its signer (only a NEW-VIEW may be relayed),
    /// came from ourselves, or is a PREPARE from the view's primary (PBFT §4.2: it never
    /// prepares).
    WrongSender,
    /// For a view we left or a seq at or below the stable checkpoint: it can no longer matter.
    Stale,
    /// Beyond the high watermark by more than the window we buffer (PBFT §4.2 watermarks).
    OutOfWindow,
    /// For a view further ahead than we buffer: a Byzantine replica could otherwise make us
    /// hold messages for views that never come.
    WrongView,
    /// A PRE-PREPARE or NEW-VIEW not signed by that view's primary (PBFT §4.1).
    NotPrimary,
    /// Contradicts a message the same replica sent for the same (view, seq): a different
    /// pre-prepare digest, prepare or commit (PBFT §4.2 accepts the first).
    ConflictingMessage,
    /// The batch does not hash to the digest its header or request names.
    BadDigest,
    /// The application refused a request (bad client signature, unknown client).
    InvalidRequest,
    /// A VIEW-CHANGE's checkpoint or prepared-certificate proof does not hold (PBFT §4.4).
    BadProof,
    /// A NEW-VIEW whose view changes or re-issued pre-prepares do not check out (PBFT §4.4).
    BadNewView,
    /// A state-transfer batch that does not continue our prefix or whose commit certificate
    /// fails (TOCS §5.3.2).
    BadCertificate,
    /// An answer (batch body, state response) we did not ask for.
    Unsolicited,
    /// A request for a batch body or committed state this replica does not have.
    CannotServe,
    /// The sender's share of the future-message buffer is full.
    BufferFull,
}

impl RejectReason {
    /// Every reason, in declaration order.
    pub const ALL: [RejectReason; 18] = [
        RejectReason::Malformed,
        RejectReason::TooLarge,
        RejectReason::BadSignature,
        RejectReason::UnknownPeer,
        RejectReason::WrongSender,
        RejectReason::Stale,
        RejectReason::OutOfWindow,
        RejectReason::WrongView,
        RejectReason::NotPrimary,
        RejectReason::ConflictingMessage,
        RejectReason::BadDigest,
        RejectReason::InvalidRequest,
        RejectReason::BadProof,
        RejectReason::BadNewView,
        RejectReason::BadCertificate,
        RejectReason::Unsolicited,
        RejectReason::CannotServe,
        RejectReason::BufferFull,
    ];

    /// The snake_case metric label (the `reason` of `faultline_messages_rejected_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::TooLarge => "too_large",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::UnknownPeer => "unknown_peer",
            RejectReason::WrongSender => "wrong_sender",
            RejectReason::Stale => "stale",
            RejectReason::OutOfWindow => "out_of_window",
            RejectReason::WrongView => "wrong_view",
            RejectReason::NotPrimary => "not_primary",
            RejectReason::ConflictingMessage => "conflicting_message",
            RejectReason::BadDigest => "bad_digest",
            RejectReason::InvalidRequest => "invalid_request",
            RejectReason::BadProof => "bad_proof",
            RejectReason::BadNewView => "bad_new_view",
            RejectReason::BadCertificate => "bad_certificate",
            RejectReason::Unsolicited => "unsolicited",
            RejectReason::CannotServe => "cannot_serve",
            RejectReason::BufferFull => "buffer_full",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message dropped by [`Replica::step`](crate::Replica::step) or a decoder; the node counts it
/// by `reason.as_str()`.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("message rejected: {reason}")]
pub struct Rejected {
    /// Why it was dropped.
    pub reason: RejectReason,
}

impl Rejected {
    /// A rejection for `reason`.
    pub fn new(reason: RejectReason) -> Self {
        Rejected { reason }
    }
}

impl From<RejectReason> for Rejected {
    fn from(reason: RejectReason) -> Self {
        Rejected { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels are metric label values already in dashboards: this pins every one.
    #[test]
    fn labels_are_todays_metric_labels() {
        let labels: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "malformed",
                "too_large",
                "bad_signature",
                "unknown_peer",
                "wrong_sender",
                "stale",
                "out_of_window",
                "wrong_view",
                "not_primary",
                "conflicting_message",
                "bad_digest",
                "invalid_request",
                "bad_proof",
                "bad_new_view",
                "bad_certificate",
                "unsolicited",
                "cannot_serve",
                "buffer_full",
            ]
        );
        assert_eq!(
            Rejected::new(RejectReason::Stale).to_string(),
            "message rejected: stale"
        );
    }
}
