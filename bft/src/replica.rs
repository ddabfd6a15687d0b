//! The PBFT replica state machine (Castro & Liskov OSDI'99 §4, TOCS'02 §4–5).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::SigningKey;

use crate::certificate::NULL_DIGEST;
use crate::checkpoint::{CheckpointVotes, StableCheckpoint};
use crate::config::{request_cost, Config, ConfigError, NodeId};
use crate::crypto::{sha256, VerifyCache};
use crate::log::Slot;
use crate::message::{
    decode_payload, decode_signed, encode, sign_message, verify_cached, Batch, BatchRequest,
    Checkpoint, Commit, CommitCertificate, CommittedBatch, MessageKind, NewView, Payload,
    PrePrepare, Prepare, PreparedProof, Proposal, Request, SignedMessage, StateRequest,
    StateResponse, ViewChange,
};
use crate::persist::{self, seq_key, ViewState};
use crate::reject::RejectReason;
use crate::request_book::RequestBook;
use crate::state_transfer::{Fetch, FetchState};
use crate::timer::Timer;
use crate::view_change::{compute_plan, validate_view_change, NewViewPlan, PreparedCert, VcEntry};
use crate::{
    App, InvalidBatch, Outgoing, PersistOp, Ready, Rejected, RestoreError, ServeRequest, Status,
    SubmitError,
};

/// Largest client request accepted by `submit`.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// How many executed request hashes the primary remembers for de-duplication.
const RECENT_EXECUTED: usize = 1 << 16;
/// Verified-signature cache size.
const VERIFY_CACHE: usize = 1 << 16;
/// Messages of views up to this far ahead are buffered rather than rejected.
const FUTURE_VIEWS: u64 = 4;

type Hash = [u8; 32];

/// A batch body we wait for (see `Replica::missing`).
#[derive(Clone, Debug)]
struct MissingBody {
    /// Highest seq whose pre-prepare names it (bodies are garbage-collected with it).
    seq: u64,
    next_peer: usize,
    ticks_left: u32,
}

/// One PBFT replica. See the crate docs for the input/output contract.
pub struct Replica<A: App> {
    cfg: Config,
    key: SigningKey,
    app: A,
    me: NodeId,
    n: usize,
    f: usize,
    q: usize,

    view: u64,
    in_view_change: bool,
    vc_consecutive: u32,
    vc_timer: Timer,
    new_view_sent: Option<u64>,
    /// The NEW-VIEW that installed our current view (ours as its primary, or the one we
    /// accepted), re-sent to replicas that missed it.
    last_new_view: Option<SignedMessage>,
    /// Ticks since start, and when we last re-sent that NEW-VIEW to each replica: at most once
    /// per half VIEW-CHANGE re-send interval (and never twice in one tick), so a Byzantine
    /// replica cannot turn its small stale VIEW-CHANGEs into a stream of large NEW-VIEWs.
    ticks: u64,
    new_view_resent_at: BTreeMap<NodeId, u64>,
    /// Ticks until our VIEW-CHANGE is re-broadcast (lost view changes would otherwise stall the
    /// protocol; the paper assumes retransmission, §4.5.2).
    vc_resend: u32,
    /// Latest validated VIEW-CHANGE per sender (a correct replica's views only grow).
    view_changes: BTreeMap<NodeId, VcEntry>,

    log: BTreeMap<u64, Slot>,
    next_seq: u64,
    last_executed: u64,
    /// The P set: highest-view prepared certificate per seq above the stable checkpoint.
    prepared: BTreeMap<u64, PreparedCert>,
    /// Batch bodies by digest, with the highest seq that names them: every body a pre-prepare
    /// in the log or a prepared certificate refers to, kept until a stable checkpoint passes
    /// that seq. Headers and certificates carry only digests (see `PrePrepare`).
    bodies: BTreeMap<Hash, (u64, Vec<Vec<u8>>)>,
    /// Bodies named by an accepted pre-prepare header that we do not have: fetched from peers
    /// by digest; the slot neither prepares nor executes until the body is here and checked.
    missing: BTreeMap<Hash, MissingBody>,
    stable: StableCheckpoint,
    checkpoints: CheckpointVotes,

    /// Every client request this replica tracks, and its stage: queued, ordered, waiting or
    /// recently executed.
    requests: RequestBook,
    request_timer: Timer,

