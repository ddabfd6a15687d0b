//! Block sync: how a Raft replica that installed a snapshot gets the blocks below it.
//!
//! A Raft snapshot here is only a ledger point — (raft index, term) in the core, (height, head
//! hash) in its data — never the ledger state: Raft §7 leaves it to the application how the
//! state machine reaches the snapshot, and this one reaches it by applying every block from
//! genesis, so every replica holds the whole chain and rebuilds balances, KV and the per-client
//! `(client, seq)` records exactly (a retried request after the install gets its original
//! answer). Log compaction therefore compacts only the Raft log, never blocks.
//!
//! The replica trusts the snapshot's head hash (the leader sent it, and Raft trusts its
//! leader). It fetches the missing heights from peers in bounded ranges, from the top down,
//! so each block is checked against a hash it already trusts: the top one against the head
//! hash, every other against the `prev_hash` of the verified block above it; and every client
//! signature is checked. Verified blocks are staged durably (a store table), so a crash
//! resumes where it stopped; once the staged range reaches the local head the blocks are
//! applied forward. Meanwhile the Raft core keeps replicating and voting with applying held.
//!
//! This module is the pure part: which range to ask whom, when to give up on a peer, and
//! whether a response is acceptable. The engine does the IO.

use serde::{Deserialize, Serialize};

use super::NodeId;
use crate::ledger::tx::verify_batch;
use crate::ledger::{Block, Hash};
use crate::store::Head;

/// Heights asked for in one request. The server answers the top of the range that fits the
/// message budget, so this only bounds the work of one answer.
pub const MAX_RANGE: u64 = 512;

/// A block-sync message; travels next to Raft messages on the same wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// Send blocks `lo..=hi` (the top of the range if not all fit).
    Request { lo: u64, hi: u64 },
    /// Blocks `blocks[0].height..=hi`, ascending, ending at `hi`; empty if the server does
    /// not hold `hi`.
    Response {
        lo: u64,
        hi: u64,
        blocks: Vec<Block>,
    },
}

/// Why a response was refused; `reason()` is the metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadBlocks {
    #[error("response does not cover the requested range")]
    Range,
    #[error("block {0} does not hash to its stored hash")]
    Hash(u64),
    #[error("block {0} does not link to the verified block above it")]
    Link(u64),
    #[error("block {0} carries a bad transaction: {1}")]
    Signature(u64, String),
    #[error("block {0} carries a certificate (raft blocks have none)")]
    Certificate(u64),
}

impl BadBlocks {
    pub fn reason(&self) -> &'static str {
        "bad_block"
    }
}

/// What to do with a response.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not the answer we wait for (late, duplicate, another peer): ignore.
    Ignored,
    /// The peer does not hold the blocks: ask another one.
    Unavailable,
    /// Verified: stage these blocks (ascending).
    Stage(Vec<Block>),
}

#[derive(Clone, Debug)]
struct Inflight {
    peer: NodeId,
    lo: u64,
    hi: u64,
    ticks: u32,
}

/// The state of one sync towards `target`.
#[derive(Clone, Debug)]
pub struct BlockSync {
    target: Head,
    /// Lowest staged height: heights `low..=target.height` are staged and verified
    /// (`low == target.height + 1` when nothing is).
    low: u64,
    /// The hash block `low - 1` must have.
    expect: Hash,
    peers: Vec<NodeId>,
    next_peer: usize,
    inflight: Option<Inflight>,
    timeout_ticks: u32,
}

impl BlockSync {
    /// A sync towards `target`, resuming from staged blocks `low..=target.height` whose lowest
    /// has prev hash `low_prev` (`None`: nothing staged). `peers` are asked in turn,
    /// starting with `first` (the leader that sent the snapshot) if given.
    pub fn new(
        target: Head,
        staged: Option<(u64, Hash)>,
        peers: Vec<NodeId>,
        first: Option<NodeId>,
        timeout_ticks: u32,
    ) -> Self {
        let (low, expect) = staged.unwrap_or((target.height + 1, target.hash));
        let next_peer = first
            .and_then(|f| peers.iter().position(|&p| p == f))
            .unwrap_or(0);
        BlockSync {
            target,
            low,
            expect,
            peers,
            next_peer,
            inflight: None,
            timeout_ticks: timeout_ticks.max(1),
        }
    }

