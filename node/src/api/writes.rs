//! Writes (`POST /v1/tx`, `POST /v1/txs`): admission (permitted client, signatures), answers
//! to duplicates from the store, proposal to the engine and the wait for the commit, and a
//! raft follower's relay of writes to the leader.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::oneshot;

use super::{committed_reply, error, relay, AppState, COMMIT_TIMEOUT, FORWARDED};
use crate::api_types::{AcceptedReply, BatchEntry, BatchReply, EntryResult, WaitQuery};
use crate::engine::ProposeError;
use crate::handle::{Cmd, Shared};
use crate::ledger::{Tx, TxRecord};

/// Most transactions one `POST /v1/txs` may carry: with the body limit this bounds the
/// signature work one request can demand.
pub const MAX_BATCH_TXS: usize = 10_000;

/// "transaction I: " in an error about one transaction of a batch, nothing for a single one.
fn which_tx(len: usize, i: usize) -> String {
    if len == 1 {
        String::new()
    } else {
        format!("transaction {i}: ")
    }
}

/// The checks that cost no signature work, made on every node before anything else: no read
/// markers from clients, and `403` for a key that is not a permitted client.
fn precheck(shared: &Shared, txs: &[Tx]) -> Result<(), Response> {
    let at = |i: usize| which_tx(txs.len(), i);
    if let Some(i) = txs.iter().position(|t| t.op.is_read_marker()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "{}read markers are ordered by replicas, not submitted by clients",
                at(i)
            ),
        ));
    }
    if let Some(i) = txs.iter().position(|t| !shared.clients.contains(&t.client)) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "{}the client key is not a permitted client of this cluster",
                at(i)
            ),
        ));
    }
    Ok(())
}

/// Checks a submission before it reaches the engine, cheapest test first so that a client
/// that is not permitted costs no signature work at all: 403 for an unknown client key, then
/// 400 for a bad signature or an oversized field. The signature checks run on the blocking
/// pool, so a large batch never stalls the async workers that serve `/v1/status` and peers.
async fn admit(shared: &Arc<Shared>, txs: Vec<Tx>) -> Result<Vec<Tx>, Response> {
    precheck(shared, &txs)?;
    let len = txs.len();
    let at = |i: usize| which_tx(len, i);
    let clients = Arc::clone(shared);
    let checked = tokio::task::spawn_blocking(move || {
        crate::ledger::tx::verify_batch_with(&txs, &clients.clients).map(|()| txs)
    })
    .await;
    match checked {
        Ok(Ok(txs)) => Ok(txs),
        Ok(Err((i, e))) => Err(error(StatusCode::BAD_REQUEST, format!("{}{e}", at(i)))),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "signature check failed to run",
        )),
    }
}

/// The leader a raft follower relays a write to without checking its signatures: the leader
/// checks them anyway, and checking here too would double the signature work of every
/// forwarded write. `None` on the leader, on PBFT, for a request already forwarded once, and
/// while no leader is known (the write then takes the full path and fails or forwards there).
fn leader_elsewhere(shared: &Shared, headers: &HeaderMap) -> Option<u64> {
    if shared.cluster.protocol != crate::config::Protocol::Raft || headers.contains_key(FORWARDED) {
        return None;
    }
    let status = shared.status();
    if status.engine.role == crate::engine::Role::Leader {
        return None;
    }
    status.engine.leader.filter(|&l| l != shared.id)
}

