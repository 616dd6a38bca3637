//! Runbook runs on the server: starting them, one actor per active run that applies the pure
//! scheduler and commits before it acts, the tasks' execution, operator controls, the global
//! pause, recovery after a restart, and the views the API and CLI show.
//!
//! ```text
//!  API control ─┐                       ┌─► commit (store, CAS on the run's version)
//!  task report ─┼─► run actor: apply() ─┤
//!  timer tick  ─┘   (batch of events)   └─► then act: start/cancel tasks, notify, wake
//! ```
//!
//! The actor is the only writer of its run in this process. It takes whatever events are
//! queued, applies each with `levee_engine::runbook::apply` against its in-memory copy of the
//! committed state, commits the merged change in one store write, and only then executes the
//! actions. A task's side effect begins only after its `TaskStarted` is committed; after a crash
//! the engine's `Recovered` event decides what runs again.

mod actor;
pub mod health;
mod task;

pub mod spec;
pub mod views;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use levee_engine::runbook::{
    self as engine, Control, DEFAULT_MAX_PARALLEL_TASKS, Event, MAX_PARALLEL_TASKS, Operator,
    RunState, RunStatus,
};
use levee_store::{CreatedRun, NewRun, StoredRun};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use utoipa::ToSchema;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::machines::{App, validate_id};
use crate::runbooks::Prepared;
use spec::{RunSpec, task_spec};
use views::RunView;

pub use actor::MAX_EVENTS_PER_COMMIT;
pub(crate) use task::evaluate_check;
pub use task::{DEFAULT_APPROVAL_EXPIRY_MS, HEALTH_CHECK_INTERVAL_MS, STATE_POLL_INTERVAL_MS};

/// The setting that holds the global pause.
pub const GLOBAL_PAUSE_SETTING: &str = "global_pause";
/// Past successes per task kept for stuck detection and predictions.
pub const DURATION_HISTORY_PER_TASK: u32 = 20;
/// No task is called stuck before it has run this long, however quick its history: a
/// 10 ms task that takes 40 ms is noise, not an incident.
pub const STUCK_THRESHOLD_FLOOR_MS: u64 = 1_000;
/// Run-change notices that may wait for slow event-stream readers; one that falls behind
/// re-reads the journal from the store, so nothing is lost, only coalesced.
pub const RUN_NOTICE_CAPACITY: usize = 1_024;
/// Events that may wait for a run's actor before senders wait too.
pub const RUN_QUEUE_CAPACITY: usize = 4_096;
/// How often a draining replica looks whether its attempts have ended.
pub const DRAIN_POLL_MS: u64 = 50;
/// Longest reason an operator may give, in bytes.
pub const MAX_REASON_BYTES: usize = 1_000;

/// What a run actor is sent.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every message is an event; boxing it would cost an allocation per event \
              to shrink the rare lease loss"
)]
pub(crate) enum Msg {
    Event {
        event: Event,
        /// Kept with the commit that applies the event.
        output: Option<levee_store::TaskOutput>,
        /// Written with the commit (accepted) or on its own (refused).
        audit: Option<levee_store::AuditEntry>,
        reply: Option<oneshot::Sender<Result<(), ApiError>>>,
    },
    /// This replica's lease on the run at this epoch (or an older one) is gone: the actor
    /// cancels its attempts and stops without committing anything more.
    LeaseLost { epoch: i64 },
}

/// A run's actor in this process, and the lease epoch it writes at.
#[derive(Clone)]
pub(crate) struct ActorEntry {
    pub(crate) sender: mpsc::Sender<Msg>,
    pub(crate) epoch: i64,
}

/// The run actors of this process and what they share.
pub struct Runs {
    actors: std::sync::Mutex<HashMap<String, ActorEntry>>,
    global_pause: AtomicBool,
    /// `run_id` of every committed run change, for event streams.
    notices: broadcast::Sender<Arc<str>>,
    pub notifier: crate::webhooks::Notifier,
    /// Set on shutdown: actors start no new attempts (the dispatch is committed; whoever
    /// takes the run over starts them).
    draining: AtomicBool,
    /// Task attempts running in this process.
    attempts: Arc<std::sync::atomic::AtomicUsize>,
    /// Recent health-check observations of this process's attempts, for the UI's charts.
    pub health: health::HealthSamples,
}

