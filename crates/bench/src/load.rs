//! The load generator: N concurrent HTTP/1.1 clients, each a task with its own connection, that
//! send requests back to back for a fixed time and record what they get.
//!
//! Each client sends its next request as soon as the previous answer has been read (a closed loop,
//! like `wrk`), so the request rate is what the server sustains at that concurrency. Clients keep
//! their connection open between requests unless [`ConnectionMode::Close`] is asked for; then each
//! request goes on a new connection with `Connection: close`, which is what StateService's
//! development server forces on its clients, and its latency includes opening the connection.
//!
//! A run has a warm-up, whose answers are counted in the totals but not measured, followed by the
//! measured window. An answer belongs to the window in which it was completed. The clients are
//! spread over a few threads (one per core by default), each with its own single-threaded runtime,
//! as `wrk` spreads its connections over event-loop threads. Every client stops
//! by itself at the end of the window or after [`LoadConfig::requests_per_connection_max`]
//! requests, whichever comes first, and gives every request at most
//! [`LoadConfig::request_timeout`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::procfs;
use crate::target::{Target, UrlTemplate};

/// The longest latency the histogram can hold, in microseconds; longer ones are recorded as this.
const LATENCY_US_MAX: u64 = 60_000_000;

/// Significant decimal digits the latency histogram keeps.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// How long a client waits after a failed request before the next one, in milliseconds, so that a
/// refused connection does not turn into a busy loop.
const ERROR_BACKOFF_MS: u64 = 10;

/// The most requests one client sends in one run unless told otherwise: far more than any server
/// answers on one connection in a benchmark's duration, so only a broken clock would reach it.
pub const REQUESTS_PER_CONNECTION_MAX_DEFAULT: u64 = 100_000_000;

/// How long a request may take before it is abandoned and counted as an error, in seconds.
pub const REQUEST_TIMEOUT_S_DEFAULT: u64 = 10;

/// The most concurrent clients one run may have.
pub const CONCURRENCY_MAX: usize = 10_000;

/// One client thread per core, like `wrk -t` set to the number of cores.
pub fn client_threads_default() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Whether a client reuses its connection or opens one per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionMode {
    /// One connection per client, reused for every request (HTTP/1.1's default).
    KeepAlive,
    /// A new connection per request, each sent with `Connection: close`.
    Close,
}

impl fmt::Display for ConnectionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectionMode::KeepAlive => "keep-alive",
            ConnectionMode::Close => "close",
        })
    }
}

/// What to send, how hard and for how long.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub url: UrlTemplate,
    pub method: Method,
    pub concurrency: usize,
    pub connection_mode: ConnectionMode,
    /// Load sent before the measured window, to fill caches and connection pools.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Statuses that count as answers. A state check's 200 (yes) and 406 (no) are both answers;
    /// any other status is counted, but as unexpected.
    pub expected_statuses: Vec<u16>,
    pub requests_per_connection_max: u64,
    pub request_timeout: Duration,
    /// A server process whose CPU time to measure over the window, if it runs on this machine.
    pub server_pid: Option<u32>,
    /// Threads the clients are spread over, each with its own single-threaded runtime.
    pub client_threads: usize,
}

impl LoadConfig {
    /// A configuration with the defaults for everything but what to send and how hard.
    pub fn new(url: UrlTemplate, method: Method, concurrency: usize, duration: Duration) -> Self {
        Self {
            url,
            method,
            concurrency,
            connection_mode: ConnectionMode::KeepAlive,
            warmup: Duration::ZERO,
            duration,
            expected_statuses: vec![200],
            requests_per_connection_max: REQUESTS_PER_CONNECTION_MAX_DEFAULT,
            request_timeout: Duration::from_secs(REQUEST_TIMEOUT_S_DEFAULT),
            server_pid: None,
            client_threads: client_threads_default(),
        }
    }
}

/// What one run measured. Figures without `_total` cover the measured window only.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub url: String,
    pub method: String,
    pub concurrency: usize,
    pub connection: ConnectionMode,
    pub duration_s: f64,
    /// Answers with an expected status completed in the window.
    pub answers: u64,
    /// Answers per second of the window.
    pub requests_per_s: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_max: u64,
    /// Answers with a status outside the expected set.
    pub unexpected: u64,
    /// Requests that failed without an answer: refused connections, broken connections, timeouts.
    pub errors: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Answers by status code over the whole run, warm-up included.
    pub statuses_total: BTreeMap<u16, u64>,
    /// Requests over the whole run that may have reached the server but whose answer was not
    /// read, so whether the server acted on them is unknown.
    pub outcome_unknown_total: u64,
    /// Clients that sent [`LoadConfig::requests_per_connection_max`] requests before the
    /// window ended and then sat idle, so that the rate understates what the server sustains.
    pub clients_out_of_budget: u64,
    /// The first error a client met, to tell what went wrong.
    pub first_error: Option<String>,
    /// CPU time this process spent per answer or unexpected answer in the window, in microseconds.
    pub client_cpu_us_per_response: Option<f64>,
    /// CPU time the server process spent per answer or unexpected answer, in microseconds.
    pub server_cpu_us_per_response: Option<f64>,
}

