//! Writes over HTTP by the client protocol ([`crate::client_protocol::ClientWrite`]): the one
//! loop that sends a request where the protocol says, feeds it every answer and paces the
//! retries — used by `faultline client`, the workload behind `local`/`bench` and the nemesis
//! clients alike.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use axum::body::Bytes;

use super::wire::{self, Trust};
use crate::api_types::BatchEntry;
use crate::client_protocol::{ClientWrite, Targets, WriteAnswer, WriteNext};
use crate::config::{ClusterConfig, Protocol};
use crate::ledger::{Hash, Tx};

/// How long a write keeps trying (leader elections, restarts) before giving up.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between rounds of `faultline client` write attempts.
const WRITE_PAUSE: Duration = Duration::from_millis(300);

/// How a write paces its attempts; the decisions are the protocol's, the waiting is the caller's.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// Pause after a PBFT round without a decision, and after raft retries (below).
    pub pause: Duration,
    /// Raft: pause after every node that failed (a load generator backing off), or only once
    /// per cycle through the nodes (a client looking for the leader).
    pub pause_every_retry: bool,
    /// One request's timeout (a SIGSTOPped node never answers); always within the deadline.
    pub attempt_timeout: Option<Duration>,
}

/// Why a write ended without a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undecided {
    /// Refused by the node asked (raft) or by f+1 replicas (pbft): retrying cannot help.
    Refused(String),
    /// The deadline passed; the last thing a node said.
    TimedOut(String),
}

/// What one driven write did.
#[derive(Debug)]
pub struct Driven {
    pub outcome: Result<(), Undecided>,
    /// Rounds of requests sent (raft: one node each; pbft: every replica).
    pub attempts: u32,
    /// When each decided transaction was decided.
    pub decided_at: BTreeMap<Hash, Instant>,
}

/// Sends `body` to `path` where `write` says until it is decided, refused or `deadline`
/// passes. `leader` is a raft leader guess shared with other clients (the workload's): read
/// before each attempt, and updated with what this one learns.
#[allow(clippy::too_many_arguments)]
pub async fn drive(
    write: &mut ClientWrite,
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    path: &str,
    body: Bytes,
    trust: Trust<'_>,
    deadline: Instant,
    pacing: Pacing,
    leader: Option<&AtomicUsize>,
) -> Driven {
    let first = write.route().target();
    let mut driven = Driven {
        outcome: Err(Undecided::TimedOut("no node answered".into())),
        attempts: 0,
        decided_at: BTreeMap::new(),
    };
    let mut last = String::from("no node answered");
    while Instant::now() < deadline {
        if let Some(l) = leader {
            write.route_mut().retry_at(l.load(Ordering::Relaxed) as u64);
        }
        let asked: Vec<u64> = match write.targets() {
            Targets::One(j) => vec![j],
            Targets::Every => cluster.nodes.iter().map(|n| n.id).collect(),
        };
        driven.attempts += 1;
        let mut tasks = tokio::task::JoinSet::new();
        for id in asked {
            let Some(node) = cluster.node(id) else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = pacing.attempt_timeout.map_or(left, |t| t.min(left));
            let req = http
                .post(format!("http://{}{path}", node.api))
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(timeout);
            tasks.spawn(async move { (id, wire::send(req).await) });
        }
        let mut pause = true;
        while let Some(res) = tasks.join_next().await {
            let Ok((id, res)) = res else { continue };
            let answer = match res {
                Ok(a) => wire::write_answer(id, &a, trust),
                Err(e) => wire::unreachable(id, e),
            };
            if let WriteAnswer::Refused(m) | WriteAnswer::Unavailable(m) = &answer {
                last.clone_from(m);
            }
            let next = write.on_answer(id, answer);
            let now = Instant::now();
            for hash in write.all_decided().keys() {
                driven.decided_at.entry(*hash).or_insert(now);
            }
            match next {
                WriteNext::Done => {
                    if let Some(l) = leader {
                        l.store(write.route().target() as usize, Ordering::Relaxed);
                    }
                    driven.outcome = Ok(());
                    // Dropping the set abandons the slower replicas' answers.
                    return driven;
                }
                WriteNext::Wait => {}
                WriteNext::Redirect(_) => {
                    pause = false;
                    break;
                }
                WriteNext::Retry(j) => {
                    if let Some(l) = leader {
                        let _ = l.compare_exchange(
                            id as usize,
                            j as usize,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    pause = pacing.pause_every_retry || j == first;
                    break;
                }
                WriteNext::Refused(why) => {
                    driven.outcome = Err(Undecided::Refused(why));
                    return driven;
                }
            }
        }
        if pause {
            tokio::time::sleep(
                pacing
                    .pause
                    .min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }
    driven.outcome = Err(Undecided::TimedOut(last));
    driven
}

/// Submits one signed transaction per the cluster's protocol and returns what f+1 replicas
/// (pbft) or the leader (raft) signed for it.
pub async fn write(cluster: &ClusterConfig, http: &reqwest::Client, tx: &Tx) -> Result<BatchEntry> {
    let hash = tx.hash();
    let body = Bytes::from(serde_json::to_vec(tx)?);
    let mut w = ClientWrite::new(cluster, 0, [hash]);
    let pacing = Pacing {
        pause: WRITE_PAUSE,
        pause_every_retry: false,
        attempt_timeout: None,
    };
    let deadline = Instant::now() + WRITE_DEADLINE;
    let trust = Trust::Signed(cluster);
    let driven = drive(
        &mut w, cluster, http, "/v1/tx", body, trust, deadline, pacing, None,
    )
    .await;
    match driven.outcome {
        Ok(()) => match w.decided(&hash) {
            Some(e) => Ok(e.clone()),
            None => bail!("the write ended without a result"),
        },
        Err(Undecided::Refused(why)) => bail!("{why}"),
        Err(Undecided::TimedOut(last)) => match cluster.protocol {
            Protocol::Raft => bail!("the transaction was not committed in time ({last})"),
            Protocol::Pbft => bail!(
                "fewer than f+1 = {} matching signed replies arrived in time ({last})",
                w.need()
            ),
        },
    }
}
