//! Drain tests (`kind: DrainTest`): every replica runs [`run`], a loop that fires due drain
//! tests and moves their executions on.
//!
//! A firing is a row in the store whose id names its slot, `dt-NAME-YYYYMMDDTHHMMZ`: every
//! replica that finds a firing due tries to claim the slot with one atomic insert, and only
//! the replica whose insert landed acts on it, so a firing happens once. Firings missed by more
//! than [`CATCH_UP_WINDOW_MS`] (the servers were down) are recorded as skipped, not run late;
//! of several due firings only the newest runs. An execution drains (the test's runbook with
//! the target datacenter, run `ID-drain`), then restores (`ID-restore`) whatever the drain's
//! outcome, then is judged by its pass criteria from the runs' outcomes and journals, and its
//! report (per phase: duration, stalls, health breaches, critical path) is stored with it.
//! Runs are started idempotently by name, so a replica that died between two steps leaves the
//! next pass (on any replica) to start the run or find it started; each step of an execution
//! is compare-and-set on its version.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use levee_engine::runbook::{CheckPhase, JournalKind, StallCause};
use levee_model::{DrainTestDef, RunbookCall};
use levee_store::{DrainTestExecution, DrainTestFilter};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::auth::{Caller, Role, Scope};
use crate::error::ApiError;
use crate::runs::{StartRequest, spec_of};
use crate::{App, SharedApp};

/// The kind drain tests are stored under.
pub const KIND_DRAIN_TEST: &str = levee_model::DRAIN_TEST_KIND;
/// How often each replica looks for due drain tests and moves executions on.
pub const DRAIN_TEST_INTERVAL_MS: u64 = 500;
/// A firing found due later than this after its time (the servers were down) is recorded as
/// skipped instead of run: a drain test at an hour nobody expects is worse than none.
pub const CATCH_UP_WINDOW_MS: i64 = 3_600_000;
/// How far back missed firings are looked for (and recorded as skipped).
pub const MISSED_FIRINGS_LOOKBACK_MS: i64 = 7 * 24 * 3_600_000;
/// Most missed firings of one test recorded as skipped in one pass (the newest).
pub const MAX_MISSED_FIRINGS_RECORDED: usize = 100;
/// Executions shown in a drain test's history and used for its trends.
pub const HISTORY_EXECUTIONS: u32 = 100;
/// Journal entries of one run read for its report's stalls.
pub const MAX_JOURNAL_ENTRIES_READ: u32 = 10_000;
/// How long each phase (drain, restore) may run when the test sets no `max_duration`: a
/// drain stalled past it (on a health breach nobody answered, say) is aborted and the
/// datacenter restored; a restore past it is left running for a person and the execution
/// fails. A drain test must never hold a datacenter drained indefinitely.
pub const DEFAULT_PHASE_DEADLINE_MS: i64 = 6 * 3_600_000;

/// Runs until `shutdown` resolves; a failed pass is logged and retried on the next.
pub async fn run(app: Arc<App>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut interval = tokio::time::interval(Duration::from_millis(DRAIN_TEST_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = interval.tick() => {}
        }
        if let Err(error) = app.drive_drain_tests().await {
            tracing::warn!(error = %error.message, "moving drain tests failed; retrying");
        }
    }
}

/// The caller a drain test's runs are started as.
fn drain_test_caller(name: &str) -> Caller {
    Caller {
        name: format!("drain-test:{name}"),
        role: Role::Operator,
        scope: Scope::All,
        remote: None,
    }
}

/// `dt-NAME-YYYYMMDDTHHMMZ` for a scheduled slot; manual runs add seconds and `-manual`.
pub fn execution_id(test: &str, at_ms: i64, manual: bool) -> String {
    let format = if manual {
        "%Y%m%dT%H%M%SZ-manual"
    } else {
        "%Y%m%dT%H%MZ"
    };
    let stamp = jiff::Timestamp::from_millisecond(at_ms)
        .map(|t| t.strftime(format).to_string())
        .unwrap_or_else(|_| at_ms.to_string());
    format!("dt-{test}-{stamp}")
}

