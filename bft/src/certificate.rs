//! Commit certificates: the 2f+1 COMMIT signatures that prove a batch committed (PBFT §4.2
//! committed predicate). Stored with every block so a ledger can be audited offline
//! (`faultline verify`) and used to validate state-transfer responses (TOCS §5.3.2).

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;
use thiserror::Error;

use crate::config::{quorum, NodeId};
use crate::crypto::{verify_many, Signature64};
use crate::message::{encode_payload, Commit, CommitCertificate, CommittedBatch, Payload};

/// Digest of the null request (an empty batch). The app is never asked to digest an empty batch.
pub const NULL_DIGEST: [u8; 32] = [0u8; 32];

/// Why a commit certificate is invalid.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CertificateError {
    /// Fewer than a quorum of distinct replicas signed: that would not prove the batch
    /// committed at a correct replica (PBFT §4.2 committed predicate).
    #[error("certificate has {have} distinct signers, needs {need}")]
    TooFewSigners {
        /// Distinct signers present.
        have: usize,
        /// The quorum.
        need: usize,
    },
    /// A signer id outside the cluster.
    #[error("signer {0} is not a cluster member")]
    UnknownSigner(NodeId),
    /// The same replica listed twice: it would be counted twice towards the quorum.
    #[error("signer {0} appears twice")]
    DuplicateSigner(NodeId),
    /// Some signature does not verify over that replica's COMMIT.
    #[error("a commit signature is invalid")]
    BadSignature,
    /// The certificate is for another (view, seq, digest) than the batch it comes with.
    #[error("certificate is for seq {cert_seq} / another digest than batch seq {batch_seq}")]
    Mismatch {
        /// The certificate's seq.
        cert_seq: u64,
        /// The batch's seq.
        batch_seq: u64,
    },
}

/// The payload bytes a replica signs when it commits `(view, seq, digest)`.
pub fn commit_payload_bytes(view: u64, seq: u64, digest: [u8; 32], replica: NodeId) -> Vec<u8> {
    encode_payload(&Payload::Commit(Commit {
        view,
        seq,
        digest,
        replica,
    }))
}

impl CommitCertificate {
    /// Checks that at least the quorum (2f+1 for n = 3f+1) of distinct members signed the
    /// canonical COMMIT for `(view, seq, digest)`. Signatures are checked with one batch verify.
    pub fn verify(&self, public_keys: &[VerifyingKey], f: usize) -> Result<(), CertificateError> {
        let need = quorum(public_keys.len(), f);
        let mut seen = BTreeSet::new();
        let mut payloads = Vec::with_capacity(self.commits.len());
        for (id, _) in &self.commits {
            if *id >= public_keys.len() as u64 {
                return Err(CertificateError::UnknownSigner(*id));
            }
            if !seen.insert(*id) {
                return Err(CertificateError::DuplicateSigner(*id));
            }
            payloads.push(commit_payload_bytes(self.view, self.seq, self.digest, *id));
        }
        if seen.len() < need {
            return Err(CertificateError::TooFewSigners {
                have: seen.len(),
                need,
            });
        }
        let items: Vec<(&[u8], Signature64, VerifyingKey)> = self
            .commits
            .iter()
            .zip(&payloads)
            .map(|((id, sig), p)| (p.as_slice(), *sig, public_keys[*id as usize]))
            .collect();
        if verify_many(&items) {
            Ok(())
        } else {
            Err(CertificateError::BadSignature)
        }
    }
}

impl CommittedBatch {
    /// Checks the certificate and that it certifies this batch's seq, view and digest. (The batch
    /// digest against the requests is the app's business: `App::batch_digest`.)
    pub fn verify_certificate(
        &self,
        public_keys: &[VerifyingKey],
        f: usize,
    ) -> Result<(), CertificateError> {
        if self.certificate.seq != self.seq
            || self.certificate.digest != self.digest
            || self.certificate.view != self.view
        {
            return Err(CertificateError::Mismatch {
                cert_seq: self.certificate.seq,
                batch_seq: self.seq,
            });
        }
        self.certificate.verify(public_keys, f)
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::crypto::sign_bytes;
    use crate::message::sign_message;

    fn key(i: NodeId) -> SigningKey {
        SigningKey::from_bytes(&[i as u8 + 1; 32])
    }

    fn keys(n: u64) -> Vec<VerifyingKey> {
        (0..n).map(|i| key(i).verifying_key()).collect()
    }

    fn cert(signers: &[NodeId]) -> CommitCertificate {
        CommitCertificate {
            view: 2,
            seq: 9,
            digest: [7; 32],
            commits: signers
                .iter()
                .map(|i| {
                    (
                        *i,
                        sign_bytes(&commit_payload_bytes(2, 9, [7; 32], *i), &key(*i)),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn commit_payload_bytes_are_what_a_replica_signs_in_its_commit() {
        let m = sign_message(
            &Payload::Commit(Commit {
                view: 3,
                seq: 9,
                digest: [7; 32],
                replica: 1,
            }),
            &key(1),
        );
        assert_eq!(m.payload, commit_payload_bytes(3, 9, [7; 32], 1));
    }

    #[test]
    fn a_certificate_needs_a_quorum_of_distinct_members_with_valid_signatures() {
        let k = keys(4); // f = 1, quorum 3
        assert_eq!(cert(&[0, 1, 3]).verify(&k, 1), Ok(()));
        assert_eq!(cert(&[0, 1, 2, 3]).verify(&k, 1), Ok(()));
        assert_eq!(
            cert(&[0, 3]).verify(&k, 1),
            Err(CertificateError::TooFewSigners { have: 2, need: 3 })
        );
        assert_eq!(
            cert(&[0, 3, 3]).verify(&k, 1),
            Err(CertificateError::DuplicateSigner(3))
        );
        assert_eq!(
            cert(&[0, 1, 4]).verify(&k, 1),
            Err(CertificateError::UnknownSigner(4))
        );
        // Replica 3's entry carries replica 1's signature over replica 3's COMMIT.
        let mut c = cert(&[0, 1, 2]);
        c.commits[2].1 = sign_bytes(&commit_payload_bytes(2, 9, [7; 32], 2), &key(1));
        assert_eq!(c.verify(&k, 1), Err(CertificateError::BadSignature));
        // Signatures for another digest.
        let mut c = cert(&[0, 1, 2]);
        c.digest = [8; 32];
        assert_eq!(c.verify(&k, 1), Err(CertificateError::BadSignature));
    }

    #[test]
    fn a_batch_is_certified_only_by_its_own_certificate() {
        let k = keys(4);
        let mut b = CommittedBatch {
            seq: 9,
            view: 2,
            requests: Vec::new(),
            digest: [7; 32],
            certificate: cert(&[0, 1, 2]),
        };
        assert_eq!(b.verify_certificate(&k, 1), Ok(()));
        b.seq = 10;
        assert!(matches!(
            b.verify_certificate(&k, 1),
            Err(CertificateError::Mismatch { .. })
        ));
        b.seq = 9;
        b.view = 3;
        assert!(matches!(
            b.verify_certificate(&k, 1),
            Err(CertificateError::Mismatch { .. })
        ));
    }
}
