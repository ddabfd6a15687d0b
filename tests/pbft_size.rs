//! Issue 10's PBFT half over real processes: a cluster that carried many blocks of 600 puts
//! completes a view change after kill -9 of its primary and keeps committing, and a replica
//! that missed several checkpoints of big blocks catches up by chunked state transfer — also
//! when killed in the middle of it — and then holds the whole chain, which `verify` accepts.
//!
//! Both tests run with the smallest message budget (256 KiB) so that what once had to fit one
//! message (every prepared batch in a VIEW-CHANGE, a state-transfer reply of many blocks) is
//! far above it, and checkpoints every few blocks so that several are passed.

mod support;

use std::time::Duration;

use faultline_node::ledger::{Op, Tx};
use serde_json::Value;
use support::{http, http_raw, wait_for, Cluster};

const T: Duration = Duration::from_secs(60);
/// The smallest budget a node accepts (`MIN_MAX_MESSAGE_BYTES`).
const BUDGET: usize = 262_144;

/// The primary every node in `nodes` agrees on, out of view change.
fn wait_primary(c: &Cluster, nodes: &[usize], timeout: Duration) -> usize {
    wait_for(timeout, "an agreed primary", || {
        let mut primary = None;
        for &i in nodes {
            let s = c.status(i)?;
            if s["role"] == "view_change" {
                return None;
            }
            let p = s["leader"].as_u64()?;
            if primary.is_some_and(|x| x != p) {
                return None;
            }
            primary = Some(p);
        }
        primary.map(|p| p as usize)
    })
}

fn post_batch(c: &Cluster, node: usize, txs: &[Tx]) -> (u16, Value) {
    http(
        &c.api(node),
        "POST",
        "/v1/txs",
        Some(&serde_json::to_vec(txs).expect("json")),
    )
    .unwrap_or((0, Value::Null))
}

/// `count` puts from `first_seq` on, with `value_len`-byte values.
fn puts(
    key: &ed25519_dalek::SigningKey,
    first_seq: u64,
    count: u64,
    value_len: usize,
    tag: &str,
) -> Vec<Tx> {
    (0..count)
        .map(|i| {
            Tx::sign(
                key,
                first_seq + i,
                Op::Put {
                    key: format!("{tag}-{i}"),
                    value: "v".repeat(value_len),
                },
            )
        })
        .collect()
}

/// Posts `txs` to `node` and checks that every one committed; returns the heights they landed
/// at (a committed batch is acknowledged once, so a retry after a lost answer is safe).
fn commit(c: &Cluster, node: usize, txs: &[Tx]) -> Vec<u64> {
    let start = std::time::Instant::now();
    let v = loop {
        let (code, v) = post_batch(c, node, txs);
        if code == 200 {
            break v;
        }
        assert!(
            start.elapsed() < T,
            "no acknowledgement from node {node} within {T:?} (last: {code} {v}); {}",
            log_tails(c)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), txs.len(), "{v}");
    results
        .iter()
        .map(|r| {
            let h = r["height"].as_u64().expect("height");
            assert!(h > 0, "not committed: {r}");
            h
        })
        .collect()
}

/// The last lines of every node's log and its status, for a failure message.
fn log_tails(c: &Cluster) -> String {
    let mut out = String::new();
    for i in 0..c.n {
        let log = c.log(i);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        out += &format!("\n--- node {i} status {:?}\n{tail}", c.status(i));
    }
    out
}

