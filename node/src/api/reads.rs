//! Reads (`GET /v1/kv/{key}`, `GET /v1/balances/{account}`, `GET /v1/txs/{hash}`): the
//! consistency barrier a read passes before it is served from the local store, and the
//! signed replies.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::oneshot;

use super::{committed_reply, error, relay, AppState, COMMIT_TIMEOUT, FORWARDED};
use crate::api_types::{BalanceReply, KvReply, ReadQuery};
use crate::engine::ProposeError;
use crate::handle::{Cmd, Shared};

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

pub(super) async fn get_kv(
    State(shared): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<ReadQuery>,
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
        Some(crate::config::ByzantineMode::Corrupt) => {
            Some(format!("{}!", value.unwrap_or_default()))
        }
        _ => value,
    };
    let reply = KvReply::sign(&shared.key, shared.id, key, value, height);
    // Absence is signed too: a client counting replies must be able to tell "absent at height
    // H" from a replica that did not answer.
    let status = match reply.value {
        Some(_) => StatusCode::OK,
        None => StatusCode::NOT_FOUND,
    };
    (status, Json(reply)).into_response()
}

/// An account's balance, with the same consistency as `/v1/kv`; an account never credited has
/// balance 0 (not 404): every name is a valid account.
pub(super) async fn get_balance(
    State(shared): State<AppState>,
    Path(account): Path<String>,
    Query(q): Query<ReadQuery>,
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
        Some(crate::config::ByzantineMode::Corrupt) => balance.wrapping_add(1),
        _ => balance,
    };
    Json(BalanceReply::sign(
        &shared.key,
        shared.id,
        account,
        balance,
        height,
    ))
    .into_response()
}

/// The receipt of a transaction: the same signed reply `POST /v1/tx` gives, once this node has
/// applied it. A client whose write timed out asks here instead of scanning blocks.
pub(super) async fn get_receipt(
    State(shared): State<AppState>,
    Path(hash): Path<String>,
) -> Response {
    let mut tx_hash = [0u8; 32];
    if hex::decode_to_slice(&hash, &mut tx_hash).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "a transaction hash is 64 hex characters",
        );
    }
    match shared.store.receipt(&tx_hash) {
        Ok(Some(rec)) => committed_reply(&shared, &rec).into_response(),
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
