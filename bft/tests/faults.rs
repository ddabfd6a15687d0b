//! Faulty primaries, view changes (PBFT §4.4, §4.5.2), state transfer (TOCS §5.3.2), message
//! validation and crash-restart durability.

mod common;

use common::*;
use faultline_bft::*;
use std::collections::BTreeMap;

fn pre_prepare(view: u64, seq: u64, requests: Vec<Vec<u8>>) -> Vec<u8> {
    let digest = TestApp.batch_digest(&requests).unwrap();
    proposal(view, seq, digest, requests, view % 4)
}

/// A normal-case PRE-PREPARE on the wire: `signer`'s signed header for (view, seq, digest) with
/// `requests` alongside.
fn proposal(view: u64, seq: u64, digest: [u8; 32], requests: Vec<Vec<u8>>, signer: u64) -> Vec<u8> {
    let header = sign_message(
        &Payload::PrePrepare(PrePrepare {
            view,
            seq,
            digest,
            replica: signer,
        }),
        &key(signer),
    );
    sign(
        &Payload::Proposal(Proposal {
            replica: signer,
            pre_prepare: header,
            requests,
        }),
        &key(signer),
    )
}

#[test]
fn equivocating_primary_never_commits_two_values_and_is_replaced() {
    let mut c = Cluster::new(4);
    c.make_byzantine(0);
    // Two different valid pre-prepares for (view 0, seq 1).
    let a = pre_prepare(0, 1, vec![b"A".to_vec()]);
    let b = pre_prepare(0, 1, vec![b"B".to_vec()]);
    c.inject(0, 1, a);
    c.inject(0, 2, b.clone());
    c.inject(0, 3, b);
    for id in 1..4 {
        c.submit(id, b"client-tx").unwrap();
    }
    c.run();
    for id in 1..4 {
        assert!(c.committed(id).is_empty(), "no quorum of commits in view 0");
    }
    c.run_ticks(40);
    for id in 1..4 {
        let st = c.r(id).status();
        assert_eq!(st.view, 1, "replica {id}");
        assert!(!st.in_view_change);
        let got = c.committed(id);
        assert!(got.len() >= 2, "replica {id} committed {got:?}");
        // B was prepared by 2 and 3, so the new view keeps B at seq 1.
        assert_eq!(got[0].2, vec![b"B".to_vec()]);
        assert_eq!(got[1].2, vec![b"client-tx".to_vec()]);
    }
    c.check_agreement();
    // The conflicting pre-prepare was seen by no one twice, but A's prepare clashed at 2 and 3.
    assert!(c.captured.iter().any(|e| e.kind == "view_change"));
}

#[test]
fn prepared_requests_survive_a_view_change_at_the_same_seq() {
    let mut c = Cluster::new(4);
    c.drop_kinds.insert("commit");
    let reqs = Cluster::reqs("keep", 4);
    for r in &reqs {
        c.submit(0, r).unwrap();
    }
    c.run();
    for id in 0..4 {
        assert!(c.committed(id).is_empty());
    }
    let digest = TestApp.batch_digest(&reqs).unwrap();
    c.crash(0);
    c.drop_kinds.clear();
    // The client retries at the backups, which relay to the (dead) primary and time out.
    for id in 1..4 {
        for r in &reqs {
            c.submit(id, r).unwrap();
        }
    }
    c.run_ticks(40);
    for id in 1..4 {
        let st = c.r(id).status();
        assert_eq!(st.view, 1);
        let got = &c.nodes[id as usize].committed;
        assert_eq!(got.len(), 1, "exactly once: the re-proposed batch only");
        assert_eq!(got[0].seq, 1);
        assert_eq!(got[0].digest, digest);
        assert_eq!(got[0].view, 1);
        assert_eq!(got[0].requests, reqs);
        got[0]
            .verify_certificate(&c.cfgs[0].public_keys, 1)
            .unwrap();
        assert_eq!(st.pending_requests, 0);
    }
    c.check_agreement();
}

#[test]
fn view_change_during_view_change_reaches_view_two() {
    let mut c = Cluster::new(4);
    // Replica 1, the primary of view 1, is silent from the start.
    c.crash(1);
    // Requests never reach primary 0, so the backups suspect it.
    c.drop_kinds.insert("request");
    c.submit(2, b"t1").unwrap();
    c.submit(3, b"t1").unwrap();
    c.run_ticks(12);
    assert!(c.r(2).status().in_view_change);
    c.drop_kinds.clear();
    c.run_ticks(200);
    for id in [0, 2, 3] {
        let st = c.r(id).status();
        assert_eq!(st.view, 2, "replica {id}");
        assert!(!st.in_view_change);
        assert_eq!(st.primary, 2);
        assert_eq!(c.committed(id).len(), 1, "replica {id}");
        assert_eq!(c.committed(id)[0].2, vec![b"t1".to_vec()]);
    }
    c.check_agreement();
    // The normal case resumes in view 2 (the client sends to every replica, as ours do).
    for id in [0, 2, 3] {
        c.submit(id, b"t2").unwrap();
    }
    c.run();
    c.run_ticks(2);
    for id in [0, 2, 3] {
        assert_eq!(c.committed(id).len(), 2);
    }
}

