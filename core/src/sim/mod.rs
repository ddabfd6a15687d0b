//! Deterministic simulation of the real engines, store and ledger on a simulated network and
//! clock (docs/ARCHITECTURE.md §4, in the FoundationDB/TigerBeetle style). One seed drives every
//! random choice — delays, drops, duplicates, partitions, crashes, the workload — so the same
//! seed replays the same run byte for byte. Crashes are real: the node's engine and database
//! are dropped, its disk loses what was not fsynced, and it restarts from what was.

mod audit;
pub mod checker;
mod clients;
mod event_loop;
mod network;
pub mod sweep;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{ByzantineMode, ByzantineSpec};
use crate::config::{ClientEntry, ClusterConfig, NodeEntry, Protocol, Timing};
use crate::engine::{Engine, NodeId};
use crate::ledger::Genesis;
use crate::store::crash_backend::CrashBackend;
use crate::store::Store;
use checker::Checker;
use clients::{Client, SimRead};
use event_loop::{Event, Scheduled};

/// Simulated microseconds per tick (Timing::tick_ms = 10).
const TICK_US: u64 = 10_000;
/// Ticks at the end of a run with no faults, for liveness after stabilisation (the default
/// of `SimConfig::heal_ticks`; the last third of them quiet).
const HEAL_TICKS: u64 = 600;
/// A client retries a request it has no answer for after this long (µs).
const CLIENT_RETRY_US: u64 = 300_000;
const CLIENT_INTERVAL_US: u64 = 20_000;
const CLIENT_MAX_OUTSTANDING: usize = 64;

/// One simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub protocol: Protocol,
    pub nodes: usize,
    pub seed: u64,
    /// Length of the fault phase in ticks (10 ms of simulated time each).
    pub steps: u64,
    pub byzantine: Vec<ByzantineSpec>,
    pub crash: bool,
    pub partition: bool,
    /// Probability that a message is dropped (and half of it that one is duplicated) during the
    /// fault phase.
    pub drop: f64,
    pub clients: usize,
    /// The size budget of every message (`Limits::max_message_bytes`): the simulated network
    /// refuses larger messages exactly as the real one does, and a run in which any node
    /// produces one fails (verdict OVERSIZED).
    pub max_message_bytes: usize,
    /// The large-message workload: one operation in four is a put of a 16–60 KB value, so
    /// batches are cut by bytes, blocks are big and block sync spans many messages.
    pub large_values: bool,
    /// Ticks without faults after the fault phase: the last third quiet (no new client
    /// requests) so that correct nodes converge. Liveness is judged over this phase.
    pub heal_ticks: u64,
}

impl SimConfig {
    pub fn new(protocol: Protocol, nodes: usize, seed: u64) -> Self {
        SimConfig {
            protocol,
            nodes,
            seed,
            steps: 1000,
            byzantine: Vec::new(),
            crash: false,
            partition: false,
            drop: 0.0,
            clients: 2,
            max_message_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
            large_values: false,
            heal_ticks: HEAL_TICKS,
        }
    }
}

/// What one run did, and whether it stayed safe and live.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    pub seed: u64,
    pub protocol: Protocol,
    pub nodes: usize,
    /// Highest height any correct node committed.
    pub height: u64,
    /// Client transactions acknowledged as committed.
    pub acked_txs: u64,
    pub messages: u64,
    pub bytes: u64,
    pub messages_by_type: BTreeMap<&'static str, u64>,
    /// Raft: the most leader elections one correct node saw (None for PBFT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_changes: Option<u64>,
    /// PBFT: the most views one correct replica entered (None for Raft).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view_changes: Option<u64>,
    pub crashes: u64,
    /// PBFT client reads decided (by 2f+1 matching replies or ordered) and checked against the
    /// correct replicas' ledger.
    pub reads: u64,
    pub partitions: u64,
    /// Blocks committed after the faults stopped.
    pub heal_commits: u64,
    pub safe: bool,
    pub live: bool,
    /// Messages a node produced above the size budget (refused by the network; a bug).
    pub oversized: u64,
    pub first_diverging_height: Option<u64>,
    pub detail: Option<String>,
}

/// How a simulated run (or a sweep or demo row of them, worst first) ended: the one vocabulary
/// for `sim`, `demo` and `bench`, which the CLI maps to exit codes in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Some seed saw a safety violation (divergent ledgers, a lost acknowledged tx).
    Unsafe,
    /// A node produced a message over the size budget, which the real network would refuse.
    Oversized,
    /// Safe, but no progress or no convergence after the faults stopped.
    Stalled,
    /// Safe and live.
    Ok,
}

