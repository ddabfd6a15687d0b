//! The rules of the Raft paper (§5), one test each, in the spirit of etcd's
//! raft_paper_test.go, written against the public `RawNode` API.

mod common;

use common::*;
use faultline_raft::{
    Config, HardState, Message, MessageBody, MessageKind, PersistedState, RawNode, Role,
};

/// (cluster size, votes from peers, expected role)
type ElectionCase = (u64, Vec<(u64, bool)>, Role);
/// (prev index, prev term, entries as (index, term), resulting log terms)
type AppendCase = (u64, u64, Vec<(u64, u64)>, Vec<u64>);

fn cfg(id: u64, n: u64) -> Config {
    let mut c = config(id, n);
    c.pre_vote = false;
    c.check_quorum = false;
    c
}

fn fresh(id: u64, n: u64) -> RawNode {
    RawNode::new(cfg(id, n)).unwrap()
}

fn with_log(id: u64, n: u64, term: u64, terms: &[u64]) -> RawNode {
    let st = PersistedState {
        hard_state: HardState {
            term,
            vote: None,
            commit: 0,
        },
        snapshot: None,
        entries: entries_with_terms(terms),
        applied: 0,
    };
    RawNode::restart(cfg(id, n), st).unwrap()
}

fn campaign(n: &mut RawNode) -> Vec<Message> {
    for _ in 0..100 {
        if n.role() != Role::Follower {
            break;
        }
        n.tick();
    }
    assert_ne!(n.role(), Role::Follower);
    take_msgs(n)
}

/// Make `n` leader of a cluster of `size` by granting it votes from every peer.
fn make_leader(n: &mut RawNode, size: u64) {
    campaign(n);
    let term = n.term();
    let me = n.status().id;
    for p in 1..=size {
        if p != me && n.role() != Role::Leader {
            n.step(msg(
                p,
                me,
                term,
                MessageBody::RequestVoteResponse {
                    granted: true,
                    pre_vote: false,
                },
            ))
            .unwrap();
        }
    }
    assert_eq!(n.role(), Role::Leader);
}

fn vote_granted(ms: &[Message], to: u64) -> Option<bool> {
    ms.iter().find_map(|m| match m.body {
        MessageBody::RequestVoteResponse { granted, .. } if m.to == to => Some(granted),
        _ => None,
    })
}

// §5.1: a node that sees a higher term adopts it and becomes a follower, whatever its role.
#[test]
fn any_role_updates_term_from_higher_term_message() {
    for role in [Role::Follower, Role::Candidate, Role::Leader] {
        let mut n = fresh(1, 3);
        match role {
            Role::Candidate => {
                campaign(&mut n);
            }
            Role::Leader => make_leader(&mut n, 3),
            _ => {}
        }
        assert_eq!(n.role(), role);
        let t = n.term();
        n.step(msg(2, 1, t + 1, append(0, 0, vec![], 0))).unwrap();
        assert_eq!(
            (n.role(), n.term(), n.leader()),
            (Role::Follower, t + 1, Some(2)),
            "from {role:?}"
        );
        n.step(msg(3, 1, t + 5, vote_req(10, 10))).unwrap();
        assert_eq!(n.term(), t + 5);
        assert_eq!(n.status().vote, Some(3));
    }
}

// §5.1: a request with a stale term is rejected; the sender learns the newer term.
#[test]
fn stale_term_requests_are_rejected() {
    let mut n = fresh(1, 3);
    n.step(msg(2, 1, 2, append(0, 0, vec![], 0))).unwrap();
    take_msgs(&mut n);
    n.step(msg(3, 1, 1, append(0, 0, vec![ent(1, 1)], 1)))
        .unwrap();
    assert_eq!(
        n.status().last_index,
        0,
        "stale append must not touch the log"
    );
    let rd = n.ready();
    assert!(rd.entries.is_empty());
    // With check-quorum/pre-vote off, a stale append is silently dropped.
    assert!(rd.messages.is_empty());
    n.step(msg(3, 1, 1, vote_req(5, 1))).unwrap();
    assert_eq!(vote_granted(&take_msgs(&mut n), 3), None);
    assert_eq!(n.status().vote, None);

    // With check-quorum on, the stale leader is told our term so it steps down.
    let mut n = RawNode::new(config(1, 3)).unwrap();
    n.step(msg(2, 1, 2, append(0, 0, vec![], 0))).unwrap();
    take_msgs(&mut n);
    n.step(msg(3, 1, 1, append(0, 0, vec![ent(1, 1)], 1)))
        .unwrap();
    let ms = take_msgs(&mut n);
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].term, 2);
    assert!(matches!(
        ms[0].body,
        MessageBody::AppendEntriesResponse { success: false, .. }
    ));
}

