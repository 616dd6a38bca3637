//! A small client for a Levee server's HTTP API.
//!
//! It knows the server's base URL and an optional bearer token, builds URLs from path segments
//! (each one percent-encoded, so ids can never change the path), and turns failures into
//! sentences a person can act on: the server's JSON errors keep the server's own message, and
//! a server that cannot be reached is named together with how to start or find one.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How long to wait for the TCP connection to a server before giving up.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long one request may take in all. The server answers 503 itself after 30 seconds, so
/// this only fires when the server or the network hangs.
pub const REQUEST_TIMEOUT_MS: u64 = 60_000;

/// Talks to one Levee server.
pub struct Client {
    http: reqwest::Client,
    /// For event streams, which stay open for as long as a run goes: no overall timeout.
    streaming: OnceLock<reqwest::Client>,
    base: Url,
    token: Option<String>,
}

/// An open response body read chunk by chunk, such as a server-sent-event stream.
pub struct ByteStream {
    response: reqwest::Response,
    server: String,
}

/// A response of any status, with its body read.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Why a request did not succeed.
#[derive(Debug)]
pub enum ClientError {
    /// The `--server` value is not an `http://` or `https://` URL.
    BadServer { server: String, reason: String },
    /// No connection could be made, or the request timed out.
    Unreachable { server: String, detail: String },
    /// The server answered with a status other than the ones the caller accepts.
    Api(ApiFailure),
    /// The server answered something this client does not understand.
    Protocol { server: String, detail: String },
}

/// An error answer from the server, from its `{"error": {"code", "message", ...}}` body when it
/// has one.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// The whole `error` object: extra fields such as `diagnostics` live here.
    pub error: Value,
}

impl Client {
    /// A client for the server at `server`, sending `token` as a bearer token when given.
    pub fn new(server: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let bad = |reason: String| ClientError::BadServer {
            server: server.to_string(),
            reason,
        };
        let base = Url::parse(server).map_err(|error| bad(error.to_string()))?;
        if base.scheme() != "http" && base.scheme() != "https" {
            return Err(bad(format!(
                "the scheme `{}` is not http or https",
                base.scheme()
            )));
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(bad("it names no host".to_string()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .user_agent(concat!("levee-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| bad(error.to_string()))?;
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        Ok(Client {
            http,
            streaming: OnceLock::new(),
            base,
            token,
        })
    }

    /// The server's base URL, as shown in messages.
    pub fn server(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    /// The URL of `segments` under the base URL, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends a request and returns the answer whatever its status; only a failure to talk to
    /// the server at all is an error.
    pub async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        headers: &[(HeaderName, String)],
        body: Option<&Value>,
    ) -> Result<Reply, ClientError> {
        let mut request = self.http.request(method, self.url(segments));
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            let value = HeaderValue::from_str(value).map_err(|error| ClientError::Protocol {
                server: self.server(),
                detail: format!("the header {name} cannot carry {value:?}: {error}"),
            })?;
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.transport_error(&error))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .map_err(|error| self.transport_error(&error))?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// `GET`s a resource that streams, such as `/api/v1/runs/{id}/events`: the body is left
    /// open to read as it arrives. Any status but 2xx is an [`ApiFailure`], and so is a body
    /// that is not of `content_type`.
    pub async fn open_stream(
        &self,
        segments: &[&str],
        headers: &[(HeaderName, String)],
        content_type: &str,
    ) -> Result<ByteStream, ClientError> {
        let http = self.streaming.get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                .user_agent(concat!("levee-cli/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_else(|_| self.http.clone())
        });
        let mut request = http.get(self.url(segments));
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            let value = HeaderValue::from_str(value).map_err(|error| ClientError::Protocol {
                server: self.server(),
                detail: format!("the header {name} cannot carry {value:?}: {error}"),
            })?;
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.transport_error(&error))?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = response
                .text()
                .await
                .map_err(|error| self.transport_error(&error))?;
            return Err(ClientError::Api(self.failure(&Reply {
                status,
                headers,
                body,
            })));
        }
        let given = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !given.starts_with(content_type) {
            return Err(ClientError::Protocol {
                server: self.server(),
                detail: format!(
                    "{} answered `{given}` where `{content_type}` was expected",
                    self.url(segments)
                ),
            });
        }
        Ok(ByteStream {
            response,
            server: self.server(),
        })
    }

    /// Sends a request that must succeed (2xx); any other status is an [`ApiFailure`].
    pub async fn send_ok(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Reply, ClientError> {
        let reply = self.send(method, segments, query, &[], body).await?;
        if reply.status.is_success() {
            Ok(reply)
        } else {
            Err(ClientError::Api(self.failure(&reply)))
        }
    }

    /// Sends a request that must succeed, and decodes its JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let reply = self.send_ok(method, segments, query, body).await?;
        serde_json::from_str(&reply.body).map_err(|error| ClientError::Protocol {
            server: self.server(),
            detail: format!(
                "its answer to {} is not the JSON expected: {error}",
                self.url(segments)
            ),
        })
    }

    /// `GET` a JSON resource.
    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        self.json(Method::GET, segments, query, None).await
    }

    /// `POST` a JSON body and decode the JSON answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &Value,
    ) -> Result<T, ClientError> {
        self.json(Method::POST, segments, &[], Some(body)).await
    }

    /// Reads an error answer: the server's JSON error when there is one, else its text.
    pub fn failure(&self, reply: &Reply) -> ApiFailure {
        let parsed: Option<Value> = serde_json::from_str(&reply.body).ok();
        let error = parsed
            .and_then(|mut v| v.get_mut("error").map(Value::take))
            .unwrap_or(Value::Null);
        let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_string);
        let code = text("code").unwrap_or_else(|| {
            reply
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
                .replace(' ', "_")
        });
        let message = text("message").unwrap_or_else(|| {
            let body = reply.body.trim();
            if body.is_empty() {
                format!(
                    "the server answered {} with no explanation",
                    reply.status.canonical_reason().unwrap_or("an error")
                )
            } else {
                body.chars().take(500).collect()
            }
        });
        ApiFailure {
            status: reply.status,
            code,
            message,
            error,
        }
    }

