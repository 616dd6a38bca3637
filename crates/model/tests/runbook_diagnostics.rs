//! What users read when a runbook or task template is wrong: one snapshot per error code,
//! holding the input files (with line numbers) and the diagnostics as `levee validate` prints
//! them. Errors one document can show are found by loading; errors that need several
//! documents (stages, templates, includes, dependencies) by linking.

use levee_model::{Definition, LoadContext, StageCatalog, link, load_documents};

/// 2025-01-01T00:00:00Z.
const NOW_MS: i64 = 1_735_689_600_000;

/// The stages of the tests: the fixed arguments of the brief's stage library.
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

/// Loads every file, links what loaded, and renders the inputs and the outcome.
fn outcome(files: &[(&str, &str)]) -> String {
    let ctx = LoadContext::new(NOW_MS, jiff::tz::TimeZone::UTC);
    let mut out = String::new();
    for (file, source) in files {
        out.push_str(&format!("== {file}\n"));
        for (index, line) in source.lines().enumerate() {
            out.push_str(&format!("{:>3} | {line}\n", index + 1));
        }
    }
    out.push_str("----\n");
    let mut definitions: Vec<Definition> = Vec::new();
    let mut load_failed = false;
    for (file, source) in files {
        match load_documents(file, source, &ctx) {
            Ok(defs) => definitions.extend(defs),
            Err(diagnostics) => {
                load_failed = true;
                for diagnostic in diagnostics {
                    out.push_str(&format!("{diagnostic}\n"));
                }
            }
        }
    }
    if load_failed {
        return out;
    }
    match link(&definitions, &catalog()) {
        Ok(runbooks) => {
            for runbook in runbooks {
                let ids: Vec<&str> = runbook.tasks.iter().map(|t| t.id.as_str()).collect();
                out.push_str(&format!("ok: {} [{}]\n", runbook.name, ids.join(", ")));
            }
        }
        Err(diagnostics) => {
            for diagnostic in diagnostics {
                out.push_str(&format!("{diagnostic}\n"));
            }
        }
    }
    out
}

macro_rules! cases {
    ($($name:ident => [$(($file:expr, $source:expr)),* $(,)?],)*) => {
        $(
            #[test]
            fn $name() {
                insta::assert_snapshot!(stringify!($name), outcome(&[$(($file, $source)),*]));
            }
        )*
    };
}

