//! Client requests at this replica: admission, the primary's batching (PBFT §4.2), a backup's
//! relays to the primary (§4.1) and the request timer that suspects a primary which does not
//! order them (§4.4). Where each request stands is kept in the `RequestBook`.

use crate::config::request_cost;
use crate::crypto::sha256;
use crate::kind::MessageKind;
use crate::log::Slot;
use crate::message::{Payload, PrePrepare, Proposal, Request};
use crate::persist;
use crate::reject::RejectReason;
use crate::request_book::Stage;
use crate::{App, SubmitError};

use super::{Replica, MAX_REQUEST_BYTES};

impl<A: App> Replica<A> {
    /// A client request received at this replica. The primary queues it for the next batch; a
    /// backup keeps it, relays it to the primary if the primary has not ordered it soon
    /// (`relay_overdue`) and starts its request timer (PBFT §4.1, §4.4).
    pub fn submit(&mut self, request: Vec<u8>) -> Result<(), SubmitError> {
        self.accept(request, false)
    }

    /// A request that only this replica holds — a read marker it issued (TOCS §5.1.3) — rather
    /// than one a client sent to every replica: as [`Replica::submit`], except that a backup
    /// relays it to the primary at once, since nobody else will hand it over.
    pub fn submit_own(&mut self, request: Vec<u8>) -> Result<(), SubmitError> {
        self.accept(request, true)
    }

    fn accept(&mut self, request: Vec<u8>, relay_now: bool) -> Result<(), SubmitError> {
        if request.len() > MAX_REQUEST_BYTES
            || request_cost(request.len()) > self.cfg.batch_budget()
        {
            return Err(SubmitError::TooLarge(request.len()));
        }
        if self.app.request_digest(&request).is_none() {
            return Err(SubmitError::Invalid);
        }
        let h = sha256(&[&request]);
        match self.requests.stage(&h) {
            None => {}
            Some(Stage::Ordered) if !self.is_primary() && !self.in_view_change => {
                // §4.4: a backup is "waiting for a request" from the moment it receives it
                // until it executes it. A request already in an accepted pre-prepare is not
                // executed yet: a faulty primary can pre-prepare it and never let it commit, so
                // the client's retransmission must still start the request timer (and never be
                // a silent no-op).
                self.requests.wait_for(h, request);
                self.request_timer
                    .start_if_stopped(self.cfg.request_timeout_ticks);
                return Err(SubmitError::Duplicate);
            }
            Some(_) => return Err(SubmitError::Duplicate),
        }
        if self.is_primary() && !self.in_view_change {
            self.requests.enqueue(h, request);
            self.propose(false);
            self.arm_request_timer();
        } else {
            if !self.in_view_change {
                if relay_now {
                    let m = self.sign(&Payload::Request(Request {
                        replica: self.me,
                        request: request.clone(),
                    }));
                    let p = self.cfg.primary(self.view);
                    self.send(p, MessageKind::Request, &m);
                } else {
                    self.requests.relay_later(self.ticks, h);
                }
                self.request_timer
                    .start_if_stopped(self.cfg.request_timeout_ticks);
            }
            self.requests.wait_for(h, request);
        }
        Ok(())
    }

    /// How many requests from the head of the queue make the next batch: at most `max_batch`
    /// and at most `batch_budget` bytes, so the pre-prepare carrying it (and later the
    /// state-transfer reply carrying it with its certificate) fits the message budget. At least
    /// one: every queued request fits a batch on its own (checked when it was accepted).
    fn next_batch_len(&self) -> usize {
        let budget = self.cfg.batch_budget();
        let mut bytes = 0usize;
        let mut take = 0usize;
        for r in self.requests.queued_requests().take(self.cfg.max_batch) {
            let cost = request_cost(r.len());
            if take > 0 && bytes + cost > budget {
                break;
            }
            bytes += cost;
            take += 1;
        }
        take
    }

