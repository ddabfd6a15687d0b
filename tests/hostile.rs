//! Hostile input against real processes: slow and garbage clients on the API, unknown hosts on
//! the p2p port, clients that are not permitted, broken data dirs and loose key files. Each test
//! fails on a node without the matching limit.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use faultline_node::ledger::{Op, Tx};
use serde_json::Value;
use support::{http, wait_for, Cluster, BIN};

const T: Duration = Duration::from_secs(30);

/// Whether the server has closed `s` (EOF or reset), waiting at most `wait` for it.
fn closed_by_server(s: &mut TcpStream, wait: Duration) -> bool {
    let _ = s.set_read_timeout(Some(wait));
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue, // e.g. a 408 response before the close
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Connections that never finish their request head are closed after the header timeout, the
/// node's descriptors stay bounded by the connection cap, and consensus is unaffected.
#[test]
fn slow_clients_are_cut_off_and_cannot_exhaust_descriptors() {
    let mut c = Cluster::raft(3);
    c.start_all();
    let leader = c.wait_leader(&[0, 1, 2], T);
    let victim = (leader + 1) % 3;
    let pid = c.pid(victim).unwrap();
    let before = open_fds(pid);
    let mut slow = Vec::new();
    for _ in 0..300 {
        if let Ok(mut s) = TcpStream::connect(c.api(victim)) {
            // A request head that never ends.
            let _ = s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n");
            slow.push(s);
        }
    }
    // Watch the descriptor count while the node takes in the connections: it must stay within
    // the cap at every sample, not just at one instant.
    let cap = before + faultline_node::runtime::http_server::MAX_CONNECTIONS + 16;
    let watch_until = Instant::now() + Duration::from_secs(2);
    let mut peak = 0;
    while Instant::now() < watch_until {
        peak = peak.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        peak <= cap,
        "{peak} descriptors open under attack (was {before})"
    );
    // The cluster keeps committing while the API is saturated (peers do not share the cap).
    let key = c.client_key();
    let tx = Tx::sign(
        &key,
        1,
        Op::Put {
            key: "k".into(),
            value: "v".into(),
        },
    );
    let body = serde_json::to_vec(&tx).unwrap();
    let (code, _) = http(&c.api(leader), "POST", "/v1/tx", Some(&body)).unwrap();
    assert_eq!(code, 200);
    // Every slow connection is closed by the node within the header timeout (plus slack).
    let deadline = Instant::now() + faultline_node::runtime::http_server::HEADER_TIMEOUT * 3;
    let mut open = 0;
    for s in &mut slow {
        let left = deadline.saturating_duration_since(Instant::now());
        if !closed_by_server(s, left.max(Duration::from_millis(10))) {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} slow connections still open");
    drop(slow);
    wait_for(T, "the API to answer again", || c.status(victim));
}

/// An unknown client is refused with 403 before any signature work (here its signatures are
/// garbage: a node that verified first would say 400), and a batch over the cap is 413.
#[test]
fn unknown_clients_are_refused_before_signature_checks_and_batches_are_capped() {
    let mut c = Cluster::raft(3);
    c.start_all();
    let leader = c.wait_leader(&[0, 1, 2], T);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let mut txs: Vec<Value> = (1..=50)
        .map(|seq| {
            let mut tx = Tx::sign(
                &stranger,
                seq,
                Op::Put {
                    key: format!("k{seq}"),
                    value: "v".into(),
                },
            );
            tx.sig = [7u8; 64];
            serde_json::to_value(&tx).unwrap()
        })
        .collect();
    let body = serde_json::to_vec(&txs).unwrap();
    let (code, v) = http(&c.api(leader), "POST", "/v1/txs", Some(&body)).unwrap();
    assert_eq!(code, 403, "{v}");
    let one = serde_json::to_vec(&txs[0]).unwrap();
    let (code, _) = http(&c.api(leader), "POST", "/v1/tx", Some(&one)).unwrap();
    assert_eq!(code, 403);

    let key = c.client_key();
    let small = Tx::sign(
        &key,
        1,
        Op::Put {
            key: "a".into(),
            value: "b".into(),
        },
    );
    let v = serde_json::to_value(&small).unwrap();
    txs = vec![v; faultline_node::api::MAX_BATCH_TXS + 1];
    let body = serde_json::to_vec(&txs).unwrap();
    let (code, v) = http(&c.api(leader), "POST", "/v1/txs", Some(&body)).unwrap();
    assert_eq!(code, 413, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("at most"), "{v}");
}

/// Unknown hosts that open raw TCP connections to the p2p port and never handshake are refused
/// beyond a small number of pending handshakes, at once, while the cluster keeps working.
#[test]
fn idle_connections_to_the_p2p_port_are_refused_beyond_the_pending_limit() {
    let mut c = Cluster::raft(3);
    c.start_all();
    let leader = c.wait_leader(&[0, 1, 2], T);
    let target = (leader + 1) % 3;
    let mut conns: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(c.p2p(target)).ok())
        .collect();
    let mut refused = 0;
    for s in &mut conns {
        if closed_by_server(s, Duration::from_millis(20)) {
            refused += 1;
        }
    }
    let pending = faultline_net::MAX_PENDING_INCOMING as usize;
    assert!(
        refused + pending + 8 >= conns.len(),
        "only {refused} of {} idle connections were refused at once",
        conns.len()
    );
    let (code, _) = http(&c.api(leader), "GET", "/v1/status", None).unwrap();
    assert_eq!(code, 200);
    assert!(c.status(target).is_some());
}

fn run_node(c: &Cluster, i: usize) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(c.node_dir(i).join("node.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("faultline run kept running on a data dir it should refuse");
}

/// A 0-byte or garbage database file is refused with one clear sentence and left untouched; a
/// data dir with other files but no database is refused too.
#[test]
fn a_broken_database_file_is_refused_not_replaced() {
    let c = Cluster::raft(3);
    let data = c.node_dir(0).join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("faultline.redb");
    for content in [&b""[..], &b"not a database at all"[..]] {
        std::fs::write(&db, content).unwrap();
        let out = run_node(&c, 0);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a usable database"), "{err}");
        assert_eq!(
            std::fs::read(&db).unwrap(),
            content,
            "the file was modified"
        );
    }
    std::fs::remove_file(&db).unwrap();
    std::fs::write(data.join("notes.txt"), "x").unwrap();
    let out = run_node(&c, 0);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not empty"), "{err}");
    assert!(!db.exists());
}

/// Data dirs and databases are private to the node's user, and a key file others can read is
/// refused as ssh refuses one.
#[cfg(unix)]
#[test]
fn data_is_private_and_a_readable_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::raft(3);
    c.start_all();
    c.wait_leader(&[0, 1, 2], T);
    let data = c.node_dir(1).join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("faultline.redb")), 0o600);
    c.kill(1);
    let key = c.node_dir(1).join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_node(&c, 1);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
}
