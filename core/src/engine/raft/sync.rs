//! Block sync in the Raft engine: after installing a snapshot (a ledger point, not the
//! ledger) a follower fetches the blocks below it from its peers, stages and applies them a
//! chunk per tick, and releases the Raft entries it held back; every node serves the block
//! requests of others from its store.

use super::wire::{tagged, TAG_SYNC};
use super::{postcard_size, RaftEngine, RaftOptions};
use crate::engine::block_sync::{BlockSync, Outcome, SyncMessage};
use crate::engine::{EngineError, NodeId, Outgoing, Rejected};
use crate::store::{Store, WriteBatch};

/// Block-sync requests queued for serving; more are dropped (the requester retries).
const MAX_SERVE_QUEUE: usize = 16;
/// Staged bytes applied per tick while finishing a block sync, so a long sync does not keep
/// the driver from answering heartbeats.
const SYNC_APPLY_BYTES: usize = 8 << 20;

/// Ticks a block-sync request may stay unanswered before another peer is asked.
pub(super) fn sync_timeout(opts: &RaftOptions) -> u32 {
    opts.election_tick.saturating_mul(2)
}

impl RaftEngine {
    /// Block sync, once per poll: stage what arrived, ask for what is missing, apply what is
    /// staged, and release the held Raft entries once the ledger reaches the snapshot.
    pub(super) fn sync_step(
        &mut self,
        store: &Store,
        write: &mut WriteBatch,
        messages: &mut Vec<Outgoing>,
    ) -> Result<(), EngineError> {
        write.clear_staging |= std::mem::take(&mut self.clear_staging);
        write.stage.append(&mut self.to_stage);
        let Some(sync) = &mut self.sync else {
            return Ok(());
        };
        let head = store.head()?;
        let target = sync.target();
        if head.height >= target.height {
            if head.height != target.height || head.hash != target.hash {
                return Err(EngineError::Corrupt(format!(
                    "block sync ended at height {} hash {}, not at the snapshot's height {} hash {}",
                    head.height,
                    hex::encode(head.hash),
                    target.height,
                    hex::encode(target.hash)
                )));
            }
            tracing::debug!(height = head.height, "block sync complete");
            self.sync = None;
            self.raw.hold_apply(false);
            let held = std::mem::take(&mut self.held);
            self.apply_entries(&held, write);
            return Ok(());
        }
        if sync.fetched(head.height) {
            if self.apply_credit && write.stage.is_empty() {
                let blocks = store.staged_blocks_limited(
                    head.height + 1,
                    target.height,
                    SYNC_APPLY_BYTES,
                )?;
                if blocks.is_empty() {
                    // Fetched but not staged: the staging table lost blocks (it is emptied
                    // with a new target). Fetch again from the top.
                    tracing::warn!(
                        height = head.height,
                        "staged blocks missing; block sync restarts"
                    );
                    *sync = BlockSync::new(
                        target,
                        None,
                        self.peers.clone(),
                        self.raw.leader(),
                        sync_timeout(&self.opts),
                    );
                    write.clear_staging = true;
                } else {
                    self.apply_credit = false;
                    write.synced = blocks;
                }
            }
        } else if let Some((to, req)) = sync.next_request(head.height) {
            messages.push(Outgoing {
                to,
                kind: "block_request",
                bytes: tagged(TAG_SYNC, &req),
            });
        }
        Ok(())
    }

    /// Answers queued block requests from the store: the top of the asked range that fits one
    /// message, or nothing if this node does not hold the range's top.
    pub(super) fn serve_requests(
        &mut self,
        store: &Store,
        messages: &mut Vec<Outgoing>,
    ) -> Result<(), EngineError> {
        if self.serve.is_empty() {
            return Ok(());
        }
        // Wire tag, variant, two varint heights and the vector's length prefix.
        let budget = self.opts.max_message_bytes.saturating_sub(64);
        let head = store.head()?.height;
        while let Some((to, lo, hi)) = self.serve.pop_front() {
            let mut blocks = Vec::new();
            let mut bytes = 0usize;
            if hi <= head {
                for h in (lo..=hi).rev() {
                    let Some(b) = store.block(h)? else { break };
                    let size = postcard_size(&b);
                    if bytes + size > budget {
                        break;
                    }
                    bytes += size;
                    blocks.push(b);
                }
                blocks.reverse();
            }
            let resp = SyncMessage::Response { lo, hi, blocks };
            messages.push(Outgoing {
                to,
                kind: "block_response",
                bytes: tagged(TAG_SYNC, &resp),
            });
        }
        Ok(())
    }

    pub(super) fn on_sync_message(&mut self, from: NodeId, body: &[u8]) -> Result<(), Rejected> {
        let msg: SyncMessage = postcard::from_bytes(body).map_err(|_| Rejected {
            reason: "malformed",
        })?;
        if from >= self.n || from == self.raw.id() {
            return Err(Rejected {
                reason: "unknown_peer",
            });
        }
        match msg {
            SyncMessage::Request { lo, hi } => {
                if lo == 0 || hi < lo {
                    return Err(Rejected { reason: "invalid" });
                }
                if self.serve.len() < MAX_SERVE_QUEUE {
                    self.serve.push_back((from, lo, hi));
                }
                Ok(())
            }
            SyncMessage::Response { lo, hi, blocks } => {
                let Some(sync) = &mut self.sync else {
                    return Ok(()); // late answer to a finished sync
                };
                match sync.on_response(from, lo, hi, blocks) {
                    Ok(Outcome::Stage(blocks)) => {
                        self.to_stage.extend(blocks);
                        Ok(())
                    }
                    Ok(Outcome::Ignored | Outcome::Unavailable) => Ok(()),
                    Err(e) => {
                        tracing::warn!(peer = from, error = %e, "block sync: blocks refused; asking another peer");
                        Err(Rejected { reason: e.reason() })
                    }
                }
            }
        }
    }
}
