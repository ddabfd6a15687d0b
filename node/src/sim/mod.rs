//! Deterministic simulation of the real engines, store and ledger on a simulated network and
//! clock (docs/ARCHITECTURE.md §4, in the FoundationDB/TigerBeetle style). One seed drives every
//! random choice — delays, drops, duplicates, partitions, crashes, the workload — so the same
//! seed replays the same run byte for byte. Crashes are real: the node's engine and database
//! are dropped, its disk loses what was not fsynced, and it restarts from what was.

pub mod checker;
pub mod sweep;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Batching, ClientEntry, ClusterConfig, NodeEntry, Protocol, Timing};
use crate::engine::{self, Engine, EngineSetup, NodeId, Outgoing, ProposeError};
use crate::faults::{ByzantineMode, ByzantineSpec};
use crate::ledger::{Genesis, Op, Tx};
use crate::store::crash_backend::CrashBackend;
use crate::store::{AppliedBlock, Store};
use checker::{Checker, Violation};

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
    /// Most leader (raft) or view (pbft) changes seen by one correct node.
    pub leader_changes: u64,
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

impl SimReport {
    pub fn verdict(&self) -> &'static str {
        match (self.safe, self.oversized > 0, self.live) {
            (false, _, _) => "UNSAFE",
            (true, true, _) => "OVERSIZED",
            (true, false, false) => "STALLED",
            (true, false, true) => "ok",
        }
    }

    /// The one-line human form `faultline sim` prints per seed.
    pub fn line(&self) -> String {
        let mut s = format!(
            "seed={} protocol={} nodes={} height={} acked_txs={} msgs={} bytes={} leader_changes={} crashes={} partitions={} heal_commits={} verdict={}",
            self.seed, self.protocol, self.nodes, self.height, self.acked_txs, self.messages,
            self.bytes, self.leader_changes, self.crashes, self.partitions, self.heal_commits,
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

enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        bytes: Arc<[u8]>,
    },
    Tick(NodeId),
    Submit(usize),
    Chaos,
    Heal,
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct SimNode {
    backend: CrashBackend,
    running: Option<(Store, Box<dyn Engine>)>,
    byzantine: Option<ByzantineMode>,
}

struct Client {
    key: SigningKey,
    next_seq: u64,
    /// seq -> (tx, last sent at, nodes that applied it)
    outstanding: BTreeMap<u64, (Tx, u64, Vec<NodeId>)>,
    target: NodeId,
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
        genesis: Genesis {
            balances: ACCOUNTS.iter().map(|a| (a.to_string(), 1_000)).collect(),
        },
    })
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
    faults_on: bool,
    clients_on: bool,
    report: SimReport,
    acked: Vec<(usize, u64, u64)>,
    /// PBFT client reads waiting for ordered replies (the fallback of [`crate::reply::ReadRule`]).
    reads: Vec<SimRead>,
    next_read_ctx: u64,
}

