//! One attempt of one task: pre-conditions, the `TaskStarted` commit, the stage (with its
//! steps journaled and its health checks watched), post-conditions, and the report back to
//! the run's actor.
//!
//! The side effect begins only after the actor has committed `TaskStarted`; each step of a
//! paced stage is acknowledged to the stage only after its `StepCommitted` is committed, so a
//! restarted attempt continues after the last step the journal holds.

use std::sync::Arc;
use std::time::Duration;

use levee_engine::runbook::{CheckPhase, CheckSkips, Event, MAX_TASK_TIMEOUT_MS};
use levee_stages::{
    CancelToken, Canceller, CheckRunner, MAX_OUTPUT_BYTES, OutputSink, PaceWatch, StageContext,
    StageOutcome, StageOutput, Step, StepReporter,
};
use levee_store::TaskOutput;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Msg;
use super::spec::{CheckSpec, RunSpec, TaskSpec};
use crate::auth::{Caller, Role, Scope};
use crate::error::ApiError;
use crate::machines::{App, OwnedReport};

/// How often a running task's health checks are evaluated.
pub const HEALTH_CHECK_INTERVAL_MS: u64 = 5_000;
/// How often a `state` stage looks at the machine it waits for.
pub const STATE_POLL_INTERVAL_MS: u64 = 250;
/// How long an approval request stays open when the task does not say (`expires`).
pub const DEFAULT_APPROVAL_EXPIRY_MS: u64 = 60 * 60 * 1_000;
/// Most bytes of check results kept in a task's output.
pub const MAX_CHECK_REPORT_BYTES: usize = 16 * 1024;

pub(crate) struct Attempt {
    pub app: Arc<App>,
    pub run_id: String,
    pub spec: Arc<RunSpec>,
    pub index: usize,
    pub attempt: u32,
    pub from_step: u32,
    pub skip_checks: CheckSkips,
    pub cancel: CancelToken,
    pub events: mpsc::Sender<Msg>,
    pub stuck_after_ms: Option<u64>,
    /// `TaskStarted` was committed with the dispatch (an idempotent task without
    /// pre-conditions): go straight to the stage.
    pub started: bool,
    /// What the last committed step recorded, handed back to a paced stage that continues.
    pub step_state: Value,
    /// The operator's pace, as it changes.
    pub pace: PaceWatch,
    /// The run's lease epoch, handed to stages whose targets accept a fencing token.
    pub epoch: i64,
}

pub(crate) fn spawn(attempt: Attempt) {
    let guard = attempt.app.runs.attempt_started();
    tokio::spawn(async move {
        attempt.run().await;
        drop(guard);
    });
}

/// How the stage part of an attempt ended, before post-conditions.
enum Ended {
    Stage(StageOutcome),
    /// A health check failed while the stage ran; the stage was stopped.
    Unhealthy(String, StageOutput),
}

impl Attempt {
    fn task(&self) -> &TaskSpec {
        &self.spec.tasks[self.index]
    }

    fn id(&self) -> String {
        self.task().plan.id.clone()
    }

    fn output(&self, outcome: &str, text: String, cut_bytes: u64, data: Value) -> TaskOutput {
        TaskOutput {
            task: self.id(),
            attempt: self.attempt,
            at_ms: self.app.now_ms(),
            outcome: outcome.to_string(),
            text,
            cut_bytes,
            data,
        }
    }

