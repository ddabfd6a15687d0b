//! libp2p transport for a permissioned set of consensus peers, which may change at run time.
//!
//! TCP + noise + yamux. A node's libp2p identity is its ed25519 key (the same key that signs PBFT
//! messages). Each connection carries one long-lived stream per direction on [`PROTOCOL`] with
//! length-delimited frames (4-byte big-endian length, then the opaque engine message), so messages
//! from one sender arrive in order for as long as the connection lives.
//!
//! * Only the cluster's PeerIds may connect (`allow_block_list`); a refused peer is counted as
//!   rejected reason `unknown_peer`. At most one connection per peer (`connection_limits`).
//! * To avoid duplicate connections only the node with the lower [`NodeId`] dials; it redials a
//!   lost peer with exponential backoff ([`REDIAL_MIN`] .. [`REDIAL_MAX`]).
//! * Each peer has a bounded send queue ([`NetConfig::queue_depth`]); [`NetHandle::send`] never
//!   blocks and returns [`SendError::QueueFull`] instead of growing memory. Messages queued while a
//!   peer is disconnected are sent once it is back (the queue bound still applies).
//! * A writer task per peer drains its queue into the stream, many frames per write and one flush
//!   per batch. A reader task per inbound stream delivers frames to the [`Inbound`] channel; that
//!   channel is bounded, so a slow consumer pushes back on the senders through yamux flow control.
//! * Frames larger than [`NetConfig::max_frame_bytes`] are skipped (rejected `oversized`); a frame
//!   cut off by the end of the stream is rejected `malformed`.
//!
//! Ordering: messages from one sender are delivered in send order while its connection lives.
//! Messages still queued when a connection drops are sent on the next connection; the batch being
//! written when it dropped is lost (counted in [`NetStats::dropped_send_failed`]). Consensus
//! protocols retransmit, so the transport never retries on its own.
//!
//! * [`NetHandle::set_peers`] replaces the peer set at run time (a member set that changed): a
//!   new peer is allowed and dialled, a removed one disconnected and refused from then on.
//! * [`NetHandle::set_blocked`] cuts this node off from a set of peers at run time (a test
//!   partition): their connections are closed, redials stop, their handshakes are refused and
//!   messages to them are dropped ([`SendError::Blocked`]) until they are unblocked.
//!
//! The transport does not know message types on receive (the bytes are opaque): per-type receive
//! counters belong to the engine driver, after decoding.
//!
//! Measured with `examples/net_throughput.rs` (release, two nodes in one process on 127.0.0.1, a
//! shared 2-core machine under load): ~1.5–1.7 M msgs/s one way for 128-byte messages
//! (~200 MB/s), ~2.4 M msgs/s both ways together, ~330 MB/s with 4 KiB messages, and a
//! ping-pong round trip of ~120 µs p50 / ~250 µs p99.

mod behaviour;
mod io;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use libp2p::allow_block_list::{self, AllowedPeers, NotAllowed};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, ListenError, NetworkBehaviour, StreamProtocol, SwarmEvent};
use libp2p::{identity, noise, ping, tcp, yamux, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::behaviour::{HandlerOut, StreamBehaviour, StreamEvent};
use crate::io::{BatchTally, Outgoing};

pub use io::read_frames;
pub use libp2p::{multiaddr, Multiaddr, PeerId};

/// A cluster member's id (index in `cluster.toml`).
pub type NodeId = u64;

/// The one protocol spoken on every connection.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/faultline/msg/1");
/// Default [`NetConfig::max_frame_bytes`]: 4 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 << 20;
/// Default [`NetConfig::queue_depth`].
pub const DEFAULT_QUEUE_DEPTH: usize = 4096;
/// Default [`NetConfig::peer_buffer_bytes`]: 32 MiB each way per peer.
pub const DEFAULT_PEER_BUFFER_BYTES: usize = 32 << 20;
/// Incoming connections allowed to be in their handshake at once (beyond this, a new TCP
/// connection is closed at once): an unknown host that opens hundreds of idle connections
/// costs a bounded number of sockets, and never touches established peer connections.
pub const MAX_PENDING_INCOMING: u32 = 32;
/// First redial delay after a lost connection or failed dial.
pub const REDIAL_MIN: Duration = Duration::from_millis(100);
/// Cap of the exponential redial backoff.
pub const REDIAL_MAX: Duration = Duration::from_secs(5);
/// How often each connection is pinged.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);
/// A ping unanswered this long closes the connection. Generous: a ping shares the TCP
/// connection with up to `peer_buffer_bytes` of queued frames ahead of it on a slow link.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connection timeout: effectively never (connections close only on error or shutdown).
const IDLE_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Another member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: NodeId,
    pub peer_id: PeerId,
    pub addr: Multiaddr,
}

