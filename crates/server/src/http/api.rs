//! The JSON API under `/api/v1/`: definitions, machines, events, history, replay, runbooks and
//! their plans, audit, tokens. Described by the OpenAPI document at `/api/v1/openapi.json`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use levee_engine::{HistoryEntry, MachineRecord};
use levee_store::{
    AuditFilter, AuditRecord, DefinitionRecord, MachineFilter, OpOutcome, TokenRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{JsonBody, QueryParams};
use crate::SharedApp;
use crate::auth::{self, Caller, Role, Scope};
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::export::{self, ExportFormat};
use crate::machines::{NewMachine, OwnedReport, validate_id};
use crate::runbooks::{PlanRequest, PlanView, RunbookSummary};

/// Default and largest page sizes of listings.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
pub const MAX_PAGE_LIMIT: u32 = 1_000;

pub fn router() -> Router<SharedApp> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/schemas/state-machine.json", get(state_machine_schema))
        .route("/whoami", get(whoami))
        .route(
            "/definitions",
            get(list_definitions).post(apply_definitions),
        )
        .route("/definitions/{kind}/{name}", get(get_definition))
        .route("/machines", get(list_machines).post(create_machines))
        .route("/machines/{id}", get(get_machine))
        .route("/machines/{id}/events", post(post_event))
        .route("/machines/{id}/history", get(get_history))
        .route("/machines/{id}/replay", post(post_replay))
        .route("/runbooks", get(list_runbooks))
        .route("/runbooks/{name}/plan", post(plan_runbook))
        .route("/fleet", get(show_fleets))
        .route("/audit", get(list_audit))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{name}", delete(revoke_token))
        .merge(super::runs::router())
        .merge(super::maint::router())
        .merge(crate::drain_tests::router())
}

/// Every stored fleet: hosts, services, and each pool's size, floor and headroom, per
/// datacenter.
#[utoipa::path(get, path = "/api/v1/fleet", tag = "fleet",
    responses((status = 200, body = Vec<crate::fleet::FleetView>)))]
pub async fn show_fleets(
    State(app): State<SharedApp>,
    caller: Caller,
) -> Result<axum::Json<Vec<crate::fleet::FleetView>>, ApiError> {
    Ok(axum::Json(app.fleet_views(&caller).await?))
}

pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(0) => Err(ApiError::bad_request("`limit` must be at least 1")),
        Some(n) if n > MAX_PAGE_LIMIT => Err(ApiError::bad_request(format!(
            "`limit` must be at most {MAX_PAGE_LIMIT}"
        ))),
        Some(n) => Ok(n),
    }
}

async fn openapi() -> Response {
    axum::Json(crate::openapi::document()).into_response()
}

async fn state_machine_schema() -> Response {
    axum::Json(levee_model::schema::state_machine_schema()).into_response()
}

/// A machine instance as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct MachineView {
    pub id: String,
    pub definition: String,
    pub group: Option<String>,
    pub state: String,
    /// Reports counted towards the current state's counting transition.
    pub counter: u32,
    pub reporters: Vec<String>,
    pub entered_at: String,
    pub timer_due_at: Option<String>,
    pub version: i64,
    pub replay: Option<ReplayView>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ReplayView {
    /// Recorded steps already replayed.
    pub done: usize,
    pub total: usize,
    /// The step the machine answers yes to next.
    pub next_state: Option<String>,
    pub next_event: Option<String>,
}

impl From<&MachineRecord> for MachineView {
    fn from(r: &MachineRecord) -> Self {
        MachineView {
            id: r.id.clone(),
            definition: r.definition.clone(),
            group: r.group.clone(),
            state: r.state.clone(),
            counter: r.counter,
            reporters: r.reporters.clone(),
            entered_at: rfc3339(r.entered_at_ms),
            timer_due_at: r.timer_due_ms.map(rfc3339),
            version: r.version,
            replay: r.replay.as_ref().map(|replay| {
                let next = replay.steps.get(replay.next);
                ReplayView {
                    done: replay.next,
                    total: replay.steps.len(),
                    next_state: next.map(|s| s.from.clone()),
                    next_event: next.and_then(|s| s.event.clone()),
                }
            }),
            created_at: rfc3339(r.created_at_ms),
            updated_at: rfc3339(r.updated_at_ms),
        }
    }
}

