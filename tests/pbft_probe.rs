//! Operator-style probe of a PBFT cluster with the default knobs (4 MiB budget, checkpoints
//! every 64): the loads of issue 10 — 60 blocks of 600 puts, a 4.8 MB request of 60 KB values —
//! then kill -9 of the primary under load, and a replica restarted far behind on an idle
//! cluster. Prints heights, times and per-kind message sizes from every node's /metrics.
//! Ignored: a measurement, run by hand with a release build:
//! `FAULTLINE_BIN=target/release/faultline cargo test --test pbft_probe -- --ignored --nocapture`

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use faultline_node::ledger::{Op, Tx};
use serde_json::Value;
use support::{http, http_raw, wait_for, Cluster};

const T: Duration = Duration::from_secs(120);

fn puts(key: &ed25519_dalek::SigningKey, seq: &mut u64, count: u64, len: usize) -> Vec<Tx> {
    let txs = (0..count)
        .map(|i| {
            Tx::sign(
                key,
                *seq + i,
                Op::Put {
                    key: format!("k{}", *seq + i),
                    value: "v".repeat(len),
                },
            )
        })
        .collect();
    *seq += count;
    txs
}

fn post(c: &Cluster, node: usize, txs: &[Tx]) -> (u16, Value) {
    http(
        &c.api(node),
        "POST",
        "/v1/txs",
        Some(&serde_json::to_vec(txs).expect("json")),
    )
    .unwrap_or((0, Value::Null))
}

