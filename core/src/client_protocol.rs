//! The client's half of both protocols, written once and without IO, so that `faultline
//! client`, the workload behind `local`/`bench`, the nemesis clients and the simulator's clients
//! all decide by the same rule (docs/SPEC.md "HTTP API", "Signed read replies"):
//!
//! - **Raft** trusts its leader. A request goes to one node; a node that names the leader sends
//!   the client there, one that cannot help sends it on to another node. One committed reply
//!   decides. (A real follower forwards to its leader itself; the reply it relays names the
//!   leader as its signer, which is where the next request goes.)
//! - **PBFT** trusts no single replica. A request goes to every replica, and a result counts
//!   once f+1 distinct replicas vouched for the same height and result: at least one of them is
//!   correct. Reads are decided by [`ClientRead`]: 2f+1 replies matching in value and height
//!   (the read-only optimisation, TOCS §5.1.3), else the read ordered on every replica and f+1
//!   matching values.
//!
//! The callers own the IO: they send where [`ClientWrite::targets`] says, hand each answer to
//! [`ClientWrite::on_answer`] and do what the returned [`WriteNext`] says (with their own
//! pauses and deadlines). A reply only counts through a [`Vouched`], which is built from a reply
//! whose signature verifies against cluster.toml's key of the node it names, or from what the
//! caller saw a node do itself (the simulator reading a node's store; the workload matching
//! replies by the connection it sent them on). Everything here iterates ordered collections,
//! so the simulator stays deterministic.

use std::collections::{BTreeMap, BTreeSet};

use crate::api_types::{BatchEntry, BatchReply, CommittedReply, EntryResult};
use crate::config::{ClusterConfig, Protocol};
use crate::ledger::Hash;
use crate::reply::{ReadReply, ReadValue};

pub type NodeId = u64;

/// Where a request goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Raft: the node believed to lead.
    One(NodeId),
    /// PBFT: every replica.
    Every,
}

/// What a client does after an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteNext {
    /// Every transaction of the request is decided ([`ClientWrite::decided`]).
    Done,
    /// More replies are needed. PBFT: keep collecting; once every replica asked has answered
    /// (or timed out) without a decision, ask them all again.
    Wait,
    /// Raft: node `j` was named the leader; send the request there now.
    Redirect(NodeId),
    /// Raft: the node asked could not help and named no leader; send the request to `j` (the
    /// next node in order) after a pause. A caller with its own choice of node (the simulator
    /// draws one from its seed) sets it with [`Route::retry_at`].
    Retry(NodeId),
    /// The request itself was refused — by the node asked (raft), or by f+1 replicas (pbft, so
    /// that one Byzantine replica cannot make a client give up): retrying cannot help.
    Refused(String),
}

/// Where a client sends, and what it learns about the leader from the answers.
#[derive(Clone, Debug)]
pub struct Route {
    protocol: Protocol,
    n: u64,
    target: NodeId,
}

impl Route {
    /// Starts at node `start` (raft; the first guess of the leader).
    pub fn new(cluster: &ClusterConfig, start: NodeId) -> Route {
        let n = (cluster.nodes.len() as u64).max(1);
        Route {
            protocol: cluster.protocol,
            n,
            target: start % n,
        }
    }

    pub fn targets(&self) -> Targets {
        match self.protocol {
            Protocol::Raft => Targets::One(self.target),
            Protocol::Pbft => Targets::Every,
        }
    }

    /// The node a raft request goes to next.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Whether an answer from `node` is one this client hears: raft clients wait on the node
    /// they asked, PBFT clients on every replica.
    pub fn listens_to(&self, node: NodeId) -> bool {
        self.protocol == Protocol::Pbft || node == self.target
    }

    /// A committed reply named `signer` as its signer: on raft that node leads (a follower
    /// relays its leader's reply), so later requests go straight there. Whether `signer` is a
    /// member (only then is it followed).
    pub fn on_committed(&mut self, signer: NodeId) -> bool {
        if signer >= self.n {
            return false;
        }
        if self.protocol == Protocol::Raft {
            self.target = signer;
        }
        true
    }

