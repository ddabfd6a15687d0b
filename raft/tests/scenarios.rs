//! Whole-cluster scenarios on the deterministic test network: faults, recovery, and the
//! features beyond the basic paper rules.

mod common;

use common::*;
use faultline_raft::{HardState, MessageBody, MessageKind, PersistedState, ProposeError, Role};

fn no_pv(c: &mut faultline_raft::Config) {
    c.pre_vote = false;
    c.check_quorum = false;
}

// Figure 8 end to end: an old-term entry on a majority is not committed, and a later leader
// may legitimately overwrite it; nobody ever applies it.
#[test]
fn figure8_old_term_entry_on_majority_is_not_committed_and_can_be_overwritten() {
    let st = |terms: &[u64]| PersistedState {
        hard_state: HardState {
            term: 3,
            vote: None,
            commit: 1,
        },
        entries: entries_with_terms(terms),
        applied: 1,
        ..Default::default()
    };
    let mut net = Net::from_states(
        vec![st(&[1, 2]), st(&[1, 2]), st(&[1]), st(&[1]), st(&[1, 3])],
        |c| {
            no_pv(c);
            c.max_entries_per_msg = 1;
        },
    );
    net.isolate(4);
    net.isolate(5);
    // S1 leads term 4 but its no-op (index 3) never reaches anyone.
    // (S3's first probe carries it too, but S3 rejects that probe since it lacks index 2.)
    let probes_to_s3 = std::cell::Cell::new(0);
    net.filter = Some(Box::new(move |m| {
        let has3 = matches!(&m.body, MessageBody::AppendEntries { entries, .. } if entries.iter().any(|e| e.index == 3));
        if has3 && m.to == 3 {
            probes_to_s3.set(probes_to_s3.get() + 1);
            return probes_to_s3.get() > 1;
        }
        has3
    }));
    net.elect(1);
    assert_eq!(net.node(1).term(), 4);
    assert_eq!(
        net.log_terms(3),
        vec![1, 2],
        "2@2 now on S1, S2, S3: a majority"
    );
    assert_eq!(
        net.commit_of(1),
        1,
        "§5.4.2: not committed by counting replicas"
    );
    // S1 crashes; S5 (last term 3) wins term 5 and overwrites index 2 everywhere.
    net.crash(1);
    net.heal();
    net.tick_until_leader(5);
    assert_eq!(net.node(5).term(), 5);
    net.stabilize();
    for id in 2..=5 {
        assert_eq!(net.log_terms(id), vec![1, 3, 5], "node {id}");
    }
    net.restart(1);
    net.run(3);
    assert_eq!(
        net.log_terms(1),
        vec![1, 3, 5],
        "old leader's uncommitted entries overwritten"
    );
    assert_eq!(net.committed[&2].term, 3);
}

// A leader cut off from the majority keeps accepting proposals that can never commit; when
// it rejoins it steps down and its uncommitted entries are replaced.
#[test]
fn partitioned_old_leader_rejoins_steps_down_and_loses_uncommitted_entries() {
    let mut net = Net::with_config(5, |c| c.check_quorum = false);
    net.elect(1);
    net.partition(&[1, 2], &[3, 4, 5]);
    let stale = net.propose(1, b"lost");
    net.stabilize();
    assert!(net.commit_of(1) < stale);
    net.elect(3);
    let kept = net.propose(3, b"kept");
    net.stabilize();
    assert_eq!(net.commit_of(3), kept);
    net.heal();
    // The next heartbeat from 3 (or 1's to anyone) reveals the newer term.
    net.run(2);
    assert_eq!(net.node(1).role(), Role::Follower);
    assert_eq!(net.node(1).leader(), Some(3));
    for id in 1..=5 {
        assert_eq!(net.stores[&id].entries, net.stores[&3].entries, "node {id}");
    }
    assert!(net.committed.values().all(|e| e.data != b"lost"));
    assert!(net.committed.values().any(|e| e.data == b"kept"));
}

