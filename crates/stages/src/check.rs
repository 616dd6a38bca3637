//! Checks: the conditions behind a task's `pre`, `post` and `health` lists.
//!
//! A check only observes; it never changes anything, so it may be evaluated any number of
//! times. Every way a check can be unsure (no answer, no data, NaN, a body it cannot read) is a
//! failed check: Levee stalls and asks a human rather than guessing that all is well.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::args::{ArgError, ArgKind, ArgSpec, Args};
use crate::context::{CancelToken, OutputSink};
use crate::http::{HTTP_ARGS, RequestEnd, parse_request, send};
use crate::process::{ProgramEnd, describe_status, run_program};
use crate::shell::{SHELL_ARGS, parse_shell_args};

/// Most bytes of output a `shell` check keeps for its `observed` text.
pub const MAX_CHECK_OUTPUT_BYTES: usize = 4 * 1024;

/// The deadline of a `metric` check's query, in milliseconds.
pub const METRIC_QUERY_TIMEOUT_MS: u64 = 10_000;

/// Most path segments in an `http` check's `field`.
pub const MAX_FIELD_PATH_SEGMENTS: usize = 32;

/// The result of evaluating a check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// Whether the condition holds.
    pub ok: bool,
    /// What was observed (a status, a value, an exit code), for the operator.
    pub observed: String,
    /// A sentence saying why the check passed or failed.
    pub reason: String,
}

impl CheckOutcome {
    fn pass(observed: impl Into<String>, reason: impl Into<String>) -> Self {
        CheckOutcome {
            ok: true,
            observed: observed.into(),
            reason: reason.into(),
        }
    }

    fn fail(observed: impl Into<String>, reason: impl Into<String>) -> Self {
        CheckOutcome {
            ok: false,
            observed: observed.into(),
            reason: reason.into(),
        }
    }
}

/// A condition that can be evaluated against the world.
#[async_trait]
pub trait Check: Send + Sync {
    /// The key under which definitions name the check (`http`, `shell`, `metric`).
    fn name(&self) -> &'static str;
    /// The arguments it accepts.
    fn args(&self) -> &'static [ArgSpec];
    /// Checks arguments before a run starts; errors name the argument.
    fn validate(&self, args: &Value) -> Result<(), ArgError>;
    /// Evaluates the check, within its own timeout and stopping early on cancellation (which
    /// fails the check: an unfinished check has not shown that the condition holds).
    async fn evaluate(&self, cancel: &CancelToken, args: &Value) -> CheckOutcome;
}

// ---------------------------------------------------------------------------------------------
// http

const HTTP_CHECK_EXTRA_ARGS: &[ArgSpec] = &[
    ArgSpec {
        name: "field",
        kind: ArgKind::String,
        required: false,
        description: "A dotted path into the JSON response (`status.ready`, `items.0.name`) \
                      whose value must equal `equals`.",
    },
    ArgSpec {
        name: "equals",
        kind: ArgKind::Any,
        required: false,
        description: "The value `field` must have; required with `field`.",
    },
];

/// The `http` check's arguments: the `http` stage's without `method` and `body` (a check only
/// reads, with GET), plus `field` and `equals`.
const HTTP_CHECK_ARGS: &[ArgSpec] = &[
    HTTP_ARGS[1], // url
    HTTP_ARGS[3], // headers
    HTTP_ARGS[4], // expect_status
    HTTP_ARGS[5], // timeout
    HTTP_CHECK_EXTRA_ARGS[0],
    HTTP_CHECK_EXTRA_ARGS[1],
];

/// Passes when a GET answers an expected status and, if asked, a JSON field has a value.
#[derive(Debug, Default)]
pub struct HttpCheck;

struct HttpCheckArgs {
    request: crate::http::RequestSpec,
    field: Option<(Vec<String>, Value)>,
}

