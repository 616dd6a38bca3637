//! Checks against a real HTTP server, real processes and an in-memory metric source.

mod common;

use std::sync::Arc;

use common::start;
use levee_stages::{
    CancelToken, Check, HttpCheck, MetricCheck, MetricError, Registry, ShellCheck, StaticMetrics,
};
use serde_json::json;

#[tokio::test]
async fn http_check_reads_a_json_field() {
    let server = start(None).await;
    let never = CancelToken::never();
    let outcome = HttpCheck
        .evaluate(
            &never,
            &json!({ "url": server.url("/json"), "field": "status.ready", "equals": true }),
        )
        .await;
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(outcome.observed, "true");

    let outcome = HttpCheck
        .evaluate(
            &never,
            &json!({ "url": server.url("/json"), "field": "items.1.name", "equals": "b" }),
        )
        .await;
    assert!(outcome.ok, "{outcome:?}");

    let outcome = HttpCheck
        .evaluate(
            &never,
            &json!({ "url": server.url("/json"), "field": "status.phase", "equals": "draining" }),
        )
        .await;
    assert!(!outcome.ok);
    assert_eq!(outcome.observed, "\"serving\"");
    assert!(
        outcome.reason.contains("expected \"draining\""),
        "{}",
        outcome.reason
    );

    let outcome = HttpCheck
        .evaluate(
            &never,
            &json!({ "url": server.url("/json"), "field": "status.missing", "equals": 1 }),
        )
        .await;
    assert!(!outcome.ok);
    assert!(
        outcome.reason.contains("no field `status.missing`"),
        "{}",
        outcome.reason
    );

    let outcome = HttpCheck
        .evaluate(
            &never,
            &json!({ "url": server.url("/text"), "field": "a", "equals": 1 }),
        )
        .await;
    assert!(!outcome.ok);
    assert!(outcome.reason.contains("not JSON"), "{}", outcome.reason);
}

#[tokio::test]
async fn http_check_compares_the_status() {
    let server = start(None).await;
    let never = CancelToken::never();
    let outcome = HttpCheck
        .evaluate(&never, &json!({ "url": server.url("/ok") }))
        .await;
    assert!(outcome.ok, "{outcome:?}");
    let outcome = HttpCheck
        .evaluate(&never, &json!({ "url": server.url("/status/500") }))
        .await;
    assert!(!outcome.ok);
    assert_eq!(outcome.observed, "status 500");
    let outcome = HttpCheck
        .evaluate(
            &never,
            &json!({ "url": server.url("/status/503"), "expect_status": [503] }),
        )
        .await;
    assert!(outcome.ok, "{outcome:?}");
    // A check only reads: it has no method or body.
    assert!(
        HttpCheck
            .validate(&json!({ "url": server.url("/ok"), "method": "POST" }))
            .is_err()
    );
    let error = HttpCheck
        .validate(&json!({ "url": server.url("/ok"), "field": "a" }))
        .unwrap_err();
    assert_eq!(error.argument(), Some("equals"));
}

#[tokio::test]
async fn shell_check_passes_on_exit_code_zero_only() {
    let never = CancelToken::never();
    let outcome = ShellCheck
        .evaluate(&never, &json!({ "command": ["true"] }))
        .await;
    assert!(outcome.ok, "{outcome:?}");
    let outcome = ShellCheck
        .evaluate(
            &never,
            &json!({ "command": ["sh", "-c", "echo not ready; exit 7"] }),
        )
        .await;
    assert!(!outcome.ok);
    assert_eq!(outcome.observed, "exit code 7");
    assert!(outcome.reason.contains("not ready"), "{}", outcome.reason);
    let outcome = ShellCheck
        .evaluate(
            &never,
            &json!({ "command": ["sleep", "100"], "timeout": "200ms" }),
        )
        .await;
    assert!(!outcome.ok);
    assert!(
        outcome.reason.contains("did not finish"),
        "{}",
        outcome.reason
    );
}

#[tokio::test]
async fn metric_check_compares_below_and_above() {
    let metrics = Arc::new(StaticMetrics::new());
    metrics.set("max(web_error_ratio)", 0.004);
    metrics.set("sum(web_capacity)", 120.0);
    let check = MetricCheck::new(metrics.clone());
    let never = CancelToken::never();

    let outcome = check
        .evaluate(
            &never,
            &json!({ "query": "max(web_error_ratio)", "below": 0.01 }),
        )
        .await;
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(outcome.observed, "0.004");

    metrics.set("max(web_error_ratio)", 0.02);
    let outcome = check
        .evaluate(
            &never,
            &json!({ "query": "max(web_error_ratio)", "below": 0.01 }),
        )
        .await;
    assert!(!outcome.ok);
    assert!(
        outcome.reason.contains("not below 0.01"),
        "{}",
        outcome.reason
    );

    let outcome = check
        .evaluate(
            &never,
            &json!({ "query": "sum(web_capacity)", "above": 100 }),
        )
        .await;
    assert!(outcome.ok, "{outcome:?}");
    let outcome = check
        .evaluate(
            &never,
            &json!({ "query": "sum(web_capacity)", "above": 150 }),
        )
        .await;
    assert!(!outcome.ok);
    let outcome = check
        .evaluate(
            &never,
            &json!({ "query": "sum(web_capacity)", "above": 100, "below": 130 }),
        )
        .await;
    assert!(outcome.ok, "{outcome:?}");
    // The threshold itself is not below it.
    let outcome = check
        .evaluate(
            &never,
            &json!({ "query": "sum(web_capacity)", "below": 120 }),
        )
        .await;
    assert!(!outcome.ok);
}

#[tokio::test]
async fn metric_check_fails_closed_without_a_value() {
    let metrics = Arc::new(StaticMetrics::new());
    let check = MetricCheck::new(metrics.clone());
    let never = CancelToken::never();

    let outcome = check
        .evaluate(&never, &json!({ "query": "absent_metric", "below": 1 }))
        .await;
    assert!(!outcome.ok, "no data must not pass");
    assert!(outcome.reason.contains("no data"), "{}", outcome.reason);

    metrics.set("ratio", f64::NAN);
    for args in [
        json!({ "query": "ratio", "below": 1 }),
        json!({ "query": "ratio", "above": 1 }),
    ] {
        let outcome = check.evaluate(&never, &args).await;
        assert!(!outcome.ok, "NaN must not pass {args}");
        assert!(outcome.reason.contains("NaN"), "{}", outcome.reason);
    }

    metrics.set_error(
        "remote",
        MetricError::Unreachable {
            reason: "connection refused".to_string(),
        },
    );
    let outcome = check
        .evaluate(&never, &json!({ "query": "remote", "below": 1 }))
        .await;
    assert!(!outcome.ok);
    assert!(outcome.reason.contains("unreachable"), "{}", outcome.reason);

    // The registry's default metric check has no source and fails closed too.
    let registry = Registry::builtin();
    let outcome = registry
        .check("metric")
        .unwrap()
        .evaluate(&never, &json!({ "query": "anything", "below": 1 }))
        .await;
    assert!(!outcome.ok);
    assert!(
        outcome.reason.contains("no metric source"),
        "{}",
        outcome.reason
    );
}
