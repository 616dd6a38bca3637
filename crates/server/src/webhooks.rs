//! Run notifications POSTed to webhooks.
//!
//! The run actors hand every committed [`Action::Notify`](levee_engine::runbook::Action) to
//! [`Notifier::notify`], which never blocks and never fails: it filters by kind, serialises
//! and signs the body once, and puts it on one bounded queue per URL. One background task
//! per URL delivers its queue in order: an HTTP POST with a timeout, retried with exponential
//! backoff on connection errors, timeouts, 5xx and 429, never on other answers. Deliveries to
//! different URLs are independent, so an unreachable receiver delays only its own queue.
//!
//! **Overflow drops the oldest.** When a URL's queue is full, the oldest waiting notification
//! is dropped to make room for the new one: a receiver that was down for a while then hears
//! the most recent news about a run (it finished, it stalled again) rather than a stale
//! backlog. Every drop is counted in `levee_webhook_deliveries_total{outcome="dropped"}`.
//!
//! The body is JSON (see [`Notification::to_json`]) with a one-line `text` summary, so a
//! Slack-compatible incoming webhook shows something useful. With a secret, the body is
//! signed: `X-Levee-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
//!
//! Only `http://` URLs are supported: this build has no TLS (reqwest without default
//! features). [`WebhookConfig::validate`] refuses anything else, naming the URL.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use levee_engine::runbook::NotifyKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Notifications waiting per URL; beyond it the oldest waiting one is dropped.
pub const WEBHOOK_QUEUE_CAPACITY: usize = 1_024;
/// Time allowed for one POST, from connecting to the end of the answer's headers.
pub const WEBHOOK_TIMEOUT_MS: u64 = 5_000;
/// POSTs of one notification to one URL, the first included, before it counts as failed.
pub const WEBHOOK_MAX_ATTEMPTS: u32 = 5;
/// Wait before the first retry; each further retry waits twice as long as the one before.
pub const WEBHOOK_BACKOFF_INITIAL_MS: u64 = 500;
/// Longest wait between two attempts, also the cap on an honoured `Retry-After`.
pub const WEBHOOK_BACKOFF_MAX_MS: u64 = 30_000;
/// Longest `text` summary, in bytes; a longer message is cut (at a character boundary).
pub const WEBHOOK_TEXT_MAX_BYTES: usize = 1_000;

/// Header carrying `sha256=<hex HMAC-SHA256(secret, body)>` when a secret is configured.
pub const SIGNATURE_HEADER: &str = "X-Levee-Signature";
/// Header carrying the notification's kind (`stalled`, `approval_needed`, ...).
pub const EVENT_HEADER: &str = "X-Levee-Event";
/// The metric counting deliveries by `outcome` (`ok`, `failed`, `dropped`).
pub const DELIVERIES_METRIC: &str = "levee_webhook_deliveries_total";

/// One run notification, as the run actor raises it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub kind: NotifyKind,
    pub run_id: String,
    pub runbook: String,
    pub task: Option<String>,
    pub message: String,
    /// When the decision that raised it was committed, epoch ms.
    pub at_ms: i64,
    /// Link to the run in the API.
    pub url: Option<String>,
}

/// The JSON body: the notification's fields plus `text`.
#[derive(Serialize)]
struct Body<'a> {
    kind: NotifyKind,
    run_id: &'a str,
    runbook: &'a str,
    task: Option<&'a str>,
    message: &'a str,
    at_ms: i64,
    url: Option<&'a str>,
    text: String,
}

impl Notification {
    /// One line for humans, e.g.
    /// `Levee run r-1 (runbook deploy) stalled at task db: waiting for an operator <url>`.
    pub fn text(&self) -> String {
        let mut text = format!(
            "Levee run {} (runbook {}) {}",
            self.run_id,
            self.runbook,
            kind_phrase(self.kind)
        );
        if let Some(task) = &self.task {
            text.push_str(" at task ");
            text.push_str(task);
        }
        if !self.message.is_empty() {
            text.push_str(": ");
            text.push_str(&self.message);
        }
        if let Some(url) = &self.url {
            text.push_str(" <");
            text.push_str(url);
            text.push('>');
        }
        let mut line: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if line.len() > WEBHOOK_TEXT_MAX_BYTES {
            let mut end = WEBHOOK_TEXT_MAX_BYTES - '…'.len_utf8();
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push('…');
        }
        line
    }