#[test]
fn partitioned_replica_catches_up_by_state_transfer() {
    let mut c = Cluster::with(4, |cfg| cfg.max_batch = 1);
    c.partition(3);
    for r in Cluster::reqs("st", 10) {
        c.submit(0, &r).unwrap();
    }
    c.run_ticks(2);
    assert_eq!(c.committed(0).len(), 10);
    assert_eq!(c.r(0).status().stable_checkpoint, 8);
    assert!(c.committed(3).is_empty());
    c.heal();
    for r in Cluster::reqs("more", 2) {
        c.submit(0, &r).unwrap();
    }
    c.run_ticks(3);
    assert!(c.sent.get("state_request").copied().unwrap_or(0) >= 1);
    assert!(c.sent.get("state_response").copied().unwrap_or(0) >= 1);
    assert_eq!(c.committed(3).len(), 12);
    for id in 0..4 {
        assert_eq!(c.committed(id), c.committed(0));
        assert_eq!(c.r(id).status().stable_checkpoint, 12);
    }
    // And it takes part in the normal case afterwards.
    for r in Cluster::reqs("after", 4) {
        c.submit(0, &r).unwrap();
    }
    c.run_ticks(2);
    for id in 0..4 {
        assert_eq!(c.committed(id).len(), 16);
        assert_eq!(c.committed(id), c.committed(0));
    }
    assert_eq!(c.r(3).rejections().get(&RejectReason::BadCertificate), None);
}

#[test]
fn forged_tampered_state_response_is_rejected() {
    let mut c = Cluster::with(4, |cfg| cfg.max_batch = 1);
    c.partition(3);
    for r in Cluster::reqs("st", 8) {
        c.submit(0, &r).unwrap();
    }
    c.run_ticks(1);
    c.heal();
    // Replica 3 learns of the stable checkpoint at 8 from the checkpoint messages...
    let cps: Vec<Env> = c
        .history
        .iter()
        .filter(|e| e.kind == "checkpoint" && e.to == 3)
        .cloned()
        .collect();
    c.queue.clear();
    for e in cps {
        c.deliver(e);
    }
    let req = c
        .queue
        .iter()
        .find(|e| e.kind == "state_request")
        .cloned()
        .unwrap();
    c.queue.clear();
    // ...and a Byzantine peer answers with a batch whose requests do not match the certificate.
    let mut batches = c.nodes[req.to as usize].committed[..8].to_vec();
    batches[0].requests = vec![b"evil".to_vec()];
    let forged = sign(
        &Payload::StateResponse(StateResponse {
            replica: req.to,
            batches,
        }),
        &key(req.to),
    );
    assert_eq!(
        c.r(3).step(req.to, &forged),
        Err(Rejected::new(RejectReason::BadCertificate))
    );
    assert!(c.r(3).ready().committed.is_empty());
    // A retry goes to the next peer, which serves the real batches.
    c.run_ticks(12);
    assert_eq!(c.committed(3), c.committed(0));
}

