//! A buggy or malicious peer can never panic the core, misaddressed traffic is reported, and
//! the core is deterministic byte for byte.

mod common;

use common::*;
use faultline_raft::{
    Config, ConfigError, Entry, HardState, Membership, Message, MessageBody, PersistedState,
    RaftError, RawNode, Role, Snapshot,
};
use proptest::prelude::*;

fn leader3() -> Net {
    let mut net = Net::new(3);
    net.elect(1);
    net.propose(1, b"a");
    net.stabilize();
    net
}

#[test]
fn misaddressed_and_self_sent_messages_are_reported_and_ignored() {
    let mut n = RawNode::new(config(1, 3)).unwrap();
    let e = n.step(msg(2, 7, 1, append(0, 0, vec![], 0)));
    assert_eq!(e, Err(RaftError::WrongRecipient { to: 7, me: 1 }));
    assert_eq!(
        n.step(msg(1, 1, 5, vote_req(0, 0))),
        Err(RaftError::UnknownPeer(1))
    );
    assert_eq!(n.term(), 0);
    assert!(!n.has_ready());
}

/// Thesis §4.1: a server grants its vote to a candidate outside its latest configuration (it
/// may be a voter of an entry this server has not received yet); what a non-member answers
/// is never counted.
#[test]
fn a_non_member_candidate_is_answered_but_its_answers_do_not_count() {
    let mut n = RawNode::new(config(1, 3)).unwrap();
    assert_eq!(n.step(msg(9, 1, 5, vote_req(0, 0))), Ok(()));
    assert_eq!((n.term(), n.status().vote), (5, Some(9)));
    let granted = take_msgs(&mut n).iter().any(|m| {
        m.to == 9
            && m.body
                == MessageBody::RequestVoteResponse {
                    granted: true,
                    pre_vote: false,
                }
    });
    assert!(granted);

    // A candidate of three voters counts no vote from node 9.
    let mut c = RawNode::new(config(1, 3)).unwrap();
    for _ in 0..100 {
        c.tick();
        if c.role() == Role::Candidate || c.role() == Role::PreCandidate {
            break;
        }
    }
    let asked: Vec<_> = take_msgs(&mut c);
    let term = asked.first().map(|m| m.term).unwrap_or_default();
    let pre_vote = c.role() == Role::PreCandidate;
    for _ in 0..3 {
        let _ = c.step(msg(
            9,
            1,
            term,
            MessageBody::RequestVoteResponse {
                granted: true,
                pre_vote,
            },
        ));
    }
    assert_ne!(c.role(), Role::Leader);
    assert_ne!(c.role(), Role::Candidate, "a non-member's pre-vote counted");
}

#[test]
fn hostile_values_do_not_panic_or_corrupt_the_leader() {
    let mut net = leader3();
    let term = net.node(1).term();
    let last = net.node(1).status().last_index;
    let bodies = vec![
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index: u64::MAX,
            reject_hint: None,
            read_ctx: Some(u64::MAX),
        },
        MessageBody::AppendEntriesResponse {
            success: false,
            match_index: u64::MAX,
            reject_hint: Some((u64::MAX, u64::MAX)),
            read_ctx: None,
        },
        MessageBody::AppendEntriesResponse {
            success: false,
            match_index: 0,
            reject_hint: Some((u64::MAX, 0)),
            read_ctx: None,
        },
        MessageBody::InstallSnapshotResponse {
            match_index: u64::MAX,
        },
        MessageBody::RequestVoteResponse {
            granted: true,
            pre_vote: false,
        },
        MessageBody::TimeoutNow,
    ];
    for b in bodies {
        let _ = net.node_mut(1).step(msg(2, 1, term, b));
        net.drain(1);
    }
    let st = net.node(1).status();
    assert_eq!(st.role, Role::Leader);
    assert_eq!(st.last_index, last);
    assert!(st.commit <= st.last_index);
    // A second "leader" of our term is reported.
    let r = net
        .node_mut(1)
        .step(msg(3, 1, term, append(0, 0, vec![], 0)));
    assert!(matches!(r, Err(RaftError::InvalidMessage { from: 3, .. })));
    net.heal();
    net.queue.clear();
    net.stabilize();
    let idx = net.propose(1, b"still works");
    net.stabilize();
    assert_eq!(net.commit_of(1), idx);
}