fn commit(c: &Cluster, node: usize, txs: &[Tx]) -> u64 {
    let start = Instant::now();
    loop {
        let (code, v) = post(c, node, txs);
        if code == 200 {
            let hs: Vec<u64> = v["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|r| r["height"].as_u64().unwrap_or(0))
                .collect();
            assert!(hs.iter().all(|h| *h > 0), "not all committed: {v}");
            return hs.into_iter().max().unwrap_or(0);
        }
        assert!(start.elapsed() < T, "no ack from {node}: {code} {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `faultline_message_bytes_sent` / `faultline_messages_sent` per kind, and rejections.
fn metrics(c: &Cluster, i: usize) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Some((200, body)) = http_raw(&c.api(i), "GET", "/metrics", None) else {
        return out;
    };
    for line in String::from_utf8_lossy(&body).lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if name.starts_with("faultline_message")
            || name.starts_with("faultline_messages_rejected")
            || name.starts_with("faultline_messages_dropped")
        {
            if let Ok(v) = value.parse::<f64>() {
                out.insert(name.to_string(), v);
            }
        }
    }
    out
}

fn print_sizes(c: &Cluster, i: usize) {
    let m = metrics(c, i);
    let mut line = format!("node {i}:");
    for (k, bytes) in &m {
        if let Some(kind) = k
            .strip_prefix("faultline_message_bytes_sent_total{type=\"")
            .and_then(|s| s.strip_suffix("\"}"))
        {
            let n = m
                .get(&format!("faultline_messages_sent_total{{type=\"{kind}\"}}"))
                .copied()
                .unwrap_or(0.0);
            if n > 0.0 {
                line += &format!(" {kind}={n}x{:.0}B", bytes / n);
            }
        }
    }
    for (k, v) in &m {
        if (k.contains("rejected") || k.contains("dropped")) && *v > 0.0 {
            line += &format!(" {k}={v}");
        }
    }
    eprintln!("{line}");
}

fn statuses(c: &Cluster) {
    for i in 0..c.n {
        match c.status(i) {
            Some(s) => eprintln!(
                "node {i}: role={} view={} height={} first={} commit_index={}",
                s["role"], s["view"], s["height"], s["first_height"], s["commit_index"]
            ),
            None => eprintln!("node {i}: down"),
        }
    }
}

fn primary(c: &Cluster, nodes: &[usize]) -> usize {
    wait_for(T, "an agreed primary", || {
        let mut p = None;
        for &i in nodes {
            let s = c.status(i)?;
            if s["role"] == "view_change" {
                return None;
            }
            let l = s["leader"].as_u64()?;
            if p.is_some_and(|x| x != l) {
                return None;
            }
            p = Some(l);
        }
        p.map(|p| p as usize)
    })
}

#[test]
#[ignore]
fn probe_pbft_default_knobs() {
    let mut c = Cluster::pbft(4);
    c.start_all();
    let all = [0, 1, 2, 3];
    let key = c.client_key();
    let mut seq = 1;
    let p0 = primary(&c, &all);

    // Issue 10's load: 60 requests of 600 small puts.
    let t = Instant::now();
    let mut top = 0;
    for _ in 0..60 {
        top = top.max(commit(&c, p0, &puts(&key, &mut seq, 600, 8)));
    }
    eprintln!("60 x 600 puts: height {top} in {:?}", t.elapsed());
    // One 4.8 MB request of 80 x 60 KB values.
    let t = Instant::now();
    let h = commit(&c, p0, &puts(&key, &mut seq, 80, 60_000));
    eprintln!(
        "80 x 60 KB: up to height {h} ({} blocks) in {:?}",
        h - top,
        t.elapsed()
    );
    c.wait_converged(&all, h, T);
    statuses(&c);

    // Kill -9 of the primary while a writer keeps posting 600-put requests to a backup.
    let lagger = (p0 + 2) % 4;
    let survivors: Vec<usize> = all.iter().copied().filter(|i| *i != p0).collect();
    let via = survivors[0];
    let pending: Vec<Vec<Tx>> = (0..3).map(|_| puts(&key, &mut seq, 600, 8)).collect();
    c.kill(p0);
    let t = Instant::now();
    let mut h = 0;
    for txs in &pending {
        h = h.max(commit(&c, via, txs));
    }
    let p1 = primary(&c, &survivors);
    eprintln!(
        "primary {p0} killed: new primary {p1}, 3 x 600 puts committed up to {h} after {:?}",
        t.elapsed()
    );
    statuses(&c);
    for &i in &survivors {
        print_sizes(&c, i);
    }

    // A replica far behind: stop one, commit 70 requests of 600 puts and 5 of 80 x 60 KB
    // (the old primary comes back meanwhile), then restart it on an idle cluster.
    c.kill(lagger);
    let others: Vec<usize> = survivors.iter().copied().filter(|i| *i != lagger).collect();
    c.start(p0);
    let t = Instant::now();
    let mut top = 0;
    for _ in 0..70 {
        top = top.max(commit(&c, p1, &puts(&key, &mut seq, 600, 8)));
    }
    for _ in 0..5 {
        top = top.max(commit(&c, p1, &puts(&key, &mut seq, 80, 60_000)));
    }
    let (target, _) = c.wait_converged(&[p0, p1], top, T);
    let lag_h = c.status(others[0]).map(|s| s["height"].clone());
    eprintln!(
        "while {lagger} was down: height {target} in {:?} (others at {lag_h:?})",
        t.elapsed()
    );
    c.wait_converged(&[p0, p1, others[0]], target, T);
    statuses(&c);
    c.start(lagger);
    let t = Instant::now();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.wait_converged(&all, target, Duration::from_secs(60))
    }));
    eprintln!(
        "restarted {lagger} on an idle cluster: caught up {} after {:?}",
        caught.is_ok(),
        t.elapsed()
    );
    statuses(&c);
    if caught.is_err() {
        // Does load wake it up?
        let h = commit(&c, p1, &puts(&key, &mut seq, 1, 8));
        let t = Instant::now();
        c.wait_converged(&all, h, T);
        eprintln!("after one more write it caught up in {:?}", t.elapsed());
    }
    for i in all {
        print_sizes(&c, i);
    }
    eprintln!("--- node {lagger} log (warn/error):");
    for l in c
        .log(lagger)
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(30)
    {
        eprintln!("{l}");
    }
    for i in all {
        let n = c
            .log(i)
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count();
        eprintln!("node {i}: {n} warn/error lines");
    }
}
