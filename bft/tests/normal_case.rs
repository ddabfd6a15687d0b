//! Normal-case operation (PBFT §4.2–4.3): agreement, message cost, pipelining, checkpoints and
//! commit certificates.

mod common;

use common::*;
use faultline_bft::*;

fn protocol_messages(c: &Cluster) -> u64 {
    ["pre_prepare", "prepare", "commit"]
        .iter()
        .map(|k| c.sent.get(k).copied().unwrap_or(0))
        .sum()
}

#[test]
fn normal_case_commits_identical_batches_everywhere() {
    let mut c = Cluster::new(4);
    for r in Cluster::reqs("tx", 10) {
        c.submit(0, &r).unwrap();
    }
    c.run_ticks(2);
    for id in 0..4 {
        let got = c.committed(id);
        assert_eq!(got.len(), 3, "replica {id}: 4 + 4 + 2 requests");
        assert_eq!(got, c.committed(0));
        let reqs: usize = got.iter().map(|b| b.2.len()).sum();
        assert_eq!(reqs, 10);
    }
    c.check_agreement();
}

#[test]
fn exactly_2n_n_minus_1_messages_per_batch_plus_checkpoints() {
    for n in [4usize, 7] {
        // K = 16: no checkpoint within the first batches.
        let mut c = Cluster::with(n, |cfg| {
            cfg.checkpoint_interval = 16;
            cfg.watermark_window = 64;
        });
        for r in Cluster::reqs("a", 4) {
            c.submit(0, &r).unwrap();
        }
        c.run();
        assert_eq!(c.committed(1).len(), 1);
        let n64 = n as u64;
        assert_eq!(protocol_messages(&c), 2 * n64 * (n64 - 1), "n = {n}");
        assert_eq!(c.sent["pre_prepare"], n64 - 1);
        assert_eq!(c.sent["prepare"], (n64 - 1) * (n64 - 1));
        assert_eq!(c.sent["commit"], n64 * (n64 - 1));
        assert_eq!(c.sent.get("checkpoint"), None);
    }
    // K = 4: after 4 batches, one round of n(n-1) checkpoints.
    let mut c = Cluster::new(4);
    for r in Cluster::reqs("b", 16) {
        c.submit(0, &r).unwrap();
    }
    c.run();
    assert_eq!(c.committed(2).len(), 4);
    assert_eq!(protocol_messages(&c), 4 * 24);
    assert_eq!(c.sent["checkpoint"], 12);
    for id in 0..4 {
        assert_eq!(c.r(id).status().stable_checkpoint, 4);
        assert_eq!(c.r(id).status().low_watermark, 4);
    }
}

#[test]
fn several_sequence_numbers_in_flight() {
    let mut c = Cluster::new(4);
    for r in Cluster::reqs("p", 12) {
        c.submit(0, &r).unwrap();
    }
    // Three pre-prepares are out before any backup answered.
    let pps: Vec<u64> = c
        .queue
        .iter()
        .filter(|e| e.kind == "pre_prepare" && e.to == 1)
        .map(|e| proposal_seq(&e.bytes))
        .collect();
    assert_eq!(pps, vec![1, 2, 3]);
    c.run();
    for id in 0..4 {
        assert_eq!(c.committed(id).len(), 3);
    }
    c.check_agreement();
}

#[test]
fn window_limits_pipelining_until_checkpoint() {
    let mut c = Cluster::with(4, |cfg| cfg.max_batch = 1);
    // L = 16: the primary may not run more than 16 seqs ahead of the stable checkpoint.
    for r in Cluster::reqs("w", 20) {
        c.submit(0, &r).unwrap();
    }
    let issued = c
        .queue
        .iter()
        .filter(|e| e.kind == "pre_prepare" && e.to == 1)
        .count();
    assert_eq!(issued, 16);
    c.run_ticks(1);
    for id in 0..4 {
        assert_eq!(c.committed(id).len(), 20);
    }
    c.check_agreement();
}

#[test]
fn duplicate_and_invalid_requests() {
    let mut c = Cluster::new(4);
    c.submit(0, b"x").unwrap();
    assert_eq!(c.submit(0, b"x"), Err(SubmitError::Duplicate));
    assert_eq!(c.submit(0, b"bad-tx"), Err(SubmitError::Invalid));
    assert_eq!(c.submit(1, b"bad-tx"), Err(SubmitError::Invalid));
    c.run_ticks(1);
    assert_eq!(c.committed(3).len(), 1);
    assert_eq!(c.submit(0, b"x"), Err(SubmitError::Duplicate));
}

/// §4.1: a request that reached only a backup is relayed to the primary — after a quarter of
/// the request timeout (2 of this harness's 10 ticks), since clients normally send to the
/// primary too.
#[test]
fn backup_forwards_requests_to_primary() {
    let mut c = Cluster::new(4);
    c.submit(2, b"via-backup").unwrap();
    c.run_ticks(1);
    assert_eq!(c.sent.get("request"), None);
    assert_eq!(c.committed(0).len(), 0);
    c.run_ticks(1);
    assert_eq!(c.sent["request"], 1);
    c.run_ticks(1);
    for id in 0..4 {
        assert_eq!(c.committed(id).len(), 1);
        assert_eq!(c.r(id).status().pending_requests, 0);
    }
}

/// A request only the backup holds (a read marker it issued) is relayed at once.
#[test]
fn a_backup_relays_its_own_request_at_once() {
    let mut c = Cluster::new(4);
    c.r(2).submit_own(b"marker".to_vec()).unwrap();
    c.pump(2);
    assert_eq!(c.sent["request"], 1);
    c.run();
    c.run_ticks(1);
    for id in 0..4 {
        assert_eq!(c.committed(id).len(), 1, "replica {id}");
    }
}

