//! One task of a run: its state and why, its health metrics as small charts against their
//! thresholds, its steps, what each attempt printed (escaped like every value) and its journal
//! entries, with the controls an operator may use on it (override a failed check or a weak
//! dependency with a reason, retry, skip, approve, change its pace), sent by the script to
//! `POST /api/v1/runs/{id}/controls`.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::Value;

use super::layout::{Spark, duration_text, spark};
use super::pages::{JOURNAL_SCAN_PAGE_ROWS, Nav, error_page, time_text};
use super::{UiCaller, html};
use crate::SharedApp;
use crate::error::ApiError;
use crate::runs::views::TaskView;

/// Most journal entries a task page reads while looking for the task's own entries.
pub const TASK_JOURNAL_SCAN_MAX_ROWS: usize = 50_000;
/// Most of a task's journal entries shown (the latest).
pub const TASK_EVENTS_SHOWN: usize = 500;

/// One health check's chart.
pub struct HealthChart {
    pub name: String,
    pub check: String,
    pub thresholds: String,
    pub samples: usize,
    pub failed: usize,
    pub last: String,
    pub chart: Spark,
}

/// One journal entry of the task.
pub struct EventRow {
    pub seq: i64,
    pub at: String,
    pub kind: String,
    pub actor: String,
    pub reason: String,
    pub details: String,
}

/// One attempt's output.
pub struct OutputRow {
    pub attempt: u32,
    pub at: String,
    pub outcome: String,
    pub text: String,
    pub cut_bytes: u64,
    pub data: String,
}

#[derive(Template)]
#[template(path = "task.html")]
struct TaskPage {
    nav: Nav,
    run: String,
    run_status: String,
    t: TaskView,
    with_args: String,
    took: String,
    charts: Vec<HealthChart>,
    steps: Vec<EventRow>,
    events: Vec<EventRow>,
    events_cut: bool,
    outputs: Vec<OutputRow>,
    /// Weak dependencies (`after`) not yet overridden.
    weak_deps: Vec<String>,
    /// The journal `seq` the page is current with: the script follows the run's events
    /// after it and reloads the page when this task changes.
    after_seq: i64,
}

fn event_row(record: &levee_store::JournalRecord) -> EventRow {
    let mut value = serde_json::to_value(&record.entry).unwrap_or(Value::Null);
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(map) = value.as_object_mut() {
        for known in ["kind", "version", "at_ms", "task", "actor", "reason"] {
            map.remove(known);
        }
    }
    let details = match &value {
        Value::Object(map) if map.is_empty() => String::new(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    EventRow {
        seq: record.seq,
        at: time_text(Some(record.entry.at_ms)),
        kind,
        actor: record.entry.actor.clone(),
        reason: record.entry.reason.clone().unwrap_or_default(),
        details,
    }
}

pub async fn task(
    State(app): State<SharedApp>,
    UiCaller(caller): UiCaller,
    Path((id, task)): Path<(String, String)>,
) -> Response {
    match task_page(&app, &caller, &id, &task).await {
        Ok(page) => html(page.render()),
        Err(error) => error_page(&error),
    }
}

async fn task_page(
    app: &SharedApp,
    caller: &crate::auth::Caller,
    id: &str,
    task: &str,
) -> Result<TaskPage, ApiError> {
    // The run's journal, page by page, keeping this task's entries (bounded). Read before
    // the run, so the live stream that starts after it misses nothing the page does not show.
    let mut mine = Vec::new();
    let mut after = 0;
    let mut scanned = 0;
    loop {
        let page = app
            .store
            .run_journal(id, after, JOURNAL_SCAN_PAGE_ROWS)
            .await?;
        scanned += page.len();
        let full = page.len() >= JOURNAL_SCAN_PAGE_ROWS as usize;
        if let Some(last) = page.last() {
            after = last.seq;
        }
        mine.extend(
            page.into_iter()
                .filter(|r| r.entry.task.as_deref() == Some(task)),
        );
        if !full || scanned >= TASK_JOURNAL_SCAN_MAX_ROWS {
            break;
        }
    }
    let view = app.run_view(caller, id).await?;
    let t = view
        .tasks
        .iter()
        .find(|t| t.id == task)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("run `{id}` has no task `{task}`")))?;
    let health = app.task_health(caller, id, task).await?;
    let charts = health
        .into_iter()
        .map(|check| {
            let samples: Vec<(i64, Option<f64>, bool, String)> = check
                .samples
                .iter()
                .map(|s| {
                    (
                        s.at_ms,
                        s.value,
                        s.ok,
                        format!(
                            "{}: {} ({})",
                            time_text(Some(s.at_ms)),
                            s.observed,
                            if s.ok { "ok" } else { "failed" }
                        ),
                    )
                })
                .collect();
            let mut thresholds = Vec::new();
            if let Some(below) = check.below {
                thresholds.push(format!("below {below}"));
            }
            if let Some(above) = check.above {
                thresholds.push(format!("above {above}"));
            }
            HealthChart {
                chart: spark(&samples, check.below, check.above),
                samples: check.samples.len(),
                failed: check.samples.iter().filter(|s| !s.ok).count(),
                last: check
                    .samples
                    .last()
                    .map(|s| s.observed.clone())
                    .unwrap_or_default(),
                thresholds: if thresholds.is_empty() {
                    "passes or fails".to_string()
                } else {
                    thresholds.join(" and ")
                },
                name: check.name,
                check: check.check,
            }
        })
        .collect();

    let steps = mine
        .iter()
        .filter(|r| {
            matches!(
                r.entry.kind,
                levee_engine::runbook::JournalKind::StepCommitted { .. }
            )
        })
        .map(event_row)
        .collect();
    let events_cut = mine.len() > TASK_EVENTS_SHOWN;
    let events = mine
        .iter()
        .skip(mine.len().saturating_sub(TASK_EVENTS_SHOWN))
        .map(event_row)
        .collect();
    let outputs = app
        .store
        .task_outputs(id, task)
        .await?
        .into_iter()
        .map(|o| OutputRow {
            attempt: o.attempt,
            at: time_text(Some(o.at_ms)),
            outcome: o.outcome,
            text: o.text,
            cut_bytes: o.cut_bytes,
            data: if o.data.is_null() {
                String::new()
            } else {
                o.data.to_string()
            },
        })
        .collect();
    let weak_deps = t
        .after
        .iter()
        .filter(|d| !t.overridden_deps.contains(d))
        .cloned()
        .collect();
    let took = match t.started_at_ms {
        Some(start) => duration_text(
            u64::try_from(t.finished_at_ms.unwrap_or_else(|| app.clock.now_ms()) - start)
                .unwrap_or(0),
        ),
        None => String::new(),
    };
    Ok(TaskPage {
        nav: Nav::of(app, caller),
        run: view.id.clone(),
        run_status: view.status.clone(),
        with_args: serde_json::to_string_pretty(&t.with_args).unwrap_or_default(),
        took,
        charts,
        steps,
        events,
        events_cut,
        outputs,
        weak_deps,
        after_seq: after,
        t,
    })
}
