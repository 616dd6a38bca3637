//! The native surface: `/machines/{id}/state` (yes/no with clear statuses), barriers, guards,
//! timers, the JSON API under `/api/v1/` (definitions, machines, events, history, replay and
//! export), the OpenAPI document, `/metrics`, `/healthz`, `/readyz`, and the JSON errors for
//! malformed or oversized bodies.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A VM's build: each state's step is reported with `done`; some states take a second event,
/// so replay can show it refuses every step but the recorded one.
const VM_DEFINITION_YAML: &str = "\
kind: StateMachine
name: vm
description: A VM being built, configured and put in service.
instances: [vm-1]
states:
  - name: installing
    on: { done: configuring, skip: serving }
  - name: configuring
    on: { done: serving, fail: broken }
  - name: serving
    on: { done: retired }
  - name: broken
    final: true
  - name: retired
    final: true
";

/// A group of three replicas that move on together once each has reported (a barrier).
const REPLICAS_DEFINITION_YAML: &str = "\
kind: StateMachine
name: replicas
instances: [replicas]
states:
  - name: installing
    on: { done: { to: serving, count: 3 } }
  - name: serving
    final: true
";

/// A database and an app VM whose `deploy` step waits for the database to serve.
const GUARDED_DEFINITIONS_YAML: &str = "\
kind: StateMachine
name: db
instances: [db]
states:
  - name: installing
    on: { done: serving }
  - name: serving
    final: true
---
kind: StateMachine
name: app
instances: [app-1]
states:
  - name: deploy
    guard:
      - machine: db
        in: serving
    on: { done: running }
  - name: running
    final: true
";

/// A machine that soaks for 2 seconds, then moves on by itself.
const SOAK_DEFINITION_YAML: &str = "\
kind: StateMachine
name: soak
instances: [soak-1]
states:
  - name: soaking
    timer: { after: 2s, to: done }
  - name: done
    final: true
";

/// Starts a server with the VM definition applied (machine `vm-1` in `installing`).
async fn start_with_vm() -> TestServer {
    let server = common::start().await;
    server.apply("vm.yaml", VM_DEFINITION_YAML).await;
    server
}

fn etag(answer: &common::Answer) -> String {
    answer
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no ETag on {answer:?}"))
        .to_string()
}

// ---- /machines/{id}/state ----

#[tokio::test]
async fn native_check_answers_200_for_the_current_state_with_an_etag() {
    let server = start_with_vm().await;
    let answer = server.get("/machines/vm-1/state?state=installing").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "installing");
    assert_eq!(etag(&answer), "\"1\"", "a new machine is at version 1");

    let answer = server
        .send(
            Method::HEAD,
            "/machines/vm-1/state?state=installing",
            None,
            None,
        )
        .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, ""),
        "HEAD"
    );
}

#[tokio::test]
async fn native_check_answers_406_with_a_json_reason_for_another_state() {
    let server = start_with_vm().await;
    let answer = server.get("/machines/vm-1/state?state=configuring").await;
    assert_eq!(answer.status, StatusCode::NOT_ACCEPTABLE);
    let error = &answer.json()["error"];
    assert_eq!(error["code"], "not_current", "{error}");
    assert_eq!(
        error["current"], "installing",
        "the answer names the current state: {error}"
    );
}

#[tokio::test]
async fn native_check_answers_400_for_a_missing_or_empty_state() {
    let server = start_with_vm().await;
    for path in [
        "/machines/vm-1/state",
        "/machines/vm-1/state?state=",
        "/machines/vm-1/state?State=installing",
    ] {
        for method in [Method::GET, Method::PUT] {
            let answer = server.send(method.clone(), path, None, None).await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "{method} {path}: {}",
                answer.body
            );
            assert_eq!(answer.error_code(), "bad_request", "{method} {path}");
        }
    }
}

