//! Inspection and administration: `/v1/status`, `/v1/blocks/{height}`, `/metrics`, and the
//! partition route only test clusters serve (`/v1/admin/partition`).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{error, AppState};
use crate::api_types::{BlockHeader, BlockQuery, BlockSyncStatus, Partition, StatusReply};

pub(super) async fn get_status(State(shared): State<AppState>) -> Response {
    let mut s = shared.status();
    // The store is the freshest source of the head (the driver publishes once per round).
    if let Ok(head) = shared.store.head() {
        s.height = head.height;
        s.head_hash = head.hash;
    }
    // The lowest block held: 1 on a node with the whole chain (null before the first block).
    let first_height = shared.store.first_height().ok().flatten();
    Json(StatusReply {
        block_sync: s.block_sync.map(|(low, target)| BlockSyncStatus {
            fetched_from: low,
            target_height: target,
        }),
        commit_index: s.engine.commit_index,
        first_height,
        head_hash: s.head_hash,
        height: s.height,
        id: shared.id,
        leader: s.engine.leader,
        peers_connected: shared.net.connected_peers() as u64,
        peers_unreachable: shared
            .cluster
            .nodes
            .iter()
            .map(|p| p.id)
            .filter(|&id| id != shared.id && !shared.net.is_connected(id))
            .collect(),
        pending_txs: s.engine.pending_txs,
        protocol: shared.cluster.protocol,
        role: s.engine.role.to_string(),
        term: s.engine.term,
        view: s.engine.view,
    })
    .into_response()
}

/// `?header=true` leaves out the transactions and the certificate: a live view compares block
/// hashes across nodes twice a second and has no use for megabytes of transactions.
pub(super) async fn get_block(
    State(shared): State<AppState>,
    Path(height): Path<String>,
    Query(param): Query<BlockQuery>,
) -> Response {
    let Ok(height) = height.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "height must be a non-negative integer",
        );
    };
    match shared.store.block(height) {
        Ok(Some(b)) if param.header == Some(true) => Json(BlockHeader::of(&b)).into_response(),
        Ok(Some(b)) => Json(b).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no block at height {height}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Only test clusters serve the admin route (`faultline run --allow-partition`, which `local`
/// passes), and only to a client on this machine: the route lets its caller cut the node off
/// from peers, which costs liveness only (a network attacker can do as much by dropping
/// packets; agreement never depends on the network), but it is still not something a remote
/// client of an API port open to anyone should be able to do. A loopback peer address cannot
/// be forged over TCP, so the check is sound for the local clusters it serves.
fn admin_allowed(peer: Option<axum::Extension<crate::handle::PeerAddr>>) -> bool {
    peer.is_some_and(|axum::Extension(p)| p.0.ip().is_loopback())
}

pub(super) async fn get_partition(
    State(shared): State<AppState>,
    peer: Option<axum::Extension<crate::handle::PeerAddr>>,
) -> Response {
    if !admin_allowed(peer) {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API answers loopback clients only",
        );
    }
    Json(Partition {
        blocked: shared.net.blocked(),
    })
    .into_response()
}

/// Cuts this node off from the listed peers (an empty list heals); see
/// `faultline_net::NetHandle::set_blocked`. The caller tells the other side too, for a
/// two-sided cut.
pub(super) async fn post_partition(
    State(shared): State<AppState>,
    peer: Option<axum::Extension<crate::handle::PeerAddr>>,
    body: Bytes,
) -> Response {
    if !admin_allowed(peer) {
        return error(
            StatusCode::FORBIDDEN,
            "the admin API answers loopback clients only",
        );
    }
    let req: Partition = match serde_json::from_slice(&body) {
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
    Json(Partition {
        blocked: shared.net.blocked(),
    })
    .into_response()
}

pub(super) async fn get_metrics(State(shared): State<AppState>) -> Response {
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