/// A drain test with its execution history and trends, as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct DrainTestView {
    pub name: String,
    pub description: Option<String>,
    pub runbook: String,
    pub restore_runbook: String,
    /// `{ "datacenter": NAME }` or `{ "least_recently_tested": [NAME, ...] }`.
    #[schema(value_type = Object)]
    pub target: Value,
    pub cron: Option<String>,
    pub time_zone: Option<String>,
    /// The next firing, epoch ms, if it has a schedule.
    pub next_run_ms: Option<i64>,
    #[schema(value_type = Object)]
    pub pass: Value,
    pub storm: bool,
    /// The newest execution's state, if any.
    pub last_state: Option<String>,
    /// Executions, newest first (only in `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub history: Option<Vec<DrainTestExecution>>,
    /// Per finished execution, oldest first: duration per phase, stalls, health breaches and
    /// critical path length (only in `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub trends: Option<Vec<Value>>,
}

impl App {
    async fn stored_drain_tests(&self) -> Result<Vec<DrainTestDef>, ApiError> {
        let mut tests = Vec::new();
        for record in self.store.definitions(Some(KIND_DRAIN_TEST)).await? {
            let def: DrainTestDef =
                serde_json::from_value(record.compiled.clone()).map_err(|e| {
                    ApiError::internal(format!("stored drain test {}: {e}", record.name))
                })?;
            tests.push((def, record.created_at_ms));
        }
        Ok(tests.into_iter().map(|(def, _)| def).collect())
    }

