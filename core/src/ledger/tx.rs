//! Signed client transactions exactly as docs/SPEC.md "Transactions" defines them: the signing
//! bytes, the tx hash, and batch verification of client signatures.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Domain prefix of the transaction signing bytes (docs/SPEC.md "Transactions").
pub const TX_DOMAIN: &[u8] = b"faultline-tx-v1";

/// Largest key, value or account name accepted, so one transaction stays small and a hostile
/// client cannot make every replica store megabytes per request.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// The operation a client asks the ledger to perform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Transfer {
        from: String,
        to: String,
        amount: u64,
    },
    /// A PBFT read marker (docs/SPEC.md "Read markers"): signed by a *replica's* key, never a
    /// client's, with a fresh random `seq` as its nonce. It changes nothing; a replica orders
    /// one through pre-prepare/prepare/commit to give a linearizable read a position in the
    /// order (Castro–Liskov TOCS §5.1.3: a read that is not served by the read-only
    /// optimisation is "ordered like a regular request"), and answers the read once the block
    /// holding it is executed. A marker cannot have been ordered before the read began because
    /// nobody knew its nonce and only that replica can sign it.
    Read {},
}

impl Op {
    /// Tag byte in the signing bytes: put=1, delete=2, transfer=3, read marker=5 (4 is kept
    /// for the contract's planned `reconfigure`).
    pub fn tag(&self) -> u8 {
        match self {
            Op::Put { .. } => 1,
            Op::Delete { .. } => 2,
            Op::Transfer { .. } => 3,
            Op::Read {} => 5,
        }
    }

    /// A PBFT read marker ([`Op::Read`]): issued by replicas only, applied as nothing.
    pub fn is_read_marker(&self) -> bool {
        matches!(self, Op::Read {})
    }

    fn fields_too_large(&self) -> bool {
        let big = |s: &String| s.len() > MAX_FIELD_BYTES;
        match self {
            Op::Put { key, value } => big(key) || big(value),
            Op::Delete { key } => big(key),
            Op::Transfer { from, to, .. } => big(from) || big(to),
            Op::Read {} => false,
        }
    }
}

/// A client-signed transaction. JSON: `{"client":"<hex>","seq":N,"op":{...},"sig":"<hex>"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tx {
    #[serde(with = "super::hexser")]
    pub client: [u8; 32],
    pub seq: u64,
    pub op: Op,
    #[serde(with = "super::hexser")]
    pub sig: [u8; 64],
}

/// Why a transaction is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("the client public key is not a valid ed25519 point")]
    BadClientKey,
    #[error("the transaction signature does not verify")]
    BadSignature,
    #[error("a key, value or account name is longer than {MAX_FIELD_BYTES} bytes")]
    FieldTooLarge,
    #[error("the client key is not a permitted client of this cluster")]
    UnknownClient,
}

/// The permitted clients' public keys, decompressed once. Decompressing a key is a field
/// exponentiation, as costly as half a signature check; doing it per transaction was the
/// largest single item in a saturated node's profile. Looking a key up here is also how a node
/// refuses an unknown client before spending any signature work on it.
#[derive(Clone, Debug, Default)]
pub struct ClientKeys {
    keys: std::collections::HashMap<[u8; 32], VerifyingKey>,
}

impl ClientKeys {
    /// Fails with the first key that is not a valid ed25519 point.
    pub fn new(keys: impl IntoIterator<Item = [u8; 32]>) -> Result<ClientKeys, [u8; 32]> {
        let mut map = std::collections::HashMap::new();
        for k in keys {
            map.insert(k, VerifyingKey::from_bytes(&k).map_err(|_| k)?);
        }
        Ok(ClientKeys { keys: map })
    }