/// A PBFT read the simulated client is ordering on every replica (TOCS §5.1.3's fallback).
struct SimRead {
    key: String,
    /// The highest height any correct node had applied when the read began: a linearizable
    /// answer is the state at some height at or above it.
    floor: u64,
    quorum: crate::reply::ReadQuorum,
    /// (replica, read ctx) still to answer.
    waiting: Vec<(NodeId, u64)>,
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
            leader_changes: 0,
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
                target: (c % cfg.nodes) as NodeId,
            })
            .collect();
        let mut sim = Sim {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
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
        sim.schedule(sim.cfg.steps * TICK_US, Event::Heal);
        Ok(sim)
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            event,
        }));
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

    fn start_node(&mut self, id: NodeId) -> Result<(), SimError> {
        let node = &self.nodes[id as usize];
        let err = |source| SimError::Engine { node: id, source };
        let store = Store::with_backend(node.backend.clone(), &self.cluster.genesis)
            .map_err(|e| err(e.into()))?;
        let engine = engine::open(
            EngineSetup {
                id,
                cluster: &self.cluster,
                key: sim_node_key(id as usize),
                timing: sim_timing(),
                batching: Batching::default(),
                limits: crate::config::Limits {
                    max_message_bytes: self.cfg.max_message_bytes,
                },
                byzantine: node.byzantine,
                seed: self.cfg.seed,
                // Distinct per node and per start (the crash count grows with every crash),
                // and still a function of the seed alone.
                read_nonce_seed: self.cfg.seed
                    ^ id.rotate_left(48)
                    ^ self.report.crashes.rotate_left(24),
            },
            &store,
        )
        .map_err(err)?;
        self.nodes[id as usize].running = Some((store, engine));
        // A restarted node may have committed entries to apply at once.
        self.drive(id)
    }

    fn crash_node(&mut self, id: NodeId) {
        let node = &mut self.nodes[id as usize];
        if node.running.take().is_some() {
            node.backend.crash();
            self.report.crashes += 1;
        }
    }

    /// Polls node `id` until quiet: persist, send, apply, check (the real driving loop).
    fn drive(&mut self, id: NodeId) -> Result<(), SimError> {
        let Some((store, engine)) = self.nodes[id as usize].running.as_mut() else {
            return Ok(());
        };
        let (messages, applied) = engine::drive(engine.as_mut(), store)
            .map_err(|source| SimError::Engine { node: id, source })?;
        let installed = if applied.is_empty() {
            None
        } else {
            store.base().ok()
        };
        let ready_reads = engine.ready_reads();
        let lc = engine.leader_changes();
        if !ready_reads.is_empty() {
            self.answer_ordered_reads(id, &ready_reads)?;
        }
        if self.is_correct(id) {
            self.report.leader_changes = self.report.leader_changes.max(lc);
            if let Some(base) = installed.filter(|b| b.height > 0) {
                self.checker.installed(id, base.height, base.hash);
            }
            for b in &applied {
                self.checker.committed(id, &b.block);
            }
            self.on_applied(id, &applied);
        }
        for m in messages {
            self.send(id, m);
        }
        Ok(())
    }

    fn send(&mut self, from: NodeId, m: Outgoing) {
        self.report.messages += 1;
        self.report.bytes += m.bytes.len() as u64;
        *self.report.messages_by_type.entry(m.kind).or_insert(0) += 1;
        if m.bytes.len() > self.cfg.max_message_bytes {
            // The real network refuses this frame (faultline-net `SendError::TooLarge`); so
            // does the simulated one, and the run fails: the cores must never produce one.
            if self.report.oversized == 0 {
                self.report.detail = Some(format!(
                    "node {from} sent a {}-byte {} message to node {}, over the {}-byte budget",
                    m.bytes.len(),
                    m.kind,
                    m.to,
                    self.cfg.max_message_bytes
                ));
            }
            self.report.oversized += 1;
            return;
        }
        let drop = if self.faults_on { self.cfg.drop } else { 0.0 };
        if self.chance(drop) {
            return;
        }
        if let Some(sides) = &self.sides {
            if sides[from as usize] != sides[m.to as usize] {
                return;
            }
        }
        let copies = if self.chance(drop / 2.0) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = 300 + self.below(2_700);
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    to: m.to,
                    bytes: m.bytes.clone(),
                },
            );
        }
    }

    /// Client bookkeeping: a raft client is answered by the node it asked (the leader); a pbft
    /// client by f+1 replicas.
    fn on_applied(&mut self, node: NodeId, applied: &[AppliedBlock]) {
        let needed = match self.cfg.protocol {
            Protocol::Raft => 1,
            Protocol::Pbft => self.cluster.f + 1,
        };
        for b in applied {
            for (tx, outcome) in b.block.txs.iter().zip(&b.outcomes) {
                if outcome.is_none() {
                    continue;
                }
                for (c, client) in self.clients.iter_mut().enumerate() {
                    if client.key.verifying_key().to_bytes() != tx.client {
                        continue;
                    }
                    let Some((_, _, nodes)) = client.outstanding.get_mut(&tx.seq) else {
                        continue;
                    };
                    if self.cfg.protocol == Protocol::Raft && node != client.target {
                        continue;
                    }
                    if !nodes.contains(&node) {
                        nodes.push(node);
                    }
                    if nodes.len() >= needed {
                        client.outstanding.remove(&tx.seq);
                        self.acked.push((c, tx.seq, b.block.height));
                        self.report.acked_txs += 1;
                    }
                }
            }
        }
    }

    /// One signed read reply from replica `id`, as its API would send it: a correct replica
    /// answers from its store, a Byzantine one with a validly signed value nobody wrote.
    fn read_reply(
        &self,
        id: NodeId,
        key: &str,
    ) -> Result<Option<crate::reply::ReadReply>, SimError> {
        let Some((store, _)) = self.nodes[id as usize].running.as_ref() else {
            return Ok(None);
        };
        let (value, height) = store.get_with_height(key).map_err(|e| SimError::Engine {
            node: id,
            source: e.into(),
        })?;
        let value = if self.is_correct(id) {
            value
        } else {
            Some(format!("forged by {id}"))
        };
        let read = crate::reply::ReadValue::Kv {
            key: key.to_string(),
            value,
        };
        let signature = crate::reply::sign_read(&sim_node_key(id as usize), &read, height);
        Ok(Some(crate::reply::ReadReply {
            node: id,
            read,
            height,
            signature,
        }))
    }

    /// Counts a reply the way `faultline client` does: only if it verifies against the key
    /// cluster.toml gives the replica asked.
    fn verified(&self, r: &crate::reply::ReadReply) -> bool {
        self.cluster.node(r.node).is_some_and(|n| {
            crate::reply::verify_read(&n.public_key, &r.read, r.height, &r.signature)
        })
    }

    /// A PBFT client read by the client's rule (`client::decide_read`): 2f+1 replies matching
    /// in value and height, else the read is ordered on every replica and f+1 matching values
    /// decide (answered from [`Sim::drive`] as the replicas execute their markers).
    fn read(&mut self) -> Result<(), SimError> {
        use crate::reply::{ReadQuorum, ReadRule};
        let key = format!("k{}", self.below(50));
        let mut fast = ReadQuorum::new(ReadRule::Fast, self.cluster.f);
        for id in 0..self.cfg.nodes as NodeId {
            let Some(r) = self.read_reply(id, &key)? else {
                continue;
            };
            if !self.verified(&r) {
                continue;
            }
            if let Some((read, height)) = fast.add(id, r.read, r.height) {
                self.check_read(&key, &read, height, height);
                return Ok(());
            }
        }
        let floor = (0..self.cfg.nodes as NodeId)
            .filter(|id| self.is_correct(*id))
            .filter_map(|id| self.nodes[id as usize].running.as_ref())
            .filter_map(|(store, _)| store.head().ok())
            .map(|h| h.height)
            .max()
            .unwrap_or(0);
        let mut read = SimRead {
            key,
            floor,
            quorum: ReadQuorum::new(ReadRule::Ordered, self.cluster.f),
            waiting: Vec::new(),
        };
        for id in 0..self.cfg.nodes as NodeId {
            let ctx = self.next_read_ctx;
            self.next_read_ctx += 1;
            let Some((_, engine)) = self.nodes[id as usize].running.as_mut() else {
                continue;
            };
            match engine.read_index(ctx) {
                Ok(true) => read.waiting.push((id, ctx)),
                // A replica without the ordered path (a Byzantine wrapper) answers at once.
                Ok(false) => {
                    if let Some(r) = self.read_reply(id, &read.key)? {
                        if self.verified(&r) {
                            read.quorum.add(id, r.read, r.height);
                        }
                    }
                }
                Err(_) => {}
            }
        }
        self.reads.push(read);
        Ok(())
    }

    /// Replica `id` executed the markers of reads `ctxs`: its replies join their quorums.
    fn answer_ordered_reads(&mut self, id: NodeId, ctxs: &[u64]) -> Result<(), SimError> {
        let mut decided = Vec::new();
        for i in 0..self.reads.len() {
            let Some(pos) = self.reads[i]
                .waiting
                .iter()
                .position(|(n, c)| *n == id && ctxs.contains(c))
            else {
                continue;
            };
            self.reads[i].waiting.swap_remove(pos);
            let key = self.reads[i].key.clone();
            let Some(r) = self.read_reply(id, &key)? else {
                continue;
            };
            if !self.verified(&r) {
                continue;
            }
            if let Some(d) = self.reads[i].quorum.add(id, r.read, r.height) {
                decided.push((i, d));
            }
        }
        for (i, (read, _)) in decided.into_iter().rev() {
            let r = self.reads.swap_remove(i);
            let hi = self.max_correct_height();
            self.check_read(&r.key, &read, r.floor, hi);
        }
        Ok(())
    }

    fn max_correct_height(&self) -> u64 {
        (0..self.cfg.nodes as NodeId)
            .filter(|id| self.is_correct(*id))
            .filter_map(|id| self.nodes[id as usize].running.as_ref())
            .filter_map(|(store, _)| store.head().ok())
            .map(|h| h.height)
            .max()
            .unwrap_or(0)
    }

    /// A decided read must be a value the correct replicas' ledger gives `key` at some height
    /// in `lo..=hi` (the fast path: exactly at its height; the ordered path: at or after the
    /// read began) — never a value no correct replica holds.
    fn check_read(&mut self, key: &str, read: &crate::reply::ReadValue, lo: u64, hi: u64) {
        let crate::reply::ReadValue::Kv { value, .. } = read else {
            return;
        };
        self.report.reads += 1;
        // The ledger of a correct node that reached `hi` (all correct ledgers agree, which the
        // checker verifies separately).
        let store = (0..self.cfg.nodes as NodeId)
            .filter(|id| self.is_correct(*id))
            .filter_map(|id| self.nodes[id as usize].running.as_ref())
            .map(|(store, _)| store)
            .find(|s| s.head().is_ok_and(|h| h.height >= hi));
        let Some(store) = store else {
            return;
        };
        let mut current: Option<String> = None;
        let mut seen = false;
        // Replays the ledger's rule: a tx at or below its client's last applied seq is a
        // duplicate and changes nothing (docs/SPEC.md "Transactions").
        let mut last_seq: std::collections::HashMap<[u8; 32], u64> = Default::default();
        for h in 1..=hi {
            if let Ok(Some(b)) = store.block(h) {
                for tx in &b.txs {
                    if tx.op.is_read_marker()
                        || last_seq.get(&tx.client).is_some_and(|l| tx.seq <= *l)
                    {
                        continue;
                    }
                    last_seq.insert(tx.client, tx.seq);
                    match &tx.op {
                        Op::Put { key: k, value: v } if k == key => current = Some(v.clone()),
                        Op::Delete { key: k } if k == key => current = None,
                        _ => {}
                    }
                }
            }
            if h >= lo && current == *value {
                seen = true;
                break;
            }
        }
        if lo == 0 && value.is_none() {
            seen = true;
        }
        if !seen {
            self.checker.flag(
                hi,
                format!(
                    "a PBFT client read of {key:?} returned {value:?}, which no correct replica held at heights {lo}..={hi}"
                ),
            );
        }
    }

    fn random_op(&mut self) -> Op {
        if self.cfg.large_values && self.below(4) == 0 {
            let len = 16_000 + self.below(44_000) as usize;
            let fill = (b'a' + self.below(26) as u8) as char;
            return Op::Put {
                key: format!("big{}", self.below(50)),
                value: std::iter::repeat_n(fill, len).collect(),
            };
        }
        let a = ACCOUNTS[self.below(4) as usize].to_string();
        let b = ACCOUNTS[self.below(4) as usize].to_string();
        match self.below(3) {
            0 => Op::Put {
                key: format!("k{}", self.below(50)),
                value: format!("v{}", self.rng.next_u64() % 1000),
            },
            1 => Op::Delete {
                key: format!("k{}", self.below(50)),
            },
            _ => Op::Transfer {
                from: a,
                to: b,
                amount: self.below(200),
            },
        }
    }

    fn submit(&mut self, c: usize) -> Result<(), SimError> {
        if self.clients[c].outstanding.len() < CLIENT_MAX_OUTSTANDING {
            let op = self.random_op();
            let client = &mut self.clients[c];
            let tx = Tx::sign(&client.key, client.next_seq, op);
            client
                .outstanding
                .insert(client.next_seq, (tx, 0, Vec::new()));
            client.next_seq += 1;
        }
        // Send what is new or overdue.
        let now = self.now;
        let due: Vec<Tx> = self.clients[c]
            .outstanding
            .values_mut()
            .filter(|(_, sent, _)| *sent == 0 || now.saturating_sub(*sent) > CLIENT_RETRY_US)
            .map(|(tx, sent, _)| {
                *sent = now.max(1);
                tx.clone()
            })
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        match self.cfg.protocol {
            Protocol::Raft => self.submit_raft(c, due),
            Protocol::Pbft => {
                for id in 0..self.cfg.nodes as NodeId {
                    self.propose_at(id, due.clone())?;
                }
                Ok(())
            }
        }
    }

    fn submit_raft(&mut self, c: usize, txs: Vec<Tx>) -> Result<(), SimError> {
        let mut target = self.clients[c].target;
        for _ in 0..2 {
            match self.propose_at(target, txs.clone())? {
                Some(ProposeError::NotLeader { leader: Some(l) }) if l != target => target = l,
                Some(_) => {
                    // No leader known or node down: try another node next time.
                    target = self.below(self.cfg.nodes as u64);
                    break;
                }
                None => break,
            }
        }
        self.clients[c].target = target;
        Ok(())
    }

    /// Hands `txs` to node `id` as its API would; returns the refusal, if any.
    fn propose_at(&mut self, id: NodeId, txs: Vec<Tx>) -> Result<Option<ProposeError>, SimError> {
        let Some((_, engine)) = self.nodes[id as usize].running.as_mut() else {
            return Ok(Some(ProposeError::NotLeader { leader: None }));
        };
        match engine.propose(txs) {
            Ok(()) => {
                self.drive(id)?;
                Ok(None)
            }
            Err(e) => Ok(Some(e)),
        }
    }

    fn chaos(&mut self) {
        let n = self.cfg.nodes;
        // At most f nodes are down at a time, whichever they are. With PBFT this may add to f
        // Byzantine nodes: a replica restarted from what it fsynced (every signature it gave is
        // persisted before it is sent) is a correct replica that was slow, so agreement is still
        // owed; progress is owed only once the faults stop and everyone is back.
        let tolerated = self.cfg.protocol.max_faults(n);
        if self.cfg.crash {
            let down: Vec<NodeId> = (0..n as NodeId)
                .filter(|i| self.nodes[*i as usize].running.is_none())
                .collect();
            if !down.is_empty() && self.chance(0.5) {
                let i = down[self.below(down.len() as u64) as usize];
                let _ = self.start_node(i);
            } else if down.len() < tolerated {
                let i = self.below(n as u64);
                self.crash_node(i);
            }
        }
        if self.cfg.partition {
            if self.sides.is_some() {
                if self.chance(0.6) {
                    self.sides = None;
                }
            } else if self.chance(0.4) {
                let sides: Vec<u8> = (0..n).map(|_| (self.rng.next_u64() % 2) as u8).collect();
                self.sides = Some(sides);
                self.report.partitions += 1;
            }
        }
        let next = 50 + self.below(100);
        self.schedule(next * TICK_US, Event::Chaos);
    }

    fn heal(&mut self) -> Result<(), SimError> {
        self.faults_on = false;
        self.sides = None;
        for i in 0..self.cfg.nodes as NodeId {
            if self.nodes[i as usize].running.is_none() {
                self.start_node(i)?;
            }
        }
        Ok(())
    }

    /// Runs the fault phase, then heals and runs until the end; returns the report.
    pub fn run(self) -> Result<SimReport, SimError> {
        self.run_with_stores().map(|(report, _)| report)
    }

    /// [`Sim::run`], also handing back the stores of the correct nodes still running at the end
    /// (for audits in tests).
    pub fn run_with_stores(mut self) -> Result<(SimReport, Vec<Store>), SimError> {
        let heal_at = self.cfg.steps * TICK_US;
        let heal_ticks = self.cfg.heal_ticks.max(3);
        let quiet_ticks = heal_ticks / 3;
        let quiet_at = heal_at + (heal_ticks - quiet_ticks) * TICK_US;
        let end = heal_at + heal_ticks * TICK_US;
        let mut height_at_heal = 0;
        while let Some(Reverse(ev)) = self.queue.pop() {
            if ev.at > end {
                break;
            }
            self.now = ev.at;
            if self.now >= quiet_at {
                self.clients_on = false;
            }
            match ev.event {
                Event::Deliver { from, to, bytes } => {
                    let blocked = self
                        .sides
                        .as_ref()
                        .is_some_and(|s| s[from as usize] != s[to as usize]);
                    if !blocked {
                        if let Some((_, engine)) = self.nodes[to as usize].running.as_mut() {
                            // Rejections are the engine's business (counted there).
                            let _ = engine.on_message(from, &bytes);
                            self.drive(to)?;
                        }
                    }
                }
                Event::Tick(id) => {
                    if let Some((_, engine)) = self.nodes[id as usize].running.as_mut() {
                        engine.on_tick();
                        self.drive(id)?;
                    }
                    self.schedule(TICK_US, Event::Tick(id));
                }
                Event::Submit(c) => {
                    if self.clients_on {
                        self.submit(c)?;
                        if self.cfg.protocol == Protocol::Pbft && self.below(4) == 0 {
                            self.read()?;
                        }
                        self.schedule(CLIENT_INTERVAL_US, Event::Submit(c));
                    }
                }
                Event::Chaos => {
                    if self.faults_on {
                        self.chaos();
                    }
                }
                Event::Heal => {
                    self.heal()?;
                    height_at_heal = self.checker.height();
                }
            }
            if self.checker.violation.is_some() {
                break;
            }
        }
        self.finish(height_at_heal)
    }

    fn finish(mut self, height_at_heal: u64) -> Result<(SimReport, Vec<Store>), SimError> {
        self.check_acked_writes();
        self.audit_one_ledger();
        let height = self.checker.height();
        self.report.height = height;
        self.report.heal_commits = height.saturating_sub(height_at_heal);
        if let Some(Violation { height, detail }) = self.checker.violation.take() {
            self.report.safe = false;
            self.report.live = false;
            self.report.first_diverging_height = Some(height);
            self.report.detail = Some(detail);
            return Ok(self.into_parts());
        }
        if self.report.oversized > 0 {
            // The detail names the first oversized message; liveness is moot.
            return Ok(self.into_parts());
        }
        // Liveness after stabilisation: new blocks after the heal, and every correct node
        // caught up to the same head.
        let mut heads = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.byzantine.is_some() {
                continue;
            }
            if let Some((store, engine)) = &node.running {
                if let Ok(head) = store.head() {
                    heads.push((i, head, engine.status()));
                }
            }
        }
        // What each protocol owes its clients once faults stop: raft, a majority of nodes on the
        // newest head; pbft, f+1 correct replicas on it (a client's f+1 matching replies) —
        // a replica that missed commits catches up at the next checkpoint (state transfer).
        let newest = heads.iter().map(|(_, h, _)| h.height).max().unwrap_or(0);
        let on_newest = heads.iter().filter(|(_, h, _)| h.height == newest).count();
        let owed = match self.cfg.protocol {
            Protocol::Raft => self.cfg.nodes / 2 + 1,
            Protocol::Pbft => self.cluster.f + 1,
        };
        let spread: Vec<String> = heads
            .iter()
            .map(|(i, h, st)| {
                let epoch = st.view.or(st.term).unwrap_or(0);
                format!("{i}:{}({} {epoch})", h.height, st.role)
            })
            .collect();
        if self.report.heal_commits == 0 || on_newest < owed {
            self.report.live = false;
            self.report.detail = Some(format!(
                "after the faults stopped: {} new blocks; heads {}",
                self.report.heal_commits,
                spread.join(" ")
            ));
        } else if on_newest < heads.len() {
            self.report.detail = Some(format!(
                "lagging replicas (catch up at the next checkpoint): heads {}",
                spread.join(" ")
            ));
        }
        Ok(self.into_parts())
    }

    fn into_parts(self) -> (SimReport, Vec<Store>) {
        let stores = self
            .nodes
            .into_iter()
            .filter(|n| n.byzantine.is_none())
            .filter_map(|n| n.running.map(|(store, _)| store))
            .collect();
        (self.report, stores)
    }

    /// The first correct node's ledger must pass the offline audit of `faultline verify`: hash
    /// chain, client signatures, and (pbft) a valid commit certificate on every block.
    fn audit_one_ledger(&mut self) {
        let first = self.nodes.iter().enumerate().find_map(|(i, n)| {
            let (store, _) = n.running.as_ref().filter(|_| n.byzantine.is_none())?;
            Some((i, store))
        });
        let Some((i, store)) = first else { return };
        let finding = match crate::verify::verify_store(store) {
            Ok(crate::verify::Verdict::Ok { .. }) => None,
            Ok(crate::verify::Verdict::Partial { first, .. }) => Some((
                first,
                format!("node {i}'s ledger starts at height {first}, not at 1"),
            )),
            Ok(crate::verify::Verdict::Bad { height, reason }) => Some((
                height,
                format!("node {i}'s ledger fails the audit at height {height}: {reason}"),
            )),
            Err(e) => Some((0, format!("node {i}'s store: {e}"))),
        };
        if let Some((height, detail)) = finding {
            self.checker.flag(height, detail);
        }
        // Every correct node holds the whole chain (issue 10: history is never lost): blocks
        // from height 1 up to its head, whatever the protocol and however it caught up.
        let mut gaps = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some((store, _)) = n.running.as_ref().filter(|_| n.byzantine.is_none()) else {
                continue;
            };
            let head = match store.head() {
                Ok(h) => h.height,
                Err(e) => {
                    gaps.push((0, format!("node {i}'s store: {e}")));
                    continue;
                }
            };
            if head == 0 {
                continue;
            }
            let whole = matches!(store.first_height(), Ok(Some(1)))
                && matches!(store.base(), Ok(b) if b.height == 0)
                && matches!(store.block(head), Ok(Some(_)));
            if !whole {
                gaps.push((
                    1,
                    format!("node {i} does not hold the whole chain 1..={head}"),
                ));
            }
        }
        for (height, detail) in gaps {
            self.checker.flag(height, detail);
        }
    }

    /// Every acknowledged write must be applied at every correct node that has caught up past
    /// the height it was acknowledged at (its seq or a later one recorded for its client).
    fn check_acked_writes(&mut self) {
        let acked = std::mem::take(&mut self.acked);
        for (c, seq, height) in acked {
            let client = self.clients[c].key.verifying_key().to_bytes();
            for (i, node) in self.nodes.iter().enumerate() {
                if node.byzantine.is_some() {
                    continue;
                }
                let Some((store, _)) = &node.running else {
                    continue;
                };
                let Ok(head) = store.head() else { continue };
                if head.height < height {
                    continue;
                }
                let last = store.last_seq(&client).ok().flatten().unwrap_or(0);
                if last < seq {
                    self.checker.flag(
                        height,
                        format!("lost acknowledged write: client {c} seq {seq} (acknowledged at height {height}) is missing at node {i}"),
                    );
                }
            }
        }
    }
}

/// Runs one seed.
pub fn run(cfg: SimConfig) -> Result<SimReport, SimError> {
    Sim::new(cfg)?.run()
}