impl LoadResult {
    /// Answers with status `status` over the whole run, warm-up included.
    pub fn total_with_status(&self, status: u16) -> u64 {
        self.statuses_total.get(&status).copied().unwrap_or(0)
    }

    /// Whether every request in the window got an expected answer.
    pub fn is_clean(&self) -> bool {
        self.errors == 0 && self.unexpected == 0 && self.answers > 0
    }
}

/// Runs the load described by `config` and returns what it measured.
pub async fn run(config: &LoadConfig) -> Result<LoadResult> {
    ensure!(
        (1..=CONCURRENCY_MAX).contains(&config.concurrency),
        "the concurrency must be between 1 and {CONCURRENCY_MAX}"
    );
    ensure!(!config.duration.is_zero(), "the duration must be positive");
    ensure!(
        !config.expected_statuses.is_empty(),
        "at least one status must count as an answer"
    );
    let targets = (0..config.concurrency)
        .map(|index| config.url.for_connection(index))
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let window = Window {
        measure_start: start + config.warmup,
        end: start + config.warmup + config.duration,
    };
    let shared = Arc::new(ClientConfig {
        method: config.method.clone(),
        connection_mode: config.connection_mode,
        expected_statuses: config.expected_statuses.clone(),
        requests_max: config.requests_per_connection_max,
        request_timeout: config.request_timeout,
        window,
    });
    let client_threads = config.client_threads.clamp(1, config.concurrency);
    let mut targets_by_thread: Vec<Vec<Target>> = vec![Vec::new(); client_threads];
    for (index, target) in targets.into_iter().enumerate() {
        targets_by_thread[index % client_threads].push(target);
    }
    let mut threads = Vec::with_capacity(client_threads);
    for (thread_index, targets) in targets_by_thread.into_iter().enumerate() {
        let (stats_tx, stats_rx) = oneshot::channel();
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("load-client-{thread_index}"))
            .spawn(move || {
                // Ignored: the receiver is gone only if the run was abandoned.
                let _ = stats_tx.send(run_client_thread(targets, shared));
            })
            .context("could not start a load client thread")?;
        threads.push(stats_rx);
    }

    tokio::time::sleep_until(window.measure_start).await;
    let cpu_start = CpuSample::take(config.server_pid)?;
    tokio::time::sleep_until(window.end).await;
    let cpu_end = CpuSample::take(config.server_pid)?;

    let mut stats = ClientStats::new();
    for thread in threads {
        let thread_stats = thread.await.context("a load client thread panicked")??;
        stats.merge(thread_stats)?;
    }
    Ok(stats.into_result(config, &cpu_start, &cpu_end))
}

/// Runs some of the clients on a runtime of this thread's own, and merges their counts.
///
/// Each thread has a single-threaded runtime, like `wrk`'s threads each have an event loop: a
/// client's connection and its requests then never wake a task on another thread, which keeps the
/// generator's CPU time per request, taken from the cores it shares with the server, low.
fn run_client_thread(targets: Vec<Target>, config: Arc<ClientConfig>) -> Result<ClientStats> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start a load client runtime")?;
    runtime.block_on(async move {
        let clients: Vec<_> = targets
            .into_iter()
            .map(|target| tokio::spawn(run_client(target, Arc::clone(&config))))
            .collect();
        let mut stats = ClientStats::new();
        for client in clients {
            stats.merge(client.await.context("a load client panicked")?)?;
        }
        Ok(stats)
    })
}

#[derive(Debug, Clone, Copy)]
struct Window {
    measure_start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, instant: Instant) -> bool {
        instant >= self.measure_start && instant < self.end
    }
}

/// What every client of a run shares.
struct ClientConfig {
    method: Method,
    connection_mode: ConnectionMode,
    expected_statuses: Vec<u16>,
    requests_max: u64,
    request_timeout: Duration,
    window: Window,
}

