//! The HTTP API of docs/SPEC.md "HTTP API" (axum). Writes are verified here (signature, permitted
//! client, duplicate) before they reach the engine; a raft follower forwards writes and
//! linearizable reads to the leader's API. Nothing a client sends can panic a handler.

// Handlers return early with a ready `Response` as the error; it is built once per request, so
// its size does not matter and boxing would only add noise.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::engine::ProposeError;
use crate::ledger::{Tx, TxRecord};
use crate::reply::ReadValue;
use crate::runtime::{Cmd, Shared};

/// How long a write or a linearizable read waits for its commit before answering 503.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body (a `/v1/txs` batch of some thousands of transactions).
const MAX_BODY: usize = 16 << 20;
/// Set on requests a follower forwards, so that a forwarded request is never forwarded again.
const FORWARDED: &str = "x-faultline-forwarded";

type AppState = Arc<Shared>;

pub fn router(shared: Arc<Shared>) -> Router {
    let admin = if shared.allow_partition {
        Router::new().route(
            "/v1/admin/partition",
            get(get_partition).post(post_partition),
        )
    } else {
        Router::new()
    };
    admin
        .route("/v1/tx", post(post_tx))
        .route("/v1/txs", post(post_txs))
        .route("/v1/kv/{key}", get(get_kv))
        .route("/v1/balances/{account}", get(get_balance))
        .route("/v1/txs/{hash}", get(get_receipt))
        .route("/v1/status", get(get_status))
        .route("/v1/blocks/{height}", get(get_block))
        .route("/metrics", get(get_metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": msg.to_string() }))).into_response()
}

#[derive(Deserialize)]
struct WaitParam {
    wait: Option<bool>,
}

#[derive(Deserialize)]
struct ReadParam {
    consistency: Option<String>,
}

/// The committed reply, signed by this node (see [`crate::reply`]).
fn committed_reply(shared: &Shared, rec: &TxRecord) -> Value {
    let sig = crate::reply::sign(&shared.key, &rec.tx_hash, rec.height, &rec.outcome);
    json!({
        "status": "committed",
        "height": rec.height,
        "tx_hash": hex::encode(rec.tx_hash),
        "result": rec.outcome,
        "node": shared.id,
        "signature": hex::encode(sig),
    })
}

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
    if status.engine.role == "leader" {
        return None;
    }
    status.engine.leader.filter(|&l| l != shared.id)
}

async fn post_tx(
    State(shared): State<AppState>,
    Query(q): Query<WaitParam>,
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
            Some(Ok(rec)) => Json(committed_reply(&shared, &rec)).into_response(),
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

async fn post_txs(
    State(shared): State<AppState>,
    Query(q): Query<WaitParam>,
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
                    Ok(rec) => results.push(crate::reply::BatchResult {
                        tx_hash: rec.tx_hash,
                        height: rec.height,
                        result: serde_json::to_value(&rec.outcome).unwrap_or(Value::Null),
                    }),
                    // A stale seq is that entry's answer (height 0: in no block); anything
                    // else (a commit timeout) fails the batch and the client retries it
                    // (duplicates are answered from the store).
                    Err(Rejection::Stale { tx_hash, msg }) => {
                        results.push(crate::reply::BatchResult {
                            tx_hash,
                            height: 0,
                            result: json!({ "rejected": msg }),
                        })
                    }
                    Err(Rejection::Response(resp)) => return resp,
                }
            }
            let sig = crate::reply::sign_batch(&shared.key, &results);
            let results: Vec<Value> = results
                .iter()
                .map(|r| {
                    json!({
                        "tx_hash": hex::encode(r.tx_hash),
                        "height": r.height,
                        "result": r.result,
                    })
                })
                .collect();
            Json(json!({
                "status": "committed",
                "node": shared.id,
                "results": results,
                "signature": hex::encode(sig),
            }))
            .into_response()
        }
        Submitted::Accepted(hashes) => accepted(hashes),
        Submitted::Forward(leader) => {
            forward(&shared, leader, "/v1/txs", wait, &headers, body).await
        }
        Submitted::Failed(r) => r,
    }
}

