//! Normal-case agreement (PBFT §4.2): accepting the primary's pre-prepare, PREPARE and COMMIT
//! quorums per slot, and handing committed batches to the node in sequence order.

use crate::crypto::sha256;
use crate::kind::MessageKind;
use crate::log::Slot;
use crate::message::{
    decode_payload, encode, verify_cached, Commit, CommitCertificate, CommittedBatch, Payload,
    PrePrepare, Prepare, PreparedProof, Proposal, SignedMessage,
};
use crate::persist;
use crate::reject::RejectReason;
use crate::view_change::PreparedCert;
use crate::App;

use super::Replica;

impl<A: App> Replica<A> {
    /// The normal-case PRE-PREPARE: the primary's signed header with the batch alongside.
    pub(super) fn on_proposal(&mut self, p: Proposal) -> Result<(), RejectReason> {
        let Ok(Payload::PrePrepare(pp)) = decode_payload(&p.pre_prepare.payload) else {
            return Err(RejectReason::Malformed);
        };
        if !verify_cached(
            &mut self.cache,
            &self.cfg.public_keys,
            &[(&p.pre_prepare, pp.replica)],
        ) {
            return Err(RejectReason::BadSignature);
        }
        self.on_pre_prepare(p.pre_prepare, pp, Some(p.requests))
    }

    /// §4.2: a backup accepts a pre-prepare for (v, n) if it is in view v, the signature is the
    /// primary's, n is within the watermarks, it has not accepted a different pre-prepare for
    /// (v, n), and the batch is valid with the claimed digest. A header whose batch we do not
    /// have (`body` None and not in the body store) is held in its slot — it still rules out a
    /// conflicting header for (v, n) — and the body is fetched; the PREPARE waits for it.
    pub(super) fn on_pre_prepare(
        &mut self,
        m: SignedMessage,
        pp: PrePrepare,
        body: Option<Vec<Vec<u8>>>,
    ) -> Result<(), RejectReason> {
        if pp.replica != self.cfg.primary(self.view) {
            return Err(RejectReason::NotPrimary);
        }
        let seq = pp.seq;
        let digest = pp.digest;
        if let Some(d) = self.log.get(&seq).and_then(|s| s.digest()) {
            if d != digest {
                return Err(RejectReason::ConflictingMessage);
            }
            if self.has_body(&digest) {
                return Ok(());
            }
        }
        if let Some(requests) = body {
            match self.batch_digest(&requests) {
                Ok(d) if d == digest => {}
                Ok(_) => return Err(RejectReason::BadDigest),
                Err(_) => return Err(RejectReason::InvalidRequest),
            }
            self.store_body(seq, digest, requests);
        }
        let view = self.view;
        let slot = self.log.entry(seq).or_insert_with(|| Slot::new(view));
        if slot.pre_prepare.is_none() {
            slot.pre_prepare = Some((m, pp));
        }
        if self.has_body(&digest) {
            self.accept_pre_prepare(seq);
        } else {
            self.need_body(seq, digest);
        }
        Ok(())
    }

    /// The pre-prepare at `seq` has its body: a backup that has not prepared it yet persists
    /// the header and multicasts its PREPARE (§4.2); a re-issued batch's requests count as in
    /// flight.
    pub(super) fn accept_pre_prepare(&mut self, seq: u64) {
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        let Some((m, pp)) = slot.pre_prepare.clone() else {
            return;
        };
        let Some(requests) = self.body_of(&pp.digest) else {
            return;
        };
        if slot.reissued && seq > self.last_executed {
            for r in requests {
                self.requests.order(sha256(&[&r]), r);
            }
        }
        let view = self.view;
        let needs_prepare = !self.is_primary()
            && !slot.prepares.contains_key(&self.me)
            && pp.view == view
            && !self.in_view_change;
        if needs_prepare {
            self.put_seq(persist::PP, seq, m.to_wire());
            let prep = self.sign(&Payload::Prepare(Prepare {
                view,
                seq,
                digest: pp.digest,
                replica: self.me,
            }));
            self.put_seq(persist::PR, seq, prep.to_wire());
            self.broadcast(MessageKind::Prepare, &prep);
            let me = self.me;
            if let Some(slot) = self.log.get_mut(&seq) {
                slot.prepares.insert(me, (pp.digest, prep));
            }
        }
        self.check_slot(seq);
    }