#[tokio::test]
async fn native_check_answers_404_for_an_unknown_machine_or_state() {
    let server = start_with_vm().await;
    for method in [Method::GET, Method::PUT] {
        let answer = server
            .send(
                method.clone(),
                "/machines/vm-404/state?state=installing",
                None,
                None,
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{method} unknown machine"
        );
        assert_eq!(
            answer.error_code(),
            "not_found",
            "{method} unknown machine: {}",
            answer.body
        );

        let answer = server
            .send(
                method.clone(),
                "/machines/vm-1/state?state=instaling",
                None,
                None,
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{method} unknown state"
        );
        assert_eq!(
            answer.error_code(),
            "unknown_state",
            "{method} unknown state: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn native_report_moves_the_machine_and_answers_the_reported_state() {
    let server = start_with_vm().await;
    let answer = server.put("/machines/vm-1/state?state=installing").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "installing")
    );
    assert_eq!(etag(&answer), "\"2\"", "the ETag is the new version");
    assert_eq!(
        server
            .get("/machines/vm-1/state?state=configuring")
            .await
            .status,
        StatusCode::OK
    );

    let answer = server.put("/machines/vm-1/state?state=installing").await;
    assert_eq!(
        answer.status,
        StatusCode::NOT_ACCEPTABLE,
        "a report of a state left: {}",
        answer.body
    );
    assert_eq!(answer.error_code(), "not_current");

    let answer = server
        .put("/machines/vm-1/state?state=configuring&event=reboot")
        .await;
    assert_eq!(
        answer.status,
        StatusCode::CONFLICT,
        "an event the state does not take"
    );
    assert_eq!(answer.error_code(), "no_transition");

    let answer = server
        .put("/machines/vm-1/state?state=configuring&event=fail")
        .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "another event of the state: {}",
        answer.body
    );
    assert_eq!(server.stored_state("vm-1").await, "broken");
}

#[tokio::test]
async fn native_report_on_a_final_state_answers_409() {
    let server = start_with_vm().await;
    server.put("/machines/vm-1/state?state=installing").await;
    server
        .put("/machines/vm-1/state?state=configuring&event=fail")
        .await;
    let answer = server.get("/machines/vm-1/state?state=broken").await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "a final state answers yes to checks"
    );
    let answer = server.put("/machines/vm-1/state?state=broken").await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert_eq!(answer.error_code(), "final_state");
}

#[tokio::test]
async fn native_report_with_if_match_applies_only_at_that_version() {
    let server = start_with_vm().await;
    let check = server.get("/machines/vm-1/state?state=installing").await;
    let version_1 = etag(&check);

    let stale = server
        .client
        .put(server.url("/machines/vm-1/state?state=installing"))
        .header("if-match", "\"7\"")
        .send()
        .await
        .expect("PUT with a stale If-Match");
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    let error: Value = stale.json().await.expect("a JSON error");
    assert_eq!(error["error"]["code"], "version_mismatch", "{error}");
    assert_eq!(
        server.stored_state("vm-1").await,
        "installing",
        "a refused report changes nothing"
    );

    let fresh = server
        .client
        .put(server.url("/machines/vm-1/state?state=installing"))
        .header("if-match", &version_1)
        .send()
        .await
        .expect("PUT with the current If-Match");
    assert_eq!(fresh.status(), StatusCode::OK);

    // The same If-Match again lost the race: the version moved on.
    let again = server
        .client
        .put(server.url("/machines/vm-1/state?state=configuring"))
        .header("if-match", &version_1)
        .send()
        .await
        .expect("PUT with a used If-Match");
    assert_eq!(again.status(), StatusCode::CONFLICT);

    let malformed = server
        .client
        .put(server.url("/machines/vm-1/state?state=configuring"))
        .header("if-match", "yesterday")
        .send()
        .await
        .expect("PUT with a malformed If-Match");
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
}

// ---- Barriers, guards and timers ----

