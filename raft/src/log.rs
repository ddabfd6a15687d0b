//! The in-memory Raft log: a snapshot prefix plus the entries after it, the commit and apply
//! cursors, and what has not yet been handed to the driver for persistence.
//!
//! The core keeps every entry after the last snapshot in memory; the driver's storage is a
//! mirror it writes from [`crate::Ready`]. Compaction (`compact`) is what bounds memory.

use std::collections::BTreeMap;

use crate::message::{Entry, Membership, Snapshot};

#[derive(Debug)]
pub(crate) struct RaftLog {
    /// Last index covered by the snapshot (0 = none).
    snapshot_index: u64,
    /// Term at `snapshot_index` (0 = none).
    snapshot_term: u64,
    /// Entries `snapshot_index + 1 ..= last_index()`, contiguous.
    entries: Vec<Entry>,
    /// Highest index known committed (Raft §5.3).
    pub(crate) committed: u64,
    /// Highest index handed to the application in `Ready::committed`.
    pub(crate) applied: u64,
    /// First index not yet handed to the driver in `Ready::entries`.
    unstable_from: u64,
    /// Latest snapshot, kept to send to lagging followers (Raft §7).
    pub(crate) snapshot: Option<Snapshot>,
    /// A snapshot received from the leader that the driver has not been given yet.
    pub(crate) pending_snapshot: Option<Snapshot>,
    /// While set, committed entries are not handed out (see [`crate::RawNode::hold_apply`]).
    pub(crate) apply_held: bool,
    /// The configuration entries among `entries`, by index (thesis §4.1: the latest one is
    /// in force, and truncating it reverts to the one before).
    confs: BTreeMap<u64, Membership>,
}

impl RaftLog {
    /// A log restored from storage; everything given is already durable.
    pub(crate) fn new(
        snapshot: Option<Snapshot>,
        entries: Vec<Entry>,
        committed: u64,
        applied: u64,
    ) -> Self {
        let (si, st) = snapshot.as_ref().map_or((0, 0), |s| (s.index, s.term));
        let last = si + entries.len() as u64;
        let confs = entries
            .iter()
            .filter_map(|e| e.conf.clone().map(|c| (e.index, c)))
            .collect();
        RaftLog {
            snapshot_index: si,
            snapshot_term: st,
            entries,
            committed,
            applied,
            unstable_from: last + 1,
            snapshot,
            pending_snapshot: None,
            apply_held: false,
            confs,
        }
    }

    /// The membership the log defines at `index`: the latest configuration entry at or below
    /// it, else the snapshot's. `None` if neither exists (the node's initial configuration is
    /// in force).
    pub(crate) fn conf_at(&self, index: u64) -> Option<&Membership> {
        self.confs
            .range(..=index)
            .next_back()
            .map(|(_, c)| c)
            .or_else(|| self.snapshot.as_ref().map(|s| &s.conf))
    }

    /// The membership in force: the latest configuration in the log (thesis §4.1).
    pub(crate) fn latest_conf(&self) -> Option<&Membership> {
        self.conf_at(self.last_index())
    }

    /// Index of the latest configuration entry still in the log (0: none after the
    /// snapshot).
    pub(crate) fn latest_conf_index(&self) -> u64 {
        self.confs.keys().next_back().copied().unwrap_or(0)
    }

    pub(crate) fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    pub(crate) fn first_index(&self) -> u64 {
        self.snapshot_index + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    /// Term of the entry at `index`; `None` if compacted away or beyond the log.
    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index || index > self.last_index() {
            return None;
        }
        self.entries
            .get((index - self.snapshot_index - 1) as usize)
            .map(|e| e.term)
    }

    /// Whether the entry at `index` has term `term` (the §5.3 consistency check).
    pub(crate) fn matches(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// Raft §5.4.1: a candidate's log is at least as up-to-date as ours if its last term is
    /// higher, or equal with a last index at least ours.
    pub(crate) fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Leader append of its own new entry.
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        if let Some(c) = &entry.conf {
            self.confs.insert(entry.index, c.clone());
        }
        self.entries.push(entry);
    }

    /// First index in `entries` whose term differs from ours or that we lack; 0 if all match.
    /// Raft §5.3 rule 3/4: only a real conflict truncates; entries we already hold are kept,
    /// so a stale or duplicated append never shortens the log.
    pub(crate) fn find_conflict(&self, entries: &[Entry]) -> u64 {
        entries
            .iter()
            .find(|e| !self.matches(e.index, e.term))
            .map_or(0, |e| e.index)
    }

