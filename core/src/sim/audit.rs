//! The simulator's own checks around the [`super::checker`]: every decided read against the
//! correct replicas' ledger, every acknowledged write in every caught-up correct store, the
//! offline ledger audit of `faultline verify`, and the end-of-run verdict (safety, then
//! liveness after the heal).

use super::checker::Violation;
use super::{Sim, SimError, SimReport};
use crate::engine::NodeId;
use crate::ledger::Op;
use crate::store::Store;

impl Sim {
    /// A decided read must be a value the correct replicas' ledger gives `key` at some height
    /// in `lo..=hi` (the fast path: exactly at its height; the ordered path: at or after the
    /// read began) — never a value no correct replica holds.
    pub(super) fn check_read(
        &mut self,
        key: &str,
        read: &crate::reply::ReadValue,
        lo: u64,
        hi: u64,
    ) {
        let crate::reply::ReadValue::Kv { value, .. } = read else {
            return;
        };
        self.report.reads += 1;
        // The ledger of a correct node that reached `hi` (all correct ledgers agree, which the
        // checker verifies separately).
        let store = (0..self.cfg.nodes as NodeId)
            .filter(|id| self.is_correct(*id))
            .filter_map(|id| self.nodes[id as usize].running.as_ref())
            .map(|(store, _)| store)
            .find(|s| s.head().is_ok_and(|h| h.height >= hi));
        let Some(store) = store else {
            return;
        };
        let mut current: Option<String> = None;
        let mut seen = false;
        // Replays the ledger's rule: a tx at or below its client's last applied seq is a
        // duplicate and changes nothing (docs/SPEC.md "Transactions").
        let mut last_seq: std::collections::HashMap<[u8; 32], u64> = Default::default();
        for h in 1..=hi {
            if let Ok(Some(b)) = store.block(h) {
                for tx in &b.txs {
                    if tx.op.is_read_marker()
                        || last_seq.get(&tx.client).is_some_and(|l| tx.seq <= *l)
                    {
                        continue;
                    }
                    last_seq.insert(tx.client, tx.seq);
                    match &tx.op {
                        Op::Put { key: k, value: v } if k == key => current = Some(v.clone()),
                        Op::Delete { key: k } if k == key => current = None,
                        _ => {}
                    }
                }
            }
            if h >= lo && current == *value {
                seen = true;
                break;
            }
        }
        if lo == 0 && value.is_none() {
            seen = true;
        }
        if !seen {
            self.checker.flag(
                hi,
                format!(
                    "a PBFT client read of {key:?} returned {value:?}, which no correct replica held at heights {lo}..={hi}"
                ),
            );
        }
    }