// Fast back-off: a follower with a long conflicting log converges in one rejection per
// term boundary, not one per entry.
#[test]
fn long_conflicting_log_converges_with_few_rejections() {
    let mut leader_terms = vec![1; 10];
    leader_terms.extend(vec![4; 50]);
    let mut long_conflict = vec![1; 10];
    long_conflict.extend(vec![2; 90]);
    long_conflict.extend(vec![3; 50]);
    let short = vec![1; 5];
    let st = |terms: &[u64]| PersistedState {
        hard_state: HardState {
            term: 4,
            vote: None,
            commit: 0,
        },
        entries: entries_with_terms(terms),
        ..Default::default()
    };
    let mut net = Net::from_states(
        vec![
            st(&leader_terms),
            st(&leader_terms),
            st(&long_conflict),
            st(&short),
        ],
        no_pv,
    );
    net.elect(1);
    net.stabilize();
    for id in 2..=4 {
        assert_eq!(net.stores[&id].entries, net.stores[&1].entries, "node {id}");
    }
    let rejections = |from: u64| {
        net.sent_log
            .iter()
            .filter(|m| {
                m.from == from
                    && matches!(
                        m.body,
                        MessageBody::AppendEntriesResponse { success: false, .. }
                    )
            })
            .count()
    };
    assert!(
        rejections(3) <= 2,
        "conflicting follower needed {} rejections",
        rejections(3)
    );
    assert!(
        rejections(4) <= 1,
        "short follower needed {} rejections",
        rejections(4)
    );
    assert_eq!(rejections(2), 0);
}

// With 3 of 5 down nothing commits and the leader gives up (check-quorum); once they return
// the cluster elects a leader and makes progress again.
#[test]
fn five_nodes_three_down_no_progress_then_recovery() {
    let mut net = Net::new(5);
    net.elect(1);
    let before = net.commit_of(1);
    for id in [3, 4, 5] {
        net.crash(id);
    }
    let idx = net.propose(1, b"no quorum");
    net.run(40);
    assert!(net.commit_of(1) < idx && net.commit_of(2) < idx);
    assert_eq!(net.commit_of(1), before);
    assert!(
        net.leaders().is_empty(),
        "a leader without quorum must step down"
    );
    assert!(!net.committed.values().any(|e| e.data == b"no quorum"));
    for id in [3, 4, 5] {
        net.restart(id);
    }
    for _ in 0..100 {
        net.run(1);
        if net.leader().is_some() {
            break;
        }
    }
    let l = net.leader().expect("leader after recovery");
    let idx = net.propose(l, b"after");
    net.run(2);
    for id in 1..=5 {
        assert!(
            net.commit_of(id) >= idx,
            "node {id} commit {}",
            net.commit_of(id)
        );
    }
}

// Thesis §9.6: a partitioned node keeps its term while it cannot win, so rejoining does not
// depose a healthy leader. Without pre-vote the same scenario does disrupt it.
#[test]
fn pre_vote_keeps_a_partitioned_node_from_disrupting_the_term() {
    for pre_vote in [true, false] {
        let mut net = Net::with_config(3, |c| c.pre_vote = pre_vote);
        net.elect(1);
        let term = net.node(1).term();
        net.isolate(3);
        net.run(60);
        if pre_vote {
            assert_eq!(net.node(3).term(), term, "pre-vote must not bump the term");
        } else {
            assert!(net.node(3).term() > term + 2);
        }
        net.heal();
        net.run(30);
        if pre_vote {
            assert_eq!(net.leader(), Some(1));
            assert_eq!(net.node(1).term(), term, "leader undisturbed");
        } else {
            assert!(
                net.node(1).term() > term,
                "without pre-vote the rejoin forces a new term"
            );
        }
        assert_eq!(net.leaders().len(), 1);
    }
}

// Check-quorum: a leader that has not heard from a majority for an election timeout steps
// down; one that has, stays.
#[test]
fn check_quorum_leader_steps_down_when_isolated() {
    let mut net = Net::new(3);
    net.elect(1);
    net.run(50);
    assert_eq!(net.leader(), Some(1), "healthy leader stays");
    net.isolate(1);
    // Activity seen just before the partition may count for one more check period.
    for _ in 0..20 {
        net.tick(1);
        net.stabilize();
    }
    assert_eq!(net.node(1).role(), Role::Follower);
    assert_eq!(
        net.node_mut(1).propose(b"x".to_vec()),
        Err(ProposeError::NotLeader { leader: None })
    );
}

// Leader lease: followers with a live leader ignore vote requests even at a higher term.
#[test]
fn followers_with_live_leader_ignore_vote_requests() {
    let mut net = Net::new(3);
    net.elect(1);
    let term = net.node(1).term();
    let body = vote_req(100, 100);
    net.node_mut(2).step(msg(3, 2, term + 1, body)).unwrap();
    net.drain(2);
    assert_eq!(net.node(2).term(), term);
    assert!(net.queue.is_empty(), "not even answered");
}

