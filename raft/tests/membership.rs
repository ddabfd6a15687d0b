//! Membership change (Raft thesis §4): learners, one voter at a time, the latest configuration
//! in the log in force, a leader removing itself, and configurations carried by snapshots.
//! Directed scenarios, then a property test that interleaves random changes with crashes,
//! restarts, loss, duplication, reordering and compaction and checks the harness's agreement
//! on every apply and one leader per term.

mod common;

use std::collections::BTreeMap;

use common::*;
use faultline_raft::{Membership, NodeId, ProposeError, Role};
use proptest::prelude::*;

fn conf(voters: &[NodeId], learners: &[NodeId]) -> Membership {
    Membership::new(voters.to_vec(), learners.to_vec()).expect("valid membership")
}

/// Nodes 1..=voters vote; nodes above that exist but start as learners that only know
/// themselves as such (a node joining a running cluster).
fn cluster(voters: u64, extra: u64) -> Net {
    Net::with_config(voters + extra, |c| {
        c.voters = (1..=voters).collect();
        c.learners = if c.id > voters {
            vec![c.id]
        } else {
            Vec::new()
        };
    })
}

/// Ticks `candidates` (delivering after each round) until one of them leads; returns it.
fn elect_among(net: &mut Net, candidates: &[NodeId]) -> NodeId {
    for _ in 0..1000 {
        for &c in candidates {
            net.tick(c);
        }
        net.stabilize();
        if let Some(&l) = candidates
            .iter()
            .find(|&&c| net.node(c).role() == Role::Leader)
        {
            return l;
        }
    }
    panic!("none of {candidates:?} became leader");
}

/// Proposes `next` at `leader` and delivers everything.
fn change(net: &mut Net, leader: NodeId, next: Membership) -> u64 {
    let index = net
        .node_mut(leader)
        .propose_conf_change(next, b"change".to_vec())
        .expect("leader accepts the change");
    net.drain(leader);
    net.stabilize();
    index
}

#[test]
fn a_learner_receives_the_log_but_never_votes_or_counts() {
    let mut net = cluster(3, 1);
    net.elect(1);
    change(&mut net, 1, conf(&[1, 2, 3], &[4]));
    let i = net.propose(1, b"x");
    net.stabilize();
    assert!(
        net.commit_of(4) >= i,
        "the learner receives committed entries"
    );

    // Without voters 2 and 3 the leader and the learner commit nothing.
    net.partition(&[1, 4], &[2, 3]);
    let j = net.propose(1, b"y");
    net.stabilize();
    assert!(net.commit_of(1) < j, "a learner's acknowledgement counted");
    // Nor does a learner confirm leadership for a read (thesis §6.4 needs a voter majority),
    // and leadership cannot be handed to it.
    net.node_mut(1).read_index(7).expect("leader");
    net.drain(1);
    net.run(3);
    let read_done = |net: &Net| {
        net.read_states
            .get(&1)
            .is_some_and(|r| r.iter().any(|s| s.ctx == 7))
    };
    assert!(!read_done(&net), "a learner's answer confirmed a read");
    assert_eq!(
        net.node_mut(1).transfer_leadership(4),
        Err(ProposeError::UnknownPeer(4))
    );
    net.heal();
    net.run(3);
    assert!(
        read_done(&net),
        "the voters confirm the read once reachable"
    );
    net.partition(&[1, 4], &[2, 3]);

    // A learner never campaigns, however long it hears nothing.
    net.reset_counters();
    for _ in 0..100 {
        net.tick(4);
    }
    net.stabilize();
    assert_eq!(net.node(4).role(), Role::Follower);
    assert!(net
        .sent_log
        .iter()
        .all(|m| m.from != 4 || m.kind().as_str() != "request_vote"));
}

#[test]
fn a_promoted_learner_counts_and_a_removed_voter_no_longer_does() {
    let mut net = cluster(3, 1);
    net.elect(1);
    change(&mut net, 1, conf(&[1, 2, 3], &[4]));
    change(&mut net, 1, conf(&[1, 2, 3, 4], &[]));
    assert_eq!(net.node(4).membership(), &conf(&[1, 2, 3, 4], &[]));
    // Four voters: the leader and node 4 alone are no majority...
    net.partition(&[1, 4], &[2, 3]);
    let i = net.propose(1, b"a");
    net.stabilize();
    assert!(net.commit_of(1) < i);
    // ...with node 2 they are.
    net.heal();
    net.partition(&[1, 2, 4], &[3]);
    net.stabilize();
    net.run(2);
    assert!(net.commit_of(1) >= i);
    // Remove node 3: three voters again, and node 3's absence does not matter.
    net.heal();
    change(&mut net, 1, conf(&[1, 2, 4], &[]));
    net.crash(3);
    net.partition(&[1, 4], &[2]);
    let j = net.propose(1, b"b");
    net.stabilize();
    assert!(
        net.commit_of(1) >= j,
        "1 and 4 are a majority of {{1, 2, 4}}"
    );
}