fn parse_http_check(args: &Value) -> Result<HttpCheckArgs, ArgError> {
    let parsed = Args::checked(HTTP_CHECK_ARGS, args)?;
    let request = parse_request(&parsed, &["GET"])?;
    let field = match (parsed.string("field")?, parsed.get("equals")) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(ArgError::Missing {
                argument: "equals".to_string(),
                description: HTTP_CHECK_EXTRA_ARGS[1].description.to_string(),
            });
        }
        (None, Some(_)) => {
            return Err(ArgError::Missing {
                argument: "field".to_string(),
                description: HTTP_CHECK_EXTRA_ARGS[0].description.to_string(),
            });
        }
        (Some(path), Some(expected)) => {
            let segments: Vec<String> = path.split('.').map(str::to_string).collect();
            if segments.iter().any(String::is_empty) {
                return Err(ArgError::invalid(
                    "field",
                    format!("`{path}` has an empty segment; write names separated by single dots"),
                ));
            }
            if segments.len() > MAX_FIELD_PATH_SEGMENTS {
                return Err(ArgError::invalid(
                    "field",
                    format!("more than {MAX_FIELD_PATH_SEGMENTS} segments"),
                ));
            }
            Some((segments, expected.clone()))
        }
    };
    Ok(HttpCheckArgs { request, field })
}

