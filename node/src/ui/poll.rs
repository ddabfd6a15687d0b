//! How the view learns what it shows: every [`POLL`] it asks each node for `/v1/status` and
//! `/metrics`, turns counters into rates, names the leader most nodes agree on, compares the
//! correct nodes' blocks at a common height, and notes what changed on the timeline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use tokio::sync::watch;

use super::metrics_text::{self, NodeMetrics};
use super::{PairRate, Point, Ui, Verdict, POLL, SERIES_LEN};
use crate::api_types::{BlockHeader, StatusReply};
use crate::client::wire;
use crate::config::Protocol;

impl Ui {
    /// Polls the nodes every [`POLL`] until `stop` turns true.
    pub async fn poll(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let next = tokio::time::Instant::now() + POLL;
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.poll_once() => {}
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// The body of node `addr`'s 2xx answer to `GET path` (read with the clients' size cap).
    async fn get(&self, addr: SocketAddr, path: &str) -> Option<Bytes> {
        let answer = wire::send(self.http.get(format!("http://{addr}{path}")))
            .await
            .ok()?;
        answer.ok().then_some(answer.body)
    }

    /// Status and metrics of node `i` (None if it does not answer).
    async fn fetch(self: &Arc<Self>, i: usize) -> Option<(StatusReply, NodeMetrics)> {
        let addr = self.nodes.get(i)?.1;
        let (status, metrics) =
            tokio::join!(self.get(addr, "/v1/status"), self.get(addr, "/metrics"));
        let status: StatusReply = serde_json::from_slice(&status?).ok()?;
        let metrics = metrics.map(|m| String::from_utf8_lossy(&m).into_owned());
        Some((
            status,
            metrics_text::parse(metrics.as_deref().unwrap_or("")),
        ))
    }

    /// The hash of node `i`'s block at height `h`.
    async fn block_hash(&self, i: usize, h: u64) -> Option<String> {
        let addr = self.nodes.get(i)?.1;
        let body = self
            .get(addr, &format!("/v1/blocks/{h}?header=true"))
            .await?;
        let header: BlockHeader = serde_json::from_slice(&body).ok()?;
        Some(hex::encode(header.hash))
    }

    /// One round: every node's status and metrics, rates since the last round, the leader, the
    /// divergence check, and timeline entries for what changed.
    async fn poll_once(self: &Arc<Self>) {
        let n = self.nodes.len();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let ui = Arc::clone(self);
            set.spawn(async move { (i, ui.fetch(i).await) });
        }
        let mut got: Vec<Option<(StatusReply, NodeMetrics)>> = vec![None; n];
        while let Some(r) = set.join_next().await {
            if let Ok((i, v)) = r {
                got[i] = v;
            }
        }
        let now = Instant::now();
        let heads: Vec<Option<(u64, String)>> = got
            .iter()
            .map(|g| {
                let s = &g.as_ref()?.0;
                Some((s.height, hex::encode(s.head_hash)))
            })
            .collect();
        let divergence = self.compare_heads(&heads).await;

        let mut events = Vec::new();
        {
            let mut st = self.lock();
            st.polls += 1;
            let mut pairs: BTreeMap<(u64, u64), PairRate> = BTreeMap::new();
            let mut tx_rates = vec![0.0; n];
            let mut lat = metrics_text::Histogram::default();
            let mut names: HashMap<u64, usize> = HashMap::new();
            for (i, g) in got.into_iter().enumerate() {
                let id = self.nodes[i].0;
                let was_up = st.nodes[i].up;
                let Some((s, m)) = g else {
                    if was_up {
                        events.push(("down", Some(id), format!("node {id} stopped answering")));
                    }
                    let v = &mut st.nodes[i];
                    v.up = false;
                    v.tx_per_s = 0.0;
                    v.diverged = false;
                    st.prev[i] = None;
                    continue;
                };
                if !was_up && st.polls > 1 {
                    events.push(("up", Some(id), format!("node {id} answers")));
                }
                if let Some(l) = s.leader {
                    *names.entry(l).or_default() += 1;
                }
                {
                    let v = &mut st.nodes[i];
                    v.up = true;
                    v.head_hash = hex::encode(s.head_hash);
                    v.role = Some(s.role);
                    v.term = s.term;
                    v.view = s.view;
                    v.leader = s.leader;
                    v.height = s.height;
                    v.peers_connected = s.peers_connected;
                    v.peers_unreachable = s.peers_unreachable;
                    v.diverged = divergence.diverged.contains(&i);
                }
                if let Some((then, before)) = &st.prev[i] {
                    let dt = now.duration_since(*then).as_secs_f64();
                    // A counter that went down means the node restarted: no rate this round.
                    if dt > 0.0 && !m.restarted_since(before) {
                        for ((peer, kind), &v) in &m.peer_sent {
                            let d =
                                v - before.peer_sent.get(&(*peer, kind.clone())).unwrap_or(&0.0);
                            if d <= 0.0 {
                                continue;
                            }
                            let p = pairs.entry((id, *peer)).or_insert_with(|| PairRate {
                                from: id,
                                to: *peer,
                                total: 0.0,
                                by_type: BTreeMap::new(),
                            });
                            p.total += d / dt;
                            *p.by_type.entry(kind.clone()).or_default() += d / dt;
                        }
                        tx_rates[i] = (m.committed - before.committed).max(0.0) / dt;
                        lat.add_delta(&m.latency, &before.latency);
                    }
                }
                for (_, kind) in m.peer_sent.keys() {
                    if !st.types.contains(kind) {
                        st.types.insert(kind.clone());
                    }
                }
                st.nodes[i].tx_per_s = tx_rates[i];
                st.prev[i] = Some((now, m));
            }
            // The leader: the node most answering nodes name, counted only if it answers too.
            let leader = names
                .into_iter()
                .max_by_key(|&(l, c)| (c, std::cmp::Reverse(l)))
                .map(|(l, _)| l)
                .filter(|&l| {
                    st.nodes.iter().any(|v| {
                        v.id == l
                            && v.up
                            && (self.protocol == Protocol::Pbft
                                || v.role.as_deref() == Some("leader"))
                    })
                });
            if leader != st.leader {
                if let Some(l) = leader {
                    let what = match self.protocol {
                        Protocol::Raft => "leader",
                        Protocol::Pbft => "primary",
                    };
                    let at = st
                        .nodes
                        .iter()
                        .find(|v| v.id == l)
                        .map(|v| match self.protocol {
                            Protocol::Raft => format!(" (term {})", v.term.unwrap_or(0)),
                            Protocol::Pbft => format!(" (view {})", v.view.unwrap_or(0)),
                        })
                        .unwrap_or_default();
                    events.push(("leader", Some(l), format!("node {l} is {what}{at}")));
                } else if let Some(old) = st.leader {
                    events.push(("leader", Some(old), "no agreed leader".to_string()));
                }
                st.leader = leader;
            }
            st.pairs = pairs.into_values().collect();
            // Every node applies every block: the cluster's rate is the leader's, or the
            // fastest node's while there is none.
            let tx = leader
                .and_then(|l| self.nodes.iter().position(|&(id, _)| id == l))
                .map(|i| tx_rates[i])
                .unwrap_or_else(|| tx_rates.iter().copied().fold(0.0, f64::max));
            let height = st.nodes.iter().map(|v| v.height).max().unwrap_or(0);
            let t = self.t();
            st.series.push_back(Point {
                t,
                tx_per_s: tx,
                latency_mean_ms: lat.mean().map(|s| s * 1e3),
                latency_p50_ms: lat.quantile(0.5).map(|s| s * 1e3),
                latency_p99_ms: lat.quantile(0.99).map(|s| s * 1e3),
                height,
            });
            while st.series.len() > SERIES_LEN {
                st.series.pop_front();
            }
            if divergence.compared > 0 {
                st.verdict.compared_height = divergence.compared;
            }
            if let Some(h) = divergence.correct_fork {
                if st.verdict.safe {
                    st.verdict = Verdict {
                        safe: false,
                        text: format!(
                            "UNSAFE: correct nodes hold different blocks at height {h} ({})",
                            divergence.detail
                        ),
                        diverged_at: Some(h),
                        compared_height: h,
                    };
                    events.push(("unsafe", None, st.verdict.text.clone()));
                }
            } else if st.verdict.safe && divergence.compared > 0 {
                st.verdict.text = format!(
                    "safe: every correct node that answers holds the same block at height {}",
                    divergence.compared
                );
            }
        }
        for (kind, node, text) in events {
            self.event(kind, node, text);
        }
    }

