//! Node and client keys: one ed25519 secret per file (64 hex chars, mode 0600). A node's key is
//! both its libp2p identity (PeerId) and its PBFT signing key.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} must hold 64 hex characters (an ed25519 secret key)")]
    Format { path: String },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error(
        "key file {path} is accessible by other users (mode {mode:03o}); like ssh, faultline \
         refuses such keys: run `chmod 600 {path}`"
    )]
    Permissions { path: String, mode: u32 },
    #[error("not a valid ed25519 public key")]
    BadPublicKey,
}

/// A fresh key from the operating system's CSPRNG.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Parses 64 hex characters (surrounding whitespace allowed).
pub fn parse_secret(text: &str) -> Option<SigningKey> {
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).ok()?;
    Some(SigningKey::from_bytes(&secret))
}

/// Reads a key file, refusing one that group or others may access: a node's key is its
/// identity and its PBFT signing key, and a copy in another user's hands lets them sign as it.
pub fn read_key(path: &Path) -> Result<SigningKey, KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_secret(&text).ok_or_else(|| KeyError::Format {
        path: path.display().to_string(),
    })
}

/// Writes the key as hex with mode 0600; refuses to overwrite an existing file (losing a node's
/// key loses its identity in the cluster).
pub fn write_key(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes())
        .map_err(err)?;
    f.sync_all().map_err(err)
}

/// The libp2p PeerId of an ed25519 public key (what the network layer authenticates on every
/// connection). Derived with libp2p's own identity crate, the one the net crate uses, so the two
/// always agree (a node test checks it).
pub fn peer_id(public_key: &[u8; 32]) -> Result<libp2p_identity::PeerId, KeyError> {
    let pk = libp2p_identity::ed25519::PublicKey::try_from_bytes(public_key)
        .map_err(|_| KeyError::BadPublicKey)?;
    Ok(libp2p_identity::PublicKey::from(pk).to_peer_id())
}