    pub fn target(&self) -> Head {
        self.target
    }

    /// Lowest staged height (`target.height + 1` if none).
    pub fn low(&self) -> u64 {
        self.low
    }

    /// Whether every height above `head` is staged: time to apply forward.
    pub fn fetched(&self, head: u64) -> bool {
        self.low <= head + 1
    }

    /// One tick: a request unanswered for the timeout is abandoned and the next peer asked.
    pub fn on_tick(&mut self) {
        if let Some(f) = &mut self.inflight {
            f.ticks += 1;
            if f.ticks >= self.timeout_ticks {
                self.inflight = None;
                self.rotate();
            }
        }
    }

    fn rotate(&mut self) {
        if !self.peers.is_empty() {
            self.next_peer = (self.next_peer + 1) % self.peers.len();
        }
    }

    /// The next request to send, if none is in flight and blocks above `head` are missing.
    pub fn next_request(&mut self, head: u64) -> Option<(NodeId, SyncMessage)> {
        if self.inflight.is_some() || self.fetched(head) {
            return None;
        }
        let peer = *self.peers.get(self.next_peer)?;
        let hi = self.low - 1;
        let lo = (head + 1).max(hi.saturating_sub(MAX_RANGE - 1));
        self.inflight = Some(Inflight {
            peer,
            lo,
            hi,
            ticks: 0,
        });
        Some((peer, SyncMessage::Request { lo, hi }))
    }

    /// Checks a response from `from`. A refusal (`Err`) moves on to the next peer.
    pub fn on_response(
        &mut self,
        from: NodeId,
        lo: u64,
        hi: u64,
        blocks: Vec<Block>,
    ) -> Result<Outcome, BadBlocks> {
        match &self.inflight {
            Some(f) if f.peer == from && f.lo == lo && f.hi == hi => {}
            _ => return Ok(Outcome::Ignored),
        }
        self.inflight = None;
        if blocks.is_empty() {
            self.rotate();
            return Ok(Outcome::Unavailable);
        }
        match verify_range(&blocks, lo, hi, self.expect) {
            Ok(()) => {
                if let Some(first) = blocks.first() {
                    self.low = first.height;
                    self.expect = first.prev_hash;
                }
                Ok(Outcome::Stage(blocks))
            }
            Err(e) => {
                self.rotate();
                Err(e)
            }
        }
    }
}