#[test]
fn bad_messages_are_rejected_and_counted_by_reason() {
    let mut c = Cluster::new(4);
    for r in Cluster::reqs("x", 16) {
        c.submit(0, &r).unwrap();
    }
    c.run();
    assert_eq!(c.r(2).status().stable_checkpoint, 4);
    let prep1 = c
        .history
        .iter()
        .find(|e| e.kind == "prepare" && e.from == 1 && e.to == 2)
        .cloned()
        .unwrap();
    let before = c.r(2).rejections().clone();
    let r2 = c.r(2);
    // Replayed old message: seq 1 is below the low watermark now.
    assert_eq!(
        r2.step(1, &prep1.bytes).unwrap_err().reason,
        RejectReason::Stale
    );
    // Wrong sender: replica 1's message arriving from peer 3.
    assert_eq!(
        r2.step(3, &prep1.bytes).unwrap_err().reason,
        RejectReason::WrongSender
    );
    // Unknown peer.
    assert_eq!(
        r2.step(9, &prep1.bytes).unwrap_err().reason,
        RejectReason::UnknownPeer
    );
    let stranger = sign(
        &Payload::Prepare(Prepare {
            view: 0,
            seq: 6,
            digest: [1; 32],
            replica: 9,
        }),
        &key(9),
    );
    assert_eq!(
        r2.step(1, &stranger).unwrap_err().reason,
        RejectReason::UnknownPeer
    );
    // Forged signature: replica 3's prepare signed with someone else's key.
    let forged = sign(
        &Payload::Prepare(Prepare {
            view: 0,
            seq: 6,
            digest: [1; 32],
            replica: 3,
        }),
        &key(1),
    );
    assert_eq!(
        r2.step(3, &forged).unwrap_err().reason,
        RejectReason::BadSignature
    );
    // Flipped signature bit on a genuine message.
    let mut m = decode_signed(&sign(
        &Payload::Prepare(Prepare {
            view: 0,
            seq: 6,
            digest: [1; 32],
            replica: 3,
        }),
        &key(3),
    ))
    .unwrap();
    m.signature.0[0] ^= 1;
    assert_eq!(
        r2.step(3, &m.to_wire()).unwrap_err().reason,
        RejectReason::BadSignature
    );
    // Out of window: far above the high watermark.
    let far = pre_prepare(0, 4 + 3 * 16, vec![b"far".to_vec()]);
    assert_eq!(
        r2.step(0, &far).unwrap_err().reason,
        RejectReason::OutOfWindow
    );
    // Inflated view.
    let inflated = sign(
        &Payload::Prepare(Prepare {
            view: 1_000,
            seq: 6,
            digest: [1; 32],
            replica: 3,
        }),
        &key(3),
    );
    assert_eq!(
        r2.step(3, &inflated).unwrap_err().reason,
        RejectReason::WrongView
    );
    // Garbage and non-canonical encodings.
    assert_eq!(
        r2.step(3, b"\xff\xff\xff").unwrap_err().reason,
        RejectReason::Malformed
    );
    let mut trailing = decode_signed(&prep1.bytes).unwrap();
    trailing.payload.push(0);
    assert_eq!(
        r2.step(1, &trailing.to_wire()).unwrap_err().reason,
        RejectReason::Malformed
    );
    // Corrupted digest: the batch does not hash to the claimed digest.
    let mut digest = TestApp.batch_digest(&[b"y".to_vec()]).unwrap();
    digest[0] ^= 1;
    let bad = proposal(0, 6, digest, vec![b"y".to_vec()], 0);
    assert_eq!(
        r2.step(0, &bad).unwrap_err().reason,
        RejectReason::BadDigest
    );
    // Pre-prepare not from the primary.
    let notp = sign(
        &Payload::PrePrepare(PrePrepare {
            view: 0,
            seq: 6,
            digest: NULL_DIGEST,
            replica: 1,
        }),
        &key(1),
    );
    assert_eq!(
        r2.step(1, &notp).unwrap_err().reason,
        RejectReason::NotPrimary
    );
    // Invalid client request inside a batch.
    let bad_req = proposal(0, 6, [7; 32], vec![b"bad".to_vec()], 0);
    assert_eq!(
        r2.step(0, &bad_req).unwrap_err().reason,
        RejectReason::InvalidRequest
    );
    let counts = c.r(2).rejections().clone();
    for (reason, n) in [
        (RejectReason::Stale, 1),
        (RejectReason::WrongSender, 1),
        (RejectReason::UnknownPeer, 2),
        (RejectReason::BadSignature, 2),
        (RejectReason::OutOfWindow, 1),
        (RejectReason::WrongView, 1),
        (RejectReason::Malformed, 2),
        (RejectReason::BadDigest, 1),
        (RejectReason::NotPrimary, 1),
        (RejectReason::InvalidRequest, 1),
    ] {
        let delta =
            counts.get(&reason).copied().unwrap_or(0) - before.get(&reason).copied().unwrap_or(0);
        assert_eq!(delta, n, "{reason}: {counts:?}");
    }
    // None of this produced a vote.
    assert!(c.r(2).ready().messages.is_empty());
}

#[test]
fn restarted_replica_never_signs_a_conflicting_prepare_or_commit() {
    let mut c = Cluster::new(4);
    c.drop_kinds.insert("commit");
    let reqs = Cluster::reqs("r", 4);
    for r in &reqs {
        c.submit(0, r).unwrap();
    }
    c.run();
    let digest = TestApp.batch_digest(&reqs).unwrap();
    c.crash(2);
    c.restart(2);
    assert_eq!(c.r(2).status().view, 0);
    // The (Byzantine) primary now sends a different pre-prepare for the same (view, seq).
    let other = pre_prepare(0, 1, vec![b"other".to_vec()]);
    assert_eq!(
        c.r(2).step(0, &other).unwrap_err().reason,
        RejectReason::ConflictingMessage
    );
    // Prepares for the other digest from 1 and 3 do not make it prepare or commit it either.
    let other_digest = TestApp.batch_digest(&[b"other".to_vec()]).unwrap();
    for id in [1u64, 3] {
        let p = sign(
            &Payload::Prepare(Prepare {
                view: 0,
                seq: 1,
                digest: other_digest,
                replica: id,
            }),
            &key(id),
        );
        // Stored (the restart lost the genuine ones), but they cannot prepare the other digest.
        let _ = c.r(2).step(id, &p);
    }
    let out = c.r(2).ready();
    assert!(
        out.messages.is_empty(),
        "restarted replica signed {:?}",
        out.messages
    );
    // Its remembered commit for the original digest still counts: deliver the others' commits.
    c.drop_kinds.clear();
    let commits: Vec<Env> = c
        .history
        .iter()
        .filter(|e| e.kind == "commit" && e.to == 2)
        .cloned()
        .collect();
    for e in commits {
        c.deliver(e);
    }
    let got = &c.nodes[2].committed;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].digest, digest);
    // Every message the restarted replica ever emitted agrees with what it signed before.
    for e in c.history.iter().filter(|e| e.from == 2) {
        match payload(&e.bytes) {
            Payload::Prepare(p) => assert_eq!(p.digest, digest),
            Payload::Commit(p) => assert_eq!(p.digest, digest),
            _ => {}
        }
    }
}