    /// Node `asked` did not commit the request; `leader` is the leader it named, if any.
    pub fn on_failure(&mut self, asked: NodeId, leader: Option<NodeId>) -> WriteNext {
        if self.protocol == Protocol::Pbft {
            return WriteNext::Wait;
        }
        match leader {
            Some(l) if l != asked && l < self.n => {
                self.target = l;
                WriteNext::Redirect(l)
            }
            _ => {
                self.target = (asked + 1) % self.n;
                WriteNext::Retry(self.target)
            }
        }
    }

    /// Sends the next raft request to `j` instead: the caller's own choice (a random node in
    /// the simulator, or what the workload's other clients learned about the leader).
    pub fn retry_at(&mut self, j: NodeId) {
        self.target = j % self.n;
    }
}

/// One node's word that a transaction was decided so. It can only be built from a reply whose
/// signature verifies, or from what the caller saw that node do itself, so a forged or
/// unverifiable reply never reaches a quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vouched {
    node: NodeId,
    entry: BatchEntry,
}

impl Vouched {
    /// The entry of a `POST /v1/tx` or receipt reply, if it verifies against cluster.toml's key
    /// of the node it names.
    pub fn committed(cluster: &ClusterConfig, reply: &CommittedReply) -> Option<Vouched> {
        let key = cluster.node(reply.node)?.public_key;
        reply.verifies(&key).then(|| Vouched {
            node: reply.node,
            entry: BatchEntry {
                height: reply.height,
                result: EntryResult::Applied(reply.result.clone()),
                tx_hash: reply.tx_hash,
            },
        })
    }

    /// Every entry of a `POST /v1/txs` reply, if its one signature verifies against
    /// cluster.toml's key of the node it names.
    pub fn batch(cluster: &ClusterConfig, reply: BatchReply) -> Option<Vec<Vouched>> {
        let key = cluster.node(reply.node)?.public_key;
        if !reply.verifies(&key) {
            return None;
        }
        let node = reply.node;
        Some(
            reply
                .results
                .into_iter()
                .map(|entry| Vouched { node, entry })
                .collect(),
        )
    }

    /// An entry the caller attributes to `node` without a signature, because it saw the node
    /// itself: the simulator reads the node's own store, and the workload matches a reply by the
    /// connection it sent the request on (checking signatures would load the machine under test).
    pub fn observed(node: NodeId, entry: BatchEntry) -> Vouched {
        Vouched { node, entry }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn entry(&self) -> &BatchEntry {
        &self.entry
    }
}

/// Counts vouched entries per transaction until one (height, result) has enough distinct
/// nodes behind it: one on raft, f+1 on PBFT.
#[derive(Clone, Debug)]
pub struct WriteQuorum {
    need: usize,
    expected: BTreeSet<Hash>,
    votes: BTreeMap<(Hash, u64, EntryResult), BTreeSet<NodeId>>,
    decided: BTreeMap<Hash, BatchEntry>,
    refused_by: BTreeSet<NodeId>,
    first_refusal: Option<String>,
}

impl WriteQuorum {
    /// A quorum for the transactions `expected` (entries about others are ignored).
    pub fn new(cluster: &ClusterConfig, expected: impl IntoIterator<Item = Hash>) -> WriteQuorum {
        WriteQuorum {
            need: match cluster.protocol {
                Protocol::Raft => 1,
                Protocol::Pbft => cluster.f + 1,
            },
            expected: expected.into_iter().collect(),
            votes: BTreeMap::new(),
            decided: BTreeMap::new(),
            refused_by: BTreeSet::new(),
            first_refusal: None,
        }
    }

    /// How many distinct nodes must agree.
    pub fn need(&self) -> usize {
        self.need
    }

