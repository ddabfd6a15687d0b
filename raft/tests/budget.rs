//! The message budget (`Config::max_msg_bytes`): no message the core produces may exceed it,
//! because the transport refuses larger frames and a refused AppendEntries is retried forever.

mod common;

use common::Net;
use faultline_raft::{Config, MessageBody, ProposeError, RaftError};

const BUDGET: usize = 16 * 1024;

fn encoded_len(m: &faultline_raft::Message) -> usize {
    postcard::to_allocvec(m).expect("encode").len()
}

/// Deliver everything, then one heartbeat round so followers learn the final commit index.
fn settle(net: &mut Net) {
    net.stabilize();
    net.tick(1);
    net.stabilize();
}

fn budget_net() -> Net {
    let mut net = Net::with_config(3, |c| {
        c.max_msg_bytes = BUDGET;
        c.max_entries_per_msg = 1024;
    });
    net.elect(1);
    net.stabilize();
    net
}

// A proposal that could never fit in one AppendEntries is refused with a typed error and
// leaves the log untouched; the cluster keeps committing.
#[test]
fn a_proposal_that_cannot_fit_one_message_is_refused() {
    let mut net = budget_net();
    let last = net.node(1).status().last_index;
    let max = Config {
        max_msg_bytes: BUDGET,
        ..Config::new(1, vec![1, 2, 3])
    }
    .max_entry_data_bytes();
    let err = net.node_mut(1).propose(vec![7; max + 1]).unwrap_err();
    assert_eq!(err, ProposeError::TooLarge { size: max + 1, max });
    assert_eq!(net.node(1).status().last_index, last);
    // The largest legal entry goes through, in a message within the budget.
    net.reset_counters();
    let idx = net.propose(1, &vec![7; max]);
    settle(&mut net);
    assert!(net.commit_of(2) >= idx && net.commit_of(3) >= idx);
    let appends: Vec<_> = net
        .sent_log
        .iter()
        .filter(|m| matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty()))
        .collect();
    assert!(!appends.is_empty());
    for m in appends {
        let len = encoded_len(m);
        assert!(len <= BUDGET, "append of {len} bytes over {BUDGET}");
    }
}

// Many mid-size entries proposed at once are split across several AppendEntries, each within
// the budget, and all of them commit.
#[test]
fn mid_size_entries_are_packed_by_bytes() {
    let mut net = budget_net();
    net.reset_counters();
    let data = vec![3u8; 3000];
    let mut last = 0;
    for _ in 0..20 {
        last = net.node_mut(1).propose(data.clone()).expect("propose");
    }
    settle(&mut net);
    assert_eq!(net.commit_of(1), last);
    assert_eq!(net.commit_of(2), last);
    assert_eq!(net.commit_of(3), last);
    let to_2: Vec<_> = net
        .sent_log
        .iter()
        .filter(|m| m.to == 2)
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries { entries, .. } if !entries.is_empty() => {
                Some((encoded_len(m), entries.len()))
            }
            _ => None,
        })
        .collect();
    // 20 entries of ~3 KB cannot share one 16 KiB message: at least 4 messages.
    assert!(to_2.len() >= 4, "{to_2:?}");
    assert_eq!(to_2.iter().map(|(_, n)| n).sum::<usize>(), 20);
    for (len, n) in &to_2 {
        assert!(*len <= BUDGET, "append of {len} bytes over {BUDGET}");
        // Packed, not one entry per message: five 3 KB entries fit in 16 KiB.
        assert!(*n >= 4, "{to_2:?}");
    }
}

// A snapshot that would not fit one InstallSnapshot is refused at compaction, so the log is
// kept and followers catch up from entries instead of an unsendable snapshot.
#[test]
fn compaction_refuses_a_snapshot_over_the_budget() {
    let mut net = budget_net();
    net.propose(1, b"x");
    net.stabilize();
    let applied = net.stores[&1].applied;
    let err = net
        .node_mut(1)
        .compact(applied, vec![0; BUDGET])
        .unwrap_err();
    assert!(matches!(err, RaftError::SnapshotTooLarge { .. }), "{err:?}");
    assert_eq!(net.node(1).status().first_index, 1);
    net.node_mut(1)
        .compact(applied, vec![0; 100])
        .expect("small snapshot");
    assert_eq!(net.node(1).status().first_index, applied + 1);
}

// hold_apply: a follower keeps replicating and acknowledging (so the cluster commits) but
// hands out no committed entry until released; then it applies them all, in order.
#[test]
fn held_apply_keeps_replicating_and_resumes_in_order() {
    let mut net = budget_net();
    let before = net.applied[&3].len();
    net.node_mut(3).hold_apply(true);
    let mut last = 0;
    for i in 0..5u8 {
        last = net.propose(1, &[i]);
    }
    settle(&mut net);
    assert_eq!(net.commit_of(1), last);
    assert_eq!(net.commit_of(3), last, "held node still learns the commit");
    assert_eq!(net.applied[&3].len(), before, "nothing applied while held");
    assert!(net.node(3).status().applied < last);
    net.node_mut(3).hold_apply(false);
    net.drain(3);
    let applied: Vec<u8> = net.applied[&3][before..]
        .iter()
        .filter(|e| !e.data.is_empty())
        .map(|e| e.data[0])
        .collect();
    assert_eq!(applied, vec![0, 1, 2, 3, 4]);
    assert_eq!(net.node(3).status().applied, last);
}
