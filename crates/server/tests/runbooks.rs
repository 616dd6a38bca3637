//! Runbooks and task templates over HTTP: applying them (linked together with what is already
//! stored, all or nothing), listing them, and planning a run without side effects.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A template of two chained steps: a log line bounded to 2 s, then a 1 s wait.
const TEMPLATE_YAML: &str = "\
kind: TaskTemplate
name: announce
params:
  what: { required: true }
steps:
  - id: note
    stage: log
    timeout: 2s
    with: { message: \"starting {{ params.what }}\" }
  - id: settle
    stage: wait
    with: { duration: 1s }
";

/// A small DAG whose predicted durations are all known: `announce` (2 s + 1 s, chained), then
/// three drains in parallel (30 s, `settle` = 20 s by default, and a 10 s estimate), then
/// `verify` (a 10 s estimate).
const RUNBOOK_YAML: &str = "\
kind: Runbook
name: evacuate
description: Moves traffic away from a datacenter.
purpose: maintenance
params:
  dc: { required: true, description: The datacenter to empty. }
  settle: { type: duration, default: 20s }
tasks:
  - id: announce
    template: announce
    with: { what: \"evacuation of {{ params.dc }}\" }
  - id: drain-web
    stage: wait
    needs: [announce]
    with: { duration: 30s }
  - id: drain-db
    stage: wait
    needs: [announce]
    with: { duration: \"{{ params.settle }}\" }
  - id: drain-cache
    stage: log
    needs: [announce]
    with: { message: \"cache of {{ params.dc }} drained\" }
  - id: verify
    stage: log
    needs: [drain-web, drain-db, drain-cache]
    with: { message: done }
";

/// `nonesuch` is on line 5, column 15.
const UNKNOWN_TEMPLATE_YAML: &str = "\
kind: Runbook
name: broken
tasks:
  - id: first
    template: nonesuch
";

async fn plan(server: &TestServer, token: Option<&str>, name: &str, params: Value) -> Value {
    let answer = plan_answer(server, token, name, params).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "plan {name}: {}",
        answer.body
    );
    answer.json()
}

async fn plan_answer(
    server: &TestServer,
    token: Option<&str>,
    name: &str,
    params: Value,
) -> common::Answer {
    let path = format!("/api/v1/runbooks/{name}/plan");
    server
        .send(
            Method::POST,
            &path,
            token,
            Some(&json!({ "params": params })),
        )
        .await
}

/// Creates a token and returns its secret.
async fn create_token(
    server: &TestServer,
    as_token: Option<&str>,
    name: &str,
    role: &str,
) -> String {
    let body = json!({ "name": name, "role": role });
    let answer = server
        .send(Method::POST, "/api/v1/tokens", as_token, Some(&body))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.json()["secret"]
        .as_str()
        .expect("a secret")
        .to_string()
}

fn applied(answer: &Value) -> Vec<(String, String, i64, bool)> {
    answer["definitions"]
        .as_array()
        .expect("definitions")
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["name"].as_str().unwrap_or_default().to_string(),
                d["version"].as_i64().unwrap_or_default(),
                d["changed"].as_bool().unwrap_or_default(),
            )
        })
        .collect()
}

fn def(kind: &str, name: &str, version: i64, changed: bool) -> (String, String, i64, bool) {
    (kind.to_string(), name.to_string(), version, changed)
}

#[tokio::test]
async fn a_runbook_links_against_a_template_applied_earlier() {
    let server = common::start().await;
    let first = server.apply("template.yaml", TEMPLATE_YAML).await;
    assert_eq!(
        applied(&first),
        vec![def("TaskTemplate", "announce", 1, true)]
    );
    let second = server.apply("runbook.yaml", RUNBOOK_YAML).await;
    assert_eq!(applied(&second), vec![def("Runbook", "evacuate", 1, true)]);

    let again = server.apply("runbook.yaml", RUNBOOK_YAML).await;
    assert_eq!(
        applied(&again),
        vec![def("Runbook", "evacuate", 1, false)],
        "identical content makes no new version"
    );

    let runbooks = server.get("/api/v1/runbooks").await.json();
    assert_eq!(
        runbooks,
        json!([{
            "name": "evacuate",
            "version": 1,
            "description": "Moves traffic away from a datacenter.",
            "purpose": "maintenance",
            "recovery": null,
            "params": [
                { "name": "dc", "type": "string", "required": true, "default": null,
                  "description": "The datacenter to empty." },
                { "name": "settle", "type": "duration", "required": false, "default": "20s",
                  "description": null },
            ],
            "tasks": 6,
        }])
    );
    let audit = server.get("/api/v1/audit?limit=1000").await.json();
    let targets: Vec<&str> = audit
        .as_array()
        .expect("audit entries")
        .iter()
        .filter(|e| e["action"] == "definition.apply")
        .filter_map(|e| e["target"].as_str())
        .collect();
    assert!(targets.contains(&"announce"), "{audit}");
    assert!(targets.contains(&"evacuate"), "{audit}");
}

