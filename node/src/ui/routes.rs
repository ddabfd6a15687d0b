//! The view's HTTP side: the page, `GET /api/state`, and the control routes (loopback only,
//! with [`CONTROL_HEADER`], and only where the view owns the processes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::{Action, ControlRequest, Ui, CONTROL_HEADER, PAGE};
use crate::api_types::ErrorReply;
use crate::config::ByzantineMode;

/// `POST /api/nodes/{i}/byzantine`'s body: `{"mode":"MODE"}` or `{"mode":"honest"}`.
#[derive(Deserialize)]
struct ModeRequest {
    mode: String,
}

/// A control's answer: the timeline entry it made.
#[derive(Serialize)]
struct ControlReply {
    ok: bool,
    text: String,
}

impl Ui {
    /// The page and its JSON routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/api/state", get(api_state))
            .route("/api/nodes/{i}/{action}", post(api_control))
            .with_state(Arc::clone(self))
    }

    /// Serves the view on `listener` and polls the nodes until `stop` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let poller = tokio::spawn(Arc::clone(&self).poll(stop.clone()));
        let mut stop2 = stop.clone();
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop2.changed().await;
            })
            .await;
        poller.abort();
        r
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn api_state(State(ui): State<Arc<Ui>>) -> Response {
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(ui.state()),
    )
        .into_response()
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, Json(ErrorReply::new(msg))).into_response()
}

/// `POST /api/nodes/{i}/{kill|restart|partition|heal|byzantine}`; `byzantine` takes
/// `{"mode":"equivocate"}` (or `"honest"`). Answered only for loopback clients that send
/// [`CONTROL_HEADER`], and only where the view owns the processes.
async fn api_control(
    State(ui): State<Arc<Ui>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((i, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(controls) = &ui.controls else {
        return error(
            StatusCode::FORBIDDEN,
            "this view watches a cluster it does not own; controls exist in `faultline local --ui`",
        );
    };
    if !peer.ip().is_loopback() || !headers.contains_key(CONTROL_HEADER) {
        return error(
            StatusCode::FORBIDDEN,
            format!("controls answer loopback clients sending the {CONTROL_HEADER} header only"),
        );
    }
    let Some(node) = i.parse::<usize>().ok().filter(|&i| i < ui.nodes.len()) else {
        return error(StatusCode::NOT_FOUND, format!("no node {i}"));
    };
    let action = match action.as_str() {
        "kill" => Action::Kill,
        "restart" => Action::Restart,
        "partition" => Action::Partition,
        "heal" => Action::Heal,
        "byzantine" => {
            let mode = serde_json::from_slice::<ModeRequest>(&body)
                .map(|m| m.mode)
                .unwrap_or_default();
            if mode == "honest" {
                Action::Byzantine(None)
            } else {
                match ByzantineMode::ALL.iter().find(|m| m.name() == mode) {
                    Some(&m) => Action::Byzantine(Some(m)),
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!("mode {mode:?} is not honest or one of the six modes"),
                        )
                    }
                }
            }
        }
        other => return error(StatusCode::NOT_FOUND, format!("no action {other:?}")),
    };
    let name = action.name();
    let (tx, rx) = oneshot::channel();
    let req = ControlRequest {
        node,
        action,
        reply: tx,
    };
    if controls.send(req).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster is shutting down",
        );
    }
    let id = ui.nodes[node].0;
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(text))) => {
            ui.event("action", Some(id), text.clone());
            Json(ControlReply { ok: true, text }).into_response()
        }
        Ok(Ok(Err(e))) => {
            ui.event("action", Some(id), format!("{name} node {id} failed: {e}"));
            error(StatusCode::CONFLICT, e)
        }
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no answer from the cluster",
        ),
    }
}
