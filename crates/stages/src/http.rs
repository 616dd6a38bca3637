//! The `http` stage: one HTTP request, with an expected status, bounded in time and size, and
//! no redirects that leave the origin the author wrote.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::redirect::{Attempt, Policy};
use reqwest::{Method, Url};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};

use crate::Stage;
use crate::args::{ArgError, ArgKind, ArgSpec, Args};
use crate::context::{
    CancelToken, MAX_OUTPUT_BYTES, OutputSink, StageContext, StageOutcome, StageOutput,
};

/// The `timeout` of a request that gives none, in milliseconds.
pub const DEFAULT_HTTP_TIMEOUT_MS: u64 = 10_000;

/// The longest `timeout` a request may ask for, in milliseconds (five minutes).
pub const MAX_HTTP_TIMEOUT_MS: u64 = 5 * 60_000;

/// Most redirects followed, all within the origin (scheme, host and port) of the written URL;
/// a redirect to any other origin is refused, so a compromised or misconfigured endpoint cannot
/// send Levee's request (and its headers) somewhere else.
pub const MAX_HTTP_REDIRECTS: usize = 5;

/// Largest request `body`, in bytes.
pub const MAX_HTTP_REQUEST_BODY_BYTES: usize = 1024 * 1024;

/// Most entries in `headers`.
pub const MAX_HTTP_HEADERS: usize = 64;

/// Most entries in `expect_status`.
pub const MAX_EXPECTED_STATUSES: usize = 32;

/// The methods a stage may use; the idempotent ones are those HTTP defines as idempotent.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

pub(crate) const HTTP_ARGS: &[ArgSpec] = &[
    ArgSpec {
        name: "method",
        kind: ArgKind::String,
        required: false,
        description: "GET (the default), HEAD, POST, PUT, PATCH, DELETE or OPTIONS.",
    },
    ArgSpec {
        name: "url",
        kind: ArgKind::String,
        required: true,
        description: "An http:// URL; redirects are followed only within its scheme, host and port.",
    },
    ArgSpec {
        name: "body",
        kind: ArgKind::Any,
        required: false,
        description: "A string sent as is, or any other JSON value sent as JSON (at most 1 MiB).",
    },
    ArgSpec {
        name: "headers",
        kind: ArgKind::Map,
        required: false,
        description: "Request headers, names to values.",
    },
    ArgSpec {
        name: "expect_status",
        kind: ArgKind::IntList,
        required: false,
        description: "The statuses that count as success; any 2xx status by default.",
    },
    ArgSpec {
        name: "timeout",
        kind: ArgKind::Duration,
        required: false,
        description: "How long the request and reading its response may take (10s by default, \
                      at most 5m).",
    },
];

/// A parsed request.
#[derive(Clone, Debug)]
pub(crate) struct RequestSpec {
    pub method: Method,
    pub url: Url,
    pub body: Option<(Vec<u8>, bool)>,
    pub headers: HeaderMap,
    pub expect_status: Option<Vec<u16>>,
    pub timeout: Duration,
}

impl RequestSpec {
    /// Whether the response status counts as success.
    pub fn status_ok(&self, status: u16) -> bool {
        match &self.expect_status {
            Some(expected) => expected.contains(&status),
            None => (200..300).contains(&status),
        }
    }

    /// What was expected, for messages.
    pub fn expected_text(&self) -> String {
        match &self.expect_status {
            Some(expected) => format!("{expected:?}"),
            None => "any 2xx".to_string(),
        }
    }
}

