//! Where each client request stands at this replica, kept by one owner.
//!
//! A request is known here by its hash, and is in exactly one [`Stage`]:
//!
//! - **queued**: at the primary, waiting to be cut into a batch (PBFT §4.2);
//! - **ordered**: in a pre-prepare of the current view that has not executed. The primary
//!   orders what it proposes, and any replica orders the requests of a re-issued batch from a
//!   NEW-VIEW. The bytes are kept so that a view change can hand them on (§4.4);
//! - **waiting**: this replica received it from a client and waits for it to execute, so its
//!   request timer watches it (§4.4). A backup relays it to the primary if the primary is slow
//!   to order it (§4.1), and hands it to the next primary at a view change;
//! - **ordered and waited for**: a backup that receives a request which is already ordered
//!   (say re-issued in a NEW-VIEW) still waits for it, because a faulty primary can order a
//!   request and then never let it commit (§4.4);
//! - **executed**: executed recently. The replica remembers the hash (and only that, in bounded
//!   memory) so that it never queues, orders or waits for the request again.
//!
//! Every change of stage is a method here, named after the protocol event that causes it, so
//! the replica never edits these sets by hand, and each method moves a request out of its old
//! stage as it moves it into the new one: executing a request takes it out of the queue (a
//! primary does not propose again what a re-issued batch or state transfer executed), and a
//! re-issued batch takes its requests out of the queue (they are not proposed twice) but
//! leaves executed ones executed (nothing would ever execute them again, and a primary that
//! counted them as ordered would suspect its own view). The property test at the bottom drives
//! random sequences of events and checks after each that every hash is in one stage.

use std::collections::{BTreeSet, VecDeque};

use crate::arrivals::Arrivals;
use crate::config::request_cost;

type Hash = [u8; 32];