/// A client that sends its request to every replica (ours do) costs no relays: the primary
/// orders it before any backup's relay delay runs out.
#[test]
fn backups_do_not_relay_what_the_primary_already_ordered() {
    let mut c = Cluster::new(4);
    for id in 0..4 {
        c.submit(id, b"to-all").unwrap();
    }
    c.run_ticks(40);
    assert_eq!(c.sent.get("request"), None);
    for id in 0..4 {
        assert_eq!(c.committed(id).len(), 1);
        assert_eq!(c.r(id).status().pending_requests, 0);
    }
}

#[test]
fn commit_certificates_verify_and_tampering_fails() {
    let mut c = Cluster::new(4);
    for r in Cluster::reqs("c", 8) {
        c.submit(0, &r).unwrap();
    }
    c.run();
    let keys = c.cfgs[0].public_keys.clone();
    for id in 0..4 {
        for b in &c.nodes[id].committed {
            b.verify_certificate(&keys, 1).unwrap();
            assert_eq!(b.certificate.commits.len(), 3);
        }
    }
    let good = c.nodes[1].committed[0].certificate.clone();
    let mut t = good.clone();
    t.digest[0] ^= 1;
    assert_eq!(t.verify(&keys, 1), Err(CertificateError::BadSignature));
    let mut t = good.clone();
    t.commits[1].1 .0[5] ^= 1;
    assert_eq!(t.verify(&keys, 1), Err(CertificateError::BadSignature));
    let mut t = good.clone();
    t.seq += 1;
    assert_eq!(t.verify(&keys, 1), Err(CertificateError::BadSignature));
    let mut t = good.clone();
    t.commits.pop();
    assert!(matches!(
        t.verify(&keys, 1),
        Err(CertificateError::TooFewSigners { .. })
    ));
    let mut t = good.clone();
    t.commits[1] = t.commits[0];
    assert!(matches!(
        t.verify(&keys, 1),
        Err(CertificateError::DuplicateSigner(_))
    ));
    let mut t = good.clone();
    t.commits[0].0 = 9;
    assert_eq!(t.verify(&keys, 1), Err(CertificateError::UnknownSigner(9)));
    // Serde round trip (postcard and JSON) keeps it valid.
    let bytes = postcard::to_allocvec(&good).unwrap();
    let back: CommitCertificate = postcard::from_bytes(&bytes).unwrap();
    back.verify(&keys, 1).unwrap();
}

#[test]
fn deterministic_outputs() {
    let run = || {
        let mut c = Cluster::new(4);
        for r in Cluster::reqs("d", 9) {
            c.submit(1, &r).unwrap();
        }
        c.run_ticks(3);
        c.history
            .iter()
            .map(|e| (e.from, e.to, e.bytes.to_vec()))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

/// Batches are cut by bytes as well as by count: with a small message budget, large requests
/// are split over several pre-prepares that each fit (the harness refuses larger messages), and
/// a request that could fit in no batch is refused up front.
#[test]
fn batches_are_cut_by_bytes_and_oversized_requests_refused() {
    let mut c = Cluster::with(4, |cfg| {
        cfg.max_batch = 64;
        cfg.max_message_bytes = 16 * 1024;
    });
    let budget = c.cfgs[0].batch_budget();
    let reqs: Vec<Vec<u8>> = (0..12u8)
        .map(|i| {
            let mut r = vec![i; 3000];
            r[0] = b'a';
            r
        })
        .collect();
    for r in &reqs {
        c.submit(0, r).unwrap();
    }
    c.run_ticks(3);
    let got = c.committed(1);
    let total: usize = got.iter().map(|b| b.2.len()).sum();
    assert_eq!(total, 12, "every request executed");
    assert!(got.len() >= 3, "12 × 3 KB cannot fit one 16 KiB batch");
    for b in &got {
        let bytes: usize = b.2.iter().map(|r| request_cost(r.len())).sum();
        assert!(bytes <= budget, "batch of {bytes} bytes over {budget}");
    }
    c.check_agreement();
    let huge = vec![b'h'; budget];
    assert_eq!(c.submit(0, &huge), Err(SubmitError::TooLarge(budget)));
    assert_eq!(c.submit(1, &huge), Err(SubmitError::TooLarge(budget)));
}

/// An idle primary orders a request when asked after the round of inputs, not at the next
/// tick; one with a batch in flight keeps gathering requests (until a tick or a full batch).
#[test]
fn an_idle_primary_cuts_at_once_and_a_busy_one_gathers() {
    let mut c = Cluster::new(4);
    c.submit(0, b"first").unwrap();
    c.r(0).propose_if_idle();
    c.pump(0);
    c.run();
    for id in 0..4 {
        assert_eq!(c.committed(id).len(), 1, "replica {id}");
    }
    // Busy: "second" is pre-prepared but its PRE-PREPARE is not delivered yet.
    c.submit(0, b"second").unwrap();
    c.r(0).propose_if_idle();
    c.pump(0);
    c.submit(0, b"third").unwrap();
    c.submit(0, b"fourth").unwrap();
    c.r(0).propose_if_idle();
    c.pump(0);
    assert_eq!(c.r(0).status().queued_requests, 2);
    c.run();
    c.run_ticks(1);
    for id in 0..4 {
        let got: Vec<Vec<Vec<u8>>> = c.committed(id).iter().map(|b| b.2.clone()).collect();
        assert_eq!(
            got,
            vec![
                vec![b"first".to_vec()],
                vec![b"second".to_vec()],
                vec![b"third".to_vec(), b"fourth".to_vec()]
            ],
            "replica {id}"
        );
    }
    c.check_agreement();
}
