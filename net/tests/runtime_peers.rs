//! `NetHandle::set_peers`: the allow-list follows a member set that changes at run time. A peer
//! added later connects and exchanges messages; a removed peer is disconnected, its sends fail,
//! and its handshakes are refused like a stranger's. Loopback only, every wait bounded.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use faultline_net::{start, NetConfig, SendError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_added_at_run_time_connects_and_a_removed_one_is_cut_off() {
    bounded(async {
        // Nodes 1 and 2 know each other; node 0 knows them, but they do not know node 0 yet.
        let mut nodes = cluster(&[1, 2], |_| {}).await;
        all_connected(&nodes, 1).await;
        let members: Vec<_> = nodes.iter().map(|n| peer(n.config.id, n.addr())).collect();
        let (newcomer, mut newcomer_rx) =
            start(NetConfig::new(0, key(0), any_port(), members.clone()))
                .await
                .expect("start node 0");
        // Node 0 dials both (it has the lower id) and is refused while it is a stranger.
        wait_until(Duration::from_secs(20), "node 0 refused", || {
            nodes.iter().all(|n| {
                n.handle
                    .stats()
                    .rejected
                    .get("unknown_peer")
                    .copied()
                    .unwrap_or(0)
                    >= 1
            })
        })
        .await;
        assert_eq!(newcomer.connected_peers(), 0);

        // The members learn of node 0: it is redialled (its backoff is at most 5 s) and let in.
        let zero = peer(0, newcomer.listen_addrs()[0].clone());
        for n in &nodes {
            let mut peers: Vec<_> = members
                .iter()
                .filter(|p| p.id != n.config.id)
                .cloned()
                .collect();
            peers.push(zero.clone());
            n.handle.set_peers(peers).await.expect("set_peers");
            assert_eq!(n.handle.peers().first(), Some(&0));
        }
        wait_until(Duration::from_secs(20), "node 0 connected", || {
            newcomer.connected_peers() == 2 && nodes.iter().all(|n| n.handle.is_connected(0))
        })
        .await;
        nodes[0]
            .handle
            .send(0, "prepare", Arc::from(&b"welcome"[..]))
            .expect("send to the new peer");
        let m = recv(&mut newcomer_rx).await;
        assert_eq!((m.from, &m.bytes[..]), (1, &b"welcome"[..]));
        newcomer
            .send(2, "prepare", Arc::from(&b"hello"[..]))
            .expect("send from the new peer");
        let m = recv(&mut nodes[1].rx).await;
        assert_eq!((m.from, &m.bytes[..]), (0, &b"hello"[..]));

        // Node 1 drops node 0 again: disconnected, sends refused, redials refused.
        let before = rejected(&nodes[0].handle, "unknown_peer");
        nodes[0]
            .handle
            .set_peers(vec![peer(2, nodes[1].addr())])
            .await
            .expect("set_peers");
        assert_eq!(
            nodes[0].handle.send(0, "prepare", Arc::from(&b"x"[..])),
            Err(SendError::UnknownPeer)
        );
        wait_until(
            Duration::from_secs(20),
            "node 0 cut off from node 1",
            || !nodes[0].handle.is_connected(0) && newcomer.connected_peers() == 1,
        )
        .await;
        wait_until(Duration::from_secs(20), "node 0's redial refused", || {
            rejected(&nodes[0].handle, "unknown_peer") > before
        })
        .await;
        // Nodes 1 and 2 still talk.
        nodes[0]
            .handle
            .send(2, "commit", Arc::from(&b"still here"[..]))
            .expect("send");
        loop {
            let m = recv(&mut nodes[1].rx).await;
            if m.from == 1 {
                assert_eq!(&m.bytes[..], b"still here");
                break;
            }
        }
        // A list naming this node itself is refused, and nothing changes.
        let me = peer(1, nodes[0].addr());
        assert!(nodes[0].handle.set_peers(vec![me]).await.is_err());
        assert_eq!(nodes[0].handle.peers(), vec![2]);
        newcomer.shutdown().await;
        for n in nodes.drain(..) {
            n.handle.shutdown().await;
        }
    })
    .await;
}
