//! View changes (PBFT §4.4, §4.5.2): suspecting the primary, VIEW-CHANGE and NEW-VIEW, entering
//! the new view, and helping replicas that missed the NEW-VIEW.

use std::collections::BTreeSet;

use crate::config::NodeId;
use crate::kind::MessageKind;
use crate::log::Slot;
use crate::message::{
    decode_payload, verify_cached, NewView, Payload, PrePrepare, PreparedProof, Request,
    SignedMessage, ViewChange,
};
use crate::persist;
use crate::reject::RejectReason;
use crate::view_change::{compute_plan, validate_view_change, NewViewPlan, VcEntry};
use crate::App;

use super::{Hash, Replica};

impl<A: App> Replica<A> {
    /// Re-broadcast the view change twice per base timeout, so that after the network settles
    /// a primary that already sent NEW-VIEW re-sends it before our view-change timer expires.
    pub(super) fn vc_resend_interval(&self) -> u32 {
        (self.cfg.view_change_timeout_ticks / 2).max(1)
    }

    /// A replica still asking for the view we are in, or an older one, missed its NEW-VIEW:
    /// send it the NEW-VIEW that installed our view (self-certifying, so any replica may re-send
    /// it, and doing so is always safe). For an older view this is the only thing that moves the
    /// laggard: nobody else is changing views, so it never sees the f+1 VIEW-CHANGEs that would
    /// make it join (§4.5.2). Backups relay it too: the primary may itself have moved on to a
    /// view change, leaving the laggard with no one to ask — say in an idle cluster whose
    /// primary gave up on the view while a restarted replica still asks for it.
    pub(super) fn help_lagging_view_change(&mut self, p: &Payload, m: &SignedMessage) {
        let Payload::ViewChange(vc) = p else { return };
        if vc.new_view > self.view || self.in_view_change {
            return;
        }
        let Some(nv) = self.last_new_view.clone() else {
            return;
        };
        let interval = u64::from(self.vc_resend_interval() / 2).max(1);
        if let Some(at) = self.new_view_resent_at.get(&vc.replica) {
            if self.ticks < at.saturating_add(interval) {
                return;
            }
        }
        if verify_cached(&mut self.cache, &self.cfg.public_keys, &[(m, vc.replica)]) {
            self.new_view_resent_at.insert(vc.replica, self.ticks);
            self.send(vc.replica, MessageKind::NewView, &nv);
        }
    }

    /// §4.4: move to view `v`, stop normal-case processing and multicast VIEW-CHANGE with the
    /// stable checkpoint proof and the prepared certificates above it.
    pub(super) fn start_view_change(&mut self, v: u64) {
        if v < self.view || (v == self.view && self.in_view_change) {
            return;
        }
        self.view = v;
        self.in_view_change = true;
        self.vc_consecutive = self.vc_consecutive.saturating_add(1);
        self.vc_timer.stop();
        self.vc_resend.start(self.vc_resend_interval());
        self.request_timer.stop();
        self.log.clear();
        // Requests we queued or proposed as primary are not lost with the view: they wait
        // here and are handed to the next primary (or re-queued if that is us), the proposed
        // ones first, so they keep the order we received them in.
        self.requests.hand_back();
        self.persist_view();
        let h = self.h();
        let prepared: Vec<PreparedProof> = self
            .prepared
            .range(h + 1..)
            .map(|(_, c)| c.proof.clone())
            .collect();
        let vc = ViewChange {
            new_view: v,
            replica: self.me,
            stable_seq: self.stable.seq,
            stable_digest: self.stable.digest,
            checkpoint_proof: self.stable.proof.clone(),
            prepared,
        };
        let m = self.sign(&Payload::ViewChange(vc.clone()));
        self.put(persist::VC.to_vec(), m.to_wire());
        self.broadcast(MessageKind::ViewChange, &m);
        let certs = self
            .prepared
            .range(h + 1..)
            .map(|(s, c)| (*s, c.clone()))
            .collect();
        self.view_changes
            .insert(self.me, VcEntry { msg: m, vc, certs });
        self.after_view_change_update();
    }

    pub(super) fn on_view_change(
        &mut self,
        m: SignedMessage,
        vc: ViewChange,
    ) -> Result<(), RejectReason> {
        let from = vc.replica;
        let entry = validate_view_change(&self.cfg, &mut self.cache, m, vc)?;
        self.view_changes.insert(from, entry);
        self.after_view_change_update();
        Ok(())
    }

