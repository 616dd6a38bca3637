//! Runbook runs: a pure scheduler over a validated DAG of tasks.
//!
//! [`apply`] takes the plan, the run's stored [`RunState`], one [`Event`] and a [`Context`]
//! (the injected clock and the global pause flag) and returns a [`Decision`]: a [`Change`] to
//! commit and [`Action`]s to execute after the commit. Nothing here reads the clock, sleeps or
//! does I/O, so the same code runs against production in real time and against the simulator
//! in virtual time, and a failure found by the simulator is reproducible from its seed.
//!
//! The caller keeps this contract (journal, then act):
//! 1. load the plan and the committed state; call [`apply`];
//! 2. commit [`Decision::change`] (the store writes the changed task rows, the run row and the
//!    journal in one transaction, compare-and-set on [`RunRecord::version`]);
//! 3. only then execute [`Decision::actions`]. A [`Action::StartTask`] is already recorded as
//!    dispatched (the task is `Running` with `in_flight: false`); the executor evaluates the
//!    pre-conditions, commits [`Event::TaskStarted`], and only then begins the side effect.
//!
//! Execution is at-least-once. After a crash the caller applies [`Event::Recovered`]: a task
//! whose side effect never began starts again; one that was in flight starts again only if its
//! stage is idempotent, and otherwise stalls until an operator retries or skips it.

mod analysis;
mod plan;

pub use analysis::{
    MIN_HISTORY_FOR_STUCK, REPORT_SLOWEST_TASKS, RunReport, TaskTime, is_stuck, report,
    stuck_threshold_ms,
};
pub use plan::{
    CheckCounts, CriticalPath, MAX_ATTEMPTS_PER_TASK, MAX_BACKOFF_MS, MAX_BACKOFF_MULTIPLIER,
    MAX_DEPS_PER_TASK, MAX_STEPS_PER_TASK, MAX_TASK_ID_BYTES, MAX_TASK_TIMEOUT_MS,
    MAX_TASKS_PER_RUN, PlanError, PlanTask, RetryPolicy, RunPlan, TaskId, critical_path,
    plan_waves,
};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Tasks of one run running at once unless the run says otherwise: enough to drain many
/// services in parallel, few enough that an operator can follow what is happening.
pub const DEFAULT_MAX_PARALLEL_TASKS: u32 = 32;
/// Largest concurrency limit a run may ask for.
pub const MAX_PARALLEL_TASKS: u32 = 10_000;
/// The actor named in journal entries the engine writes by itself.
pub const ENGINE_ACTOR: &str = "engine";
/// The stage that waits for a human; starting it also notifies that an approval is needed.
pub const APPROVAL_STAGE: &str = "approval";
/// Longest error message or reason kept in a record or journal entry, in bytes; a stage's
/// full output belongs in its own size-limited log, not in every journal line.
pub const MAX_MESSAGE_BYTES: usize = 4_096;

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created, waiting for [`Control::Start`].
    Pending,
    Running,
    /// No new task starts; running ones may finish.
    Paused,
    /// Every task succeeded or was skipped.
    Succeeded,
    /// Nothing can progress and some task failed. An operator may still retry or skip the
    /// failed task, which reopens the run.
    Failed,
    /// An operator aborted the run; final.
    Aborted,
}

impl RunStatus {
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Aborted => "aborted",
        }
    }

    /// Whether the run has reached an end state (`levee run --wait` returns).
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Aborted
        )
    }

    /// Whether nothing, not even an operator, can change the run any more.
    pub fn is_final(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Aborted)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The phase of a check that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckPhase {
    /// Before the stage starts: overriding it starts the stage without the check.
    Pre,
    /// After the stage ended: overriding it accepts the task as succeeded.
    Post,
    /// While the stage runs: overriding it continues from the last committed step without
    /// the health gate.
    Health,
}

impl std::fmt::Display for CheckPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckPhase::Pre => "pre-condition",
            CheckPhase::Post => "post-condition",
            CheckPhase::Health => "health",
        })
    }
}

/// Why a task waits for an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StallCause {
    /// A check failed; an operator may override it.
    Check(CheckPhase),
    /// A non-idempotent step was in flight when the server stopped.
    InFlightAtRestart,
    /// A non-idempotent step ran past its timeout and may be partly done.
    TimedOut,
}

/// Where one task is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TaskStatus {
    /// Some dependency has not succeeded (or been skipped) yet.
    Waiting,
    /// Dependencies done; waiting for a free slot or for the run to be resumed.
    Ready,
    /// Dispatched as `attempt`. `in_flight` turns true when the executor commits
    /// [`Event::TaskStarted`], just before the side effect begins; until then a crash cannot
    /// have left anything half done.
    Running {
        attempt: u32,
        started_at_ms: i64,
        in_flight: bool,
    },
    /// `attempt` failed and may be tried again from `not_before_ms`.
    Retrying {
        attempt: u32,
        not_before_ms: i64,
        error: String,
    },
    Succeeded,
    /// Failed for good (retries exhausted or not retryable); blocks its dependents.
    Failed {
        error: String,
    },
    /// Waits for an operator: retry, skip, or (for a failed check) override.
    Stalled {
        cause: StallCause,
        reason: String,
    },
    Skipped,
    Cancelled,
}

impl TaskStatus {
    pub fn name(&self) -> &'static str {
        match self {
            TaskStatus::Waiting => "waiting",
            TaskStatus::Ready => "ready",
            TaskStatus::Running { .. } => "running",
            TaskStatus::Retrying { .. } => "retrying",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed { .. } => "failed",
            TaskStatus::Stalled { .. } => "stalled",
            TaskStatus::Skipped => "skipped",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Succeeded or skipped: dependents may go.
    pub fn is_done(&self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Skipped)
    }

