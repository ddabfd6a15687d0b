//! The signed reply of `POST /v1/tx`: each node signs what it applied so that a PBFT client can
//! accept a result once f+1 nodes (at least one of them correct) sent matching signed replies.
//!
//! Canonical bytes signed with the node's ed25519 key:
//! `b"faultline-reply-v1"` ‖ tx hash (32 bytes) ‖ height (u64 big-endian) ‖ the result as
//! compact JSON (`"ok"` or `{"error":"insufficient funds"}`). The node id is not signed: replies
//! from different nodes about the same commit must match byte for byte.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use serde::{Deserialize, Serialize};

use crate::ledger::{hexser, Hash, TxOutcome};

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

/// What became of one transaction of a batch: applied with its outcome, or refused because its
/// seq is stale (docs/SPEC.md: height 0, `{"rejected":"<why>"}`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntryResult {
    Applied(TxOutcome),
    Rejected { rejected: String },
}

/// One entry of a batch reply's `results`, as signed ([`sign_batch`]) and as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEntry {
    pub height: u64,
    pub result: EntryResult,
    #[serde(with = "hexser")]
    pub tx_hash: Hash,
}

/// The bytes a node signs once for a whole batch reply (docs/SPEC.md "HTTP API"):
/// `b"faultline-batch-reply-v1"` ‖ count (u32 BE) ‖ per result: tx hash ‖ height (u64 BE) ‖
/// result JSON length (u32 BE) ‖ result as compact JSON. One signature per request instead of
/// one per transaction: signing was a visible share of a saturated node's CPU.
pub fn batch_signing_bytes(results: &[BatchEntry]) -> Vec<u8> {
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

pub fn sign_batch(key: &SigningKey, results: &[BatchEntry]) -> [u8; 64] {
    key.sign(&batch_signing_bytes(results)).to_bytes()
}

/// Whether `sig` is `node_key`'s signature over the batch reply.
pub fn verify_batch(node_key: &[u8; 32], results: &[BatchEntry], sig: &[u8; 64]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(node_key) else {
        return false;
    };
    vk.verify(&batch_signing_bytes(results), &Signature::from_bytes(sig))
        .is_ok()
}

const READ_DOMAIN: &[u8] = b"faultline-read-reply-v1";

/// What a signed read reply vouches for: the state of one key or account at one height.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReadValue {
    /// `GET /v1/kv/{key}`; `value` is None for an absent key.
    Kv { key: String, value: Option<String> },
    /// `GET /v1/balances/{account}`; an account never credited has balance 0.
    Balance { account: String, balance: u64 },
}

impl ReadValue {
    /// The value as the CLI prints it (`<absent>` for a missing key).
    pub fn display_value(&self) -> String {
        match self {
            ReadValue::Kv { value: Some(v), .. } => v.clone(),
            ReadValue::Kv { value: None, .. } => "<absent>".into(),
            ReadValue::Balance { balance, .. } => balance.to_string(),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The bytes a node signs for a read reply (docs/SPEC.md "Signed read replies"):
/// `b"faultline-read-reply-v1"` ‖ kind (1 byte: kv=1, balance=2) ‖ key or account (u32 BE
/// length ‖ UTF-8) ‖ height (u64 BE) ‖ for kv: 0 (absent) or 1 ‖ value (u32 BE length ‖ UTF-8);
/// for a balance: the balance (u64 BE). As for tx replies the node id is not signed, so correct
/// replicas at the same height send byte-identical statements.
pub fn read_signing_bytes(read: &ReadValue, height: u64) -> Vec<u8> {
    match read {
        ReadValue::Kv { key, value } => kv_signing_bytes(key, value.as_deref(), height),
        ReadValue::Balance { account, balance } => balance_signing_bytes(account, *balance, height),
    }
}

fn kv_signing_bytes(key: &str, value: Option<&str>, height: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(READ_DOMAIN.len() + 64);
    out.extend_from_slice(READ_DOMAIN);
    out.push(1);
    put_str(&mut out, key);
    out.extend_from_slice(&height.to_be_bytes());
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_str(&mut out, v);
        }
    }
    out
}

fn balance_signing_bytes(account: &str, balance: u64, height: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(READ_DOMAIN.len() + 64);
    out.extend_from_slice(READ_DOMAIN);
    out.push(2);
    put_str(&mut out, account);
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&balance.to_be_bytes());
    out
}