/// Configuration of [`start`].
#[derive(Clone)]
pub struct NetConfig {
    pub id: NodeId,
    /// The node's ed25519 secret key (32 bytes); its public key is the node's PeerId.
    pub secret_key: [u8; 32],
    pub listen: Multiaddr,
    /// The other members (not this node).
    pub peers: Vec<PeerInfo>,
    /// Largest payload accepted from or sent to a peer.
    pub max_frame_bytes: usize,
    /// Bound of each peer's send queue, in messages.
    pub queue_depth: usize,
    /// Bytes each peer may have waiting in its send queue, and separately bytes received from
    /// it that the node has not consumed yet. At least `max_frame_bytes` (raised if lower).
    pub peer_buffer_bytes: usize,
}

impl NetConfig {
    /// A config with the default frame limit and queue depth.
    pub fn new(id: NodeId, secret_key: [u8; 32], listen: Multiaddr, peers: Vec<PeerInfo>) -> Self {
        Self {
            id,
            secret_key,
            listen,
            peers,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            peer_buffer_bytes: DEFAULT_PEER_BUFFER_BYTES,
        }
    }
}

impl std::fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetConfig")
            .field("id", &self.id)
            .field("secret_key", &"<redacted>")
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("queue_depth", &self.queue_depth)
            .field("peer_buffer_bytes", &self.peer_buffer_bytes)
            .finish()
    }
}

/// A message received from a peer. `from` is the authenticated sender: the noise-verified PeerId
/// mapped to its [`NodeId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub from: NodeId,
    pub bytes: Vec<u8>,
    /// The share of the sender's inbound byte budget this message holds; returned when the
    /// message (and every clone of it) is dropped.
    pub(crate) credit: Credit,
}

