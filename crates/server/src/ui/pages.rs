//! The UI's pages: what each shows, built from the same store reads as the API, rendered by
//! askama (which escapes every value it inserts, task output and ids included).

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use levee_engine::runbook::{self as engine, APPROVAL_STAGE};
use levee_store::{RunFilter, RunSummary};
use serde_json::Value;

use super::layout::{self, Gantt, Graph, TaskTimes, duration_text};
use super::{UiCaller, html};
use crate::SharedApp;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::runbooks::{DEFAULT_PREDICTED_TASK_MS, predict_task_ms};
use crate::runs::spec_of;
use crate::runs::views::{RunView, TaskCounts};

/// Runs listed on `/ui/`, newest first.
pub const RUNS_PAGE_ROWS: u32 = 100;
/// Journal entries read per page when a run page looks for the stream's starting point.
pub const JOURNAL_SCAN_PAGE_ROWS: u32 = 1_000;

/// Who is looking, for the navigation bar and for which controls a page offers.
pub struct Nav {
    pub user: String,
    pub role: &'static str,
    /// Tokens are configured, so there is a sign-in to leave.
    pub signed_in: bool,
    pub can_operate: bool,
}

impl Nav {
    pub(super) fn of(app: &SharedApp, caller: &Caller) -> Nav {
        Nav {
            user: caller.name.clone(),
            role: caller.role.as_str(),
            signed_in: app.auth.required(),
            can_operate: caller.role >= Role::Operator,
        }
    }
}

pub fn error_page(error: &ApiError) -> Response {
    #[derive(Template)]
    #[template(path = "error.html")]
    struct ErrorPage<'a> {
        status: u16,
        message: &'a str,
    }
    let page = ErrorPage {
        status: error.status.as_u16(),
        message: &error.message,
    };
    let mut response = html(page.render());
    if response.status() == StatusCode::OK {
        *response.status_mut() = error.status;
    }
    response
}

pub fn login_form(problem: Option<&str>) -> Response {
    #[derive(Template)]
    #[template(path = "login.html")]
    struct Login<'a> {
        problem: Option<&'a str>,
    }
    let mut response = html(Login { problem }.render());
    if problem.is_some() {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
    }
    response
}

