//! Starting a run from the UI: the runbooks, and a runbook's page with a form for its typed
//! parameters. Filling the form shows the plan (`App::plan_runbook`, the function behind
//! `POST /api/v1/runbooks/{name}/plan`: waves, critical path, pre-conditions evaluated now)
//! before anything starts; only then does a confirmation form start the run through
//! `POST /api/v1/runbooks/{name}/runs`, which checks the role and audits as for any client.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde_json::Value;

use super::layout::duration_text;
use super::pages::{Nav, error_page};
use super::{UiCaller, html};
use crate::SharedApp;
use crate::error::ApiError;
use crate::runbooks::{ParamView, PlanRequest, PlanView, RunbookSummary};

/// A plan with more tasks than this needs the runbook's name typed before it starts: a
/// larger run reaches more of the fleet than an operator should start by a stray click.
pub const START_CONFIRM_MIN_TASKS: usize = 20;
/// Runbooks of these purposes take capacity out of service (or put it back), so starting
/// one always needs its name typed, whatever its size.
pub const START_CONFIRM_PURPOSES: &[&str] = &["drain", "restore", "maintenance"];
/// Query keys of the parameter form carry this prefix (`p.NAME=value`).
const PARAM_PREFIX: &str = "p.";

#[derive(Template)]
#[template(path = "runbooks.html")]
struct RunbooksPage {
    nav: Nav,
    runbooks: Vec<RunbookSummary>,
}

pub async fn runbooks(State(app): State<SharedApp>, UiCaller(caller): UiCaller) -> Response {
    match app.list_runbooks(&caller).await {
        Ok(runbooks) => html(
            RunbooksPage {
                nav: Nav::of(&app, &caller),
                runbooks,
            }
            .render(),
        ),
        Err(error) => error_page(&error),
    }
}

/// One field of the parameter form.
pub struct ParamField {
    pub name: String,
    pub ty: String,
    pub required: bool,
    pub description: String,
    /// What the field holds: the value given, else the default.
    pub value: String,
    /// For `enum` and `bool`: the choices.
    pub choices: Vec<String>,
    pub placeholder: &'static str,
}

impl ParamField {
    fn of(param: &ParamView, given: Option<&String>) -> ParamField {
        let default = param.default.as_ref().map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let choices = match param.ty.as_str() {
            "bool" => vec!["true".to_string(), "false".to_string()],
            "enum" => param.values.clone(),
            _ => Vec::new(),
        };
        ParamField {
            name: param.name.clone(),
            ty: param.ty.clone(),
            required: param.required,
            description: param.description.clone().unwrap_or_default(),
            value: given.cloned().or(default).unwrap_or_default(),
            choices,
            placeholder: match param.ty.as_str() {
                "int" => "42",
                "duration" => "30s",
                "percent" => "10%",
                _ => "",
            },
        }
    }
}

/// One wave of the plan, for the page.
pub struct WaveRow {
    pub index: usize,
    pub tasks: Vec<PlanTaskRow>,
}

pub struct PlanTaskRow {
    pub id: String,
    pub stage: String,
    pub needs: String,
    pub predicted: String,
    pub critical: bool,
    pub checks: String,
    /// Pre-conditions evaluated now that fail, in words.
    pub pre_failing: Vec<String>,
}

pub struct PlanModel {
    pub tasks: usize,
    pub waves: Vec<WaveRow>,
    pub critical_path: Vec<String>,
    pub predicted: String,
    pub source: String,
    pub sequential: String,
    pub speedup: String,
    /// The bound parameters as JSON, handed to the start form.
    pub params_json: String,
    pub params: Vec<(String, String)>,
    /// Why the runbook's name must be typed before it starts; empty when it need not be.
    pub confirm_why: String,
}

