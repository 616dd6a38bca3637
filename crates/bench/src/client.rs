//! Single HTTP requests outside measurements: health checks, API calls that set up machines, and
//! reads of their counters. Each request uses a fresh connection, so no state carries over.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An answer: its status and its whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The body as text, for error messages.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request with an optional JSON body and reads the whole answer, within `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    json_body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Answer> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("could not connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .context("the HTTP handshake failed")?;
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .header(HOST, addr.to_string());
        let body = match json_body {
            Some(value) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(value)?)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(body))
            .with_context(|| format!("{path_and_query:?} is not a valid request path"))?;
        let answer = async move {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok(Answer { status, body })
        };
        // The connection is driven in this task; it ends when the answer has been read and the
        // sender dropped.
        let (_, answer) = tokio::join!(connection, answer);
        answer
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{method} {path_and_query} got no answer within {timeout:?}"))?
        .with_context(|| format!("{method} {path_and_query} failed"))
}