pub(super) fn time_text(ms: Option<i64>) -> String {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// From start to end (or to now while not ended), in words; empty before the start.
fn span_text(start: Option<i64>, end: Option<i64>, now_ms: i64) -> String {
    match start {
        Some(start) => duration_text(u64::try_from(end.unwrap_or(now_ms) - start).unwrap_or(0)),
        None => String::new(),
    }
}

pub struct RunRow {
    pub id: String,
    pub runbook: String,
    pub status: &'static str,
    pub done: u32,
    pub total: u32,
    pub failed: u32,
    pub running: u32,
    pub started: String,
    pub duration: String,
    pub created_by: String,
}

impl RunRow {
    fn of(run: &RunSummary, now_ms: i64) -> RunRow {
        RunRow {
            id: run.id.clone(),
            runbook: run.runbook.clone(),
            status: run.status.name(),
            done: run.tasks_done,
            total: run.tasks_total,
            failed: run.tasks_failed,
            running: run.tasks_running,
            started: time_text(run.started_at_ms.or(Some(run.created_at_ms))),
            duration: span_text(run.started_at_ms, run.finished_at_ms, now_ms),
            created_by: run.created_by.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    nav: Nav,
    runs: Vec<RunRow>,
    global_paused: bool,
}

pub async fn runs(State(app): State<SharedApp>, UiCaller(caller): UiCaller) -> Response {
    if let Err(error) = caller.require(Role::Viewer) {
        return error_page(&error);
    }
    let listed = match app
        .store
        .runs(&RunFilter {
            limit: RUNS_PAGE_ROWS,
            ..RunFilter::default()
        })
        .await
    {
        Ok(runs) => runs,
        Err(error) => return error_page(&error.into()),
    };
    let now_ms = app.clock.now_ms();
    html(
        RunsPage {
            nav: Nav::of(&app, &caller),
            runs: listed.iter().map(|r| RunRow::of(r, now_ms)).collect(),
            global_paused: app.runs.global_pause(),
        }
        .render(),
    )
}

/// One row of a run page's task table.
pub struct TaskRow {
    pub id: String,
    pub stage: String,
    pub status: String,
    pub wave: usize,
    pub needs: String,
    /// Why it is not running: the dependencies it waits for, the pause, a free slot, a
    /// failed check an operator must decide on, a retry's time, an approval.
    pub why: String,
    pub step: String,
    pub reason: String,
    pub attempts: u32,
    pub duration: String,
    pub predicted: String,
    pub critical: bool,
}

/// Everything a run page shows; `/ui/runs/{id}/parts` renders the live parts of it again.
pub struct RunModel {
    pub id: String,
    pub runbook: String,
    pub status: String,
    pub created_by: String,
    pub started: String,
    pub duration: String,
    pub outcome: String,
    pub counts: TaskCounts,
    pub done: u32,
    pub max_parallel: u32,
    pub global_paused: bool,
    pub version: i64,
    /// The journal `seq` the page is current with: the live stream starts after it.
    pub after_seq: i64,
    pub tasks: Vec<TaskRow>,
    pub graph: Graph,
    pub gantt: Gantt,
    pub critical_path: Vec<String>,
    pub critical_ms: String,
    pub waves: usize,
}

fn pace_text(view: &levee_engine::runbook::TaskRecord) -> String {
    let mut parts = Vec::new();
    if view.step > 0 {
        parts.push(format!("step {}", view.step));
    }
    if !view.step_state.is_null() {
        parts.push(compact_json(&view.step_state));
    }
    if !view.pace.is_null() {
        parts.push(format!("pace {}", compact_json(&view.pace)));
    }
    parts.join(" · ")
}

fn compact_json(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn why_text(
    task: &crate::runs::views::TaskView,
    status_of: &HashMap<&str, &str>,
    run_status: &str,
    global_paused: bool,
    max_parallel: u32,
) -> String {
    let pause = if global_paused {
        Some("every run is paused (global pause)".to_string())
    } else if run_status == "paused" {
        Some("the run is paused".to_string())
    } else if run_status == "pending" {
        Some("the run has not been started".to_string())
    } else {
        None
    };
    match task.status.as_str() {
        "waiting" => {
            let open: Vec<String> = task
                .needs
                .iter()
                .chain(&task.after)
                .filter(|d| !task.overridden_deps.contains(d))
                .filter_map(|d| {
                    let status = status_of.get(d.as_str()).copied().unwrap_or("unknown");
                    (!matches!(status, "succeeded" | "skipped")).then(|| format!("{d} ({status})"))
                })
                .collect();
            let mut why = if open.is_empty() {
                String::from("its dependencies are done")
            } else {
                format!("waits for {}", open.join(", "))
            };
            if let Some(pause) = pause {
                why = format!("{why}; {pause}");
            }
            why
        }
        "ready" => pause
            .unwrap_or_else(|| format!("waits for a free slot ({max_parallel} tasks run at once)")),
        "stalled" => {
            let cause = match task.stall.as_deref() {
                Some("pre") => "a pre-condition does not hold",
                Some("post") => "a post-condition does not hold",
                Some("health") => "a health check does not hold",
                Some("in_flight_at_restart") => "it was in flight when the server restarted",
                Some("timed_out") => "it timed out",
                _ => "it stalled",
            };
            format!("stalled: {cause}; an operator may override, retry or skip it")
        }
        "retrying" => format!(
            "retries at {}",
            time_text(task.retry_at_ms).trim_end_matches(" UTC")
        ),
        "running" if task.stage == APPROVAL_STAGE => "waits for an approval".to_string(),
        "running" if task.in_flight == Some(false) => {
            "dispatched: checking pre-conditions".to_string()
        }
        "failed" => "failed: retry or skip it to let the run go on".to_string(),
        _ => String::new(),
    }
}

/// The run page's model; `with_stream_start` also finds where its live stream starts (the
/// parts a live page re-reads do not need it).
async fn run_model(
    app: &SharedApp,
    id: &str,
    with_stream_start: bool,
) -> Result<RunModel, ApiError> {
    // The stream's starting point is read before the run, so every entry after it is newer
    // than or part of the state shown; the script skips entries of versions it already has.
    let mut after_seq = 0;
    let mut more = with_stream_start;
    while more {
        let page = app
            .store
            .run_journal(id, after_seq, JOURNAL_SCAN_PAGE_ROWS)
            .await?;
        more = page.len() >= JOURNAL_SCAN_PAGE_ROWS as usize;
        if let Some(last) = page.last() {
            after_seq = last.seq;
        }
    }
    let stored = app
        .store
        .load_run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run with id `{id}`")))?;
    let spec = spec_of(&stored)?;
    let plan = spec
        .plan()
        .map_err(|e| ApiError::internal(format!("run {id} has an invalid plan: {e}")))?;
    let view = RunView::new(&stored, &stored.state, &spec);
    // "Now" is never before the latest time the run recorded: a run executed on another
    // clock (the demo's rehearsal in virtual time, writing to the same store, or a replica
    // whose clock runs ahead) would otherwise show its running tasks as taking no time.
    let latest_recorded_ms = view
        .tasks
        .iter()
        .flat_map(|t| [t.started_at_ms, t.finished_at_ms])
        .chain([view.started_at_ms, view.finished_at_ms])
        .flatten()
        .max()
        .unwrap_or(i64::MIN);
    let now_ms = app.clock.now_ms().max(latest_recorded_ms);
    let global_paused = app.runs.global_pause();

    let mut history: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for past in app
        .store
        .task_durations(&stored.runbook, crate::runs::DURATION_HISTORY_PER_TASK)
        .await?
    {
        history.entry(past.task).or_default().push(past.duration_ms);
    }
    let predicted: Vec<u64> = spec
        .tasks
        .iter()
        .map(|task| match history.get_mut(&task.plan.id) {
            Some(past) if !past.is_empty() => {
                past.sort_unstable();
                past[past.len() / 2]
            }
            _ => predict_task_ms(&task.plan.stage, &task.with, task.plan.timeout_ms),
        })
        .collect();
    // The critical path of what is known: actual times where a task finished, predictions
    // elsewhere.
    let index_of: HashMap<&str, usize> = view
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let expected_ms = |id: &str| -> u64 {
        let Some(&i) = index_of.get(id) else {
            return DEFAULT_PREDICTED_TASK_MS;
        };
        let task = &view.tasks[i];
        match (task.started_at_ms, task.finished_at_ms) {
            (Some(start), Some(end)) => u64::try_from(end - start).unwrap_or(0),
            _ => predicted[i],
        }
    };
    let path = engine::critical_path(&plan, &expected_ms);
    let on_path: std::collections::HashSet<&str> = path.tasks.iter().map(String::as_str).collect();
    let waves = engine::plan_waves(&plan);
    let wave_of: HashMap<&str, usize> = waves
        .iter()
        .enumerate()
        .flat_map(|(w, ids)| ids.iter().map(move |id| (id.as_str(), w)))
        .collect();
    let status_of: HashMap<&str, &str> = view
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), t.status.as_str()))
        .collect();

    let times: Vec<TaskTimes> = view
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| TaskTimes {
            id: t.id.clone(),
            status: t.status.clone(),
            deps: plan.deps(i).collect(),
            started_at_ms: t.started_at_ms,
            finished_at_ms: t.finished_at_ms,
            predicted_ms: predicted[i],
            critical: on_path.contains(t.id.as_str()),
        })
        .collect();
    let wave_indexes: Vec<Vec<usize>> = waves
        .iter()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| index_of.get(id.as_str()).copied())
                .collect()
        })
        .collect();
    let graph = layout::graph(&times, &wave_indexes);
    let gantt = layout::gantt(&times, now_ms);

    let tasks = view
        .tasks
        .iter()
        .zip(&stored.state.tasks)
        .enumerate()
        .map(|(i, (t, record))| TaskRow {
            id: t.id.clone(),
            stage: t.stage.clone(),
            status: t.status.clone(),
            wave: wave_of.get(t.id.as_str()).copied().unwrap_or(0),
            needs: t
                .needs
                .iter()
                .chain(&t.after)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            why: why_text(
                t,
                &status_of,
                &view.status,
                global_paused,
                view.max_parallel,
            ),
            step: pace_text(record),
            reason: t.reason.clone().unwrap_or_default(),
            attempts: t.attempts,
            duration: span_text(t.started_at_ms, t.finished_at_ms, now_ms),
            predicted: duration_text(predicted[i]),
            critical: on_path.contains(t.id.as_str()),
        })
        .collect();
    Ok(RunModel {
        id: view.id.clone(),
        runbook: view.runbook.clone(),
        status: view.status.clone(),
        created_by: view.created_by.clone(),
        started: time_text(view.started_at_ms),
        duration: span_text(view.started_at_ms, view.finished_at_ms, now_ms),
        outcome: view.outcome.clone().unwrap_or_default(),
        done: view.counts.succeeded + view.counts.skipped,
        counts: view.counts.clone(),
        max_parallel: view.max_parallel,
        global_paused,
        version: view.version,
        after_seq,
        tasks,
        graph,
        gantt,
        critical_ms: duration_text(path.length_ms),
        critical_path: path.tasks,
        waves: waves.len(),
    })
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    nav: Nav,
    m: RunModel,
}