#[tokio::test]
async fn barrier_moves_after_three_distinct_reporters_and_counts_each_once() {
    let server = common::start().await;
    server
        .apply("replicas.yaml", REPLICAS_DEFINITION_YAML)
        .await;
    let report =
        |reporter: &str| format!("/machines/replicas/state?state=installing&reporter={reporter}");

    for _ in 0..2 {
        let answer = server.put(&report("replica-1")).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "a repeated report is accepted: {}",
            answer.body
        );
    }
    let machine = server.machine("replicas").await;
    assert_eq!(
        machine["counter"], 1,
        "the same reporter twice counts once: {machine}"
    );
    assert_eq!(machine["reporters"], json!(["replica-1"]));

    assert_eq!(
        server.put(&report("replica-2")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        server
            .get("/machines/replicas/state?state=installing")
            .await
            .status,
        StatusCode::OK,
        "2 of 3"
    );
    assert_eq!(
        server.put(&report("replica-2")).await.status,
        StatusCode::OK
    );
    assert_eq!(server.machine("replicas").await["counter"], 2);

    assert_eq!(
        server.put(&report("replica-3")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        server
            .get("/machines/replicas/state?state=serving")
            .await
            .status,
        StatusCode::OK,
        "3 of 3"
    );
    assert_eq!(server.stored_state("replicas").await, "serving");
}

#[tokio::test]
async fn guard_refuses_the_app_until_the_database_serves() {
    let server = common::start().await;
    server
        .apply("three-tier.yaml", GUARDED_DEFINITIONS_YAML)
        .await;

    let answer = server.get("/machines/app-1/state?state=deploy").await;
    assert_eq!(answer.status, StatusCode::NOT_ACCEPTABLE);
    let error = &answer.json()["error"];
    assert_eq!(error["code"], "guard", "{error}");
    assert_eq!(
        error["machine"], "db",
        "the answer names the machine waited for: {error}"
    );
    assert_eq!(
        error["state"], "installing",
        "and the state it is in: {error}"
    );

    let answer = server.put("/machines/app-1/state?state=deploy").await;
    assert_eq!(
        answer.status,
        StatusCode::NOT_ACCEPTABLE,
        "a report is refused too: {}",
        answer.body
    );
    assert_eq!(answer.error_code(), "guard");
    assert_eq!(server.stored_state("app-1").await, "deploy");

    assert_eq!(
        server
            .put("/machines/db/state?state=installing")
            .await
            .status,
        StatusCode::OK
    );
    let answer = server.get("/machines/app-1/state?state=deploy").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "deploy"),
        "the guard holds now"
    );
    assert_eq!(
        server
            .put("/machines/app-1/state?state=deploy")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(server.stored_state("app-1").await, "running");
}

#[tokio::test]
async fn timer_after_two_seconds_fires_through_the_timer_worker() {
    let server = common::start().await;
    server.apply("soak.yaml", SOAK_DEFINITION_YAML).await;
    let machine = server.machine("soak-1").await;
    assert!(
        machine["timer_due_at"].is_string(),
        "the timer is armed: {machine}"
    );

    server.clock.advance_ms(1_999);
    assert_eq!(
        server
            .get("/machines/soak-1/state?state=soaking")
            .await
            .status,
        StatusCode::OK,
        "1.999 s in"
    );
    // Give the worker a few polls: it must not fire early.
    tokio::time::sleep(std::time::Duration::from_millis(
        3 * levee_server::timers::TIMER_POLL_INTERVAL_MS,
    ))
    .await;
    assert_eq!(
        server.stored_state("soak-1").await,
        "soaking",
        "not due yet"
    );

    server.clock.advance_ms(1);
    server.wait_for_stored_state("soak-1", "done").await;
    assert_eq!(
        server.get("/machines/soak-1/state?state=done").await.status,
        StatusCode::OK
    );
    let timers: Vec<Value> = server
        .history("soak-1")
        .await
        .into_iter()
        .filter(|e| e["kind"] == "timer")
        .collect();
    assert_eq!(timers.len(), 1, "one timer move: {timers:?}");
    assert_eq!(
        timers[0]["at_ms"],
        common::START_MS + 2_000,
        "dated at its due time"
    );
    assert_eq!(timers[0]["actor"], "timer");
}

// ---- Definitions ----