    /// The body POSTed: `{"kind":"stalled","run_id":..,"runbook":..,"task":..,"message":..,
    /// "at_ms":..,"url":..,"text":..}`.
    pub fn to_json(&self) -> Vec<u8> {
        let body = Body {
            kind: self.kind,
            run_id: &self.run_id,
            runbook: &self.runbook,
            task: self.task.as_deref(),
            message: &self.message,
            at_ms: self.at_ms,
            url: self.url.as_deref(),
            text: self.text(),
        };
        serde_json::to_vec(&body).expect("a notification always serialises")
    }
}

/// The wire name of a kind, as in the body's `kind` and the `X-Levee-Event` header.
pub fn kind_name(kind: NotifyKind) -> &'static str {
    match kind {
        NotifyKind::Stalled => "stalled",
        NotifyKind::Failed => "failed",
        NotifyKind::ApprovalNeeded => "approval_needed",
        NotifyKind::Stuck => "stuck",
        NotifyKind::Finished => "finished",
    }
}

fn kind_phrase(kind: NotifyKind) -> &'static str {
    match kind {
        NotifyKind::Stalled => "stalled",
        NotifyKind::Failed => "failed",
        NotifyKind::ApprovalNeeded => "needs an approval",
        NotifyKind::Stuck => "has a stuck task",
        NotifyKind::Finished => "finished",
    }
}

/// Where notifications go and how hard delivery tries.
///
/// Build it with `..Default::default()` so fields added later do not break callers:
/// `WebhookConfig { urls, secret, ..Default::default() }`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `http://` URLs, each POSTed every notification (independently of the others).
    pub urls: Vec<String>,
    /// The kinds sent; `None` sends all, `Some(empty)` sends none.
    pub kinds: Option<Vec<NotifyKind>>,
    /// Signs each body with HMAC-SHA256 in `X-Levee-Signature`.
    pub secret: Option<String>,
    /// Queue, timeout and retry bounds; the defaults are the `WEBHOOK_*` constants.
    pub limits: WebhookLimits,
}

// By hand, so the secret never reaches a log.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|url| redact(url)).collect();
        f.debug_struct("WebhookConfig")
            .field("urls", &urls)
            .field("kinds", &self.kinds)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("limits", &self.limits)
            .finish()
    }
}

/// Delivery bounds. Tests shorten them; servers keep the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookLimits {
    pub queue_capacity: usize,
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for WebhookLimits {
    fn default() -> Self {
        WebhookLimits {
            queue_capacity: WEBHOOK_QUEUE_CAPACITY,
            timeout_ms: WEBHOOK_TIMEOUT_MS,
            max_attempts: WEBHOOK_MAX_ATTEMPTS,
            backoff_initial_ms: WEBHOOK_BACKOFF_INITIAL_MS,
            backoff_max_ms: WEBHOOK_BACKOFF_MAX_MS,
        }
    }
}

impl WebhookLimits {
    /// The wait after failed attempt `attempt` (1-based): initial × 2^(attempt-1), capped.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.saturating_sub(1).min(32);
        self.backoff_initial_ms
            .saturating_mul(factor)
            .min(self.backoff_max_ms)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookConfigError {
    #[error("webhook URL {url:?} is malformed: {reason}")]
    Malformed { url: String, reason: String },
    #[error(
        "webhook URL {url} uses https, which this build cannot send (no TLS support); \
         use an http:// URL, e.g. a local relay"
    )]
    Https { url: String },
    #[error("webhook URL {url} uses the unsupported scheme {scheme:?}; only http:// is supported")]
    UnsupportedScheme { url: String, scheme: String },
    #[error("the webhook secret is empty")]
    EmptySecret,
    #[error("webhook limit {name} must be at least 1")]
    ZeroLimit { name: &'static str },
}