#[derive(Template)]
#[template(path = "run_parts.html")]
struct RunParts {
    nav: Nav,
    m: RunModel,
}

pub async fn run(
    State(app): State<SharedApp>,
    UiCaller(caller): UiCaller,
    Path(id): Path<String>,
) -> Response {
    if let Err(error) = caller.require(Role::Viewer) {
        return error_page(&error);
    }
    match run_model(&app, &id, true).await {
        Ok(m) => html(
            RunPage {
                nav: Nav::of(&app, &caller),
                m,
            }
            .render(),
        ),
        Err(error) => error_page(&error),
    }
}

/// The live parts of a run page (summary, task rows, timeline), rendered again for the
/// script to reconcile what it applied from the event stream with the committed state.
pub async fn run_parts(
    State(app): State<SharedApp>,
    UiCaller(caller): UiCaller,
    Path(id): Path<String>,
) -> Response {
    if let Err(error) = caller.require(Role::Viewer) {
        return error_page(&error);
    }
    match run_model(&app, &id, false).await {
        Ok(m) => html(
            RunParts {
                nav: Nav::of(&app, &caller),
                m,
            }
            .render(),
        ),
        Err(error) => error_page(&error),
    }
}

#[derive(Template)]
#[template(path = "report.html")]
struct ReportPage {
    nav: Nav,
    id: String,
    runbook: String,
    status: String,
    tasks: usize,
    critical_path: Vec<String>,
    critical_path_ms: String,
    makespan: String,
    sequential: String,
    speedup: String,
    slowest: Vec<(String, String)>,
    approval_wait: String,
}

