//! The client workload of `local`, `demo` and `bench`: K concurrent clients, each with its own
//! key, sending batches of pre-signed, pre-encoded transactions through `POST /v1/txs`.
//!
//! Signing and JSON encoding happen before the measured window, so the figures measure the
//! cluster, not the load generator. Every batch is sent by the client protocol
//! ([`crate::client::writes::drive`]): raft batches go to the leader (any node forwards; on an
//! error the client moves to the next node and retries the same batch, whose duplicates the
//! nodes answer with the original results), and the clients share what they learn about the
//! leader. PBFT batches go to every replica and a transaction counts as committed once f+1
//! replicas answered with the same height, tx hash and result (at least one of them is
//! correct). Replies are matched by the endpoint that sent them, which the driver itself chose,
//! so no reply signature has to be checked on this 2-core machine.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

use crate::client::wire::Trust;
use crate::client::writes::{drive, Pacing};
use crate::client_protocol::ClientWrite;
use crate::config::ClusterConfig;
use crate::ledger::{Op, Tx};

/// After the sending window, how long in-flight batches may still be acknowledged.
const GRACE: Duration = Duration::from_secs(10);
/// Pause before retrying a batch that failed (leader change, crashed node).
const RETRY_PAUSE: Duration = Duration::from_millis(150);

/// What load to apply.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// How long new batches are sent.
    pub duration: Duration,
    /// Target total transactions per second; None = as fast as the cluster acknowledges.
    pub rate: Option<f64>,
    /// Transactions per HTTP request when saturating.
    pub batch: usize,
    /// Bytes of each put's value.
    pub payload: usize,
    /// Upper bound of pre-signed transactions per client when saturating.
    pub max_txs_per_client: usize,
}

/// What the clients saw.
#[derive(Clone, Debug, Default)]
pub struct WorkloadReport {
    pub committed: u64,
    /// From the first send to the last acknowledgement.
    pub elapsed: Duration,
    /// Per-transaction send→ack latencies in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Every acknowledged transaction: (tx hash, committed height).
    pub acked: Vec<([u8; 32], u64)>,
    /// Requests that failed and were retried.
    pub retries: u64,
    /// Pre-signed transactions ran out before the window ended (the figure is a lower bound).
    pub exhausted: bool,
}

impl WorkloadReport {
    pub fn tx_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.committed as f64 / s
        } else {
            0.0
        }
    }

    /// The q-quantile (0..=1) latency in milliseconds (0 without samples).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[idx.min(self.latencies_us.len() - 1)] as f64 / 1000.0
    }
}

/// One pre-signed request.
struct Batch {
    body: axum::body::Bytes,
    hashes: Vec<[u8; 32]>,
    /// `/v1/txs` for a JSON array; `/v1/tx` for one transaction sent on its own.
    path: &'static str,
}