    /// Ready, running or retrying: the run can progress without an operator.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            TaskStatus::Ready | TaskStatus::Running { .. } | TaskStatus::Retrying { .. }
        )
    }
}

/// Checks an operator has overridden; the next start of the task skips them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSkips {
    pub pre: bool,
    pub health: bool,
}

/// The stored state of one task of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub status: TaskStatus,
    /// Attempts dispatched so far, each with a number of its own (1, 2, ...), so a late
    /// report from an attempt that was timed out or cancelled is recognised and refused.
    pub attempts: u32,
    /// `attempts` when the retry budget last started afresh (an operator retry, or an
    /// interruption that was not the task's fault); the retry policy counts from here.
    pub budget_from: u32,
    /// Steps committed by a paced stage; a restarted attempt continues from here.
    pub step: u32,
    /// What the stage recorded with its last committed step (the value a ramp reached), handed
    /// back to it when it continues.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub step_state: serde_json::Value,
    /// The operator's pace for a paced stage (its meaning is the stage's); `Null` when the
    /// task runs at the pace it was written with.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub pace: serde_json::Value,
    /// When the task was first dispatched.
    pub started_at_ms: Option<i64>,
    /// When it succeeded, failed for good, or was skipped or cancelled.
    pub finished_at_ms: Option<i64>,
    /// Weak dependencies an operator chose not to wait for.
    pub overridden_deps: Vec<TaskId>,
    pub skip_checks: CheckSkips,
}

/// The stored state of a run as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub status: RunStatus,
    pub max_parallel: u32,
    /// Grows by one with every committed change; the basis of compare-and-set.
    pub version: i64,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub started_by: Option<String>,
    pub finished_at_ms: Option<i64>,
    /// Why the run failed or was aborted.
    pub outcome: Option<String>,
}

/// Everything stored about a run: the run row and one record per task, in plan order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub run: RunRecord,
    pub tasks: Vec<TaskRecord>,
}

impl RunState {
    /// A pending run of `plan`, every task waiting.
    pub fn new(plan: &RunPlan, max_parallel: u32, now_ms: i64) -> Result<RunState, PlanError> {
        if max_parallel == 0 || max_parallel > MAX_PARALLEL_TASKS {
            return Err(PlanError::BadParallelism {
                requested: max_parallel,
                limit: MAX_PARALLEL_TASKS,
            });
        }
        Ok(RunState {
            run: RunRecord {
                status: RunStatus::Pending,
                max_parallel,
                version: 1,
                created_at_ms: now_ms,
                started_at_ms: None,
                started_by: None,
                finished_at_ms: None,
                outcome: None,
            },
            tasks: plan
                .tasks()
                .iter()
                .map(|t| TaskRecord {
                    id: t.id.clone(),
                    // A task whose `when` was false is skipped from the start.
                    status: if t.skip.is_some() {
                        TaskStatus::Skipped
                    } else {
                        TaskStatus::Waiting
                    },
                    attempts: 0,
                    budget_from: 0,
                    step: 0,
                    step_state: serde_json::Value::Null,
                    pace: serde_json::Value::Null,
                    started_at_ms: None,
                    finished_at_ms: t.skip.as_ref().map(|_| now_ms),
                    overridden_deps: Vec::new(),
                    skip_checks: CheckSkips::default(),
                })
                .collect(),
        })
    }

    /// Applies a committed change in memory, exactly as the store applies it to its rows.
    pub fn commit(&mut self, change: &Change) {
        self.run = change.run.clone();
        for (index, record) in &change.tasks {
            self.tasks[*index] = record.clone();
        }
    }

    pub fn task(&self, id: &str) -> Option<&TaskRecord> {
        self.tasks.iter().find(|t| t.id == id)
    }
}

/// Inputs that are not stored with the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// The injected clock (epoch ms in production, virtual time in the simulator).
    pub now_ms: i64,
    /// The operator-wide pause: while set, no run starts a new task.
    pub global_pause: bool,
}

/// Who asked for an operator control, and why; both go into the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub actor: String,
    pub reason: String,
}

/// What an operator may ask of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "control", rename_all = "snake_case")]
pub enum Control {
    Start,
    Pause,
    Resume,
    /// Cancels running tasks and everything not yet done; final.
    Abort,
    /// Treats the task as done without (further) running it.
    Skip {
        task: TaskId,
    },
    /// Runs a failed or stalled task again from its last committed step, with a fresh retry
    /// budget and every check evaluated again.
    Retry {
        task: TaskId,
    },
    /// Accepts the failed check that stalled the task.
    OverrideCondition {
        task: TaskId,
    },
    /// Lets `task` start without waiting for its weak dependency `dep`.
    OverrideWeakDep {
        task: TaskId,
        dep: TaskId,
    },
    /// Gives the approval a running `approval` task waits for; the task succeeds. Who may
    /// approve (named approvers, not the run's starter) is the server's rule, checked before.
    Approve {
        task: TaskId,
    },
    /// Changes the pace (for a `ramp`: `step` and `wait`) of a paced task that has not
    /// finished; keys given replace the ones set before. Whether the stage is paced and the
    /// pace valid is the server's check, made before.
    SetPace {
        task: TaskId,
        pace: serde_json::Value,
    },
}