    /// Adds one node's word; returns the entry the first time its transaction is decided.
    /// A node that vouches twice counts once; entries that differ in height or result are
    /// different answers and never add up.
    pub fn add(&mut self, v: Vouched) -> Option<&BatchEntry> {
        let hash = v.entry.tx_hash;
        if !self.expected.contains(&hash) || self.decided.contains_key(&hash) {
            return None;
        }
        let key = (hash, v.entry.height, v.entry.result.clone());
        let voters = self.votes.entry(key).or_default();
        voters.insert(v.node);
        if voters.len() < self.need {
            return None;
        }
        self.votes.retain(|(h, _, _), _| *h != hash);
        self.decided.insert(hash, v.entry);
        self.decided.get(&hash)
    }

    /// Node `node` refused the request outright (HTTP 4xx); returns the reason once `need`
    /// distinct nodes refused (at least one of them correct on PBFT).
    pub fn refuse(&mut self, node: NodeId, why: String) -> Option<String> {
        self.refused_by.insert(node);
        let first = self.first_refusal.get_or_insert(why);
        (self.refused_by.len() >= self.need).then(|| first.clone())
    }

    pub fn is_done(&self) -> bool {
        self.decided.len() == self.expected.len()
    }

    /// What was decided for `hash`, if anything yet.
    pub fn decided(&self, hash: &Hash) -> Option<&BatchEntry> {
        self.decided.get(hash)
    }

    /// Every decided entry, by tx hash.
    pub fn all_decided(&self) -> &BTreeMap<Hash, BatchEntry> {
        &self.decided
    }
}

/// One node's answer to a write, as the transport delivered it.
#[derive(Clone, Debug)]
pub enum WriteAnswer {
    /// A committed reply: the node it names as signer (raft: the leader) and the entries it
    /// vouches for.
    Committed {
        signer: NodeId,
        entries: Vec<Vouched>,
    },
    /// The node does not lead; it names the leader if it knows one (the simulator's engines
    /// say so; a real follower forwards instead).
    NotLeader(Option<NodeId>),
    /// The node refused the request itself (HTTP 4xx: bad signature, unknown client, stale
    /// seq, too large).
    Refused(String),
    /// No usable answer: unreachable, timed out, busy, no leader yet, or a reply that does not
    /// verify.
    Unavailable(String),
}

/// One write request (one transaction or a batch) from the first send to its decision.
#[derive(Clone, Debug)]
pub struct ClientWrite {
    route: Route,
    quorum: WriteQuorum,
}

impl ClientWrite {
    /// A request for the transactions `expected`, sent first to node `start` (raft).
    pub fn new(
        cluster: &ClusterConfig,
        start: NodeId,
        expected: impl IntoIterator<Item = Hash>,
    ) -> ClientWrite {
        ClientWrite {
            route: Route::new(cluster, start),
            quorum: WriteQuorum::new(cluster, expected),
        }
    }

    pub fn targets(&self) -> Targets {
        self.route.targets()
    }

    pub fn route(&self) -> &Route {
        &self.route
    }

    pub fn route_mut(&mut self) -> &mut Route {
        &mut self.route
    }

    /// The answer of node `from` (the node the request was sent to, not the signer it names).
    pub fn on_answer(&mut self, from: NodeId, answer: WriteAnswer) -> WriteNext {
        if !self.route.listens_to(from) {
            return WriteNext::Wait;
        }
        match answer {
            WriteAnswer::Committed { signer, entries } => {
                self.route.on_committed(signer);
                for v in entries {
                    self.quorum.add(v);
                }
                if self.quorum.is_done() {
                    WriteNext::Done
                } else if self.route.protocol == Protocol::Raft {
                    // A reply that left a transaction out (or was about another one): ask
                    // the next node, as after any failure, so a broken node is not asked in a
                    // loop; duplicates are answered from the store, never applied twice.
                    self.route.on_failure(from, None)
                } else {
                    WriteNext::Wait
                }
            }
            WriteAnswer::NotLeader(leader) => self.route.on_failure(from, leader),
            WriteAnswer::Unavailable(_) => self.route.on_failure(from, None),
            WriteAnswer::Refused(why) => match self.quorum.refuse(from, why) {
                Some(why) => WriteNext::Refused(why),
                None => WriteNext::Wait,
            },
        }
    }