#[tokio::test]
async fn apply_stores_a_definition_and_creates_its_instances() {
    let server = common::start().await;
    let applied = server.apply("vm.yaml", VM_DEFINITION_YAML).await;
    assert_eq!(applied["definitions"][0]["name"], "vm", "{applied}");
    assert_eq!(applied["definitions"][0]["kind"], "StateMachine");
    assert_eq!(applied["definitions"][0]["version"], 1);
    assert_eq!(applied["definitions"][0]["changed"], true);
    assert_eq!(applied["created"], json!(["vm-1"]));

    let listed = server
        .get("/api/v1/definitions?kind=StateMachine")
        .await
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let one = server.get("/api/v1/definitions/StateMachine/vm").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(
        one.json()["source"],
        VM_DEFINITION_YAML,
        "the YAML is kept as written"
    );
    assert_eq!(
        server
            .get("/api/v1/definitions/StateMachine/nope")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn apply_with_a_typo_answers_422_naming_file_line_and_column() {
    let server = common::start().await;
    let typo = "\
kind: StateMachine
name: typo
states:
  - name: start
    tragets: end
    on: { done: end }
  - name: end
    final: true
";
    let answer = server.apply_as(None, "deploy/typo.yaml", typo).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    let error = &answer.json()["error"];
    assert_eq!(error["code"], "invalid_definition", "{error}");
    let diagnostics = error["diagnostics"].as_array().cloned().unwrap_or_default();
    let found = diagnostics
        .iter()
        .find(|d| d["message"].as_str().is_some_and(|m| m.contains("tragets")));
    let found = found.unwrap_or_else(|| panic!("no diagnostic names `tragets`: {error}"));
    assert_eq!(found["file"], "deploy/typo.yaml", "{found}");
    assert_eq!(found["line"], 5, "{found}");
    assert_eq!(found["column"], 5, "{found}");
    assert_eq!(found["severity"], "error", "{found}");

    let listed = server.get("/api/v1/definitions").await.json();
    assert_eq!(listed, json!([]), "nothing was stored");
    assert_eq!(
        server.get("/api/v1/machines").await.json(),
        json!([]),
        "no machine was created"
    );
}

#[tokio::test]
async fn applying_the_same_content_again_makes_no_new_version() {
    let server = common::start().await;
    server.apply("vm.yaml", VM_DEFINITION_YAML).await;
    let again = server.apply("vm.yaml", VM_DEFINITION_YAML).await;
    assert_eq!(again["definitions"][0]["version"], 1, "{again}");
    assert_eq!(again["definitions"][0]["changed"], false, "{again}");
    assert_eq!(again["created"], json!([]), "vm-1 exists already");

    let changed = VM_DEFINITION_YAML.replace("put in service.", "put in service, again.");
    let newer = server.apply("vm.yaml", &changed).await;
    assert_eq!(
        newer["definitions"][0]["version"], 2,
        "different content is a new version: {newer}"
    );
    assert_eq!(newer["definitions"][0]["changed"], true);
}

#[tokio::test]
async fn a_new_version_dropping_a_state_in_use_answers_409() {
    let server = start_with_vm().await;
    server.put("/machines/vm-1/state?state=installing").await;
    assert_eq!(server.stored_state("vm-1").await, "configuring");
    let without_configuring = "\
kind: StateMachine
name: vm
instances: [vm-1]
states:
  - name: installing
    on: { done: serving }
  - name: serving
    final: true
";
    let answer = server.apply_as(None, "vm.yaml", without_configuring).await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    let error = &answer.json()["error"];
    assert_eq!(error["code"], "states_in_use", "{error}");
    assert_eq!(
        error["machines"],
        json!([{ "machine": "vm-1", "state": "configuring" }]),
        "{error}"
    );

    let stored = server
        .get("/api/v1/definitions/StateMachine/vm")
        .await
        .json();
    assert_eq!(stored["version"], 1, "the old version stays: {stored}");
    assert_eq!(
        server
            .get("/machines/vm-1/state?state=configuring")
            .await
            .status,
        StatusCode::OK
    );
}

// ---- Machines, events, history, replay ----

#[tokio::test]
async fn machines_are_created_listed_and_paged() {
    let server = common::start().await;
    server
        .apply("counter.yaml", common::COUNTER_DEFINITION_YAML)
        .await;
    let ids = ["m-1", "m-2", "m-3", "m-4", "m-5"];
    let specs: Vec<(&str, &str, Option<&str>)> =
        ids.iter().map(|id| (*id, "counter", Some("web"))).collect();
    let created = server.create_machines(&specs).await;
    assert_eq!(
        created["created"].as_array().map(Vec::len),
        Some(5),
        "{created}"
    );
    assert_eq!(created["created"][0]["state"], "counting");
    assert_eq!(created["created"][0]["group"], "web");

    let again = server
        .create_machines(&[("m-1", "counter", None), ("m-6", "counter", None)])
        .await;
    assert_eq!(again["existing"], json!(["m-1"]), "{again}");
    assert_eq!(again["created"][0]["id"], "m-6");

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _page in 0..10 {
        let path = match &after {
            None => "/api/v1/machines?definition=counter&limit=2".to_string(),
            Some(last) => format!("/api/v1/machines?definition=counter&limit=2&after={last}"),
        };
        let page = server.get(&path).await.json();
        let page = page.as_array().cloned().unwrap_or_default();
        assert!(page.len() <= 2, "a page holds at most `limit` machines");
        let Some(last) = page.last() else { break };
        after = last["id"].as_str().map(str::to_string);
        seen.extend(
            page.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string)),
        );
    }
    assert_eq!(
        seen,
        ["m-1", "m-2", "m-3", "m-4", "m-5", "m-6"],
        "every machine once, in id order"
    );

    let web = server.get("/api/v1/machines?group=web").await.json();
    assert_eq!(
        web.as_array().map(Vec::len),
        Some(5),
        "the group filter: {web}"
    );

    let unknown = server
        .send(
            Method::POST,
            "/api/v1/machines",
            None,
            Some(&json!({ "machines": [{ "id": "x-1", "definition": "nope" }] })),
        )
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        unknown.body
    );
    let bad_id = server
        .send(
            Method::POST,
            "/api/v1/machines",
            None,
            Some(&json!({ "machines": [{ "id": "bad id", "definition": "counter" }] })),
        )
        .await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST, "{}", bad_id.body);
    assert_eq!(
        server.get("/api/v1/machines?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        server.get("/api/v1/machines?limit=1001").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        server.get("/api/v1/machines/nope").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn events_are_the_json_form_of_reports() {
    let server = common::start().await;
    server
        .apply("replicas.yaml", REPLICAS_DEFINITION_YAML)
        .await;
    let event = |reporter: &str| json!({ "state": "installing", "reporter": reporter });

    let first = server
        .send(
            Method::POST,
            "/api/v1/machines/replicas/events",
            None,
            Some(&event("r-1")),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let first = first.json();
    assert_eq!(first["outcome"], "applied");
    assert_eq!(first["machine"]["counter"], 1);
    assert_eq!(first["history"][0]["kind"], "counted");
    assert_eq!(first["history"][0]["reporter"], "r-1");

    let again = server
        .send(
            Method::POST,
            "/api/v1/machines/replicas/events",
            None,
            Some(&event("r-1")),
        )
        .await
        .json();
    assert_eq!(again["outcome"], "unchanged", "{again}");
    assert_eq!(again["machine"]["counter"], 1);

    let wrong = server
        .send(
            Method::POST,
            "/api/v1/machines/replicas/events",
            None,
            Some(&json!({ "state": "serving" })),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::NOT_ACCEPTABLE, "{}", wrong.body);
    let unknown_field = server
        .send(
            Method::POST,
            "/api/v1/machines/replicas/events",
            None,
            Some(&json!({ "state": "installing", "stat": 1 })),
        )
        .await;
    assert_eq!(
        unknown_field.status,
        StatusCode::BAD_REQUEST,
        "{}",
        unknown_field.body
    );
}

#[tokio::test]
async fn history_lists_every_step_as_json() {
    let server = start_with_vm().await;
    server.clock.advance_ms(1_000);
    server.put("/machines/vm-1/state?state=installing").await;
    server.clock.advance_ms(1_000);
    server.put("/machines/vm-1/state?state=configuring").await;

    let history = server.history("vm-1").await;
    let summary: Vec<(String, String, String)> = history
        .iter()
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap_or_default().to_string();
            (text("kind"), text("from"), text("to"))
        })
        .collect();
    let expected = [
        ("created", "", "installing"),
        ("transition", "installing", "configuring"),
        ("transition", "configuring", "serving"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(k, f, t)| (k.to_string(), f.to_string(), t.to_string()))
        .collect();
    assert_eq!(summary, expected);
    assert_eq!(history[1]["at_ms"], common::START_MS + 1_000);
    assert_eq!(history[2]["actor"], "anonymous");
    assert_eq!(history[2]["event"], "done");
    let seqs: Vec<i64> = history.iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq ascends: {seqs:?}"
    );

    let after = server
        .get(&format!("/api/v1/machines/vm-1/history?after={}", seqs[1]))
        .await
        .json();
    assert_eq!(
        after.as_array().map(Vec::len),
        Some(1),
        "paging by seq: {after}"
    );
}

