//! The webhook notifier against real HTTP receivers on 127.0.0.1.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use levee_engine::runbook::NotifyKind;
use levee_server::webhooks::{
    Notification, Notifier, WebhookConfig, WebhookLimits, WebhookStats, hmac_sha256,
};

/// How long a test waits for something that should happen within milliseconds.
const WAIT_LIMIT_MS: u64 = 10_000;

#[derive(Clone, Debug)]
struct Received {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

#[derive(Default)]
struct ReceiverState {
    requests: Mutex<Vec<Received>>,
    /// Statuses answered first, in order; then 200.
    script: Mutex<VecDeque<u16>>,
    /// When set, the first request waits for a permit before it is answered.
    hold_first: Option<tokio::sync::Semaphore>,
}

/// A real HTTP server recording every request.
struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        Receiver::start_with(ReceiverState {
            script: Mutex::new(script.iter().copied().collect()),
            ..Default::default()
        })
        .await
    }

    async fn start_with(state: ReceiverState) -> Receiver {
        let state = Arc::new(state);
        let router = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Receiver {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    fn messages(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.json()["message"].as_str().unwrap().to_string())
            .collect()
    }

    fn release(&self) {
        self.state.hold_first.as_ref().unwrap().add_permits(1);
    }
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let first = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(Received {
            method,
            uri,
            headers,
            body,
        });
        requests.len() == 1
    };
    if first && let Some(gate) = &state.hold_first {
        let _permit = gate.acquire().await.unwrap();
    }
    let status = state.script.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

/// Limits short enough for tests: retries after 10, 20, 40 ms.
fn fast() -> WebhookLimits {
    WebhookLimits {
        timeout_ms: 2_000,
        max_attempts: 4,
        backoff_initial_ms: 10,
        backoff_max_ms: 40,
        ..WebhookLimits::default()
    }
}

fn config(urls: Vec<String>) -> WebhookConfig {
    WebhookConfig {
        urls,
        limits: fast(),
        ..Default::default()
    }
}