#[test]
fn restarted_replica_keeps_its_view_change() {
    let mut c = Cluster::new(4);
    c.crash(0);
    c.submit(1, b"v").unwrap();
    c.run_ticks(12);
    assert!(c.r(1).status().in_view_change);
    let view = c.r(1).status().view;
    c.crash(1);
    c.restart(1);
    let st = c.r(1).status();
    assert_eq!(st.view, view);
    assert!(st.in_view_change);
    // A normal-case message of the old view is refused.
    let old = pre_prepare(0, 1, vec![b"v".to_vec()]);
    assert_eq!(
        c.r(1).step(0, &old).unwrap_err().reason,
        RejectReason::Stale
    );
}

/// PBFT §4.4 (TOCS §4.1): a backup is waiting for a request from when it receives it until it
/// executes it. Here request R is prepared in view 0, re-issued by the NEW-VIEW of view 1, and
/// then the new primary goes silent. Replica 3 never had R from the client; the client's
/// retransmission finds R already in an accepted pre-prepare. That must still start the request
/// timer: otherwise replica 3 never suspects the primary, replica 2 alone (f VIEW-CHANGEs) cannot
/// pull anyone along and R is never executed: the cluster stalls once a partition heals.
#[test]
fn retransmitted_request_already_pre_prepared_still_starts_the_request_timer() {
    let mut c = Cluster::new(4);
    c.drop_kinds.insert("commit");
    c.submit(0, b"R").unwrap();
    c.run_ticks(1);
    assert!(c.r(3).status().last_executed == 0);
    c.crash(0);
    // Replicas 1 and 2 suspect primary 0; replica 3 joins on their f+1 VIEW-CHANGEs. Their
    // relays of "poke" (§4.1, `relay_pending`) are lost, so replica 3 waits for no request of
    // its own: only the retransmission of R below can start its timer.
    c.drop_kinds.insert("request");
    c.submit(1, b"poke").unwrap();
    c.submit(2, b"poke").unwrap();
    c.run_until(200, |c| (1..4).all(|id| c.active_in(id, 1)));
    for id in 1..4 {
        let st = c.r(id).status();
        assert_eq!((st.view, st.in_view_change), (1, false), "replica {id}");
    }
    assert_eq!(c.r(3).status().pending_requests, 0);
    // The new primary goes silent before anything commits; the client retransmits R to all.
    c.crash(1);
    c.drop_kinds.clear();
    let _ = c.submit(2, b"R");
    let _ = c.submit(3, b"R");
    c.restart(0);
    c.run_ticks(400);
    c.assert_settled_and_executed([0, 2, 3], 2, b"R");
    c.check_agreement();
}

/// §4.5.2 doubles the view-change timeout for every consecutive failed view change. Uncapped, a
/// long stretch of failures (here: every NEW-VIEW lost, as behind a partition) leaves 2^k·T
/// ticks to wait once the network heals — with a silent primary and lost NEW-VIEWs, the timer
/// reached 30·2^11 ticks and the cluster sat idle. With the doublings capped the cluster
/// recovers within a few capped timeouts. Replica 0, back only as the cluster settles into the new view, gets R's
/// pre-prepare before the NEW-VIEW that lets it into that view; the commits it then sees from
/// f+1 replicas make it fetch R with its certificate.
#[test]
fn view_change_backoff_is_capped_so_the_cluster_recovers_after_a_long_fault() {
    let mut c = Cluster::new(4);
    // The default cap: three doublings, 8T.
    assert_eq!(c.cfgs[0].max_view_change_doublings, 3);
    let cap_ticks = c.cfgs[0].view_change_timeout_ticks * 8;
    c.drop_kinds.insert("new_view");
    c.crash(0);
    c.submit(1, b"R").unwrap();
    c.submit(2, b"R").unwrap();
    c.submit(3, b"R").unwrap();
    // Long enough for a dozen consecutive view changes to fail with capped timers (uncapped,
    // the same ticks would cover only about eight).
    c.run_ticks(12 * cap_ticks as usize);
    let view = c.r(1).status().view;
    assert!(view >= 10, "only reached view {view}");
    c.drop_kinds.clear();
    c.restart(0);
    c.run_ticks(4 * cap_ticks as usize);
    c.assert_settled_and_executed(0..4, view, b"R");
    c.check_agreement();
}