/// Where one request stands (see the module docs); [`RequestBook::stage`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    Queued,
    Ordered,
    Waiting,
    OrderedAndWaiting,
    Executed,
}

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

    /// The one stage `h` is in, if this replica knows of it.
    pub(crate) fn stage(&self, h: &Hash) -> Option<Stage> {
        if self.executed.contains(h) {
            return Some(Stage::Executed);
        }
        if self.queued.contains_key(h) {
            return Some(Stage::Queued);
        }
        match (self.ordered.contains_key(h), self.waiting.contains_key(h)) {
            (true, true) => Some(Stage::OrderedAndWaiting),
            (true, false) => Some(Stage::Ordered),
            (false, true) => Some(Stage::Waiting),
            (false, false) => None,
        }
    }

    /// Queued, ordered or executed: the primary must not queue it (again).
    fn is_known(&self, h: &Hash) -> bool {
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

    /// How many requests this replica knows of that have not executed here (queued, ordered
    /// or waited for), each counted once. The node reads it with every status, so it walks
    /// only the smaller of the ordered and waiting sets (a backup under load waits for many
    /// requests and has few ordered; a primary the reverse).
    pub(crate) fn unexecuted_len(&self) -> usize {
        let (small, large) = if self.ordered.len() <= self.waiting.len() {
            (&self.ordered, &self.waiting)
        } else {
            (&self.waiting, &self.ordered)
        };
        let both = small.keys().filter(|h| large.contains_key(h)).count();
        self.queued.len() + self.ordered.len() + self.waiting.len() - both
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
    /// executed already (one it waited for is no longer waited for: the queue now holds it).
    /// True if it was queued.
    pub(crate) fn enqueue(&mut self, h: Hash, request: Vec<u8>) -> bool {
        if self.is_known(&h) {
            return false;
        }
        self.waiting.remove(&h);
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

    /// A pre-prepare of this view that carries the request was issued or accepted: a queued
    /// request leaves the queue (a re-issued batch carries it, so it is not proposed again), a
    /// waited-for one stays waited for, an executed one stays executed.
    pub(crate) fn order(&mut self, h: Hash, request: Vec<u8>) {
        if self.executed.contains(&h) {
            return;
        }
        self.unqueue(&h);
        self.ordered.insert(h, request);
    }

    /// This replica waits for the request to execute (an ordered request stays ordered). One
    /// that is queued here is already on its way, and one that executed has nothing to wait for.
    pub(crate) fn wait_for(&mut self, h: Hash, request: Vec<u8>) {
        if self.queued.contains_key(&h) || self.executed.contains(&h) {
            return;
        }
        self.waiting.insert(h, request);
    }

    fn unqueue(&mut self, h: &Hash) {
        if let Some(r) = self.queued.remove(h) {
            self.queued_bytes -= request_cost(r.len());
        }
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

    /// The request executed: no longer queued, ordered nor waited for, and remembered as
    /// executed (the oldest executed hash is forgotten past the cap).
    pub(crate) fn executed(&mut self, h: Hash) {
        self.unqueue(&h);
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

    /// PBFT §4.4, leaving a view (or entering one it did not change to itself): what this
    /// replica queued or ordered is not lost with the view. Each request not executed becomes waiting, to be handed to the next primary (or
    /// queued again if that is us): the ordered ones first, then the queued, each in its order.
    pub(crate) fn hand_back(&mut self) {
        let mut orphans: Vec<(Hash, Vec<u8>)> =
            std::mem::take(&mut self.ordered).into_iter().collect();
        orphans.extend(std::mem::take(&mut self.queued));
        self.queued_bytes = 0;
        for (h, r) in orphans {
            self.waiting.insert(h, r);
        }
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
            b.ordered.contains_key(h),
            b.waiting.contains_key(h),
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
        // h5 is queued and then executed (say by state transfer): it leaves the queue.
        b.executed(h5);
        assert_eq!(stages(&b, &h5), (false, false, false, true));
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
        b2.hand_back();
        b2.order(h1, r1);
        b2.queue_waiting();
        assert_eq!(b2.queued_hashes(), vec![h2]);
        assert_eq!(stages(&b2, &h1), (false, true, false, false));
    }

    #[test]
    fn entering_a_view_keeps_waiting_for_what_the_old_one_ordered() {
        let mut b = RequestBook::new(16);
        let (h, r) = req(6);
        b.order(h, r.clone());
        b.wait_for(h, r);
        b.hand_back();
        assert_eq!(stages(&b, &h), (false, false, true, false));
        assert!(!b.has_queued_or_ordered());
    }

    #[test]
    fn a_re_issued_batch_takes_its_requests_out_of_the_queue_and_leaves_executed_ones() {
        let mut b = RequestBook::new(16);
        let (h1, r1) = req(1);
        let (h2, r2) = req(2);
        let (h3, r3) = req(3);
        b.enqueue(h1, r1.clone());
        b.enqueue(h3, r3.clone());
        b.order(h1, r1);
        assert_eq!(stages(&b, &h1), (false, true, false, false));
        assert_eq!(b.queued_bytes(), request_cost(r3.len()));
        // Not proposed a second time: only h3 is left to batch.
        assert_eq!(b.take_batch(5), vec![(h3, r3)]);
        b.executed(h2);
        b.order(h2, r2.clone());
        assert_eq!(stages(&b, &h2), (false, false, false, true));
        b.executed(h1);
        assert!(
            !b.has_queued_or_ordered(),
            "a primary does not wait on what it executed"
        );
        b.wait_for(h2, r2);
        assert_eq!(stages(&b, &h2), (false, false, false, true));
        assert!(!b.has_waiting());
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
        assert_eq!(b.stage(&h4), Some(Stage::Waiting));
    }

    /// One event of the replica's, on one of a few request hashes.
    #[derive(Clone, Debug)]
    enum Event {
        Enqueue(u8),
        TakeBatch(usize),
        Order(u8),
        WaitFor(u8),
        Executed(u8),
        HandBack,
        QueueWaiting,
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        let h = 0u8..6;
        prop_oneof![
            h.clone().prop_map(Event::Enqueue),
            (0usize..4).prop_map(Event::TakeBatch),
            h.clone().prop_map(Event::Order),
            h.clone().prop_map(Event::WaitFor),
            h.prop_map(Event::Executed),
            Just(Event::HandBack),
            Just(Event::QueueWaiting),
        ]
    }

    proptest::proptest! {
        /// Whatever the replica does, each hash is in one stage (ordered and waited for being
        /// one stage), and the queue's byte count is the sum over the queue.
        #[test]
        fn every_request_is_in_exactly_one_stage(events in proptest::collection::vec(event(), 0..60)) {
            let mut b = RequestBook::new(4);
            for e in events {
                match e {
                    Event::Enqueue(i) => { let (h, r) = req(i); b.enqueue(h, r); }
                    Event::TakeBatch(n) => {
                        for (h, r) in b.take_batch(n) {
                            b.order(h, r);
                        }
                    }
                    Event::Order(i) => { let (h, r) = req(i); b.order(h, r); }
                    Event::WaitFor(i) => { let (h, r) = req(i); b.wait_for(h, r); }
                    Event::Executed(i) => b.executed(req(i).0),
                    Event::HandBack => b.hand_back(),
                    Event::QueueWaiting => b.queue_waiting(),
                }
                for i in 0..6 {
                    let h = req(i).0;
                    let (q, o, w, x) = stages(&b, &h);
                    let held = [q, o, w, x].iter().filter(|s| **s).count();
                    let one = held <= 1 || (held == 2 && o && w);
                    proptest::prop_assert!(one, "hash {} is in {:?}", i, (q, o, w, x));
                    proptest::prop_assert_eq!(held > 0, b.stage(&h).is_some());
                }
                let unexecuted = (0..6)
                    .filter(|i| matches!(b.stage(&req(*i).0), Some(s) if s != Stage::Executed))
                    .count();
                proptest::prop_assert_eq!(b.unexecuted_len(), unexecuted);
                let bytes: usize = b.queued_requests().map(|r| request_cost(r.len())).sum();
                proptest::prop_assert_eq!(b.queued_bytes(), bytes);
            }
        }
    }
}