impl ClientConfig {
    fn build_request(&self, target: &Target) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(target.path_and_query.clone())
            .header(HOST, target.host_header.clone());
        if self.connection_mode == ConnectionMode::Close {
            builder = builder.header(CONNECTION, "close");
        }
        if self.method == Method::PUT || self.method == Method::POST {
            builder = builder.header(CONTENT_LENGTH, "0");
        }
        builder
            .body(Full::new(Bytes::new()))
            .expect("the method, path and Host header were checked when the URL was parsed")
    }
}

/// Why a request got no answer.
enum RequestError {
    /// No connection was opened, so the request never left.
    Connect(anyhow::Error),
    /// The request may have reached the server.
    Exchange(anyhow::Error),
}

/// One client: sends requests back to back until the window ends or its request budget is spent.
async fn run_client(target: Target, config: Arc<ClientConfig>) -> ClientStats {
    let mut stats = ClientStats::new();
    let mut kept_alive: Option<SendRequest<Full<Bytes>>> = None;
    let mut requests_sent: u64 = 0;
    while requests_sent < config.requests_max && Instant::now() < config.window.end {
        requests_sent += 1;
        let started = Instant::now();
        let exchange = async {
            match config.connection_mode {
                ConnectionMode::KeepAlive => {
                    exchange_keep_alive(&target, &config, &mut kept_alive).await
                }
                ConnectionMode::Close => exchange_close(&target, &config).await,
            }
        };
        let outcome = tokio::time::timeout(config.request_timeout, exchange).await;
        let finished = Instant::now();
        let in_window = config.window.contains(finished);
        match outcome {
            Ok(Ok(status)) => {
                let latency_us =
                    u64::try_from((finished - started).as_micros()).unwrap_or(u64::MAX);
                stats.record_answer(status, latency_us, in_window, &config.expected_statuses);
            }
            Ok(Err(error)) => {
                kept_alive = None;
                stats.record_error(error, in_window);
                back_off(config.window.end).await;
            }
            Err(_elapsed) => {
                kept_alive = None;
                let error = anyhow::anyhow!("no answer within {:?}", config.request_timeout);
                stats.record_error(RequestError::Exchange(error), in_window);
            }
        }
    }
    if requests_sent >= config.requests_max && Instant::now() < config.window.end {
        stats.clients_out_of_budget += 1;
    }
    stats
}

async fn back_off(end: Instant) {
    let resume = Instant::now() + Duration::from_millis(ERROR_BACKOFF_MS);
    tokio::time::sleep_until(resume.min(end)).await;
}

async fn connect(target: &Target) -> Result<TcpStream, RequestError> {
    let stream = TcpStream::connect(target.addr)
        .await
        .with_context(|| format!("could not connect to {}", target.addr))
        .map_err(RequestError::Connect)?;
    stream
        .set_nodelay(true)
        .context("could not set TCP_NODELAY")
        .map_err(RequestError::Connect)?;
    Ok(stream)
}

/// Sends one request on the client's connection, opening it first if there is none or the server
/// closed it.
async fn exchange_keep_alive(
    target: &Target,
    config: &ClientConfig,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
) -> Result<StatusCode, RequestError> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = connect(target).await?;
        let (new_sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .context("the HTTP handshake failed")
            .map_err(RequestError::Connect)?;
        // The connection ends when the sender is dropped or the server closes it.
        tokio::spawn(connection);
        *sender = Some(new_sender);
    }
    let active = sender.as_mut().expect("a connection was opened above");
    let exchange = async {
        active.ready().await?;
        let response = active.send_request(config.build_request(target)).await?;
        let status = response.status();
        let server_closes = response
            .headers()
            .get(CONNECTION)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>((status, server_closes))
    };
    let (status, server_closes) = exchange
        .await
        .context("the request failed")
        .map_err(RequestError::Exchange)?;
    if server_closes {
        *sender = None;
    }
    Ok(status)
}

/// Opens a connection, sends one request with `Connection: close` on it and reads the answer.
async fn exchange_close(
    target: &Target,
    config: &ClientConfig,
) -> Result<StatusCode, RequestError> {
    let stream = connect(target).await?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .context("the HTTP handshake failed")
        .map_err(RequestError::Connect)?;
    let request = config.build_request(target);
    let exchange = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(status)
    };
    // Driving the connection in this task saves spawning one per request; it ends once the answer
    // is read, because the request asked for the connection to be closed.
    let (_, status) = tokio::join!(connection, exchange);
    status
        .context("the request failed")
        .map_err(RequestError::Exchange)
}

/// One client's counts, merged into the run's at the end.
struct ClientStats {
    latency_us: Histogram<u64>,
    answers: u64,
    unexpected: u64,
    errors: u64,
    statuses: BTreeMap<u16, u64>,
    statuses_total: BTreeMap<u16, u64>,
    outcome_unknown_total: u64,
    clients_out_of_budget: u64,
    first_error: Option<String>,
}