/// A primary restarted after installing its view must still hand its NEW-VIEW to a replica that
/// missed it. Otherwise, with one replica silent: the restarted primary of view 2 has forgotten
/// its NEW-VIEW, so replica 3 re-sends its VIEW-CHANGE for view 2 forever, and no quorum is
/// left in either view.
#[test]
fn restarted_primary_still_serves_its_new_view_to_a_replica_that_missed_it() {
    let mut c = Cluster::new(4);
    c.crash(0);
    c.drop_kind_to.insert(("new_view", 3));
    for id in 1..4 {
        c.submit(id, b"R").unwrap();
    }
    c.run_until(200, |c| (1..3).all(|id| c.active_in(id, 1)));
    for id in 1..3 {
        let st = c.r(id).status();
        assert_eq!((st.view, st.in_view_change), (1, false), "replica {id}");
    }
    assert!(c.r(3).status().in_view_change);
    // The new primary crashes and comes back; replica 3 can now hear it.
    c.crash(1);
    c.restart(1);
    c.drop_kind_to.clear();
    c.run_until(10, |c| !c.r(3).status().in_view_change);
    let st = c.r(3).status();
    assert_eq!(
        (st.view, st.in_view_change),
        (1, false),
        "replica 3: {st:?}"
    );
    c.run_ticks(5);
    c.assert_settled_and_executed(1..4, 1, b"R");
    c.check_agreement();
}

/// Any replica in a view hands that view's NEW-VIEW to a replica still asking for it, not only
/// the primary: the primary may have crashed or moved on to the next view change, and in an
/// idle cluster nothing else moves the laggard (no request waits anywhere, so no timer fires
/// and the f+1 rule never triggers). The stall this prevents, with a replica that acknowledges
/// without storing: the primary of view 11 had given up on it, replica 2 restarted still
/// asking for view 11 (with only its own VIEW-CHANGE, so its timer never started), replica 0
/// sat idle in view 11, and the clients' outstanding requests were already executed there.
#[test]
fn backups_relay_the_new_view_to_a_replica_that_missed_it() {
    let mut c = Cluster::new(4);
    // View 0 orders nothing. Replica 3 hears neither the others' VIEW-CHANGEs (so, like a
    // replica restarted from its own records, its view-change timer never starts) nor view 1's
    // NEW-VIEW.
    c.drop_kinds.insert("pre_prepare");
    c.drop_kind_to.insert(("new_view", 3));
    c.drop_kind_to.insert(("view_change", 3));
    for id in 1..4 {
        c.submit(id, b"R").unwrap();
    }
    c.run_until(200, |c| (0..3).all(|id| c.active_in(id, 1)));
    for id in 0..3 {
        assert!(c.active_in(id, 1), "replica {id}: {:?}", c.r(id).status());
    }
    c.drop_kinds.clear();
    c.run_ticks(20);
    for id in 0..3 {
        assert!(c.executed(id, b"R"), "replica {id} never executed R");
    }
    let st = c.r(3).status();
    assert_eq!((st.view, st.in_view_change), (1, true), "replica 3: {st:?}");
    // The primary of view 1 is gone and replica 2 is down; replica 0 restarts (so it relays the
    // NEW-VIEW it persisted) and is the only one left to help.
    c.crash(1);
    c.crash(2);
    c.crash(0);
    c.restart(0);
    c.drop_kind_to.clear();
    let timeout = c.cfgs[0].request_timeout_ticks as usize;
    c.run_until(timeout, |c| c.active_in(3, 1));
    assert!(c.active_in(3, 1), "replica 3: {:?}", c.r(3).status());
    // With replica 3 back in step (and 2 back), a new request gets past the missing primary.
    c.restart(2);
    for id in [0, 2, 3] {
        c.submit(id, b"S").unwrap();
    }
    c.run_ticks(20 * timeout);
    c.assert_settled_and_executed([0, 2, 3], 2, b"S");
    c.check_agreement();
}

/// A replica can fall more than one view behind: here replica 3 is cut off while the others go
/// from view 0 through 1 to 2, so it is still asking for view 1. The primary of view 2 must
/// answer that old VIEW-CHANGE with its NEW-VIEW (2f+1 signed VIEW-CHANGEs prove view 2 is
/// legitimate). Otherwise nothing ever moves replica 3 (nobody else is changing views, so the
/// f+1 rule never fires) and with one more replica gone no quorum is left — with an
/// equivocating replica, correct replicas ended up sitting in views 10, 11 (active) and 12.
#[test]
fn primary_answers_a_view_change_for_an_older_view_with_its_new_view() {
    let mut c = Cluster::new(4);
    c.partition(3);
    // No pre-prepare arrives anywhere, so the backups holding R give up on view 0 and then on
    // view 1; replica 3, cut off, gives up on view 0 alone.
    c.drop_kinds.insert("pre_prepare");
    for id in 1..4 {
        c.submit(id, b"R").unwrap();
    }
    c.run_until(400, |c| (0..3).all(|id| c.active_in(id, 2)));
    for id in 0..3 {
        assert!(c.active_in(id, 2), "replica {id}: {:?}", c.r(id).status());
    }
    let st = c.r(3).status();
    assert_eq!((st.view, st.in_view_change), (1, true), "replica 3: {st:?}");
    // Replica 3 comes back. It re-sends its VIEW-CHANGE for view 1 every T/2 ticks; the primary
    // of view 2 must answer it before anything else could move replica 3 (the next view change,
    // once the others' request timers fire, would pull it along by the f+1 rule).
    c.heal();
    c.drop_kinds.clear();
    let timeout = c.cfgs[0].request_timeout_ticks as usize;
    c.run_until(timeout, |c| c.active_in(3, 2));
    assert!(c.active_in(3, 2), "replica 3: {:?}", c.r(3).status());
    c.run_ticks(200);
    c.assert_settled_and_executed(0..4, 2, b"R");
    c.check_agreement();
}