    async fn stored_drain_test(&self, name: &str) -> Result<(DrainTestDef, i64), ApiError> {
        let record = self
            .store
            .definition(KIND_DRAIN_TEST, name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no drain test named `{name}`")))?;
        let def = serde_json::from_value(record.compiled.clone())
            .map_err(|e| ApiError::internal(format!("stored drain test {name}: {e}")))?;
        Ok((def, record.created_at_ms))
    }

    /// One pass: fire what is due, then move every active execution on. Returns how many
    /// executions changed.
    pub async fn drive_drain_tests(self: &Arc<Self>) -> Result<usize, ApiError> {
        let tests = self.stored_drain_tests().await?;
        let mut changed = 0;
        for test in &tests {
            match self.fire_due(test).await {
                Ok(count) => changed += count,
                Err(error) => tracing::warn!(drain_test = %test.name, error = %error.message,
                    "firing a drain test failed; retrying on the next pass"),
            }
        }
        let active = self
            .store
            .drain_test_executions(&DrainTestFilter {
                active_only: true,
                ..DrainTestFilter::default()
            })
            .await?;
        for execution in active {
            let Some(test) = tests.iter().find(|t| t.name == execution.drain_test) else {
                continue;
            };
            match self.advance_execution(test, execution).await {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(error) => tracing::warn!(error = %error.message,
                    "moving a drain test execution failed; retrying on the next pass"),
            }
        }
        Ok(changed)
    }

    /// Claims the slots of `test` that came due since its last recorded firing: the newest
    /// within the catch-up window runs, the others are recorded as skipped.
    async fn fire_due(self: &Arc<Self>, test: &DrainTestDef) -> Result<usize, ApiError> {
        let Some(schedule) = &test.schedule else {
            return Ok(0);
        };
        let (cron, tz) = schedule.parts().map_err(ApiError::internal)?;
        let (_, applied_ms) = self.stored_drain_test(&test.name).await?;
        let now = self.now_ms();
        let history = self.history(&test.name, HISTORY_EXECUTIONS).await?;
        let last_scheduled = history
            .iter()
            .filter(|e| e.trigger == "schedule")
            .map(|e| e.scheduled_ms)
            .max();
        let after = last_scheduled
            .unwrap_or(applied_ms)
            .max(applied_ms)
            .max(now - MISSED_FIRINGS_LOOKBACK_MS);
        let ts = |ms: i64| jiff::Timestamp::from_millisecond(ms).map_err(ApiError::internal);
        let firings = cron.firings_between(ts(after)?, ts(now)?, &tz, MAX_MISSED_FIRINGS_RECORDED);
        let mut changed = 0;
        for (index, firing) in firings.iter().enumerate() {
            let at = firing.as_millisecond();
            let newest = index + 1 == firings.len();
            let skip = if !newest {
                Some("a later firing was due too; only the newest runs".to_string())
            } else if now - at > CATCH_UP_WINDOW_MS {
                Some(format!(
                    "missed by {} s (the servers were down?); firings later than {} s are \
                     skipped, not run late",
                    (now - at) / 1000,
                    CATCH_UP_WINDOW_MS / 1000
                ))
            } else {
                history
                    .iter()
                    .find(|e| !e.is_final())
                    .map(|e| format!("the execution `{}` was still running", e.id))
            };
            let stored = match skip {
                Some(reason) => {
                    self.claim(test, at, "schedule", None, reason, &history)
                        .await?
                }
                None => {
                    self.claim(test, at, "schedule", Some(()), String::new(), &history)
                        .await?
                }
            };
            if let Some(execution) = stored {
                changed += 1;
                if !execution.is_final() {
                    tracing::info!(drain_test = %test.name, execution = %execution.id,
                        target = %execution.target, "drain test fired");
                    self.advance_execution(test, execution).await?;
                }
            }
        }
        Ok(changed)
    }

    /// Stores a new execution for the slot `at`; `None` if another replica (or an earlier
    /// pass) took it. `run` says whether it runs (else it is skipped with `reason`).
    async fn claim(
        &self,
        test: &DrainTestDef,
        at: i64,
        trigger: &str,
        run: Option<()>,
        reason: String,
        history: &[DrainTestExecution],
    ) -> Result<Option<DrainTestExecution>, ApiError> {
        let now = self.now_ms();
        let target = match run {
            Some(()) => test
                .target
                .pick(|dc| {
                    history
                        .iter()
                        .filter(|e| e.target == dc && e.state != "skipped")
                        .map(|e| e.scheduled_ms)
                        .max()
                })
                .to_string(),
            None => String::new(),
        };
        let execution = DrainTestExecution {
            id: execution_id(&test.name, at, trigger == "manual"),
            drain_test: test.name.clone(),
            scheduled_ms: at,
            trigger: trigger.to_string(),
            target,
            state: if run.is_some() { "draining" } else { "skipped" }.to_string(),
            reason,
            drain_run: None,
            restore_run: None,
            created_by: self.replica.id.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            finished_ms: if run.is_some() { None } else { Some(now) },
            version: 1,
            report: json!({}),
        };
        Ok(self
            .store
            .claim_drain_test_slot(&execution)
            .await?
            .then_some(execution))
    }

    async fn history(&self, name: &str, limit: u32) -> Result<Vec<DrainTestExecution>, ApiError> {
        Ok(self
            .store
            .drain_test_executions(&DrainTestFilter {
                drain_test: Some(name.to_string()),
                active_only: false,
                limit,
            })
            .await?)
    }

    /// Starts (or finds) the run of `call` for an execution; its view if it could start, the
    /// reason it cannot otherwise.
    async fn phase_run(
        self: &Arc<Self>,
        test: &DrainTestDef,
        run_name: String,
        call: &RunbookCall,
        params: serde_json::Map<String, Value>,
    ) -> Result<Result<crate::runs::views::RunView, String>, ApiError> {
        let request = StartRequest {
            params: params.into_iter().collect::<BTreeMap<_, _>>(),
            name: Some(run_name),
            max_parallel: None,
            start: true,
        };
        match self
            .start_run(&drain_test_caller(&test.name), &call.runbook.value, request)
            .await
        {
            Ok((view, _)) => Ok(Ok(view)),
            Err(error) if error.status.is_client_error() => Ok(Err(format!(
                "the runbook `{}` cannot start: {}",
                call.runbook.value, error.message
            ))),
            Err(error) => Err(error),
        }
    }

    /// Moves one execution on: drain, then restore, then judge. `true` if it changed.
    async fn advance_execution(
        self: &Arc<Self>,
        test: &DrainTestDef,
        execution: DrainTestExecution,
    ) -> Result<bool, ApiError> {
        let mut next = execution.clone();
        let now = self.now_ms();
        match execution.state.as_str() {
            "draining" => {
                let name = format!("{}-drain", execution.id);
                let params = test.drain_params(&execution.target);
                match self.phase_run(test, name, &test.drain, params).await? {
                    Err(reason) => {
                        next.report["drain"] = json!({ "runbook": test.drain.runbook.value,
                            "status": "not_started", "outcome": reason });
                        next.state = "restoring".to_string();
                    }
                    Ok(view) => {
                        if next.drain_run.is_none() {
                            next.drain_run = Some(view.id.clone());
                        }
                        if !is_finished(&view.status) {
                            if let Some(overdue_ms) = overdue(test, &view, now) {
                                // Aborted now, the run finishes; the next pass reports it and
                                // restores.
                                self.abort_overdue_drain(test, &view, overdue_ms).await?;
                                return Ok(false);
                            }
                            if execution.drain_run.is_some() {
                                return Ok(false);
                            }
                        } else {
                            next.report["drain"] = self.phase_report(&view).await?;
                            next.state = "restoring".to_string();
                        }
                    }
                }
            }
            "restoring" => {
                let name = format!("{}-restore", execution.id);
                let params = test.restore_params(&execution.target);
                match self.phase_run(test, name, &test.restore, params).await? {
                    Err(reason) => {
                        next.report["restore"] = json!({ "runbook": test.restore.runbook.value,
                            "status": "not_started", "outcome": reason });
                        judge(test, &mut next, now);
                    }
                    Ok(view) => {
                        if next.restore_run.is_none() {
                            next.restore_run = Some(view.id.clone());
                        }
                        if !is_finished(&view.status) {
                            if overdue(test, &view, now).is_some() {
                                let mut phase = self.phase_report(&view).await?;
                                phase["outcome"] = json!(format!(
                                    "still {} after {}, the drain test's deadline; the run is \
                                     left running for a person to finish",
                                    view.status,
                                    duration_text(phase_deadline_ms(test))
                                ));
                                next.report["restore"] = phase;
                                judge(test, &mut next, now);
                            } else if execution.restore_run.is_some() {
                                return Ok(false);
                            }
                        } else {
                            next.report["restore"] = self.phase_report(&view).await?;
                            judge(test, &mut next, now);
                        }
                    }
                }
            }
            _ => return Ok(false),
        }
        next.version += 1;
        next.updated_at_ms = now;
        match self.store.update_drain_test_execution(&next).await {
            Ok(()) => {
                if next.is_final() {
                    tracing::info!(execution = %next.id, state = %next.state,
                        reason = %next.reason, "drain test finished");
                }
                Ok(true)
            }
            // Another replica moved it first: its step stands.
            Err(levee_store::Error::Conflict(_)) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// A finished run's part of the report: outcome, duration, stalls (health breaches
    /// apart), and the post-run report's critical path.
    async fn phase_report(&self, view: &crate::runs::views::RunView) -> Result<Value, ApiError> {
        let stored = self
            .store
            .load_run(&view.id)
            .await?
            .ok_or_else(|| ApiError::internal(format!("run {} vanished", view.id)))?;
        let spec = spec_of(&stored)?;
        let plan = spec
            .plan()
            .map_err(|e| ApiError::internal(format!("run {} has an invalid plan: {e}", view.id)))?;
        let report = levee_engine::runbook::report(&stored.state, &plan);
        let journal = self
            .store
            .run_journal(&view.id, 0, MAX_JOURNAL_ENTRIES_READ)
            .await?;
        let mut stalls = Vec::new();
        let mut health_breaches = Vec::new();
        for record in &journal {
            if let JournalKind::TaskStalled { cause, reason } = &record.entry.kind {
                let task = record.entry.task.as_ref().map(|t| t.to_string());
                let item = json!({ "task": task, "cause": cause, "reason": reason,
                    "at_ms": record.entry.at_ms });
                if matches!(cause, StallCause::Check(CheckPhase::Health)) {
                    health_breaches.push(item.clone());
                }
                stalls.push(item);
            }
        }
        let started = view.started_at_ms.unwrap_or(view.created_at_ms);
        Ok(json!({
            "runbook": view.runbook,
            "run": view.id,
            "status": view.status,
            "outcome": view.outcome,
            "started_at_ms": started,
            "finished_at_ms": view.finished_at_ms,
            "duration_ms": view.finished_at_ms.map(|f| f - started),
            "stalls": stalls,
            "health_breaches": health_breaches,
            "critical_path": report.critical_path,
            "critical_path_ms": report.critical_path_ms,
            "makespan_ms": report.makespan_ms,
            "sequential_ms": report.sequential_ms,
            "speedup": report.speedup,
        }))
    }

    /// Starts a drain test now (`POST /api/v1/drain-tests/{name}/run`).
    pub async fn run_drain_test_now(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
    ) -> Result<DrainTestExecution, ApiError> {
        caller.require(Role::Operator)?;
        caller.require_unscoped()?;
        let (test, _) = self.stored_drain_test(name).await?;
        let history = self.history(name, HISTORY_EXECUTIONS).await?;
        if let Some(active) = history.iter().find(|e| !e.is_final()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "drain_test_running",
                format!(
                    "the execution `{}` of `{name}` is still {}; wait for it to finish",
                    active.id, active.state
                ),
            ));
        }
        let now = self.now_ms();
        let mut execution = self
            .claim(&test, now, "manual", Some(()), String::new(), &history)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "drain_test_running",
                    format!("`{name}` was started this same second; see its history"),
                )
            })?;
        execution.created_by = caller.name.clone();
        let audit = self.audit_entry(caller, "drain_test.run", &execution.id, json!({}));
        self.store.audit(audit).await?;
        self.advance_execution(&test, execution.clone()).await?;
        Ok(self
            .store
            .drain_test_execution(&execution.id)
            .await?
            .unwrap_or(execution))
    }

    fn drain_test_view(
        &self,
        test: &DrainTestDef,
        history: &[DrainTestExecution],
        full: bool,
    ) -> DrainTestView {
        let next_run_ms = test.schedule.as_ref().and_then(|s| {
            let (cron, tz) = s.parts().ok()?;
            let now = jiff::Timestamp::from_millisecond(self.now_ms()).ok()?;
            cron.next_after(now, &tz).map(|t| t.as_millisecond())
        });
        let trends = full.then(|| {
            history
                .iter()
                .rev()
                .filter(|e| e.state == "passed" || e.state == "failed")
                .map(|e| {
                    let phase = |name: &str| {
                        json!({
                            "duration_ms": e.report[name]["duration_ms"],
                            "stalls": e.report[name]["stalls"].as_array().map_or(0, Vec::len),
                            "health_breaches":
                                e.report[name]["health_breaches"].as_array().map_or(0, Vec::len),
                            "critical_path_ms": e.report[name]["critical_path_ms"],
                        })
                    };
                    json!({
                        "execution": e.id,
                        "scheduled_ms": e.scheduled_ms,
                        "target": e.target,
                        "state": e.state,
                        "total_ms": e.report["total_ms"],
                        "drain": phase("drain"),
                        "restore": phase("restore"),
                    })
                })
                .collect()
        });
        DrainTestView {
            name: test.name.clone(),
            description: test.description.clone(),
            runbook: test.drain.runbook.value.clone(),
            restore_runbook: test.restore.runbook.value.clone(),
            target: serde_json::to_value(&test.target).unwrap_or(Value::Null),
            cron: test.schedule.as_ref().map(|s| s.cron.clone()),
            time_zone: test.schedule.as_ref().map(|s| s.time_zone.clone()),
            next_run_ms,
            pass: serde_json::to_value(&test.pass).unwrap_or(Value::Null),
            storm: test.storm,
            last_state: history.first().map(|e| e.state.clone()),
            history: full.then(|| history.to_vec()),
            trends,
        }
    }
}

