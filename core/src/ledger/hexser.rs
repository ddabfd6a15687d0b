//! Serde helper for fixed-size byte arrays: hex strings in human-readable formats (JSON, TOML:
//! what people read and type), compact byte strings in postcard (the wire and the disk).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Use as `#[serde(with = "crate::ledger::hexser")]` on a `[u8; N]` field.
pub fn serialize<S: Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&hex::encode(bytes))
    } else {
        serde_bytes::Bytes::new(bytes).serialize(s)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
    if d.is_human_readable() {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(s.as_bytes(), &mut out)
            .map_err(|e| D::Error::custom(format!("expected {} hex characters: {e}", 2 * N)))?;
        Ok(out)
    } else {
        Ok(serde_bytes::ByteArray::<N>::deserialize(d)?.into_array())
    }
}