/// Signs every client's transactions up front, in parallel (one thread per client).
fn presign(
    keys: &[SigningKey],
    per_client: usize,
    batch: usize,
    payload: usize,
) -> Vec<Vec<Batch>> {
    let value = "x".repeat(payload);
    std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(c, key)| {
                let value = &value;
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut seq = 1u64;
                    while (seq as usize) <= per_client {
                        let end = (seq as usize + batch).min(per_client + 1) as u64;
                        let txs: Vec<Tx> = (seq..end)
                            .map(|q| {
                                Tx::sign(
                                    key,
                                    q,
                                    Op::Put {
                                        key: format!("c{c}-{q}"),
                                        value: value.clone(),
                                    },
                                )
                            })
                            .collect();
                        seq = end;
                        // One at a time goes to `POST /v1/tx`, as a single-write client would.
                        let (body, path) = match txs.as_slice() {
                            [tx] if batch == 1 => (serde_json::to_vec(tx), "/v1/tx"),
                            _ => (serde_json::to_vec(&txs), "/v1/txs"),
                        };
                        out.push(Batch {
                            body: body.unwrap_or_default().into(),
                            hashes: txs.iter().map(Tx::hash).collect(),
                            path,
                        });
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Pre-signed, pre-encoded requests of every client and their pacing.
pub struct Prepared {
    batches: Vec<Vec<Batch>>,
    interval: Option<Duration>,
    duration: Duration,
    paced: bool,
}

/// Signs and encodes every request up front, before the measured window.
pub async fn prepare(keys: &[SigningKey], spec: &WorkloadSpec) -> Prepared {
    let k = keys.len().max(1);
    let secs = spec.duration.as_secs_f64();
    // Paced: 20 requests per second per client; saturating: fixed batches, bounded pre-signing.
    let (batch, per_client, interval) = match spec.rate {
        Some(rate) => {
            let per_client_rate = (rate / k as f64).max(0.1);
            let batch = ((per_client_rate / 20.0).ceil() as usize).max(1);
            let per_client = (per_client_rate * secs).ceil() as usize + batch;
            let interval = Duration::from_secs_f64(batch as f64 / per_client_rate);
            (batch, per_client, Some(interval))
        }
        None => (spec.batch.max(1), spec.max_txs_per_client.max(1), None),
    };
    // Off the async threads, so Ctrl-C stays responsive meanwhile.
    let (owned, payload) = (keys.to_vec(), spec.payload);
    let batches = tokio::task::spawn_blocking(move || presign(&owned, per_client, batch, payload))
        .await
        .unwrap_or_default();
    Prepared {
        batches,
        interval,
        duration: spec.duration,
        paced: spec.rate.is_some(),
    }
}

/// Runs the prepared workload against `cluster` and returns what was acknowledged.
pub async fn run(
    cluster: &ClusterConfig,
    prepared: Prepared,
    http: &reqwest::Client,
) -> WorkloadReport {
    let Prepared {
        batches,
        interval,
        duration,
        paced,
    } = prepared;
    let leader = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let stop_sending = start + duration;
    let give_up = stop_sending + GRACE;
    let mut tasks = tokio::task::JoinSet::new();
    for client_batches in batches {
        let cluster = cluster.clone();
        let http = http.clone();
        let leader = leader.clone();
        tasks.spawn(async move {
            let mut rep = WorkloadReport::default();
            let total = client_batches.len();
            for (b, batch) in client_batches.into_iter().enumerate() {
                if let Some(iv) = interval {
                    let due = start + iv.mul_f64(b as f64);
                    if due >= stop_sending {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                if Instant::now() >= stop_sending {
                    break;
                }
                let sent = Instant::now();
                let acks = send(&cluster, &http, &leader, &batch, give_up, &mut rep).await;
                for (hash, height, at) in acks {
                    rep.committed += 1;
                    rep.latencies_us
                        .push(at.saturating_duration_since(sent).as_micros() as u64);
                    rep.acked.push((hash, height));
                }
                rep.elapsed = start.elapsed();
                if b + 1 == total && interval.is_none() && Instant::now() < stop_sending {
                    rep.exhausted = true;
                }
            }
            rep
        });
    }
    let mut all = WorkloadReport::default();
    while let Some(r) = tasks.join_next().await {
        let Ok(r) = r else { continue };
        all.committed += r.committed;
        all.latencies_us.extend(r.latencies_us);
        all.acked.extend(r.acked);
        all.retries += r.retries;
        all.exhausted |= r.exhausted;
        all.elapsed = all.elapsed.max(r.elapsed);
    }
    // A paced run is measured over its window even if the cluster kept up early.
    if paced {
        all.elapsed = all.elapsed.max(duration);
    }
    all.latencies_us.sort_unstable();
    all
}

/// Sends one batch by the client protocol until every transaction is decided or `give_up`;
/// returns (tx hash, height, when decided) of each committed one.
async fn send(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    leader: &AtomicUsize,
    batch: &Batch,
    give_up: Instant,
    rep: &mut WorkloadReport,
) -> Vec<([u8; 32], u64, Instant)> {
    let start = leader.load(std::sync::atomic::Ordering::Relaxed) as u64;
    let mut write = ClientWrite::new(cluster, start, batch.hashes.iter().copied());
    let pacing = Pacing {
        pause: RETRY_PAUSE,
        pause_every_retry: true,
        attempt_timeout: None,
    };
    let driven = drive(
        &mut write,
        cluster,
        http,
        batch.path,
        batch.body.clone(),
        Trust::Endpoint,
        give_up,
        pacing,
        Some(leader),
    )
    .await;
    rep.retries += u64::from(driven.attempts.saturating_sub(1));
    if driven.outcome.is_err() {
        rep.retries += 1;
    }
    write
        .all_decided()
        .values()
        .filter(|e| e.height > 0)
        .filter_map(|e| Some((e.tx_hash, e.height, *driven.decided_at.get(&e.tx_hash)?)))
        .collect()
}

/// The live view's load (`local --ui`): K clients sending put batches at `rate` transactions
/// per second in total until `stop` turns true, each signing as it goes (there is no window to
/// sign for in advance). A batch that cannot be committed within [`GRACE`] is given up and the
/// client moves on with higher seqs, as a real client would.
pub async fn run_until(
    cluster: &ClusterConfig,
    keys: Vec<SigningKey>,
    rate: f64,
    http: &reqwest::Client,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let k = keys.len().max(1);
    let per_client_rate = (rate / k as f64).max(0.1);
    // 20 requests per second per client at most, as in a paced `local` run.
    let batch = ((per_client_rate / 20.0).ceil() as usize).max(1);
    let interval = Duration::from_secs_f64(batch as f64 / per_client_rate);
    let leader = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (c, key) in keys.into_iter().enumerate() {
        let (cluster, http, leader) = (cluster.clone(), http.clone(), leader.clone());
        let mut stop = stop.clone();
        tasks.spawn(async move {
            let mut seq = 1u64;
            let mut due = Instant::now();
            let mut rep = WorkloadReport::default();
            while !*stop.borrow() {
                let txs: Vec<Tx> = (seq..seq + batch as u64)
                    .map(|q| {
                        Tx::sign(
                            &key,
                            q,
                            Op::Put {
                                key: format!("ui{c}-{q}"),
                                value: format!("v{q}"),
                            },
                        )
                    })
                    .collect();
                seq += batch as u64;
                let b = Batch {
                    body: serde_json::to_vec(&txs).unwrap_or_default().into(),
                    hashes: txs.iter().map(Tx::hash).collect(),
                    path: "/v1/txs",
                };
                let give_up = Instant::now() + GRACE;
                let sending = send(&cluster, &http, &leader, &b, give_up, &mut rep);
                tokio::select! {
                    _ = sending => {}
                    _ = stop.changed() => break,
                }
                // Behind schedule after a stall: carry on from now rather than burst.
                due = (due + interval).max(Instant::now());
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = stop.changed() => break,
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
