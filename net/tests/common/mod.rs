#![allow(dead_code)]
//! Helpers shared by the integration tests: deterministic keys, clusters on 127.0.0.1 with port
//! 0, and condition waits with deadlines (no fixed sleeps).

use std::future::Future;
use std::time::Duration;

use faultline_net::{peer_id_from_secret, start, Inbound, NetConfig, NetHandle, NodeId, PeerInfo};
use libp2p::Multiaddr;
use tokio::sync::mpsc::Receiver;
use tokio::time::{timeout, Instant};

pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

pub fn key(seed: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&seed.to_le_bytes());
    k[31] = 0x5a;
    k
}

pub fn any_port() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

pub fn peer(id: NodeId, addr: Multiaddr) -> PeerInfo {
    PeerInfo {
        id,
        peer_id: peer_id_from_secret(&key(id)).unwrap(),
        addr,
    }
}

pub struct Node {
    pub config: NetConfig,
    pub handle: NetHandle,
    pub rx: Receiver<Inbound>,
}

impl Node {
    pub fn addr(&self) -> Multiaddr {
        self.handle.listen_addrs()[0].clone()
    }
}

/// Starts nodes `ids` (ascending). Only lower ids dial, so nodes are started from the highest id
/// down and each learns the real addresses of the higher ids; addresses of lower ids are never
/// dialed and left as placeholders.
pub async fn cluster(ids: &[NodeId], tweak: impl Fn(&mut NetConfig)) -> Vec<Node> {
    let mut addrs: Vec<(NodeId, Multiaddr)> = Vec::new();
    let mut nodes = Vec::new();
    for &id in ids.iter().rev() {
        let peers = ids
            .iter()
            .filter(|&&j| j != id)
            .map(|&j| {
                let addr = addrs
                    .iter()
                    .find(|(k, _)| *k == j)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(any_port);
                peer(j, addr)
            })
            .collect();
        let mut config = NetConfig::new(id, key(id), any_port(), peers);
        tweak(&mut config);
        let (handle, rx) = start(config.clone()).await.expect("start");
        let node = Node { config, handle, rx };
        addrs.push((id, node.addr()));
        nodes.push(node);
    }
    nodes.reverse();
    nodes
}

/// Polls `cond` until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many times `h` refused something for `reason` (e.g. `unknown_peer`).
pub fn rejected(h: &NetHandle, reason: &str) -> u64 {
    h.stats().rejected.get(reason).copied().unwrap_or(0)
}

pub async fn all_connected(nodes: &[Node], peers_each: usize) {
    wait_until(Duration::from_secs(20), "all peers connected", || {
        nodes
            .iter()
            .all(|n| n.handle.connected_peers() == peers_each)
    })
    .await;
}

pub async fn recv(rx: &mut Receiver<Inbound>) -> Inbound {
    timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("inbound channel closed")
}

pub async fn bounded<F: Future>(f: F) -> F::Output {
    timeout(TEST_TIMEOUT, f).await.expect("test timed out")
}