    pub fn is_done(&self) -> bool {
        self.quorum.is_done()
    }

    /// What was decided for `hash`, if anything yet.
    pub fn decided(&self, hash: &Hash) -> Option<&BatchEntry> {
        self.quorum.decided(hash)
    }

    /// Every decided entry, by tx hash.
    pub fn all_decided(&self) -> &BTreeMap<Hash, BatchEntry> {
        self.quorum.all_decided()
    }

    /// How many distinct nodes must agree.
    pub fn need(&self) -> usize {
        self.quorum.need()
    }
}

/// How a PBFT client decides a read from replicas' signed replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadRule {
    /// The read-only optimisation (Castro–Liskov TOCS §5.1.3): replicas answer from their
    /// applied state, and the client needs 2f+1 replies that match in value *and* height.
    /// Matching heights make the quorum a statement about one committed state: 2f+1 replicas,
    /// f+1 of them correct, say "at height H the value is V" — never a value no correct replica
    /// holds. It is not a proof of freshness against a write fewer than 2f+1 replicas have
    /// executed yet (the paper's condition), which is why the client falls back to `Ordered`.
    Fast,
    /// Each replica ordered the read through the protocol (a read marker) before answering, so
    /// a correct replica's answer reflects every write completed before the read began; f+1
    /// replies with the same value (heights may differ: each replica's marker lands at its own
    /// height) include a correct one.
    Ordered,
}

/// Counts verified read replies per distinct replica until one answer has a quorum.
#[derive(Debug)]
pub struct ReadQuorum {
    rule: ReadRule,
    need: usize,
    votes: BTreeMap<(ReadValue, Option<u64>), (BTreeSet<u64>, u64)>,
}

impl ReadQuorum {
    pub fn new(rule: ReadRule, f: usize) -> ReadQuorum {
        ReadQuorum {
            rule,
            need: match rule {
                ReadRule::Fast => 2 * f + 1,
                ReadRule::Ordered => f + 1,
            },
            votes: BTreeMap::new(),
        }
    }

    /// Adds one reply whose signature the caller verified against `node`'s key and whose key
    /// or account is the one asked for. Returns the decided value and height once enough
    /// distinct replicas agree (for `Ordered`, the lowest height among the agreeing replies).
    /// A replica that answers twice counts once.
    pub fn add(&mut self, node: u64, read: ReadValue, height: u64) -> Option<(ReadValue, u64)> {
        let at = match self.rule {
            ReadRule::Fast => Some(height),
            ReadRule::Ordered => None,
        };
        let entry = self
            .votes
            .entry((read.clone(), at))
            .or_insert_with(|| (BTreeSet::new(), height));
        entry.0.insert(node);
        entry.1 = entry.1.min(height);
        (entry.0.len() >= self.need).then_some((read, entry.1))
    }
}

/// What a read asks for; a reply about anything else does not count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadTarget {
    Kv(String),
    Balance(String),
}

impl ReadTarget {
    pub fn matches(&self, read: &ReadValue) -> bool {
        match (self, read) {
            (ReadTarget::Kv(k), ReadValue::Kv { key, .. }) => k == key,
            (ReadTarget::Balance(a), ReadValue::Balance { account, .. }) => a == account,
            _ => false,
        }
    }
}

/// A read decided by a PBFT client: the value, its height and which rule decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecidedRead {
    pub read: ReadValue,
    pub height: u64,
    pub rule: ReadRule,
}

/// One PBFT read from the fast path to its decision. First every replica is asked for its
/// applied state ([`ReadRule::Fast`], `consistency=local`); if 2f+1 matching replies do not
/// come (replicas at different heights, a lying or silent replica, a write in flight), the
/// caller ends the phase with [`ClientRead::phase_over`] and asks every replica again with the
/// read ordered ([`ReadRule::Ordered`], `consistency=linearizable`; "as a regular request",
/// §5.1.3).
#[derive(Debug)]
pub struct ClientRead {
    f: usize,
    what: ReadTarget,
    rule: ReadRule,
    quorum: ReadQuorum,
    answered: usize,
    refused: usize,
}