impl Outcome {
    /// The word `faultline sim` prints (`verdict=`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unsafe => "UNSAFE",
            Outcome::Oversized => "OVERSIZED",
            Outcome::Stalled => "STALLED",
            Outcome::Ok => "ok",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SimReport {
    pub fn verdict(&self) -> Outcome {
        match (self.safe, self.oversized > 0, self.live) {
            (false, _, _) => Outcome::Unsafe,
            (true, true, _) => Outcome::Oversized,
            (true, false, false) => Outcome::Stalled,
            (true, false, true) => Outcome::Ok,
        }
    }

    /// `leader_changes=N` (raft) or `view_changes=N` (pbft).
    fn leadership(&self) -> String {
        match (self.leader_changes, self.view_changes) {
            (Some(n), _) => format!("leader_changes={n}"),
            (None, n) => format!("view_changes={}", n.unwrap_or(0)),
        }
    }

    /// The one-line human form `faultline sim` prints per seed.
    pub fn line(&self) -> String {
        let mut s = format!(
            "seed={} protocol={} nodes={} height={} acked_txs={} msgs={} bytes={} {} crashes={} partitions={} heal_commits={} verdict={}",
            self.seed, self.protocol, self.nodes, self.height, self.acked_txs, self.messages,
            self.bytes, self.leadership(), self.crashes, self.partitions, self.heal_commits,
            self.verdict()
        );
        if let Some(h) = self.first_diverging_height {
            s.push_str(&format!(" first_diverging_height={h}"));
        }
        if let Some(d) = &self.detail {
            s.push_str(&format!(" detail={d:?}"));
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("node {node}: {source}")]
    Engine {
        node: NodeId,
        source: crate::engine::EngineError,
    },
    #[error("simulator setup: {0}")]
    Setup(String),
}

struct SimNode {
    backend: CrashBackend,
    running: Option<(Store, Box<dyn Engine>)>,
    byzantine: Option<ByzantineMode>,
}

/// Node i's key in simulated clusters (fixed, so only the seed varies between runs).
pub fn sim_node_key(i: usize) -> SigningKey {
    let mut h = Sha256::new();
    h.update(b"faultline-sim-node");
    h.update((i as u64).to_be_bytes());
    SigningKey::from_bytes(&h.finalize().into())
}

/// Client c's key in simulated clusters.
pub fn sim_client_key(c: usize) -> SigningKey {
    let mut h = Sha256::new();
    h.update(b"faultline-sim-client");
    h.update((c as u64).to_be_bytes());
    SigningKey::from_bytes(&h.finalize().into())
}

/// Timing used in simulation (ticks are what matter; the clock is simulated).
pub fn sim_timing() -> Timing {
    Timing {
        tick_ms: TICK_US / 1000,
        election_ticks: 10,
        heartbeat_ticks: 2,
        view_change_ticks: 30,
        checkpoint_interval: 16,
        // Small, so that Raft snapshots and block sync happen in most runs.
        compact_every: 16,
    }
}

const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "dave"];

/// The in-memory cluster description the simulated nodes share.
pub fn sim_cluster(
    protocol: Protocol,
    n: usize,
    clients: usize,
) -> Result<ClusterConfig, SimError> {
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let public_key = sim_node_key(i).verifying_key().to_bytes();
        let peer_id = crate::keys::peer_id(&public_key)
            .map_err(|e| SimError::Setup(e.to_string()))?
            .to_string();
        nodes.push(NodeEntry {
            id: i as u64,
            peer_id,
            public_key,
            p2p: format!("/ip4/127.0.0.1/tcp/{}", 20000 + i),
            api: std::net::SocketAddr::from(([127, 0, 0, 1], 30000 + i as u16)),
        });
    }
    Ok(ClusterConfig {
        protocol,
        f: protocol.max_faults(n),
        nodes,
        clients: (0..clients)
            .map(|c| ClientEntry {
                public_key: sim_client_key(c).verifying_key().to_bytes(),
            })
            .collect(),
        admins: Vec::new(),
        genesis: Genesis {
            balances: ACCOUNTS.iter().map(|a| (a.to_string(), 1_000)).collect(),
        },
    })
}

/// When a run's phases begin, in simulated µs: faults until `heal`, clients until `quiet`,
/// then quiet until `end`.
pub(super) struct Phases {
    pub heal: u64,
    pub quiet: u64,
    pub end: u64,
}

/// How long the away node of a faulty run misses every message before the clients stop.
const AWAY_TICKS: u64 = 50;

impl Phases {
    pub fn of(cfg: &SimConfig) -> Phases {
        let heal = cfg.steps * TICK_US;
        let heal_ticks = cfg.heal_ticks.max(3);
        let quiet_ticks = heal_ticks / 3;
        Phases {
            heal,
            quiet: heal + (heal_ticks - quiet_ticks) * TICK_US,
            end: heal + heal_ticks * TICK_US,
        }
    }

