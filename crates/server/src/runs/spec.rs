//! What a run executes, frozen when it starts: every task with its stage, rendered arguments
//! and checks. Stored with the run (opaque to the store), so a run keeps doing what was planned
//! even if its runbook is changed or removed while it runs.

use levee_engine::runbook::{PlanError, PlanTask, RunPlan};
use levee_model::{BoundParams, CheckKind, ResolvedTask, Threshold};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// One `pre`, `post` or `health` condition, in the argument form the check implementations
/// take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// A name for messages.
    pub name: String,
    /// `http`, `shell`, `metric` or `state`.
    pub check: String,
    pub args: Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The engine's view: id, stage, dependencies, retries, timeout.
    pub plan: PlanTask,
    /// The stage's arguments, rendered.
    pub with: Value,
    pub pre: Vec<CheckSpec>,
    pub post: Vec<CheckSpec>,
    pub health: Vec<CheckSpec>,
    /// Where the task was written (`file:line:column`), for messages.
    pub origin: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub tasks: Vec<TaskSpec>,
}

impl RunSpec {
    /// The engine's plan of these tasks.
    pub fn plan(&self) -> Result<RunPlan, PlanError> {
        RunPlan::new(self.tasks.iter().map(|t| t.plan.clone()).collect())
    }
}

/// The name shown for a check without one.
fn describe(kind: &CheckKind) -> String {
    match kind {
        CheckKind::Http { url, status, .. } => format!("GET {url} answers {status}"),
        CheckKind::Shell { command } => format!("`{}` exits 0", command.join(" ")),
        CheckKind::State { machine, in_states } => {
            format!("machine {machine} in {}", in_states.join("|"))
        }
        CheckKind::Metric { query, threshold } => match threshold {
            Threshold::Below(v) => format!("{query} < {v}"),
            Threshold::Above(v) => format!("{query} > {v}"),
        },
    }
}

/// A model check as the arguments of the check that carries it out, placeholders rendered.
pub fn check_spec(check: &levee_model::Check, params: &BoundParams) -> Result<CheckSpec, String> {
    let (name, args) = match &check.kind {
        CheckKind::Http { url, status, json } => {
            let mut args = Map::new();
            args.insert("url".into(), json!(url));
            args.insert("expect_status".into(), json!([status]));
            if let Some(field) = json {
                args.insert("field".into(), json!(field.path));
                args.insert("equals".into(), field.equals.clone());
            }
            ("http", Value::Object(args))
        }
        CheckKind::Shell { command } => ("shell", json!({ "command": command })),
        CheckKind::State { machine, in_states } => {
            ("state", json!({ "machine": machine, "in": in_states }))
        }
        CheckKind::Metric { query, threshold } => match threshold {
            Threshold::Below(v) => ("metric", json!({ "query": query, "below": v })),
            Threshold::Above(v) => ("metric", json!({ "query": query, "above": v })),
        },
    };
    let args = levee_model::render(&args, params)?;
    let shown = check.name.clone().unwrap_or_else(|| describe(&check.kind));
    Ok(CheckSpec {
        name: levee_model::render_text(&shown, params)?,
        check: name.to_string(),
        args,
    })
}

/// A task of a resolved runbook, ready to execute.
pub fn task_spec(
    task: &ResolvedTask,
    plan: PlanTask,
    with: Value,
    params: &BoundParams,
) -> Result<TaskSpec, String> {
    let checks = |list: &[levee_model::Check]| -> Result<Vec<CheckSpec>, String> {
        list.iter().map(|c| check_spec(c, params)).collect()
    };
    Ok(TaskSpec {
        plan,
        with,
        pre: checks(&task.pre)?,
        post: checks(&task.post)?,
        health: checks(&task.health)?,
        origin: task.origin.to_string(),
    })
}