/// Holds a message's bytes against its sender's inbound budget until dropped.
#[derive(Clone, Debug, Default)]
pub(crate) struct Credit {
    /// Never read: holding it is the point; dropping it returns the bytes to the budget.
    pub(crate) _held: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

/// Credits never make two messages differ.
impl PartialEq for Credit {
    fn eq(&self, _: &Credit) -> bool {
        true
    }
}
impl Eq for Credit {}

impl Inbound {
    /// A message not counted against any budget (tests, other transports).
    pub fn new(from: NodeId, bytes: Vec<u8>) -> Inbound {
        Inbound {
            from,
            bytes,
            credit: Credit::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid ed25519 key: {0}")]
    InvalidKey(String),
    #[error("invalid network config: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("cannot build the libp2p transport: {0}")]
    Transport(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer's send queue is full; the message was not queued (the caller may drop it).
    #[error("send queue to the peer is full")]
    QueueFull,
    /// The destination is not a configured peer (or is this node itself).
    #[error("unknown peer")]
    UnknownPeer,
    /// The network has been shut down.
    #[error("network is shut down")]
    Closed,
    /// The peer is blocked by [`NetHandle::set_blocked`] (a test partition); the message is
    /// dropped, as a cut link would lose it.
    #[error("the peer is partitioned away")]
    Blocked,
    /// The message is larger than `max_frame_bytes`.
    #[error("message of {len} bytes exceeds the {max}-byte frame limit")]
    TooLarge { len: usize, max: usize },
}

/// Snapshot of the transport's counters. Byte counts are payload bytes (frame headers excluded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Per message kind (as given to [`NetHandle::send`]): (messages, bytes) written to a stream.
    pub sent: BTreeMap<&'static str, (u64, u64)>,
    pub received_msgs: u64,
    pub received_bytes: u64,
    /// Per reason: `unknown_peer` (connection refused), `oversized`, `malformed`.
    pub rejected: BTreeMap<&'static str, u64>,
    /// `send` calls refused with [`SendError::QueueFull`].
    pub dropped_queue_full: u64,
    /// Messages taken from a queue but lost because the stream failed while writing them.
    pub dropped_send_failed: u64,
    pub connected_peers: usize,
}

/// Returns the libp2p PeerId of the ed25519 secret key.
pub fn peer_id_from_secret(secret: &[u8; 32]) -> Result<PeerId, NetError> {
    Ok(keypair_from_secret(secret)?.public().to_peer_id())
}

/// Returns the libp2p PeerId of the ed25519 public key.
pub fn peer_id_from_public(public: &[u8; 32]) -> Result<PeerId, NetError> {
    let pk = identity::ed25519::PublicKey::try_from_bytes(public)
        .map_err(|e| NetError::InvalidKey(e.to_string()))?;
    Ok(identity::PublicKey::from(pk).to_peer_id())
}

fn keypair_from_secret(secret: &[u8; 32]) -> Result<identity::Keypair, NetError> {
    let mut copy = *secret; // zeroized by libp2p
    identity::Keypair::ed25519_from_bytes(&mut copy)
        .map_err(|e| NetError::InvalidKey(e.to_string()))
}

/// What the handle, the driver and the I/O tasks share about one peer. Peers come and go with
/// [`NetHandle::set_peers`], so each lives in its own slot, found through [`Shared::slot`].
pub(crate) struct PeerSlot {
    queue: mpsc::Sender<Outgoing>,
    /// Bytes waiting in the send queue (bounded by `peer_buffer_bytes`).
    pub(crate) queued_bytes: AtomicUsize,
    /// Bytes received from the peer and not yet consumed, as semaphore permits.
    pub(crate) inbound_budget: Arc<tokio::sync::Semaphore>,
    connected: AtomicBool,
    /// Cut off by [`NetHandle::set_blocked`].
    blocked: AtomicBool,
}

/// State shared by the handle, the driver and the I/O tasks.
pub(crate) struct Shared {
    /// The current peers; the driver alone adds and removes them.
    pub(crate) peers: RwLock<HashMap<NodeId, Arc<PeerSlot>>>,
    pub(crate) peer_buffer_bytes: usize,
    pub(crate) max_frame_bytes: usize,
    connected_peers: AtomicUsize,
    pub(crate) received_msgs: AtomicU64,
    pub(crate) received_bytes: AtomicU64,
    dropped_queue_full: AtomicU64,
    pub(crate) dropped_send_failed: AtomicU64,
    sent: Mutex<BTreeMap<&'static str, (u64, u64)>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    listen_addrs: Mutex<Vec<Multiaddr>>,
}

impl Shared {
    /// Counters and limits with no peers: for running a reader outside a swarm.
    pub(crate) fn detached(max_frame_bytes: usize) -> Shared {
        Shared {
            peers: RwLock::new(HashMap::new()),
            peer_buffer_bytes: max_frame_bytes,
            max_frame_bytes,
            connected_peers: AtomicUsize::new(0),
            received_msgs: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            dropped_send_failed: AtomicU64::new(0),
            sent: Mutex::new(BTreeMap::new()),
            rejected: Mutex::new(BTreeMap::new()),
            listen_addrs: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on `peer`'s slot under the read lock: the per-message paths (send, receive
    /// credit) take no reference count on the shared slot.
    fn with_slot<T>(&self, peer: NodeId, f: impl FnOnce(&PeerSlot) -> T) -> Option<T> {
        read(&self.peers).get(&peer).map(|s| f(s))
    }

    pub(crate) fn inbound_budget(&self, peer: NodeId) -> Option<Arc<tokio::sync::Semaphore>> {
        self.with_slot(peer, |s| s.inbound_budget.clone())
    }

    pub(crate) fn reject(&self, reason: &'static str) {
        *lock(&self.rejected).entry(reason).or_default() += 1;
    }

    pub(crate) fn count_sent(&self, tally: &BatchTally) {
        let mut sent = lock(&self.sent);
        for &(kind, msgs, bytes) in &tally.0 {
            let e = sent.entry(kind).or_default();
            e.0 += msgs;
            e.1 += bytes;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// Messages to the driver task.
pub(crate) enum Ctrl {
    /// A writer's stream failed: close that connection so that it is re-established.
    StreamFailed {
        node: NodeId,
        connection: ConnectionId,
    },
    Shutdown(Option<oneshot::Sender<()>>),
    /// Cut off exactly these peers (and reconnect every other one).
    SetBlocked(std::collections::BTreeSet<NodeId>),
    /// The member set changed: these are the peers from now on (checked by the handle).
    SetPeers(Vec<PeerInfo>, oneshot::Sender<()>),
}

/// Sends `Shutdown` when the last [`NetHandle`] clone is dropped.
struct ShutdownOnDrop(mpsc::UnboundedSender<Ctrl>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Ctrl::Shutdown(None));
    }
}

/// Cheap to clone; the network shuts down on [`NetHandle::shutdown`] or when the last clone is
/// dropped.
#[derive(Clone)]
pub struct NetHandle {
    id: NodeId,
    local_peer: PeerId,
    shared: Arc<Shared>,
    ctrl: Arc<ShutdownOnDrop>,
}

impl NetHandle {
    /// Queues `bytes` for `to` without blocking. `kind` is the message type name used for the
    /// per-type counters (e.g. `"prepare"`).
    pub fn send(&self, to: NodeId, kind: &'static str, bytes: Arc<[u8]>) -> Result<(), SendError> {
        self.shared
            .with_slot(to, |slot| self.send_to(slot, kind, bytes))
            .unwrap_or(Err(SendError::UnknownPeer))
    }

    fn send_to(
        &self,
        slot: &PeerSlot,
        kind: &'static str,
        bytes: Arc<[u8]>,
    ) -> Result<(), SendError> {
        if slot.blocked.load(Ordering::Relaxed) {
            return Err(SendError::Blocked);
        }
        let max = self.shared.max_frame_bytes;
        if bytes.len() > max {
            return Err(SendError::TooLarge {
                len: bytes.len(),
                max,
            });
        }
        let len = bytes.len();
        let queued = &slot.queued_bytes;
        // Bytes are reserved before queueing and released by the writer as it dequeues; a
        // peer that cannot keep up costs at most `peer_buffer_bytes` of memory.
        if queued.fetch_add(len, Ordering::Relaxed) + len > self.shared.peer_buffer_bytes {
            queued.fetch_sub(len, Ordering::Relaxed);
            self.shared
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(SendError::QueueFull);
        }
        match slot.queue.try_send(Outgoing { kind, bytes }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                queued.fetch_sub(len, Ordering::Relaxed);
                self.shared
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                Err(SendError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                queued.fetch_sub(len, Ordering::Relaxed);
                Err(SendError::Closed)
            }
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Number of peers with an established connection.
    pub fn connected_peers(&self) -> usize {
        self.shared.connected_peers.load(Ordering::Relaxed)
    }

    /// Whether `peer` currently has an established connection.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.shared
            .with_slot(peer, |s| s.connected.load(Ordering::Relaxed))
            .unwrap_or(false)
    }

    /// Messages waiting in the send queue of `peer` (None for an unknown peer).
    pub fn queued(&self, peer: NodeId) -> Option<usize> {
        self.shared
            .with_slot(peer, |s| s.queue.max_capacity() - s.queue.capacity())
    }

    /// The current peers, in id order.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = read(&self.shared.peers).keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Makes `peers` this node's peers from now on, for a member set that changed at run
    /// time: a new peer is allowed (and dialled, if this node is the dialer); a peer no longer
    /// listed is disconnected, its queue dropped, and its handshakes refused like any
    /// stranger's (`unknown_peer`); a peer whose key or address changed is replaced. Returns
    /// once the network applied it, so a send to a new peer right after is queued.
    pub async fn set_peers(&self, peers: Vec<PeerInfo>) -> Result<(), NetError> {
        check_peers(self.id, self.local_peer, &peers)?;
        let (tx, rx) = oneshot::channel();
        self.ctrl
            .0
            .send(Ctrl::SetPeers(peers, tx))
            .map_err(|_| NetError::Config("the network is shut down".into()))?;
        rx.await
            .map_err(|_| NetError::Config("the network is shut down".into()))
    }

    /// Cuts this node off from exactly `peers` (an empty set heals): their connections close,
    /// they are neither dialled nor accepted, and messages to them are dropped. Unknown ids are
    /// ignored. Used for partitions in test clusters (`faultline local --ui`); the other side
    /// is normally told the same, so the cut is two-sided.
    pub fn set_blocked(&self, peers: std::collections::BTreeSet<NodeId>) {
        for (id, s) in read(&self.shared.peers).iter() {
            s.blocked.store(peers.contains(id), Ordering::Relaxed);
        }
        let _ = self.ctrl.0.send(Ctrl::SetBlocked(peers));
    }

    /// The peers currently cut off by [`NetHandle::set_blocked`], in id order.
    pub fn blocked(&self) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = read(&self.shared.peers)
            .iter()
            .filter(|(_, s)| s.blocked.load(Ordering::Relaxed))
            .map(|(&id, _)| id)
            .collect();
        out.sort_unstable();
        out
    }

    /// The addresses the node listens on (with the actual port when the config asked for port 0).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.shared.listen_addrs).clone()
    }

    pub fn stats(&self) -> NetStats {
        let s = &self.shared;
        NetStats {
            sent: lock(&s.sent).clone(),
            received_msgs: s.received_msgs.load(Ordering::Relaxed),
            received_bytes: s.received_bytes.load(Ordering::Relaxed),
            rejected: lock(&s.rejected).clone(),
            dropped_queue_full: s.dropped_queue_full.load(Ordering::Relaxed),
            dropped_send_failed: s.dropped_send_failed.load(Ordering::Relaxed),
            connected_peers: s.connected_peers.load(Ordering::Relaxed),
        }
    }

    /// Closes all connections and stops every task of this node; the inbound receiver then ends.
    /// Affects all clones of the handle.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.ctrl.0.send(Ctrl::Shutdown(Some(tx))).is_ok() {
            let _ = rx.await;
        }
    }
}

impl std::fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandle")
            .field("id", &self.id)
            .field("connected_peers", &self.connected_peers())
            .finish_non_exhaustive()
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Behaviour {
    // Order matters: the allow-list is consulted first, so an unknown peer is refused as such.
    allow: allow_block_list::Behaviour<AllowedPeers>,
    limits: connection_limits::Behaviour,
    /// Liveness: a connection whose peer stops answering pings is closed, so a peer behind a
    /// dead link (cable pulled, host frozen, partition — no FIN or RST ever arrives) shows as
    /// disconnected and is redialled, instead of looking connected until TCP gives up.
    ping: ping::Behaviour,
    streams: StreamBehaviour,
}

struct PeerState {
    peer_id: PeerId,
    addr: Multiaddr,
    /// Whether this node is the one that dials (lower id).
    dialer: bool,
    connections: u32,
    /// Its connection stopped answering pings and is being closed. A graceful close flushes
    /// what is queued, which on a dead link waits for TCP to give up (many minutes), so the
    /// peer counts as unreachable from the failed ping on, not from the close.
    stalled: bool,
    next_dial: Option<Instant>,
    backoff: Duration,
    streams: mpsc::UnboundedSender<io::StreamUpdate>,
}

/// Starts the network on the current tokio runtime (spawns its tasks). Returns once the listener
/// is bound; inbound messages come out of the receiver.
pub async fn start(config: NetConfig) -> Result<(NetHandle, mpsc::Receiver<Inbound>), NetError> {
    let keypair = keypair_from_secret(&config.secret_key)?;
    let local_peer = keypair.public().to_peer_id();
    if config.max_frame_bytes == 0 || config.max_frame_bytes > u32::MAX as usize {
        return Err(NetError::Config(format!(
            "max_frame_bytes must be in 1..={}",
            u32::MAX
        )));
    }
    if config.queue_depth == 0 {
        return Err(NetError::Config("queue_depth must be at least 1".into()));
    }
    check_peers(config.id, local_peer, &config.peers)?;
    let allow = allow_block_list::Behaviour::<AllowedPeers>::default();
    let limits = connection_limits::Behaviour::new(
        ConnectionLimits::default()
            .with_max_established_per_peer(Some(1))
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING)),
    );
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_behaviour(|_| Behaviour {
            allow,
            limits,
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(PING_INTERVAL)
                    .with_timeout(PING_TIMEOUT),
            ),
            streams: StreamBehaviour::new(PROTOCOL),
        })
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();

