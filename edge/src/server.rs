//! The HTTP server: accepts, admits ([`crate::admission`]), serves each
//! connection with hyper (HTTP/1.1, upgrades to WebSocket), and stops
//! accepting when the edge drains. axum's own `serve` has no header-read
//! timeout and no place to refuse a connection before it is read; this
//! loop is that, and nothing more.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::admission::{Admission, Counted, refuse};

/// How long accepting pauses after an error such as running out of file
/// descriptors, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown` completes; then stops
/// accepting and asks every plain HTTP connection to finish its request
/// and close (WebSockets drain through the connection driver).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    admission: Arc<Admission>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let (stopping, stop) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match admission.accept(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(peer = %peer, ?refusal, "connection refused");
                tokio::spawn(refuse(stream, refusal));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let claim = slot.claim_handle();
        let stream = TokioIo::new(Counted::new(stream, slot));
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(claim.clone());
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let header_read_timeout = admission.header_read_timeout();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let connection = builder.serve_connection(stream, service).with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "http connection ended");
                    }
                    return;
                }
                _ = stop.wait_for(|stop| *stop) => {}
            }
            connection.as_mut().graceful_shutdown();
            if let Err(error) = connection.await {
                tracing::debug!(%error, "http connection ended");
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
}
