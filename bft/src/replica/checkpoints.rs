//! Checkpoints (PBFT §4.3): signing and collecting CHECKPOINTs, installing a stable checkpoint
//! and garbage-collecting below it; and state transfer (TOCS §5.3.2): fetching committed
//! batches with their commit certificates when this replica falls behind, and serving them.

use crate::checkpoint::StableCheckpoint;
use crate::config::NodeId;
use crate::kind::MessageKind;
use crate::message::{
    decode_payload, encode, Checkpoint, CommittedBatch, Payload, SignedMessage, StateRequest,
    StateResponse, StatusReport,
};
use crate::persist::{self, seq_key};
use crate::reject::RejectReason;
use crate::state_transfer::FetchState;
use crate::timer::Timer;
use crate::{App, PersistOp, ServeRequest};

use super::{Hash, Replica};

impl<A: App> Replica<A> {
    /// The node executed up to `seq` (a multiple of K) and its state digest is `state_digest`:
    /// sign and multicast CHECKPOINT (§4.3).
    pub fn executed(&mut self, seq: u64, state_digest: [u8; 32]) {
        if seq == 0
            || seq % self.cfg.checkpoint_interval != 0
            || seq <= self.h()
            || seq > self.last_executed
            || self.checkpoints.has(seq, self.me)
        {
            return;
        }
        let m = self.sign(&Payload::Checkpoint(Checkpoint {
            seq,
            state_digest,
            replica: self.me,
        }));
        self.put_seq(persist::CK, seq, m.to_wire());
        self.broadcast(MessageKind::Checkpoint, &m);
        self.record_checkpoint(seq, self.me, state_digest, m);
    }

    pub(super) fn on_checkpoint(
        &mut self,
        m: SignedMessage,
        c: Checkpoint,
    ) -> Result<(), RejectReason> {
        self.record_checkpoint(c.seq, c.replica, c.state_digest, m);
        Ok(())
    }

    fn record_checkpoint(&mut self, seq: u64, from: NodeId, d: Hash, m: SignedMessage) {
        let per_sender =
            2 * (self.cfg.watermark_window / self.cfg.checkpoint_interval) as usize + 4;
        self.checkpoints.add(seq, from, d, m, per_sender);
        if let Some((digest, proof)) = self.checkpoints.stable_at(seq, self.q) {
            self.install_stable(StableCheckpoint { seq, digest, proof });
        }
    }

    /// A checkpoint with a 2f+1 proof: move the low watermark, garbage-collect the log and
    /// records below it (§4.3), and fetch state if we have not executed that far (TOCS §5.3.2).
    pub(super) fn install_stable(&mut self, cp: StableCheckpoint) {
        if cp.seq <= self.h() {
            return;
        }
        let seq = cp.seq;
        self.put(persist::STABLE.to_vec(), encode(&cp));
        self.stable = cp;
        let peers = self.checkpoint_signers();
        self.log = self.log.split_off(&(seq + 1));
        self.prepared = self.prepared.split_off(&(seq + 1));
        self.bodies.retain(|_, (s, _)| *s > seq);
        self.missing.retain(|_, mb| mb.seq > seq);
        self.checkpoints.gc(seq);
        let keep = self.persisted_seqs.split_off(&(seq + 1));
        let old = std::mem::replace(&mut self.persisted_seqs, keep);
        for s in old {
            for p in persist::SEQ_PREFIXES {
                self.out
                    .persist
                    .push(PersistOp::Delete { key: seq_key(p, s) });
            }
        }
        if self.next_seq <= seq {
            self.next_seq = seq + 1;
        }
        if self.last_executed < seq {
            self.start_fetch(seq, peers, 0);
        }
        self.replay_future();
        self.propose(false);
    }

    /// The replicas whose CHECKPOINTs prove the stable checkpoint (other than us): they have
    /// executed up to it and can serve it.
    pub(super) fn checkpoint_signers(&self) -> Vec<NodeId> {
        let signers: Vec<NodeId> = self
            .stable
            .proof
            .iter()
            .filter_map(|m| decode_payload(&m.payload).ok().map(|p| p.signer()))
            .filter(|id| *id != self.me)
            .collect();
        if signers.is_empty() {
            (0..self.n as NodeId).filter(|p| *p != self.me).collect()
        } else {
            signers
        }
    }

