//! The operator's web UI under `/ui/`: server-rendered HTML (askama templates in
//! `crates/server/templates/`), one small script and one stylesheet embedded in the binary, no
//! build step and nothing fetched from another site.
//!
//! The pages only read, through the same functions as the API's handlers. Every control is a
//! form the script sends to the existing JSON API (`/api/v1/runs/{id}/controls`,
//! `/api/v1/runbooks/{name}/runs`, `/api/v1/maintenances/{id}/controls`, `/api/v1/pause`,
//! `/api/v1/drain-tests/{name}/run`),
//! which enforces roles, reasons and audit as for any other client; a page leaves out the controls a viewer may not use, but hiding them
//! is a courtesy, not the check. Live updates come from the run's server-sent-event stream.
//!
//! Sign-in: with tokens configured, `/ui/login` takes a token and stores it in an HttpOnly,
//! SameSite=Strict cookie ([`crate::auth::UI_COOKIE`]); the server accepts that cookie as the
//! bearer, and for any request that changes something only together with the
//! [`crate::auth::UI_REQUEST_HEADER`] header the script sets (see `auth.rs`).
//!
//! Every answer under `/ui/` carries [`CONTENT_SECURITY_POLICY`]: scripts and styles only from
//! this server, no inline script or style, no framing.

mod drain_tests;
mod fleet;
pub(crate) mod layout;
mod machines;
mod pages;
mod start;
mod task;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::SharedApp;
use crate::auth::{Caller, UI_COOKIE};
use crate::error::ApiError;

pub use layout::{GRAPH_LABELLED_MAX_TASKS, GRAPH_MAX_TASKS};
pub use start::{START_CONFIRM_MIN_TASKS, START_CONFIRM_PURPOSES};

/// What every UI answer allows the browser to load: only this server's own script, style,
/// images and connections; nothing inline, no plugins, no framing, forms only to this server.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'; form-action 'self'";
/// How long the sign-in cookie lives, in seconds (the token itself may be revoked sooner).
pub const SESSION_MAX_AGE_S: u64 = 12 * 60 * 60;
/// Longest token a sign-in form may carry, in bytes.
pub const MAX_LOGIN_TOKEN_BYTES: usize = 200;

const SCRIPT: &str = include_str!("static/levee.js");
const STYLE: &str = include_str!("static/levee.css");

pub fn router() -> Router<SharedApp> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::runs))
        .route("/ui/runs/{id}", get(pages::run))
        .route("/ui/runs/{id}/parts", get(pages::run_parts))
        .route("/ui/runs/{id}/report", get(pages::report))
        // A wildcard: task ids of template steps and included runbooks hold `/`
        // (`web/announce`), and the run page links them as they are.
        .route("/ui/runs/{id}/tasks/{*task}", get(task::task))
        .route("/ui/runbooks", get(start::runbooks))
        .route("/ui/runbooks/{name}", get(start::runbook))
        .route("/ui/drain-tests", get(drain_tests::drain_tests))
        .route("/ui/drain-tests/{name}", get(drain_tests::drain_test))
        .route("/ui/fleet", get(fleet::fleet))
        .route("/ui/maintenances", get(fleet::maintenances))
        .route("/ui/maintenances/{id}", get(fleet::maintenance))
        .route("/ui/machines", get(machines::machines))
        .route("/ui/machines/{id}", get(machines::machine))
        .route("/ui/definitions/{name}", get(machines::definition))
        .route("/ui/pause", get(pages::pause))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/static/levee.js", get(script))
        .route("/ui/static/levee.css", get(style))
        .layer(axum::middleware::from_fn(security_headers))
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: with the latter a browser sends `Origin: null` on form
    // posts, and the sign-in form's origin check could not tell its own page from a sandbox.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
        .into_response()
}

/// The caller of a UI page; one who must sign in first is sent to `/ui/login`.
pub struct UiCaller(pub Caller);

impl FromRequestParts<SharedApp> for UiCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &SharedApp) -> Result<Self, Response> {
        match Caller::from_request_parts(parts, app).await {
            Ok(caller) => Ok(UiCaller(caller)),
            Err(error) if error.status == StatusCode::UNAUTHORIZED => {
                Err(Redirect::to("/ui/login").into_response())
            }
            Err(error) => Err(pages::error_page(&error)),
        }
    }
}

async fn login_page(State(app): State<SharedApp>) -> Response {
    if !app.auth.required() {
        return Redirect::to("/ui/").into_response();
    }
    pages::login_form(None)
}

/// Whether a form post comes from a page of this server: a browser names the page's origin
/// in `Origin`, which must then be this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| rest == host)
}

async fn login(State(app): State<SharedApp>, headers: HeaderMap, body: Bytes) -> Response {
    if !same_origin(&headers) {
        return pages::error_page(&ApiError::forbidden(
            "sign in from this server's own /ui/login page",
        ));
    }
    if !app.auth.required() {
        return Redirect::to("/ui/").into_response();
    }
    let token = form_urlencoded::parse(&body)
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    let well_formed = !token.is_empty()
        && token.len() <= MAX_LOGIN_TOKEN_BYTES
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !well_formed {
        return pages::login_form(Some("That is not a Levee token (they start with lvt_)."));
    }
    match app
        .auth
        .authenticate(Some(&format!("Bearer {token}")), None)
    {
        Ok(_) => {
            let cookie = format!(
                "{UI_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_MAX_AGE_S}"
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/")).into_response()
        }
        Err(_) => pages::login_form(Some("Unknown or revoked token.")),
    }
}

async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return pages::error_page(&ApiError::forbidden(
            "sign out from this server's own pages",
        ));
    }
    let cookie = format!("{UI_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response()
}

/// A rendered template as an HTML answer, or a plain error if rendering failed.
fn html(rendered: askama::Result<String>) -> Response {
    match rendered {
        Ok(page) => Html(page).into_response(),
        Err(error) => {
            ApiError::internal(format!("cannot render a UI page: {error}")).into_response()
        }
    }
}