    fn transport_error(&self, error: &reqwest::Error) -> ClientError {
        transport_error(&self.server(), error)
    }
}

impl ByteStream {
    /// The next bytes of the body, or `None` once the server ended it.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.response.chunk().await {
            Ok(chunk) => Ok(chunk.map(|bytes| bytes.to_vec())),
            Err(error) => Err(transport_error(&self.server, &error)),
        }
    }
}

/// Names what went wrong talking to `server`, from the innermost cause.
fn transport_error(server: &str, error: &reqwest::Error) -> ClientError {
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if error.is_timeout() {
        detail = "it did not answer in time".to_string();
    }
    if error.is_connect() || error.is_timeout() || error.is_request() {
        ClientError::Unreachable {
            server: server.to_string(),
            detail,
        }
    } else {
        ClientError::Protocol {
            server: server.to_string(),
            detail,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::BadServer { server, reason } => write!(
                f,
                "`{server}` is not a usable server URL ({reason}); pass one like \
                 http://127.0.0.1:7400 with --server or LEVEE_SERVER"
            ),
            ClientError::Unreachable { server, detail } => write!(
                f,
                "cannot reach the Levee server at {server} ({detail}); start one with `levee \
                 serve`, or point --server (or LEVEE_SERVER) at a running server"
            ),
            ClientError::Api(failure) => failure.fmt(f),
            ClientError::Protocol { server, detail } => {
                write!(
                    f,
                    "the server at {server} answered unexpectedly: {detail}; is it a Levee server?"
                )
            }
        }
    }
}

impl std::error::Error for ClientError {}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status.as_u16();
        write!(f, "{} ({} {})", self.message, status, self.code)?;
        match status {
            401 => write!(f, "; pass a token with --token or LEVEE_TOKEN"),
            403 => write!(f, "; use a token whose role and scope allow this"),
            _ => Ok(()),
        }
    }
}
