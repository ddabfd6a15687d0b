//! Deterministic in-memory harness: n replicas, a FIFO network that can drop, block, reorder and
//! duplicate, ticks, persistence per the `Ready` contract, and restarts from stored records.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use faultline_bft::*;
use sha2::{Digest, Sha256};

/// (seq, digest, requests) of a committed batch, certificates aside.
pub type BatchView = (u64, [u8; 32], Vec<Vec<u8>>);

pub fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let mut d = [0u8; 32];
    d.copy_from_slice(h.finalize().as_slice());
    d
}

/// digest = sha256; a request starting with b"bad" is invalid.
#[derive(Clone, Debug, Default)]
pub struct TestApp;

impl App for TestApp {
    fn request_digest(&self, request: &[u8]) -> Option<[u8; 32]> {
        if request.starts_with(b"bad") {
            None
        } else {
            Some(sha(&[request]))
        }
    }
    fn batch_digest(&self, requests: &[Vec<u8>]) -> Result<[u8; 32], InvalidBatch> {
        let mut parts: Vec<[u8; 32]> = Vec::new();
        for r in requests {
            parts.push(self.request_digest(r).ok_or(InvalidBatch)?);
        }
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        Ok(sha(&refs))
    }
}

pub fn key(i: u64) -> SigningKey {
    SigningKey::from_bytes(&[i as u8 + 1; 32])
}

pub fn config(id: u64, n: usize) -> Config {
    let keys = (0..n as u64).map(|i| key(i).verifying_key()).collect();
    let mut c = Config::new(id, keys);
    c.checkpoint_interval = 4;
    c.watermark_window = 16;
    c.max_batch = 4;
    c.view_change_timeout_ticks = 10;
    c.request_timeout_ticks = 10;
    c
}

#[derive(Clone, Debug)]
pub struct Env {
    pub from: u64,
    pub to: u64,
    pub kind: &'static str,
    pub bytes: Arc<[u8]>,
}

pub struct Node {
    pub replica: Option<Replica<TestApp>>,
    pub store: BTreeMap<Vec<u8>, Vec<u8>>,
    pub committed: Vec<CommittedBatch>,
    pub chain: [u8; 32],
}

pub struct Cluster {
    pub n: usize,
    pub cfgs: Vec<Config>,
    pub nodes: Vec<Node>,
    pub queue: VecDeque<Env>,
    /// Every message emitted, by kind (what the replicas sent, before any drop).
    pub sent: BTreeMap<&'static str, u64>,
    /// Every message emitted, in order.
    pub history: Vec<Env>,
    pub down: BTreeSet<u64>,
    /// Directed links that drop everything.
    pub blocked: BTreeSet<(u64, u64)>,
    pub drop_kinds: BTreeSet<&'static str>,
    /// (kind, receiver) pairs that are dropped.
    pub drop_kind_to: BTreeSet<(&'static str, u64)>,
    /// Ids whose replica is played by the test (Byzantine); messages to them land here.
    pub byzantine: BTreeSet<u64>,
    pub captured: Vec<Env>,
}

impl Cluster {
    pub fn new(n: usize) -> Self {
        Self::with(n, |_| {})
    }

    pub fn with(n: usize, tweak: impl Fn(&mut Config)) -> Self {
        let cfgs: Vec<Config> = (0..n as u64)
            .map(|i| {
                let mut c = config(i, n);
                tweak(&mut c);
                c
            })
            .collect();
        let nodes = cfgs
            .iter()
            .map(|c| Node {
                replica: Some(Replica::new(c.clone(), key(c.id), TestApp).unwrap()),
                store: BTreeMap::new(),
                committed: Vec::new(),
                chain: [0u8; 32],
            })
            .collect();
        Cluster {
            n,
            cfgs,
            nodes,
            queue: VecDeque::new(),
            sent: BTreeMap::new(),
            history: Vec::new(),
            down: BTreeSet::new(),
            blocked: BTreeSet::new(),
            drop_kinds: BTreeSet::new(),
            drop_kind_to: BTreeSet::new(),
            byzantine: BTreeSet::new(),
            captured: Vec::new(),
        }
    }