/// A primary that cannot get what it ordered executed gives up on its own view like a backup
/// would (§4.4's timer, applied to the primary's own requests). Without this, correct replicas
/// scattered over different views, two of them primaries of their own (each waiting for backups
/// that have moved on), never meet again — as happens with a replica that acknowledges batches
/// without storing them.
#[test]
fn a_primary_that_cannot_order_gives_up_on_its_view() {
    let mut c = Cluster::new(4);
    c.partition(0);
    c.submit(0, b"R").unwrap();
    let timeout = c.cfgs[0].request_timeout_ticks as usize;
    c.run_ticks(timeout + 1);
    let st = c.r(0).status();
    assert_eq!((st.view, st.in_view_change), (1, true), "replica 0: {st:?}");
    // Back in touch, the client's retransmission to the others gets R ordered in a new view.
    c.heal();
    for id in 1..4 {
        let _ = c.submit(id, b"R");
    }
    c.run_ticks(20 * timeout);
    c.assert_settled_and_executed(0..4, 1, b"R");
    c.check_agreement();
}

/// Issue 10: after load with large batches a view change must still fit the message budget.
/// A VIEW-CHANGE carries one prepared certificate per prepared seq above the stable
/// checkpoint; with the batches inside (the old format) twelve 30 KB batches made it ~360 KB,
/// far over this cluster's 64 KiB budget, and the harness (like the network) refuses such
/// messages. Certificates now carry digests: the view change completes, and replica 3, which
/// never saw the pre-prepares, fetches the bodies of the re-issued batches by digest before it
/// prepares and executes them.
#[test]
fn view_change_after_large_batches_fits_the_budget_and_fetches_missing_bodies() {
    let mut c = Cluster::with(4, |cfg| {
        cfg.max_batch = 64;
        cfg.max_message_bytes = 64 * 1024;
    });
    c.drop_kinds.insert("commit");
    c.drop_kind_to.insert(("pre_prepare", 3));
    let reqs: Vec<Vec<u8>> = (0..12u32)
        .map(|i| {
            let mut r = format!("big-{i}-").into_bytes();
            r.resize(30_000, b'x');
            r
        })
        .collect();
    for r in &reqs {
        c.submit(0, r).unwrap();
    }
    c.run_ticks(1);
    for id in 0..4 {
        assert!(c.committed(id).is_empty(), "commits are dropped");
    }
    let bodies = c.history.iter().filter(|e| e.kind == "pre_prepare").count();
    assert!(
        bodies >= 3 * 6,
        "the 30 KB requests travel in several batches"
    );
    c.crash(0);
    c.drop_kinds.clear();
    c.drop_kind_to.clear();
    c.submit(1, b"poke").unwrap();
    c.submit(2, b"poke2").unwrap();
    c.run_until(400, |c| {
        (1..4).all(|id| c.active_in(id, 1) && c.executed(id, b"poke"))
    });
    for id in 1..4 {
        for r in &reqs {
            assert!(
                c.executed(id, r),
                "replica {id} executed every prepared request"
            );
        }
    }
    c.assert_settled_and_executed(1..4, 1, b"poke");
    c.check_agreement();
    let biggest_vc = c
        .history
        .iter()
        .filter(|e| e.kind == "view_change" || e.kind == "new_view")
        .map(|e| e.bytes.len())
        .max()
        .unwrap();
    assert!(biggest_vc < 16 * 1024, "view change of {biggest_vc} bytes");
    assert!(
        c.history
            .iter()
            .any(|e| e.kind == "batch_request" && e.from == 3),
        "replica 3 fetched the bodies it lacked"
    );
}

/// Issue 10: a replica several checkpoints of big batches behind catches up by state transfer
/// in chunks that each fit the budget (one reply used to carry every missing batch), asking
/// again from where each reply ended.
#[test]
fn far_behind_replica_catches_up_in_bounded_chunks() {
    let mut c = Cluster::with(4, |cfg| {
        cfg.max_batch = 64;
        cfg.max_message_bytes = 64 * 1024;
    });
    let big = |tag: &str, i: u32| {
        let mut r = format!("{tag}-{i}-").into_bytes();
        r.resize(20_000, b'y');
        r
    };
    c.partition(3);
    for i in 0..60 {
        c.submit(0, &big("far", i)).unwrap();
        c.run_ticks(1);
    }
    assert!(
        c.committed(0).len() >= 16,
        "several checkpoints of big batches"
    );
    assert!(c.committed(3).is_empty());
    c.heal();
    for i in 0..12 {
        c.submit(0, &big("after", i)).unwrap();
        c.run_ticks(1);
    }
    let target = big("after", 11);
    c.run_until(300, |c| c.executed(3, &target));
    for i in 0..60 {
        assert!(c.executed(3, &big("far", i)), "replica 3 has far-{i}");
    }
    assert!(c.executed(3, &target));
    c.check_agreement();
    let replies = c
        .history
        .iter()
        .filter(|e| e.kind == "state_response" && e.to == 3)
        .count();
    assert!(replies >= 3, "served in several chunks, got {replies}");
}

