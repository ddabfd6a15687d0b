//! The one task that owns the engine and feeds it: inbound messages, ticks and API commands.
//! After each batch of inputs (everything available, drained without waiting) it calls
//! [`drive`] once — one fsync for the whole batch (group commit) — then sends the messages and
//! answers the API waiters whose transactions or reads are now applied.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultline_net::{Inbound, NetHandle, SendError};
use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::{drive_sending_early, Engine, EngineError, NodeId, Outgoing, ProposeError};
use crate::handle::{Cmd, NodeStatus, Shared, TransferRefused};
use crate::ledger::{Tx, TxRecord};
use crate::store::AppliedBlock;

/// Inputs handled per batch before the engine is driven (bounds the latency of one round).
const MAX_BATCH_INPUTS: usize = 8192;
/// Proposals whose commit nobody awaits are forgotten after this long (a leader change drops
/// a raft leader's queued transactions; clients retry).
const PENDING_TTL: Duration = Duration::from_secs(120);

struct Pending {
    since: Instant,
    waiters: Vec<oneshot::Sender<TxRecord>>,
}

pub(super) struct Driver {
    pub engine: Box<dyn Engine>,
    pub shared: Arc<Shared>,
    pub net: NetHandle,
    pub inbound: mpsc::Receiver<Inbound>,
    pub cmds: mpsc::Receiver<Cmd>,
    pub shutdown: watch::Receiver<bool>,
    pub tick: Duration,
}

struct State {
    pending: HashMap<[u8; 32], Pending>,
    reads: HashMap<u64, oneshot::Sender<Result<(), ProposeError>>>,
    next_read: u64,
    leadership_changes_seen: u64,
    /// Since when this node has seen fewer connected peers than a quorum needs (logged once
    /// after a grace period, so that startup and a peer's restart are not noise).
    below_quorum_since: Option<Instant>,
    below_quorum_logged: bool,
}

/// How long a node may lack a quorum of connections before it says so.
const BELOW_QUORUM_GRACE: Duration = Duration::from_secs(3);