/// [`sign_read`] of a kv read, for a server that holds the key and value apart (no copy of a
/// value of up to 64 KiB just to sign it).
pub fn sign_kv(key_pair: &SigningKey, key: &str, value: Option<&str>, height: u64) -> [u8; 64] {
    key_pair
        .sign(&kv_signing_bytes(key, value, height))
        .to_bytes()
}

/// [`sign_read`] of a balance read.
pub fn sign_balance(key: &SigningKey, account: &str, balance: u64, height: u64) -> [u8; 64] {
    key.sign(&balance_signing_bytes(account, balance, height))
        .to_bytes()
}

pub fn sign_read(key: &SigningKey, read: &ReadValue, height: u64) -> [u8; 64] {
    key.sign(&read_signing_bytes(read, height)).to_bytes()
}

/// Whether `sig` is `node_key`'s signature over the read reply.
pub fn verify_read(node_key: &[u8; 32], read: &ReadValue, height: u64, sig: &[u8; 64]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(node_key) else {
        return false;
    };
    vk.verify(
        &read_signing_bytes(read, height),
        &Signature::from_bytes(sig),
    )
    .is_ok()
}

/// A read reply as the API sends it, before its signature is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReply {
    pub node: u64,
    pub read: ReadValue,
    pub height: u64,
    pub signature: [u8; 64],
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
            BatchEntry {
                tx_hash: [1; 32],
                height: 5,
                result: EntryResult::Applied(TxOutcome::Ok),
            },
            BatchEntry {
                tx_hash: [2; 32],
                height: 5,
                result: EntryResult::Applied(TxOutcome::Error("insufficient funds".into())),
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
    }

    #[test]
    fn read_replies_sign_the_documented_bytes() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let pk = key.verifying_key().to_bytes();
        let kv = ReadValue::Kv {
            key: "k".into(),
            value: Some("v".into()),
        };
        let mut want = b"faultline-read-reply-v1".to_vec();
        want.push(1);
        want.extend_from_slice(&1u32.to_be_bytes());
        want.extend_from_slice(b"k");
        want.extend_from_slice(&9u64.to_be_bytes());
        want.push(1);
        want.extend_from_slice(&1u32.to_be_bytes());
        want.extend_from_slice(b"v");
        assert_eq!(read_signing_bytes(&kv, 9), want);
        let absent = ReadValue::Kv {
            key: "k".into(),
            value: None,
        };
        assert!(read_signing_bytes(&absent, 9).ends_with(&[0]));
        let bal = ReadValue::Balance {
            account: "alice".into(),
            balance: 5,
        };
        let b = read_signing_bytes(&bal, 2);
        assert_eq!(b[READ_DOMAIN.len()], 2);
        assert!(b.ends_with(&5u64.to_be_bytes()));

        let sig = sign_read(&key, &kv, 9);
        assert!(verify_read(&pk, &kv, 9, &sig));
        assert!(!verify_read(&pk, &kv, 10, &sig));
        assert!(!verify_read(&pk, &absent, 9, &sig));
        // The signers that hold key and value apart sign the same bytes.
        assert_eq!(sign_kv(&key, "k", Some("v"), 9), sig);
        assert_eq!(sign_kv(&key, "k", None, 9), sign_read(&key, &absent, 9));
        assert_eq!(sign_balance(&key, "alice", 5, 2), sign_read(&key, &bal, 2));
    }
}