fn accepted(hashes: Vec<[u8; 32]>) -> Response {
    let hashes: Vec<String> = hashes.iter().map(hex::encode).collect();
    (
        StatusCode::ACCEPTED,
        Json(json!({ "status": "accepted", "tx_hashes": hashes })),
    )
        .into_response()
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
            _ => Err(Rejection::Response(error(
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
async fn forward(
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

async fn relay(resp: Result<reqwest::Response, reqwest::Error>, leader: u64) -> Response {
    match resp {
        Ok(r) => {
            let status =
                StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match r.bytes().await {
                Ok(b) => (
                    status,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    b,
                )
                    .into_response(),
                Err(e) => error(StatusCode::BAD_GATEWAY, format!("leader {leader}: {e}")),
            }
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot reach leader {leader}: {e}"),
        ),
    }
}

/// Makes a read's `consistency` hold before it is served from the local store. `linearizable`
/// (the default): a raft node confirms it leads and has applied everything committed when the
/// read began (ReadIndex, thesis §6.4), a follower relays the read to the leader (`Err` carries
/// the leader's answer); a PBFT replica orders a read marker through pre-prepare/prepare/commit
/// and waits until it has executed it (TOCS §5.1.3's fallback for reads: ordered like a
/// request), so even a lagging correct replica never serves a value older than a write that
/// completed before the read began. `local`: this node's applied state, possibly stale.
async fn read_barrier(
    shared: &Shared,
    consistency: Option<&str>,
    headers: &HeaderMap,
    path: &str,
) -> Result<(), Response> {
    match consistency {
        None | Some("linearizable") => {
            let (reply, answer) = oneshot::channel();
            if shared.cmds.send(Cmd::Read { reply }).await.is_err() {
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"));
            }
            match tokio::time::timeout(COMMIT_TIMEOUT, answer).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(ProposeError::NotLeader {
                    leader: Some(leader),
                }))) if leader != shared.id && !headers.contains_key(FORWARDED) => {
                    let Some(entry) = shared.cluster.node(leader) else {
                        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "leader unknown"));
                    };
                    let url = format!("http://{}{path}?consistency=linearizable", entry.api);
                    let req = shared.http.get(url).header(FORWARDED, "1");
                    Err(relay(req.send().await, leader).await)
                }
                Ok(Ok(Err(e @ ProposeError::Busy))) => {
                    // Too many reads waiting for their marker: back-pressure, as for writes.
                    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, e);
                    r.headers_mut().insert(
                        axum::http::header::RETRY_AFTER,
                        axum::http::HeaderValue::from_static("1"),
                    );
                    Err(r)
                }
                Ok(Ok(Err(e))) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e)),
                _ => Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    match shared.cluster.protocol {
                        crate::config::Protocol::Raft => {
                            "timed out confirming leadership for a linearizable read"
                        }
                        crate::config::Protocol::Pbft => {
                            "timed out ordering a linearizable read (its read marker did not \
                             commit within 10 s); retry, or read with consistency=local"
                        }
                    },
                )),
            }
        }
        Some("local") => Ok(()),
        Some(other) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("consistency must be linearizable or local, not {other:?}"),
        )),
    }
}

async fn get_kv(
    State(shared): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<ReadParam>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/kv/{}", encode_path(&key));
    if let Err(r) = read_barrier(&shared, q.consistency.as_deref(), &headers, &path).await {
        return r;
    }
    // Value and height from one store transaction: the signature vouches for the pair.
    let (value, height) = match shared.store.get_with_height(&key) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let value = match shared.byzantine {
        // A lying replica: a wrong value, signed with its real key.
        Some(crate::faults::ByzantineMode::Corrupt) => {
            Some(format!("{}!", value.unwrap_or_default()))
        }
        _ => value,
    };
    let read = ReadValue::Kv {
        key: key.clone(),
        value: value.clone(),
    };
    let signature = hex::encode(crate::reply::sign_read(&shared.key, &read, height));
    match value {
        Some(value) => Json(json!({
            "key": key, "value": value, "height": height,
            "node": shared.id, "signature": signature,
        }))
        .into_response(),
        // Absence is signed too: a client counting replies must be able to tell "absent at
        // height H" from a replica that did not answer.
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({
                "error": format!("key {key:?} not found"),
                "key": key, "value": null, "height": height,
                "node": shared.id, "signature": signature,
            })),
        )
            .into_response(),
    }
}

/// An account's balance, with the same consistency as `/v1/kv`; an account never credited has
/// balance 0 (not 404): every name is a valid account.
async fn get_balance(
    State(shared): State<AppState>,
    Path(account): Path<String>,
    Query(q): Query<ReadParam>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/balances/{}", encode_path(&account));
    if let Err(r) = read_barrier(&shared, q.consistency.as_deref(), &headers, &path).await {
        return r;
    }
    let (balance, height) = match shared.store.balance_with_height(&account) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let balance = match shared.byzantine {
        Some(crate::faults::ByzantineMode::Corrupt) => balance.wrapping_add(1),
        _ => balance,
    };
    let read = ReadValue::Balance {
        account: account.clone(),
        balance,
    };
    let signature = hex::encode(crate::reply::sign_read(&shared.key, &read, height));
    Json(json!({
        "account": account, "balance": balance, "height": height,
        "node": shared.id, "signature": signature,
    }))
    .into_response()
}