// Raft §7: after compaction a follower that needs compacted entries gets the snapshot, then
// the entries after it.
#[test]
fn lagging_follower_catches_up_through_install_snapshot() {
    let mut net = Net::new(3);
    net.elect(1);
    net.crash(3);
    for i in 0..20u8 {
        net.propose(1, &[i]);
    }
    net.stabilize();
    let snap_index = net.compact(1);
    assert!(snap_index >= 20);
    net.propose(1, b"after snapshot");
    net.stabilize();
    net.restart(3);
    net.reset_counters();
    net.run(3);
    assert_eq!(net.count("install_snapshot"), 1);
    assert_eq!(net.snapshots_installed.get(&3), Some(&1));
    let s3 = &net.stores[&3];
    assert_eq!(
        s3.snapshot.as_ref().map(|s| (s.index, s.data.clone())),
        Some((snap_index, format!("state@{snap_index}").into_bytes()))
    );
    assert_eq!(s3.entries, net.stores[&1].entries);
    assert_eq!(net.commit_of(3), net.commit_of(1));
    assert_eq!(s3.applied, net.commit_of(1));
    // Compacting again beyond applied is refused.
    let err = net.node_mut(1).compact(1000, vec![]);
    assert!(err.is_err());
}

// A lost snapshot is resent after an election timeout.
#[test]
fn lost_snapshot_is_retried() {
    let mut net = Net::new(3);
    net.elect(1);
    net.crash(3);
    for i in 0..5u8 {
        net.propose(1, &[i]);
    }
    net.stabilize();
    net.compact(1);
    net.restart(3);
    net.filter = Some(Box::new(|m| m.kind() == MessageKind::InstallSnapshot));
    net.run(3);
    assert_eq!(net.snapshots_installed.get(&3), None);
    net.filter = None;
    net.run(15);
    assert_eq!(net.snapshots_installed.get(&3), Some(&1));
    assert_eq!(net.commit_of(3), net.commit_of(1));
}

// Thesis §6.4: ReadIndex answers with the commit index only after a quorum confirms
// leadership; an isolated leader never answers.
#[test]
fn read_index_returns_commit_index_after_quorum_confirmation() {
    let mut net = Net::new(3);
    net.elect(1);
    let idx = net.propose(1, b"w");
    net.stabilize();
    net.node_mut(1).read_index(42).unwrap();
    net.drain(1);
    assert!(
        net.read_states.get(&1).is_none_or(|v| v.is_empty()),
        "not before acks"
    );
    let hb = net.queue.iter().filter(|m| m.is_heartbeat()).count();
    assert_eq!(hb, 2, "one confirmation heartbeat per follower");
    net.stabilize();
    assert_eq!(
        net.read_states[&1],
        vec![faultline_raft::ReadState {
            ctx: 42,
            index: idx
        }]
    );

    // Isolated leader: the read waits (and is dropped when it steps down).
    net.isolate(1);
    net.node_mut(1).read_index(43).unwrap();
    net.stabilize();
    assert_eq!(net.read_states[&1].len(), 1);
    assert!(net.node(1).has_pending_reads());

    // Followers refuse reads and point at the leader.
    assert_eq!(
        net.node_mut(2).read_index(1),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );
}

// Thesis §6.4: a fresh leader answers reads only after committing an entry of its term, and
// then with an index covering it.
#[test]
fn read_index_waits_for_first_commit_of_the_term() {
    let mut net = Net::new(3);
    for _ in 0..100 {
        if net.node(1).role() == Role::Candidate {
            break;
        }
        net.tick(1);
    }
    // Deliver votes, but not the no-op acknowledgements yet.
    net.filter = Some(Box::new(|m| m.kind() == MessageKind::AppendEntriesResponse));
    net.stabilize();
    assert_eq!(net.node(1).role(), Role::Leader);
    net.node_mut(1).read_index(7).unwrap();
    net.stabilize();
    assert!(net.read_states.get(&1).is_none_or(|v| v.is_empty()));
    net.filter = None;
    net.run(1);
    let rs = &net.read_states[&1];
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].ctx, 7);
    assert!(rs[0].index >= 1 && net.committed[&rs[0].index].term == net.node(1).term());
}

// Thesis §3.10: leadership transfer to an up-to-date follower and to a lagging one.
#[test]
fn leadership_transfer() {
    let mut net = Net::new(3);
    net.elect(1);
    let term = net.node(1).term();
    net.node_mut(1).transfer_leadership(2).unwrap();
    net.drain(1);
    net.stabilize();
    assert_eq!(net.leader(), Some(2));
    assert_eq!(net.node(2).term(), term + 1);
    assert!(net.count("timeout_now") == 1);

    // Lagging target: it is caught up first, proposals are refused meanwhile.
    net.isolate(3);
    let idx = net.propose(2, b"x");
    net.stabilize();
    net.heal();
    net.node_mut(2).transfer_leadership(3).unwrap();
    assert_eq!(
        net.node_mut(2).propose(b"y".to_vec()),
        Err(ProposeError::TransferInProgress)
    );
    net.drain(2);
    net.stabilize();
    assert_eq!(net.leader(), Some(3));
    assert!(net.stores[&3].last_index() > idx);
    assert_eq!(
        net.node_mut(3).transfer_leadership(9),
        Err(ProposeError::UnknownPeer(9))
    );
}

