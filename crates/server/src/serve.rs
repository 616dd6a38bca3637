//! Serving: the accept loop, with bounds on slow clients, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::App;

/// A client must send each request's headers within this time of connecting or of the
/// previous response, so a half-open, silent or idle connection is closed instead of holding
/// a socket forever.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// On shutdown, in-flight requests get this long to finish.
pub const SHUTDOWN_GRACE_MS: u64 = 10_000;
/// On shutdown, running task attempts get this long (from the signal) to finish and be
/// committed before they are cancelled and the replica's leases released (unless
/// `AppOptions::shutdown_steps_grace_ms` says otherwise).
pub const SHUTDOWN_STEPS_GRACE_MS: u64 = 20_000;

#[derive(Clone, Debug, Default)]
pub struct ServeOptions {}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, marks the
/// server unready, and waits (bounded) for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = crate::http::app(app.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let timers = tokio::spawn(crate::timers::run(app.clone(), {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    }));
    let tokens = tokio::spawn(crate::timers::refresh_tokens(app.clone(), {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    }));
    let maintenance = tokio::spawn(crate::maint::driver::run(app.clone(), {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    }));
    let drain_tests = tokio::spawn(crate::drain_tests::run(app.clone(), {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    }));
    let replica = tokio::spawn(crate::replica::run(app.clone(), {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    }));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        // HTTP/1.1 only: hyper's http1 connection starts the header-read timer before the
        // first byte, so a client that connects and says nothing is cut off too (the
        // auto-detecting builder waits for the first byte without a bound).
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %remote, "connection ended with an error");
            }
        });
    }
    // Unready first, then no new claims or connections; in-flight requests and steps finish
    // (bounded), and the leases are released so other replicas take the runs over at once.
    app.set_ready(false);
    app.replica.stop_claiming();
    let steps_deadline =
        tokio::time::Instant::now() + Duration::from_millis(app.replica.shutdown_steps_grace_ms);
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_millis(SHUTDOWN_GRACE_MS)) => {
            tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE_MS} ms; closing");
        }
    }
    app.drain_runs(steps_deadline).await;
    let _ = stop_tx.send(true);
    let _ = timers.await;
    let _ = tokens.await;
    let _ = replica.await;
    let _ = maintenance.await;
    let _ = drain_tests.await;
    Ok(())
}
