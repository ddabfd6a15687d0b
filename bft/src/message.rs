//! Wire messages. Every message is a `SignedMessage { payload, signature }` where `payload` is
//! the postcard encoding of a [`Payload`] and the signature covers `DOMAIN ‖ payload` exactly as
//! received — a receiver never re-encodes before verifying. Payloads must also be in canonical
//! form (re-encoding gives the same bytes), which makes a COMMIT's signed bytes reconstructible
//! from `(view, seq, digest, replica)` for offline commit-certificate checks. Byte layouts,
//! signed bytes and who sends what: docs/PROTOCOL.md §5.
//!
//! These types are public so that tests and the node's Byzantine modes can craft messages
//! (equivocating pre-prepares, forged signatures, inflated views).

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::config::{NodeId, MAX_MESSAGE_BYTES};
use crate::crypto::{sign_bytes, verify_bytes, Signature64, VerifyCache};
use crate::kind::MessageKind;
use crate::reject::{RejectReason, Rejected};

/// The envelope on the wire: payload bytes plus a signature over `DOMAIN ‖ payload`. The
/// payload stays as the bytes received, so the signature is checked over exactly what the
/// sender signed and proofs can carry the message on unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedMessage {
    /// The postcard encoding of a [`Payload`], canonical (see [`decode_payload`]).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The signer's ed25519 signature over `DOMAIN ‖ payload`; the signer is the replica the
    /// payload names ([`Payload::signer`]).
    pub signature: Signature64,
}

impl SignedMessage {
    /// Postcard encoding of the envelope (what goes on the wire).
    pub fn to_wire(&self) -> Vec<u8> {
        encode(self)
    }
}

/// A client request forwarded by a backup to the primary (PBFT §4.1: "the backup relays it").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The relaying replica (the signer; every message but a NEW-VIEW comes from its signer).
    pub replica: NodeId,
    /// The client's request, opaque here and signed by the client: the receiver checks it with
    /// [`App::request_digest`](crate::App::request_digest), so a relaying replica cannot forge
    /// one.
    #[serde(with = "serde_bytes")]
    pub request: Vec<u8>,
}

/// PRE-PREPARE ⟨v, n, d⟩ (PBFT §4.2): the header only. The signature covers (view, seq, batch
/// digest), not the batch, so a prepared certificate (this header + 2f PREPAREs) is a few hundred
/// bytes whatever the batch size, and VIEW-CHANGE / NEW-VIEW, which carry such certificates and
/// headers, stay small at any load. The paper's own message separates the two the same way:
/// ⟨⟨PRE-PREPARE, v, n, d⟩σp, m⟩ — the request m is piggybacked outside the signed part. In
/// the normal case the batch travels with it in a [`Proposal`]; otherwise a replica fetches the
/// body by digest ([`BatchRequest`] / [`Batch`]) and checks it against d before using it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrePrepare {
    /// v: only the primary of v may sign it (§4.1), and a backup accepts it only in view v.
    pub view: u64,
    /// n, the sequence number assigned; it is also the block height.
    pub seq: u64,
    /// d, the app's digest of the batch ([`NULL_DIGEST`](crate::NULL_DIGEST) for a null
    /// request).
    pub digest: [u8; 32],
    /// The primary that signed it.
    pub replica: NodeId,
}

/// PREPARE ⟨v, n, d, i⟩ (PBFT §4.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// The view of the pre-prepare it agrees with.
    pub view: u64,
    /// Its sequence number.
    pub seq: u64,
    /// Its batch digest: prepares count towards a quorum only if the digests match.
    pub digest: [u8; 32],
    /// i, the backup that prepared (never the primary, §4.2).
    pub replica: NodeId,
}

/// COMMIT ⟨v, n, d, i⟩ (PBFT §4.2). Its canonical encoding is what commit certificates verify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The view in which the batch prepared.
    pub view: u64,
    /// Its sequence number.
    pub seq: u64,
    /// Its batch digest: commits count towards a quorum only if the digests match.
    pub digest: [u8; 32],
    /// i, the replica that committed.
    pub replica: NodeId,
}

