//! Deterministic in-memory test network for the Raft core.
//!
//! Messages go into one FIFO queue; delivery, loss, duplication, reordering, partitions and
//! crashes are explicit test actions, so every run is reproducible. Each node has a storage
//! that follows the `Ready` contract (snapshot, entries with truncation, hard state, then
//! messages, then apply), and every committed entry any node applies is checked against a
//! global record: two nodes applying different entries at one index panics the test.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use faultline_raft::{
    Config, Entry, HardState, Membership, Message, MessageBody, NodeId, PersistedState, RawNode,
    ReadState, Ready, Role, Snapshot,
};

/// What a node's disk holds.
#[derive(Clone, Debug, Default)]
pub struct Storage {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// Application state: index of the last applied entry (durable with the app).
    pub applied: u64,
}

impl Storage {
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }

    pub fn last_index(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index() {
            return Some(self.snapshot.as_ref().map_or(0, |s| s.term));
        }
        let si = self.snapshot_index();
        if index < si {
            return None;
        }
        self.entries.get((index - si - 1) as usize).map(|e| e.term)
    }

    /// Follow the Ready contract's persistence step.
    pub fn persist(&mut self, rd: &Ready) {
        if let Some(s) = &rd.snapshot {
            self.snapshot = Some(s.clone());
            self.entries.clear();
            self.applied = s.index;
        }
        if let Some(first) = rd.entries.first() {
            let si = self.snapshot_index();
            assert!(first.index > si, "entries at or below the snapshot");
            assert!(
                first.index <= self.last_index() + 1,
                "gap in persisted entries"
            );
            self.entries.truncate((first.index - si - 1) as usize);
            self.entries.extend(rd.entries.iter().cloned());
        }
        if let Some(hs) = rd.hard_state {
            self.hard_state = hs;
        }
    }

    pub fn to_persisted(&self) -> PersistedState {
        PersistedState {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
            applied: self.applied,
        }
    }
}

/// Build a log of the given terms starting at index 1.
pub fn entries_with_terms(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry::new(t, i as u64 + 1, format!("t{t}i{}", i + 1).into_bytes()))
        .collect()
}

/// A fault or a tick the property tests inject between client operations.
#[derive(Clone, Debug)]
pub enum Fault {
    Tick(NodeId),
    Deliver,
    Drop,
    Duplicate,
    Reorder(usize),
    Crash(NodeId),
    Restart(NodeId),
    Compact(NodeId),
}

impl Net {
    /// Applies `f`. A crash happens only while fewer than `max_down` nodes are down, so a
    /// majority stays up; compaction only where something is applied past the snapshot.
    pub fn inject(&mut self, f: &Fault, max_down: usize) {
        match *f {
            Fault::Tick(i) => self.tick(i),
            Fault::Deliver => {
                self.deliver_one();
            }
            Fault::Drop => {
                self.queue.pop_front();
            }
            Fault::Duplicate => {
                if let Some(m) = self.queue.front().cloned() {
                    self.queue.push_back(m);
                }
            }
            Fault::Reorder(k) => {
                if !self.queue.is_empty() {
                    let k = k % self.queue.len();
                    if let Some(m) = self.queue.remove(k) {
                        self.queue.push_back(m);
                    }
                }
            }
            Fault::Crash(i) => {
                let down = self.ids.iter().filter(|&&id| !self.is_up(id)).count();
                if self.is_up(i) && down < max_down {
                    self.crash(i);
                }
            }
            Fault::Restart(i) => {
                if !self.is_up(i) {
                    self.restart(i);
                }
            }
            Fault::Compact(i) => {
                if self.is_up(i) {
                    let s = &self.stores[&i];
                    if s.applied > s.snapshot_index() {
                        self.compact(i);
                    }
                }
            }
        }
    }

    /// Faults stop: every node restarts and the network delivers everything. Returns the one
    /// leader that emerges within `rounds` rounds and passes `ok` (panics if none does).
    pub fn heal_and_elect(&mut self, rounds: usize, ok: impl Fn(&Net, NodeId) -> bool) -> NodeId {
        self.heal();
        for id in self.ids.clone() {
            if !self.is_up(id) {
                self.restart(id);
            }
        }
        for _ in 0..rounds {
            self.run(1);
            if let Some(l) = self.leader() {
                if self.leaders().len() == 1 && ok(self, l) {
                    return l;
                }
            }
        }
        panic!("no leader after faults stopped");
    }