#[tokio::test]
async fn an_unknown_template_is_refused_with_its_place_and_nothing_is_stored() {
    let server = common::start().await;
    let machine = "\
kind: StateMachine
name: side
states:
  - name: only
    final: true
---
";
    let answer = server
        .apply_as(
            None,
            "broken.yaml",
            &format!("{machine}{UNKNOWN_TEMPLATE_YAML}"),
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert_eq!(answer.error_code(), "invalid_definition");
    let diagnostics = answer.json()["error"]["diagnostics"].clone();
    let first = &diagnostics[0];
    assert_eq!(first["file"], "broken.yaml", "{diagnostics}");
    assert_eq!(first["code"], "unknown-template", "{diagnostics}");
    // Six lines of the state machine come first.
    assert_eq!(
        (first["line"].as_u64(), first["column"].as_u64()),
        (Some(11), Some(15))
    );
    assert_eq!(
        server.get("/api/v1/definitions").await.json(),
        json!([]),
        "nothing stored, not even the state machine"
    );
}

#[tokio::test]
async fn a_template_that_breaks_a_stored_runbook_is_refused_naming_the_runbook() {
    let server = common::start().await;
    server.apply("template.yaml", TEMPLATE_YAML).await;
    server.apply("runbook.yaml", RUNBOOK_YAML).await;
    // The new version renames the parameter the stored runbook passes.
    let renamed = TEMPLATE_YAML.replace("what", "subject");
    let answer = server.apply_as(None, "template.yaml", &renamed).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    let error = answer.json()["error"].clone();
    assert_eq!(error["broken"], json!(["Runbook `evacuate`"]), "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("Runbook `evacuate`")),
        "{error}"
    );
    for diagnostic in error["diagnostics"].as_array().expect("diagnostics") {
        assert_eq!(diagnostic["file"], "runbook.yaml", "{diagnostic}");
        assert!(
            diagnostic["message"]
                .as_str()
                .is_some_and(|m| m.contains("stored Runbook `evacuate` (v1)")),
            "{diagnostic}"
        );
    }
    let stored = server
        .get("/api/v1/definitions/TaskTemplate/announce")
        .await
        .json();
    assert_eq!(stored["version"], 1, "the template is unchanged");

    // Fixing both in one request is accepted, all together.
    let runbook = RUNBOOK_YAML.replace("{ what:", "{ subject:");
    let body = json!({ "files": [
        { "name": "template.yaml", "content": renamed },
        { "name": "runbook.yaml", "content": runbook },
    ]});
    let answer = server
        .send(Method::POST, "/api/v1/definitions", None, Some(&body))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        applied(&answer.json()),
        vec![
            def("TaskTemplate", "announce", 2, true),
            def("Runbook", "evacuate", 2, true)
        ]
    );
}

