//! Drain tests end to end on real servers (SQLite files): a cron-scheduled test fires by
//! itself exactly once even with two servers on one database, runs its drain and restore
//! runbooks and leaves a report; a failing criterion fails it with the reason; bad YAML and
//! bad cron are refused precisely; `least_recently_tested` takes turns.

mod common;

use std::time::Duration;

use common::{Options, TestServer, start_with};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Tuesday 2026-01-06, 02:59:00 UTC: a minute before the test's 03:00 firing.
const BEFORE_FIRING_MS: i64 = 1_767_668_340_000;
/// The 03:00 UTC firing of 2026-01-06.
const FIRING_MS: i64 = 1_767_668_400_000;
/// How long a test waits for an execution to finish, in milliseconds.
const FINISH_TIMEOUT_MS: u64 = 30_000;
/// How long a test watches for a second firing that must not happen, in milliseconds: a few
/// scheduler passes (`DRAIN_TEST_INTERVAL_MS` is 500).
const NO_SECOND_FIRING_WATCH_MS: u64 = 2_000;

const RUNBOOKS: &str = "kind: Runbook
name: drain-dc
params:
  dc: { required: true }
  storm: { type: bool, default: false }
tasks:
  - id: drain
    stage: log
    with: { message: \"draining {{ params.dc }} (storm {{ params.storm }})\" }
---
kind: Runbook
name: restore-dc
params:
  dc: { required: true }
tasks:
  - id: restore
    stage: log
    with: { message: \"restoring {{ params.dc }}\" }
---
kind: Runbook
name: broken-restore
params:
  dc: { required: true }
tasks:
  - id: restore
    stage: shell
    with: { command: [\"false\"] }
";

fn nightly(name: &str, restore: &str) -> String {
    format!(
        "kind: DrainTest
name: {name}
runbook: drain-dc
target: east
schedule: {{ cron: \"0 3 * * *\", time_zone: UTC }}
restore: {{ runbook: {restore} }}
"
    )
}

async fn server_at(clock_ms: i64, dir: Option<std::sync::Arc<tempfile::TempDir>>) -> TestServer {
    start_with(Options {
        clock_ms: Some(clock_ms),
        dir,
        ..Options::default()
    })
    .await
}

/// The drain test as `GET /api/v1/drain-tests/NAME` shows it.
async fn show(server: &TestServer, name: &str) -> Value {
    let answer = server.get(&format!("/api/v1/drain-tests/{name}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()
}

/// Waits until the test's newest execution is over; its history then.
async fn wait_finished(server: &TestServer, name: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(FINISH_TIMEOUT_MS);
    loop {
        let view = show(server, name).await;
        let history = view["history"].as_array().cloned().unwrap_or_default();
        if history
            .first()
            .is_some_and(|e| matches!(e["state"].as_str(), Some("passed" | "failed")))
        {
            return history;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{name}` did not finish within {FINISH_TIMEOUT_MS} ms: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_drain_test_fires_by_itself_once_across_two_servers_and_leaves_a_report() {
    let first = server_at(BEFORE_FIRING_MS, None).await;
    let second = server_at(BEFORE_FIRING_MS, Some(first.dir.clone())).await;
    first
        .apply(
            "dt.yaml",
            &format!("{RUNBOOKS}---\n{}", nightly("nightly", "restore-dc")),
        )
        .await;
    let view = show(&second, "nightly").await;
    assert_eq!(view["next_run_ms"], FIRING_MS, "{view:#}");
    // Not due yet: nothing fires.
    tokio::time::sleep(Duration::from_millis(NO_SECOND_FIRING_WATCH_MS)).await;
    assert_eq!(
        show(&first, "nightly").await["history"],
        serde_json::json!([])
    );

    for server in [&first, &second] {
        server.clock.set_ms(FIRING_MS + 30_000);
    }
    let history = wait_finished(&first, "nightly").await;
    tokio::time::sleep(Duration::from_millis(NO_SECOND_FIRING_WATCH_MS)).await;
    let history_again = show(&second, "nightly").await["history"].clone();
    assert_eq!(
        history_again.as_array().map(Vec::len),
        Some(1),
        "{history_again:#}"
    );
    let execution = &history[0];
    assert_eq!(
        execution["id"], "dt-nightly-20260106T0300Z",
        "{execution:#}"
    );
    assert_eq!(execution["scheduled_ms"], FIRING_MS);
    assert_eq!(execution["trigger"], "schedule");
    assert_eq!(execution["target"], "east");
    assert_eq!(execution["state"], "passed", "{execution:#}");
    let report = &execution["report"];
    assert_eq!(report["drain"]["status"], "succeeded", "{report:#}");
    assert_eq!(
        report["drain"]["critical_path"],
        serde_json::json!(["drain"])
    );
    assert_eq!(report["restore"]["status"], "succeeded", "{report:#}");
    assert_eq!(report["failures"], serde_json::json!([]));
    // The drain run got the target datacenter.
    let drain_run = execution["drain_run"].as_str().expect("a drain run");
    let run = first.get(&format!("/api/v1/runs/{drain_run}")).await.json();
    assert_eq!(run["params"]["dc"], "east", "{run:#}");
    assert_eq!(run["name"], "dt-nightly-20260106T0300Z-drain");
    // Exactly two runs exist: one drain, one restore.
    let runs = first.get("/api/v1/runs").await.json();
    let count = runs["runs"].as_array().or(runs.as_array()).map(Vec::len);
    assert_eq!(count, Some(2), "{runs:#}");
    // The report is served on its own too, and the trends list the finished execution.
    let answer = second
        .get("/api/v1/drain-test-executions/dt-nightly-20260106T0300Z")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["report"], *report);
    let trends = show(&second, "nightly").await["trends"].clone();
    assert_eq!(trends[0]["state"], "passed", "{trends:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pass_criterion_fails_the_test_with_the_reason() {
    let server = server_at(BEFORE_FIRING_MS, None).await;
    server
        .apply(
            "dt.yaml",
            &format!("{RUNBOOKS}---\n{}", nightly("fragile", "broken-restore")),
        )
        .await;
    let answer = server
        .send(Method::POST, "/api/v1/drain-tests/fragile/run", None, None)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let history = wait_finished(&server, "fragile").await;
    let execution = &history[0];
    assert_eq!(execution["trigger"], "manual");
    assert_eq!(execution["state"], "failed", "{execution:#}");
    let reason = execution["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("restore_completed: the restore run did not succeed (failed)"),
        "{reason}"
    );
    assert_eq!(execution["report"]["drain"]["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cron_and_unknown_runbooks_are_refused_precisely() {
    let server = server_at(BEFORE_FIRING_MS, None).await;
    server.apply("runbooks.yaml", RUNBOOKS).await;
    let bad = "kind: DrainTest
name: bad
runbook: drain-dc
target: east
schedule: { cron: \"0 25 * * *\", time_zone: UTC }
restore: { runbook: restore-dc }
";
    let answer = server.apply_as(None, "dt/bad.yaml", bad).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    let error = &answer.json()["error"];
    let found = &error["diagnostics"][0];
    assert_eq!(found["file"], "dt/bad.yaml", "{error:#}");
    assert_eq!(
        (found["line"].as_u64(), found["column"].as_u64()),
        (Some(5), Some(19))
    );
    assert!(
        found["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("hour 25 is out of 0-23")),
        "{found:#}"
    );
    let unknown = nightly("lost", "restore-everything");
    let answer = server.apply_as(None, "dt/lost.yaml", &unknown).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    let found = &answer.json()["error"]["diagnostics"][0];
    assert_eq!(found["code"], "unknown-runbook", "{found:#}");
    assert_eq!(
        (found["line"].as_u64(), found["column"].as_u64()),
        (Some(6), Some(21))
    );
    let answer = server.get("/api/v1/drain-tests/nothing").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_recently_tested_takes_turns_from_the_history() {
    let server = server_at(BEFORE_FIRING_MS, None).await;
    let test = "kind: DrainTest
name: turns
runbook: drain-dc
target: { least_recently_tested: [east, west, central] }
restore: { runbook: restore-dc }
storm: true
";
    server
        .apply("dt.yaml", &format!("{RUNBOOKS}---\n{test}"))
        .await;
    let mut targets = Vec::new();
    for round in 0..4 {
        server.clock.advance_ms(1_000);
        let answer = server
            .send(Method::POST, "/api/v1/drain-tests/turns/run", None, None)
            .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "round {round}: {}",
            answer.body
        );
        let history = wait_finished(&server, "turns").await;
        assert_eq!(history[0]["state"], "passed", "{:#}", history[0]);
        targets.push(
            history[0]["target"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    // Never tested first, in the order listed; then the one tested longest ago.
    assert_eq!(targets, ["east", "west", "central", "east"]);
    // A storm test passes `storm=true` to the drain runbook.
    let history = show(&server, "turns").await["history"].clone();
    let run_id = history[0]["drain_run"]
        .as_str()
        .expect("a drain run")
        .to_string();
    let run = server.get(&format!("/api/v1/runs/{run_id}")).await.json();
    assert_eq!(run["params"]["storm"], true, "{run:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_missed_by_more_than_the_catch_up_window_is_recorded_as_skipped() {
    let server = server_at(BEFORE_FIRING_MS, None).await;
    server
        .apply(
            "dt.yaml",
            &format!("{RUNBOOKS}---\n{}", nightly("late", "restore-dc")),
        )
        .await;
    // The servers "come back" two hours after the 03:00 firing.
    let two_hours_ms = 2 * 3_600_000;
    server.clock.set_ms(FIRING_MS + two_hours_ms);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(FINISH_TIMEOUT_MS);
    let history = loop {
        let history = show(&server, "late").await["history"].clone();
        if history.as_array().is_some_and(|h| !h.is_empty()) {
            break history;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history:#}");
    assert_eq!(history[0]["state"], "skipped", "{history:#}");
    assert_eq!(history[0]["id"], "dt-late-20260106T0300Z");
    assert!(
        history[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("missed by 7200 s")),
        "{history:#}"
    );
    assert_eq!(history[0]["drain_run"], Value::Null);
    // The next day's firing, on time, runs.
    server.clock.set_ms(FIRING_MS + 24 * 3_600_000 + 10_000);
    let history = wait_finished(&server, "late").await;
    assert_eq!(history[0]["id"], "dt-late-20260107T0300Z");
    assert_eq!(history[0]["state"], "passed", "{:#}", history[0]);
    assert_eq!(history.len(), 2);
}

/// How long connecting to the test PostgreSQL server may take, in milliseconds.
const POSTGRES_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// A fresh database on the PostgreSQL server `LEVEE_TEST_POSTGRES_URL` names: its URL and
/// name. `None` (a skip, said on stderr) outside CI when there is none; CI fails instead.
async fn fresh_postgres_database() -> Option<(String, String)> {
    use sqlx::Connection;
    let server = std::env::var("LEVEE_TEST_POSTGRES_URL").ok();
    let connected = match &server {
        Some(url) => tokio::time::timeout(
            Duration::from_millis(POSTGRES_CONNECT_TIMEOUT_MS),
            sqlx::PgConnection::connect(url),
        )
        .await
        .ok()
        .and_then(Result::ok),
        None => None,
    };
    let Some(mut admin) = connected else {
        let help = format!("PostgreSQL is not reachable at LEVEE_TEST_POSTGRES_URL ({server:?})");
        assert!(
            std::env::var_os("CI").is_none(),
            "{help}; CI is set, so this fails"
        );
        eprintln!("SKIPPING the PostgreSQL drain test: {help}");
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("levee_drain_test_{}_{nanos}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let server = server.expect("a server URL");
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    Some((format!("{base}/{name}"), name))
}

/// A Levee server on the PostgreSQL database at `url`, on a manual clock; its base URL.
async fn postgres_replica(
    url: &str,
    clock: std::sync::Arc<levee_server::clock::ManualClock>,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let store = levee_store::PostgresStore::connect(url)
        .await
        .expect("connect the PostgreSQL store");
    let app = levee_server::App::open(
        std::sync::Arc::new(store),
        clock,
        levee_server::AppOptions::default(),
    )
    .await
    .expect("open the app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(levee_server::serve(listener, app, async move {
        let _ = stopped.await;
    }));
    (base, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgresql_fire_a_scheduled_drain_test_once() {
    let Some((url, name)) = fresh_postgres_database().await else {
        return;
    };
    let clocks: Vec<_> = (0..2)
        .map(|_| std::sync::Arc::new(levee_server::clock::ManualClock::new(BEFORE_FIRING_MS)))
        .collect();
    let mut replicas = Vec::new();
    for clock in &clocks {
        replicas.push(postgres_replica(&url, clock.clone()).await);
    }
    let client = common::client();
    let source = format!("{RUNBOOKS}---\n{}", nightly("nightly", "restore-dc"));
    let applied = client
        .post(format!("{}/api/v1/definitions", replicas[0].0))
        .json(&serde_json::json!({ "files": [{ "name": "dt.yaml", "content": source }] }))
        .send()
        .await
        .expect("apply");
    assert_eq!(
        applied.status(),
        StatusCode::OK,
        "{:?}",
        applied.text().await
    );
    for clock in &clocks {
        clock.set_ms(FIRING_MS + 30_000);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(FINISH_TIMEOUT_MS);
    let history = loop {
        let view: Value = client
            .get(format!("{}/api/v1/drain-tests/nightly", replicas[1].0))
            .send()
            .await
            .expect("show")
            .json()
            .await
            .expect("json");
        let history = view["history"].as_array().cloned().unwrap_or_default();
        if history
            .first()
            .is_some_and(|e| e["state"] == "passed" || e["state"] == "failed")
        {
            break history;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not finished: {view:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(NO_SECOND_FIRING_WATCH_MS)).await;
    let again: Value = client
        .get(format!(
            "{}/api/v1/drain-tests/nightly/executions",
            replicas[0].0
        ))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    assert_eq!(again.as_array().map(Vec::len), Some(1), "{again:#}");
    assert_eq!(history[0]["id"], "dt-nightly-20260106T0300Z");
    assert_eq!(history[0]["state"], "passed", "{:#}", history[0]);
    let runs: Value = client
        .get(format!("{}/api/v1/runs", replicas[0].0))
        .send()
        .await
        .expect("runs")
        .json()
        .await
        .expect("json");
    let count = runs["runs"].as_array().or(runs.as_array()).map(Vec::len);
    assert_eq!(count, Some(2), "one drain and one restore run: {runs:#}");
    for (_, stop) in replicas {
        let _ = stop.send(());
    }
    // Best effort: the servers' pools may still hold connections, hence FORCE.
    if let Ok(admin_url) = std::env::var("LEVEE_TEST_POSTGRES_URL") {
        use sqlx::Connection;
        if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut admin)
                .await;
        }
    }
}

/// A drain that stalls on a health breach nobody answers must not hold the datacenter
/// drained: past the test's `max_duration` the drain run is aborted, the restore runs, and
/// the execution fails naming the breach and the abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stalled_on_a_health_breach_is_aborted_at_its_deadline_and_restored() {
    let server = server_at(BEFORE_FIRING_MS, None).await;
    let never = server.dir.path().join("never-healthy");
    let yaml = format!(
        "{RUNBOOKS}---
kind: Runbook
name: gated-drain
params:
  dc: {{ required: true }}
tasks:
  - id: shift
    stage: log
    with: {{ message: \"shifting {{{{ params.dc }}}}\" }}
    health:
      - shell: {{ command: [test, -e, \"{}\"] }}
---
kind: DrainTest
name: gated
runbook: gated-drain
target: east
pass: {{ max_duration: 30m }}
restore: {{ runbook: restore-dc }}
",
        never.display()
    );
    server.apply("dt.yaml", &yaml).await;
    let answer = server
        .send(Method::POST, "/api/v1/drain-tests/gated/run", None, None)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let run_id = answer.json()["drain_run"].as_str().unwrap().to_string();

    // The drain stalls on its health check, and the execution waits: it is within its time.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(FINISH_TIMEOUT_MS);
    loop {
        let run = server.get(&format!("/api/v1/runs/{run_id}")).await.json();
        let stalled = run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "shift" && t["status"] == "stalled");
        if stalled {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drain never stalled: {run:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(NO_SECOND_FIRING_WATCH_MS)).await;
    assert_eq!(
        show(&server, "gated").await["history"][0]["state"],
        "draining"
    );

    // Past the deadline: aborted, restored, failed with both reasons.
    server.clock.advance_ms(31 * 60_000);
    let history = wait_finished(&server, "gated").await;
    let execution = &history[0];
    assert_eq!(execution["state"], "failed", "{execution:#}");
    let report = &execution["report"];
    assert_eq!(report["drain"]["status"], "aborted", "{execution:#}");
    assert!(
        report["drain"]["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains("deadline"),
        "{execution:#}"
    );
    assert_eq!(report["restore"]["status"], "succeeded", "{execution:#}");
    let reason = execution["reason"].as_str().unwrap();
    assert!(
        reason.contains("no_health_breach: task `shift` of the drain run stalled"),
        "{reason}"
    );
    assert!(reason.contains("max_duration"), "{reason}");
    let run = server.get(&format!("/api/v1/runs/{run_id}")).await.json();
    assert_eq!(run["status"], "aborted", "{run:#}");
}