/// Every node in `nodes` serves every block 1..=h, with the same hash.
fn same_chain(c: &Cluster, nodes: &[usize], h: u64) {
    for b in 1..=h {
        let mut hashes = Vec::new();
        for &i in nodes {
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
}

/// The value of one series of node `i`'s /metrics (0 if absent).
fn metric(c: &Cluster, i: usize, series: &str) -> f64 {
    let Some((200, body)) = http_raw(&c.api(i), "GET", "/metrics", None) else {
        panic!("node {i}: no /metrics");
    };
    String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .next()
        .unwrap_or(0.0)
}

/// No node tried to send a message over the budget (a bug the driver logs and counts).
fn no_oversized_sends(c: &Cluster, nodes: &[usize]) {
    for &i in nodes {
        let log = c.log(i);
        assert!(
            !log.contains("BUG: oversized") && !log.contains("exceeds the"),
            "node {i} tried to send a message over the budget: {log}"
        );
        let oversized = metric(
            c,
            i,
            r#"faultline_messages_rejected_total{reason="oversized"}"#,
        );
        assert_eq!(oversized, 0.0, "node {i}: oversized sends");
    }
}

#[test]
fn after_many_blocks_of_600_puts_the_survivors_of_a_killed_primary_change_view_and_keep_committing()
{
    let mut c = Cluster::pbft(4);
    c.set_node_toml("limits", "max_message_bytes", BUDGET as i64);
    c.set_node_toml("timing", "checkpoint_interval", 8);
    c.start_all();
    let all = [0, 1, 2, 3];
    let primary = wait_primary(&c, &all, T);
    let key = c.client_key();

    // 40 requests of 600 small puts (~80 KB a block): five checkpoints passed and, between
    // two of them, up to seven prepared batches, together several times the budget.
    let mut seq = 1;
    let mut heights = std::collections::BTreeSet::new();
    for round in 0..40 {
        let txs = puts(&key, seq, 600, 8, &format!("r{round}"));
        heights.extend(commit(&c, primary, &txs));
        seq += 600;
    }
    let top = *heights.last().expect("a height");
    assert!(top >= 40, "40 requests of 600 in {top} blocks");
    let (h, _) = c.wait_converged(&all, top, T);
    eprintln!("{h} blocks before the kill");

    c.kill(primary);
    let survivors: Vec<usize> = all.iter().copied().filter(|i| *i != primary).collect();
    // Nothing tells the backups the primary is gone until a request waits too long (§4.4):
    // the writes themselves, posted to a backup, drive the view change. The first is
    // acknowledged only once a new primary ordered it.
    let via = survivors[0];
    let mut after = Vec::new();
    after.extend(commit(&c, via, &puts(&key, seq, 600, 8, "after0")));
    seq += 600;
    let new_primary = wait_for(T, "the survivors to agree on a view above 0", || {
        let p = wait_primary(&c, &survivors, T);
        let views_moved = survivors
            .iter()
            .all(|&i| c.status(i).is_some_and(|s| s["view"].as_u64() >= Some(1)));
        views_moved.then_some(p)
    });
    assert_ne!(new_primary, primary);
    // More writes are acknowledged, through the new primary as well as a backup.
    let backup = survivors
        .iter()
        .copied()
        .find(|i| *i != new_primary)
        .expect("a backup");
    for (round, node) in [(1, new_primary), (2, backup)] {
        let txs = puts(&key, seq, 600, 8, &format!("after{round}"));
        after.extend(commit(&c, node, &txs));
        seq += 600;
    }
    let top = after.iter().copied().max().expect("a height");
    assert!(top > h, "committed at {top}, not above {h}");
    let (h2, _) = c.wait_converged(&survivors, top, T);
    same_chain(&c, &survivors, h2);
    no_oversized_sends(&c, &survivors);
}

#[test]
fn a_replica_several_checkpoints_behind_catches_up_by_chunked_state_transfer_across_kill_9() {
    let mut c = Cluster::pbft(4);
    c.set_node_toml("limits", "max_message_bytes", BUDGET as i64);
    c.set_node_toml("timing", "checkpoint_interval", 4);
    c.start_all();
    let all = [0, 1, 2, 3];
    let primary = wait_primary(&c, &all, T);
    let key = c.client_key();
    let lagger = (primary + 1) % 4;
    let others: Vec<usize> = all.iter().copied().filter(|i| *i != lagger).collect();

    // One block before the stop, so the lagger has a chain to continue.
    let mut seq = 1;
    commit(&c, primary, &puts(&key, seq, 1, 8, "first"));
    seq += 1;
    c.wait_converged(&all, 1, T);
    c.kill(lagger);

    // 12 requests of 16 puts of 40 KB (640 KB each, several blocks each under the 256 KiB
    // budget): ~7.7 MB of blocks, many checkpoints, while the lagger is down.
    let mut top = 0;
    for round in 0..12 {
        let txs = puts(&key, seq, 16, 40_000, &format!("big{round}"));
        let heights = commit(&c, primary, &txs);
        assert!(
            heights
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                >= 2,
            "640 KB in one block under a {BUDGET}-byte budget: {heights:?}"
        );
        top = top.max(heights.into_iter().max().unwrap_or(0));
        seq += 16;
    }
    let (height, _) = c.wait_converged(&others, top, T);
    assert!(height >= 30, "only {height} blocks");
    eprintln!("{height} blocks while the lagger was down");

    // Restart it; kill it again while it is between its old head and the others' height.
    c.start(lagger);
    let mid = wait_for(T, "the lagger to start or finish catching up", || {
        let h = c.status(lagger)?["height"].as_u64()?;
        (h > 1).then_some(h)
    });
    let killed_mid_transfer = mid < height;
    if killed_mid_transfer {
        c.kill(lagger);
        c.start(lagger);
    }
    eprintln!("lagger at {mid} of {height}; killed mid-transfer: {killed_mid_transfer}");
    let (h, _) = c.wait_converged(&all, height, T);
    // It caught up by state transfer (the checkpoints it missed were garbage-collected from the
    // others' logs), in replies that each fit the budget: several of them for ~7.7 MB.
    let replies: f64 = others
        .iter()
        .map(|&i| {
            metric(
                &c,
                i,
                r#"faultline_messages_sent_total{type="state_response"}"#,
            )
        })
        .sum();
    let reply_bytes: f64 = others
        .iter()
        .map(|&i| {
            metric(
                &c,
                i,
                r#"faultline_message_bytes_sent_total{type="state_response"}"#,
            )
        })
        .sum();
    eprintln!("state transfer: {replies} replies, {reply_bytes} bytes");
    assert!(replies >= 2.0, "{replies} state-transfer replies");
    assert!(reply_bytes / replies <= BUDGET as f64);
    let s = c.status(lagger).expect("status");
    assert_eq!(s["first_height"].as_u64(), Some(1), "{s}");
    same_chain(&c, &all, h);
    // The state was rebuilt from the transferred blocks: a big value reads back locally.
    let (code, v) = http(
        &c.api(lagger),
        "GET",
        "/v1/kv/big11-15?consistency=local",
        None,
    )
    .expect("kv");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["value"].as_str().map(str::len), Some(40_000), "{v}");

    // It takes part again: a write through it commits on all four.
    let h3 = commit(&c, lagger, &puts(&key, seq, 1, 8, "last"))[0];
    let (h, _) = c.wait_converged(&all, h3, T);
    no_oversized_sends(&c, &all);
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