/// Something that happened to a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The executor is about to begin the side effect of `attempt` (its pre-conditions
    /// held). Committed before the side effect: journal, then act.
    TaskStarted {
        task: TaskId,
        attempt: u32,
    },
    /// A paced stage finished step `step` (counted from 1); a restart continues after it,
    /// from `state` (what the stage needs to continue: the value reached, say).
    StepCommitted {
        task: TaskId,
        attempt: u32,
        step: u32,
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        state: serde_json::Value,
    },
    TaskSucceeded {
        task: TaskId,
        attempt: u32,
    },
    /// The attempt failed. `retryable` is the stage's word that running it again is safe;
    /// a non-idempotent stage says so only when it failed before its side effect began.
    TaskFailed {
        task: TaskId,
        attempt: u32,
        error: String,
        retryable: bool,
    },
    CheckFailed {
        task: TaskId,
        attempt: u32,
        phase: CheckPhase,
        reason: String,
    },
    /// The executor gave up on the attempt at its timeout (it may also come from [`Event::Tick`]).
    TimedOut {
        task: TaskId,
        attempt: u32,
    },
    /// The attempt has run longer than its history says it should (see
    /// [`stuck_threshold_ms`]): journaled and notified; the task keeps running.
    TaskStuck {
        task: TaskId,
        attempt: u32,
        running_ms: u64,
        threshold_ms: u64,
    },
    /// The server restarted: whatever was running in the old process is gone.
    Recovered,
    /// Time passed: due retries may start and overdue attempts time out.
    Tick,
    Control {
        by: Operator,
        control: Control,
    },
}

/// What the caller does after committing the change, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Run the task's stage as `attempt`, continuing after `from_step` committed steps.
    StartTask {
        task: TaskId,
        attempt: u32,
        from_step: u32,
        skip_checks: CheckSkips,
    },
    /// Stop the attempt (aborted, skipped or timed out); its late reports will be refused.
    CancelTask {
        task: TaskId,
        attempt: u32,
    },
    Notify {
        kind: NotifyKind,
        task: Option<TaskId>,
        message: String,
    },
    RunFinished {
        status: RunStatus,
    },
    /// Apply [`Event::Tick`] at this time: the earliest retry or timeout ahead.
    WakeAt {
        at_ms: i64,
    },
    /// Hand the running attempt its new pace.
    SetPace {
        task: TaskId,
        attempt: u32,
        pace: serde_json::Value,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    Stalled,
    Failed,
    ApprovalNeeded,
    /// A task runs longer than its history says it should.
    Stuck,
    Finished,
}

/// What a journal entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JournalKind {
    RunStarted,
    RunPaused,
    RunResumed,
    RunAborted,
    /// An operator's retry, skip or override let a failed run progress again.
    RunReopened,
    RunFinished {
        status: RunStatus,
    },
    /// The server restarted and picked the run up.
    Recovered,
    TaskDispatched {
        attempt: u32,
        from_step: u32,
    },
    TaskStarted {
        attempt: u32,
    },
    StepCommitted {
        step: u32,
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        state: serde_json::Value,
    },
    TaskSucceeded {
        attempt: u32,
    },
    TaskRetrying {
        attempt: u32,
        not_before_ms: i64,
        error: String,
    },
    TaskFailed {
        attempt: u32,
        error: String,
    },
    TaskTimedOut {
        attempt: u32,
    },
    TaskStalled {
        cause: StallCause,
        /// Named apart from the entry's own `reason` (an operator's), which shares its object.
        #[serde(rename = "stall_reason")]
        reason: String,
    },
    /// After a restart, an interrupted attempt that is safe to run again was queued again.
    TaskRequeued {
        attempt: u32,
    },
    TaskSkipped,
    TaskCancelled,
    TaskRetried {
        from_step: u32,
    },
    ConditionOverridden {
        phase: CheckPhase,
    },
    WeakDepOverridden {
        dep: TaskId,
    },
    TaskStuck {
        attempt: u32,
        running_ms: u64,
        threshold_ms: u64,
    },
    Approved {
        attempt: u32,
    },
    /// An operator changed a paced task's pace; `pace` is the whole pace now in force.
    PaceChanged {
        pace: serde_json::Value,
    },
}

/// One line of a run's journal: the audit trail of who did what, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The run's version after this entry.
    pub version: i64,
    pub at_ms: i64,
    pub task: Option<TaskId>,
    /// An operator, or [`ENGINE_ACTOR`].
    pub actor: String,
    /// The operator's reason, for controls.
    pub reason: Option<String>,
    #[serde(flatten)]
    pub kind: JournalKind,
}

/// What to commit: the run row, the task rows that changed (by plan index), and the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub run: RunRecord,
    pub tasks: Vec<(usize, TaskRecord)>,
    pub journal: Vec<JournalEntry>,
}

impl Change {
    /// A change that stores nothing (a tick with nothing due, say).
    pub fn is_noop(&self) -> bool {
        self.journal.is_empty() && self.tasks.is_empty()
    }
}

/// The outcome of [`apply`]: commit `change`, then execute `actions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub change: Change,
    pub actions: Vec<Action>,
}

/// Why an event was refused. Refused executor reports (late or duplicate) are logged and
/// dropped; refused operator controls are answered with the reason and audited.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Refusal {
    #[error("the run has {state_tasks} task records but its plan has {plan_tasks} tasks")]
    PlanMismatch {
        plan_tasks: usize,
        state_tasks: usize,
    },
    #[error("the run has no task `{task}`")]
    UnknownTask { task: TaskId },
    #[error("task `{task}` is not running attempt {attempt} (it is {status})")]
    StaleAttempt {
        task: TaskId,
        attempt: u32,
        status: String,
    },
    #[error("task `{task}` has {steps} steps; step {step} does not exist")]
    StepOutOfRange { task: TaskId, step: u32, steps: u32 },
    #[error("the run is {status}; only a pending run can start")]
    AlreadyStarted { status: RunStatus },
    #[error("the run is {status}, not running")]
    NotRunning { status: RunStatus },
    #[error("the run is {status}, not paused")]
    NotPaused { status: RunStatus },
    #[error("the run is {status}; it takes no more controls")]
    RunEnded { status: RunStatus },
    #[error("task `{task}` is {status}; only a failed or stalled task can be retried")]
    NotRetryable { task: TaskId, status: String },
    #[error("task `{task}` is {status}; there is nothing left to skip")]
    NotSkippable { task: TaskId, status: String },
    #[error("task `{task}` is {status}; only a task stalled by a failed check can be overridden")]
    NotOverridable { task: TaskId, status: String },
    #[error("`{dep}` is not a weak dependency of task `{task}`")]
    NotAWeakDep { task: TaskId, dep: TaskId },
    #[error("task `{task}` already does not wait for `{dep}`")]
    AlreadyOverridden { task: TaskId, dep: TaskId },
    #[error("task `{task}` is {status}; only a waiting task waits for a dependency")]
    NotWaiting { task: TaskId, status: String },
    #[error("task `{task}` is {status}; only a task that has not finished can be re-paced")]
    NotPaceable { task: TaskId, status: String },
    #[error("task `{task}` does not wait for an approval (it is a `{stage}` task, {status})")]
    NotAwaitingApproval {
        task: TaskId,
        stage: String,
        status: String,
    },
}