    pub fn make_byzantine(&mut self, id: u64) {
        self.byzantine.insert(id);
        self.nodes[id as usize].replica = None;
    }

    pub fn r(&mut self, id: u64) -> &mut Replica<TestApp> {
        self.nodes[id as usize]
            .replica
            .as_mut()
            .expect("replica is up")
    }

    pub fn live(&self) -> Vec<u64> {
        (0..self.n as u64)
            .filter(|i| self.nodes[*i as usize].replica.is_some())
            .collect()
    }

    /// Drains a replica's Ready: persist, enqueue messages, apply committed batches (calling
    /// `executed` at checkpoint boundaries) and answer state requests from the "ledger".
    pub fn pump(&mut self, id: u64) {
        loop {
            let Some(rep) = self.nodes[id as usize].replica.as_mut() else {
                return;
            };
            let ready = rep.ready();
            if ready.is_empty() {
                return;
            }
            let node = &mut self.nodes[id as usize];
            for op in ready.persist {
                match op {
                    PersistOp::Put { key, value } => {
                        node.store.insert(key, value);
                    }
                    PersistOp::Delete { key } => {
                        node.store.remove(&key);
                    }
                }
            }
            let budget = self.cfgs[id as usize].max_message_bytes;
            for m in ready.messages {
                // The network refuses frames above the budget; so does this harness.
                assert!(
                    m.bytes.len() <= budget,
                    "replica {id} sent a {} of {} bytes, over the {budget}-byte budget",
                    m.kind.as_str(),
                    m.bytes.len()
                );
                *self.sent.entry(m.kind.as_str()).or_default() += 1;
                let env = Env {
                    from: id,
                    to: m.to,
                    kind: m.kind.as_str(),
                    bytes: m.bytes,
                };
                self.history.push(env.clone());
                self.queue.push_back(env);
            }
            let k = self.cfgs[id as usize].checkpoint_interval;
            let mut checkpoints = Vec::new();
            for b in ready.committed {
                assert_eq!(
                    b.seq,
                    node.committed.len() as u64 + 1,
                    "gap or reorder at {id}"
                );
                node.chain = sha(&[&node.chain, &b.digest]);
                if b.seq % k == 0 {
                    checkpoints.push((b.seq, node.chain));
                }
                node.committed.push(b);
            }
            let mut serves = Vec::new();
            for s in ready.serve {
                let hi = (s.to_seq as usize).min(node.committed.len());
                let lo = (s.from_seq as usize).max(1);
                if lo <= hi {
                    serves.push((s.to, node.committed[lo - 1..hi].to_vec()));
                }
            }
            let rep = node.replica.as_mut().unwrap();
            for (seq, d) in checkpoints {
                rep.executed(seq, d);
            }
            for (to, batches) in serves {
                rep.send_state(to, batches);
            }
        }
    }

    pub fn deliver(&mut self, env: Env) -> Option<Result<(), Rejected>> {
        if self.byzantine.contains(&env.to) {
            self.captured.push(env);
            return None;
        }
        if self.down.contains(&env.to)
            || self.blocked.contains(&(env.from, env.to))
            || self.drop_kinds.contains(env.kind)
            || self.drop_kind_to.contains(&(env.kind, env.to))
        {
            return None;
        }
        let rep = self.nodes[env.to as usize].replica.as_mut()?;
        let res = rep.step(env.from, &env.bytes);
        self.pump(env.to);
        Some(res)
    }

    /// Delivers queued messages in FIFO order until the network is quiet.
    pub fn run(&mut self) {
        let mut steps = 0;
        while let Some(env) = self.queue.pop_front() {
            self.deliver(env);
            steps += 1;
            assert!(steps < 2_000_000, "no quiescence");
        }
    }

    pub fn tick_all(&mut self) {
        for id in self.live() {
            if self.down.contains(&id) {
                continue;
            }
            self.r(id).tick();
            self.pump(id);
        }
    }

    pub fn run_ticks(&mut self, ticks: usize) {
        for _ in 0..ticks {
            self.tick_all();
            self.run();
        }
    }