// A transfer to an unreachable node is abandoned after an election timeout.
#[test]
fn leadership_transfer_times_out() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(3);
    net.node_mut(1).transfer_leadership(3).unwrap();
    assert_eq!(
        net.node_mut(1).propose(b"y".to_vec()),
        Err(ProposeError::TransferInProgress)
    );
    net.run(12);
    assert_eq!(net.leader(), Some(1));
    assert!(net.node_mut(1).propose(b"y".to_vec()).is_ok());
}

// Restart keeps term and vote: no double voting in a term, and committed entries after the
// application's applied index are handed out again.
#[test]
fn restart_keeps_term_and_vote() {
    let mut net = Net::with_config(3, no_pv);
    net.node_mut(1).step(msg(2, 1, 5, vote_req(0, 0))).unwrap();
    net.drain(1);
    assert_eq!(
        net.stores[&1].hard_state,
        HardState {
            term: 5,
            vote: Some(2),
            commit: 0
        }
    );
    net.crash(1);
    net.queue.clear();
    net.restart(1);
    assert_eq!(
        (net.node(1).term(), net.node(1).status().vote),
        (5, Some(2))
    );
    net.node_mut(1).step(msg(3, 1, 5, vote_req(10, 5))).unwrap();
    net.drain(1);
    let granted = net.queue.iter().any(|m| {
        matches!(
            m.body,
            MessageBody::RequestVoteResponse { granted: true, .. }
        )
    });
    assert!(!granted, "voted twice in term 5 after restart");
}

#[test]
fn restarted_cluster_resumes_with_its_log() {
    let mut net = Net::new(3);
    net.elect(1);
    for i in 0..5u8 {
        net.propose(1, &[i]);
    }
    net.stabilize();
    net.run(1);
    let commit = net.commit_of(1);
    for id in 1..=3 {
        net.crash(id);
    }
    // Application state is volatile here: forget it so the restart re-applies.
    for id in 1..=3 {
        net.stores.get_mut(&id).unwrap().applied = 0;
        net.restart(id);
        assert_eq!(
            net.applied[&id].len() as u64,
            commit,
            "node {id} re-applies committed entries"
        );
    }
    for _ in 0..100 {
        net.run(1);
        if net.leader().is_some() {
            break;
        }
    }
    let l = net.leader().unwrap();
    let idx = net.propose(l, b"more");
    net.run(2);
    assert!((1..=3).all(|id| net.commit_of(id) >= idx));
}

/// Thesis §10.2.1: a leader may send its appends before writing them, but then its own copy
/// counts towards a commit only once the driver reports it durable. With one follower's
/// acknowledgement in hand (two of three, a quorum if the leader counted itself) the entry
/// stays uncommitted until the leader's write is reported; its messages leave early, and a
/// follower never sends early.
#[test]
fn a_leader_appending_in_parallel_counts_itself_only_once_durable() {
    let mut net = Net::with_config(3, |c| c.parallel_leader_append = true);
    net.elect(1);
    net.stabilize();
    let before = net.commit_of(1);
    let idx = net
        .node_mut(1)
        .propose(b"x".to_vec())
        .expect("leader accepts");
    let rd = net.node_mut(1).ready();
    assert!(rd.messages.is_empty(), "{:?}", rd.messages);
    assert!(
        rd.early_messages
            .iter()
            .any(|m| m.kind() == MessageKind::AppendEntries),
        "{rd:?}"
    );
    assert_eq!(rd.entries.last().map(|e| e.index), Some(idx));
    // Node 2 stores and acknowledges the entry; the leader steps the ack before its own write.
    for m in rd.early_messages.iter().filter(|m| m.to == 2) {
        net.node_mut(2).step(m.clone()).expect("follower steps");
    }
    let rd2 = net.node_mut(2).ready();
    assert!(rd2.early_messages.is_empty(), "a follower sent early");
    let term = rd.entries[0].term;
    net.node_mut(2).on_persisted(idx, term);
    for m in rd2.messages.into_iter().filter(|m| m.to == 1) {
        net.node_mut(1).step(m).expect("leader steps the ack");
    }
    assert_eq!(
        net.node(1).status().commit,
        before,
        "committed on an unwritten copy"
    );
    net.node_mut(1).on_persisted(idx, term);
    assert_eq!(net.node(1).status().commit, idx);
}