    /// Verified messages for a later view / beyond the high watermark, replayed when we get there.
    future: VecDeque<(NodeId, Vec<u8>)>,
    fetch: Option<FetchState>,
    /// Ticks without execution while the log holds pre-prepared seqs above `last_executed`.
    stall_ticks: u32,
    persisted_seqs: BTreeSet<u64>,

    cache: VerifyCache,
    rejections: BTreeMap<RejectReason, u64>,
    out: Ready,
}

impl<A: App> Replica<A> {
    /// A fresh replica in view 0 with the genesis checkpoint.
    pub fn new(config: Config, key: SigningKey, app: A) -> Result<Self, ConfigError> {
        config.validate()?;
        if config.public_keys[config.id as usize] != key.verifying_key() {
            return Err(ConfigError::KeyMismatch);
        }
        let n = config.n();
        let f = config.f();
        let q = config.quorum();
        Ok(Replica {
            me: config.id,
            cfg: config,
            key,
            app,
            n,
            f,
            q,
            view: 0,
            in_view_change: false,
            vc_consecutive: 0,
            vc_timer: Timer::default(),
            new_view_sent: None,
            last_new_view: None,
            ticks: 0,
            new_view_resent_at: BTreeMap::new(),
            vc_resend: 0,
            view_changes: BTreeMap::new(),
            log: BTreeMap::new(),
            next_seq: 1,
            last_executed: 0,
            prepared: BTreeMap::new(),
            bodies: BTreeMap::new(),
            missing: BTreeMap::new(),
            stable: StableCheckpoint::genesis(),
            checkpoints: CheckpointVotes::default(),
            requests: RequestBook::new(RECENT_EXECUTED),
            request_timer: Timer::default(),
            future: VecDeque::new(),
            fetch: None,
            stall_ticks: 0,
            persisted_seqs: BTreeSet::new(),
            cache: VerifyCache::new(VERIFY_CACHE),
            rejections: BTreeMap::new(),
            out: Ready::default(),
        })
    }