    /// Compares the nodes' chains at the lowest height every answering node holds: a node at
    /// that height shows its head, the others are asked for their block there. Blocks are
    /// hash-chained, so agreement at one height is agreement below it.
    async fn compare_heads(&self, heads: &[Option<(u64, String)>]) -> Divergence {
        let mut out = Divergence::default();
        let Some(h) = heads
            .iter()
            .flatten()
            .map(|(h, _)| *h)
            .filter(|&h| h > 0)
            .min()
        else {
            return out;
        };
        let mut hashes: Vec<Option<String>> = vec![None; heads.len()];
        for (i, head) in heads.iter().enumerate() {
            match head {
                Some((hh, hash)) if *hh == h => hashes[i] = Some(hash.clone()),
                Some((hh, _)) if *hh > h => hashes[i] = self.block_hash(i, h).await,
                _ => {}
            }
        }
        // The reference is the hash most correct nodes hold; Byzantine nodes are compared
        // against it but never outvote it.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (i, x) in hashes.iter().enumerate() {
            if let Some(x) = x {
                if !self.is_byzantine(i) {
                    *counts.entry(x.as_str()).or_default() += 1;
                }
            }
        }
        let Some(reference) = counts
            .iter()
            .max_by_key(|(k, c)| (**c, std::cmp::Reverse(**k)))
            .map(|(k, _)| k.to_string())
        else {
            return out;
        };
        out.compared = h;
        for (i, x) in hashes.iter().enumerate() {
            if x.as_ref().is_some_and(|x| *x != reference) {
                out.diverged.insert(i);
            }
        }
        if counts.len() > 1 {
            out.correct_fork = Some(h);
            let groups: Vec<String> = counts
                .keys()
                .map(|k| {
                    let ids: Vec<String> = hashes
                        .iter()
                        .enumerate()
                        .filter(|(i, x)| x.as_deref() == Some(*k) && !self.is_byzantine(*i))
                        .map(|(i, _)| self.nodes[i].0.to_string())
                        .collect();
                    format!("nodes {} have {}…", ids.join(","), &k[..k.len().min(8)])
                })
                .collect();
            out.detail = groups.join("; ");
        }
        out
    }
}

#[derive(Default)]
struct Divergence {
    compared: u64,
    /// Nodes (indices) whose block at `compared` differs from the correct majority's.
    diverged: BTreeSet<usize>,
    /// Set when two correct nodes differ.
    correct_fork: Option<u64>,
    detail: String,
}
