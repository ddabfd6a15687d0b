//! The PBFT replica state machine (Castro & Liskov OSDI'99 §4, TOCS'02 §4–5).
//!
//! `Replica` and its fields are defined here, with its public API, the output helpers and the
//! receive path (`step`: decoding, membership, cheap protocol checks, signature, dispatch). The
//! state changes live in child modules, one concern each, as further `impl` blocks:
//! `requests` (admission, batching, relays), `bodies` (batch bodies fetched by digest),
//! `agreement` (pre-prepare, prepare, commit, execution), `checkpoints` (stable checkpoints
//! and state transfer), `view_change` and `restore`.

mod agreement;
mod bodies;
mod checkpoints;
mod requests;
mod restore;
mod view_change;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::SigningKey;

use crate::certificate::NULL_DIGEST;
use crate::checkpoint::{CheckpointVotes, StableCheckpoint};
use crate::config::{Config, ConfigError, NodeId};
use crate::crypto::VerifyCache;
use crate::kind::MessageKind;
use crate::log::Slot;
use crate::message::{
    decode_payload, decode_signed, encode, sign_message, verify_cached, Payload, SignedMessage,
};
use crate::persist::{self, seq_key, ViewState};
use crate::reject::RejectReason;
use crate::request_book::RequestBook;
use crate::state_transfer::FetchState;
use crate::timer::Timer;
use crate::view_change::{PreparedCert, VcEntry};
use crate::{App, InvalidBatch, Outgoing, PersistOp, Ready, Rejected, Status};

use bodies::MissingBody;

/// Largest client request accepted by `submit`.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// How many executed request hashes the primary remembers for de-duplication.
const RECENT_EXECUTED: usize = 1 << 16;
/// Verified-signature cache size.
const VERIFY_CACHE: usize = 1 << 16;
/// Messages of views up to this far ahead are buffered rather than rejected.
const FUTURE_VIEWS: u64 = 4;

type Hash = [u8; 32];

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
    vc_resend: Timer,
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
    /// The highest executed seq each peer claimed in a STATUS (see `on_status`).
    peer_executed: BTreeMap<NodeId, u64>,
    /// Runs every half request timeout; when it fires without execution since the last time,
    /// we multicast STATUS.
    status_timer: Timer,
    executed_at_status: u64,
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
            vc_resend: Timer::started(0),
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
            peer_executed: BTreeMap::new(),
            status_timer: Timer::default(),
            executed_at_status: 0,
            persisted_seqs: BTreeSet::new(),
            cache: VerifyCache::new(VERIFY_CACHE),
            rejections: BTreeMap::new(),
            out: Ready::default(),
        })
    }

    /// Messages dropped so far, by reason.
    pub fn rejections(&self) -> &BTreeMap<RejectReason, u64> {
        &self.rejections
    }

    /// The configuration it runs with (the node sizes its state-transfer replies by it).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The application, so the node can reach state it shares with it (known requests).
    pub fn app(&self) -> &A {
        &self.app
    }

    /// Where the replica stands, for status pages, metrics and admission control.
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
            unexecuted_requests: self.requests.unexecuted_len(),
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

    fn h(&self) -> u64 {
        self.stable.seq
    }

    fn high(&self) -> u64 {
        self.stable.seq.saturating_add(self.cfg.watermark_window)
    }

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
        } else if self.vc_resend.tick() {
            self.vc_resend.start(self.vc_resend_interval());
            if let Some(m) = self.view_changes.get(&self.me).map(|e| e.msg.clone()) {
                self.broadcast(MessageKind::ViewChange, &m);
            }
        }
        if self.in_view_change && self.vc_timer.tick() {
            // §4.5.2: the new primary did not deliver a NEW-VIEW in time: try v + 1 with a
            // doubled timeout.
            self.start_view_change(self.view + 1);
        }
        self.retry_fetch();
        self.retry_missing_bodies();
        self.detect_stall();
        self.send_status_if_idle();
    }

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
        // A STATUS that claims no more than we executed tells us nothing: it is dropped before
        // the signature check and not counted as a rejection (idle replicas send them to each
        // other all the time).
        if matches!(&p, Payload::Status(s) if s.executed <= self.last_executed) {
            return Ok(());
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
            Payload::Status(s) => self.on_status(s),
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
            Payload::Status(_) => Ok(false),
            Payload::StateResponse(_) => {
                if self.fetch.is_none() {
                    Err(RejectReason::Unsolicited)
                } else {
                    Ok(false)
                }
            }
        }
    }
}