/// Counts an attempt as running for as long as it lives.
pub(crate) struct AttemptGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Runs {
    pub fn new(global_pause: bool, notifier: crate::webhooks::Notifier) -> Runs {
        Runs {
            actors: std::sync::Mutex::new(HashMap::new()),
            global_pause: AtomicBool::new(global_pause),
            notices: broadcast::channel(RUN_NOTICE_CAPACITY).0,
            notifier,
            draining: AtomicBool::new(false),
            attempts: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            health: health::HealthSamples::default(),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Task attempts running in this process now.
    pub fn attempts_running(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    pub(crate) fn attempt_started(&self) -> AttemptGuard {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        AttemptGuard(self.attempts.clone())
    }

    pub fn global_pause(&self) -> bool {
        self.global_pause.load(Ordering::SeqCst)
    }

    /// Wakes on every committed change of any run; the receiver filters by run id.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.notices.subscribe()
    }

    pub(crate) fn announce(&self, run_id: &str) {
        // Nobody listening is fine: streams re-read the store when they subscribe.
        let _ = self.notices.send(Arc::from(run_id));
    }

    /// Runs with an actor in this process.
    pub fn active(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActorEntry>> {
        self.actors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the actor's entry if nothing is queued for it; called by the actor under the
    /// map's lock, so no sender can get hold of it between the check and the removal.
    pub(crate) fn retire(&self, run_id: &str, receiver: &mut mpsc::Receiver<Msg>) -> bool {
        let mut actors = self.lock();
        if !receiver.is_empty() {
            return false;
        }
        actors.remove(run_id);
        receiver.close();
        true
    }

    /// Stops the actor of `run_id` if it writes at `epoch` or an older one: the lease it
    /// writes with is lost. Its queued senders are answered that the executor stopped.
    pub(crate) fn lose(&self, run_id: &str, epoch: i64) {
        let mut actors = self.lock();
        if actors.get(run_id).is_some_and(|entry| entry.epoch <= epoch)
            && let Some(entry) = actors.remove(run_id)
        {
            // A full queue still stops the actor: the entry is gone, and its next commit is
            // fenced.
            let _ = entry.sender.try_send(Msg::LeaseLost { epoch });
        }
    }

    /// Removes the entry of an actor that stopped by itself (its commit was fenced), unless
    /// a newer actor took its place.
    pub(crate) fn remove_stopped(&self, run_id: &str, epoch: i64) {
        let mut actors = self.lock();
        if actors.get(run_id).is_some_and(|entry| entry.epoch == epoch) {
            actors.remove(run_id);
        }
    }

    /// Applies the global pause as stored; when it is lifted, wakes every run so it
    /// schedules again (runs take no steps by themselves while paused).
    pub(crate) fn apply_global_pause(&self, paused: bool) {
        let was = self.global_pause.swap(paused, Ordering::SeqCst);
        if was && !paused {
            let senders: Vec<_> = self.lock().values().map(|e| e.sender.clone()).collect();
            for sender in senders {
                let _ = sender.try_send(Msg::Event {
                    event: Event::Tick,
                    output: None,
                    audit: None,
                    reply: None,
                });
            }
        }
    }
}

/// The body of `POST /api/v1/runbooks/{name}/runs`. `Default` starts the run, as an empty
/// JSON body does.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Parameter values, as for a plan.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, Value>,
    /// A name that makes the start idempotent: starting again with the same name returns the
    /// run the first start created.
    #[serde(default)]
    pub name: Option<String>,
    /// Tasks running at once (the runbook's `max_parallel`, else 32).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Create the run without starting it (`false`); it then waits for a `start` control.
    #[serde(default = "yes")]
    pub start: bool,
}

fn yes() -> bool {
    true
}

impl Default for StartRequest {
    fn default() -> Self {
        StartRequest {
            params: BTreeMap::new(),
            name: None,
            max_parallel: None,
            start: true,
        }
    }
}

/// The body of `POST /api/v1/runs/{id}/controls`.
#[derive(Clone, Debug, Deserialize, serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// `start`, `pause`, `resume`, `abort`, `skip`, `retry`, `override_condition`,
    /// `override_weak_dep`, `approve` or `set_pace`.
    pub control: String,
    /// The task, for task controls.
    #[serde(default)]
    pub task: Option<String>,
    /// The weak dependency, for `override_weak_dep`.
    #[serde(default)]
    pub dep: Option<String>,
    /// The new pace, for `set_pace`: for a `ramp`, `{"step": "10%", "wait": "30s"}` (either
    /// key alone changes only it).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub pace: Option<Value>,
    /// Why: kept in the journal and the audit log. Required.
    pub reason: String,
}

/// One health check of a task, its thresholds and its recent observations.
#[derive(Clone, Debug, serde::Serialize, ToSchema)]
pub struct TaskHealthView {
    pub name: String,
    /// `metric`, `http`, `shell` or `state`.
    pub check: String,
    /// A `metric` check's bounds: the value must stay below / above them.
    pub below: Option<f64>,
    pub above: Option<f64>,
    /// Observations by the replica that answered, oldest first (kept in its memory).
    #[schema(value_type = Vec<Object>)]
    pub samples: Vec<health::HealthSample>,
}

/// The body of `PUT /api/v1/pause`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    pub paused: bool,
    pub reason: String,
}

fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::bad_request(
            "give a `reason`: it goes into the run's journal and the audit log",
        ));
    }
    if reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::bad_request(format!(
            "the reason is {} bytes; keep it under {MAX_REASON_BYTES}",
            reason.len()
        )));
    }
    Ok(())
}

