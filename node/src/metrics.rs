//! Prometheus metrics with exactly the names of docs/SPEC.md "Metrics". Counters are registered
//! without the `_total` suffix because prometheus-client appends it when encoding.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;
/// `{peer="<id>",type="<kind>"}` without allocating per message (the hot path counts every
/// message it sends and receives).
pub type PeerLabels = ([(&'static str, u64); 1], [(&'static str, &'static str); 1]);

/// Every metric the node exports; shared by the driver (which updates it) and the API (which
/// encodes it on `GET /metrics`).
pub struct Metrics {
    registry: Registry,
    pub sent: Family<Labels, Counter>,
    pub sent_bytes: Family<Labels, Counter>,
    pub received: Family<Labels, Counter>,
    pub rejected: Family<Labels, Counter>,
    pub committed_txs: Counter,
    pub ledger_height: Gauge,
    pub commit_latency: Histogram,
    pub term: Gauge,
    pub view: Gauge,
    pub leader_changes: Counter,
    pub view_changes: Counter,
    pub peers_connected: Gauge,
    /// API connections closed at once because the connection cap was reached.
    pub api_refused: Counter,
    /// Beyond SPEC: messages the transport dropped (send queue full, stream failed); the
    /// protocols retransmit, so these cost latency, not safety.
    pub dropped: Family<Labels, Counter>,
    /// Beyond SPEC's per-type totals: the same messages by the peer they went to or came from,
    /// so that a live view can draw traffic between every pair of nodes. The per-type totals
    /// above stay as they are (scripts and `local` sum them).
    pub peer_sent: Family<PeerLabels, Counter>,
    pub peer_received: Family<PeerLabels, Counter>,
    /// Transport-level rejections already folded into `rejected` (the transport keeps totals).
    net_rejected_seen: Mutex<BTreeMap<&'static str, u64>>,
    /// Transport drop totals already folded into `dropped`: [queue_full, send_failed].
    net_dropped_seen: Mutex<[u64; 2]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let sent = Family::<Labels, Counter>::default();
        let sent_bytes = Family::<Labels, Counter>::default();
        let received = Family::<Labels, Counter>::default();
        let rejected = Family::<Labels, Counter>::default();
        let committed_txs = Counter::default();
        let ledger_height = Gauge::default();
        // 0.5 ms .. ~16 s: loopback commits take milliseconds, stalled ones seconds.
        let commit_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16),
        );
        let term = Gauge::default();
        let view = Gauge::default();
        let leader_changes = Counter::default();
        let view_changes = Counter::default();
        let peers_connected = Gauge::default();
        let dropped = Family::<Labels, Counter>::default();
        // Show the common reasons at 0 so that dashboards and tests see the series before the
        // first rejection (an empty family is not exported at all).
        for reason in ["bad_signature", "unknown_peer", "malformed", "stale"] {
            let _ = rejected.get_or_create(&vec![("reason", reason)]);
        }
        registry.register(
            "faultline_messages_sent",
            "Protocol messages queued to peers, by type",
            sent.clone(),
        );
        registry.register(
            "faultline_message_bytes_sent",
            "Payload bytes of protocol messages queued to peers, by type",
            sent_bytes.clone(),
        );
        registry.register(
            "faultline_messages_received",
            "Protocol messages received from peers, by type",
            received.clone(),
        );
        registry.register(
            "faultline_messages_rejected",
            "Inbound messages or connections refused, by reason",
            rejected.clone(),
        );
        registry.register(
            "faultline_committed_transactions",
            "Transactions in blocks applied at this node",
            committed_txs.clone(),
        );
        registry.register(
            "faultline_ledger_height",
            "Height of the newest applied block",
            ledger_height.clone(),
        );
        registry.register(
            "faultline_commit_latency_seconds",
            "Time from a proposal at this node to its application at this node",
            commit_latency.clone(),
        );
        registry.register("faultline_term", "Raft term", term.clone());
        registry.register("faultline_view", "PBFT view", view.clone());
        registry.register(
            "faultline_leader_changes",
            "Raft leader changes seen by this node",
            leader_changes.clone(),
        );
        registry.register(
            "faultline_view_changes",
            "PBFT view changes seen by this node",
            view_changes.clone(),
        );
        registry.register(
            "faultline_peers_connected",
            "Peers with an established connection",
            peers_connected.clone(),
        );
        registry.register(
            "faultline_messages_dropped",
            "Outgoing messages dropped by the transport, by reason (queue_full, send_failed)",
            dropped.clone(),
        );
        let peer_sent = Family::<PeerLabels, Counter>::default();
        let peer_received = Family::<PeerLabels, Counter>::default();
        registry.register(
            "faultline_peer_messages_sent",
            "Protocol messages queued to each peer, by peer id and type",
            peer_sent.clone(),
        );
        registry.register(
            "faultline_peer_messages_received",
            "Protocol messages received from each peer, by peer id and type",
            peer_received.clone(),
        );
        let api_refused = Counter::default();
        registry.register(
            "faultline_api_connections_refused",
            "API connections closed on accept because the connection cap was reached",
            api_refused.clone(),
        );
        Metrics {
            registry,
            api_refused,
            dropped,
            sent,
            sent_bytes,
            received,
            rejected,
            committed_txs,
            ledger_height,
            commit_latency,
            term,
            view,
            leader_changes,
            view_changes,
            peers_connected,
            peer_sent,
            peer_received,
            net_rejected_seen: Mutex::new(BTreeMap::new()),
            net_dropped_seen: Mutex::new([0; 2]),
        }
    }

    pub fn count_sent(&self, to: u64, kind: &'static str, bytes: usize) {
        self.sent.get_or_create(&vec![("type", kind)]).inc();
        self.peer_sent
            .get_or_create(&([("peer", to)], [("type", kind)]))
            .inc();
        self.sent_bytes
            .get_or_create(&vec![("type", kind)])
            .inc_by(bytes as u64);
    }

    pub fn count_received(&self, from: u64, kind: &'static str) {
        self.received.get_or_create(&vec![("type", kind)]).inc();
        self.peer_received
            .get_or_create(&([("peer", from)], [("type", kind)]))
            .inc();
    }

    pub fn count_rejected(&self, reason: &'static str, n: u64) {
        self.rejected
            .get_or_create(&vec![("reason", reason)])
            .inc_by(n);
    }

    /// Folds the transport's cumulative rejection totals (unknown_peer, oversized, ...) into
    /// `faultline_messages_rejected_total` by adding what is new since the last call.
    pub fn sync_net_rejected(&self, totals: &BTreeMap<&'static str, u64>) {
        let mut seen = self
            .net_rejected_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (&reason, &total) in totals {
            let prev = seen.entry(reason).or_default();
            if total > *prev {
                self.count_rejected(reason, total - *prev);
                *prev = total;
            }
        }
    }

    /// Folds the transport's cumulative drop totals into `faultline_messages_dropped_total`.
    pub fn sync_net_dropped(&self, queue_full: u64, send_failed: u64) {
        let mut seen = self
            .net_dropped_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (i, (reason, total)) in [("queue_full", queue_full), ("send_failed", send_failed)]
            .into_iter()
            .enumerate()
        {
            let counter = self.dropped.get_or_create(&vec![("reason", reason)]);
            if total > seen[i] {
                counter.inc_by(total - seen[i]);
                seen[i] = total;
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