    /// Raft §5.2 election safety: panics if two nodes lead in one term. `seen` remembers the
    /// leader of every term across calls.
    pub fn check_one_leader_per_term(&self, seen: &mut BTreeMap<u64, NodeId>) {
        for id in self.leaders() {
            let t = self.node(id).term();
            let prev = *seen.entry(t).or_insert(id);
            assert_eq!(prev, id, "two leaders in term {t}");
        }
    }
}

/// Voters 1..=n, no learners.
pub fn members(n: u64) -> Membership {
    Membership::new((1..=n).collect(), Vec::new()).expect("at least one voter")
}

pub fn config(id: NodeId, n: u64) -> Config {
    let mut c = Config::new(id, (1..=n).collect());
    c.seed = 1000 + id;
    c
}

pub type Filter = Box<dyn Fn(&Message) -> bool>;

pub struct Net {
    pub ids: Vec<NodeId>,
    pub nodes: BTreeMap<NodeId, Option<RawNode>>,
    pub configs: BTreeMap<NodeId, Config>,
    pub stores: BTreeMap<NodeId, Storage>,
    pub queue: VecDeque<Message>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Drop any message for which this returns true.
    pub filter: Option<Filter>,
    /// Messages sent (left a node's Ready), by type name.
    pub sent: BTreeMap<&'static str, usize>,
    /// Every message sent, in order.
    pub sent_log: Vec<Message>,
    /// Global record of committed entries: index -> entry.
    pub committed: BTreeMap<u64, Entry>,
    /// Entries each node has applied, in order (after the last snapshot it installed).
    pub applied: BTreeMap<NodeId, Vec<Entry>>,
    pub read_states: BTreeMap<NodeId, Vec<ReadState>>,
    pub snapshots_installed: BTreeMap<NodeId, usize>,
    pub step_errors: usize,
    /// Cross-node agreement checks; off only for tests that forge messages (Raft does not
    /// tolerate lying peers, it only must not crash on them).
    pub check_agreement: bool,
    /// A leader's `Ready` whose early messages went out but which is not persisted yet
    /// (`parallel_leader_append`): persisted at the node's next drain, lost if it crashes
    /// first. Meanwhile the node steps whatever arrives, acknowledgements included.
    pub unpersisted: BTreeMap<NodeId, Ready>,
}

impl Net {
    pub fn new(n: u64) -> Net {
        Self::with_config(n, |_| {})
    }

    pub fn with_config(n: u64, tweak: impl Fn(&mut Config)) -> Net {
        let states = (1..=n).map(|_| PersistedState::default()).collect();
        Self::from_states(states, tweak)
    }

    /// A cluster whose node i+1 restarts from `states[i]`.
    pub fn from_states(states: Vec<PersistedState>, tweak: impl Fn(&mut Config)) -> Net {
        let n = states.len() as u64;
        let mut net = Net {
            ids: (1..=n).collect(),
            nodes: BTreeMap::new(),
            configs: BTreeMap::new(),
            stores: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            filter: None,
            sent: BTreeMap::new(),
            sent_log: Vec::new(),
            committed: BTreeMap::new(),
            applied: BTreeMap::new(),
            read_states: BTreeMap::new(),
            snapshots_installed: BTreeMap::new(),
            step_errors: 0,
            check_agreement: true,
            unpersisted: BTreeMap::new(),
        };
        for (i, st) in states.into_iter().enumerate() {
            let id = i as u64 + 1;
            let mut cfg = config(id, n);
            tweak(&mut cfg);
            let store = Storage {
                hard_state: st.hard_state,
                snapshot: st.snapshot.clone(),
                entries: st.entries.clone(),
                applied: st.applied,
            };
            let node = RawNode::restart(cfg.clone(), st).expect("valid state");
            net.nodes.insert(id, Some(node));
            net.configs.insert(id, cfg);
            net.stores.insert(id, store);
            net.applied.insert(id, Vec::new());
        }
        net
    }