/// CHECKPOINT ⟨n, d, i⟩ (PBFT §4.3): d is the node's state digest (ledger head) after seq n.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// n, a multiple of the checkpoint interval K.
    pub seq: u64,
    /// d: 2f+1 matching digests make the checkpoint stable, so correct replicas agree on the
    /// state there.
    pub state_digest: [u8; 32],
    /// i, the replica that executed up to n.
    pub replica: NodeId,
}

/// A prepared certificate (PBFT §4.4 set P): the signed pre-prepare and 2f signed matching
/// prepares from distinct backups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedProof {
    /// The primary's signed [`PrePrepare`] header.
    pub pre_prepare: SignedMessage,
    /// 2f signed [`Prepare`]s matching it, from distinct backups.
    pub prepares: Vec<SignedMessage>,
}

/// VIEW-CHANGE ⟨v+1, n, C, P, i⟩ (PBFT §4.4): n is the last stable checkpoint, C its proof
/// (2f+1 signed checkpoints; empty for the genesis checkpoint 0), P the prepared certificates
/// above n.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    /// v+1, the view the sender moves to.
    pub new_view: u64,
    /// i, the sender.
    pub replica: NodeId,
    /// n, the sender's last stable checkpoint.
    pub stable_seq: u64,
    /// The state digest at n.
    pub stable_digest: [u8; 32],
    /// C: 2f+1 signed [`Checkpoint`]s for (n, digest); empty for the genesis checkpoint.
    pub checkpoint_proof: Vec<SignedMessage>,
    /// P: a prepared certificate for every seq above n that prepared at the sender, each of
    /// the highest view it prepared in, so the new view cannot lose a request that may have
    /// committed somewhere.
    pub prepared: Vec<PreparedProof>,
}

/// NEW-VIEW ⟨v+1, V, O⟩ (PBFT §4.4): V the 2f+1 signed view changes, O the re-issued signed
/// pre-prepares for view v+1 computed from V.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    /// v+1.
    pub view: u64,
    /// The primary of v+1, the signer. Any replica may relay a NEW-VIEW (it is
    /// self-certifying), so this need not be the peer it came from.
    pub replica: NodeId,
    /// V: 2f+1 signed [`ViewChange`]s for v+1 from distinct replicas.
    pub view_changes: Vec<SignedMessage>,
    /// O: the signed [`PrePrepare`] headers for every seq from V's latest stable checkpoint to
    /// its highest prepared seq; every receiver recomputes O from V and refuses a NEW-VIEW whose
    /// O differs.
    pub pre_prepares: Vec<SignedMessage>,
}

/// Ask a peer for committed batches `from_seq..=to_seq` (TOCS §5.3.2 state transfer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRequest {
    /// The replica that is behind (the signer, and where the answer goes).
    pub replica: NodeId,
    /// The first seq it lacks (one above what it executed).
    pub from_seq: u64,
    /// The last seq it wants; the answer may stop earlier to fit the message budget.
    pub to_seq: u64,
}

/// Where a replica stands, multicast while it makes no progress, so that a replica that missed
/// the last commits or checkpoints learns it is behind although no further traffic comes (the
/// status messages of Castro & Liskov, TOCS §5.2, reduced to what a lagging replica acts on).
/// A replica fetches up to the (f+1)-th highest height claimed by others, which at least one
/// correct replica has executed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The signer.
    pub replica: NodeId,
    /// The highest seq it has executed.
    pub executed: u64,
}

/// Proof that `(view, seq, digest)` committed: signatures of distinct replicas over the
/// canonical COMMIT payload for that replica (checked by `CommitCertificate::verify`). Stored
/// with every block, so a ledger can be audited offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitCertificate {
    /// The view the batch committed in.
    pub view: u64,
    /// Its sequence number.
    pub seq: u64,
    /// Its batch digest.
    pub digest: [u8; 32],
    /// A quorum of `(replica, signature over its COMMIT)`: the COMMIT payload is rebuilt from
    /// `(view, seq, digest, replica)`, so a certificate stores 2f+1 signatures and nothing else.
    pub commits: Vec<(NodeId, Signature64)>,
}