/// How long one phase may run: the test's `max_duration`, else [`DEFAULT_PHASE_DEADLINE_MS`].
fn phase_deadline_ms(test: &DrainTestDef) -> i64 {
    test.pass
        .max_duration_ms
        .map_or(DEFAULT_PHASE_DEADLINE_MS, |ms| ms as i64)
}

/// By how much an unfinished phase's run is past its deadline, if it is.
fn overdue(test: &DrainTestDef, view: &crate::runs::views::RunView, now: i64) -> Option<i64> {
    let started = view.started_at_ms.unwrap_or(view.created_at_ms);
    let over = now - started - phase_deadline_ms(test);
    (over > 0).then_some(over)
}

/// `90 min`, `6 h`: a deadline as people say it.
fn duration_text(ms: i64) -> String {
    const MINUTE_MS: i64 = 60_000;
    const HOUR_MS: i64 = 60 * MINUTE_MS;
    if ms % HOUR_MS == 0 {
        format!("{} h", ms / HOUR_MS)
    } else if ms >= MINUTE_MS {
        format!("{} min", ms / MINUTE_MS)
    } else {
        format!("{} s", ms / 1000)
    }
}

impl App {
    /// Aborts a drain run past its deadline, saying why in its journal and the audit log. A
    /// run another pass (or replica) already aborted is left as it is.
    async fn abort_overdue_drain(
        self: &Arc<Self>,
        test: &DrainTestDef,
        view: &crate::runs::views::RunView,
        overdue_ms: i64,
    ) -> Result<(), ApiError> {
        let request = crate::runs::ControlRequest {
            control: "abort".to_string(),
            task: None,
            dep: None,
            pace: None,
            reason: format!(
                "drain test `{}`: the drain ran past its {} deadline (by {} s); aborting it \
                 so the datacenter is restored",
                test.name,
                duration_text(phase_deadline_ms(test)),
                overdue_ms / 1000
            ),
        };
        match self
            .control_run(&drain_test_caller(&test.name), &view.id, request)
            .await
        {
            Ok(_) => {
                tracing::warn!(drain_test = %test.name, run = %view.id,
                    "drain past its deadline aborted");
                Ok(())
            }
            Err(error) if error.status.is_client_error() => Ok(()),
            Err(error) => Err(error),
        }
    }
}