    pub fn node(&self, id: NodeId) -> &RawNode {
        self.nodes[&id].as_ref().expect("node is up")
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut RawNode {
        self.nodes
            .get_mut(&id)
            .and_then(Option::as_mut)
            .expect("node is up")
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[&id].is_some()
    }

    /// Drain one node's Ready and follow the contract.
    pub fn drain(&mut self, id: NodeId) {
        if let Some(rd) = self.unpersisted.remove(&id) {
            self.finish(id, rd);
        }
        let Some(node) = self.nodes.get_mut(&id).and_then(Option::as_mut) else {
            return;
        };
        if !node.has_ready() {
            let rd = node.ready();
            assert!(
                rd.is_empty(),
                "has_ready() was false but ready() returned {rd:?}"
            );
            return;
        }
        let rd = node.ready();
        if !rd.early_messages.is_empty() {
            self.send_all(id, &rd.early_messages);
            self.unpersisted.insert(id, rd);
            return;
        }
        self.finish(id, rd);
    }

    fn send_all(&mut self, id: NodeId, msgs: &[Message]) {
        for m in msgs {
            assert_eq!(m.from, id);
            *self.sent.entry(m.kind().as_str()).or_default() += 1;
            self.sent_log.push(m.clone());
            self.queue.push_back(m.clone());
        }
    }

    /// Persist `rd`, report it durable, then send its messages and apply (the contract).
    fn finish(&mut self, id: NodeId, rd: Ready) {
        let store = self.stores.get_mut(&id).expect("store");
        store.persist(&rd);
        let last = store.last_index();
        if let (Some(term), Some(node)) = (
            store.term_at(last),
            self.nodes.get_mut(&id).and_then(Option::as_mut),
        ) {
            node.on_persisted(last, term);
        }
        if let Some(s) = &rd.snapshot {
            *self.snapshots_installed.entry(id).or_default() += 1;
            self.applied.insert(id, Vec::new());
            // The snapshot covers committed entries; they must agree with the global record.
            if let Some(e) = self
                .committed
                .get(&s.index)
                .filter(|_| self.check_agreement)
            {
                assert_eq!(
                    e.term, s.term,
                    "snapshot term disagrees with committed entry"
                );
            }
        }
        self.send_all(id, &rd.messages);
        let store = self.stores.get_mut(&id).expect("store");
        for e in &rd.committed {
            assert!(
                e.index <= store.last_index(),
                "applying an entry that is not persisted"
            );
            assert_eq!(
                Some(e.term),
                store.term_at(e.index),
                "applied entry differs from the persisted one"
            );
            match self.committed.get(&e.index) {
                Some(_) if !self.check_agreement => {}
                Some(prev) => assert_eq!(
                    prev, e,
                    "SAFETY: node {id} applied a different entry at {}",
                    e.index
                ),
                None => {
                    self.committed.insert(e.index, e.clone());
                }
            }
            assert_eq!(e.index, store.applied + 1, "node {id} applied out of order");
            let applied = self.applied.get_mut(&id).expect("applied");
            applied.push(e.clone());
            store.applied = e.index;
        }
        self.read_states
            .entry(id)
            .or_default()
            .extend(rd.read_states.iter().copied());
    }

    pub fn drain_all(&mut self) {
        for id in self.ids.clone() {
            self.drain(id);
        }
    }

    fn dropped(&self, m: &Message) -> bool {
        !self.is_up(m.to)
            || self.cut.contains(&(m.from, m.to))
            || self.filter.as_ref().is_some_and(|f| f(m))
    }

    /// Deliver (or drop) the message at the head of the queue. Returns false if empty.
    pub fn deliver_one(&mut self) -> bool {
        let Some(m) = self.queue.pop_front() else {
            return false;
        };
        if self.dropped(&m) {
            return true;
        }
        let to = m.to;
        if self.node_mut(to).step(m).is_err() {
            self.step_errors += 1;
        }
        self.drain(to);
        true
    }

    /// Deliver until no message is in flight.
    pub fn stabilize(&mut self) {
        let mut steps = 0;
        loop {
            self.drain_all();
            if self.queue.is_empty() && self.unpersisted.is_empty() {
                return;
            }
            while self.deliver_one() {
                steps += 1;
                assert!(steps < 1_000_000, "network did not quiesce");
            }
        }
    }

    pub fn tick(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id).and_then(Option::as_mut) {
            n.tick();
        }
        self.drain(id);
    }

    pub fn tick_all(&mut self) {
        for id in self.ids.clone() {
            self.tick(id);
        }
    }