    fn after_view_change_update(&mut self) {
        // §4.5.2: f+1 view changes for views above ours prove at least one correct replica
        // wants to move: join the smallest such view without waiting for our timer.
        let higher: Vec<u64> = self
            .view_changes
            .iter()
            .filter(|(id, e)| **id != self.me && e.vc.new_view > self.view)
            .map(|(_, e)| e.vc.new_view)
            .collect();
        if higher.len() > self.f {
            if let Some(v) = higher.iter().min().copied() {
                self.start_view_change(v);
                return;
            }
        }
        if !self.in_view_change {
            return;
        }
        // §4.5.2: the timer starts once 2f+1 replicas have given up on the old view, and doubles
        // for every consecutive view change (up to `max_view_change_doublings`). A replica
        // asking for a higher view has given up too, so it counts; otherwise replicas split
        // between v and v+1 could wait for each other forever.
        let given_up = self
            .view_changes
            .values()
            .filter(|e| e.vc.new_view >= self.view)
            .count();
        if given_up >= self.q && !self.vc_timer.is_running() {
            let shift = self
                .vc_consecutive
                .saturating_sub(1)
                .min(self.cfg.max_view_change_doublings)
                .min(16);
            self.vc_timer.start(
                self.cfg
                    .view_change_timeout_ticks
                    .saturating_mul(1 << shift),
            );
        }
        let count = self
            .view_changes
            .values()
            .filter(|e| e.vc.new_view == self.view)
            .count();
        if count >= self.q && self.is_primary() && self.new_view_sent != Some(self.view) {
            self.send_new_view();
        }
    }

    /// §4.4: the new primary picks 2f+1 view changes, computes O and multicasts NEW-VIEW.
    fn send_new_view(&mut self) {
        let v = self.view;
        let entries: Vec<VcEntry> = self
            .view_changes
            .values()
            .filter(|e| e.vc.new_view == v)
            .take(self.q)
            .cloned()
            .collect();
        let plan = compute_plan(&entries);
        let mut pps = Vec::new();
        for (seq, digest) in &plan.reissue {
            let pp = PrePrepare {
                view: v,
                seq: *seq,
                digest: *digest,
                replica: self.me,
            };
            let m = self.sign(&Payload::PrePrepare(pp.clone()));
            pps.push((m, pp));
        }
        let nv = NewView {
            view: v,
            replica: self.me,
            view_changes: entries.iter().map(|e| e.msg.clone()).collect(),
            pre_prepares: pps.iter().map(|(m, _)| m.clone()).collect(),
        };
        let m = self.sign(&Payload::NewView(nv));
        self.new_view_sent = Some(v);
        // enter_view persists the NEW-VIEW and its pre-prepares before this message can leave.
        self.broadcast(MessageKind::NewView, &m);
        self.enter_view(v, plan, pps, m);
    }

    /// §4.4: a backup accepts NEW-VIEW if it is signed by the new primary, carries 2f+1 valid
    /// view changes for that view, and O equals what the backup computes from them.
    pub(super) fn on_new_view(
        &mut self,
        msg: SignedMessage,
        nv: NewView,
    ) -> Result<(), RejectReason> {
        let v = nv.view;
        let n = self.n as NodeId;
        let mut entries: Vec<VcEntry> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut outer: Vec<(SignedMessage, ViewChange)> = Vec::new();
        for m in &nv.view_changes {
            let Ok(Payload::ViewChange(vc)) = decode_payload(&m.payload) else {
                return Err(RejectReason::BadNewView);
            };
            if vc.new_view != v || vc.replica >= n || !seen.insert(vc.replica) {
                return Err(RejectReason::BadNewView);
            }
            outer.push((m.clone(), vc));
        }
        if outer.len() < self.q {
            return Err(RejectReason::BadNewView);
        }
        let sigs: Vec<(&SignedMessage, NodeId)> =
            outer.iter().map(|(m, vc)| (m, vc.replica)).collect();
        if !verify_cached(&mut self.cache, &self.cfg.public_keys, &sigs) {
            return Err(RejectReason::BadSignature);
        }
        for (m, vc) in outer {
            match self.view_changes.get(&vc.replica) {
                Some(e) if e.msg == m => entries.push(e.clone()),
                _ => entries.push(validate_view_change(&self.cfg, &mut self.cache, m, vc)?),
            }
        }
        let plan = compute_plan(&entries);
        if nv.pre_prepares.len() != plan.reissue.len() {
            return Err(RejectReason::BadNewView);
        }
        let primary = self.cfg.primary(v);
        let mut pps = Vec::new();
        for (m, (seq, digest)) in nv.pre_prepares.iter().zip(&plan.reissue) {
            let Ok(Payload::PrePrepare(pp)) = decode_payload(&m.payload) else {
                return Err(RejectReason::BadNewView);
            };
            if pp.view != v || pp.replica != primary || pp.seq != *seq || pp.digest != *digest {
                return Err(RejectReason::BadNewView);
            }
            pps.push((m.clone(), pp));
        }
        let sigs: Vec<(&SignedMessage, NodeId)> = pps.iter().map(|(m, _)| (m, primary)).collect();
        if !verify_cached(&mut self.cache, &self.cfg.public_keys, &sigs) {
            return Err(RejectReason::BadSignature);
        }
        self.enter_view(v, plan, pps, msg);
        Ok(())
    }

