//! Message economy: what a committed batch and an idle interval cost on the wire.

mod common;

use common::*;
use faultline_raft::MessageBody;

fn settled(n: u64, heartbeat_tick: u32) -> Net {
    let mut net = Net::with_config(n, |c| c.heartbeat_tick = heartbeat_tick);
    net.elect(1);
    // One round so every follower is in the replicate state and knows the commit index.
    net.propose(1, b"warm-up");
    net.stabilize();
    for _ in 0..heartbeat_tick {
        net.tick(1);
    }
    net.stabilize();
    net.reset_counters();
    net
}

// Steady state: one committed batch costs n-1 appends + n-1 responses, nothing else; the
// followers learn the commit with the next heartbeat, not with an extra message.
#[test]
fn one_committed_batch_costs_exactly_two_n_minus_one_messages() {
    for n in [3u64, 5, 7] {
        let mut net = settled(n, 1);
        let idx = net.propose(1, b"x");
        net.stabilize();
        assert_eq!(net.commit_of(1), idx, "committed");
        assert_eq!(net.count("append_entries"), (n - 1) as usize, "n={n}");
        assert_eq!(
            net.count("append_entries_response"),
            (n - 1) as usize,
            "n={n}"
        );
        assert_eq!(
            net.total_sent(),
            2 * (n - 1) as usize,
            "n={n}: {:?}",
            net.sent
        );
        // Followers learn the commit from the next heartbeat.
        assert!(net.commit_of(2) < idx);
        net.tick(1);
        net.stabilize();
        for id in 2..=n {
            assert_eq!(net.commit_of(id), idx, "node {id}");
        }
    }
}

// Batching: proposals made before the driver drains `ready()` share one append per follower.
#[test]
fn proposals_between_readies_are_batched_into_one_append() {
    let n = 5u64;
    let mut net = settled(n, 1);
    for i in 0..10u8 {
        net.node_mut(1).propose(vec![i]).unwrap();
    }
    net.drain(1);
    for m in net.queue.iter() {
        let MessageBody::AppendEntries { entries, .. } = &m.body else {
            panic!("{m:?}")
        };
        assert_eq!(entries.len(), 10);
    }
    net.stabilize();
    assert_eq!(net.total_sent(), 2 * (n - 1) as usize);
    assert_eq!(net.committed.len(), 12);
}

// Limits: max_entries_per_msg splits a batch, and the pieces are pipelined (sent without
// waiting for acknowledgements), up to max_inflight.
#[test]
fn batches_respect_max_entries_and_are_pipelined() {
    let mut net = Net::with_config(3, |c| {
        c.max_entries_per_msg = 4;
        c.max_inflight = 2;
    });
    net.elect(1);
    net.propose(1, b"warm-up");
    net.stabilize();
    net.reset_counters();
    for i in 0..16u8 {
        net.node_mut(1).propose(vec![i]).unwrap();
    }
    net.drain(1);
    // 16 entries / 4 per message = 4 messages per follower, but only 2 may be in flight.
    assert_eq!(net.queue.len(), 4, "two in flight per follower");
    net.stabilize();
    assert_eq!(net.count("append_entries"), 8);
    assert_eq!(net.count("append_entries_response"), 8);
    assert_eq!(net.commit_of(1), net.stores[&1].last_index());
}

// An idle leader sends exactly one heartbeat round per heartbeat interval and nothing else.
#[test]
fn idle_leader_sends_one_heartbeat_round_per_interval() {
    for (n, hb) in [(3u64, 1u32), (5, 3)] {
        let mut net = settled(n, hb);
        let rounds = 10usize;
        for _ in 0..rounds * hb as usize {
            net.tick_all();
            net.stabilize();
        }
        let from_leader: Vec<_> = net.sent_log.iter().filter(|m| m.from == 1).collect();
        assert_eq!(
            from_leader.len(),
            rounds * (n - 1) as usize,
            "n={n} hb={hb}"
        );
        assert!(from_leader.iter().all(|m| m.is_heartbeat()));
        assert_eq!(
            net.total_sent(),
            2 * rounds * (n - 1) as usize,
            "{:?}",
            net.sent
        );
        assert_eq!(net.leader(), Some(1));
    }
}
