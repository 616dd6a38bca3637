//! A small HTTP server on 127.0.0.1 for the tests, so the `http` stage and check talk to a real
//! socket.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{any, get};
use levee_stages::{CancelToken, StageContext};

/// Bytes in the `/big` response, well over the output limit.
pub const BIG_BODY_BYTES: usize = 200 * 1024;

pub struct TestServer {
    pub base: String,
    pub port: u16,
    pub hits: Arc<AtomicUsize>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn hit_count(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Starts the server on an ephemeral port. `/away` redirects to `redirect_target`.
pub async fn start(redirect_target: Option<String>) -> TestServer {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let target = redirect_target.unwrap_or_else(|| "/ok".to_string());
    let router = Router::new()
        .route("/ok", get(|| async { "hello" }))
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move {
                (StatusCode::from_u16(code).unwrap(), format!("status {code}"))
            }),
        )
        .route(
            "/json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"status":{"ready":true,"phase":"serving"},"items":[{"name":"a"},{"name":"b"}]}"#,
                )
            }),
        )
        .route("/text", get(|| async { "not json" }))
        .route("/big", get(|| async { "x".repeat(BIG_BODY_BYTES) }))
        .route("/same", get(|| async { Redirect::temporary("/ok") }))
        .route(
            "/away",
            get(move || {
                let target = target.clone();
                async move { Redirect::temporary(&target) }
            }),
        )
        .route(
            "/echo",
            any(|headers: HeaderMap, method: axum::http::Method, body: Bytes| async move {
                let content_type = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                let marker = headers
                    .get("x-levee-test")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                format!(
                    "{method} {content_type} {marker} {}",
                    String::from_utf8_lossy(&body)
                )
                .into_response()
            }),
        )
        .route(
            "/fence",
            any(|headers: HeaderMap| async move {
                headers
                    .get_all(levee_stages::FENCING_TOKEN_HEADER)
                    .iter()
                    .map(|value| value.to_str().unwrap_or("?").to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    next.run(request).await
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    TestServer {
        base: format!("http://127.0.0.1:{port}"),
        port,
        hits,
    }
}

/// A context for one test run: a generous deadline and no cancellation.
pub fn context(timeout: Duration) -> StageContext {
    StageContext::new("task", "run", timeout, CancelToken::never())
}

/// Whether a process group still has members.
pub fn group_exists(pgid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// Waits up to `within` for a process group to disappear.
pub async fn group_gone_within(pgid: i32, within: Duration) -> bool {
    let end = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < end {
        if !group_exists(pgid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !group_exists(pgid)
}