/// §4.1: the client's request reached one backup only (the node API hands it to the replica the
/// client talked to) and the primary is dead. That backup alone suspects the primary — f
/// VIEW-CHANGEs, not the f+1 that pull the others along (§4.5.2) — unless, like the paper's
/// client after its timeout, it makes the request known to every replica: then the others wait
/// for it too, time out, and the view change completes and executes it. (Found over real
/// processes: after kill -9 of the primary, writes to one survivor were never acknowledged.)
#[test]
fn a_request_known_to_one_backup_only_still_gets_a_dead_primary_replaced() {
    let mut c = Cluster::new(4);
    c.crash(0);
    c.submit(1, b"only-at-1").unwrap();
    c.run_until(400, |c| {
        (1..4).all(|id| c.active_in(id, 1) && c.executed(id, b"only-at-1"))
    });
    for id in 1..4 {
        let st = c.r(id).status();
        assert_eq!((st.view, st.in_view_change), (1, false), "replica {id}");
        assert!(c.executed(id, b"only-at-1"), "replica {id}");
        assert_eq!(st.pending_requests, 0, "replica {id}");
    }
    c.check_agreement();
}

/// Requests handed to the next primary after a view change keep the order the client sent them
/// in. Ordered by digest instead, a client pipelining seq 1..n through one replica had most of
/// them refused by the ledger as stale (seq not above the last applied one) once they were
/// re-ordered — found over real processes after kill -9 of the primary.
#[test]
fn requests_waiting_at_a_backup_reach_the_new_primary_in_arrival_order() {
    let mut c = Cluster::new(4);
    c.crash(0);
    let reqs = Cluster::reqs("ordered", 12);
    for r in &reqs {
        c.submit(1, r).unwrap();
    }
    c.run_until(400, |c| {
        (1..4).all(|id| c.active_in(id, 1) && reqs.iter().all(|r| c.executed(id, r)))
    });
    for id in 1..4 {
        let executed: Vec<Vec<u8>> = c.nodes[id as usize]
            .committed
            .iter()
            .flat_map(|b| b.requests.iter().cloned())
            .collect();
        assert_eq!(executed, reqs, "replica {id}");
    }
    c.check_agreement();
}

/// A replica that learns of a new view from its NEW-VIEW alone, without having run a view
/// change itself (it missed the VIEW-CHANGEs), still hands on what it queued or ordered as
/// primary of the old view (§4.4: requests are not lost with the view). Here the old primary
/// holds a request that only it received — what the node's API does, handing each client
/// request to one replica — and the others have moved to view 1 without it. Before, it kept
/// the request queued as a backup (never proposed, and every retransmission answered as a
/// duplicate) or, once proposed in the old view, forgot it.
#[test]
fn an_old_primary_that_jumps_to_a_new_view_hands_its_requests_to_the_new_primary() {
    let mut c = Cluster::new(4);
    c.partition(0);
    for id in 1..4 {
        c.submit(id, b"R").unwrap();
    }
    c.run_until(400, |c| (1..4).all(|id| c.active_in(id, 1)));
    for id in 1..4 {
        assert!(c.active_in(id, 1), "replica {id}: {:?}", c.r(id).status());
    }
    let new_view = c
        .history
        .iter()
        .find(|e| e.kind == "new_view" && e.from == 1)
        .map(|e| e.bytes.to_vec())
        .expect("the primary of view 1 sent its NEW-VIEW");
    // Replica 0, still primary of view 0 to itself, takes a request only it knows of...
    c.submit(0, b"only-at-0").unwrap();
    c.run();
    assert_eq!(c.r(0).status().view, 0);
    // ...and then hears of view 1 from its NEW-VIEW, before its own timer suspects anyone.
    c.heal();
    c.inject(1, 0, new_view);
    c.run();
    let st = c.r(0).status();
    assert_eq!(
        (st.view, st.in_view_change),
        (1, false),
        "replica 0: {st:?}"
    );
    let timeout = c.cfgs[0].request_timeout_ticks as usize;
    c.run_until(4 * timeout, |c| {
        (0..4).all(|id| c.executed(id, b"only-at-0"))
    });
    c.assert_settled_and_executed(0..4, 1, b"only-at-0");
    c.check_agreement();
}

