//! The simulated network and its faults: every message a node sends is counted, refused if
//! it is over the size budget, dropped, duplicated or cut off by a partition as the seed
//! decides, and otherwise delivered after a random delay; chaos crashes and restarts nodes
//! and moves the partition until the heal.

use rand_core::Rng;

use super::event_loop::Event;
use super::{Sim, SimError, TICK_US};
use crate::engine::{NodeId, Outgoing};

impl Sim {
    pub(super) fn send(&mut self, from: NodeId, m: Outgoing) {
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
        if let Some((node, during)) = &self.away {
            if (*node == m.to || *node == from) && during.contains(&self.now) {
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

    pub(super) fn chaos(&mut self) {
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

    pub(super) fn heal(&mut self) -> Result<(), SimError> {
        self.faults_on = false;
        self.sides = None;
        for i in 0..self.cfg.nodes as NodeId {
            if self.nodes[i as usize].running.is_none() {
                self.start_node(i)?;
            }
        }
        Ok(())
    }
}
