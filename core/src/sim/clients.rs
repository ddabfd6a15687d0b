//! The simulated clients: a random workload of signed writes, submitted as `faultline client`
//! would (raft: to the node believed to lead; pbft: to every replica) and retried until
//! acknowledged, and PBFT reads decided by the client's rule (2f+1 matching replies, else
//! ordered on every replica). What counts as an answer is decided by the same
//! [`crate::client_protocol`] the real clients use; only the transport is simulated.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use rand_core::Rng;

use super::{sim_node_key, Sim, SimError, ACCOUNTS, CLIENT_MAX_OUTSTANDING, CLIENT_RETRY_US};
use crate::api_types::{BatchEntry, EntryResult};
use crate::client_protocol::{ClientRead, ReadTarget, Route, Vouched, WriteNext, WriteQuorum};
use crate::config::Protocol;
use crate::engine::{NodeId, ProposeError};
use crate::ledger::{Op, Tx};
use crate::store::AppliedBlock;

pub(super) struct Client {
    pub(super) key: SigningKey,
    pub(super) next_seq: u64,
    /// seq -> (tx, last sent at, the answers counted so far)
    pub(super) outstanding: BTreeMap<u64, (Tx, u64, WriteQuorum)>,
    /// Raft: the node believed to lead, which is also the one whose answers the client hears.
    pub(super) route: Route,
}

/// A PBFT read the simulated client is ordering on every replica (TOCS §5.1.3's fallback).
pub(super) struct SimRead {
    /// The highest height any correct node had applied when the read began: a linearizable
    /// answer is the state at some height at or above it.
    floor: u64,
    read: ClientRead,
    /// (replica, read ctx) still to answer.
    waiting: Vec<(NodeId, u64)>,
}

impl Sim {
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

    pub(super) fn submit(&mut self, c: usize) -> Result<(), SimError> {
        if self.clients[c].outstanding.len() < CLIENT_MAX_OUTSTANDING {
            let op = self.random_op();
            let client = &mut self.clients[c];
            let tx = Tx::sign(&client.key, client.next_seq, op);
            let quorum = WriteQuorum::new(&self.cluster, [tx.hash()]);
            client.outstanding.insert(client.next_seq, (tx, 0, quorum));
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
        // The client acts on what it hears only once this submission's attempts are over:
        // commits applied meanwhile are judged against the node it had asked.
        let mut route = self.clients[c].route.clone();
        for _ in 0..2 {
            let asked = route.target();
            let leader = match self.propose_at(asked, txs.clone())? {
                None => break,
                Some(ProposeError::NotLeader { leader }) => leader,
                Some(_) => None,
            };
            if let WriteNext::Redirect(_) = route.on_failure(asked, leader) {
                continue;
            }
            // No leader known or node down: another node next time, one the seed picks.
            route.retry_at(self.below(self.cfg.nodes as u64));
            break;
        }
        self.clients[c].route = route;
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

    /// Client bookkeeping: node `node` applied these blocks, which is the answer it sends the
    /// clients whose transactions they hold (raft: heard from the node asked; pbft: decided by
    /// f+1 replicas matching in height and result).
    pub(super) fn on_applied(&mut self, node: NodeId, applied: &[AppliedBlock]) {
        for b in applied {
            for ((tx, outcome), hash) in b.block.txs.iter().zip(&b.outcomes).zip(&b.tx_hashes) {
                let Some(outcome) = outcome else {
                    continue;
                };
                for (c, client) in self.clients.iter_mut().enumerate() {
                    if client.key.verifying_key().to_bytes() != tx.client {
                        continue;
                    }
                    let Some((_, _, quorum)) = client.outstanding.get_mut(&tx.seq) else {
                        continue;
                    };
                    if !client.route.listens_to(node) {
                        continue;
                    }
                    let entry = BatchEntry {
                        height: b.block.height,
                        result: EntryResult::Applied(outcome.clone()),
                        tx_hash: *hash,
                    };
                    if let Some(height) =
                        quorum.add(Vouched::observed(node, entry)).map(|d| d.height)
                    {
                        client.outstanding.remove(&tx.seq);
                        self.acked.push((c, tx.seq, height));
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

    /// A PBFT client read by the client's rule ([`ClientRead`]): 2f+1 replies matching in
    /// value and height, else the read is ordered on every replica and f+1 matching values
    /// decide (answered from [`Sim::drive`] as the replicas execute their markers).
    pub(super) fn read(&mut self) -> Result<(), SimError> {
        let key = format!("k{}", self.below(50));
        let mut read = ClientRead::new(&self.cluster, ReadTarget::Kv(key.clone()));
        for id in 0..self.cfg.nodes as NodeId {
            let Some(r) = self.read_reply(id, &key)? else {
                continue;
            };
            if let Some(d) = read.on_reply(&self.cluster, id, Some(r)) {
                self.check_read(&key, &d.read, d.height, d.height);
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
        // Not decided on the fast path: ask every replica again, ordered.
        if read.phase_over().is_err() {
            return Ok(());
        }
        let mut read = SimRead {
            floor,
            read,
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
                    if let Some(r) = self.read_reply(id, &key)? {
                        read.read.on_reply(&self.cluster, id, Some(r));
                    }
                }
                Err(_) => {}
            }
        }
        self.reads.push(read);
        Ok(())
    }

    /// Replica `id` executed the markers of reads `ctxs`: its replies join their quorums.
    pub(super) fn answer_ordered_reads(
        &mut self,
        id: NodeId,
        ctxs: &[u64],
    ) -> Result<(), SimError> {
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
            let ReadTarget::Kv(key) = self.reads[i].read.target().clone() else {
                continue;
            };
            let Some(r) = self.read_reply(id, &key)? else {
                continue;
            };
            if let Some(d) = self.reads[i].read.on_reply(&self.cluster, id, Some(r)) {
                decided.push((i, key, d));
            }
        }
        for (i, key, d) in decided.into_iter().rev() {
            let r = self.reads.swap_remove(i);
            let hi = self.max_correct_height();
            self.check_read(&key, &d.read, r.floor, hi);
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
}