    /// Rebuilds a replica from every record it persisted (as `PersistOp`s applied in order).
    /// The restored replica remembers its view, its accepted pre-prepares and own votes in that
    /// view, its prepared certificates and stable checkpoint, so it never signs a message that
    /// conflicts with one it signed before the crash.
    pub fn restore(
        config: Config,
        key: SigningKey,
        app: A,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, RestoreError> {
        let mut r = Replica::new(config, key, app)?;
        let corrupt = |k: &[u8]| RestoreError::Corrupt(String::from_utf8_lossy(k).into_owned());
        let mut by_seq: BTreeMap<u64, BTreeMap<&'static [u8], Vec<u8>>> = BTreeMap::new();
        let mut own_vc = None;
        let mut saved_nv = None;
        for (k, v) in &records {
            if k.as_slice() == persist::VIEW {
                let vs: ViewState = postcard::from_bytes(v).map_err(|_| corrupt(k))?;
                r.view = vs.view;
                r.in_view_change = vs.in_view_change;
                r.vc_consecutive = vs.vc_consecutive;
            } else if k.as_slice() == persist::EXEC {
                r.last_executed = postcard::from_bytes(v).map_err(|_| corrupt(k))?;
            } else if k.as_slice() == persist::STABLE {
                r.stable = postcard::from_bytes(v).map_err(|_| corrupt(k))?;
            } else if k.as_slice() == persist::VC {
                own_vc = Some(v.clone());
            } else if k.as_slice() == persist::NV {
                saved_nv = Some(v.clone());
            } else if let Some((prefix, seq)) = persist::parse_seq_key(k) {
                by_seq.entry(seq).or_default().insert(prefix, v.clone());
            }
        }
        let decode_msg = |k: &[u8], v: &[u8]| -> Result<(SignedMessage, Payload), RestoreError> {
            let m: SignedMessage = postcard::from_bytes(v).map_err(|_| corrupt(k))?;
            let p = decode_payload(&m.payload).map_err(|_| corrupt(k))?;
            Ok((m, p))
        };
        let h = r.stable.seq;
        for (seq, recs) in by_seq {
            r.persisted_seqs.insert(seq);
            if seq <= h {
                continue;
            }
            if let Some(v) = recs.get(persist::BD) {
                let (digest, requests): (Hash, Vec<Vec<u8>>) =
                    postcard::from_bytes(v).map_err(|_| corrupt(persist::BD))?;
                r.bodies.insert(digest, (seq, requests));
            }
            if let Some(v) = recs.get(persist::PC) {
                let proof: PreparedProof =
                    postcard::from_bytes(v).map_err(|_| corrupt(persist::PC))?;
                let p =
                    decode_payload(&proof.pre_prepare.payload).map_err(|_| corrupt(persist::PC))?;
                if let Payload::PrePrepare(pp) = p {
                    r.prepared.insert(
                        seq,
                        PreparedCert {
                            view: pp.view,
                            digest: pp.digest,
                            proof,
                        },
                    );
                }
            }
            if r.in_view_change {
                continue;
            }
            let Some(v) = recs.get(persist::PP) else {
                continue;
            };
            let (m, p) = decode_msg(persist::PP, v)?;
            let Payload::PrePrepare(pp) = p else {
                return Err(corrupt(persist::PP));
            };
            if pp.view != r.view {
                continue;
            }
            let mut slot = Slot::new(r.view);
            let digest = pp.digest;
            slot.pre_prepare = Some((m, pp));
            if let Some(v) = recs.get(persist::PR) {
                let (m, p) = decode_msg(persist::PR, v)?;
                if let Payload::Prepare(x) = p {
                    if x.view == r.view && x.digest == digest {
                        slot.prepares.insert(r.me, (digest, m));
                    }
                }
            }
            if let Some(v) = recs.get(persist::CM) {
                let (m, p) = decode_msg(persist::CM, v)?;
                if let Payload::Commit(x) = p {
                    if x.view == r.view && x.digest == digest {
                        slot.commits.insert(r.me, (digest, m.signature));
                        slot.prepared = true;
                    }
                }
            }
            r.log.insert(seq, slot);
        }
        if let Some(v) = own_vc {
            let (m, p) = decode_msg(persist::VC, &v)?;
            if let Payload::ViewChange(vc) = p {
                if vc.new_view == r.view {
                    let mut certs = BTreeMap::new();
                    for proof in &vc.prepared {
                        if let Ok(Payload::PrePrepare(pp)) =
                            decode_payload(&proof.pre_prepare.payload)
                        {
                            certs.insert(
                                pp.seq,
                                PreparedCert {
                                    view: pp.view,
                                    digest: pp.digest,
                                    proof: proof.clone(),
                                },
                            );
                        }
                    }
                    r.view_changes.insert(r.me, VcEntry { msg: m, vc, certs });
                }
            }
        }
        // A replica that installed its view keeps serving the NEW-VIEW to replicas that missed
        // it (`help_lagging_view_change`); without it they could wait for it forever.
        if let Some(v) = saved_nv {
            let (m, p) = decode_msg(persist::NV, &v)?;
            if let Payload::NewView(nv) = p {
                if nv.view == r.view && !r.in_view_change {
                    if r.is_primary() {
                        r.new_view_sent = Some(nv.view);
                    }
                    r.last_new_view = Some(m);
                }
            }
        }
        let top = r.log.keys().next_back().copied().unwrap_or(0);
        r.next_seq = top.max(h).max(r.last_executed) + 1;
        let headers: Vec<(u64, Hash)> = r
            .log
            .iter()
            .filter_map(|(s, slot)| slot.digest().map(|d| (*s, d)))
            .collect();
        for (seq, d) in headers {
            r.need_body(seq, d);
        }
        // A replica that crashed in the middle of a state transfer resumes it: the batches it
        // stored are executed (`last_executed`), the rest is fetched from the checkpoint's
        // signers (TOCS §5.3.2).
        if r.last_executed < r.stable.seq {
            r.start_fetch(r.stable.seq, r.checkpoint_signers(), 0);
        }
        Ok(r)
    }

    // ------------------------------------------------------------------ accessors

    /// Messages dropped so far, by reason.
    pub fn rejections(&self) -> &BTreeMap<RejectReason, u64> {
        &self.rejections
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn app(&self) -> &A {
        &self.app
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.me,
            view: self.view,
            primary: self.cfg.primary(self.view),
            in_view_change: self.in_view_change,
            last_executed: self.last_executed,
            low_watermark: self.stable.seq,
            stable_checkpoint: self.stable.seq,
            stable_digest: self.stable.digest,
            queued_requests: self.requests.queued_len(),
            pending_requests: self.requests.waiting_len(),
        }
    }

    /// Drains everything produced since the last call.
    pub fn ready(&mut self) -> Ready {
        std::mem::take(&mut self.out)
    }

    /// At a primary with no batch in flight, cuts a batch from what is queued now instead of at
    /// the next tick: a lone request does not wait up to a tick, and under load requests still
    /// gather into batches while earlier ones are agreed on (the PBFT library batches the same
    /// way). Meant to be called once after a round of inputs, so that a client's batch handed
    /// over as several `submit`s is still cut as one.
    pub fn propose_if_idle(&mut self) {
        if self.next_seq <= self.last_executed.saturating_add(1) {
            self.propose(true);
        }
    }

    fn is_primary(&self) -> bool {
        self.cfg.primary(self.view) == self.me
    }

    /// Whether a request this replica knows of is waiting to execute. §4.4 has backups wait on
    /// the requests they received; we let the primary wait on the ones it ordered or queued
    /// too. Otherwise a primary whose backups have all moved to other views (each correct
    /// replica in a different view, two of them primaries: PBFT sim `0=ack-without-store`
    /// seeds 40, 62, …) sits in its view forever, since only backups suspect. Giving up on
    /// one's own view is always safe.
    fn waiting_for_requests(&self) -> bool {
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
    fn relay_pending(&mut self) {
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
    fn relay_overdue(&mut self) {
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
    fn arm_request_timer(&mut self) {
        if !self.in_view_change {
            self.request_timer
                .start_if_stopped(self.cfg.request_timeout_ticks);
        }
    }

    /// Re-broadcast the view change twice per base timeout, so that after the network settles
    /// a primary that already sent NEW-VIEW re-sends it before our view-change timer expires.
    fn vc_resend_interval(&self) -> u32 {
        (self.cfg.view_change_timeout_ticks / 2).max(1)
    }

    fn h(&self) -> u64 {
        self.stable.seq
    }

    fn high(&self) -> u64 {
        self.stable.seq.saturating_add(self.cfg.watermark_window)
    }

    // ------------------------------------------------------------------ output helpers

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.out.persist.push(PersistOp::Put { key, value });
    }

    fn put_seq(&mut self, prefix: &[u8], seq: u64, value: Vec<u8>) {
        self.persisted_seqs.insert(seq);
        self.put(seq_key(prefix, seq), value);
    }

    fn persist_view(&mut self) {
        let vs = ViewState {
            view: self.view,
            in_view_change: self.in_view_change,
            vc_consecutive: self.vc_consecutive,
        };
        self.put(persist::VIEW.to_vec(), encode(&vs));
    }

    /// Signs a payload and remembers it as verified (our own messages come back inside proofs).
    fn sign(&mut self, p: &Payload) -> SignedMessage {
        let m = sign_message(p, &self.key);
        self.cache
            .insert(VerifyCache::key(&m.payload, &m.signature));
        m
    }

    fn send(&mut self, to: NodeId, kind: MessageKind, m: &SignedMessage) {
        let bytes: Arc<[u8]> = m.to_wire().into();
        debug_assert_eq!(MessageKind::of_wire(&bytes), Some(kind));
        self.out.messages.push(Outgoing { to, kind, bytes });
    }

    fn broadcast(&mut self, kind: MessageKind, m: &SignedMessage) {
        let bytes: Arc<[u8]> = m.to_wire().into();
        debug_assert_eq!(MessageKind::of_wire(&bytes), Some(kind));
        for to in 0..self.n as NodeId {
            if to != self.me {
                self.out.messages.push(Outgoing {
                    to,
                    kind,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    fn reject(&mut self, r: RejectReason) {
        *self.rejections.entry(r).or_default() += 1;
    }

    fn batch_digest(&self, requests: &[Vec<u8>]) -> Result<Hash, InvalidBatch> {
        if requests.is_empty() {
            Ok(NULL_DIGEST)
        } else {
            self.app.batch_digest(requests)
        }
    }

    // ------------------------------------------------------------------ client requests

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
        if self.requests.is_ordered(&h)
            && !self.requests.is_waiting(&h)
            && !self.is_primary()
            && !self.in_view_change
        {
            // §4.4: a backup is "waiting for a request" from the moment it receives it until it
            // executes it. A request already in an accepted pre-prepare is not executed yet: a
            // faulty primary can pre-prepare it and never let it commit, so the client's
            // retransmission must still start the request timer (and never be a silent no-op).
            self.requests.wait_for(h, request);
            self.request_timer
                .start_if_stopped(self.cfg.request_timeout_ticks);
            return Err(SubmitError::Duplicate);
        }
        if self.requests.is_known(&h) || self.requests.is_waiting(&h) {
            return Err(SubmitError::Duplicate);
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
    fn propose(&mut self, force: bool) {
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

    // ------------------------------------------------------------------ ticks

    /// Advances logical time: cuts partial batches at the primary and runs the request,
    /// view-change and state-transfer timers.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.propose(true);
        self.relay_overdue();
        if !self.in_view_change {
            if self.request_timer.tick() {
                self.relay_pending();
                // §4.4: the backup suspects the primary of view v and moves to v + 1.
                self.start_view_change(self.view + 1);
            }
        } else if self.vc_resend <= 1 {
            self.vc_resend = self.vc_resend_interval();
            if let Some(m) = self.view_changes.get(&self.me).map(|e| e.msg.clone()) {
                self.broadcast(MessageKind::ViewChange, &m);
            }
        } else {
            self.vc_resend -= 1;
        }
        if self.in_view_change && self.vc_timer.tick() {
            // §4.5.2: the new primary did not deliver a NEW-VIEW in time: try v + 1 with a
            // doubled timeout.
            self.start_view_change(self.view + 1);
        }
        if let Some(fs) = &mut self.fetch {
            if fs.ticks_left <= 1 {
                fs.next_peer += 1;
                fs.ticks_left = self.cfg.request_timeout_ticks;
                if fs.next_peer >= 3 * fs.peers.len().max(1) {
                    self.fetch = None;
                } else {
                    self.send_fetch();
                }
            } else {
                fs.ticks_left -= 1;
            }
        }
        self.retry_missing_bodies();
        self.detect_stall();
    }

    // ------------------------------------------------------------------ batch bodies

    /// Whether the body of `digest` is here (the null batch always is).
    fn has_body(&self, digest: &Hash) -> bool {
        *digest == NULL_DIGEST || self.bodies.contains_key(digest)
    }

    /// The requests of batch `digest`, if we have them.
    fn body_of(&self, digest: &Hash) -> Option<Vec<Vec<u8>>> {
        if *digest == NULL_DIGEST {
            Some(Vec::new())
        } else {
            self.bodies.get(digest).map(|(_, r)| r.clone())
        }
    }

    /// Keeps a checked body (its digest is the app's digest of `requests`) for `seq`, durably,
    /// so it can be executed and served after a restart.
    fn store_body(&mut self, seq: u64, digest: Hash, requests: Vec<Vec<u8>>) {
        if digest == NULL_DIGEST {
            return;
        }
        self.missing.remove(&digest);
        if let Some((s, _)) = self.bodies.get(&digest) {
            if *s >= seq {
                return;
            }
        }
        self.put_seq(persist::BD, seq, encode(&(digest, &requests)));
        self.bodies.insert(digest, (seq, requests));
    }

    /// Registers a body to fetch: a pre-prepare header for `seq` names it and we lack it.
    fn need_body(&mut self, seq: u64, digest: Hash) {
        if self.has_body(&digest) || seq <= self.h() {
            return;
        }
        let e = self.missing.entry(digest).or_insert(MissingBody {
            seq,
            next_peer: seq as usize,
            ticks_left: 1,
        });
        e.seq = e.seq.max(seq);
    }

    /// Asks the next peer for each missing body whose retry period elapsed. Any replica that
    /// prepared the batch has it (at least f+1 correct ones, for a digest in a prepared
    /// certificate), so rotating over all peers finds one.
    fn retry_missing_bodies(&mut self) {
        let peers: Vec<NodeId> = (0..self.n as NodeId).filter(|p| *p != self.me).collect();
        let period = (self.cfg.request_timeout_ticks / 2).max(1);
        let mut asks = Vec::new();
        for (d, mb) in self.missing.iter_mut() {
            if mb.ticks_left <= 1 {
                mb.ticks_left = period;
                let to = peers[mb.next_peer % peers.len()];
                mb.next_peer = mb.next_peer.wrapping_add(1);
                asks.push((to, mb.seq, *d));
            } else {
                mb.ticks_left -= 1;
            }
        }
        for (to, seq, digest) in asks {
            let m = self.sign(&Payload::BatchRequest(BatchRequest {
                replica: self.me,
                seq,
                digest,
            }));
            self.send(to, MessageKind::BatchRequest, &m);
        }
    }

    fn on_batch_request(&mut self, r: BatchRequest) -> Result<(), RejectReason> {
        let Some(requests) = self.body_of(&r.digest) else {
            return Err(RejectReason::CannotServe);
        };
        let m = self.sign(&Payload::Batch(Batch {
            replica: self.me,
            seq: r.seq,
            digest: r.digest,
            requests,
        }));
        self.send(r.replica, MessageKind::Batch, &m);
        Ok(())
    }

    /// A fetched body: usable only if the app's digest of it is the digest we asked for.
    fn on_batch(&mut self, b: Batch) -> Result<(), RejectReason> {
        let Some(mb) = self.missing.get(&b.digest) else {
            return Err(RejectReason::Unsolicited);
        };
        let seq = mb.seq;
        match self.batch_digest(&b.requests) {
            Ok(d) if d == b.digest => {}
            Ok(_) => return Err(RejectReason::BadDigest),
            Err(_) => return Err(RejectReason::InvalidRequest),
        }
        self.store_body(seq, b.digest, b.requests);
        self.body_arrived(b.digest);
        Ok(())
    }

    /// A body named by headers in the log is now here: backups accept those pre-prepares
    /// (§4.2: prepare only once the request is known and matches d), and every such slot may
    /// now prepare, commit and execute.
    fn body_arrived(&mut self, digest: Hash) {
        let seqs: Vec<u64> = self
            .log
            .iter()
            .filter(|(_, slot)| slot.digest() == Some(digest))
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            self.accept_pre_prepare(seq);
        }
    }

    /// The pre-prepare at `seq` has its body: a backup that has not prepared it yet persists
    /// the header and multicasts its PREPARE (§4.2); a re-issued batch's requests count as in
    /// flight.
    fn accept_pre_prepare(&mut self, seq: u64) {
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

    /// We lost the commits (or the pre-prepare) for a seq others may have executed, and nothing
    /// else will tell us (no retransmission in the normal case): after a request timeout without
    /// progress, fetch the missing batches with their commit certificates (TOCS §5.3.2 used for
    /// a gap). A slot counts when we accepted its pre-prepare, or when f+1 replicas committed it
    /// — at least one correct replica prepared it, yet its pre-prepare never reached us (say it
    /// came before the NEW-VIEW that let us into the view).
    fn detect_stall(&mut self) {
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
            ticks_left: self.cfg.request_timeout_ticks,
        });
        self.send_fetch();
    }

    // ------------------------------------------------------------------ receive

    /// Handles one wire message from peer `from`. Every check a peer could fail is a counted
    /// rejection, never a panic: size, decoding (canonical), membership, sender = signer,
    /// view and watermarks, then the signature over the payload bytes as received.
    pub fn step(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), Rejected> {
        match self.step_inner(from, bytes) {
            Ok(()) => Ok(()),
            Err(r) => {
                self.reject(r);
                Err(Rejected::new(r))
            }
        }
    }

    fn step_inner(&mut self, from: NodeId, bytes: &[u8]) -> Result<(), RejectReason> {
        if from >= self.n as NodeId {
            return Err(RejectReason::UnknownPeer);
        }
        let m = decode_signed(bytes).map_err(|r| r.reason)?;
        let p = decode_payload(&m.payload).map_err(|r| r.reason)?;
        let signer = p.signer();
        if signer >= self.n as NodeId {
            return Err(RejectReason::UnknownPeer);
        }
        // A NEW-VIEW is self-certifying (the new primary's signature over 2f+1 signed
        // VIEW-CHANGEs), so any replica may relay it to one that missed it; every other message
        // comes from its signer.
        let relayed = matches!(p, Payload::NewView(_));
        if (signer != from && !relayed) || from == self.me {
            return Err(RejectReason::WrongSender);
        }
        // Cheap protocol checks before the expensive signature check.
        let buffer = match self.precheck(&p) {
            Ok(b) => b,
            Err(r) => {
                self.help_lagging_view_change(&p, &m);
                return Err(r);
            }
        };
        if !verify_cached(&mut self.cache, &self.cfg.public_keys, &[(&m, signer)]) {
            return Err(RejectReason::BadSignature);
        }
        if buffer {
            // Bounded per sender, by count and bytes: a Byzantine replica can fill only its own
            // share, never crowd out the messages of correct replicas.
            let (count, size) = self
                .future
                .iter()
                .filter(|(f, _)| *f == from)
                .fold((0usize, 0usize), |(c, b), (_, m)| (c + 1, b + m.len()));
            let max_count = 2 * self.cfg.watermark_window as usize + 16;
            let max_bytes = 8 * self.cfg.max_message_bytes;
            if count >= max_count || size + bytes.len() > max_bytes {
                return Err(RejectReason::BufferFull);
            }
            self.future.push_back((from, bytes.to_vec()));
            return Ok(());
        }
        match p {
            Payload::Request(r) => self.on_request(r),
            Payload::PrePrepare(pp) => self.on_pre_prepare(m, pp, None),
            Payload::Proposal(p) => self.on_proposal(p),
            Payload::BatchRequest(r) => self.on_batch_request(r),
            Payload::Batch(b) => self.on_batch(b),
            Payload::Prepare(x) => self.on_prepare(m, x),
            Payload::Commit(x) => self.on_commit(m, x),
            Payload::Checkpoint(c) => self.on_checkpoint(m, c),
            Payload::ViewChange(vc) => self.on_view_change(m, vc),
            Payload::NewView(nv) => self.on_new_view(m, nv),
            Payload::StateRequest(r) => self.on_state_request(r),
            Payload::StateResponse(r) => self.on_state_response(r),
        }
    }

    /// Returns Ok(true) if the message is for a later view (or just beyond the high watermark)
    /// and should be buffered after its signature is checked.
    fn precheck(&self, p: &Payload) -> Result<bool, RejectReason> {
        let normal = |view: u64, seq: u64| -> Result<bool, RejectReason> {
            if view < self.view || seq <= self.h() {
                return Err(RejectReason::Stale);
            }
            if view > self.view.saturating_add(FUTURE_VIEWS) {
                return Err(RejectReason::WrongView);
            }
            if seq > self.high().saturating_add(self.cfg.watermark_window) {
                return Err(RejectReason::OutOfWindow);
            }
            // PBFT §4.2: only h < n ≤ H is accepted; slightly ahead is kept for when the
            // window moves (another replica's checkpoint may have become stable first).
            Ok(view > self.view || self.in_view_change || seq > self.high())
        };
        // Only messages that could be valid in their view are kept for it: a pre-prepare from
        // that view's primary, a prepare from one of its backups (§4.2).
        match p {
            Payload::PrePrepare(x) if x.replica != self.cfg.primary(x.view) => {
                Err(RejectReason::NotPrimary)
            }
            Payload::PrePrepare(x) => normal(x.view, x.seq),
            Payload::Proposal(x) => match decode_payload(&x.pre_prepare.payload) {
                Ok(Payload::PrePrepare(pp)) if pp.replica != self.cfg.primary(pp.view) => {
                    Err(RejectReason::NotPrimary)
                }
                Ok(Payload::PrePrepare(pp)) if pp.replica == x.replica => normal(pp.view, pp.seq),
                _ => Err(RejectReason::Malformed),
            },
            Payload::Prepare(x) if x.replica == self.cfg.primary(x.view) => {
                Err(RejectReason::WrongSender)
            }
            Payload::BatchRequest(r) => {
                if r.seq <= self.h() {
                    Err(RejectReason::Stale)
                } else {
                    Ok(false)
                }
            }
            Payload::Batch(b) => {
                if self.missing.contains_key(&b.digest) {
                    Ok(false)
                } else {
                    Err(RejectReason::Unsolicited)
                }
            }
            Payload::Prepare(x) => normal(x.view, x.seq),
            Payload::Commit(x) => normal(x.view, x.seq),
            Payload::Checkpoint(c) => {
                if c.seq == 0 || c.seq % self.cfg.checkpoint_interval != 0 {
                    Err(RejectReason::Malformed)
                } else if c.seq <= self.h() {
                    Err(RejectReason::Stale)
                } else {
                    Ok(false)
                }
            }
            Payload::ViewChange(vc) => {
                if vc.new_view < self.view || (vc.new_view == self.view && !self.in_view_change) {
                    return Err(RejectReason::Stale);
                }
                match self.view_changes.get(&vc.replica) {
                    Some(e) if e.vc.new_view >= vc.new_view => Err(RejectReason::Stale),
                    _ => Ok(false),
                }
            }
            Payload::NewView(nv) => {
                if nv.view < self.view || (nv.view == self.view && !self.in_view_change) {
                    Err(RejectReason::Stale)
                } else if nv.replica != self.cfg.primary(nv.view) {
                    Err(RejectReason::NotPrimary)
                } else {
                    Ok(false)
                }
            }
            Payload::Request(r) => {
                if r.request.len() > MAX_REQUEST_BYTES {
                    Err(RejectReason::Malformed)
                } else {
                    Ok(false)
                }
            }
            Payload::StateRequest(r) => {
                if r.from_seq == 0 || r.from_seq > r.to_seq {
                    Err(RejectReason::Malformed)
                } else if r.from_seq > self.last_executed {
                    Err(RejectReason::CannotServe)
                } else {
                    Ok(false)
                }
            }
            Payload::StateResponse(_) => {
                if self.fetch.is_none() {
                    Err(RejectReason::Unsolicited)
                } else {
                    Ok(false)
                }
            }
        }
    }

    /// A replica still asking for the view we are in, or an older one, missed its NEW-VIEW:
    /// send it the NEW-VIEW that installed our view (self-certifying, so any replica may re-send
    /// it, and doing so is always safe). For an older view this is the only thing that moves the
    /// laggard: nobody else is changing views, so it never sees the f+1 VIEW-CHANGEs that would
    /// make it join (§4.5.2). Backups relay it too: the primary may itself have moved on to a
    /// view change, leaving the laggard with no one to ask (PBFT sim seed 220
    /// `1=ack-without-store`).
    fn help_lagging_view_change(&mut self, p: &Payload, m: &SignedMessage) {
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

    fn on_request(&mut self, r: Request) -> Result<(), RejectReason> {
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

    /// The normal-case PRE-PREPARE: the primary's signed header with the batch alongside.
    fn on_proposal(&mut self, p: Proposal) -> Result<(), RejectReason> {
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
    fn on_pre_prepare(
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

    fn on_prepare(&mut self, m: SignedMessage, p: Prepare) -> Result<(), RejectReason> {
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

    fn on_commit(&mut self, m: SignedMessage, c: Commit) -> Result<(), RejectReason> {
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
    fn check_slot(&mut self, seq: u64) {
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
    fn try_execute(&mut self) {
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

    fn deliver(&mut self, batch: CommittedBatch) {
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

    // ------------------------------------------------------------------ checkpoints

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

    fn on_checkpoint(&mut self, m: SignedMessage, c: Checkpoint) -> Result<(), RejectReason> {
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
    fn install_stable(&mut self, cp: StableCheckpoint) {
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
    fn checkpoint_signers(&self) -> Vec<NodeId> {
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
    fn start_fetch(&mut self, to_seq: u64, peers: Vec<NodeId>, next_peer: usize) {
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
            ticks_left: self.cfg.request_timeout_ticks,
        });
        self.send_fetch();
    }

    // ------------------------------------------------------------------ state transfer

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
        self.out.fetch = Some(Fetch {
            from_seq,
            to_seq,
            peers: vec![peer],
        });
    }

    fn on_state_request(&mut self, r: StateRequest) -> Result<(), RejectReason> {
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
    fn on_state_response(&mut self, r: StateResponse) -> Result<(), RejectReason> {
        let mut result = Ok(());
        let before = self.last_executed;
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
                fs.ticks_left = self.cfg.request_timeout_ticks;
                self.send_fetch();
            }
        }
        self.try_execute();
        result
    }

    // ------------------------------------------------------------------ view change

    /// §4.4: move to view `v`, stop normal-case processing and multicast VIEW-CHANGE with the
    /// stable checkpoint proof and the prepared certificates above it.
    fn start_view_change(&mut self, v: u64) {
        if v < self.view || (v == self.view && self.in_view_change) {
            return;
        }
        self.view = v;
        self.in_view_change = true;
        self.vc_consecutive = self.vc_consecutive.saturating_add(1);
        self.vc_timer.stop();
        self.vc_resend = self.vc_resend_interval();
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

    fn on_view_change(&mut self, m: SignedMessage, vc: ViewChange) -> Result<(), RejectReason> {
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
    fn on_new_view(&mut self, msg: SignedMessage, nv: NewView) -> Result<(), RejectReason> {
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
        self.requests.forget_ordered();
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

    fn replay_future(&mut self) {
        let buffered = std::mem::take(&mut self.future);
        for (from, bytes) in buffered {
            let _ = self.step(from, &bytes);
        }
    }
}
