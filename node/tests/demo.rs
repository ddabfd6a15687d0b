//! `faultline demo`'s simulated part shows what it says: PBFT safe against each Byzantine mode,
//! Raft broken by an equivocating or corrupt leader and by a follower acknowledging what it
//! never stored, and two colluding PBFT replicas of four (f+1) forking the ledger while the
//! same two among seven (f=2) cannot.

use faultline_node::config::Protocol;
use faultline_node::demo::{byzantine_matrix, MatrixSpec};
use faultline_node::sim::Outcome;

#[test]
fn the_byzantine_matrix_shows_each_protocols_bound() {
    let rows = byzantine_matrix(&MatrixSpec {
        max_seeds: 4,
        pbft_seeds: 1,
        pbft_steps: 200,
    })
    .unwrap();
    for r in &rows {
        eprintln!("{}", r.row());
    }
    assert_eq!(
        rows.len(),
        14,
        "six modes for each protocol, then f+1 of 4 and f of 7"
    );
    let find = |protocol: Protocol, nodes: usize, byzantine: &str| {
        rows.iter()
            .find(|r| r.protocol == protocol && r.nodes == nodes && r.byzantine == byzantine)
            .unwrap_or_else(|| panic!("no row for {protocol} n={nodes} {byzantine}"))
    };
    for mode in [
        "silent",
        "equivocate",
        "forge",
        "corrupt",
        "ack-without-store",
        "disrupt",
    ] {
        let pbft = find(Protocol::Pbft, 4, &format!("0={mode}"));
        assert_eq!(pbft.verdict(), Outcome::Ok, "{}", pbft.row());
        let raft = find(Protocol::Raft, 3, &format!("0={mode}"));
        match mode {
            "equivocate" | "corrupt" | "ack-without-store" => {
                assert_eq!(raft.verdict(), Outcome::Unsafe, "{}", raft.row());
                assert!(raft.detail.is_some(), "{}", raft.row());
            }
            _ => assert_ne!(raft.verdict(), Outcome::Unsafe, "{}", raft.row()),
        }
    }
    let fork = find(Protocol::Pbft, 4, "0=equivocate 1=equivocate");
    assert_eq!(fork.verdict(), Outcome::Unsafe, "{}", fork.row());
    assert!(
        fork.detail.as_deref().is_some_and(|d| d.contains("fork")),
        "{}",
        fork.row()
    );
    let held = find(Protocol::Pbft, 7, "0=equivocate 1=equivocate");
    assert_eq!(held.verdict(), Outcome::Ok, "{}", held.row());
}