impl Refusal {
    /// Stable machine-readable code, as in the JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::PlanMismatch { .. } => "plan_mismatch",
            Refusal::UnknownTask { .. } => "unknown_task",
            Refusal::StaleAttempt { .. } => "stale_attempt",
            Refusal::StepOutOfRange { .. } => "step_out_of_range",
            Refusal::AlreadyStarted { .. } => "already_started",
            Refusal::NotRunning { .. } => "not_running",
            Refusal::NotPaused { .. } => "not_paused",
            Refusal::RunEnded { .. } => "run_ended",
            Refusal::NotRetryable { .. } => "not_retryable",
            Refusal::NotSkippable { .. } => "not_skippable",
            Refusal::NotOverridable { .. } => "not_overridable",
            Refusal::NotAWeakDep { .. } => "not_a_weak_dep",
            Refusal::AlreadyOverridden { .. } => "already_overridden",
            Refusal::NotWaiting { .. } => "not_waiting",
            Refusal::NotAwaitingApproval { .. } => "not_awaiting_approval",
            Refusal::NotPaceable { .. } => "not_paceable",
        }
    }
}

/// Decides what `event` does to the run: the change to commit, then the actions to execute.
///
/// After handling the event itself, every decision also settles the run: tasks whose
/// dependencies are done become ready, free slots are given to ready tasks and due retries
/// (unless the run or everything is paused), and the run finishes when nothing is left to do.
pub fn apply(
    plan: &RunPlan,
    state: &RunState,
    event: &Event,
    ctx: Context,
) -> Result<Decision, Refusal> {
    if plan.len() != state.tasks.len() {
        return Err(Refusal::PlanMismatch {
            plan_tasks: plan.len(),
            state_tasks: state.tasks.len(),
        });
    }
    let mut draft = Draft {
        plan,
        base: state,
        ctx,
        run: state.run.clone(),
        tasks: BTreeMap::new(),
        journal: Vec::new(),
        actions: Vec::new(),
        promote_all: matches!(
            event,
            Event::Recovered
                | Event::Control {
                    control: Control::Start,
                    ..
                }
        ),
    };
    match event {
        Event::TaskStarted { task, attempt } => {
            let i = draft.running_attempt(task, *attempt)?;
            draft.started(i, *attempt);
        }
        Event::StepCommitted {
            task,
            attempt,
            step,
            state,
        } => {
            let i = draft.running_attempt(task, *attempt)?;
            draft.step_committed(i, *step, state)?;
        }
        Event::TaskSucceeded { task, attempt } => {
            let i = draft.running_attempt(task, *attempt)?;
            draft.succeed(i, *attempt);
        }
        Event::TaskFailed {
            task,
            attempt,
            error,
            retryable,
        } => {
            let i = draft.running_attempt(task, *attempt)?;
            draft.fail_attempt(i, *attempt, &clip(error), *retryable);
        }
        Event::CheckFailed {
            task,
            attempt,
            phase,
            reason,
        } => {
            let i = draft.running_attempt(task, *attempt)?;
            draft.stall(
                i,
                StallCause::Check(*phase),
                format!("{phase} check failed: {}", clip(reason)),
            );
        }
        Event::TimedOut { task, attempt } => {
            let i = draft.running_attempt(task, *attempt)?;
            draft.time_out(i);
        }
        Event::TaskStuck {
            task,
            attempt,
            running_ms,
            threshold_ms,
        } => {
            let i = draft.running_attempt(task, *attempt)?;
            draft.note(
                Some(i),
                JournalKind::TaskStuck {
                    attempt: *attempt,
                    running_ms: *running_ms,
                    threshold_ms: *threshold_ms,
                },
            );
            let message = format!(
                "task `{task}` has run for {running_ms} ms, past the {threshold_ms} ms that 75% \
                 of its past runs took"
            );
            draft.notify(NotifyKind::Stuck, Some(i), message);
        }
        Event::Recovered => draft.recover(),
        Event::Tick => draft.tick(),
        Event::Control { by, control } => draft.control(by, control)?,
    }
    draft.settle();
    Ok(draft.finish())
}

/// A decision being built: the stored state plus the task records changed so far, so a
/// decision costs memory for what it changes, not for the whole run.
struct Draft<'a> {
    plan: &'a RunPlan,
    base: &'a RunState,
    ctx: Context,
    run: RunRecord,
    tasks: BTreeMap<usize, TaskRecord>,
    journal: Vec<JournalEntry>,
    actions: Vec<Action>,
    /// Check every waiting task for promotion, not only those this decision could affect.
    promote_all: bool,
}

