//! Building a node's engine from its configuration: the honest engine for the cluster's
//! protocol, wrapped in a Byzantine fault when the node is started with one. It sits above
//! `engine` and `faults` so neither needs the other; `faultline run` and the simulator both
//! build engines here, so the simulator runs exactly what a real node runs.

use crate::config::{Batching, ByzantineMode, ClusterConfig, Limits, Protocol, Timing};
use crate::engine::pbft::{PbftEngine, PbftOptions, DEFAULT_MAX_PENDING_TXS};
use crate::engine::raft::{RaftEngine, RaftOptions};
use crate::engine::{Engine, EngineError, NodeId};
use crate::faults::pbft::ByzantinePbft;
use crate::faults::raft::ByzantineRaft;
use crate::store::Store;

/// Everything needed to start a node's engine; shared by `faultline run` and the simulator so
/// both build engines the same way.
pub struct EngineSetup<'a> {
    pub id: NodeId,
    pub cluster: &'a ClusterConfig,
    pub key: ed25519_dalek::SigningKey,
    pub timing: Timing,
    pub batching: Batching,
    pub limits: Limits,
    pub byzantine: Option<ByzantineMode>,
    /// Seeds election jitter (the simulator passes its run seed; `run` the node id).
    pub seed: u64,
    /// Seeds PBFT read-marker nonces: must differ on every start of a node (`run` draws it
    /// from the operating system), or a restarted replica could reuse a marker already
    /// ordered before its read began.
    pub read_nonce_seed: u64,
}

/// Opens the engine for `setup.cluster.protocol`, restarting from `store` if it holds state.
pub fn open_engine(setup: EngineSetup<'_>, store: &Store) -> Result<Box<dyn Engine>, EngineError> {
    match setup.cluster.protocol {
        Protocol::Raft => {
            let opts = RaftOptions {
                election_tick: setup.timing.election_ticks,
                heartbeat_tick: setup.timing.heartbeat_ticks,
                max_batch_txs: setup.batching.max_batch_txs,
                max_inflight_batches: setup.batching.max_inflight_batches,
                max_message_bytes: setup.limits.max_message_bytes,
                compact_every: setup.timing.compact_every.max(1),
                seed: setup.seed,
                ..RaftOptions::default()
            };
            let engine = RaftEngine::open(setup.id, setup.cluster.n(), opts, store)?;
            Ok(match setup.byzantine {
                None => Box::new(engine),
                Some(mode) => Box::new(ByzantineRaft::new(
                    engine,
                    mode,
                    setup.id,
                    setup.cluster.n(),
                )),
            })
        }
        Protocol::Pbft => {
            let opts = PbftOptions {
                checkpoint_interval: setup.timing.checkpoint_interval,
                max_batch_txs: setup.batching.max_batch_txs,
                view_change_ticks: setup.timing.view_change_ticks,
                max_message_bytes: setup.limits.max_message_bytes,
                max_pending_txs: DEFAULT_MAX_PENDING_TXS,
                read_nonce_seed: setup.read_nonce_seed,
            };
            let public_keys: Vec<[u8; 32]> =
                setup.cluster.nodes.iter().map(|n| n.public_key).collect();
            let engine = PbftEngine::open(
                setup.id,
                public_keys.clone(),
                setup.cluster.clients.iter().map(|c| c.public_key).collect(),
                setup.key.clone(),
                opts,
                store,
            )?;
            Ok(match setup.byzantine {
                None => Box::new(engine),
                Some(mode) => {
                    let keys = public_keys
                        .iter()
                        .map(ed25519_dalek::VerifyingKey::from_bytes)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| EngineError::Config("invalid replica key".into()))?;
                    Box::new(ByzantinePbft::new(engine, mode, setup.id, setup.key, keys))
                }
            })
        }
    }
}