pub(super) async fn post_tx(
    State(shared): State<AppState>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let tx: Tx = match serde_json::from_slice(&body) {
        Ok(tx) => tx,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad transaction JSON: {e}"),
            )
        }
    };
    let wait = q.wait.unwrap_or(true);
    if let Some(leader) = leader_elsewhere(&shared, &headers) {
        if let Err(r) = precheck(&shared, std::slice::from_ref(&tx)) {
            return r;
        }
        return forward(&shared, leader, "/v1/tx", wait, &headers, body).await;
    }
    let txs = match admit(&shared, vec![tx]).await {
        Ok(txs) => txs,
        Err(r) => return r,
    };
    match submit(&shared, txs, wait).await {
        Submitted::Done(mut replies) => match replies.pop() {
            Some(Ok(rec)) => committed_reply(&shared, &rec).into_response(),
            Some(Err(Rejection::Stale { msg, .. })) => error(StatusCode::CONFLICT, msg),
            Some(Err(Rejection::Response(r))) => r,
            None => error(StatusCode::INTERNAL_SERVER_ERROR, "no reply"),
        },
        Submitted::Accepted(hashes) => accepted(hashes),
        Submitted::Forward(leader) => {
            forward(&shared, leader, "/v1/tx", wait, &headers, body).await
        }
        Submitted::Failed(r) => r,
    }
}

pub(super) async fn post_txs(
    State(shared): State<AppState>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let txs: Vec<Tx> = match serde_json::from_slice(&body) {
        Ok(txs) => txs,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad transaction array JSON: {e}"),
            )
        }
    };
    if txs.len() > MAX_BATCH_TXS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a batch holds at most {MAX_BATCH_TXS} transactions, this one {}; split it",
                txs.len()
            ),
        );
    }
    let wait = q.wait.unwrap_or(true);
    if let Some(leader) = leader_elsewhere(&shared, &headers) {
        if let Err(r) = precheck(&shared, &txs) {
            return r;
        }
        return forward(&shared, leader, "/v1/txs", wait, &headers, body).await;
    }
    let txs = match admit(&shared, txs).await {
        Ok(txs) => txs,
        Err(r) => return r,
    };
    match submit(&shared, txs, wait).await {
        Submitted::Done(replies) => {
            let mut results = Vec::with_capacity(replies.len());
            for r in replies {
                match r {
                    Ok(rec) => results.push(BatchEntry {
                        height: rec.height,
                        result: EntryResult::Applied(rec.outcome),
                        tx_hash: rec.tx_hash,
                    }),
                    // A stale seq is that entry's answer (height 0: in no block); anything
                    // else (a commit timeout) fails the batch and the client retries it
                    // (duplicates are answered from the store).
                    Err(Rejection::Stale { tx_hash, msg }) => results.push(BatchEntry {
                        height: 0,
                        result: EntryResult::Rejected { rejected: msg },
                        tx_hash,
                    }),
                    Err(Rejection::Response(resp)) => return resp,
                }
            }
            Json(BatchReply::sign(&shared.key, shared.id, results)).into_response()
        }
        Submitted::Accepted(hashes) => accepted(hashes),
        Submitted::Forward(leader) => {
            forward(&shared, leader, "/v1/txs", wait, &headers, body).await
        }
        Submitted::Failed(r) => r,
    }
}

fn accepted(hashes: Vec<[u8; 32]>) -> Response {
    (StatusCode::ACCEPTED, Json(AcceptedReply::new(&hashes))).into_response()
}

/// Why one transaction of a submission has no committed reply.
enum Rejection {
    /// Its seq is at or below the client's last applied one and it is not that transaction.
    Stale {
        tx_hash: [u8; 32],
        msg: String,
    },
    Response(Response),
}

enum Submitted {
    Done(Vec<Result<TxRecord, Rejection>>),
    Accepted(Vec<[u8; 32]>),
    Forward(u64),
    Failed(Response),
}

