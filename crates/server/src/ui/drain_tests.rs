//! Drain tests: the list (runbook, target, schedule in its time zone, next firing, last
//! result) and one test's page (its executions with the criteria that failed and links to
//! their drain and restore runs, trend charts over the executions, and "run now"). Every read
//! is the handler behind `GET /api/v1/drain-tests[/{name}]`, so roles are the API's; "run
//! now" is sent by the script to `POST /api/v1/drain-tests/{name}/run`, which checks the
//! operator role and writes the audit entry.

use askama::Template;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use levee_store::DrainTestExecution;
use serde_json::Value;

use super::layout::{Trend, TrendInput, duration_text, trend};
use super::pages::{Nav, error_page, time_text};
use super::{UiCaller, html};
use crate::SharedApp;
use crate::drain_tests::{DrainTestView, get_drain_test, list_drain_tests};

/// Execution states during which a drain test's page re-reads itself.
const ACTIVE_STATES: [&str; 2] = ["draining", "restoring"];

/// A drain test as the list and its page show it.
pub struct DrainTestRow {
    pub name: String,
    pub description: String,
    pub runbook: String,
    pub restore_runbook: String,
    pub target: String,
    /// The cron expression with its time zone, or that it only runs when asked.
    pub schedule: String,
    /// The next firing in the schedule's time zone (and in UTC), or empty.
    pub next: String,
    pub last_state: String,
}

impl DrainTestRow {
    fn of(view: &DrainTestView) -> DrainTestRow {
        let schedule = match (&view.cron, &view.time_zone) {
            (Some(cron), Some(tz)) => format!("{cron} ({tz})"),
            (Some(cron), None) => cron.clone(),
            _ => "none: it runs only when asked".to_string(),
        };
        let next = match (view.next_run_ms, &view.time_zone) {
            (Some(ms), Some(tz)) => zoned_text(ms, tz),
            (Some(ms), None) => time_text(Some(ms)),
            _ => String::new(),
        };
        DrainTestRow {
            name: view.name.clone(),
            description: view.description.clone().unwrap_or_default(),
            runbook: view.runbook.clone(),
            restore_runbook: view.restore_runbook.clone(),
            target: target_text(&view.target),
            schedule,
            next,
            last_state: view.last_state.clone().unwrap_or_default(),
        }
    }
}

/// `ms` in the time zone `tz` (`2026-01-06 04:00 CET`), with UTC after it unless `tz` is UTC.
fn zoned_text(ms: i64, tz: &str) -> String {
    let Ok(at) = jiff::Timestamp::from_millisecond(ms) else {
        return String::new();
    };
    match at.in_tz(tz) {
        Ok(zoned) if tz != "UTC" => format!(
            "{} ({})",
            zoned.strftime("%Y-%m-%d %H:%M %Z"),
            at.strftime("%H:%M UTC")
        ),
        _ => at.strftime("%Y-%m-%d %H:%M UTC").to_string(),
    }
}

/// The API's target (`{ "datacenter": NAME }` or `{ "least_recently_tested": [...] }`) in
/// words.
fn target_text(target: &Value) -> String {
    if let Some(dc) = target.get("datacenter").and_then(Value::as_str) {
        return dc.to_string();
    }
    if let Some(list) = target
        .get("least_recently_tested")
        .and_then(Value::as_array)
    {
        let names: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
        return format!("the least recently tested of {}", names.join(", "));
    }
    target.to_string()
}

/// The pass criteria in words.
fn pass_text(pass: &Value) -> Vec<String> {
    let mut criteria = Vec::new();
    if let Some(max) = pass.get("max_duration_ms").and_then(Value::as_u64) {
        criteria.push(format!(
            "max_duration: drain and restore within {}",
            duration_text(max)
        ));
    }
    if pass.get("no_health_breach").and_then(Value::as_bool) == Some(true) {
        criteria.push("no_health_breach: no task stalls on a failing health check".to_string());
    }
    if pass.get("restore_completed").and_then(Value::as_bool) == Some(true) {
        criteria.push("restore_completed: the restore run succeeds".to_string());
    }
    criteria
}

#[derive(Template)]
#[template(path = "drain_tests.html")]
struct DrainTestsPage {
    nav: Nav,
    tests: Vec<DrainTestRow>,
    /// Some test has an execution going on: the page re-reads itself.
    active: bool,
}