impl Driver {
    /// Runs until shutdown is signalled or the network stops. A store failure ends the node:
    /// continuing could acknowledge something the disk does not hold.
    pub async fn run(mut self) -> Result<(), EngineError> {
        let mut st = State {
            pending: HashMap::new(),
            reads: HashMap::new(),
            next_read: 1,
            leadership_changes_seen: self.engine.leadership_changes(),
            below_quorum_since: None,
            below_quorum_logged: false,
        };
        let mut ticks: u64 = 0;
        // Ticks are due by the clock, checked every round: a busy inbound stream must not
        // starve the protocol's timers (heartbeats, elections).
        let mut next_tick = Instant::now() + self.tick;
        self.publish(&mut st);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                msg = self.inbound.recv() => match msg {
                    Some(m) => self.on_inbound(m),
                    None => break,
                },
                Some(cmd) = self.cmds.recv() => self.on_cmd(cmd, &mut st),
                _ = tokio::time::sleep_until(next_tick.into()) => {}
            }
            // Drain what else is ready (each source with its own budget), then drive once.
            for _ in 0..MAX_BATCH_INPUTS {
                match self.inbound.try_recv() {
                    Ok(m) => self.on_inbound(m),
                    Err(_) => break,
                }
            }
            for _ in 0..MAX_BATCH_INPUTS {
                match self.cmds.try_recv() {
                    Ok(c) => self.on_cmd(c, &mut st),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.engine.on_tick();
                for hash in self.engine.take_dropped() {
                    // Dropping the waiters answers their requests now (see `submit`).
                    st.pending.remove(&hash);
                }
                ticks += 1;
                // One tick per round even if several were missed (like MissedTickBehavior::
                // Delay): a stalled node must not fire a burst of elections on waking.
                next_tick = now + self.tick;
                if ticks % 100 == 0 {
                    st.pending.retain(|_, p| {
                        p.waiters.retain(|w| !w.is_closed());
                        p.since.elapsed() < PENDING_TTL
                    });
                    st.reads.retain(|_, r| !r.is_closed());
                }
            }
            let store = Arc::clone(&self.shared.store);
            let (engine, net, shared) = (&mut self.engine, &self.net, &self.shared);
            // The fsync blocks; let the runtime move other tasks off this worker meanwhile. A
            // Raft leader's appends leave before it (thesis §10.2.1), the rest after.
            let (messages, applied) = tokio::task::block_in_place(|| {
                drive_sending_early(engine.as_mut(), &store, &mut |early| {
                    send(net, shared, early)
                })
            })?;
            send(&self.net, &self.shared, messages);
            // Status first: a client that got its answer then sees at least that height.
            self.publish(&mut st);
            self.on_applied(&applied, &mut st);
            for ctx in self.engine.ready_reads() {
                if let Some(r) = st.reads.remove(&ctx) {
                    let _ = r.send(Ok(()));
                }
            }
        }
        tracing::info!("driver stopped");
        Ok(())
    }

    fn on_inbound(&mut self, m: Inbound) {
        let kind = self.engine.message_kind(&m.bytes);
        self.shared.metrics.count_received(m.from, kind);
        if let Err(r) = self.engine.on_message(m.from, &m.bytes) {
            tracing::debug!(from = m.from, reason = r.reason, "message rejected");
            self.shared.metrics.count_rejected(r.reason, 1);
        }
    }

    fn on_cmd(&mut self, cmd: Cmd, st: &mut State) {
        match cmd {
            Cmd::Propose {
                txs,
                waiters,
                reply,
            } => {
                let hashes: Vec<[u8; 32]> = txs.iter().map(Tx::hash).collect();
                let mut result = self.engine.propose(txs);
                // A PBFT client sends its transaction to every replica and the primary orders
                // it; a backup that cannot propose still answers once it has applied it, so
                // that the client can collect f+1 signed replies from distinct nodes.
                if self.engine.protocol() == crate::config::Protocol::Pbft
                    && matches!(result, Err(ProposeError::NotLeader { .. }))
                {
                    result = Ok(());
                }
                if result.is_ok() {
                    let now = Instant::now();
                    let mut waiters = waiters.into_iter();
                    for h in hashes {
                        let p = st.pending.entry(h).or_insert_with(|| Pending {
                            since: now,
                            waiters: Vec::new(),
                        });
                        if let Some(w) = waiters.next() {
                            p.waiters.push(w);
                        }
                    }
                }
                let _ = reply.send(result);
            }
            Cmd::TransferLeader { to, term, reply } => {
                let now = self.engine.status().term;
                let result = if now != Some(term) {
                    Err(TransferRefused::StaleTerm { now })
                } else {
                    self.engine
                        .transfer_leader(to)
                        .map_err(TransferRefused::Engine)
                };
                let _ = reply.send(result);
            }
            Cmd::Read { reply } => {
                let ctx = st.next_read;
                st.next_read += 1;
                match self.engine.read_index(ctx) {
                    Ok(true) => {
                        st.reads.insert(ctx, reply);
                    }
                    Ok(false) => {
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    fn on_applied(&mut self, applied: &[AppliedBlock], st: &mut State) {
        let metrics = &self.shared.metrics;
        for ab in applied {
            let height = ab.block.height;
            for ((tx, outcome), hash) in ab.block.txs.iter().zip(&ab.outcomes).zip(&ab.tx_hashes) {
                let hash = *hash;
                if outcome.is_some() {
                    metrics.committed_txs.inc();
                }
                let Some(p) = st.pending.remove(&hash) else {
                    continue;
                };
                metrics
                    .commit_latency
                    .observe(p.since.elapsed().as_secs_f64());
                let record = match outcome {
                    Some(o) => Some(TxRecord {
                        height,
                        tx_hash: hash,
                        outcome: o.clone(),
                    }),
                    // A duplicate (client, seq): answer with the original application.
                    None => self
                        .shared
                        .store
                        .tx_record(&tx.client, tx.seq)
                        .ok()
                        .flatten(),
                };
                if let Some(rec) = record {
                    for w in p.waiters {
                        let _ = w.send(rec.clone());
                    }
                }
            }
        }
    }

    /// Publishes status and gauges after each round (read by `/v1/status` and `/metrics`).
    fn publish(&mut self, st: &mut State) {
        let status = self.engine.status();
        let head = self.shared.store.head().ok();
        let peers = self.net.connected_peers();
        let m = &self.shared.metrics;
        if let Some(t) = status.term {
            m.term.set(t as i64);
        }
        if let Some(v) = status.view {
            m.view.set(v as i64);
        }
        let changes = self.engine.leadership_changes();
        if changes > st.leadership_changes_seen {
            let delta = changes - st.leadership_changes_seen;
            match self.engine.protocol() {
                crate::config::Protocol::Raft => m.leader_changes.inc_by(delta),
                crate::config::Protocol::Pbft => m.view_changes.inc_by(delta),
            };
            st.leadership_changes_seen = changes;
        }
        m.peers_connected.set(peers as i64);
        self.watch_quorum(st, peers);
        let mut s = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = head {
            m.ledger_height.set(h.height as i64);
            s.height = h.height;
            s.head_hash = h.hash;
        }
        s.engine = status;
        s.peers_connected = peers;
        s.block_sync = self.engine.block_sync();
    }
}

/// Hands `messages` to the network, counting what left and what could not.
fn send(net: &NetHandle, shared: &Shared, messages: Vec<Outgoing>) {
    for m in messages {
        let len = m.bytes.len();
        match net.send(m.to, m.kind, m.bytes) {
            Ok(()) => shared.metrics.count_sent(m.to, m.kind, len),
            Err(SendError::QueueFull) => {
                tracing::debug!(to = m.to, kind = m.kind, "send queue full; dropped")
            }
            Err(e @ SendError::TooLarge { .. }) => {
                // The cores cut everything to the budget, so this is a bug: loud, and counted
                // where operators look (the simulator fails such a run).
                tracing::error!(to = m.to, kind = m.kind, error = %e, "BUG: oversized message not sent");
                shared.metrics.count_rejected("oversized", 1);
            }
            Err(e) => tracing::debug!(to = m.to, error = %e, "send failed"),
        }
    }
}

impl Driver {
    /// Logs when this node cannot reach enough peers to commit, and when it can again.
    fn watch_quorum(&self, st: &mut State, peers: usize) {
        let cluster = &self.shared.cluster;
        let n = cluster.nodes.len();
        let quorum = cluster.protocol.quorum(n);
        if peers + 1 >= quorum {
            if st.below_quorum_logged {
                tracing::info!(
                    peers_connected = peers,
                    quorum,
                    "quorum of connections restored"
                );
            }
            st.below_quorum_since = None;
            st.below_quorum_logged = false;
            return;
        }
        let since = *st.below_quorum_since.get_or_insert_with(Instant::now);
        if !st.below_quorum_logged && since.elapsed() >= BELOW_QUORUM_GRACE {
            st.below_quorum_logged = true;
            let unreachable: Vec<NodeId> = cluster
                .nodes
                .iter()
                .map(|p| p.id)
                .filter(|&id| id != self.shared.id && !self.net.is_connected(id))
                .collect();
            tracing::warn!(
                peers_connected = peers,
                quorum,
                ?unreachable,
                "below quorum: this node reaches {} of the {quorum} nodes needed to commit; writes wait until peers are reachable",
                peers + 1
            );
        }
    }
}

impl NodeStatus {
    pub(super) fn initial(engine: &dyn Engine) -> NodeStatus {
        NodeStatus {
            engine: engine.status(),
            height: 0,
            head_hash: [0; 32],
            peers_connected: 0,
            block_sync: engine.block_sync(),
        }
    }
}