fn parse_control(request: &ControlRequest) -> Result<Control, ApiError> {
    let task = || {
        request.task.clone().ok_or_else(|| {
            ApiError::bad_request(format!("the `{}` control needs a `task`", request.control))
        })
    };
    Ok(match request.control.as_str() {
        "start" => Control::Start,
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "abort" => Control::Abort,
        "skip" => Control::Skip { task: task()? },
        "retry" => Control::Retry { task: task()? },
        "override_condition" | "override" => Control::OverrideCondition { task: task()? },
        "override_weak_dep" => Control::OverrideWeakDep {
            task: task()?,
            dep: request.dep.clone().ok_or_else(|| {
                ApiError::bad_request("the `override_weak_dep` control needs a `dep`")
            })?,
        },
        "approve" => Control::Approve { task: task()? },
        "set_pace" | "pace" => Control::SetPace {
            task: task()?,
            pace: request.pace.clone().ok_or_else(|| {
                ApiError::bad_request(
                    "the `set_pace` control needs a `pace`, such as {\"step\": \"10%\", \"wait\": \"30s\"}",
                )
            })?,
        },
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown control `{other}`; use start, pause, resume, abort, skip, retry, \
                 override_condition, override_weak_dep, approve or set_pace"
            )));
        }
    })
}

fn control_name(control: &Control) -> &'static str {
    match control {
        Control::Start => "start",
        Control::Pause => "pause",
        Control::Resume => "resume",
        Control::Abort => "abort",
        Control::Skip { .. } => "skip",
        Control::Retry { .. } => "retry",
        Control::OverrideCondition { .. } => "override_condition",
        Control::OverrideWeakDep { .. } => "override_weak_dep",
        Control::Approve { .. } => "approve",
        Control::SetPace { .. } => "set_pace",
    }
}