    /// Sends an event and waits until the actor has committed it.
    async fn commit(&self, event: Event) -> Result<(), ApiError> {
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Event {
            event,
            output: None,
            audit: None,
            reply: Some(reply),
        };
        if self.events.send(msg).await.is_err() {
            return Err(ApiError::internal("the run's actor stopped"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(ApiError::internal("the run's actor stopped")))
    }

    /// Reports the end of the attempt; nobody waits for it.
    async fn report(&self, event: Event, output: Option<TaskOutput>) {
        let msg = Msg::Event {
            event,
            output,
            audit: None,
            reply: None,
        };
        // If the actor is gone the server is stopping; the restart recovers the task.
        let _ = self.events.send(msg).await;
    }

    async fn run(self) {
        let task = self.task().clone();
        let id = task.plan.id.clone();
        if !self.started
            && !self.skip_checks.pre
            && let Err(report) = self.evaluate(&task.pre, false).await
        {
            self.app.metrics.task_ended("check_failed");
            let output = self.output("pre_check_failed", report.clone(), 0, Value::Null);
            self.report(
                Event::CheckFailed {
                    task: id,
                    attempt: self.attempt,
                    phase: CheckPhase::Pre,
                    reason: report,
                },
                Some(output),
            )
            .await;
            return;
        }
        if self.cancel.is_cancelled() {
            return;
        }
        // Journal, then act: nothing of the stage happens before this is durable.
        if !self.started
            && self
                .commit(Event::TaskStarted {
                    task: id.clone(),
                    attempt: self.attempt,
                })
                .await
                .is_err()
        {
            return;
        }
        let started = Instant::now();
        if let Some(threshold_ms) = self.stuck_after_ms {
            self.watch_for_stuck(threshold_ms, started);
        }
        let ended = match task.plan.stage.as_str() {
            levee_engine::runbook::APPROVAL_STAGE => self.approval(&task).await,
            "state" => self.state_stage(&task).await,
            _ => self.local_stage(&task).await,
        };
        let (event, output) = match ended {
            Ended::Stage(StageOutcome::Succeeded { output }) => {
                match self.evaluate(&task.post, false).await {
                    Ok(()) => {
                        self.app.metrics.task_ended("succeeded");
                        (
                            Event::TaskSucceeded {
                                task: id,
                                attempt: self.attempt,
                            },
                            self.stage_output("succeeded", output, None),
                        )
                    }
                    Err(report) => {
                        self.app.metrics.task_ended("check_failed");
                        (
                            Event::CheckFailed {
                                task: id,
                                attempt: self.attempt,
                                phase: CheckPhase::Post,
                                reason: report.clone(),
                            },
                            self.stage_output("post_check_failed", output, Some(&report)),
                        )
                    }
                }
            }
            Ended::Stage(StageOutcome::Failed {
                error,
                retryable,
                output,
            }) => {
                self.app.metrics.task_ended("failed");
                let kept = self.stage_output("failed", output, Some(&error));
                (
                    Event::TaskFailed {
                        task: id,
                        attempt: self.attempt,
                        error,
                        retryable,
                    },
                    kept,
                )
            }
            Ended::Stage(StageOutcome::TimedOut) => {
                self.app.metrics.task_ended("timed_out");
                (
                    Event::TimedOut {
                        task: id,
                        attempt: self.attempt,
                    },
                    None,
                )
            }
            Ended::Unhealthy(report, output) => {
                self.app.metrics.task_ended("check_failed");
                let kept = self.stage_output("health_check_failed", output, Some(&report));
                (
                    Event::CheckFailed {
                        task: id,
                        attempt: self.attempt,
                        phase: CheckPhase::Health,
                        reason: report,
                    },
                    kept,
                )
            }
            // Cancelled by the run (abort, skip, approval given, timeout): it already knows.
            Ended::Stage(StageOutcome::Cancelled) => return,
        };
        self.report(event, output).await;
    }

    fn stage_output(
        &self,
        outcome: &str,
        output: StageOutput,
        note: Option<&str>,
    ) -> Option<TaskOutput> {
        let mut text = output.captured.text;
        if let Some(note) = note {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(note);
        }
        if text.is_empty() && output.data.is_null() {
            return None;
        }
        Some(self.output(outcome, text, output.captured.cut_bytes, output.data))
    }

    /// Raises a stuck alert if the attempt is still running `threshold_ms` after it started.
    fn watch_for_stuck(&self, threshold_ms: u64, started: Instant) {
        let events = self.events.clone();
        let cancel = self.cancel.clone();
        let task = self.id();
        let attempt = self.attempt;
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep_until(started + Duration::from_millis(threshold_ms)) => {}
                () = cancel.cancelled() => return,
            }
            let running_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            // Refused (and ignored) if the attempt has ended meanwhile.
            let _ = events
                .send(Msg::Event {
                    event: Event::TaskStuck {
                        task,
                        attempt,
                        running_ms,
                        threshold_ms,
                    },
                    output: None,
                    audit: None,
                    reply: None,
                })
                .await;
        });
    }

    fn deadline(&self, task: &TaskSpec) -> Instant {
        let ms = task
            .plan
            .timeout_ms
            .unwrap_or(MAX_TASK_TIMEOUT_MS)
            .min(MAX_TASK_TIMEOUT_MS);
        Instant::now() + Duration::from_millis(ms)
    }

    /// Runs a stage of the stage library, journaling its steps and watching its health.
    async fn local_stage(&self, task: &TaskSpec) -> Ended {
        let Some(stage) = self.app.stages.stage(&task.plan.stage) else {
            return Ended::Stage(StageOutcome::Failed {
                error: format!("this server has no stage `{}`", task.plan.stage),
                retryable: false,
                output: StageOutput::default(),
            });
        };
        let watch_health = !self.skip_checks.health && !task.health.is_empty();
        // Health gates the start too: a stage never begins while its health is already bad.
        if watch_health && let Err(report) = self.evaluate(&task.health, true).await {
            return Ended::Unhealthy(report, StageOutput::default());
        }
        let (reporter, mut steps) = StepReporter::channel();
        let (stopper, stop) = Canceller::new();
        let sink = OutputSink::new(MAX_OUTPUT_BYTES);
        let ctx = StageContext {
            task_id: task.plan.id.clone(),
            run_id: self.run_id.clone(),
            attempt: self.attempt,
            resume_from: (self.from_step > 0).then(|| Step {
                index: u64::from(self.from_step - 1),
                state: self.step_state.clone(),
            }),
            cancel: stop,
            deadline: self.deadline(task),
            steps: reporter,
            output: sink.clone(),
            pace: self.pace.clone(),
            checks: Arc::new(ServerChecks {
                app: self.app.clone(),
            }),
            fencing_token: Some(self.epoch),
        };
        let mut health = tokio::time::interval_at(
            Instant::now() + Duration::from_millis(HEALTH_CHECK_INTERVAL_MS),
            Duration::from_millis(HEALTH_CHECK_INTERVAL_MS),
        );
        let mut unhealthy: Option<String> = None;
        let mut cancelled = false;
        let stage_run = stage.run(ctx, &task.with);
        tokio::pin!(stage_run);
        let outcome = loop {
            tokio::select! {
                outcome = &mut stage_run => break outcome,
                Some(commit) = steps.recv() => {
                    let step = u32::try_from(commit.step.index + 1).unwrap_or(u32::MAX);
                    let answer = self
                        .commit(Event::StepCommitted {
                            task: task.plan.id.clone(),
                            attempt: self.attempt,
                            step,
                            state: commit.step.state,
                        })
                        .await
                        .map_err(|e| e.message);
                    let _ = commit.ack.send(answer);
                }
                () = self.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    stopper.cancel();
                }
                _ = health.tick(), if watch_health && unhealthy.is_none() && !cancelled => {
                    if let Err(report) = self.evaluate(&task.health, true).await {
                        unhealthy = Some(report);
                        stopper.cancel();
                    }
                }
            }
        };
        match (unhealthy, outcome) {
            (Some(report), StageOutcome::Cancelled) if !cancelled => {
                let captured = sink.snapshot();
                Ended::Unhealthy(
                    report,
                    StageOutput {
                        captured,
                        data: Value::Null,
                    },
                )
            }
            (_, outcome) => Ended::Stage(outcome),
        }
    }

    /// Waits for an operator's approval (which cancels this wait) or the request's expiry.
    async fn approval(&self, task: &TaskSpec) -> Ended {
        let expires_ms = task
            .with
            .get("expires")
            .and_then(Value::as_str)
            .and_then(|text| levee_model::parse_duration_ms(text).ok())
            .unwrap_or(DEFAULT_APPROVAL_EXPIRY_MS);
        tokio::select! {
            () = self.cancel.cancelled() => Ended::Stage(StageOutcome::Cancelled),
            () = tokio::time::sleep(Duration::from_millis(expires_ms)) => {
                Ended::Stage(StageOutcome::Failed {
                    error: format!("nobody approved within {expires_ms} ms; the request expired"),
                    retryable: false,
                    output: StageOutput::default(),
                })
            }
        }
    }

    /// The identity a run acts as on state machines: the run itself.
    fn caller(&self) -> Caller {
        Caller {
            name: format!("run:{}", self.run_id),
            role: Role::Admin,
            scope: Scope::All,
            remote: None,
        }
    }

    /// Advances a state machine or reports an event to it, then waits for `wait_for`.
    async fn state_stage(&self, task: &TaskSpec) -> Ended {
        let failed = |error: String| {
            Ended::Stage(StageOutcome::Failed {
                error,
                retryable: false,
                output: StageOutput::default(),
            })
        };
        let with = &task.with;
        let Some(machine) = with.get("machine").and_then(Value::as_str) else {
            return failed("the state stage needs `machine`".to_string());
        };
        let advance = with.get("advance").and_then(Value::as_str);
        let event = with.get("event").and_then(Value::as_str);
        if advance.is_some() || event.is_some() {
            let state = match advance {
                Some(state) => state.to_string(),
                None => match self.app.machine(machine).await {
                    Ok((record, _)) => record.state.clone(),
                    Err(error) => return failed(error.message),
                },
            };
            let report = OwnedReport {
                state: state.clone(),
                event: event.unwrap_or(levee_model::DEFAULT_EVENT).to_string(),
                reporter: None,
                expect_version: None,
                now_ms: self.app.now_ms(),
            };
            match self
                .app
                .report(&self.caller(), machine, report, "run.state_stage")
                .await
            {
                Ok(levee_store::OpOutcome::Applied(_) | levee_store::OpOutcome::Unchanged(_)) => {}
                Ok(levee_store::OpOutcome::Refused(refusal, _)) => {
                    return failed(format!("machine `{machine}` refused: {refusal}"));
                }
                Ok(levee_store::OpOutcome::NotFound) => {
                    return failed(format!("no machine with id `{machine}`"));
                }
                Err(error) => {
                    return Ended::Stage(StageOutcome::Failed {
                        error: error.message,
                        retryable: true,
                        output: StageOutput::default(),
                    });
                }
            }
        }
        let Some(wait_for) = with.get("wait_for").and_then(Value::as_array) else {
            return Ended::Stage(StageOutcome::Succeeded {
                output: StageOutput::default(),
            });
        };
        let wanted: Vec<&str> = wait_for.iter().filter_map(Value::as_str).collect();
        let mut deadline = self.deadline(task);
        if let Some(ms) = with
            .get("timeout")
            .and_then(Value::as_str)
            .and_then(|t| levee_model::parse_duration_ms(t).ok())
        {
            deadline = deadline.min(Instant::now() + Duration::from_millis(ms));
        }
        loop {
            match self.app.machine(machine).await {
                Ok((record, _)) if wanted.contains(&record.state.as_str()) => {
                    return Ended::Stage(StageOutcome::Succeeded {
                        output: StageOutput {
                            data: json!({ "machine": machine, "state": record.state }),
                            ..StageOutput::default()
                        },
                    });
                }
                Ok(_) => {}
                Err(error) if error.status == axum::http::StatusCode::NOT_FOUND => {
                    return failed(error.message);
                }
                Err(_) => {} // The store is briefly unavailable: look again.
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Ended::Stage(StageOutcome::Cancelled),
                () = tokio::time::sleep_until(deadline) => return Ended::Stage(StageOutcome::TimedOut),
                () = tokio::time::sleep(Duration::from_millis(STATE_POLL_INTERVAL_MS)) => {}
            }
        }
    }

    /// Evaluates checks in order; the first that fails ends the evaluation. `Err` holds a
    /// report of every check evaluated, for the operator. Health observations are also
    /// kept for the UI's charts (`runs::health`).
    async fn evaluate(&self, checks: &[CheckSpec], health: bool) -> Result<(), String> {
        let mut report = String::new();
        for check in checks {
            let outcome = evaluate_check(&self.app, &self.cancel, check).await;
            if health {
                self.app.runs.health.record(
                    &self.run_id,
                    &self.spec.tasks[self.index].plan.id,
                    &check.name,
                    self.app.now_ms(),
                    outcome.ok,
                    &outcome.observed,
                );
            }
            let (ok, observed, reason) = (outcome.ok, outcome.observed, outcome.reason);
            if report.len() < MAX_CHECK_REPORT_BYTES {
                report.push_str(&format!(
                    "{} {}: {} ({})\n",
                    if ok { "ok" } else { "FAILED" },
                    check.name,
                    reason,
                    observed
                ));
            }
            if !ok {
                return Err(format!(
                    "{} does not hold: {reason}{}",
                    check.name,
                    if observed.is_empty() {
                        String::new()
                    } else {
                        format!(" (observed: {observed})")
                    }
                ));
            }
        }
        Ok(())
    }
}

