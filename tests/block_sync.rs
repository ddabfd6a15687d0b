//! Issue 10 over real processes: a request larger than one network frame commits as several
//! blocks, and a Raft follower behind the compacted log (with a ledger above 4 MiB) catches up
//! by block sync — also when killed in the middle of it — and then holds the whole chain.

mod support;

use std::time::Duration;

use faultline_node::ledger::{Op, Tx};
use support::{http, wait_for, Cluster};

const T: Duration = Duration::from_secs(60);

/// 80 puts of 60 KB values: 4.8 MB in one request, more than one 4 MiB frame.
fn big_batch(key: &ed25519_dalek::SigningKey, first_seq: u64, tag: &str) -> Vec<Tx> {
    (0..80)
        .map(|i| {
            Tx::sign(
                key,
                first_seq + i,
                Op::Put {
                    key: format!("{tag}-{i}"),
                    value: "x".repeat(60_000),
                },
            )
        })
        .collect()
}

fn post_batch(c: &Cluster, node: usize, txs: &[Tx]) -> (u16, serde_json::Value) {
    http(
        &c.api(node),
        "POST",
        "/v1/txs",
        Some(&serde_json::to_vec(txs).expect("json")),
    )
    .expect("post txs")
}

fn put_one(c: &Cluster, node: usize, key: &ed25519_dalek::SigningKey, seq: u64) {
    let tx = Tx::sign(
        key,
        seq,
        Op::Put {
            key: format!("small{seq}"),
            value: "v".into(),
        },
    );
    let (code, v) = http(
        &c.api(node),
        "POST",
        "/v1/tx",
        Some(&serde_json::to_vec(&tx).expect("json")),
    )
    .expect("post tx");
    assert_eq!(code, 200, "{v}");
}

#[test]
fn a_request_larger_than_a_frame_commits_as_several_blocks_and_the_cluster_keeps_committing() {
    let mut c = Cluster::raft(3);
    c.start_all();
    let all = [0, 1, 2];
    let leader = c.wait_leader(&all, T);
    let key = c.client_key();
    let (h0, _) = c.wait_converged(&all, 0, T);
    let (code, v) = post_batch(&c, leader, &big_batch(&key, 1, "big"));
    assert_eq!(code, 200, "{v}");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 80);
    let heights: std::collections::BTreeSet<u64> = results
        .iter()
        .map(|r| r["height"].as_u64().expect("height"))
        .collect();
    assert!(heights.len() >= 2, "one frame cannot carry it: {heights:?}");
    // And the cluster keeps committing afterwards, on every node.
    put_one(&c, leader, &key, 1000);
    let (h, _) = c.wait_converged(&all, h0 + heights.len() as u64 + 1, T);
    assert!(h > h0);
    for i in all {
        let log = c.log(i);
        assert!(!log.contains("BUG: oversized"), "node {i}: {log}");
    }
}

#[test]
fn a_follower_behind_compaction_with_a_large_ledger_catches_up_by_block_sync_across_kill_9() {
    let mut c = Cluster::raft(3);
    // Compact often, and a small message budget so block sync takes many round trips.
    c.set_node_toml("timing", "compact_every", 4);
    c.set_node_toml("limits", "max_message_bytes", 262144);
    c.start_all();
    let all = [0, 1, 2];
    let leader = c.wait_leader(&all, T);
    let key = c.client_key();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    c.kill(follower);

    // Above 4 MiB of ledger state while the follower is down: 3 x 4.8 MB.
    let mut seq = 1;
    for round in 0..3 {
        let (code, v) = post_batch(&c, leader, &big_batch(&key, seq, &format!("r{round}")));
        assert_eq!(code, 200, "{v}");
        seq += 80;
    }
    for _ in 0..10 {
        put_one(&c, leader, &key, seq);
        seq += 1;
    }
    let (height, _) = c.wait_converged(&[leader, other], 10, T);

    // Restart: the leader's log is compacted past the follower, so it gets a snapshot and
    // syncs the blocks. Kill it in the middle of the sync if we see one under way.
    c.start(follower);
    let mut killed_mid_sync = false;
    let seen = wait_for(T, "the follower to start or finish block sync", || {
        let s = c.status(follower)?;
        if !s["block_sync"].is_null() {
            return Some(true);
        }
        (s["height"].as_u64()? >= height).then_some(false)
    });
    if seen {
        c.kill(follower);
        killed_mid_sync = true;
        c.start(follower);
    }
    let (h, head) = c.wait_converged(&all, height, T);
    eprintln!("caught up to {h}; killed mid-sync: {killed_mid_sync}");
    let s = c.status(follower).expect("status");
    assert_eq!(s["first_height"].as_u64(), Some(1), "{s}");
    assert!(s["block_sync"].is_null(), "{s}");
    // Every block from 1 on every node, identical.
    for b in 1..=h {
        let mut hashes = Vec::new();
        for i in all {
            let (code, v) =
                http(&c.api(i), "GET", &format!("/v1/blocks/{b}"), None).expect("block");
            assert_eq!(code, 200, "node {i} block {b}: {v}");
            hashes.push(v["hash"].clone());
        }
        assert!(
            hashes.windows(2).all(|w| w[0] == w[1]),
            "block {b}: {hashes:?}"
        );
    }
    // The state was rebuilt from the blocks: the big values are readable on the follower.
    let (code, v) = http(
        &c.api(follower),
        "GET",
        "/v1/kv/r0-0?consistency=local",
        None,
    )
    .expect("kv");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["value"].as_str().map(str::len), Some(60_000));
    // A retried (client, seq) gets its original answer, also from the synced follower's store.
    let retry = Tx::sign(
        &key,
        1,
        Op::Put {
            key: "r0-0".into(),
            value: "x".repeat(60_000),
        },
    );
    let (code, v) = http(
        &c.api(follower),
        "POST",
        "/v1/tx",
        Some(&serde_json::to_vec(&retry).expect("json")),
    )
    .expect("retry");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "committed", "{v}");
    // And it keeps committing with the others.
    put_one(&c, leader, &key, seq);
    let (h2, head2) = c.wait_converged(&all, h + 1, T);
    assert_ne!(head, head2);
    let h = h2;
    for i in all {
        c.kill(i);
    }
    for i in all {
        let out = c.verify(i);
        assert!(
            out.starts_with(&format!("ok height={h}")),
            "node {i}: {out}"
        );
    }
}