/// Parses the arguments the stage and the check share.
pub(crate) fn parse_request(
    args: &Args<'_>,
    allowed_methods: &[&str],
) -> Result<RequestSpec, ArgError> {
    let method_text = args.string("method")?.unwrap_or("GET").to_ascii_uppercase();
    if !allowed_methods.contains(&method_text.as_str()) {
        return Err(ArgError::invalid(
            "method",
            format!(
                "`{method_text}` is not one of {}",
                allowed_methods.join(", ")
            ),
        ));
    }
    let method = Method::from_bytes(method_text.as_bytes())
        .map_err(|error| ArgError::invalid("method", error.to_string()))?;

    let url_text = args.required_string("url")?;
    let url = Url::parse(url_text)
        .map_err(|error| ArgError::invalid("url", format!("`{url_text}` is not a URL: {error}")))?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(ArgError::invalid(
                "url",
                "https is not available in this build of Levee (it has no TLS library); use \
                 http:// or a local TLS-terminating proxy",
            ));
        }
        other => {
            return Err(ArgError::invalid(
                "url",
                format!("the scheme `{other}` is not supported; use http://"),
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ArgError::invalid(
            "url",
            format!("`{url_text}` has no host"),
        ));
    }

    let mut headers = HeaderMap::new();
    let entries = args.map("headers")?;
    if entries.len() > MAX_HTTP_HEADERS {
        return Err(ArgError::invalid(
            "headers",
            format!(
                "{} headers is more than the limit of {MAX_HTTP_HEADERS}",
                entries.len()
            ),
        ));
    }
    for (name, value) in entries {
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ArgError::invalid("headers", format!("`{name}` is not a valid header name"))
        })?;
        let header_value = HeaderValue::from_str(&value).map_err(|_| {
            ArgError::invalid(
                "headers",
                format!("the value of `{name}` is not a valid header value"),
            )
        })?;
        headers.append(header_name, header_value);
    }

    let body = match args.get("body") {
        None => None,
        Some(Value::String(text)) => Some((text.clone().into_bytes(), false)),
        Some(value) => Some((
            serde_json::to_vec(value)
                .map_err(|error| ArgError::invalid("body", error.to_string()))?,
            true,
        )),
    };
    if let Some((bytes, _)) = &body
        && bytes.len() > MAX_HTTP_REQUEST_BODY_BYTES
    {
        return Err(ArgError::invalid(
            "body",
            format!(
                "{} bytes is more than the limit of {MAX_HTTP_REQUEST_BODY_BYTES}",
                bytes.len()
            ),
        ));
    }

    let expect_status = match args.int_list("expect_status")? {
        None => None,
        Some(list) => {
            if list.is_empty() {
                return Err(ArgError::invalid(
                    "expect_status",
                    "the list is empty; leave it out to accept any 2xx status",
                ));
            }
            if list.len() > MAX_EXPECTED_STATUSES {
                return Err(ArgError::invalid(
                    "expect_status",
                    format!("more than {MAX_EXPECTED_STATUSES} statuses"),
                ));
            }
            let mut statuses = Vec::with_capacity(list.len());
            for status in list {
                match u16::try_from(status) {
                    Ok(code @ 100..=599) => statuses.push(code),
                    _ => {
                        return Err(ArgError::invalid(
                            "expect_status",
                            format!("{status} is not an HTTP status (100 to 599)"),
                        ));
                    }
                }
            }
            Some(statuses)
        }
    };

    let timeout_ms = args
        .duration_ms("timeout", MAX_HTTP_TIMEOUT_MS)?
        .unwrap_or(DEFAULT_HTTP_TIMEOUT_MS);
    Ok(RequestSpec {
        method,
        url,
        body,
        headers,
        expect_status,
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// A response read within the limits.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    /// At most [`MAX_OUTPUT_BYTES`] of the body, from its start.
    pub body: Vec<u8>,
    /// Whether the body went on beyond what was kept (the rest was not read).
    pub truncated: bool,
}

/// How a request ended.
#[derive(Debug)]
pub(crate) enum RequestEnd {
    Response(Response),
    Failed { error: String, retryable: bool },
    Cancelled,
    TimedOut,
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

#[derive(Debug, thiserror::Error)]
#[error("refused a redirect from {from} to {to}, which is not the same scheme, host and port")]
struct CrossOriginRedirect {
    from: String,
    to: String,
}

#[derive(Debug, thiserror::Error)]
#[error("gave up after {MAX_HTTP_REDIRECTS} redirects")]
struct TooManyRedirects;

fn redirect_policy(attempt: Attempt<'_>) -> reqwest::redirect::Action {
    let Some(first) = attempt.previous().first().cloned() else {
        return attempt.stop();
    };
    if !same_origin(&first, attempt.url()) {
        let error = CrossOriginRedirect {
            from: first.to_string(),
            to: attempt.url().to_string(),
        };
        return attempt.error(error);
    }
    if attempt.previous().len() > MAX_HTTP_REDIRECTS {
        return attempt.error(TooManyRedirects);
    }
    attempt.follow()
}

/// The error and its causes as one sentence, because reqwest's top-level message alone ("error
/// following redirect") hides the reason.
fn describe_error(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sends the request and reads the response head-first up to [`MAX_OUTPUT_BYTES`], bounded by
/// `deadline` and cancellation. Proxies from the environment are not used: Levee talks to the
/// endpoints it is given, directly.
pub(crate) async fn send(
    spec: &RequestSpec,
    cancel: &CancelToken,
    deadline: Instant,
) -> RequestEnd {
    let client = match reqwest::Client::builder()
        .redirect(Policy::custom(redirect_policy))
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            return RequestEnd::Failed {
                error: format!("could not make an HTTP client: {}", describe_error(&error)),
                retryable: false,
            };
        }
    };
    let mut request = client
        .request(spec.method.clone(), spec.url.clone())
        .headers(spec.headers.clone());
    if let Some((bytes, is_json)) = &spec.body {
        if *is_json && !spec.headers.contains_key(CONTENT_TYPE) {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        request = request.body(bytes.clone());
    }
    let exchange = async {
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                return RequestEnd::Failed {
                    retryable: !error.is_redirect() && !error.is_builder(),
                    error: format!("{} {}: {}", spec.method, spec.url, describe_error(&error)),
                };
            }
        };
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut truncated = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_OUTPUT_BYTES - body.len();
                    if chunk.len() > room {
                        body.extend_from_slice(&chunk[..room]);
                        truncated = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(error) => {
                    return RequestEnd::Failed {
                        error: format!(
                            "{} {}: reading the response: {}",
                            spec.method,
                            spec.url,
                            describe_error(&error)
                        ),
                        retryable: true,
                    };
                }
            }
        }
        RequestEnd::Response(Response {
            status,
            body,
            truncated,
        })
    };
    tokio::select! {
        end = exchange => end,
        () = cancel.cancelled() => RequestEnd::Cancelled,
        () = sleep_until(deadline) => RequestEnd::TimedOut,
    }
}

