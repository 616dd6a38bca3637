//! Prometheus as a [`MetricSource`]: `metric` checks and health gates ask its HTTP API
//! (`GET /api/v1/query`) for an instant value.
//!
//! A check needs exactly one number, so the answer is read strictly: a scalar, or an instant
//! vector of exactly one sample. No sample is "no data", several are ambiguous (aggregate
//! with `max()` or `sum()`), `NaN` is not a number, and Prometheus's own errors (a bad query,
//! a timeout on its side) are reported with its `errorType` and `error`. Every one of them
//! fails the check: Levee never assumes that all is well for want of an answer.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::check::{MetricError, MetricSource};

/// How long one query may take, in milliseconds, including Prometheus's own evaluation
/// (sent to it as `timeout` as well, so it gives up on its side too).
pub const PROMETHEUS_QUERY_TIMEOUT_MS: u64 = 5_000;

/// Largest answer read from Prometheus, in bytes. A one-value query answers in well under a
/// kilobyte; a query that returns a whole fleet's series is refused rather than read.
pub const MAX_PROMETHEUS_ANSWER_BYTES: usize = 1024 * 1024;

/// Asks a Prometheus server (`http://host:9090`, or a path prefix behind a proxy).
#[derive(Clone, Debug)]
pub struct PrometheusSource {
    query_url: String,
    client: reqwest::Client,
}

impl PrometheusSource {
    /// A source for the Prometheus at `base_url` (`http://127.0.0.1:9090`). Only `http://`
    /// is accepted: this build has no TLS.
    pub fn new(base_url: &str) -> Result<PrometheusSource, String> {
        let base = base_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base)
            .map_err(|error| format!("`{base_url}` is not a URL: {error}"))?;
        if parsed.scheme() != "http" {
            return Err(format!(
                "`{base_url}`: only http:// Prometheus URLs are supported (this build has no TLS)"
            ));
        }
        if parsed.host_str().is_none() {
            return Err(format!("`{base_url}` names no host"));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(PROMETHEUS_QUERY_TIMEOUT_MS))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| format!("cannot build an HTTP client: {error}"))?;
        Ok(PrometheusSource {
            query_url: format!("{base}/api/v1/query"),
            client,
        })
    }
}

fn unreachable(reason: impl Into<String>) -> MetricError {
    MetricError::Unreachable {
        reason: reason.into(),
    }
}

/// A sample's value as Prometheus writes it: `[ <time>, "<value>" ]`.
fn sample_value(sample: &Value, query: &str) -> Result<f64, MetricError> {
    let text = sample
        .get(1)
        .and_then(Value::as_str)
        .ok_or_else(|| unreachable(format!("`{query}`: a sample without a value: {sample}")))?;
    let value = match text {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other
            .parse::<f64>()
            .map_err(|_| unreachable(format!("`{query}`: `{other}` is not a number")))?,
    };
    if value.is_nan() {
        return Err(MetricError::NotANumber {
            query: query.to_string(),
        });
    }
    Ok(value)
}

/// Reads the one value of a `/api/v1/query` answer.
pub fn read_answer(query: &str, answer: &Value) -> Result<f64, MetricError> {
    match answer.get("status").and_then(Value::as_str) {
        Some("success") => {}
        Some("error") => {
            let kind = answer
                .get("errorType")
                .and_then(Value::as_str)
                .unwrap_or("error");
            let error = answer.get("error").and_then(Value::as_str).unwrap_or("");
            return Err(unreachable(format!(
                "Prometheus refused `{query}` ({kind}): {error}"
            )));
        }
        _ => return Err(unreachable(format!("not a Prometheus answer: {answer}"))),
    }
    let data = answer
        .get("data")
        .ok_or_else(|| unreachable("a Prometheus answer without `data`"))?;
    let result = data.get("result").unwrap_or(&Value::Null);
    match data.get("resultType").and_then(Value::as_str) {
        Some("scalar") => sample_value(result, query),
        Some("vector") => {
            let series = result.as_array().map_or(0, Vec::len);
            match series {
                0 => Err(MetricError::NoData {
                    query: query.to_string(),
                }),
                1 => sample_value(&result[0]["value"], query),
                series => Err(MetricError::Ambiguous {
                    query: query.to_string(),
                    series,
                }),
            }
        }
        Some(other) => Err(unreachable(format!(
            "`{query}` returned a {other}; a check needs an instant vector or a scalar"
        ))),
        None => Err(unreachable("a Prometheus answer without `resultType`")),
    }
}