#[test]
fn malformed_appends_and_snapshots_are_rejected_by_followers() {
    let mut n = RawNode::new(config(1, 3)).unwrap();
    let e = |i, t| Entry::new(t, i, vec![1]);
    let conf_entry = |conf| Entry {
        conf: Some(conf),
        ..e(1, 1)
    };
    let bad = vec![
        append(u64::MAX, 1, vec![e(0, 1)], 0),   // index overflow
        append(0, 0, vec![e(1, 1), e(3, 1)], 0), // gap
        append(0, 0, vec![e(1, 2), e(2, 1)], 0), // decreasing terms
        append(0, 0, vec![e(1, 9)], 0),          // entry term above leader term
        // configuration entries without a voter, or unsorted
        append(0, 0, vec![conf_entry(Membership::default())], 0),
        append(
            0,
            0,
            vec![conf_entry(Membership {
                voters: vec![3, 1],
                learners: vec![],
            })],
            0,
        ),
        MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                index: 5,
                term: 1,
                conf: Membership::default(),
                data: vec![],
            },
        },
        MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                index: 0,
                term: 1,
                conf: members(3),
                data: vec![],
            },
        },
        MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                index: 5,
                term: 9,
                conf: members(3),
                data: vec![],
            },
        },
    ];
    for b in bad {
        let r = n.step(msg(2, 1, 3, b.clone()));
        assert!(
            matches!(r, Err(RaftError::InvalidMessage { .. })),
            "{b:?} gave {r:?}"
        );
    }
    assert_eq!(n.status().last_index, 0);
    // Huge but well-formed prev index: just a rejection with a hint.
    n.step(msg(2, 1, 3, append(u64::MAX - 1, 3, vec![], u64::MAX)))
        .unwrap();
    let ms = take_msgs(&mut n);
    assert!(matches!(
        ms.last().unwrap().body,
        MessageBody::AppendEntriesResponse {
            success: false,
            reject_hint: Some((0, 0)),
            ..
        }
    ));
    assert_eq!(n.status().commit, 0);
}

#[test]
fn a_leader_never_truncates_committed_entries_on_a_follower() {
    let st = PersistedState {
        hard_state: HardState {
            term: 2,
            vote: None,
            commit: 2,
        },
        entries: entries_with_terms(&[1, 2]),
        applied: 2,
        ..Default::default()
    };
    let mut n = RawNode::restart(config(1, 3), st).unwrap();
    let r = n.step(msg(
        2,
        1,
        3,
        append(1, 1, vec![Entry::new(3, 2, vec![])], 0),
    ));
    // prev (1) is below our commit (2): answered with our commit, never truncated.
    assert!(r.is_ok());
    assert_eq!(n.status().last_term, 2);
}

#[test]
fn restart_rejects_corrupt_state() {
    let bad = |hs: HardState, terms: &[u64]| PersistedState {
        hard_state: hs,
        entries: entries_with_terms(terms),
        ..Default::default()
    };
    let c = || config(1, 3);
    assert!(RawNode::restart(
        c(),
        bad(
            HardState {
                term: 1,
                vote: None,
                commit: 5
            },
            &[1]
        )
    )
    .is_err());
    assert!(RawNode::restart(
        c(),
        bad(
            HardState {
                term: 1,
                vote: None,
                commit: 0
            },
            &[2]
        )
    )
    .is_err());
    assert!(RawNode::restart(
        c(),
        bad(
            HardState {
                term: 3,
                vote: None,
                commit: 0
            },
            &[2, 1]
        )
    )
    .is_err());
    let mut gap = bad(
        HardState {
            term: 3,
            vote: None,
            commit: 0,
        },
        &[1, 1],
    );
    gap.entries[1].index = 5;
    assert!(RawNode::restart(c(), gap).is_err());
    assert!(RawNode::restart(
        c(),
        bad(
            HardState {
                term: 3,
                vote: None,
                commit: 2
            },
            &[1, 3]
        )
    )
    .is_ok());
}

#[test]
fn config_validation() {
    let ok = Config::new(1, vec![1, 2, 3]);
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(
        (
            ok.election_tick,
            ok.heartbeat_tick,
            ok.pre_vote,
            ok.check_quorum
        ),
        (10, 1, true, true)
    );
    assert_eq!(
        (ok.max_inflight, ok.max_entries_per_msg, ok.max_msg_bytes),
        (256, 64, 4 << 20)
    );
    let mut c = ok.clone();
    c.max_msg_bytes = 100;
    assert_eq!(
        c.validate(),
        Err(ConfigError::MessageBudgetTooSmall {
            max_msg_bytes: 100,
            min: faultline_raft::MIN_MSG_BYTES
        })
    );
    assert_eq!(
        Config::new(4, vec![1, 2, 3]).validate(),
        Err(ConfigError::SelfNotVoter(4))
    );
    assert_eq!(
        Config::new(1, vec![1, 2, 2]).validate(),
        Err(ConfigError::DuplicateVoter(2))
    );
    let mut c = ok.clone();
    c.heartbeat_tick = 10;
    assert!(matches!(
        c.validate(),
        Err(ConfigError::HeartbeatNotBelowElection { .. })
    ));
    let mut c = ok.clone();
    c.max_inflight = 0;
    assert!(RawNode::new(c).is_err());
}