cases! {
    dependency_cycle_is_reported_whole => [("cycle.yaml", "\
kind: Runbook
name: loop
tasks:
  - id: a
    stage: log
    with: { message: a }
    needs: [c]
  - id: b
    stage: log
    with: { message: b }
    needs: [a]
  - id: c
    stage: log
    with: { message: c }
    after: [b]
  - id: d
    stage: log
    with: { message: d }
    needs: [d]
")],
    when_that_is_not_a_condition => [("storm.yaml", "\
kind: Runbook
name: storm
params:
  storm: { type: bool, default: false }
tasks:
  - id: cut-off
    stage: log
    when: maybe
    with: { message: cut }
  - id: stop-replication
    stage: log
    when: \"{{ params.strom }}\"
    with: { message: stop }
")],
    drain_without_recovery => [("drain.yaml", "\
kind: Runbook
name: drain-web
purpose: drain
tasks:
  - id: shift
    stage: log
    with: { message: shifting }
")],
    unknown_stage_argument_lists_the_valid_ones => [("args.yaml", "\
kind: Runbook
name: args
tasks:
  - id: run
    stage: shell
    with: { comand: [true], cwd: /tmp }
  - id: pause
    stage: wait
    with: { duration: 5s, jitter: 1s }
  - id: mystery
    stage: shel
")],
    missing_required_param_of_template_and_include => [("defs.yaml", "\
kind: TaskTemplate
name: shift
params:
  service: { required: true }
  weight: { type: int, default: 0 }
steps:
  - id: go
    stage: log
    with: { message: \"shift {{ params.service }} to {{ params.weight }}\" }
---
kind: Runbook
name: drain-web
params:
  dc: { required: true, description: the datacenter to drain }
tasks:
  - id: log
    stage: log
    with: { message: \"{{ params.dc }}\" }
---
kind: Runbook
name: evacuate
tasks:
  - id: web-shift
    template: shift
    with: { weight: lots, servce: web }
include:
  - id: web
    runbook: drain-web
")],
    unknown_references_suggest_the_closest => [("refs.yaml", "\
kind: Runbook
name: refs
recovery: restre
tasks:
  - id: preflight
    stage: log
    with: { message: ok }
  - id: shift
    stage: log
    with: { message: ok }
    needs: [preflght]
    after: [web/shfit]
  - id: templated
    template: shfit-traffic
include:
  - id: web
    runbook: drain-wbe
---
kind: Runbook
name: restore
tasks:
  - id: back
    stage: log
    with: { message: back }
---
kind: TaskTemplate
name: shift-traffic
steps:
  - id: go
    stage: log
    with: { message: go }
")],
    include_cycle => [
        ("a.yaml", "\
kind: Runbook
name: outer
include:
  - id: inner
    runbook: inner
"),
        ("b.yaml", "\
kind: Runbook
name: inner
tasks:
  - id: x
    stage: log
    with: { message: x }
include:
  - id: back
    runbook: outer
"),
    ],
    cycle_through_an_include_names_the_expanded_tasks => [("defs.yaml", "\
kind: Runbook
name: part
tasks:
  - id: first
    stage: log
    with: { message: first }
  - id: last
    stage: log
    with: { message: last }
    needs: [first]
---
kind: Runbook
name: whole
tasks:
  - id: confirm
    stage: approval
    needs: [part]
include:
  - id: part
    runbook: part
    needs: [confirm]
")],
    placeholders_must_name_declared_params => [("params.yaml", "\
kind: Runbook
name: params
params:
  dc: { required: true }
  count: { type: int, default: many }
  mode: { type: enum }
  Bad-Name: {}
tasks:
  - id: run
    stage: shell
    with: { command: [echo, \"{{ params.dcc }}\", \"{{ param.dc }}\"] }
    health:
      - http: { url: \"http://{{ params.host }}/health\" }
")],
    duplicate_task_ids => [("one.yaml", "\
kind: Runbook
name: dup
tasks:
  - id: a
    stage: log
    with: { message: a }
  - id: a
    stage: log
    with: { message: again }
include:
  - id: a
    runbook: dup
")],
    duplicate_definitions_across_files => [
        ("two.yaml", "\
kind: TaskTemplate
name: t
steps:
  - id: s
    stage: log
    with: { message: s }
---
kind: Runbook
name: other
tasks:
  - id: x
    stage: log
    with: { message: x }
"),
        ("three.yaml", "\
kind: TaskTemplate
name: t
steps:
  - id: s
    stage: wait
    with: { duration: 1s }
---
kind: Runbook
name: other
tasks:
  - id: y
    stage: log
    with: { message: y }
"),
    ],
    task_shapes => [("shapes.yaml", "\
kind: Runbook
name: shapes
max_parallel: 0
tasks:
  - id: both
    stage: log
    template: t
  - id: neither
    with: { message: x }
  - id: bad/id
    stage: log
    with: { message: x }
  - id: timing
    stage: log
    with: { message: x }
    timeout: 0s
    retries: { max: 500, backoff: 1m, max_backoff: 10s }
  - id: checks
    stage: log
    with: { message: x }
    pre:
      - metric: { query: up, below: 1, above: 0 }
      - http: { url: http://x, status: 700 }
        shell: { command: [true] }
      - state: { machine: db-1, in: [] }
      - metric: { query: up }
")],
    template_steps_cycle_and_unknown_step => [("t.yaml", "\
kind: TaskTemplate
name: loop
steps:
  - id: a
    stage: log
    with: { message: a }
    needs: [c]
  - id: b
    stage: log
    with: { message: b }
  - id: c
    stage: log
    with: { message: c }
  - id: d
    stage: log
    with: { message: d }
    needs: [e]
")],
    params_and_lists_out_of_shape => [("p.yaml", "\
kind: Runbook
name: shapes
params:
  mode: { values: [] }
  size: { type: int, values: [1, 2] }
  region: { required: true, default: east }
tasks: []
")],
    unknown_key_in_a_task => [("keys.yaml", "\
kind: Runbook
name: keys
tasks:
  - id: a
    stage: log
    with: { message: a }
    need: [b]
    retires: 3
")],
}

/// A chain of runbooks each including the next, `count` long.
fn include_chain(count: usize, tasks_per_runbook: usize, includes_per_runbook: usize) -> String {
    let mut source = String::new();
    for level in 0..count {
        source.push_str(&format!("---\nkind: Runbook\nname: r{level}\ntasks:\n"));
        for task in 0..tasks_per_runbook {
            source.push_str(&format!(
                "  - {{ id: t{task}, stage: wait, with: {{ duration: 1s }} }}\n"
            ));
        }
        if level + 1 < count {
            source.push_str("include:\n");
            for include in 0..includes_per_runbook {
                source.push_str(&format!(
                    "  - {{ id: i{include}, runbook: r{} }}\n",
                    level + 1
                ));
            }
        }
    }
    source
}

fn diagnostics_only(files: &[(&str, &str)]) -> String {
    let full = outcome(files);
    full.split_once("----\n")
        .map(|(_, tail)| tail.to_string())
        .unwrap_or(full)
}

#[test]
fn too_many_tasks_after_expansion() {
    // r4 has 1 + 10 * (1 + 10 * (1 + 10 * (1 + 10 * 1))) tasks, over the limit of 10,000.
    let source = include_chain(5, 1, 10);
    insta::assert_snapshot!(
        "too_many_tasks_after_expansion",
        diagnostics_only(&[("big.yaml", &source)])
    );
}

#[test]
fn includes_nested_too_deep() {
    let source = include_chain(levee_model::MAX_INCLUDE_DEPTH + 2, 1, 1);
    insta::assert_snapshot!(
        "includes_nested_too_deep",
        diagnostics_only(&[("deep.yaml", &source)])
    );
}
