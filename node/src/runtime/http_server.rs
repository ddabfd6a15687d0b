//! The API's HTTP/1 server loop, with the limits `axum::serve` does not apply: a node faces the
//! open network on its API port, and the API shares the process's file descriptors with the
//! libp2p transport, so a client that opens connections and never finishes a request must not
//! be able to exhaust them.
//!
//! - **Connection cap**: at most [`MAX_CONNECTIONS`] open API connections; one more is accepted
//!   and closed at once (counted), so the kernel backlog never fills with waiting clients.
//! - **Header timeout**: a connection must send a complete request head within
//!   [`HEADER_TIMEOUT`] of being accepted or of its previous response (hyper's header read
//!   timer, which also bounds how long an idle keep-alive connection is held).
//! - **Body timeout**: a request body must arrive within [`BODY_TIMEOUT`].

use crate::handle::PeerAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower_http::timeout::RequestBodyTimeoutLayer;

/// Open API connections allowed at once; well under the default 1,024 descriptor limit, so
/// the peers' connections and the database always have room.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a connection has to send a complete request head (and the idle limit between
/// keep-alive requests).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a request has to deliver its body (16 MiB at most).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` turns true. `on_refused` is called for each
/// connection closed because the cap was reached (metrics).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    on_refused: impl Fn() + Send + 'static,
) {
    let router = router.layer(RequestBodyTimeoutLayer::new(BODY_TIMEOUT));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            a = listener.accept() => a,
        };
        // Reap finished connection tasks so the set does not grow with history.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: back off briefly
                // instead of spinning on the error.
                tracing::warn!(error = %e, "cannot accept an API connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            on_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(router.clone().layer(axum::Extension(PeerAddr(peer))));
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
            drop(slot);
        });
    }
    connections.abort_all();
}