/// One line of a machine's history.
#[derive(Serialize, ToSchema)]
pub struct HistoryView {
    pub seq: i64,
    pub version: i64,
    pub at: String,
    pub at_ms: i64,
    /// created, counted, transition, timer, replay_started, replay_step, replay_finished.
    pub kind: String,
    pub from: String,
    pub to: String,
    pub event: Option<String>,
    pub counter: u32,
    pub actor: String,
    pub reporter: Option<String>,
}

impl From<&HistoryEntry> for HistoryView {
    fn from(h: &HistoryEntry) -> Self {
        HistoryView {
            seq: h.seq,
            version: h.version,
            at: rfc3339(h.at_ms),
            at_ms: h.at_ms,
            kind: serde_json::to_value(h.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            from: h.from_state.clone(),
            to: h.to_state.clone(),
            event: h.event.clone(),
            counter: h.counter,
            actor: h.actor.clone(),
            reporter: h.reporter.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DefinitionView {
    pub kind: String,
    pub name: String,
    pub version: i64,
    pub digest: String,
    pub created_at: String,
    pub created_by: String,
    /// The compiled definition.
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
    /// The YAML it came from (only when one definition is fetched).
    pub source: Option<String>,
}

fn definition_view(r: DefinitionRecord, with_source: bool) -> DefinitionView {
    DefinitionView {
        kind: r.kind,
        name: r.name,
        version: r.version,
        digest: r.digest,
        created_at: rfc3339(r.created_at_ms),
        created_by: r.created_by,
        definition: r.compiled,
        source: with_source.then_some(r.source),
    }
}

#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    pub name: String,
    pub role: Role,
    pub scope: Option<String>,
    /// False while no token exists (loopback trial mode): everyone is an anonymous admin.
    pub auth_required: bool,
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "auth", responses((status = 200, body = WhoAmI)))]
pub async fn whoami(State(app): State<SharedApp>, caller: Caller) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI {
        name: caller.name,
        role: caller.role,
        scope: match caller.scope {
            Scope::All => None,
            Scope::Machine(id) => Some(format!("machine:{id}")),
            Scope::Group(g) => Some(format!("group:{g}")),
        },
        auth_required: app.auth.required(),
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// Definition files: each a name (shown in errors) and its YAML text.
    pub files: Vec<FileUpload>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUpload {
    pub name: String,
    pub content: String,
}

#[derive(Serialize, ToSchema)]
pub struct ApplyResponse {
    pub definitions: Vec<AppliedDefinition>,
    /// Machine instances the definitions declared that were created now.
    pub created: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AppliedDefinition {
    pub kind: String,
    pub name: String,
    pub version: i64,
    /// False when the same content was already stored (no new version).
    pub changed: bool,
}

/// Validates and stores definition files. Any error rejects the whole request (422 with
/// diagnostics naming file, line and column) and stores nothing.
#[utoipa::path(post, path = "/api/v1/definitions", tag = "definitions", request_body = ApplyRequest,
    responses((status = 200, body = ApplyResponse), (status = 422, description = "Invalid definitions; `error.diagnostics` lists each with file, line and column"),
              (status = 409, description = "The new version drops states that machines are in")))]
pub async fn apply_definitions(
    State(app): State<SharedApp>,
    caller: Caller,
    JsonBody(request): JsonBody<ApplyRequest>,
) -> Result<axum::Json<ApplyResponse>, ApiError> {
    let files = request
        .files
        .into_iter()
        .map(|f| (f.name, f.content))
        .collect();
    let report = app.apply_files(&caller, files).await?;
    Ok(axum::Json(ApplyResponse {
        definitions: report
            .definitions
            .into_iter()
            .map(|(r, changed)| AppliedDefinition {
                kind: r.kind,
                name: r.name,
                version: r.version,
                changed,
            })
            .collect(),
        created: report.created,
    }))
}

#[derive(Deserialize)]
pub struct DefinitionQuery {
    kind: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/definitions", tag = "definitions",
    params(("kind" = Option<String>, Query, description = "Only this kind")),
    responses((status = 200, body = [DefinitionView])))]
pub async fn list_definitions(
    State(app): State<SharedApp>,
    caller: Caller,
    QueryParams(query): QueryParams<DefinitionQuery>,
) -> Result<axum::Json<Vec<DefinitionView>>, ApiError> {
    caller.require(Role::Viewer)?;
    let records = app.store.definitions(query.kind.as_deref()).await?;
    Ok(axum::Json(
        records
            .into_iter()
            .map(|r| definition_view(r, false))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/definitions/{kind}/{name}", tag = "definitions",
    params(("kind" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = DefinitionView), (status = 404)))]
pub async fn get_definition(
    State(app): State<SharedApp>,
    caller: Caller,
    Path((kind, name)): Path<(String, String)>,
) -> Result<axum::Json<DefinitionView>, ApiError> {
    caller.require(Role::Viewer)?;
    let record = app
        .store
        .definition(&kind, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no {kind} definition named `{name}`")))?;
    Ok(axum::Json(definition_view(record, true)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineQuery {
    definition: Option<String>,
    group: Option<String>,
    /// Cursor: ids after this one.
    after: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/machines", tag = "machines",
    params(("definition" = Option<String>, Query), ("group" = Option<String>, Query),
           ("after" = Option<String>, Query, description = "Page cursor: the last id of the previous page"),
           ("limit" = Option<u32>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, body = [MachineView])))]
pub async fn list_machines(
    State(app): State<SharedApp>,
    caller: Caller,
    QueryParams(query): QueryParams<MachineQuery>,
) -> Result<axum::Json<Vec<MachineView>>, ApiError> {
    let filter = MachineFilter {
        definition: query.definition,
        group: query.group,
        after_id: query.after,
        limit: page_limit(query.limit)?,
    };
    let records = machines_visible(&app, &caller, filter).await?;
    Ok(axum::Json(records.iter().map(MachineView::from).collect()))
}

/// The machines `caller` may see that match `filter`: what `GET /api/v1/machines` lists (and
/// the UI's state machine pages show).
pub async fn machines_visible(
    app: &SharedApp,
    caller: &Caller,
    filter: MachineFilter,
) -> Result<Vec<MachineRecord>, ApiError> {
    caller.require(Role::Viewer)?;
    let records = match &caller.scope {
        Scope::All => app.store.machines(&filter).await?,
        // A group scope narrows the listing in the store, so pages stay full.
        Scope::Group(group) => {
            if filter.group.as_ref().is_some_and(|asked| asked != group) {
                Vec::new()
            } else {
                let filter = MachineFilter {
                    group: Some(group.clone()),
                    ..filter
                };
                app.store.machines(&filter).await?
            }
        }
        // A machine scope sees one machine: read it, then apply the filters to it.
        Scope::Machine(id) => app
            .store
            .machine(id)
            .await?
            .filter(|r| {
                filter
                    .definition
                    .as_ref()
                    .is_none_or(|d| *d == r.definition)
            })
            .filter(|r| filter.group.is_none() || filter.group == r.group)
            .filter(|r| filter.after_id.as_ref().is_none_or(|after| r.id > *after))
            .into_iter()
            .collect(),
    };
    Ok(records)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMachinesRequest {
    pub machines: Vec<NewMachine>,
}

#[derive(Serialize, ToSchema)]
pub struct CreateMachinesResponse {
    pub created: Vec<MachineView>,
    /// Ids that existed already and were left as they are.
    pub existing: Vec<String>,
}

/// Creates machine instances of applied definitions (at most 1,000 per request).
#[utoipa::path(post, path = "/api/v1/machines", tag = "machines", request_body = CreateMachinesRequest,
    responses((status = 200, body = CreateMachinesResponse), (status = 422, description = "Unknown definition")))]
pub async fn create_machines(
    State(app): State<SharedApp>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateMachinesRequest>,
) -> Result<axum::Json<CreateMachinesResponse>, ApiError> {
    let ids: Vec<String> = request.machines.iter().map(|m| m.id.clone()).collect();
    let created = app.create_machines(&caller, request.machines).await?;
    let existing = ids
        .into_iter()
        .filter(|id| !created.iter().any(|r| &r.id == id))
        .collect();
    Ok(axum::Json(CreateMachinesResponse {
        created: created.iter().map(MachineView::from).collect(),
        existing,
    }))
}

#[utoipa::path(get, path = "/api/v1/machines/{id}", tag = "machines",
    params(("id" = String, Path)), responses((status = 200, body = MachineView), (status = 404)))]
pub async fn get_machine(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<MachineView>, ApiError> {
    caller.require(Role::Viewer)?;
    let (record, _) = app.machine(&id).await?;
    caller.require_machine(&record)?;
    Ok(axum::Json(MachineView::from(record.as_ref())))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// The state the caller believes is current.
    pub state: String,
    /// Default `done`.
    pub event: Option<String>,
    pub reporter: Option<String>,
    /// Apply only at this version.
    pub expect_version: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct EventResponse {
    /// `applied` (recorded) or `unchanged` (a duplicate report from the same reporter).
    pub outcome: String,
    pub machine: MachineView,
    pub history: Vec<HistoryView>,
}

/// Sends an event to a machine: the JSON form of `PUT /machines/{id}/state`.
#[utoipa::path(post, path = "/api/v1/machines/{id}/events", tag = "machines", request_body = EventRequest,
    params(("id" = String, Path)),
    responses((status = 200, body = EventResponse), (status = 406, description = "Not now"), (status = 404), (status = 409)))]
pub async fn post_event(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<EventRequest>,
) -> Result<axum::Json<EventResponse>, ApiError> {
    let event = request
        .event
        .unwrap_or_else(|| levee_model::DEFAULT_EVENT.to_string());
    validate_id("event", &event)?;
    if let Some(reporter) = &request.reporter {
        validate_id("reporter", reporter)?;
    }
    let report = OwnedReport {
        state: request.state,
        event,
        reporter: request.reporter,
        expect_version: request.expect_version,
        now_ms: app.now_ms(),
    };
    outcome_response(
        &id,
        app.report(&caller, &id, report, "machine.event").await?,
    )
}

fn outcome_response(id: &str, outcome: OpOutcome) -> Result<axum::Json<EventResponse>, ApiError> {
    match outcome {
        OpOutcome::Applied(change) => Ok(axum::Json(EventResponse {
            outcome: "applied".to_string(),
            machine: MachineView::from(&change.record),
            history: change.history.iter().map(HistoryView::from).collect(),
        })),
        OpOutcome::Unchanged(record) => Ok(axum::Json(EventResponse {
            outcome: "unchanged".to_string(),
            machine: MachineView::from(&record),
            history: Vec::new(),
        })),
        OpOutcome::Refused(refusal, _) => Err(ApiError::from_refusal(&refusal)),
        OpOutcome::NotFound => Err(ApiError::not_found(format!("no machine with id `{id}`"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    after: Option<i64>,
    limit: Option<u32>,
    format: Option<String>,
}

/// A machine's history: JSON pages, or (with `format=shell|ansible|chef`) its whole recorded
/// path as a ready-to-use script of checks and reports.
#[utoipa::path(get, path = "/api/v1/machines/{id}/history", tag = "machines",
    params(("id" = String, Path), ("after" = Option<i64>, Query, description = "Page cursor: last seq seen"),
           ("limit" = Option<u32>, Query), ("format" = Option<String>, Query, description = "json (default), shell, ansible or chef")),
    responses((status = 200, body = [HistoryView])))]
pub async fn get_history(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let (record, _) = app.machine(&id).await?;
    caller.require_machine(&record)?;
    let format = match query.format.as_deref() {
        None | Some("json") => None,
        Some(other) => Some(ExportFormat::parse(other).map_err(ApiError::bad_request)?),
    };
    let Some(format) = format else {
        let limit = page_limit(query.limit)?;
        let entries = app
            .store
            .history(&id, query.after.unwrap_or(0), limit)
            .await?;
        return Ok(
            axum::Json(entries.iter().map(HistoryView::from).collect::<Vec<_>>()).into_response(),
        );
    };
    let history = export::whole_history(&app, &id).await?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:7400");
    let script = export::script(format, &record, &history, &format!("http://{host}"));
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        script,
    )
        .into_response())
}

/// Sends the machine back to its initial state; it then answers yes only to its recorded
/// next step until it reaches its last-known state.
#[utoipa::path(post, path = "/api/v1/machines/{id}/replay", tag = "machines", params(("id" = String, Path)),
    responses((status = 200, body = EventResponse), (status = 409, description = "Nothing recorded to replay")))]
