//! Where each client request stands at this replica, kept by one owner.
//!
//! A request is known here by its hash. It can be:
//!
//! - **queued**: at the primary, waiting to be cut into a batch (PBFT §4.2);
//! - **ordered**: in a pre-prepare of the current view that has not executed. The primary
//!   orders what it proposes, and any replica orders the requests of a re-issued batch from a
//!   NEW-VIEW. The bytes are kept so that a view change can hand them on (§4.4);
//! - **waiting**: this replica received it from a client and waits for it to execute, so its
//!   request timer watches it (§4.4). A backup relays it to the primary if the primary is slow
//!   to order it (§4.1), and hands it to the next primary at a view change;
//! - **executed**: executed recently. The replica remembers the hash (and only that, in bounded
//!   memory) so that it never queues the request again.
//!
//! Every change of state is a method here, named after the protocol event that causes it, so
//! the replica never edits these sets by hand.
//!
//! These states may overlap. One overlap is intended: a backup that receives a request that is
//! already *ordered* (say re-issued in a NEW-VIEW) also *waits* for it, because a faulty
//! primary can order a request and then never let it commit (§4.4). The others come from
//! events that move a request to a new state without taking it out of its old one:
//!
//! - executing a request does not take it out of the *queue*, so a primary that executes a
//!   request it had queued (from a re-issued batch, or by state transfer) proposes it again;
//! - a re-issued batch *orders* its requests even if they are *queued* (they are then proposed
//!   a second time) or already *executed*.
//!
//! Both happen in ordinary simulated runs with crashes, partitions and drops, and removing them
//! changes what the replicas order, so they are kept as they were. The unit tests below pin
//! them down.

use std::collections::{BTreeSet, VecDeque};

use crate::arrivals::Arrivals;
use crate::config::request_cost;

type Hash = [u8; 32];

/// The requests this replica tracks and what stage each is in (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct RequestBook {
    /// Requests for the next batch, in the order the primary received them.
    queued: Arrivals,
    /// Sum of `request_cost` over `queued`: a batch is cut as soon as a full one is waiting.
    queued_bytes: usize,
    /// Requests in unexecuted pre-prepares of this view, in the order they were ordered.
    ordered: Arrivals,
    /// Requests this replica waits for, in the order they arrived.
    waiting: Arrivals,
    /// When each waiting request arrived (tick), oldest first: a backup relays a request the
    /// primary has not ordered a while after it arrived. Entries are dropped as they come due,
    /// so this holds at most the arrivals of one relay delay.
    relay_due: VecDeque<(u64, Hash)>,
    /// Hashes of recently executed requests, with their order of execution for eviction.
    executed: BTreeSet<Hash>,
    executed_order: VecDeque<Hash>,
    /// How many executed hashes are remembered.
    executed_cap: usize,
}

impl RequestBook {
    /// An empty book remembering up to `executed_cap` executed requests.
    pub(crate) fn new(executed_cap: usize) -> Self {
        RequestBook {
            queued: Arrivals::new(),
            queued_bytes: 0,
            ordered: Arrivals::new(),
            waiting: Arrivals::new(),
            relay_due: VecDeque::new(),
            executed: BTreeSet::new(),
            executed_order: VecDeque::new(),
            executed_cap,
        }
    }

    // ------------------------------------------------------------------ queries

    pub(crate) fn is_ordered(&self, h: &Hash) -> bool {
        self.ordered.contains_key(h)
    }

    pub(crate) fn is_waiting(&self, h: &Hash) -> bool {
        self.waiting.contains_key(h)
    }

    /// Queued, ordered or executed: the primary must not queue it (again).
    pub(crate) fn is_known(&self, h: &Hash) -> bool {
        self.queued.contains_key(h) || self.ordered.contains_key(h) || self.executed.contains(h)
    }