/// Verifies `blocks` (ascending) as the top of `lo..=hi` below a block whose `prev_hash` is
/// `expect`: heights contiguous and ending at `hi`, each block's hash over its contents, each
/// `prev_hash` link, no certificate, every client signature.
pub fn verify_range(blocks: &[Block], lo: u64, hi: u64, expect: Hash) -> Result<(), BadBlocks> {
    let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
        return Err(BadBlocks::Range);
    };
    if last.height != hi || first.height < lo || first.height == 0 {
        return Err(BadBlocks::Range);
    }
    if (last.height - first.height + 1) as usize != blocks.len() {
        return Err(BadBlocks::Range);
    }
    let mut want = expect;
    for (i, b) in blocks.iter().enumerate().rev() {
        if b.height != first.height + i as u64 {
            return Err(BadBlocks::Range);
        }
        if b.hash != want {
            return Err(BadBlocks::Link(b.height));
        }
        if !b.hash_is_valid() {
            return Err(BadBlocks::Hash(b.height));
        }
        if b.certificate.is_some() {
            return Err(BadBlocks::Certificate(b.height));
        }
        if let Err((t, e)) = verify_batch(&b.txs) {
            return Err(BadBlocks::Signature(
                b.height,
                format!("transaction {t}: {e}"),
            ));
        }
        want = b.prev_hash;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Op, Tx};

    fn chain(n: u64) -> Vec<Block> {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mut prev = [0u8; 32];
        let mut out = Vec::new();
        for h in 1..=n {
            let tx = Tx::sign(
                &key,
                h,
                Op::Put {
                    key: format!("k{h}"),
                    value: "v".into(),
                },
            );
            let b = Block::new(h, prev, vec![tx], None);
            prev = b.hash;
            out.push(b);
        }
        out
    }

    fn head_of(blocks: &[Block]) -> Head {
        let b = blocks.last().expect("non-empty");
        Head {
            height: b.height,
            hash: b.hash,
        }
    }

    #[test]
    fn fetches_top_down_and_finishes_at_the_local_head() {
        let c = chain(10);
        let mut s = BlockSync::new(head_of(&c), None, vec![1, 2], Some(2), 5);
        // Local head 3: heights 4..=10 are missing.
        let (peer, req) = s.next_request(3).expect("request");
        assert_eq!(peer, 2);
        assert_eq!(req, SyncMessage::Request { lo: 4, hi: 10 });
        assert!(s.next_request(3).is_none(), "one request in flight");
        // The server sends only the top part (budget): 8..=10.
        let got = s.on_response(2, 4, 10, c[7..10].to_vec()).expect("valid");
        assert_eq!(got, Outcome::Stage(c[7..10].to_vec()));
        assert_eq!(s.low(), 8);
        let (_, req) = s.next_request(3).expect("next");
        assert_eq!(req, SyncMessage::Request { lo: 4, hi: 7 });
        assert!(matches!(
            s.on_response(2, 4, 7, c[3..7].to_vec()),
            Ok(Outcome::Stage(_))
        ));
        assert!(s.fetched(3));
        assert!(s.next_request(3).is_none());
    }

    #[test]
    fn a_tampered_block_is_refused_and_another_peer_asked() {
        let c = chain(6);
        let mut s = BlockSync::new(head_of(&c), None, vec![0, 1, 2], Some(1), 5);
        let (p, _) = s.next_request(0).expect("request");
        assert_eq!(p, 1);
        let mut bad = c.clone();
        if let Op::Put { value, .. } = &mut bad[2].txs[0].op {
            value.push('!');
        }
        // Re-hashing the tampered block breaks the link to block 4; keeping the hash breaks
        // the block's own hash; either way it is refused.
        let err = s.on_response(1, 1, 6, bad).unwrap_err();
        assert_eq!(err.reason(), "bad_block");
        let (p, _) = s.next_request(0).expect("retry");
        assert_eq!(p, 2, "the next peer");
        assert!(matches!(
            s.on_response(2, 1, 6, c.clone()),
            Ok(Outcome::Stage(_))
        ));
        assert!(s.fetched(0));
    }

    #[test]
    fn a_forged_chain_does_not_link_to_the_trusted_head() {
        let c = chain(4);
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        // A self-consistent chain that is not ours.
        let mut prev = [0u8; 32];
        let mut forged = Vec::new();
        for h in 1..=4 {
            let tx = Tx::sign(&key, h, Op::Delete { key: "x".into() });
            let b = Block::new(h, prev, vec![tx], None);
            prev = b.hash;
            forged.push(b);
        }
        let mut s = BlockSync::new(head_of(&c), None, vec![1], None, 5);
        s.next_request(0);
        assert_eq!(
            s.on_response(1, 1, 4, forged).unwrap_err(),
            BadBlocks::Link(4)
        );
    }

    #[test]
    fn timeouts_rotate_peers_and_late_answers_are_ignored() {
        let c = chain(3);
        let mut s = BlockSync::new(head_of(&c), None, vec![4, 5], Some(4), 2);
        assert_eq!(s.next_request(0).map(|r| r.0), Some(4));
        s.on_tick();
        s.on_tick();
        assert_eq!(s.next_request(0).map(|r| r.0), Some(5));
        // Peer 4 answers late: ignored, peer 5's request stays in flight.
        assert_eq!(s.on_response(4, 1, 3, c.clone()), Ok(Outcome::Ignored));
        assert_eq!(s.on_response(5, 1, 3, Vec::new()), Ok(Outcome::Unavailable));
        assert_eq!(s.next_request(0).map(|r| r.0), Some(4));
    }

    #[test]
    fn resumes_from_staged_blocks() {
        let c = chain(8);
        let staged = Some((6, c[5].prev_hash));
        let mut s = BlockSync::new(head_of(&c), staged, vec![1], None, 5);
        let (_, req) = s.next_request(2).expect("request");
        assert_eq!(req, SyncMessage::Request { lo: 3, hi: 5 });
        assert!(matches!(
            s.on_response(1, 3, 5, c[2..5].to_vec()),
            Ok(Outcome::Stage(_))
        ));
        assert!(s.fetched(2));
    }
}