#[tokio::test]
async fn replay_answers_only_the_recorded_next_step_then_carries_on() {
    let server = start_with_vm().await;
    server.put("/machines/vm-1/state?state=installing").await;
    server.put("/machines/vm-1/state?state=configuring").await;
    assert_eq!(
        server.stored_state("vm-1").await,
        "serving",
        "the last-known state"
    );

    let replay = server
        .send(Method::POST, "/api/v1/machines/vm-1/replay", None, None)
        .await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    let replay = replay.json();
    assert_eq!(
        replay["machine"]["state"], "installing",
        "back at the start: {replay}"
    );
    assert_eq!(replay["machine"]["replay"]["next_state"], "installing");
    assert_eq!(replay["machine"]["replay"]["total"], 2);

    assert_eq!(
        server
            .get("/machines/vm-1/state?state=installing")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        server
            .get("/machines/vm-1/state?state=serving")
            .await
            .status,
        StatusCode::NOT_ACCEPTABLE
    );
    let other_event = server
        .put("/machines/vm-1/state?state=installing&event=skip")
        .await;
    assert_eq!(
        other_event.status,
        StatusCode::NOT_ACCEPTABLE,
        "only the recorded event: {}",
        other_event.body
    );
    assert_eq!(other_event.error_code(), "replay_mismatch");
    assert_eq!(
        server
            .put("/machines/vm-1/state?state=installing")
            .await
            .status,
        StatusCode::OK
    );

    let other_event = server
        .put("/machines/vm-1/state?state=configuring&event=fail")
        .await;
    assert_eq!(
        other_event.status,
        StatusCode::NOT_ACCEPTABLE,
        "{}",
        other_event.body
    );
    assert_eq!(server.stored_state("vm-1").await, "configuring");
    assert_eq!(
        server
            .put("/machines/vm-1/state?state=configuring")
            .await
            .status,
        StatusCode::OK
    );

    let machine = server.machine("vm-1").await;
    assert_eq!(
        machine["state"], "serving",
        "back at the last-known state: {machine}"
    );
    assert!(machine["replay"].is_null(), "the replay is over: {machine}");
    let kinds: Vec<String> = server
        .history("vm-1")
        .await
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect();
    assert!(
        kinds.ends_with(&[
            "replay_step".into(),
            "replay_step".into(),
            "replay_finished".into()
        ]),
        "{kinds:?}"
    );

    // Carrying on normally: the next step is a new one, not in the recording.
    assert_eq!(
        server
            .put("/machines/vm-1/state?state=serving")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(server.stored_state("vm-1").await, "retired");
}

#[tokio::test]
async fn replay_with_nothing_recorded_answers_409() {
    let server = start_with_vm().await;
    let answer = server
        .send(Method::POST, "/api/v1/machines/vm-1/replay", None, None)
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert_eq!(answer.error_code(), "nothing_to_replay");
}

#[tokio::test]
async fn history_exported_as_shell_holds_every_step() {
    let server = start_with_vm().await;
    server.put("/machines/vm-1/state?state=installing").await;
    server.put("/machines/vm-1/state?state=configuring").await;
    let answer = server
        .get("/api/v1/machines/vm-1/history?format=shell")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let script = answer.body;
    assert!(script.starts_with("#!/bin/sh"), "{script}");
    assert!(script.contains("MACHINE=vm-1"), "{script}");
    let first = script
        .find("levee PUT installing done")
        .unwrap_or_else(|| panic!("no first step: {script}"));
    let second = script
        .find("levee PUT configuring done")
        .unwrap_or_else(|| panic!("no second step: {script}"));
    assert!(first < second, "the steps are in order: {script}");
    assert!(
        !script.contains("PUT serving"),
        "only recorded steps: {script}"
    );

    let unknown = server
        .get("/api/v1/machines/vm-1/history?format=powershell")
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
}

// ---- Service endpoints and errors ----

#[tokio::test]
async fn openapi_document_is_json_listing_the_native_endpoint() {
    let server = common::start().await;
    let answer = server.get("/api/v1/openapi.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    let document = answer.json();
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/machines/{id}/state",
        "/state",
        "/api/v1/definitions",
        "/api/v1/machines",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} is described; paths: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    assert!(paths["/machines/{id}/state"]["get"].is_object());
    assert!(paths["/machines/{id}/state"]["put"].is_object());
}

#[tokio::test]
async fn metrics_health_and_readiness_answer() {
    let server = start_with_vm().await;
    server.get("/machines/vm-1/state?state=installing").await;
    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.body.contains("levee_http_requests_total"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l.starts_with("levee_http_requests_total{")
                && l.contains("/machines/{id}/state")),
        "counted by route template, not by raw path: {}",
        metrics.body
    );
    assert!(!metrics.body.contains("vm-1"), "no raw ids in labels");
    assert!(
        metrics
            .body
            .contains("levee_http_request_duration_seconds_bucket{"),
        "request durations are a bucketed histogram (bounded memory, aggregatable): {}",
        metrics.body
    );

    let health = server.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
}