// §5.2: a follower that hears nothing for an election timeout becomes a candidate: new term,
// votes for itself, asks everyone for a vote.
#[test]
fn follower_starts_election_on_timeout() {
    let mut n = fresh(1, 3);
    let timeout = n.randomized_election_timeout();
    for _ in 1..timeout {
        n.tick();
    }
    assert_eq!(n.role(), Role::Follower);
    assert!(take_msgs(&mut n).is_empty());
    n.tick();
    assert_eq!(
        (n.role(), n.term(), n.status().vote),
        (Role::Candidate, 1, Some(1))
    );
    let rd = n.ready();
    assert_eq!(
        rd.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(1),
            commit: 0
        }),
        "vote persisted"
    );
    let mut to: Vec<u64> = rd.messages.iter().map(|m| m.to).collect();
    to.sort();
    assert_eq!(to, vec![2, 3]);
    for m in &rd.messages {
        assert_eq!(m.term, 1);
        assert_eq!(m.body, vote_req(0, 0));
    }
}

// §5.2: a candidate whose election times out (split vote) starts a new one in a new term.
#[test]
fn split_vote_candidate_stays_candidate_then_retries_in_new_term() {
    let mut n = fresh(1, 5);
    campaign(&mut n);
    n.step(msg(
        2,
        1,
        1,
        MessageBody::RequestVoteResponse {
            granted: true,
            pre_vote: false,
        },
    ))
    .unwrap();
    n.step(msg(
        3,
        1,
        1,
        MessageBody::RequestVoteResponse {
            granted: false,
            pre_vote: false,
        },
    ))
    .unwrap();
    n.step(msg(
        4,
        1,
        1,
        MessageBody::RequestVoteResponse {
            granted: false,
            pre_vote: false,
        },
    ))
    .unwrap();
    assert_eq!(
        n.role(),
        Role::Candidate,
        "2 of 5 is not a majority, 3 of 5 against is not yet decided"
    );
    for _ in 0..40 {
        n.tick();
        if n.term() == 2 {
            break;
        }
    }
    assert_eq!((n.role(), n.term()), (Role::Candidate, 2));
}

// §5.2: the outcome of one round of RequestVote RPCs.
#[test]
fn election_outcome_in_one_round() {
    // (cluster size, votes from peers, expected role)
    let cases: Vec<ElectionCase> = vec![
        (1, vec![], Role::Leader),
        (3, vec![(2, true)], Role::Leader),
        (3, vec![(2, true), (3, true)], Role::Leader),
        (3, vec![(2, false), (3, false)], Role::Follower),
        (3, vec![(2, false)], Role::Candidate),
        (5, vec![(2, true), (3, true)], Role::Leader),
        (5, vec![(2, true)], Role::Candidate),
        (5, vec![(2, true), (3, false), (4, false)], Role::Candidate),
        (5, vec![(2, false), (3, false), (4, false)], Role::Follower),
    ];
    for (size, votes, want) in cases {
        let mut n = fresh(1, size);
        campaign(&mut n);
        for (from, granted) in votes.clone() {
            n.step(msg(
                from,
                1,
                1,
                MessageBody::RequestVoteResponse {
                    granted,
                    pre_vote: false,
                },
            ))
            .unwrap();
        }
        assert_eq!(n.role(), want, "size {size} votes {votes:?}");
        assert_eq!(n.term(), 1);
    }
}