    /// Runs tick by tick until `done` holds or `max_ticks` have passed (the caller asserts
    /// what it waited for).
    pub fn run_until(&mut self, max_ticks: usize, mut done: impl FnMut(&mut Cluster) -> bool) {
        for _ in 0..max_ticks {
            if done(self) {
                return;
            }
            self.run_ticks(1);
        }
    }

    pub fn submit(&mut self, id: u64, req: &[u8]) -> Result<(), SubmitError> {
        let r = self.r(id).submit(req.to_vec());
        self.pump(id);
        r
    }

    /// Puts a crafted message on the wire.
    pub fn inject(&mut self, from: u64, to: u64, bytes: Vec<u8>) {
        self.queue.push_back(Env {
            from,
            to,
            kind: "injected",
            bytes: bytes.into(),
        });
    }

    pub fn crash(&mut self, id: u64) {
        self.nodes[id as usize].replica = None;
        self.down.insert(id);
    }

    pub fn restart(&mut self, id: u64) {
        let records: Vec<(Vec<u8>, Vec<u8>)> = self.nodes[id as usize]
            .store
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let rep = Replica::restore(self.cfgs[id as usize].clone(), key(id), TestApp, records)
            .expect("restore");
        self.nodes[id as usize].replica = Some(rep);
        self.down.remove(&id);
    }

    pub fn partition(&mut self, id: u64) {
        for j in 0..self.n as u64 {
            if j != id {
                self.blocked.insert((id, j));
                self.blocked.insert((j, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether replica `id` executed request `req`.
    pub fn executed(&self, id: u64, req: &[u8]) -> bool {
        self.nodes[id as usize]
            .committed
            .iter()
            .any(|b| b.requests.iter().any(|r| r.as_slice() == req))
    }

    /// Whether replica `id` runs view `v` (installed, not changing views).
    pub fn active_in(&mut self, id: u64, v: u64) -> bool {
        let st = self.r(id).status();
        st.view == v && !st.in_view_change
    }

    /// Liveness after a fault: each of `ids` is in view `min_view` or later, not changing views,
    /// and has executed `req`.
    pub fn assert_settled_and_executed(
        &mut self,
        ids: impl IntoIterator<Item = u64>,
        min_view: u64,
        req: &[u8],
    ) {
        for id in ids {
            let st = self.r(id).status();
            assert!(
                st.view >= min_view && !st.in_view_change,
                "replica {id} not settled in view {min_view} or later: {st:?}"
            );
            assert!(
                self.executed(id, req),
                "replica {id} never executed the request"
            );
        }
    }

    pub fn committed(&self, id: u64) -> Vec<BatchView> {
        self.nodes[id as usize]
            .committed
            .iter()
            .map(|b| (b.seq, b.digest, b.requests.clone()))
            .collect()
    }

    /// Safety: no two replicas have different batches at the same seq.
    pub fn check_agreement(&self) {
        let mut by_seq: BTreeMap<u64, BatchView> = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for b in &node.committed {
                match by_seq.get(&b.seq) {
                    Some((j, d, reqs)) => {
                        assert!(
                            *d == b.digest && *reqs == b.requests,
                            "replicas {j} and {i} disagree at seq {}",
                            b.seq
                        );
                    }
                    None => {
                        by_seq.insert(b.seq, (i as u64, b.digest, b.requests.clone()));
                    }
                }
            }
        }
    }

    pub fn reqs(prefix: &str, count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| format!("{prefix}-{i}").into_bytes())
            .collect()
    }
}

/// The (view, seq) of a normal-case PRE-PREPARE (a `Proposal`) on the wire.
pub fn proposal_seq(bytes: &[u8]) -> u64 {
    match payload(bytes) {
        Payload::Proposal(p) => match decode_payload(&p.pre_prepare.payload).unwrap() {
            Payload::PrePrepare(pp) => pp.seq,
            other => panic!("not a pre-prepare header: {other:?}"),
        },
        other => panic!("not a proposal: {other:?}"),
    }
}

/// Decodes an emitted message's payload (test helper).
pub fn payload(bytes: &[u8]) -> Payload {
    let m = decode_signed(bytes).unwrap();
    decode_payload(&m.payload).unwrap()
}