    pub(crate) fn queued_len(&self) -> usize {
        self.queued.len()
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// The queued requests, first received first.
    pub(crate) fn queued_requests(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.queued.values()
    }

    /// Whether the primary still has requests to propose or to see executed.
    pub(crate) fn has_queued_or_ordered(&self) -> bool {
        !self.queued.is_empty() || !self.ordered.is_empty()
    }

    pub(crate) fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The requests this replica waits for, first received first.
    pub(crate) fn waiting_requests(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.waiting.values()
    }

    // ------------------------------------------------------------------ transitions

    /// The primary received a request for a batch: queued, unless it is queued, ordered or
    /// executed already. True if it was queued.
    pub(crate) fn enqueue(&mut self, h: Hash, request: Vec<u8>) -> bool {
        if self.is_known(&h) {
            return false;
        }
        self.queued_bytes += request_cost(request.len());
        self.queued.insert(h, request);
        true
    }

    /// Takes the first `n` queued requests for a batch (out of the queue, not yet ordered: the
    /// caller orders them with [`RequestBook::order`] once the batch is proposed).
    pub(crate) fn take_batch(&mut self, n: usize) -> Vec<(Hash, Vec<u8>)> {
        let mut batch = Vec::with_capacity(n.min(self.queued.len()));
        while batch.len() < n {
            let Some((h, r)) = self.queued.pop_first() else {
                break;
            };
            self.queued_bytes -= request_cost(r.len());
            batch.push((h, r));
        }
        batch
    }

    /// A pre-prepare of this view that carries the request was issued or accepted.
    pub(crate) fn order(&mut self, h: Hash, request: Vec<u8>) {
        self.ordered.insert(h, request);
    }

    /// This replica waits for the request to execute (an ordered request keeps its place).
    pub(crate) fn wait_for(&mut self, h: Hash, request: Vec<u8>) {
        self.waiting.insert(h, request);
    }

    /// A waiting request arrived at tick `now`: relay it if the primary has not ordered it
    /// by the time [`RequestBook::overdue_relays`] finds it due.
    pub(crate) fn relay_later(&mut self, now: u64, h: Hash) {
        self.relay_due.push_back((now, h));
    }

    /// Drops every relay that came due by tick `now` (`delay` ticks after its arrival) and, if
    /// `relaying`, returns the requests among them still waiting and not ordered.
    pub(crate) fn overdue_relays(&mut self, now: u64, delay: u64, relaying: bool) -> Vec<Vec<u8>> {
        let mut relay = Vec::new();
        while let Some(&(at, h)) = self.relay_due.front() {
            if now < at.saturating_add(delay) {
                break;
            }
            self.relay_due.pop_front();
            if !relaying || self.ordered.contains_key(&h) {
                continue;
            }
            if let Some(r) = self.waiting.get(&h) {
                relay.push(r.clone());
            }
        }
        relay
    }

    /// The request executed: no longer ordered nor waited for, and remembered as executed
    /// (the oldest executed hash is forgotten past the cap). A queued copy stays queued.
    pub(crate) fn executed(&mut self, h: Hash) {
        self.ordered.remove(&h);
        self.waiting.remove(&h);
        if self.executed.insert(h) {
            self.executed_order.push_back(h);
            if self.executed_order.len() > self.executed_cap {
                if let Some(old) = self.executed_order.pop_front() {
                    self.executed.remove(&old);
                }
            }
        }
    }

    /// PBFT §4.4, leaving a view: what this replica queued or ordered is not lost with the
    /// view. Each request not executed becomes waiting, to be handed to the next primary (or
    /// queued again if that is us): the ordered ones first, then the queued, each in its order.
    pub(crate) fn hand_back(&mut self) {
        let mut orphans: Vec<(Hash, Vec<u8>)> =
            std::mem::take(&mut self.ordered).into_iter().collect();
        orphans.extend(std::mem::take(&mut self.queued));
        self.queued_bytes = 0;
        for (h, r) in orphans {
            if !self.executed.contains(&h) {
                self.waiting.insert(h, r);
            }
        }
    }

    /// Entering a new view: the pre-prepares of the old one are gone, so nothing stays ordered
    /// (the NEW-VIEW's re-issued batches order their requests again).
    pub(crate) fn forget_ordered(&mut self) {
        self.ordered.clear();
    }

    /// The new primary takes over what it waited for: every waiting request is queued, unless
    /// it is queued, ordered or executed already; none stays waiting.
    pub(crate) fn queue_waiting(&mut self) {
        for (h, r) in std::mem::take(&mut self.waiting) {
            self.enqueue(h, r);
        }
    }

    /// The queued requests, first received first, with their hashes (tests only).
    #[cfg(test)]
    fn queued_hashes(&self) -> Vec<Hash> {
        self.queued.clone().into_iter().map(|(h, _)| h).collect()
    }

    #[cfg(test)]
    fn waiting_hashes(&self) -> Vec<Hash> {
        self.waiting.clone().into_iter().map(|(h, _)| h).collect()
    }

    #[cfg(test)]
    fn was_executed(&self, h: &Hash) -> bool {
        self.executed.contains(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(i: u8) -> (Hash, Vec<u8>) {
        ([i; 32], vec![i; 1 + i as usize])
    }

    /// (queued, ordered, waiting, executed) for one hash.
    fn stages(b: &RequestBook, h: &Hash) -> (bool, bool, bool, bool) {
        (
            b.queued.contains_key(h),
            b.is_ordered(h),
            b.is_waiting(h),
            b.was_executed(h),
        )
    }

    #[test]
    fn primary_life_queued_ordered_executed_one_stage_at_a_time() {
        let mut b = RequestBook::new(16);
        let (h1, r1) = req(1);
        let (h2, r2) = req(2);
        assert!(b.enqueue(h1, r1.clone()));
        assert!(b.enqueue(h2, r2.clone()));
        assert!(!b.enqueue(h1, r1.clone()), "queued twice");
        assert_eq!(stages(&b, &h1), (true, false, false, false));
        assert_eq!(b.queued_len(), 2);
        assert_eq!(
            b.queued_bytes(),
            request_cost(r1.len()) + request_cost(r2.len())
        );
        assert!(b.has_queued_or_ordered());

        let batch = b.take_batch(1);
        assert_eq!(batch, vec![(h1, r1.clone())]);
        assert_eq!(stages(&b, &h1), (false, false, false, false));
        assert_eq!(b.queued_bytes(), request_cost(r2.len()));
        b.order(h1, r1.clone());
        assert_eq!(stages(&b, &h1), (false, true, false, false));
        assert!(
            !b.enqueue(h1, r1.clone()),
            "an ordered request is not queued"
        );

        b.executed(h1);
        assert_eq!(stages(&b, &h1), (false, false, false, true));
        assert!(!b.enqueue(h1, r1), "an executed request is not queued");
        assert_eq!(b.take_batch(5), vec![(h2, r2)]);
        assert_eq!(b.queued_bytes(), 0);
        assert!(!b.has_queued_or_ordered());
    }

    #[test]
    fn backup_life_waiting_then_executed() {
        let mut b = RequestBook::new(16);
        let (h, r) = req(3);
        b.wait_for(h, r.clone());
        assert_eq!(stages(&b, &h), (false, false, true, false));
        assert!(b.has_waiting());
        assert!(
            !b.is_known(&h),
            "waiting is not known to the primary's queue"
        );
        b.executed(h);
        assert_eq!(stages(&b, &h), (false, false, false, true));
        assert!(!b.has_waiting());
        assert_eq!(b.waiting_len(), 0);
    }

    #[test]
    fn an_ordered_request_a_backup_receives_is_also_waited_for() {
        // §4.4: a faulty primary may order a request and never let it commit.
        let mut b = RequestBook::new(16);
        let (h, r) = req(4);
        b.order(h, r.clone());
        b.wait_for(h, r);
        assert_eq!(stages(&b, &h), (false, true, true, false));
        b.executed(h);
        assert_eq!(stages(&b, &h), (false, false, false, true));
    }

    #[test]
    fn a_view_change_hands_ordered_then_queued_requests_on_as_waiting() {
        let mut b = RequestBook::new(16);
        let (h1, r1) = req(1);
        let (h2, r2) = req(2);
        let (h3, r3) = req(3);
        let (h4, r4) = req(4);
        let (h5, r5) = req(5);
        b.enqueue(h1, r1.clone());
        b.enqueue(h2, r2);
        b.enqueue(h5, r5.clone());
        let batch = b.take_batch(1);
        b.order(batch[0].0, batch[0].1.clone());
        b.order(h3, r3);
        b.wait_for(h4, r4);
        // h5 is queued and then executed (say by state transfer): it stays queued.
        b.executed(h5);
        assert_eq!(stages(&b, &h5), (true, false, false, true));
        assert!(b.is_known(&h5));
        b.hand_back();
        // h4 waited already and keeps its place; the ordered come before the queued; the
        // executed h5 is not handed on.
        assert_eq!(b.waiting_hashes(), vec![h4, h1, h3, h2]);
        assert_eq!(b.queued_len(), 0);
        assert_eq!(b.queued_bytes(), 0);
        assert!(!b.has_queued_or_ordered());
        for h in [h1, h2, h3, h4] {
            assert_eq!(stages(&b, &h), (false, false, true, false));
        }
        assert_eq!(stages(&b, &h5), (false, false, false, true));

        // The new primary queues them all, in that order, and waits for none.
        b.queue_waiting();
        assert_eq!(b.queued_hashes(), vec![h4, h1, h3, h2]);
        assert!(!b.has_waiting());
        assert_eq!(
            b.queued_bytes(),
            b.queued_requests()
                .map(|r| request_cost(r.len()))
                .sum::<usize>()
        );
        // ...except what the NEW-VIEW orders again.
        let mut b2 = RequestBook::new(16);
        b2.wait_for(h1, r1.clone());
        b2.wait_for(h2, req(2).1);
        b2.forget_ordered();
        b2.order(h1, r1);
        b2.queue_waiting();
        assert_eq!(b2.queued_hashes(), vec![h2]);
        assert_eq!(stages(&b2, &h1), (false, true, false, false));
    }

    #[test]
    fn entering_a_view_forgets_what_the_old_one_ordered() {
        let mut b = RequestBook::new(16);
        let (h, r) = req(6);
        b.order(h, r.clone());
        b.wait_for(h, r);
        b.forget_ordered();
        assert_eq!(stages(&b, &h), (false, false, true, false));
        assert!(!b.has_queued_or_ordered());
    }

    #[test]
    fn re_issued_batches_order_their_requests_whatever_their_stage() {
        let mut b = RequestBook::new(16);
        let (h1, r1) = req(1);
        let (h2, r2) = req(2);
        b.enqueue(h1, r1.clone());
        b.order(h1, r1.clone());
        assert_eq!(stages(&b, &h1), (true, true, false, false));
        // Still proposed: the queue is where batches come from.
        assert_eq!(b.take_batch(1), vec![(h1, r1)]);
        b.executed(h2);
        b.order(h2, r2);
        assert_eq!(stages(&b, &h2), (false, true, false, true));
    }

    #[test]
    fn executed_memory_is_bounded_and_forgets_the_oldest_first() {
        let mut b = RequestBook::new(3);
        for i in 1..=5 {
            b.executed([i; 32]);
            b.executed([i; 32]); // executing twice does not count twice
        }
        assert_eq!(b.executed.len(), 3);
        assert_eq!(b.executed_order.len(), 3);
        assert!(!b.was_executed(&[1; 32]) && !b.was_executed(&[2; 32]));
        assert!((3..=5).all(|i| b.was_executed(&[i; 32])));
        // A forgotten request can be queued again.
        assert!(b.enqueue([1; 32], vec![1]));
    }

    #[test]
    fn relays_come_due_after_the_delay_and_only_for_unordered_waiting_requests() {
        let mut b = RequestBook::new(16);
        let (h1, r1) = req(1);
        let (h2, r2) = req(2);
        let (h3, r3) = req(3);
        let (h4, r4) = req(4);
        for (t, (h, r)) in [
            (0, (h1, &r1)),
            (1, (h2, &r2)),
            (2, (h3, &r3)),
            (5, (h4, &r4)),
        ] {
            b.wait_for(h, r.clone());
            b.relay_later(t, h);
        }
        b.order(h2, r2); // the primary ordered it: no relay
        b.executed(h3); // executed: nothing to relay
        assert_eq!(b.overdue_relays(2, 3, true), Vec::<Vec<u8>>::new());
        assert_eq!(b.overdue_relays(4, 3, true), vec![r1]);
        assert_eq!(
            b.relay_due.len(),
            2,
            "due entries are dropped, the rest kept"
        );
        assert_eq!(
            b.overdue_relays(5, 3, true),
            Vec::<Vec<u8>>::new(),
            "h3 executed"
        );
        // Not relaying (primary, or in a view change): due entries go without a relay.
        assert_eq!(b.overdue_relays(100, 3, false), Vec::<Vec<u8>>::new());
        assert!(b.relay_due.is_empty());
        assert!(b.is_waiting(&h4));
    }
}