    /// Replace everything from `entries[0].index` on with `entries`. Callers guarantee
    /// `first_index() <= entries[0].index <= last_index() + 1` and that nothing committed is
    /// dropped.
    pub(crate) fn truncate_and_append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let keep = first.index.saturating_sub(self.snapshot_index + 1) as usize;
        self.entries.truncate(keep);
        self.confs.split_off(&first.index);
        for e in entries {
            if let Some(c) = &e.conf {
                self.confs.insert(e.index, c.clone());
            }
        }
        self.entries.extend_from_slice(entries);
        self.unstable_from = self.unstable_from.min(first.index);
    }

    /// Advance the commit index; never backwards, never past what we hold.
    pub(crate) fn commit_to(&mut self, index: u64) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Entries from `lo` on, at most `max_entries` and at most `max_bytes` of encoded entries
    /// ([`crate::Config::entry_size`] each). `None` if `lo` is compacted (the follower needs a
    /// snapshot). If even the first entry alone exceeds `max_bytes` it is returned alone:
    /// proposals are checked against the budget, so only an entry written under a larger
    /// budget can do that, and sending it (the transport then refuses it loudly) is better
    /// than stalling silently.
    pub(crate) fn entries_from(
        &self,
        lo: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Option<Vec<Entry>> {
        if lo <= self.snapshot_index {
            return None;
        }
        if lo > self.last_index() {
            return Some(Vec::new());
        }
        let start = (lo - self.snapshot_index - 1) as usize;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in self.entries.iter().skip(start).take(max_entries) {
            bytes = bytes.saturating_add(e.encoded_bound());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    /// The largest index `<= index` whose term is `<= term` (or the snapshot index if we reach
    /// it). Used on both sides of the fast back-off: every index in between has a term greater
    /// than `term`, so it cannot match an entry of term `term` or lower.
    pub(crate) fn find_conflict_by_term(&self, index: u64, term: u64) -> u64 {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t > term && i > self.snapshot_index => i -= 1,
                _ => return i,
            }
        }
    }

    /// Install a snapshot received from the leader whose last entry we lack or disagree with
    /// (Raft §7): the whole log is replaced.
    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        self.snapshot_index = snapshot.index;
        self.snapshot_term = snapshot.term;
        self.entries.clear();
        self.confs.clear();
        self.committed = snapshot.index;
        self.applied = snapshot.index;
        self.unstable_from = snapshot.index + 1;
        self.snapshot = Some(snapshot.clone());
        self.pending_snapshot = Some(snapshot);
    }

    /// Drop entries `<= index`, which the application has captured in `data` (Raft §7);
    /// `conf` is the membership in force at `index`, which the snapshot now carries.
    pub(crate) fn compact(&mut self, index: u64, conf: Membership, data: Vec<u8>) -> bool {
        if index <= self.snapshot_index || index > self.applied || index > self.last_index() {
            return false;
        }
        let Some(term) = self.term(index) else {
            return false;
        };
        let n = (index - self.snapshot_index) as usize;
        self.entries.drain(..n);
        self.confs = self.confs.split_off(&(index + 1));
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.unstable_from = self.unstable_from.max(index + 1);
        self.snapshot = Some(Snapshot {
            index,
            term,
            conf,
            data,
        });
        true
    }

    pub(crate) fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Entries the driver has not been given yet; they are now its to persist.
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        let last = self.last_index();
        if self.unstable_from > last {
            return Vec::new();
        }
        let start = (self.unstable_from.max(self.first_index()) - self.snapshot_index - 1) as usize;
        self.unstable_from = last + 1;
        self.entries[start..].to_vec()
    }

    pub(crate) fn has_committed_to_apply(&self) -> bool {
        !self.apply_held && self.committed > self.applied
    }

    /// Committed entries not yet handed to the application; they are now its to apply.
    pub(crate) fn take_committed(&mut self) -> Vec<Entry> {
        if self.apply_held || self.committed <= self.applied {
            return Vec::new();
        }
        let lo = self.applied.max(self.snapshot_index) + 1;
        let start = (lo - self.snapshot_index - 1) as usize;
        let end = (self.committed - self.snapshot_index) as usize;
        self.applied = self.committed;
        self.entries
            .get(start..end)
            .map(<[Entry]>::to_vec)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn e(index: u64, term: u64) -> Entry {
        Entry::new(term, index, vec![1])
    }

    fn conf_entry(index: u64, term: u64, voters: &[u64]) -> Entry {
        Entry {
            conf: Membership::new(voters.to_vec(), Vec::new()),
            ..e(index, term)
        }
    }

    fn log_of(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, t)| e(i as u64 + 1, *t))
            .collect();
        RaftLog::new(None, entries, 0, 0)
    }

    #[test]
    fn term_and_bounds() {
        let l = log_of(&[1, 1, 2]);
        assert_eq!(l.term(0), Some(0));
        assert_eq!(l.term(3), Some(2));
        assert_eq!(l.term(4), None);
        assert_eq!(l.last_index(), 3);
        assert_eq!(l.last_term(), 2);
    }

    #[test]
    fn find_conflict_by_term_skips_whole_terms() {
        let l = log_of(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
        assert_eq!(l.find_conflict_by_term(10, 3), 3);
        assert_eq!(l.find_conflict_by_term(10, 6), 10);
        assert_eq!(l.find_conflict_by_term(10, 5), 7);
        assert_eq!(l.find_conflict_by_term(100, 0), 0);
    }

    #[test]
    fn find_conflict_detects_first_mismatch_only() {
        let l = log_of(&[1, 1, 2]);
        assert_eq!(l.find_conflict(&[e(2, 1), e(3, 2)]), 0);
        assert_eq!(l.find_conflict(&[e(2, 1), e(3, 3)]), 3);
        assert_eq!(l.find_conflict(&[e(3, 2), e(4, 2)]), 4);
    }

    #[test]
    fn compaction_keeps_terms_and_refuses_unapplied() {
        let mut l = log_of(&[1, 1, 2, 2]);
        l.committed = 3;
        l.applied = 3;
        assert!(!l.compact(4, Membership::default(), vec![]));
        assert!(l.compact(2, Membership::default(), vec![9]));
        assert_eq!(l.term(2), Some(1));
        assert_eq!(l.term(1), None);
        assert_eq!(l.entries_from(2, 10, 100), None);
        assert_eq!(l.entries_from(3, 10, 100).map(|v| v.len()), Some(2));
        assert!(!l.compact(2, Membership::default(), vec![]));
    }

    #[test]
    fn entries_from_respects_limits_but_sends_one() {
        let mut l = log_of(&[]);
        for i in 1..=5 {
            l.push(Entry::new(1, i, vec![0; 10]));
        }
        // Each entry costs 10 bytes of data plus ENTRY_OVERHEAD.
        let one = Config::entry_size(10);
        assert_eq!(l.entries_from(1, 3, 1000).map(|v| v.len()), Some(3));
        assert_eq!(l.entries_from(1, 10, 2 * one).map(|v| v.len()), Some(2));
        assert_eq!(l.entries_from(1, 10, 3 * one - 1).map(|v| v.len()), Some(2));
        assert_eq!(l.entries_from(1, 10, 1).map(|v| v.len()), Some(1));
    }

    #[test]
    fn unstable_tracking_follows_truncation() {
        let mut l = log_of(&[1, 1]);
        assert!(l.take_unstable().is_empty());
        l.truncate_and_append(&[e(2, 2), e(3, 2)]);
        let u = l.take_unstable();
        assert_eq!(u.iter().map(|e| e.index).collect::<Vec<_>>(), vec![2, 3]);
        assert!(!l.has_unstable());
    }

    #[test]
    fn the_latest_configuration_is_in_force_and_truncation_reverts_it() {
        let mut l = log_of(&[1]);
        assert_eq!(l.latest_conf(), None);
        l.push(conf_entry(2, 1, &[1, 2, 3, 4]));
        l.push(e(3, 1));
        assert_eq!(l.latest_conf().map(|c| c.voters.len()), Some(4));
        assert_eq!(l.conf_at(1), None);
        assert_eq!(l.latest_conf_index(), 2);
        // A new leader's log replaces index 2 on: the configuration entry goes with it.
        l.truncate_and_append(&[e(2, 2)]);
        assert_eq!(l.latest_conf(), None);
        assert_eq!(l.latest_conf_index(), 0);
        l.truncate_and_append(&[conf_entry(3, 2, &[1, 2])]);
        l.committed = 3;
        l.applied = 3;
        let at3 = l.conf_at(3).cloned().unwrap_or_default();
        // Compaction moves the configuration into the snapshot.
        assert!(l.compact(3, at3.clone(), vec![]));
        assert_eq!(l.latest_conf_index(), 0);
        assert_eq!(l.latest_conf(), Some(&at3));
        assert_eq!(at3.voters, vec![1, 2]);
    }
}
