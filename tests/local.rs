//! End-to-end tests of `faultline local`, `bench` and `demo`: whole clusters as child processes
//! on loopback. The runs are short and serialized (2-core CI); each has a deadline after which
//! the command gets SIGINT, which makes it kill its node processes before exiting.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_faultline");

/// One cluster at a time: parallel clusters on two cores would measure each other.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `faultline ARGS` with a deadline; on timeout sends SIGINT (the command then kills its
/// children) and fails the test.
fn faultline(args: &[&str], deadline: Duration) -> Output {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn faultline");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > deadline {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let out = child.wait_with_output().expect("output");
            panic!(
                "faultline {args:?} did not finish within {deadline:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `faultline local ... --json` and returns its exit code and summary object.
fn local(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["local"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = faultline(&all, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), summary)
}

#[test]
fn raft_local_run_commits_and_is_safe() {
    let (code, s) = local(&["--protocol", "raft", "--nodes", "3", "--duration", "5"]);
    assert_eq!(code, 0, "{s}");
    assert!(s["committed"].as_u64() > Some(0), "{s}");
    assert_eq!(s["verdict"], "safe", "{s}");
    assert!(s["msgs_per_tx"].as_f64() > Some(0.0), "{s}");
}

#[test]
fn pbft_stays_safe_and_live_with_a_forging_backup() {
    let (code, s) = local(&[
        "--protocol",
        "pbft",
        "--nodes",
        "4",
        "--byzantine",
        "1=forge",
        "--duration",
        "5",
    ]);
    assert_eq!(code, 0, "{s}");
    assert!(s["committed"].as_u64() > Some(0), "{s}");
    assert_eq!(s["verdict"], "safe", "{s}");
}

#[test]
fn pbft_stays_safe_and_live_with_an_equivocating_primary() {
    let (code, s) = local(&[
        "--protocol",
        "pbft",
        "--nodes",
        "4",
        "--byzantine",
        "0=equivocate",
        "--duration",
        "6",
    ]);
    assert_eq!(code, 0, "{s}");
    assert!(s["committed"].as_u64() > Some(0), "{s}");
    assert_eq!(s["verdict"], "safe", "{s}");
}

#[test]
fn raft_with_an_equivocating_leader_is_reported_unsafe() {
    let (code, s) = local(&[
        "--protocol",
        "raft",
        "--nodes",
        "3",
        "--byzantine",
        "0=equivocate",
        "--duration",
        "4",
    ]);
    assert_eq!(code, 3, "{s}");
    assert_eq!(s["verdict"], "UNSAFE", "{s}");
}

#[test]
fn raft_crash_and_restart_loses_no_acknowledged_tx() {
    let (code, s) = local(&[
        "--protocol",
        "raft",
        "--nodes",
        "3",
        "--crash",
        "1@2",
        "--restart",
        "1@4",
        "--duration",
        "6",
    ]);
    assert_eq!(code, 0, "{s}");
    assert!(s["committed"].as_u64() > Some(0), "{s}");
    assert_eq!(s["verdict"], "safe", "{s}");
    assert_eq!(s["acked_missing"], 0, "{s}");
}

#[test]
fn bench_writes_results_and_charts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("bench");
    let out_s = out.to_str().expect("utf-8 path");
    let o = faultline(
        &[
            "bench",
            "--protocol",
            "both",
            "--nodes",
            "3,4",
            "--duration",
            "3",
            "--out",
            out_s,
        ],
        Duration::from_secs(180),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(out.join("results.csv")).expect("results.csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "protocol,nodes,committed,tx_per_s,p50_ms,p99_ms,msgs_per_tx,bytes_per_tx,msgs_per_batch"
    );
    // raft at 3 and 4 nodes; pbft at 4 (3 is below PBFT's minimum and is skipped).
    assert_eq!(lines.len(), 4, "{csv}");
    for name in ["messages_per_tx.svg", "throughput.svg", "latency.svg"] {
        let svg = std::fs::read_to_string(Path::new(&out).join(name)).expect(name);
        assert!(svg.contains("<svg"), "{name}");
    }
}

#[test]
fn demo_runs_to_the_end() {
    let o = faultline(&["demo"], Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        stdout.matches(" pbft ").count() + stdout.matches(" raft ").count(),
        6,
        "{stdout}"
    );
}

/// Processes whose command line mentions `needle` (the node processes of a cluster dir).
fn processes_mentioning(needle: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(needle))
        .count()
}

/// Starts `faultline local` for a raft cluster of 3 in a fresh dir and waits until its three
/// node processes run. Returns the tempdir (keep it alive), the dir string and the child.
fn start_local_cluster() -> (tempfile::TempDir, String, std::process::Child) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d_s = dir
        .path()
        .join("c")
        .to_str()
        .expect("utf-8 path")
        .to_string();
    // Only the node processes name a node dir (`--config <d>/node-<i>/node.toml`).
    let nodes = format!("{d_s}/node-");
    let mut child = Command::new(BIN)
        .args([
            "local",
            "--protocol",
            "raft",
            "--duration",
            "60",
            "--dir",
            &d_s,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn faultline local");
    let start = Instant::now();
    while processes_mentioning(&nodes) < 3 {
        if start.elapsed() > Duration::from_secs(60) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the nodes never started; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (dir, d_s, child)
}

#[test]
fn sigint_stops_every_node_process() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, d_s, child) = start_local_cluster();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(
        processes_mentioning(&d_s),
        0,
        "node processes outlived local"
    );
}

/// SIGKILL gives `local` no chance to clean up; the kernel's parent-death signal must still
/// take the nodes down (Linux only: PR_SET_PDEATHSIG).
#[cfg(target_os = "linux")]
#[test]
fn sigkill_of_local_takes_its_node_processes_with_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, d_s, mut child) = start_local_cluster();
    let _ = child.kill();
    let _ = child.wait();
    let start = Instant::now();
    while processes_mentioning(&d_s) > 0 {
        if start.elapsed() > Duration::from_secs(10) {
            // Do not leave them behind for the next test.
            let _ = Command::new("pkill").args(["-9", "-f", &d_s]).status();
            panic!("node processes outlived a SIGKILLed local");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