pub async fn drain_tests(State(app): State<SharedApp>, UiCaller(caller): UiCaller) -> Response {
    let views = match list_drain_tests(State(app.clone()), caller.clone()).await {
        Ok(Json(views)) => views,
        Err(error) => return error_page(&error),
    };
    html(
        DrainTestsPage {
            nav: Nav::of(&app, &caller),
            active: views
                .iter()
                .any(|v| ACTIVE_STATES.contains(&v.last_state.as_deref().unwrap_or(""))),
            tests: views.iter().map(DrainTestRow::of).collect(),
        }
        .render(),
    )
}

/// One phase (drain or restore) of an execution, from its report.
pub struct PhaseCell {
    /// `drain` or `restore`.
    pub phase: &'static str,
    /// The run, once started.
    pub run: Option<String>,
    pub status: String,
    pub took: String,
    pub stalls: usize,
    pub health_breaches: usize,
    pub critical_path: String,
    pub speedup: String,
}

impl PhaseCell {
    fn of(phase: &'static str, report: &Value, run: Option<&String>) -> PhaseCell {
        let count = |key: &str| report[key].as_array().map_or(0, Vec::len);
        let ms = |key: &str| report[key].as_u64().map(duration_text).unwrap_or_default();
        PhaseCell {
            phase,
            run: run.cloned(),
            status: report["status"].as_str().unwrap_or_default().to_string(),
            took: ms("duration_ms"),
            stalls: count("stalls"),
            health_breaches: count("health_breaches"),
            critical_path: ms("critical_path_ms"),
            speedup: report["speedup"]
                .as_f64()
                .map(|s| format!("{s:.2}×"))
                .unwrap_or_default(),
        }
    }
}

/// One execution of the test, newest first.
pub struct ExecutionRow {
    pub id: String,
    pub trigger: String,
    pub scheduled: String,
    pub target: String,
    pub state: String,
    /// The pass criteria that failed, one per line; why it was skipped.
    pub failures: Vec<String>,
    /// The drain, then the restore.
    pub phases: [PhaseCell; 2],
    pub total: String,
    pub created_by: String,
}