/// One committed sequence number, handed to the node in order, without gaps. A null request
/// (PBFT §4.4, filling a gap in a new view) has empty `requests` and digest
/// [`NULL_DIGEST`](crate::NULL_DIGEST).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedBatch {
    /// The sequence number, which is the block height.
    pub seq: u64,
    /// The view it committed in.
    pub view: u64,
    /// The client requests, in order.
    pub requests: Vec<Vec<u8>>,
    /// The app's digest of `requests`: what the certificate's replicas signed.
    pub digest: [u8; 32],
    /// The proof that it committed; it makes the batch self-certifying in a state transfer.
    pub certificate: CommitCertificate,
}

/// Committed batches with their commit certificates; self-certifying, so one correct responder
/// suffices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateResponse {
    /// The serving replica.
    pub replica: NodeId,
    /// Consecutive committed batches from the requested `from_seq`, as many as fit one message.
    pub batches: Vec<CommittedBatch>,
}

/// The normal-case PRE-PREPARE on the wire: the primary's signed header plus the batch it
/// names, ⟨⟨PRE-PREPARE, v, n, d⟩σp, m⟩ (PBFT §4.2). The outer envelope is signed by the
/// primary too (every wire message is signed by its sender); the batch is authenticated by the
/// header's digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The primary (signer of both the envelope and the header).
    pub replica: NodeId,
    /// The signed [`PrePrepare`] header: what prepared certificates and view changes carry.
    pub pre_prepare: SignedMessage,
    /// The batch the header's digest names.
    #[serde(with = "byte_strings")]
    pub requests: Vec<Vec<u8>>,
}

/// Ask a peer for the batch with `digest` (named by a pre-prepare for `seq` that we accepted
/// without its body: a NEW-VIEW's O set carries headers only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The replica missing the body (the signer, and where the answer goes).
    pub replica: NodeId,
    /// The highest seq whose header names it; a request at or below the stable checkpoint is
    /// stale.
    pub seq: u64,
    /// The digest the body must hash to.
    pub digest: [u8; 32],
}

/// A batch body in answer to a [`BatchRequest`]; the receiver recomputes the digest, so any
/// replica may serve it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The serving replica.
    pub replica: NodeId,
    /// The seq from the request.
    pub seq: u64,
    /// The digest asked for.
    pub digest: [u8; 32],
    /// The body; used only if the app's digest of it is `digest`.
    #[serde(with = "byte_strings")]
    pub requests: Vec<Vec<u8>>,
}

/// Every protocol message. The variant order is part of the wire format (postcard encodes the
/// variant index) — append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// A relayed client request (§4.1).
    Request(Request),
    /// A pre-prepare header on its own. Correct replicas send headers only inside other
    /// messages (a proposal, a NEW-VIEW's O, prepared proofs); one received alone is accepted
    /// like a proposal's and its body fetched.
    PrePrepare(PrePrepare),
    /// A backup's PREPARE (§4.2).
    Prepare(Prepare),
    /// A COMMIT (§4.2).
    Commit(Commit),
    /// A CHECKPOINT (§4.3).
    Checkpoint(Checkpoint),
    /// A VIEW-CHANGE (§4.4).
    ViewChange(ViewChange),
    /// A NEW-VIEW (§4.4).
    NewView(NewView),
    /// A state-transfer request (TOCS §5.3.2).
    StateRequest(StateRequest),
    /// A state-transfer answer (TOCS §5.3.2).
    StateResponse(StateResponse),
    /// The normal-case pre-prepare: signed header and batch (§4.2).
    Proposal(Proposal),
    /// A request for a batch body by digest.
    BatchRequest(BatchRequest),
    /// A batch body by digest.
    Batch(Batch),
    /// An idle replica's executed height (TOCS §5.2 status). Last, so that the indices of
    /// the other variants on the wire stay as they were.
    Status(StatusReport),
}