#[test]
fn message_type_names() {
    let m = |b| Message {
        from: 1,
        to: 2,
        term: 1,
        body: b,
    };
    let names: Vec<&str> = [
        append(0, 0, vec![], 0),
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index: 0,
            reject_hint: None,
            read_ctx: None,
        },
        vote_req(0, 0),
        MessageBody::RequestVoteResponse {
            granted: true,
            pre_vote: false,
        },
        MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                index: 1,
                term: 1,
                conf: members(3),
                data: vec![],
            },
        },
        MessageBody::InstallSnapshotResponse { match_index: 1 },
        MessageBody::TimeoutNow,
    ]
    .into_iter()
    .map(|b| m(b).kind().as_str())
    .collect();
    assert_eq!(
        names,
        [
            "append_entries",
            "append_entries_response",
            "request_vote",
            "request_vote_response",
            "install_snapshot",
            "install_snapshot_response",
            "timeout_now"
        ]
    );
}

/// Same inputs, same outputs: two runs of a scenario produce identical message streams.
#[test]
fn deterministic_byte_for_byte() {
    let run = || {
        let mut net = Net::new(5);
        for r in 0..200u32 {
            net.tick_all();
            if r % 7 == 0 {
                net.queue.pop_front();
            }
            if let Some(l) = net.leader() {
                let _ = net.node_mut(l).propose(r.to_le_bytes().to_vec());
            }
            net.stabilize();
            if r == 100 {
                net.isolate(net.leader().unwrap_or(1));
            }
            if r == 150 {
                net.heal();
            }
        }
        format!("{:?}", net.sent_log)
    };
    let a = run();
    assert!(a.len() > 10_000);
    assert_eq!(a, run());
}

fn arb_body() -> impl Strategy<Value = MessageBody> {
    let small = 0u64..12;
    let ents = prop::collection::vec(
        (
            small.clone(),
            small.clone(),
            prop::collection::vec(any::<u8>(), 0..3),
        ),
        0..4,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(term, index, data)| Entry::new(term, index, data))
            .collect::<Vec<_>>()
    });
    prop_oneof![
        (
            small.clone(),
            small.clone(),
            ents,
            small.clone(),
            prop::option::of(small.clone())
        )
            .prop_map(|(p, pt, entries, c, r)| {
                MessageBody::AppendEntries {
                    prev_log_index: p,
                    prev_log_term: pt,
                    entries,
                    leader_commit: c,
                    read_ctx: r,
                }
            }),
        (
            any::<bool>(),
            small.clone(),
            prop::option::of((small.clone(), small.clone())),
            prop::option::of(small.clone())
        )
            .prop_map(|(s, m, h, r)| MessageBody::AppendEntriesResponse {
                success: s,
                match_index: m,
                reject_hint: h,
                read_ctx: r
            }),
        (small.clone(), small.clone(), any::<bool>(), any::<bool>()).prop_map(|(i, t, p, tr)| {
            MessageBody::RequestVote {
                last_log_index: i,
                last_log_term: t,
                pre_vote: p,
                transfer: tr,
            }
        }),
        (any::<bool>(), any::<bool>()).prop_map(|(g, p)| MessageBody::RequestVoteResponse {
            granted: g,
            pre_vote: p
        }),
        (small.clone(), small.clone()).prop_map(|(i, t)| MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                index: i,
                term: t,
                conf: members(3),
                data: vec![]
            }
        }),
        small
            .clone()
            .prop_map(|m| MessageBody::InstallSnapshotResponse { match_index: m }),
        Just(MessageBody::TimeoutNow),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary messages from peers (any term, any values) never panic a node in any role
    /// and never break its basic invariants.
    #[test]
    fn arbitrary_peer_messages_never_panic(
        msgs in prop::collection::vec((2u64..=3, 0u64..8, arb_body()), 1..60),
        ticks in 0usize..30,
    ) {
        let mut net = leader3();
        net.check_agreement = false;
        for _ in 0..ticks { net.tick(2); }
        for (i, (from, term, body)) in msgs.into_iter().enumerate() {
            let to = if i % 2 == 0 { 1 } else { 2 };
            let from = if from == to { 3 } else { from };
            let _ = net.node_mut(to).step(Message { from, to, term, body });
            net.drain(to);
            if i % 5 == 0 { net.tick(1); }
            for id in [1, 2] {
                let s = net.node(id).status();
                prop_assert!(s.commit <= s.last_index);
                prop_assert!(s.applied <= s.commit);
            }
        }
    }
}
