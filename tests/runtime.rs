//! End-to-end tests of `faultline run` and `faultline client`: real processes over real libp2p
//! on loopback. Every wait has a deadline; the harness kills all children on drop.

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faultline_node::ledger::{Op, Tx};
use serde_json::Value;
use support::{http, wait_for, Cluster, BIN};

const T: Duration = Duration::from_secs(30);

fn put(key: &ed25519_dalek::SigningKey, seq: u64, k: &str, v: &str) -> Tx {
    Tx::sign(
        key,
        seq,
        Op::Put {
            key: k.into(),
            value: v.into(),
        },
    )
}

/// Every tx hash in every block of node `i` up to `height`.
fn ledger_hashes(c: &Cluster, i: usize, height: u64) -> HashSet<String> {
    let mut out = HashSet::new();
    for h in 1..=height {
        let (code, b) = http(&c.api(i), "GET", &format!("/v1/blocks/{h}"), None).expect("block");
        assert_eq!(code, 200, "node {i} block {h}: {b}");
        for tx in b["txs"].as_array().expect("txs") {
            let tx: Tx = serde_json::from_value(tx.clone()).expect("tx json");
            out.insert(hex::encode(tx.hash()));
        }
    }
    out
}

#[test]
fn raft_cluster_commits_a_workload_and_loses_no_acknowledged_tx_across_kill_9() {
    let mut c = Cluster::raft(3);
    c.start_all();
    let all = [0, 1, 2];
    let leader = c.wait_leader(&all, T);
    let key = c.client_key();

    // 200 transactions in one batch, sent to a follower (forwarded to the leader).
    let follower = (leader + 1) % 3;
    let txs: Vec<Tx> = (1..=200)
        .map(|s| put(&key, s, &format!("k{s}"), "v"))
        .collect();
    let started = Instant::now();
    let (code, replies) = http(
        &c.api(follower),
        "POST",
        "/v1/txs",
        Some(&serde_json::to_vec(&txs).unwrap()),
    )
    .expect("post txs");
    let batch_time = started.elapsed();
    assert_eq!(code, 200, "{replies}");
    assert_eq!(replies["status"], "committed");
    let typed: faultline_node::api_types::BatchReply =
        serde_json::from_value(replies.clone()).expect("batch reply");
    let signer = replies["node"].as_u64().unwrap() as usize;
    assert_eq!(typed.node, signer as u64);
    let cluster =
        faultline_node::config::ClusterConfig::load(&c.path().join("cluster.toml")).unwrap();
    assert!(typed.verifies(&cluster.nodes[signer].public_key));
    assert!(faultline_node::reply::verify_batch(
        &cluster.nodes[signer].public_key,
        &typed.results,
        &typed.signature
    ));
    let replies = replies["results"].as_array().expect("results").clone();
    assert_eq!(replies.len(), 200);
    let mut acked: Vec<String> = Vec::new();
    for (tx, r) in txs.iter().zip(&replies) {
        assert!(r["height"].as_u64().unwrap() > 0);
        assert_eq!(r["tx_hash"], hex::encode(tx.hash()));
        acked.push(r["tx_hash"].as_str().unwrap().to_string());
    }
    eprintln!("200 txs via /v1/txs committed in {batch_time:?}");

    // The client command finds the leader and prints the committed height.
    let out = Command::new(BIN)
        .arg("client")
        .arg("--cluster")
        .arg(c.path().join("cluster.toml"))
        .args(["put", "hello", "world"])
        .output()
        .expect("client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("committed height="), "{stdout}");
    let (code, v) = http(&c.api(follower), "GET", "/v1/kv/hello", None).unwrap();
    assert_eq!((code, v["value"].as_str()), (200, Some("world")), "{v}");
    let (h, _) = c.wait_converged(&all, 2, T);
    assert!(h >= 2);

    // Load in the background: single writes round-robin, recording what was acknowledged.
    let acked = Arc::new(Mutex::new(acked));
    let stop = Arc::new(AtomicBool::new(false));
    let apis: Vec<String> = (0..3).map(|i| c.api(i)).collect();
    let load = {
        let (acked, stop, key) = (Arc::clone(&acked), Arc::clone(&stop), key.clone());
        std::thread::spawn(move || {
            // Above the client command's seq (microseconds since the epoch).
            let mut seq = 1u64 << 60;
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let tx = put(&key, seq, &format!("load{seq}"), "x");
                let body = serde_json::to_vec(&tx).unwrap();
                let t0 = Instant::now();
                let api = &apis[(seq % 3) as usize];
                if let Some((200, r)) = http(api, "POST", "/v1/tx", Some(&body)) {
                    lat.push(t0.elapsed());
                    acked
                        .lock()
                        .unwrap()
                        .push(r["tx_hash"].as_str().unwrap().to_string());
                }
            }
            lat
        })
    };
    let acked_len = |n: usize| {
        let a = Arc::clone(&acked);
        move || (a.lock().unwrap().len() >= n).then_some(())
    };

    // Kill -9 a follower mid-load, restart it.
    let base = acked.lock().unwrap().len();
    wait_for(T, "some load", acked_len(base + 20));
    let leader = c.wait_leader(&all, T);
    let victim = (leader + 1) % 3;
    c.kill(victim);
    let base = acked.lock().unwrap().len();
    wait_for(T, "progress without a follower", acked_len(base + 20));
    c.start(victim);

    // Kill -9 the leader mid-load, restart it.
    let leader = c.wait_leader(&all, T);
    let base = acked.lock().unwrap().len();
    wait_for(T, "load with all nodes", acked_len(base + 20));
    c.kill(leader);
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    c.wait_leader(&others, T);
    let base = acked.lock().unwrap().len();
    wait_for(T, "progress after leader crash", acked_len(base + 20));
    c.start(leader);
    let base = acked.lock().unwrap().len();
    wait_for(T, "progress after restart", acked_len(base + 20));

    stop.store(true, Ordering::Relaxed);
    let mut lat = load.join().expect("load thread");
    lat.sort();
    if !lat.is_empty() {
        eprintln!(
            "single-tx load: {} acked, p50 {:?}, p99 {:?}",
            lat.len(),
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        );
    }

    let (height, head) = c.wait_converged(&all, 1, T);
    eprintln!("converged at height {height} head {head}");
    let acked = acked.lock().unwrap().clone();
    for i in all {
        let have = ledger_hashes(&c, i, height);
        let missing: Vec<&String> = acked.iter().filter(|h| !have.contains(*h)).collect();
        assert!(
            missing.is_empty(),
            "node {i} lacks {} acknowledged txs",
            missing.len()
        );
    }
}