    let listen_err = |reason: String| NetError::Listen {
        addr: config.listen.clone(),
        reason,
    };
    swarm
        .listen_on(config.listen.clone())
        .map_err(|e| listen_err(e.to_string()))?;
    let first_addr = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match swarm.next().await {
                Some(SwarmEvent::NewListenAddr { address, .. }) => return Ok(address),
                Some(SwarmEvent::ListenerClosed { reason, .. }) => {
                    return Err(format!("listener closed: {reason:?}"))
                }
                Some(SwarmEvent::ListenerError { error, .. }) => return Err(error.to_string()),
                Some(_) => {}
                None => return Err("swarm ended".into()),
            }
        }
    })
    .await
    .map_err(|_| listen_err("timed out waiting for the listener".into()))?
    .map_err(listen_err)?;

    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
    let inbound_capacity = config.queue_depth.max(1024);
    let (inbound_tx, inbound_rx) = mpsc::channel(inbound_capacity);
    let shared = Arc::new(Shared {
        peer_buffer_bytes: config.peer_buffer_bytes.max(config.max_frame_bytes),
        listen_addrs: Mutex::new(vec![first_addr]),
        ..Shared::detached(config.max_frame_bytes)
    });
    let mut driver = Driver {
        id: config.id,
        swarm,
        by_peer_id: HashMap::new(),
        peers: HashMap::new(),
        shared: shared.clone(),
        inbound: inbound_tx,
        tasks: JoinSet::new(),
        queue_depth: config.queue_depth,
        ctrl: ctrl_tx.clone(),
    };
    for p in &config.peers {
        driver.add_peer(p);
    }
    tokio::spawn(driver.run(ctrl_rx));
    let handle = NetHandle {
        id: config.id,
        local_peer,
        shared,
        ctrl: Arc::new(ShutdownOnDrop(ctrl_tx)),
    };
    Ok((handle, inbound_rx))
}