    /// The primary cuts batches: when `max_batch` requests or a batch budget of bytes are
    /// queued, or any on a tick, while the next sequence number is inside the watermark window
    /// (§4.2 pipelining).
    pub(super) fn propose(&mut self, force: bool) {
        while !self.in_view_change
            && self.is_primary()
            && self.requests.queued_len() > 0
            && self.next_seq <= self.high()
            && (force
                || self.requests.queued_len() >= self.cfg.max_batch
                || self.requests.queued_bytes() >= self.cfg.batch_budget())
        {
            let take = self.next_batch_len();
            let batch = self.requests.take_batch(take);
            let requests: Vec<Vec<u8>> = batch.iter().map(|(_, r)| r.clone()).collect();
            let digest = match self.batch_digest(&requests) {
                Ok(d) => d,
                Err(_) => {
                    // A request valid on its own made the batch invalid (e.g. the app's view
                    // of a client changed): drop the batch rather than propose garbage.
                    self.reject(RejectReason::InvalidRequest);
                    continue;
                }
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let pp = PrePrepare {
                view: self.view,
                seq,
                digest,
                replica: self.me,
            };
            let m = self.sign(&Payload::PrePrepare(pp.clone()));
            self.put_seq(persist::PP, seq, m.to_wire());
            self.store_body(seq, digest, requests.clone());
            let proposal = self.sign(&Payload::Proposal(Proposal {
                replica: self.me,
                pre_prepare: m.clone(),
                requests,
            }));
            self.broadcast(MessageKind::Proposal, &proposal);
            for (h, r) in batch {
                self.requests.order(h, r);
            }
            let mut slot = Slot::new(self.view);
            slot.pre_prepare = Some((m, pp));
            self.log.insert(seq, slot);
            self.check_slot(seq);
        }
    }

    /// Whether a request this replica knows of is waiting to execute. §4.4 has backups wait on
    /// the requests they received; we let the primary wait on the ones it ordered or queued
    /// too. Otherwise a primary whose backups have all moved to other views sits in its view
    /// forever, since only backups suspect: a replica that acknowledges batches without storing
    /// them can leave each correct replica in a different view, two of them primaries waiting
    /// for backups that have moved on. Giving up on one's own view is always safe.
    pub(super) fn waiting_for_requests(&self) -> bool {
        self.requests.has_waiting() || (self.is_primary() && self.requests.has_queued_or_ordered())
    }

    /// §4.1: a client whose request is not answered in time broadcasts it to all replicas,
    /// so that every correct backup waits for it and suspects a primary that does not order
    /// it. The node's API is the client's proxy and hands each request to one replica only:
    /// without this, a primary that crashed after its last batch is suspected by just the
    /// replicas that clients happened to reach — possibly one, short of the f+1 VIEW-CHANGEs
    /// that pull the others into the new view (§4.5.2) — and that replica waits in its view
    /// change forever. So when our request timer expires we send the requests we wait for to
    /// every other replica (at most one batch budget of them: one is enough to start a
    /// timer, and the rest reach the new primary with the NEW-VIEW hand-over).
    pub(super) fn relay_pending(&mut self) {
        let budget = self.cfg.batch_budget();
        let mut used = 0usize;
        let mut relay = Vec::new();
        for r in self.requests.waiting_requests() {
            let cost = request_cost(r.len());
            if !relay.is_empty() && used + cost > budget {
                break;
            }
            used += cost;
            relay.push(r.clone());
        }
        for request in relay {
            let m = self.sign(&Payload::Request(Request {
                replica: self.me,
                request,
            }));
            self.broadcast(MessageKind::Request, &m);
        }
    }

    /// §4.1: a backup relays a client's request to the primary. Our clients (the workload, the
    /// `client` command, the simulator's clients) send every request to every replica, the
    /// primary included, so relaying at once would only make each backup sign, and the primary
    /// verify, one more message per request — most of PBFT's per-request cost. A backup
    /// relays what the primary has not pre-prepared after a quarter of the request timeout
    /// instead: a client that reached only this backup waits that much longer, and one whose
    /// request the primary ignores still gets it relayed well before the timer suspects the
    /// primary (§4.4).
    pub(super) fn relay_overdue(&mut self) {
        let delay = u64::from((self.cfg.request_timeout_ticks / 4).max(1));
        // A view change hands waiting requests to the next primary itself.
        let relaying = !self.in_view_change && !self.is_primary();
        let relay = self.requests.overdue_relays(self.ticks, delay, relaying);
        let p = self.cfg.primary(self.view);
        for request in relay {
            let m = self.sign(&Payload::Request(Request {
                replica: self.me,
                request,
            }));
            self.send(p, MessageKind::Request, &m);
        }
    }

    /// Starts the request timer unless it is already running (§4.4).
    pub(super) fn arm_request_timer(&mut self) {
        if !self.in_view_change {
            self.request_timer
                .start_if_stopped(self.cfg.request_timeout_ticks);
        }
    }

    pub(super) fn on_request(&mut self, r: Request) -> Result<(), RejectReason> {
        if !self.is_primary() || self.in_view_change {
            // §4.1: a request that reaches a backup is the client's broadcast after its
            // timeout (here relayed by the replica the client talked to, see
            // `relay_pending`): the backup relays it to the primary and waits for it like one
            // it received itself (§4.4), so it too suspects a primary that never orders it.
            // The request is client-signed (checked in `submit`), so a faulty sender gains
            // nothing it could not get by sending it to the primary.
            return match self.submit(r.request) {
                Ok(()) | Err(SubmitError::Duplicate) => Ok(()),
                Err(SubmitError::TooLarge(_)) => Err(RejectReason::TooLarge),
                Err(SubmitError::Invalid) => Err(RejectReason::InvalidRequest),
            };
        }
        if request_cost(r.request.len()) > self.cfg.batch_budget() {
            return Err(RejectReason::TooLarge);
        }
        if self.app.request_digest(&r.request).is_none() {
            return Err(RejectReason::InvalidRequest);
        }
        let h = sha256(&[&r.request]);
        self.requests.enqueue(h, r.request);
        self.propose(false);
        if self.waiting_for_requests() {
            self.arm_request_timer();
        }
        Ok(())
    }
}
