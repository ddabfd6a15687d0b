//! Durable record layout (keys under `bft/`). What a replica signs is written here in the same
//! `Ready` as the message, and the driver applies persist ops before sending, so after a crash
//! the restored replica remembers every vote it may have cast (PBFT §4.6 / TOCS §4 recovery
//! assumption that replicas keep their signed state).

use serde::{Deserialize, Serialize};

pub(crate) const VIEW: &[u8] = b"bft/view";
pub(crate) const EXEC: &[u8] = b"bft/exec";
pub(crate) const STABLE: &[u8] = b"bft/stable";
pub(crate) const VC: &[u8] = b"bft/vc";
/// The NEW-VIEW that installed this replica's latest view (sent as its primary or accepted), so
/// after a restart it can still hand it to replicas that missed it.
pub(crate) const NV: &[u8] = b"bft/nv";
/// Accepted (or, at the primary, issued) pre-prepare per seq.
pub(crate) const PP: &[u8] = b"bft/pp/";
/// Own prepare per seq.
pub(crate) const PR: &[u8] = b"bft/pr/";
/// Own commit per seq.
pub(crate) const CM: &[u8] = b"bft/cm/";
/// Prepared certificate per seq (the P set for view changes).
pub(crate) const PC: &[u8] = b"bft/pc/";
/// Own checkpoint per seq.
pub(crate) const CK: &[u8] = b"bft/ck/";
/// Batch body per seq: `(digest, requests)` of the latest body known for it. Headers and
/// certificates carry digests only, so the bodies a replica accepted must survive a restart on
/// their own (to execute them and to serve them to replicas that lack them).
pub(crate) const BD: &[u8] = b"bft/bd/";

pub(crate) const SEQ_PREFIXES: [&[u8]; 6] = [PP, PR, CM, PC, CK, BD];

pub(crate) fn seq_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn parse_seq_key(key: &[u8]) -> Option<(&'static [u8], u64)> {
    for p in SEQ_PREFIXES {
        if let Some(rest) = key.strip_prefix(p) {
            let arr: [u8; 8] = rest.try_into().ok()?;
            return Some((p, u64::from_be_bytes(arr)));
        }
    }
    None
}

/// The view the replica is in and whether it is changing views; persisted before any message
/// of that view leaves so a restarted replica never goes back to an older view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ViewState {
    pub view: u64,
    pub in_view_change: bool,
    pub vc_consecutive: u32,
}
