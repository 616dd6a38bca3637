//! `/api/v1/runs`: start runs, list and show them, steer them, follow their journal (as pages
//! or a server-sent-event stream), their report and their tasks' output; `/api/v1/pause`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use levee_engine::runbook::{self as engine, RunStatus};
use levee_store::{JournalRecord, RunFilter, RunSummary, TaskOutput};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{JsonBody, QueryParams};
use crate::SharedApp;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::runs::views::RunView;
use crate::runs::{ControlRequest, PauseRequest, StartRequest, spec_of};

/// How often an event stream looks at the store when no change notice arrived (another
/// replica may have written).
pub const EVENT_STREAM_POLL_MS: u64 = 1_000;
/// Journal entries read per page by an event stream.
pub const EVENT_STREAM_PAGE_ROWS: u32 = 1_000;
/// Interval of SSE keep-alive comments, so proxies do not close an idle stream.
pub const EVENT_STREAM_KEEPALIVE_MS: u64 = 15_000;

pub fn router() -> Router<SharedApp> {
    Router::new()
        .route("/runbooks/{name}/runs", post(start_run))
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/controls", post(control_run))
        .route("/runs/{id}/journal", get(get_journal))
        .route("/runs/{id}/events", get(run_events))
        .route("/runs/{id}/report", get(get_report))
        .route("/runs/{id}/tasks/{task}/output", get(get_output))
        .route("/runs/{id}/tasks/{task}/health", get(get_health))
        .route("/pause", get(get_pause).put(put_pause))
        .route("/replicas", get(list_replicas))
}

/// One replica in `GET /api/v1/replicas`.
#[derive(Serialize, ToSchema)]
pub struct ReplicaView {
    pub id: String,
    pub address: String,
    pub started_at_ms: i64,
    pub seen_at_ms: i64,
    /// Heard from within the last lease time (replicas heartbeat several times per lease
    /// time). One that died stays listed, not alive, for a few lease times.
    pub alive: bool,
    /// Whether this is the replica that answered.
    pub this: bool,
    /// The active runs it holds, with the epoch and expiry of each lease.
    #[schema(value_type = Vec<Object>)]
    pub leases: Vec<levee_store::Lease>,
}

#[derive(Serialize, ToSchema)]
pub struct ReplicasPage {
    pub lease_ttl_ms: u64,
    pub replicas: Vec<ReplicaView>,
}

/// Replicas heard from recently (within a few lease times) and the runs each holds.
#[utoipa::path(get, path = "/api/v1/replicas", tag = "runs",
    responses((status = 200, body = ReplicasPage)))]
pub async fn list_replicas(
    State(app): State<SharedApp>,
    caller: Caller,
) -> Result<axum::Json<ReplicasPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let replica = &app.replica;
    let window = replica
        .lease_ttl_ms
        .saturating_mul(crate::replica::REPLICA_SEEN_WITHIN_TTLS);
    let now = app.now_ms();
    let since = now.saturating_sub(i64::try_from(window).unwrap_or(i64::MAX));
    let alive_since = now.saturating_sub(i64::try_from(replica.lease_ttl_ms).unwrap_or(i64::MAX));
    let replicas = app
        .store
        .replicas(since)
        .await?
        .into_iter()
        .map(|r| ReplicaView {
            this: r.id == replica.id,
            id: r.id,
            address: r.address,
            started_at_ms: r.started_at_ms,
            alive: r.seen_at_ms >= alive_since,
            seen_at_ms: r.seen_at_ms,
            leases: r.leases,
        })
        .collect();
    Ok(axum::Json(ReplicasPage {
        lease_ttl_ms: replica.lease_ttl_ms,
        replicas,
    }))
}

/// Starts a run. Answers 201 with the new run, or 200 with the run an earlier start with the
/// same `name` created (a retried start never starts two).
#[utoipa::path(post, path = "/api/v1/runbooks/{name}/runs", tag = "runs",
    params(("name" = String, Path)), request_body = StartRequest,
    responses((status = 201, body = RunView), (status = 200, description = "The run already started under this name", body = RunView),
              (status = 404, description = "No runbook of that name"),
              (status = 422, description = "Invalid parameters")))]
pub async fn start_run(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<StartRequest>,
) -> Result<Response, ApiError> {
    let (view, created) = app.start_run(&caller, &name, request).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// Comma-separated statuses.
    pub status: Option<String>,
    pub runbook: Option<String>,
    /// Runs created before this run id (paging backwards).
    pub before: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct RunsPage {
    #[schema(value_type = Vec<Object>)]
    pub runs: Vec<RunSummary>,
}

/// Runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs",
    params(("status" = Option<String>, Query, description = "Comma-separated: pending,running,paused,succeeded,failed,aborted"),
           ("runbook" = Option<String>, Query), ("before" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = RunsPage)))]
