//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::OpenApi;

use crate::http::{api, compat, maint, native};
use crate::runbooks;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Levee",
        description = "Levee's HTTP API: StateService-compatible `/state`, native yes/no checks \
                       at `/machines/{id}/state`, and the JSON API under `/api/v1/` (state machines, runbooks \
                       and their plans). Errors are \
                       JSON: `{\"error\": {\"code\": ..., \"message\": ...}}`."
    ),
    paths(
        compat::get, compat::put, native::get, native::put,
        api::whoami, api::apply_definitions, api::list_definitions, api::get_definition,
        api::list_machines, api::create_machines, api::get_machine, api::post_event,
        api::get_history, api::post_replay, api::list_audit, api::list_tokens, api::create_token,
        api::revoke_token, api::list_runbooks, api::plan_runbook, api::show_fleets,
        maint::plan_maintenance, maint::schedule_maintenance, maint::list_maintenances,
        maint::get_maintenance, maint::control_maintenance, maint::calendar, maint::get_host,
        maint::receive_alerts,
        crate::drain_tests::list_drain_tests, crate::drain_tests::get_drain_test,
        crate::drain_tests::run_drain_test, crate::drain_tests::list_executions,
        crate::drain_tests::get_execution,
    ),
    components(schemas(
        api::MachineView, api::ReplayView, api::HistoryView, api::DefinitionView, api::WhoAmI,
        api::ApplyRequest, api::FileUpload, api::ApplyResponse, api::AppliedDefinition,
        api::CreateMachinesRequest, api::CreateMachinesResponse, api::EventRequest,
        api::EventResponse, api::AuditView, api::TokenView, api::CreateTokenRequest,
        api::CreateTokenResponse, crate::machines::NewMachine, crate::auth::Role,
        runbooks::RunbookSummary, runbooks::ParamView, runbooks::PlanRequest, runbooks::PlanView,
        runbooks::PlannedTask, runbooks::ChecksView, runbooks::RetriesView, runbooks::Prediction,
        runbooks::CriticalPathView, crate::fleet::FleetView, crate::fleet::DatacenterView,
        crate::fleet::PoolView, crate::maint::MaintenanceRequest, crate::maint::MaintenancePlan,
        crate::maint::MaintenanceView, crate::maint::MaintenanceControl,
        crate::maint::CalendarView, crate::maint::CalendarDomain, crate::maint::CalendarEntry,
        crate::maint::HostServingView, crate::remediation::AlertsResponse,
        crate::remediation::AlertOutcome, crate::drain_tests::DrainTestView,
    )),
    tags(
        (name = "stateservice", description = "Facebook StateService's endpoint, reproduced exactly"),
        (name = "machines", description = "State machine instances"),
        (name = "definitions", description = "YAML definitions"),
        (name = "runbooks", description = "Stored runbooks and their plans"),
        (name = "fleet", description = "Fleets, capacity and maintenance"),
        (name = "drain-tests", description = "Drain tests: scheduled drains and restores, judged"),
        (name = "audit", description = "Who changed what"),
        (name = "auth", description = "Tokens"),
    )
)]
struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
