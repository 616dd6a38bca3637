//! One actor per active run: the run's only writer in this process.
//!
//! Each turn takes the events queued for the run (up to [`MAX_EVENTS_PER_COMMIT`]), applies
//! them one after another to the in-memory copy of the committed state, commits everything
//! they changed in one store write (compare-and-set on the run's version), and only then
//! answers the senders and executes the actions. Many tasks finishing at once therefore cost
//! one commit, not one each, and no action ever runs ahead of the journal.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use levee_engine::runbook::{
    self as engine, Action, Change, Context, Event, NotifyKind, RunPlan, RunState,
};
use levee_stages::{Canceller, PaceSetter};
use levee_store::{AuditEntry, Error as StoreError, RunCommit, StoredRun, TaskOutput};
use tokio::sync::{mpsc, oneshot};

use super::Msg;
use super::spec::RunSpec;
use super::task::{self, Attempt};
use crate::error::ApiError;
use crate::machines::App;

/// Most events applied and committed together. Bounds the size of one commit and how long
/// one run holds the writer, while letting a burst of finishing tasks share a commit.
pub const MAX_EVENTS_PER_COMMIT: usize = 512;
/// Wait before retrying a commit the store could not take (disk full, database down). The
/// decision is kept in memory and committed as soon as the store takes writes again; nothing
/// is acknowledged or acted on before that.
pub const COMMIT_RETRY_MS: u64 = 500;

type Reply = oneshot::Sender<Result<(), ApiError>>;

/// An attempt running in this process.
struct Running {
    attempt: u32,
    canceller: Canceller,
    pace: PaceSetter,
}

struct Actor {
    app: Arc<App>,
    id: String,
    runbook: String,
    spec: Arc<RunSpec>,
    plan: Arc<RunPlan>,
    /// Equal to the committed state after every turn.
    state: RunState,
    /// The lease epoch this replica holds the run at: every commit carries it, and the store
    /// refuses it once another replica claimed the run.
    epoch: i64,
    /// Attempts running in this process, by task index, with what stops and re-paces them.
    running: HashMap<usize, Running>,
    /// Past durations per task id, for stuck detection.
    history: HashMap<String, Vec<u64>>,
    wake_at_ms: Option<i64>,
    sender: mpsc::WeakSender<Msg>,
}

pub(crate) fn spawn(
    app: Arc<App>,
    stored: StoredRun,
    spec: RunSpec,
    plan: RunPlan,
    epoch: i64,
    sender: mpsc::Sender<Msg>,
    receiver: mpsc::Receiver<Msg>,
) {
    let actor = Actor {
        app,
        id: stored.id,
        runbook: stored.runbook,
        spec: Arc::new(spec),
        plan: Arc::new(plan),
        state: stored.state,
        epoch,
        running: HashMap::new(),
        history: HashMap::new(),
        wake_at_ms: None,
        sender: sender.downgrade(),
    };
    drop(sender);
    tokio::spawn(actor.run(receiver));
}

/// Whether the actor goes on after a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Its lease is lost: it must not act on the run again.
    Stop,
}

/// The events of one turn, merged into one commit.
#[derive(Default)]
struct Turn {
    tasks: BTreeMap<usize, engine::TaskRecord>,
    journal: Vec<engine::JournalEntry>,
    run: Option<engine::RunRecord>,
    actions: Vec<Action>,
    outputs: Vec<TaskOutput>,
    audits: Vec<AuditEntry>,
    replies: Vec<(Reply, Result<(), ApiError>)>,
    /// Attempts whose `TaskStarted` this turn commits (task index, attempt).
    started: HashSet<(usize, u32)>,
}

impl Turn {
    /// Adds a decision's change; `before` is the run's version it was decided against (a
    /// change that stores nothing keeps the version).
    fn add(&mut self, change: Change, before: i64) {
        if change.run.version == before {
            return;
        }
        self.run = Some(change.run);
        self.tasks.extend(change.tasks);
        self.journal.extend(change.journal);
    }