/// Follows a dotted path through objects (by key) and arrays (by index).
pub fn json_field<'a>(value: &'a Value, segments: &[String]) -> Option<&'a Value> {
    segments
        .iter()
        .try_fold(value, |current, segment| match current {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

#[async_trait]
impl Check for HttpCheck {
    fn name(&self) -> &'static str {
        "http"
    }

    fn args(&self) -> &'static [ArgSpec] {
        HTTP_CHECK_ARGS
    }

    fn validate(&self, args: &Value) -> Result<(), ArgError> {
        parse_http_check(args).map(|_| ())
    }

    async fn evaluate(&self, cancel: &CancelToken, args: &Value) -> CheckOutcome {
        let parsed = match parse_http_check(args) {
            Ok(parsed) => parsed,
            Err(error) => return CheckOutcome::fail("", format!("invalid arguments: {error}")),
        };
        let deadline = Instant::now() + parsed.request.timeout;
        let url = parsed.request.url.to_string();
        let response = match send(&parsed.request, cancel, deadline).await {
            RequestEnd::Response(response) => response,
            RequestEnd::Failed { error, .. } => return CheckOutcome::fail("no answer", error),
            RequestEnd::Cancelled => {
                return CheckOutcome::fail("no answer", "the check was cancelled");
            }
            RequestEnd::TimedOut => {
                return CheckOutcome::fail(
                    "no answer",
                    format!(
                        "GET {url} did not answer within {:?}",
                        parsed.request.timeout
                    ),
                );
            }
        };
        let status = response.status;
        if !parsed.request.status_ok(status) {
            return CheckOutcome::fail(
                format!("status {status}"),
                format!(
                    "GET {url} answered {status}, expected {}",
                    parsed.request.expected_text()
                ),
            );
        }
        let Some((segments, expected)) = parsed.field else {
            return CheckOutcome::pass(
                format!("status {status}"),
                format!("GET {url} answered {status}"),
            );
        };
        let path = segments.join(".");
        if response.truncated {
            return CheckOutcome::fail(
                format!("status {status}"),
                "the response body is too large to read its JSON fields",
            );
        }
        let document: Value = match serde_json::from_slice(&response.body) {
            Ok(document) => document,
            Err(error) => {
                return CheckOutcome::fail(
                    format!("status {status}"),
                    format!("the response body is not JSON ({error}), so `{path}` cannot be read"),
                );
            }
        };
        match json_field(&document, &segments) {
            None => CheckOutcome::fail(
                "field absent",
                format!("the response has no field `{path}`"),
            ),
            Some(actual) if actual == &expected => CheckOutcome::pass(
                actual.to_string(),
                format!("`{path}` is {actual}, as expected"),
            ),
            Some(actual) => CheckOutcome::fail(
                actual.to_string(),
                format!("`{path}` is {actual}, expected {expected}"),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// shell

/// Passes when a program exits with code 0 within its timeout. The program is run exactly as
/// the `shell` stage runs it (argv, own process group, killed at timeout).
#[derive(Debug, Default)]
pub struct ShellCheck;

#[async_trait]
impl Check for ShellCheck {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn args(&self) -> &'static [ArgSpec] {
        SHELL_ARGS
    }

    fn validate(&self, args: &Value) -> Result<(), ArgError> {
        parse_shell_args(SHELL_ARGS, args).map(|_| ())
    }

    async fn evaluate(&self, cancel: &CancelToken, args: &Value) -> CheckOutcome {
        let parsed = match parse_shell_args(SHELL_ARGS, args) {
            Ok(parsed) => parsed,
            Err(error) => return CheckOutcome::fail("", format!("invalid arguments: {error}")),
        };
        let sink = OutputSink::new(MAX_CHECK_OUTPUT_BYTES);
        let deadline = Instant::now() + parsed.timeout;
        let program = &parsed.program.argv[0];
        match run_program(&parsed.program, cancel, deadline, &sink).await {
            ProgramEnd::Exited(status) if status.success() => {
                CheckOutcome::pass("exit code 0", format!("`{program}` exited with code 0"))
            }
            ProgramEnd::Exited(status) => CheckOutcome::fail(
                match status.code() {
                    Some(code) => format!("exit code {code}"),
                    None => describe_status(&status),
                },
                format!(
                    "`{program}` {}; last output:\n{}",
                    describe_status(&status),
                    sink.snapshot().display()
                ),
            ),
            ProgramEnd::SpawnFailed(error) => CheckOutcome::fail("not started", error),
            ProgramEnd::Cancelled => CheckOutcome::fail("killed", "the check was cancelled"),
            ProgramEnd::TimedOut => CheckOutcome::fail(
                "killed",
                format!("`{program}` did not finish within {:?}", parsed.timeout),
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// metrics

/// Why a metric query has no usable value. Each of these fails a check closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// The query returned no series or samples.
    #[error("`{query}` returned no data")]
    NoData {
        /// The query.
        query: String,
    },
    /// The query returned NaN (for example 0/0 in an error ratio).
    #[error("`{query}` returned NaN")]
    NotANumber {
        /// The query.
        query: String,
    },
    /// The query returned several series where one value is needed.
    #[error("`{query}` returned {series} series; aggregate it to one value")]
    Ambiguous {
        /// The query.
        query: String,
        /// How many series came back.
        series: usize,
    },
    /// The metric source could not be asked.
    #[error("the metric source is unreachable: {reason}")]
    Unreachable {
        /// What went wrong.
        reason: String,
    },
}

/// Where metric checks get their numbers: Prometheus, the simulator, or tests.
#[async_trait]
pub trait MetricSource: Send + Sync {
    /// One value for `query`, or why there is none.
    async fn query(&self, query: &str) -> Result<f64, MetricError>;
}

/// A metric source that answers from a table, for tests and demos. Queries not in the table
/// have no data.
#[derive(Debug, Default)]
pub struct StaticMetrics {
    values: Mutex<HashMap<String, Result<f64, MetricError>>>,
}

impl StaticMetrics {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Result<f64, MetricError>>> {
        self.values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `query` answer `value` (which may be NaN, to test that it fails closed).
    pub fn set(&self, query: &str, value: f64) {
        self.lock().insert(query.to_string(), Ok(value));
    }

    /// Makes `query` answer an error.
    pub fn set_error(&self, query: &str, error: MetricError) {
        self.lock().insert(query.to_string(), Err(error));
    }

    /// Makes `query` have no data again.
    pub fn remove(&self, query: &str) {
        self.lock().remove(query);
    }
}

#[async_trait]
impl MetricSource for StaticMetrics {
    async fn query(&self, query: &str) -> Result<f64, MetricError> {
        match self.lock().get(query) {
            None => Err(MetricError::NoData {
                query: query.to_string(),
            }),
            Some(Ok(value)) if value.is_nan() => Err(MetricError::NotANumber {
                query: query.to_string(),
            }),
            Some(answer) => answer.clone(),
        }
    }
}

/// The source used when none is configured: every query is unreachable, so every metric check
/// fails closed instead of passing for want of a source.
#[derive(Debug, Default)]
pub struct NoMetricSource;

#[async_trait]
impl MetricSource for NoMetricSource {
    async fn query(&self, _query: &str) -> Result<f64, MetricError> {
        Err(MetricError::Unreachable {
            reason: "no metric source is configured".to_string(),
        })
    }
}

const METRIC_ARGS: &[ArgSpec] = &[
    ArgSpec {
        name: "query",
        kind: ArgKind::String,
        required: true,
        description: "The query whose single value is compared, such as `max(web_error_ratio)`.",
    },
    ArgSpec {
        name: "below",
        kind: ArgKind::Number,
        required: false,
        description: "The value must be strictly below this.",
    },
    ArgSpec {
        name: "above",
        kind: ArgKind::Number,
        required: false,
        description: "The value must be strictly above this.",
    },
];

struct MetricArgs {
    query: String,
    below: Option<f64>,
    above: Option<f64>,
}

fn parse_metric(args: &Value) -> Result<MetricArgs, ArgError> {
    let parsed = Args::checked(METRIC_ARGS, args)?;
    let query = parsed.required_string("query")?.trim().to_string();
    if query.is_empty() {
        return Err(ArgError::invalid("query", "the query is empty"));
    }
    let below = parsed.number("below")?;
    let above = parsed.number("above")?;
    match (below, above) {
        (None, None) => Err(ArgError::Missing {
            argument: "below".to_string(),
            description: "a metric check needs `below`, `above` or both".to_string(),
        }),
        (Some(below), Some(above)) if above >= below => Err(ArgError::invalid(
            "above",
            format!("no value is both above {above} and below {below}"),
        )),
        _ => Ok(MetricArgs {
            query,
            below,
            above,
        }),
    }
}

/// Passes when a query's value is below and/or above thresholds. No data, NaN, an ambiguous
/// answer or an unreachable source all fail the check.
pub struct MetricCheck {
    source: Arc<dyn MetricSource>,
}

impl MetricCheck {
    /// A metric check asking `source`.
    pub fn new(source: Arc<dyn MetricSource>) -> Self {
        MetricCheck { source }
    }
}

#[async_trait]
impl Check for MetricCheck {
    fn name(&self) -> &'static str {
        "metric"
    }

    fn args(&self) -> &'static [ArgSpec] {
        METRIC_ARGS
    }

    fn validate(&self, args: &Value) -> Result<(), ArgError> {
        parse_metric(args).map(|_| ())
    }

    async fn evaluate(&self, cancel: &CancelToken, args: &Value) -> CheckOutcome {
        let parsed = match parse_metric(args) {
            Ok(parsed) => parsed,
            Err(error) => return CheckOutcome::fail("", format!("invalid arguments: {error}")),
        };
        let query = &parsed.query;
        let answer = tokio::select! {
            answer = tokio::time::timeout(
                Duration::from_millis(METRIC_QUERY_TIMEOUT_MS),
                self.source.query(query),
            ) => answer,
            () = cancel.cancelled() => {
                return CheckOutcome::fail("no value", "the check was cancelled");
            }
        };
        let value = match answer {
            Err(_) => {
                return CheckOutcome::fail(
                    "no value",
                    format!("`{query}` did not answer within {METRIC_QUERY_TIMEOUT_MS}ms"),
                );
            }
            Ok(Err(error)) => return CheckOutcome::fail("no value", error.to_string()),
            Ok(Ok(value)) if value.is_nan() => {
                let error = MetricError::NotANumber {
                    query: query.clone(),
                };
                return CheckOutcome::fail("NaN", error.to_string());
            }
            Ok(Ok(value)) => value,
        };
        let observed = value.to_string();
        if let Some(below) = parsed.below
            && value >= below
        {
            return CheckOutcome::fail(
                observed,
                format!("`{query}` is {value}, not below {below}"),
            );
        }
        if let Some(above) = parsed.above
            && value <= above
        {
            return CheckOutcome::fail(
                observed,
                format!("`{query}` is {value}, not above {above}"),
            );
        }
        let bounds = match (parsed.above, parsed.below) {
            (Some(above), Some(below)) => format!("between {above} and {below}"),
            (Some(above), None) => format!("above {above}"),
            (None, Some(below)) => format!("below {below}"),
            (None, None) => String::new(),
        };
        CheckOutcome::pass(observed, format!("`{query}` is {value}, {bounds}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_walk_objects_and_arrays() {
        let document = json!({ "a": { "b": [ { "c": 1 }, { "c": 2 } ] } });
        let path = |text: &str| text.split('.').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(json_field(&document, &path("a.b.1.c")), Some(&json!(2)));
        assert_eq!(json_field(&document, &path("a.b.2.c")), None);
        assert_eq!(json_field(&document, &path("a.x")), None);
    }

    #[test]
    fn the_http_check_takes_the_stage_arguments_it_needs() {
        let names: Vec<_> = HTTP_CHECK_ARGS.iter().map(|spec| spec.name).collect();
        assert_eq!(
            names,
            [
                "url",
                "headers",
                "expect_status",
                "timeout",
                "field",
                "equals"
            ]
        );
    }

    #[test]
    fn impossible_thresholds_are_refused() {
        let error = parse_metric(&json!({ "query": "q", "below": 1, "above": 2 }))
            .err()
            .unwrap();
        assert_eq!(error.argument(), Some("above"));
        let error = parse_metric(&json!({ "query": "q" })).err().unwrap();
        assert_eq!(error.argument(), Some("below"));
    }
}