impl ClientStats {
    fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
                .expect("the histogram's bounds are valid constants"),
            answers: 0,
            unexpected: 0,
            errors: 0,
            statuses: BTreeMap::new(),
            statuses_total: BTreeMap::new(),
            outcome_unknown_total: 0,
            clients_out_of_budget: 0,
            first_error: None,
        }
    }

    fn record_answer(
        &mut self,
        status: StatusCode,
        latency_us: u64,
        in_window: bool,
        expected: &[u16],
    ) {
        let code = status.as_u16();
        *self.statuses_total.entry(code).or_default() += 1;
        if !in_window {
            return;
        }
        *self.statuses.entry(code).or_default() += 1;
        if expected.contains(&code) {
            self.answers += 1;
            self.latency_us.saturating_record(latency_us.max(1));
        } else {
            self.unexpected += 1;
        }
    }

    fn record_error(&mut self, error: RequestError, in_window: bool) {
        let error = match error {
            RequestError::Connect(error) => error,
            RequestError::Exchange(error) => {
                self.outcome_unknown_total += 1;
                error
            }
        };
        if in_window {
            self.errors += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(format!("{error:#}"));
        }
    }

    fn merge(&mut self, other: ClientStats) -> Result<()> {
        self.latency_us
            .add(&other.latency_us)
            .context("latency histograms with the same bounds always merge")?;
        self.answers += other.answers;
        self.unexpected += other.unexpected;
        self.errors += other.errors;
        for (code, count) in other.statuses {
            *self.statuses.entry(code).or_default() += count;
        }
        for (code, count) in other.statuses_total {
            *self.statuses_total.entry(code).or_default() += count;
        }
        self.outcome_unknown_total += other.outcome_unknown_total;
        self.clients_out_of_budget += other.clients_out_of_budget;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }

    fn into_result(
        self,
        config: &LoadConfig,
        cpu_start: &CpuSample,
        cpu_end: &CpuSample,
    ) -> LoadResult {
        let duration_s = config.duration.as_secs_f64();
        let class = |hundreds: u16| -> u64 {
            self.statuses
                .range(hundreds * 100..(hundreds + 1) * 100)
                .map(|(_, count)| count)
                .sum()
        };
        let responses = self.answers + self.unexpected;
        let per_response = |start: Option<u64>, end: Option<u64>| -> Option<f64> {
            let spent_us = end?.checked_sub(start?)?;
            (responses > 0).then(|| spent_us as f64 / responses as f64)
        };
        LoadResult {
            url: config.url.as_str().to_owned(),
            method: config.method.to_string(),
            concurrency: config.concurrency,
            connection: config.connection_mode,
            duration_s,
            answers: self.answers,
            requests_per_s: self.answers as f64 / duration_s,
            latency_us_p50: self.latency_us.value_at_quantile(0.50),
            latency_us_p99: self.latency_us.value_at_quantile(0.99),
            latency_us_max: self.latency_us.max(),
            unexpected: self.unexpected,
            errors: self.errors,
            status_2xx: class(2),
            status_4xx: class(4),
            status_5xx: class(5),
            statuses: self.statuses,
            statuses_total: self.statuses_total,
            outcome_unknown_total: self.outcome_unknown_total,
            clients_out_of_budget: self.clients_out_of_budget,
            first_error: self.first_error,
            client_cpu_us_per_response: per_response(
                Some(cpu_start.client_us),
                Some(cpu_end.client_us),
            ),
            server_cpu_us_per_response: per_response(cpu_start.server_us, cpu_end.server_us),
        }
    }
}

/// CPU time used so far by this process and by the server, in microseconds.
struct CpuSample {
    client_us: u64,
    server_us: Option<u64>,
}