pub async fn post_replay(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<EventResponse>, ApiError> {
    outcome_response(&id, app.replay(&caller, &id).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    after: Option<i64>,
    actor: Option<String>,
    target: Option<String>,
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        AuditView {
            seq: r.seq,
            at: rfc3339(r.entry.at_ms),
            actor: r.entry.actor,
            action: r.entry.action,
            target: r.entry.target,
            outcome: r.entry.outcome,
            detail: r.entry.detail,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(("after" = Option<i64>, Query), ("actor" = Option<String>, Query), ("target" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = [AuditView])))]
pub async fn list_audit(
    State(app): State<SharedApp>,
    caller: Caller,
    QueryParams(query): QueryParams<AuditQuery>,
) -> Result<axum::Json<Vec<AuditView>>, ApiError> {
    caller.require(Role::Operator)?;
    caller.require_unscoped()?;
    let filter = AuditFilter {
        after_seq: query.after,
        actor: query.actor,
        target: query.target,
        limit: page_limit(query.limit)?,
    };
    let records = app.store.audit_log(&filter).await?;
    Ok(axum::Json(
        records.into_iter().map(AuditView::from).collect(),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub name: String,
    pub role: String,
    pub scope: Option<String>,
    pub created_at: String,
    pub created_by: String,
    pub revoked_at: Option<String>,
}

impl From<TokenRecord> for TokenView {
    fn from(t: TokenRecord) -> Self {
        TokenView {
            name: t.name,
            role: t.role,
            scope: t.scope,
            created_at: rfc3339(t.created_at_ms),
            created_by: t.created_by,
            revoked_at: t.revoked_at_ms.map(rfc3339),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "auth", responses((status = 200, body = [TokenView])))]
pub async fn list_tokens(
    State(app): State<SharedApp>,
    caller: Caller,
) -> Result<axum::Json<Vec<TokenView>>, ApiError> {
    caller.require(Role::Admin)?;
    caller.require_unscoped()?;
    Ok(axum::Json(
        app.store
            .tokens()
            .await?
            .into_iter()
            .map(TokenView::from)
            .collect(),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    /// viewer, operator or admin.
    pub role: String,
    /// `machine:ID` or `group:NAME`; absent for every machine.
    pub scope: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreateTokenResponse {
    pub token: TokenView,
    /// The secret, shown this once: only its hash is stored.
    pub secret: String,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "auth", request_body = CreateTokenRequest,
    responses((status = 200, body = CreateTokenResponse), (status = 409, description = "Name taken")))]
pub async fn create_token(
    State(app): State<SharedApp>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateTokenRequest>,
) -> Result<axum::Json<CreateTokenResponse>, ApiError> {
    caller.require(Role::Admin)?;
    caller.require_unscoped()?;
    validate_id("token name", &request.name)?;
    let role = Role::parse(&request.role).map_err(ApiError::bad_request)?;
    Scope::parse(request.scope.as_deref()).map_err(ApiError::bad_request)?;
    let secret = auth::new_secret();
    let record = TokenRecord {
        name: request.name.clone(),
        role: role.as_str().to_string(),
        scope: request.scope,
        hash: auth::hash_secret(&secret),
        created_at_ms: app.now_ms(),
        created_by: caller.name.clone(),
        revoked_at_ms: None,
    };
    let audit = app.audit_entry(
        &caller,
        "token.create",
        &request.name,
        json!({ "role": role.as_str() }),
    );
    app.store.create_token(record.clone(), Some(audit)).await?;
    app.auth.remember(record.clone());
    Ok(axum::Json(CreateTokenResponse {
        token: TokenView::from(record),
        secret,
    }))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{name}", tag = "auth", params(("name" = String, Path)),
    responses((status = 204, description = "Revoked"), (status = 404)))]
pub async fn revoke_token(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    caller.require_unscoped()?;
    let audit = app.audit_entry(&caller, "token.revoke", &name, json!({}));
    if app
        .store
        .revoke_token(&name, app.now_ms(), Some(audit))
        .await?
    {
        app.auth.forget(&name);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no active token named `{name}`"
        )))
    }
}

/// Every stored runbook: its parameters and how many tasks it has once templates and included
/// runbooks are expanded.
#[utoipa::path(get, path = "/api/v1/runbooks", tag = "runbooks",
    responses((status = 200, body = [RunbookSummary])))]
pub async fn list_runbooks(
    State(app): State<SharedApp>,
    caller: Caller,
) -> Result<axum::Json<Vec<RunbookSummary>>, ApiError> {
    Ok(axum::Json(app.list_runbooks(&caller).await?))
}

/// What a run would do, without doing any of it: the bound parameters, the resolved tasks,
/// the waves, the predicted durations and the predicted critical path with its speedup.
/// Nothing is stored and nothing is audited.
#[utoipa::path(post, path = "/api/v1/runbooks/{name}/plan", tag = "runbooks",
    params(("name" = String, Path)), request_body = PlanRequest,
    responses((status = 200, body = PlanView),
              (status = 404, description = "No runbook of that name"),
              (status = 422, description = "Invalid parameters; `error.params` lists every one")))]
pub async fn plan_runbook(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<PlanRequest>,
) -> Result<axum::Json<PlanView>, ApiError> {
    Ok(axum::Json(app.plan_runbook(&caller, &name, request).await?))
}
