//! Shared helpers for the black-box HTTP tests: a real Levee server on `127.0.0.1:0`, backed by
//! a fresh SQLite file in a temporary folder, reached only through HTTP.
//!
//! Every test binary under `tests/` includes this module with `mod common;`. Not every binary
//! uses every helper, hence the `dead_code` allowance below.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use levee_server::clock::ManualClock;
use levee_server::{App, AppOptions};
use levee_store::SqliteStore;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The instant every test clock starts at, in epoch milliseconds (2030-03-17T17:46:40Z): a fixed
/// start makes every history and timer reproducible.
pub const START_MS: i64 = 1_900_000_000_000;

/// How long one HTTP request of a test may take before the test fails, in milliseconds.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// How long a test waits for something that happens in the background (the timer worker, say)
/// before it fails, in milliseconds.
pub const WAIT_TIMEOUT_MS: u64 = 10_000;

/// The pause between two looks at something a test waits for, in milliseconds.
pub const WAIT_POLL_INTERVAL_MS: u64 = 25;

/// The machine file of StateService's README: `green_state` → `red_state` → `blue_state`, each
/// counting state moving on at its first accepted PUT; `blue_state` has no `func` and is final.
pub const README_MACHINE_YAML: &str = "\
current_state: green_state
states:
  - name: green_state
    func: increment
    current: { key: count, value: 0 }
    target:
      name: red_state
      when: { key: count, value: 1 }
  - name: red_state
    func: increment
    current: { key: count, value: 0 }
    target:
      name: blue_state
      when: { key: count, value: 1 }
  - name: blue_state
";

/// The file name the README machine is served under; its machine id is the file's stem.
pub const README_MACHINE_FILE: &str = "states.yaml";

/// The machine id `serve_machine_file("states.yaml", ...)` gives.
pub const README_MACHINE_ID: &str = "states";

/// A native definition whose instances count every report of `counting` and stay there far
/// longer than any test reports.
pub const COUNTER_DEFINITION_YAML: &str = "\
kind: StateMachine
name: counter
description: Counts reports of `counting`; it would take a hundred thousand to finish.
states:
  - name: counting
    on: { done: { to: finished, count: 100000 } }
  - name: finished
    final: true
";

/// How to start a [`TestServer`].
#[derive(Default)]
pub struct Options {
    /// The clock's start, epoch milliseconds; [`START_MS`] when `None`.
    pub clock_ms: Option<i64>,
    /// A machine file served at `/state`: its name and its text.
    pub machine_file: Option<(String, String)>,
    /// The folder (and so the database) of an earlier server, to restart on it.
    pub dir: Option<Arc<TempDir>>,
    /// Run on the system clock instead of the manual one (runs measure real durations).
    pub real_clock: bool,
    /// Where metric checks get their numbers.
    pub metric_source: Option<Arc<dyn levee_stages::MetricSource>>,
    /// Where notifications go (none by default).
    pub webhooks: levee_server::webhooks::WebhookConfig,
    /// The maintenance removal rate limits (the server's defaults when `None`).
    pub removal_limits: Option<levee_server::maint::RemovalLimits>,
}

/// A Levee server running in this process on `127.0.0.1:0`, with its own SQLite file.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base: String,
    pub addr: SocketAddr,
    pub app: Arc<App>,
    pub clock: Arc<ManualClock>,
    /// Holds the database; shared so a restarted server keeps it alive.
    pub dir: Arc<TempDir>,
    pub db_path: PathBuf,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A client that never goes through a proxy (only loopback traffic) and gives up after
/// [`REQUEST_TIMEOUT_MS`].
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .build()
        .expect("build an HTTP client")
}

/// Starts a server with a fresh database and no machine file.
pub async fn start() -> TestServer {
    start_with(Options::default()).await
}

/// Starts a server serving StateService's README machine at `/state`.
pub async fn start_readme() -> TestServer {
    start_with(Options {
        machine_file: Some((
            README_MACHINE_FILE.to_string(),
            README_MACHINE_YAML.to_string(),
        )),
        ..Options::default()
    })
    .await
}

/// Starts a server as `options` say.
pub async fn start_with(options: Options) -> TestServer {
    let dir = match options.dir {
        Some(dir) => dir,
        None => Arc::new(TempDir::new().expect("create a temporary folder")),
    };
    let db_path = dir.path().join("levee.db");
    let store = SqliteStore::open(&db_path)
        .await
        .expect("open the SQLite store");
    let clock = Arc::new(ManualClock::new(options.clock_ms.unwrap_or(START_MS)));
    let app_clock: Arc<dyn levee_server::Clock> = if options.real_clock {
        Arc::new(levee_server::SystemClock)
    } else {
        clock.clone()
    };
    // A stopped test server interrupts its task attempts at once, as a killed process would:
    // the restart tests are about what the next process makes of them.
    let app_options = AppOptions {
        shutdown_steps_grace_ms: Some(0),
        metric_source: options.metric_source.clone(),
        webhooks: options.webhooks.clone(),
        removal_limits: options.removal_limits.clone(),
        ..AppOptions::default()
    };
    let app = App::open(Arc::new(store), app_clock, app_options)
        .await
        .expect("open the app");
    if let Some((name, content)) = &options.machine_file {
        app.serve_machine_file(name, content)
            .await
            .expect("serve the machine file");
    }
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(levee_server::serve(listener, app.clone(), async move {
        let _ = stopped.await;
    }));
    TestServer {
        base: format!("http://{addr}"),
        addr,
        app,
        clock,
        dir,
        db_path,
        client: client(),
        stop: Some(stop),
        task: Some(task),
    }
}