    /// Starts fetching committed batches up to `to_seq` from `peers`. A fetch already under
    /// way only gets the higher target (and the newer checkpoint's signers): its chain of
    /// requests continues from each reply to the new target. A second chain would fetch the
    /// same batches again — a replica reconnecting after a long absence learns of checkpoint
    /// after checkpoint while it catches up, and each one used to start another.
    pub(super) fn start_fetch(&mut self, to_seq: u64, peers: Vec<NodeId>, next_peer: usize) {
        self.drop_finished_fetch();
        if let Some(fs) = &mut self.fetch {
            if to_seq > fs.to_seq {
                fs.to_seq = to_seq;
                if !peers.is_empty() {
                    fs.peers = peers;
                }
            }
            return;
        }
        self.fetch = Some(FetchState {
            to_seq,
            peers,
            next_peer,
            retry: Timer::started(self.cfg.request_timeout_ticks),
        });
        self.send_fetch();
    }

    /// A fetch whose peer has not answered within a request timeout asks the next one; after
    /// three rounds over all of them it gives up (a later checkpoint or stall starts anew).
    pub(super) fn retry_fetch(&mut self) {
        self.drop_finished_fetch();
        if let Some(fs) = &mut self.fetch {
            if fs.retry.tick() {
                self.fetch_from_next_peer();
            }
        }
    }

    /// Moves the fetch on to its next peer with a full timeout, or gives it up after three
    /// rounds over all of them.
    fn fetch_from_next_peer(&mut self) {
        let Some(fs) = &mut self.fetch else { return };
        fs.next_peer += 1;
        fs.retry.start(self.cfg.request_timeout_ticks);
        if fs.next_peer >= 3 * fs.peers.len().max(1) {
            self.fetch = None;
        } else {
            self.send_fetch();
        }
    }

    /// A fetch whose target we executed by other means (the normal case caught up, or another
    /// reply) is over. Left in place it would ask for `from > to` — refused as malformed — and
    /// a later, higher target would only be noted on it, waiting a request timeout per peer
    /// before anything is asked.
    fn drop_finished_fetch(&mut self) {
        if self
            .fetch
            .as_ref()
            .is_some_and(|fs| fs.to_seq <= self.last_executed)
        {
            self.fetch = None;
        }
    }

    fn send_fetch(&mut self) {
        let Some(fs) = &self.fetch else { return };
        if fs.peers.is_empty() {
            return;
        }
        let peer = fs.peers[fs.next_peer % fs.peers.len()];
        let from_seq = self.last_executed + 1;
        let to_seq = fs.to_seq;
        let m = self.sign(&Payload::StateRequest(StateRequest {
            replica: self.me,
            from_seq,
            to_seq,
        }));
        self.send(peer, MessageKind::StateRequest, &m);
    }

    pub(super) fn on_state_request(&mut self, r: StateRequest) -> Result<(), RejectReason> {
        let cap = r.from_seq.saturating_add(4 * self.cfg.watermark_window - 1);
        self.out.serve.push(ServeRequest {
            to: r.replica,
            from_seq: r.from_seq,
            to_seq: r.to_seq.min(self.last_executed).min(cap),
        });
        Ok(())
    }

    /// The node's answer to a `ServeRequest`: committed batches read from its ledger. One
    /// reply carries as many of them, from the first, as fit the message budget (at least one:
    /// every batch was cut to fit with its certificate); the requester asks again from where
    /// the reply ended, so catching up is a sequence of bounded chunks (TOCS §5.3.2 fetches
    /// state in pieces too, partition by partition).
    pub fn send_state(&mut self, to: NodeId, batches: Vec<CommittedBatch>) {
        if to >= self.n as NodeId || to == self.me {
            return;
        }
        let room = self
            .cfg
            .max_message_bytes
            .saturating_sub(crate::config::ENVELOPE_RESERVE);
        let mut used = 0usize;
        let mut chunk = Vec::new();
        for b in batches {
            let size = encode(&b).len();
            if !chunk.is_empty() && used + size > room {
                break;
            }
            used += size;
            chunk.push(b);
        }
        let m = self.sign(&Payload::StateResponse(StateResponse {
            replica: self.me,
            batches: chunk,
        }));
        self.send(to, MessageKind::StateResponse, &m);
    }

