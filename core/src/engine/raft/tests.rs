//! Tests of the Raft engine around the core: what a leader that loses its role does with the
//! transactions it had queued but not ordered.

use faultline_raft::{Message, MessageBody};

use super::*;
use crate::config::Protocol;
use crate::ledger::Op;
use crate::sim::{sim_client_key, sim_cluster};

fn deliver(engine: &mut RaftEngine, msg: Message) {
    let bytes = wire::encode_raft(&msg);
    engine.on_message(msg.from, &bytes).expect("accepted");
}

/// Node 0 of three, made leader by votes from node 1.
fn leader(store: &Store) -> RaftEngine {
    let mut e = RaftEngine::open(0, 3, RaftOptions::default(), store).expect("open");
    for pre_vote in [true, false] {
        for _ in 0..100 {
            if e.raw().role() != Role::Follower && (e.raw().role() == Role::Candidate) != pre_vote {
                break;
            }
            e.on_tick();
        }
        let term = e.raw().term() + u64::from(pre_vote);
        deliver(
            &mut e,
            Message {
                from: 1,
                to: 0,
                term,
                body: MessageBody::RequestVoteResponse {
                    granted: true,
                    pre_vote,
                },
            },
        );
    }
    assert_eq!(e.raw().role(), Role::Leader);
    e
}

#[test]
fn a_leader_that_loses_its_role_reports_the_transactions_it_dropped() {
    let cluster = sim_cluster(Protocol::Raft, 3, 1).expect("cluster");
    let store =
        Store::with_backend(redb::backends::InMemoryBackend::new(), &cluster.genesis).unwrap();
    let mut e = leader(&store);
    let key = sim_client_key(0);
    let txs: Vec<Tx> = (1..=3)
        .map(|seq| {
            Tx::sign(
                &key,
                seq,
                Op::Put {
                    key: "k".into(),
                    value: "v".into(),
                },
            )
        })
        .collect();
    let hashes: Vec<[u8; 32]> = txs.iter().map(Tx::hash).collect();
    e.propose(txs).expect("the leader queues them");
    assert!(e.take_dropped().is_empty());
    // A leader of a later term appears before this one ordered anything.
    let term = e.raw().term() + 1;
    deliver(
        &mut e,
        Message {
            from: 2,
            to: 0,
            term,
            body: MessageBody::AppendEntries {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: Vec::new(),
                leader_commit: 0,
                read_ctx: None,
            },
        },
    );
    e.on_tick();
    assert_eq!(e.take_dropped(), hashes);
    assert!(e.take_dropped().is_empty(), "reported once");
    assert_eq!(e.status().pending_txs, 0);
}
