//! Cluster configuration: who the replicas are and the protocol's tunables.

use ed25519_dalek::VerifyingKey;
use thiserror::Error;

/// A replica's index in `Config::public_keys`. Ids are `0..n`; the primary of view `v` is `v mod n`
/// (PBFT §4.1).
pub type NodeId = u64;

/// Static configuration of one replica. Every replica of a cluster must use the same
/// `public_keys`, `checkpoint_interval` and `watermark_window`, otherwise their watermarks and
/// quorums disagree.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's id (index into `public_keys`).
    pub id: NodeId,
    /// Verifying keys of all replicas; the index is the `NodeId`.
    pub public_keys: Vec<VerifyingKey>,
    /// K: a checkpoint is taken every K sequence numbers (PBFT §4.3). Default 16.
    pub checkpoint_interval: u64,
    /// L: sequence numbers are accepted only in `(h, h + L]` where h is the last stable
    /// checkpoint (PBFT §4.2 watermarks). Must be a multiple of K. Default 4K.
    pub watermark_window: u64,
    /// Maximum number of requests in one pre-prepare. Default 256.
    pub max_batch: usize,
    /// The size budget of every message this replica sends (the network refuses larger
    /// frames). Batches are cut by bytes as well as by count so that a pre-prepare with its
    /// batch, and a committed batch with its certificate in a state-transfer reply, always fit;
    /// see [`Config::batch_budget`]. Default 4 MiB.
    pub max_message_bytes: usize,
    /// Base view-change timeout T in ticks; doubled for each consecutive view change (§4.5.2).
    pub view_change_timeout_ticks: u32,
    /// At most this many doublings of T (default 3, so the timeout tops out at 8T). The paper's
    /// unbounded doubling lets a long stretch of failed view changes (a partition, a silent
    /// primary) push the timeout so high that the cluster sits idle long after the network
    /// heals; a cap keeps recovery prompt and is still live whenever messages take less than
    /// 2^cap · T to arrive.
    pub max_view_change_doublings: u32,
    /// How long a backup waits for a request it knows about to execute before it suspects the
    /// primary and starts a view change (§4.4). Also the state-transfer retry period.
    pub request_timeout_ticks: u32,
}

impl Config {
    /// A configuration with the documented defaults (K = 16, L = 64, batch 256, T = 20 doubling at
    /// most 3 times, request timeout 40 ticks).
    pub fn new(id: NodeId, public_keys: Vec<VerifyingKey>) -> Self {
        Config {
            id,
            public_keys,
            checkpoint_interval: 16,
            watermark_window: 64,
            max_batch: 256,
            max_message_bytes: 4 << 20,
            view_change_timeout_ticks: 20,
            max_view_change_doublings: 3,
            request_timeout_ticks: 40,
        }
    }

    /// Number of replicas.
    pub fn n(&self) -> usize {
        self.public_keys.len()
    }

    /// Number of Byzantine faults tolerated: the largest f with n ≥ 3f + 1.
    pub fn f(&self) -> usize {
        self.n().saturating_sub(1) / 3
    }

    /// Quorum size: 2f + 1 when n = 3f + 1. For other n we use ⌈(n + f + 1) / 2⌉ so that any two
    /// quorums still intersect in f + 1 replicas (at least one correct) — plain 2f + 1 would not
    /// be safe for, say, n = 5.
    pub fn quorum(&self) -> usize {
        quorum(self.n(), self.f())
    }

    /// Primary of `view` (PBFT §4.1: p = v mod |R|).
    pub fn primary(&self, view: u64) -> NodeId {
        view % (self.n().max(1) as u64)
    }

    /// Bytes a batch's requests may take (each request counted with its length prefix, see
    /// [`request_cost`]): the message budget minus room for the envelope, the signed
    /// pre-prepare header and — in a state-transfer reply — the commit certificate of up to n
    /// signatures. A request whose cost exceeds this fits in no batch and is refused.
    pub fn batch_budget(&self) -> usize {
        self.max_message_bytes
            .saturating_sub(ENVELOPE_RESERVE + CERT_ENTRY_RESERVE * self.n())
    }

    /// Checks the configuration before a replica is built from it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.n();
        if n < 4 {
            return Err(ConfigError::TooFewReplicas(n));
        }
        if self.id >= n as u64 {
            return Err(ConfigError::UnknownId { id: self.id, n });
        }
        if self.checkpoint_interval == 0 {
            return Err(ConfigError::ZeroCheckpointInterval);
        }
        if self.watermark_window < self.checkpoint_interval
            || self.watermark_window % self.checkpoint_interval != 0
        {
            return Err(ConfigError::BadWindow {
                window: self.watermark_window,
                interval: self.checkpoint_interval,
            });
        }
        if self.max_batch == 0 {
            return Err(ConfigError::ZeroBatch);
        }
        if self.batch_budget() < MIN_BATCH_BUDGET {
            return Err(ConfigError::BudgetTooSmall(self.max_message_bytes));
        }
        if self.max_message_bytes > MAX_MESSAGE_BYTES {
            // Every replica drops a message this large undecoded: a full batch would never
            // be accepted.
            return Err(ConfigError::BudgetTooLarge(self.max_message_bytes));
        }
        if self.view_change_timeout_ticks == 0 || self.request_timeout_ticks == 0 {
            return Err(ConfigError::ZeroTimeout);
        }
        for (i, k) in self.public_keys.iter().enumerate() {
            if self.public_keys[..i].contains(k) {
                return Err(ConfigError::DuplicateKey(i as NodeId));
            }
        }
        Ok(())
    }
}

