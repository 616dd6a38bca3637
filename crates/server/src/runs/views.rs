//! Runs as the API and the CLI show them.

use levee_engine::runbook::{RunState, StallCause, TaskStatus};
use levee_store::StoredRun;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::spec::RunSpec;

/// How many tasks are where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskCounts {
    pub total: u32,
    pub waiting: u32,
    pub ready: u32,
    pub running: u32,
    pub retrying: u32,
    pub succeeded: u32,
    pub skipped: u32,
    pub failed: u32,
    pub stalled: u32,
    pub cancelled: u32,
}

/// One task of a run.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub id: String,
    pub stage: String,
    /// `waiting`, `ready`, `running`, `retrying`, `succeeded`, `failed`, `stalled`, `skipped`,
    /// `cancelled`.
    pub status: String,
    pub attempts: u32,
    /// Steps committed by a paced stage.
    pub step: u32,
    /// What the last committed step recorded (a ramp's `{"value": 75}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub step_state: Option<Value>,
    /// The pace an operator set for a paced task (`{"step": "10%", "wait": "30s"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub pace: Option<Value>,
    pub needs: Vec<String>,
    pub after: Vec<String>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// Why a task failed, stalled, waits to retry, or was skipped by its `when`.
    pub reason: Option<String>,
    /// For a stalled task: `pre`, `post` or `health` (a failed check an operator may
    /// override), `in_flight_at_restart`, or `timed_out`.
    pub stall: Option<String>,
    /// When a retrying task tries again.
    pub retry_at_ms: Option<i64>,
    /// For a running task: whether its side effect has begun.
    pub in_flight: Option<bool>,
    /// Weak dependencies an operator chose not to wait for.
    pub overridden_deps: Vec<String>,
    /// The stage's arguments, rendered.
    #[schema(value_type = Object)]
    pub with_args: Value,
}

/// A run and every task in it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub name: Option<String>,
    pub runbook: String,
    pub runbook_version: i64,
    #[schema(value_type = Object)]
    pub params: Value,
    pub created_by: String,
    /// `pending`, `running`, `paused`, `succeeded`, `failed`, `aborted`.
    pub status: String,
    pub version: i64,
    pub max_parallel: u32,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub started_by: Option<String>,
    pub finished_at_ms: Option<i64>,
    /// Why the run failed or was aborted.
    pub outcome: Option<String>,
    pub counts: TaskCounts,
    pub tasks: Vec<TaskView>,
}

fn stall_name(cause: StallCause) -> String {
    match cause {
        StallCause::Check(phase) => serde_json::to_value(phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        StallCause::InFlightAtRestart => "in_flight_at_restart".to_string(),
        StallCause::TimedOut => "timed_out".to_string(),
    }
}

impl TaskCounts {
    pub fn of(state: &RunState) -> TaskCounts {
        let mut counts = TaskCounts {
            total: u32::try_from(state.tasks.len()).unwrap_or(u32::MAX),
            ..TaskCounts::default()
        };
        for task in &state.tasks {
            let slot = match task.status {
                TaskStatus::Waiting => &mut counts.waiting,
                TaskStatus::Ready => &mut counts.ready,
                TaskStatus::Running { .. } => &mut counts.running,
                TaskStatus::Retrying { .. } => &mut counts.retrying,
                TaskStatus::Succeeded => &mut counts.succeeded,
                TaskStatus::Failed { .. } => &mut counts.failed,
                TaskStatus::Stalled { .. } => &mut counts.stalled,
                TaskStatus::Skipped => &mut counts.skipped,
                TaskStatus::Cancelled => &mut counts.cancelled,
            };
            *slot += 1;
        }
        counts
    }
}

impl RunView {
    pub fn new(stored: &StoredRun, state: &RunState, spec: &RunSpec) -> RunView {
        let tasks = state
            .tasks
            .iter()
            .zip(&spec.tasks)
            .map(|(record, task)| {
                let (reason, stall, retry_at_ms, in_flight) = match &record.status {
                    TaskStatus::Failed { error } => (Some(error.clone()), None, None, None),
                    TaskStatus::Stalled { cause, reason } => {
                        (Some(reason.clone()), Some(stall_name(*cause)), None, None)
                    }
                    TaskStatus::Retrying {
                        error,
                        not_before_ms,
                        ..
                    } => (Some(error.clone()), None, Some(*not_before_ms), None),
                    TaskStatus::Running { in_flight, .. } => (None, None, None, Some(*in_flight)),
                    // Skipped from the start by its `when`, not by an operator.
                    TaskStatus::Skipped => (task.plan.skip.clone(), None, None, None),
                    _ => (None, None, None, None),
                };
                TaskView {
                    id: record.id.clone(),
                    stage: task.plan.stage.clone(),
                    status: record.status.name().to_string(),
                    attempts: record.attempts,
                    step: record.step,
                    step_state: (!record.step_state.is_null()).then(|| record.step_state.clone()),
                    pace: (!record.pace.is_null()).then(|| record.pace.clone()),
                    needs: task.plan.needs.clone(),
                    after: task.plan.after.clone(),
                    started_at_ms: record.started_at_ms,
                    finished_at_ms: record.finished_at_ms,
                    reason,
                    stall,
                    retry_at_ms,
                    in_flight,
                    overridden_deps: record.overridden_deps.clone(),
                    with_args: task.with.clone(),
                }
            })
            .collect();
        RunView {
            id: stored.id.clone(),
            name: stored.name.clone(),
            runbook: stored.runbook.clone(),
            runbook_version: stored.runbook_version,
            params: stored.params.clone(),
            created_by: stored.created_by.clone(),
            status: state.run.status.name().to_string(),
            version: state.run.version,
            max_parallel: state.run.max_parallel,
            created_at_ms: state.run.created_at_ms,
            started_at_ms: state.run.started_at_ms,
            started_by: state.run.started_by.clone(),
            finished_at_ms: state.run.finished_at_ms,
            outcome: state.run.outcome.clone(),
            counts: TaskCounts::of(state),
            tasks,
        }
    }
}
