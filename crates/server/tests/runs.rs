//! Runbook runs over HTTP, on a real SQLite file and real processes: starting (idempotent by
//! name), running to the end, health gates that stall and the operator controls that resume
//! them (audited), approvals and their rules, the global pause, abort, recovery after a
//! restart, stuck detection from history, the event stream and the report.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Longest a test waits for a run to reach a state.
const RUN_WAIT_MS: u64 = 20_000;

/// A server on the system clock: runs measure real durations.
async fn start() -> TestServer {
    common::start_with(common::Options {
        real_clock: true,
        ..common::Options::default()
    })
    .await
}

const QUICK_YAML: &str = "\
kind: Runbook
name: quick
params:
  pause: { type: duration, default: 10ms }
tasks:
  - id: announce
    stage: log
    with: { message: starting }
  - id: settle
    stage: wait
    needs: [announce]
    with: { duration: \"{{ params.pause }}\" }
  - id: probe
    stage: shell
    needs: [announce]
    with: { command: [sh, -c, \"echo probed\"] }
  - id: finish
    stage: log
    needs: [settle, probe]
    with: { message: done }
";

async fn start_run(server: &TestServer, runbook: &str, body: Value) -> Value {
    let answer = server
        .send(
            Method::POST,
            &format!("/api/v1/runbooks/{runbook}/runs"),
            None,
            Some(&body),
        )
        .await;
    assert!(
        answer.status == StatusCode::CREATED || answer.status == StatusCode::OK,
        "start {runbook}: {} {}",
        answer.status,
        answer.body
    );
    answer.json()
}

async fn run(server: &TestServer, id: &str) -> Value {
    let answer = server.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()
}

fn task<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {run}"))
}

/// Polls the run until `done` holds, failing the test after [`RUN_WAIT_MS`].
async fn wait_until(
    server: &TestServer,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_millis(RUN_WAIT_MS);
    loop {
        let current = run(server, id).await;
        if done(&current) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} never got to: {what}; it is {}",
            serde_json::to_string_pretty(&current).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_status(server: &TestServer, id: &str, status: &str) -> Value {
    wait_until(server, id, status, |r| r["status"] == status).await
}

async fn control(server: &TestServer, id: &str, body: Value) -> common::Answer {
    server
        .send(
            Method::POST,
            &format!("/api/v1/runs/{id}/controls"),
            None,
            Some(&body),
        )
        .await
}

async fn journal_kinds(server: &TestServer, id: &str) -> Vec<(String, Option<String>)> {
    let answer = server
        .get(&format!("/api/v1/runs/{id}/journal?limit=1000"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["task"].as_str().map(str::to_string),
            )
        })
        .collect()
}

async fn audit_actions(server: &TestServer, target: &str) -> Vec<(String, String)> {
    let answer = server
        .get(&format!("/api/v1/audit?target={target}&limit=1000"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_run_goes_to_the_end_in_dependency_order_and_reports() {
    let server = start().await;
    server.apply("quick.yaml", QUICK_YAML).await;
    let started = start_run(&server, "quick", json!({})).await;
    let id = started["id"].as_str().unwrap().to_string();
    let done = wait_for_status(&server, &id, "succeeded").await;
    assert_eq!(done["counts"]["succeeded"], 4);
    // Dependencies first: every task started after its parents finished.
    for (child, parent) in [
        ("settle", "announce"),
        ("probe", "announce"),
        ("finish", "settle"),
        ("finish", "probe"),
    ] {
        let started = task(&done, child)["started_at_ms"].as_i64().unwrap();
        let finished = task(&done, parent)["finished_at_ms"].as_i64().unwrap();
        assert!(started >= finished, "{child} started before {parent} ended");
    }
    let kinds = journal_kinds(&server, &id).await;
    assert_eq!(kinds.first().unwrap().0, "run_started");
    assert_eq!(kinds.last().unwrap().0, "run_finished");
    // Journal, then act: each task was started (committed) before it succeeded.
    for id in ["announce", "settle", "probe", "finish"] {
        let at = |kind: &str| {
            kinds
                .iter()
                .position(|(k, t)| k == kind && t.as_deref() == Some(id))
                .unwrap_or_else(|| panic!("no {kind} for {id}"))
        };
        assert!(at("task_dispatched") < at("task_started"));
        assert!(at("task_started") < at("task_succeeded"));
    }
    // The shell task's output is kept.
    let output = server
        .get(&format!("/api/v1/runs/{id}/tasks/probe/output"))
        .await
        .json();
    assert_eq!(output["outputs"][0]["text"], "probed\n");
    assert_eq!(output["outputs"][0]["outcome"], "succeeded");
    // The report names the critical path.
    let report = server
        .get(&format!("/api/v1/runs/{id}/report"))
        .await
        .json();
    let path: Vec<&str> = report["critical_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(path.first(), Some(&"announce"));
    assert_eq!(path.last(), Some(&"finish"));
    assert!(report["speedup"].as_f64().unwrap() >= 1.0 - 1e-9);
    // Listed, newest first.
    let listed = server.get("/api/v1/runs?status=succeeded").await.json();
    assert_eq!(listed["runs"][0]["id"], id.as_str());
    assert_eq!(listed["runs"][0]["tasks_done"], 4);
}

#[tokio::test]
async fn starting_twice_under_one_name_starts_one_run() {
    let server = start().await;
    server.apply("quick.yaml", QUICK_YAML).await;
    let first = server
        .send(
            Method::POST,
            "/api/v1/runbooks/quick/runs",
            None,
            Some(&json!({ "name": "drain-2026-12-05" })),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let second = server
        .send(
            Method::POST,
            "/api/v1/runbooks/quick/runs",
            None,
            Some(&json!({ "name": "drain-2026-12-05" })),
        )
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(first.json()["id"], second.json()["id"]);
    let listed = server.get("/api/v1/runs").await.json();
    assert_eq!(listed["runs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_parameters_and_unknown_runbooks_are_refused_before_anything_runs() {
    let server = start().await;
    server.apply("quick.yaml", QUICK_YAML).await;
    let answer = server
        .send(
            Method::POST,
            "/api/v1/runbooks/quick/runs",
            None,
            Some(&json!({ "params": { "pause": "soon" } })),
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert_eq!(answer.error_code(), "invalid_params");
    let answer = server
        .send(
            Method::POST,
            "/api/v1/runbooks/nope/runs",
            None,
            Some(&json!({})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let listed = server.get("/api/v1/runs").await.json();
    assert!(listed["runs"].as_array().unwrap().is_empty());
}

const WHEN_YAML: &str = "\
kind: Runbook
name: drain-maybe-storm
params:
  storm: { type: bool, default: false }
  mode: { type: string, default: \"true\" }
tasks:
  - id: drain
    stage: log
    with: { message: drained }
  - id: cut-off
    stage: shell
    needs: [drain]
    when: \"{{ params.storm }}\"
    with: { command: [sh, -c, \"echo cut off\"] }
  - id: report
    stage: log
    needs: [cut-off]
    when: \"{{ params.mode }}\"
    with: { message: reported }
";

/// The complaint: "a storm drain test needs a second copy of the runbook just to add the
/// storm's tasks". A task's `when` skips it from the start when false, and its dependents go
/// on; anything but true or false refuses the run before anything runs.
#[tokio::test]
async fn a_task_whose_when_is_false_is_skipped_and_its_dependents_go_on() {
    let server = start().await;
    server.apply("when.yaml", WHEN_YAML).await;
    // The plan says so beforehand, and predicts no time for it.
    let plan = server
        .send(
            Method::POST,
            "/api/v1/runbooks/drain-maybe-storm/plan",
            None,
            Some(&json!({})),
        )
        .await;
    assert_eq!(plan.status, StatusCode::OK, "{}", plan.body);
    let plan = plan.json();
    let cut_off = plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "cut-off")
        .unwrap();
    assert!(
        cut_off["skip"].as_str().unwrap().contains("is false"),
        "{plan}"
    );
    assert_eq!(cut_off["predicted"]["duration_ms"], 0, "{plan}");

    let calm = start_run(&server, "drain-maybe-storm", json!({})).await;
    let calm = wait_for_status(&server, calm["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(task(&calm, "cut-off")["status"], "skipped", "{calm}");
    assert!(
        task(&calm, "cut-off")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("`when: {{ params.storm }}` is false")),
        "{calm}"
    );
    assert_eq!(task(&calm, "report")["status"], "succeeded", "{calm}");
    assert_eq!(calm["counts"]["skipped"], 1, "{calm}");

    let storm = start_run(
        &server,
        "drain-maybe-storm",
        json!({ "params": { "storm": "true" } }),
    )
    .await;
    let storm_id = storm["id"].as_str().unwrap().to_string();
    let storm = wait_for_status(&server, &storm_id, "succeeded").await;
    assert_eq!(task(&storm, "cut-off")["status"], "succeeded", "{storm}");
    let output = server
        .get(&format!("/api/v1/runs/{storm_id}/tasks/cut-off/output"))
        .await
        .json();
    assert_eq!(output["outputs"][0]["text"], "cut off\n");

    let refused = server
        .send(
            Method::POST,
            "/api/v1/runbooks/drain-maybe-storm/runs",
            None,
            Some(&json!({ "params": { "mode": "maybe" } })),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("task `report`") && refused.body.contains("gives `maybe`"),
        "{}",
        refused.body
    );
    let listed = server.get("/api/v1/runs").await.json();
    assert_eq!(listed["runs"].as_array().unwrap().len(), 2);
}

/// A health check on a file's existence: failing until the test creates the file.
fn gated_yaml(flag: &std::path::Path) -> String {
    format!(
        "\
kind: Runbook
name: gated
tasks:
  - id: shift
    stage: log
    with: {{ message: shifting }}
    health:
      - shell: {{ command: [test, -e, \"{}\"] }}
  - id: after
    stage: log
    needs: [shift]
    with: {{ message: after }}
",
        flag.display()
    )
}

#[tokio::test]
async fn a_failing_health_check_stalls_until_an_operator_overrides_it() {
    let server = start().await;
    let flag = server.dir.path().join("healthy");
    server.apply("gated.yaml", &gated_yaml(&flag)).await;
    let id = start_run(&server, "gated", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stalled = wait_until(&server, &id, "shift stalled", |r| {
        task(r, "shift")["status"] == "stalled"
    })
    .await;
    assert_eq!(task(&stalled, "shift")["stall"], "health");
    assert!(
        task(&stalled, "shift")["reason"]
            .as_str()
            .unwrap()
            .contains("does not hold")
    );
    // Its dependent waits; nothing guesses.
    assert_eq!(task(&stalled, "after")["status"], "waiting");
    // No reason, no override.
    let answer = control(
        &server,
        &id,
        json!({ "control": "override_condition", "task": "shift", "reason": " " }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    let answer = control(
        &server,
        &id,
        json!({ "control": "override_condition", "task": "shift", "reason": "metric is known to be broken" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    wait_for_status(&server, &id, "succeeded").await;
    let audit = audit_actions(&server, &id).await;
    assert!(
        audit.contains(&("run.override_condition".to_string(), "ok".to_string())),
        "{audit:?}"
    );
    assert!(
        audit.contains(&(
            "run.override_condition".to_string(),
            "bad_request".to_string()
        )),
        "{audit:?}"
    );
    let kinds = journal_kinds(&server, &id).await;
    assert!(kinds.iter().any(|(k, _)| k == "condition_overridden"));
}

#[tokio::test]
async fn a_stalled_task_resumes_on_retry_once_its_health_holds() {
    let server = start().await;
    let flag = server.dir.path().join("healthy");
    server.apply("gated.yaml", &gated_yaml(&flag)).await;
    let id = start_run(&server, "gated", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(&server, &id, "shift stalled", |r| {
        task(r, "shift")["status"] == "stalled"
    })
    .await;
    std::fs::write(&flag, b"ok").unwrap();
    let answer = control(
        &server,
        &id,
        json!({ "control": "retry", "task": "shift", "reason": "fixed the metric" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let done = wait_for_status(&server, &id, "succeeded").await;
    assert_eq!(task(&done, "shift")["attempts"], 2);
    let audit = audit_actions(&server, &id).await;
    assert!(
        audit.contains(&("run.retry".to_string(), "ok".to_string())),
        "{audit:?}"
    );
    // A second retry of a task that succeeded is refused, with the reason, and audited.
    let answer = control(
        &server,
        &id,
        json!({ "control": "retry", "task": "shift", "reason": "again" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert_eq!(answer.error_code(), "run_ended");
    let audit = audit_actions(&server, &id).await;
    assert!(
        audit.contains(&("run.retry".to_string(), "run_ended".to_string())),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_failed_task_fails_the_run_and_a_retry_reopens_it() {
    let server = start().await;
    let flag = server.dir.path().join("present");
    let yaml = format!(
        "\
kind: Runbook
name: fragile
tasks:
  - id: check
    stage: shell
    with: {{ command: [test, -e, \"{}\"] }}
  - id: next
    stage: log
    needs: [check]
    with: {{ message: next }}
",
        flag.display()
    );
    server.apply("fragile.yaml", &yaml).await;
    let id = start_run(&server, "fragile", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let failed = wait_for_status(&server, &id, "failed").await;
    assert!(failed["outcome"].as_str().unwrap().contains("check"));
    assert_eq!(task(&failed, "next")["status"], "waiting");
    std::fs::write(&flag, b"").unwrap();
    let answer = control(
        &server,
        &id,
        json!({ "control": "retry", "task": "check", "reason": "created the file" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    wait_for_status(&server, &id, "succeeded").await;
}

#[tokio::test]
async fn approvals_follow_their_rules_and_are_audited() {
    let server = start().await;
    let yaml = "\
kind: Runbook
name: guarded
tasks:
  - id: sign-off
    stage: approval
    with: { approvers: [alice] }
  - id: open
    stage: approval
    needs: [sign-off]
  - id: go
    stage: log
    needs: [open]
    with: { message: go }
";
    server.apply("guarded.yaml", yaml).await;
    let id = start_run(&server, "guarded", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(&server, &id, "sign-off waiting", |r| {
        task(r, "sign-off")["status"] == "running" && task(r, "sign-off")["in_flight"] == true
    })
    .await;
    // Only alice may approve sign-off; the refusal is audited.
    let answer = control(
        &server,
        &id,
        json!({ "control": "approve", "task": "sign-off", "reason": "looks fine" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
    assert!(answer.body.contains("alice"));
    let audit = audit_actions(&server, &id).await;
    assert!(
        audit.contains(&("run.approve".to_string(), "forbidden".to_string())),
        "{audit:?}"
    );
    // Skipping it is an operator's call, recorded with the reason.
    let answer = control(&server, &id, json!({ "control": "skip", "task": "sign-off", "reason": "alice is on leave; approved by phone" })).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    wait_until(&server, &id, "open waiting", |r| {
        task(r, "open")["in_flight"] == true
    })
    .await;
    // Approving a task that is not an approval is refused.
    let answer = control(
        &server,
        &id,
        json!({ "control": "approve", "task": "go", "reason": "x" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert_eq!(answer.error_code(), "not_awaiting_approval");
    let answer = control(
        &server,
        &id,
        json!({ "control": "approve", "task": "open", "reason": "change window open" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    wait_for_status(&server, &id, "succeeded").await;
    let kinds = journal_kinds(&server, &id).await;
    assert!(
        kinds.contains(&("approved".to_string(), Some("open".to_string()))),
        "{kinds:?}"
    );
    assert!(kinds.contains(&("task_skipped".to_string(), Some("sign-off".to_string()))));
}

const CHAIN_YAML: &str = "\
kind: Runbook
name: chain
tasks:
  - id: one
    stage: wait
    with: { duration: 300ms }
  - id: two
    stage: log
    needs: [one]
    with: { message: two }
";

#[tokio::test]
async fn the_global_pause_holds_every_run_until_lifted() {
    let server = start().await;
    server.apply("chain.yaml", CHAIN_YAML).await;
    let id = start_run(&server, "chain", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = server
        .send(
            Method::PUT,
            "/api/v1/pause",
            None,
            Some(&json!({ "paused": true, "reason": "incident 4711" })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json()["paused"], true);
    // `one` finishes; `two` does not start while everything is paused.
    wait_until(&server, &id, "one done", |r| {
        task(r, "one")["status"] == "succeeded"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = run(&server, &id).await;
    assert_eq!(task(&held, "two")["status"], "ready", "{held}");
    // The pause is stored: a restarted server is still paused.
    assert_eq!(
        server.get("/api/v1/pause").await.json()["reason"],
        "incident 4711"
    );
    let answer = server
        .send(
            Method::PUT,
            "/api/v1/pause",
            None,
            Some(&json!({ "paused": false, "reason": "resolved" })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    wait_for_status(&server, &id, "succeeded").await;
    let audit = audit_actions(&server, "*").await;
    assert!(
        audit.contains(&("runs.pause_all".to_string(), "ok".to_string())),
        "{audit:?}"
    );
    assert!(
        audit.contains(&("runs.resume_all".to_string(), "ok".to_string())),
        "{audit:?}"
    );
}

#[tokio::test]
async fn pause_resume_and_abort_a_run() {
    let server = start().await;
    server.apply("chain.yaml", CHAIN_YAML).await;
    let id = start_run(&server, "chain", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = control(
        &server,
        &id,
        json!({ "control": "pause", "reason": "hold on" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json()["status"], "paused");
    wait_until(&server, &id, "one done", |r| {
        task(r, "one")["status"] == "succeeded"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(task(&run(&server, &id).await, "two")["status"], "ready");
    let answer = control(&server, &id, json!({ "control": "resume", "reason": "go" })).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    wait_for_status(&server, &id, "succeeded").await;

    let long = "\
kind: Runbook
name: long
tasks:
  - id: forever
    stage: wait
    with: { duration: 1h }
";
    server.apply("long.yaml", long).await;
    let id = start_run(&server, "long", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(&server, &id, "waiting", |r| {
        task(r, "forever")["in_flight"] == true
    })
    .await;
    let answer = control(
        &server,
        &id,
        json!({ "control": "abort", "reason": "wrong datacenter" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let aborted = wait_for_status(&server, &id, "aborted").await;
    assert_eq!(task(&aborted, "forever")["status"], "cancelled");
    assert!(
        aborted["outcome"]
            .as_str()
            .unwrap()
            .contains("wrong datacenter")
    );
    let answer = control(
        &server,
        &id,
        json!({ "control": "resume", "reason": "oops" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    let answer = control(&server, &id, json!({ "control": "explode", "reason": "x" })).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_restarted_server_resumes_runs_and_stalls_interrupted_side_effects() {
    let server = start().await;
    let yaml = "\
kind: Runbook
name: restartable
tasks:
  - id: pause
    stage: wait
    with: { duration: 2s }
  - id: after
    stage: log
    needs: [pause]
    with: { message: after }
  - id: deploy
    stage: shell
    with: { command: [sleep, \"30\"] }
";
    server.apply("restartable.yaml", yaml).await;
    let id = start_run(&server, "restartable", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(&server, &id, "both in flight", |r| {
        task(r, "pause")["in_flight"] == true && task(r, "deploy")["in_flight"] == true
    })
    .await;
    let dir = server.stop().await;
    let server = common::start_with(common::Options {
        real_clock: true,
        dir: Some(dir),
        ..common::Options::default()
    })
    .await;
    // The idempotent wait runs again; the shell step, which may have half happened, waits
    // for a human.
    let after = wait_until(&server, &id, "deploy stalled and pause done", |r| {
        task(r, "deploy")["status"] == "stalled" && task(r, "after")["status"] == "succeeded"
    })
    .await;
    assert_eq!(task(&after, "deploy")["stall"], "in_flight_at_restart");
    let kinds = journal_kinds(&server, &id).await;
    assert!(kinds.iter().any(|(k, _)| k == "recovered"));
    assert!(kinds.contains(&("task_requeued".to_string(), Some("pause".to_string()))));
    let answer = control(
        &server,
        &id,
        json!({ "control": "skip", "task": "deploy", "reason": "checked by hand: deployed" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    wait_for_status(&server, &id, "succeeded").await;
}

#[tokio::test]
async fn a_task_slower_than_its_history_raises_a_stuck_alert() {
    let server = start().await;
    let yaml = "\
kind: Runbook
name: usual
params:
  pause: { type: duration, default: 5ms }
tasks:
  - id: step
    stage: wait
    with: { duration: \"{{ params.pause }}\" }
";
    server.apply("usual.yaml", yaml).await;
    // Enough history: five quick runs.
    for _ in 0..5 {
        let id = start_run(&server, "usual", json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        wait_for_status(&server, &id, "succeeded").await;
    }
    let id = start_run(&server, "usual", json!({ "params": { "pause": "3s" } })).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_millis(RUN_WAIT_MS);
    loop {
        let kinds = journal_kinds(&server, &id).await;
        if kinds.contains(&("task_stuck".to_string(), Some("step".to_string()))) {
            break;
        }
        assert!(Instant::now() < deadline, "no stuck alert: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It is an alert, not a verdict: the task keeps running.
    assert_eq!(task(&run(&server, &id).await, "step")["status"], "running");
    let metrics = server.get("/metrics").await.body;
    assert!(metrics.contains("levee_stuck_tasks_total"), "{metrics}");
}

#[tokio::test]
async fn the_event_stream_sends_the_journal_live() {
    let server = start().await;
    server.apply("chain.yaml", CHAIN_YAML).await;
    let id = start_run(&server, "chain", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut response = server
        .client
        .get(server.url(&format!("/api/v1/runs/{id}/events")))
        .timeout(Duration::from_millis(RUN_WAIT_MS))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut text = String::new();
    while !text.contains("\"kind\":\"run_finished\"") {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .expect("the stream ended early");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: journal"));
    assert!(text.contains("\"kind\":\"run_started\""));
    // Resuming after an id sends only what came after it.
    let first_id: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut response = server
        .client
        .get(server.url(&format!("/api/v1/runs/{id}/events")))
        .header("Last-Event-ID", first_id.to_string())
        .timeout(Duration::from_millis(RUN_WAIT_MS))
        .send()
        .await
        .unwrap();
    let chunk = response.chunk().await.unwrap().unwrap();
    let resumed = String::from_utf8_lossy(&chunk);
    assert!(!resumed.contains(&format!("id: {first_id}\n")), "{resumed}");
    // The run succeeded, so its stream ends after its last entry instead of idling.
    let body = server
        .client
        .get(server.url(&format!("/api/v1/runs/{id}/events")))
        .timeout(Duration::from_millis(RUN_WAIT_MS))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .expect("the stream of a finished run ends");
    assert!(body.trim_end().ends_with('}'), "{body}");
    assert!(body.contains("\"kind\":\"run_finished\""), "{body}");
    assert!(server.get("/api/v1/runs/nope/events").await.status == StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_plan_evaluates_pre_conditions_now_and_predicts_from_history() {
    let server = start().await;
    let yaml = "\
kind: Runbook
name: precheck
tasks:
  - id: a
    stage: log
    with: { message: hi }
    pre:
      - shell: { command: [test, -e, /nonexistent-levee-file] }
      - shell: { command: [\"true\"] }
  - id: b
    stage: log
    with: { message: hi }
    pre:
      - shell: { command: [\"true\"] }
";
    server.apply("precheck.yaml", yaml).await;
    let plan = server
        .send(
            Method::POST,
            "/api/v1/runbooks/precheck/plan",
            None,
            Some(&json!({})),
        )
        .await
        .json();
    let a = task(&plan, "a");
    // Every check is shown, each with what it observed.
    assert_eq!(a["pre_now"][0]["ok"], false, "{plan}");
    assert_eq!(a["pre_now"][1]["ok"], true, "{plan}");
    assert_eq!(task(&plan, "b")["pre_now"][0]["ok"], true, "{plan}");
    assert_eq!(task(&plan, "b")["predicted"]["source"], "estimate");
    // After a run, `b` is predicted from its history.
    let answer = server
        .send(
            Method::POST,
            "/api/v1/runbooks/precheck/runs",
            None,
            Some(&json!({})),
        )
        .await;
    let id = answer.json()["id"].as_str().unwrap().to_string();
    wait_until(&server, &id, "b done", |r| {
        task(r, "b")["status"] == "succeeded"
    })
    .await;
    let plan = server
        .send(
            Method::POST,
            "/api/v1/runbooks/precheck/plan",
            None,
            Some(&json!({ "check_pre": false })),
        )
        .await
        .json();
    assert_eq!(task(&plan, "b")["predicted"]["source"], "history", "{plan}");
    assert!(task(&plan, "b")["pre_now"].as_array().unwrap().is_empty());
    assert_eq!(plan["predicted"]["source"], "mixed");
}

/// A ramp from 100 to 0 that appends each step's value to `file`, waiting `wait` between
/// steps.
fn ramp_yaml(file: &std::path::Path, wait: &str, idempotent: bool) -> String {
    format!(
        "\
kind: Runbook
name: ramped
tasks:
  - id: shift
    stage: ramp
    with:
      command: [sh, -c, 'echo \"$1\" >> \"$2\"', sh, '{{value}}', \"{}\"]
      from: 100
      to: 0
      first_step: 5
      step: 20%
      wait: {wait}
      idempotent: {idempotent}
  - id: note
    stage: log
    with: {{ message: not paced }}
",
        file.display()
    )
}

fn lines(file: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_ramp_commits_each_step_and_an_operator_changes_its_pace_while_it_runs() {
    let server = start().await;
    let file = server.dir.path().join("weights");
    server
        .apply("ramped.yaml", &ramp_yaml(&file, "1h", false))
        .await;
    let id = start_run(&server, "ramped", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The first step is its own, small size; then the ramp waits an hour.
    let first = wait_until(&server, &id, "the first step committed", |r| {
        task(r, "shift")["step"] == 1
    })
    .await;
    assert_eq!(
        task(&first, "shift")["step_state"],
        json!({ "value": 95.0 })
    );
    assert_eq!(lines(&file), ["95"]);
    // A pace is checked before it is stored.
    for (body, why) in [
        (
            json!({ "control": "set_pace", "task": "note", "pace": { "wait": "1s" }, "reason": "r" }),
            "paced",
        ),
        (
            json!({ "control": "set_pace", "task": "shift", "reason": "r" }),
            "needs a `pace`",
        ),
        (
            json!({ "control": "set_pace", "task": "shift", "pace": { "step": "0%" }, "reason": "r" }),
            "step",
        ),
        (
            json!({ "control": "set_pace", "task": "shift", "pace": { "to": 50 }, "reason": "r" }),
            "cannot be changed",
        ),
    ] {
        let answer = control(&server, &id, body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert!(answer.body.contains(why), "{why}: {}", answer.body);
    }
    // Halves the hour-long wait's remainder to nothing and takes bigger steps: it applies at
    // once, to the wait already under way.
    let answer = control(
        &server,
        &id,
        json!({
            "control": "set_pace",
            "task": "shift",
            "pace": { "step": "50%", "wait": "10ms" },
            "reason": "error budget is fine, speed up"
        }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        task(&answer.json(), "shift")["pace"],
        json!({ "step": "50%", "wait": "10ms" })
    );
    wait_for_status(&server, &id, "succeeded").await;
    assert_eq!(lines(&file), ["95", "45", "0"]);
    let kinds = journal_kinds(&server, &id).await;
    let steps = kinds.iter().filter(|(k, _)| k == "step_committed").count();
    assert_eq!(steps, 3, "{kinds:?}");
    assert!(kinds.contains(&("pace_changed".to_string(), Some("shift".to_string()))));
    let audit = audit_actions(&server, &id).await;
    assert!(
        audit.contains(&("run.set_pace".to_string(), "ok".to_string())),
        "{audit:?}"
    );
    assert!(
        audit.contains(&("run.set_pace".to_string(), "bad_request".to_string())),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_restarted_ramp_continues_from_the_value_its_last_committed_step_reached() {
    let server = start().await;
    let file = server.dir.path().join("weights");
    server
        .apply("ramped.yaml", &ramp_yaml(&file, "1h", true))
        .await;
    let id = start_run(&server, "ramped", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(&server, &id, "the first step committed", |r| {
        task(r, "shift")["step"] == 1
    })
    .await;
    let dir = server.stop().await;
    let server = common::start_with(common::Options {
        real_clock: true,
        dir: Some(dir),
        ..common::Options::default()
    })
    .await;
    // Declared idempotent, so it is re-run after the restart (not stalled), and it goes on
    // from 95 rather than from the start.
    wait_until(&server, &id, "the ramp running again", |r| {
        task(r, "shift")["status"] == "running" && task(r, "shift")["attempts"] == 2
    })
    .await;
    let answer = control(
        &server,
        &id,
        json!({ "control": "set_pace", "task": "shift", "pace": { "wait": "10ms" }, "reason": "finish the test" }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    wait_for_status(&server, &id, "succeeded").await;
    assert_eq!(
        lines(&server.dir.path().join("weights")),
        ["95", "75", "55", "35", "15", "0"]
    );
}

#[tokio::test]
async fn a_wait_until_a_check_holds_ends_when_it_holds_or_fails_at_its_deadline() {
    let server = start().await;
    let flag = server.dir.path().join("ready");
    let yaml = format!(
        "\
kind: Runbook
name: waits
params:
  deadline: {{ type: duration, default: 20s }}
tasks:
  - id: ready
    stage: wait
    with:
      until: {{ name: replica caught up, shell: {{ command: [test, -e, \"{}\"] }} }}
      every: 100ms
      deadline: \"{{{{ params.deadline }}}}\"
",
        flag.display()
    );
    server.apply("waits.yaml", &yaml).await;
    let id = start_run(&server, "waits", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(&server, &id, "waiting", |r| {
        task(r, "ready")["in_flight"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(run(&server, &id).await["status"], "running");
    std::fs::write(&flag, "").unwrap();
    wait_for_status(&server, &id, "succeeded").await;
    let output = server
        .get(&format!("/api/v1/runs/{id}/tasks/ready/output"))
        .await;
    assert_eq!(output.status, StatusCode::OK, "{}", output.body);
    assert!(
        output.body.contains("holds replica caught up"),
        "{}",
        output.body
    );

    std::fs::remove_file(&flag).unwrap();
    let id = start_run(
        &server,
        "waits",
        json!({ "params": { "deadline": "300ms" } }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let failed = wait_until(&server, &id, "the wait failed", |r| {
        task(r, "ready")["status"] == "failed"
    })
    .await;
    let reason = task(&failed, "ready")["reason"].as_str().unwrap();
    assert!(
        reason.contains("replica caught up still does not hold"),
        "{reason}"
    );
}

/// The complaint: "after a kill -9, /api/v1/replicas still listed the dead replica as if it
/// were there". A replica not heard from within a lease time is listed with `alive: false`
/// (until it drops out of the list a few lease times later); the live ones are `alive`.
#[tokio::test]
async fn replicas_not_heard_from_within_a_lease_time_are_listed_as_not_alive() {
    let server = common::start_with(common::Options::default()).await;
    let ttl_ms = i64::try_from(server.app.replica.lease_ttl_ms).unwrap();
    let now = server.app.now_ms();
    server.app.lease_round().await;
    server
        .app
        .store
        .heartbeat(
            "ghost",
            "http://127.0.0.1:9",
            now - 5 * ttl_ms,
            now - 2 * ttl_ms,
        )
        .await
        .unwrap();
    server
        .app
        .store
        .heartbeat(
            "long-gone",
            "http://127.0.0.1:8",
            now - 9 * ttl_ms,
            now - 8 * ttl_ms,
        )
        .await
        .unwrap();
    let listed = server.get("/api/v1/replicas").await.json();
    let replicas = listed["replicas"].as_array().unwrap();
    let by_id = |id: &str| replicas.iter().find(|r| r["id"] == id);
    let this = replicas.iter().find(|r| r["this"] == true).expect("itself");
    assert_eq!(this["alive"], true, "{listed}");
    assert_eq!(
        by_id("ghost").expect("ghost listed")["alive"],
        false,
        "{listed}"
    );
    assert!(by_id("long-gone").is_none(), "{listed}");
}