#[test]
fn changes_go_one_voter_at_a_time_and_never_two_uncommitted() {
    let mut net = cluster(3, 2);
    net.elect(1);
    let r = net
        .node_mut(1)
        .propose_conf_change(conf(&[1, 2, 3, 4, 5], &[]), Vec::new());
    assert!(
        matches!(r, Err(ProposeError::InvalidMembership(_))),
        "{r:?}"
    );
    let r = net
        .node_mut(1)
        .propose_conf_change(conf(&[1], &[]), Vec::new());
    assert!(
        matches!(r, Err(ProposeError::InvalidMembership(_))),
        "{r:?}"
    );
    // The first change is appended; a second one waits until it commits.
    net.isolate(1);
    net.node_mut(1)
        .propose_conf_change(conf(&[1, 2, 3], &[4]), Vec::new())
        .expect("first change");
    let r = net
        .node_mut(1)
        .propose_conf_change(conf(&[1, 2, 3], &[4, 5]), Vec::new());
    assert_eq!(r, Err(ProposeError::ConfChangePending));
    net.heal();
    net.stabilize();
    net.run(2);
    net.node_mut(1)
        .propose_conf_change(conf(&[1, 2, 3], &[4, 5]), Vec::new())
        .expect("the first one committed");
}

#[test]
fn a_new_leader_changes_nothing_before_an_entry_of_its_term_commits() {
    let mut net = Net::new(3);
    net.elect(1);
    net.stabilize();
    // A new leader wins while its no-op cannot reach anyone.
    net.isolate(1);
    net.filter = Some(Box::new(|m| m.kind().as_str() == "append_entries"));
    let l = elect_among(&mut net, &[2, 3]);
    let r = net
        .node_mut(l)
        .propose_conf_change(conf(&[1, 2, 3], &[4]), Vec::new());
    assert_eq!(r, Err(ProposeError::ConfChangePending));
    // Once the no-op commits, the same change is accepted.
    net.filter = None;
    net.run(2);
    net.node_mut(l)
        .propose_conf_change(conf(&[1, 2, 3], &[4]), Vec::new())
        .expect("accepted after a commit in the term");
}

#[test]
fn a_leader_that_removes_itself_steps_down_once_the_change_commits() {
    let mut net = Net::new(3);
    net.elect(1);
    net.stabilize();
    change(&mut net, 1, conf(&[2, 3], &[]));
    assert_ne!(
        net.node(1).role(),
        Role::Leader,
        "removed leader still leads"
    );
    let mut leader = None;
    for _ in 0..100 {
        net.run(1);
        if let Some(l) = net.leader() {
            leader = Some(l);
            break;
        }
    }
    let l = leader.expect("the remaining voters elect a leader");
    assert!(l == 2 || l == 3);
    let i = net.propose(l, b"after");
    net.stabilize();
    net.run(2);
    assert!(net.commit_of(2) >= i && net.commit_of(3) >= i);
    // The removed node never campaigns again.
    for _ in 0..100 {
        net.tick(1);
    }
    assert_eq!(net.node(1).role(), Role::Follower);
}

#[test]
fn truncating_a_configuration_entry_reverts_the_membership() {
    let mut net = Net::new(3);
    net.elect(1);
    net.stabilize();
    net.isolate(1);
    net.node_mut(1)
        .propose_conf_change(conf(&[1, 2], &[]), Vec::new())
        .expect("appended, never replicated");
    net.drain(1);
    assert_eq!(net.node(1).membership(), &conf(&[1, 2], &[]));
    net.stabilize();
    // Node 2 or 3 leads a newer term and overwrites node 1's uncommitted entry.
    let l = elect_among(&mut net, &[2, 3]);
    let i = net.propose(l, b"overwrite");
    net.heal();
    net.stabilize();
    net.run(3);
    assert!(net.commit_of(1) >= i);
    assert_eq!(net.node(1).membership(), &members(3));
}

#[test]
fn a_snapshot_carries_the_membership_to_a_joining_node_and_survives_restart() {
    let mut net = cluster(3, 1);
    net.elect(1);
    net.isolate(4);
    change(&mut net, 1, conf(&[1, 2, 3], &[4]));
    net.propose(1, b"x");
    net.stabilize();
    net.compact(1);
    net.heal();
    net.run(3);
    assert_eq!(net.snapshots_installed.get(&4), Some(&1));
    assert_eq!(net.node(4).membership(), &conf(&[1, 2, 3], &[4]));
    assert_eq!(net.commit_of(4), net.commit_of(1));
    net.crash(4);
    net.restart(4);
    assert_eq!(net.node(4).membership(), &conf(&[1, 2, 3], &[4]));
    // A restarted voter reads its membership back from its log.
    net.crash(2);
    net.restart(2);
    assert_eq!(net.node(2).membership(), &conf(&[1, 2, 3], &[4]));
}

// ------------------------------------------------------------------ property test

