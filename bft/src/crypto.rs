//! Signing under the faultline domain prefix, signature bytes, and a cache of verified messages.
//!
//! Signature checking is the CPU bound of the system (≈ 35 µs per verify, ≈ 16 µs per signature
//! in a batch), so every signature is checked at most once: verified messages are remembered by
//! a hash of their exact bytes, and proofs (certificates, view changes) are checked with
//! `ed25519_dalek::verify_batch`.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Domain separation prefix: the bytes signed are `DOMAIN ‖ payload_bytes`, so a PBFT signature
/// can never be confused with anything else the same key signs (e.g. libp2p handshakes).
/// The signing domains of every key are listed in docs/PROTOCOL.md §6.
pub const DOMAIN: &[u8] = b"faultline-pbft-v1";

/// A 64-byte ed25519 signature that serde can carry (serde has no impls for `[u8; 64]`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature64(pub [u8; 64]);

impl fmt::Debug for Signature64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature64({})", hex::encode(self.0))
    }
}

impl Serialize for Signature64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Signature64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Signature64, E> {
                let arr: [u8; 64] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Signature64(arr))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Signature64, A::Error> {
                let mut arr = [0u8; 64];
                for (i, b) in arr.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<u8>()?.is_some() {
                    return Err(de::Error::invalid_length(65, &self));
                }
                Ok(Signature64(arr))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// The exact bytes a signature covers: `DOMAIN ‖ payload_bytes`.
pub fn signing_bytes(payload_bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DOMAIN.len() + payload_bytes.len());
    v.extend_from_slice(DOMAIN);
    v.extend_from_slice(payload_bytes);
    v
}

/// Signs already-encoded payload bytes under the domain prefix.
pub fn sign_bytes(payload_bytes: &[u8], key: &SigningKey) -> Signature64 {
    Signature64(key.sign(&signing_bytes(payload_bytes)).to_bytes())
}

/// Verifies one signature over `DOMAIN ‖ payload_bytes`.
pub fn verify_bytes(payload_bytes: &[u8], sig: &Signature64, key: &VerifyingKey) -> bool {
    key.verify(
        &signing_bytes(payload_bytes),
        &Signature::from_bytes(&sig.0),
    )
    .is_ok()
}

/// Verifies many `(payload_bytes, signature, key)` triples at once with `verify_batch`
/// (about half the cost per signature of single verification).
pub fn verify_many(items: &[(&[u8], Signature64, VerifyingKey)]) -> bool {
    match items.len() {
        0 => true,
        1 => verify_bytes(items[0].0, &items[0].1, &items[0].2),
        _ => {
            let msgs: Vec<Vec<u8>> = items.iter().map(|(p, _, _)| signing_bytes(p)).collect();
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
            let sigs: Vec<Signature> = items
                .iter()
                .map(|(_, s, _)| Signature::from_bytes(&s.0))
                .collect();
            let keys: Vec<VerifyingKey> = items.iter().map(|(_, _, k)| *k).collect();
            ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok()
        }
    }
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let out = h.finalize();
    let mut d = [0u8; 32];
    d.copy_from_slice(out.as_slice());
    d
}

/// Remembers which (payload, signature) pairs have already been verified, so that the same bytes
/// are never verified twice (a prepare seen directly and again inside a view change, a buffered
/// message replayed after a view change, a duplicate delivery). Bounded FIFO.
#[derive(Debug)]
pub(crate) struct VerifyCache {
    set: BTreeSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
    cap: usize,
}

impl VerifyCache {
    pub(crate) fn new(cap: usize) -> Self {
        VerifyCache {
            set: BTreeSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    pub(crate) fn key(payload: &[u8], sig: &Signature64) -> [u8; 32] {
        sha256(&[payload, &sig.0])
    }

    pub(crate) fn contains(&self, k: &[u8; 32]) -> bool {
        self.set.contains(k)
    }

    pub(crate) fn insert(&mut self, k: [u8; 32]) {
        if self.set.insert(k) {
            self.order.push_back(k);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

impl VerifyCache {
    /// Verifies every `(payload, signature, signer)` not already in the cache with one batch
    /// verification, and remembers them on success. `signer` indexes `keys`; an index outside
    /// it fails the whole check.
    pub(crate) fn verify_all<'a>(
        &mut self,
        keys: &[VerifyingKey],
        items: impl IntoIterator<Item = (&'a [u8], &'a Signature64, u64)>,
    ) -> bool {
        let mut todo = Vec::new();
        let mut cache_keys = Vec::new();
        for (payload, signature, signer) in items {
            let k = Self::key(payload, signature);
            if self.contains(&k) || cache_keys.contains(&k) {
                continue;
            }
            let Some(vk) = keys.get(signer as usize) else {
                return false;
            };
            todo.push((payload, *signature, *vk));
            cache_keys.push(k);
        }
        if !verify_many(&todo) {
            return false;
        }
        for k in cache_keys {
            self.insert(k);
        }
        true
    }
}
