//! `/state`: Facebook StateService's endpoint, reproduced exactly (see
//! `shared/design/stateservice-compat.md`). Status codes are the whole protocol here: bodies
//! are the state's name on 200 and empty otherwise, and errors StateService answered 500 for
//! are still 500. The one deliberate difference: a PUT on a state that is not current answers
//! 406, as StateService's documentation says, where its code answered 500.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use levee_engine::{Answer, Refusal};
use levee_store::OpOutcome;

use super::first_param;
use crate::SharedApp;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::machines::OwnedReport;

fn empty(status: StatusCode) -> Response {
    status.into_response()
}

fn compat_machine(app: &SharedApp) -> Result<String, ApiError> {
    app.compat_machine().ok_or_else(|| {
        ApiError::not_found(
            "no StateService machine is served here; start the server with \
             `levee serve --machine states.yaml`, or use /machines/{id}/state",
        )
    })
}

/// `GET`, `HEAD` and `OPTIONS /state?state=S`: 200 with `S` if S is current, else 406.
#[utoipa::path(get, path = "/state", tag = "stateservice",
    params(("state" = String, Query, description = "The state to ask about (case-sensitive)")),
    responses(
        (status = 200, description = "The machine is in this state; the body is its name", body = String),
        (status = 406, description = "It is not (or the state is unknown); empty body"),
        (status = 500, description = "No `state` parameter; empty body"),
    ))]
pub async fn get(
    State(app): State<SharedApp>,
    caller: Result<Caller, ApiError>,
    RawQuery(query): RawQuery,
) -> Response {
    let caller = match caller {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let id = match compat_machine(&app) {
        Ok(id) => id,
        Err(error) => return error.into_response(),
    };
    let Some(state) = first_param(query.as_deref(), "state") else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    match app.check(&caller, &id, &state).await {
        Ok(checked) => match checked.answer {
            Answer::Yes => (StatusCode::OK, state).into_response(),
            Answer::No(_) => empty(StatusCode::NOT_ACCEPTABLE),
        },
        Err(error) if error.code == "unknown_state" => empty(StatusCode::NOT_ACCEPTABLE),
        Err(error) => error.into_response(),
    }
}

/// `PUT /state?state=S`: S's step is done. 200 with `S` when counted (the state may or may
/// not have moved on), 406 if S is not current, 500 for what StateService answered 500 for.
#[utoipa::path(put, path = "/state", tag = "stateservice",
    params(("state" = String, Query, description = "The state whose step is done")),
    responses(
        (status = 200, description = "Counted; the body is the state that was PUT", body = String),
        (status = 406, description = "That state is not current; empty body"),
        (status = 500, description = "Missing or empty parameter, unknown, final or time-based state; empty body"),
    ))]
pub async fn put(
    State(app): State<SharedApp>,
    caller: Result<Caller, ApiError>,
    RawQuery(query): RawQuery,
) -> Response {
    let caller = match caller {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let id = match compat_machine(&app) {
        Ok(id) => id,
        Err(error) => return error.into_response(),
    };
    let state = match first_param(query.as_deref(), "state") {
        Some(state) if !state.is_empty() => state,
        _ => return empty(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let report = OwnedReport {
        state: state.clone(),
        event: levee_model::DEFAULT_EVENT.to_string(),
        reporter: None,
        expect_version: None,
        now_ms: app.now_ms(),
    };
    match app.report(&caller, &id, report, "stateservice.put").await {
        Ok(OpOutcome::Applied(_) | OpOutcome::Unchanged(_)) => {
            (StatusCode::OK, state).into_response()
        }
        Ok(OpOutcome::Refused(refusal, _)) => match refusal {
            Refusal::NotCurrent { .. } | Refusal::Guard(_) | Refusal::ReplayMismatch { .. } => {
                empty(StatusCode::NOT_ACCEPTABLE)
            }
            _ => empty(StatusCode::INTERNAL_SERVER_ERROR),
        },
        Ok(OpOutcome::NotFound) => empty(StatusCode::INTERNAL_SERVER_ERROR),
        Err(error) if error.code == "unknown_state" => empty(StatusCode::INTERNAL_SERVER_ERROR),
        Err(error) => error.into_response(),
    }
}
