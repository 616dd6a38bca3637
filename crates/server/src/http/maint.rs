//! `/api/v1/maintenances[...]` and `/api/v1/hosts/{host}[/serving]`: planning, scheduling,
//! following and steering maintenance, and whether a host is in service.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{JsonBody, QueryParams};
use crate::SharedApp;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::maint::{
    CalendarQuery, CalendarView, HostServingView, MaintenanceControl, MaintenancePlan,
    MaintenanceQuery, MaintenanceRequest, MaintenanceView,
};

pub fn router() -> Router<SharedApp> {
    Router::new()
        .route(
            "/maintenances",
            get(list_maintenances).post(schedule_maintenance),
        )
        .route("/maintenances/plan", post(plan_maintenance))
        .route("/maintenances/calendar", get(calendar))
        .route("/maintenances/{id}", get(get_maintenance))
        .route("/maintenances/{id}/controls", post(control_maintenance))
        .route("/hosts/{host}", get(get_host))
        .route("/hosts/{host}/serving", get(host_serving))
        .route("/alerts/alertmanager", post(receive_alerts))
}

/// A dry run of a maintenance: resolved hosts, capacity before and after per pool, each
/// service's action, approval needed, and what scheduling it would give. Nothing changes.
#[utoipa::path(post, path = "/api/v1/maintenances/plan", tag = "fleet",
    request_body = MaintenanceRequest,
    responses((status = 200, body = MaintenancePlan), (status = 400), (status = 422)))]
pub async fn plan_maintenance(
    State(app): State<SharedApp>,
    caller: Caller,
    JsonBody(request): JsonBody<MaintenanceRequest>,
) -> Result<axum::Json<MaintenancePlan>, ApiError> {
    Ok(axum::Json(app.plan_maintenance(&caller, &request).await?))
}

/// Schedules a maintenance, its capacity reserved atomically. 409 with the explanation when
/// its preflight fails or its hosts are already in an overlapping maintenance.
#[utoipa::path(post, path = "/api/v1/maintenances", tag = "fleet",
    request_body = MaintenanceRequest,
    responses((status = 201, body = MaintenanceView), (status = 400), (status = 409),
        (status = 422)))]
pub async fn schedule_maintenance(
    State(app): State<SharedApp>,
    caller: Caller,
    JsonBody(request): JsonBody<MaintenanceRequest>,
) -> Result<Response, ApiError> {
    let view = app.schedule_maintenance(&caller, &request).await?;
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

/// Maintenances by start time (`?active=true`: only those still holding capacity).
#[utoipa::path(get, path = "/api/v1/maintenances", tag = "fleet",
    responses((status = 200, body = Vec<MaintenanceView>)))]
pub async fn list_maintenances(
    State(app): State<SharedApp>,
    caller: Caller,
    QueryParams(query): QueryParams<MaintenanceQuery>,
) -> Result<axum::Json<Vec<MaintenanceView>>, ApiError> {
    Ok(axum::Json(app.maintenance_views(&caller, &query).await?))
}

/// One maintenance: its state, why, what would unblock it, each service's progress.
#[utoipa::path(get, path = "/api/v1/maintenances/{id}", tag = "fleet",
    responses((status = 200, body = MaintenanceView), (status = 404)))]
pub async fn get_maintenance(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<MaintenanceView>, ApiError> {
    Ok(axum::Json(app.maintenance_view(&caller, &id).await?))
}

/// approve, confirm (per service), cancel, finish, enable_host; each with a reason.
#[utoipa::path(post, path = "/api/v1/maintenances/{id}/controls", tag = "fleet",
    request_body = MaintenanceControl,
    responses((status = 200, body = MaintenanceView), (status = 400), (status = 403),
        (status = 404), (status = 409)))]
pub async fn control_maintenance(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(control): JsonBody<MaintenanceControl>,
) -> Result<axum::Json<MaintenanceView>, ApiError> {
    Ok(axum::Json(
        app.control_maintenance(&caller, &id, &control).await?,
    ))
}

/// Upcoming maintenance per failure domain (`?by=rack&days=14`).
#[utoipa::path(get, path = "/api/v1/maintenances/calendar", tag = "fleet",
    responses((status = 200, body = CalendarView)))]
pub async fn calendar(
    State(app): State<SharedApp>,
    caller: Caller,
    QueryParams(query): QueryParams<CalendarQuery>,
) -> Result<axum::Json<CalendarView>, ApiError> {
    Ok(axum::Json(app.maintenance_calendar(&caller, &query).await?))
}

/// Whether a host is in service, and which maintenances hold it out.
#[utoipa::path(get, path = "/api/v1/hosts/{host}", tag = "fleet",
    responses((status = 200, body = HostServingView), (status = 404)))]
pub async fn get_host(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(host): Path<String>,
) -> Result<axum::Json<HostServingView>, ApiError> {
    Ok(axum::Json(app.host_serving(&caller, &host).await?))
}

/// For a load balancer's health check: 200 `serving` or 503 `out: ...`.
pub async fn host_serving(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(host): Path<String>,
) -> Result<Response, ApiError> {
    let view = app.host_serving(&caller, &host).await?;
    Ok(if view.serving {
        (StatusCode::OK, "serving\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("out: {}\n", view.out_because.join("; ")),
        )
            .into_response()
    })
}

/// Prometheus Alertmanager's webhook receiver (payload version 4, as Alertmanager 0.25 and
/// later send it): each alert is matched to the remediation rules and, within their limits
/// and the capacity floors, starts a host repair. 400 when the body is not Alertmanager's.
#[utoipa::path(post, path = "/api/v1/alerts/alertmanager", tag = "fleet",
    request_body(content = Object, description = "Alertmanager's webhook payload"),
    responses((status = 200, body = crate::remediation::AlertsResponse), (status = 400)))]
pub async fn receive_alerts(
    State(app): State<SharedApp>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<axum::Json<crate::remediation::AlertsResponse>, ApiError> {
    Ok(axum::Json(app.receive_alerts(&caller, &body).await?))
}
