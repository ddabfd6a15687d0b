//! Throughput and latency of the transport between nodes in one process on 127.0.0.1.
//!
//! cargo run --release -p faultline-net --example net_throughput -- [MSGS] [PAYLOAD_BYTES]
//!
//! Prints: one-way msgs/s (0 -> 1), both-ways msgs/s (0 <-> 1 concurrently), and ping-pong
//! round-trip latency (one message in flight).

use std::sync::Arc;
use std::time::{Duration, Instant};

use faultline_net::{
    peer_id_from_secret, start, Inbound, NetConfig, NetHandle, PeerInfo, SendError,
};
use tokio::sync::mpsc::Receiver;

fn key(i: u8) -> [u8; 32] {
    [i + 1; 32]
}

async fn pair() -> (
    (NetHandle, Receiver<Inbound>),
    (NetHandle, Receiver<Inbound>),
) {
    let any: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let info = |id: u64, addr: libp2p::Multiaddr| PeerInfo {
        id,
        peer_id: peer_id_from_secret(&key(id as u8)).unwrap(),
        addr,
    };
    let b = start(NetConfig::new(
        1,
        key(1),
        any.clone(),
        vec![info(0, any.clone())],
    ))
    .await
    .unwrap();
    let b_addr = b.0.listen_addrs()[0].clone();
    let a = start(NetConfig::new(0, key(0), any, vec![info(1, b_addr)]))
        .await
        .unwrap();
    while a.0.connected_peers() < 1 || b.0.connected_peers() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (a, b)
}

/// Sends `n` messages, retrying (after yielding) whenever the queue is full.
async fn blast(h: NetHandle, to: u64, n: usize, payload: Arc<[u8]>) -> u64 {
    let mut full = 0;
    for _ in 0..n {
        loop {
            match h.send(to, "bench", payload.clone()) {
                Ok(()) => break,
                Err(SendError::QueueFull) => {
                    full += 1;
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("send: {e}"),
            }
        }
    }
    full
}

async fn drain(mut rx: Receiver<Inbound>, n: usize) -> Receiver<Inbound> {
    for _ in 0..n {
        rx.recv().await.expect("closed");
    }
    rx
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(200_000);
    let size: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(128);
    let payload: Arc<[u8]> = vec![0xab; size].into();
    let ((a, ra), (b, rb)) = pair().await;

    // One way.
    let t = Instant::now();
    let recv = tokio::spawn(drain(rb, n));
    let full = blast(a.clone(), 1, n, payload.clone()).await;
    let rb = recv.await.unwrap();
    let dt = t.elapsed().as_secs_f64();
    println!(
        "one-way   {n} msgs x {size} B: {:.3} s, {:.0} msgs/s, {:.1} MB/s (QueueFull retries: {full})",
        dt,
        n as f64 / dt,
        (n * size) as f64 / dt / 1e6
    );

    // Both ways concurrently.
    let t = Instant::now();
    let r1 = tokio::spawn(drain(rb, n));
    let r0 = tokio::spawn(drain(ra, n));
    let s0 = tokio::spawn(blast(a.clone(), 1, n, payload.clone()));
    let s1 = tokio::spawn(blast(b.clone(), 0, n, payload.clone()));
    s0.await.unwrap();
    s1.await.unwrap();
    let mut rb = r1.await.unwrap();
    let mut ra = r0.await.unwrap();
    let dt = t.elapsed().as_secs_f64();
    println!(
        "both-ways {n} msgs x {size} B each way: {:.3} s, {:.0} msgs/s total",
        dt,
        2.0 * n as f64 / dt
    );

    // Ping-pong latency.
    let rounds = 2000;
    let mut rtts = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        a.send(1, "ping", payload.clone()).unwrap();
        rb.recv().await.unwrap();
        b.send(0, "pong", payload.clone()).unwrap();
        ra.recv().await.unwrap();
        rtts.push(t.elapsed());
    }
    rtts.sort();
    println!(
        "ping-pong {rounds} rounds x {size} B: p50 {:?}, p99 {:?}",
        rtts[rounds / 2],
        rtts[rounds * 99 / 100]
    );
    let s = a.stats();
    println!(
        "node 0 stats: sent {:?}, received {} msgs",
        s.sent, s.received_msgs
    );
    a.shutdown().await;
    b.shutdown().await;
}