    pub(super) fn finish(
        mut self,
        height_at_heal: u64,
    ) -> Result<(SimReport, Vec<Store>), SimError> {
        self.check_acked_writes();
        self.audit_one_ledger();
        let height = self.checker.height();
        self.report.height = height;
        self.report.heal_commits = height.saturating_sub(height_at_heal);
        if let Some(Violation { height, detail }) = self.checker.violation.take() {
            self.report.safe = false;
            self.report.live = false;
            self.report.first_diverging_height = Some(height);
            self.report.detail = Some(detail);
            return Ok(self.into_parts());
        }
        if self.report.oversized > 0 {
            // The detail names the first oversized message; liveness is moot.
            return Ok(self.into_parts());
        }
        // Liveness after stabilisation: new blocks after the heal, and every correct node
        // caught up to the same head.
        let mut heads = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.byzantine.is_some() {
                continue;
            }
            if let Some((store, engine)) = &node.running {
                if let Ok(head) = store.head() {
                    heads.push((i, head, engine.status()));
                }
            }
        }
        // Once faults stop, every correct node reaches the newest head: Raft's leader repairs
        // followers with its heartbeats; a PBFT replica that missed the last commits or
        // checkpoints learns from its idle peers' STATUS that it is behind and fetches the
        // batches. (This used to ask only f+1 PBFT replicas on the newest head, and so passed
        // runs in which the real network, which loses messages to a peer that is away, left a
        // replica behind for good.)
        let newest = heads.iter().map(|(_, h, _)| h.height).max().unwrap_or(0);
        let on_newest = heads.iter().filter(|(_, h, _)| h.height == newest).count();
        let spread: Vec<String> = heads
            .iter()
            .map(|(i, h, st)| {
                let epoch = st.view.or(st.term).unwrap_or(0);
                format!("{i}:{}({} {epoch})", h.height, st.role)
            })
            .collect();
        if self.report.heal_commits == 0 || on_newest < heads.len() {
            self.report.live = false;
            self.report.detail = Some(format!(
                "after the faults stopped: {} new blocks; heads {}",
                self.report.heal_commits,
                spread.join(" ")
            ));
        }
        Ok(self.into_parts())
    }

    fn into_parts(self) -> (SimReport, Vec<Store>) {
        let stores = self
            .nodes
            .into_iter()
            .filter(|n| n.byzantine.is_none())
            .filter_map(|n| n.running.map(|(store, _)| store))
            .collect();
        (self.report, stores)
    }

    /// The first correct node's ledger must pass the offline audit of `faultline verify`: hash
    /// chain, client signatures, and (pbft) a valid commit certificate on every block.
    fn audit_one_ledger(&mut self) {
        let first = self.nodes.iter().enumerate().find_map(|(i, n)| {
            let (store, _) = n.running.as_ref().filter(|_| n.byzantine.is_none())?;
            Some((i, store))
        });
        let Some((i, store)) = first else { return };
        let finding = match crate::verify::verify_store(store) {
            Ok(crate::verify::Verdict::Ok { .. }) => None,
            Ok(crate::verify::Verdict::Partial { first, .. }) => Some((
                first,
                format!("node {i}'s ledger starts at height {first}, not at 1"),
            )),
            Ok(crate::verify::Verdict::Bad { height, reason }) => Some((
                height,
                format!("node {i}'s ledger fails the audit at height {height}: {reason}"),
            )),
            Err(e) => Some((0, format!("node {i}'s store: {e}"))),
        };
        if let Some((height, detail)) = finding {
            self.checker.flag(height, detail);
        }
        // Every correct node holds the whole chain (issue 10: history is never lost): blocks
        // from height 1 up to its head, whatever the protocol and however it caught up.
        let mut gaps = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some((store, _)) = n.running.as_ref().filter(|_| n.byzantine.is_none()) else {
                continue;
            };
            let head = match store.head() {
                Ok(h) => h.height,
                Err(e) => {
                    gaps.push((0, format!("node {i}'s store: {e}")));
                    continue;
                }
            };
            if head == 0 {
                continue;
            }
            let whole = matches!(store.first_height(), Ok(Some(1)))
                && matches!(store.base(), Ok(b) if b.height == 0)
                && matches!(store.block(head), Ok(Some(_)));
            if !whole {
                gaps.push((
                    1,
                    format!("node {i} does not hold the whole chain 1..={head}"),
                ));
            }
        }
        for (height, detail) in gaps {
            self.checker.flag(height, detail);
        }
    }

    /// Every acknowledged write must be applied at every correct node that has caught up past
    /// the height it was acknowledged at (its seq or a later one recorded for its client).
    fn check_acked_writes(&mut self) {
        let acked = std::mem::take(&mut self.acked);
        for (c, seq, height) in acked {
            let client = self.clients[c].key.verifying_key().to_bytes();
            for (i, node) in self.nodes.iter().enumerate() {
                if node.byzantine.is_some() {
                    continue;
                }
                let Some((store, _)) = &node.running else {
                    continue;
                };
                let Ok(head) = store.head() else { continue };
                if head.height < height {
                    continue;
                }
                let last = store.last_seq(&client).ok().flatten().unwrap_or(0);
                if last < seq {
                    self.checker.flag(
                        height,
                        format!("lost acknowledged write: client {c} seq {seq} (acknowledged at height {height}) is missing at node {i}"),
                    );
                }
            }
        }
    }
}
