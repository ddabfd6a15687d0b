//! The command line as a user meets it: keygen, testnet, verify, clear errors.

use std::path::Path;
use std::process::{Command, Output};

use ed25519_dalek::SigningKey;
use faultline_node::ledger::{Genesis, Op, Tx};
use faultline_node::store::{NewBlock, Store, WriteBatch};

fn faultline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .output()
        .expect("run faultline")
}

/// `faultline sim --protocol P --nodes N` followed by `extra`.
fn sim(protocol: &str, nodes: &str, extra: &[&str]) -> Output {
    let mut args = vec!["sim", "--protocol", protocol, "--nodes", nodes];
    args.extend_from_slice(extra);
    faultline(&args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn testnet_refuses_a_pbft_cluster_too_small_to_tolerate_a_fault() {
    let dir = tempfile::tempdir().unwrap();
    let out = faultline(&[
        "testnet",
        "--protocol",
        "pbft",
        "--nodes",
        "3",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("pbft needs at least 4 nodes"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear sentence: {err}");
    assert!(!err.contains("panicked"));
    assert!(!dir.path().join("cluster.toml").exists());
}

#[test]
fn testnet_writes_every_file_of_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = faultline(&[
        "testnet",
        "--protocol",
        "pbft",
        "--nodes",
        "4",
        "--dir",
        d,
        "--clients",
        "2",
        "--byzantine",
        "2=equivocate",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cluster =
        faultline_node::config::ClusterConfig::load(&dir.path().join("cluster.toml")).unwrap();
    assert_eq!(cluster.n(), 4);
    assert_eq!(cluster.f, 1);
    assert_eq!(cluster.clients.len(), 2);
    assert!(!cluster.genesis.balances.is_empty());
    for i in 0..4 {
        let node_dir = dir.path().join(format!("node-{i}"));
        let cfg = faultline_node::config::NodeConfig::load(&node_dir.join("node.toml")).unwrap();
        assert_eq!(cfg.id, i);
        assert_eq!(cfg.byzantine.is_some(), i == 2);
        let key = faultline_node::keys::read_key(&cfg.key_file).unwrap();
        assert_eq!(
            key.verifying_key().to_bytes(),
            cluster.nodes[i as usize].public_key
        );
        assert_key_mode(&cfg.key_file);
    }
    for j in 0..2 {
        let path = dir.path().join(format!("client-{j}.key"));
        let key = faultline_node::keys::read_key(&path).unwrap();
        assert_eq!(
            key.verifying_key().to_bytes(),
            cluster.clients[j].public_key
        );
        assert_key_mode(&path);
    }
    // A second run into the same dir must not clobber the keys.
    let again = faultline(&["testnet", "--protocol", "pbft", "--nodes", "4", "--dir", d]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already exists"));
}

fn assert_key_mode(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
}

#[test]
fn keygen_prints_peer_id_and_public_key_of_the_written_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    let out = faultline(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    let key = faultline_node::keys::read_key(&path).unwrap();
    let public = key.verifying_key().to_bytes();
    let peer = faultline_node::keys::peer_id(&public).unwrap();
    assert_eq!(
        line.trim(),
        format!("peer_id={peer} public_key={}", hex::encode(public))
    );
    assert_key_mode(&path);
    let again = faultline(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(!again.status.success(), "must not overwrite a key");
}

#[test]
fn verify_names_the_height_of_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = SigningKey::from_bytes(&[1; 32]);
    {
        let store = Store::open(&data, &Genesis::default()).unwrap();
        for h in 1..=6u64 {
            let txs = vec![Tx::sign(
                &key,
                h,
                Op::Put {
                    key: format!("key-{h}"),
                    value: format!("MARKER-{h}-abcdefghijklmnop"),
                },
            )];
            store
                .commit(WriteBatch {
                    blocks: vec![NewBlock {
                        txs,
                        certificate: None,
                    }],
                    ..Default::default()
                })
                .unwrap();
        }
    }
    let ok = faultline(&["verify", "--data", data.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).starts_with("ok height=6 head="),
        "{}",
        text(&ok.stdout)
    );

    // Flip one byte inside block 4's stored transaction (every copy redb may keep of the page).
    let file = data.join(faultline_node::store::DB_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let marker = b"MARKER-4-abcdefghijklmnop";
    let mut flipped = 0;
    for i in 0..bytes.len().saturating_sub(marker.len()) {
        if &bytes[i..i + marker.len()] == marker {
            bytes[i + 12] ^= 0x01; // 'e' -> 'd': still UTF-8, so the block decodes but lies
            flipped += 1;
        }
    }
    assert!(flipped > 0, "marker not found in the database file");
    std::fs::write(&file, &bytes).unwrap();
    let bad = faultline(&["verify", "--data", data.to_str().unwrap()]);
    assert!(!bad.status.success());
    let out = text(&bad.stdout);
    assert!(
        out.starts_with("bad height=4"),
        "stdout: {out} stderr: {}",
        text(&bad.stderr)
    );
}

#[test]
fn verify_reports_a_missing_or_garbage_data_dir_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = faultline(&["verify", "--data", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("no database"),
        "{err}"
    );
    std::fs::write(
        dir.path().join(faultline_node::store::DB_FILE),
        b"this is not a database",
    )
    .unwrap();
    let out = faultline(&["verify", "--data", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: ") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn sim_reports_a_raft_fork_with_exit_code_3_and_the_seed() {
    let out = sim(
        "raft",
        "3",
        &[
            "--seeds",
            "1..3",
            "--byzantine",
            "0=equivocate",
            "--steps",
            "300",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let bad = stdout
        .lines()
        .find(|l| l.contains("verdict=UNSAFE"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        bad.starts_with("seed=") && bad.contains("first_diverging_height="),
        "{bad}"
    );
    let ok = sim("pbft", "4", &["--seeds", "1", "--steps", "200"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stdout));
    assert!(text(&ok.stdout).contains("summary: seeds=1 ok=1 unsafe=0 stalled=0"));
}

/// `faultline keygen | head -0`: output into a pipe nobody reads is dropped, not a panic (Rust
/// ignores SIGPIPE, so the write fails with EPIPE); the key is still written and the exit code
/// is still success.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["keygen", "--out", path.to_str().unwrap()])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run faultline");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(path.exists());
}

#[test]
fn sim_refuses_two_modes_for_one_node_and_warns_beyond_f() {
    let out = sim(
        "pbft",
        "4",
        &["--byzantine", "1=silent", "--byzantine", "1=forge"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--byzantine 1: one mode per node"),
        "{}",
        text(&out.stderr)
    );
    let out = sim(
        "pbft",
        "4",
        &[
            "--seeds",
            "1",
            "--steps",
            "50",
            "--byzantine",
            "0=silent",
            "--byzantine",
            "1=silent",
        ],
    );
    assert!(
        text(&out.stderr).contains("2 Byzantine nodes exceed f = 1 for n = 4"),
        "{}",
        text(&out.stderr)
    );
}