impl Payload {
    /// The replica that claims to have signed this payload.
    pub fn signer(&self) -> NodeId {
        match self {
            Payload::Request(m) => m.replica,
            Payload::PrePrepare(m) => m.replica,
            Payload::Prepare(m) => m.replica,
            Payload::Commit(m) => m.replica,
            Payload::Checkpoint(m) => m.replica,
            Payload::ViewChange(m) => m.replica,
            Payload::NewView(m) => m.replica,
            Payload::StateRequest(m) => m.replica,
            Payload::StateResponse(m) => m.replica,
            Payload::Proposal(m) => m.replica,
            Payload::BatchRequest(m) => m.replica,
            Payload::Batch(m) => m.replica,
            Payload::Status(m) => m.replica,
        }
    }

    /// Which kind of message this is (its metric label, and what tests and faults select on).
    pub fn kind(&self) -> MessageKind {
        match self {
            Payload::Request(_) => MessageKind::Request,
            Payload::PrePrepare(_) => MessageKind::PrePrepare,
            Payload::Prepare(_) => MessageKind::Prepare,
            Payload::Commit(_) => MessageKind::Commit,
            Payload::Checkpoint(_) => MessageKind::Checkpoint,
            Payload::ViewChange(_) => MessageKind::ViewChange,
            Payload::NewView(_) => MessageKind::NewView,
            Payload::StateRequest(_) => MessageKind::StateRequest,
            Payload::StateResponse(_) => MessageKind::StateResponse,
            Payload::Proposal(_) => MessageKind::Proposal,
            Payload::BatchRequest(_) => MessageKind::BatchRequest,
            Payload::Batch(_) => MessageKind::Batch,
            Payload::Status(_) => MessageKind::Status,
        }
    }
}

/// Postcard encoding of our own (in-memory, well-formed) values. Encoding into a Vec fails only
/// for a sequence of unknown length or a `Serialize` impl that errors, and none of these types
/// has either, so a failure is a bug: it stops here rather than signing, sending or persisting
/// empty bytes.
pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    match postcard::to_allocvec(v) {
        Ok(bytes) => bytes,
        Err(e) => panic!("BUG: cannot encode a {}: {e}", std::any::type_name::<T>()),
    }
}

/// Encodes a payload canonically.
pub fn encode_payload(p: &Payload) -> Vec<u8> {
    encode(p)
}

/// Decodes payload bytes and insists they are canonical (re-encoding gives the same bytes, no
/// trailing garbage), so that one logical message has exactly one signed form.
pub fn decode_payload(bytes: &[u8]) -> Result<Payload, Rejected> {
    let p: Payload =
        postcard::from_bytes(bytes).map_err(|_| Rejected::new(RejectReason::Malformed))?;
    if encode(&p) != bytes {
        return Err(Rejected::new(RejectReason::Malformed));
    }
    Ok(p)
}

/// Signs a payload: returns the envelope.
pub fn sign_message(payload: &Payload, key: &SigningKey) -> SignedMessage {
    let bytes = encode_payload(payload);
    let signature = sign_bytes(&bytes, key);
    SignedMessage {
        payload: bytes,
        signature,
    }
}

/// Signs a payload and returns the wire bytes (postcard of the `SignedMessage`).
pub fn sign(payload: &Payload, key: &SigningKey) -> Vec<u8> {
    sign_message(payload, key).to_wire()
}

/// Checks the signature of every `(message, signer)` pair not verified before (one batch
/// verification for all of them) and remembers them. Signers must already be checked to be
/// members.
pub(crate) fn verify_cached(
    cache: &mut VerifyCache,
    keys: &[VerifyingKey],
    items: &[(&SignedMessage, NodeId)],
) -> bool {
    cache.verify_all(
        keys,
        items
            .iter()
            .map(|(m, signer)| (m.payload.as_slice(), &m.signature, *signer)),
    )
}