/// A status and a body read as text.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    /// The body as JSON; fails the test with the body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer {} is not JSON ({e}): {:?}", self.status, self.body))
    }

    /// The error code of a JSON error body (`{"error": {"code": ...}}`).
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl TestServer {
    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = self.client.request(method.clone(), self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.expect("read the body");
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None, None).await
    }

    pub async fn put(&self, path: &str) -> Answer {
        self.send(Method::PUT, path, None, None).await
    }

    /// Applies one definition file through `POST /api/v1/definitions` and returns the answer.
    pub async fn apply_as(&self, token: Option<&str>, name: &str, content: &str) -> Answer {
        let body = json!({ "files": [{ "name": name, "content": content }] });
        self.send(Method::POST, "/api/v1/definitions", token, Some(&body))
            .await
    }

    /// Applies one definition file and fails the test unless it is accepted.
    pub async fn apply(&self, name: &str, content: &str) -> Value {
        let answer = self.apply_as(None, name, content).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "apply {name}: {}",
            answer.body
        );
        answer.json()
    }

    /// Creates machines (id, definition, group) and fails the test unless all are created.
    pub async fn create_machines(&self, machines: &[(&str, &str, Option<&str>)]) -> Value {
        let machines: Vec<Value> = machines
            .iter()
            .map(|(id, definition, group)| json!({ "id": id, "definition": definition, "group": group }))
            .collect();
        let answer = self
            .send(
                Method::POST,
                "/api/v1/machines",
                None,
                Some(&json!({ "machines": machines })),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "create machines: {}",
            answer.body
        );
        answer.json()
    }

    /// The machine as `GET /api/v1/machines/{id}` shows it.
    pub async fn machine(&self, id: &str) -> Value {
        self.machine_as(None, id).await
    }

    /// The machine as `GET /api/v1/machines/{id}` shows it to the holder of `token`.
    pub async fn machine_as(&self, token: Option<&str>, id: &str) -> Value {
        let answer = self
            .send(Method::GET, &format!("/api/v1/machines/{id}"), token, None)
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "machine {id}: {}",
            answer.body
        );
        answer.json()
    }

    /// The stored state of a machine (what the store holds, not counting timers due since).
    pub async fn stored_state(&self, id: &str) -> String {
        self.machine(id).await["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The machine's whole history (up to 1,000 entries), oldest first.
    pub async fn history(&self, id: &str) -> Vec<Value> {
        let answer = self
            .get(&format!("/api/v1/machines/{id}/history?limit=1000"))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "history of {id}: {}",
            answer.body
        );
        answer.json().as_array().cloned().unwrap_or_default()
    }

    /// Waits until the stored state of machine `id` is `state`; fails the test after
    /// [`WAIT_TIMEOUT_MS`].
    pub async fn wait_for_stored_state(&self, id: &str, state: &str) {
        let polls = WAIT_TIMEOUT_MS / WAIT_POLL_INTERVAL_MS;
        let mut last = String::new();
        for _ in 0..polls {
            last = self.stored_state(id).await;
            if last == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(WAIT_POLL_INTERVAL_MS)).await;
        }
        panic!(
            "machine {id} was still stored in `{last}` after {WAIT_TIMEOUT_MS} ms, not `{state}`"
        );
    }

    /// Stops serving, waits for the server to finish, and closes the store, so another server
    /// can open the same database. Returns the folder that holds it.
    pub async fn stop(mut self) -> Arc<TempDir> {
        self.shut_down().await;
        self.dir.clone()
    }

    /// Stops this server and starts another on the same database, with its clock at
    /// `clock_ms` and the given machine file, as a restarted process would.
    pub async fn restart(self, clock_ms: i64, machine_file: Option<(&str, &str)>) -> TestServer {
        let dir = self.stop().await;
        start_with(Options {
            clock_ms: Some(clock_ms),
            machine_file: machine_file.map(|(n, c)| (n.to_string(), c.to_string())),
            dir: Some(dir),
            ..Options::default()
        })
        .await
    }

    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("the server task panicked")
                .expect("the server failed");
        }
        self.app.store.close().await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Sends `request` as raw bytes on a new connection and reads the whole answer, which the
/// request must end (with `Connection: close`). Fails the test after [`REQUEST_TIMEOUT_MS`].
pub async fn raw_request(addr: SocketAddr, request: &str) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .expect("read the answer");
        String::from_utf8_lossy(&answer).into_owned()
    };
    tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), exchange)
        .await
        .unwrap_or_else(|_| {
            panic!("no complete answer to {request:?} within {REQUEST_TIMEOUT_MS} ms")
        })
}

/// The status code of a raw HTTP/1.1 answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// The body of a raw HTTP/1.1 answer (everything after the blank line).
pub fn raw_body(answer: &str) -> &str {
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The epoch milliseconds of a local date and time written as StateService writes its `clock`
/// values (`2030-01-01T12:00:00`, no offset: the server's local time zone).
pub fn local_time_ms(text: &str) -> i64 {
    let civil: jiff::civil::DateTime = text.parse().expect("a civil date and time");
    civil
        .to_zoned(jiff::tz::TimeZone::system())
        .expect("a time in the local zone")
        .timestamp()
        .as_millisecond()
}

/// Reads a file's bytes; fails the test if it cannot.
pub fn read_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