/// Writes a response body into a sink, ending with a note when it was cut. The note takes the
/// place of the body's last bytes, so body and note together stay within [`MAX_OUTPUT_BYTES`]
/// and the sink (which keeps tails) does not cut the start of the body to make room for it.
pub(crate) fn record_body(sink: &OutputSink, response: &Response) {
    if response.truncated {
        let note =
            format!("\n[response body cut after {MAX_OUTPUT_BYTES} bytes; the rest was not read]");
        let kept = response.body.len().saturating_sub(note.len());
        sink.write(&response.body[..kept]);
        sink.write(note.as_bytes());
    } else {
        sink.write(&response.body);
    }
}

/// Sends one HTTP request and checks its status.
///
/// Idempotence depends on the method: GET, HEAD, PUT, DELETE and OPTIONS are idempotent by
/// HTTP's definition, so a crashed request is re-sent; POST and PATCH wait for an operator.
#[derive(Debug, Default)]
pub struct HttpStage;

fn parse_stage(args: &Value) -> Result<RequestSpec, ArgError> {
    let args = Args::checked(HTTP_ARGS, args)?;
    parse_request(&args, METHODS)
}

#[async_trait]
impl Stage for HttpStage {
    fn name(&self) -> &'static str {
        "http"
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn idempotent_for(&self, args: &Value) -> bool {
        match parse_stage(args) {
            Ok(spec) => matches!(
                spec.method,
                Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
            ),
            Err(_) => false,
        }
    }

    fn args(&self) -> &'static [ArgSpec] {
        HTTP_ARGS
    }

    fn validate(&self, args: &Value) -> Result<(), ArgError> {
        parse_stage(args).map(|_| ())
    }

    async fn run(&self, ctx: StageContext, args: &Value) -> StageOutcome {
        let mut spec = match parse_stage(args) {
            Ok(spec) => spec,
            Err(error) => return StageOutcome::invalid_args(error),
        };
        if let Some(token) = ctx.fencing_token {
            // Replaces any the task set: the token is the run's, not the author's.
            if let Ok(name) = HeaderName::from_bytes(crate::FENCING_TOKEN_HEADER.as_bytes()) {
                spec.headers.insert(name, HeaderValue::from(token));
            }
        }
        let deadline = ctx.deadline_within(spec.timeout);
        match send(&spec, &ctx.cancel, deadline).await {
            RequestEnd::Response(response) => {
                record_body(&ctx.output, &response);
                let output = StageOutput {
                    captured: ctx.output.snapshot(),
                    data: json!({
                        "status": response.status,
                        "body_truncated": response.truncated,
                    }),
                };
                if spec.status_ok(response.status) {
                    StageOutcome::Succeeded { output }
                } else {
                    StageOutcome::Failed {
                        error: format!(
                            "{} {} answered {}, expected {}",
                            spec.method,
                            spec.url,
                            response.status,
                            spec.expected_text()
                        ),
                        retryable: response.status >= 500
                            || response.status == 429
                            || response.status == 408,
                        output,
                    }
                }
            }
            RequestEnd::Failed { error, retryable } => StageOutcome::Failed {
                error,
                retryable,
                output: StageOutput::default(),
            },
            RequestEnd::Cancelled => StageOutcome::Cancelled,
            RequestEnd::TimedOut => StageOutcome::TimedOut,
        }
    }
}