fn notification(kind: NotifyKind, message: &str) -> Notification {
    Notification {
        kind,
        run_id: "run-7".into(),
        runbook: "deploy-web".into(),
        task: Some("migrate".into()),
        message: message.into(),
        at_ms: 1_750_000_000_123,
        url: Some("http://levee.local/api/v1/runs/run-7".into()),
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_millis(WAIT_LIMIT_MS),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits a little longer to show that nothing more arrives.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn delivers_body_fields_and_headers() {
    let receiver = Receiver::start(&[]).await;
    let notifier = Notifier::start(config(vec![format!("{}?token=abc", receiver.url)]));
    assert!(notifier.is_enabled());
    notifier.notify(notification(
        NotifyKind::ApprovalNeeded,
        "approve the rollout",
    ));
    wait_until("delivered", || notifier.stats().delivered == 1).await;

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.uri.path(), "/hook");
    assert_eq!(request.uri.query(), Some("token=abc"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("x-levee-event"), Some("approval_needed"));
    assert_eq!(
        request.header("user-agent"),
        Some(concat!("levee/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(request.header("x-levee-signature"), None);
    let body = request.json();
    assert_eq!(body["kind"], "approval_needed");
    assert_eq!(body["run_id"], "run-7");
    assert_eq!(body["runbook"], "deploy-web");
    assert_eq!(body["task"], "migrate");
    assert_eq!(body["message"], "approve the rollout");
    assert_eq!(body["at_ms"], 1_750_000_000_123i64);
    assert_eq!(body["url"], "http://levee.local/api/v1/runs/run-7");
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("run-7") && text.contains("deploy-web") && text.contains("approve"),
        "{text}"
    );
    assert!(!text.contains('\n'));
    // The notification round-trips through the body.
    let parsed: Notification = serde_json::from_value(body).unwrap();
    assert_eq!(
        parsed,
        notification(NotifyKind::ApprovalNeeded, "approve the rollout")
    );
    assert_eq!(
        notifier.stats(),
        WebhookStats {
            delivered: 1,
            failed: 0,
            dropped: 0
        }
    );
}

#[tokio::test]
async fn signature_verifies_with_the_secret() {
    let receiver = Receiver::start(&[]).await;
    let notifier = Notifier::start(WebhookConfig {
        secret: Some("s3cret".into()),
        ..config(vec![receiver.url.clone()])
    });
    notifier.notify(notification(NotifyKind::Failed, "exit status 2"));
    wait_until("delivered", || receiver.count() == 1).await;

    let request = &receiver.requests()[0];
    let signature = request.header("x-levee-signature").expect("signed");
    let hex = signature.strip_prefix("sha256=").expect("sha256= prefix");
    assert_eq!(hex, ::hex::encode(hmac_sha256(b"s3cret", &request.body)));
    assert_ne!(hex, ::hex::encode(hmac_sha256(b"other", &request.body)));
    assert_eq!(request.header("x-levee-event"), Some("failed"));
}

#[tokio::test]
async fn retries_503_twice_then_delivers_exactly_once() {
    let receiver = Receiver::start(&[503, 503]).await;
    let notifier = Notifier::start(config(vec![receiver.url.clone()]));
    notifier.notify(notification(NotifyKind::Stalled, "waiting for an operator"));
    wait_until("delivered", || notifier.stats().delivered == 1).await;
    settle().await;

    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "two 503s, then the 200");
    assert!(requests.iter().all(|r| r.body == requests[0].body));
    assert_eq!(
        notifier.stats(),
        WebhookStats {
            delivered: 1,
            failed: 0,
            dropped: 0
        }
    );
}

#[tokio::test]
async fn retries_429() {
    let receiver = Receiver::start(&[429]).await;
    let notifier = Notifier::start(config(vec![receiver.url.clone()]));
    notifier.notify(notification(NotifyKind::Stuck, "running for 2h"));
    wait_until("delivered", || notifier.stats().delivered == 1).await;
    assert_eq!(receiver.count(), 2);
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let receiver = Receiver::start(&[500; 10]).await;
    let notifier = Notifier::start(config(vec![receiver.url.clone()]));
    notifier.notify(notification(NotifyKind::Finished, "succeeded"));
    wait_until("failed", || notifier.stats().failed == 1).await;
    settle().await;
    assert_eq!(receiver.count(), fast().max_attempts as usize);
    assert_eq!(notifier.stats().delivered, 0);
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let receiver = Receiver::start(&[400]).await;
    let notifier = Notifier::start(config(vec![receiver.url.clone()]));
    notifier.notify(notification(NotifyKind::Failed, "boom"));
    wait_until("failed", || notifier.stats().failed == 1).await;
    settle().await;
    assert_eq!(receiver.count(), 1);
    assert_eq!(notifier.stats().delivered, 0);

    // The queue moves on to the next notification.
    notifier.notify(notification(NotifyKind::Failed, "boom again"));
    wait_until("delivered", || notifier.stats().delivered == 1).await;
    assert_eq!(receiver.messages(), ["boom", "boom again"]);
}

#[tokio::test]
async fn kinds_filter_sends_only_the_chosen_kinds() {
    let receiver = Receiver::start(&[]).await;
    let notifier = Notifier::start(WebhookConfig {
        kinds: Some(vec![NotifyKind::Failed, NotifyKind::Finished]),
        ..config(vec![receiver.url.clone()])
    });
    for kind in [
        NotifyKind::Stalled,
        NotifyKind::Failed,
        NotifyKind::ApprovalNeeded,
        NotifyKind::Stuck,
        NotifyKind::Finished,
    ] {
        notifier.notify(notification(kind, "x"));
    }
    wait_until("two delivered", || receiver.count() == 2).await;
    settle().await;
    let events: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.header("x-levee-event").unwrap().to_string())
        .collect();
    assert_eq!(events, ["failed", "finished"]);
    assert_eq!(notifier.stats().dropped, 0, "filtered is not dropped");
}

#[tokio::test]
async fn unreachable_urls_do_not_block_notify_or_the_other_urls() {
    // Refused: a port that was bound and released.
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    };
    // A black hole: connections complete in the kernel's backlog but nobody ever answers.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = format!("http://{}/hook", black_hole.local_addr().unwrap());
    let receiver = Receiver::start(&[]).await;
    let notifier = Notifier::start(WebhookConfig {
        limits: WebhookLimits {
            timeout_ms: 300,
            max_attempts: 2,
            ..fast()
        },
        ..config(vec![refused, silent, receiver.url.clone()])
    });

    let started = Instant::now();
    for i in 0..20 {
        notifier.notify(notification(NotifyKind::Stalled, &format!("n{i}")));
    }
    let spent = started.elapsed();
    assert!(
        spent < Duration::from_millis(100),
        "notify took {spent:?} for 20 notifications"
    );

    wait_until("all delivered to the live receiver", || {
        receiver.count() == 20
    })
    .await;
    let expected: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    assert_eq!(receiver.messages(), expected, "in order");
    // The refused URL gives up on each of its 20 quickly; the silent one is still timing out.
    wait_until("the refused URL gave up", || notifier.stats().failed >= 20).await;
    assert_eq!(notifier.stats().delivered, 20);
    drop(black_hole);
}

fn rendered_counter(rendered: &str, series: &str) -> u64 {
    rendered
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .map(|value| value.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn queue_overflow_drops_the_oldest_and_counts_it() {
    let metrics = levee_server::metrics::Metrics::install();
    let series = r#"levee_webhook_deliveries_total{outcome="dropped"}"#;
    let dropped_before = rendered_counter(&metrics.render(), series);

    let receiver = Receiver::start_with(ReceiverState {
        hold_first: Some(tokio::sync::Semaphore::new(0)),
        ..Default::default()
    })
    .await;
    let notifier = Notifier::start(WebhookConfig {
        limits: WebhookLimits {
            queue_capacity: 4,
            timeout_ms: 10_000,
            ..fast()
        },
        ..config(vec![receiver.url.clone()])
    });
    notifier.notify(notification(NotifyKind::Stalled, "m0"));
    // m0 is in flight (the receiver holds it), so the queue is empty again.
    wait_until("m0 arrived", || receiver.count() == 1).await;
    for i in 1..=10 {
        notifier.notify(notification(NotifyKind::Stalled, &format!("m{i}")));
    }
    assert_eq!(notifier.stats().dropped, 6, "m1..m6 pushed out by m7..m10");
    let dropped_after = rendered_counter(&metrics.render(), series);
    assert!(
        dropped_after >= dropped_before + 6,
        "metric went from {dropped_before} to {dropped_after}"
    );

    receiver.release();
    wait_until("the queue drained", || receiver.count() == 5).await;
    settle().await;
    assert_eq!(receiver.messages(), ["m0", "m7", "m8", "m9", "m10"]);
    assert_eq!(
        notifier.stats(),
        WebhookStats {
            delivered: 5,
            failed: 0,
            dropped: 6
        }
    );
}

#[tokio::test]
async fn dropping_the_notifier_still_delivers_what_is_queued() {
    let receiver = Receiver::start(&[]).await;
    let notifier = Notifier::start(config(vec![receiver.url.clone()]));
    for i in 0..3 {
        notifier.notify(notification(NotifyKind::Finished, &format!("f{i}")));
    }
    drop(notifier);
    wait_until("all delivered", || receiver.count() == 3).await;
    assert_eq!(receiver.messages(), ["f0", "f1", "f2"]);
}

#[tokio::test]
async fn disabled_notifier_sends_nothing() {
    let receiver = Receiver::start(&[]).await;
    let notifier = Notifier::disabled();
    notifier.notify(notification(NotifyKind::Failed, "x"));
    let empty = Notifier::start(WebhookConfig::default());
    assert!(!empty.is_enabled());
    empty.notify(notification(NotifyKind::Failed, "x"));
    settle().await;
    assert_eq!(receiver.count(), 0);
    assert_eq!(notifier.stats(), WebhookStats::default());
}
