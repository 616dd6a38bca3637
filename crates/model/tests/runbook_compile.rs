//! Runbooks that link: a datacenter drain built from a task template and an included service
//! runbook, expanded to the exact flat task list the engine runs; then parameters bound and
//! rendered as at run start.

use std::collections::BTreeMap;

use levee_model::{
    CheckKind, Definition, LoadContext, Purpose, ResolvedRunbook, RetryPolicy, StageCatalog,
    Threshold, bind_params, link, load_documents, render, render_text,
};
use serde_json::json;

const NOW_MS: i64 = 1_735_689_600_000;

fn catalog() -> StageCatalog {
    StageCatalog::new(&[
        (
            "shell",
            &[
                ("command", true),
                ("env", false),
                ("cwd", false),
                ("timeout", false),
            ],
        ),
        ("wait", &[("duration", true)]),
        (
            "http",
            &[
                ("method", false),
                ("url", true),
                ("body", false),
                ("headers", false),
                ("expect_status", false),
                ("timeout", false),
            ],
        ),
        ("log", &[("message", true)]),
        (
            "approval",
            &[
                ("approvers", false),
                ("not_starter", false),
                ("expires", false),
            ],
        ),
        (
            "state",
            &[
                ("machine", true),
                ("advance", false),
                ("event", false),
                ("wait_for", false),
                ("timeout", false),
            ],
        ),
    ])
}

const TEMPLATES: &str = "\
kind: TaskTemplate
name: traffic-shift
description: Shift a service's traffic away in paced steps.
params:
  service: { required: true }
  from: { required: true }
  settle: { type: duration, default: 30s }
