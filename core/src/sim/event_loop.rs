//! The simulator's event loop: one queue of timed events (deliveries, ticks, client
//! submissions, chaos, the heal) run in order until the end of the run, and the nodes it
//! drives — started from their crashable disks, crashed, and polled until quiet exactly as
//! the real driver polls them.

use std::cmp::Reverse;
use std::sync::Arc;

use super::{
    sim_node_key, sim_timing, Phases, Sim, SimError, SimReport, CLIENT_INTERVAL_US, TICK_US,
};
use crate::config::{Batching, Protocol};
use crate::engine::{self, NodeId};
use crate::setup::{open_engine, EngineSetup};
use crate::store::Store;

pub(super) enum Event {
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

pub(super) struct Scheduled {
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

impl Sim {
    /// Runs the fault phase, then heals and runs until the end; returns the report.
    pub fn run(self) -> Result<SimReport, SimError> {
        self.run_with_stores().map(|(report, _)| report)
    }

    /// [`Sim::run`], also handing back the stores of the correct nodes still running at the end
    /// (for audits in tests).
    pub fn run_with_stores(mut self) -> Result<(SimReport, Vec<Store>), SimError> {
        let Phases {
            quiet: quiet_at,
            end,
            ..
        } = Phases::of(&self.cfg);
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

    pub(super) fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            event,
        }));
    }

    pub(super) fn start_node(&mut self, id: NodeId) -> Result<(), SimError> {
        let node = &self.nodes[id as usize];
        let err = |source| SimError::Engine { node: id, source };
        let store = Store::with_backend(node.backend.clone(), &self.cluster.genesis)
            .map_err(|e| err(e.into()))?;
        let engine = open_engine(
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

    pub(super) fn crash_node(&mut self, id: NodeId) {
        let node = &mut self.nodes[id as usize];
        if node.running.take().is_some() {
            node.backend.crash();
            self.report.crashes += 1;
        }
    }

    /// Polls node `id` until quiet: persist, send, apply, check (the real driving loop).
    pub(super) fn drive(&mut self, id: NodeId) -> Result<(), SimError> {
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
        let changes = engine.leadership_changes();
        if !ready_reads.is_empty() {
            self.answer_ordered_reads(id, &ready_reads)?;
        }
        if self.is_correct(id) {
            for seen in [
                &mut self.report.leader_changes,
                &mut self.report.view_changes,
            ]
            .into_iter()
            .flatten()
            {
                *seen = (*seen).max(changes);
            }
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
}