    pub fn contains(&self, client: &[u8; 32]) -> bool {
        self.keys.contains_key(client)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Verifies transactions of permitted clients against their cached keys: an unknown client is
/// refused before any signature is checked.
pub fn verify_batch_with(txs: &[Tx], clients: &ClientKeys) -> Result<(), (usize, TxError)> {
    let mut keys = Vec::with_capacity(txs.len());
    for (i, tx) in txs.iter().enumerate() {
        if tx.op.fields_too_large() {
            return Err((i, TxError::FieldTooLarge));
        }
        let key = clients
            .keys
            .get(&tx.client)
            .ok_or((i, TxError::UnknownClient))?;
        keys.push(*key);
    }
    verify_with_keys(txs, &keys)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Field lengths are capped at MAX_FIELD_BYTES before signing/verifying, and String lengths
    // fit in u32 on every platform we build for; saturate rather than wrap regardless.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The bytes a client signs (docs/SPEC.md "Transactions"): domain ‖ client key ‖ seq BE ‖ op tag ‖
/// op fields, strings as u32 BE length + UTF-8, amount as u64 BE.
pub fn signing_bytes(client: &[u8; 32], seq: u64, op: &Op) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 16);
    out.extend_from_slice(TX_DOMAIN);
    out.extend_from_slice(client);
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(op.tag());
    match op {
        Op::Put { key, value } => {
            put_str(&mut out, key);
            put_str(&mut out, value);
        }
        Op::Delete { key } => put_str(&mut out, key),
        Op::Transfer { from, to, amount } => {
            put_str(&mut out, from);
            put_str(&mut out, to);
            out.extend_from_slice(&amount.to_be_bytes());
        }
        Op::Read {} => {}
    }
    out
}

impl Tx {
    /// Builds and signs a transaction with the client's key.
    pub fn sign(key: &SigningKey, seq: u64, op: Op) -> Tx {
        let client = key.verifying_key().to_bytes();
        let sig = key.sign(&signing_bytes(&client, seq, &op)).to_bytes();
        Tx {
            client,
            seq,
            op,
            sig,
        }
    }

    pub fn signing_bytes(&self) -> Vec<u8> {
        signing_bytes(&self.client, self.seq, &self.op)
    }

    /// SHA-256 of the signing bytes followed by the 64 signature bytes (docs/SPEC.md): the tx's
    /// identity in blocks, digests and replies.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.signing_bytes());
        h.update(self.sig);
        h.finalize().into()
    }

    /// Verifies this one signature (use [`verify_batch`] for many).
    pub fn verify(&self) -> Result<(), TxError> {
        if self.op.fields_too_large() {
            return Err(TxError::FieldTooLarge);
        }
        let key = VerifyingKey::from_bytes(&self.client).map_err(|_| TxError::BadClientKey)?;
        key.verify_strict(&self.signing_bytes(), &Signature::from_bytes(&self.sig))
            .map_err(|_| TxError::BadSignature)
    }
}

/// Verifies many client signatures at once with `ed25519_dalek::verify_batch` (about half the
/// cost per signature of one-by-one checks). On failure falls back to one-by-one checks to name
/// the first bad transaction, so a single forged tx costs extra time only for its own batch.
pub fn verify_batch(txs: &[Tx]) -> Result<(), (usize, TxError)> {
    if txs.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(txs.len());
    for (i, tx) in txs.iter().enumerate() {
        if tx.op.fields_too_large() {
            return Err((i, TxError::FieldTooLarge));
        }
        keys.push(VerifyingKey::from_bytes(&tx.client).map_err(|_| (i, TxError::BadClientKey))?);
    }
    verify_with_keys(txs, &keys)
}

/// `keys[i]` is `txs[i]`'s client key, already decompressed.
fn verify_with_keys(txs: &[Tx], keys: &[VerifyingKey]) -> Result<(), (usize, TxError)> {
    if txs.is_empty() {
        return Ok(());
    }
    let msgs: Vec<Vec<u8>> = txs.iter().map(Tx::signing_bytes).collect();
    let msg_refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let sigs: Vec<Signature> = txs.iter().map(|t| Signature::from_bytes(&t.sig)).collect();
    if ed25519_dalek::verify_batch(&msg_refs, &sigs, keys).is_ok() {
        return Ok(());
    }
    for (i, (tx, key)) in txs.iter().zip(keys).enumerate() {
        key.verify_strict(&msgs[i], &Signature::from_bytes(&tx.sig))
            .map_err(|_| (i, TxError::BadSignature))?;
    }
    // verify_batch rejected but every single check passed: only possible for signatures that
    // are valid one-by-one but not under the batch equation (small-order components).
    Err((0, TxError::BadSignature))
}
