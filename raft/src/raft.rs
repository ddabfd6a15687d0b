//! The Raft state machine: roles, terms, elections, replication, commit, reads and transfer.
//!
//! Pure and deterministic: inputs are messages, ticks and client requests; outputs are queued
//! in `msgs`, `read_states` and the log's unstable/committed cursors, drained by
//! [`crate::RawNode::ready`].

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::config::{Config, MESSAGE_OVERHEAD};
use crate::error::{ProposeError, RaftError};
use crate::log::RaftLog;
use crate::message::{Entry, HardState, Membership, Message, MessageBody, NodeId, Snapshot};
use crate::progress::{Progress, ProgressState};
use crate::read_only::{ReadOnly, ReadState};

/// The role a member currently plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Passive: answers leaders and candidates (Raft §5.1).
    Follower,
    /// Asking whether an election could be won, without changing term (thesis §9.6).
    PreCandidate,
    /// Campaigning in a new term (Raft §5.2).
    Candidate,
    /// Handles all client requests and replicates the log (Raft §5.3).
    Leader,
}

pub(crate) struct Raft {
    pub(crate) id: NodeId,
    pub(crate) cfg: Config,
    /// The membership before any configuration entry or snapshot (the static config).
    initial: Membership,
    /// The membership in force: the latest in the log (thesis §4.1), else `initial`.
    conf: Membership,
    pub(crate) term: u64,
    pub(crate) vote: Option<NodeId>,
    pub(crate) leader: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) log: RaftLog,
    prs: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    pub(crate) msgs: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    read_only: ReadOnly,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,
    transferee: Option<NodeId>,
    /// Proposals were appended since the last broadcast; sent at the next `ready()` so that
    /// several proposals share one AppendEntries (batching).
    pub(crate) pending_bcast: bool,
    /// The last log position the driver reported durable (`(index, term)`; with
    /// `parallel_leader_append` the leader counts only this much of its own log).
    durable: (u64, u64),
    rng: ChaCha8Rng,
}