/// The checks a stage may wait on (`wait` with `until`): the server's and the library's.
struct ServerChecks {
    app: Arc<App>,
}

#[async_trait::async_trait]
impl CheckRunner for ServerChecks {
    async fn evaluate(
        &self,
        cancel: &CancelToken,
        check: &str,
        args: &Value,
    ) -> levee_stages::CheckOutcome {
        let spec = CheckSpec {
            name: check.to_string(),
            check: check.to_string(),
            args: args.clone(),
        };
        evaluate_check(&self.app, cancel, &spec).await
    }
}

/// Evaluates one check: the server's `state` check here, the others by the stage library.
pub(crate) async fn evaluate_check(
    app: &App,
    cancel: &CancelToken,
    check: &CheckSpec,
) -> levee_stages::CheckOutcome {
    if check.check == "state" {
        return state_check(app, &check.args).await;
    }
    match app.stages.check(&check.check) {
        Some(implementation) => implementation.evaluate(cancel, &check.args).await,
        None => levee_stages::CheckOutcome {
            ok: false,
            observed: String::new(),
            reason: format!("this server has no `{}` check", check.check),
        },
    }
}

async fn state_check(app: &App, args: &Value) -> levee_stages::CheckOutcome {
    let machine = args.get("machine").and_then(Value::as_str).unwrap_or("");
    let wanted: Vec<&str> = args
        .get("in")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match app.machine(machine).await {
        Ok((record, _)) => levee_stages::CheckOutcome {
            ok: wanted.contains(&record.state.as_str()),
            observed: record.state.clone(),
            reason: format!(
                "machine `{machine}` is in `{}`; wanted one of {}",
                record.state,
                wanted.join(", ")
            ),
        },
        Err(error) => levee_stages::CheckOutcome {
            ok: false,
            observed: String::new(),
            reason: error.message,
        },
    }
}
