mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use faultline_net::{start, NetConfig, SendError};

fn payload(from: u64, to: u64, seq: u32) -> Vec<u8> {
    // Variable size so that frames of different lengths are batched together.
    let len = 12 + (seq as usize * 37) % 3000;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&from.to_be_bytes()[4..]);
    v.extend_from_slice(&to.to_be_bytes()[4..]);
    v.extend_from_slice(&seq.to_be_bytes());
    while v.len() < len {
        v.push((v.len() as u32 ^ seq) as u8);
    }
    v
}

/// A loopback address where nobody listens (a port that was free a moment ago): messages to a
/// peer there stay queued.
fn dead_address() -> libp2p::Multiaddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_connect_and_exchange_in_order() {
    bounded(async {
        let mut nodes = cluster(&[0, 1, 2], |_| {}).await;
        all_connected(&nodes, 2).await;
        for n in &nodes {
            for p in [0, 1, 2] {
                assert_eq!(n.handle.is_connected(p), p != n.config.id);
            }
        }
        const N: u32 = 500;
        let mut expected_bytes = [0u64; 3];
        for seq in 0..N {
            for from in 0..3u64 {
                for to in (0..3u64).filter(|&t| t != from) {
                    let p = payload(from, to, seq);
                    expected_bytes[to as usize] += p.len() as u64;
                    nodes[from as usize]
                        .handle
                        .send(
                            to,
                            if seq % 2 == 0 { "prepare" } else { "commit" },
                            p.into(),
                        )
                        .unwrap();
                }
            }
        }
        for (i, n) in nodes.iter_mut().enumerate() {
            let mut next: HashMap<u64, u32> = HashMap::new();
            for _ in 0..2 * N {
                let m = recv(&mut n.rx).await;
                let seq = next.entry(m.from).or_insert(0);
                assert_eq!(
                    m.bytes,
                    payload(m.from, i as u64, *seq),
                    "from {} seq {}",
                    m.from,
                    seq
                );
                *seq += 1;
            }
            assert_eq!(next.len(), 2);
            assert!(n.rx.try_recv().is_err());
            let s = n.handle.stats();
            assert_eq!(s.received_msgs, 2 * N as u64);
            assert_eq!(s.received_bytes, expected_bytes[i]);
            assert!(s.rejected.is_empty(), "{:?}", s.rejected);
            assert_eq!(s.connected_peers, 2);
        }
        // Sent counters are updated once a batch is written, which may be just after delivery.
        let sent =
            |n: &Node, kind: &str| n.handle.stats().sent.get(kind).copied().unwrap_or((0, 0));
        wait_until(Duration::from_secs(5), "sent counters", || {
            nodes
                .iter()
                .all(|n| sent(n, "prepare").0 == N as u64 && sent(n, "commit").0 == N as u64)
        })
        .await;
        for (i, n) in nodes.iter().enumerate() {
            let bytes = sent(n, "prepare").1 + sent(n, "commit").1;
            let expected: u64 = (0..N)
                .flat_map(|seq| {
                    (0..3u64)
                        .filter(move |&t| t != i as u64)
                        .map(move |t| (t, seq))
                })
                .map(|(t, seq)| payload(i as u64, t, seq).len() as u64)
                .sum();
            assert_eq!(bytes, expected);
            assert_eq!(n.handle.stats().dropped_queue_full, 0);
        }
        for n in nodes {
            n.handle.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_peer_is_refused_by_every_member() {
    bounded(async {
        let mut nodes = cluster(&[1, 2, 3], |_| {}).await;
        all_connected(&nodes, 2).await;
        // The intruder has id 0 (so it dials everyone) and knows everyone's real identity and
        // address, but its own key is not in anybody's allow-list.
        let peers = nodes.iter().map(|n| peer(n.config.id, n.addr())).collect();
        let intruder_cfg = NetConfig::new(0, key(666), any_port(), peers);
        let (intruder, _intruder_rx) = start(intruder_cfg).await.unwrap();
        for to in 1..=3 {
            intruder
                .send(to, "prepare", Arc::from(&b"evil"[..]))
                .unwrap();
        }
        // Wait until each member has refused the intruder at least twice (it was redialed).
        wait_until(Duration::from_secs(20), "unknown_peer rejections", || {
            nodes
                .iter()
                .all(|n| rejected(&n.handle, "unknown_peer") >= 2)
        })
        .await;
        // Members still talk; the first thing each receives is from a member, never the intruder.
        for n in &nodes {
            for to in (1..=3u64).filter(|&to| to != n.config.id) {
                n.handle
                    .send(to, "marker", Arc::from(&b"hello"[..]))
                    .unwrap();
            }
        }
        for n in nodes.iter_mut() {
            for _ in 0..2 {
                let m = recv(&mut n.rx).await;
                assert_ne!(m.from, 0);
                assert_eq!(m.bytes, b"hello");
            }
            assert!(n.rx.try_recv().is_err());
            let s = n.handle.stats();
            assert_eq!(s.received_msgs, 2);
            assert_eq!(s.connected_peers, 2);
        }
        intruder.shutdown().await;
        for n in nodes {
            n.handle.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_restart_is_redialed_and_messages_flow_again() {
    bounded(async {
        let mut nodes = cluster(&[0, 1], |_| {}).await;
        all_connected(&nodes, 1).await;
        nodes[0]
            .handle
            .send(1, "a", Arc::from(&b"before"[..]))
            .unwrap();
        assert_eq!(recv(&mut nodes[1].rx).await.bytes, b"before");

        // Restart the listener (id 1) on the same port: node 0 must redial it.
        let n1 = nodes.pop().unwrap();
        let (cfg1, addr1) = (n1.config.clone(), n1.addr());
        n1.handle.shutdown().await;
        wait_until(Duration::from_secs(20), "node 0 sees node 1 down", || {
            nodes[0].handle.connected_peers() == 0
        })
        .await;
        // Sent while the peer is down: it waits in the queue for the next connection instead of
        // being written to the closed connection's stream and lost.
        nodes[0]
            .handle
            .send(1, "a", Arc::from(&b"while down"[..]))
            .unwrap();
        let mut cfg1 = cfg1;
        cfg1.listen = addr1;
        let (h1, mut rx1) = start(cfg1.clone()).await.unwrap();
        wait_until(Duration::from_secs(20), "redialed", || {
            nodes[0].handle.connected_peers() == 1 && h1.connected_peers() == 1
        })
        .await;
        nodes[0]
            .handle
            .send(1, "a", Arc::from(&b"after"[..]))
            .unwrap();
        h1.send(0, "a", Arc::from(&b"back"[..])).unwrap();
        // What was queued while node 1 was down arrives first, then "after"; nothing is lost.
        for want in [&b"while down"[..], b"after"] {
            let m = recv(&mut rx1).await;
            assert_eq!(m.from, 0);
            assert_eq!(m.bytes, want);
        }
        assert_eq!(nodes[0].handle.stats().dropped_send_failed, 0);
        assert_eq!(recv(&mut nodes[0].rx).await.bytes, b"back");

        // Restart the dialer (id 0): it dials again at start.
        let n0 = nodes.pop().unwrap();
        let cfg0 = n0.config.clone();
        n0.handle.shutdown().await;
        wait_until(Duration::from_secs(20), "node 1 sees node 0 down", || {
            h1.connected_peers() == 0
        })
        .await;
        let (h0, mut rx0) = start(cfg0).await.unwrap();
        wait_until(Duration::from_secs(20), "reconnected", || {
            h0.connected_peers() == 1 && h1.connected_peers() == 1
        })
        .await;
        h0.send(1, "a", Arc::from(&b"again"[..])).unwrap();
        h1.send(0, "a", Arc::from(&b"again too"[..])).unwrap();
        assert_eq!(recv(&mut rx1).await.bytes, b"again");
        assert_eq!(recv(&mut rx0).await.bytes, b"again too");
        h0.shutdown().await;
        h1.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_is_rejected_and_counted() {
    bounded(async {
        // Node 1 accepts at most 1 KiB; node 0 is allowed to send up to the default 4 MiB.
        let mut nodes = cluster(&[0, 1], |c| {
            if c.id == 1 {
                c.max_frame_bytes = 1024;
            }
        })
        .await;
        all_connected(&nodes, 1).await;
        nodes[0]
            .handle
            .send(1, "big", vec![7u8; 4096].into())
            .unwrap();
        nodes[0]
            .handle
            .send(1, "small", Arc::from(&b"fits"[..]))
            .unwrap();
        let m = recv(&mut nodes[1].rx).await;
        assert_eq!(m.bytes, b"fits");
        let s = nodes[1].handle.stats();
        assert_eq!(s.rejected.get("oversized"), Some(&1));
        assert_eq!(s.received_msgs, 1);
        // The connection survives the rejected frame.
        nodes[0]
            .handle
            .send(1, "small", Arc::from(&b"still"[..]))
            .unwrap();
        assert_eq!(recv(&mut nodes[1].rx).await.bytes, b"still");
        // The sender side refuses to queue what exceeds its own limit.
        assert_eq!(
            nodes[1].handle.send(0, "big", vec![0u8; 1025].into()),
            Err(SendError::TooLarge {
                len: 1025,
                max: 1024
            })
        );
        for n in nodes {
            n.handle.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_send_queue_is_bounded_in_bytes() {
    bounded(async {
        let dead = dead_address();
        let mut cfg = NetConfig::new(0, key(0), any_port(), vec![peer(1, dead)]);
        cfg.max_frame_bytes = 512 << 10;
        cfg.peer_buffer_bytes = 1 << 20;
        let (h, _rx) = start(cfg).await.unwrap();
        let big: Arc<[u8]> = vec![1u8; 400 << 10].into();
        h.send(1, "pre_prepare", big.clone()).unwrap();
        h.send(1, "pre_prepare", big.clone()).unwrap();
        // 800 KiB queued of a 1 MiB budget: a third 400 KiB message does not fit, far below
        // the count limit; small ones still do.
        assert_eq!(h.send(1, "pre_prepare", big), Err(SendError::QueueFull));
        h.send(1, "prepare", Arc::from(&[0u8; 100][..])).unwrap();
        assert_eq!(h.queued(1), Some(3));
        h.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn full_queue_returns_queue_full() {
    bounded(async {
        // Peer 1 is configured at an address where nobody listens: messages stay queued.
        let dead = dead_address();
        let mut cfg = NetConfig::new(0, key(0), any_port(), vec![peer(1, dead)]);
        cfg.queue_depth = 8;
        let (h, _rx) = start(cfg).await.unwrap();
        for i in 0..8u8 {
            h.send(1, "prepare", Arc::from(&[i][..])).unwrap();
        }
        assert_eq!(h.queued(1), Some(8));
        for _ in 0..100 {
            assert_eq!(
                h.send(1, "prepare", Arc::from(&[0u8][..])),
                Err(SendError::QueueFull)
            );
        }
        assert_eq!(h.queued(1), Some(8));
        let s = h.stats();
        assert_eq!(s.dropped_queue_full, 100);
        assert!(s.sent.is_empty());
        assert_eq!(
            h.send(42, "prepare", Arc::from(&[0u8][..])),
            Err(SendError::UnknownPeer)
        );
        assert_eq!(
            h.send(0, "prepare", Arc::from(&[0u8][..])),
            Err(SendError::UnknownPeer)
        );
        let clone = h.clone();
        h.shutdown().await;
        assert_eq!(
            clone.send(1, "prepare", Arc::from(&[0u8][..])),
            Err(SendError::Closed)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_pushes_back_to_queue_full_with_bounded_memory() {
    bounded(async {
        let mut nodes = cluster(&[0, 1], |c| c.queue_depth = 64).await;
        all_connected(&nodes, 1).await;
        // Node 1 does not read its inbound channel: its readers block, yamux stops granting
        // window, the writer blocks, and node 0's queue fills up.
        // Until the queue has refused everything for a while: the far side keeps reading
        // into its inbound budget for a moment after the first refusal (longer on a loaded
        // machine), and each message it takes frees a slot here.
        let mut accepted: u32 = 0;
        let mut full = 0u32;
        let mut full_since: Option<std::time::Instant> = None;
        while full < 10_000
            || full_since.is_none_or(|t| t.elapsed() < std::time::Duration::from_millis(500))
        {
            let mut msg = accepted.to_be_bytes().to_vec();
            msg.resize(1024, 0xcd);
            match nodes[0].handle.send(1, "append_entries", msg.into()) {
                Ok(()) => {
                    accepted += 1;
                    full_since = None;
                }
                Err(SendError::QueueFull) => {
                    full += 1;
                    full_since.get_or_insert_with(std::time::Instant::now);
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(
                accepted < 100_000,
                "no back-pressure: {accepted} messages accepted"
            );
        }
        println!("accepted {accepted} x 1 KiB before the queue stayed full");
        assert_eq!(nodes[0].handle.queued(1), Some(64));
        // Everything accepted is delivered, in order, once the consumer reads.
        for seq in 0..accepted {
            let m = recv(&mut nodes[1].rx).await;
            assert_eq!(m.bytes[..4], seq.to_be_bytes());
        }
        assert!(nodes[0].handle.stats().dropped_queue_full >= 10_000);
        for n in nodes {
            n.handle.shutdown().await;
        }
    })
    .await;
}
