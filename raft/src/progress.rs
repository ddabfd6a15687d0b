//! What the leader knows about each follower's log, and the flow control of appends to it
//! (etcd's tracker/progress.go, in our own words).

use std::collections::VecDeque;

/// How the leader currently feeds a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Where the follower's log matches is unknown: one append per round trip until one
    /// succeeds (Raft §5.3 consistency-check search, sped up by reject hints).
    Probe,
    /// The follower is known to match: stream appends optimistically, up to `max_inflight`.
    Replicate,
    /// The follower needs a snapshot (its next entry is compacted); nothing else is sent
    /// until it answers or the attempt times out.
    Snapshot,
}

/// Per-follower replication progress.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to be replicated on the follower.
    pub(crate) match_index: u64,
    /// Next index to send.
    pub(crate) next_index: u64,
    pub(crate) state: ProgressState,
    /// In `Probe`: an append is outstanding, wait for its answer (or a heartbeat answer).
    pub(crate) probe_sent: bool,
    /// In `Snapshot`: the index of the snapshot sent.
    pub(crate) pending_snapshot: u64,
    /// In `Snapshot`: ticks since it was sent, to resend if it was lost.
    pub(crate) snapshot_elapsed: u32,
    /// Heard from since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// Last indexes of the appends in flight (replicate state), oldest first.
    inflights: VecDeque<u64>,
    max_inflight: usize,
}

impl Progress {
    pub(crate) fn new(next_index: u64, max_inflight: usize) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            snapshot_elapsed: 0,
            recent_active: false,
            inflights: VecDeque::new(),
            max_inflight,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.snapshot_elapsed = 0;
        self.inflights.clear();
    }

    pub(crate) fn become_probe(&mut self) {
        // Coming back from a snapshot, the follower holds at least the snapshot.
        let floor = if self.state == ProgressState::Snapshot {
            self.match_index.max(self.pending_snapshot)
        } else {
            self.match_index
        };
        self.reset_state(ProgressState::Probe);
        self.next_index = floor + 1;
    }

    pub(crate) fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_index = self.match_index + 1;
    }

    pub(crate) fn become_snapshot(&mut self, snapshot_index: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// Whether the leader must hold further appends back (flow control).
    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.len() >= self.max_inflight,
            ProgressState::Snapshot => true,
        }
    }

    /// Record that an append ending at `last` was sent (replicate state pipelining).
    pub(crate) fn sent_entries(&mut self, last: u64) {
        match self.state {
            ProgressState::Replicate => {
                self.next_index = last + 1;
                self.inflights.push_back(last);
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }

    /// A success up to `index` arrived. Returns whether `match_index` moved forward; stale
    /// or duplicated answers return false and change nothing else.
    pub(crate) fn maybe_update(&mut self, index: u64) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index.saturating_add(1));
        while self.inflights.front().is_some_and(|&i| i <= index) {
            self.inflights.pop_front();
        }
        updated
    }

    /// Make room for one more append when the window is full and the follower answered
    /// something else (a heartbeat): if appends were lost, the next one is rejected and the
    /// leader falls back to probing instead of waiting forever on a full window.
    pub(crate) fn free_first_inflight(&mut self) {
        if self.state == ProgressState::Replicate && self.inflights.len() >= self.max_inflight {
            self.inflights.pop_front();
        }
    }

    /// A rejection of the append at `rejected` arrived with the leader-side probe point
    /// `hint` (derived from the follower's reject hint). Returns false for stale rejections.
    pub(crate) fn maybe_decrease_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            // In replicate state `match_index` is authoritative: anything at or below it is a
            // stale answer; otherwise restart from just after the match.
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index + 1;
            return true;
        }
        if self.next_index.saturating_sub(1) != rejected {
            return false;
        }
        self.next_index = rejected
            .min(hint.saturating_add(1))
            .max(self.match_index + 1);
        self.probe_sent = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_window_pauses_and_frees() {
        let mut p = Progress::new(1, 2);
        p.become_replicate();
        assert!(!p.is_paused());
        p.sent_entries(3);
        p.sent_entries(5);
        assert!(p.is_paused());
        assert!(p.maybe_update(3));
        assert!(!p.is_paused());
        assert_eq!(p.next_index, 6);
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(10, 4);
        assert!(
            !p.maybe_decrease_to(5, 2),
            "probe rejection for another index is stale"
        );
        assert!(p.maybe_decrease_to(9, 2));
        assert_eq!(p.next_index, 3);
        p.match_index = 4;
        p.become_replicate();
        assert!(!p.maybe_decrease_to(4, 0));
        assert!(p.maybe_decrease_to(7, 0));
        assert_eq!(p.next_index, 5);
    }

    #[test]
    fn probe_pauses_after_one_append() {
        let mut p = Progress::new(5, 4);
        p.sent_entries(7);
        assert!(p.is_paused());
        assert_eq!(p.next_index, 5, "probe does not advance optimistically");
    }
}
