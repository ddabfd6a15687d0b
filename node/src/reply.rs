//! The signed reply of `POST /v1/tx`: each node signs what it applied so that a PBFT client can
//! accept a result once f+1 nodes (at least one of them correct) sent matching signed replies.
//!
//! Canonical bytes signed with the node's ed25519 key:
//! `b"faultline-reply-v1"` ‖ tx hash (32 bytes) ‖ height (u64 big-endian) ‖ the result as
//! compact JSON (`"ok"` or `{"error":"insufficient funds"}`). The node id is not signed: replies
//! from different nodes about the same commit must match byte for byte.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::ledger::TxOutcome;

const DOMAIN: &[u8] = b"faultline-reply-v1";

/// The bytes a node signs for a committed transaction.
pub fn signing_bytes(tx_hash: &[u8; 32], height: u64, result: &TxOutcome) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 40 + 32);
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(tx_hash);
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&serde_json::to_vec(result).unwrap_or_default());
    out
}

pub fn sign(key: &SigningKey, tx_hash: &[u8; 32], height: u64, result: &TxOutcome) -> [u8; 64] {
    key.sign(&signing_bytes(tx_hash, height, result)).to_bytes()
}

/// Whether `sig` is `node_key`'s signature over the reply.
pub fn verify(
    node_key: &[u8; 32],
    tx_hash: &[u8; 32],
    height: u64,
    result: &TxOutcome,
    sig: &[u8; 64],
) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(node_key) else {
        return false;
    };
    vk.verify(
        &signing_bytes(tx_hash, height, result),
        &Signature::from_bytes(sig),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_verifies_only_with_the_signer_and_the_same_contents() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let other = SigningKey::from_bytes(&[4u8; 32])
            .verifying_key()
            .to_bytes();
        let pk = key.verifying_key().to_bytes();
        let hash = [9u8; 32];
        let ok = TxOutcome::Ok;
        let sig = sign(&key, &hash, 7, &ok);
        assert!(verify(&pk, &hash, 7, &ok, &sig));
        assert!(!verify(&other, &hash, 7, &ok, &sig));
        assert!(!verify(&pk, &hash, 8, &ok, &sig));
        let err = TxOutcome::Error("insufficient funds".into());
        assert!(!verify(&pk, &hash, 7, &err, &sig));
        // The signed result is the same JSON the API returns.
        assert!(signing_bytes(&hash, 7, &err).ends_with(br#"{"error":"insufficient funds"}"#));
    }
}
