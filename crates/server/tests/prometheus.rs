//! Health gates on a real Prometheus (Debian's `prometheus` package, 2.42): it scrapes a small
//! HTTP target whose error ratio the test controls, Levee asks it real PromQL, and a paced
//! ramp stalls when the errors rise and finishes after they fall and an operator retries.
//!
//! Without a `prometheus` binary the tests fail when `CI` is set (`.ci/run` installs it) and
//! say why they are skipped otherwise.

mod common;

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use levee_stages::{MetricError, MetricSource, PrometheusSource};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How often the test Prometheus scrapes the target, in milliseconds.
const SCRAPE_INTERVAL_MS: u64 = 200;
/// Longest the test waits for Prometheus to start or to see a new value.
const PROMETHEUS_WAIT_MS: u64 = 30_000;
/// Longest the test waits for a run to reach a state.
const RUN_WAIT_MS: u64 = 60_000;

fn prometheus_available(test: &str) -> bool {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
            panic!(
                "{test}: `prometheus` is not installed and CI must run this test; .ci/run installs it"
            );
        }
        eprintln!("SKIPPED {test}: `prometheus` is not installed (apt-get install prometheus)");
    }
    found
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A scrape target: `levee_test_error_ratio` for two services, the first under the test's
/// control (as f64 bits).
async fn start_target(ratio: Arc<AtomicU64>) -> u16 {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let ratio = f64::from_bits(ratio.load(Ordering::SeqCst));
            async move {
                format!(
                    "# TYPE levee_test_error_ratio gauge\n\
                     levee_test_error_ratio{{service=\"web\"}} {ratio}\n\
                     levee_test_error_ratio{{service=\"api\"}} 0.001\n"
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_prometheus(target_port: u16) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL_MS}ms\n  scrape_timeout: {SCRAPE_INTERVAL_MS}ms\n\
             scrape_configs:\n  - job_name: target\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_millis(PROMETHEUS_WAIT_MS);
    loop {
        let ready = client
            .get(format!("{}/-/ready", prometheus.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return prometheus;
        }
        assert!(Instant::now() < deadline, "prometheus never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `query` answers as `wanted` says.
async fn wait_for_value(source: &PrometheusSource, query: &str, wanted: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_millis(PROMETHEUS_WAIT_MS);
    loop {
        if let Ok(value) = source.query(query).await
            && wanted(value)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{query}` never reached the wanted value"
        );
        tokio::time::sleep(Duration::from_millis(SCRAPE_INTERVAL_MS)).await;
    }
}

#[tokio::test]
async fn queries_read_one_value_and_refuse_everything_else() {
    if !prometheus_available("queries_read_one_value_and_refuse_everything_else") {
        return;
    }
    let ratio = Arc::new(AtomicU64::new(0.02_f64.to_bits()));
    let target = start_target(ratio.clone()).await;
    let prometheus = start_prometheus(target).await;
    let source = PrometheusSource::new(&prometheus.url).unwrap();
    let web = "levee_test_error_ratio{service=\"web\"}";
    wait_for_value(&source, web, |v| (v - 0.02).abs() < 1e-9).await;
    assert_eq!(source.query("scalar(vector(3))").await, Ok(3.0));
    // Two series where one value is needed.
    assert!(matches!(
        source.query("levee_test_error_ratio").await,
        Err(MetricError::Ambiguous { series: 2, .. })
    ));
    assert_eq!(source.query("max(levee_test_error_ratio)").await, Ok(0.02));
    assert!(matches!(
        source.query("levee_test_no_such_metric").await,
        Err(MetricError::NoData { .. })
    ));
    let bad = source.query("max(").await.unwrap_err().to_string();
    assert!(bad.contains("bad_data"), "{bad}");
    assert!(matches!(
        source.query("0/0").await,
        Err(MetricError::NotANumber { .. })
    ));
    drop(prometheus);
    assert!(matches!(
        source.query(web).await,
        Err(MetricError::Unreachable { .. })
    ));
}

async fn run_of(server: &common::TestServer, id: &str) -> Value {
    let answer = server.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()
}

fn shift(run: &Value) -> &Value {
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "shift")
        .unwrap()
}

async fn wait_run(
    server: &common::TestServer,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_millis(RUN_WAIT_MS);
    loop {
        let run = run_of(server, id).await;
        if done(&run) {
            return run;
        }
        assert!(Instant::now() < deadline, "never got to {what}: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_health_gate_on_real_promql_stalls_a_ramp_when_errors_rise() {
    if !prometheus_available("a_health_gate_on_real_promql_stalls_a_ramp_when_errors_rise") {
        return;
    }
    let ratio = Arc::new(AtomicU64::new(0.001_f64.to_bits()));
    let target = start_target(ratio.clone()).await;
    let prometheus = start_prometheus(target).await;
    let source = Arc::new(PrometheusSource::new(&prometheus.url).unwrap());
    wait_for_value(&source, "max(levee_test_error_ratio)", |v| v < 0.01).await;
    let server = common::start_with(common::Options {
        real_clock: true,
        metric_source: Some(source.clone()),
        ..common::Options::default()
    })
    .await;
    let file = server.dir.path().join("weights");
    let yaml = format!(
        "\
kind: Runbook
name: drain-web
tasks:
  - id: shift
    stage: ramp
    with:
      command: [sh, -c, 'echo \"$1\" >> \"$2\"', sh, '{{value}}', \"{}\"]
      from: 100
      to: 0
      step: 10
      wait: 1s
      idempotent: true
    health:
      - metric: {{ query: 'max(levee_test_error_ratio{{service=\"web\"}})', below: 0.05 }}
",
        file.display()
    );
    server.apply("drain-web.yaml", &yaml).await;
    let started = server
        .send(
            Method::POST,
            "/api/v1/runbooks/drain-web/runs",
            None,
            Some(&json!({})),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    let id = started.json()["id"].as_str().unwrap().to_string();
    wait_run(&server, &id, "two steps", |r| {
        shift(r)["step"].as_u64() >= Some(2)
    })
    .await;
    // Errors rise: the next health evaluation stalls the task, whatever step it is on.
    ratio.store(0.2_f64.to_bits(), Ordering::SeqCst);
    let stalled = wait_run(&server, &id, "the health stall", |r| {
        shift(r)["status"] == "stalled"
    })
    .await;
    assert_eq!(shift(&stalled)["stall"], "health");
    let reason = shift(&stalled)["reason"].as_str().unwrap();
    assert!(
        reason.contains("0.2") && reason.contains("not below 0.05"),
        "{reason}"
    );
    // The health observations, with the threshold, for the UI's chart: good values passed,
    // the last one (0.2) failed.
    let health = server
        .get(&format!("/api/v1/runs/{id}/tasks/shift/health"))
        .await
        .json();
    assert_eq!(health[0]["check"], "metric", "{health}");
    assert_eq!(health[0]["below"], json!(0.05), "{health}");
    let samples = health[0]["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{health}");
    assert_eq!(samples[0]["ok"], true, "{health}");
    let last = samples.last().unwrap();
    assert_eq!(
        (last["ok"].clone(), last["value"].clone()),
        (json!(false), json!(0.2))
    );
    let page = server.get(&format!("/ui/runs/{id}/tasks/shift")).await;
    assert_eq!(page.status, StatusCode::OK);
    for drawn in [
        "<polyline class=\"values\"",
        "<line class=\"threshold\"",
        "<circle class=\"bad\"",
    ] {
        assert!(page.body.contains(drawn), "the task page draws no {drawn}");
    }
    let reached = shift(&stalled)["step"].as_u64().unwrap();
    assert!(
        reached < 10,
        "the ramp went on to step {reached} despite the errors"
    );
    // Errors fall; an operator retries; the ramp continues from its last committed step.
    ratio.store(0.001_f64.to_bits(), Ordering::SeqCst);
    wait_for_value(&source, "max(levee_test_error_ratio)", |v| v < 0.01).await;
    let retry = server
        .send(
            Method::POST,
            &format!("/api/v1/runs/{id}/controls"),
            None,
            Some(
                &json!({ "control": "retry", "task": "shift", "reason": "errors back to normal" }),
            ),
        )
        .await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
    let set_pace = server
        .send(
            Method::POST,
            &format!("/api/v1/runs/{id}/controls"),
            None,
            Some(&json!({ "control": "set_pace", "task": "shift", "pace": { "wait": "10ms" }, "reason": "finish" })),
        )
        .await;
    assert_eq!(set_pace.status, StatusCode::OK, "{}", set_pace.body);
    wait_run(&server, &id, "success", |r| r["status"] == "succeeded").await;
    let values: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = (0..10).rev().map(|v| (v * 10).to_string()).collect();
    // Every value once, in order: the step in flight when health failed is not repeated
    // past its commit.
    let mut deduped = values.clone();
    deduped.dedup();
    assert_eq!(deduped, expected, "{values:?}");
}
