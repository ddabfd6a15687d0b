//! `POST /v1/admin/transfer-leader`: an admin-signed request to move Raft leadership to another
//! voter (thesis §3.10), for maintenance such as restarting the leader's machine without an
//! election timeout's pause. Checked cheapest first: a key that is not an admin is `403` before
//! any signature work.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::oneshot;

use super::writes::forward;
use super::{error, AppState, FORWARDED};
use crate::api_types::{TransferLeaderReply, TransferLeaderRequest};
use crate::config::Protocol;
use crate::engine::{Role, TransferError};
use crate::handle::{Cmd, TransferRefused};

/// How long the answer waits for the target to lead: the core abandons a transfer after one
/// election timeout, so this only has to cover that and a slow machine.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);

pub(super) async fn post_transfer_leader(
    State(shared): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: TransferLeaderRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad transfer-leader request JSON: {e}"),
            )
        }
    };
    if !shared.cluster.is_admin(&req.admin) {
        return error(
            StatusCode::FORBIDDEN,
            "the key is not an admin of this cluster ([[admin]] in cluster.toml)",
        );
    }
    if !req.verifies() {
        return error(
            StatusCode::BAD_REQUEST,
            "the admin signature does not verify",
        );
    }
    if shared.cluster.protocol != Protocol::Raft {
        return error(
            StatusCode::BAD_REQUEST,
            TransferError::Unsupported(shared.cluster.protocol),
        );
    }
    if shared.cluster.node(req.target).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("node {} is not a member of this cluster", req.target),
        );
    }
    let status = shared.status();
    if status.engine.role != Role::Leader {
        return match status.engine.leader.filter(|&l| l != shared.id) {
            Some(leader) if !headers.contains_key(FORWARDED) => {
                forward(
                    &shared,
                    leader,
                    "/v1/admin/transfer-leader",
                    true,
                    &headers,
                    body,
                )
                .await
            }
            _ => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no leader is known yet (an election is under way); retry shortly",
            ),
        };
    }
    let (reply, answer) = oneshot::channel();
    let cmd = Cmd::TransferLeader {
        to: req.target,
        term: req.term,
        reply,
    };
    if shared.cmds.send(cmd).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "node is stopping");
    }
    match answer.await {
        Ok(Ok(())) => {}
        Ok(Err(TransferRefused::StaleTerm { now })) => {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "the request was signed for term {}, the leader is in term {}: sign it again with the current term",
                    req.term,
                    now.map_or_else(|| "-".into(), |t| t.to_string())
                ),
            )
        }
        Ok(Err(TransferRefused::Engine(e @ TransferError::NotLeader { .. }))) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Ok(Err(TransferRefused::Engine(e @ TransferError::InProgress))) => {
            return error(StatusCode::CONFLICT, e)
        }
        Ok(Err(TransferRefused::Engine(e))) => return error(StatusCode::BAD_REQUEST, e),
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"),
    }
    // This node learns the new leader from its first message of the next term.
    let deadline = tokio::time::Instant::now() + TRANSFER_WAIT;
    loop {
        let s = shared.status().engine;
        let moved = s.term.is_some_and(|t| t > req.term) || req.target == shared.id;
        if moved && s.leader == Some(req.target) {
            return Json(TransferLeaderReply {
                leader: req.target,
                term: s.term.unwrap_or(req.term),
            })
            .into_response();
        }
        if tokio::time::Instant::now() >= deadline {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "node {} did not take over within {} s (unreachable or far behind?); the transfer is abandoned after an election timeout",
                    req.target,
                    TRANSFER_WAIT.as_secs()
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
