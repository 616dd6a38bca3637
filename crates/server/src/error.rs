//! The one error type of the HTTP edge. Every error answers JSON of the form
//! `{"error": {"code": "...", "message": "...", ...details}}` with a 4xx status saying what
//! to fix, or a 5xx that hides internals (they go to the log instead).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use levee_engine::Refusal;
use serde_json::{Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the `error` object (diagnostics, the current state, ...).
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Value::Null,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server requires a token: send `Authorization: Bearer <token>` \
             (create one with `levee token create`)",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// A failure of ours, not the caller's: logged in full, answered without internals.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    /// The HTTP status a refusal maps to on the native API.
    pub fn from_refusal(refusal: &Refusal) -> Self {
        let status = match refusal {
            Refusal::UnknownState { .. } => StatusCode::NOT_FOUND,
            Refusal::NotCurrent { .. } | Refusal::Guard(_) | Refusal::ReplayMismatch { .. } => {
                StatusCode::NOT_ACCEPTABLE
            }
            Refusal::Final { .. }
            | Refusal::NoTransition { .. }
            | Refusal::VersionMismatch { .. }
            | Refusal::TooManyReporters { .. }
            | Refusal::NothingToReplay => StatusCode::CONFLICT,
        };
        let mut details = serde_json::to_value(refusal).unwrap_or(Value::Null);
        if let Some(map) = details.as_object_mut() {
            map.remove("code");
        }
        ApiError {
            status,
            code: refusal.code(),
            message: refusal.to_string(),
            details,
        }
    }
}

impl From<levee_store::Error> for ApiError {
    fn from(error: levee_store::Error) -> Self {
        match error {
            levee_store::Error::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            levee_store::Error::Unavailable(message) => {
                tracing::warn!(%message, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store cannot take this request now; nothing was changed, retry later",
                )
            }
            levee_store::Error::Corrupt(message) => ApiError::internal(message),
            levee_store::Error::Fenced(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "lease_lost",
                format!("another replica took the run over; retry: {message}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let (Some(map), Value::Object(extra)) = (error.as_object_mut(), self.details) {
            for (key, value) in extra {
                map.entry(key).or_insert(value);
            }
        }
        (self.status, axum::Json(json!({ "error": error }))).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}