/// Answers duplicates from the store, proposes the rest and (if `wait`) waits for them.
async fn submit(shared: &Shared, txs: Vec<Tx>, wait: bool) -> Submitted {
    let mut results: Vec<Option<Result<TxRecord, Rejection>>> = Vec::with_capacity(txs.len());
    let mut to_propose = Vec::new();
    let mut slots = Vec::new();
    let mut hashes = Vec::with_capacity(txs.len());
    // One read of each client's last applied seq per submission; only a seq at or below it
    // needs the per-tx record (the hot path of a fresh batch reads the store once per client).
    let mut last_seqs: std::collections::HashMap<[u8; 32], Option<u64>> =
        std::collections::HashMap::new();
    for tx in txs {
        hashes.push(tx.hash());
        let last = match last_seqs.get(&tx.client) {
            Some(l) => *l,
            None => match shared.store.last_seq(&tx.client) {
                Ok(l) => *last_seqs.entry(tx.client).or_insert(l),
                Err(e) => return Submitted::Failed(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
            },
        };
        if last.is_some_and(|last| tx.seq <= last) {
            match shared.store.tx_record(&tx.client, tx.seq) {
                // A duplicate: the original answer, never a second application.
                Ok(Some(rec)) => results.push(Some(Ok(rec))),
                Ok(None) => results.push(Some(Err(Rejection::Stale {
                    tx_hash: *hashes.last().unwrap_or(&[0; 32]),
                    msg: format!(
                        "seq {} is at or below this client's last applied seq {}",
                        tx.seq,
                        last.unwrap_or_default()
                    ),
                }))),
                Err(e) => return Submitted::Failed(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
            }
        } else {
            slots.push(results.len());
            results.push(None);
            to_propose.push(tx);
        }
    }
    let mut receivers = Vec::new();
    if !to_propose.is_empty() {
        let mut waiters = Vec::new();
        if wait {
            for _ in 0..to_propose.len() {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                receivers.push(rx);
            }
        }
        let (reply, answer) = oneshot::channel();
        let cmd = Cmd::Propose {
            txs: to_propose,
            waiters,
            reply,
        };
        if shared.cmds.send(cmd).await.is_err() {
            return Submitted::Failed(error(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"));
        }
        match answer.await {
            Ok(Ok(())) => {}
            Ok(Err(ProposeError::NotLeader {
                leader: Some(leader),
            })) if leader != shared.id
                && shared.cluster.protocol == crate::config::Protocol::Raft =>
            {
                return Submitted::Forward(leader)
            }
            Ok(Err(ProposeError::NotLeader { .. })) => {
                return Submitted::Failed(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no leader is known yet (an election is under way); retry shortly",
                ))
            }
            Ok(Err(e @ ProposeError::TooLarge { .. })) => {
                return Submitted::Failed(error(StatusCode::PAYLOAD_TOO_LARGE, e))
            }
            Ok(Err(e @ ProposeError::Busy)) => {
                // Back-pressure, not failure: tell the client when to come back (RFC 9110 §10.2.3).
                let mut r = error(StatusCode::SERVICE_UNAVAILABLE, e);
                r.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
                return Submitted::Failed(r);
            }
            Err(_) => {
                return Submitted::Failed(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "node is stopping",
                ))
            }
        }
    }
    if !wait {
        return Submitted::Accepted(hashes);
    }
    let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
    for (slot, rx) in slots.into_iter().zip(receivers) {
        let r = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(rec)) => Ok(rec),
            // The driver dropped the waiter: the leader lost its role before ordering it.
            Ok(Err(_)) => Err(Rejection::Response(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "leadership moved before the transaction was ordered; retry with the same seq",
            ))),
            Err(_) => Err(Rejection::Response(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "timed out waiting for the transaction to commit; retry with the same seq",
            ))),
        };
        results[slot] = Some(r);
    }
    Submitted::Done(
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Rejection::Response(error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "lost",
                    )))
                })
            })
            .collect(),
    )
}

/// Relays a request to the leader's API and its answer back (raft followers).
pub(super) async fn forward(
    shared: &Shared,
    leader: u64,
    path: &str,
    wait: bool,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    if headers.contains_key(FORWARDED) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "leadership is changing; retry shortly",
        );
    }
    let Some(entry) = shared.cluster.node(leader) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "leader unknown");
    };
    let url = format!("http://{}{path}?wait={wait}", entry.api);
    let req = shared
        .http
        .post(url)
        .header(FORWARDED, "1")
        .header("content-type", "application/json")
        .body(body);
    relay(req.send().await, leader).await
}