#[derive(Clone, Debug)]
enum Op {
    Fault(Fault),
    Propose,
    AddLearner(u64),
    Promote(u64),
    Remove(u64),
}

fn op(ids: u64) -> impl Strategy<Value = Op> {
    let fault = |f: fn(u64) -> Fault| (1..=ids).prop_map(move |i| Op::Fault(f(i)));
    prop_oneof![
        20 => fault(Fault::Tick),
        30 => Just(Op::Fault(Fault::Deliver)),
        4 => Just(Op::Fault(Fault::Drop)),
        3 => Just(Op::Fault(Fault::Duplicate)),
        4 => any::<usize>().prop_map(|k| Op::Fault(Fault::Reorder(k))),
        8 => Just(Op::Propose),
        2 => (1..=ids).prop_map(Op::AddLearner),
        2 => (1..=ids).prop_map(Op::Promote),
        2 => (1..=ids).prop_map(Op::Remove),
        1 => fault(Fault::Crash),
        2 => fault(Fault::Restart),
        1 => fault(Fault::Compact),
    ]
}

/// The membership `op` asks the current leader for, if it makes sense from its membership.
fn next_membership(now: &Membership, op: &Op) -> Option<Membership> {
    let (mut voters, mut learners) = (now.voters.clone(), now.learners.clone());
    match *op {
        Op::AddLearner(x) if !now.contains(x) => learners.push(x),
        Op::Promote(x) if now.contains(x) && !now.is_voter(x) => {
            learners.retain(|&l| l != x);
            voters.push(x);
        }
        Op::Remove(x) if now.contains(x) => {
            voters.retain(|&v| v != x);
            learners.retain(|&l| l != x);
        }
        _ => return None,
    }
    Membership::new(voters, learners)
}

fn run(voters: u64, extra: u64, ops: Vec<Op>, seed: u64) {
    let ids = voters + extra;
    let mut net = Net::with_config(ids, |c| {
        c.seed = seed.wrapping_mul(31).wrapping_add(c.id);
        c.election_tick = 5;
        c.max_entries_per_msg = 3;
        c.max_inflight = 4;
        c.voters = (1..=voters).collect();
        c.learners = if c.id > voters {
            vec![c.id]
        } else {
            Vec::new()
        };
    });
    let mut leader_of_term: BTreeMap<u64, u64> = BTreeMap::new();
    let mut counter = 0u32;
    for op in ops {
        let fault = match op {
            Op::Fault(f) => Some(f),
            Op::Propose => {
                if let Some(l) = net.leader() {
                    counter += 1;
                    if net
                        .node_mut(l)
                        .propose(counter.to_le_bytes().to_vec())
                        .is_ok()
                    {
                        net.drain(l);
                    }
                }
                None
            }
            Op::AddLearner(_) | Op::Promote(_) | Op::Remove(_) => {
                if let Some(l) = net.leader() {
                    if let Some(next) = next_membership(net.node(l).membership(), &op) {
                        if net
                            .node_mut(l)
                            .propose_conf_change(next, Vec::new())
                            .is_ok()
                        {
                            net.drain(l);
                        }
                    }
                }
                None
            }
        };
        // One node down at a time: at most a minority of every membership the run can reach.
        if let Some(f) = fault {
            net.inject(&f, 1);
        }
        net.check_one_leader_per_term(&mut leader_of_term);
    }
    // Faults stop: everyone up, reliable network. The members of the leader's membership
    // must elect, commit, and all hold the commit.
    let l = net.heal_and_elect(300, |net, l| net.node(l).membership().is_voter(l));
    let idx = net
        .node_mut(l)
        .propose(b"final".to_vec())
        .expect("leader accepts");
    net.drain(l);
    let members: Vec<NodeId> = net.node(l).membership().members().collect();
    if std::env::var("MEMBERSHIP_STATS").is_ok() {
        let changes = net.committed.values().filter(|e| e.conf.is_some()).count();
        eprintln!(
            "STATS changes={changes} final={:?}",
            net.node(l).membership()
        );
    }
    for _ in 0..30 {
        net.run(1);
        if members.iter().all(|&id| net.commit_of(id) >= idx) {
            break;
        }
    }
    for id in members {
        assert!(
            net.commit_of(id) >= idx,
            "member {id} did not commit after recovery"
        );
        // Every member ends on the leader's membership.
        assert_eq!(net.node(id).membership(), net.node(l).membership());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("MEMBERSHIP_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(5000), ..ProptestConfig::default() })]

    #[test]
    fn reconfiguration_under_faults_keeps_one_log_3_plus_2(ops in prop::collection::vec(op(5), 50..500), seed in any::<u64>()) {
        run(3, 2, ops, seed);
    }

    #[test]
    fn reconfiguration_under_faults_keeps_one_log_1_plus_3(ops in prop::collection::vec(op(4), 50..500), seed in any::<u64>()) {
        run(1, 3, ops, seed);
    }
}