#[test]
fn a_node_with_a_key_outside_the_cluster_is_refused_by_every_peer() {
    let mut c = Cluster::raft(3);
    // Node 0 dials the others (the lower id dials); give it a key the cluster does not list.
    let key_file = c.node_dir(0).join("node.key");
    std::fs::remove_file(&key_file).unwrap();
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success());
    c.start_all();
    c.wait_leader(&[1, 2], T);
    let metric_of = |i: usize| -> Option<u64> {
        let (_, body) = support::http_raw(&c.api(i), "GET", "/metrics", None)?;
        let text = String::from_utf8_lossy(&body).into_owned();
        text.lines()
            .find(|l| l.starts_with("faultline_messages_rejected_total{reason=\"unknown_peer\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
    };
    wait_for(T, "unknown_peer counted by both peers", || {
        (metric_of(1)? > 0 && metric_of(2)? > 0).then_some(())
    });
    let s = c.status(0).expect("node 0 status");
    assert_eq!(s["peers_connected"], 0, "{s}");
    for i in [1, 2] {
        assert_eq!(c.status(i).unwrap()["peers_connected"], 1);
    }
}

#[test]
fn api_rejects_bad_input_and_answers_duplicates_with_the_original_result() {
    let mut c = Cluster::raft(1);
    c.start_all();
    c.wait_leader(&[0], T);
    let api = c.api(0);
    let key = c.client_key();

    let (code, v) = http(&api, "POST", "/v1/tx", Some(b"{not json")).unwrap();
    assert_eq!(code, 400);
    assert!(v["error"].is_string(), "{v}");

    let mut bad = put(&key, 1, "a", "b");
    bad.sig[0] ^= 1;
    let (code, v) = http(
        &api,
        "POST",
        "/v1/tx",
        Some(&serde_json::to_vec(&bad).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 400, "{v}");

    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let tx = put(&stranger, 1, "a", "b");
    let (code, v) = http(
        &api,
        "POST",
        "/v1/tx",
        Some(&serde_json::to_vec(&tx).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 403, "{v}");

    let tx = put(&key, 5, "a", "b");
    let body = serde_json::to_vec(&tx).unwrap();
    let (code, first) = http(&api, "POST", "/v1/tx", Some(&body)).unwrap();
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["status"], "committed");
    assert_eq!(first["result"], "ok");
    let (code, again) = http(&api, "POST", "/v1/tx", Some(&body)).unwrap();
    assert_eq!(code, 200, "{again}");
    assert_eq!(first, again, "a duplicate gets the original signed reply");
    let (_, s) = http(&api, "GET", "/v1/status", None).unwrap();
    assert_eq!(s["height"], first["height"], "applied once");
    assert_eq!(s["view"], Value::Null, "raft has no view");
    assert_eq!(
        s["pending_txs"], 0,
        "nothing uncommitted once the write is answered: {s}"
    );
    for k in [
        "id",
        "protocol",
        "role",
        "term",
        "view",
        "leader",
        "height",
        "head_hash",
        "commit_index",
        "peers_connected",
        "pending_txs",
    ] {
        assert!(s.get(k).is_some(), "status lacks {k}: {s}");
    }

    // A lower seq than one already applied: 409 alone, a "rejected" entry in a batch.
    let stale = put(&key, 3, "a", "stale");
    let (code, v) = http(
        &api,
        "POST",
        "/v1/tx",
        Some(&serde_json::to_vec(&stale).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 409, "{v}");
    let batch = vec![stale, put(&key, 6, "c", "d")];
    let (code, v) = http(
        &api,
        "POST",
        "/v1/txs",
        Some(&serde_json::to_vec(&batch).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 200, "{v}");
    let stale_entry = &v["results"][0];
    assert_eq!(stale_entry["height"], 0, "{v}");
    assert!(stale_entry["result"]["rejected"].is_string(), "{v}");
    assert!(v["results"][1]["height"].as_u64().unwrap() > 0, "{v}");

    let (code, v) = http(&api, "GET", "/v1/kv/a", None).unwrap();
    assert_eq!((code, v["value"].as_str()), (200, Some("b")), "{v}");
    let (code, _) = http(&api, "GET", "/v1/kv/absent?consistency=local", None).unwrap();
    assert_eq!(code, 404);
    let (code, _) = http(&api, "GET", "/v1/blocks/999", None).unwrap();
    assert_eq!(code, 404);
    let (code, _) = http(&api, "GET", "/v1/blocks/abc", None).unwrap();
    assert_eq!(code, 400);
    let (code, _) = http(&api, "POST", "/v1/txs", Some(b"[1,2]")).unwrap();
    assert_eq!(code, 400);

    let (_, body) = support::http_raw(&api, "GET", "/metrics", None).unwrap();
    let text = String::from_utf8_lossy(&body);
    for m in [
        "faultline_committed_transactions_total",
        "faultline_ledger_height",
        "faultline_commit_latency_seconds",
        "faultline_term",
        "faultline_leader_changes_total",
        "faultline_peers_connected",
    ] {
        assert!(text.contains(m), "metrics lack {m}:\n{text}");
    }
}

#[test]
fn sigterm_shuts_down_cleanly_and_a_restart_recovers_the_ledger() {
    let mut c = Cluster::raft(3);
    c.start_all();
    let all = [0, 1, 2];
    let leader = c.wait_leader(&all, T);
    let key = c.client_key();
    let txs: Vec<Tx> = (1..=50)
        .map(|s| put(&key, s, &format!("r{s}"), "v"))
        .collect();
    let (code, v) = http(
        &c.api(leader),
        "POST",
        "/v1/txs",
        Some(&serde_json::to_vec(&txs).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 200, "{v}");
    let before = c.wait_converged(&all, 1, T);
    for i in all {
        assert!(
            c.terminate(i),
            "node {i} did not exit cleanly:\n{}",
            c.log(i)
        );
    }
    // The client shows unreachable nodes as such instead of failing.
    let out = Command::new(BIN)
        .arg("client")
        .arg("--cluster")
        .arg(c.path().join("cluster.toml"))
        .arg("status")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("unreachable").count(), 3, "{stdout}");
    c.start_all();
    c.wait_leader(&all, T);
    let after = c.wait_converged(&all, before.0, T);
    assert_eq!(before, after, "same ledger after restart");
    for i in all {
        let (code, v) = http(&c.api(i), "GET", "/v1/kv/r50?consistency=local", None).unwrap();
        assert_eq!(
            (code, v["value"].as_str()),
            (200, Some("v")),
            "node {i}: {v}"
        );
    }
    // Writes go on after the restart.
    let tx = put(&key, 51, "r51", "v");
    let (code, v) = http(
        &c.api(0),
        "POST",
        "/v1/tx",
        Some(&serde_json::to_vec(&tx).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["height"].as_u64(), Some(before.0 + 1), "{v}");
}

#[test]
fn pbft_cluster_commits_with_f_plus_1_signed_replies_and_survives_a_crashed_backup() {
    let mut c = Cluster::pbft(4);
    c.start_all();
    let all = [0, 1, 2, 3];
    wait_for(T, "a fully connected cluster", || {
        all.iter()
            .all(|&i| c.status(i).is_some_and(|s| s["peers_connected"] == 3))
            .then_some(())
    });
    let client = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("client")
            .arg("--cluster")
            .arg(c.path().join("cluster.toml"))
            .args(args)
            .output()
            .expect("client");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    assert!(client(&["put", "p", "1"]).contains("committed height="));

    // A batch to a backup: every replica answers once applied, with its own signature.
    let key = c.client_key();
    let txs: Vec<Tx> = (0..100)
        .map(|s| put(&key, (1u64 << 60) + s, &format!("b{s}"), "v"))
        .collect();
    let (code, v) = http(
        &c.api(2),
        "POST",
        "/v1/txs",
        Some(&serde_json::to_vec(&txs).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["node"], 2, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 100);
    let (h, _) = c.wait_converged(&all, 2, T);

    // f = 1: with one backup killed the other three still commit.
    c.kill(3);
    let tx = put(&key, (1u64 << 60) + 1000, "after", "crash");
    let (code, v) = http(
        &c.api(1),
        "POST",
        "/v1/tx",
        Some(&serde_json::to_vec(&tx).unwrap()),
    )
    .unwrap();
    assert_eq!(code, 200, "{v}");
    assert!(v["height"].as_u64().unwrap() > h);
    c.start(3);
    // A PBFT replica that missed sequence numbers catches up by state transfer at the next
    // stable checkpoint (every checkpoint_interval = 64 sequence numbers by default): drive
    // more than that many batches, one at a time.
    for s in 0..80u64 {
        let tx = put(&key, (1u64 << 60) + 2000 + s, "more", "x");
        let (code, v) = http(
            &c.api(0),
            "POST",
            "/v1/tx",
            Some(&serde_json::to_vec(&tx).unwrap()),
        )
        .unwrap();
        assert_eq!(code, 200, "{v}");
    }
    let (height, _) = c.wait_converged(&all, h + 80, T);
    let (_, status) = http(&c.api(0), "GET", "/v1/status", None).unwrap();
    assert_eq!(status["protocol"], "pbft");
    assert_eq!(status["term"], Value::Null, "pbft has no term");
    assert_eq!(
        status["pending_txs"], 0,
        "every request executed, none left waiting: {status}"
    );
    let (_, block) = http(&c.api(3), "GET", &format!("/v1/blocks/{height}"), None).unwrap();
    assert!(
        block["certificate"].is_object(),
        "pbft blocks carry a certificate: {block}"
    );
    let (_, metrics) = support::http_raw(&c.api(1), "GET", "/metrics", None).unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    for kind in ["pre_prepare", "prepare", "commit"] {
        let line = format!("faultline_messages_received_total{{type=\"{kind}\"}}");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }
}
