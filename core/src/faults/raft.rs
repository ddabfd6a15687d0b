//! Byzantine Raft nodes. Raft trusts its leader and takes followers' acknowledgements at their
//! word; these behaviours show exactly where that breaks (a fork, an acknowledged write lost,
//! a transaction no client signed) and where Raft's checks still hold (forged senders are
//! refused by the authenticated transport).

use faultline_raft::{Message, MessageBody};

use crate::config::ByzantineMode;
use crate::config::Protocol;
use crate::engine::raft::{decode_raft, encode_raft, RaftEngine};
use crate::engine::{Engine, EngineError, NodeId, Outgoing, ProposeError, Rejected, Step};
use crate::ledger::{Op, Tx};
use crate::store::Store;

pub struct ByzantineRaft {
    inner: RaftEngine,
    mode: ByzantineMode,
    id: NodeId,
    n: u64,
    extra: Vec<Message>,
    ticks: u64,
}

impl ByzantineRaft {
    pub fn new(inner: RaftEngine, mode: ByzantineMode, id: NodeId, n: usize) -> Self {
        ByzantineRaft {
            inner,
            mode,
            id,
            n: n as u64,
            extra: Vec::new(),
            ticks: 0,
        }
    }

    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.n).filter(move |p| *p != self.id)
    }

    /// Transactions with one field changed and the client's signature left as it was.
    fn tamper(data: &[u8]) -> Option<Vec<u8>> {
        let mut txs: Vec<Tx> = postcard::from_bytes(data).ok()?;
        let tx = txs.first_mut()?;
        match &mut tx.op {
            Op::Put { value, .. } => value.push('!'),
            Op::Delete { key } => key.push('!'),
            Op::Transfer { amount, .. } => *amount = amount.wrapping_add(1),
            Op::Read {} => tx.seq = tx.seq.wrapping_add(1),
        }
        postcard::to_allocvec(&txs).ok()
    }

    /// A different but well-formed batch for the same log slot (equivocation).
    fn alternative(data: &[u8]) -> Option<Vec<u8>> {
        let mut txs: Vec<Tx> = postcard::from_bytes(data).ok()?;
        if txs.len() > 1 {
            txs.reverse();
        } else {
            // An empty batch would be a no-op; a repeated tx makes a different, valid block.
            let again = txs.clone();
            txs.extend(again);
        }
        postcard::to_allocvec(&txs).ok()
    }

    fn transform(&mut self, mut msg: Message) -> Option<Message> {
        match self.mode {
            ByzantineMode::Silent => return None,
            ByzantineMode::Forge => {
                // Claim to be another node; the transport-authenticated sender gives it away.
                msg.from = (self.id + 1) % self.n;
            }
            ByzantineMode::Equivocate => {
                if let MessageBody::AppendEntries { entries, .. } = &mut msg.body {
                    if msg.to % 2 == 1 {
                        for e in entries.iter_mut().filter(|e| !e.data.is_empty()) {
                            if let Some(d) = Self::alternative(&e.data) {
                                e.data = d;
                            }
                        }
                    }
                }
            }
            ByzantineMode::Corrupt => match &mut msg.body {
                MessageBody::AppendEntries { entries, .. } => {
                    for e in entries.iter_mut().filter(|e| !e.data.is_empty()) {
                        if let Some(d) = Self::tamper(&e.data) {
                            e.data = d;
                        }
                    }
                }
                MessageBody::AppendEntriesResponse {
                    success: true,
                    match_index,
                    ..
                } => *match_index = match_index.saturating_add(1000),
                _ => {}
            },
            ByzantineMode::Disrupt => {
                if matches!(
                    msg.body,
                    MessageBody::AppendEntriesResponse { .. }
                        | MessageBody::RequestVoteResponse { .. }
                ) {
                    msg.term = msg.term.saturating_add(100);
                }
            }
            ByzantineMode::AckWithoutStore => {}
        }
        Some(msg)
    }
}

impl Engine for ByzantineRaft {
    fn protocol(&self) -> Protocol {
        Protocol::Raft
    }

    fn id(&self) -> NodeId {
        self.id
    }

    fn on_message(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), Rejected> {
        // Block-sync traffic goes to the honest engine as is.
        let Some(msg) = decode_raft(bytes) else {
            return self.inner.on_message(from, bytes);
        };
        match (&self.mode, &msg.body) {
            // Acknowledge appends at once, storing nothing.
            (
                ByzantineMode::AckWithoutStore,
                MessageBody::AppendEntries {
                    prev_log_index,
                    entries,
                    read_ctx,
                    ..
                },
            ) if !entries.is_empty() => {
                self.extra.push(Message {
                    from: self.id,
                    to: from,
                    term: msg.term,
                    body: MessageBody::AppendEntriesResponse {
                        success: true,
                        match_index: prev_log_index + entries.len() as u64,
                        reject_hint: None,
                        read_ctx: *read_ctx,
                    },
                });
                return Ok(());
            }
            // Vote for every candidate.
            (ByzantineMode::Equivocate, MessageBody::RequestVote { pre_vote, .. }) => {
                self.extra.push(Message {
                    from: self.id,
                    to: from,
                    term: msg.term,
                    body: MessageBody::RequestVoteResponse {
                        granted: true,
                        pre_vote: *pre_vote,
                    },
                });
            }
            _ => {}
        }
        self.inner.on_message(from, bytes)
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        self.inner.on_tick();
        if matches!(
            self.mode,
            ByzantineMode::Equivocate | ByzantineMode::Corrupt
        ) {
            // Campaign eagerly: these attacks need the leader's seat.
            self.inner.on_tick();
        }
        if self.mode == ByzantineMode::Disrupt && self.ticks % 20 == 0 {
            let term = self.inner.raw().term().saturating_add(1000);
            let peers: Vec<NodeId> = self.peers().collect();
            for to in peers {
                self.extra.push(Message {
                    from: self.id,
                    to,
                    term,
                    body: MessageBody::RequestVote {
                        last_log_index: u64::MAX / 2,
                        last_log_term: term,
                        pre_vote: false,
                        transfer: false,
                    },
                });
            }
        }
    }

    fn propose(&mut self, txs: Vec<Tx>) -> Result<(), ProposeError> {
        self.inner.propose(txs)
    }

    fn poll(&mut self, store: &Store) -> Result<Step, EngineError> {
        let mut step = self.inner.poll(store)?;
        if self.mode == ByzantineMode::AckWithoutStore {
            step.write.engine.clear();
        }
        // A Byzantine node sends nothing early: every message goes through its misbehaviour.
        let mut all = std::mem::take(&mut step.early);
        all.append(&mut step.messages);
        let mut out = Vec::with_capacity(all.len());
        for m in all {
            let Some(msg) = decode_raft(&m.bytes) else {
                // Block sync: a silent node says nothing; the others serve honestly.
                if self.mode != ByzantineMode::Silent {
                    out.push(m);
                }
                continue;
            };
            if let Some(msg) = self.transform(msg) {
                out.push(Outgoing {
                    to: m.to,
                    kind: msg.kind().as_str(),
                    bytes: encode_raft(&msg),
                });
            }
        }
        if self.mode != ByzantineMode::Silent {
            for msg in self.extra.drain(..) {
                out.push(Outgoing {
                    to: msg.to,
                    kind: msg.kind().as_str(),
                    bytes: encode_raft(&msg),
                });
            }
        }
        self.extra.clear();
        step.messages = out;
        Ok(step)
    }

    passthrough_engine_methods!();
}