impl Raft {
    pub(crate) fn new(cfg: Config, hs: HardState, log: RaftLog) -> Self {
        // `Config::validate` refused an empty or overlapping membership.
        let initial = Membership::new(cfg.voters.clone(), cfg.learners.clone()).unwrap_or_default();
        let conf = log
            .latest_conf()
            .cloned()
            .unwrap_or_else(|| initial.clone());
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut r = Raft {
            id: cfg.id,
            initial,
            conf,
            term: hs.term,
            vote: hs.vote,
            leader: None,
            role: Role::Follower,
            log,
            prs: BTreeMap::new(),
            votes: BTreeMap::new(),
            msgs: Vec::new(),
            read_states: Vec::new(),
            read_only: ReadOnly::default(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_tick,
            transferee: None,
            pending_bcast: false,
            durable: (0, 0),
            rng,
            cfg,
        };
        // What the node restarted from is on disk.
        r.durable = (r.log.last_index(), r.log.last_term());
        r.become_follower(hs.term, None);
        r
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    fn quorum(&self) -> usize {
        self.conf.quorum()
    }

    /// The membership in force.
    pub(crate) fn membership(&self) -> &Membership {
        &self.conf
    }

    fn is_voter(&self) -> bool {
        self.conf.is_voter(self.id)
    }

    /// Whether this node may campaign: a voter, or a voter being removed by a change that is
    /// not committed yet. Thesis §4.2.2: such a server "might still be needed until the C_new
    /// entry is committed" — if the leader that appended it is gone and only this node holds
    /// the entry, no other voter's log is up to date enough to win. It then counts only the
    /// new configuration's votes (`poll`), commits the change and steps down.
    fn promotable(&self) -> bool {
        if self.is_voter() {
            return true;
        }
        let at = self.log.latest_conf_index();
        at > self.log.committed
            && self
                .log
                .conf_at(at - 1)
                .unwrap_or(&self.initial)
                .is_voter(self.id)
    }

    /// Thesis §4.1: a member uses the latest configuration in its log as soon as it is
    /// appended, and the previous one again if it is truncated away. A leader starts or stops
    /// replicating to the members that came or went; a candidate that is no longer a voter
    /// gives up.
    fn refresh_conf(&mut self) {
        // Called on every append with new entries: compare first, clone only on a change.
        let latest = self.log.latest_conf().unwrap_or(&self.initial);
        if *latest == self.conf {
            return;
        }
        self.conf = latest.clone();
        if self.role == Role::Leader {
            let next = self.log.last_index() + 1;
            let max_inflight = self.cfg.max_inflight;
            let (me, conf) = (self.id, &self.conf);
            self.prs.retain(|id, _| *id == me || conf.contains(*id));
            for id in self.conf.members() {
                self.prs
                    .entry(id)
                    .or_insert_with(|| Progress::new(next, max_inflight));
            }
            if self.transferee.is_some_and(|t| !self.conf.is_voter(t)) {
                self.transferee = None;
            }
        } else if self.role != Role::Follower && !self.promotable() {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    pub(crate) fn randomized_election_timeout(&self) -> u32 {
        self.randomized_election_timeout
    }

    fn send(&mut self, to: NodeId, term: u64, body: MessageBody) {
        self.msgs.push(Message {
            from: self.id,
            to,
            term,
            body,
        });
    }

    // ---------------------------------------------------------------- role changes

    /// Common reset on every role change. A new term clears the vote (one vote per term, §5.2).
    fn reset(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.votes.clear();
        self.transferee = None;
        self.read_only.reset();
        self.pending_bcast = false;
        let next = self.log.last_index() + 1;
        let max_inflight = self.cfg.max_inflight;
        self.prs = self
            .conf
            .members()
            .map(|id| (id, Progress::new(next, max_inflight)))
            .collect();
        let me_match = self.own_match();
        if let Some(me) = self.prs.get_mut(&self.id) {
            me.match_index = me_match;
            me.recent_active = true;
        }
    }

    /// Raft §5.2: election timeouts are drawn from [election_tick, 2 * election_tick) so that
    /// usually one member times out first and wins before others start.
    fn reset_randomized_election_timeout(&mut self) {
        let base = self.cfg.election_tick.max(1);
        self.randomized_election_timeout = base + (self.rng.next_u64() % u64::from(base)) as u32;
    }

    pub(crate) fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    /// Thesis §9.6: a pre-candidate keeps its term and vote; it only asks.
    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.election_elapsed = 0;
        self.reset_randomized_election_timeout();
    }

    /// Raft §5.2: increment the term and vote for self.
    fn become_candidate(&mut self) {
        let term = self.term + 1;
        self.reset(term);
        self.vote = Some(self.id);
        self.role = Role::Candidate;
    }

    /// Raft §8: a new leader appends a no-op of its term, so that entries of earlier terms
    /// can be committed (they commit together with it, §5.4.2) and so that ReadIndex has a
    /// current-term commit to wait for (thesis §6.4).
    fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.append_entry(None, Vec::new());
        self.bcast_append();
        self.maybe_commit();
    }

    /// Start an election: a pre-vote round first when configured, unless the leader asked us
    /// to take over (transfer), which must not be delayed.
    fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        if !self.promotable() {
            return; // a learner or a removed member never leads (thesis §4.2.1)
        }
        let vote_term = if pre_vote {
            self.become_pre_candidate();
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        if self.poll(self.id, true) {
            return;
        }
        let last_log_index = self.log.last_index();
        let last_log_term = self.log.last_term();
        let voters: Vec<NodeId> = self
            .conf
            .voters
            .iter()
            .copied()
            .filter(|&v| v != self.id)
            .collect();
        for to in voters {
            self.send(
                to,
                vote_term,
                MessageBody::RequestVote {
                    last_log_index,
                    last_log_term,
                    pre_vote,
                    transfer,
                },
            );
        }
    }

    /// Count a (pre-)vote; act when the outcome is decided. Returns true if the role changed.
    fn poll(&mut self, from: NodeId, granted: bool) -> bool {
        if !self.conf.is_voter(from) {
            return false; // only voters of the membership in force count (thesis §4.1)
        }
        self.votes.entry(from).or_insert(granted);
        let yes = self.votes.values().filter(|&&g| g).count();
        let no = self.votes.len() - yes;
        let q = self.quorum();
        if yes >= q {
            if self.role == Role::PreCandidate {
                self.campaign(false, false);
            } else {
                self.become_leader();
            }
            true
        } else if no >= q {
            // Lost: wait for the winner (or the next timeout) as a follower of this term.
            let term = self.term;
            self.become_follower(term, None);
            true
        } else {
            false
        }
    }

    // ---------------------------------------------------------------- ticks

    pub(crate) fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.election_elapsed >= self.randomized_election_timeout && self.promotable() {
                // Raft §5.2: no word from a leader for an election timeout: campaign.
                self.election_elapsed = 0;
                self.campaign(self.cfg.pre_vote, false);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                // Check quorum (thesis §6.2): a leader cut off from a majority steps down
                // rather than serving stale reads or accepting doomed proposals.
                let active = self
                    .prs
                    .iter()
                    .filter(|(id, p)| p.recent_active && self.conf.is_voter(**id))
                    .count();
                if active < self.quorum() {
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
                let me = self.id;
                for (id, p) in self.prs.iter_mut() {
                    p.recent_active = *id == me;
                }
            }
            // Thesis §3.10: a transfer that has not completed within an election timeout is
            // abandoned so the leader accepts proposals again.
            self.transferee = None;
        }
        // A snapshot that got no answer for an election timeout was probably lost: retry.
        let election_tick = self.cfg.election_tick;
        for p in self.prs.values_mut() {
            if p.state == ProgressState::Snapshot {
                p.snapshot_elapsed += 1;
                if p.snapshot_elapsed >= election_tick {
                    p.become_probe();
                }
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            let ctx = self.read_only.heartbeat_seq();
            self.read_only.unsent = false;
            self.bcast_heartbeat(ctx);
        }
    }

    // ---------------------------------------------------------------- leader sending

    fn append_entry(&mut self, conf: Option<Membership>, data: Vec<u8>) -> u64 {
        let index = self.log.last_index() + 1;
        let changes_conf = conf.is_some();
        self.log.push(Entry {
            term: self.term,
            index,
            conf,
            data,
        });
        if changes_conf {
            self.refresh_conf();
        }
        let parallel = self.cfg.parallel_leader_append;
        if let Some(me) = self.prs.get_mut(&self.id) {
            if !parallel {
                me.match_index = index;
            }
            me.next_index = index + 1;
        }
        index
    }

    /// How much of its own log this node may count towards a commit: all of it under the
    /// plain contract (the driver persists a `Ready` before anything else happens), else only
    /// what the driver reported durable and the log still holds (thesis §10.2.1).
    fn own_match(&self) -> u64 {
        let last = self.log.last_index();
        if !self.cfg.parallel_leader_append {
            return last;
        }
        let (index, term) = self.durable;
        if self.log.term(index) == Some(term) {
            index.min(last)
        } else {
            // The entry reported durable was overwritten since: count nothing new until the
            // driver reports again.
            self.log.snapshot_index().min(last)
        }
    }

    /// The driver made the log durable up to `(index, term)`; see
    /// [`crate::RawNode::on_persisted`].
    pub(crate) fn on_persisted(&mut self, index: u64, term: u64) {
        if self.log.term(index) != Some(term) {
            return; // stale: that entry has been overwritten since
        }
        self.durable = (index, term);
        if self.role != Role::Leader {
            return;
        }
        let own = self.own_match();
        let advanced = match self.prs.get_mut(&self.id) {
            Some(me) if own > me.match_index => {
                me.match_index = own;
                true
            }
            _ => false,
        };
        if advanced {
            self.maybe_commit();
        }
    }

    /// Send the next append (or snapshot) to `to` if flow control allows. Returns whether a
    /// message was sent.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let Some(pr) = self.prs.get(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let prev = pr.next_index.saturating_sub(1);
        let prev_term = self.log.term(prev);
        let ents = self.log.entries_from(
            pr.next_index,
            self.cfg.max_entries_per_msg,
            self.cfg.max_msg_bytes.saturating_sub(MESSAGE_OVERHEAD),
        );
        match (prev_term, ents) {
            (Some(prev_log_term), Some(entries)) => {
                if entries.is_empty() && !allow_empty {
                    return false;
                }
                let last = entries.last().map_or(prev, |e| e.index);
                if let Some(pr) = self.prs.get_mut(&to) {
                    if entries.is_empty() {
                        if pr.state == ProgressState::Probe {
                            pr.probe_sent = true;
                        }
                    } else {
                        pr.sent_entries(last);
                    }
                }
                let body = MessageBody::AppendEntries {
                    prev_log_index: prev,
                    prev_log_term,
                    entries,
                    leader_commit: self.log.committed,
                    read_ctx: None,
                };
                self.send(to, self.term, body);
                true
            }
            _ => {
                // Raft §7: the entries this follower needs are compacted away.
                let Some(snapshot) = self.log.snapshot.clone() else {
                    return false;
                };
                if let Some(pr) = self.prs.get_mut(&to) {
                    pr.become_snapshot(snapshot.index);
                }
                self.send(to, self.term, MessageBody::InstallSnapshot { snapshot });
                true
            }
        }
    }

    /// Everyone this leader replicates to: voters and learners (thesis §4.2.1), not itself.
    fn peers(&self) -> Vec<NodeId> {
        self.conf.members().filter(|&v| v != self.id).collect()
    }

    /// Send pending entries to every follower, pipelining as far as flow control allows.
    pub(crate) fn bcast_append(&mut self) {
        for to in self.peers() {
            while self.send_append(to, false) {}
        }
    }

    /// One heartbeat per follower: an empty append at the follower's known match point, with
    /// the commit index capped at that match so the follower never learns a commit for an
    /// entry it may not hold, and optionally a ReadIndex round to confirm leadership.
    pub(crate) fn bcast_heartbeat(&mut self, read_ctx: Option<u64>) {
        for to in self.peers() {
            let Some(pr) = self.prs.get(&to) else {
                continue;
            };
            let (prev, prev_term, commit) = match self.log.term(pr.match_index) {
                Some(t) => (pr.match_index, t, pr.match_index.min(self.log.committed)),
                // Match point compacted: (0, 0) always passes the check and teaches nothing.
                None => (0, 0, 0),
            };
            let body = MessageBody::AppendEntries {
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries: Vec::new(),
                leader_commit: commit,
                read_ctx,
            };
            self.send(to, self.term, body);
        }
    }

    /// Raft §5.3/§5.4.2: commit the highest index stored on a quorum, but only if it is of
    /// the current term; older entries are committed indirectly with it (figure 8).
    fn maybe_commit(&mut self) -> bool {
        // Only voters count; a leader that is removing itself counts only the others (thesis
        // §4.2.2).
        let mut matched: Vec<u64> = self
            .conf
            .voters
            .iter()
            .map(|v| self.prs.get(v).map_or(0, |p| p.match_index))
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&mci) = matched.get(self.quorum() - 1) else {
            return false;
        };
        if mci > self.log.committed && self.log.term(mci) == Some(self.term) {
            self.log.commit_to(mci);
            self.on_commit_in_term();
            if !self.is_voter() && self.log.committed >= self.log.latest_conf_index() {
                // Thesis §4.2.2: a leader removed by the configuration it just committed
                // steps down; the remaining voters elect a leader among themselves.
                let term = self.term;
                self.become_follower(term, None);
            }
            true
        } else {
            false
        }
    }

    fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    /// Reads that arrived before the first commit of this term can proceed now.
    fn on_commit_in_term(&mut self) {
        if self.read_only.awaiting_commit.is_empty() || !self.committed_in_term() {
            return;
        }
        let ctxs = std::mem::take(&mut self.read_only.awaiting_commit);
        for ctx in ctxs {
            self.start_read(ctx);
        }
    }

    fn start_read(&mut self, ctx: u64) {
        let index = self.log.committed;
        if self.conf.voters == [self.id] {
            self.read_states.push(ReadState { ctx, index });
        } else {
            self.read_only.add(ctx, index);
        }
    }

    // ---------------------------------------------------------------- client requests

    pub(crate) fn propose(&mut self, data: Vec<u8>) -> Result<u64, ProposeError> {
        if data.is_empty() {
            return Err(ProposeError::Empty);
        }
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        // An entry that cannot fit in one AppendEntries would be retried forever at the head
        // of the follower's log and stall replication (§5.3 sends entries in log order), so
        // it is refused here, where the client can still be told.
        let max = self.cfg.max_entry_data_bytes();
        if data.len() > max {
            return Err(ProposeError::TooLarge {
                size: data.len(),
                max,
            });
        }
        let index = self.append_entry(None, data);
        self.pending_bcast = true;
        self.maybe_commit();
        Ok(index)
    }