/// Counts and candidates gathered in one pass over a run's tasks.
#[derive(Default)]
struct Census {
    done: usize,
    waiting: usize,
    failed: usize,
    first_failed: Option<usize>,
    /// Ready, running or retrying.
    active: usize,
    running: usize,
    /// Ready tasks and retries whose backoff has ended.
    startable: Vec<usize>,
    /// The earliest future retry or timeout.
    wake: Option<i64>,
}

impl Draft<'_> {
    fn task(&self, i: usize) -> &TaskRecord {
        self.tasks.get(&i).unwrap_or(&self.base.tasks[i])
    }

    fn task_mut(&mut self, i: usize) -> &mut TaskRecord {
        let base = &self.base.tasks[i];
        self.tasks.entry(i).or_insert_with(|| base.clone())
    }

    fn status(&self, i: usize) -> &TaskStatus {
        &self.task(i).status
    }

    fn id(&self, i: usize) -> TaskId {
        self.plan.task(i).id.clone()
    }

    fn note(&mut self, task: Option<usize>, kind: JournalKind) {
        self.journal.push(JournalEntry {
            version: 0,
            at_ms: self.ctx.now_ms,
            task: task.map(|i| self.id(i)),
            actor: ENGINE_ACTOR.to_string(),
            reason: None,
            kind,
        });
    }

    fn note_by(&mut self, by: &Operator, task: Option<usize>, kind: JournalKind) {
        self.note(task, kind);
        let entry = self.journal.last_mut().expect("just pushed");
        entry.actor = clip(&by.actor);
        entry.reason = Some(clip(&by.reason));
    }

    fn notify(&mut self, kind: NotifyKind, task: Option<usize>, message: String) {
        let task = task.map(|i| self.id(i));
        self.actions.push(Action::Notify {
            kind,
            task,
            message,
        });
    }

    fn index(&self, task: &str) -> Result<usize, Refusal> {
        self.plan
            .index_of(task)
            .ok_or_else(|| Refusal::UnknownTask {
                task: task.to_string(),
            })
    }

    /// The task, if it is running `attempt`; executor reports about any other attempt are
    /// late (the attempt was cancelled or timed out) and must change nothing.
    fn running_attempt(&self, task: &str, attempt: u32) -> Result<usize, Refusal> {
        let i = self.index(task)?;
        match self.status(i) {
            TaskStatus::Running { attempt: a, .. } if *a == attempt => Ok(i),
            other => Err(Refusal::StaleAttempt {
                task: task.to_string(),
                attempt,
                status: other.name().to_string(),
            }),
        }
    }

    fn started(&mut self, i: usize, attempt: u32) {
        if let TaskStatus::Running { in_flight, .. } = &mut self.task_mut(i).status {
            if *in_flight {
                return; // A duplicate report: already journaled.
            }
            *in_flight = true;
        }
        self.note(Some(i), JournalKind::TaskStarted { attempt });
    }

    fn step_committed(
        &mut self,
        i: usize,
        step: u32,
        state: &serde_json::Value,
    ) -> Result<(), Refusal> {
        if let Some(steps) = self.plan.task(i).steps
            && step > steps
        {
            return Err(Refusal::StepOutOfRange {
                task: self.id(i),
                step,
                steps,
            });
        }
        if step <= self.task(i).step {
            return Ok(()); // Already committed: a repeated report after a restart.
        }
        let record = self.task_mut(i);
        record.step = step;
        record.step_state = state.clone();
        if let TaskStatus::Running { in_flight, .. } = &mut record.status {
            *in_flight = true;
        }
        self.note(
            Some(i),
            JournalKind::StepCommitted {
                step,
                state: state.clone(),
            },
        );
        Ok(())
    }

    fn succeed(&mut self, i: usize, attempt: u32) {
        let now = self.ctx.now_ms;
        let steps = self.plan.task(i).steps;
        let record = self.task_mut(i);
        record.status = TaskStatus::Succeeded;
        record.finished_at_ms = Some(now);
        if let Some(steps) = steps {
            record.step = steps;
        }
        self.note(Some(i), JournalKind::TaskSucceeded { attempt });
    }

    /// A failed attempt is retried after its backoff if the stage says that is safe and the
    /// budget allows; otherwise the task fails for good and a human is told.
    fn fail_attempt(&mut self, i: usize, attempt: u32, error: &str, retryable: bool) {
        let policy = self.plan.task(i).retries;
        let record = self.task(i);
        let used = record.attempts.saturating_sub(record.budget_from);
        if retryable && used < policy.max_attempts {
            let wait = i64::try_from(policy.backoff_ms(used)).unwrap_or(i64::MAX);
            let not_before_ms = self.ctx.now_ms.saturating_add(wait);
            self.task_mut(i).status = TaskStatus::Retrying {
                attempt,
                not_before_ms,
                error: error.to_string(),
            };
            self.note(
                Some(i),
                JournalKind::TaskRetrying {
                    attempt,
                    not_before_ms,
                    error: error.to_string(),
                },
            );
            return;
        }
        let now = self.ctx.now_ms;
        let record = self.task_mut(i);
        record.status = TaskStatus::Failed {
            error: error.to_string(),
        };
        record.finished_at_ms = Some(now);
        self.note(
            Some(i),
            JournalKind::TaskFailed {
                attempt,
                error: error.to_string(),
            },
        );
        let message = format!(
            "task `{}` failed after {used} attempt(s): {error}; its dependents wait",
            self.id(i)
        );
        self.notify(NotifyKind::Failed, Some(i), message);
    }

    fn stall(&mut self, i: usize, cause: StallCause, reason: String) {
        self.task_mut(i).status = TaskStatus::Stalled {
            cause,
            reason: reason.clone(),
        };
        self.note(
            Some(i),
            JournalKind::TaskStalled {
                cause,
                reason: reason.clone(),
            },
        );
        let message = format!("task `{}` stalled: {reason}", self.id(i));
        self.notify(NotifyKind::Stalled, Some(i), message);
    }

    /// A timed-out attempt is cancelled. If its side effect never began, or the stage is
    /// idempotent, it counts as a retryable failure; otherwise the step may be half done and
    /// only a human can say what to do.
    fn time_out(&mut self, i: usize) {
        let TaskStatus::Running {
            attempt, in_flight, ..
        } = *self.status(i)
        else {
            return;
        };
        let timeout = self.plan.task(i).timeout_ms.unwrap_or(0);
        self.actions.push(Action::CancelTask {
            task: self.id(i),
            attempt,
        });
        self.note(Some(i), JournalKind::TaskTimedOut { attempt });
        if !in_flight || self.plan.task(i).idempotent {
            self.fail_attempt(i, attempt, &format!("timed out after {timeout} ms"), true);
        } else {
            self.stall(
                i,
                StallCause::TimedOut,
                format!(
                    "timed out after {timeout} ms while a non-idempotent step was in flight; \
                     check it, then retry or skip"
                ),
            );
        }
    }

    fn tick(&mut self) {
        let now = self.ctx.now_ms;
        for i in 0..self.plan.len() {
            if let (TaskStatus::Running { started_at_ms, .. }, Some(timeout)) =
                (self.status(i), self.plan.task(i).timeout_ms)
                && now >= deadline(*started_at_ms, timeout)
            {
                self.time_out(i);
            }
        }
    }

    fn recover(&mut self) {
        if !matches!(self.run.status, RunStatus::Running | RunStatus::Paused) {
            return;
        }
        self.note(None, JournalKind::Recovered);
        for i in 0..self.plan.len() {
            let TaskStatus::Running {
                attempt, in_flight, ..
            } = *self.status(i)
            else {
                continue;
            };
            if !in_flight || self.plan.task(i).idempotent {
                // The interruption was not the task's fault: it keeps its retry budget.
                let record = self.task_mut(i);
                record.status = TaskStatus::Ready;
                record.budget_from = record.budget_from.saturating_add(1);
                self.note(Some(i), JournalKind::TaskRequeued { attempt });
            } else {
                self.stall(
                    i,
                    StallCause::InFlightAtRestart,
                    "was in flight when the server stopped; check it and retry or skip".to_string(),
                );
            }
        }
    }

    fn control(&mut self, by: &Operator, control: &Control) -> Result<(), Refusal> {
        let status = self.run.status;
        match control {
            Control::Start => {
                if status != RunStatus::Pending {
                    return Err(Refusal::AlreadyStarted { status });
                }
                self.run.status = RunStatus::Running;
                self.run.started_at_ms = Some(self.ctx.now_ms);
                self.run.started_by = Some(clip(&by.actor));
                self.note_by(by, None, JournalKind::RunStarted);
            }
            Control::Pause => {
                if status != RunStatus::Running {
                    return Err(Refusal::NotRunning { status });
                }
                self.run.status = RunStatus::Paused;
                self.note_by(by, None, JournalKind::RunPaused);
            }
            Control::Resume => {
                if status != RunStatus::Paused {
                    return Err(Refusal::NotPaused { status });
                }
                self.run.status = RunStatus::Running;
                self.note_by(by, None, JournalKind::RunResumed);
            }
            Control::Abort => {
                if status.is_final() {
                    return Err(Refusal::RunEnded { status });
                }
                self.abort(by);
            }
            Control::Skip { task } => {
                let i = self.open_task(task)?;
                let current = self.status(i).clone();
                if matches!(
                    current,
                    TaskStatus::Succeeded | TaskStatus::Skipped | TaskStatus::Cancelled
                ) {
                    return Err(Refusal::NotSkippable {
                        task: task.clone(),
                        status: current.name().to_string(),
                    });
                }
                if let TaskStatus::Running { attempt, .. } = current {
                    self.actions.push(Action::CancelTask {
                        task: task.clone(),
                        attempt,
                    });
                }
                let now = self.ctx.now_ms;
                let record = self.task_mut(i);
                record.status = TaskStatus::Skipped;
                record.finished_at_ms = Some(now);
                self.note_by(by, Some(i), JournalKind::TaskSkipped);
            }
            Control::Retry { task } => {
                let i = self.open_task(task)?;
                if !matches!(
                    self.status(i),
                    TaskStatus::Failed { .. } | TaskStatus::Stalled { .. }
                ) {
                    return Err(Refusal::NotRetryable {
                        task: task.clone(),
                        status: self.status(i).name().to_string(),
                    });
                }
                let record = self.task_mut(i);
                record.status = TaskStatus::Ready;
                record.budget_from = record.attempts;
                record.finished_at_ms = None;
                record.skip_checks = CheckSkips::default();
                let from_step = record.step;
                self.note_by(by, Some(i), JournalKind::TaskRetried { from_step });
            }
            Control::OverrideCondition { task } => {
                let i = self.open_task(task)?;
                let TaskStatus::Stalled {
                    cause: StallCause::Check(phase),
                    ..
                } = *self.status(i)
                else {
                    return Err(Refusal::NotOverridable {
                        task: task.clone(),
                        status: self.status(i).name().to_string(),
                    });
                };
                let now = self.ctx.now_ms;
                let steps = self.plan.task(i).steps;
                let record = self.task_mut(i);
                match phase {
                    CheckPhase::Pre => record.skip_checks.pre = true,
                    CheckPhase::Health => record.skip_checks.health = true,
                    CheckPhase::Post => {}
                }
                if phase == CheckPhase::Post {
                    record.status = TaskStatus::Succeeded;
                    record.finished_at_ms = Some(now);
                    if let Some(steps) = steps {
                        record.step = steps;
                    }
                } else {
                    record.status = TaskStatus::Ready;
                    record.budget_from = record.attempts;
                }
                self.note_by(by, Some(i), JournalKind::ConditionOverridden { phase });
            }
            Control::Approve { task } => {
                let i = self.open_task(task)?;
                let stage = &self.plan.task(i).stage;
                let TaskStatus::Running { attempt, .. } = *self.status(i) else {
                    return Err(Refusal::NotAwaitingApproval {
                        task: task.clone(),
                        stage: stage.clone(),
                        status: self.status(i).name().to_string(),
                    });
                };
                if stage != APPROVAL_STAGE {
                    return Err(Refusal::NotAwaitingApproval {
                        task: task.clone(),
                        stage: stage.clone(),
                        status: self.status(i).name().to_string(),
                    });
                }
                self.note_by(by, Some(i), JournalKind::Approved { attempt });
                self.succeed(i, attempt);
                self.actions.push(Action::CancelTask {
                    task: task.clone(),
                    attempt,
                });
            }
            Control::SetPace { task, pace } => {
                let i = self.open_task(task)?;
                let current = self.status(i).clone();
                if matches!(
                    current,
                    TaskStatus::Succeeded | TaskStatus::Skipped | TaskStatus::Cancelled
                ) {
                    return Err(Refusal::NotPaceable {
                        task: task.clone(),
                        status: current.name().to_string(),
                    });
                }
                let record = self.task_mut(i);
                let merged = match (&record.pace, pace) {
                    (serde_json::Value::Object(before), serde_json::Value::Object(given)) => {
                        let mut merged = before.clone();
                        merged.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
                        serde_json::Value::Object(merged)
                    }
                    _ => pace.clone(),
                };
                record.pace = merged.clone();
                self.note_by(
                    by,
                    Some(i),
                    JournalKind::PaceChanged {
                        pace: merged.clone(),
                    },
                );
                if let TaskStatus::Running { attempt, .. } = current {
                    self.actions.push(Action::SetPace {
                        task: task.clone(),
                        attempt,
                        pace: merged,
                    });
                }
            }
            Control::OverrideWeakDep { task, dep } => {
                let i = self.open_task(task)?;
                let d = self.index(dep)?;
                if !self.plan.after_of(i).contains(&d) {
                    return Err(Refusal::NotAWeakDep {
                        task: task.clone(),
                        dep: dep.clone(),
                    });
                }
                if self.task(i).overridden_deps.contains(dep) {
                    return Err(Refusal::AlreadyOverridden {
                        task: task.clone(),
                        dep: dep.clone(),
                    });
                }
                if *self.status(i) != TaskStatus::Waiting {
                    return Err(Refusal::NotWaiting {
                        task: task.clone(),
                        status: self.status(i).name().to_string(),
                    });
                }
                self.task_mut(i).overridden_deps.push(dep.clone());
                self.note_by(
                    by,
                    Some(i),
                    JournalKind::WeakDepOverridden { dep: dep.clone() },
                );
            }
        }
        Ok(())
    }

    /// The task named by a control, if the run still takes controls.
    fn open_task(&self, task: &str) -> Result<usize, Refusal> {
        if self.run.status.is_final() {
            return Err(Refusal::RunEnded {
                status: self.run.status,
            });
        }
        self.index(task)
    }

    fn abort(&mut self, by: &Operator) {
        let now = self.ctx.now_ms;
        self.run.status = RunStatus::Aborted;
        self.run.finished_at_ms = Some(now);
        self.run.outcome = Some(format!("aborted by {}: {}", by.actor, by.reason));
        self.note_by(by, None, JournalKind::RunAborted);
        for i in 0..self.plan.len() {
            let status = self.status(i).clone();
            if let TaskStatus::Running { attempt, .. } = status {
                self.actions.push(Action::CancelTask {
                    task: self.id(i),
                    attempt,
                });
            }
            if status.is_done() || matches!(status, TaskStatus::Failed { .. }) {
                continue;
            }
            let record = self.task_mut(i);
            record.status = TaskStatus::Cancelled;
            record.finished_at_ms = Some(now);
            self.note(Some(i), JournalKind::TaskCancelled);
        }
        self.finished(RunStatus::Aborted);
    }

    fn deps_done(&self, i: usize) -> bool {
        let record = self.task(i);
        self.plan
            .needs_of(i)
            .iter()
            .all(|&d| self.status(d).is_done())
            && self.plan.after_of(i).iter().all(|&d| {
                self.status(d).is_done() || record.overridden_deps.contains(&self.plan.task(d).id)
            })
    }

    /// Waiting tasks whose dependencies are now done become ready. Only tasks that could
    /// have been affected are checked: dependents of tasks this decision finished, and tasks
    /// it changed (a weak dependency overridden); a start or a restart checks every task.
    fn promote(&mut self) {
        let candidates: Vec<usize> = if self.promote_all {
            (0..self.plan.len()).collect()
        } else {
            let mut candidates = Vec::new();
            for (&i, record) in &self.tasks {
                if record.status.is_done() {
                    candidates.extend_from_slice(self.plan.dependents_of(i));
                } else if record.status == TaskStatus::Waiting {
                    candidates.push(i);
                }
            }
            candidates
        };
        for i in candidates {
            if *self.status(i) == TaskStatus::Waiting && self.deps_done(i) {
                self.task_mut(i).status = TaskStatus::Ready;
            }
        }
    }

    /// One pass over every task (stored records merged with this decision's changes) that
    /// gathers all `settle` needs, so a decision costs one scan, not one per question.
    fn census(&self) -> Census {
        let now = self.ctx.now_ms;
        let mut census = Census::default();
        let mut changed = self.tasks.iter().peekable();
        for (i, stored) in self.base.tasks.iter().enumerate() {
            let record = match changed.next_if(|(j, _)| **j == i) {
                Some((_, record)) => record,
                None => stored,
            };
            let wake = match &record.status {
                TaskStatus::Succeeded | TaskStatus::Skipped => {
                    census.done += 1;
                    None
                }
                TaskStatus::Waiting => {
                    census.waiting += 1;
                    None
                }
                TaskStatus::Failed { .. } => {
                    census.failed += 1;
                    census.first_failed.get_or_insert(i);
                    None
                }
                TaskStatus::Ready => {
                    census.active += 1;
                    census.startable.push(i);
                    None
                }
                TaskStatus::Retrying { not_before_ms, .. } => {
                    census.active += 1;
                    if *not_before_ms <= now {
                        census.startable.push(i);
                    }
                    Some(*not_before_ms)
                }
                TaskStatus::Running { started_at_ms, .. } => {
                    census.active += 1;
                    census.running += 1;
                    self.plan
                        .task(i)
                        .timeout_ms
                        .map(|t| deadline(*started_at_ms, t))
                }
                TaskStatus::Stalled { .. } | TaskStatus::Cancelled => None,
            };
            if let Some(at) = wake.filter(|&at| at > now) {
                census.wake = Some(census.wake.map_or(at, |w: i64| w.min(at)));
            }
        }
        census
    }

    /// Promotes, schedules, finishes, and asks for the next tick.
    fn settle(&mut self) {
        let status = self.run.status;
        if !matches!(
            status,
            RunStatus::Running | RunStatus::Paused | RunStatus::Failed
        ) {
            return;
        }
        self.promote();
        let census = self.census();
        let all_done = census.done == self.plan.len();
        let any_active = census.active > 0;
        let any_failed = census.failed > 0;
        // A failed run reopens once an operator has made progress possible again, or has
        // dealt with every failed task (stalled ones then wait for them in a running run).
        if status == RunStatus::Failed && (any_active || all_done || !any_failed) {
            self.run.status = RunStatus::Running;
            self.run.finished_at_ms = None;
            self.run.outcome = None;
            self.note(None, JournalKind::RunReopened);
        }
        let mut wake = census.wake;
        if self.run.status == RunStatus::Running && !self.ctx.global_pause {
            let max = usize::try_from(self.run.max_parallel).unwrap_or(usize::MAX);
            let free = max.saturating_sub(census.running);
            let mut startable = census.startable;
            let plan = self.plan;
            if startable.len() > free {
                // Only the `free` best are needed: select them without sorting everything.
                startable.select_nth_unstable_by_key(free, |&i| plan.start_rank(i));
                startable.truncate(free);
            }
            startable.sort_unstable_by_key(|&i| plan.start_rank(i));
            for i in startable {
                self.dispatch(i);
                if let Some(timeout) = plan.task(i).timeout_ms {
                    let at = deadline(self.ctx.now_ms, timeout);
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
            }
        }
        if all_done {
            self.run.outcome = None;
            self.finished(RunStatus::Succeeded);
            return;
        }
        if matches!(self.run.status, RunStatus::Running | RunStatus::Paused)
            && !any_active
            && let Some(first) = census.first_failed
        {
            let error = match self.status(first) {
                TaskStatus::Failed { error } => error.clone(),
                _ => String::new(),
            };
            self.run.outcome = Some(format!(
                "task `{}` failed: {error} ({} failed task(s), {} blocked)",
                self.id(first),
                census.failed,
                census.waiting
            ));
            self.finished(RunStatus::Failed);
            return;
        }
        if let Some(at_ms) = wake {
            self.actions.push(Action::WakeAt { at_ms });
        }
    }

    fn dispatch(&mut self, i: usize) {
        let now = self.ctx.now_ms;
        let record = self.task_mut(i);
        record.attempts = record.attempts.saturating_add(1);
        let attempt = record.attempts;
        record.status = TaskStatus::Running {
            attempt,
            started_at_ms: now,
            in_flight: false,
        };
        record.started_at_ms.get_or_insert(now);
        let from_step = record.step;
        let skip_checks = record.skip_checks;
        self.note(Some(i), JournalKind::TaskDispatched { attempt, from_step });
        self.actions.push(Action::StartTask {
            task: self.id(i),
            attempt,
            from_step,
            skip_checks,
        });
        if self.plan.task(i).stage == APPROVAL_STAGE {
            let message = format!("task `{}` waits for an approval", self.id(i));
            self.notify(NotifyKind::ApprovalNeeded, Some(i), message);
        }
    }

    fn finished(&mut self, status: RunStatus) {
        self.run.status = status;
        self.run.finished_at_ms = Some(self.ctx.now_ms);
        self.note(None, JournalKind::RunFinished { status });
        self.actions.push(Action::RunFinished { status });
        let message = match &self.run.outcome {
            Some(outcome) => format!("run {status}: {outcome}"),
            None => format!("run {status}"),
        };
        let kind = if status == RunStatus::Failed {
            NotifyKind::Failed
        } else {
            NotifyKind::Finished
        };
        self.notify(kind, None, message);
    }

    fn finish(self) -> Decision {
        let base = self.base;
        let tasks: Vec<(usize, TaskRecord)> = self
            .tasks
            .into_iter()
            .filter(|(i, record)| *record != base.tasks[*i])
            .collect();
        let mut run = self.run;
        let mut journal = self.journal;
        if !(journal.is_empty() && tasks.is_empty() && run == base.run) {
            run.version += 1;
        }
        for entry in &mut journal {
            entry.version = run.version;
        }
        Decision {
            change: Change {
                run,
                tasks,
                journal,
            },
            actions: self.actions,
        }
    }
}

fn deadline(started_at_ms: i64, timeout_ms: u64) -> i64 {
    started_at_ms.saturating_add(i64::try_from(timeout_ms).unwrap_or(i64::MAX))
}

/// `text` cut to [`MAX_MESSAGE_BYTES`] at a character boundary.
fn clip(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