/// A peer list must not name this node or list an id or a key twice.
fn check_peers(id: NodeId, local_peer: PeerId, peers: &[PeerInfo]) -> Result<(), NetError> {
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for p in peers {
        if p.id == id || p.peer_id == local_peer {
            return Err(NetError::Config(format!(
                "peer {} is this node itself",
                p.id
            )));
        }
        if !ids.insert(p.id) || !keys.insert(p.peer_id) {
            return Err(NetError::Config(format!("peer {} is listed twice", p.id)));
        }
    }
    Ok(())
}

struct Driver {
    id: NodeId,
    swarm: Swarm<Behaviour>,
    by_peer_id: HashMap<PeerId, NodeId>,
    peers: HashMap<NodeId, PeerState>,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Inbound>,
    /// Writer and reader tasks; dropping the set aborts them.
    tasks: JoinSet<()>,
    queue_depth: usize,
    /// For the writer tasks of peers added later.
    ctrl: mpsc::UnboundedSender<Ctrl>,
}

impl Driver {
    async fn run(mut self, mut ctrl: mpsc::UnboundedReceiver<Ctrl>) {
        loop {
            let next_dial = self.peers.values().filter_map(|p| p.next_dial).min();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                c = ctrl.recv() => match c {
                    Some(Ctrl::StreamFailed { node, connection }) => {
                        tracing::debug!(peer = node, "closing connection after stream failure");
                        self.swarm.close_connection(connection);
                    }
                    Some(Ctrl::SetBlocked(peers)) => self.set_blocked(&peers),
                    Some(Ctrl::SetPeers(peers, ack)) => {
                        self.set_peers(&peers);
                        let _ = ack.send(());
                    }
                    Some(Ctrl::Shutdown(ack)) => {
                        self.stop(ack).await;
                        return;
                    }
                    None => {
                        self.stop(None).await;
                        return;
                    }
                },
                _ = tokio::time::sleep_until(next_dial.unwrap_or(far)), if next_dial.is_some() => {
                    self.dial_due();
                }
                Some(res) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = res {
                        if e.is_panic() {
                            tracing::error!("network task panicked: {e}");
                        }
                    }
                }
            }
        }
    }

    async fn stop(self, ack: Option<oneshot::Sender<()>>) {
        let Driver {
            swarm,
            mut tasks,
            shared,
            ..
        } = self;
        tasks.shutdown().await;
        drop(swarm);
        shared.connected_peers.store(0, Ordering::Relaxed);
        for s in read(&shared.peers).values() {
            s.connected.store(false, Ordering::Relaxed);
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }

    /// Applies a partition: a blocked peer leaves the allow-list (libp2p closes its
    /// connections at once and refuses its handshakes) and is not redialled; an unblocked one
    /// is allowed again and, if this node is its dialer, dialled now.
    fn set_blocked(&mut self, blocked: &std::collections::BTreeSet<NodeId>) {
        let now = Instant::now();
        for (&id, p) in self.peers.iter_mut() {
            if blocked.contains(&id) {
                if self.swarm.behaviour_mut().allow.disallow_peer(p.peer_id) {
                    tracing::warn!(node = self.id, peer = id, "partitioned from peer");
                }
                p.next_dial = None;
            } else if self.swarm.behaviour_mut().allow.allow_peer(p.peer_id) {
                tracing::warn!(node = self.id, peer = id, "partition from peer healed");
                if p.dialer && p.connections == 0 {
                    p.backoff = REDIAL_MIN;
                    p.next_dial = Some(now);
                }
            }
        }
    }

    fn is_blocked(&self, node: NodeId) -> bool {
        self.shared
            .with_slot(node, |s| s.blocked.load(Ordering::Relaxed))
            .unwrap_or(false)
    }

    /// Starts talking to `p`: its slot and send queue, its writer task, the allow-list, and a
    /// dial now if this node is the dialer (the lower id).
    fn add_peer(&mut self, p: &PeerInfo) {
        let (queue, queue_rx) = mpsc::channel(self.queue_depth);
        let permits = self
            .shared
            .peer_buffer_bytes
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let slot = Arc::new(PeerSlot {
            queue,
            queued_bytes: AtomicUsize::new(0),
            inbound_budget: Arc::new(tokio::sync::Semaphore::new(permits)),
            connected: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
        });
        write(&self.shared.peers).insert(p.id, slot.clone());
        let (stream_tx, stream_rx) = mpsc::unbounded_channel();
        self.tasks.spawn(io::writer_task(
            p.id,
            slot,
            queue_rx,
            stream_rx,
            self.shared.clone(),
            self.ctrl.clone(),
        ));
        let dialer = self.id < p.id;
        self.peers.insert(
            p.id,
            PeerState {
                peer_id: p.peer_id,
                addr: p.addr.clone(),
                dialer,
                connections: 0,
                stalled: false,
                next_dial: dialer.then_some(Instant::now()),
                backoff: REDIAL_MIN,
                streams: stream_tx,
            },
        );
        self.by_peer_id.insert(p.peer_id, p.id);
        self.swarm.behaviour_mut().allow.allow_peer(p.peer_id);
    }

    /// Stops talking to `node`: it leaves the allow-list (libp2p closes its connections and
    /// refuses its handshakes from now on), its queue is dropped (its writer task ends) and
    /// sends to it fail with [`SendError::UnknownPeer`].
    fn remove_peer(&mut self, node: NodeId) {
        write(&self.shared.peers).remove(&node);
        if let Some(p) = self.peers.remove(&node) {
            self.by_peer_id.remove(&p.peer_id);
            self.swarm.behaviour_mut().allow.disallow_peer(p.peer_id);
        }
        self.set_connected(node, false);
    }

    /// Applies a new peer list (see [`NetHandle::set_peers`]).
    fn set_peers(&mut self, peers: &[PeerInfo]) {
        let gone: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(id, st)| {
                !peers
                    .iter()
                    .any(|p| p.id == **id && p.peer_id == st.peer_id && p.addr == st.addr)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            tracing::info!(node = self.id, peer = id, "peer removed");
            self.remove_peer(id);
        }
        for p in peers {
            if !self.peers.contains_key(&p.id) {
                tracing::info!(node = self.id, peer = p.id, addr = %p.addr, "peer added");
                self.add_peer(p);
            }
        }
    }

    fn dial_due(&mut self) {
        let now = Instant::now();
        for (&id, p) in self.peers.iter_mut() {
            if p.next_dial.is_some_and(|t| t <= now) {
                p.next_dial = None;
                if p.connections > 0 {
                    continue;
                }
                let opts = DialOpts::peer_id(p.peer_id)
                    .addresses(vec![p.addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                tracing::debug!(node = self.id, peer = id, addr = %p.addr, "dialing");
                if let Err(e) = self.swarm.dial(opts) {
                    tracing::debug!(peer = id, "dial not started: {e}");
                    p.next_dial = Some(now + p.backoff);
                    p.backoff = (p.backoff * 2).min(REDIAL_MAX);
                }
            }
        }
    }

    fn schedule_redial(&mut self, node: NodeId) {
        if self.is_blocked(node) {
            return;
        }
        if let Some(p) = self.peers.get_mut(&node) {
            if p.dialer && p.connections == 0 && p.next_dial.is_none() {
                p.next_dial = Some(Instant::now() + p.backoff);
                p.backoff = (p.backoff * 2).min(REDIAL_MAX);
            }
        }
    }

    fn set_connected(&mut self, node: NodeId, up: bool) {
        self.shared
            .with_slot(node, |s| s.connected.store(up, Ordering::Relaxed));
        let n = self
            .peers
            .values()
            .filter(|p| p.connections > 0 && !p.stalled)
            .count();
        self.shared.connected_peers.store(n, Ordering::Relaxed);
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let Some(&node) = self.by_peer_id.get(&peer_id) else {
                    return;
                };
                if let Some(p) = self.peers.get_mut(&node) {
                    // The backoff is reset only once our stream is up (see `on_stream_event`), so
                    // a connection that is refused right after the handshake still backs off.
                    p.connections += 1;
                    p.stalled = false;
                    p.next_dial = None;
                }
                tracing::info!(node = self.id, peer = node, addr = %endpoint.get_remote_address(), "peer connected");
                self.set_connected(node, true);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                let Some(&node) = self.by_peer_id.get(&peer_id) else {
                    return;
                };
                let mut down = false;
                if let Some(p) = self.peers.get_mut(&node) {
                    let _ = p.streams.send(io::StreamUpdate::Closed(connection_id));
                    p.connections = p.connections.saturating_sub(1);
                    down = p.connections == 0;
                }
                if down {
                    tracing::info!(node = self.id, peer = node, "peer disconnected: {cause:?}");
                    self.set_connected(node, false);
                    self.schedule_redial(node);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let Some(node) = peer_id.and_then(|p| self.by_peer_id.get(&p).copied()) {
                    tracing::debug!(node = self.id, peer = node, "dial failed: {error}");
                    self.schedule_redial(node);
                }
            }
            SwarmEvent::IncomingConnectionError {
                error: ListenError::Denied { cause },
                peer_id,
                send_back_addr,
                ..
            } => {
                let known = peer_id.and_then(|p| self.by_peer_id.get(&p).copied());
                if let Some(node) = known.filter(|&n| self.is_blocked(n)) {
                    tracing::debug!(
                        node = self.id,
                        peer = node,
                        "refused connection from a partitioned peer"
                    );
                } else if cause.downcast_ref::<NotAllowed>().is_some() {
                    tracing::warn!(node = self.id, peer = ?peer_id, addr = %send_back_addr, "refused connection from unknown peer");
                    self.shared.reject("unknown_peer");
                } else {
                    tracing::debug!(node = self.id, peer = ?peer_id, "refused connection: {cause}");
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let mut addrs = lock(&self.shared.listen_addrs);
                if !addrs.contains(&address) {
                    addrs.push(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                lock(&self.shared.listen_addrs).retain(|a| a != &address);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Streams(ev)) => self.on_stream_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            })) => {
                let Some(&node) = self.by_peer_id.get(&peer) else {
                    return;
                };
                tracing::warn!(
                    node = self.id,
                    peer = node,
                    "peer stopped answering pings ({e}); closing its connection"
                );
                if let Some(p) = self.peers.get_mut(&node) {
                    p.stalled = true;
                }
                self.set_connected(node, false);
                self.swarm.close_connection(connection);
            }
            other => tracing::trace!("swarm event: {other:?}"),
        }
    }

    fn on_stream_event(&mut self, ev: StreamEvent) {
        let StreamEvent {
            peer,
            connection,
            event,
        } = ev;
        let Some(&node) = self.by_peer_id.get(&peer) else {
            return;
        };
        match event {
            HandlerOut::Inbound(stream) => {
                self.tasks.spawn(io::reader_task(
                    node,
                    stream,
                    self.inbound.clone(),
                    self.shared.clone(),
                ));
            }
            HandlerOut::Outbound(stream) => {
                if let Some(p) = self.peers.get_mut(&node) {
                    p.backoff = REDIAL_MIN;
                    let _ = p.streams.send(io::StreamUpdate::Ready(connection, stream));
                }
            }
            HandlerOut::OutboundFailed(e) => {
                tracing::warn!(node = self.id, peer = node, "opening stream failed: {e}");
                self.swarm.close_connection(connection);
            }
        }
    }
}