/// A lagging replica keeps one chain of state requests: a new stable checkpoint seen while it
/// fetches raises the target of the running fetch instead of starting a second chain, and a
/// reply that brings nothing new does not ask again. Before, every checkpoint learnt during a
/// catch-up started another chain, and each re-fetched the same batches: over real processes
/// a replica 37 blocks behind received 317 replies, 68 MB for 7.7 MB of blocks.
#[test]
fn a_lagging_replica_fetches_each_batch_once_however_many_checkpoints_it_sees() {
    let mut c = Cluster::with(4, |cfg| {
        cfg.max_batch = 64;
        cfg.max_message_bytes = 64 * 1024;
    });
    let big = |tag: &str, i: u32| {
        let mut r = format!("{tag}-{i}-").into_bytes();
        r.resize(20_000, b'y');
        r
    };
    // Replica 3 misses the first half; of the second, what is sent to it waits (as in the
    // real transport's per-peer queue) and arrives at once when the link is back: checkpoint
    // after checkpoint, while it fetches the first half.
    c.partition(3);
    for i in 0..30 {
        c.submit(0, &big("far", i)).unwrap();
        c.run_ticks(1);
    }
    c.heal();
    c.byzantine.insert(3);
    for i in 30..60 {
        c.submit(0, &big("far", i)).unwrap();
        c.run_ticks(1);
    }
    c.byzantine.remove(&3);
    for e in std::mem::take(&mut c.captured) {
        c.queue.push_back(e);
    }
    for i in 0..12 {
        c.submit(0, &big("after", i)).unwrap();
        c.run_ticks(1);
    }
    let target = big("after", 11);
    c.run_until(300, |c| c.executed(3, &target));
    assert!(c.executed(3, &target));
    c.check_agreement();
    let mut served: BTreeMap<u64, usize> = BTreeMap::new();
    for e in c
        .history
        .iter()
        .filter(|e| e.kind == "state_response" && e.to == 3)
    {
        let Payload::StateResponse(r) = payload(&e.bytes) else {
            panic!("not a state response");
        };
        for b in r.batches {
            *served.entry(b.seq).or_default() += 1;
        }
    }
    assert!(
        served.len() >= 16,
        "caught up by state transfer: {served:?}"
    );
    let again: Vec<(u64, usize)> = served.into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(again.is_empty(), "batches served more than once: {again:?}");
}

/// A replica cut off while the last batches commit, after which the clients fall silent: no
/// later pre-prepare, commit or checkpoint will ever tell it that it is behind. Its idle
/// peers' STATUS does (TOCS §5.2), and it fetches the batches with their certificates. The
/// real network does this to a replica killed or stopped at the end of a nemesis run.
#[test]
fn a_replica_that_missed_the_last_commits_catches_up_from_idle_peers_status() {
    let mut c = Cluster::new(4);
    c.partition(3);
    // Fewer than a checkpoint interval (4): no CHECKPOINT will say anything either.
    for r in Cluster::reqs("last", 3) {
        c.submit(0, &r).unwrap();
    }
    c.run_ticks(1);
    let executed = c.committed(0).iter().map(|b| b.0).max().unwrap();
    assert!(executed < 4, "no checkpoint: executed {executed}");
    assert_eq!(c.committed(1), c.committed(0));
    assert_eq!(c.committed(2), c.committed(0));
    assert!(c.committed(3).is_empty());
    c.heal();
    c.run_until(40, |c| c.committed(3).len() == c.committed(0).len());
    assert_eq!(c.committed(3), c.committed(0), "replica 3 caught up");
    assert!(c.sent.get("status").copied().unwrap_or(0) >= 1);
    assert!(c.sent.get("state_request").copied().unwrap_or(0) >= 1);
    // No view change was needed: the primary did nothing wrong.
    for id in 0..4 {
        assert_eq!(c.r(id).status().view, 0, "replica {id}");
    }
    // Once everyone is level, STATUS costs no state transfer.
    let fetches = c.sent.get("state_request").copied().unwrap_or(0);
    c.run_ticks(50);
    assert_eq!(c.sent.get("state_request").copied().unwrap_or(0), fetches);
}

/// f false claims of progress are not enough to make a replica fetch: it needs f+1 STATUS
/// messages claiming at least a height before it asks for it (one of them is correct).
#[test]
fn a_replica_fetches_only_what_f_plus_one_peers_claim_to_have_executed() {
    let mut c = Cluster::new(4);
    c.make_byzantine(1);
    c.make_byzantine(2);
    let status = |from: u64, executed: u64| {
        sign(
            &Payload::Status(StatusReport {
                replica: from,
                executed,
            }),
            &key(from),
        )
    };
    c.inject(1, 3, status(1, 100));
    c.run();
    assert_eq!(c.sent.get("state_request").copied().unwrap_or(0), 0);
    // A second claim, of a lower height: the (f+1)-th highest claim is 7.
    c.inject(2, 3, status(2, 7));
    c.run();
    let asks: Vec<StateRequest> = c
        .captured
        .iter()
        .filter(|e| e.kind == "state_request")
        .map(|e| match payload(&e.bytes) {
            Payload::StateRequest(r) => r,
            other => panic!("not a state request: {other:?}"),
        })
        .collect();
    assert_eq!(asks.len(), 1, "{asks:?}");
    assert_eq!((asks[0].from_seq, asks[0].to_seq), (1, 7));
}