impl WebhookConfig {
    /// Checks every URL (http only, with a host) and the limits; the error names the URL.
    pub fn validate(&self) -> Result<(), WebhookConfigError> {
        for url in &self.urls {
            parse_url(url)?;
        }
        if self.secret.as_deref() == Some("") {
            return Err(WebhookConfigError::EmptySecret);
        }
        let limits = &self.limits;
        for (name, value) in [
            ("queue_capacity", limits.queue_capacity as u64),
            ("timeout_ms", limits.timeout_ms),
            ("max_attempts", u64::from(limits.max_attempts)),
        ] {
            if value == 0 {
                return Err(WebhookConfigError::ZeroLimit { name });
            }
        }
        Ok(())
    }

    fn wants(&self, kind: NotifyKind) -> bool {
        self.kinds
            .as_ref()
            .is_none_or(|kinds| kinds.contains(&kind))
    }
}

fn parse_url(url: &str) -> Result<reqwest::Url, WebhookConfigError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| WebhookConfigError::Malformed {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(WebhookConfigError::Https {
                url: redact_url(&parsed),
            });
        }
        other => {
            return Err(WebhookConfigError::UnsupportedScheme {
                url: redact_url(&parsed),
                scheme: other.to_string(),
            });
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(WebhookConfigError::Malformed {
            url: url.to_string(),
            reason: "no host".into(),
        });
    }
    Ok(parsed)
}

/// The URL as logs may show it: without credentials, query or fragment.
fn redact_url(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => redact_url(&parsed),
        Err(_) => url.split(['?', '#']).next().unwrap_or_default().to_string(),
    }
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK_BYTES: usize = 64;
    let mut block = [0u8; BLOCK_BYTES];
    if key.len() > BLOCK_BYTES {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner_pad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer_pad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&inner_pad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// The `X-Levee-Signature` value for `body`: `sha256=<hex>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), body))
    )
}

/// Deliveries since this notifier started (the metric counts across the process).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Answered 2xx.
    pub delivered: u64,
    /// Given up: a non-retryable answer, or every attempt failed.
    pub failed: u64,
    /// Pushed out of a full queue.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// A notification ready to send: the body is shared by every URL's queue.
#[derive(Clone)]
struct Delivery {
    event: &'static str,
    body: Bytes,
    signature: Option<String>,
}

/// One URL's queue, shared by [`Notifier::notify`] and the URL's delivery task.
struct UrlQueue {
    url: reqwest::Url,
    /// The URL as logs show it.
    shown: String,
    pending: Mutex<VecDeque<Delivery>>,
    wake: tokio::sync::Notify,
    closed: AtomicBool,
}

struct Inner {
    config: WebhookConfig,
    queues: Vec<Arc<UrlQueue>>,
    counters: Arc<Counters>,
}

impl Drop for Inner {
    /// The delivery tasks send what is queued, then end.
    fn drop(&mut self) {
        for queue in &self.queues {
            queue.closed.store(true, Ordering::SeqCst);
            queue.wake.notify_one();
        }
    }
}

/// Sends run notifications to webhooks in the background. Cheap to clone; the delivery
/// tasks finish their queues and end once the last clone is dropped.
#[derive(Clone)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            None => f.write_str("Notifier(disabled)"),
            Some(inner) => f.debug_tuple("Notifier").field(&inner.config).finish(),
        }
    }
}

impl Notifier {
    /// A notifier that drops everything, at the cost of one branch.
    pub fn disabled() -> Notifier {
        Notifier { inner: None }
    }