/// The HTTP answer to an engine refusal of a control: the run is not in a state that allows
/// it (409), or the control names something the run does not have (404).
pub fn refusal_error(refusal: &engine::Refusal) -> ApiError {
    let status = match refusal {
        engine::Refusal::UnknownTask { .. } => StatusCode::NOT_FOUND,
        engine::Refusal::PlanMismatch { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::CONFLICT,
    };
    ApiError::new(status, refusal.code(), refusal.to_string())
        .with_details(serde_json::to_value(refusal).unwrap_or(Value::Null))
}

/// A fresh run id: the UTC time it was made, sortable, and random bits against collisions.
fn new_run_id(now_ms: i64) -> String {
    let time = jiff::Timestamp::from_millisecond(now_ms)
        .map(|t| t.strftime("%Y%m%d-%H%M%S").to_string())
        .unwrap_or_else(|_| now_ms.to_string());
    format!("{time}-{:06x}", rand::random::<u32>() & 0x00ff_ffff)
}

impl App {
    /// The actor of run `id`. If this replica has none, it claims the run (when nobody holds
    /// it, or the holder's lease expired) and starts one, with `Recovered` if the run is
    /// mid-flight. A run another replica holds is answered `not_owner` (503), with the
    /// holder in the error's details, for the caller to forward to it.
    pub(crate) async fn run_actor(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<mpsc::Sender<Msg>, ApiError> {
        if let Some(entry) = self.runs.lock().get(id) {
            return Ok(entry.sender.clone());
        }
        let me = &self.replica.id;
        let lease = match self
            .store
            .claim_run(id, me, self.now_ms(), self.replica.ttl_ms())
            .await?
        {
            Some(lease) => lease,
            None => {
                let owner = self
                    .store
                    .run_owner(id)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("no run with id `{id}`")))?;
                match owner.owner {
                    // This replica holds a live lease but let the actor go (the run had
                    // ended): it is still the run's executor at that epoch.
                    Some(holder) if holder == *me => levee_store::Lease {
                        run_id: id.to_string(),
                        epoch: owner.epoch,
                        expires_ms: owner.expires_ms.unwrap_or_default(),
                    },
                    holder => {
                        return Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not_owner",
                            format!(
                                "run `{id}` is executed by replica {}; retry, or send it there",
                                holder.as_deref().unwrap_or("(none: being taken over)")
                            ),
                        )
                        .with_details(json!({ "owner": holder })));
                    }
                }
            }
        };
        let stored = match self.store.load_run(id).await {
            Ok(Some(stored)) => stored,
            other => {
                self.release(std::slice::from_ref(&lease)).await;
                other?;
                return Err(ApiError::not_found(format!("no run with id `{id}`")));
            }
        };
        let recover = matches!(
            stored.state.run.status,
            RunStatus::Running | RunStatus::Paused
        );
        self.spawn_actor(stored, recover, lease)
    }

    /// Starts the actor of a stored run, writing at `lease`'s epoch, unless one exists; with
    /// `recover`, it first applies `Recovered` (the run was active when its previous executor
    /// stopped).
    pub(crate) fn spawn_actor(
        self: &Arc<Self>,
        stored: StoredRun,
        recover: bool,
        lease: levee_store::Lease,
    ) -> Result<mpsc::Sender<Msg>, ApiError> {
        let spec: RunSpec = serde_json::from_value(stored.spec.clone()).map_err(|e| {
            ApiError::internal(format!(
                "run {} has a spec that does not parse: {e}",
                stored.id
            ))
        })?;
        let plan = spec.plan().map_err(|e| {
            ApiError::internal(format!("run {} has an invalid plan: {e}", stored.id))
        })?;
        let mut actors = self.runs.lock();
        if let Some(entry) = actors.get(&stored.id) {
            return Ok(entry.sender.clone());
        }
        let (sender, receiver) = mpsc::channel(RUN_QUEUE_CAPACITY);
        let epoch = lease.epoch;
        actors.insert(
            stored.id.clone(),
            ActorEntry {
                sender: sender.clone(),
                epoch,
            },
        );
        self.replica.hold(lease);
        drop(actors);
        if recover {
            // Queued first, so it is the first event the actor applies.
            let _ = sender.try_send(Msg::Event {
                event: Event::Recovered,
                output: None,
                audit: None,
                reply: None,
            });
        }
        actor::spawn(
            self.clone(),
            stored,
            spec,
            plan,
            epoch,
            sender.clone(),
            receiver,
        );
        Ok(sender)
    }

    /// Shutting down: starts no more attempts, waits (until `deadline`) for the running ones
    /// to end and for every actor to commit what it was told, then stops every actor and releases every lease so other replicas take the runs over
    /// at once. Attempts still running at the deadline are cancelled; whoever takes their run
    /// over re-runs them if idempotent, or stalls them for an operator.
    pub async fn drain_runs(self: &Arc<Self>, deadline: tokio::time::Instant) {
        self.replica.stop_claiming();
        self.runs.draining.store(true, Ordering::SeqCst);
        while self.runs.attempts_running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(DRAIN_POLL_MS)).await;
        }
        if self.runs.attempts_running() > 0 {
            tracing::warn!(
                attempts = self.runs.attempts_running(),
                "task attempts still running at the shutdown deadline; cancelling them"
            );
        }
        // Each actor answers a tick only after everything queued before it is committed.
        let senders: Vec<_> = self
            .runs
            .lock()
            .values()
            .map(|e| e.sender.clone())
            .collect();
        for sender in senders {
            let (reply, answer) = oneshot::channel();
            let tick = Msg::Event {
                event: Event::Tick,
                output: None,
                audit: None,
                reply: Some(reply),
            };
            let flushed = async {
                if sender.send(tick).await.is_ok() {
                    let _ = answer.await;
                }
            };
            let _ = tokio::time::timeout_at(deadline, flushed).await;
        }
        self.release_all().await;
    }

    /// Claims the active runs nobody holds when the server starts, and starts their actors
    /// with `Recovered`. A SQLite file has one process, so its replica takes every run over
    /// at once: it claims as of one lease time from now, when every lease an earlier process
    /// took has expired. On PostgreSQL, runs other live replicas hold stay theirs.
    pub async fn recover_runs(self: &Arc<Self>) -> anyhow::Result<usize> {
        let now = self.now_ms();
        let ttl = self.replica.ttl_ms();
        let as_of = if self.store.backend() == "sqlite" {
            now.saturating_add(ttl)
        } else {
            now
        };
        let recovered = self.claim_unowned(as_of, ttl).await;
        if recovered > 0 {
            tracing::info!(runs = recovered, "recovered active runs");
        }
        Ok(recovered)
    }

    /// Sends an event to a run's actor and waits until it is committed (or refused).
    pub(crate) async fn send_event(
        self: &Arc<Self>,
        id: &str,
        event: Event,
        audit: Option<levee_store::AuditEntry>,
    ) -> Result<(), ApiError> {
        let mut msg = {
            let (reply, answer) = oneshot::channel();
            (
                Msg::Event {
                    event,
                    output: None,
                    audit,
                    reply: Some(reply),
                },
                answer,
            )
        };
        // An actor may retire between lookup and send; the second try starts a new one.
        for _ in 0..2 {
            let sender = self.run_actor(id).await?;
            match sender.send(msg.0).await {
                Ok(()) => {
                    return msg.1.await.unwrap_or_else(|_| {
                        Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "the run's executor stopped before answering; retry",
                        ))
                    });
                }
                Err(mpsc::error::SendError(returned)) => {
                    msg.0 = returned;
                    let mut actors = self.runs.lock();
                    if actors
                        .get(id)
                        .is_some_and(|entry| entry.sender.same_channel(&sender))
                    {
                        actors.remove(id);
                    }
                }
            }
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the run's executor is restarting; retry",
        ))
    }

    /// Creates a run of `runbook` and (unless asked not to) starts it.
    pub async fn start_run(
        self: &Arc<Self>,
        caller: &Caller,
        runbook: &str,
        request: StartRequest,
    ) -> Result<(RunView, bool), ApiError> {
        caller.require(Role::Operator)?;
        caller.require_unscoped()?;
        if let Some(name) = &request.name {
            validate_id("run name", name)?;
        }
        let Prepared {
            version,
            runbook: resolved,
            bound,
            rendered,
            plan,
        } = self.prepare_run(runbook, request.params.clone()).await?;
        let max_parallel = request
            .max_parallel
            .or(resolved.max_parallel)
            .unwrap_or(DEFAULT_MAX_PARALLEL_TASKS);
        if max_parallel == 0 || max_parallel > MAX_PARALLEL_TASKS {
            return Err(ApiError::bad_request(format!(
                "`max_parallel` is {max_parallel}; it must be between 1 and {MAX_PARALLEL_TASKS}"
            )));
        }
        let mut tasks = Vec::with_capacity(resolved.tasks.len());
        for ((task, with), planned) in resolved.tasks.iter().zip(rendered).zip(plan.tasks()) {
            tasks.push(
                task_spec(task, planned.clone(), with, &bound).map_err(|reason| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_params",
                        format!("task `{}` ({}): {reason}", task.id, task.origin),
                    )
                })?,
            );
        }
        let spec = RunSpec { tasks };
        let now = self.now_ms();
        let state = RunState::new(&plan, max_parallel, now)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let id = new_run_id(now);
        let params = serde_json::to_value(&bound.values).map_err(ApiError::internal)?;
        let audit = self.audit_entry(
            caller,
            "run.create",
            &id,
            json!({ "runbook": runbook, "version": version, "params": params, "name": request.name }),
        );
        let new_run = NewRun {
            id: id.clone(),
            name: request.name.clone(),
            runbook: runbook.to_string(),
            runbook_version: version,
            params,
            spec: serde_json::to_value(&spec).map_err(ApiError::internal)?,
            created_by: caller.name.clone(),
            state,
        };
        let (stored, created) = match self.store.create_run(new_run, Some(audit)).await? {
            CreatedRun::Created(stored) => (stored, true),
            CreatedRun::Existing(stored) => (stored, false),
        };
        if !created {
            return Ok((
                RunView::new(&stored, &stored.state, &spec_of(&stored)?),
                false,
            ));
        }
        self.metrics.run_created();
        if request.start {
            let by = Operator {
                actor: caller.name.clone(),
                reason: format!("started with `{runbook}`"),
            };
            let audit = self.audit_entry(caller, "run.start", &stored.id, json!({}));
            // A new run is nobody's yet: the replica that created it executes it. The actor
            // starts from the run just created, not from a second read of it.
            let lease = self
                .store
                .claim_run(&stored.id, &self.replica.id, now, self.replica.ttl_ms())
                .await?
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!(
                            "run `{}` was claimed by another replica first; retry",
                            stored.id
                        ),
                    )
                })?;
            self.spawn_actor(stored.clone(), false, lease)?;
            self.send_event(
                &stored.id,
                Event::Control {
                    by,
                    control: Control::Start,
                },
                Some(audit),
            )
            .await?;
            return Ok((self.run_view(caller, &stored.id).await?, true));
        }
        Ok((RunView::new(&stored, &stored.state, &spec), true))
    }

    /// Applies an operator control, audited with who and why.
    pub async fn control_run(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        request: ControlRequest,
    ) -> Result<RunView, ApiError> {
        let control = parse_control(&request)?;
        let audit = self.audit_entry(
            caller,
            &format!("run.{}", control_name(&control)),
            id,
            json!({
                "task": request.task,
                "dep": request.dep,
                "pace": request.pace,
                "reason": request.reason,
            }),
        );
        let checked = async {
            caller.require(Role::Operator)?;
            caller.require_unscoped()?;
            check_reason(&request.reason)?;
            if let Control::Approve { task } = &control {
                self.check_approver(caller, id, task).await?;
            }
            if let Control::SetPace { task, pace } = &control {
                self.check_pace(id, task, pace).await?;
            }
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(error) = checked {
            let entry = levee_store::AuditEntry {
                outcome: error.code.to_string(),
                ..audit
            };
            if let Err(audit_error) = self.store.audit(entry).await {
                tracing::warn!(%audit_error, "could not audit a refused control");
            }
            return Err(error);
        }
        let by = Operator {
            actor: caller.name.clone(),
            reason: request.reason.clone(),
        };
        self.send_event(id, Event::Control { by, control }, Some(audit))
            .await?;
        self.run_view(caller, id).await
    }

    /// A pace is checked by the task's stage before the engine stores it: only a paced stage
    /// has one, and only values it understands are kept.
    async fn check_pace(&self, id: &str, task: &str, pace: &Value) -> Result<(), ApiError> {
        let stored = self
            .store
            .load_run(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no run with id `{id}`")))?;
        let spec = spec_of(&stored)?;
        let Some(task_spec) = spec.tasks.iter().find(|t| t.plan.id == task) else {
            return Ok(()); // The engine answers "no such task".
        };
        self.stages
            .validate_pace(&task_spec.plan.stage, pace)
            .map_err(|error| ApiError::bad_request(format!("task `{task}`: {error}")))
    }

    /// The approval stage's rules, checked before the engine sees the approval: the caller
    /// must be one of `approvers` (if listed), and not whoever started the run if
    /// `not_starter` is set.
    async fn check_approver(&self, caller: &Caller, id: &str, task: &str) -> Result<(), ApiError> {
        let stored = self
            .store
            .load_run(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no run with id `{id}`")))?;
        let spec = spec_of(&stored)?;
        let Some(task_spec) = spec.tasks.iter().find(|t| t.plan.id == task) else {
            return Ok(()); // The engine answers "no such task".
        };
        if task_spec.plan.stage != engine::APPROVAL_STAGE {
            return Ok(()); // The engine answers "not awaiting approval".
        }
        if let Some(approvers) = task_spec.with.get("approvers").and_then(Value::as_array)
            && !approvers
                .iter()
                .any(|a| a.as_str() == Some(caller.name.as_str()))
        {
            let names: Vec<&str> = approvers.iter().filter_map(Value::as_str).collect();
            return Err(ApiError::forbidden(format!(
                "`{}` may not approve task `{task}`; its approvers are: {}",
                caller.name,
                names.join(", ")
            )));
        }
        let not_starter = task_spec
            .with
            .get("not_starter")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if not_starter && stored.state.run.started_by.as_deref() == Some(caller.name.as_str()) {
            return Err(ApiError::forbidden(format!(
                "`{}` started this run and task `{task}` needs someone else's approval",
                caller.name
            )));
        }
        Ok(())
    }

    /// A run as the API shows it.
    pub async fn run_view(&self, caller: &Caller, id: &str) -> Result<RunView, ApiError> {
        caller.require(Role::Viewer)?;
        let stored = self
            .store
            .load_run(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no run with id `{id}`")))?;
        let spec = spec_of(&stored)?;
        Ok(RunView::new(&stored, &stored.state, &spec))
    }

    /// A task's health checks with their thresholds and the observations this replica made
    /// of them (`GET /api/v1/runs/{id}/tasks/{task}/health`).
    pub async fn task_health(
        &self,
        caller: &Caller,
        id: &str,
        task: &str,
    ) -> Result<Vec<TaskHealthView>, ApiError> {
        caller.require(Role::Viewer)?;
        let stored = self
            .store
            .load_run(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no run with id `{id}`")))?;
        let spec = spec_of(&stored)?;
        let Some(task_spec) = spec.tasks.iter().find(|t| t.plan.id == task) else {
            return Err(ApiError::not_found(format!(
                "run `{id}` has no task `{task}`"
            )));
        };
        let mut observed = self.runs.health.of(id, task);
        let bound = |args: &Value, key: &str| {
            args.get(key).and_then(|v| {
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
            })
        };
        Ok(task_spec
            .health
            .iter()
            .map(|check| TaskHealthView {
                name: check.name.clone(),
                check: check.check.clone(),
                below: bound(&check.args, "below"),
                above: bound(&check.args, "above"),
                samples: observed.remove(&check.name).unwrap_or_default(),
            })
            .collect())
    }

    /// Sets or lifts the pause of every run.
    pub async fn set_global_pause(
        self: &Arc<Self>,
        caller: &Caller,
        request: PauseRequest,
    ) -> Result<(), ApiError> {
        let audit = self.audit_entry(
            caller,
            if request.paused {
                "runs.pause_all"
            } else {
                "runs.resume_all"
            },
            "*",
            json!({ "reason": request.reason }),
        );
        let checked = caller
            .require(Role::Operator)
            .and_then(|()| caller.require_unscoped())
            .and_then(|()| check_reason(&request.reason));
        if let Err(error) = checked {
            let entry = levee_store::AuditEntry {
                outcome: error.code.to_string(),
                ..audit
            };
            if let Err(audit_error) = self.store.audit(entry).await {
                tracing::warn!(%audit_error, "could not audit a refused pause");
            }
            return Err(error);
        }
        let value = json!({
            "paused": request.paused,
            "by": caller.name,
            "reason": request.reason,
            "at_ms": self.now_ms(),
        });
        self.store
            .set_setting(GLOBAL_PAUSE_SETTING, value, Some(audit))
            .await?;
        self.runs.apply_global_pause(request.paused);
        Ok(())
    }

    /// The stored global pause setting, as the API shows it.
    pub async fn global_pause_view(&self, caller: &Caller) -> Result<Value, ApiError> {
        caller.require(Role::Viewer)?;
        let stored = self.store.setting(GLOBAL_PAUSE_SETTING).await?;
        Ok(stored.unwrap_or_else(|| json!({ "paused": false })))
    }
}

/// Reads the global pause from the store when the server starts.
pub async fn load_global_pause(store: &levee_store::DynStore) -> anyhow::Result<bool> {
    Ok(store
        .setting(GLOBAL_PAUSE_SETTING)
        .await?
        .and_then(|v| v.get("paused").and_then(Value::as_bool))
        .unwrap_or(false))
}

pub(crate) fn spec_of(stored: &StoredRun) -> Result<RunSpec, ApiError> {
    serde_json::from_value(stored.spec.clone()).map_err(|e| {
        ApiError::internal(format!(
            "run {} has a spec that does not parse: {e}",
            stored.id
        ))
    })
}
