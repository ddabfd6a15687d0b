//! The HTTP API of docs/SPEC.md "HTTP API" (axum). Writes are verified here (signature, permitted
//! client, duplicate) before they reach the engine; a raft follower forwards writes and
//! linearizable reads to the leader's API. Nothing a client sends can panic a handler.

// Handlers return early with a ready `Response` as the error; it is built once per request, so
// its size does not matter and boxing would only add noise.
#![allow(clippy::result_large_err)]

mod admin;
mod leadership;
mod reads;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::api_types::{CommittedReply, ErrorReply};
use crate::client::wire;
use crate::handle::Shared;
use crate::ledger::TxRecord;
use admin::{get_block, get_metrics, get_partition, get_status, post_partition};
use leadership::post_transfer_leader;
use reads::{get_balance, get_kv, get_receipt};
pub use writes::MAX_BATCH_TXS;
use writes::{post_tx, post_txs};

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
        .route("/v1/admin/transfer-leader", post(post_transfer_leader))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(ErrorReply::new(msg))).into_response()
}

/// The committed reply, signed by this node (see [`crate::reply`]).
fn committed_reply(shared: &Shared, rec: &TxRecord) -> Json<CommittedReply> {
    Json(CommittedReply::sign(&shared.key, shared.id, rec))
}

async fn relay(resp: Result<reqwest::Response, reqwest::Error>, leader: u64) -> Response {
    match resp {
        Ok(r) => {
            let status =
                StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match wire::read_capped(r, wire::MAX_REPLY_BYTES).await {
                Some(b) => (
                    status,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    b,
                )
                    .into_response(),
                None => error(
                    StatusCode::BAD_GATEWAY,
                    format!("leader {leader}: its answer broke off or was over the size cap"),
                ),
            }
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot reach leader {leader}: {e}"),
        ),
    }
}