    /// Tick every live node once and deliver everything, `rounds` times.
    pub fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.tick_all();
            self.stabilize();
        }
    }

    /// Make `id` campaign (by ticking it alone) and deliver the election.
    pub fn elect(&mut self, id: NodeId) {
        for _ in 0..1000 {
            if self.node(id).role() != Role::Follower {
                break;
            }
            self.tick(id);
        }
        self.stabilize();
        assert_eq!(
            self.node(id).role(),
            Role::Leader,
            "node {id} failed to win"
        );
    }

    /// Tick only `id`, delivering everything after each tick, until it leads.
    pub fn tick_until_leader(&mut self, id: NodeId) {
        for _ in 0..1000 {
            if self.node(id).role() == Role::Leader {
                return;
            }
            self.tick(id);
            self.stabilize();
        }
        panic!("node {id} never became leader");
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> u64 {
        let idx = self
            .node_mut(id)
            .propose(data.to_vec())
            .expect("propose on leader");
        self.drain(id);
        idx
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.ids
            .iter()
            .copied()
            .filter(|&id| self.is_up(id) && self.node(id).role() == Role::Leader)
            .collect()
    }

    /// The leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.leaders()
            .into_iter()
            .max_by_key(|&id| self.node(id).term())
    }

    pub fn isolate(&mut self, id: NodeId) {
        for &o in &self.ids {
            if o != id {
                self.cut.insert((id, o));
                self.cut.insert((o, id));
            }
        }
    }

    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
        self.filter = None;
    }

    pub fn crash(&mut self, id: NodeId) {
        self.nodes.insert(id, None);
        self.unpersisted.remove(&id);
    }

    pub fn restart(&mut self, id: NodeId) {
        let st = self.stores[&id].to_persisted();
        let node = RawNode::restart(self.configs[&id].clone(), st).expect("restart");
        self.nodes.insert(id, Some(node));
        // The application state survives with `applied`; nothing re-applied before it.
        self.applied.insert(id, Vec::new());
        self.drain(id);
    }

    /// The application compacts node `id` at its applied index.
    pub fn compact(&mut self, id: NodeId) -> u64 {
        let applied = self.stores[&id].applied;
        let data = format!("state@{applied}").into_bytes();
        self.node_mut(id)
            .compact(applied, data.clone())
            .expect("compact");
        // Persist exactly the snapshot the core will serve (it carries the membership).
        let snapshot = self.node(id).snapshot().cloned();
        assert_eq!(
            snapshot.as_ref().map(|s| (s.index, &s.data)),
            Some((applied, &data))
        );
        let store = self.stores.get_mut(&id).expect("store");
        let si = store.snapshot_index();
        store.entries.drain(..(applied - si) as usize);
        store.snapshot = snapshot;
        applied
    }

    pub fn reset_counters(&mut self) {
        self.sent.clear();
        self.sent_log.clear();
    }

    pub fn total_sent(&self) -> usize {
        self.sent.values().sum()
    }

    pub fn count(&self, type_name: &str) -> usize {
        self.sent.get(type_name).copied().unwrap_or(0)
    }

    pub fn commit_of(&self, id: NodeId) -> u64 {
        self.node(id).status().commit
    }

    pub fn log_terms(&self, id: NodeId) -> Vec<u64> {
        self.stores[&id].entries.iter().map(|e| e.term).collect()
    }
}

/// A message helper for single-node tests.
pub fn msg(from: NodeId, to: NodeId, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

pub fn append(
    prev_log_index: u64,
    prev_log_term: u64,
    entries: Vec<Entry>,
    leader_commit: u64,
) -> MessageBody {
    MessageBody::AppendEntries {
        prev_log_index,
        prev_log_term,
        entries,
        leader_commit,
        read_ctx: None,
    }
}

pub fn vote_req(last_log_index: u64, last_log_term: u64) -> MessageBody {
    MessageBody::RequestVote {
        last_log_index,
        last_log_term,
        pre_vote: false,
        transfer: false,
    }
}

pub fn ent(index: u64, term: u64) -> Entry {
    Entry::new(term, index, vec![index as u8, term as u8])
}

/// Drain a standalone node's messages (persistence ignored).
pub fn take_msgs(n: &mut RawNode) -> Vec<Message> {
    n.ready().messages
}
