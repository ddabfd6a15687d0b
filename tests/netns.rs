//! Beyond one machine (issue 16): each node in its own network namespace with its own address on
//! a bridge (scripts/netns-cluster), the cluster generated with `testnet --hosts`, client load
//! from the host side. A node is partitioned by taking its link down — its process keeps
//! running — and another is killed with -9; the cluster commits through both (within f), the
//! partitioned node reports its peers unreachable and catches up once healed, every
//! acknowledged write is on every node, and `verify` passes on every data dir.
//!
//! Needs root and `ip netns`; without them the tests print why and pass without running.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use faultline_node::ledger::{Op, Tx};
use support::{http, Cluster};

const T: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/netns-cluster")
}

/// Why these tests cannot run here, if they cannot.
fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (network namespaces need CAP_NET_ADMIN)".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("no `ip` command: {e}")),
    }
}

/// The namespaces and bridge of one test; removed on drop (after the cluster's processes, which
/// are declared after it and so dropped first).
struct Netns {
    name: String,
    n: usize,
    subnet: String,
}

impl Netns {
    fn up(tag: &str, n: usize, third_octet: u32) -> Netns {
        // Unique per process, so that concurrent or leftover runs never collide.
        let name = format!("fl{tag}{:04x}", std::process::id() & 0xffff);
        let subnet = format!("10.213.{third_octet}");
        let ns = Netns { name, n, subnet };
        ns.run(&["down", &ns.name, &n.to_string()]);
        let out = ns.run(&["up", &ns.name, &n.to_string(), &ns.subnet]);
        assert!(
            out.status.success(),
            "netns-cluster up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ns
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .output()
            .expect("run scripts/netns-cluster")
    }

    fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }

    fn link(&self, i: usize, state: &str) {
        let out = self.run(&["link", &self.name, &i.to_string(), state]);
        assert!(
            out.status.success(),
            "link {state}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn cluster(&self, protocol: &str) -> Cluster {
        let hosts: Vec<String> = (0..self.n).map(|i| self.addr(i)).collect();
        let name = self.name.clone();
        Cluster::on_hosts(protocol, &hosts, 7000, move |i| {
            vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                format!("{name}-{i}"),
            ]
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.run(&["down", &self.name, &self.n.to_string()]);
    }
}

/// Submits one put through any of `via` until a node acknowledges it (followers forward, a
/// partitioned or dead node is skipped); returns the tx hash.
fn put(c: &Cluster, via: &[usize], key: &ed25519_dalek::SigningKey, seq: u64) -> String {
    let tx = Tx::sign(
        key,
        seq,
        Op::Put {
            key: format!("k{seq}"),
            value: format!("v{seq}"),
        },
    );
    let body = serde_json::to_vec(&tx).expect("json");
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < T {
        for &i in via {
            match http(&c.api(i), "POST", "/v1/tx", Some(&body)) {
                Some((200, v)) => {
                    return v["tx_hash"].as_str().expect("tx_hash").to_string();
                }
                Some((code, v)) => last = format!("node {i}: {code} {v}"),
                None => last = format!("node {i}: unreachable"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("put {seq} was never acknowledged: {last}");
}

/// The partition, kill -9 and checks shared by both protocols. `cut` is the node whose link goes
/// down, `crash` the one killed afterwards.
fn partition_and_crash(protocol: &str, third_octet: u32, cut: usize, crash: usize) {
    if let Some(why) = unavailable() {
        println!("skipped: {why}");
        return;
    }
    let n = if protocol == "raft" { 3 } else { 4 };
    let net = Netns::up(&protocol[..1], n, third_octet);
    let mut c = net.cluster(protocol);
    // Short checkpoint intervals, so a PBFT replica behind catches up within the test.
    c.set_node_toml("timing", "checkpoint_interval", 8);
    c.start_all();
    let all: Vec<usize> = (0..n).collect();
    let key = c.client_key();
    let mut acked = Vec::new();
    let mut seq = 1;
    for _ in 0..10 {
        acked.push(put(&c, &all, &key, seq));
        seq += 1;
    }

    // A partition, not a crash: node `cut` keeps running with its link down.
    net.link(cut, "down");
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != cut).collect();
    for _ in 0..10 {
        acked.push(put(&c, &others, &key, seq));
        seq += 1;
    }
    let start = Instant::now();
    loop {
        let s = c.status(others[0]);
        let seen = s.as_ref().is_some_and(|s| {
            s["peers_unreachable"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v.as_u64() == Some(cut as u64)))
        });
        if seen {
            break;
        }
        assert!(
            start.elapsed() < T,
            "node {} never reported node {cut} unreachable: {s:?}\n{}",
            others[0],
            c.log(others[0])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    net.link(cut, "up");
    for _ in 0..10 {
        acked.push(put(&c, &others, &key, seq));
        seq += 1;
    }

    // Then a crash of another node, writes without it, and its restart.
    c.kill(crash);
    let alive: Vec<usize> = all.iter().copied().filter(|&i| i != crash).collect();
    for _ in 0..10 {
        acked.push(put(&c, &alive, &key, seq));
        seq += 1;
    }
    c.start(crash);
    // Everyone converges while the clients keep writing: a PBFT replica that fell behind (or
    // moved to a later view on its own while cut off) rejoins through a checkpoint's state
    // transfer or the next view change, both of which need traffic (PBFT §4.4, §4.5).
    let start = Instant::now();
    loop {
        let heads: Vec<Option<(u64, String)>> = (0..n)
            .map(|i| {
                let s = c.status(i)?;
                Some((s["height"].as_u64()?, s["head_hash"].as_str()?.to_string()))
            })
            .collect();
        if heads.iter().all(|h| h.is_some() && *h == heads[0]) {
            break;
        }
        assert!(
            start.elapsed() < 2 * T,
            "nodes never converged: {heads:?}\n{}",
            c.log(cut)
        );
        acked.push(put(&c, &all, &key, seq));
        seq += 1;
        std::thread::sleep(Duration::from_millis(500));
    }

    for i in 0..n {
        for hash in &acked {
            let (code, v) = http(&c.api(i), "GET", &format!("/v1/txs/{hash}"), None)
                .unwrap_or_else(|| panic!("node {i} unreachable"));
            assert_eq!(code, 200, "node {i} lacks acknowledged tx {hash}: {v}");
        }
        let (code, _) = http(&c.api(i), "GET", "/v1/blocks/1", None).expect("block 1");
        assert_eq!(code, 200, "node {i} lacks block 1");
    }
    for i in 0..n {
        assert!(c.terminate(i), "node {i} did not shut down cleanly");
        c.verify(i);
    }
    drop(c);
    drop(net);
}

#[test]
fn raft_across_namespaces_commits_through_a_link_down_partition_and_a_kill_9() {
    // Cut a follower's link, then kill another node: each fault is within f = 1.
    partition_and_crash("raft", 78, 2, 1);
}

#[test]
fn pbft_across_namespaces_commits_through_a_link_down_partition_and_a_kill_9() {
    // Cut the view-0 primary's link (a view change), then kill a backup.
    partition_and_crash("pbft", 79, 0, 3);
}