pub async fn list_runs(
    State(app): State<SharedApp>,
    caller: Caller,
    QueryParams(query): QueryParams<RunsQuery>,
) -> Result<axum::Json<RunsPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut statuses = Vec::new();
    for name in query.status.iter().flat_map(|s| s.split(',')) {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let status: RunStatus =
            serde_json::from_value(Value::String(name.to_string())).map_err(|_| {
                ApiError::bad_request(format!(
                    "unknown run status `{name}`; use pending, running, paused, succeeded, \
                     failed or aborted"
                ))
            })?;
        statuses.push(status);
    }
    let runs = app
        .store
        .runs(&RunFilter {
            statuses,
            runbook: query.runbook,
            before_id: query.before,
            limit: super::api::page_limit(query.limit)?,
        })
        .await?;
    Ok(axum::Json(RunsPage { runs }))
}

/// A run with every task.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path)), responses((status = 200, body = RunView), (status = 404)))]
pub async fn get_run(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<RunView>, ApiError> {
    Ok(axum::Json(app.run_view(&caller, &id).await?))
}

/// Steers a run: `start`, `pause`, `resume`, `abort`, `skip`, `retry`, `override_condition`,
/// `override_weak_dep`, `approve`. Needs the operator role and a reason; audited either way.
#[utoipa::path(post, path = "/api/v1/runs/{id}/controls", tag = "runs",
    params(("id" = String, Path)), request_body = ControlRequest,
    responses((status = 200, body = RunView),
              (status = 400, description = "Unknown control, or no reason given"),
              (status = 403, description = "Not allowed (role, or an approval rule)"),
              (status = 404, description = "No such run or task"),
              (status = 409, description = "The run or task is not in a state that allows it; `error.code` says why")))]
pub async fn control_run(
    State(app): State<SharedApp>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<ControlRequest>,
) -> Response {
    match app.control_run(&caller, &id, request.clone()).await {
        Ok(view) => axum::Json(view).into_response(),
        // Another replica executes the run: it decides the control. A forwarded request is
        // never forwarded again (the owner changed meanwhile: the client retries).
        Err(error)
            if error.code == "not_owner"
                && !headers.contains_key(crate::replica::FORWARDED_BY_HEADER) =>
        {
            let owner = error.details.get("owner").and_then(Value::as_str);
            match owner {
                Some(owner) => forward_control(&app, &headers, owner, &id, &request)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                None => error.into_response(),
            }
        }
        Err(error) => error.into_response(),
    }
}

/// Sends a control to the replica that executes the run and answers with its answer.
async fn forward_control(
    app: &SharedApp,
    headers: &HeaderMap,
    owner: &str,
    id: &str,
    request: &ControlRequest,
) -> Result<Response, ApiError> {
    let unreachable = |why: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "owner_unreachable",
            format!(
                "run `{id}` is executed by replica {owner}, which cannot be reached ({why}); \
                 retry: another replica takes the run over once its lease expires"
            ),
        )
    };
    let replicas = app.store.replicas(0).await?;
    let address = replicas
        .iter()
        .find(|r| r.id == owner)
        .map(|r| r.address.clone())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| unreachable("it announced no address".to_string()))?;
    let url = format!(
        "{}/api/v1/runs/{}/controls",
        address.trim_end_matches('/'),
        form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
    );
    let mut forward = app
        .replica
        .client
        .post(&url)
        .header(crate::replica::FORWARDED_BY_HEADER, &app.replica.id)
        .json(request);
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        forward = forward.header(axum::http::header::AUTHORIZATION, auth.clone());
    }
    let answer = forward
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = answer
        .bytes()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok((
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalQuery {
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct JournalPage {
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<JournalRecord>,
}

async fn require_run(app: &SharedApp, id: &str) -> Result<(), ApiError> {
    match app.store.load_run(id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("no run with id `{id}`"))),
    }
}

/// A run's journal: who did what, when and why, `seq` ascending.
#[utoipa::path(get, path = "/api/v1/runs/{id}/journal", tag = "runs",
    params(("id" = String, Path), ("after" = Option<i64>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = JournalPage), (status = 404)))]
pub async fn get_journal(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<JournalQuery>,
) -> Result<axum::Json<JournalPage>, ApiError> {
    caller.require(Role::Viewer)?;
    require_run(&app, &id).await?;
    let entries = app
        .store
        .run_journal(
            &id,
            query.after.unwrap_or(0),
            super::api::page_limit(query.limit)?,
        )
        .await?;
    Ok(axum::Json(JournalPage { entries }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub after: Option<i64>,
}

/// The journal as a server-sent-event stream: every entry after `after` (or the
/// `Last-Event-ID` header) as an event `journal` with the entry's `seq` as its id, live.
#[utoipa::path(get, path = "/api/v1/runs/{id}/events", tag = "runs",
    params(("id" = String, Path), ("after" = Option<i64>, Query)),
    responses((status = 200, description = "text/event-stream of journal entries"), (status = 404)))]
pub async fn run_events(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventsQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    require_run(&app, &id).await?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let after = query.after.or(last_event_id).unwrap_or(0);
    let stream = journal_stream(app, id, after);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_millis(EVENT_STREAM_KEEPALIVE_MS)))
        .into_response())
}

struct StreamState {
    app: SharedApp,
    id: Arc<str>,
    after: i64,
    notices: tokio::sync::broadcast::Receiver<Arc<str>>,
    pending: std::collections::VecDeque<JournalRecord>,
    /// The run finished for good (succeeded or aborted): nothing can follow its last entry.
    finished: bool,
}