// §5.2: each server votes for at most one candidate per term, first come first served
// (a retransmitted request from the same candidate is granted again).
#[test]
fn votes_at_most_once_per_term() {
    let mut n = fresh(1, 3);
    n.step(msg(2, 1, 1, vote_req(0, 0))).unwrap();
    assert_eq!(vote_granted(&take_msgs(&mut n), 2), Some(true));
    n.step(msg(3, 1, 1, vote_req(0, 0))).unwrap();
    assert_eq!(vote_granted(&take_msgs(&mut n), 3), Some(false));
    n.step(msg(2, 1, 1, vote_req(0, 0))).unwrap();
    assert_eq!(vote_granted(&take_msgs(&mut n), 2), Some(true));
    // A new term frees the vote.
    n.step(msg(3, 1, 2, vote_req(0, 0))).unwrap();
    assert_eq!(vote_granted(&take_msgs(&mut n), 3), Some(true));
}

// §5.2: a candidate that hears from a leader of its term (or newer) becomes its follower;
// an append from an older term does not unseat it.
#[test]
fn candidate_falls_back_on_append_from_current_leader() {
    let mut n = fresh(1, 3);
    campaign(&mut n);
    n.step(msg(2, 1, 0, append(0, 0, vec![], 0))).unwrap();
    assert_eq!(n.role(), Role::Candidate);
    n.step(msg(2, 1, 1, append(0, 0, vec![], 0))).unwrap();
    assert_eq!(
        (n.role(), n.term(), n.leader()),
        (Role::Follower, 1, Some(2))
    );
}

// §5.2: election timeouts are random in [election_tick, 2 * election_tick), drawn from the
// seeded RNG (so different nodes differ, yet every run is the same).
#[test]
fn election_timeout_is_randomized_and_seeded() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut c = cfg(1, 3);
        c.seed = seed;
        let n = RawNode::new(c.clone()).unwrap();
        let t = n.randomized_election_timeout();
        assert!((10..20).contains(&t), "timeout {t}");
        seen.insert(t);
        assert_eq!(
            RawNode::new(c).unwrap().randomized_election_timeout(),
            t,
            "same seed, same draw"
        );
    }
    assert!(seen.len() >= 8, "timeouts not spread: {seen:?}");
}

// §5.4.1: a vote is refused to a candidate whose log is less up-to-date.
#[test]
fn vote_refused_to_less_up_to_date_candidate() {
    // Our log: index 1 term 1, index 2 term 2.
    let cases = [
        ((1, 1), false),
        ((2, 1), false),
        ((3, 1), false),
        ((1, 2), false),
        ((2, 2), true),
        ((3, 2), true),
        ((1, 3), true),
    ];
    for ((idx, term), want) in cases {
        let mut n = with_log(1, 3, 2, &[1, 2]);
        n.step(msg(2, 1, 3, vote_req(idx, term))).unwrap();
        assert_eq!(
            vote_granted(&take_msgs(&mut n), 2),
            Some(want),
            "candidate ({idx},{term})"
        );
    }
}

// §8 + §5.3: a new leader appends a no-op of its term and sends it to every follower.
#[test]
fn new_leader_appends_noop_and_replicates_it() {
    let mut n = fresh(1, 3);
    make_leader(&mut n, 3);
    let rd = n.ready();
    assert_eq!(rd.entries.len(), 1);
    assert!(rd.entries[0].data.is_empty() && rd.entries[0].term == 1 && rd.entries[0].index == 1);
    let apps: Vec<&Message> = rd
        .messages
        .iter()
        .filter(|m| m.kind() == MessageKind::AppendEntries)
        .collect();
    assert_eq!(apps.len(), 2);
    for m in apps {
        assert_eq!(m.body, append(0, 0, vec![rd.entries[0].clone()], 0));
    }
}