fn is_finished(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "aborted")
}

/// Judges a finished execution by its test's pass criteria, from the report's phases.
fn judge(test: &DrainTestDef, execution: &mut DrainTestExecution, now: i64) {
    let report = &execution.report;
    let started = report["drain"]["started_at_ms"]
        .as_i64()
        .unwrap_or(execution.created_at_ms);
    let finished = report["restore"]["finished_at_ms"].as_i64().unwrap_or(now);
    let total_ms = finished - started;
    let mut failures = Vec::new();
    if report["drain"]["status"] != "succeeded" {
        failures.push(format!(
            "the drain run did not succeed ({}): {}",
            report["drain"]["status"].as_str().unwrap_or("?"),
            report["drain"]["outcome"]
                .as_str()
                .unwrap_or("no reason given")
        ));
    }
    if test.pass.restore_completed && report["restore"]["status"] != "succeeded" {
        failures.push(format!(
            "restore_completed: the restore run did not succeed ({}): {}",
            report["restore"]["status"].as_str().unwrap_or("?"),
            report["restore"]["outcome"]
                .as_str()
                .unwrap_or("no reason given")
        ));
    }
    if test.pass.no_health_breach {
        for phase in ["drain", "restore"] {
            if let Some(breach) = report[phase]["health_breaches"]
                .as_array()
                .and_then(|b| b.first())
            {
                failures.push(format!(
                    "no_health_breach: task `{}` of the {phase} run stalled on its health \
                     check: {}",
                    breach["task"].as_str().unwrap_or("?"),
                    breach["reason"].as_str().unwrap_or("")
                ));
            }
        }
    }
    if let Some(max) = test.pass.max_duration_ms
        && total_ms > max as i64
    {
        failures.push(format!(
            "max_duration: drain and restore took {} ms, more than the {} ms allowed",
            total_ms, max
        ));
    }
    execution.report["total_ms"] = json!(total_ms);
    execution.report["failures"] = json!(failures);
    execution.state = if failures.is_empty() {
        "passed"
    } else {
        "failed"
    }
    .to_string();
    execution.reason = failures.join("; ");
    execution.finished_ms = Some(now);
}