#[async_trait]
impl MetricSource for PrometheusSource {
    async fn query(&self, query: &str) -> Result<f64, MetricError> {
        let timeout = format!("{}ms", PROMETHEUS_QUERY_TIMEOUT_MS);
        let response = self
            .client
            .get(&self.query_url)
            .query(&[("query", query), ("timeout", timeout.as_str())])
            .send()
            .await
            .map_err(|error| unreachable(format!("{}: {error}", self.query_url)))?;
        let status = response.status();
        let length = response.content_length().unwrap_or(0);
        if length > MAX_PROMETHEUS_ANSWER_BYTES as u64 {
            return Err(unreachable(format!(
                "`{query}` answered {length} bytes, more than {MAX_PROMETHEUS_ANSWER_BYTES}"
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|error| unreachable(format!("reading the answer to `{query}`: {error}")))?;
        if body.len() > MAX_PROMETHEUS_ANSWER_BYTES {
            return Err(unreachable(format!(
                "`{query}` answered more than {MAX_PROMETHEUS_ANSWER_BYTES} bytes"
            )));
        }
        // Prometheus answers 400/422/503 with the same JSON shape and the reason inside.
        let answer: Value = serde_json::from_slice(&body).map_err(|_| {
            unreachable(format!(
                "{} answered {status} with a body that is not JSON",
                self.query_url
            ))
        })?;
        read_answer(query, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_value_is_read_and_everything_else_is_refused() {
        let vector = |result: Value| json!({ "status": "success", "data": { "resultType": "vector", "result": result } });
        let one = vector(json!([{ "metric": {}, "value": [1.0, "0.25"] }]));
        assert_eq!(read_answer("q", &one), Ok(0.25));
        let scalar = json!({ "status": "success", "data": { "resultType": "scalar", "result": [1.0, "3"] } });
        assert_eq!(read_answer("q", &scalar), Ok(3.0));
        assert!(matches!(
            read_answer("q", &vector(json!([]))),
            Err(MetricError::NoData { .. })
        ));
        let two = vector(json!([
            { "metric": { "a": "1" }, "value": [1.0, "1"] },
            { "metric": { "a": "2" }, "value": [1.0, "2"] }
        ]));
        assert!(matches!(
            read_answer("q", &two),
            Err(MetricError::Ambiguous { series: 2, .. })
        ));
        let nan = vector(json!([{ "metric": {}, "value": [1.0, "NaN"] }]));
        assert!(matches!(
            read_answer("q", &nan),
            Err(MetricError::NotANumber { .. })
        ));
        let refused = json!({ "status": "error", "errorType": "bad_data", "error": "parse error" });
        let error = read_answer("q", &refused).unwrap_err().to_string();
        assert!(
            error.contains("bad_data") && error.contains("parse error"),
            "{error}"
        );
        let matrix =
            json!({ "status": "success", "data": { "resultType": "matrix", "result": [] } });
        assert!(read_answer("q", &matrix).is_err());
    }

    #[test]
    fn only_plain_http_urls_are_taken() {
        assert!(PrometheusSource::new("http://127.0.0.1:9090/").is_ok());
        assert!(PrometheusSource::new("https://prom.example").is_err());
        assert!(PrometheusSource::new("prom:9090").is_err());
    }
}