    fn is_empty(&self) -> bool {
        self.run.is_none() && self.audits.is_empty() && self.outputs.is_empty()
    }
}

impl Actor {
    async fn run(mut self, mut receiver: mpsc::Receiver<Msg>) {
        self.history = self.load_history().await;
        loop {
            let first = match self.wake_at_ms {
                Some(at) => {
                    let wait = u64::try_from(at.saturating_sub(self.app.now_ms())).unwrap_or(0);
                    tokio::select! {
                        msg = receiver.recv() => msg,
                        () = tokio::time::sleep(Duration::from_millis(wait)) => {
                            self.wake_at_ms = None;
                            Some(tick())
                        }
                    }
                }
                None => receiver.recv().await,
            };
            let Some(first) = first else {
                break; // Every sender is gone: the server is shutting down.
            };
            let mut batch = vec![first];
            while batch.len() < MAX_EVENTS_PER_COMMIT {
                match receiver.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            let lost = batch.iter().find_map(|msg| match msg {
                Msg::LeaseLost { epoch } if *epoch >= self.epoch => Some(*epoch),
                _ => None,
            });
            if let Some(epoch) = lost {
                tracing::warn!(run = %self.id, epoch, "lease lost; the run's actor stops and cancels its attempts");
                break;
            }
            if self.turn(batch).await == Flow::Stop {
                self.app.runs.remove_stopped(&self.id, self.epoch);
                break;
            }
            if self.state.run.status.is_ended()
                && self.running.is_empty()
                && self.app.runs.retire(&self.id, &mut receiver)
            {
                // The run is over: nothing to renew. A later control claims it again.
                self.app.replica.forget(&self.id, self.epoch);
                break;
            }
        }
        for running in self.running.values() {
            running.canceller.cancel();
        }
    }

    async fn load_history(&self) -> HashMap<String, Vec<u64>> {
        let mut history: HashMap<String, Vec<u64>> = HashMap::new();
        match self
            .app
            .store
            .task_durations(&self.runbook, super::DURATION_HISTORY_PER_TASK)
            .await
        {
            Ok(durations) => {
                for d in durations {
                    history.entry(d.task).or_default().push(d.duration_ms);
                }
            }
            Err(error) => {
                tracing::warn!(run = %self.id, %error, "no task history: stuck detection is off for this run");
            }
        }
        history
    }

    async fn turn(&mut self, batch: Vec<Msg>) -> Flow {
        let base = self.state.run.version;
        let mut turn = Turn::default();
        for msg in batch {
            let Msg::Event {
                event,
                output,
                audit,
                reply,
            } = msg
            else {
                continue; // A lease loss for an older epoch: not this actor's.
            };
            let ctx = Context {
                now_ms: self.app.now_ms(),
                global_pause: self.app.runs.global_pause(),
            };
            let before = self.state.run.version;
            match engine::apply(&self.plan, &self.state, &event, ctx) {
                Ok(decision) => {
                    self.state.commit(&decision.change);
                    turn.add(decision.change, before);
                    turn.actions.extend(decision.actions);
                    turn.outputs.extend(output);
                    if let Some(mut audit) = audit {
                        audit.outcome = "ok".to_string();
                        turn.audits.push(audit);
                    }
                    if let Some(reply) = reply {
                        turn.replies.push((reply, Ok(())));
                    }
                }
                Err(refusal) => {
                    if !matches!(event, Event::Control { .. }) {
                        // A late report from an attempt that was cancelled or timed out.
                        tracing::debug!(run = %self.id, %refusal, "event refused");
                    }
                    if let Some(mut audit) = audit {
                        audit.outcome = refusal.code().to_string();
                        turn.audits.push(audit);
                    }
                    if let Some(reply) = reply {
                        turn.replies
                            .push((reply, Err(super::refusal_error(&refusal))));
                    }
                }
            }
        }
        self.start_in_the_same_commit(&mut turn);
        if !turn.is_empty() {
            let commit = RunCommit {
                run_id: self.id.clone(),
                expected_version: base,
                change: Change {
                    run: turn.run.clone().unwrap_or_else(|| self.state.run.clone()),
                    tasks: std::mem::take(&mut turn.tasks).into_iter().collect(),
                    journal: std::mem::take(&mut turn.journal),
                },
                outputs: std::mem::take(&mut turn.outputs),
                audits: std::mem::take(&mut turn.audits),
                epoch: Some(self.epoch),
            };
            if let Err(error) = self.commit(commit).await {
                if let StoreError::Fenced(reason) = &error {
                    // Another replica took the run over (this one was paused or cut off past
                    // its lease): nothing of this turn was written. Stop acting at once.
                    tracing::warn!(run = %self.id, epoch = self.epoch, %reason, "commit fenced: the lease was lost; the run's actor stops and cancels its attempts");
                    self.app.metrics.fenced_commit();
                    for (reply, _) in turn.replies {
                        let _ = reply.send(Err(ApiError::from(StoreError::Fenced(reason.clone()))));
                    }
                    for running in self.running.values() {
                        running.canceller.cancel();
                    }
                    self.running.clear();
                    self.app.replica.forget(&self.id, self.epoch);
                    return Flow::Stop;
                }
                // Another writer changed the run: this process's view is stale. Stop acting
                // on it; whoever asks next reloads the run from the store.
                tracing::error!(run = %self.id, %error, "run commit conflict; the run's actor stops");
                for (reply, _) in turn.replies {
                    let _ = reply.send(Err(ApiError::new(
                        axum::http::StatusCode::CONFLICT,
                        "conflict",
                        format!("the run changed elsewhere; retry: {error}"),
                    )));
                }
                for running in self.running.values() {
                    running.canceller.cancel();
                }
                self.running.clear();
                if let Some(stored) = self.app.store.load_run(&self.id).await.ok().flatten() {
                    self.state = stored.state;
                }
                return Flow::Continue;
            }
            self.app.runs.announce(&self.id);
        }
        for (reply, result) in turn.replies {
            let _ = reply.send(result);
        }
        for action in std::mem::take(&mut turn.actions) {
            self.act(action, &turn.started);
        }
        self.forget_finished();
        Flow::Continue
    }

    /// Folds `TaskStarted` into this turn's commit for every task dispatched in it that has no
    /// pre-condition to evaluate and whose stage is idempotent: for such a task nothing stands
    /// between the dispatch and the side effect, so one commit records both, and a chain of
    /// tasks costs one commit per task instead of two. The attempt is spawned only after the
    /// commit, so the journal still leads every side effect. A non-idempotent task keeps its own
    /// `TaskStarted` commit right before the side effect, so a crash in between re-runs it
    /// instead of asking an operator.
    fn start_in_the_same_commit(&mut self, turn: &mut Turn) {
        let actions = std::mem::take(&mut turn.actions);
        let mut later = Vec::new();
        for action in &actions {
            let Action::StartTask {
                task,
                attempt,
                skip_checks,
                ..
            } = action
            else {
                continue;
            };
            let Some(index) = self.plan.index_of(task) else {
                continue;
            };
            let spec = &self.spec.tasks[index];
            if !spec.plan.idempotent || !(spec.pre.is_empty() || skip_checks.pre) {
                continue;
            }
            let event = Event::TaskStarted {
                task: task.clone(),
                attempt: *attempt,
            };
            let ctx = Context {
                now_ms: self.app.now_ms(),
                global_pause: self.app.runs.global_pause(),
            };
            let before = self.state.run.version;
            if let Ok(decision) = engine::apply(&self.plan, &self.state, &event, ctx) {
                self.state.commit(&decision.change);
                turn.add(decision.change, before);
                turn.started.insert((index, *attempt));
                later.extend(decision.actions);
            }
        }
        turn.actions = actions;
        turn.actions.extend(later);
    }

    /// Commits, retrying while the store is unavailable; fails only on a conflict.
    async fn commit(&self, commit: RunCommit) -> Result<(), StoreError> {
        let mut warned = false;
        loop {
            match self.app.store.commit_run(commit.clone()).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Unavailable(reason)) => {
                    if !warned {
                        tracing::error!(run = %self.id, %reason, "cannot commit a run change; retrying until the store takes writes");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(COMMIT_RETRY_MS)).await;
                }
                Err(other) => return Err(other),
            }
        }
    }

    fn act(&mut self, action: Action, started: &HashSet<(usize, u32)>) {
        match action {
            Action::StartTask {
                task,
                attempt,
                from_step,
                skip_checks,
            } => {
                let Some(index) = self.plan.index_of(&task) else {
                    return;
                };
                if self.app.runs.is_draining() {
                    // Shutting down: the dispatch is committed; the replica that takes the
                    // run over starts the attempt.
                    return;
                }
                if let Some(old) = self.running.remove(&index) {
                    old.canceller.cancel();
                }
                let Some(sender) = self.sender.upgrade() else {
                    return;
                };
                let (canceller, cancel) = Canceller::new();
                let record = &self.state.tasks[index];
                let step_state = record.step_state.clone();
                let (pace, pace_watch) = PaceSetter::new(record.pace.clone());
                self.running.insert(
                    index,
                    Running {
                        attempt,
                        canceller,
                        pace,
                    },
                );
                let stuck_after_ms =
                    engine::stuck_threshold_ms(self.history.get(&task).map_or(&[][..], |h| h))
                        .map(|ms| ms.max(super::STUCK_THRESHOLD_FLOOR_MS));
                task::spawn(Attempt {
                    app: self.app.clone(),
                    run_id: self.id.clone(),
                    spec: self.spec.clone(),
                    index,
                    attempt,
                    from_step,
                    skip_checks,
                    cancel,
                    events: sender,
                    stuck_after_ms,
                    started: started.contains(&(index, attempt)),
                    step_state,
                    pace: pace_watch,
                    epoch: self.epoch,
                });
            }
            Action::CancelTask { task, attempt } => {
                if let Some(index) = self.plan.index_of(&task)
                    && self
                        .running
                        .get(&index)
                        .is_some_and(|running| running.attempt == attempt)
                    && let Some(running) = self.running.remove(&index)
                {
                    running.canceller.cancel();
                }
            }
            Action::SetPace {
                task,
                attempt,
                pace,
            } => {
                if let Some(index) = self.plan.index_of(&task)
                    && let Some(running) = self.running.get(&index)
                    && running.attempt == attempt
                {
                    running.pace.set(pace);
                }
            }
            Action::Notify {
                kind,
                task,
                message,
            } => {
                self.app.metrics.run_notification(kind);
                if kind == NotifyKind::Stuck {
                    tracing::warn!(run = %self.id, task = task.as_deref().unwrap_or(""), %message, "task stuck");
                } else {
                    tracing::info!(run = %self.id, task = task.as_deref().unwrap_or(""), %message, "run notification");
                }
                self.app
                    .runs
                    .notifier
                    .notify(crate::webhooks::Notification {
                        kind,
                        run_id: self.id.clone(),
                        runbook: self.runbook.clone(),
                        task,
                        message,
                        at_ms: self.app.now_ms(),
                        url: Some(format!("/api/v1/runs/{}", self.id)),
                    });
            }
            Action::RunFinished { status } => {
                self.app.metrics.run_finished(status);
            }
            Action::WakeAt { at_ms } => {
                self.wake_at_ms = Some(self.wake_at_ms.map_or(at_ms, |w| w.min(at_ms)));
            }
        }
    }

    /// Drops the cancellers of attempts that are no longer running in the committed state.
    fn forget_finished(&mut self) {
        let state = &self.state;
        self.running.retain(|index, running| {
            matches!(
                state.tasks[*index].status,
                engine::TaskStatus::Running { attempt: a, .. } if a == running.attempt
            )
        });
    }
}

fn tick() -> Msg {
    Msg::Event {
        event: Event::Tick,
        output: None,
        audit: None,
        reply: None,
    }
}
