//! Levee's HTTP server: the StateService-compatible `/state` endpoint, the native
//! `/machines/{id}/state` yes/no endpoint, the JSON API under `/api/v1/`, `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! [`app`] builds the router from an [`App`] so tests can call it directly; [`serve`] runs it
//! on a listener the caller binds, until a shutdown future completes.

pub mod auth;
pub mod clock;
pub mod drain_tests;
pub mod error;
pub mod export;
pub mod fleet;
pub mod http;
pub mod machines;
pub mod maint;
pub mod metrics;
pub mod openapi;
pub mod remediation;
pub mod replica;
pub mod runbooks;
pub mod runs;
pub mod serve;
pub mod timers;
pub mod ui;
pub mod webhooks;

use std::sync::Arc;

pub use clock::{Clock, SystemClock};
pub use error::ApiError;
pub use http::app;
pub use machines::{App, AppOptions};
pub use serve::{ServeOptions, serve};

/// Largest request body accepted, in bytes: a definition file (1 MiB at most) plus JSON
/// quoting overhead.
pub const MAX_REQUEST_BODY_BYTES: usize = 3 * 1024 * 1024;
/// A request that takes longer is answered 503 and dropped, so no client holds a worker.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;

pub type SharedApp = Arc<App>;