steps:
  - id: announce
    stage: log
    with: { message: \"shifting {{ params.service }} out of {{ params.from }}\" }
  - id: shift
    stage: http
    with:
      method: POST
      url: \"http://lb.internal/{{ params.service }}/weights\"
      body: { from: \"{{ params.from }}\", weight: 0 }
    retries: { max: 3, backoff: 5s, max_backoff: 1m }
  - id: settle
    stage: wait
    with: { duration: \"{{ params.settle }}\" }
";

const WEB: &str = "\
kind: Runbook
name: drain-web
purpose: drain
recovery: restore-web
params:
  dc: { required: true }
tasks:
  - id: preflight
    stage: shell
    with: { command: [levee-capacity, --without, \"{{ params.dc }}\"] }
  - id: shift
    template: traffic-shift
    needs: [preflight]
    with: { service: web, from: \"{{ params.dc }}\" }
    health:
      - metric: { query: 'max(web_error_ratio{dc=\"{{ params.dc }}\"})', below: 0.01 }
    timeout: 30m
---
kind: Runbook
name: restore-web
purpose: restore
params:
  dc: { required: true }
tasks:
  - id: restore
    stage: log
    with: { message: \"restore web in {{ params.dc }}\" }
";

const EVACUATE: &str = "\
kind: Runbook
name: evacuate-dc
description: Drain every service out of one datacenter.
purpose: drain
recovery: restore-dc
max_parallel: 4
params:
  dc: { type: enum, values: [east, west], required: true }
  pause: { type: duration, default: 5s }
  rehearsal: { type: bool, default: false }
tasks:
  - id: preflight
    stage: approval
    with: { approvers: [sre], not_starter: true }
    pre:
      - state: { machine: \"dc-{{ params.dc }}\", in: [serving, degraded] }
  - id: pause
    stage: wait
    needs: [preflight]
    with: { duration: \"{{ params.pause }}\" }
    retries: 2
  - id: confirm
    stage: log
    needs: [web]
    after: [web/shift/shift]
    with: { message: \"web drained from {{ params.dc }} (rehearsal: {{ params.rehearsal }})\" }
    post:
      - http: { url: \"http://status/{{ params.dc }}\", status: 200, json: { path: web.drained, equals: true } }
include:
  - id: web
    runbook: drain-web
    with: { dc: \"{{ params.dc }}\" }
    needs: [pause]
---
kind: Runbook
name: restore-dc
include:
  - id: web
    runbook: restore-web
    with: { dc: east }
";

fn linked() -> Vec<ResolvedRunbook> {
    let ctx = LoadContext::new(NOW_MS, jiff::tz::TimeZone::UTC);
    let mut definitions: Vec<Definition> = Vec::new();
    for (file, source) in [
        ("templates.yaml", TEMPLATES),
        ("web.yaml", WEB),
        ("evacuate.yaml", EVACUATE),
    ] {
        definitions.extend(load_documents(file, source, &ctx).unwrap_or_else(|errors| {
            panic!("{file} loads: {errors:#?}");
        }));
    }
    link(&definitions, &catalog()).unwrap_or_else(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("links:\n{}", lines.join("\n"))
    })
}

fn evacuation() -> ResolvedRunbook {
    linked()
        .into_iter()
        .find(|r| r.name == "evacuate-dc")
        .expect("the evacuation runbook")
}

#[test]
fn every_runbook_links_in_input_order() {
    let names: Vec<String> = linked().into_iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        ["drain-web", "restore-web", "evacuate-dc", "restore-dc"]
    );
}

#[test]
fn a_datacenter_drain_expands_to_a_flat_task_list() {
    let runbook = evacuation();
    assert_eq!(runbook.purpose, Purpose::Drain);
    assert_eq!(runbook.recovery.as_deref(), Some("restore-dc"));
    assert_eq!(runbook.max_parallel, Some(4));
    let flat: Vec<(&str, &str, Vec<&str>, Vec<&str>)> = runbook
        .tasks
        .iter()
        .map(|t| {
            (
                t.id.as_str(),
                t.stage.as_str(),
                t.needs.iter().map(String::as_str).collect(),
                t.after.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let expected: Vec<(&str, &str, Vec<&str>, Vec<&str>)> = vec![
        ("preflight", "approval", vec![], vec![]),
        ("pause", "wait", vec!["preflight"], vec![]),
        ("web/preflight", "shell", vec!["pause"], vec![]),
        ("web/shift/announce", "log", vec!["web/preflight"], vec![]),
        (
            "web/shift/shift",
            "http",
            vec!["web/shift/announce"],
            vec![],
        ),
        ("web/shift/settle", "wait", vec!["web/shift/shift"], vec![]),
        (
            "confirm",
            "log",
            vec!["web/shift/settle"],
            vec!["web/shift/shift"],
        ),
    ];
    assert_eq!(flat, expected);
}

#[test]
fn placeholders_of_included_runbooks_and_templates_become_the_includers() {
    let runbook = evacuation();
    let task = |id: &str| runbook.task(id).unwrap_or_else(|| panic!("task {id}"));
    assert_eq!(
        task("web/preflight").with,
        json!({ "command": ["levee-capacity", "--without", "{{ params.dc }}"] })
    );
    assert_eq!(
        task("web/shift/announce").with,
        json!({ "message": "shifting web out of {{ params.dc }}" })
    );
    assert_eq!(
        task("web/shift/shift").with,
        json!({
            "method": "POST",
            "url": "http://lb.internal/web/weights",
            "body": { "from": "{{ params.dc }}", "weight": 0 }
        })
    );
    // The template's default fills a parameter the task did not give.
    assert_eq!(task("web/shift/settle").with, json!({ "duration": "30s" }));
}

#[test]
fn template_tasks_hand_their_settings_to_their_steps() {
    let runbook = evacuation();
    let task = |id: &str| runbook.task(id).unwrap_or_else(|| panic!("task {id}"));
    let shift = task("web/shift/shift");
    assert_eq!(
        shift.retries,
        RetryPolicy {
            max: 3,
            backoff_ms: 5_000,
            max_backoff_ms: 60_000
        }
    );
    // The task's timeout is every step's default; health checks apply to every step.
    for id in ["web/shift/announce", "web/shift/shift", "web/shift/settle"] {
        assert_eq!(task(id).timeout_ms, Some(30 * 60 * 1_000), "{id}");
        assert_eq!(task(id).health.len(), 1, "{id}");
        match &task(id).health[0].kind {
            CheckKind::Metric { query, threshold } => {
                assert_eq!(query, "max(web_error_ratio{dc=\"{{ params.dc }}\"})");
                assert_eq!(*threshold, Threshold::Below(0.01));
            }
            other => panic!("a metric check, not {other:?}"),
        }
    }
    assert_eq!(task("pause").retries.max, 2);
    assert_eq!(task("preflight").retries, RetryPolicy::NONE);
    // Origins point at where each task or step was written.
    assert_eq!(
        task("web/shift/shift").origin.to_string(),
        "templates.yaml:12:9"
    );
    assert_eq!(task("web/preflight").origin.to_string(), "web.yaml:8:9");
    assert_eq!(task("confirm").origin.to_string(), "evacuate.yaml:22:9");
}

#[test]
fn parameters_are_typed_and_defaulted_at_run_start() {
    let runbook = evacuation();
    let given = BTreeMap::from([("dc".to_string(), "east".to_string())]);
    let params = bind_params(&runbook, &given).expect("binds");
    assert_eq!(params.get("pause"), Some(&json!("5s")));
    assert_eq!(params.get("rehearsal"), Some(&json!(false)));
    let confirm = runbook.task("confirm").expect("confirm");
    assert_eq!(
        render(&confirm.with, &params),
        Ok(json!({ "message": "web drained from east (rehearsal: false)" }))
    );
    let pause = runbook.task("pause").expect("pause");
    assert_eq!(
        render(&pause.with, &params),
        Ok(json!({ "duration": "5s" }))
    );
    match &confirm.post[0].kind {
        CheckKind::Http { url, status, json } => {
            assert_eq!(
                render_text(url, &params).as_deref(),
                Ok("http://status/east")
            );
            assert_eq!(*status, 200);
            assert_eq!(json.as_ref().map(|j| &j.equals), Some(&json!(true)));
        }
        other => panic!("an http check, not {other:?}"),
    }
}

#[test]
fn bad_parameters_are_all_reported_before_a_run_starts() {
    let runbook = evacuation();
    let given = BTreeMap::from([
        ("dc".to_string(), "north".to_string()),
        ("pause".to_string(), "five seconds".to_string()),
        ("rehersal".to_string(), "true".to_string()),
    ]);
    let errors = bind_params(&runbook, &given).expect_err("refused");
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    insta::assert_snapshot!(lines.join("\n"));
    let missing = bind_params(&runbook, &BTreeMap::new()).expect_err("dc is required");
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].code, "missing-param");
    assert_eq!(missing[0].param, "dc");
}
