//! Tests of the PBFT engine: back-pressure on a full request queue, and linearizable reads
//! through read markers on an in-memory network of four replicas.

use super::*;
use crate::ledger::Op;
use crate::sim::{sim_client_key, sim_cluster, sim_node_key};

#[test]
fn a_replica_pushes_back_once_its_request_queue_is_full() {
    let cluster = sim_cluster(Protocol::Pbft, 4, 1).unwrap();
    let store =
        Store::with_backend(redb::backends::InMemoryBackend::new(), &cluster.genesis).unwrap();
    let opts = PbftOptions {
        checkpoint_interval: 16,
        max_batch_txs: 100,
        view_change_ticks: 100,
        max_message_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
        max_pending_txs: 5,
        read_nonce_seed: 1,
    };
    // A backup: requests stay pending until the primary orders them (it never runs here).
    let mut engine = PbftEngine::open(
        1,
        cluster.nodes.iter().map(|n| n.public_key).collect(),
        cluster.clients.iter().map(|c| c.public_key).collect(),
        sim_node_key(1),
        opts,
        &store,
    )
    .unwrap();
    let key = sim_client_key(0);
    let tx = |seq| {
        Tx::sign(
            &key,
            seq,
            Op::Put {
                key: "k".into(),
                value: "v".into(),
            },
        )
    };
    engine.propose((1..=5).map(tx).collect()).unwrap();
    assert_eq!(engine.propose(vec![tx(6)]), Err(ProposeError::Busy));
}

/// Four replicas over an in-memory network; messages to the replicas in `held` wait in
/// `held_msgs` until released (a replica that is slow, paused or partitioned).
struct Net {
    engines: Vec<PbftEngine>,
    stores: Vec<Store>,
    held: Vec<NodeId>,
    held_msgs: Vec<(NodeId, super::Outgoing)>,
    ready: Vec<Vec<u64>>,
}

impl Net {
    fn new() -> Net {
        let cluster = sim_cluster(Protocol::Pbft, 4, 1).unwrap();
        let mut engines = Vec::new();
        let mut stores = Vec::new();
        for i in 0..4u64 {
            let store =
                Store::with_backend(redb::backends::InMemoryBackend::new(), &cluster.genesis)
                    .unwrap();
            let opts = PbftOptions {
                checkpoint_interval: 16,
                max_batch_txs: 100,
                view_change_ticks: 1000,
                max_message_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
                max_pending_txs: 1000,
                read_nonce_seed: 100 + i,
            };
            engines.push(
                PbftEngine::open(
                    i,
                    cluster.nodes.iter().map(|n| n.public_key).collect(),
                    cluster.clients.iter().map(|c| c.public_key).collect(),
                    sim_node_key(i as usize),
                    opts,
                    &store,
                )
                .unwrap(),
            );
            stores.push(store);
        }
        Net {
            engines,
            stores,
            held: Vec::new(),
            held_msgs: Vec::new(),
            ready: vec![Vec::new(); 4],
        }
    }

    /// Ticks and drives every replica and delivers messages until the network is quiet
    /// (the primary cuts partial batches on a tick).
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut msgs = Vec::new();
            for i in 0..4 {
                self.engines[i].on_tick();
                let (out, _) = crate::engine::drive(&mut self.engines[i], &self.stores[i]).unwrap();
                msgs.extend(out.into_iter().map(|m| (i as NodeId, m)));
                let r = self.engines[i].ready_reads();
                self.ready[i].extend(r);
            }
            if msgs.is_empty() {
                return;
            }
            for (from, m) in msgs {
                if self.held.contains(&m.to) {
                    self.held_msgs.push((from, m));
                } else {
                    let _ = self.engines[m.to as usize].on_message(from, &m.bytes);
                }
            }
        }
        panic!("the network did not settle");
    }

    fn release(&mut self) {
        self.held.clear();
        for (from, m) in std::mem::take(&mut self.held_msgs) {
            let _ = self.engines[m.to as usize].on_message(from, &m.bytes);
        }
        self.settle();
    }
}

fn put(seq: u64, value: &str) -> Tx {
    Tx::sign(
        &sim_client_key(0),
        seq,
        Op::Put {
            key: "x".into(),
            value: value.into(),
        },
    )
}

/// Issue 17: a replica that missed a completed write must not answer a linearizable read
/// from its stale state. The read waits for its marker (TOCS §5.1.3, ordered like a
/// request), which cannot execute before the write it follows.
#[test]
fn a_lagging_replica_serves_a_linearizable_read_only_after_the_writes_before_it() {
    let mut net = Net::new();
    net.engines[0].propose(vec![put(1, "old")]).unwrap();
    net.settle();
    assert_eq!(net.stores[3].get("x").unwrap().as_deref(), Some("old"));

    // Replica 3 stops hearing from the others; the write completes on 0, 1 and 2.
    net.held = vec![3];
    net.engines[0].propose(vec![put(2, "new")]).unwrap();
    net.settle();
    for i in 0..3 {
        assert_eq!(net.stores[i].get("x").unwrap().as_deref(), Some("new"));
    }
    assert_eq!(net.stores[3].get("x").unwrap().as_deref(), Some("old"));

    // A read begins at the stale replica: its marker reaches the primary and is ordered by
    // 0, 1 and 2, but replica 3 cannot execute it yet, so the read is not served.
    assert_eq!(net.engines[3].read_index(7), Ok(true));
    net.settle();
    assert!(net.ready[3].is_empty(), "a stale replica served a read");
    let height_with_marker = net.stores[0].head().unwrap().height;
    assert_eq!(
        height_with_marker, 3,
        "the marker was ordered after the write"
    );
    let marker = &net.stores[0].block(3).unwrap().unwrap().txs[0];
    assert!(marker.op.is_read_marker());
    assert_eq!(marker.client, sim_node_key(3).verifying_key().to_bytes());

    // Once it hears the others again it executes the write and then the marker.
    net.release();
    assert_eq!(net.ready[3], vec![7]);
    assert_eq!(net.stores[3].get("x").unwrap().as_deref(), Some("new"));
    // The marker changed nothing and left no receipt.
    assert_eq!(net.stores[3].receipt(&marker.hash()).unwrap(), None);
}

#[test]
fn reads_share_a_marker_only_if_they_began_before_it_was_issued_and_are_bounded() {
    let mut net = Net::new();
    net.engines[1].read_index(1).unwrap();
    net.engines[1].read_index(2).unwrap();
    net.settle();
    assert_eq!(net.ready[1], vec![1, 2]);
    // Both reads rode one marker: one block.
    assert_eq!(net.stores[1].head().unwrap().height, 1);
    net.engines[1].read_index(3).unwrap();
    net.settle();
    assert_eq!(net.ready[1], vec![1, 2, 3]);
    assert_eq!(net.stores[1].head().unwrap().height, 2);

    for ctx in 0..MAX_PENDING_READS as u64 {
        net.engines[2].read_index(100 + ctx).unwrap();
    }
    assert_eq!(net.engines[2].read_index(1), Err(ProposeError::Busy));
}