/// Decodes a wire envelope (size-limited) without checking the signature.
pub fn decode_signed(bytes: &[u8]) -> Result<SignedMessage, Rejected> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Rejected::new(RejectReason::TooLarge));
    }
    let m: SignedMessage =
        postcard::from_bytes(bytes).map_err(|_| Rejected::new(RejectReason::Malformed))?;
    Ok(m)
}

/// Decodes wire bytes, checks the claimed signer is a member and verifies the signature over the
/// payload bytes exactly as received. Does not check protocol state (views, watermarks); the
/// replica does that.
pub fn decode_and_verify(
    bytes: &[u8],
    public_keys: &[VerifyingKey],
) -> Result<(Payload, SignedMessage), Rejected> {
    let m = decode_signed(bytes)?;
    let p = decode_payload(&m.payload)?;
    let key = public_keys
        .get(usize::try_from(p.signer()).unwrap_or(usize::MAX))
        .ok_or(Rejected::new(RejectReason::UnknownPeer))?;
    if !verify_bytes(&m.payload, &m.signature, key) {
        return Err(Rejected::new(RejectReason::BadSignature));
    }
    Ok((p, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i; 32])
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let keys = vec![key(1).verifying_key(), key(2).verifying_key()];
        let p = Payload::Commit(Commit {
            view: 3,
            seq: 9,
            digest: [7; 32],
            replica: 1,
        });
        let wire = sign(&p, &key(2));
        let (got, m) = decode_and_verify(&wire, &keys).unwrap();
        assert_eq!(got, p);
        assert_eq!(
            m.payload,
            encode_payload(&p),
            "verified over the bytes received"
        );
        // Signed by the wrong key.
        let forged = sign(&p, &key(1));
        assert_eq!(
            decode_and_verify(&forged, &keys).unwrap_err().reason,
            RejectReason::BadSignature
        );
        // Unknown signer.
        let p9 = Payload::Commit(Commit {
            view: 3,
            seq: 9,
            digest: [7; 32],
            replica: 9,
        });
        assert_eq!(
            decode_and_verify(&sign(&p9, &key(1)), &keys)
                .unwrap_err()
                .reason,
            RejectReason::UnknownPeer
        );
    }

    #[test]
    fn non_canonical_and_garbage_are_malformed() {
        let p = Payload::Prepare(Prepare {
            view: 1,
            seq: 2,
            digest: [0; 32],
            replica: 0,
        });
        let mut bytes = encode_payload(&p);
        bytes.push(0);
        assert_eq!(
            decode_payload(&bytes).unwrap_err().reason,
            RejectReason::Malformed
        );
        assert_eq!(
            decode_payload(&[200, 1, 2]).unwrap_err().reason,
            RejectReason::Malformed
        );
        // Overlong varint for view (1 encoded in two bytes) is not canonical.
        let canon = encode_payload(&p);
        let mut overlong = vec![canon[0], 0x81, 0x00];
        overlong.extend_from_slice(&canon[2..]);
        assert!(decode_payload(&overlong).is_err());
        assert!(decode_signed(&vec![0u8; MAX_MESSAGE_BYTES + 1]).is_err());
    }

    /// One payload of every kind, in `Payload` declaration order.
    fn one_of_each() -> Vec<Payload> {
        let header = sign_message(
            &Payload::PrePrepare(PrePrepare {
                view: 0,
                seq: 1,
                digest: [1; 32],
                replica: 0,
            }),
            &key(1),
        );
        vec![
            Payload::Request(Request {
                replica: 1,
                request: b"r".to_vec(),
            }),
            Payload::PrePrepare(PrePrepare {
                view: 0,
                seq: 1,
                digest: [1; 32],
                replica: 0,
            }),
            Payload::Prepare(Prepare {
                view: 0,
                seq: 1,
                digest: [1; 32],
                replica: 1,
            }),
            Payload::Commit(Commit {
                view: 0,
                seq: 1,
                digest: [1; 32],
                replica: 1,
            }),
            Payload::Checkpoint(Checkpoint {
                seq: 16,
                state_digest: [2; 32],
                replica: 1,
            }),
            Payload::ViewChange(ViewChange {
                new_view: 1,
                replica: 1,
                stable_seq: 0,
                stable_digest: [0; 32],
                checkpoint_proof: Vec::new(),
                prepared: Vec::new(),
            }),
            Payload::NewView(NewView {
                view: 1,
                replica: 1,
                view_changes: Vec::new(),
                pre_prepares: Vec::new(),
            }),
            Payload::StateRequest(StateRequest {
                replica: 1,
                from_seq: 1,
                to_seq: 2,
            }),
            Payload::StateResponse(StateResponse {
                replica: 1,
                batches: Vec::new(),
            }),
            Payload::Proposal(Proposal {
                replica: 0,
                pre_prepare: header,
                requests: vec![b"r".to_vec()],
            }),
            Payload::BatchRequest(BatchRequest {
                replica: 1,
                seq: 1,
                digest: [1; 32],
            }),
            Payload::Batch(Batch {
                replica: 1,
                seq: 1,
                digest: [1; 32],
                requests: Vec::new(),
            }),
            Payload::Status(StatusReport {
                replica: 1,
                executed: 3,
            }),
        ]
    }

    #[test]
    fn message_kind_is_read_from_the_wire_without_decoding_or_verifying() {
        let all = one_of_each();
        assert_eq!(all.len(), MessageKind::ALL.len());
        for (i, p) in all.iter().enumerate() {
            assert_eq!(p.kind(), MessageKind::ALL[i], "{p:?}");
            assert_eq!(encode_payload(p)[0] as usize, i, "variant index of {p:?}");
            let mut m = sign_message(p, &key(1));
            assert_eq!(MessageKind::of_wire(&m.to_wire()), Some(p.kind()));
            // Reading the kind checks nothing: a broken signature still names its kind.
            m.signature.0[0] ^= 1;
            assert_eq!(MessageKind::of_wire(&m.to_wire()), Some(p.kind()));
        }
        // The metric labels the node has always used; a proposal counts as a pre-prepare.
        let labels: Vec<&str> = MessageKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            labels,
            [
                "request",
                "pre_prepare",
                "prepare",
                "commit",
                "checkpoint",
                "view_change",
                "new_view",
                "state_request",
                "state_response",
                "pre_prepare",
                "batch_request",
                "batch",
                "status",
            ]
        );
        assert_eq!(MessageKind::of_wire(&[]), None);
        assert_eq!(MessageKind::of_wire(&[0xff]), None);
        // A payload whose variant index names no kind.
        let unknown = SignedMessage {
            payload: vec![13, 0],
            signature: Signature64([0; 64]),
        };
        assert_eq!(MessageKind::of_wire(&unknown.to_wire()), None);
        // An envelope whose payload is empty.
        let empty = SignedMessage {
            payload: Vec::new(),
            signature: Signature64([0; 64]),
        };
        assert_eq!(MessageKind::of_wire(&empty.to_wire()), None);
    }

    #[test]
    fn signature64_serde_json_and_postcard() {
        let s = crate::crypto::Signature64([5; 64]);
        let j = serde_json::to_string(&s);
        if let Ok(j) = j {
            let back: crate::crypto::Signature64 = serde_json::from_str(&j).unwrap();
            assert_eq!(back, s);
        }
        let b = postcard::to_allocvec(&s).unwrap();
        assert_eq!(b.len(), 65);
        let back: crate::crypto::Signature64 = postcard::from_bytes(&b).unwrap();
        assert_eq!(back, s);
    }
}

/// `Vec<Vec<u8>>` encoded as a sequence of byte strings: the same postcard bytes as nested
/// sequences, but each request is copied at once rather than byte by byte.
mod byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| serde_bytes::Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<serde_bytes::ByteBuf> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(serde_bytes::ByteBuf::into_vec).collect())
    }
}