/// Largest accepted wire message (an upper bound before decoding; the network's frame limit,
/// `Config::max_message_bytes`, is normally far lower). Anything larger is dropped undecoded.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The smallest batch budget accepted: 4 KiB of requests.
pub const MIN_BATCH_BUDGET: usize = 4096;

/// Room reserved in every batch-carrying message for everything but the requests: the outer
/// envelope and signature, the signed pre-prepare header, sequence numbers and length prefixes
/// (a few hundred bytes in practice; generous so that no encoding detail can push a message over).
pub const ENVELOPE_RESERVE: usize = 1024;
/// Room per replica for one commit-certificate entry (id + 64-byte signature, encoded).
pub const CERT_ENTRY_RESERVE: usize = 80;

/// What one request adds to an encoded batch: its bytes plus the largest length prefix.
pub fn request_cost(request_len: usize) -> usize {
    request_len.saturating_add(10)
}

pub(crate) fn quorum(n: usize, f: usize) -> usize {
    (n + f + 2) / 2
}

/// Why a configuration was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Fewer than 4 replicas tolerate no Byzantine fault at all (n ≥ 3f + 1).
    #[error("PBFT needs at least 4 replicas (n = 3f + 1 with f ≥ 1), got {0}")]
    TooFewReplicas(usize),
    /// This replica's id is not an index into the key list.
    #[error("replica id {id} is not in the cluster of {n}")]
    UnknownId {
        /// The configured id.
        id: NodeId,
        /// The cluster size.
        n: usize,
    },
    /// K = 0 would never take a checkpoint, so the log would never be collected.
    #[error("checkpoint_interval must be at least 1")]
    ZeroCheckpointInterval,
    /// L must be a positive multiple of K, or the window could not move checkpoint by
    /// checkpoint (PBFT §4.3).
    #[error(
        "watermark_window {window} must be a positive multiple of checkpoint_interval {interval}"
    )]
    BadWindow {
        /// The configured L.
        window: u64,
        /// The configured K.
        interval: u64,
    },
    /// A batch must hold at least one request.
    #[error("max_batch must be at least 1")]
    ZeroBatch,
    /// The message budget leaves less than 4 KiB for requests ([`Config::batch_budget`]).
    #[error("max_message_bytes {0} leaves too little room for a batch")]
    BudgetTooSmall(usize),
    /// The message budget exceeds what any replica decodes ([`MAX_MESSAGE_BYTES`]), so a full
    /// batch would be dropped undecoded everywhere.
    #[error("max_message_bytes {0} is above the largest message a replica decodes (64 MiB)")]
    BudgetTooLarge(usize),
    /// A timer of zero ticks would fire on every tick.
    #[error("timeouts must be at least one tick")]
    ZeroTimeout,
    /// Two replicas with one key would let one signer count twice towards a quorum.
    #[error("public key of replica {0} appears twice")]
    DuplicateKey(NodeId),
    /// The signing key is not this replica's: everything it signs would be refused.
    #[error("the signing key does not match public_keys[id]")]
    KeyMismatch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn keys(n: u8) -> Vec<VerifyingKey> {
        (1..=n)
            .map(|i| SigningKey::from_bytes(&[i; 32]).verifying_key())
            .collect()
    }

    #[test]
    fn quorums_intersect_in_a_correct_replica() {
        for n in 4..=31usize {
            let c = Config::new(0, keys(n as u8));
            let (f, q) = (c.f(), c.quorum());
            assert!(2 * q > n + f, "n={n}: two quorums share f + 1 replicas");
            assert!(q <= n - f, "n={n}: quorum reachable without the faulty");
            if n % 3 == 1 {
                assert_eq!(q, 2 * f + 1);
            }
        }
    }

    #[test]
    fn validation() {
        assert_eq!(
            Config::new(0, keys(3)).validate(),
            Err(ConfigError::TooFewReplicas(3))
        );
        assert!(Config::new(0, keys(4)).validate().is_ok());
        assert!(matches!(
            Config::new(4, keys(4)).validate(),
            Err(ConfigError::UnknownId { .. })
        ));
        let mut c = Config::new(0, keys(4));
        c.watermark_window = 20;
        assert!(matches!(c.validate(), Err(ConfigError::BadWindow { .. })));
        let mut k = keys(4);
        k[3] = k[0];
        assert_eq!(
            Config::new(0, k).validate(),
            Err(ConfigError::DuplicateKey(3))
        );
        assert_eq!(Config::new(0, keys(4)).primary(5), 1);
        let mut c = Config::new(0, keys(4));
        c.max_message_bytes = MAX_MESSAGE_BYTES;
        assert!(c.validate().is_ok());
        c.max_message_bytes += 1;
        assert_eq!(
            c.validate(),
            Err(ConfigError::BudgetTooLarge(MAX_MESSAGE_BYTES + 1))
        );
    }
}
