//! Batch bodies. Pre-prepare headers, certificates and view changes name a batch by digest only,
//! so a replica that accepted a header without its batch (a NEW-VIEW's re-issued pre-prepares,
//! a proposal it missed) fetches the body by digest from its peers and checks it before the slot
//! may prepare or execute.

use crate::certificate::NULL_DIGEST;
use crate::config::NodeId;
use crate::kind::MessageKind;
use crate::message::{encode, Batch, BatchRequest, Payload};
use crate::persist;
use crate::reject::RejectReason;
use crate::timer::Timer;
use crate::App;

use super::{Hash, Replica};

/// A batch body we wait for (see `Replica::missing`).
#[derive(Clone, Debug)]
pub(super) struct MissingBody {
    /// Highest seq whose pre-prepare names it (bodies are garbage-collected with it).
    pub(super) seq: u64,
    next_peer: usize,
    /// Runs out when the next peer is to be asked.
    retry: Timer,
}

impl<A: App> Replica<A> {
    /// Whether the body of `digest` is here (the null batch always is).
    pub(super) fn has_body(&self, digest: &Hash) -> bool {
        *digest == NULL_DIGEST || self.bodies.contains_key(digest)
    }

    /// The requests of batch `digest`, if we have them.
    pub(super) fn body_of(&self, digest: &Hash) -> Option<Vec<Vec<u8>>> {
        if *digest == NULL_DIGEST {
            Some(Vec::new())
        } else {
            self.bodies.get(digest).map(|(_, r)| r.clone())
        }
    }

    /// Keeps a checked body (its digest is the app's digest of `requests`) for `seq`, durably,
    /// so it can be executed and served after a restart.
    pub(super) fn store_body(&mut self, seq: u64, digest: Hash, requests: Vec<Vec<u8>>) {
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
    pub(super) fn need_body(&mut self, seq: u64, digest: Hash) {
        if self.has_body(&digest) || seq <= self.h() {
            return;
        }
        let e = self.missing.entry(digest).or_insert(MissingBody {
            seq,
            next_peer: seq as usize,
            retry: Timer::started(1),
        });
        e.seq = e.seq.max(seq);
    }

    /// Asks the next peer for each missing body whose retry period elapsed. Any replica that
    /// prepared the batch has it (at least f+1 correct ones, for a digest in a prepared
    /// certificate), so rotating over all peers finds one.
    pub(super) fn retry_missing_bodies(&mut self) {
        let peers: Vec<NodeId> = (0..self.n as NodeId).filter(|p| *p != self.me).collect();
        let period = (self.cfg.request_timeout_ticks / 2).max(1);
        let mut asks = Vec::new();
        for (d, mb) in self.missing.iter_mut() {
            if mb.retry.tick() {
                mb.retry.start(period);
                let to = peers[mb.next_peer % peers.len()];
                mb.next_peer = mb.next_peer.wrapping_add(1);
                asks.push((to, mb.seq, *d));
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

    pub(super) fn on_batch_request(&mut self, r: BatchRequest) -> Result<(), RejectReason> {
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
    pub(super) fn on_batch(&mut self, b: Batch) -> Result<(), RejectReason> {
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
}