fn journal_stream(
    app: SharedApp,
    id: String,
    after: i64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let notices = app.runs.subscribe();
    let state = StreamState {
        app,
        id: Arc::from(id.as_str()),
        after,
        notices,
        pending: std::collections::VecDeque::new(),
        finished: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(record) = state.pending.pop_front() {
                state.after = record.seq;
                if let levee_engine::runbook::JournalKind::RunFinished { status } =
                    record.entry.kind
                    && status.is_final()
                {
                    state.finished = true;
                }
                let event = SseEvent::default()
                    .id(record.seq.to_string())
                    .event("journal")
                    .json_data(&record)
                    .unwrap_or_else(|_| SseEvent::default().comment("unserialisable entry"));
                return Some((Ok(event), state));
            }
            if state.finished {
                // A failed run may be reopened by a retry; a succeeded or aborted one never
                // changes again, so its stream ends instead of idling forever.
                return None;
            }
            match state
                .app
                .store
                .run_journal(&state.id, state.after, EVENT_STREAM_PAGE_ROWS)
                .await
            {
                Ok(entries) if !entries.is_empty() => {
                    state.pending.extend(entries);
                    continue;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "event stream cannot read the journal"),
            }
            // Wait for a notice about this run, or poll (another replica may have written).
            let wait = tokio::time::sleep(Duration::from_millis(EVENT_STREAM_POLL_MS));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    notice = state.notices.recv() => match notice {
                        Ok(run) if *run == *state.id => break,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    },
                }
            }
        }
    })
}

/// The post-run report (while the run is going: so far): the actual critical path, the time
/// on it, the sequential-equivalent time and the speedup, the slowest tasks and the time spent
/// waiting for approvals.
#[utoipa::path(get, path = "/api/v1/runs/{id}/report", tag = "runs",
    params(("id" = String, Path)), responses((status = 200, description = "The report"), (status = 404)))]
pub async fn get_report(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let stored = app
        .store
        .load_run(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run with id `{id}`")))?;
    let spec = spec_of(&stored)?;
    let plan = spec
        .plan()
        .map_err(|e| ApiError::internal(format!("run {id} has an invalid plan: {e}")))?;
    let report = engine::report(&stored.state, &plan);
    let mut value = serde_json::to_value(&report).map_err(ApiError::internal)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("run".into(), Value::String(id));
        map.insert(
            "status".into(),
            Value::String(stored.state.run.status.name().to_string()),
        );
        map.insert("tasks".into(), Value::from(stored.state.tasks.len()));
    }
    Ok(axum::Json(value).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct OutputPage {
    #[schema(value_type = Vec<Object>)]
    pub outputs: Vec<TaskOutput>,
}

/// What each attempt of a task printed (size-limited) and reported.
#[utoipa::path(get, path = "/api/v1/runs/{id}/tasks/{task}/output", tag = "runs",
    params(("id" = String, Path), ("task" = String, Path)),
    responses((status = 200, body = OutputPage), (status = 404)))]
pub async fn get_output(
    State(app): State<SharedApp>,
    caller: Caller,
    Path((id, task)): Path<(String, String)>,
) -> Result<axum::Json<OutputPage>, ApiError> {
    caller.require(Role::Viewer)?;
    require_run(&app, &id).await?;
    let outputs = app.store.task_outputs(&id, &task).await?;
    Ok(axum::Json(OutputPage { outputs }))
}

/// A task's health checks, their thresholds, and the observations the answering replica made
/// of them while the task ran (kept in its memory, the latest few per check).
#[utoipa::path(get, path = "/api/v1/runs/{id}/tasks/{task}/health", tag = "runs",
    params(("id" = String, Path), ("task" = String, Path)),
    responses((status = 200, body = Vec<crate::runs::TaskHealthView>), (status = 404)))]
pub async fn get_health(
    State(app): State<SharedApp>,
    caller: Caller,
    Path((id, task)): Path<(String, String)>,
) -> Result<axum::Json<Vec<crate::runs::TaskHealthView>>, ApiError> {
    Ok(axum::Json(app.task_health(&caller, &id, &task).await?))
}

/// Whether every run is paused, by whom and why.
#[utoipa::path(get, path = "/api/v1/pause", tag = "runs",
    responses((status = 200, description = "`{paused, by, reason, at_ms}`")))]
pub async fn get_pause(
    State(app): State<SharedApp>,
    caller: Caller,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(app.global_pause_view(&caller).await?))
}

/// Pauses every run (no run starts a new task until lifted) or lifts the pause.
#[utoipa::path(put, path = "/api/v1/pause", tag = "runs", request_body = PauseRequest,
    responses((status = 200, description = "The pause as now stored"), (status = 400), (status = 403)))]
pub async fn put_pause(
    State(app): State<SharedApp>,
    caller: Caller,
    JsonBody(request): JsonBody<PauseRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    app.set_global_pause(&caller, request).await?;
    Ok(axum::Json(app.global_pause_view(&caller).await?))
}