// §5.3: the leader appends a proposal to its log and sends it with the right prev index/term.
#[test]
fn leader_replicates_proposal() {
    let mut n = fresh(1, 3);
    make_leader(&mut n, 3);
    take_msgs(&mut n);
    // Followers acknowledge the no-op: now in replicate state.
    for p in [2, 3] {
        let ack = MessageBody::AppendEntriesResponse {
            success: true,
            match_index: 1,
            reject_hint: None,
            read_ctx: None,
        };
        n.step(msg(p, 1, 1, ack)).unwrap();
    }
    take_msgs(&mut n);
    assert_eq!(n.propose(b"x".to_vec()), Ok(2));
    let rd = n.ready();
    assert_eq!(rd.entries.len(), 1);
    assert_eq!(rd.messages.len(), 2);
    for m in &rd.messages {
        match &m.body {
            MessageBody::AppendEntries {
                prev_log_index: 1,
                prev_log_term: 1,
                entries,
                leader_commit: 1,
                ..
            } => {
                assert_eq!(entries.len(), 1);
                assert_eq!(entries[0].data, b"x");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

// §5.3: an entry is committed once the leader has replicated it on a majority; the leader
// then applies it and all preceding entries.
#[test]
fn leader_commits_once_a_majority_stores_the_entry() {
    // (cluster size, acknowledging followers, committed?)
    let cases: Vec<(u64, Vec<u64>, bool)> = vec![
        (1, vec![], true),
        (3, vec![], false),
        (3, vec![2], true),
        (5, vec![2], false),
        (5, vec![2, 3], true),
        (5, vec![2, 3, 4, 5], true),
    ];
    for (size, acks, want) in cases {
        let mut n = fresh(1, size);
        make_leader(&mut n, size);
        n.ready();
        let idx = n.propose(b"x".to_vec()).unwrap();
        let mut committed = n.ready().committed;
        for p in &acks {
            let ack = MessageBody::AppendEntriesResponse {
                success: true,
                match_index: idx,
                reject_hint: None,
                read_ctx: None,
            };
            n.step(msg(*p, 1, 1, ack)).unwrap();
        }
        committed.extend(n.ready().committed);
        assert_eq!(n.status().commit == idx, want, "size {size} acks {acks:?}");
        if want {
            let c: Vec<u64> = committed.iter().map(|e| e.index).collect();
            assert_eq!(c.last(), Some(&idx));
        }
    }
}

// §5.3: followers commit what the leader says is committed, capped at the last new entry.
#[test]
fn follower_commits_what_the_leader_says() {
    let mut n = fresh(1, 3);
    n.step(msg(2, 1, 1, append(0, 0, vec![ent(1, 1), ent(2, 1)], 1)))
        .unwrap();
    let rd = n.ready();
    assert_eq!(rd.entries.len(), 2);
    assert_eq!(
        rd.committed.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(rd.hard_state.map(|h| h.commit), Some(1));
    // Heartbeat carrying a higher commit.
    n.step(msg(2, 1, 1, append(2, 1, vec![], 2))).unwrap();
    assert_eq!(
        n.ready()
            .committed
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>(),
        vec![2]
    );
    // leader_commit beyond the entries sent: only up to the last new entry (§5.3 rule 5).
    n.step(msg(2, 1, 1, append(1, 1, vec![ent(2, 1)], 9)))
        .unwrap();
    assert_eq!(n.status().commit, 2);
}

// §5.3 log matching: the consistency check rejects an append whose prev entry is missing or
// has another term, and the rejection carries a useful hint.
#[test]
fn consistency_check_rejects_mismatching_prev() {
    // (prev index, prev term, expected success, expected hint)
    let cases = [
        (2, 2, true, None),
        (2, 3, true, None), // term 2 <= 3: hint would be index 2, but prev term mismatches -> see below
        (3, 2, false, Some((2, 2))),
        (1, 1, true, None),
        (0, 0, true, None),
    ];
    for (pi, pt, ok, hint) in cases {
        let mut n = with_log(1, 3, 2, &[1, 2]);
        n.step(msg(2, 1, 3, append(pi, pt, vec![], 0))).unwrap();
        let ms = take_msgs(&mut n);
        let MessageBody::AppendEntriesResponse {
            success,
            reject_hint,
            ..
        } = ms[0].body
        else {
            panic!()
        };
        if (pi, pt) == (2, 3) {
            assert!(!success, "term mismatch at prev");
            assert_eq!(reject_hint, Some((2, 2)));
            continue;
        }
        assert_eq!((success, reject_hint), (ok, hint), "prev ({pi},{pt})");
    }
}

// §5.3: conflicting entries (same index, different term) are deleted with all that follow;
// entries already present are kept; new ones are appended.
#[test]
fn follower_truncates_conflicting_entries() {
    // Log [1@1, 2@2]. (prev idx, prev term, entries, resulting terms)
    let cases: Vec<AppendCase> = vec![
        (2, 2, vec![(3, 3)], vec![1, 2, 3]),
        (1, 1, vec![(2, 3), (3, 4)], vec![1, 3, 4]),
        (0, 0, vec![(1, 1)], vec![1, 2]),
        (0, 0, vec![(1, 3)], vec![3]),
    ];
    for (pi, pt, es, want) in cases {
        let st = PersistedState {
            hard_state: HardState {
                term: 2,
                vote: None,
                commit: 0,
            },
            snapshot: None,
            entries: entries_with_terms(&[1, 2]),
            applied: 0,
        };
        let mut store = Storage {
            hard_state: st.hard_state,
            entries: st.entries.clone(),
            ..Default::default()
        };
        let mut n = RawNode::restart(cfg(1, 3), st).unwrap();
        let es: Vec<_> = es.into_iter().map(|(i, t)| ent(i, t)).collect();
        n.step(msg(2, 1, 4, append(pi, pt, es, 0))).unwrap();
        store.persist(&n.ready());
        let terms: Vec<u64> = store.entries.iter().map(|e| e.term).collect();
        assert_eq!(terms, want, "prev ({pi},{pt})");
        assert_eq!(n.status().last_index, want.len() as u64);
    }
}

// §5.3 figure 7: whatever a follower's log looks like, the leader brings it to its own, and
// never changes its own log in the process (Leader Append-Only, §5.3).
#[test]
fn leader_syncs_every_figure7_follower_log_and_never_overwrites_its_own() {
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: Vec<Vec<u64>> = vec![
        vec![1, 1, 1, 4, 4, 5, 5, 6, 6],
        vec![1, 1, 1, 4],
        vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        vec![1, 1, 1, 4, 4, 4, 4],
        vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    for f in followers {
        let states = vec![
            PersistedState {
                hard_state: HardState {
                    term: 8,
                    vote: None,
                    commit: 10,
                },
                entries: entries_with_terms(&leader_log),
                ..Default::default()
            },
            PersistedState {
                hard_state: HardState {
                    term: 7,
                    vote: None,
                    commit: 0,
                },
                entries: entries_with_terms(&f),
                ..Default::default()
            },
            PersistedState {
                hard_state: HardState {
                    term: 7,
                    vote: None,
                    commit: 0,
                },
                ..Default::default()
            },
        ];
        let mut net = Net::from_states(states, |c| {
            c.pre_vote = false;
            c.check_quorum = false;
        });
        net.elect(1);
        net.stabilize();
        let mut want = leader_log.to_vec();
        want.push(9); // the new leader's no-op
        assert_eq!(net.log_terms(1), want, "leader log changed");
        assert_eq!(
            net.stores[&2].entries, net.stores[&1].entries,
            "follower {f:?} not synced"
        );
        assert_eq!(net.stores[&3].entries, net.stores[&1].entries);
        assert_eq!(net.commit_of(1), 11);
    }
}

// §5.4.2: a leader never commits an entry of an earlier term by counting replicas; it
// commits it only together with an entry of its own term (figure 8).
#[test]
fn leader_does_not_commit_old_term_entry_by_counting() {
    // Our log: 1@1, 2@2; we become leader at term 4 and append the no-op 3@4.
    let st = PersistedState {
        hard_state: HardState {
            term: 3,
            vote: None,
            commit: 1,
        },
        entries: entries_with_terms(&[1, 2]),
        applied: 1,
        ..Default::default()
    };
    let mut n = RawNode::restart(cfg(1, 5), st).unwrap();
    make_leader(&mut n, 5);
    assert_eq!(n.term(), 4);
    n.ready();
    let ack = |i| MessageBody::AppendEntriesResponse {
        success: true,
        match_index: i,
        reject_hint: None,
        read_ctx: None,
    };
    n.step(msg(2, 1, 4, ack(2))).unwrap();
    n.step(msg(3, 1, 4, ack(2))).unwrap();
    assert_eq!(
        n.status().commit,
        1,
        "2@2 is on 3 of 5 but is from an old term"
    );
    assert!(n.ready().committed.is_empty());
    n.step(msg(3, 1, 4, ack(3))).unwrap();
    assert_eq!(n.status().commit, 1, "3@4 is only on 2 of 5");
    n.step(msg(2, 1, 4, ack(3))).unwrap();
    assert_eq!(
        n.status().commit,
        3,
        "3@4 on a majority commits it and 2@2 with it"
    );
    let c: Vec<u64> = n.ready().committed.iter().map(|e| e.index).collect();
    assert_eq!(c, vec![2, 3]);
}