    pub(super) fn on_prepare(&mut self, m: SignedMessage, p: Prepare) -> Result<(), RejectReason> {
        if p.replica == self.cfg.primary(self.view) {
            return Err(RejectReason::WrongSender);
        }
        let view = self.view;
        let slot = self.log.entry(p.seq).or_insert_with(|| Slot::new(view));
        match slot.prepares.get(&p.replica) {
            Some((d, _)) if *d != p.digest => return Err(RejectReason::ConflictingMessage),
            Some(_) => return Ok(()),
            None => {
                slot.prepares.insert(p.replica, (p.digest, m));
            }
        }
        self.check_slot(p.seq);
        Ok(())
    }

    pub(super) fn on_commit(&mut self, m: SignedMessage, c: Commit) -> Result<(), RejectReason> {
        let view = self.view;
        let slot = self.log.entry(c.seq).or_insert_with(|| Slot::new(view));
        match slot.commits.get(&c.replica) {
            Some((d, _)) if *d != c.digest => return Err(RejectReason::ConflictingMessage),
            Some(_) => return Ok(()),
            None => {
                slot.commits.insert(c.replica, (c.digest, m.signature));
            }
        }
        self.check_slot(c.seq);
        Ok(())
    }

    /// §4.2: prepared = pre-prepare + 2f matching prepares from distinct backups → multicast
    /// COMMIT; committed-local = prepared + 2f+1 matching commits → execute in order.
    pub(super) fn check_slot(&mut self, seq: u64) {
        let primary = self.cfg.primary(self.view);
        let q = self.q;
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        let Some((pp_msg, pp)) = slot.pre_prepare.clone() else {
            return;
        };
        let digest = pp.digest;
        // No PREPARE quorum is acted on, nor anything executed, before the body is here.
        if !self.has_body(&digest) {
            return;
        }
        if !slot.prepared {
            let prepares: Vec<SignedMessage> = slot
                .matching_prepares(&digest, primary)
                .into_iter()
                .take(q - 1)
                .cloned()
                .collect();
            if prepares.len() + 1 < q {
                return;
            }
            let proof = PreparedProof {
                pre_prepare: pp_msg,
                prepares,
            };
            self.put_seq(persist::PC, seq, encode(&proof));
            self.prepared.insert(
                seq,
                PreparedCert {
                    view: pp.view,
                    digest,
                    proof,
                },
            );
            let cm = self.sign(&Payload::Commit(Commit {
                view: self.view,
                seq,
                digest,
                replica: self.me,
            }));
            self.put_seq(persist::CM, seq, cm.to_wire());
            self.broadcast(MessageKind::Commit, &cm);
            let me = self.me;
            if let Some(slot) = self.log.get_mut(&seq) {
                slot.prepared = true;
                slot.commits.insert(me, (digest, cm.signature));
            }
        }
        let Some(slot) = self.log.get_mut(&seq) else {
            return;
        };
        if !slot.committed && slot.prepared && slot.matching_commits(&digest).len() >= q {
            slot.committed = true;
            self.try_execute();
        }
    }

    /// Hands committed batches to the node strictly in sequence order (§4.2 "execute in order").
    pub(super) fn try_execute(&mut self) {
        loop {
            let seq = self.last_executed + 1;
            let Some(slot) = self.log.get(&seq) else {
                return;
            };
            if !slot.committed {
                return;
            }
            let Some((_, pp)) = &slot.pre_prepare else {
                return;
            };
            let Some(requests) = self.body_of(&pp.digest) else {
                return;
            };
            let commits: Vec<_> = slot
                .matching_commits(&pp.digest)
                .into_iter()
                .take(self.q)
                .collect();
            let batch = CommittedBatch {
                seq,
                view: slot.view,
                requests,
                digest: pp.digest,
                certificate: CommitCertificate {
                    view: slot.view,
                    seq,
                    digest: pp.digest,
                    commits,
                },
            };
            self.deliver(batch);
        }
    }

    pub(super) fn deliver(&mut self, batch: CommittedBatch) {
        self.last_executed = batch.seq;
        self.stall_ticks = 0;
        self.put(persist::EXEC.to_vec(), encode(&self.last_executed));
        for r in &batch.requests {
            self.requests.executed(sha256(&[r]));
        }
        if !batch.requests.is_empty() {
            self.vc_consecutive = 0;
        }
        // §4.4: stop the timer when no request is waiting, restart it when some executed while
        // others still wait.
        if !self.in_view_change {
            if self.waiting_for_requests() {
                self.request_timer.start(self.cfg.request_timeout_ticks);
            } else {
                self.request_timer.stop();
            }
        }
        self.out.committed.push(batch);
    }
}
