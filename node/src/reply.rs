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

const BATCH_DOMAIN: &[u8] = b"faultline-batch-reply-v1";

/// One entry of a `POST /v1/txs` reply.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchResult {
    pub tx_hash: [u8; 32],
    pub height: u64,
    /// The result as the API returns it (`"ok"`, `{"error":..}`, or `{"rejected":..}` for a
    /// stale seq, at height 0).
    pub result: serde_json::Value,
}

/// The bytes a node signs once for a whole batch reply (docs/SPEC.md "HTTP API"):
/// `b"faultline-batch-reply-v1"` ‖ count (u32 BE) ‖ per result: tx hash ‖ height (u64 BE) ‖
/// result JSON length (u32 BE) ‖ result as compact JSON. One signature per request instead of
/// one per transaction: signing was a visible share of a saturated node's CPU.
pub fn batch_signing_bytes(results: &[BatchResult]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BATCH_DOMAIN.len() + 4 + results.len() * 50);
    out.extend_from_slice(BATCH_DOMAIN);
    out.extend_from_slice(
        &u32::try_from(results.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for r in results {
        out.extend_from_slice(&r.tx_hash);
        out.extend_from_slice(&r.height.to_be_bytes());
        let json = serde_json::to_vec(&r.result).unwrap_or_default();
        out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&json);
    }
    out
}

pub fn sign_batch(key: &SigningKey, results: &[BatchResult]) -> [u8; 64] {
    key.sign(&batch_signing_bytes(results)).to_bytes()
}

/// Whether `sig` is `node_key`'s signature over the batch reply.
pub fn verify_batch(node_key: &[u8; 32], results: &[BatchResult], sig: &[u8; 64]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(node_key) else {
        return false;
    };
    vk.verify(&batch_signing_bytes(results), &Signature::from_bytes(sig))
        .is_ok()
}

/// Parses the `results` of a batch reply as JSON back into what was signed (client side).
pub fn parse_batch_results(body: &serde_json::Value) -> Option<Vec<BatchResult>> {
    body.get("results")?
        .as_array()?
        .iter()
        .map(|e| {
            let mut tx_hash = [0u8; 32];
            hex::decode_to_slice(e.get("tx_hash")?.as_str()?, &mut tx_hash).ok()?;
            Some(BatchResult {
                tx_hash,
                height: e.get("height")?.as_u64()?,
                result: e.get("result")?.clone(),
            })
        })
        .collect()
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

    #[test]
    fn a_batch_reply_signs_every_result_in_order() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let pk = key.verifying_key().to_bytes();
        let results = vec![
            BatchResult {
                tx_hash: [1; 32],
                height: 5,
                result: serde_json::json!("ok"),
            },
            BatchResult {
                tx_hash: [2; 32],
                height: 5,
                result: serde_json::json!({"error": "insufficient funds"}),
            },
        ];
        let sig = sign_batch(&key, &results);
        assert!(verify_batch(&pk, &results, &sig));
        let mut swapped = results.clone();
        swapped.swap(0, 1);
        assert!(!verify_batch(&pk, &swapped, &sig));
        let mut changed = results.clone();
        changed[1].height = 6;
        assert!(!verify_batch(&pk, &changed, &sig));
        // The exact layout of docs/SPEC.md: domain, count, then hash, height, len, JSON.
        let b = batch_signing_bytes(&results[..1]);
        let mut want = b"faultline-batch-reply-v1".to_vec();
        want.extend_from_slice(&1u32.to_be_bytes());
        want.extend_from_slice(&[1; 32]);
        want.extend_from_slice(&5u64.to_be_bytes());
        want.extend_from_slice(&4u32.to_be_bytes());
        want.extend_from_slice(b"\"ok\"");
        assert_eq!(b, want);
        // What the API sends parses back into what was signed.
        let body = serde_json::json!({"results": [
            {"tx_hash": hex::encode([1u8; 32]), "height": 5, "result": "ok"}
        ]});
        assert_eq!(parse_batch_results(&body).unwrap(), results[..1].to_vec());
    }
}