    /// Thesis §4.1 single-server membership change: appends a configuration entry for
    /// `conf`, in force from now on for this leader (and for each follower once appended).
    /// Refused while an earlier change is uncommitted (changes go one at a time) and until
    /// an entry of this leader's term has committed: without that, a leader elected under
    /// one configuration could commit a change that overlaps an uncommitted change of a
    /// previous leader without a common majority (the bug Ongaro fixed on raft-dev in 2015).
    /// `data` goes to the application with the entry.
    pub(crate) fn propose_conf_change(
        &mut self,
        conf: Membership,
        data: Vec<u8>,
    ) -> Result<u64, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if !conf.is_well_formed() {
            return Err(ProposeError::InvalidMembership(
                "no voter, unsorted, duplicated, or both voter and learner",
            ));
        }
        if !self.conf.is_single_step_to(&conf) {
            return Err(ProposeError::InvalidMembership(
                "more than one voter added or removed at once",
            ));
        }
        if self.log.latest_conf_index() > self.log.committed || !self.committed_in_term() {
            return Err(ProposeError::ConfChangePending);
        }
        let max = self
            .cfg
            .max_entry_data_bytes()
            .saturating_sub(conf.encoded_bound());
        if data.len() > max {
            return Err(ProposeError::TooLarge {
                size: data.len(),
                max,
            });
        }
        let index = self.append_entry(Some(conf), data);
        self.pending_bcast = true;
        self.maybe_commit();
        Ok(index)
    }

    /// Thesis §6.4 ReadIndex.
    pub(crate) fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if !self.committed_in_term() {
            // Step 1: until an entry of this term commits, our commit index may lag the
            // true one; wait for the no-op.
            self.read_only.awaiting_commit.push(ctx);
        } else {
            self.start_read(ctx);
        }
        Ok(())
    }

    pub(crate) fn has_unsent_read_round(&self) -> bool {
        self.read_only.unsent
    }

    /// Flush deferred broadcasts (batched proposals, a new read round). Called by `ready()`.
    pub(crate) fn flush(&mut self) {
        if self.role != Role::Leader {
            self.pending_bcast = false;
            self.read_only.unsent = false;
            return;
        }
        if self.pending_bcast {
            self.pending_bcast = false;
            self.bcast_append();
        }
        if self.read_only.unsent {
            self.read_only.unsent = false;
            let ctx = self.read_only.heartbeat_seq();
            self.bcast_heartbeat(ctx);
        }
    }

    /// Thesis §3.10: bring the target up to date, then tell it to campaign at once.
    pub(crate) fn transfer_leadership(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if !self.conf.is_voter(to) {
            return Err(ProposeError::UnknownPeer(to));
        }
        if to == self.id || self.transferee == Some(to) {
            return Ok(());
        }
        self.transferee = Some(to);
        // The transfer must finish within an election timeout (checked in tick_leader).
        self.election_elapsed = 0;
        let caught_up = self
            .prs
            .get(&to)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(to, self.term, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    pub(crate) fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), RaftError> {
        // Raft §7 sends the snapshot in one InstallSnapshot here (no chunking): data that
        // cannot fit would leave every follower behind it unable to catch up.
        let max = self.cfg.max_msg_bytes.saturating_sub(MESSAGE_OVERHEAD);
        if data.len() > max {
            return Err(RaftError::SnapshotTooLarge {
                size: data.len(),
                max,
            });
        }
        let conf = self
            .log
            .conf_at(index)
            .cloned()
            .unwrap_or_else(|| self.initial.clone());
        let max = max.saturating_sub(conf.encoded_bound());
        if data.len() > max {
            return Err(RaftError::SnapshotTooLarge {
                size: data.len(),
                max,
            });
        }
        if self.log.compact(index, conf, data) {
            Ok(())
        } else {
            Err(RaftError::CompactOutOfRange {
                index,
                snapshot_index: self.log.snapshot_index(),
                applied: self.log.applied.min(self.log.last_index()),
            })
        }
    }

    // ---------------------------------------------------------------- receiving

    pub(crate) fn step(&mut self, m: Message) -> Result<(), RaftError> {
        if m.to != self.id {
            return Err(RaftError::WrongRecipient {
                to: m.to,
                me: self.id,
            });
        }
        // Thesis §4.1: requests are processed without consulting the configuration. A leader
        // or a candidate may be a voter of a configuration entry this node has not received
        // yet, and refusing it could leave nobody able to win (a new voter that holds the
        // only up-to-date log needs the vote of one that has not heard of it). Answers from
        // non-members are ignored where they are counted (`poll`, `prs`); the transport's
        // allow-list keeps strangers out, and the leader lease (`in_lease`) keeps a removed
        // member's elections from disrupting the cluster (thesis §4.2.3).
        if m.from == self.id {
            return Err(RaftError::UnknownPeer(m.from));
        }
        if m.term > self.term {
            match &m.body {
                MessageBody::RequestVote {
                    pre_vote, transfer, ..
                } => {
                    // Leader lease (thesis §4.2.3/§6.2 with check-quorum): while we hear
                    // from a live leader, a vote request is from a disruptive member (e.g.
                    // one rejoining from a partition) and is ignored, not even answered.
                    let in_lease = self.cfg.check_quorum
                        && self.leader.is_some()
                        && self.election_elapsed < self.cfg.election_tick;
                    if !transfer && in_lease {
                        return Ok(());
                    }
                    if !pre_vote {
                        self.become_follower(m.term, None);
                    }
                }
                // Thesis §9.6: a granted pre-vote carries the term we would campaign for; we
                // only move to it once a quorum grants.
                MessageBody::RequestVoteResponse {
                    granted: true,
                    pre_vote: true,
                } => {}
                MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. } => {
                    // Raft §5.1: a higher term means we are stale; the sender is its leader.
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match &m.body {
                MessageBody::AppendEntries { .. } if self.cfg.check_quorum || self.cfg.pre_vote => {
                    // A deposed leader (e.g. back from a partition) would otherwise never
                    // hear of the new term: with pre-vote nobody campaigns against it and
                    // with check-quorum nobody answers its votes. Tell it our term (§5.1).
                    self.send(
                        m.from,
                        self.term,
                        MessageBody::AppendEntriesResponse {
                            success: false,
                            match_index: 0,
                            reject_hint: None,
                            read_ctx: None,
                        },
                    );
                }
                MessageBody::RequestVote { pre_vote: true, .. } => {
                    // Thesis §9.6: reject with our term so the pre-candidate catches up.
                    self.send(
                        m.from,
                        self.term,
                        MessageBody::RequestVoteResponse {
                            granted: false,
                            pre_vote: true,
                        },
                    );
                }
                // Raft §5.1: anything else from a stale term is ignored.
                _ => {}
            }
            return Ok(());
        }

        if let MessageBody::RequestVote {
            last_log_index,
            last_log_term,
            pre_vote,
            ..
        } = m.body
        {
            self.handle_vote_request(m.from, m.term, last_log_index, last_log_term, pre_vote);
            return Ok(());
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
    }

    /// Raft §5.2 (one vote per term, first come first served) and §5.4.1 (only for a log at
    /// least as up-to-date as ours); thesis §9.6 for pre-votes, which any member may grant
    /// for a future term without recording anything.
    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: u64,
        last_index: u64,
        last_term: u64,
        pre_vote: bool,
    ) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && term > self.term);
        if can_vote && self.log.is_up_to_date(last_index, last_term) {
            self.send(
                from,
                term,
                MessageBody::RequestVoteResponse {
                    granted: true,
                    pre_vote,
                },
            );
            if !pre_vote {
                self.vote = Some(from);
                // Granting a vote defers our own candidacy (§5.2).
                self.election_elapsed = 0;
            }
        } else {
            self.send(
                from,
                self.term,
                MessageBody::RequestVoteResponse {
                    granted: false,
                    pre_vote,
                },
            );
        }
    }

    fn step_leader(&mut self, m: Message) -> Result<(), RaftError> {
        if let Some(p) = self.prs.get_mut(&m.from) {
            p.recent_active = true;
        }
        match m.body {
            MessageBody::AppendEntriesResponse {
                success,
                match_index,
                reject_hint,
                read_ctx,
            } => {
                if let Some(seq) = read_ctx.filter(|_| self.conf.is_voter(m.from)) {
                    // Any voter's answer in our term confirms we were still leader when the
                    // round started (thesis §6.4 step 3). `release` counts the leader itself,
                    // which a leader removing itself must not (thesis §4.2.2).
                    self.read_only.ack(m.from, seq);
                    let quorum = self.quorum() + usize::from(!self.is_voter());
                    let released = self.read_only.release(quorum);
                    self.read_states.extend(released);
                }
                self.handle_append_response(m.from, success, match_index, reject_hint);
                Ok(())
            }
            MessageBody::InstallSnapshotResponse { match_index } => {
                self.handle_snapshot_response(m.from, match_index);
                Ok(())
            }
            MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. } => {
                Err(RaftError::InvalidMessage {
                    from: m.from,
                    reason: "second leader in the same term",
                })
            }
            _ => Ok(()),
        }
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: u64,
        hint: Option<(u64, u64)>,
    ) {
        let last = self.log.last_index();
        if !success {
            // Fast back-off: the follower told us where its log may agree with ours; skip
            // every entry of ours whose term is above the follower's term at that point.
            let probe = match hint {
                Some((hi, ht)) if ht > 0 => self.log.find_conflict_by_term(hi, ht),
                Some((hi, _)) => hi,
                None => index.saturating_sub(1),
            };
            let Some(pr) = self.prs.get_mut(&from) else {
                return;
            };
            if pr.maybe_decrease_to(index, probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from, true);
            }
            return;
        }
        // A success can never be for an index we do not have; clamp a lying peer.
        let index = index.min(last);
        let Some(pr) = self.prs.get_mut(&from) else {
            return;
        };
        if pr.maybe_update(index) {
            match pr.state {
                ProgressState::Probe => pr.become_replicate(),
                ProgressState::Snapshot if pr.match_index >= pr.pending_snapshot => {
                    pr.become_probe()
                }
                _ => {}
            }
            let caught_up = pr.match_index == last;
            self.maybe_commit();
            if caught_up && self.transferee == Some(from) {
                // Thesis §3.10: the target has everything; let it campaign now.
                self.send(from, self.term, MessageBody::TimeoutNow);
            }
            while self.send_append(from, false) {}
        } else {
            // A heartbeat answer (or a duplicate). A follower that is behind gets an append:
            // in probe state this resumes a probe whose message was lost, in replicate state
            // an empty append at our send point reveals lost appends through its rejection.
            if pr.state == ProgressState::Probe {
                pr.probe_sent = false;
            }
            pr.free_first_inflight();
            if pr.match_index < last {
                self.send_append(from, true);
            }
        }
    }

    fn handle_snapshot_response(&mut self, from: NodeId, index: u64) {
        let index = index.min(self.log.last_index());
        let Some(pr) = self.prs.get_mut(&from) else {
            return;
        };
        pr.maybe_update(index);
        if pr.state == ProgressState::Snapshot && pr.match_index >= pr.pending_snapshot {
            pr.become_probe();
        }
        self.maybe_commit();
        while self.send_append(from, false) {}
    }

    fn step_candidate(&mut self, m: Message) -> Result<(), RaftError> {
        match m.body {
            MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. } => {
                // Raft §5.2: a leader of our term exists; return to follower.
                self.become_follower(m.term, Some(m.from));
                self.step_follower(m)
            }
            MessageBody::RequestVoteResponse { granted, pre_vote } => {
                let pre = self.role == Role::PreCandidate;
                if pre_vote != pre {
                    return Ok(());
                }
                // A granted pre-vote names our next term, a rejection our current one;
                // anything else belongs to an earlier round.
                let expected = if pre && granted {
                    self.term + 1
                } else {
                    self.term
                };
                if m.term == expected {
                    self.poll(m.from, granted);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step_follower(&mut self, m: Message) -> Result<(), RaftError> {
        match m.body {
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
                read_ctx,
            } => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                self.handle_append(
                    m.from,
                    m.term,
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                    read_ctx,
                )
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                self.handle_snapshot(m.from, m.term, snapshot)
            }
            MessageBody::TimeoutNow => {
                // Thesis §3.10: the leader asks us to take over; skip pre-vote and the lease.
                self.campaign(false, true);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn reply_append(
        &mut self,
        to: NodeId,
        success: bool,
        match_index: u64,
        reject_hint: Option<(u64, u64)>,
        read_ctx: Option<u64>,
    ) {
        self.send(
            to,
            self.term,
            MessageBody::AppendEntriesResponse {
                success,
                match_index,
                reject_hint,
                read_ctx,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_append(
        &mut self,
        from: NodeId,
        term: u64,
        prev: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        leader_commit: u64,
        read_ctx: Option<u64>,
    ) -> Result<(), RaftError> {
        let invalid = |reason| Err(RaftError::InvalidMessage { from, reason });
        // Validate shape before touching the log: contiguous indexes after prev, terms not
        // decreasing, none above prev_term's successor bound or the leader's term.
        let mut expected_index = prev;
        let mut last_term = prev_term;
        for e in &entries {
            expected_index = match expected_index.checked_add(1) {
                Some(i) => i,
                None => return invalid("entry index overflow"),
            };
            if e.index != expected_index {
                return invalid("entries not contiguous after prev_log_index");
            }
            if e.term < last_term || e.term > term {
                return invalid("entry terms out of order");
            }
            if e.conf.as_ref().is_some_and(|c| !c.is_well_formed()) {
                return invalid("malformed configuration entry");
            }
            last_term = e.term;
        }
        if prev_term > term {
            return invalid("prev_log_term above leader term");
        }
        let committed = self.log.committed;
        if prev < committed {
            // Everything up to our commit index matches any current leader (leader
            // completeness, §5.4); tell it where we are so it resumes from there.
            self.reply_append(from, true, committed, None, read_ctx);
            return Ok(());
        }
        if self.log.matches(prev, prev_term) {
            let last_new = expected_index;
            let conflict = self.log.find_conflict(&entries);
            if conflict != 0 {
                if conflict <= committed {
                    return invalid("append conflicts with a committed entry");
                }
                // Raft §5.3: delete the conflicting entry and all that follow, then append.
                let start = (conflict - prev - 1) as usize;
                self.log.truncate_and_append(&entries[start..]);
                self.refresh_conf();
            }
            // Raft §5.3 rule 5: commit up to min(leaderCommit, index of last new entry).
            self.log.commit_to(leader_commit.min(last_new));
            self.reply_append(from, true, last_new, None, read_ctx);
        } else {
            // Raft §5.3 consistency check failed. Hint: the last index not after prev whose
            // term is at most prev_term (or our last index if we are shorter).
            let hint_index = self
                .log
                .find_conflict_by_term(prev.min(self.log.last_index()), prev_term);
            let hint_term = self.log.term(hint_index).unwrap_or(0);
            self.reply_append(from, false, prev, Some((hint_index, hint_term)), read_ctx);
        }
        Ok(())
    }

    fn handle_snapshot(
        &mut self,
        from: NodeId,
        term: u64,
        snap: Snapshot,
    ) -> Result<(), RaftError> {
        if snap.index == 0 || snap.term == 0 || snap.term > term || !snap.conf.is_well_formed() {
            return Err(RaftError::InvalidMessage {
                from,
                reason: "malformed snapshot",
            });
        }
        let committed = self.log.committed;
        if snap.index <= committed {
            // Stale: we already have (and may have applied) more than it covers.
        } else if self.log.matches(snap.index, snap.term) {
            // We hold the snapshot's last entry, so our prefix matches: just commit it.
            self.log.commit_to(snap.index);
        } else {
            // Raft §7: discard the log and take the snapshot.
            self.log.restore(snap);
            self.refresh_conf();
        }
        let match_index = self.log.committed;
        self.send(
            from,
            self.term,
            MessageBody::InstallSnapshotResponse { match_index },
        );
        Ok(())
    }

    pub(crate) fn is_transferring(&self) -> Option<NodeId> {
        self.transferee
    }

    pub(crate) fn has_pending_reads(&self) -> bool {
        self.read_only.has_pending()
    }
}