pub fn router() -> Router<SharedApp> {
    Router::new()
        .route("/drain-tests", get(list_drain_tests))
        .route("/drain-tests/{name}", get(get_drain_test))
        .route("/drain-tests/{name}/run", post(run_drain_test))
        .route("/drain-tests/{name}/executions", get(list_executions))
        .route("/drain-test-executions/{id}", get(get_execution))
}

/// Every drain test: runbooks, target, schedule, next firing and last outcome.
#[utoipa::path(get, path = "/api/v1/drain-tests", tag = "drain-tests",
    responses((status = 200, body = Vec<DrainTestView>)))]
pub async fn list_drain_tests(
    State(app): State<SharedApp>,
    caller: Caller,
) -> Result<axum::Json<Vec<DrainTestView>>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut views = Vec::new();
    for test in app.stored_drain_tests().await? {
        let last = app.history(&test.name, 1).await?;
        views.push(app.drain_test_view(&test, &last, false));
    }
    Ok(axum::Json(views))
}

/// One drain test with its history (newest first) and trends (oldest first).
#[utoipa::path(get, path = "/api/v1/drain-tests/{name}", tag = "drain-tests",
    params(("name" = String, Path)),
    responses((status = 200, body = DrainTestView), (status = 404)))]
pub async fn get_drain_test(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<DrainTestView>, ApiError> {
    caller.require(Role::Viewer)?;
    let (test, _) = app.stored_drain_test(&name).await?;
    let history = app.history(&name, HISTORY_EXECUTIONS).await?;
    Ok(axum::Json(app.drain_test_view(&test, &history, true)))
}

/// Starts a drain test now; 409 while one of its executions is still running.
#[utoipa::path(post, path = "/api/v1/drain-tests/{name}/run", tag = "drain-tests",
    params(("name" = String, Path)),
    responses((status = 201, description = "The execution"), (status = 404), (status = 409)))]
pub async fn run_drain_test(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let execution = app.run_drain_test_now(&caller, &name).await?;
    Ok((StatusCode::CREATED, axum::Json(execution)).into_response())
}

/// A drain test's executions, newest first.
#[utoipa::path(get, path = "/api/v1/drain-tests/{name}/executions", tag = "drain-tests",
    params(("name" = String, Path)),
    responses((status = 200, description = "Executions, newest first"), (status = 404)))]
pub async fn list_executions(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<Vec<DrainTestExecution>>, ApiError> {
    caller.require(Role::Viewer)?;
    app.stored_drain_test(&name).await?;
    Ok(axum::Json(app.history(&name, HISTORY_EXECUTIONS).await?))
}

/// One execution with its report: per phase the run, outcome, duration, stalls, health
/// breaches and critical path; the pass criteria that failed.
#[utoipa::path(get, path = "/api/v1/drain-test-executions/{id}", tag = "drain-tests",
    params(("id" = String, Path)),
    responses((status = 200, description = "The execution and its report"), (status = 404)))]
pub async fn get_execution(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<DrainTestExecution>, ApiError> {
    caller.require(Role::Viewer)?;
    app.store
        .drain_test_execution(&id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("no drain test execution `{id}`")))
}