impl ExecutionRow {
    fn of(e: &DrainTestExecution, tz: Option<&str>) -> ExecutionRow {
        let mut failures: Vec<String> = e.report["failures"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if failures.is_empty() && !e.reason.is_empty() {
            failures.push(e.reason.clone());
        }
        ExecutionRow {
            id: e.id.clone(),
            trigger: e.trigger.clone(),
            scheduled: match tz {
                Some(tz) => zoned_text(e.scheduled_ms, tz),
                None => time_text(Some(e.scheduled_ms)),
            },
            target: e.target.clone(),
            state: e.state.clone(),
            failures,
            phases: [
                PhaseCell::of("drain", &e.report["drain"], e.drain_run.as_ref()),
                PhaseCell::of("restore", &e.report["restore"], e.restore_run.as_ref()),
            ],
            total: e.report["total_ms"]
                .as_u64()
                .map(duration_text)
                .unwrap_or_default(),
            created_by: e.created_by.clone(),
        }
    }
}

/// One trend chart of a drain test's page.
pub struct TrendChart {
    pub id: &'static str,
    pub title: &'static str,
    pub chart: Trend,
}

fn ms_text(v: f64) -> String {
    duration_text(v.max(0.0).round() as u64)
}

fn count_text(v: f64) -> String {
    if (v - v.round()).abs() < 0.05 {
        format!("{}", v.round())
    } else {
        format!("{v:.1}")
    }
}

/// The trend charts from the API's `trends` (finished executions, oldest first): duration
/// per phase, stalls and health breaches, critical path length per phase.
fn trend_charts(trends: &[Value]) -> Vec<TrendChart> {
    let labels: Vec<String> = trends
        .iter()
        .map(|t| {
            let at = time_text(t["scheduled_ms"].as_i64());
            let short = at.get(5..16).unwrap_or(&at).to_string();
            format!("{short} {}", t["state"].as_str().unwrap_or_default())
        })
        .collect();
    let values = |phase: &str, key: &str| -> Vec<Option<f64>> {
        trends
            .iter()
            .map(|t| {
                if phase.is_empty() {
                    t[key].as_f64()
                } else {
                    t[phase][key].as_f64()
                }
            })
            .collect()
    };
    let breaches: Vec<Option<f64>> = trends
        .iter()
        .map(|t| {
            Some(
                t["drain"]["health_breaches"].as_f64().unwrap_or(0.0)
                    + t["restore"]["health_breaches"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    vec![
        TrendChart {
            id: "duration",
            title: "Duration per phase",
            chart: trend(
                &labels,
                &[
                    TrendInput {
                        name: "drain",
                        class: "s-drain",
                        values: values("drain", "duration_ms"),
                    },
                    TrendInput {
                        name: "restore",
                        class: "s-restore",
                        values: values("restore", "duration_ms"),
                    },
                    TrendInput {
                        name: "drain and restore",
                        class: "s-total",
                        values: values("", "total_ms"),
                    },
                ],
                ms_text,
            ),
        },
        TrendChart {
            id: "stalls",
            title: "Stalls and health breaches",
            chart: trend(
                &labels,
                &[
                    TrendInput {
                        name: "drain stalls",
                        class: "s-drain",
                        values: values("drain", "stalls"),
                    },
                    TrendInput {
                        name: "restore stalls",
                        class: "s-restore",
                        values: values("restore", "stalls"),
                    },
                    TrendInput {
                        name: "health breaches",
                        class: "s-breach",
                        values: breaches,
                    },
                ],
                count_text,
            ),
        },
        TrendChart {
            id: "critical-path",
            title: "Critical path length",
            chart: trend(
                &labels,
                &[
                    TrendInput {
                        name: "drain",
                        class: "s-drain",
                        values: values("drain", "critical_path_ms"),
                    },
                    TrendInput {
                        name: "restore",
                        class: "s-restore",
                        values: values("restore", "critical_path_ms"),
                    },
                ],
                ms_text,
            ),
        },
    ]
}

#[derive(Template)]
#[template(path = "drain_test.html")]
struct DrainTestPage {
    nav: Nav,
    t: DrainTestRow,
    pass: Vec<String>,
    storm: bool,
    /// The execution going on, if any: "run now" is refused until it ends.
    active: Option<ExecutionRow>,
    executions: Vec<ExecutionRow>,
    finished: usize,
    charts: Vec<TrendChart>,
}

pub async fn drain_test(
    State(app): State<SharedApp>,
    UiCaller(caller): UiCaller,
    Path(name): Path<String>,
) -> Response {
    let view = match get_drain_test(State(app.clone()), caller.clone(), Path(name)).await {
        Ok(Json(view)) => view,
        Err(error) => return error_page(&error),
    };
    let tz = view.time_zone.as_deref();
    let executions: Vec<ExecutionRow> = view
        .history
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|e| ExecutionRow::of(e, tz))
        .collect();
    let trends = view.trends.as_deref().unwrap_or_default();
    html(
        DrainTestPage {
            nav: Nav::of(&app, &caller),
            t: DrainTestRow::of(&view),
            pass: pass_text(&view.pass),
            storm: view.storm,
            active: view
                .history
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|e| ACTIVE_STATES.contains(&e.state.as_str()))
                .map(|e| ExecutionRow::of(e, tz)),
            executions,
            finished: trends.len(),
            charts: trend_charts(trends),
        }
        .render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_the_schedule_s_zone_with_utc_beside() {
        // 2026-01-06 03:00 UTC.
        let ms = 1_767_668_400_000;
        assert_eq!(zoned_text(ms, "UTC"), "2026-01-06 03:00 UTC");
        assert_eq!(
            zoned_text(ms, "Europe/Berlin"),
            "2026-01-06 04:00 CET (03:00 UTC)"
        );
    }

    #[test]
    fn targets_and_criteria_read_as_words() {
        assert_eq!(
            target_text(&serde_json::json!({ "datacenter": "east" })),
            "east"
        );
        assert_eq!(
            target_text(&serde_json::json!({ "least_recently_tested": ["a", "b"] })),
            "the least recently tested of a, b"
        );
        let pass = serde_json::json!({ "max_duration_ms": 90_000, "no_health_breach": true,
            "restore_completed": false });
        assert_eq!(
            pass_text(&pass),
            vec![
                "max_duration: drain and restore within 1m 30s".to_string(),
                "no_health_breach: no task stalls on a failing health check".to_string(),
            ]
        );
    }
}