    /// Installs view `v` from a NEW-VIEW: adopt min-s, rebuild the log from O (backups prepare
    /// each re-issued pre-prepare), hand queued/pending requests to the new primary, and replay
    /// buffered messages of this view. The NEW-VIEW is kept (and persisted) to hand on to
    /// replicas that missed it.
    fn enter_view(
        &mut self,
        v: u64,
        plan: NewViewPlan,
        pps: Vec<(SignedMessage, PrePrepare)>,
        new_view: SignedMessage,
    ) {
        self.put(persist::NV.to_vec(), new_view.to_wire());
        self.last_new_view = Some(new_view);
        self.view = v;
        self.in_view_change = false;
        self.vc_timer.stop();
        self.view_changes.retain(|_, e| e.vc.new_view > v);
        self.persist_view();
        if plan.stable.seq > self.h() {
            self.install_stable(plan.stable.clone());
        }
        self.log.clear();
        let primary = self.is_primary();
        // The old view's pre-prepares are gone. What we ordered or queued in it waits again,
        // to be handed to the new primary below (§4.4) — a no-op if our own view change did
        // so already, but a replica that jumps here on a NEW-VIEW alone (it missed the
        // VIEW-CHANGEs) would otherwise keep a backup's dead queue or forget what it ordered.
        self.requests.hand_back();
        for (m, pp) in pps {
            if pp.seq <= self.h() {
                continue;
            }
            let seq = pp.seq;
            if primary {
                // We signed it: durable before the NEW-VIEW leaves, so we never re-issue a
                // different batch for (v, n) after a crash.
                self.put_seq(persist::PP, seq, m.to_wire());
            }
            let mut slot = Slot::new(v);
            slot.pre_prepare = Some((m, pp));
            slot.reissued = true;
            self.log.insert(seq, slot);
        }
        // O names batches by digest. Where we hold the body (we prepared it, or it came in a
        // proposal) we accept at once: backups PREPARE, and (A re-issued batch we already
        // executed is not in flight: nothing will execute it again) `accept_pre_prepare`
        // counts only unexecuted requests as in flight. Bodies we lack are fetched first.
        let headers: Vec<(u64, Hash)> = self
            .log
            .iter()
            .filter_map(|(s, slot)| slot.digest().map(|d| (*s, d)))
            .collect();
        for (seq, digest) in headers {
            if self.has_body(&digest) {
                self.accept_pre_prepare(seq);
            } else {
                self.need_body(seq, digest);
            }
        }
        self.next_seq = plan.max_seq.max(self.h()).max(self.last_executed) + 1;
        if primary {
            self.requests.queue_waiting();
            self.request_timer.stop();
        } else {
            let p = self.cfg.primary(v);
            let waiting: Vec<Vec<u8>> = self.requests.waiting_requests().cloned().collect();
            for request in waiting {
                let m = self.sign(&Payload::Request(Request {
                    replica: self.me,
                    request,
                }));
                self.send(p, MessageKind::Request, &m);
            }
            if self.requests.has_waiting() {
                self.request_timer.start(self.cfg.request_timeout_ticks);
            } else {
                self.request_timer.stop();
            }
        }
        self.replay_future();
        let seqs: Vec<u64> = self.log.keys().copied().collect();
        for s in seqs {
            self.check_slot(s);
        }
        self.propose(false);
        if primary && self.waiting_for_requests() {
            self.arm_request_timer();
        }
    }

    pub(super) fn replay_future(&mut self) {
        let buffered = std::mem::take(&mut self.future);
        for (from, bytes) in buffered {
            let _ = self.step(from, &bytes);
        }
    }
}