/// The receipt of a transaction: the same signed reply `POST /v1/tx` gives, once this node has
/// applied it. A client whose write timed out asks here instead of scanning blocks.
async fn get_receipt(State(shared): State<AppState>, Path(hash): Path<String>) -> Response {
    let mut tx_hash = [0u8; 32];
    if hex::decode_to_slice(&hash, &mut tx_hash).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "a transaction hash is 64 hex characters",
        );
    }
    match shared.store.receipt(&tx_hash) {
        Ok(Some(rec)) => Json(committed_reply(&shared, &rec)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "unknown transaction"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Percent-encodes a key for a URL path segment.
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn get_status(State(shared): State<AppState>) -> Response {
    let mut s = shared.status();
    // The store is the freshest source of the head (the driver publishes once per round).
    if let Ok(head) = shared.store.head() {
        s.height = head.height;
        s.head_hash = head.hash;
    }
    // The lowest block held: 1 on a node with the whole chain (null before the first block).
    let first_height = shared.store.first_height().ok().flatten();
    let block_sync = s
        .block_sync
        .map(|(low, target)| json!({ "target_height": target, "fetched_from": low }));
    Json(json!({
        "id": shared.id,
        "protocol": shared.cluster.protocol,
        "role": s.engine.role,
        "term": s.engine.term,
        "view": s.engine.view,
        "leader": s.engine.leader,
        "height": s.height,
        "first_height": first_height,
        "head_hash": hex::encode(s.head_hash),
        "commit_index": s.engine.commit_index,
        "peers_connected": shared.net.connected_peers(),
        "peers_unreachable": shared
            .cluster
            .nodes
            .iter()
            .map(|p| p.id)
            .filter(|&id| id != shared.id && !shared.net.is_connected(id))
            .collect::<Vec<_>>(),
        "block_sync": block_sync,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct BlockParam {
    header: Option<bool>,
}

/// `?header=true` leaves out the transactions and the certificate: a live view compares block
/// hashes across nodes twice a second and has no use for megabytes of transactions.
async fn get_block(
    State(shared): State<AppState>,
    Path(height): Path<String>,
    Query(param): Query<BlockParam>,
) -> Response {
    let Ok(height) = height.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "height must be a non-negative integer",
        );
    };
    match shared.store.block(height) {
        Ok(Some(b)) if param.header == Some(true) => Json(json!({
            "height": b.height,
            "prev_hash": hex::encode(b.prev_hash),
            "hash": hex::encode(b.hash),
            "tx_count": b.txs.len(),
        }))
        .into_response(),
        Ok(Some(b)) => Json(b).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no block at height {height}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `{"blocked":[ids]}`: the peers this node is cut off from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionBody {
    blocked: Vec<u64>,
}

/// Only test clusters serve the admin route (`faultline run --allow-partition`, which `local`
/// passes), and only to a client on this machine: the route lets its caller cut the node off
/// from peers, which costs liveness only (a network attacker can do as much by dropping
/// packets; agreement never depends on the network), but it is still not something a remote
/// client of an API port open to anyone should be able to do. A loopback peer address cannot
/// be forged over TCP, so the check is sound for the local clusters it serves.
fn admin_allowed(peer: Option<axum::Extension<crate::runtime::http_server::PeerAddr>>) -> bool {
    peer.is_some_and(|axum::Extension(p)| p.0.ip().is_loopback())
}

async fn get_partition(
    State(shared): State<AppState>,
    peer: Option<axum::Extension<crate::runtime::http_server::PeerAddr>>,
) -> Response {
    if !admin_allowed(peer) {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API answers loopback clients only",
        );
    }
    Json(json!({ "blocked": shared.net.blocked() })).into_response()
}

/// Cuts this node off from the listed peers (an empty list heals); see
/// `faultline_net::NetHandle::set_blocked`. The caller tells the other side too, for a
/// two-sided cut.
async fn post_partition(
    State(shared): State<AppState>,
    peer: Option<axum::Extension<crate::runtime::http_server::PeerAddr>>,
    body: Bytes,
) -> Response {
    if !admin_allowed(peer) {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API answers loopback clients only",
        );
    }
    let req: PartitionBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"blocked\":[ids]}}: {e}"),
            )
        }
    };
    let known: std::collections::BTreeSet<u64> = req
        .blocked
        .into_iter()
        .filter(|&id| id != shared.id && shared.cluster.node(id).is_some())
        .collect();
    tracing::warn!(blocked = ?known, "admin: partition set");
    shared.net.set_blocked(known);
    Json(json!({ "blocked": shared.net.blocked() })).into_response()
}

async fn get_metrics(State(shared): State<AppState>) -> Response {
    let stats = shared.net.stats();
    shared.metrics.sync_net_rejected(&stats.rejected);
    shared
        .metrics
        .sync_net_dropped(stats.dropped_queue_full, stats.dropped_send_failed);
    shared
        .metrics
        .peers_connected
        .set(stats.connected_peers as i64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}