pub async fn report(
    State(app): State<SharedApp>,
    UiCaller(caller): UiCaller,
    Path(id): Path<String>,
) -> Response {
    if let Err(error) = caller.require(Role::Viewer) {
        return error_page(&error);
    }
    let stored = match app.store.load_run(&id).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return error_page(&ApiError::not_found(format!("no run with id `{id}`"))),
        Err(error) => return error_page(&error.into()),
    };
    let plan = match spec_of(&stored).and_then(|spec| {
        spec.plan()
            .map_err(|e| ApiError::internal(format!("run {id} has an invalid plan: {e}")))
    }) {
        Ok(plan) => plan,
        Err(error) => return error_page(&error),
    };
    let report = engine::report(&stored.state, &plan);
    html(
        ReportPage {
            nav: Nav::of(&app, &caller),
            runbook: stored.runbook.clone(),
            status: stored.state.run.status.name().to_string(),
            tasks: stored.state.tasks.len(),
            critical_path_ms: duration_text(report.critical_path_ms),
            makespan: duration_text(report.makespan_ms),
            sequential: duration_text(report.sequential_ms),
            speedup: format!("{:.2}", report.speedup),
            slowest: report
                .slowest
                .iter()
                .map(|t| (t.task.clone(), duration_text(t.duration_ms)))
                .collect(),
            approval_wait: duration_text(report.approval_wait_ms),
            critical_path: report.critical_path,
            id,
        }
        .render(),
    )
}

#[derive(Template)]
#[template(path = "pause.html")]
struct PausePage {
    nav: Nav,
    paused: bool,
    by: String,
    reason: String,
    at: String,
}

pub async fn pause(State(app): State<SharedApp>, UiCaller(caller): UiCaller) -> Response {
    let stored = match app.global_pause_view(&caller).await {
        Ok(stored) => stored,
        Err(error) => return error_page(&error),
    };
    let text = |key: &str| {
        stored
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    html(
        PausePage {
            nav: Nav::of(&app, &caller),
            paused: stored
                .get("paused")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            by: text("by"),
            reason: text("reason"),
            at: time_text(stored.get("at_ms").and_then(Value::as_i64)),
        }
        .render(),
    )
}