fn plan_model(plan: &PlanView, purpose: &str) -> PlanModel {
    let on_path: std::collections::HashSet<&str> = plan
        .critical_path
        .tasks
        .iter()
        .map(String::as_str)
        .collect();
    let by_id: BTreeMap<&str, &crate::runbooks::PlannedTask> =
        plan.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let waves = plan
        .waves
        .iter()
        .enumerate()
        .map(|(index, ids)| WaveRow {
            index,
            tasks: ids
                .iter()
                .filter_map(|id| by_id.get(id.as_str()))
                .map(|t| PlanTaskRow {
                    id: t.id.clone(),
                    stage: t.stage.clone(),
                    needs: t
                        .needs
                        .iter()
                        .chain(&t.after)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    predicted: format!(
                        "{} ({})",
                        duration_text(t.predicted.duration_ms),
                        t.predicted.source
                    ),
                    critical: on_path.contains(t.id.as_str()),
                    checks: format!(
                        "{} pre, {} post, {} health",
                        t.checks.pre, t.checks.post, t.checks.health
                    ),
                    pre_failing: t
                        .pre_now
                        .iter()
                        .filter(|c| !c.ok)
                        .map(|c| format!("{}: {}", c.name, c.reason))
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let mut why = Vec::new();
    if START_CONFIRM_PURPOSES.contains(&purpose) {
        why.push(format!(
            "it is a `{purpose}` runbook: it changes what serves traffic"
        ));
    }
    if plan.tasks.len() > START_CONFIRM_MIN_TASKS {
        why.push(format!(
            "it has {} tasks, more than {START_CONFIRM_MIN_TASKS}",
            plan.tasks.len()
        ));
    }
    let params_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // The start request takes every value as text, as `levee run -p` gives them.
    let as_text: BTreeMap<&String, String> = plan
        .params
        .iter()
        .map(|(k, v)| (k, params_text(v)))
        .collect();
    PlanModel {
        tasks: plan.tasks.len(),
        waves,
        critical_path: plan.critical_path.tasks.clone(),
        predicted: duration_text(plan.predicted.duration_ms),
        source: plan.predicted.source.clone(),
        sequential: duration_text(plan.critical_path.sequential_ms),
        speedup: format!("{:.2}", plan.critical_path.speedup),
        params_json: serde_json::to_string(&as_text).unwrap_or_default(),
        params: as_text
            .iter()
            .map(|(k, v)| ((*k).clone(), v.clone()))
            .collect(),
        confirm_why: why.join("; "),
    }
}

#[derive(Template)]
#[template(path = "runbook.html")]
struct RunbookPage {
    nav: Nav,
    runbook: RunbookSummary,
    fields: Vec<ParamField>,
    plan: Option<PlanModel>,
    problem: String,
    /// Makes the start idempotent: a second click on the same page gets the same run.
    start_name: String,
}

/// A runbook's page: its parameters as a form; with `plan=1` in the query also the plan
/// for the values given, and (for an operator) the confirmation that starts it.
pub async fn runbook(
    State(app): State<SharedApp>,
    UiCaller(caller): UiCaller,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let listed = match app.list_runbooks(&caller).await {
        Ok(listed) => listed,
        Err(error) => return error_page(&error),
    };
    let Some(runbook) = listed.into_iter().find(|r| r.name == name) else {
        return error_page(&ApiError::not_found(format!(
            "no runbook named `{name}`; /ui/runbooks lists them"
        )));
    };
    let mut given: BTreeMap<String, String> = BTreeMap::new();
    let mut wants_plan = false;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key == "plan" {
            wants_plan = true;
        } else if let Some(param) = key.strip_prefix(PARAM_PREFIX) {
            // An empty field means "not given": the default (or the required error) applies.
            if !value.trim().is_empty() {
                given.insert(param.to_string(), value.trim().to_string());
            }
        }
    }
    let fields = runbook
        .params
        .iter()
        .map(|p| ParamField::of(p, given.get(&p.name)))
        .collect();
    let (plan, problem) = if wants_plan {
        let request = PlanRequest {
            params: given
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
            check_pre: true,
        };
        match app.plan_runbook(&caller, &name, request).await {
            Ok(plan) => (Some(plan_model(&plan, &runbook.purpose)), String::new()),
            Err(error) => (None, error.message),
        }
    } else {
        (None, String::new())
    };
    let start_name = format!("ui-{}-{:016x}", app.clock.now_ms(), rand::random::<u64>());
    html(
        RunbookPage {
            nav: Nav::of(&app, &caller),
            runbook,
            fields,
            plan,
            problem,
            start_name,
        }
        .render(),
    )
}