#[tokio::test]
async fn a_body_that_is_not_json_answers_400_with_a_json_error() {
    let server = common::start().await;
    let answer = server
        .client
        .post(server.url("/api/v1/definitions"))
        .header("content-type", "application/json")
        .body("{ \"files\": [ { \"name\": ")
        .send()
        .await
        .expect("POST broken JSON");
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let error: Value = answer.json().await.expect("the error is JSON");
    assert!(error["error"]["code"].is_string(), "{error}");
    assert!(error["error"]["message"].is_string(), "{error}");

    let wrong_shape = server
        .send(
            Method::POST,
            "/api/v1/definitions",
            None,
            Some(&json!({ "file": [] })),
        )
        .await;
    assert_eq!(
        wrong_shape.status,
        StatusCode::BAD_REQUEST,
        "{}",
        wrong_shape.body
    );
    assert!(wrong_shape.json()["error"]["code"].is_string());
}

#[tokio::test]
async fn a_body_over_the_size_limit_answers_413_with_a_json_error() {
    let server = common::start().await;
    let content = "#".repeat(levee_server::MAX_REQUEST_BODY_BYTES + 1);
    let body = json!({ "files": [{ "name": "huge.yaml", "content": content }] });
    let answer = server
        .send(Method::POST, "/api/v1/definitions", None, Some(&body))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.body
    );
    assert_eq!(answer.error_code(), "too_large", "{}", answer.body);
    assert_eq!(server.get("/api/v1/definitions").await.json(), json!([]));
}