    /// Accepts batches that continue our executed prefix and carry a valid commit certificate
    /// whose digest is the app's digest of the requests; emits them like normal commits.
    pub(super) fn on_state_response(&mut self, r: StateResponse) -> Result<(), RejectReason> {
        let mut result = Ok(());
        let before = self.last_executed;
        let from = r.replica;
        for b in r.batches {
            if b.seq <= self.last_executed {
                continue;
            }
            if b.seq != self.last_executed + 1 {
                result = Err(RejectReason::BadCertificate);
                break;
            }
            let digest_ok = matches!(self.batch_digest(&b.requests), Ok(d) if d == b.digest);
            if !digest_ok || b.verify_certificate(&self.cfg.public_keys, self.f).is_err() {
                result = Err(RejectReason::BadCertificate);
                break;
            }
            self.deliver(b);
        }
        if let Some(fs) = &mut self.fetch {
            if self.last_executed >= fs.to_seq {
                self.fetch = None;
            } else if result.is_ok() && self.last_executed > before {
                // Progress: ask for the next chunk, and give its peer a full timeout. A reply
                // that brought nothing new (a late answer to a request we already re-sent
                // elsewhere) asks nothing, so at most one chain of requests runs.
                fs.retry.start(self.cfg.request_timeout_ticks);
                self.send_fetch();
            } else if result.is_err()
                && fs.peers.get(fs.next_peer % fs.peers.len().max(1)) == Some(&from)
            {
                // The peer we are waiting on answered with batches that do not check out (a
                // Byzantine server): ask the next one now rather than after a request timeout.
                self.fetch_from_next_peer();
            }
        }
        self.try_execute();
        result
    }

    /// We lost the commits (or the pre-prepare) for a seq others may have executed, and nothing
    /// else will tell us (no retransmission in the normal case): after a request timeout without
    /// progress, fetch the missing batches with their commit certificates (TOCS §5.3.2 used for
    /// a gap). A slot counts when we accepted its pre-prepare, or when f+1 replicas committed it
    /// — at least one correct replica prepared it, yet its pre-prepare never reached us (say it
    /// came before the NEW-VIEW that let us into the view).
    pub(super) fn detect_stall(&mut self) {
        if self.fetch.is_some() {
            self.stall_ticks = 0;
            return;
        }
        let f = self.f;
        let top = self
            .log
            .range(self.last_executed + 1..)
            .filter(|(_, slot)| slot.pre_prepare.is_some() || slot.commits.len() > f)
            .map(|(s, _)| *s)
            .next_back();
        let Some(top) = top else {
            self.stall_ticks = 0;
            return;
        };
        self.stall_ticks += 1;
        if self.stall_ticks < self.cfg.request_timeout_ticks {
            return;
        }
        self.stall_ticks = 0;
        let peers: Vec<NodeId> = (0..self.n as NodeId).filter(|p| *p != self.me).collect();
        let start = (self.last_executed as usize) % peers.len();
        self.fetch = Some(FetchState {
            to_seq: top,
            peers,
            next_peer: start,
            retry: Timer::started(self.cfg.request_timeout_ticks),
        });
        self.send_fetch();
    }

    /// Every half request timeout: if nothing executed since the last time, multicast our
    /// executed height (TOCS §5.2 status). Nothing else tells a replica that missed the last
    /// commits or checkpoints before the clients fell silent that it is behind; under load no
    /// STATUS is sent, so the normal case keeps its message count.
    pub(super) fn send_status_if_idle(&mut self) {
        if !self.status_timer.is_running() {
            self.status_timer
                .start((self.cfg.request_timeout_ticks / 2).max(1));
        }
        if !self.status_timer.tick() {
            return;
        }
        if self.last_executed == self.executed_at_status {
            let m = self.sign(&Payload::Status(StatusReport {
                replica: self.me,
                executed: self.last_executed,
            }));
            self.broadcast(MessageKind::Status, &m);
        }
        self.executed_at_status = self.last_executed;
    }

    /// A peer claims to have executed beyond us. f+1 such claims include a correct replica's,
    /// so we fetch up to the (f+1)-th highest claim from the replicas that made claims at least
    /// that high; every batch fetched carries its commit certificate, so a false claim costs
    /// at most an unanswered fetch.
    pub(super) fn on_status(&mut self, s: StatusReport) -> Result<(), RejectReason> {
        let claim = self.peer_executed.entry(s.replica).or_insert(0);
        *claim = (*claim).max(s.executed);
        let mut claims: Vec<u64> = self.peer_executed.values().copied().collect();
        claims.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&target) = claims.get(self.f) else {
            return Ok(());
        };
        if target <= self.last_executed {
            return Ok(());
        }
        let peers: Vec<NodeId> = self
            .peer_executed
            .iter()
            .filter(|(_, e)| **e >= target)
            .map(|(p, _)| *p)
            .collect();
        // Start at a different claimant each time we fall behind, as `detect_stall` does, so a
        // Byzantine one is not always asked first.
        let start = (self.last_executed as usize) % peers.len().max(1);
        self.start_fetch(target, peers, start);
        Ok(())
    }
}