impl ClientRead {
    pub fn new(cluster: &ClusterConfig, what: ReadTarget) -> ClientRead {
        ClientRead {
            f: cluster.f,
            what,
            rule: ReadRule::Fast,
            quorum: ReadQuorum::new(ReadRule::Fast, cluster.f),
            answered: 0,
            refused: 0,
        }
    }

    /// The phase the replicas are asked in: `Ordered` means `consistency=linearizable`.
    pub fn rule(&self) -> ReadRule {
        self.rule
    }

    pub fn target(&self) -> &ReadTarget {
        &self.what
    }

    /// Replica `asked` answered: with a read reply, or (None) with something that is not one.
    /// The reply counts only if it names `asked`, verifies against cluster.toml's key for
    /// `asked` and is about what was asked.
    pub fn on_reply(
        &mut self,
        cluster: &ClusterConfig,
        asked: NodeId,
        reply: Option<ReadReply>,
    ) -> Option<DecidedRead> {
        self.answered += 1;
        let Some(reply) = reply else {
            self.refused += 1;
            return None;
        };
        let key = cluster.node(asked)?.public_key;
        if reply.node != asked
            || !self.what.matches(&reply.read)
            || !crate::reply::verify_read(&key, &reply.read, reply.height, &reply.signature)
        {
            self.refused += 1;
            return None;
        }
        let (read, height) = self.quorum.add(asked, reply.read, reply.height)?;
        Some(DecidedRead {
            read,
            height,
            rule: self.rule,
        })
    }

