//! `faultline admin` against real processes: an admin moves Raft leadership (thesis §3.10) and
//! lists the members; a key that is not an admin, a bad signature and a replayed request are
//! refused; PBFT says why it has no such operation. Loopback only, every wait bounded, every
//! child killed on drop.

mod support;

use std::process::Command;
use std::time::Duration;

use faultline_node::api_types::TransferLeaderRequest;
use faultline_node::ledger::{Op, Tx};
use support::{http, Cluster, BIN};

const T: Duration = Duration::from_secs(30);

/// Runs `faultline admin --cluster DIR/cluster.toml ARGS`: (success, stdout, stderr).
fn admin(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("admin")
        .arg("--cluster")
        .arg(c.path().join("cluster.toml"))
        .args(args)
        .output()
        .expect("run faultline admin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn transfer(c: &Cluster, via: usize, req: &TransferLeaderRequest) -> (u16, serde_json::Value) {
    let body = serde_json::to_vec(req).expect("json");
    http(
        &c.api(via),
        "POST",
        "/v1/admin/transfer-leader",
        Some(&body),
    )
    .expect("node answers")
}

fn term(c: &Cluster, i: usize) -> u64 {
    c.status(i).and_then(|s| s["term"].as_u64()).expect("term")
}

#[test]
fn an_admin_moves_raft_leadership_and_nobody_else_can() {
    let mut c = Cluster::raft(3);
    c.start_all();
    let all = [0, 1, 2];
    let leader = c.wait_leader(&all, T);

    let (ok, out, err) = admin(&c, &["members"]);
    assert!(ok, "{err}");
    assert!(out.contains("raft cluster, 3 members"), "{out}");
    assert_eq!(out.matches(" leader ").count(), 1, "{out}");
    assert_eq!(out.matches(" follower ").count(), 2, "{out}");

    // Through the CLI, which finds the leader and signs for its term.
    let target = (leader + 1) % 3;
    let (ok, out, err) = admin(&c, &["transfer-leader", &target.to_string()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("leader is node {target}")), "{out}");
    assert_eq!(c.wait_leader(&all, T), target);

    // Sent to a follower, which relays it to the leader.
    let next = (target + 1) % 3;
    let follower = (target + 2) % 3;
    let req = TransferLeaderRequest::sign(&c.admin_key(), next as u64, term(&c, target));
    let (code, body) = transfer(&c, follower, &req);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["leader"], next as u64);
    assert_eq!(c.wait_leader(&all, T), next);

    // The same request again names a term that is over: refused, leadership stays.
    let (code, body) = transfer(&c, next, &req);
    assert_eq!(code, 409, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("term")));

    // A permitted client is not an admin: 403 before any signature work.
    let now = term(&c, next);
    let by_client = TransferLeaderRequest::sign(&c.client_key(), leader as u64, now);
    assert_eq!(transfer(&c, next, &by_client).0, 403);
    // The admin's key with a signature over something else: 400.
    let mut forged = TransferLeaderRequest::sign(&c.admin_key(), leader as u64, now);
    forged.target = target as u64;
    assert_eq!(transfer(&c, next, &forged).0, 400);
    // Not a member: 400.
    let stranger = TransferLeaderRequest::sign(&c.admin_key(), 7, now);
    assert_eq!(transfer(&c, next, &stranger).0, 400);
    assert_eq!(c.wait_leader(&all, T), next);

    // The cluster goes on committing under its new leader.
    let tx = Tx::sign(
        &c.client_key(),
        1,
        Op::Put {
            key: "after".into(),
            value: "transfer".into(),
        },
    );
    let body = serde_json::to_vec(&tx).expect("json");
    let (code, reply) = http(&c.api(next), "POST", "/v1/tx", Some(&body)).expect("answer");
    assert_eq!(code, 200, "{reply}");
    for i in all {
        assert!(c.terminate(i), "node {i} did not shut down cleanly");
        c.verify(i);
    }
}

#[test]
fn pbft_has_no_leader_transfer_and_says_why() {
    let mut c = Cluster::pbft(4);
    c.start_all();
    support::wait_for(T, "a primary", || {
        c.status(0).filter(|s| s["role"] == "primary")
    });
    let (ok, out, err) = admin(&c, &["transfer-leader", "1"]);
    assert!(!ok, "{out}");
    assert!(err.contains("view change"), "{err}");
    // The API says the same to a hand-made request.
    let req = TransferLeaderRequest::sign(&c.admin_key(), 1, 0);
    let (code, body) = transfer(&c, 0, &req);
    assert_eq!(code, 400, "{body}");
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("view change")));
}
