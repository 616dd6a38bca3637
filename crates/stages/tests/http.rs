//! The `http` stage against a real server on 127.0.0.1.

mod common;

use std::time::Duration;

use common::{BIG_BODY_BYTES, context, start};
use levee_stages::{Canceller, HttpStage, MAX_OUTPUT_BYTES, Stage, StageOutcome};
use serde_json::json;

const GENEROUS: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_get_succeeds_and_captures_the_body() {
    let server = start(None).await;
    let outcome = HttpStage
        .run(context(GENEROUS), &json!({ "url": server.url("/ok") }))
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(output.captured.text, "hello");
    assert_eq!(output.data["status"], 200);
}

#[tokio::test]
async fn an_expected_status_matches_and_an_unexpected_one_fails() {
    let server = start(None).await;
    let outcome = HttpStage
        .run(
            context(GENEROUS),
            &json!({ "url": server.url("/status/404"), "expect_status": [200, 404] }),
        )
        .await;
    assert!(outcome.is_success(), "{outcome:?}");

    let outcome = HttpStage
        .run(
            context(GENEROUS),
            &json!({ "url": server.url("/status/404") }),
        )
        .await;
    let StageOutcome::Failed {
        error,
        retryable,
        output,
    } = outcome
    else {
        panic!("expected failure, got {outcome:?}");
    };
    assert!(error.contains("answered 404, expected any 2xx"), "{error}");
    assert!(!retryable, "a 404 will not fix itself");
    assert_eq!(output.captured.text, "status 404");

    let outcome = HttpStage
        .run(
            context(GENEROUS),
            &json!({ "url": server.url("/status/503") }),
        )
        .await;
    assert!(
        matches!(
            outcome,
            StageOutcome::Failed {
                retryable: true,
                ..
            }
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn bodies_and_headers_are_sent() {
    let server = start(None).await;
    let outcome = HttpStage
        .run(
            context(GENEROUS),
            &json!({
                "method": "post",
                "url": server.url("/echo"),
                "body": { "drain": "dc1" },
                "headers": { "X-Levee-Test": "yes" },
            }),
        )
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(
        output.captured.text,
        r#"POST application/json yes {"drain":"dc1"}"#
    );

    let outcome = HttpStage
        .run(
            context(GENEROUS),
            &json!({ "method": "PUT", "url": server.url("/echo"), "body": "plain text" }),
        )
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(output.captured.text, "PUT none none plain text");
}

#[tokio::test]
async fn a_large_body_is_cut_at_the_limit() {
    let server = start(None).await;
    let outcome = HttpStage
        .run(context(GENEROUS), &json!({ "url": server.url("/big") }))
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    const { assert!(BIG_BODY_BYTES > MAX_OUTPUT_BYTES) };
    assert_eq!(output.data["body_truncated"], true);
    assert_eq!(output.captured.text.len(), MAX_OUTPUT_BYTES);
    assert_eq!(
        output.captured.cut_bytes, 0,
        "the head of the body is kept, not cut"
    );
    assert!(
        output
            .captured
            .text
            .starts_with(&"x".repeat(MAX_OUTPUT_BYTES - 100))
    );
    assert!(output.captured.text.ends_with("the rest was not read]"));
}

#[tokio::test]
async fn a_same_origin_redirect_is_followed() {
    let server = start(None).await;
    let outcome = HttpStage
        .run(context(GENEROUS), &json!({ "url": server.url("/same") }))
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(output.captured.text, "hello");
}

#[tokio::test]
async fn a_redirect_to_another_host_is_refused() {
    let elsewhere = start(None).await;
    let server = start(Some(format!("http://localhost:{}/ok", elsewhere.port))).await;
    let outcome = HttpStage
        .run(context(GENEROUS), &json!({ "url": server.url("/away") }))
        .await;
    let StageOutcome::Failed {
        error, retryable, ..
    } = outcome
    else {
        panic!("expected failure, got {outcome:?}");
    };
    assert!(error.contains("refused a redirect"), "{error}");
    assert!(!retryable);
    assert_eq!(elsewhere.hit_count(), 0, "the other host was contacted");

    // Another port on the same address is another origin too.
    let server = start(Some(elsewhere.url("/ok"))).await;
    let outcome = HttpStage
        .run(context(GENEROUS), &json!({ "url": server.url("/away") }))
        .await;
    assert!(
        matches!(outcome, StageOutcome::Failed { ref error, .. } if error.contains("refused a redirect")),
        "{outcome:?}"
    );
    assert_eq!(elsewhere.hit_count(), 0);
}

#[tokio::test]
async fn a_slow_answer_times_out_and_cancellation_stops_it() {
    let server = start(None).await;
    let outcome = HttpStage
        .run(
            context(GENEROUS),
            &json!({ "url": server.url("/slow"), "timeout": "200ms" }),
        )
        .await;
    assert_eq!(outcome, StageOutcome::TimedOut);

    let (canceller, token) = Canceller::new();
    let mut ctx = context(GENEROUS);
    ctx.cancel = token;
    let url = server.url("/slow");
    let run = tokio::spawn(async move { HttpStage.run(ctx, &json!({ "url": url })).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    canceller.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("cancellation did not stop the request")
        .unwrap();
    assert_eq!(outcome, StageOutcome::Cancelled);
}

#[tokio::test]
async fn a_refused_connection_is_a_retryable_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let outcome = HttpStage
        .run(
            context(GENEROUS),
            &json!({ "url": format!("http://127.0.0.1:{port}/") }),
        )
        .await;
    assert!(
        matches!(
            outcome,
            StageOutcome::Failed {
                retryable: true,
                ..
            }
        ),
        "{outcome:?}"
    );
}

#[test]
fn idempotence_follows_the_method() {
    let url = "http://127.0.0.1:1/";
    for (method, idempotent) in [
        ("GET", true),
        ("HEAD", true),
        ("PUT", true),
        ("DELETE", true),
        ("POST", false),
        ("PATCH", false),
    ] {
        assert_eq!(
            HttpStage.idempotent_for(&json!({ "method": method, "url": url })),
            idempotent,
            "{method}"
        );
    }
    assert!(HttpStage.idempotent_for(&json!({ "url": url })));
}

/// A run's fencing token reaches the target as the `Levee-Fencing-Token` header, replacing
/// one the task's author wrote; without a token none is sent.
#[tokio::test]
async fn the_fencing_token_is_sent_as_a_header() {
    let server = start(None).await;
    let mut ctx = context(GENEROUS);
    ctx.fencing_token = Some(7);
    let outcome = HttpStage
        .run(
            ctx,
            &json!({
                "url": server.url("/fence"),
                "headers": { "Levee-Fencing-Token": "999" },
            }),
        )
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(output.captured.text, "7");
    let outcome = HttpStage
        .run(context(GENEROUS), &json!({ "url": server.url("/fence") }))
        .await;
    let StageOutcome::Succeeded { output } = outcome else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(output.captured.text, "");
}
