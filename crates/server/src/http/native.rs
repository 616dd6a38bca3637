//! `/machines/{id}/state`: the native yes/no endpoint for configuration management. Same
//! meaning as `/state` (200 yes, 406 no), plus what StateService could not say: 404 for an
//! unknown machine or state, 400 for a malformed request, 409 for a lost race or a step the
//! state does not take. Non-200 answers carry a JSON body explaining why.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use levee_engine::{Answer, NoReason};
use levee_store::OpOutcome;
use serde_json::json;

use super::first_param;
use crate::SharedApp;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::machines::{OwnedReport, validate_id};

fn required_state(query: Option<&str>) -> Result<String, ApiError> {
    match first_param(query, "state") {
        Some(state) if !state.is_empty() => Ok(state),
        Some(_) => Err(ApiError::bad_request(
            "`state` is empty: name the state to ask about",
        )),
        None => Err(ApiError::bad_request(
            "missing query parameter `state`: ask as /machines/{id}/state?state=NAME",
        )),
    }
}

fn yes(state: String, version: i64) -> Response {
    let mut response = (StatusCode::OK, state).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// `GET|HEAD|OPTIONS /machines/{id}/state?state=S`.
#[utoipa::path(get, path = "/machines/{id}/state", tag = "machines",
    params(
        ("id" = String, Path, description = "Machine id"),
        ("state" = String, Query, description = "The state whose step the caller wants to take"),
    ),
    responses(
        (status = 200, description = "Yes: the machine is in this state and its guards hold. Body: the state; ETag: the version", body = String),
        (status = 406, description = "No: another state is current, or a guard fails (JSON says which)"),
        (status = 400, description = "Missing or empty `state`"),
        (status = 404, description = "Unknown machine or state"),
    ))]
pub async fn get(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let state = required_state(query.as_deref())?;
    let checked = app.check(&caller, &id, &state).await?;
    match checked.answer {
        Answer::Yes => Ok(yes(state, checked.version)),
        Answer::No(reason) => {
            let message = match &reason {
                NoReason::NotCurrent { current } => {
                    format!("machine `{id}` is in `{current}`, not `{state}`")
                }
                NoReason::Guard(failure) => format!(
                    "machine `{id}` is in `{state}` but must wait: machine `{}` is in {} and must \
                     be in {:?}",
                    failure.machine,
                    failure
                        .state
                        .as_deref()
                        .map_or("no state (it does not exist)".to_string(), |s| format!(
                            "`{s}`"
                        )),
                    failure.needs
                ),
            };
            let code = match reason {
                NoReason::NotCurrent { .. } => "not_current",
                NoReason::Guard(_) => "guard",
            };
            Err(ApiError::new(StatusCode::NOT_ACCEPTABLE, code, message)
                .with_details(serde_json::to_value(&reason).unwrap_or_default()))
        }
    }
}

/// `PUT /machines/{id}/state?state=S[&event=E][&reporter=R]`: the step of S is done.
#[utoipa::path(put, path = "/machines/{id}/state", tag = "machines",
    params(
        ("id" = String, Path, description = "Machine id"),
        ("state" = String, Query, description = "The state whose step is done"),
        ("event" = Option<String>, Query, description = "Which of the state's events (default `done`)"),
        ("reporter" = Option<String>, Query, description = "Who reports (a hostname): a counting transition counts each reporter once"),
        ("If-Match" = Option<String>, Header, description = "Apply only at this version (an ETag from GET)"),
    ),
    responses(
        (status = 200, description = "Recorded (durably) and the body is the state reported", body = String),
        (status = 406, description = "Not now: another state is current, or a guard fails"),
        (status = 400, description = "Malformed request"),
        (status = 404, description = "Unknown machine or state"),
        (status = 409, description = "A lost race (If-Match), a final state, or an event this state does not take"),
    ))]
pub async fn put(
    State(app): State<SharedApp>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let state = required_state(query.as_deref())?;
    let event = first_param(query.as_deref(), "event")
        .unwrap_or_else(|| levee_model::DEFAULT_EVENT.to_string());
    validate_id("event", &event)?;
    let reporter = first_param(query.as_deref(), "reporter");
    if let Some(reporter) = &reporter {
        validate_id("reporter", reporter)?;
    }
    let expect_version = parse_if_match(&headers)?;
    let report = OwnedReport {
        state: state.clone(),
        event,
        reporter,
        expect_version,
        now_ms: app.now_ms(),
    };
    match app.report(&caller, &id, report, "machine.report").await? {
        OpOutcome::Applied(change) => Ok(yes(state, change.record.version)),
        OpOutcome::Unchanged(record) => Ok(yes(state, record.version)),
        OpOutcome::Refused(refusal, _) => Err(ApiError::from_refusal(&refusal)),
        OpOutcome::NotFound => Err(ApiError::not_found(format!("no machine with id `{id}`"))),
    }
}

/// `If-Match: "7"` (or `7`) → 7.
pub fn parse_if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"');
    text.parse::<i64>().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "If-Match must be a version from an ETag, such as \"7\"; got {:?}",
            value
        ))
        .with_details(json!({}))
    })
}