impl CpuSample {
    fn take(server_pid: Option<u32>) -> Result<Self> {
        Ok(Self {
            client_us: procfs::own_cpu_time_us()?,
            // The server may have exited; its CPU time is then simply not reported.
            server_us: server_pid.and_then(|pid| procfs::cpu_time_us(pid).ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Response, server};
    use tokio::net::TcpListener;

    use super::*;
    use crate::bare;

    /// Starts a server that answers `/machines/mN` with 200 for even N and 406 for odd N, and
    /// records every path it is asked for. It runs until the test's runtime ends.
    async fn start_parity_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_server = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let seen = Arc::clone(&seen_by_server);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let path = request.uri().path().to_owned();
                        seen.lock().unwrap().push(path.clone());
                        let number: u32 =
                            path.trim_start_matches("/machines/m").parse().unwrap_or(1);
                        let status = if number.is_multiple_of(2) { 200 } else { 406 };
                        let response = Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    async fn start_bare_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(bare::serve(listener, std::future::pending()));
        addr
    }

    fn short_run(url: &str, concurrency: usize) -> LoadConfig {
        LoadConfig {
            warmup: Duration::from_millis(50),
            ..LoadConfig::new(
                UrlTemplate::parse(url).unwrap(),
                Method::GET,
                concurrency,
                Duration::from_millis(300),
            )
        }
    }

    #[tokio::test]
    async fn measures_a_server_with_and_without_keep_alive() {
        let addr = start_bare_server().await;
        for mode in [ConnectionMode::KeepAlive, ConnectionMode::Close] {
            let config = LoadConfig {
                connection_mode: mode,
                server_pid: Some(std::process::id()),
                ..short_run(&format!("http://{addr}/state?state=green_state"), 4)
            };
            let result = run(&config).await.unwrap();
            assert!(result.is_clean(), "{result:?}");
            assert_eq!(result.status_2xx, result.answers);
            assert_eq!(result.statuses.get(&200), Some(&result.answers));
            assert!(
                result.total_with_status(200) > result.answers,
                "the warm-up's answers count in the totals"
            );
            assert!(result.latency_us_p50 <= result.latency_us_p99);
            assert!(result.latency_us_p99 <= result.latency_us_max);
            assert!((result.requests_per_s - result.answers as f64 / 0.3).abs() < 1e-6);
            assert!(result.client_cpu_us_per_response.is_some());
            assert!(result.server_cpu_us_per_response.is_some());
        }
    }

    #[tokio::test]
    async fn gives_each_connection_its_own_path_and_counts_statuses_by_the_expected_set() {
        let (addr, seen) = start_parity_server().await;
        let url = format!("http://{addr}/machines/m{{i}}");
        let config = LoadConfig {
            expected_statuses: vec![200, 406],
            ..short_run(&url, 4)
        };
        let result = run(&config).await.unwrap();
        assert!(result.is_clean(), "{result:?}");
        assert_eq!(result.answers, result.status_2xx + result.status_4xx);
        assert!(result.status_2xx > 0 && result.status_4xx > 0);
        let mut paths = seen.lock().unwrap().clone();
        paths.sort();
        paths.dedup();
        assert_eq!(
            paths,
            [
                "/machines/m0",
                "/machines/m1",
                "/machines/m2",
                "/machines/m3"
            ]
        );

        let only_yes = run(&short_run(&url, 2)).await.unwrap();
        assert_eq!(only_yes.answers, only_yes.status_2xx);
        assert_eq!(only_yes.unexpected, only_yes.status_4xx);
        assert!(only_yes.unexpected > 0);
        assert!(!only_yes.is_clean());
    }

    #[tokio::test]
    async fn stops_after_the_request_budget() {
        let addr = start_bare_server().await;
        for mode in [ConnectionMode::KeepAlive, ConnectionMode::Close] {
            let config = LoadConfig {
                connection_mode: mode,
                requests_per_connection_max: 5,
                warmup: Duration::ZERO,
                ..short_run(&format!("http://{addr}/"), 3)
            };
            let result = run(&config).await.unwrap();
            assert_eq!(result.total_with_status(200), 15);
            assert_eq!(result.clients_out_of_budget, 3);
        }
    }

    #[tokio::test]
    async fn counts_refused_connections_as_errors_and_still_stops() {
        let closed_port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        for mode in [ConnectionMode::KeepAlive, ConnectionMode::Close] {
            let config = LoadConfig {
                connection_mode: mode,
                ..short_run(&format!("http://{closed_port}/"), 2)
            };
            let started = std::time::Instant::now();
            let result = run(&config).await.unwrap();
            assert!(started.elapsed() < Duration::from_secs(5));
            assert_eq!(result.answers, 0);
            assert!(result.errors > 0);
            assert_eq!(
                result.outcome_unknown_total, 0,
                "a refused request never left"
            );
            assert!(
                result
                    .first_error
                    .as_deref()
                    .unwrap()
                    .contains("could not connect")
            );
        }
    }

    #[tokio::test]
    async fn refuses_impossible_configurations() {
        let url = "http://127.0.0.1:9/";
        assert!(run(&short_run(url, 0)).await.is_err());
        assert!(run(&short_run(url, CONCURRENCY_MAX + 1)).await.is_err());
        let no_expected = LoadConfig {
            expected_statuses: Vec::new(),
            ..short_run(url, 1)
        };
        assert!(run(&no_expected).await.is_err());
    }
}