#[tokio::test]
async fn a_plan_gives_waves_predictions_and_the_critical_path() {
    let server = common::start().await;
    server.apply("template.yaml", TEMPLATE_YAML).await;
    server.apply("runbook.yaml", RUNBOOK_YAML).await;
    let plan = plan(
        &server,
        None,
        "evacuate",
        json!({ "dc": "east", "settle": "45s" }),
    )
    .await;
    assert_eq!(plan["runbook"], "evacuate");
    assert_eq!(plan["version"], 1);
    assert_eq!(plan["params"], json!({ "dc": "east", "settle": "45s" }));
    assert_eq!(
        plan["waves"],
        json!([
            ["announce/note"],
            ["announce/settle"],
            ["drain-web", "drain-db", "drain-cache"],
            ["verify"],
        ])
    );
    let predicted: Vec<(&str, u64, &str)> = plan["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap_or_default(),
                t["predicted"]["duration_ms"].as_u64().unwrap_or_default(),
                t["predicted"]["source"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        predicted,
        vec![
            ("announce/note", 2_000, "estimate"),
            ("announce/settle", 1_000, "estimate"),
            ("drain-web", 30_000, "estimate"),
            ("drain-db", 45_000, "estimate"),
            ("drain-cache", 10_000, "estimate"),
            ("verify", 10_000, "estimate"),
        ]
    );
    assert_eq!(
        plan["critical_path"],
        json!({
            "tasks": ["announce/note", "announce/settle", "drain-db", "verify"],
            "length_ms": 58_000,
            "sequential_ms": 98_000,
            "speedup": 98_000.0 / 58_000.0,
        })
    );
    assert_eq!(
        plan["predicted"],
        json!({ "duration_ms": 58_000, "source": "estimate" })
    );
    let db = &plan["tasks"][3];
    assert_eq!(db["with"], json!({ "duration": "45s" }), "rendered");
    assert_eq!(db["needs"], json!(["announce/settle"]));
    assert_eq!(db["wave"], 2);
    assert_eq!(db["idempotent"], true, "waiting again is safe");
    assert_eq!(db["checks"], json!({ "pre": 0, "post": 0, "health": 0 }));
    assert_eq!(plan["tasks"][0]["timeout_ms"], 2_000);
    assert_eq!(
        plan["tasks"][4]["with"],
        json!({ "message": "cache of east drained" })
    );
}

#[tokio::test]
async fn bad_parameters_are_all_reported_and_unknown_runbooks_are_not_found() {
    let server = common::start().await;
    server.apply("template.yaml", TEMPLATE_YAML).await;
    server.apply("runbook.yaml", RUNBOOK_YAML).await;
    let answer = plan_answer(
        &server,
        None,
        "evacuate",
        json!({ "settle": "soon", "region": "eu" }),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert_eq!(answer.error_code(), "invalid_params");
    let mut codes: Vec<(String, String)> = answer.json()["error"]["params"]
        .as_array()
        .expect("params")
        .iter()
        .map(|e| {
            (
                e["param"].as_str().unwrap_or_default().to_string(),
                e["code"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![
            ("dc".to_string(), "missing-param".to_string()),
            ("region".to_string(), "unknown-param".to_string()),
            ("settle".to_string(), "invalid-param-value".to_string()),
        ]
    );
    let missing = plan_answer(&server, None, "nonesuch", json!({})).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
}

#[tokio::test]
async fn a_viewer_may_plan_and_planning_changes_nothing() {
    let server = common::start().await;
    server.apply("template.yaml", TEMPLATE_YAML).await;
    server.apply("runbook.yaml", RUNBOOK_YAML).await;
    let admin = create_token(&server, None, "root", "admin").await;
    let viewer = create_token(&server, Some(&admin), "watcher", "viewer").await;
    let (admin, viewer) = (admin.as_str(), viewer.as_str());
    let audit = |token| server.send(Method::GET, "/api/v1/audit?limit=1000", Some(token), None);
    let definitions = |token| server.send(Method::GET, "/api/v1/definitions", Some(token), None);
    let audit_before = audit(admin).await.json();
    let definitions_before = definitions(admin).await.json();

    let plan = plan(&server, Some(viewer), "evacuate", json!({ "dc": "west" })).await;
    assert_eq!(plan["critical_path"]["length_ms"], 43_000);
    let listed = server
        .send(Method::GET, "/api/v1/runbooks", Some(viewer), None)
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);

    assert_eq!(audit(admin).await.json(), audit_before);
    assert_eq!(definitions(admin).await.json(), definitions_before);
    let anonymous = plan_answer(&server, None, "evacuate", json!({ "dc": "west" })).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_openapi_document_describes_runbooks_and_plans() {
    let server = common::start().await;
    let document = server.get("/api/v1/openapi.json").await.json();
    assert!(document["paths"]["/api/v1/runbooks"]["get"].is_object());
    assert!(document["paths"]["/api/v1/runbooks/{name}/plan"]["post"].is_object());
    assert!(document["components"]["schemas"]["PlanView"].is_object());
}
