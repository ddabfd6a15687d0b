//! Reads an operator relies on, over real processes: balances, receipts of committed
//! transactions, and the CLI commands for both.

mod support;

use std::process::Command;
use std::time::Duration;

use faultline_node::ledger::{Op, Tx};
use support::{http, Cluster, BIN};

const T: Duration = Duration::from_secs(30);

fn client(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("client")
        .arg("--cluster")
        .arg(c.path().join("cluster.toml"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn balances_and_receipts(mut c: Cluster) {
    c.start_all();
    let all: Vec<usize> = (0..c.n).collect();
    c.wait_converged(&all, 0, T);
    let cfg = faultline_node::config::ClusterConfig::load(&c.path().join("cluster.toml")).unwrap();
    let (from, to) = {
        let mut accounts = cfg.genesis.balances.keys();
        (
            accounts.next().unwrap().clone(),
            accounts.next().unwrap().clone(),
        )
    };
    let start_from = cfg.genesis.balances[&from];
    let start_to = cfg.genesis.balances[&to];
    if cfg.protocol == faultline_node::config::Protocol::Raft {
        c.wait_leader(&all, T);
    }
    let key = c.client_key();
    let tx = Tx::sign(
        &key,
        1,
        Op::Transfer {
            from: from.clone(),
            to: to.clone(),
            amount: 7,
        },
    );
    let body = serde_json::to_vec(&tx).unwrap();
    let (code, reply) = http(&c.api(0), "POST", "/v1/tx", Some(&body)).unwrap();
    assert_eq!(code, 200, "{reply}");
    let hash = hex::encode(tx.hash());
    c.wait_converged(&all, reply["height"].as_u64().unwrap(), T);

    for i in all.clone() {
        let (code, v) = http(&c.api(i), "GET", &format!("/v1/balances/{from}"), None).unwrap();
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["account"], from.as_str());
        assert_eq!(v["balance"], start_from - 7, "{v}");
        assert!(v["height"].as_u64().unwrap() >= 1);
        let path = format!("/v1/balances/{to}?consistency=local");
        let (_, v) = http(&c.api(i), "GET", &path, None).unwrap();
        assert_eq!(v["balance"], start_to + 7, "{v}");
        // Never credited: 0, not 404.
        let (code, v) = http(&c.api(i), "GET", "/v1/balances/nobody", None).unwrap();
        assert_eq!((code, v["balance"].as_u64()), (200, Some(0)), "{v}");

        // The receipt is the committed reply, signed by the node that serves it.
        let (code, r) = http(&c.api(i), "GET", &format!("/v1/txs/{hash}"), None).unwrap();
        assert_eq!(code, 200, "{r}");
        assert_eq!(r["status"], "committed");
        assert_eq!(r["height"], reply["height"]);
        assert_eq!(r["result"], reply["result"]);
        assert_eq!(r["node"], i as u64);
        let typed: faultline_node::api_types::CommittedReply =
            serde_json::from_value(r.clone()).expect("a committed reply");
        assert!(
            faultline_node::client_protocol::Vouched::committed(&cfg, &typed).is_some(),
            "{r}"
        );
    }
    let unknown = hex::encode([0xabu8; 32]);
    let (code, v) = http(&c.api(0), "GET", &format!("/v1/txs/{unknown}"), None).unwrap();
    assert_eq!(code, 404);
    assert_eq!(v["error"], "unknown transaction");
    let (code, _) = http(&c.api(0), "GET", "/v1/txs/xyz", None).unwrap();
    assert_eq!(code, 400);
    let (code, _) = http(&c.api(0), "GET", "/v1/balances/x?consistency=weird", None).unwrap();
    assert_eq!(code, 400);

    let (ok, out, err) = client(&c, &["balance", &from]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("{from} = {}", start_from - 7)),
        "{out}"
    );
    let (ok, out, err) = client(&c, &["receipt", &hash]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("tx_hash={hash}")), "{out}");
    let (ok, _, err) = client(&c, &["receipt", &unknown]);
    assert!(!ok);
    assert!(err.contains("unknown transaction"), "{err}");
}

#[test]
fn raft_serves_balances_and_receipts() {
    balances_and_receipts(Cluster::raft(3));
}

#[test]
fn pbft_serves_balances_and_receipts() {
    balances_and_receipts(Cluster::pbft(4));
}

/// Issue 17 item 3: `client get` and `client balance` on PBFT accept only 2f+1 matching signed
/// replies (TOCS §5.1.3) or, failing that, f+1 matching replies to reads ordered through the
/// protocol, so a replica that answers with validly signed wrong values, or one that answers
/// nothing, does not change what the client prints.
#[test]
fn pbft_client_reads_survive_a_lying_and_a_mute_replica() {
    let mut c = Cluster::pbft(4);
    let toml = c.node_dir(3).join("node.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("byzantine = \"corrupt\"\n{text}")).unwrap();
    c.start_all();
    c.wait_converged(&[0, 1, 2], 0, T);
    let cfg = faultline_node::config::ClusterConfig::load(&c.path().join("cluster.toml")).unwrap();
    let (account, funds) = cfg.genesis.balances.iter().next().unwrap();

    let (ok, _, err) = client(&c, &["put", "color", "blue"]);
    assert!(ok, "{err}");
    // The lie is real: replica 3 signs a wrong value with its own key.
    let (code, v) = http(&c.api(3), "GET", "/v1/kv/color?consistency=local", None).unwrap();
    assert_eq!(code, 200, "{v}");
    assert_ne!(v["value"], "blue", "{v}");
    let lie = serde_json::from_value::<faultline_node::api_types::KvReply>(v.clone())
        .unwrap()
        .signed();
    assert!(faultline_node::reply::verify_read(
        &cfg.nodes[3].public_key,
        &lie.read,
        lie.height,
        &lie.signature
    ));

    let (ok, out, err) = client(&c, &["get", "color"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("color = blue ("), "{out}");
    let (ok, out, err) = client(&c, &["balance", account]);
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("{account} = {funds} (")), "{out}");
    let (ok, out, err) = client(&c, &["get", "nothing-here"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("nothing-here not found"), "{out}");

    // The liar goes mute: the three correct replicas still decide every read.
    c.kill(3);
    let (ok, _, err) = client(&c, &["put", "color", "green"]);
    assert!(ok, "{err}");
    let (ok, out, err) = client(&c, &["get", "color"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("color = green ("), "{out}");
}