#[tokio::test]
async fn unknown_routes_answer_404_with_a_json_error() {
    let server = common::start().await;
    let answer = server.get("/api/v1/nothing-here").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), "not_found");
    // Without `--machine`, `/state` says how to get one.
    let answer = server.get("/state?state=green_state").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    assert!(answer.body.contains("--machine"), "{}", answer.body);
}

#[tokio::test]
async fn a_runbook_and_a_machine_in_one_file_are_stored_together() {
    let server = common::start().await;
    let files = "\
kind: Runbook
name: noop
tasks:
  - id: say
    stage: log
    with: { message: hello }
---
kind: StateMachine
name: side
states:
  - name: only
    final: true
";
    let answer = server.apply("mixed.yaml", files).await;
    let kinds: Vec<(String, String)> = answer["definitions"]
        .as_array()
        .expect("definitions")
        .iter()
        .map(|d| (d["kind"].to_string(), d["name"].to_string()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("\"StateMachine\"".to_string(), "\"side\"".to_string()),
            ("\"Runbook\"".to_string(), "\"noop\"".to_string()),
        ]
    );
    let definitions = server.get("/api/v1/definitions").await.json();
    assert_eq!(
        definitions.as_array().map(Vec::len),
        Some(2),
        "{definitions}"
    );
}