    /// The stretch just before the clients stop in which one correct node of a faulty run is
    /// away. On the real network a node killed or stopped at the end of the faults misses what
    /// is sent to it meanwhile (its peers' queues overflow, a dead stream loses a batch), and
    /// then the clients fall silent: the last commits and checkpoints never reach it. Only
    /// STATUS tells such a PBFT replica that it is behind; without this stretch the simulator
    /// passed runs in which a real replica stayed behind for good.
    pub fn away(&self) -> std::ops::Range<u64> {
        self.quiet.saturating_sub(AWAY_TICKS * TICK_US)..self.quiet
    }
}

/// The simulated world.
pub struct Sim {
    cfg: SimConfig,
    cluster: ClusterConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<SimNode>,
    clients: Vec<Client>,
    checker: Checker,
    /// Partition side per node (None = no partition).
    sides: Option<Vec<u8>>,
    /// A correct node that is away just before the clients stop (see [`Phases::away`]):
    /// every message to or from it in that stretch is lost.
    away: Option<(NodeId, std::ops::Range<u64>)>,
    faults_on: bool,
    clients_on: bool,
    report: SimReport,
    acked: Vec<(usize, u64, u64)>,
    /// PBFT client reads waiting for ordered replies (the fallback of
    /// [`crate::client_protocol::ReadRule`]).
    reads: Vec<SimRead>,
    next_read_ctx: u64,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Result<Sim, SimError> {
        if cfg.nodes < cfg.protocol.min_nodes() {
            return Err(SimError::Setup(format!(
                "{} needs at least {} nodes",
                cfg.protocol,
                cfg.protocol.min_nodes()
            )));
        }
        if let Some(b) = cfg.byzantine.iter().find(|b| b.node as usize >= cfg.nodes) {
            return Err(SimError::Setup(format!(
                "--byzantine {}: no such node",
                b.node
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(b) = cfg.byzantine.iter().find(|b| !seen.insert(b.node)) {
            return Err(SimError::Setup(format!(
                "--byzantine {}: one mode per node",
                b.node
            )));
        }
        let cluster = sim_cluster(cfg.protocol, cfg.nodes, cfg.clients)?;
        let checker = Checker::new(cluster.clients.iter().map(|c| c.public_key))
            .with_replicas(cluster.nodes.iter().map(|n| n.public_key));
        let report = SimReport {
            seed: cfg.seed,
            protocol: cfg.protocol,
            nodes: cfg.nodes,
            height: 0,
            acked_txs: 0,
            messages: 0,
            bytes: 0,
            messages_by_type: BTreeMap::new(),
            leader_changes: (cfg.protocol == Protocol::Raft).then_some(0),
            view_changes: (cfg.protocol == Protocol::Pbft).then_some(0),
            crashes: 0,
            reads: 0,
            partitions: 0,
            heal_commits: 0,
            safe: true,
            live: true,
            oversized: 0,
            first_diverging_height: None,
            detail: None,
        };
        let nodes = (0..cfg.nodes)
            .map(|i| SimNode {
                backend: CrashBackend::new(),
                running: None,
                byzantine: cfg
                    .byzantine
                    .iter()
                    .find(|b| b.node == i as u64)
                    .map(|b| b.mode),
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|c| Client {
                key: sim_client_key(c),
                next_seq: 1,
                outstanding: BTreeMap::new(),
                route: crate::client_protocol::Route::new(&cluster, (c % cfg.nodes) as NodeId),
            })
            .collect();
        let away = if cfg.crash || cfg.partition || cfg.drop > 0.0 {
            let correct: Vec<NodeId> = (0..cfg.nodes as NodeId)
                .filter(|i| !cfg.byzantine.iter().any(|b| b.node == *i))
                .collect();
            correct
                .get((cfg.seed % correct.len().max(1) as u64) as usize)
                .map(|id| (*id, Phases::of(&cfg).away()))
        } else {
            None
        };
        let mut sim = Sim {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            away,
            cfg,
            cluster,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            clients,
            checker,
            sides: None,
            faults_on: true,
            clients_on: true,
            report,
            acked: Vec::new(),
            reads: Vec::new(),
            next_read_ctx: 1,
        };
        for i in 0..sim.cfg.nodes {
            sim.start_node(i as NodeId)?;
            // Stagger ticks so nodes do not move in lockstep.
            sim.schedule(TICK_US + i as u64 * 997, Event::Tick(i as NodeId));
        }
        for c in 0..sim.cfg.clients {
            sim.schedule(50_000 + c as u64 * 3_001, Event::Submit(c));
        }
        if sim.cfg.crash || sim.cfg.partition {
            sim.schedule(100 * TICK_US, Event::Chaos);
        }
        sim.schedule(Phases::of(&sim.cfg).heal, Event::Heal);
        Ok(sim)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.rng.next_u64() % n
        }
    }

    fn is_correct(&self, node: NodeId) -> bool {
        self.nodes[node as usize].byzantine.is_none()
    }
}

/// Runs one seed.
pub fn run(cfg: SimConfig) -> Result<SimReport, SimError> {
    Sim::new(cfg)?.run()
}