    /// The current phase ended undecided (its window closed, or every replica answered).
    /// After the fast path: Ok, ask every replica again, ordered. After the ordered one: why
    /// the read failed.
    pub fn phase_over(&mut self) -> Result<(), String> {
        let why = format!(
            "{} replicas answered, {} of them without a valid signed reply",
            self.answered, self.refused
        );
        match self.rule {
            ReadRule::Fast => {
                self.rule = ReadRule::Ordered;
                self.quorum = ReadQuorum::new(ReadRule::Ordered, self.f);
                self.answered = 0;
                self.refused = 0;
                Ok(())
            }
            ReadRule::Ordered => Err(format!(
                "fewer than f+1 = {} replicas agreed on an ordered read in time ({why})",
                self.f + 1
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_types::{BalanceReply, KvReply};
    use crate::ledger::{TxOutcome, TxRecord};
    use crate::sim::{sim_cluster, sim_node_key};

    fn pbft() -> ClusterConfig {
        sim_cluster(Protocol::Pbft, 4, 1).unwrap()
    }

    fn raft() -> ClusterConfig {
        sim_cluster(Protocol::Raft, 3, 1).unwrap()
    }

    const TX: Hash = [7; 32];

    /// Node `signer`'s signed reply that TX committed at `height` with `outcome`.
    fn reply(signer: usize, height: u64, outcome: TxOutcome) -> CommittedReply {
        let rec = TxRecord {
            height,
            tx_hash: TX,
            outcome,
        };
        CommittedReply::sign(&sim_node_key(signer), signer as u64, &rec)
    }

    fn committed(cluster: &ClusterConfig, r: &CommittedReply) -> WriteAnswer {
        WriteAnswer::Committed {
            signer: r.node,
            entries: Vouched::committed(cluster, r).into_iter().collect(),
        }
    }

    #[test]
    fn a_pbft_write_needs_f_plus_1_matching_signed_replies() {
        let c = pbft();
        let mut w = ClientWrite::new(&c, 0, [TX]);
        assert_eq!(w.targets(), Targets::Every);
        assert_eq!(
            w.on_answer(0, committed(&c, &reply(0, 5, TxOutcome::Ok))),
            WriteNext::Wait
        );
        // A different height or result is a different answer: it does not add up.
        assert_eq!(
            w.on_answer(1, committed(&c, &reply(1, 6, TxOutcome::Ok))),
            WriteNext::Wait
        );
        let err = TxOutcome::Error("insufficient funds".into());
        assert_eq!(
            w.on_answer(2, committed(&c, &reply(2, 5, err))),
            WriteNext::Wait
        );
        assert!(!w.is_done());
        assert_eq!(
            w.on_answer(3, committed(&c, &reply(3, 5, TxOutcome::Ok))),
            WriteNext::Done
        );
        let d = w.decided(&TX).unwrap();
        assert_eq!(
            (d.height, &d.result),
            (5, &EntryResult::Applied(TxOutcome::Ok))
        );
    }

    #[test]
    fn a_replica_that_answers_twice_counts_once() {
        let c = pbft();
        let mut w = ClientWrite::new(&c, 0, [TX]);
        let r = reply(2, 5, TxOutcome::Ok);
        for _ in 0..3 {
            assert_eq!(w.on_answer(2, committed(&c, &r)), WriteNext::Wait);
        }
        // The same reply relayed by another replica still has one signer.
        assert_eq!(w.on_answer(0, committed(&c, &r)), WriteNext::Wait);
        assert!(!w.is_done());
        assert_eq!(
            w.on_answer(1, committed(&c, &reply(1, 5, TxOutcome::Ok))),
            WriteNext::Done
        );
    }

    #[test]
    fn a_forged_or_badly_signed_reply_never_counts() {
        let c = pbft();
        // Replica 3 signs with its own key but claims to be replica 0.
        let mut impostor = reply(3, 5, TxOutcome::Ok);
        impostor.node = 0;
        assert_eq!(Vouched::committed(&c, &impostor), None);
        // A signature over other contents.
        let mut altered = reply(1, 5, TxOutcome::Ok);
        altered.result = TxOutcome::Error("insufficient funds".into());
        assert_eq!(Vouched::committed(&c, &altered), None);
        // A signer that is not a member.
        let stranger = reply(9, 5, TxOutcome::Ok);
        assert_eq!(Vouched::committed(&c, &stranger), None);
        let mut w = ClientWrite::new(&c, 0, [TX]);
        for (from, r) in [(0, &impostor), (1, &altered), (2, &stranger)] {
            assert_eq!(w.on_answer(from, committed(&c, r)), WriteNext::Wait);
        }
        assert!(!w.is_done());
        // A batch reply whose signature does not cover what it says is refused whole.
        let entry = BatchEntry {
            height: 5,
            result: EntryResult::Applied(TxOutcome::Ok),
            tx_hash: TX,
        };
        let mut b = BatchReply::sign(&sim_node_key(1), 1, vec![entry.clone()]);
        assert_eq!(Vouched::batch(&c, b.clone()).map(|v| v.len()), Some(1));
        b.results[0].height = 6;
        assert_eq!(Vouched::batch(&c, b), None);
    }

    #[test]
    fn entries_about_another_transaction_do_not_count() {
        let c = pbft();
        let mut q = WriteQuorum::new(&c, [TX]);
        let other = BatchEntry {
            height: 5,
            result: EntryResult::Applied(TxOutcome::Ok),
            tx_hash: [8; 32],
        };
        for n in 0..4 {
            assert_eq!(q.add(Vouched::observed(n, other.clone())), None);
        }
        assert!(!q.is_done());
    }

    #[test]
    fn one_refusing_replica_cannot_make_a_pbft_client_give_up() {
        let c = pbft();
        let mut w = ClientWrite::new(&c, 0, [TX]);
        assert_eq!(
            w.on_answer(3, WriteAnswer::Refused("bad signature".into())),
            WriteNext::Wait
        );
        assert_eq!(
            w.on_answer(3, WriteAnswer::Refused("bad signature".into())),
            WriteNext::Wait
        );
        assert_eq!(
            w.on_answer(1, WriteAnswer::Refused("bad signature".into())),
            WriteNext::Refused("bad signature".into())
        );
        // On raft the node asked decides.
        let c = raft();
        let mut w = ClientWrite::new(&c, 1, [TX]);
        assert_eq!(
            w.on_answer(1, WriteAnswer::Refused("not permitted".into())),
            WriteNext::Refused("not permitted".into())
        );
    }

    #[test]
    fn a_raft_client_follows_the_leader_it_is_told_about() {
        let c = raft();
        let mut w = ClientWrite::new(&c, 0, [TX]);
        assert_eq!(w.targets(), Targets::One(0));
        // A node that names the leader sends the client there at once.
        assert_eq!(
            w.on_answer(0, WriteAnswer::NotLeader(Some(2))),
            WriteNext::Redirect(2)
        );
        assert_eq!(w.targets(), Targets::One(2));
        // One that names itself, nobody, or a stranger: the next node in order.
        assert_eq!(
            w.on_answer(2, WriteAnswer::NotLeader(Some(2))),
            WriteNext::Retry(0)
        );
        assert_eq!(
            w.on_answer(0, WriteAnswer::NotLeader(Some(7))),
            WriteNext::Retry(1)
        );
        assert_eq!(
            w.on_answer(1, WriteAnswer::Unavailable("503".into())),
            WriteNext::Retry(2)
        );
        // Only the node asked is heard.
        assert_eq!(
            w.on_answer(0, committed(&c, &reply(0, 3, TxOutcome::Ok))),
            WriteNext::Wait
        );
        assert!(!w.is_done());
        // Node 2 relays the leader's (node 1's) reply: one verified reply decides, and the
        // signer is where the next request goes.
        assert_eq!(
            w.on_answer(2, committed(&c, &reply(1, 3, TxOutcome::Ok))),
            WriteNext::Done
        );
        assert_eq!(w.route().target(), 1);
        assert_eq!(w.decided(&TX).map(|e| e.height), Some(3));
        // A reply about another transaction decides nothing: on to the next node.
        let mut w = ClientWrite::new(&c, 1, [[9; 32]]);
        assert_eq!(
            w.on_answer(1, committed(&c, &reply(1, 3, TxOutcome::Ok))),
            WriteNext::Retry(2)
        );
        assert!(!w.is_done());
    }

    #[test]
    fn a_route_takes_the_callers_own_choice_of_node() {
        let c = raft();
        let mut r = Route::new(&c, 4);
        assert_eq!(r.target(), 1);
        r.retry_at(2);
        assert_eq!(r.targets(), Targets::One(2));
        assert!(r.listens_to(2) && !r.listens_to(1));
        assert!(!r.on_committed(3));
        assert_eq!(r.target(), 2);
        let p = Route::new(&pbft(), 0);
        assert!((0..4).all(|n| p.listens_to(n)));
    }

    #[test]
    fn a_batch_is_done_when_every_transaction_is_decided() {
        let c = pbft();
        let hashes = [[1; 32], [2; 32]];
        let mut w = ClientWrite::new(&c, 0, hashes);
        let entry = |h: Hash, height| BatchEntry {
            height,
            result: EntryResult::Applied(TxOutcome::Ok),
            tx_hash: h,
        };
        for n in 0..2 {
            let b = BatchReply::sign(&sim_node_key(n), n as u64, vec![entry(hashes[0], 4)]);
            let entries = Vouched::batch(&c, b).unwrap();
            let next = w.on_answer(
                n as u64,
                WriteAnswer::Committed {
                    signer: n as u64,
                    entries,
                },
            );
            assert_eq!(next, WriteNext::Wait);
        }
        assert!(w.decided(&hashes[0]).is_some() && !w.is_done());
        for n in 2..4 {
            let entries = vec![Vouched::observed(n, entry(hashes[1], 5))];
            w.on_answer(n, WriteAnswer::Committed { signer: n, entries });
        }
        assert!(w.is_done());
        assert_eq!(w.all_decided().len(), 2);
    }

    #[test]
    fn a_fast_read_needs_2f_plus_1_replicas_agreeing_on_value_and_height() {
        let v = |s: &str| ReadValue::Kv {
            key: "x".into(),
            value: Some(s.into()),
        };
        let mut q = ReadQuorum::new(ReadRule::Fast, 1);
        assert_eq!(q.add(0, v("good"), 5), None);
        // A Byzantine replica lies; the same replica twice counts once.
        assert_eq!(q.add(3, v("bad"), 5), None);
        assert_eq!(q.add(0, v("good"), 5), None);
        // Same value at another height does not match.
        assert_eq!(q.add(1, v("good"), 6), None);
        assert_eq!(q.add(2, v("good"), 5), None);
        assert_eq!(q.add(1, v("good"), 5), Some((v("good"), 5)));

        let mut q = ReadQuorum::new(ReadRule::Ordered, 1);
        assert_eq!(q.add(3, v("bad"), 50), None);
        assert_eq!(q.add(1, v("good"), 8), None);
        assert_eq!(q.add(2, v("good"), 7), Some((v("good"), 7)));
    }

    fn kv(signer: usize, named: u64, key: &str, value: &str, height: u64) -> Option<ReadReply> {
        let r = KvReply::sign(
            &sim_node_key(signer),
            named,
            key.into(),
            Some(value.into()),
            height,
        );
        Some(r.signed())
    }

    #[test]
    fn a_read_counts_only_signed_replies_about_what_was_asked_from_the_replica_asked() {
        let c = pbft();
        let mut r = ClientRead::new(&c, ReadTarget::Kv("x".into()));
        assert_eq!(r.rule(), ReadRule::Fast);
        // About another key; signed by 3 but naming 0; a balance; nothing readable.
        assert_eq!(r.on_reply(&c, 0, kv(0, 0, "y", "v", 5)), None);
        assert_eq!(r.on_reply(&c, 0, kv(3, 0, "x", "v", 5)), None);
        let bal = BalanceReply::sign(&sim_node_key(1), 1, "x".into(), 3, 5).signed();
        assert_eq!(r.on_reply(&c, 1, Some(bal)), None);
        assert_eq!(r.on_reply(&c, 2, None), None);
        // Three good ones at one height decide on the fast path; replica 1 twice counts once.
        assert_eq!(r.on_reply(&c, 1, kv(1, 1, "x", "v", 5)), None);
        assert_eq!(r.on_reply(&c, 1, kv(1, 1, "x", "v", 5)), None);
        assert_eq!(r.on_reply(&c, 2, kv(2, 2, "x", "v", 5)), None);
        let d = r.on_reply(&c, 3, kv(3, 3, "x", "v", 5)).unwrap();
        assert_eq!((d.height, d.rule), (5, ReadRule::Fast));
    }

    #[test]
    fn an_undecided_fast_read_is_ordered_then_fails_with_why() {
        let c = pbft();
        let mut r = ClientRead::new(&c, ReadTarget::Kv("x".into()));
        assert_eq!(r.on_reply(&c, 0, kv(0, 0, "x", "new", 5)), None);
        assert_eq!(r.on_reply(&c, 1, kv(1, 1, "x", "old", 4)), None);
        assert_eq!(r.phase_over(), Ok(()));
        assert_eq!(r.rule(), ReadRule::Ordered);
        // Ordered: f+1 matching values at any heights; the lowest height is reported.
        assert_eq!(r.on_reply(&c, 3, kv(3, 3, "x", "forged", 9)), None);
        assert_eq!(r.on_reply(&c, 0, kv(0, 0, "x", "new", 8)), None);
        let d = r.on_reply(&c, 1, kv(1, 1, "x", "new", 7)).unwrap();
        assert_eq!((d.height, d.rule), (7, ReadRule::Ordered));

        let mut r = ClientRead::new(&c, ReadTarget::Balance("a".into()));
        r.phase_over().unwrap();
        r.on_reply(&c, 2, None);
        let why = r.phase_over().unwrap_err();
        assert!(
            why.contains("1 replicas answered, 1 of them without"),
            "{why}"
        );
    }
}
