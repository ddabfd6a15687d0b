//! What the HTTP API and the node's driver share, and nothing else: the state both read
//! ([`Shared`]), the commands the API sends the driver ([`Cmd`]) and the connection facts the
//! server hands the API ([`PeerAddr`]). Both `api` and `runtime` depend on this module, so neither
//! depends on the other's internals (runtime builds the API's router; the API never reaches into
//! the runtime).

use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};

use crate::config::ClusterConfig;
use crate::engine::{EngineStatus, NodeId, ProposeError};
use crate::ledger::{Tx, TxRecord};
use crate::metrics::Metrics;
use crate::store::Store;

/// What `/v1/status` shows besides the engine's own fields; refreshed by the driver each round.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub engine: EngineStatus,
    pub height: u64,
    pub head_hash: [u8; 32],
    pub peers_connected: usize,
    /// Block sync under way: `(lowest height fetched, target height)`.
    pub block_sync: Option<(u64, u64)>,
}

/// State shared by the driver task and the API handlers.
pub struct Shared {
    pub id: NodeId,
    pub cluster: ClusterConfig,
    /// The permitted clients' keys, decompressed once (the API checks every write against it).
    pub clients: crate::ledger::tx::ClientKeys,
    pub key: SigningKey,
    pub store: Arc<Store>,
    pub metrics: Metrics,
    pub status: Mutex<NodeStatus>,
    pub cmds: mpsc::Sender<Cmd>,
    pub net: faultline_net::NetHandle,
    /// Forwards writes and linearizable reads from a raft follower to the leader's API.
    pub http: reqwest::Client,
    /// The node's Byzantine mode (experiments): `corrupt` also makes the API answer reads
    /// with validly signed wrong values, the attack a PBFT client's read quorum must survive.
    pub byzantine: Option<crate::config::ByzantineMode>,
    /// `faultline run --allow-partition`: serve `POST /v1/admin/partition` to loopback peers.
    pub allow_partition: bool,
}

impl Shared {
    pub fn status(&self) -> NodeStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A request from the API to the driver.
pub enum Cmd {
    /// Propose signature-checked transactions. `waiters[i]` (if any) receives `txs[i]`'s
    /// record once applied; `reply` says whether the engine accepted them.
    Propose {
        txs: Vec<Tx>,
        waiters: Vec<oneshot::Sender<TxRecord>>,
        reply: oneshot::Sender<Result<(), ProposeError>>,
    },
    /// A linearizable read: `reply` answers once the store may serve it (ReadIndex).
    Read {
        reply: oneshot::Sender<Result<(), ProposeError>>,
    },
    /// An admin's checked request to hand the leadership to `to`, if the engine is still in
    /// `term` (the term the admin signed; a later one means the request is stale).
    TransferLeader {
        to: NodeId,
        term: u64,
        reply: oneshot::Sender<Result<(), TransferRefused>>,
    },
}

/// Why the driver did not start a leadership transfer.
#[derive(Debug)]
pub enum TransferRefused {
    /// The engine is in another term than the one the admin signed.
    StaleTerm {
        now: Option<u64>,
    },
    Engine(crate::engine::TransferError),
}

/// The TCP peer of the connection a request came on, as a request extension (the admin route
/// answers only loopback peers).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);