    /// Spawns one delivery task per URL on the current tokio runtime (so call it from
    /// within one). Call [`WebhookConfig::validate`] first: a URL it would refuse is skipped
    /// here with a warning. Without usable URLs this is [`Notifier::disabled`].
    pub fn start(config: WebhookConfig) -> Notifier {
        metrics::describe_counter!(
            DELIVERIES_METRIC,
            "Webhook deliveries of run notifications, by outcome (ok, failed, dropped)"
        );
        let limits = WebhookLimits {
            queue_capacity: config.limits.queue_capacity.max(1),
            max_attempts: config.limits.max_attempts.max(1),
            ..config.limits
        };
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_millis(limits.timeout_ms.max(1)))
            .user_agent(concat!("levee/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the signed body somewhere the operator did not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, "webhooks disabled: no HTTP client");
                return Notifier::disabled();
            }
        };
        let counters = Arc::new(Counters::default());
        let mut queues = Vec::new();
        for url in &config.urls {
            let parsed = match parse_url(url) {
                Ok(parsed) => parsed,
                Err(error) => {
                    tracing::warn!(%error, "webhook URL skipped");
                    continue;
                }
            };
            let queue = Arc::new(UrlQueue {
                shown: redact_url(&parsed),
                url: parsed,
                pending: Mutex::new(VecDeque::new()),
                wake: tokio::sync::Notify::new(),
                closed: AtomicBool::new(false),
            });
            tokio::spawn(deliver_queue(
                queue.clone(),
                client.clone(),
                limits,
                counters.clone(),
            ));
            queues.push(queue);
        }
        if queues.is_empty() {
            return Notifier::disabled();
        }
        let config = WebhookConfig { limits, ..config };
        Notifier {
            inner: Some(Arc::new(Inner {
                config,
                queues,
                counters,
            })),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues `n` for every URL, if its kind is wanted. Never blocks, never fails: a full
    /// queue drops its oldest notification (counted as `dropped`).
    pub fn notify(&self, n: Notification) {
        let Some(inner) = &self.inner else {
            return;
        };
        if !inner.config.wants(n.kind) {
            return;
        }
        self.enqueue(kind_name(n.kind), Bytes::from(n.to_json()));
    }

    /// Queues a notification that is not about a run (a maintenance needing a person, say):
    /// `body` is POSTed as JSON with `event` in `X-Levee-Event`, to every URL, whatever the
    /// kinds filter says (it names run kinds only). A `text` summary is the caller's to add.
    pub fn notify_event(&self, event: &'static str, body: &serde_json::Value) {
        if self.inner.is_none() {
            return;
        }
        let body = serde_json::to_vec(body).expect("a JSON value always serialises");
        self.enqueue(event, Bytes::from(body));
    }

    fn enqueue(&self, event: &'static str, body: Bytes) {
        let Some(inner) = &self.inner else {
            return;
        };
        let delivery = Delivery {
            event,
            signature: inner
                .config
                .secret
                .as_deref()
                .map(|secret| signature(secret, &body)),
            body,
        };
        let capacity = inner.config.limits.queue_capacity;
        for queue in &inner.queues {
            let dropped = {
                let mut pending = queue.pending.lock().unwrap_or_else(|e| e.into_inner());
                let dropped = if pending.len() >= capacity {
                    pending.pop_front()
                } else {
                    None
                };
                pending.push_back(delivery.clone());
                dropped
            };
            if let Some(dropped) = dropped {
                inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(DELIVERIES_METRIC, "outcome" => "dropped").increment(1);
                tracing::warn!(
                    url = %queue.shown,
                    event = dropped.event,
                    capacity,
                    "webhook queue full: oldest notification dropped"
                );
            }
            queue.wake.notify_one();
        }
    }

    /// Deliveries since start; all zero when disabled.
    pub fn stats(&self) -> WebhookStats {
        let Some(inner) = &self.inner else {
            return WebhookStats::default();
        };
        let c = &inner.counters;
        WebhookStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

/// One URL's delivery task: sends its queue in order until the notifier is dropped and the
/// queue is empty.
async fn deliver_queue(
    queue: Arc<UrlQueue>,
    client: reqwest::Client,
    limits: WebhookLimits,
    counters: Arc<Counters>,
) {
    loop {
        let next = queue
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        match next {
            Some(delivery) => {
                if deliver(&queue, &client, &limits, &delivery).await {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(DELIVERIES_METRIC, "outcome" => "ok").increment(1);
                } else {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(DELIVERIES_METRIC, "outcome" => "failed").increment(1);
                }
            }
            None if queue.closed.load(Ordering::SeqCst) => return,
            // `notify_one` stores a permit, so a push between the pop and here is not missed.
            None => queue.wake.notified().await,
        }
    }
}

/// POSTs one notification with retries; true once answered 2xx.
async fn deliver(
    queue: &UrlQueue,
    client: &reqwest::Client,
    limits: &WebhookLimits,
    delivery: &Delivery,
) -> bool {
    for attempt in 1..=limits.max_attempts {
        let mut request = client
            .post(queue.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, delivery.event)
            .body(delivery.body.clone());
        if let Some(signature) = &delivery.signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let retry_after_ms = match request.send().await {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) => {
                let status = response.status();
                let retryable =
                    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                if !retryable {
                    tracing::warn!(
                        url = %queue.shown,
                        status = status.as_u16(),
                        event = delivery.event,
                        "webhook refused the notification; not retried"
                    );
                    return false;
                }
                tracing::warn!(
                    url = %queue.shown,
                    status = status.as_u16(),
                    event = delivery.event,
                    attempt,
                    max_attempts = limits.max_attempts,
                    "webhook delivery failed"
                );
                retry_after(&response)
            }
            Err(error) => {
                let retryable = !error.is_builder();
                tracing::warn!(
                    url = %queue.shown,
                    error = %error.without_url(),
                    event = delivery.event,
                    attempt,
                    max_attempts = limits.max_attempts,
                    "webhook delivery failed"
                );
                if !retryable {
                    return false;
                }
                None
            }
        };
        if attempt < limits.max_attempts {
            let wait_ms = limits
                .backoff_ms(attempt)
                .max(retry_after_ms.unwrap_or(0).min(limits.backoff_max_ms));
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
    }
    tracing::warn!(
        url = %queue.shown,
        event = delivery.event,
        attempts = limits.max_attempts,
        "webhook notification given up"
    );
    false
}

/// A `Retry-After` in seconds (the HTTP-date form is ignored), in ms.
fn retry_after(response: &reqwest::Response) -> Option<u64> {
    let seconds: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(seconds.saturating_mul(1_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 4231 test cases 1, 2, 4 and 6 (6: a key longer than the block).
    #[test]
    fn hmac_sha256_matches_rfc4231() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 4] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                unhex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(hex::encode(hmac_sha256(&key, &data)), expected);
        }
    }

    #[test]
    fn signature_has_the_sha256_prefix() {
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn sample() -> Notification {
        Notification {
            kind: NotifyKind::ApprovalNeeded,
            run_id: "r-1".into(),
            runbook: "deploy".into(),
            task: Some("gate".into()),
            message: "waiting for\nan approver".into(),
            at_ms: 1_700_000_000_000,
            url: Some("/api/v1/runs/r-1".into()),
        }
    }

    #[test]
    fn body_has_every_field_and_a_one_line_text() {
        let body: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        assert_eq!(body["kind"], "approval_needed");
        assert_eq!(body["run_id"], "r-1");
        assert_eq!(body["runbook"], "deploy");
        assert_eq!(body["task"], "gate");
        assert_eq!(body["message"], "waiting for\nan approver");
        assert_eq!(body["at_ms"], 1_700_000_000_000i64);
        assert_eq!(body["url"], "/api/v1/runs/r-1");
        assert_eq!(
            body["text"],
            "Levee run r-1 (runbook deploy) needs an approval at task gate: \
             waiting for an approver </api/v1/runs/r-1>"
        );
        let mut bare = sample();
        bare.task = None;
        bare.url = None;
        let body: serde_json::Value = serde_json::from_slice(&bare.to_json()).unwrap();
        assert!(body["task"].is_null() && body["url"].is_null());
    }

    #[test]
    fn text_is_bounded() {
        let mut long = sample();
        long.message = "é".repeat(WEBHOOK_TEXT_MAX_BYTES);
        let text = long.text();
        assert!(text.len() <= WEBHOOK_TEXT_MAX_BYTES, "{}", text.len());
        assert!(text.ends_with('…'));
    }

    #[test]
    fn kind_names_match_serde() {
        for kind in [
            NotifyKind::Stalled,
            NotifyKind::Failed,
            NotifyKind::ApprovalNeeded,
            NotifyKind::Stuck,
            NotifyKind::Finished,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind_name(kind));
        }
    }

    #[test]
    fn validate_names_the_bad_url() {
        let config = |url: &str| WebhookConfig {
            urls: vec!["http://127.0.0.1:9/ok".into(), url.into()],
            ..Default::default()
        };
        assert_eq!(config("http://hooks.local/x?token=1").validate(), Ok(()));
        let https = config("https://hooks.example/x?token=secret")
            .validate()
            .unwrap_err();
        assert_eq!(
            https,
            WebhookConfigError::Https {
                url: "https://hooks.example/x".into()
            }
        );
        assert!(https.to_string().contains("https://hooks.example/x"));
        assert!(!https.to_string().contains("secret"));
        let malformed = config("not a url").validate().unwrap_err();
        assert!(matches!(malformed, WebhookConfigError::Malformed { .. }));
        assert!(malformed.to_string().contains("not a url"), "{malformed}");
        let ftp = config("ftp://files.example/x").validate().unwrap_err();
        assert!(matches!(ftp, WebhookConfigError::UnsupportedScheme { .. }));
        let no_host = config("http://").validate();
        assert!(no_host.is_err(), "{no_host:?}");
    }

    #[test]
    fn validate_checks_secret_and_limits() {
        let mut config = WebhookConfig {
            urls: vec!["http://127.0.0.1:9/".into()],
            secret: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(config.validate(), Err(WebhookConfigError::EmptySecret));
        config.secret = Some("s".into());
        config.limits.max_attempts = 0;
        assert_eq!(
            config.validate(),
            Err(WebhookConfigError::ZeroLimit {
                name: "max_attempts"
            })
        );
    }

    #[test]
    fn debug_hides_the_secret_and_queries() {
        let config = WebhookConfig {
            urls: vec!["http://user:pw@hooks.local/x?token=q".into()],
            secret: Some("hunter2".into()),
            ..Default::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("token") && !shown.contains("pw"));
        assert!(shown.contains("http://hooks.local/x"), "{shown}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let limits = WebhookLimits::default();
        assert_eq!(limits.backoff_ms(1), WEBHOOK_BACKOFF_INITIAL_MS);
        assert_eq!(limits.backoff_ms(2), 2 * WEBHOOK_BACKOFF_INITIAL_MS);
        assert_eq!(limits.backoff_ms(3), 4 * WEBHOOK_BACKOFF_INITIAL_MS);
        assert_eq!(limits.backoff_ms(40), WEBHOOK_BACKOFF_MAX_MS);
        assert_eq!(limits.backoff_ms(u32::MAX), WEBHOOK_BACKOFF_MAX_MS);
    }

    #[test]
    fn disabled_drops_everything() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.notify(sample());
        assert_eq!(notifier.stats(), WebhookStats::default());
    }

    #[tokio::test]
    async fn start_without_usable_urls_is_disabled() {
        assert!(!Notifier::start(WebhookConfig::default()).is_enabled());
        let bad = WebhookConfig {
            urls: vec!["https://hooks.example/".into()],
            ..Default::default()
        };
        assert!(!Notifier::start(bad).is_enabled());
    }
}
