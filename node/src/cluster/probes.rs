//! What a local cluster's nodes say over HTTP: status, leader, readiness and convergence
//! waits, blocks, and the sent-message counters of their metrics.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::{ClusterError, LocalCluster, POLL};
use crate::api_types::StatusReply;
use crate::client::wire;
use crate::config::Protocol;
use crate::ledger::Block;

impl LocalCluster {
    async fn get_json<T: DeserializeOwned>(&self, i: usize, path: &str) -> Option<T> {
        let node = self.config.nodes.get(i)?;
        let req = self
            .http
            .get(format!("http://{}{path}", node.api))
            .timeout(Duration::from_secs(5));
        wire::get(req).await
    }

    /// GET /v1/status of node `i`, None if it does not answer.
    pub async fn status(&self, i: usize) -> Option<StatusReply> {
        self.get_json(i, "/v1/status").await
    }

    /// The leader (raft) or primary (pbft) most running nodes name right now.
    pub async fn leader(&self) -> Option<u64> {
        let mut votes: HashMap<u64, usize> = HashMap::new();
        for i in 0..self.n() {
            if !self.is_running(i) {
                continue;
            }
            if let Some(l) = self.status(i).await.and_then(|s| s.leader) {
                *votes.entry(l).or_default() += 1;
            }
        }
        votes.into_iter().max_by_key(|(_, c)| *c).map(|(l, _)| l)
    }

    /// Waits until every running node answers, is connected to all other running nodes, and
    /// all name the same leader/primary (which, for raft, says it is the leader).
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<(), ClusterError> {
        let start = Instant::now();
        loop {
            if let Some(i) = self.exited() {
                return Err(ClusterError::Exited {
                    node: i,
                    log: self.log_path(i).display().to_string(),
                });
            }
            if self.ready().await {
                return Ok(());
            }
            if start.elapsed() > deadline {
                return Err(ClusterError::Timeout {
                    secs: deadline.as_secs(),
                    what: "every node to answer and agree on a leader".into(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Byzantine nodes must answer and connect, but only the correct ones need to agree on the
    /// leader (a `disrupt` node may never settle).
    async fn ready(&self) -> bool {
        let running: Vec<usize> = (0..self.n()).filter(|&i| self.is_running(i)).collect();
        let mut leader = None;
        for &i in &running {
            let Some(s) = self.status(i).await else {
                return false;
            };
            if s.peers_connected < running.len().saturating_sub(1) as u64 {
                return false;
            }
            if self.is_byzantine(i as u64) {
                continue;
            }
            let Some(l) = s.leader else {
                return false;
            };
            if leader.is_some_and(|x| x != l) {
                return false;
            }
            leader = Some(l);
        }
        match (self.config.protocol, leader) {
            (_, None) => false,
            (Protocol::Pbft, Some(_)) => true,
            (Protocol::Raft, Some(l)) => match self.status(l as usize).await {
                Some(s) => s.role == "leader",
                None => false,
            },
        }
    }

    /// Sums the sent-message counters over the nodes that answer.
    pub async fn message_totals(&self) -> MessageTotals {
        let mut total = MessageTotals::default();
        for node in &self.config.nodes {
            let req = self
                .http
                .get(format!("http://{}/metrics", node.api))
                .timeout(Duration::from_secs(5));
            let Ok(answer) = wire::send(req).await else {
                continue;
            };
            total.add(&parse_message_totals(&String::from_utf8_lossy(
                &answer.body,
            )));
        }
        total
    }

    /// The correct (non-Byzantine) nodes that are running.
    pub fn correct_running(&self) -> Vec<usize> {
        (0..self.n())
            .filter(|&i| self.is_running(i) && !self.is_byzantine(i as u64))
            .collect()
    }

    /// Heights of the correct running nodes that answer.
    pub async fn correct_heights(&self) -> Vec<(usize, u64, String)> {
        let mut out = Vec::new();
        for i in self.correct_running() {
            if let Some(s) = self.status(i).await {
                out.push((i, s.height, hex::encode(s.head_hash)));
            }
        }
        out
    }

    /// Waits (bounded) until the correct running nodes report the same height and head, so the
    /// audit compares finished ledgers; returns whether they converged.
    pub async fn wait_converged(&self, deadline: Duration) -> bool {
        let start = Instant::now();
        let want = self.correct_running().len();
        loop {
            let heads = self.correct_heights().await;
            if heads.len() == want && heads.windows(2).all(|w| w[0].1 == w[1].1) {
                return true;
            }
            if start.elapsed() > deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// GET /v1/blocks/{h} of node `i`.
    pub async fn block(&self, i: usize, h: u64) -> Option<Block> {
        self.get_json(i, &format!("/v1/blocks/{h}")).await
    }
}

/// Message types that relay a client's transaction between nodes rather than run consensus
/// on a batch (PBFT backups hand every request they receive to the primary).
pub const CLIENT_RELAY_TYPES: [&str; 1] = ["request"];

/// Sent-message counters, summed over types (and nodes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MessageTotals {
    /// Every message sent (`faultline_messages_sent_total`, all types).
    pub messages: f64,
    /// Every byte sent (`faultline_message_bytes_sent_total`, all types).
    pub bytes: f64,
    /// Messages of the consensus protocol proper: all types but the client relays.
    pub protocol_messages: f64,
}

impl MessageTotals {
    pub fn add(&mut self, o: &MessageTotals) {
        self.messages += o.messages;
        self.bytes += o.bytes;
        self.protocol_messages += o.protocol_messages;
    }

    /// `self - before`, floored at zero (a restarted node's counters start again at zero).
    pub fn since(&self, before: &MessageTotals) -> MessageTotals {
        MessageTotals {
            messages: (self.messages - before.messages).max(0.0),
            bytes: (self.bytes - before.bytes).max(0.0),
            protocol_messages: (self.protocol_messages - before.protocol_messages).max(0.0),
        }
    }
}

/// Sums the sent-message and sent-byte counters of one node's Prometheus text.
pub fn parse_message_totals(text: &str) -> MessageTotals {
    let mut t = MessageTotals::default();
    for line in text.lines() {
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if line.starts_with("faultline_messages_sent_total") {
            t.messages += value;
            let relay = CLIENT_RELAY_TYPES
                .iter()
                .any(|k| line.contains(&format!("type=\"{k}\"")));
            if !relay {
                t.protocol_messages += value;
            }
        } else if line.starts_with("faultline_message_bytes_sent_total") {
            t.bytes += value;
        }
    }
    t
}
